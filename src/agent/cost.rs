//! What the agent's BPF programs cost, from the kernel's own run-time
//! statistics (`run_cnt` and `run_time_ns` of `bpf_prog_info`).
//!
//! The kernel counts them only while its BPF statistics are on, which adds
//! two clock reads to every program run; so they are never on by default.
//! `rezolus status --cost 10s` (as root) turns them on for that long with
//! `BPF_ENABLE_STATS`, which the kernel undoes when that command exits, and
//! which `kernel.bpf_stats_enabled` does not show. The agent needs no
//! privilege for this: it reads its own programs' statistics through the
//! descriptors it holds, and knows they are on when they move. The first
//! reading that sees them move is the baseline; later readings report the
//! figures since it, until a reading sees no movement (statistics off).

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::time::Instant;

use serde::Serialize;

/// The cost of some programs over a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Cost {
    /// Seconds since the baseline.
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

/// What one program's `bpf_prog_info` says.
#[derive(Clone)]
struct Info {
    runs: u64,
    run_ns: u64,
    name: String,
    id: u32,
}

/// One reading of every program, by fd.
type Reading = (Instant, HashMap<RawFd, Info>);

/// The last reading, and the baseline while the statistics are on.
#[derive(Default)]
pub struct Meter {
    last: Option<Reading>,
    baseline: Option<Reading>,
}

fn read_programs(programs: &[(&'static str, RawFd)]) -> Reading {
    let readings = programs
        .iter()
        .filter_map(|&(_, fd)| {
            let info = crate::bpf::prog_info(fd).ok()?;
            let name: Vec<u8> = info
                .name
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            let info = Info {
                runs: info.run_cnt,
                run_ns: info.run_time_ns,
                name: String::from_utf8_lossy(&name).into_owned(),
                id: info.id,
            };
            Some((fd, info))
        })
        .collect();
    (Instant::now(), readings)
}

impl Meter {
    /// The cost of each of `programs` (sampler, fd) since the baseline, or
    /// `None` while the statistics are off or the baseline was just taken.
    pub fn read(&mut self, programs: &[(&'static str, RawFd)]) -> Option<Vec<ProgramCost>> {
        let now = read_programs(programs);
        let moved = self.last.as_ref().is_some_and(|(_, last)| {
            now.1
                .iter()
                .any(|(fd, i)| last.get(fd).is_some_and(|l| i.run_ns > l.run_ns))
        });
        self.last = Some(now.clone());
        if !moved {
            self.baseline = None;
            return None;
        }
        let Some((since, base)) = &self.baseline else {
            self.baseline = Some(now);
            return None;
        };
        let seconds = now.0.duration_since(*since).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        Some(
            programs
                .iter()
                .filter_map(|&(sampler, fd)| {
                    let i = now.1.get(&fd)?;
                    let (runs0, ns0) = base
                        .get(&fd)
                        .map_or((i.runs, i.run_ns), |b| (b.runs, b.run_ns));
                    Some(ProgramCost {
                        sampler,
                        program: i.name.clone(),
                        id: i.id,
                        cost: cost(
                            i.runs.saturating_sub(runs0),
                            i.run_ns.saturating_sub(ns0),
                            seconds,
                        ),
                    })
                })
                .collect(),
        )
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
