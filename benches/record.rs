//! Recorder cost benchmark (`cargo bench --bench record`).
//!
//! 1. One hour of snapshots at 1 s and at 100 ms, built by the real
//!    samplers in process (timestamps set 1 s / 100 ms apart), written to a
//!    capture journal, then turned into Parquet by the real binary
//!    (`rezolus parquet recover`, the same code a capture ends with): bytes
//!    per hour of journal and of Parquet, and the conversion's time and peak
//!    RSS. Values move less between in-process snapshots than in a real
//!    hour, so the Parquet sizes here are a lower bound; part 2 checks them.
//!    With `BASELINE_BIN=path/to/rezolus` (another build), that build
//!    converts a copy of the same journal first, for before/after in one
//!    run.
//! 2. A live capture of the real agent every RECORD_INTERVAL_MS (default
//!    100) for RECORD_SECONDS (default 20): the recorder's RSS and CPU while
//!    capturing, and its Parquet size per hour extrapolated from the capture
//!    (footer included, so an upper bound for short captures), and how
//!    many samples it kept: a step between timestamps longer than 1.5
//!    intervals is a sample lost.
//!    For the hour at 1 s, also what reading it back costs: `rezolus parquet
//!    summary`, then `rezolus parquet query` for each overview series (CPU
//!    usage, run-queue latency, syscall rate and latency, block IO, network,
//!    memory), each a process of its own: CPU time summed, peak RSS the
//!    largest.
//!    And `rezolus view` on it: the server's CPU time and peak RSS from
//!    its start (opening the file) until the overview's data has been
//!    served, then for every other section too.
//! 3. `rezolus view` on a day at 1 s (86 400 snapshots, built as in part
//!    1; skipped when VIEW_DAY=0): the same figures, which show that a long
//!    recording is read a batch of rows at a time, never whole.
//! 4. Hindsight with a 900-snapshot ring (the default 15 min at 1 s, filled
//!    here at 10 ms): its RSS and CPU per snapshot while sampling, and the
//!    time and peak RSS of a SIGHUP dump of the full ring.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rezolus::agent::collector::Collector;
use rezolus::agent::config::Config;
use rezolus::recording::journal::{Header, Writer};
use rezolus::samplers::SamplerContext;

mod common;

use common::{mb, start_agent, usage, Reaped, Usage, BIN};

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut collector = Collector::from_config(&Config::default(), &SamplerContext::default());
    // VIEW_FILES=DIR: only `rezolus view` on an hour and a day at 1 s,
    // made in DIR if not there yet and kept (to compare changes)
    if let Some(keep) = std::env::var_os("VIEW_FILES") {
        let keep = std::path::PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for (name, rows) in [("hour", 3600), ("day", 86_400)] {
            let path = keep.join(format!("{name}.parquet"));
            if !path.exists() {
                one_second_recording(&mut collector, rows, &path);
            }
            println!("{}:", path.display());
            view_cost(&path);
        }
        return;
    }
    // BASELINE_BIN=path: also convert each hour's journal with that build
    let baseline = std::env::var_os("BASELINE_BIN");
    for (label, interval) in [
        ("1 s", Duration::from_secs(1)),
        ("100 ms", Duration::from_millis(100)),
    ] {
        let rows = (3600.0 / interval.as_secs_f64()) as u64;
        let journal = dir
            .path()
            .join(format!("hour-{}.parquet.journal", interval.as_millis()));
        let header = Header {
            url: "in-process".into(),
            sampling_interval_ms: interval.as_millis() as u64,
            metadata: Default::default(),
        };
        let mut writer = Writer::create(File::create(&journal).unwrap(), &header).unwrap();
        let t0 = SystemTime::now();
        for i in 0..rows {
            let mut snapshot = collector.collect();
            snapshot.systemtime = t0 + interval * i as u32;
            writer.snapshot(&snapshot.to_msgpack().unwrap()).unwrap();
        }
        let journal_bytes = writer.bytes();
        drop(writer);
        let output = journal.with_extension("");
        println!("1 hour at {label} ({rows} snapshots, in process):");
        if let Some(baseline) = &baseline {
            // the same journal (recover removes it once converted)
            let copy = dir.path().join("baseline.parquet.journal");
            std::fs::copy(&journal, &copy).unwrap();
            let converted = dir.path().join("baseline.parquet");
            let (conversion, parquet_bytes) = recover(baseline, &copy, &converted);
            println!(
                "  baseline: Parquet {:.1} MB/hour; conversion {:.1} s, peak RSS {:.1} MB",
                mb(parquet_bytes),
                conversion.wall.as_secs_f64(),
                conversion.peak_kb as f64 / 1024.0
            );
            let _ = std::fs::remove_file(&converted);
        }
        let (conversion, parquet_bytes) = recover(BIN.as_ref(), &journal, &output);
        println!(
            "  journal {:.1} MB/hour, Parquet {:.1} MB/hour; conversion {:.1} s, peak RSS {:.1} MB",
            mb(journal_bytes),
            mb(parquet_bytes),
            conversion.wall.as_secs_f64(),
            conversion.peak_kb as f64 / 1024.0
        );
        if interval == Duration::from_secs(1) {
            read_back(&output);
            view_cost(&output);
        }
        let _ = std::fs::remove_file(&output);
    }
    if std::env::var("VIEW_DAY").as_deref() != Ok("0") {
        let output = dir.path().join("day.parquet");
        one_second_recording(&mut collector, 86_400, &output);
        view_cost(&output);
        let _ = std::fs::remove_file(&output);
    }
    live_capture(dir.path());
    hindsight(dir.path());
}

