//! `syscall`: system calls by op class, and their latency.
//!
//! Hooks: `tp_btf/sys_enter` (count, start time in task storage) and
//! `tp_btf/sys_exit` (latency histogram). Emits `syscall{op}` and `syscall`
//! (total) counters, `syscall_latency{op}` and `syscall_latency` (all
//! classes) histograms. The syscall-number-to-class table is built here for
//! the running architecture ([`classes`]) and written into the program's
//! read-only data before load.
//!
//! Option `latency_sampling = K`: time only one call in K per CPU (counts
//! stay exact). Each timed call costs two clock reads, which dominate this
//! sampler's overhead; sampling trades rare slow calls for that cost.

pub mod classes;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/syscall.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{
    check_support, classify, object_storage, possible_cpus, BankCounter, MmapArray,
    HISTOGRAM_BUCKETS,
};
use crate::metrics::{MetricDef, Series, HISTOGRAM_GROUPING_POWER, HISTOGRAM_MAX_VALUE_POWER};
use crate::samplers::{Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use classes::CLASSES;

pub static SYSCALL: MetricDef = MetricDef::counter(
    "syscall",
    "syscalls",
    "System calls entered, by op class; without `op`, all of them",
)
.labels(&["op"]);
pub static SYSCALL_LATENCY: MetricDef = MetricDef::histogram(
    "syscall_latency",
    "nanoseconds",
    "Time from system call entry to exit, by op class; without `op`, all of them",
)
.labels(&["op"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "syscall",
    source: Source::Bpf("tp_btf/sys_enter, tp_btf/sys_exit"),
    options: &[SamplerOption {
        key: "latency_sampling",
        default: 1,
        min: 1,
        max: 1 << 16,
        description: "time one call in this many per CPU for syscall_latency (1: every call)",
    }],
    metrics: || vec![&SYSCALL, &SYSCALL_LATENCY],
    init,
};

struct Syscall {
    // keeps the programs attached for as long as the sampler lives
    _skel: bpf::SyscallSkel<'static>,
    counts: MmapArray,
    latency: MmapArray,
    total: Arc<Series>,
    per_class: Vec<BankCounter>,
    latency_total: Arc<Series>,
    latency_per_class: Vec<Arc<Series>>,
    scratch: Vec<u64>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support()?;
    let latency_sampling = ctx.option(&SPEC, "latency_sampling") as u32;
    let mut open = bpf::SyscallSkelBuilder::default()
        .open(object_storage())
        .map_err(|e| classify(e, "opening the syscall BPF object"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow::anyhow!("the syscall BPF object has no .rodata section"))?;
    rodata.syscall_class = classes::table();
    rodata.latency_sampling = latency_sampling;
    open.maps
        .counts
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the syscall counter banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the syscall BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/sys_enter and sys_exit"))?;
    let counts = MmapArray::new(&skel.maps.counts)?;
    let latency = MmapArray::new(&skel.maps.latency)?;
    Ok(Box::new(Syscall {
        _skel: skel,
        counts,
        latency,
        total: Series::new(&SYSCALL, &[]),
        per_class: CLASSES
            .iter()
            .enumerate()
            .map(|(i, class)| BankCounter::new(&SYSCALL, &[("op", class)], i, None))
            .collect(),
        latency_total: Series::new(&SYSCALL_LATENCY, &[]),
        latency_per_class: CLASSES
            .iter()
            .map(|c| Series::new(&SYSCALL_LATENCY, &[("op", c)]))
            .collect(),
        scratch: Vec::new(),
    }))
}

impl Sampler for Syscall {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let mut total = 0u64;
        for counter in &self.per_class {
            total = total.wrapping_add(counter.emit(&self.counts, &[], &mut self.scratch, out));
        }
        out.counter(&self.total, total);

        let mut all = vec![0u64; HISTOGRAM_BUCKETS];
        for (class, series) in self.latency_per_class.iter().enumerate() {
            let histogram = self.latency.histogram(class);
            for (sum, bucket) in all.iter_mut().zip(histogram.as_slice()) {
                *sum = sum.wrapping_add(*bucket);
            }
            out.histogram(series, histogram);
        }
        let all = histogram::Histogram::from_buckets(
            HISTOGRAM_GROUPING_POWER,
            HISTOGRAM_MAX_VALUE_POWER,
            all,
        )?;
        out.histogram(&self.latency_total, all);
        Ok(())
    }
}
