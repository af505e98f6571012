//! `cpu_branch`: branch prediction, from the PMU.
//!
//! Events: `branch-instructions`, `branch-misses`, counted system-wide as one
//! group per CPU (see `crate::perf`). Emits `cpu_branch_instructions` and
//! `cpu_branch_misses` per CPU (`id`) and in total, and the group times.

use crate::metrics::MetricDef;
use crate::perf::{
    ids, Counter, CountingSampler, Event, Kind, GROUP_TIME_ENABLED, GROUP_TIME_RUNNING,
};
use crate::samplers::{SamplerContext, SamplerSpec, Source, SAMPLERS};

pub static BRANCH_INSTRUCTIONS: MetricDef = MetricDef::counter(
    "cpu_branch_instructions",
    "instructions",
    "Branch instructions retired on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static BRANCH_MISSES: MetricDef = MetricDef::counter(
    "cpu_branch_misses",
    "instructions",
    "Branch instructions mispredicted on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);

static COUNTERS: [Counter; 2] = [
    Counter {
        event: Event {
            name: "branch-instructions",
            kind: Kind::Hardware(ids::BRANCH_INSTRUCTIONS),
        },
        metric: &BRANCH_INSTRUCTIONS,
        labels: &[],
        primary: true,
    },
    Counter {
        event: Event {
            name: "branch-misses",
            kind: Kind::Hardware(ids::BRANCH_MISSES),
        },
        metric: &BRANCH_MISSES,
        labels: &[],
        primary: true,
    },
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_branch",
    source: Source::Perf("branch-instructions, branch-misses (needs a hardware PMU)"),
    options: &[],
    metrics: || {
        vec![
            &BRANCH_INSTRUCTIONS,
            &BRANCH_MISSES,
            &GROUP_TIME_ENABLED,
            &GROUP_TIME_RUNNING,
        ]
    },
    init,
};

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn crate::samplers::Sampler>> {
    CountingSampler::init("cpu_branch", &ctx.root, &COUNTERS)
}
