//! A small-file workload for `scripts/overhead`, printing microseconds per
//! operation (the last line, `<usecs> usecs/op`):
//!
//! `file_bench DIR [ROUNDS]`: in a 4 KiB file created in DIR, ROUNDS times
//! (default 500000) a 4 KiB pwrite then a 4 KiB pread at offset 0, all in
//! the page cache; one op is one pwrite and one pread. The file is removed
//! at the end.
//!
//! Pin the process (e.g. `taskset -c 1`) for stable numbers.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        usage("expected a directory")
    };
    let rounds: u64 = match args.get(1) {
        None => 500_000,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| usage(&format!("not a count: {v}"))),
    };
    let path = dir.join(format!("file_bench.{}", std::process::id()));
    let file = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let block = [0x5au8; 4096];
    let mut buf = [0u8; 4096];
    file.write_all_at(&block, 0)?;
    let started = Instant::now();
    for _ in 0..rounds {
        file.write_all_at(&block, 0)?;
        file.read_exact_at(&mut buf, 0)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    println!("{:.3} usecs/op", elapsed * 1e6 / rounds as f64);
    Ok(())
}

fn usage(problem: &str) -> ! {
    eprintln!("file_bench: {problem}\nusage: file_bench DIR [ROUNDS]");
    std::process::exit(2)
}
