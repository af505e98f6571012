//! A capture journal to a Parquet file, laid out as Rezolus recordings are:
//!
//! - `timestamp` (UInt64, nanoseconds since the epoch) and `duration`
//!   (UInt64, nanoseconds the agent took to build the snapshot);
//! - one column per series, named by the series name: counters UInt64,
//!   gauges Int64, histograms `List<UInt64>` of bucket counts in a column
//!   named `<series>:buckets`; a series missing from a snapshot (e.g. one
//!   that appeared later) is null there;
//! - column metadata: `metric`, `metric_type`, `unit`, the labels, and for
//!   histograms `grouping_power` and `max_value_power`. A column holds only
//!   values its metadata describes: when a series changes type, unit, labels
//!   or histogram layout mid-capture (an agent upgraded during the capture),
//!   its values from then on go to a new column named `<series>#2` (then
//!   `#3`, ...; `<series>#2:buckets` for histograms) with its own metadata,
//!   and each column is null in the rows where the other is used;
//! - file metadata: `source`, `version`, `sampling_interval_ms`, the
//!   `--metadata` pairs, `gaps` (JSON) for stretches with no sample: the
//!   agent unreachable, a journal record that could not be decoded, or a
//!   torn end (each with its `error`), `clock_steps` (JSON) when the
//!   recorder's wall clock stepped during the capture, and
//!   `histogram_buckets` (JSON): each histogram layout's bucket upper
//!   bounds (see [`bucket_bounds`]).
//!
//! Two passes over the journal: the first finds every column, the second
//! writes row groups of bounded size, so memory does not grow with the
//! length of the capture.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::journal::{ClockStep, Gap, JournalError, Reader, Record};
use crate::client::unix_nanos;
use crate::snapshot::Received;

/// Raw bytes of column data held before a row group is written. (Row
/// groups bounded by their encoded size instead, for fewer and larger
/// groups, were tried: the Parquet writer then held far more memory than
/// it reports, about the raw size of the group, so the bound stays raw.)
const ROW_GROUP_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// `cause` is written in the message (not a `source`), so once.
    #[error("reading journal {path}: {cause}")]
    Journal { path: String, cause: JournalError },
    #[error("journal {0} holds no snapshot")]
    Empty(String),
    #[error("writing {path}: {message}")]
    Write { path: String, message: String },
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub rows: u64,
    pub columns: usize,
    pub gaps: Vec<Gap>,
    pub clock_steps: Vec<ClockStep>,
    /// Records skipped as undecodable (each also listed in `gaps`).
    pub skipped: u64,
    /// Where reading stopped early (a torn last record), and why.
    pub torn: Option<(u64, String)>,
    pub bytes: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Column {
    name: String,
    kind: Kind,
    /// The series' metadata as the snapshot gave it: values of the series
    /// go to this column only while it stays the same.
    source: std::collections::BTreeMap<String, String>,
    metadata: HashMap<String, String>,
}

enum Builder {
    Counter(UInt64Builder),
    Gauge(Int64Builder),
    Histogram(ListBuilder<UInt64Builder>),
}

