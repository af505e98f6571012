//! `cpu_usage`: time spent per CPU state, per CPU and in total.
//!
//! Source: `/proc/stat` (`cpuN` lines), converted from USER_HZ ticks to
//! nanoseconds. Emits `cpu_usage{state,id}` per CPU and `cpu_usage{state}`
//! in total. As in the kernel's accounting, `guest` time is also counted in
//! `user` and `guest_nice` in `nice`.
//!
//! The kernel's idle and iowait ticks may go back a little (proc(5)), and a
//! CPU that goes offline and comes back continues from an unrelated base.
//! Each per-CPU series is therefore kept by a [`CounterGuard`]: a small
//! decrease holds the last value, a CPU coming back (or a count falling below
//! half) continues from its new value without adding it. The total is the
//! sum of every CPU's increase (starting from the sum of the per-CPU lines at
//! the first read), not the kernel's `cpu` line, so an offline CPU can never
//! move it backwards. A malformed `cpuN` line costs only that CPU for that
//! read.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::common::{CounterGuard, Restart};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::{Correction, Emitter};
use crate::source::{fields, parse_lines, parse_u64, ParseError, ProcFile, Skipped};

pub static CPU_USAGE: MetricDef = MetricDef::counter(
    "cpu_usage",
    "nanoseconds",
    "Time spent by CPUs in each state; without `id`, summed over all CPUs",
)
.labels(&["state", "id"]);

/// Column order of the `cpu` lines in `/proc/stat`.
pub const STATES: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_usage",
    source: Source::Files("/proc/stat"),
    options: &[],
    metrics: || vec![&CPU_USAGE],
    init,
};

/// One `cpu` line: `id` is `None` for the kernel's all-CPU line. A state
/// the kernel does not report (older kernels have fewer columns) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTicks {
    pub id: Option<u32>,
    pub ticks: [Option<u64>; 10],
}

/// Parses the `cpu` lines of `/proc/stat`. A malformed `cpu` line (bad id,
/// a non-numeric column, no columns, not UTF-8) is skipped and reported:
/// its columns cannot be trusted, the other CPUs' can.
pub fn parse(text: &[u8]) -> (Vec<CpuTicks>, Skipped<'_>) {
    // lines other than `cpu...` (intr, ctxt, ...) are not ours to report
    parse_lines(text, |line| !line.starts_with(b"cpu"), parse_line)
}

fn parse_line(line: &[u8]) -> Option<CpuTicks> {
    let mut columns = fields(line);
    let suffix = columns.next()?.strip_prefix(b"cpu")?;
    let id = if suffix.is_empty() {
        None
    } else {
        Some(u32::try_from(parse_u64(suffix)?).ok()?)
    };
    let mut ticks = [None; 10];
    for (slot, field) in ticks.iter_mut().zip(columns) {
        *slot = Some(parse_u64(field)?);
    }
    ticks[0]?;
    Some(CpuTicks { id, ticks })
}

/// One CPU's series and guards, one per state.
struct Cpu {
    series: Vec<Arc<Series>>,
    guards: Vec<Option<CounterGuard>>,
    /// The last read it was in.
    round: u64,
}

struct CpuUsage {
    file: ProcFile,
    ns_per_tick: u64,
    cpus: BTreeMap<u32, Cpu>,
    total: Vec<Arc<Series>>,
    totals: [Option<u64>; 10],
    round: u64,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/stat")?;
    let path = file.path().to_path_buf();
    let (cpus, skipped) = parse(file.read()?);
    if !cpus.iter().any(|c| c.id.is_some()) {
        let reason = "no parsable `cpuN` line";
        return Err(ParseError::new(&path, reason, skipped.first).into());
    }
    Ok(Box::new(CpuUsage {
        file,
        ns_per_tick: ns_per_tick(),
        cpus: BTreeMap::new(),
        total: STATES
            .iter()
            .map(|state| Series::new(&CPU_USAGE, &[("state", state)]))
            .collect(),
        totals: [None; 10],
        round: 0,
    }))
}

/// Nanoseconds per USER_HZ tick (10 ms on every mainstream kernel).
pub fn ns_per_tick() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        1_000_000_000 / hz as u64
    } else {
        10_000_000
    }
}

