//! `blockio_devices`: IO per block device.
//!
//! Source: `/proc/diskstats`, filtered by `/sys/block`. Emits, with a `device`
//! label, `blockio_device_operations{op}`, `blockio_device_bytes{op}`, `blockio_device_merges{op}`,
//! `blockio_device_time{op}`, `blockio_device_busy` and `blockio_device_in_flight`.
//!
//! Only whole devices are reported (those in `/sys/block`): partitions would
//! count the same IO twice. A device that has never completed an IO (an
//! unattached loop device, an unused zram) is left out until it does.
//! Fields a kernel lacks (discards before 4.18, flushes before 5.5) are absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::metrics::{MetricDef, Series};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{ParseError, ProcFile};

pub static OPERATIONS: MetricDef = MetricDef::counter("blockio_device_operations", "operations", "Block IO operations completed").labels(&["op", "device"]);
pub static BYTES: MetricDef = MetricDef::counter("blockio_device_bytes", "bytes", "Bytes transferred by completed block IO").labels(&["op", "device"]);
pub static MERGES: MetricDef = MetricDef::counter("blockio_device_merges", "operations", "Adjacent block IO requests merged before issue").labels(&["op", "device"]);
pub static TIME: MetricDef = MetricDef::counter("blockio_device_time", "nanoseconds", "Time spent by block IO operations, summed over operations (millisecond resolution)").labels(&["op", "device"]);
pub static BUSY: MetricDef = MetricDef::counter("blockio_device_busy", "nanoseconds", "Time the device had IO in flight (millisecond resolution)").labels(&["device"]);
pub static IN_FLIGHT: MetricDef = MetricDef::gauge("blockio_device_in_flight", "operations", "Block IO operations issued and not yet completed").labels(&["device"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "blockio_devices",
    source: Source::Files("/proc/diskstats, /sys/block"),
    options: &[],
    metrics: || vec![&OPERATIONS, &BYTES, &MERGES, &TIME, &BUSY, &IN_FLIGHT],
    init,
};

const SECTOR: u64 = 512;
const NS_PER_MS: u64 = 1_000_000;

/// `(metric, op, column, scale)` for every per-op counter. Columns are those
/// after the device name in `/proc/diskstats` (Documentation/admin-guide/iostats.rst).
static OP_COLUMNS: [(&MetricDef, &str, usize, u64); 14] = [
    (&OPERATIONS, "read", 0, 1),
    (&OPERATIONS, "write", 4, 1),
    (&OPERATIONS, "discard", 11, 1),
    (&OPERATIONS, "flush", 15, 1),
    (&MERGES, "read", 1, 1),
    (&MERGES, "write", 5, 1),
    (&MERGES, "discard", 12, 1),
    (&BYTES, "read", 2, SECTOR),
    (&BYTES, "write", 6, SECTOR),
    (&BYTES, "discard", 13, SECTOR),
    (&TIME, "read", 3, NS_PER_MS),
    (&TIME, "write", 7, NS_PER_MS),
    (&TIME, "discard", 14, NS_PER_MS),
    (&TIME, "flush", 16, NS_PER_MS),
];
const IN_FLIGHT_COLUMN: usize = 8;
const BUSY_COLUMN: usize = 9;

/// One `/proc/diskstats` line: the device name and its 11, 15 or 17 columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats<'a> {
    pub name: &'a str,
    pub columns: Vec<u64>,
}

impl DiskStats<'_> {
    fn column(&self, index: usize) -> Option<u64> {
        self.columns.get(index).copied()
    }

    fn ever_used(&self) -> bool {
        [0, 4, 11, 15].iter().any(|&i| self.column(i).unwrap_or(0) > 0)
    }
}

/// Parses `/proc/diskstats`; a line with a non-numeric or missing column is
/// skipped (that device is absent from this refresh).
pub fn parse(text: &str) -> Vec<DiskStats<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            fields.next()?.parse::<u32>().ok()?; // major
            fields.next()?.parse::<u32>().ok()?; // minor
            let name = fields.next()?;
            let columns = fields.map(str::parse).collect::<Result<Vec<u64>, _>>().ok()?;
            (columns.len() >= 11).then_some(DiskStats { name, columns })
        })
        .collect()
}