impl Builder {
    /// Sized for a row group up front: growing by doubling would hold up
    /// to twice the data.
    fn new(kind: Kind, rows: usize, buckets: usize) -> Self {
        match kind {
            Kind::Counter => Builder::Counter(UInt64Builder::with_capacity(rows)),
            Kind::Gauge => Builder::Gauge(Int64Builder::with_capacity(rows)),
            Kind::Histogram => Builder::Histogram(ListBuilder::with_capacity(
                UInt64Builder::with_capacity(rows * buckets),
                rows,
            )),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Counter(b) => b.append_null(),
            Builder::Gauge(b) => b.append_null(),
            Builder::Histogram(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Counter(b) => Arc::new(b.finish()),
            Builder::Gauge(b) => Arc::new(b.finish()),
            Builder::Histogram(b) => Arc::new(b.finish()),
        }
    }
}

fn histogram_column(name: &str) -> String {
    format!("{name}:buckets")
}

/// The columns, in order of first appearance.
#[derive(Default)]
struct Columns {
    list: Vec<Column>,
    /// Columns by series name (several when the series changed description).
    index: HashMap<String, Vec<usize>>,
    /// Every column name in use: a variant's name (`x#2`) can also be
    /// another series' own name, and column names must be unique.
    names: std::collections::HashSet<String>,
    buckets: usize,
}

impl Columns {
    /// The column for series `name` of `kind` described by `metadata`.
    fn find(
        &self,
        name: &str,
        kind: Kind,
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Option<usize> {
        self.index
            .get(name)?
            .iter()
            .copied()
            .find(|&i| self.list[i].kind == kind && self.list[i].source == *metadata)
    }

    fn add(
        &mut self,
        name: String,
        kind: Kind,
        source: &std::collections::BTreeMap<String, String>,
    ) {
        if self.find(&name, kind, source).is_some() {
            return;
        }
        let variants = self.index.get(&name).map_or(0, Vec::len);
        let column_name = |n: usize| {
            let series = if n == 0 {
                name.clone()
            } else {
                format!("{name}#{}", n + 1)
            };
            match kind {
                Kind::Histogram => histogram_column(&series),
                _ => series,
            }
        };
        // the first free name from this series' next variant on
        let column = (variants..)
            .map(column_name)
            .find(|c| !self.names.contains(c))
            .unwrap_or_else(|| format!("{name}#{}", self.list.len()));
        self.names.insert(column.clone());
        let mut metadata: HashMap<String, String> =
            source.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let kind_name = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        metadata.insert("metric_type".into(), kind_name.into());
        self.index.entry(name).or_default().push(self.list.len());
        self.list.push(Column {
            name: column,
            kind,
            source: source.clone(),
            metadata,
        });
    }

    fn observe(&mut self, snap: &Received) {
        for c in &snap.counters {
            self.add(c.name.clone(), Kind::Counter, &c.metadata);
        }
        for g in &snap.gauges {
            self.add(g.name.clone(), Kind::Gauge, &g.metadata);
        }
        for h in &snap.histograms {
            self.buckets = self.buckets.max(h.value.as_slice().len());
            self.add(h.name.clone(), Kind::Histogram, &h.metadata);
        }
    }

    fn schema(&self, file_metadata: HashMap<String, String>) -> Schema {
        let mut fields = vec![
            Field::new("timestamp", DataType::UInt64, false),
            Field::new("duration", DataType::UInt64, true),
        ];
        for c in &self.list {
            let data_type = match c.kind {
                Kind::Counter => DataType::UInt64,
                Kind::Gauge => DataType::Int64,
                Kind::Histogram => {
                    DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)))
                }
            };
            fields.push(Field::new(&c.name, data_type, true).with_metadata(c.metadata.clone()));
        }
        Schema::new(fields).with_metadata(file_metadata)
    }

    /// Rows per row group so a group's raw data stays near `bytes`.
    fn rows_per_group(&self, bytes: usize) -> usize {
        let histograms = self
            .list
            .iter()
            .filter(|c| c.kind == Kind::Histogram)
            .count();
        let row = 8 * (2 + self.list.len() + histograms * self.buckets);
        (bytes / row.max(1)).clamp(16, 8192)
    }
}