/// The overview's questions to an hour-long recording, each through the
/// real binary: summed CPU time and the largest peak RSS.
fn read_back(file: &Path) {
    let queries: [&[&str]; 8] = [
        &["summary"],
        &["query", "cpu_usage", "--rate"],
        &["query", "scheduler_runqueue_latency"],
        &["query", "syscall", "--rate"],
        &["query", "syscall_latency"],
        &["query", "blockio_bytes", "--rate"],
        &["query", "network_bytes", "--rate"],
        &["query", "memory_available"],
    ];
    let (mut cpu, mut peak) = (Duration::ZERO, 0);
    for args in queries {
        let mut command = Command::new(BIN);
        command
            .arg("parquet")
            .arg(args[0])
            .arg(file)
            .args(&args[1..]);
        let cost = run_measured(&mut command);
        cpu += cost.cpu;
        peak = peak.max(cost.peak_kb);
    }
    println!(
        "  reading it back (summary + 7 overview queries, all their series): CPU {:.2} s in all, peak RSS {:.1} MB",
        cpu.as_secs_f64(),
        peak as f64 / 1024.0
    );
}

/// Writes `rows` in-process snapshots, 1 s apart, to the Parquet file
/// `output` through a journal and `rezolus parquet recover`.
fn one_second_recording(collector: &mut Collector, rows: u64, output: &Path) {
    let journal = output.with_extension("parquet.journal");
    let header = Header {
        url: "in-process".into(),
        sampling_interval_ms: 1000,
        metadata: Default::default(),
    };
    let mut writer = Writer::create(File::create(&journal).unwrap(), &header).unwrap();
    let t0 = SystemTime::now();
    for i in 0..rows {
        let mut snapshot = collector.collect();
        snapshot.systemtime = t0 + Duration::from_secs(i);
        writer.snapshot(&snapshot.to_msgpack().unwrap()).unwrap();
    }
    drop(writer);
    run_measured(
        Command::new(BIN)
            .args(["parquet", "recover"])
            .arg(&journal)
            .arg(output),
    );
    let _ = std::fs::remove_file(&journal);
    println!(
        "{rows} snapshots 1 s apart, in process: Parquet {:.1} MB",
        mb(std::fs::metadata(output).map(|m| m.len()).unwrap_or(0))
    );
}

