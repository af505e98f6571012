//! The HTTP server shared by the agent, the exporter and hindsight: an axum
//! [`Router`] served over HTTP/1.1 by hyper, with limits that keep the
//! endpoints answering when clients misbehave.
//!
//! * **Header-read timeout** ([`Limits::header_read_timeout`], default 5 s):
//!   a connection that has not sent a complete request head within this time
//!   of being accepted is closed.
//! * **Idle timeout** ([`Limits::idle_timeout`], default 90 s): a keep-alive
//!   connection that sends no new complete request head within this time of
//!   its last response being sent is closed. 90 s is longer than Prometheus'
//!   default scrape interval (1 min), so a scraper that reuses its connection
//!   every minute keeps it. The same bound applies to a response that the
//!   client does not read.
//! * **Connection cap**: at start the soft `RLIMIT_NOFILE` is raised to the
//!   hard limit; the cap is that limit minus the descriptors already open
//!   minus a margin of 64, clamped to 16..=1024. When a connection arrives and
//!   the cap is reached, the connection idle the longest (no request being
//!   handled, oldest by accept time or last response) is closed to make room
//!   (failing that, the one that has been sending a response the longest: a
//!   client that does not read); a connection whose handler runs is never
//!   closed for room. If every connection is busy, accepting pauses (the
//!   kernel's backlog holds new ones) until one finishes. The first time
//!   (then at most once a minute) this is logged as a warning.
//! * **Accept errors** (`EMFILE`, `ENFILE`, ...) are logged at most once a
//!   minute; the server waits 75 ms and goes on accepting. When out of
//!   descriptors it also closes the connection idle the longest.
//! * **Shutdown**: when the shutdown future resolves the server stops
//!   accepting, closes idle connections, and lets in-flight requests finish
//!   for up to [`Limits::shutdown_grace`] (default 5 s).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Default [`Limits::header_read_timeout`]: 5 s.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`Limits::idle_timeout`]: 90 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default [`Limits::shutdown_grace`]: 5 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// File descriptors kept free for everything but HTTP connections (samplers,
/// the exporter's and hindsight's reads of the agent, dumps): 64.
pub const FD_MARGIN: u64 = 64;
/// The connection cap is never below this (connections).
pub const MIN_CONNECTIONS: usize = 16;
/// The connection cap is never above this (connections).
pub const MAX_CONNECTIONS: usize = 1024;

/// How long to wait after a failed `accept()` before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(75);
/// Repeated warnings (cap reached, accept failing) at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often a connection whose request is being handled looks again at
/// whether it has become idle.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// The limits a server applies to its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a new connection may take to send a complete request head
    /// before it is closed. Default [`HEADER_READ_TIMEOUT`] (5 s).
    pub header_read_timeout: Duration,
    /// How long a keep-alive connection may stay without a new complete
    /// request head after its last response was sent (and how long a
    /// response may take to be sent) before it is closed. Default
    /// [`IDLE_TIMEOUT`] (90 s).
    pub idle_timeout: Duration,
    /// The most connections open at once; `None` (the default) computes it
    /// from the file descriptor limit (see [`connection_cap`]).
    pub max_connections: Option<usize>,
    /// After shutdown is asked for, how long in-flight requests may take to
    /// finish. Default [`SHUTDOWN_GRACE`] (5 s).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: None,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

impl Limits {
    /// The defaults, except that the environment variables
    /// `REZOLUS_HTTP_HEADER_TIMEOUT_MS` and `REZOLUS_HTTP_IDLE_TIMEOUT_MS`
    /// (milliseconds) replace the two timeouts. These variables exist so the
    /// integration tests need not wait for the defaults; they are not part of
    /// the documented interface.
    pub fn from_env() -> Self {
        let mut limits = Self::default();
        let ms = |name: &str| -> Option<Duration> {
            let text = std::env::var(name).ok()?;
            match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => {
                    warn!("ignoring {name}={text:?}: not a positive number of milliseconds");
                    None
                }
            }
        };
        if let Some(d) = ms("REZOLUS_HTTP_HEADER_TIMEOUT_MS") {
            limits.header_read_timeout = d;
        }
        if let Some(d) = ms("REZOLUS_HTTP_IDLE_TIMEOUT_MS") {
            limits.idle_timeout = d;
        }
        limits
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, logging at info if it
/// changed. Failure is logged at debug and otherwise ignored. Idempotent.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        debug!(
            "getrlimit(RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        info!(
            "raised the open file limit from {} to {}",
            limit.rlim_cur, limit.rlim_max
        );
    } else {
        debug!(
            "cannot raise the open file limit from {} to {}: {}",
            limit.rlim_cur,
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
}

/// The connection cap for this process now: the soft `RLIMIT_NOFILE` minus
/// the descriptors open (entries of `/proc/self/fd`) minus [`FD_MARGIN`],
/// clamped to [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`].
pub fn connection_cap() -> usize {
    let soft = soft_fd_limit().unwrap_or(1024);
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count() as u64)
        .unwrap_or(0);
    cap_for(soft, open)
}