/// The `histogram_buckets` file metadata: for each histogram layout in
/// the file, every bucket's inclusive upper bound, so that a reader needs
/// no knowledge of the layout to turn a bucket index into a value:
/// `[{"grouping_power": 3, "max_value_power": 64, "upper_bounds": [0, 1,
/// ...]}]`. Stock Rezolus tools ignore metadata they do not know.
fn bucket_bounds(columns: &Columns) -> Option<String> {
    let layouts: std::collections::BTreeSet<(u8, u8)> = columns
        .list
        .iter()
        .filter(|c| c.kind == Kind::Histogram)
        .filter_map(|c| {
            let power = |key: &str| c.metadata.get(key)?.parse::<u8>().ok();
            Some((power("grouping_power")?, power("max_value_power")?))
        })
        .collect();
    let described: Vec<serde_json::Value> = layouts
        .into_iter()
        .filter_map(|(g, m)| {
            let h = histogram::Histogram::new(g, m).ok()?;
            let bounds: Vec<u64> = h.into_iter().map(|b| b.end()).collect();
            Some(serde_json::json!({
                "grouping_power": g,
                "max_value_power": m,
                "upper_bounds": bounds,
            }))
        })
        .collect();
    (!described.is_empty()).then(|| serde_json::Value::Array(described).to_string())
}

fn decode(bytes: &[u8]) -> Option<Received> {
    Received::from_msgpack(bytes).ok()
}