/// `rezolus view FILE`: CPU time and peak RSS of the server from its start
/// until the overview's data is served (the dashboard's first view), then
/// after every other section has been served once.
fn view_cost(file: &Path) {
    use std::io::{BufRead, BufReader};
    let mut child = Reaped(
        Command::new(BIN)
            .arg("view")
            .arg(file)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rezolus view"),
    );
    let pid = child.0.id();
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("rezolus view printed no URL: {line:?}"))
        .to_string();
    let get = |path: &str| -> String {
        ureq::get(&format!("{url}{path}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap()
    };
    let dashboard: serde_json::Value = serde_json::from_str(&get("api/dashboard")).unwrap();
    let overview = get("api/section/overview");
    let used = usage(pid);
    println!(
        "  rezolus view: open + overview served: CPU {:.2} s, peak RSS {:.1} MB ({} KB of JSON)",
        used.cpu.as_secs_f64(),
        used.hwm as f64 / (1 << 20) as f64,
        overview.len() / 1000
    );
    let sections = dashboard["sections"].as_array().unwrap();
    for section in sections.iter().skip(1) {
        get(&format!("api/section/{}", section["id"].as_str().unwrap()));
    }
    let used = usage(pid);
    println!(
        "  rezolus view: then all {} sections: CPU {:.2} s in all, peak RSS {:.1} MB",
        sections.len(),
        used.cpu.as_secs_f64(),
        used.hwm as f64 / (1 << 20) as f64
    );
}

/// What running a command to completion cost it.
struct Cost {
    wall: Duration,
    /// User plus system time.
    cpu: Duration,
    /// Peak RSS in KiB.
    peak_kb: i64,
}

/// Runs `command` to completion and measures it (rusage from wait4).
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
/// `bin parquet recover journal output`: its cost, and the bytes written.
fn recover(bin: &std::ffi::OsStr, journal: &Path, output: &Path) -> (Cost, u64) {
    let cost = run_measured(
        Command::new(bin)
            .args(["parquet", "recover"])
            .arg(journal)
            .arg(output),
    );
    (
        cost,
        std::fs::metadata(output).map(|m| m.len()).unwrap_or(0),
    )
}

/// Runs `command` to completion. Its peak RSS is the largest VmHWM seen
/// polling every 2 ms, not the `ru_maxrss` of `wait4`: a child begun by
/// vfork shares this process's memory until it execs, and Linux counts
/// that high-water mark into the child's `ru_maxrss`, so a child of a
/// large bench process would report the bench's size.
fn run_measured(command: &mut Command) -> Cost {
    let start = Instant::now();
    // reaped by wait4 below, which also gives its CPU time
    #[allow(clippy::zombie_processes)]
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by wait4.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut peak = 0u64;
    loop {
        let exited = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut rusage) };
        if exited != 0 {
            assert!(
                exited > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "command failed"
            );
            break;
        }
        peak = peak.max(usage(pid).hwm);
        std::thread::sleep(Duration::from_millis(2));
    }
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Cost {
        wall: start.elapsed(),
        cpu: time(rusage.ru_utime) + time(rusage.ru_stime),
        peak_kb: (peak / 1024) as i64,
    }
}