impl Sampler for CpuUsage {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let (parsed, skipped) = parse(self.file.read()?);
        let skipped = skipped.summary();
        self.round += 1;
        let (round, first) = (self.round, self.round == 1);
        for cpu in &parsed {
            let Some(id) = cpu.id else { continue };
            let tracked = self.cpus.entry(id).or_insert_with(|| {
                let id = id.to_string();
                Cpu {
                    series: STATES
                        .iter()
                        .map(|state| Series::new(&CPU_USAGE, &[("state", state), ("id", &id)]))
                        .collect(),
                    guards: vec![None; STATES.len()],
                    round: 0,
                }
            });
            if tracked.round == round {
                continue; // the same CPU twice in one read: the first line counts
            }
            let returned = tracked.round != 0 && tracked.round + 1 != round;
            if returned {
                out.correction(&CPU_USAGE, Correction::Restart);
            }
            tracked.round = round;
            for (state, ticks) in cpu.ticks.iter().enumerate() {
                // a count that overflows in nanoseconds (over 5,000 years of
                // ticks) is not a reading: skipped, the last value is served
                let Some(ns) = ticks.and_then(|t| t.checked_mul(self.ns_per_tick)) else {
                    continue;
                };
                let delta = match &mut tracked.guards[state] {
                    // a CPU seen for the first time after the first read was
                    // offline: its ticks are from before, not new
                    None => {
                        tracked.guards[state] = Some(CounterGuard::new(ns));
                        if first {
                            ns
                        } else {
                            0
                        }
                    }
                    Some(guard) if returned => guard.reappear(ns, Restart::Rebase),
                    Some(guard) => guard.update(ns, Restart::Rebase, &CPU_USAGE, out),
                };
                let total = &mut self.totals[state];
                *total = Some(total.unwrap_or(0).saturating_add(delta));
            }
            for (series, guard) in tracked.series.iter().zip(&tracked.guards) {
                if let Some(guard) = guard {
                    out.counter(series, guard.served());
                }
            }
        }
        for (series, total) in self.total.iter().zip(self.totals) {
            if let Some(total) = total {
                out.counter(series, total);
            }
        }
        self.file.report(skipped);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::{counter, fixture, fixture_copy, init, refresh};
    use crate::snapshot::Snapshot;

    #[test]
    fn parses_real_stat() {
        let text = std::fs::read(fixture("vm6.18/proc/stat")).unwrap();
        let (cpus, skipped) = parse(&text);
        assert_eq!(skipped.count, 0);
        assert_eq!(cpus.len(), 3);
        assert_eq!(cpus[0].id, None);
        assert_eq!(cpus[1].id, Some(0));
        assert!(cpus.iter().all(|c| c.ticks.iter().all(Option::is_some)));
        // the kernel sums the aggregate line separately: it matches the
        // per-CPU lines to within a tick per CPU
        for (state, name) in STATES.iter().enumerate() {
            let sum: u64 = cpus[1..].iter().map(|c| c.ticks[state].unwrap()).sum();
            let total = cpus[0].ticks[state].unwrap();
            assert!(total.abs_diff(sum) <= 2, "state {name}: {total} vs {sum}");
        }
        assert_eq!(cpus[0].ticks[0], Some(768));
    }

    #[test]
    fn old_kernel_columns_are_absent_not_zero() {
        let root = fixture("old-kernel");
        let mut sampler = init("cpu_usage", &root).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let ns = ns_per_tick();
        assert_eq!(
            counter(&snap, "cpu_usage", &[("state", "user")]),
            Some(4705 * ns)
        );
        assert_eq!(
            counter(&snap, "cpu_usage", &[("state", "softirq"), ("id", "1")]),
            Some(3 * ns)
        );
        assert_eq!(counter(&snap, "cpu_usage", &[("state", "steal")]), None);
        assert_eq!(
            counter(&snap, "cpu_usage", &[("state", "guest_nice")]),
            None
        );
    }

    #[test]
    fn a_malformed_line_costs_only_its_cpu() {
        let text = b"cpu  9 9 9\ncpu0 1 x 3\ncpu1 4 5 6\ncpu\xff 1 2 3\ncpu2\ncpuX 1\n";
        let (cpus, skipped) = parse(text);
        assert_eq!(
            cpus.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![None, Some(1)]
        );
        assert_eq!(skipped.count, 4);
        assert_eq!(skipped.first, Some(&b"cpu0 1 x 3"[..]));
    }

    fn write_stat(path: &std::path::Path, cpus: &[(u32, [u64; 5])]) {
        let mut text = String::from("cpu  0 0 0 0 0 0 0 0 0 0\n");
        for (id, t) in cpus {
            text += &format!(
                "cpu{id} {} {} {} {} {} 0 0 0 0 0\n",
                t[0], t[1], t[2], t[3], t[4]
            );
        }
        text += "intr 1\nctxt 2\n";
        std::fs::write(path, text).unwrap();
    }

    fn iowait(snap: &Snapshot, id: Option<&str>) -> u64 {
        let mut labels = vec![("state", "iowait")];
        labels.extend(id.map(|id| ("id", id)));
        counter(snap, "cpu_usage", &labels).unwrap() / ns_per_tick()
    }