/// Writes the journal at `journal` as Parquet at `output`: first to a
/// temporary file beside it, renamed into place when complete, so
/// `output` is never a partial file. `progress(done, total)` is called as
/// rows are written.
pub fn convert(
    journal: &Path,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Converted, ConvertError> {
    convert_in_groups(journal, output, progress, ROW_GROUP_BYTES)
}

fn convert_in_groups(
    journal: &Path,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
    group_bytes: usize,
) -> Result<Converted, ConvertError> {
    let jerr = |cause| ConvertError::Journal {
        path: journal.display().to_string(),
        cause,
    };
    // pass 1: every column, the row count, the gaps
    let mut reader = Reader::open(journal).map_err(jerr)?;
    let header = reader.header.clone();
    let mut columns = Columns::default();
    let mut rows = 0u64;
    let mut skipped = 0u64;
    let mut gaps = Vec::new();
    let mut clock_steps = Vec::new();
    let mut agent_metadata = None;
    // undecodable records since the last good snapshot, whose gap ends at
    // the next good one
    let mut pending: Vec<String> = Vec::new();
    let mut last_ns = 0u64;
    while let Some(record) = reader.next_record().map_err(jerr)? {
        let bad = match record {
            Record::Snapshot(bytes) => match Received::from_msgpack(&bytes) {
                Ok(snap) => {
                    columns.observe(&snap);
                    rows += 1;
                    let at = unix_nanos(snap.systemtime);
                    for error in pending.drain(..) {
                        gaps.push(Gap {
                            start_ns: last_ns.min(at),
                            end_ns: at,
                            error,
                        });
                    }
                    last_ns = at;
                    agent_metadata.get_or_insert(snap.metadata);
                    None
                }
                Err(e) => Some(format!("snapshot record is not a Rezolus snapshot: {e}")),
            },
            Record::Gap(gap) => {
                gaps.push(gap);
                None
            }
            Record::ClockStep(step) => {
                clock_steps.push(step);
                None
            }
            Record::Undecodable(why) => Some(why),
        };
        if let Some(why) = bad {
            skipped += 1;
            pending.push(why);
        }
    }
    let torn = reader.torn.clone();
    if let Some((offset, why)) = &torn {
        pending.push(format!(
            "journal cut at byte {offset} ({why}): later records lost"
        ));
    }
    for error in pending {
        gaps.push(Gap {
            start_ns: last_ns,
            end_ns: last_ns,
            error,
        });
    }
    if rows == 0 {
        return Err(ConvertError::Empty(journal.display().to_string()));
    }

    let agent_metadata = agent_metadata.unwrap_or_default();
    let mut file_metadata: HashMap<String, String> = header.metadata.clone().into_iter().collect();
    file_metadata.insert(
        "source".into(),
        agent_metadata
            .get("source")
            .cloned()
            .unwrap_or_else(|| "rezolus".into()),
    );
    file_metadata.insert(
        "version".into(),
        agent_metadata
            .get("version")
            .cloned()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
    );
    file_metadata.insert(
        "sampling_interval_ms".into(),
        header.sampling_interval_ms.to_string(),
    );
    file_metadata.insert("agent_url".into(), header.url.clone());
    file_metadata.insert(
        "recorder".into(),
        format!("rezolus {}", env!("CARGO_PKG_VERSION")),
    );
    if !gaps.is_empty() {
        file_metadata.insert(
            "gaps".into(),
            serde_json::to_string(&gaps).unwrap_or_default(),
        );
    }
    if !clock_steps.is_empty() {
        file_metadata.insert(
            "clock_steps".into(),
            serde_json::to_string(&clock_steps).unwrap_or_default(),
        );
    }
    if let Some(buckets) = bucket_bounds(&columns) {
        file_metadata.insert("histogram_buckets".into(), buckets);
    }
    let schema = Arc::new(columns.schema(file_metadata.clone()));

    // pass 2: row groups
    let tmp = temporary_path(output);
    let werr = |message: String| ConvertError::Write {
        path: output.display().to_string(),
        message,
    };
    let file = File::create(&tmp).map_err(|e| werr(format!("creating {}: {e}", tmp.display())))?;
    let result = (|| {
        let props = WriterProperties::builder()
            // min/max per column chunk only: per-page statistics and their
            // page indexes, kept in memory until the footer, would grow
            // with the capture
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_dictionary_enabled(false)
            .set_offset_index_disabled(true)
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
            ))
            .set_key_value_metadata(Some(
                file_metadata
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                    .collect(),
            ))
            .build();
        let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))
            .map_err(|e| e.to_string())?;
        let per_group = columns.rows_per_group(group_bytes);
        let mut reader = Reader::open(journal).map_err(|e| e.to_string())?;
        let mut timestamps = UInt64Builder::new();
        let mut durations = UInt64Builder::new();
        let mut builders: Vec<Builder> = columns
            .list
            .iter()
            .map(|c| Builder::new(c.kind, per_group, columns.buckets))
            .collect();
        let mut filled = vec![false; builders.len()];
        let mut in_group = 0usize;
        let mut done = 0u64;
        let mut flush = |timestamps: &mut UInt64Builder,
                         durations: &mut UInt64Builder,
                         builders: &mut Vec<Builder>|
         -> Result<(), String> {
            let mut arrays: Vec<ArrayRef> =
                vec![Arc::new(timestamps.finish()), Arc::new(durations.finish())];
            arrays.extend(builders.iter_mut().map(Builder::finish));
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| e.to_string())?;
            writer.write(&batch).map_err(|e| e.to_string())?;
            drop(batch);
            writer.flush().map_err(|e| e.to_string())?;
            // sized again for the next group (finish leaves them empty)
            for (b, c) in builders.iter_mut().zip(&columns.list) {
                *b = Builder::new(c.kind, per_group, columns.buckets);
            }
            Ok(())
        };
        while let Some(record) = reader.next_record().map_err(|e| e.to_string())? {
            let Record::Snapshot(bytes) = record else {
                continue;
            };
            let Some(snap) = decode(&bytes) else {
                continue;
            };
            filled.iter_mut().for_each(|f| *f = false);
            timestamps.append_value(unix_nanos(snap.systemtime));
            durations.append_value(snap.duration.as_nanos() as u64);
            let mut slot = |name: &str, kind, metadata| -> Option<usize> {
                let i = columns.find(name, kind, metadata)?;
                (!std::mem::replace(&mut filled[i], true)).then_some(i)
            };
            for c in &snap.counters {
                if let Some(i) = slot(&c.name, Kind::Counter, &c.metadata) {
                    if let Builder::Counter(b) = &mut builders[i] {
                        b.append_value(c.value);
                    }
                }
            }
            for g in &snap.gauges {
                if let Some(i) = slot(&g.name, Kind::Gauge, &g.metadata) {
                    if let Builder::Gauge(b) = &mut builders[i] {
                        b.append_value(g.value);
                    }
                }
            }
            for h in &snap.histograms {
                if let Some(i) = slot(&h.name, Kind::Histogram, &h.metadata) {
                    if let Builder::Histogram(b) = &mut builders[i] {
                        b.values().append_slice(h.value.as_slice());
                        b.append(true);
                    }
                }
            }
            for (b, f) in builders.iter_mut().zip(&filled) {
                if !f {
                    b.null();
                }
            }
            in_group += 1;
            done += 1;
            if in_group == per_group {
                flush(&mut timestamps, &mut durations, &mut builders)?;
                in_group = 0;
                progress(done, rows);
            }
        }
        if in_group > 0 {
            flush(&mut timestamps, &mut durations, &mut builders)?;
            progress(done, rows);
        }
        let file = writer.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        Ok::<u64, String>(done)
    })();
    let written = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(e));
        }
    };
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        werr(format!("renaming {} into place: {e}", tmp.display()))
    })?;
    // the rename itself survives power loss only once the directory is synced
    let dir = output
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    let bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(Converted {
        rows: written,
        columns: columns.list.len() + 2,
        gaps,
        clock_steps,
        skipped,
        torn,
        bytes,
    })
}

