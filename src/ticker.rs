//! The sampling cadence shared by the exporter, the recorder and hindsight.
//!
//! Ticks are scheduled on the monotonic clock, so a step of the wall clock
//! (NTP, a restored VM, an operator setting the date) never stalls or bursts
//! sampling. They start on the wall-clock grid (multiples of the interval
//! since the Unix epoch), so readers on many hosts sample in step, and each
//! tick is stamped with the wall clock as read at that moment. When the wall
//! clock moves by more than [`STEP_THRESHOLD`] against the monotonic clock
//! between two ticks, the tick reports the step (the caller logs it once and
//! records it) and the schedule is re-aligned to the grid of the new wall
//! time. A caller that falls behind skips the ticks it missed rather than
//! bursting.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::signals::StopWait;

/// The monotonic clock (CLOCK_MONOTONIC), read with the system call itself:
/// a tool that moves one process's clocks through its C library (such as
/// libfaketime, which moves the monotonic clock with the wall clock unless
/// told not to) cannot move it, so the cadence is the kernel's.
pub fn mono_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill.
    let rc = unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        // cannot fail with these arguments; the C library's clock otherwise
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        return START.get_or_init(Instant::now).elapsed();
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// A difference between wall-clock and monotonic time elapsed between two
/// ticks smaller than this is drift or slewing, not a step.
pub const STEP_THRESHOLD: Duration = Duration::from_secs(1);

/// One tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The point of the wall-clock grid this tick was scheduled for.
    pub grid: SystemTime,
    /// The wall clock when the tick fired: what a sample is stamped with.
    pub wall: SystemTime,
    /// A wall-clock step seen since the previous tick, in nanoseconds
    /// (negative: the clock went back).
    pub step_ns: Option<i64>,
    /// Ticks skipped because the caller was late.
    pub missed: u64,
}

/// Fires every `interval` on the monotonic clock (see the module docs).
#[derive(Debug)]
pub struct Ticker {
    interval: Duration,
    /// When the next tick fires ([`mono_now`]), and the grid point it
    /// stands for.
    next: Duration,
    next_grid: SystemTime,
    /// The clocks at the last tick (or at the start), to see steps.
    last_wall: SystemTime,
    last_mono: Duration,
}

/// The first point of the `step` grid (multiples of `step` since the Unix
/// epoch) strictly after `now`.
pub fn grid_after(now: SystemTime, step: Duration) -> SystemTime {
    let since = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let step = step.as_nanos().max(1);
    UNIX_EPOCH + Duration::from_nanos(((since / step + 1) * step) as u64)
}

