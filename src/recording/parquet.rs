//! A capture journal to a Parquet file, laid out as Rezolus recordings are:
//!
//! - `timestamp` (UInt64, nanoseconds since the epoch) and `duration`
//!   (UInt64, nanoseconds the agent took to build the snapshot);
//! - one column per series, named by the series name: counters UInt64,
//!   gauges Int64, histograms `List<UInt64>` of bucket counts in a column
//!   named `<series>:buckets`; a series missing from a snapshot (e.g. one
//!   that appeared later) is null there. Counters and gauges come first,
//!   then histograms, each in order of first appearance; counters and
//!   gauges are DELTA_BINARY_PACKED, uncompressed, histograms PLAIN in
//!   zstd (level 3) pages of 64 KiB, all standard Parquet 2.x any reader
//!   decodes;
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
//! writes the rows in at most four row groups (of at least [`GROUP_ROWS`]
//! rows), held on disk while written (`recording::spill`), so that memory
//! does not grow with the length of the capture.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, UInt64Builder};
use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowWriterOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;

use super::journal::{ClockStep, Gap, JournalError, Reader, Record};
use super::spill::{HistogramSpill, PageSpill, PageSpillFactory};
use crate::client::unix_nanos;
use crate::snapshot::Received;

/// Raw bytes of counter and gauge values gathered before they go to
/// their column writers.
const BATCH_BYTES: usize = 1 << 20;

/// Rows per row group, at least (see [`rows_per_group`]): an hour at
/// 100 ms is one group. A row group is held on disk while written (see
/// `recording::spill`), not in memory.
const GROUP_ROWS: usize = 1 << 17;

/// Histogram rows per batch given to a histogram column's writer.
const HISTOGRAM_BATCH_ROWS: usize = 64;

/// Page size of the histogram columns: a page is compressed as a whole,
/// and zstd finds the repeats between consecutive snapshots within it.
const HISTOGRAM_PAGE_BYTES: usize = 64 << 10;

/// Rows per page of the counter and gauge columns.
const SCALAR_PAGE_ROWS: usize = 1024;

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

/// A batch of one counter or gauge column.
enum Builder {
    Counter(UInt64Builder),
    Gauge(Int64Builder),
}

