//! `cpu_usage`: time spent per CPU state, per CPU and in total.
//!
//! Source: `/proc/stat` (`cpu` and `cpuN` lines), converted from USER_HZ ticks
//! to nanoseconds. Emits `cpu_usage{state}` and `cpu_usage{state,id}`.
//! As in the kernel's accounting, `guest` time is also counted in `user` and
//! `guest_nice` in `nice`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{ParseError, ProcFile};

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

/// One `cpu` line: `id` is `None` for the all-CPU total. A state the kernel
/// does not report (older kernels have fewer columns) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTicks {
    pub id: Option<u32>,
    pub ticks: [Option<u64>; 10],
}

/// Parses the `cpu` lines of `/proc/stat`. A malformed `cpu` line is an error
/// naming it: columns after a bad one cannot be trusted.
pub fn parse(text: &str, path: &std::path::Path) -> Result<Vec<CpuTicks>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(label) = fields.next() else { continue };
        let Some(suffix) = label.strip_prefix("cpu") else {
            continue;
        };
        let id = if suffix.is_empty() {
            None
        } else {
            Some(
                suffix
                    .parse::<u32>()
                    .map_err(|_| ParseError::new(path, "bad cpu id", Some(line)))?,
            )
        };
        let mut ticks = [None; 10];
        for (slot, field) in ticks.iter_mut().zip(fields) {
            *slot = Some(
                field
                    .parse::<u64>()
                    .map_err(|_| ParseError::new(path, "bad tick count", Some(line)))?,
            );
        }
        if ticks[0].is_none() {
            return Err(ParseError::new(path, "cpu line without values", Some(line)));
        }
        out.push(CpuTicks { id, ticks });
    }
    if !out.iter().any(|c| c.id.is_none()) {
        return Err(ParseError::new(path, "no aggregate `cpu` line", None));
    }
    Ok(out)
}

struct CpuUsage {
    file: ProcFile,
    ns_per_tick: u64,
    /// Series per CPU (`None` = total), one per state.
    series: BTreeMap<Option<u32>, Vec<Arc<Series>>>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/stat")?;
    let path = file.path().to_path_buf();
    parse(file.read()?, &path)?;
    Ok(Box::new(CpuUsage {
        file,
        ns_per_tick: ns_per_tick(),
        series: BTreeMap::new(),
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
        let path = self.file.path().to_path_buf();
        let cpus = parse(self.file.read()?, &path)?;
        for cpu in cpus {
            let series = self.series.entry(cpu.id).or_insert_with(|| {
                let id = cpu.id.map(|id| id.to_string());
                STATES
                    .iter()
                    .map(|state| match &id {
                        Some(id) => Series::new(&CPU_USAGE, &[("state", state), ("id", id)]),
                        None => Series::new(&CPU_USAGE, &[("state", state)]),
                    })
                    .collect()
            });
            for (series, ticks) in series.iter().zip(cpu.ticks) {
                if let Some(ticks) = ticks {
                    out.counter(series, ticks.saturating_mul(self.ns_per_tick));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::{counter, fixture, fixture_copy, init, refresh};
    use std::path::Path;

    #[test]
    fn parses_real_stat() {
        let text = std::fs::read_to_string(fixture("vm6.18/proc/stat")).unwrap();
        let cpus = parse(&text, Path::new("stat")).unwrap();
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
        assert_eq!(counter(&snap, "cpu_usage", &[("state", "user")]), Some(4705 * ns));
        assert_eq!(counter(&snap, "cpu_usage", &[("state", "softirq"), ("id", "1")]), Some(3 * ns));
        assert_eq!(counter(&snap, "cpu_usage", &[("state", "steal")]), None);
        assert_eq!(counter(&snap, "cpu_usage", &[("state", "guest_nice")]), None);
    }

    #[test]
    fn malformed_line_is_an_error_naming_it() {
        let err = parse("cpu  1 2 3\ncpu0 1 x 3\n", Path::new("/proc/stat")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/proc/stat") && msg.contains("cpu0 1 x 3"), "{msg}");
        assert!(parse("intr 1 2\n", Path::new("s")).is_err());
    }

    #[test]
    fn refresh_after_the_file_goes_bad_fails_then_recovers() {
        let dir = fixture_copy("vm6.18");
        let mut sampler = init("cpu_usage", dir.path()).unwrap();
        let stat = dir.path().join("proc/stat");
        let good = std::fs::read_to_string(&stat).unwrap();
        std::fs::write(&stat, "garbage\n").unwrap();
        assert!(refresh(sampler.as_mut()).is_err());
        std::fs::write(&stat, good).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        assert_eq!(snap.counters.len(), 30);
    }
}
