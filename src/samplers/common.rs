//! Helpers shared by samplers: counters that stay monotonic when the kernel's
//! do not.
//!
//! Kernel counters are not always monotonic. `/proc/stat`'s idle and iowait
//! may go back by a tick (proc(5) says so); some drivers' interface counters
//! dip for a moment; an interface that is deleted and re-created, or a disk
//! that is detached and re-attached, starts again from zero. A consumer such
//! as Prometheus reads any decrease as a restart and counts the whole new
//! value as an increase, so a one-tick jitter shows up as a spike of the
//! counter's whole lifetime. [`CounterGuard`] turns one source's readings into
//! a served value that never decreases:
//!
//! - a reading below the last one but at least half of it is *held*: the
//!   previous value is served until the reading passes it again (or, if it
//!   has not after [`HOLD_LIMIT`], the counter continues from the lowest
//!   reading seen while held, so a permanent small step back does not freeze
//!   it);
//! - a reading below half of the last one is a *restart*, handled as the
//!   source says ([`Restart`]): counted again from zero (a re-created
//!   interface), or continued from the new value without adding anything (a
//!   re-plugged CPU, whose counters carry on from an unrelated base).
//!
//! Both are counted in `rezolus_counter_corrections{counter,reason}` (reason
//! `held` or `restart`). Totals over several sources are sums of each
//! source's increase ([`CounterGuard::update`] returns it), so a source that
//! restarts or disappears never moves a total by its whole value.

use std::time::{Duration, Instant};

use crate::metrics::MetricDef;
use crate::snapshot::{Correction, Emitter};

/// How long a held (decreased) reading may stay below the served value
/// before the counter continues from the lowest reading seen.
pub const HOLD_LIMIT: Duration = Duration::from_secs(300);

/// What a restart of a source means for its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// The source counts from zero again (an interface or device re-created):
    /// its new value is all new.
    FromZero,
    /// The source carries on from an unrelated base (a CPU that went offline
    /// and came back): nothing of its new value is new.
    Rebase,
}

/// One counter of one source, served without ever going backwards.
#[derive(Debug, Clone)]
pub struct CounterGuard {
    /// The reading the served value corresponds to (the highest reading
    /// since the last restart).
    raw: u64,
    served: u64,
    /// Since when readings have been below `raw`, and the lowest of them.
    held: Option<(Instant, u64)>,
}

impl CounterGuard {
    /// A counter first read at `raw`, served as `raw`.
    pub fn new(raw: u64) -> Self {
        Self {
            raw,
            served: raw,
            held: None,
        }
    }

    /// The value to serve (never decreases).
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Takes a new reading of a source that was also present at the last
    /// refresh; returns how much the served value grew. Corrections are
    /// counted against `def` in `out`.
    pub fn update(
        &mut self,
        raw: u64,
        restart: Restart,
        def: &'static MetricDef,
        out: &mut Emitter<'_>,
    ) -> u64 {
        self.update_at(raw, restart, def, out, Instant::now())
    }

    fn update_at(
        &mut self,
        raw: u64,
        restart: Restart,
        def: &'static MetricDef,
        out: &mut Emitter<'_>,
        now: Instant,
    ) -> u64 {
        let delta = if raw >= self.raw {
            self.held = None;
            let delta = raw - self.raw;
            self.raw = raw;
            delta
        } else if raw < self.raw / 2 {
            out.correction(def, Correction::Restart);
            self.restart(raw, restart)
        } else {
            out.correction(def, Correction::Held);
            let (since, low) = self.held.get_or_insert((now, raw));
            *low = (*low).min(raw);
            if now.duration_since(*since) >= HOLD_LIMIT {
                // a lasting step back, not jitter: continue from the lowest
                // reading, so what was counted since then is not lost
                let delta = raw - *low;
                self.raw = raw;
                self.held = None;
                delta
            } else {
                0
            }
        };
        self.served = self.served.saturating_add(delta);
        delta
    }

