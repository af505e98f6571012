//! `blockio`: block IO operations, bytes, sizes and latency, by op.
//!
//! Hooks: `tp_btf/block_rq_issue`, `tp_btf/block_rq_complete`. Emits counters
//! `blockio_operations{op}` and `blockio_bytes{op}`, histograms
//! `blockio_size{op}` (bytes per completed request) and `blockio_latency{op}`
//! (issue to completion), for `op` = read, write, flush, discard, over the
//! disks backed by a device (virtual request-based disks such as loop and
//! nbd pass their IO on to another device and are left out, so nothing is
//! counted twice). Other request ops (write-zeroes, secure erase, zone and driver
//! ops) are not counted.
//!
//! Per disk, virtual ones included: histograms `blockio_device_latency{op,
//! device}` and `blockio_device_size{op, device}`, `device` named as in
//! `/sys/block` (`vda`, `nvme0n1`, `loop3`). They are separate metric
//! families because summing them with the all-disk series, or loop devices
//! with the disks beneath them, would count IO twice. Disks get a slot (by
//! major:minor) with their first completed request after the agent starts,
//! hot-plugged and new loop devices included. There are as many slots as
//! disks in `/sys/block` with a non-zero size at start plus 8, at most 256 (each holds 31 KiB
//! of histograms, kernel memory mapped into the agent); IO to disks beyond
//! them is in `device="other"`. A series appears with the disk's
//! first request of that op. Per-disk counts of operations, bytes and
//! merges come from the `blockio_devices` sampler.

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/blockio.skel.rs"));
}

use std::collections::BTreeMap;
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, classify, load_path, open_skel, possible_cpus, tracepoint_arg_count,
    BankCounter, MmapArray, NamedSlots, HISTOGRAM_BUCKETS,
};
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

pub static DEVICE_SIZE: MetricDef = MetricDef::histogram(
    "blockio_device_size",
    "bytes",
    "Size of completed block IO requests to disk `device` (virtual disks included), by op",
)
.labels(&["op", "device"]);
pub static DEVICE_LATENCY: MetricDef = MetricDef::histogram(
    "blockio_device_latency",
    "nanoseconds",
    "Block IO request latency from issue to completion on disk `device` (virtual disks included), by op",
)
.labels(&["op", "device"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "blockio",
    source: Source::Bpf("tp_btf/block_rq_issue, tp_btf/block_rq_complete"),
    options: &[],
    metrics: || {
        vec![
            &OPERATIONS,
            &BYTES,
            &SIZE,
            &LATENCY,
            &DEVICE_SIZE,
            &DEVICE_LATENCY,
        ]
    },
    init,
};

/// The kernel's REQ_OP numbers 0..=3, the order of the BPF counters.
pub const OPS: [&str; 4] = ["read", "write", "flush", "discard"];
/// Disks with series of their own: those in `/sys/block` at start (with a
/// non-zero size) plus this many (hot-plugged disks, new loop devices); the rest share
/// `device="other"`.
const SPARE_DEVICE_SLOTS: usize = 8;
/// `BLOCKIO_MAX_DEVICES` in blockio.bpf.c.
const MAX_DEVICES: usize = 256;
/// Histograms per disk slot: latency per op, then size per op.
const PER_DEVICE: usize = 2 * OPS.len();

/// One disk's histograms, by op: latency and size.
type DeviceSeries = Vec<(Arc<Series>, Arc<Series>)>;

struct Blockio {
    _skel: bpf::BlockioSkel<'static>,
    counters: MmapArray,
    histograms: MmapArray,
    /// Per op: operations and bytes counters, latency and size histograms.
    series: Vec<(BankCounter, BankCounter, Arc<Series>, Arc<Series>)>,
    scratch: Vec<u64>,
    devices: NamedSlots,
    device_histograms: MmapArray,
    /// Each slot's disk name, once the program has written it; the last
    /// slot is the shared `other`.
    device_names: Vec<Option<String>>,
    /// Series by disk name (a name may have had two dev_t's).
    device_series: BTreeMap<String, DeviceSeries>,
    method: String,
}

/// Slots for disks: those in `/sys/block` under `root` now with a non-zero
/// size (an unattached loop device or unconfigured zram has none, and many
/// systems keep dozens), plus spares.
fn device_slots(root: &std::path::Path) -> usize {
    let present = std::fs::read_dir(root.join("sys/block")).map_or(0, |dir| {
        dir.flatten()
            .filter(|disk| {
                std::fs::read(disk.path().join("size"))
                    .ok()
                    .and_then(|size| crate::source::parse_u64(size.trim_ascii()))
                    .is_some_and(|sectors| sectors > 0)
            })
            .count()
    });
    (present + SPARE_DEVICE_SLOTS).min(MAX_DEVICES)
}

/// Opens and loads the programs of one path, with `slots` disk slots.
fn load(
    ctx: &SamplerContext,
    slots: usize,
    compat: bool,
) -> anyhow::Result<bpf::BlockioSkel<'static>> {
    let mut open = open_skel(
        bpf::BlockioSkelBuilder::default(),
        ctx,
        compat,
        "opening the blockio BPF object",
    )?;
    open.maps
        .counters
        .set_max_entries(possible_cpus()? as u32)
        .map_err(|e| classify(e, "sizing the blockio counter banks"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow::anyhow!("the blockio BPF object has no .rodata"))?;
    rodata.device_slots = slots as u32;
    // older kernels pass block_rq_issue the queue, then the request
    rodata.issue_has_queue = tracepoint_arg_count(ctx, "block_rq_issue") == Some(2);
    open.maps
        .devices
        .set_max_entries(slots as u32)
        .map_err(|e| classify(e, "sizing the blockio disk slots"))?;
    open.maps
        .device_histograms
        .set_max_entries(((slots + 1) * PER_DEVICE * HISTOGRAM_BUCKETS) as u32)
        .map_err(|e| classify(e, "sizing the blockio disk histograms"))?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the blockio BPF programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to block_rq_issue and block_rq_complete"))?;
    Ok(skel)
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let slots = device_slots(&ctx.root);
    let (skel, method) = load_path(
        ctx,
        "tp_btf/block_rq_issue, tp_btf/block_rq_complete",
        "raw_tp/block_rq_issue, raw_tp/block_rq_complete",
        |compat| load(ctx, slots, compat),
    )?;
    let counters = MmapArray::new(&skel.maps.counters)?;
    let histograms = MmapArray::new(&skel.maps.histograms)?;
    let devices = NamedSlots::new(&skel.maps.devices)?;
    let device_histograms = MmapArray::new(&skel.maps.device_histograms)?;
    anyhow::ensure!(
        devices.len() == slots
            && device_histograms.entries() == (slots + 1) * PER_DEVICE * HISTOGRAM_BUCKETS,
        "blockio.bpf.c and its loader disagree on the number of disk slots"
    );
    let mut device_names = vec![None; slots + 1];
    device_names[slots] = Some("other".to_string());
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
        devices,
        device_histograms,
        device_names,
        device_series: BTreeMap::new(),
        method,
    }))
}

