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
//! - the first real-time signal: runs the jobs of [`in_signal_thread`]
//!   (work that must be done in every thread, such as dropping
//!   capabilities);
//! - SIGHUP: [`hangups`] counts it. A role that acts on SIGHUP (hindsight's
//!   dump) reads the count when it is ready, so a SIGHUP that arrives during
//!   start-up is acted on then, not lost; the others log that it was ignored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

struct Shared {
    stopped: AtomicBool,
    hangups: AtomicU64,
    /// A pipe written once at stop: threads in [`wait_for_stop`] poll its
    /// read end with a relative timeout. (A condition variable's timeout is
    /// an absolute time on a clock a tool like libfaketime can move, which
    /// would make a wait last for years.) -1 if it could not be made.
    wake: [libc::c_int; 2],
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
        wake: {
            let mut fds = [-1; 2];
            // SAFETY: `fds` has room for the two descriptors.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                fds = [-1; 2];
            }
            fds
        },
        stop_tx: watch::channel(false).0,
        hup_tx: watch::channel(0).0,
        on_hangup: Mutex::new("ignored"),
    })
}

/// The signal that wakes the signal thread to run [`in_signal_thread`]'s
/// jobs (the first real-time signal glibc leaves to programs). Sent from
/// outside it only makes the thread look for jobs.
fn job_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for the signal thread, and the thread, once it runs.
static JOBS: Mutex<Vec<Job>> = Mutex::new(Vec::new());
static SIGNAL_THREAD: OnceLock<libc::pthread_t> = OnceLock::new();

/// Runs `job` in the signal thread and waits (at most 5 s) for it to
/// finish: for what must be done in every thread of the process, such as
/// changing credentials, which Linux keeps per thread. Returns false when
/// the job did not run (no signal thread, or it did not answer in time).
pub fn in_signal_thread(job: impl FnOnce() + Send + 'static) -> bool {
    let Some(&thread) = SIGNAL_THREAD.get() else {
        return false;
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    JOBS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Box::new(move || {
            job();
            let _ = done_tx.send(());
        }));
    // SAFETY: `thread` is the signal thread, which never exits.
    if unsafe { libc::pthread_kill(thread, job_signal()) } != 0 {
        return false;
    }
    done_rx.recv_timeout(Duration::from_secs(5)).is_ok()
}

fn handled() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, job_signal()] {
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

/// Blocks SIGINT, SIGTERM, SIGHUP and the job signal in this thread (and so
/// in every thread it starts) and starts the thread that takes them. Call it first in `main`,
/// before any other thread exists.
pub fn block() {
    block_in_this_thread();
    let set = handled();
    let shared = shared();
    let started = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: the set is valid and `signal` is ours to write.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                match signal {
                    s if s == job_signal() => {
                        let jobs =
                            std::mem::take(&mut *JOBS.lock().unwrap_or_else(|p| p.into_inner()));
                        for job in jobs {
                            job();
                        }
                    }
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
                        if !shared.stopped.load(Ordering::SeqCst) {
                            info!("{name} received, shutting down");
                        }
                        request_stop();
                    }
                }
            }
        });
    match started {
        // Known from here, before `block` returns: set by the thread itself,
        // it was not yet there when a fast start (the procfs samplers alone)
        // dropped capabilities, and the signal thread kept them all. A job
        // signal sent before the thread reaches sigwait stays pending: the
        // thread starts with these signals blocked, as this one has them.
        Ok(handle) => {
            use std::os::unix::thread::JoinHandleExt;
            let _ = SIGNAL_THREAD.set(handle.as_pthread_t());
        }
        Err(e) => {
            // without the thread the signals would stay pending forever: give
            // them back their default actions rather than ignore them
            eprintln!(
                "warning: cannot start the signal thread ({e}); signals take their default action"
            );
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        }
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

/// Stops the process's loops as SIGTERM would (e.g. when a role's server
/// ends for another reason).
pub fn request_stop() {
    let shared = shared();
    if shared.stopped.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = shared.stop_tx.send_replace(true);
    if shared.wake[1] >= 0 {
        // SAFETY: writing one byte from a valid buffer to our own pipe.
        unsafe { libc::write(shared.wake[1], [1u8].as_ptr().cast(), 1) };
    }
}

/// Waits up to `timeout` for SIGINT or SIGTERM (or [`request_stop`]); true
/// if one has come.
pub fn wait_for_stop(timeout: Duration) -> bool {
    let shared = shared();
    let mut left = timeout;
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            return true;
        }
        if left.is_zero() {
            return false;
        }
        // relative timeouts only, in slices of at most a second (see `wake`)
        let slice = left.min(Duration::from_secs(1));
        let start = crate::ticker::mono_now();
        if shared.wake[0] >= 0 {
            let mut fd = libc::pollfd {
                fd: shared.wake[0],
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = slice.as_millis().max(1) as libc::c_int;
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut fd, 1, ms) };
        } else {
            std::thread::sleep(slice.min(Duration::from_millis(50)));
        }
        left = left.saturating_sub(
            crate::ticker::mono_now()
                .saturating_sub(start)
                .max(Duration::from_millis(1)),
        );
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

/// SIGINT and SIGTERM, as a [`StopWait`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals;

impl StopWait for Signals {
    fn wait(&self, timeout: Duration) -> bool {
        wait_for_stop(timeout)
    }
}