fn live_capture(dir: &Path) {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = env("RECORD_SECONDS", 20);
    let interval_ms = env("RECORD_INTERVAL_MS", 100);
    let (agent, port) = start_agent(dir, "", "");
    let url = format!("http://127.0.0.1:{port}/metrics/binary");
    let output = dir.join("live.parquet");
    let mut recorder = Command::new(BIN)
        .args([
            "record",
            "--interval",
            &format!("{interval_ms}ms"),
            "--duration",
            &format!("{seconds}s"),
            &url,
        ])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = recorder.id();
    let started = Instant::now();
    let mut rss = 0u64;
    let mut cpu = Duration::ZERO;
    // until shortly before the capture ends (the conversion follows)
    while started.elapsed() < Duration::from_secs(seconds) - Duration::from_millis(500) {
        let used = usage(pid);
        rss = rss.max(used.rss);
        cpu = cpu.max(used.cpu);
        std::thread::sleep(Duration::from_millis(100));
    }
    let capture_secs = started.elapsed().as_secs_f64();
    assert!(recorder.wait().unwrap().success(), "recorder failed");
    drop(agent);
    let samples = capture_secs * 1000.0 / interval_ms as f64;
    let bytes = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    println!("live capture of the agent every {interval_ms} ms for {seconds} s:");
    // a sample lost shows as a step of two intervals or more
    let times = timestamps(&output);
    let steps: Vec<u64> = times
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .collect();
    let interval_ns = interval_ms * 1_000_000;
    let late = steps.iter().filter(|&&s| s > interval_ns * 3 / 2).count();
    println!(
        "  {} samples of {} intervals; {late} steps longer than 1.5 intervals, the longest {:.1} ms",
        times.len(),
        seconds * 1000 / interval_ms,
        steps.iter().max().copied().unwrap_or(0) as f64 / 1e6
    );
    println!(
        "  recorder RSS while capturing {:.1} MB, CPU {:.0} us per sample; Parquet {:.1} MB/hour extrapolated",
        rss as f64 / (1 << 20) as f64,
        cpu.as_secs_f64() * 1e6 / samples,
        mb(bytes) * 3600.0 / seconds as f64
    );
}

/// The `timestamp` column of a recording, in nanoseconds.
fn timestamps(file: &Path) -> Vec<u64> {
    use arrow_array::{Array, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(file).unwrap()).unwrap();
    let mask = ProjectionMask::columns(builder.parquet_schema(), ["timestamp"]);
    let mut out = Vec::new();
    for batch in builder.with_projection(mask).build().unwrap() {
        let batch = batch.unwrap();
        let column = batch.column(0);
        let column = column.as_any().downcast_ref::<UInt64Array>().unwrap();
        out.extend((0..column.len()).map(|i| column.value(i)));
    }
    out
}

fn hindsight(dir: &Path) {
    let (agent, port) = start_agent(dir, "", "");
    let output = dir.join("hindsight.parquet");
    let config = dir.join("hindsight.toml");
    std::fs::write(
        &config,
        format!("[general]\ninterval = \"10ms\"\nduration = \"9s\"\nsource = \"127.0.0.1:{port}\"\noutput = \"{}\"\n[log]\nlevel = \"warn\"\n", output.display()),
    )
    .unwrap();
    let hs = Reaped(
        Command::new(BIN)
            .arg("hindsight")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = hs.0.id();
    // fill the ring, then measure a stretch of steady sampling
    std::thread::sleep(Duration::from_secs(10));
    let cpu0 = usage(pid).cpu;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let Usage { rss, cpu: cpu1, .. } = usage(pid);
    let sampled = started.elapsed().as_secs_f64() * 100.0;
    let dump = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    // each dump goes to a new file named after `output` and the time:
    // hindsight-<UTC time>.parquet, there once it is complete
    let dumped = || {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("hindsight-") && name.ends_with(".parquet")
            })
    };
    let output = loop {
        if let Some(path) = dumped() {
            break path;
        }
        assert!(dump.elapsed() < Duration::from_secs(120), "no dump");
        std::thread::sleep(Duration::from_millis(10));
    };
    let dump_time = dump.elapsed();
    let hwm = usage(pid).hwm;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut hs = hs;
    let _ = hs.0.wait(); // a clean exit, before the guard's kill
    drop(hs);
    drop(agent);
    let ring = std::fs::metadata(dir.join("hindsight.parquet.ring"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("hindsight, 900-snapshot ring ({:.1} MB on disk):", mb(ring));
    println!(
        "  RSS while sampling {:.1} MB, CPU {:.0} us per snapshot; SIGHUP dump of the full ring {:.1} s, peak RSS {:.1} MB, {:.1} MB of Parquet",
        rss as f64 / (1 << 20) as f64,
        (cpu1 - cpu0).as_secs_f64() * 1e6 / sampled,
        dump_time.as_secs_f64(),
        hwm as f64 / (1 << 20) as f64,
        mb(std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0))
    );
}