/// `dir/.name.tmp-PID`: beside the output, so the rename stays on one
/// file system.
fn temporary_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rezolus.parquet".into());
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{new_histogram, MetricDef, Series};
    use crate::recording::journal::{Header, Writer};
    use crate::snapshot::{Emitter, Snapshot};
    use arrow_array::{Array, Int64Array, ListArray, UInt64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    static C: MetricDef = MetricDef::counter("c", "events", "");
    static LATE: MetricDef = MetricDef::gauge("late", "bytes", "");
    static H: MetricDef = MetricDef::histogram("h", "nanoseconds", "");

    /// Row n: counter n, a histogram of n values, and from row 10 on a
    /// gauge -n; row 20 is not a snapshot at all.
    fn journal(dir: &Path, rows: u64) -> PathBuf {
        let path = dir.join("j");
        let header = Header {
            url: "http://x:1/metrics/binary".into(),
            sampling_interval_ms: 100,
            metadata: [("k".to_string(), "v".to_string())].into(),
        };
        let mut w = Writer::create(File::create(&path).unwrap(), &header).unwrap();
        for n in 0..rows {
            if n == 20 {
                w.snapshot(b"garbage").unwrap();
            }
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_000 + 100 * n);
            let mut snap = Snapshot::new(t);
            let mut out = Emitter::new(&mut snap);
            out.counter(&Series::new(&C, &[]), n);
            let mut h = new_histogram();
            for i in 0..n {
                h.increment(i * 1000).unwrap();
            }
            out.histogram(&Series::new(&H, &[]), h);
            if n >= 10 {
                out.gauge(&Series::new(&LATE, &[]), -(n as i64));
            }
            w.snapshot(&snap.to_msgpack().unwrap()).unwrap();
        }
        path
    }

    #[test]
    fn rows_span_row_groups_in_order_with_nulls_before_a_series_appears() {
        let dir = tempfile::tempdir().unwrap();
        let rows = 50;
        let path = journal(dir.path(), rows);
        let out = dir.path().join("out.parquet");
        let mut calls = Vec::new();
        // row groups of 16 rows
        let c = convert_in_groups(&path, &out, &mut |done, total| calls.push((done, total)), 1)
            .unwrap();
        assert_eq!((c.rows, c.skipped, c.columns), (rows, 1, 5));
        assert_eq!(calls.last(), Some(&(rows, rows)));

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
        let meta = reader.metadata().clone();
        assert_eq!(meta.num_row_groups(), 4);
        assert_eq!(calls, [(16, 50), (32, 50), (48, 50), (50, 50)]);
        let kv: HashMap<_, _> = meta
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(kv["k"], "v");
        assert_eq!(kv["sampling_interval_ms"], "100");
        let mut n = 0u64;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let col = |name: &str| batch.column_by_name(name).unwrap().clone();
            let ts = col("timestamp");
            let ts = ts.as_any().downcast_ref::<UInt64Array>().unwrap();
            let counter = col("c");
            let counter = counter.as_any().downcast_ref::<UInt64Array>().unwrap();
            let late = col("late");
            let late = late.as_any().downcast_ref::<Int64Array>().unwrap();
            let hist = col("h:buckets");
            let hist = hist.as_any().downcast_ref::<ListArray>().unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(ts.value(i), 1_000_000_000 + 100_000_000 * n);
                assert_eq!(counter.value(i), n);
                if n < 10 {
                    assert!(late.is_null(i), "row {n}");
                } else {
                    assert_eq!(late.value(i), -(n as i64));
                }
                let buckets = hist.value(i);
                let buckets = buckets.as_any().downcast_ref::<UInt64Array>().unwrap();
                assert_eq!(buckets.len(), new_histogram().as_slice().len());
                assert_eq!(buckets.values().iter().sum::<u64>(), n);
                n += 1;
            }
        }
        assert_eq!(n, rows);
        // the temporary file is gone, the output in place
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_journal_without_snapshots_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal(dir.path(), 0);
        let out = dir.path().join("out.parquet");
        assert!(matches!(
            convert(&path, &out, &mut |_, _| {}),
            Err(ConvertError::Empty(_))
        ));
        assert!(!out.exists());
    }

    /// A snapshot as another agent might serve it: any metadata.
    mod crafted {
        use serde::Serialize;
        use std::collections::BTreeMap;
        use std::time::{Duration, SystemTime};

        #[derive(Serialize)]
        pub struct Entry<V> {
            pub name: String,
            pub value: V,
            pub metadata: BTreeMap<String, String>,
        }

        #[derive(Serialize)]
        pub struct Snap {
            pub systemtime: SystemTime,
            pub duration: Duration,
            pub metadata: BTreeMap<String, String>,
            pub counters: Vec<Entry<u64>>,
            pub gauges: Vec<Entry<i64>>,
            pub histograms: Vec<Entry<histogram::Histogram>>,
        }

        pub fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }
    }

    /// Row 0: counter `x`, histogram `h` (grouping power 3) holding 1000;
    /// row 1: `x` as a gauge, `h` with grouping power 2; then a record that
    /// is not a snapshot; row 2: as row 0, but `h`'s unit changed; then a
    /// torn record.
    fn drifting_journal(dir: &Path) -> PathBuf {
        use crafted::{meta, Entry, Snap};
        let path = dir.join("drift.journal");
        let header = Header {
            url: "http://x:1/metrics/binary".into(),
            sampling_interval_ms: 1000,
            metadata: Default::default(),
        };
        let mut w = Writer::create(File::create(&path).unwrap(), &header).unwrap();
        let histogram = |power: u8, unit: &str| {
            let mut h = histogram::Histogram::new(power, 64).unwrap();
            h.increment(1000).unwrap();
            let power = power.to_string();
            let metadata = meta(&[
                ("metric", "h"),
                ("unit", unit),
                ("grouping_power", &power),
                ("max_value_power", "64"),
            ]);
            Entry {
                name: "h".into(),
                value: h,
                metadata,
            }
        };
        let x = |v: u64| Entry {
            name: "x".into(),
            value: v,
            metadata: meta(&[("metric", "x")]),
        };
        let snap = |s: u64, counters, gauges, histograms| Snap {
            systemtime: std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            duration: Default::default(),
            metadata: Default::default(),
            counters,
            gauges,
            histograms,
        };
        let rows = [
            snap(100, vec![x(5)], vec![], vec![histogram(3, "nanoseconds")]),
            snap(
                101,
                vec![],
                vec![Entry {
                    name: "x".into(),
                    value: -7i64,
                    metadata: meta(&[("metric", "x")]),
                }],
                vec![histogram(2, "nanoseconds")],
            ),
            snap(103, vec![x(9)], vec![], vec![histogram(3, "microseconds")]),
        ];
        for (i, row) in rows.iter().enumerate() {
            w.snapshot(&rmp_serde::to_vec(row).unwrap()).unwrap();
            if i == 1 {
                w.snapshot(b"not msgpack").unwrap();
            }
        }
        w.sync().unwrap();
        drop(w);
        // a record cut short, as a crash mid-write leaves it
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, &[2, 100, 0, 0, 0, 1, 2]).unwrap();
        path
    }

    #[test]
    fn a_series_that_changes_description_gets_a_column_per_description() {
        let dir = tempfile::tempdir().unwrap();
        let journal = drifting_journal(dir.path());
        let out = dir.path().join("drift.parquet");
        let c = convert(&journal, &out, &mut |_, _| {}).unwrap();
        assert_eq!((c.rows, c.skipped), (3, 1));
        // the undecodable record and the torn end are listed as gaps
        assert_eq!(c.gaps.len(), 2, "{:?}", c.gaps);
        assert_eq!(
            (c.gaps[0].start_ns, c.gaps[0].end_ns),
            (101_000_000_000, 103_000_000_000)
        );
        assert!(c.gaps[1].error.contains("cut"), "{:?}", c.gaps[1]);

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
        let schema = reader.schema().clone();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "timestamp",
                "duration",
                "x",
                "h:buckets",
                "x#2",
                "h#2:buckets",
                "h#3:buckets"
            ]
        );
        let field_meta = |name: &str| schema.field_with_name(name).unwrap().metadata().clone();
        assert_eq!(field_meta("x")["metric_type"], "counter");
        assert_eq!(field_meta("x#2")["metric_type"], "gauge");
        assert_eq!(field_meta("x#2")["metric"], "x");
        assert_eq!(field_meta("h#2:buckets")["grouping_power"], "2");
        assert_eq!(field_meta("h#3:buckets")["unit"], "microseconds");
        let kv = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(kv.iter().any(|k| k.key == "gaps"));

        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let x = col("x");
        let x = x.as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!((x.value(0), x.is_null(1), x.value(2)), (5, true, 9));
        let x2 = col("x#2");
        let x2 = x2.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            (x2.is_null(0), x2.value(1), x2.is_null(2)),
            (true, -7, true)
        );
        // every histogram value, decoded with its own column's metadata,
        // holds the true value 1000
        for (name, row) in [("h:buckets", 0), ("h#2:buckets", 1), ("h#3:buckets", 2)] {
            let meta = field_meta(name);
            let list = col(name);
            let list = list.as_any().downcast_ref::<ListArray>().unwrap();
            for other in (0..3).filter(|r| *r != row) {
                assert!(list.is_null(other), "{name} row {other}");
            }
            let buckets = list.value(row);
            let buckets = buckets
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap()
                .values()
                .to_vec();
            let power: u8 = meta["grouping_power"].parse().unwrap();
            let h = histogram::Histogram::from_buckets(power, 64, buckets).unwrap();
            let bucket = h.iter().find(|b| b.count() > 0).unwrap();
            assert!(
                bucket.start() <= 1000 && 1000 <= bucket.end(),
                "{name}: {bucket:?}"
            );
        }
    }

    #[test]
    fn a_series_named_like_a_variant_does_not_share_its_column_name() {
        use std::collections::BTreeMap;
        let meta = |m: &str, unit: &str| -> BTreeMap<String, String> {
            [("metric", m), ("unit", unit)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut columns = Columns::default();
        columns.add("x#2".into(), Kind::Gauge, &meta("x#2", "bytes"));
        columns.add("x".into(), Kind::Gauge, &meta("x", "bytes"));
        // x changes unit: its variant must not take "x#2"
        columns.add("x".into(), Kind::Gauge, &meta("x", "seconds"));
        let names: Vec<&str> = columns.list.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x#2", "x", "x#3"]);
        assert_eq!(
            columns.find("x", Kind::Gauge, &meta("x", "seconds")),
            Some(2)
        );
    }
}