    /// The source came back after being absent (or is known to have been
    /// re-created): applies `restart` to the reading `raw` and returns how
    /// much the served value grew.
    pub fn reappear(&mut self, raw: u64, restart: Restart) -> u64 {
        let delta = self.restart(raw, restart);
        self.served = self.served.saturating_add(delta);
        delta
    }

    fn restart(&mut self, raw: u64, restart: Restart) -> u64 {
        self.raw = raw;
        self.held = None;
        match restart {
            Restart::FromZero => raw,
            Restart::Rebase => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    static C: MetricDef = MetricDef::counter("test_counter", "", "");

    /// Feeds readings to one guard; returns (served values, deltas, corrections).
    fn run(readings: &[u64], restart: Restart) -> (Vec<u64>, Vec<u64>, Vec<Correction>) {
        let mut snap = Snapshot::new(std::time::SystemTime::now());
        let mut out = Emitter::new(&mut snap);
        let mut guard = CounterGuard::new(readings[0]);
        let (mut served, mut deltas) = (vec![guard.served()], vec![]);
        for &r in &readings[1..] {
            deltas.push(guard.update(r, restart, &C, &mut out));
            served.push(guard.served());
        }
        let corrections = snap.corrections.iter().map(|(_, c)| *c).collect();
        (served, deltas, corrections)
    }

    #[test]
    fn a_small_decrease_is_held_and_not_counted_twice() {
        // iowait 1000 -> 999 -> 1001 ticks
        let (served, deltas, corrections) = run(&[1000, 999, 1001], Restart::Rebase);
        assert_eq!(served, vec![1000, 1000, 1001]);
        assert_eq!(deltas, vec![0, 1]);
        assert_eq!(corrections, vec![Correction::Held]);
        // a dip of an interface counter that recovers past its old value
        let (served, _, corrections) = run(&[5000, 4000, 4500, 6000], Restart::FromZero);
        assert_eq!(served, vec![5000, 5000, 5000, 6000]);
        assert_eq!(corrections, vec![Correction::Held, Correction::Held]);
    }

    #[test]
    fn a_restart_counts_from_zero_or_rebases_per_source() {
        // an interface re-created: 1 GB then 300 bytes then 500
        let (served, deltas, corrections) = run(&[1_000_000_000, 300, 500], Restart::FromZero);
        assert_eq!(served, vec![1_000_000_000, 1_000_000_300, 1_000_000_500]);
        assert_eq!(deltas, vec![300, 200]);
        assert_eq!(corrections, vec![Correction::Restart]);
        // a counter that carries on from an unrelated base: nothing added
        let (served, deltas, _) = run(&[1_000_000, 10, 15], Restart::Rebase);
        assert_eq!(served, vec![1_000_000, 1_000_000, 1_000_005]);
        assert_eq!(deltas, vec![0, 5]);
    }

    #[test]
    fn a_lasting_step_back_is_released_after_the_hold_limit() {
        let mut snap = Snapshot::new(std::time::SystemTime::now());
        let mut out = Emitter::new(&mut snap);
        let t0 = Instant::now();
        let mut g = CounterGuard::new(1000);
        assert_eq!(g.update_at(900, Restart::Rebase, &C, &mut out, t0), 0);
        assert_eq!(
            g.update_at(
                905,
                Restart::Rebase,
                &C,
                &mut out,
                t0 + Duration::from_secs(10)
            ),
            0
        );
        // still below after the limit: continues from the lowest reading (900)
        let late = t0 + HOLD_LIMIT + Duration::from_secs(1);
        assert_eq!(g.update_at(950, Restart::Rebase, &C, &mut out, late), 50);
        assert_eq!(g.served(), 1050);
        assert_eq!(g.update_at(960, Restart::Rebase, &C, &mut out, late), 10);
        assert_eq!(g.served(), 1060);
    }

    #[test]
    fn reappearing_sources() {
        let mut g = CounterGuard::new(700);
        assert_eq!(g.reappear(40, Restart::FromZero), 40);
        assert_eq!(g.served(), 740);
        assert_eq!(g.reappear(10_000, Restart::Rebase), 0);
        assert_eq!(g.served(), 740);
    }
}