impl Sampler for Blockio {
    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }

    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for (op, (operations, bytes, latency, size)) in self.series.iter().enumerate() {
            operations.emit(&self.counters, &[], &mut self.scratch, out);
            bytes.emit(&self.counters, &[], &mut self.scratch, out);
            out.histogram(latency, self.histograms.histogram(op));
            out.histogram(size, self.histograms.histogram(OPS.len() + op));
        }
        self.emit_devices(out)
    }
}

impl Blockio {
    /// Per-disk histograms of the slots named so far, summed by name;
    /// a disk's op appears once it has a request.
    fn emit_devices(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        for slot in 0..self.devices.len() {
            if self.device_names[slot].is_none() {
                // as /sys/block spells it: a `/` in a disk name becomes `!`
                self.device_names[slot] = self.devices.name(slot).map(|n| n.replace('/', "!"));
            }
        }
        let mut by_name: BTreeMap<&str, Vec<Option<histogram::Histogram>>> = BTreeMap::new();
        for (slot, name) in self.device_names.iter().enumerate() {
            let Some(name) = name.as_deref() else {
                continue;
            };
            let sums = by_name
                .entry(name)
                .or_insert_with(|| vec![None; PER_DEVICE]);
            for (h, sum) in sums.iter_mut().enumerate() {
                let histogram = self.device_histograms.histogram(slot * PER_DEVICE + h);
                if histogram.as_slice().iter().all(|b| *b == 0) {
                    continue;
                }
                *sum = Some(match sum.take() {
                    Some(sum) => sum.wrapping_add(&histogram)?,
                    None => histogram,
                });
            }
        }
        for (name, sums) in by_name {
            let series = self
                .device_series
                .entry(name.to_string())
                .or_insert_with(|| {
                    OPS.iter()
                        .map(|op| {
                            let labels = [("op", *op), ("device", name)];
                            (
                                Series::new(&DEVICE_LATENCY, &labels),
                                Series::new(&DEVICE_SIZE, &labels),
                            )
                        })
                        .collect()
                });
            for (h, sum) in sums.into_iter().enumerate() {
                let Some(sum) = sum else { continue };
                let (latency, size) = &series[h % OPS.len()];
                out.histogram(if h < OPS.len() { latency } else { size }, sum);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_slots_count_disks_with_a_size_plus_spares() {
        let root = tempfile::tempdir().unwrap();
        for (disk, size) in [
            ("vda", "2097152\n"),
            ("loop0", "0\n"),
            ("nvme0n1", "junk\n"),
        ] {
            let dir = root.path().join("sys/block").join(disk);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("size"), size).unwrap();
        }
        std::fs::create_dir_all(root.path().join("sys/block/sda")).unwrap(); // no size file
        assert_eq!(device_slots(root.path()), 1 + SPARE_DEVICE_SLOTS);
        assert_eq!(
            device_slots(std::path::Path::new("/nonexistent")),
            SPARE_DEVICE_SLOTS
        );
    }
}
