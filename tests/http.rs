//! The HTTP limits shared by every role (`src/http.rs`): header-read and
//! idle timeouts, and the connection cap under a low open file limit, tested
//! against the real binary over raw sockets.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Agent;

/// The warning logged when the connection cap is reached.
const CAP_WARNING: &str = "HTTP connection limit of";

/// `GET path` on a new connection with `Connection: close`: the status and
/// the body, or an error if it takes longer than `timeout` in all.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("GET {path}: no complete answer within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("GET {path}: {e}")),
        }
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no response head"))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: bad status line in {head:?}"))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// Waits until the server closes `stream` (EOF or reset), for at most
/// `within`; returns how long that took, or `None` if it stayed open.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// Holds `n` connections that send nothing, then scrapes `path` several
/// times, each within 1 s; the cap warning is logged once.
fn scrapes_survive_idle_flood(server: &Agent, path: &str, n: usize) {
    let held: Vec<TcpStream> = (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    // let the server accept (and evict) what it can
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..5 {
        let start = Instant::now();
        let (status, body) = get(server.addr, path, Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("scrape {i} with {n} idle connections held: {e}"));
        assert_eq!(status, 200, "scrape {i}");
        assert!(!body.is_empty(), "scrape {i}: empty body");
        assert!(start.elapsed() < Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(200));
    }
    // a second wave while the first is still held
    let more: Vec<TcpStream> = (0..n / 2)
        .filter_map(|_| TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = get(server.addr, path, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("scrape after the second wave: {e}"));
    assert_eq!(status, 200);
    let log: Vec<String> = server.log.try_iter().collect();
    let count = |text: &str| log.iter().filter(|l| l.contains(text)).count();
    assert_eq!(
        count(CAP_WARNING),
        1,
        "the connection limit warning is logged exactly once"
    );
    // the cap keeps the process within its descriptors
    assert_eq!(count("cannot accept"), 0, "accept failed: {log:?}");
    drop((held, more));
}

/// The header timeout is raised so that only the connection cap keeps the
/// scrapes going.
const NO_HEADER_TIMEOUT: &[(&str, &str)] = &[("REZOLUS_HTTP_HEADER_TIMEOUT_MS", "60000")];

#[test]
fn agent_answers_scrapes_while_more_idle_connections_than_fds_are_held() {
    let agent = Agent::start_limited(&[], "ttl = \"0s\"", "", 256, NO_HEADER_TIMEOUT);
    scrapes_survive_idle_flood(&agent, "/metrics/json", 400);
}

#[test]
fn exporter_answers_scrapes_while_more_idle_connections_than_fds_are_held() {
    // no agent there: /metrics still answers (agent_up 0)
    let exporter = Agent::start_limited(
        &["exporter"],
        "source = \"127.0.0.1:1\"",
        "",
        256,
        NO_HEADER_TIMEOUT,
    );
    scrapes_survive_idle_flood(&exporter, "/metrics", 400);
}

#[test]
fn hindsight_answers_while_more_idle_connections_than_fds_are_held() {
    let dir = tempfile::tempdir().unwrap();
    // hindsight sizes its ring from the agent's first snapshot before it
    // serves: an agent to read
    let agent = Agent::start("", "");
    let general = format!(
        "source = \"{}\"\noutput = \"{}\"\n",
        agent.addr,
        dir.path().join("out.parquet").display()
    );
    let hindsight = Agent::start_limited(&["hindsight"], &general, "", 256, NO_HEADER_TIMEOUT);
    scrapes_survive_idle_flood(&hindsight, "/", 400);
}

#[test]
fn silent_and_trickling_connections_are_closed_after_the_header_timeout() {
    // the default header-read timeout: 5 s
    let agent = Agent::start("", "");
    let mut silent = TcpStream::connect(agent.addr).unwrap();
    let mut trickle = TcpStream::connect(agent.addr).unwrap();
    let start = Instant::now();
    let request = b"GET /metrics/json HTTP/1.1\r\nHost: test\r\n\r\n";
    let trickler = std::thread::spawn(move || {
        // one byte a second, never completing the head in time
        for byte in request.iter().take(12) {
            if trickle.write_all(&[*byte]).is_err() {
                break;
            }
            match closed_within(&mut trickle, Duration::from_secs(1)) {
                Some(_) => return Some(start.elapsed()),
                None => continue,
            }
        }
        closed_within(&mut trickle, Duration::from_secs(5)).map(|_| start.elapsed())
    });
    let silent_closed = closed_within(&mut silent, Duration::from_secs(9))
        .expect("a connection that sends nothing is closed within 9 s");
    assert!(
        silent_closed >= Duration::from_millis(4500),
        "closed too early: {silent_closed:?}"
    );
    let trickle_closed = trickler
        .join()
        .unwrap()
        .expect("a connection trickling its head is closed");
    assert!(
        (Duration::from_millis(4500)..Duration::from_secs(9)).contains(&trickle_closed),
        "trickling connection closed after {trickle_closed:?}"
    );
    // the server is fine
    assert_eq!(get(agent.addr, "/", Duration::from_secs(5)).unwrap().0, 200);
}

/// Sends one keep-alive request and reads its response (by Content-Length).
fn request_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("response");
        assert!(n > 0, "connection closed before the response");
        response.extend_from_slice(&buf[..n]);
        let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("content-length")
            .trim()
            .parse()
            .unwrap();
        if response.len() >= end + 4 + length {
            assert_eq!(response.len(), end + 4 + length, "nothing after the body");
            return head.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    // a header timeout shorter than the idle timeout: an idle keep-alive
    // connection is bound by the idle timeout, not the header timeout
    let env = [
        ("REZOLUS_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("REZOLUS_HTTP_IDLE_TIMEOUT_MS", "3000"),
    ];
    let agent = Agent::start_limited(&[], "", "", 4096, &env);
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    assert_eq!(request_on(&mut stream, "/"), 200);
    // reused after more than the header timeout, within the idle timeout
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(request_on(&mut stream, "/metrics/json"), 200);
    let closed = closed_within(&mut stream, Duration::from_secs(8))
        .expect("an idle keep-alive connection is closed");
    assert!(
        (Duration::from_millis(2500)..Duration::from_millis(5000)).contains(&closed),
        "idle connection closed after {closed:?}, expected about 3 s"
    );
}

#[test]
fn a_thousand_concurrent_binary_scrapes_all_succeed() {
    let agent = Agent::start("ttl = \"1s\"", "");
    let addr = agent.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(1000));
    let threads: Vec<_> = (0..1000)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    barrier.wait();
                    get(addr, "/metrics/binary", Duration::from_secs(25))
                })
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join().unwrap() {
            Ok((200, body)) if !body.is_empty() => {}
            Ok((status, body)) => failures.push(format!("{i}: {status}, {} bytes", body.len())),
            Err(e) => failures.push(format!("{i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 1000 failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn sigterm_exits_promptly_with_connections_held() {
    let agent = Agent::start("", "");
    let _silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(agent.addr).unwrap())
        .collect();
    let mut kept = TcpStream::connect(agent.addr).unwrap();
    assert_eq!(request_on(&mut kept, "/"), 200);
    let start = Instant::now();
    let status = agent.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?} to stop",
        start.elapsed()
    );
    // the keep-alive connection was closed, not left hanging
    assert!(closed_within(&mut kept, Duration::from_secs(1)).is_some());
}
