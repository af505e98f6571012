//! Process signals, handled one way for every role.
//!
//! [`block`] is the first thing `main` does: it blocks SIGINT, SIGTERM and
//! SIGHUP in the main thread, so every thread started later inherits the
//! mask and no signal can take its default action (for SIGHUP: terminate)
//! while a role is still starting. A dedicated thread then takes them
//! synchronously with `sigwait` and turns them into state the roles read:
//!
//! - SIGINT or SIGTERM: [`stopped`] becomes true and everything waiting on
//!   [`wait_for_stop`] or [`stop_requested`] wakes;
//! - SIGHUP: [`hangups`] counts it. A role that acts on SIGHUP (hindsight's
//!   dump) reads the count when it is ready, so a SIGHUP that arrives during
//!   start-up is acted on then, not lost; the others log that it was ignored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

struct Shared {
    stopped: AtomicBool,
    hangups: AtomicU64,
    /// Wakes threads blocked in [`wait_for_stop`].
    lock: Mutex<()>,
    changed: Condvar,
    /// Wakes async tasks: the stop flag and the hangup count.
    stop_tx: watch::Sender<bool>,
    hup_tx: watch::Sender<u64>,
    /// What SIGHUP does in this role, for the log.
    on_hangup: Mutex<&'static str>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        stopped: AtomicBool::new(false),
        hangups: AtomicU64::new(0),
        lock: Mutex::new(()),
        changed: Condvar::new(),
        stop_tx: watch::channel(false).0,
        hup_tx: watch::channel(0).0,
        on_hangup: Mutex::new("ignored"),
    })
}

fn handled() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread only (safe to
/// call before `main`: no allocation, no other state).
pub fn block_in_this_thread() {
    let set = handled();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread
/// it starts) and starts the thread that takes them. Call it first in `main`,
/// before any other thread exists.
pub fn block() {
    block_in_this_thread();
    let set = handled();
    let shared = shared();
    let started = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: the set is valid and `signal` is ours to write.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            match signal {
                libc::SIGHUP => {
                    let n = shared.hangups.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = shared.hup_tx.send_replace(n);
                    let what = *shared.on_hangup.lock().unwrap_or_else(|p| p.into_inner());
                    info!("SIGHUP received: {what}");
                }
                _ => {
                    let name = if signal == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    if !shared.stopped.swap(true, Ordering::SeqCst) {
                        info!("{name} received, shutting down");
                    }
                    let _ = shared.stop_tx.send_replace(true);
                    let _guard = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
                    shared.changed.notify_all();
                }
            }
        });
    if let Err(e) = started {
        // without the thread the signals would stay pending forever: give
        // them back their default actions rather than ignore them
        eprintln!(
            "warning: cannot start the signal thread ({e}); signals take their default action"
        );
        // SAFETY: as above.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Says, in the log line of every SIGHUP from now on, what SIGHUP does for
/// this role (e.g. "ignored: `rezolus record` keeps capturing").
pub fn on_hangup(what: &'static str) {
    *shared().on_hangup.lock().unwrap_or_else(|p| p.into_inner()) = what;
}

/// Whether SIGINT or SIGTERM has been received.
pub fn stopped() -> bool {
    shared().stopped.load(Ordering::SeqCst)
}

/// Waits up to `timeout` for SIGINT or SIGTERM; true if one has come.
pub fn wait_for_stop(timeout: Duration) -> bool {
    let shared = shared();
    let deadline = Instant::now() + timeout;
    let mut guard = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        guard = shared
            .changed
            .wait_timeout(guard, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Resolves once SIGINT or SIGTERM has been received.
pub async fn stop_requested() {
    let mut rx = shared().stop_tx.subscribe();
    let _ = rx.wait_for(|stopped| *stopped).await;
}

/// SIGHUPs received since the process started; `changed()` on the receiver
/// wakes on each new one.
pub fn hangups() -> watch::Receiver<u64> {
    shared().hup_tx.subscribe()
}

/// Something a loop can wait on that may ask it to stop: the process's
/// signals ([`Signals`]) in the roles, a flag in tests.
pub trait StopWait {
    /// Waits up to `timeout`; true if the loop must stop.
    fn wait(&self, timeout: Duration) -> bool;
}

/// A channel whose sender is dropped (or sends) to stop a loop.
impl StopWait for std::sync::mpsc::Receiver<()> {
    fn wait(&self, timeout: Duration) -> bool {
        !matches!(
            self.recv_timeout(timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        )
    }
}

/// SIGINT and SIGTERM, as a [`StopWait`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals;

impl StopWait for Signals {
    fn wait(&self, timeout: Duration) -> bool {
        wait_for_stop(timeout)
    }
}