struct DeviceSeries {
    ops: Vec<Arc<Series>>,
    busy: Arc<Series>,
    in_flight: Arc<Series>,
}

impl DeviceSeries {
    fn new(device: &str) -> Self {
        Self {
            ops: OP_COLUMNS
                .iter()
                .map(|(def, op, _, _)| Series::new(def, &[("op", op), ("device", device)]))
                .collect(),
            busy: Series::new(&BUSY, &[("device", device)]),
            in_flight: Series::new(&IN_FLIGHT, &[("device", device)]),
        }
    }
}

struct Devices {
    file: ProcFile,
    sys_block: PathBuf,
    devices: HashMap<String, DeviceSeries>,
}

/// Whole devices are listed in `/sys/block` (with `/` in names as `!`).
fn is_whole_device(sys_block: &Path, name: &str) -> bool {
    sys_block.join(name.replace('/', "!")).exists()
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/diskstats")?;
    let sys_block = ctx.root.join("sys/block");
    if !sys_block.is_dir() {
        return Err(crate::source::Unsupported(format!("{} does not exist", sys_block.display())).into());
    }
    let text = file.read()?;
    if !text.trim().is_empty() && parse(text).is_empty() {
        return Err(ParseError::new(file.path(), "no parsable device lines", None).into());
    }
    Ok(Box::new(Devices {
        file,
        sys_block,
        devices: HashMap::new(),
    }))
}

impl Sampler for Devices {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let stats = parse(self.file.read()?);
        self.devices.retain(|name, _| stats.iter().any(|s| s.name == name));
        for disk in stats.iter().filter(|d| d.ever_used()) {
            if !self.devices.contains_key(disk.name) {
                if !is_whole_device(&self.sys_block, disk.name) {
                    continue;
                }
                self.devices.insert(disk.name.to_string(), DeviceSeries::new(disk.name));
            }
            let series = &self.devices[disk.name];
            for (s, (_, _, column, scale)) in series.ops.iter().zip(&OP_COLUMNS) {
                if let Some(value) = disk.column(*column) {
                    out.counter(s, value.saturating_mul(*scale));
                }
            }
            if let Some(busy) = disk.column(BUSY_COLUMN) {
                out.counter(&series.busy, busy.saturating_mul(NS_PER_MS));
            }
            if let Some(in_flight) = disk.column(IN_FLIGHT_COLUMN) {
                out.gauge(&series.in_flight, i64::try_from(in_flight).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::{counter, fixture, gauge, init, refresh};

    #[test]
    fn real_diskstats_reports_only_used_whole_devices() {
        let mut sampler = init("blockio_devices", &fixture("vm6.18")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let vda = |op| [("op", op), ("device", "vda")];
        assert_eq!(counter(&snap, "blockio_device_operations", &vda("read")), Some(5640));
        assert_eq!(counter(&snap, "blockio_device_bytes", &vda("write")), Some(353_328 * 512));
        assert_eq!(counter(&snap, "blockio_device_operations", &vda("flush")), Some(18));
        assert_eq!(counter(&snap, "blockio_device_operations", &vda("discard")), Some(3037));
        assert_eq!(counter(&snap, "blockio_device_time", &vda("read")), Some(5637 * 1_000_000));
        assert_eq!(counter(&snap, "blockio_device_busy", &[("device", "vda")]), Some(1644 * 1_000_000));
        assert_eq!(gauge(&snap, "blockio_device_in_flight", &[("device", "vda")]), Some(0));
        // idle loop and zram devices are left out
        assert!(snap.counters.iter().all(|(s, _)| s.label("device") == Some("vda")));
    }

    #[test]
    fn old_kernel_partitions_skipped_missing_columns_absent() {
        let mut sampler = init("blockio_devices", &fixture("old-kernel")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let sda = |op| [("op", op), ("device", "sda")];
        assert_eq!(counter(&snap, "blockio_device_operations", &sda("write")), Some(2000));
        // 11-column kernel: no discard or flush fields
        assert_eq!(counter(&snap, "blockio_device_operations", &sda("discard")), None);
        assert_eq!(counter(&snap, "blockio_device_operations", &sda("flush")), None);
        // sda1 is a partition; sdb's line is malformed
        assert!(snap.counters.iter().all(|(s, _)| s.label("device") == Some("sda")));
    }
}
