//! `scheduler_runqueue`: scheduler latency and context switches.
//!
//! Hooks: `tp_btf/sched_wakeup`, `tp_btf/sched_wakeup_new`,
//! `tp_btf/sched_switch`. Emits histograms `scheduler_runqueue_latency`
//! (runnable to running: after a wakeup, or after being preempted),
//! `scheduler_running` (time on CPU per slice) and `scheduler_offcpu` (switch
//! out to switch back in), and counters `scheduler_context_switch{kind}` per
//! CPU (`id`) and in total. The idle task is counted in switches but has no
//! latency samples.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/runqueue.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{check_support, classify, object_storage, possible_cpus, BankCounter, MmapArray};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static RUNQUEUE_LATENCY: MetricDef = MetricDef::histogram(
    "scheduler_runqueue_latency",
    "nanoseconds",
    "Time tasks wait on a run queue: from wakeup or preemption until they run",
);
pub static RUNNING: MetricDef = MetricDef::histogram(
    "scheduler_running",
    "nanoseconds",
    "Time tasks run on a CPU per slice",
);
pub static OFFCPU: MetricDef = MetricDef::histogram(
    "scheduler_offcpu",
    "nanoseconds",
    "Time tasks spend off CPU: from switch out until switched back in",
);
pub static CONTEXT_SWITCH: MetricDef = MetricDef::counter(
    "scheduler_context_switch",
    "switches",
    "Context switches: `voluntary` (the task blocked) or `involuntary` (preempted while runnable); without `id`, all CPUs",
)
.labels(&["kind", "id"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "scheduler_runqueue",
    source: Source::Bpf("tp_btf/sched_wakeup, tp_btf/sched_wakeup_new, tp_btf/sched_switch"),
    options: &[],
    metrics: || vec![&RUNQUEUE_LATENCY, &RUNNING, &OFFCPU, &CONTEXT_SWITCH],
    init,
};

/// Counter order in the BPF bank (`VOLUNTARY`, `INVOLUNTARY`).
const KINDS: [&str; 2] = ["voluntary", "involuntary"];

struct Runqueue {
    _skel: bpf::RunqueueSkel<'static>,
    switches: MmapArray,
    histograms: MmapArray,
    /// Histogram series in BPF order: runqueue latency, running, off-CPU.
    histogram_series: [Arc<Series>; 3],
    switch_counters: Vec<BankCounter>,
    scratch: Vec<u64>,
}

fn init(_: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support()?;
    let mut open = bpf::RunqueueSkelBuilder::default()
        .open(object_storage())
        .map_err(|e| classify(e, "opening the scheduler BPF object"))?;
    let cpus = possible_cpus()?;
    open.maps
        .switches
        .set_max_entries(cpus as u32)
        .map_err(|e| classify(e, "sizing the context switch banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the scheduler BPF programs"))?;
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to tp_btf/sched_wakeup, sched_wakeup_new, sched_switch",
        )
    })?;
    let switches = MmapArray::new(&skel.maps.switches)?;
    let histograms = MmapArray::new(&skel.maps.histograms)?;
    Ok(Box::new(Runqueue {
        _skel: skel,
        switches,
        histograms,
        histogram_series: [
            Series::new(&RUNQUEUE_LATENCY, &[]),
            Series::new(&RUNNING, &[]),
            Series::new(&OFFCPU, &[]),
        ],
        switch_counters: KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| BankCounter::new(&CONTEXT_SWITCH, &[("kind", kind)], i, Some(cpus)))
            .collect(),
        scratch: Vec::new(),
    }))
}

impl Sampler for Runqueue {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let online = crate::source::online_cpus();
        for counter in &self.switch_counters {
            counter.emit(&self.switches, &online, &mut self.scratch, out);
        }
        for (h, series) in self.histogram_series.iter().enumerate() {
            out.histogram(series, self.histograms.histogram(h));
        }
        Ok(())
    }
}
