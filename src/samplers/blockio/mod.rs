//! `blockio`: block IO operations, bytes, sizes and latency, by op.
//!
//! Hooks: `tp_btf/block_rq_issue`, `tp_btf/block_rq_complete`. Emits counters
//! `blockio_operations{op}` and `blockio_bytes{op}`, histograms
//! `blockio_size{op}` (bytes per completed request) and `blockio_latency{op}`
//! (issue to completion), for `op` = read, write, flush, discard, over the
//! disks backed by a device (virtual request-based disks such as loop and
//! nbd pass their IO on to another device and are left out, so nothing is
//! counted twice). Other request ops (write-zeroes, secure erase, zone and driver
//! ops) are not counted. Per-device figures come from `blockio_devices`.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/blockio.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};

use crate::bpf::{check_support, classify, object_storage, possible_cpus, BankCounter, MmapArray};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static OPERATIONS: MetricDef = MetricDef::counter(
    "blockio_operations",
    "operations",
    "Block IO requests completed, by op",
)
.labels(&["op"]);
pub static BYTES: MetricDef = MetricDef::counter(
    "blockio_bytes",
    "bytes",
    "Bytes completed by block IO requests, by op",
)
.labels(&["op"]);
pub static SIZE: MetricDef = MetricDef::histogram(
    "blockio_size",
    "bytes",
    "Size of completed block IO requests, by op",
)
.labels(&["op"]);
pub static LATENCY: MetricDef = MetricDef::histogram(
    "blockio_latency",
    "nanoseconds",
    "Block IO request latency from issue to the device until completion, by op",
)
.labels(&["op"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "blockio",
    source: Source::Bpf("tp_btf/block_rq_issue, tp_btf/block_rq_complete"),
    options: &[],
    metrics: || vec![&OPERATIONS, &BYTES, &SIZE, &LATENCY],
    init,
};

/// The kernel's REQ_OP numbers 0..=3, the order of the BPF counters.
pub const OPS: [&str; 4] = ["read", "write", "flush", "discard"];

struct Blockio {
    _skel: bpf::BlockioSkel<'static>,
    counters: MmapArray,
    histograms: MmapArray,
    /// Per op: operations and bytes counters, latency and size histograms.
    series: Vec<(BankCounter, BankCounter, Arc<Series>, Arc<Series>)>,
    scratch: Vec<u64>,
}

fn init(_: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support()?;
    let mut open = bpf::BlockioSkelBuilder::default()
        .open(object_storage())
        .map_err(|e| classify(e, "opening the blockio BPF object"))?;
    open.maps
        .counters
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the blockio counter banks"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the blockio BPF programs"))?;
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to tp_btf/block_rq_issue and block_rq_complete",
        )
    })?;
    let counters = MmapArray::new(&skel.maps.counters)?;
    let histograms = MmapArray::new(&skel.maps.histograms)?;
    Ok(Box::new(Blockio {
        _skel: skel,
        counters,
        histograms,
        series: OPS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                (
                    BankCounter::new(&OPERATIONS, &[("op", op)], i, None),
                    BankCounter::new(&BYTES, &[("op", op)], OPS.len() + i, None),
                    Series::new(&LATENCY, &[("op", op)]),
                    Series::new(&SIZE, &[("op", op)]),
                )
            })
            .collect(),
        scratch: Vec::new(),
    }))
}

impl Sampler for Blockio {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for (op, (operations, bytes, latency, size)) in self.series.iter().enumerate() {
            operations.emit(&self.counters, &[], &mut self.scratch, out);
            bytes.emit(&self.counters, &[], &mut self.scratch, out);
            out.histogram(latency, self.histograms.histogram(op));
            out.histogram(size, self.histograms.histogram(OPS.len() + op));
        }
        Ok(())
    }
}
