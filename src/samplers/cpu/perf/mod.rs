//! `cpu_perf`: cycles and instructions per CPU (IPC is their ratio), the
//! msr counters APERF, MPERF and TSC where the CPU offers them, and a
//! frequency estimate.
//!
//! Events: `cycles`, `instructions` (from the PMU; the sampler is
//! unsupported without either), `msr/tsc`, `msr/aperf`, `msr/mperf` (the msr
//! PMU, x86), counted system-wide as one group per CPU (see `crate::perf`).
//! Emits `cpu_cycles`, `cpu_instructions`, `cpu_tsc`, `cpu_aperf`,
//! `cpu_mperf` per CPU (`id`) and in total, `cpu_frequency{method}`, and the
//! group times.
//!
//! Option `cgroups = N` (default 0: off) also counts cycles and instructions
//! for the first N cgroups (v2) of the hierarchy, in the kernel's perf cgroup
//! mode (see [`crate::perf::cgroups`]): `cgroup_cpu_cycles{name}`,
//! `cgroup_cpu_instructions{name}`. Off by default: it costs N x CPUs groups
//! of descriptors and a PMU switch in the kernel at every context switch
//! between cgroups.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::perf::cgroups::{CgroupCounter, CgroupCounters};
use crate::perf::{
    ids, Counter, Event, Kind, PerfCounters, Probe, Totals, GROUP_TIME_ENABLED, GROUP_TIME_RUNNING,
};
use crate::samplers::{
    Absent, Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS,
};
use crate::snapshot::Emitter;

pub static CYCLES: MetricDef = MetricDef::counter(
    "cpu_cycles",
    "cycles",
    "CPU cycles while not halted on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static INSTRUCTIONS: MetricDef = MetricDef::counter(
    "cpu_instructions",
    "instructions",
    "Instructions retired on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static TSC: MetricDef = MetricDef::counter(
    "cpu_tsc",
    "cycles",
    "Time stamp counter cycles (constant rate) on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static APERF: MetricDef = MetricDef::counter(
    "cpu_aperf",
    "cycles",
    "APERF: cycles at the actual frequency while not idle, on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static MPERF: MetricDef = MetricDef::counter(
    "cpu_mperf",
    "cycles",
    "MPERF: cycles at the TSC rate while not idle, on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static FREQUENCY: MetricDef = MetricDef::gauge(
    "cpu_frequency",
    "hertz",
    "Average frequency of CPU `id` since the previous estimate, by `method`; without `id`, all CPUs",
)
.labels(&["method", "id"]);
pub static CGROUP_CYCLES: MetricDef = MetricDef::counter(
    "cgroup_cpu_cycles",
    "cycles",
    "CPU cycles while tasks of cgroup `name` or its descendants ran (option `cgroups`)",
)
.labels(&["name"]);
pub static CGROUP_INSTRUCTIONS: MetricDef = MetricDef::counter(
    "cgroup_cpu_instructions",
    "instructions",
    "Instructions retired by tasks of cgroup `name` or its descendants (option `cgroups`)",
)
.labels(&["name"]);

const CYCLES_EVENT: &str = "cycles";
const TSC_EVENT: &str = "msr/tsc";
const APERF_EVENT: &str = "msr/aperf";
const MPERF_EVENT: &str = "msr/mperf";

static COUNTERS: [Counter; 5] = [
    Counter {
        event: Event {
            name: CYCLES_EVENT,
            kind: Kind::Hardware(ids::CPU_CYCLES),
        },
        metric: &CYCLES,
        labels: &[],
        primary: true,
    },
    Counter {
        event: Event {
            name: "instructions",
            kind: Kind::Hardware(ids::INSTRUCTIONS),
        },
        metric: &INSTRUCTIONS,
        labels: &[],
        primary: true,
    },
    Counter {
        event: Event {
            name: TSC_EVENT,
            kind: Kind::Msr("tsc"),
        },
        metric: &TSC,
        labels: &[],
        primary: false,
    },
    Counter {
        event: Event {
            name: APERF_EVENT,
            kind: Kind::Msr("aperf"),
        },
        metric: &APERF,
        labels: &[],
        primary: false,
    },
    Counter {
        event: Event {
            name: MPERF_EVENT,
            kind: Kind::Msr("mperf"),
        },
        metric: &MPERF,
        labels: &[],
        primary: false,
    },
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_perf",
    source: Source::Perf(
        "cycles, instructions (needs a hardware PMU), msr/tsc, msr/aperf, msr/mperf",
    ),
    options: &[
        SamplerOption {
            key: "cgroups",
            default: 0,
            min: 0,
            max: 4096,
            description: "count cycles and instructions for this many cgroups, in walk order (0: none)",
        },
        SamplerOption {
            key: "cgroup_scan_interval_ms",
            default: 1000,
            min: 0,
            max: 3_600_000,
            description: "how often the cgroup hierarchy is walked for cgroups to count or close, in milliseconds (0: every snapshot)",
        },
    ],
    metrics: || {
        vec![
            &CGROUP_CYCLES,
            &CGROUP_INSTRUCTIONS,
            &CYCLES,
            &INSTRUCTIONS,
            &TSC,
            &APERF,
            &MPERF,
            &FREQUENCY,
            &GROUP_TIME_ENABLED,
            &GROUP_TIME_RUNNING,
        ]
    },
    init,
};

