//! `softirq`: software interrupts handled, and the time spent in them.
//!
//! Hooks: `tp_btf/softirq_entry`, `tp_btf/softirq_exit`. Emits
//! `softirq{kind}` and `softirq_time{kind}` per CPU (`id`) and in total.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/softirq.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{check_support, classify, object_storage, possible_cpus, MmapArray};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static SOFTIRQ: MetricDef =
    MetricDef::counter("softirq", "softirqs", "Softirqs handled, by kind; without `id`, all CPUs").labels(&["kind", "id"]);
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
    /// `[count, time]` series per kind, in total and per CPU.
    total: Vec<[Arc<Series>; 2]>,
    per_cpu: Vec<Vec<[Arc<Series>; 2]>>,
    scratch: Vec<u64>,
}

fn kind_series(id: Option<&str>) -> Vec<[Arc<Series>; 2]> {
    KINDS
        .iter()
        .map(|kind| {
            [&SOFTIRQ, &SOFTIRQ_TIME].map(|def| match id {
                Some(id) => Series::new(def, &[("kind", kind), ("id", id)]),
                None => Series::new(def, &[("kind", kind)]),
            })
        })
        .collect()
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
    let mut skel = open.load().map_err(|e| classify(e, "loading the softirq BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/softirq_entry and softirq_exit"))?;
    let banks = MmapArray::new(&skel.maps.softirqs)?;
    Ok(Box::new(Softirq {
        _skel: skel,
        banks,
        total: kind_series(None),
        per_cpu: (0..cpus).map(|cpu| kind_series(Some(&cpu.to_string()))).collect(),
        scratch: Vec::new(),
    }))
}

impl Sampler for Softirq {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let online = crate::bpf::online_cpus();
        // bank layout: counts for each kind, then times for each kind
        for (kind, total) in self.total.iter().enumerate() {
            for (m, series) in total.iter().enumerate() {
                out.counter(series, self.banks.bank_counter(m * KINDS.len() + kind, &mut self.scratch));
                for (cpu, value) in self.scratch.iter().enumerate() {
                    if *value > 0 || online.contains(&cpu) {
                        out.counter(&self.per_cpu[cpu][kind][m], *value);
                    }
                }
            }
        }
        Ok(())
    }
}
