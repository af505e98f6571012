//! `cpu_software`: the kernel's software perf events, per CPU.
//!
//! Events: `minor-faults`, `major-faults`, `context-switches`,
//! `cpu-migrations`, counted system-wide as one group per CPU (see
//! `crate::perf`). They need no PMU, only root or CAP_PERFMON. Emits
//! `cpu_software_page_faults{kind}`, `cpu_software_context_switches` and
//! `cpu_software_migrations`, per CPU (`id`) and in total, and the group times.

use crate::metrics::MetricDef;
use crate::perf::{
    ids, Counter, CountingSampler, Event, Kind, GROUP_TIME_ENABLED, GROUP_TIME_RUNNING,
};
use crate::samplers::{SamplerContext, SamplerSpec, Source, SAMPLERS};

pub static PAGE_FAULTS: MetricDef = MetricDef::counter(
    "cpu_software_page_faults",
    "faults",
    "Page faults taken on CPU `id`: `minor` (no IO) or `major` (needed IO); without `id`, all CPUs",
)
.labels(&["kind", "id"]);
pub static CONTEXT_SWITCHES: MetricDef = MetricDef::counter(
    "cpu_software_context_switches",
    "switches",
    "Context switches on CPU `id`; without `id`, all CPUs",
)
.labels(&["id"]);
pub static MIGRATIONS: MetricDef = MetricDef::counter(
    "cpu_software_migrations",
    "migrations",
    "Tasks that ran on CPU `id` after moving there from another CPU; without `id`, all CPUs",
)
.labels(&["id"]);

static COUNTERS: [Counter; 4] = [
    Counter {
        event: Event {
            name: "context-switches",
            kind: Kind::Software(ids::SW_CONTEXT_SWITCHES),
        },
        metric: &CONTEXT_SWITCHES,
        labels: &[],
        primary: true,
    },
    Counter {
        event: Event {
            name: "cpu-migrations",
            kind: Kind::Software(ids::SW_CPU_MIGRATIONS),
        },
        metric: &MIGRATIONS,
        labels: &[],
        primary: true,
    },
    Counter {
        event: Event {
            name: "minor-faults",
            kind: Kind::Software(ids::SW_PAGE_FAULTS_MIN),
        },
        metric: &PAGE_FAULTS,
        labels: &[("kind", "minor")],
        primary: true,
    },
    Counter {
        event: Event {
            name: "major-faults",
            kind: Kind::Software(ids::SW_PAGE_FAULTS_MAJ),
        },
        metric: &PAGE_FAULTS,
        labels: &[("kind", "major")],
        primary: true,
    },
];

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_software",
    source: Source::Perf("context-switches, cpu-migrations, minor-faults, major-faults"),
    options: &[],
    metrics: || {
        vec![
            &PAGE_FAULTS,
            &CONTEXT_SWITCHES,
            &MIGRATIONS,
            &GROUP_TIME_ENABLED,
            &GROUP_TIME_RUNNING,
        ]
    },
    init,
};

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn crate::samplers::Sampler>> {
    CountingSampler::init("cpu_software", &ctx.root, &COUNTERS)
}