/// How the frequency is estimated, with the counters' positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// TSC rate x APERF/MPERF: the average frequency while not idle.
    AperfMperf {
        aperf: usize,
        mperf: usize,
        tsc: usize,
    },
    /// Cycles over elapsed (enabled) time. Cycles stop while a CPU is
    /// halted, so on a partly idle CPU this is below its running frequency.
    CyclesElapsed { cycles: usize },
}

impl Method {
    pub fn label(&self) -> &'static str {
        match self {
            Method::AperfMperf { .. } => "aperf_mperf",
            Method::CyclesElapsed { .. } => "cycles_elapsed",
        }
    }
}

/// An estimate needs at least this much counting time: shorter intervals
/// keep the previous estimate.
const MIN_INTERVAL_NS: u64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimate {
    /// Too little time since the previous estimate: keep it.
    TooShort,
    /// Nothing to divide by (APERF/MPERF on a CPU idle throughout).
    Undefined,
    Hertz(f64),
}

/// The frequency between two totals of the same CPU (or two sums over CPUs).
pub fn estimate(method: Method, prev: &Totals, now: &Totals) -> Estimate {
    let elapsed = now.enabled.wrapping_sub(prev.enabled);
    if elapsed < MIN_INTERVAL_NS {
        return Estimate::TooShort;
    }
    let delta = |i: usize| now.values[i].wrapping_sub(prev.values[i]) as f64;
    match method {
        Method::AperfMperf { aperf, mperf, tsc } => {
            if delta(mperf) == 0.0 {
                return Estimate::Undefined;
            }
            let tsc_hz = delta(tsc) * 1e9 / elapsed as f64;
            Estimate::Hertz(tsc_hz * delta(aperf) / delta(mperf))
        }
        Method::CyclesElapsed { cycles } => Estimate::Hertz(delta(cycles) * 1e9 / elapsed as f64),
    }
}

struct Frequency {
    method: Method,
    /// Per CPU (`None`: the sum over CPUs): totals at the last estimate, the
    /// estimate, and the series.
    state: BTreeMap<Option<u32>, (Totals, Option<i64>, Arc<Series>)>,
}

impl Frequency {
    fn update(&mut self, counters: &PerfCounters, out: &mut Emitter<'_>) {
        let mut sum: Option<Totals> = None;
        let mut points: Vec<(Option<u32>, Totals)> = Vec::new();
        for (id, totals, fresh) in counters.per_cpu() {
            if !fresh {
                // offline: no current frequency, and no stale one either
                if let Some((_, hz, _)) = self.state.get_mut(&Some(id)) {
                    *hz = None;
                }
            }
            let s = sum.get_or_insert_with(|| Totals {
                values: vec![0; totals.values.len()],
                ..Default::default()
            });
            for (a, b) in s.values.iter_mut().zip(&totals.values) {
                *a = a.wrapping_add(*b);
            }
            s.enabled = s.enabled.wrapping_add(totals.enabled);
            if fresh {
                points.push((Some(id), totals.clone()));
            }
        }
        points.extend(sum.map(|s| (None, s)));
        let method = self.method;
        for (id, now) in points {
            let (prev, hz, series) = self.state.entry(id).or_insert_with(|| {
                let label = method.label();
                let series = match id {
                    Some(id) => {
                        Series::new(&FREQUENCY, &[("method", label), ("id", &id.to_string())])
                    }
                    None => Series::new(&FREQUENCY, &[("method", label)]),
                };
                (
                    Totals {
                        values: vec![0; now.values.len()],
                        ..Default::default()
                    },
                    None,
                    series,
                )
            });
            match estimate(method, prev, &now) {
                Estimate::TooShort => {}
                Estimate::Undefined => {
                    *hz = None;
                    *prev = now;
                }
                Estimate::Hertz(f) => {
                    *hz = Some(f.round() as i64);
                    *prev = now;
                }
            }
            if let Some(hz) = *hz {
                out.gauge(series, hz);
            }
        }
    }
}

struct CpuPerf {
    counters: PerfCounters,
    frequency: Option<Frequency>,
    cgroups: Option<CgroupCounters>,
}