    #[test]
    fn iowait_going_back_a_tick_is_held_not_served() {
        let dir = fixture_copy("vm6.18");
        let stat = dir.path().join("proc/stat");
        write_stat(
            &stat,
            &[(0, [5, 0, 5, 100, 1000]), (1, [5, 0, 5, 100, 1000])],
        );
        let mut sampler = init("cpu_usage", dir.path()).unwrap();
        let mut seen = vec![];
        for ticks in [1000, 999, 998, 1001, 1003] {
            write_stat(
                &stat,
                &[(0, [5, 0, 5, 100, ticks]), (1, [5, 0, 5, 100, 1000])],
            );
            let snap = refresh(sampler.as_mut()).unwrap();
            seen.push((iowait(&snap, Some("0")), iowait(&snap, None)));
        }
        assert_eq!(
            seen,
            vec![
                (1000, 2000),
                (1000, 2000),
                (1000, 2000),
                (1001, 2001),
                (1003, 2003)
            ]
        );
    }

    #[test]
    fn an_impossible_count_is_skipped_not_served_forever() {
        let dir = fixture_copy("vm6.18");
        let stat = dir.path().join("proc/stat");
        write_stat(&stat, &[(0, [5, 0, 5, 100, 500]), (1, [5, 0, 5, 100, 500])]);
        let mut sampler = init("cpu_usage", dir.path()).unwrap();
        refresh(sampler.as_mut()).unwrap();
        // a glitch: more ticks than fit in u64 nanoseconds
        write_stat(
            &stat,
            &[
                (0, [5, 0, 5, 100, u64::MAX / 1000]),
                (1, [5, 0, 5, 100, 500]),
            ],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!((iowait(&snap, Some("0")), iowait(&snap, None)), (500, 1000));
        write_stat(&stat, &[(0, [5, 0, 5, 100, 570]), (1, [5, 0, 5, 100, 500])]);
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!((iowait(&snap, Some("0")), iowait(&snap, None)), (570, 1070));
    }

    #[test]
    fn a_cpu_going_offline_and_back_never_moves_the_total_backwards() {
        let dir = fixture_copy("vm6.18");
        let stat = dir.path().join("proc/stat");
        write_stat(
            &stat,
            &[(0, [500, 0, 0, 100, 10]), (1, [700, 0, 0, 100, 10])],
        );
        let mut sampler = init("cpu_usage", dir.path()).unwrap();
        let user = |s: &Snapshot, id: Option<&str>| {
            let mut labels = vec![("state", "user")];
            labels.extend(id.map(|id| ("id", id)));
            counter(s, "cpu_usage", &labels).map(|v| v / ns_per_tick())
        };
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(user(&snap, None), Some(1200));
        // cpu1 goes offline: its series are absent, the total keeps its part
        write_stat(&stat, &[(0, [510, 0, 0, 100, 10])]);
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(
            (user(&snap, None), user(&snap, Some("1"))),
            (Some(1210), None)
        );
        // it comes back with its counters from an unrelated base (here far
        // lower): nothing is added, its series continues from its last value
        write_stat(
            &stat,
            &[(0, [520, 0, 0, 100, 10]), (1, [50, 0, 0, 100, 10])],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(
            (user(&snap, None), user(&snap, Some("1"))),
            (Some(1220), Some(700))
        );
        write_stat(
            &stat,
            &[(0, [520, 0, 0, 100, 10]), (1, [60, 0, 0, 100, 10])],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(
            (user(&snap, None), user(&snap, Some("1"))),
            (Some(1230), Some(710))
        );
        // a CPU first seen after the start (offline until now) adds nothing
        // to the total at first, then its increases
        write_stat(
            &stat,
            &[
                (0, [520, 0, 0, 100, 10]),
                (1, [60, 0, 0, 100, 10]),
                (2, [9000, 0, 0, 1, 1]),
            ],
        );
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(
            (user(&snap, None), user(&snap, Some("2"))),
            (Some(1230), Some(9000))
        );
    }

    #[test]
    fn refresh_after_the_file_goes_bad_then_recovers() {
        let dir = fixture_copy("vm6.18");
        let mut sampler = init("cpu_usage", dir.path()).unwrap();
        let stat = dir.path().join("proc/stat");
        let good = std::fs::read(&stat).unwrap();
        std::fs::write(&stat, "garbage\n").unwrap();
        // nothing to report, but not an error that drops other samplers
        assert!(refresh(sampler.as_mut()).unwrap().counters.is_empty());
        std::fs::write(&stat, good).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(snap.counters.len(), 30);
    }
}
