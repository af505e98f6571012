//! `cpu_migrations`: tasks moved between CPUs.
//!
//! Hook: `tp_btf/sched_migrate_task`. Emits `cpu_migrations{direction=in|out}`
//! per CPU (`id`) and in total.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/migrations.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{check_support, classify, object_storage, possible_cpus, BankCounter, MmapArray};
use crate::metrics::MetricDef;
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static CPU_MIGRATIONS: MetricDef = MetricDef::counter(
    "cpu_migrations",
    "migrations",
    "Tasks migrated onto (`in`) or off (`out`) a CPU; without `id`, all CPUs",
)
.labels(&["direction", "id"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "cpu_migrations",
    source: Source::Bpf("tp_btf/sched_migrate_task"),
    options: &[],
    metrics: || vec![&CPU_MIGRATIONS],
    init,
};

/// Counter order in the BPF bank (`MIGRATED_IN`, `MIGRATED_OUT`).
const DIRECTIONS: [&str; 2] = ["in", "out"];

struct Migrations {
    _skel: bpf::MigrationsSkel<'static>,
    banks: MmapArray,
    counters: Vec<BankCounter>,
    scratch: Vec<u64>,
}

fn init(_: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support()?;
    let mut open = bpf::MigrationsSkelBuilder::default()
        .open(object_storage())
        .map_err(|e| classify(e, "opening the cpu_migrations BPF object"))?;
    let cpus = possible_cpus()?;
    open.maps
        .migrations
        .set_max_entries(cpus as u32)
        .map_err(|e| classify(e, "sizing the migration banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the cpu_migrations BPF program"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/sched_migrate_task"))?;
    let banks = MmapArray::new(&skel.maps.migrations)?;
    let counters = DIRECTIONS
        .iter()
        .enumerate()
        .map(|(i, direction)| {
            BankCounter::new(&CPU_MIGRATIONS, &[("direction", direction)], i, Some(cpus))
        })
        .collect();
    Ok(Box::new(Migrations {
        _skel: skel,
        banks,
        counters,
        scratch: Vec::new(),
    }))
}

impl Sampler for Migrations {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let online = crate::source::online_cpus();
        for counter in &self.counters {
            counter.emit(&self.banks, &online, &mut self.scratch, out);
        }
        Ok(())
    }
}