/// Cycles and instructions per cgroup, when asked for and possible.
fn cgroup_counters(
    ctx: &SamplerContext,
    counters: &mut PerfCounters,
) -> anyhow::Result<Option<CgroupCounters>> {
    let max = ctx.option(&SPEC, "cgroups") as usize;
    if max == 0 {
        return Ok(None);
    }
    let absent = |reason: String| {
        [&CGROUP_CYCLES, &CGROUP_INSTRUCTIONS].map(|m| Absent {
            metric: m.name.to_string(),
            reason: reason.clone(),
        })
    };
    if counters.position(CYCLES_EVENT).is_none() || counters.position("instructions").is_none() {
        for a in absent("needs both cycles and instructions".into()) {
            counters.add_absent(a);
        }
        return Ok(None);
    }
    let mount = match crate::cgroups::find_mount(&ctx.root) {
        Ok(mount) => mount,
        Err(why) => {
            for a in absent(why.to_string()) {
                counters.add_absent(a);
            }
            return Ok(None);
        }
    };
    let events = [
        CgroupCounter {
            event: COUNTERS[0].event,
            metric: &CGROUP_CYCLES,
        },
        CgroupCounter {
            event: COUNTERS[1].event,
            metric: &CGROUP_INSTRUCTIONS,
        },
    ];
    let interval = ctx.option(&SPEC, "cgroup_scan_interval_ms") as u64;
    CgroupCounters::new(
        SPEC.name,
        &ctx.root,
        mount,
        &events,
        max,
        std::time::Duration::from_millis(interval),
    )
    .map(Some)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let probe = Probe::run(&ctx.root, &COUNTERS)?;
    let mut counters = PerfCounters::start("cpu_perf", probe)?;
    let pos = |name| counters.position(name);
    let method = match (
        pos(APERF_EVENT),
        pos(MPERF_EVENT),
        pos(TSC_EVENT),
        pos(CYCLES_EVENT),
    ) {
        (Some(aperf), Some(mperf), Some(tsc), _) => Some(Method::AperfMperf { aperf, mperf, tsc }),
        (_, _, _, Some(cycles)) => Some(Method::CyclesElapsed { cycles }),
        _ => None,
    };
    if method.is_none() {
        counters.add_absent(Absent {
            metric: "cpu_frequency".into(),
            reason: "needs cycles, or msr/aperf, msr/mperf and msr/tsc".into(),
        });
    }
    let cgroups = cgroup_counters(ctx, &mut counters)?;
    Ok(Box::new(CpuPerf {
        counters,
        frequency: method.map(|method| Frequency {
            method,
            state: BTreeMap::new(),
        }),
        cgroups,
    }))
}

impl Sampler for CpuPerf {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        self.counters.refresh();
        self.counters.emit(out);
        if let Some(frequency) = self.frequency.as_mut() {
            frequency.update(&self.counters, out);
        }
        if let Some(cgroups) = self.cgroups.as_mut() {
            cgroups.emit(out)?;
        }
        Ok(())
    }

    fn absent(&self) -> Vec<Absent> {
        self.counters.absent().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(values: &[u64], enabled: u64) -> Totals {
        Totals {
            values: values.to_vec(),
            enabled,
            running: enabled,
        }
    }

    #[test]
    fn aperf_mperf_scales_the_tsc_rate() {
        // TSC at 2.5 GHz for 100 ms; busy half the time at 1.2x base
        let method = Method::AperfMperf {
            aperf: 0,
            mperf: 1,
            tsc: 2,
        };
        let prev = totals(&[1_000, 2_000, 3_000], 5_000_000_000);
        let now = totals(
            &[
                1_000 + 150_000_000,
                2_000 + 125_000_000,
                3_000 + 250_000_000,
            ],
            5_100_000_000,
        );
        match estimate(method, &prev, &now) {
            Estimate::Hertz(hz) => assert!((hz - 3.0e9).abs() < 1.0, "{hz}"),
            other => panic!("{other:?}"),
        }
        // idle throughout: no MPERF, no estimate (not zero)
        let idle = totals(&[1_000, 2_000, 3_000 + 250_000_000], 5_100_000_000);
        assert_eq!(estimate(method, &prev, &idle), Estimate::Undefined);
    }

    #[test]
    fn cycles_over_elapsed_time() {
        let method = Method::CyclesElapsed { cycles: 0 };
        let prev = totals(&[0], 0);
        let now = totals(&[40_000_000], 20_000_000); // 40 M cycles in 20 ms
        assert_eq!(estimate(method, &prev, &now), Estimate::Hertz(2.0e9));
        let soon = totals(&[40_000_000], 5_000_000);
        assert_eq!(estimate(method, &prev, &soon), Estimate::TooShort);
    }
}
