//! `cpu_dtlb`: data TLB misses, from the PMU.
//!
//! Events: `dTLB-load-misses`, `dTLB-store-misses` (many AMD PMUs have only
//! the first; the other series is then absent), counted system-wide as one
//! group per CPU (see `crate::perf`). Emits `cpu_dtlb_miss{op}` per CPU
//! (`id`) and in total, and the group times.

use crate::metrics::MetricDef;
use crate::perf::{
    ids, Counter, CountingSampler, Event, Kind, GROUP_TIME_ENABLED, GROUP_TIME_RUNNING,
};
use crate::samplers::{SamplerContext, SamplerSpec, Source, SAMPLERS};

pub static DTLB_MISS: MetricDef = MetricDef::counter(
    "cpu_dtlb_miss",
    "misses",
    "Data TLB misses on CPU `id` by `op` (`load`, `store`); without `id`, all CPUs",
)
.labels(&["op", "id"]);

static COUNTERS: [Counter; 2] = [
    Counter {
        event: Event {
            name: "dTLB-load-misses",
            kind: Kind::Cache {
                cache: ids::CACHE_DTLB,
                op: ids::OP_READ,
                result: ids::RESULT_MISS,
            },
        },
        metric: &DTLB_MISS,
        labels: &[("op", "load")],
        primary: true,
    },
    Counter {
        event: Event {
            name: "dTLB-store-misses",
            kind: Kind::Cache {
                cache: ids::CACHE_DTLB,
                op: ids::OP_WRITE,
                result: ids::RESULT_MISS,
            },
        },
        metric: &DTLB_MISS,
        labels: &[("op", "store")],
        primary: true,
    },
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_dtlb",
    source: Source::Perf("dTLB-load-misses, dTLB-store-misses (needs a hardware PMU)"),
    options: &[],
    metrics: || vec![&DTLB_MISS, &GROUP_TIME_ENABLED, &GROUP_TIME_RUNNING],
    init,
};

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn crate::samplers::Sampler>> {
    CountingSampler::init("cpu_dtlb", &ctx.root, &COUNTERS)
}
