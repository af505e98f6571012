//! What the agent's BPF programs cost, from the kernel's own run-time
//! statistics (`run_cnt` and `run_time_ns` of `bpf_prog_info`).
//!
//! The kernel counts them only while its BPF statistics are on, which adds
//! two clock reads to every program run; so they are never on by default.
//! `rezolus status --cost 10s` (as root) turns them on for that long with
//! `BPF_ENABLE_STATS`, which the kernel undoes when that command exits (the
//! sysctl `kernel.bpf_stats_enabled` does not show it). The agent needs no
//! privilege for this: it reads its own programs' statistics through the
//! descriptors it holds.
//!
//! `GET /status` always lists every program's cumulative counts
//! ([`ProgramStats`]); `status --cost` takes the differences over its own
//! window. It also starts a measurement in the agent (`GET
//! /status?cost=start`), from which `/samplers` and `/status` show each
//! sampler's cost ([`Cost`]) while the programs' counts keep moving; the
//! first reading that sees them still ends it.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Instant;

use serde::Serialize;

/// The cost of some programs over a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// Seconds measured.
    pub seconds: f64,
    /// Program runs per second (one run per kernel event).
    pub events_per_second: f64,
    /// Mean run time per event, in nanoseconds (the two clock reads the
    /// statistics add are not in it); null with no events.
    pub ns_per_event: Option<f64>,
    /// Run time as a share of one CPU, in percent.
    pub cpu_percent: f64,
}

/// One program's cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramCost {
    pub sampler: &'static str,
    /// The program's name as the kernel knows it (at most 15 bytes).
    pub program: String,
    /// The kernel's id of the program (`bpftool prog show id N`).
    pub id: u32,
    #[serde(flatten)]
    pub cost: Cost,
}

/// One program's cumulative run-time statistics, as the kernel keeps them
/// (both stay still while the statistics are off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramStats {
    pub sampler: &'static str,
    /// The program's name as the kernel knows it (at most 15 bytes).
    pub program: String,
    /// The kernel's id of the program.
    pub id: u32,
    /// Runs counted while the statistics were on.
    pub run_count: u64,
    /// Their total run time, in nanoseconds.
    pub run_time_ns: u64,
}

/// One reading of every program.
type Reading = (Instant, Vec<ProgramStats>);

/// The measurement in progress (see the module's docs).
#[derive(Default)]
pub struct Meter {
    start: Option<Reading>,
    last: Option<Reading>,
}

/// Every program's statistics now (one `bpf(BPF_OBJ_GET_INFO_BY_FD)` each).
pub fn read_programs(programs: &[(&'static str, RawFd)]) -> Vec<ProgramStats> {
    programs
        .iter()
        .filter_map(|&(sampler, fd)| {
            let info = crate::bpf::prog_info(fd).ok()?;
            let name: Vec<u8> = info
                .name
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            Some(ProgramStats {
                sampler,
                program: String::from_utf8_lossy(&name).into_owned(),
                id: info.id,
                run_count: info.run_cnt,
                run_time_ns: info.run_time_ns,
            })
        })
        .collect()
}

/// Each program's cost between two readings, matched by id.
pub fn between(before: &[ProgramStats], after: &[ProgramStats], seconds: f64) -> Vec<ProgramCost> {
    let before: HashMap<u32, &ProgramStats> = before.iter().map(|p| (p.id, p)).collect();
    after
        .iter()
        .map(|p| {
            let (runs0, ns0) = before.get(&p.id).map_or((p.run_count, p.run_time_ns), |b| {
                (b.run_count, b.run_time_ns)
            });
            ProgramCost {
                sampler: p.sampler,
                program: p.program.clone(),
                id: p.id,
                cost: cost(
                    p.run_count.saturating_sub(runs0),
                    p.run_time_ns.saturating_sub(ns0),
                    seconds.max(f64::MIN_POSITIVE),
                ),
            }
        })
        .collect()
}

impl Meter {
    /// Starts a measurement at `now`.
    pub fn start(&mut self, now: &[ProgramStats]) {
        let reading = (Instant::now(), now.to_vec());
        self.start = Some(reading.clone());
        self.last = Some(reading);
    }

    /// The cost since the measurement started, or `None` when there is
    /// none or the programs' counts have not moved since the last reading
    /// (the statistics are off: that ends the measurement).
    pub fn read(&mut self, now: &[ProgramStats]) -> Option<Vec<ProgramCost>> {
        let (_, last) = self.last.as_ref()?;
        let moved = now.iter().any(|p| {
            last.iter()
                .any(|l| l.id == p.id && p.run_time_ns > l.run_time_ns)
        });
        if !moved {
            self.start = None;
            self.last = None;
            return None;
        }
        self.last = Some((Instant::now(), now.to_vec()));
        let (since, start) = self.start.as_ref()?;
        Some(between(start, now, since.elapsed().as_secs_f64()))
    }
}

/// `events` runs that took `run_ns` in all, over `seconds`.
pub fn cost(events: u64, run_ns: u64, seconds: f64) -> Cost {
    Cost {
        seconds,
        events_per_second: events as f64 / seconds,
        ns_per_event: (events > 0).then(|| run_ns as f64 / events as f64),
        cpu_percent: run_ns as f64 / (seconds * 1e9) * 100.0,
    }
}

/// Sums program costs per sampler.
pub fn per_sampler(programs: &[ProgramCost]) -> HashMap<&'static str, Cost> {
    let mut sums: HashMap<&'static str, (f64, f64, f64)> = HashMap::new();
    for p in programs {
        let entry = sums.entry(p.sampler).or_insert((0.0, 0.0, p.cost.seconds));
        entry.0 += p.cost.events_per_second * p.cost.seconds;
        entry.1 += p.cost.cpu_percent / 100.0 * p.cost.seconds * 1e9;
    }
    sums.into_iter()
        .map(|(sampler, (events, ns, seconds))| {
            (
                sampler,
                cost(events.round() as u64, ns.round() as u64, seconds),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_figures() {
        let c = cost(2_000, 100_000, 2.0);
        assert_eq!(c.events_per_second, 1000.0);
        assert_eq!(c.ns_per_event, Some(50.0));
        assert!((c.cpu_percent - 0.005).abs() < 1e-12);
        assert_eq!(cost(0, 0, 1.0).ns_per_event, None);
    }

    #[test]
    fn per_sampler_sums_programs() {
        let p = |sampler, events, ns| ProgramCost {
            sampler,
            program: "p".into(),
            id: 1,
            cost: cost(events, ns, 2.0),
        };
        let sums = per_sampler(&[p("a", 100, 1000), p("a", 300, 3000), p("b", 1, 1)]);
        assert_eq!(sums["a"], cost(400, 4000, 2.0));
        assert_eq!(sums["b"], cost(1, 1, 2.0));
    }
}
