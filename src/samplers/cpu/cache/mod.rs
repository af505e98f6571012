//! `cpu_cache`: cache accesses and misses, from the PMU.
//!
//! Events: the last-level cache read events `LLC-loads` and
//! `LLC-load-misses` where the PMU has both (label `event="llc"`), otherwise
//! the generic `cache-references` and `cache-misses` (label
//! `event="generic"`, whose meaning each CPU vendor defines). Counted
//! system-wide as one group per CPU (see `crate::perf`). Emits
//! `cpu_cache_access{event}` and `cpu_cache_miss{event}` per CPU (`id`) and
//! in total, and the group times.

use crate::metrics::MetricDef;
use crate::perf::{
    ids, Counter, CountingSampler, Event, Kind, PerfCounters, Probe, GROUP_TIME_ENABLED,
    GROUP_TIME_RUNNING,
};
use crate::samplers::{Absent, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::source::{is_unsupported, Unsupported};

pub static CACHE_ACCESS: MetricDef = MetricDef::counter(
    "cpu_cache_access",
    "accesses",
    "Cache accesses counted on CPU `id`; `event` says which PMU events; without `id`, all CPUs",
)
.labels(&["event", "id"]);
pub static CACHE_MISS: MetricDef = MetricDef::counter(
    "cpu_cache_miss",
    "misses",
    "Cache misses counted on CPU `id`; `event` says which PMU events; without `id`, all CPUs",
)
.labels(&["event", "id"]);

static LLC: [Counter; 2] = [
    Counter {
        event: Event {
            name: "LLC-loads",
            kind: Kind::Cache {
                cache: ids::CACHE_LL,
                op: ids::OP_READ,
                result: ids::RESULT_ACCESS,
            },
        },
        metric: &CACHE_ACCESS,
        labels: &[("event", "llc")],
        primary: true,
    },
    Counter {
        event: Event {
            name: "LLC-load-misses",
            kind: Kind::Cache {
                cache: ids::CACHE_LL,
                op: ids::OP_READ,
                result: ids::RESULT_MISS,
            },
        },
        metric: &CACHE_MISS,
        labels: &[("event", "llc")],
        primary: true,
    },
];

static GENERIC: [Counter; 2] = [
    Counter {
        event: Event {
            name: "cache-references",
            kind: Kind::Hardware(ids::CACHE_REFERENCES),
        },
        metric: &CACHE_ACCESS,
        labels: &[("event", "generic")],
        primary: true,
    },
    Counter {
        event: Event {
            name: "cache-misses",
            kind: Kind::Hardware(ids::CACHE_MISSES),
        },
        metric: &CACHE_MISS,
        labels: &[("event", "generic")],
        primary: true,
    },
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_cache",
    source: Source::Perf(
        "LLC-loads, LLC-load-misses, else cache-references, cache-misses (needs a hardware PMU)",
    ),
    options: &[],
    metrics: || {
        vec![
            &CACHE_ACCESS,
            &CACHE_MISS,
            &GROUP_TIME_ENABLED,
            &GROUP_TIME_RUNNING,
        ]
    },
    init,
};

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn crate::samplers::Sampler>> {
    // LLC only as a pair: an access count without its misses is no ratio
    let llc = match Probe::run(&ctx.root, &LLC) {
        Ok(probe) if probe.counts_all(&["LLC-loads", "LLC-load-misses"]) => {
            return Ok(Box::new(CountingSampler(PerfCounters::start(
                "cpu_cache",
                probe,
            )?)))
        }
        Ok(probe) => probe
            .absent()
            .iter()
            .map(|a| a.reason.clone())
            .collect::<Vec<_>>(),
        Err(e) if is_unsupported(&e) => vec![format!("{e:#}")],
        Err(e) => return Err(e),
    };
    let probe = match Probe::run(&ctx.root, &GENERIC) {
        Ok(probe) => probe,
        Err(e) if is_unsupported(&e) => {
            return Err(Unsupported(format!("{}; {e:#}", llc.join("; "))).into())
        }
        Err(e) => return Err(e),
    };
    let mut counters = PerfCounters::start("cpu_cache", probe)?;
    counters.add_absent(Absent {
        metric: "cpu_cache_access{event=\"llc\"}, cpu_cache_miss{event=\"llc\"}".into(),
        reason: format!(
            "counting cache-references and cache-misses instead: {}",
            llc.join("; ")
        ),
    });
    Ok(Box::new(CountingSampler(counters)))
}