impl Builder {
    /// Sized for a batch up front: growing by doubling would hold up to
    /// twice the data.
    fn new(kind: Kind, rows: usize) -> Self {
        match kind {
            Kind::Gauge => Builder::Gauge(Int64Builder::with_capacity(rows)),
            // histograms go to the spill, never to a builder
            Kind::Counter | Kind::Histogram => Builder::Counter(UInt64Builder::with_capacity(rows)),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Counter(b) => b.append_null(),
            Builder::Gauge(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Counter(b) => Arc::new(b.finish()),
            Builder::Gauge(b) => Arc::new(b.finish()),
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

    /// The columns in file order, as indices into `list`: every counter
    /// and gauge, then every histogram (written last in each row group,
    /// a column at a time), each part in order of first appearance.
    fn layout(&self) -> Vec<usize> {
        let (histograms, scalars): (Vec<usize>, Vec<usize>) =
            (0..self.list.len()).partition(|&i| self.list[i].kind == Kind::Histogram);
        scalars.into_iter().chain(histograms).collect()
    }

    /// `timestamp`, `duration`, then the columns in [`Self::layout`] order.
    fn schema(&self, file_metadata: HashMap<String, String>) -> Schema {
        let mut fields = vec![
            Field::new("timestamp", DataType::UInt64, false),
            Field::new("duration", DataType::UInt64, true),
        ];
        for c in self.layout().into_iter().map(|i| &self.list[i]) {
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
    map_large_blocks();
    convert_in_groups(journal, output, progress, BATCH_BYTES, GROUP_ROWS)
}

/// Has glibc's malloc map every block of 512 KiB or more and unmap it
/// when freed, for the rest of the process. By default the threshold
/// rises to the size of each mapped block freed, so later large blocks
/// come from the heap, where freed space split by small blocks is seldom
/// reused for the next large one: the zstd context that each histogram
/// column makes in turn took fresh memory each time (30 MB more over 48
/// columns, measured with VmRSS around the histogram columns). Costs a
/// mapping per such block, about 10% of the conversion's time.
fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no memory is
    // touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
    }
}

/// Rows per row group for a file of `rows`: `group_rows`, or a quarter
/// of the file if more, so that a file has at most four row groups. The
/// Parquet writer keeps about 3 KB of metadata per column chunk until the
/// footer is written (1.6 MB a row group at 500 columns), so a fixed size
/// would make memory grow with the length of the capture.
fn rows_per_group(rows: u64, group_rows: usize) -> usize {
    let quarter = usize::try_from(rows.div_ceil(4)).unwrap_or(usize::MAX);
    group_rows.max(quarter).max(1)
}

fn convert_in_groups(
    journal: &Path,
    output: &Path,
    progress: &mut dyn FnMut(u64, u64),
    batch_bytes: usize,
    group_rows: usize,
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
    drop(reader);
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
    let result = write_groups(
        file,
        &schema,
        &columns,
        Groups {
            journal,
            output,
            rows,
            batch_bytes,
            group_rows,
        },
        file_metadata,
        progress,
    );
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

/// What pass 2 reads, and how it cuts the rows.
struct Groups<'a> {
    journal: &'a Path,
    output: &'a Path,
    /// Snapshots in the journal (from pass 1).
    rows: u64,
    batch_bytes: usize,
    group_rows: usize,
}

/// Where a column's values go while a row group is read.
#[derive(Clone, Copy)]
enum Slot {
    /// The batch builder of this index (counters and gauges).
    Scalar(usize),
    /// The histogram spill column of this index.
    Histogram(usize),
}

/// Pass 2: the journal's snapshots as row groups of `schema`, written to
/// `file`; returns the rows written.
///
/// Counters and gauges go to their column writers in batches as they are
/// read. Histograms wait in a [`HistogramSpill`] and are written when the
/// group ends, a column at a time, so that only one histogram column's
/// zstd context exists at once: with every column open, as Arrow's writer
/// keeps them, each context held about 0.5 MB, 25 MB for 48 histogram
/// columns. Counters and gauges are DELTA_BINARY_PACKED and not
/// compressed: no codec context per column (the Parquet writer makes a
/// zstd one eagerly, about 70 KB even unused), and smaller than zstd over
/// plain values for counters that move in small steps. Every finished
/// page waits on disk in a [`PageSpill`] until its group is written.
fn write_groups(
    file: File,
    schema: &SchemaRef,
    columns: &Columns,
    groups: Groups<'_>,
    file_metadata: HashMap<String, String>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, String> {
    let e = parquet_error;
    let layout = columns.layout();
    let scalars = layout
        .iter()
        .take_while(|&&i| columns.list[i].kind != Kind::Histogram)
        .count();
    let group_rows = rows_per_group(groups.rows, groups.group_rows);
    let zstd = ZstdLevel::try_new(3).map_err(e)?;
    let mut props = WriterProperties::builder()
        // min/max per column chunk only: per-page statistics and their
        // page indexes, kept in memory until the footer, would grow with
        // the capture
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_dictionary_enabled(false)
        .set_offset_index_disabled(true)
        .set_compression(Compression::ZSTD(zstd))
        .set_data_page_size_limit(HISTOGRAM_PAGE_BYTES)
        .set_data_page_row_count_limit(SCALAR_PAGE_ROWS)
        .set_key_value_metadata(Some(
            file_metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ));
    let scalar_names = layout[..scalars]
        .iter()
        .map(|&i| columns.list[i].name.as_str());
    for name in ["timestamp", "duration"].into_iter().chain(scalar_names) {
        let path = ColumnPath::from(name);
        props = props
            .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    let temporary = |e: std::io::Error| format!("creating a temporary file beside it: {e}");
    let pages = PageSpill::beside(groups.output).map_err(temporary)?;
    let mut spill =
        HistogramSpill::beside(groups.output, layout.len() - scalars).map_err(temporary)?;
    let options = ArrowWriterOptions::new()
        .with_properties(props.build())
        .with_page_store_factory(Arc::new(PageSpillFactory(pages)));
    let writer = ArrowWriter::try_new_with_options(file, Arc::clone(schema), options).map_err(e)?;
    let (mut writer, factory) = writer.into_serialized_writer().map_err(e)?;

    let mut slots = vec![Slot::Scalar(0); columns.list.len()];
    for (k, &i) in layout.iter().enumerate() {
        slots[i] = match k.checked_sub(scalars) {
            None => Slot::Scalar(k),
            Some(h) => Slot::Histogram(h),
        };
    }
    let batch_rows = (groups.batch_bytes / (8 * (2 + scalars))).clamp(16, 8192);
    let mut timestamps = UInt64Builder::with_capacity(batch_rows);
    let mut durations = UInt64Builder::with_capacity(batch_rows);
    let mut builders: Vec<Builder> = layout[..scalars]
        .iter()
        .map(|&i| Builder::new(columns.list[i].kind, batch_rows))
        .collect();
    let mut filled = vec![false; columns.list.len()];
    let mut reader = Reader::open(groups.journal).map_err(|e| e.to_string())?;
    let mut writers: Option<Vec<ArrowColumnWriter>> = None;
    let (mut group_index, mut in_group, mut in_batch, mut done) = (0, 0, 0, 0u64);
    loop {
        let snap = match reader.next_record().map_err(|e| e.to_string())? {
            None => None,
            Some(Record::Snapshot(bytes)) => match decode(&bytes) {
                Some(snap) => Some(snap),
                None => continue,
            },
            Some(_) => continue,
        };
        if let Some(snap) = &snap {
            if writers.is_none() {
                writers = Some(factory.create_column_writers(group_index).map_err(e)?);
            }
            filled.iter_mut().for_each(|f| *f = false);
            timestamps.append_value(unix_nanos(snap.systemtime));
            durations.append_value(snap.duration.as_nanos() as u64);
            let mut slot = |name: &str, kind, metadata| -> Option<Slot> {
                let i = columns.find(name, kind, metadata)?;
                (!std::mem::replace(&mut filled[i], true)).then_some(slots[i])
            };
            for c in &snap.counters {
                if let Some(Slot::Scalar(k)) = slot(&c.name, Kind::Counter, &c.metadata) {
                    if let Builder::Counter(b) = &mut builders[k] {
                        b.append_value(c.value);
                    }
                }
            }
            for g in &snap.gauges {
                if let Some(Slot::Scalar(k)) = slot(&g.name, Kind::Gauge, &g.metadata) {
                    if let Builder::Gauge(b) = &mut builders[k] {
                        b.append_value(g.value);
                    }
                }
            }
            let spilled = |e: std::io::Error| format!("spilling histograms: {e}");
            for h in &snap.histograms {
                if let Some(Slot::Histogram(k)) = slot(&h.name, Kind::Histogram, &h.metadata) {
                    spill.push(k, Some(h.value.as_slice())).map_err(spilled)?;
                }
            }
            for (i, _) in filled.iter().enumerate().filter(|(_, f)| !**f) {
                match slots[i] {
                    Slot::Scalar(k) => builders[k].null(),
                    Slot::Histogram(k) => spill.push(k, None).map_err(spilled)?,
                }
            }
            in_group += 1;
            in_batch += 1;
            done += 1;
        }
        let end = snap.is_none();
        if let Some(writers) = writers.as_mut() {
            if in_batch == batch_rows || in_group == group_rows || (end && in_batch > 0) {
                let mut arrays: Vec<ArrayRef> =
                    vec![Arc::new(timestamps.finish()), Arc::new(durations.finish())];
                arrays.extend(builders.iter_mut().map(Builder::finish));
                for ((w, field), array) in writers.iter_mut().zip(schema.fields()).zip(arrays) {
                    for leaf in compute_leaves(field, &array).map_err(e)? {
                        w.write(&leaf).map_err(e)?;
                    }
                }
                in_batch = 0;
                progress(done, groups.rows);
            }
        }
        if in_group == group_rows || (end && in_group > 0) {
            let group = writers.take().ok_or("no column writers for a row group")?;
            finish_group(&mut writer, group, schema, 2 + scalars, &mut spill)?;
            group_index += 1;
            in_group = 0;
        }
        if end {
            break;
        }
    }
    let file = writer.into_inner().map_err(e)?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(done)
}

/// A Parquet writer's error as a message: an I/O error (a full disk) as
/// itself, without the library's `External:` prefix.
fn parquet_error(e: parquet::errors::ParquetError) -> String {
    match e {
        parquet::errors::ParquetError::External(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

/// Ends a row group: closes the counter and gauge writers (the first
/// `scalars` of `writers`) and splices their chunks into the file, then
/// writes each histogram column from `spill`, one at a time.
fn finish_group(
    writer: &mut SerializedFileWriter<File>,
    writers: Vec<ArrowColumnWriter>,
    schema: &SchemaRef,
    scalars: usize,
    spill: &mut HistogramSpill,
) -> Result<(), String> {
    let e = parquet_error;
    let mut group = writer.next_row_group().map_err(e)?;
    let mut writers = writers.into_iter();
    for w in writers.by_ref().take(scalars) {
        w.close()
            .and_then(|c| c.append_to_row_group(&mut group))
            .map_err(e)?;
    }
    let histograms = writers.zip(schema.fields().iter().skip(scalars));
    for (k, (mut w, field)) in histograms.enumerate() {
        spill.replay(k, HISTOGRAM_BATCH_ROWS, |rows, buckets| {
            let mut list =
                ListBuilder::with_capacity(UInt64Builder::with_capacity(buckets.len()), rows.len());
            for row in rows {
                match row {
                    Some(range) => {
                        list.values().append_slice(&buckets[range.clone()]);
                        list.append(true);
                    }
                    None => list.append_null(),
                }
            }
            let array: ArrayRef = Arc::new(list.finish());
            for leaf in compute_leaves(field, &array).map_err(e)? {
                w.write(&leaf).map_err(e)?;
            }
            Ok(())
        })?;
        // closed (and its compression context freed) before the next
        w.close()
            .and_then(|c| c.append_to_row_group(&mut group))
            .map_err(e)?;
    }
    group.close().map_err(e)?;
    spill
        .clear()
        .map_err(|e| format!("emptying the temporary file: {e}"))
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
        let c = convert_in_groups(
            &path,
            &out,
            &mut |done, total| calls.push((done, total)),
            1,
            16,
        )
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
    fn a_file_has_at_most_four_row_groups_of_at_least_the_group_size() {
        assert_eq!(rows_per_group(10, GROUP_ROWS), GROUP_ROWS);
        assert_eq!(
            rows_per_group(4 * GROUP_ROWS as u64, GROUP_ROWS),
            GROUP_ROWS
        );
        // a day at 10 ms
        let rows = 8_640_000u64;
        let per = rows_per_group(rows, GROUP_ROWS);
        assert_eq!(rows.div_ceil(per as u64), 4);
        assert_eq!(rows_per_group(0, 0), 1);
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
                "x#2",
                "h:buckets",
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
