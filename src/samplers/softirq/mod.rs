//! `softirq`: software interrupts handled, and the time spent in them.
//!
//! Hooks: `tp_btf/softirq_entry`, `tp_btf/softirq_exit`; on the compatibility
//! path (`path = "compat"`, or a kernel without BTF of its own) the same
//! `raw_tp` tracepoints. Emits
//! `softirq{kind}` and `softirq_time{kind}` per CPU (`id`) and in total.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/softirq.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, BankCounter, MmapArray,
};
use crate::metrics::MetricDef;
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static SOFTIRQ: MetricDef = MetricDef::counter(
    "softirq",
    "softirqs",
    "Softirqs handled, by kind; without `id`, all CPUs",
)
.labels(&["kind", "id"]);
pub static SOFTIRQ_TIME: MetricDef = MetricDef::counter(
    "softirq_time",
    "nanoseconds",
    "Time spent handling softirqs, by kind; without `id`, all CPUs",
)
.labels(&["kind", "id"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "softirq",
    source: Source::Bpf("tp_btf/softirq_entry, tp_btf/softirq_exit"),
    options: &[],
    metrics: || vec![&SOFTIRQ, &SOFTIRQ_TIME],
    init,
};

/// The kernel's softirq vector numbers, in order (include/linux/interrupt.h).
pub const KINDS: [&str; 10] = [
    "hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu",
];

struct Softirq {
    _skel: bpf::SoftirqSkel<'static>,
    banks: MmapArray,
    counters: Vec<BankCounter>,
    scratch: Vec<u64>,
    method: String,
}

/// Opens and loads the programs of one path.
fn load(ctx: &SamplerContext, compat: bool) -> anyhow::Result<bpf::SoftirqSkel<'static>> {
    let mut open = open_skel(
        bpf::SoftirqSkelBuilder::default(),
        ctx,
        compat,
        "opening the softirq BPF object",
    )?;
    let progs = &mut open.progs;
    progs.softirq_entry.set_autoload(!compat);
    progs.softirq_exit.set_autoload(!compat);
    progs.softirq_entry_compat.set_autoload(compat);
    progs.softirq_exit_compat.set_autoload(compat);
    open.maps
        .softirqs
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the softirq banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the softirq BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to softirq_entry and softirq_exit"))?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let cpus = possible_cpus()?;
    let (skel, method) = load_path(
        ctx,
        "tp_btf/softirq_entry, tp_btf/softirq_exit",
        "raw_tp/softirq_entry, raw_tp/softirq_exit",
        |compat| load(ctx, compat),
    )?;
    let banks = MmapArray::new(&skel.maps.softirqs)?;
    // bank layout: a count per kind, then a time per kind
    let mut counters = Vec::new();
    for (m, def) in [&SOFTIRQ, &SOFTIRQ_TIME].into_iter().enumerate() {
        for (k, kind) in KINDS.iter().enumerate() {
            counters.push(BankCounter::new(
                def,
                &[("kind", kind)],
                m * KINDS.len() + k,
                Some(cpus),
            ));
        }
    }
    Ok(Box::new(Softirq {
        _skel: skel,
        banks,
        counters,
        scratch: Vec::new(),
        method,
    }))
}

impl Sampler for Softirq {
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