/// `a - b` in signed nanoseconds.
fn signed_ns(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

impl Ticker {
    /// A ticker whose first tick is the next point of the wall-clock grid.
    pub fn new(interval: Duration) -> Self {
        Self::starting_at(interval, SystemTime::now(), mono_now())
    }

    fn starting_at(interval: Duration, wall: SystemTime, mono: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        let mut ticker = Self {
            interval,
            next: mono,
            next_grid: wall,
            last_wall: wall,
            last_mono: mono,
        };
        ticker.align(wall, mono);
        ticker
    }

    /// Schedules the next tick on the grid point after `wall`.
    fn align(&mut self, wall: SystemTime, mono: Duration) {
        let grid = grid_after(wall, self.interval);
        self.next = mono + grid.duration_since(wall).unwrap_or_default();
        self.next_grid = grid;
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next tick fires ([`mono_now`]).
    pub fn next_due(&self) -> Duration {
        self.next
    }

    /// Skips the next tick if it is due within `gap` (e.g. after a sample
    /// taken at start, so the first two are not a few ms apart).
    pub fn keep_apart(&mut self, gap: Duration) {
        if self.next.saturating_sub(mono_now()) < gap {
            self.next += self.interval;
            self.next_grid += self.interval;
        }
    }

    /// Waits for the next tick; `None` if `stop` asks to stop first.
    pub fn wait(&mut self, stop: &impl StopWait) -> Option<Tick> {
        loop {
            let left = self.next.saturating_sub(mono_now());
            if stop.wait(left) {
                return None;
            }
            if mono_now() >= self.next {
                break;
            }
        }
        Some(self.fire(SystemTime::now(), mono_now()))
    }

    /// The tick due at monotonic time `mono` (>= `self.next`), with the wall
    /// clock reading `wall`; schedules the one after.
    fn fire(&mut self, wall: SystemTime, mono: Duration) -> Tick {
        let grid = self.next_grid;
        let mono_elapsed = mono.saturating_sub(self.last_mono);
        let wall_elapsed = signed_ns(wall, self.last_wall);
        let drift = wall_elapsed - i64::try_from(mono_elapsed.as_nanos()).unwrap_or(i64::MAX);
        let step_ns = (drift.unsigned_abs() >= STEP_THRESHOLD.as_nanos() as u64).then_some(drift);
        (self.last_wall, self.last_mono) = (wall, mono);
        let late = mono.saturating_sub(self.next);
        let missed = (late.as_nanos() / self.interval.as_nanos()) as u64;
        if step_ns.is_some() {
            // the grid moved with the wall clock: join it again
            self.align(wall, mono);
        } else {
            let skip = self.interval * (missed as u32 + 1);
            self.next += skip;
            self.next_grid += skip;
        }
        Tick {
            grid,
            wall,
            step_ns,
            missed,
        }
    }
}

/// One reading of the agent: the tick it was taken on, and what came back.
#[derive(Debug)]
pub struct Reading {
    pub tick: Tick,
    /// The snapshot's bytes, as served.
    pub fetched: Result<Vec<u8>, crate::client::FetchError>,
    /// When the agent was first unreadable, if this reading ended a run of
    /// failed ones (nanoseconds since the epoch), and the first error.
    pub recovered: Option<(u64, String)>,
    /// The agent served the same bytes as at the previous reading: its
    /// cached snapshot (its `ttl` is not under the interval), no new
    /// sample. Logged once by the poller; a store of samples skips it.
    pub repeat: bool,
}

/// The loop shared by the exporter, the recorder and hindsight: wait for
/// the tick, note a wall-clock step, read the agent. It logs what every
/// role wants logged the same way, once each: a clock step, the agent
/// becoming unreachable (then a count at most once a minute), and the agent
/// answering again.
pub struct Poller {
    client: crate::client::Client,
    ticker: Ticker,
    failures: crate::logging::Repeated,
    /// Since when reads fail, and the first error.
    failing: Option<(u64, String)>,
    /// The last snapshot read, to tell a repeat.
    last: Vec<u8>,
    repeats: u64,
}

impl Poller {
    pub fn new(client: crate::client::Client, interval: Duration) -> Self {
        Self {
            client,
            ticker: Ticker::new(interval),
            failures: crate::logging::Repeated::new(),
            failing: None,
            last: Vec::new(),
            repeats: 0,
        }
    }

    /// Notes `bytes` as read (a first snapshot taken before the poller):
    /// the next reading is a repeat if the same.
    pub fn read_before(&mut self, bytes: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(bytes);
    }

    /// Readings that repeated the previous snapshot (see [`Reading::repeat`]).
    pub fn repeats(&self) -> u64 {
        self.repeats
    }

    /// When the next reading is due ([`mono_now`]).
    pub fn next_due(&self) -> Duration {
        self.ticker.next_due()
    }

    /// See [`Ticker::keep_apart`].
    pub fn keep_apart(&mut self, gap: Duration) {
        self.ticker.keep_apart(gap);
    }

    /// Since when the agent cannot be read, and the first error.
    pub fn failing(&self) -> Option<&(u64, String)> {
        self.failing.as_ref()
    }

    /// The next reading; `None` when `stop` asks to stop first.
    pub fn next(&mut self, stop: &impl StopWait) -> Option<Reading> {
        let tick = self.ticker.wait(stop)?;
        if let Some(step_ns) = tick.step_ns {
            tracing::warn!(
                "the wall clock stepped {} by {}: sampling keeps its cadence on the monotonic clock and re-aligns to the new time",
                if step_ns < 0 { "back" } else { "forward" },
                humantime::format_duration(Duration::from_millis(step_ns.unsigned_abs() / 1_000_000))
            );
        }
        let fetched = self.client.fetch_bytes();
        let url = self.client.url();
        let mut recovered = None;
        let repeat = match &fetched {
            Ok(bytes) if !bytes.is_empty() && *bytes == self.last => true,
            Ok(bytes) => {
                self.last.clear();
                self.last.extend_from_slice(bytes);
                false
            }
            Err(_) => false,
        };
        if repeat {
            self.repeats += 1;
            if self.repeats == 1 {
                tracing::warn!(
                    "the agent at {url} served its previous snapshot again: it reuses a snapshot for as long as this interval ({}) or longer; set its [general] ttl under half the interval (the recorder and hindsight store a snapshot once)",
                    humantime::format_duration(self.ticker.interval())
                );
            }
        }
        match &fetched {
            Ok(_) => {
                if self.failures.ok() {
                    tracing::info!("reading the agent again at {url}");
                }
                recovered = self.failing.take();
            }
            Err(e) => {
                let what = format!("reading the agent at {url}");
                let line = self.failures.note(Instant::now(), &what, e);
                match (&self.failing, line) {
                    (None, _) => tracing::warn!(
                        "cannot read the agent at {url}: {e}; retrying every {}",
                        humantime::format_duration(self.ticker.interval())
                    ),
                    (Some(_), Some(summary)) => tracing::warn!("{summary}"),
                    (Some(_), None) => {}
                }
                self.failing
                    .get_or_insert_with(|| (crate::client::unix_nanos(tick.wall), e.to_string()));
            }
        }
        Some(Reading {
            tick,
            fetched,
            recovered,
            repeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn starts_on_the_grid_and_keeps_the_cadence() {
        let mono = mono_now();
        let mut t = Ticker::starting_at(Duration::from_secs(1), at(10_250), mono);
        assert_eq!(t.next_grid, at(11_000));
        assert_eq!(t.next, mono + Duration::from_millis(750));
        let tick = t.fire(at(11_000), mono + Duration::from_millis(750));
        assert_eq!(
            (tick.grid, tick.step_ns, tick.missed),
            (at(11_000), None, 0)
        );
        assert_eq!(t.next, mono + Duration::from_millis(1750));
        assert_eq!(t.next_grid, at(12_000));
    }

    #[test]
    fn a_backwards_step_of_the_wall_clock_does_not_stall_the_ticks() {
        let mono = mono_now();
        let mut t = Ticker::starting_at(Duration::from_secs(1), at(1_000_000), mono);
        t.fire(at(1_001_000), mono + Duration::from_secs(1));
        // the wall clock jumps 600 s back: the next tick is still due one
        // second later on the monotonic clock, and reports the step
        assert_eq!(t.next, mono + Duration::from_secs(2));
        let tick = t.fire(at(402_000), mono + Duration::from_secs(2));
        assert_eq!(tick.step_ns, Some(-600_000_000_000));
        assert_eq!(tick.wall, at(402_000));
        // re-aligned to the new grid, one interval or less ahead
        assert_eq!(t.next_grid, at(403_000));
        assert_eq!(t.next, mono + Duration::from_secs(3));
        let tick = t.fire(at(403_000), mono + Duration::from_secs(3));
        assert_eq!(tick.step_ns, None);
    }

    #[test]
    fn a_forward_step_is_reported_and_late_ticks_are_skipped() {
        let mono = mono_now();
        let mut t = Ticker::starting_at(Duration::from_millis(100), at(5_000), mono);
        // 350 ms late: three ticks missed, the next one is on the grid
        let tick = t.fire(at(5_450), mono + Duration::from_millis(450));
        assert_eq!((tick.missed, tick.step_ns), (3, None));
        assert_eq!(t.next, mono + Duration::from_millis(500));
        let tick = t.fire(at(65_500), mono + Duration::from_millis(500));
        assert_eq!(tick.step_ns, Some(60_000_000_000));
    }

    struct Never;
    impl StopWait for Never {
        fn wait(&self, timeout: Duration) -> bool {
            std::thread::sleep(timeout);
            false
        }
    }

    struct Always;
    impl StopWait for Always {
        fn wait(&self, _: Duration) -> bool {
            true
        }
    }

    #[test]
    fn waits_in_real_time_and_stops_when_asked() {
        let mut t = Ticker::new(Duration::from_millis(20));
        let first = t.wait(&Never).unwrap();
        let second = t.wait(&Never).unwrap();
        let gap = second.grid.duration_since(first.grid).unwrap();
        assert_eq!(gap, Duration::from_millis(20) * (second.missed as u32 + 1));
        assert!(t.wait(&Always).is_none());
    }
}