/// The soft `RLIMIT_NOFILE`, if getrlimit answers.
pub fn soft_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

fn cap_for(soft: u64, open: u64) -> usize {
    let free = soft.saturating_sub(open).saturating_sub(FD_MARGIN);
    free.clamp(MIN_CONNECTIONS as u64, MAX_CONNECTIONS as u64) as usize
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then
/// stops accepting, closes idle connections and waits up to
/// [`Limits::shutdown_grace`] for in-flight requests. Accept errors are
/// logged and retried, never returned.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()>,
{
    raise_fd_limit();
    let cap = limits.max_connections.unwrap_or_else(connection_cap);
    debug!(
        "HTTP limits: {cap} connections, header read timeout {}, idle timeout {}",
        humantime::format_duration(limits.header_read_timeout),
        humantime::format_duration(limits.idle_timeout)
    );
    let server = Arc::new(Server::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut next_id = 0u64;
    let mut cap_warned: Option<Instant> = None;
    let mut accept_warned: Option<Instant> = None;
    'accept: loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds {
                    server.evict_oldest_idle();
                }
                if due(&mut accept_warned) {
                    warn!("cannot accept an HTTP connection: {e} (retrying; logged at most once a minute)");
                }
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        // make room: close the connection idle the longest
        while server.len() >= cap {
            if due(&mut cap_warned) {
                warn!("HTTP connection limit of {cap} reached: closing the oldest idle connections to make room (logged at most once a minute)");
            }
            // then wait for it to close, or for one to finish or go idle
            server.evict_oldest_idle();
            tokio::select! {
                biased;
                _ = &mut shutdown => break 'accept,
                _ = server.changed.notified() => {}
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = server.add(next_id);
        next_id += 1;
        tokio::spawn(connection(
            Arc::clone(&server),
            conn,
            stream,
            app.clone(),
            limits.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + limits.shutdown_grace;
    while server.len() > 0 {
        tokio::select! {
            _ = server.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                debug!("{} HTTP connections still open after the shutdown grace period", server.len());
                break;
            }
        }
    }
    Ok(())
}

/// Whether a rate-limited message is due now; if so, notes that it was sent.
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
        return false;
    }
    *last = Some(now);
    true
}

/// The open connections.
#[derive(Default)]
struct Server {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Notified when a connection goes away or becomes idle.
    changed: Notify,
}

impl Server {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.conns().len()
    }

    fn add(&self, id: u64) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(ConnState {
                handling: 0,
                in_flight: 0,
                requests: 0,
                since: Instant::now(),
                evicted: false,
            }),
            evict: Notify::new(),
        });
        self.conns().insert(id, Arc::clone(&conn));
        conn
    }

    fn remove(&self, id: u64) {
        if self.conns().remove(&id).is_some() {
            self.changed.notify_one();
        }
    }

    /// Asks the connection idle the longest to close, if any is idle, else
    /// the one that has been sending a response (its handler done) the
    /// longest, if any; never one whose handler runs. Does nothing while an
    /// earlier such connection has not closed yet (it counts as open until
    /// its socket is closed, then `changed` is notified). Returns whether a
    /// connection is closing.
    fn evict_oldest_idle(&self) -> bool {
        let conns = self.conns();
        let mut oldest = None;
        for conn in conns.values() {
            let s = conn.state();
            if s.evicted {
                return true;
            }
            if s.handling == 0 {
                let key = (s.in_flight > 0, s.since, conn.id);
                if oldest.as_ref().is_none_or(|(k, _)| key < *k) {
                    oldest = Some((key, conn));
                }
            }
        }
        match oldest {
            Some((_, conn)) => {
                conn.state().evicted = true;
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

struct Conn {
    id: u64,
    state: Mutex<ConnState>,
    /// Notified to close the connection at once.
    evict: Notify,
}

struct ConnState {
    /// Requests whose handler has not returned.
    handling: u32,
    /// Requests whose response has not been sent in full.
    in_flight: u32,
    /// Requests received so far.
    requests: u64,
    /// When the state last changed: accept, request received, handler
    /// returned, response sent.
    since: Instant,
    /// Asked to close to make room.
    evicted: bool,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection is to be closed if nothing happens before;
    /// `None` while a handler runs (no limit).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let s = self.state();
        if s.handling > 0 {
            None
        } else if s.requests == 0 {
            Some(s.since + limits.header_read_timeout)
        } else {
            Some(s.since + limits.idle_timeout)
        }
    }
}

/// One request on a connection, from its head being read to its response
/// being sent (or dropped).
struct Busy {
    conn: Arc<Conn>,
    server: Arc<Server>,
    handling: bool,
}

impl Busy {
    fn begin(conn: &Arc<Conn>, server: &Arc<Server>) -> Self {
        let mut s = conn.state();
        s.handling += 1;
        s.in_flight += 1;
        s.requests += 1;
        s.since = Instant::now();
        drop(s);
        Self {
            conn: Arc::clone(conn),
            server: Arc::clone(server),
            handling: true,
        }
    }

    fn handled(&mut self) {
        if std::mem::take(&mut self.handling) {
            let mut s = self.conn.state();
            s.handling -= 1;
            s.since = Instant::now();
            drop(s);
            // it may now be closed to make room
            self.server.changed.notify_one();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.handled();
        let mut s = self.conn.state();
        s.in_flight -= 1;
        s.since = Instant::now();
        let idle = s.in_flight == 0;
        drop(s);
        if idle {
            self.server.changed.notify_one();
        }
    }
}

/// A response body that marks its request done when sent in full or dropped.
struct Tracked {
    body: Body,
    busy: Option<Busy>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves one connection until the client closes it, a limit closes it, it
/// is evicted, or shutdown.
async fn connection(
    server: Arc<Server>,
    conn: Arc<Conn>,
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let service = {
        let (conn, server) = (Arc::clone(&conn), Arc::clone(&server));
        let inner = TowerToHyperService::new(app);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut busy = Busy::begin(&conn, &server);
            let response = inner.call(request);
            async move {
                let response = response.await?;
                busy.handled();
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    busy: Some(busy),
                }))
            }
        })
    };
    let mut http = Box::pin(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
    );
    let mut stopping = *stop.borrow();
    if stopping {
        http.as_mut().graceful_shutdown();
    }
    loop {
        let deadline = conn
            .deadline(&limits)
            .unwrap_or_else(|| Instant::now() + BUSY_RECHECK);
        tokio::select! {
            served = http.as_mut() => {
                if let Err(e) = served {
                    debug!("HTTP connection: {e}");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline) => {
                if conn.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    debug!("closing an HTTP connection that timed out");
                    break;
                }
            }
            _ = conn.evict.notified() => {
                debug!("closing an idle HTTP connection to make room");
                break;
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
    // close the socket before it stops counting as open
    drop(http);
    server.remove(conn.id);
}

/// Binds `listen` (a role's `general.listen`); the error names the address
/// and the key in the config file at `config`.
pub async fn bind(
    listen: std::net::SocketAddr,
    config: &std::path::Path,
) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} (general.listen in {})",
                config.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_leaves_a_margin_and_is_clamped() {
        assert_eq!(cap_for(1024, 20), 1024 - 20 - 64);
        assert_eq!(cap_for(256, 20), 256 - 20 - 64);
        assert_eq!(cap_for(1 << 20, 20), MAX_CONNECTIONS);
        assert_eq!(cap_for(64, 20), MIN_CONNECTIONS);
        assert_eq!(cap_for(10, 20), MIN_CONNECTIONS);
    }

    #[tokio::test]
    async fn eviction_prefers_the_longest_idle_then_the_longest_sending() {
        let server = Arc::new(Server::default());
        let t0 = Instant::now();
        let set = |conn: &Conn, handling, in_flight, at: u64| {
            let mut s = conn.state();
            s.handling = handling;
            s.in_flight = in_flight;
            s.since = t0 + Duration::from_secs(at);
        };
        let handling = server.add(0);
        set(&handling, 1, 1, 0);
        let sending = server.add(1);
        set(&sending, 0, 1, 1);
        let idle_new = server.add(2);
        set(&idle_new, 0, 0, 3);
        let idle_old = server.add(3);
        set(&idle_old, 0, 0, 2);
        // the one asked to close, which then closes
        let next = |server: &Server| -> Option<u64> {
            if !server.evict_oldest_idle() {
                return None;
            }
            // nothing more while it has not closed
            assert!(server.evict_oldest_idle());
            let evicted: Vec<u64> = server
                .conns()
                .values()
                .filter(|c| c.state().evicted)
                .map(|c| c.id)
                .collect();
            assert_eq!(evicted.len(), 1);
            server.remove(evicted[0]);
            Some(evicted[0])
        };
        assert_eq!(next(&server), Some(3));
        assert_eq!(next(&server), Some(2));
        assert_eq!(next(&server), Some(1));
        // a handler is running: never closed for room
        assert_eq!(next(&server), None);
        assert_eq!(server.len(), 1);
    }
}
