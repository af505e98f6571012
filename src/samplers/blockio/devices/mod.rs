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
//! No total over devices is computed here: the all-device figures come from
//! the `blockio` sampler, which counts requests where they reach a driver.
//!
//! Device names are bytes; they become labels through
//! [`crate::source::label_value`] (invalid UTF-8 escaped as `\xHH`). A line
//! that does not parse costs only that device. Each counter is kept by a
//! [`CounterGuard`]: a device removed and re-added under the same name
//! continues from its last value plus its new count, never backwards.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{MetricDef, Series};
use crate::samplers::common::{CounterGuard, Restart};
use crate::samplers::{Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;
use crate::source::{fields, label_value, parse_lines, parse_u64, ParseError, ProcFile, Skipped};

pub static OPERATIONS: MetricDef = MetricDef::counter(
    "blockio_device_operations",
    "operations",
    "Block IO operations completed",
)
.labels(&["op", "device"]);
pub static BYTES: MetricDef = MetricDef::counter(
    "blockio_device_bytes",
    "bytes",
    "Bytes transferred by completed block IO",
)
.labels(&["op", "device"]);
pub static MERGES: MetricDef = MetricDef::counter(
    "blockio_device_merges",
    "operations",
    "Adjacent block IO requests merged before issue",
)
.labels(&["op", "device"]);
pub static TIME: MetricDef = MetricDef::counter(
    "blockio_device_time",
    "nanoseconds",
    "Time spent by block IO operations, summed over operations (millisecond resolution)",
)
.labels(&["op", "device"]);
pub static BUSY: MetricDef = MetricDef::counter(
    "blockio_device_busy",
    "nanoseconds",
    "Time the device had IO in flight (millisecond resolution)",
)
.labels(&["device"]);
pub static IN_FLIGHT: MetricDef = MetricDef::gauge(
    "blockio_device_in_flight",
    "operations",
    "Block IO operations issued and not yet completed",
)
.labels(&["device"]);

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
    /// The name as the kernel wrote it (any bytes).
    pub name: &'a [u8],
    pub columns: Vec<u64>,
}

impl DiskStats<'_> {
    fn column(&self, index: usize) -> Option<u64> {
        self.columns.get(index).copied()
    }

    fn ever_used(&self) -> bool {
        [0, 4, 11, 15]
            .iter()
            .any(|&i| self.column(i).unwrap_or(0) > 0)
    }
}

/// Parses `/proc/diskstats`; a line with a non-numeric or missing column is
/// skipped and reported (that device is absent from this refresh).
pub fn parse(text: &[u8]) -> (Vec<DiskStats<'_>>, Skipped<'_>) {
    parse_lines(text, |_| false, parse_line)
}

fn parse_line(line: &[u8]) -> Option<DiskStats<'_>> {
    let mut fields = fields(line);
    parse_u64(fields.next()?)?; // major
    parse_u64(fields.next()?)?; // minor
    let name = fields.next()?;
    let columns = fields.map(parse_u64).collect::<Option<Vec<u64>>>()?;
    (columns.len() >= 11).then_some(DiskStats { name, columns })
}

/// How long a device that disappeared is remembered, so that if it comes
/// back its series continue instead of starting over.
const FORGET_AFTER: Duration = Duration::from_secs(600);

struct DeviceSeries {
    ops: Vec<(Arc<Series>, Option<CounterGuard>)>,
    busy: (Arc<Series>, Option<CounterGuard>),
    in_flight: Arc<Series>,
    seen: Instant,
    /// The last read it was in.
    round: u64,
}

impl DeviceSeries {
    fn new(device: &str, now: Instant) -> Self {
        Self {
            ops: OP_COLUMNS
                .iter()
                .map(|(def, op, _, _)| (Series::new(def, &[("op", op), ("device", device)]), None))
                .collect(),
            busy: (Series::new(&BUSY, &[("device", device)]), None),
            in_flight: Series::new(&IN_FLIGHT, &[("device", device)]),
            seen: now,
            round: 0,
        }
    }
}

/// Feeds one reading to a device counter's guard and emits the served value.
fn emit_guarded(
    (series, guard): &mut (Arc<Series>, Option<CounterGuard>),
    value: u64,
    out: &mut Emitter<'_>,
) {
    // a device missing from some reads is updated as usual: if it was
    // re-created its small count is a restart from zero
    match guard {
        None => *guard = Some(CounterGuard::new(value)),
        Some(g) => {
            g.update(value, Restart::FromZero, series.def(), out);
        }
    }
    if let Some(g) = guard {
        out.counter(series, g.served());
    }
}

