//! Loopback TCP workloads for `scripts/overhead`, printing microseconds per
//! operation (the last line, `<usecs> usecs/op`):
//!
//! - `tcp_bench rr [ROUND_TRIPS]`: a 1-byte request and a 1-byte response
//!   between two threads over one loopback connection (TCP_NODELAY), per
//!   round trip. Default 50000.
//! - `tcp_bench bulk [MIB]`: one-way transfer of MIB mebibytes (default
//!   2048) in 64 KiB writes, per 64 KiB.
//!
//! Pin the process (e.g. `taskset -c 1`) for stable numbers.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |default: u64| -> u64 {
        match args.get(1) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("not a count: {v}"))),
        }
    };
    let (ops, elapsed) = match args.first().map(String::as_str) {
        Some("rr") => rr(count(50_000))?,
        Some("bulk") => bulk(count(2048) * 16)?,
        _ => usage("expected `rr` or `bulk`"),
    };
    println!("{:.3} usecs/op", elapsed * 1e6 / ops as f64);
    Ok(())
}

fn usage(problem: &str) -> ! {
    eprintln!("tcp_bench: {problem}\nusage: tcp_bench rr [ROUND_TRIPS] | bulk [MIB]");
    std::process::exit(2)
}

fn pair() -> std::io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// Round trips of one byte each way; returns (round trips, seconds).
fn rr(n: u64) -> std::io::Result<(u64, f64)> {
    let (mut client, mut server) = pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut byte = [0u8];
        for _ in 0..n {
            server.read_exact(&mut byte)?;
            server.write_all(&byte)?;
        }
        Ok(())
    });
    let mut byte = [1u8];
    let start = Instant::now();
    for _ in 0..n {
        client.write_all(&byte)?;
        client.read_exact(&mut byte)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    echo.join().expect("echo thread")?;
    Ok((n, elapsed))
}

/// `chunks` writes of 64 KiB one way; returns (chunks, seconds).
fn bulk(chunks: u64) -> std::io::Result<(u64, f64)> {
    const CHUNK: usize = 64 << 10;
    let (mut client, mut server) = pair()?;
    let sink = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        while server.read(&mut buf)? > 0 {}
        Ok(())
    });
    let buf = vec![7u8; CHUNK];
    let start = Instant::now();
    for _ in 0..chunks {
        client.write_all(&buf)?;
    }
    drop(client);
    sink.join().expect("sink thread")?;
    Ok((chunks, start.elapsed().as_secs_f64()))
}
