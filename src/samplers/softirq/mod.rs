//! `softirq`: software interrupts handled, and the time spent in them.
//!
//! Hooks: `tp_btf/softirq_entry`, `tp_btf/softirq_exit`. Emits
//! `softirq{kind}` and `softirq_time{kind}` per CPU (`id`) and in total.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/softirq.skel.rs"));
}

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{check_support, classify, object_storage, possible_cpus, BankCounter, MmapArray};
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
}

fn init(_: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support()?;
    let mut open = bpf::SoftirqSkelBuilder::default()
        .open(object_storage())
        .map_err(|e| classify(e, "opening the softirq BPF object"))?;
    let cpus = possible_cpus()?;
    open.maps
        .softirqs
        .set_max_entries(cpus as u32)
        .map_err(|e| classify(e, "sizing the softirq banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the softirq BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/softirq_entry and softirq_exit"))?;
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
}