struct Devices {
    file: ProcFile,
    sys_block: PathBuf,
    devices: HashMap<Vec<u8>, DeviceSeries>,
    round: u64,
}

/// Whole devices are listed in `/sys/block` (with `/` in names as `!`).
fn is_whole_device(sys_block: &Path, name: &[u8]) -> bool {
    let name: Vec<u8> = name
        .iter()
        .map(|&b| if b == b'/' { b'!' } else { b })
        .collect();
    sys_block.join(std::ffi::OsStr::from_bytes(&name)).exists()
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    let mut file = ProcFile::open(&ctx.root, "proc/diskstats")?;
    let sys_block = ctx.root.join("sys/block");
    if !sys_block.is_dir() {
        return Err(
            crate::source::Unsupported(format!("{} does not exist", sys_block.display())).into(),
        );
    }
    let text = file.read()?;
    if !text.trim_ascii().is_empty() && parse(text).0.is_empty() {
        return Err(ParseError::new(file.path(), "no parsable device lines", None).into());
    }
    Ok(Box::new(Devices {
        file,
        sys_block,
        devices: HashMap::new(),
        round: 0,
    }))
}

impl Sampler for Devices {
    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let now = Instant::now();
        self.round += 1;
        let round = self.round;
        let (stats, skipped) = parse(self.file.read()?);
        let skipped = skipped.summary();
        for disk in stats.iter().filter(|d| d.ever_used()) {
            if !self.devices.contains_key(disk.name) {
                if !is_whole_device(&self.sys_block, disk.name) {
                    continue;
                }
                self.devices.insert(
                    disk.name.to_vec(),
                    DeviceSeries::new(&label_value(disk.name), now),
                );
            }
            let Some(series) = self.devices.get_mut(disk.name) else {
                continue;
            };
            if series.round == round {
                continue; // the same name twice in one read: the first line counts
            }
            (series.seen, series.round) = (now, round);
            for (s, (_, _, column, scale)) in series.ops.iter_mut().zip(&OP_COLUMNS) {
                if let Some(value) = disk.column(*column) {
                    emit_guarded(s, value.saturating_mul(*scale), out);
                }
            }
            if let Some(busy) = disk.column(BUSY_COLUMN) {
                emit_guarded(&mut series.busy, busy.saturating_mul(NS_PER_MS), out);
            }
            if let Some(in_flight) = disk.column(IN_FLIGHT_COLUMN) {
                out.gauge(
                    &series.in_flight,
                    i64::try_from(in_flight).unwrap_or(i64::MAX),
                );
            }
        }
        self.file.report(skipped);
        self.devices
            .retain(|_, d| d.round == round || now.duration_since(d.seen) < FORGET_AFTER);
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
        assert_eq!(
            counter(&snap, "blockio_device_operations", &vda("read")),
            Some(5640)
        );
        assert_eq!(
            counter(&snap, "blockio_device_bytes", &vda("write")),
            Some(353_328 * 512)
        );
        assert_eq!(
            counter(&snap, "blockio_device_operations", &vda("flush")),
            Some(18)
        );
        assert_eq!(
            counter(&snap, "blockio_device_operations", &vda("discard")),
            Some(3037)
        );
        assert_eq!(
            counter(&snap, "blockio_device_time", &vda("read")),
            Some(5637 * 1_000_000)
        );
        assert_eq!(
            counter(&snap, "blockio_device_busy", &[("device", "vda")]),
            Some(1644 * 1_000_000)
        );
        assert_eq!(
            gauge(&snap, "blockio_device_in_flight", &[("device", "vda")]),
            Some(0)
        );
        // idle loop and zram devices are left out
        assert!(snap
            .counters
            .iter()
            .all(|(s, _)| s.label("device") == Some("vda")));
    }

    #[test]
    fn old_kernel_partitions_skipped_missing_columns_absent() {
        let mut sampler = init("blockio_devices", &fixture("old-kernel")).unwrap();
        let snap = refresh(sampler.as_mut()).unwrap();
        let sda = |op| [("op", op), ("device", "sda")];
        assert_eq!(
            counter(&snap, "blockio_device_operations", &sda("write")),
            Some(2000)
        );
        // 11-column kernel: no discard or flush fields
        assert_eq!(
            counter(&snap, "blockio_device_operations", &sda("discard")),
            None
        );
        assert_eq!(
            counter(&snap, "blockio_device_operations", &sda("flush")),
            None
        );
        // sda1 is a partition; sdb's line is malformed
        assert!(snap
            .counters
            .iter()
            .all(|(s, _)| s.label("device") == Some("sda")));
    }
}
