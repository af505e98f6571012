//! A stand-in for the agent serving snapshots a test builds.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rezolus::snapshot::Snapshot;

/// An agent stand-in: answers every HTTP request with the snapshot `make`
/// builds at that moment. Stops (and closes its port) on drop.
pub struct FakeAgent {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub type Make = Box<dyn FnMut(SystemTime) -> Snapshot + Send>;
/// Builds the response body itself (any bytes: another agent's encoding).
pub type MakeBytes = Box<dyn FnMut(SystemTime) -> Vec<u8> + Send>;

impl FakeAgent {
    pub fn start(make: Make) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), make)
    }

    pub fn start_on(listener: TcpListener, mut make: Make) -> Self {
        Self::start_bytes_on(
            listener,
            Box::new(move |now| make(now).to_msgpack().unwrap()),
        )
    }

    pub fn start_bytes(make: MakeBytes) -> Self {
        Self::start_bytes_on(TcpListener::bind("127.0.0.1:0").unwrap(), make)
    }

    pub fn start_bytes_on(listener: TcpListener, mut make: MakeBytes) -> Self {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let served = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&served);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = make(SystemTime::now());
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/msgpack\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                if conn.write_all(&body).is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self {
            addr,
            served,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until `n` requests have been answered.
    pub fn wait_served(&self, n: u64, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.served.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent was read only {} times",
                self.served.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Serves `snapshots` in turn, one per request, repeating the last.
    pub fn sequence(snapshots: Vec<Snapshot>) -> Self {
        let mut queue = std::collections::VecDeque::from(snapshots);
        Self::start(Box::new(move |_| {
            if queue.len() > 1 {
                queue.pop_front().unwrap()
            } else {
                queue[0].clone()
            }
        }))
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
