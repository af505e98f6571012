//! `cpu_migrations`: tasks moved between CPUs.
//!
//! Hook: `tp_btf/sched_migrate_task`, or on the compatibility path
//! (`path = "compat"`, or a kernel without BTF of its own)
//! `raw_tp/sched_migrate_task`: the same count, the task's CPU read through
//! CO-RE. Emits `cpu_migrations{direction=in|out}` per CPU (`id`) and in
//! total.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/migrations.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, BankCounter, MmapArray,
};
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
    method: String,
}

/// Opens and loads the program of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::MigrationsSkel<'static>> {
    let mut open = open_skel(
        bpf::MigrationsSkelBuilder::default(),
        ctx,
        compat,
        "opening the cpu_migrations BPF object",
    )?;
    open.progs.sched_migrate_task.set_autoload(!compat);
    open.progs.sched_migrate_task_compat.set_autoload(compat);
    open.maps
        .migrations
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the migration banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the cpu_migrations BPF program"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to sched_migrate_task"))?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let cpus = possible_cpus()?;
    let (skel, method) = load_path(
        ctx,
        "tp_btf/sched_migrate_task",
        "raw_tp/sched_migrate_task",
        |compat| load(ctx, compat),
    )?;
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
        method,
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

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }
}
