//! Reading Rezolus recordings (ours, hindsight dumps, and stock Rezolus
//! Parquet files, which share the layout described in [`super::parquet`]):
//! which series a file holds, and their values over time, one column at a
//! time and a batch of rows at a time, so that a long recording is never
//! loaded whole.
//!
//! Series are found from each column's metadata: `metric`, `metric_type`
//! (`counter`, `gauge`, `histogram`), `unit`, for histograms
//! `grouping_power` and `max_value_power`, and every other key a label.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

/// Column metadata keys that describe a series rather than label it.
const DESCRIPTIVE: [&str; 5] = [
    "metric",
    "metric_type",
    "unit",
    "grouping_power",
    "max_value_power",
];

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `cause` is written in the message (not a `source`), so once.
    #[error("{path}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a Parquet file ({message})")]
    NotParquet { path: PathBuf, message: String },
    #[error("{path} is not a Rezolus recording: {why}")]
    NotRecording { path: PathBuf, why: String },
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    /// SIGINT or SIGTERM arrived while reading.
    #[error("interrupted")]
    Interrupted,
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    /// Bucket counts in the `histogram` crate's layout with these powers.
    Histogram {
        grouping_power: u8,
        max_value_power: u8,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram { .. } => "histogram",
        }
    }
}

/// One series' column.
#[derive(Debug, Clone)]
pub struct Series {
    /// Index of the column in the file's schema.
    pub index: usize,
    /// The column's name (the series name, `:buckets` for histograms).
    pub column: String,
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    pub unit: Option<String>,
    pub kind: Kind,
}

/// A column's values, one per row (`None`: the series was absent then).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Counter(Vec<Option<u64>>),
    Gauge(Vec<Option<i64>>),
    Histogram(Vec<Option<Vec<u64>>>),
}

/// An open recording: its series and file metadata; values are read on
/// demand.
pub struct Recording {
    path: PathBuf,
    /// The footer, parsed once and shared by every read.
    footer: ArrowReaderMetadata,
    timestamp: usize,
    pub series: Vec<Series>,
    /// The file's key-value metadata (`source`, `sampling_interval_ms`,
    /// `gaps`, ...).
    pub metadata: BTreeMap<String, String>,
    pub rows: u64,
    /// Columns with a `metric` key that cannot be read as a series (an
    /// unknown `metric_type`, a type that does not match it, a histogram
    /// layout the `histogram` crate does not define), by name.
    pub ignored: Vec<String>,
}

impl Recording {
    /// Opens `path` and reads its schema: a clear error if the file is
    /// missing, not Parquet, or not laid out as a Rezolus recording.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let builder = builder(path, None)?;
        let footer = ArrowReaderMetadata::try_new(builder.metadata().clone(), Default::default())
            .map_err(|e| ReadError::NotParquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let schema = builder.schema().clone();
        let file_metadata = builder.metadata().file_metadata();
        let rows = file_metadata.num_rows().max(0) as u64;
        let metadata = file_metadata
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let not_recording = |why: &str| ReadError::NotRecording {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        let timestamp = schema
            .fields()
            .iter()
            .position(|f| f.name() == "timestamp")
            .ok_or_else(|| not_recording("it has no `timestamp` column"))?;
        if !matches!(
            schema.field(timestamp).data_type(),
            DataType::UInt64 | DataType::Int64 | DataType::UInt32 | DataType::Int32
        ) {
            return Err(not_recording("its `timestamp` column is not an integer"));
        }
        let series: Vec<Series> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(index, field)| series_of(index, field))
            .collect();
        let ignored = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                f.metadata().contains_key("metric") && !series.iter().any(|s| s.index == *i)
            })
            .map(|(_, f)| f.name().clone())
            .collect();
        if series.is_empty() {
            return Err(not_recording(
                "no column has Rezolus series metadata (`metric`, `metric_type`)",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            footer,
            timestamp,
            series,
            metadata,
            rows,
            ignored,
        })
    }

    /// Reads series `s` (an index into [`Recording::series`]) in batches
    /// of at most `batch_rows` rows, reading only its column and the
    /// timestamps, and hands each batch to `f`: the timestamps (nanoseconds
    /// since the epoch) and the values. Rows whose timestamp is null are
    /// left out. Memory is bounded by one batch, however long the file.
    pub fn stream(
        &self,
        s: usize,
        batch_rows: usize,
        mut f: impl FnMut(&[u64], Values),
    ) -> Result<(), ReadError> {
        self.stream_many(&[s], batch_rows, |ts, mut values| {
            if let Some(v) = values.pop() {
                f(ts, v)
            }
            true
        })
    }

    /// [`Recording::stream`] for several series at once, in one pass over
    /// the file: `f` gets the batch's timestamps and one [`Values`] per
    /// entry of `wanted` (indices into [`Recording::series`]), in that
    /// order. Only these columns and the timestamps are decoded. Reading
    /// stops early when `f` returns false.
    pub fn stream_many(
        &self,
        wanted: &[usize],
        batch_rows: usize,
        mut f: impl FnMut(&[u64], Vec<Values>) -> bool,
    ) -> Result<(), ReadError> {
        let failed = |message: String| ReadError::Read {
            path: self.path.clone(),
            message,
        };
        let builder = builder(&self.path, Some(&self.footer))?;
        let mut roots: Vec<usize> = wanted.iter().map(|s| self.series[*s].index).collect();
        roots.push(self.timestamp);
        roots.sort_unstable();
        roots.dedup();
        // projected columns come in the file's order
        let at = |column: usize| roots.binary_search(&column).unwrap_or(0);
        let ts_at = at(self.timestamp);
        let values_at: Vec<usize> = wanted.iter().map(|s| at(self.series[*s].index)).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| failed(e.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|e| failed(e.to_string()))?;
            let (timestamps, keep) = timestamps(batch.column(ts_at).as_ref())
                .ok_or_else(|| failed("the timestamp column is not an integer".into()))?;
            let mut all = Vec::with_capacity(wanted.len());
            for (s, column) in wanted.iter().zip(&values_at) {
                let series = &self.series[*s];
                let mut values = match series.kind {
                    Kind::Counter => Values::Counter(Vec::new()),
                    Kind::Gauge => Values::Gauge(Vec::new()),
                    Kind::Histogram { .. } => Values::Histogram(Vec::new()),
                };
                append(batch.column(*column).as_ref(), &keep, &mut values)
                    .map_err(|m| failed(format!("{}: {m}", series.column)))?;
                all.push(values);
            }
            if !f(&timestamps, all) {
                break;
            }
        }
        Ok(())
    }

    /// Every timestamp in the file (rows with a null timestamp left out).
    pub fn timestamps(&self) -> Result<Vec<u64>, ReadError> {
        let failed = |message: String| ReadError::Read {
            path: self.path.clone(),
            message,
        };
        let builder = builder(&self.path, Some(&self.footer))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [self.timestamp]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let mut all = Vec::with_capacity(self.rows as usize);
        for batch in reader {
            let batch = batch.map_err(|e| failed(e.to_string()))?;
            let (timestamps, _) = timestamps(batch.column(0).as_ref())
                .ok_or_else(|| failed("the timestamp column is not an integer".into()))?;
            all.extend(timestamps);
        }
        Ok(all)
    }
}

/// The non-null timestamps of a batch (negative ones as 0), and which rows
/// they are.
fn timestamps(column: &dyn Array) -> Option<(Vec<u64>, Vec<bool>)> {
    let keep: Vec<bool> = (0..column.len()).map(|i| column.is_valid(i)).collect();
    let values: Vec<u64> = match column.data_type() {
        DataType::UInt64 => column.as_primitive::<UInt64Type>().values().to_vec(),
        DataType::Int64 => column
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|v| (*v).max(0) as u64)
            .collect(),
        DataType::UInt32 => column
            .as_primitive::<UInt32Type>()
            .values()
            .iter()
            .map(|v| u64::from(*v))
            .collect(),
        DataType::Int32 => column
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|v| (*v).max(0) as u64)
            .collect(),
        _ => return None,
    };
    let kept = values
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(v, _)| v)
        .collect();
    Some((kept, keep))
}

/// A reader of `path`, with its footer parsed now or given.
fn builder(
    path: &Path,
    footer: Option<&ArrowReaderMetadata>,
) -> Result<ParquetRecordBatchReaderBuilder<File>, ReadError> {
    let file = File::open(path).map_err(|cause| ReadError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    let builder = match footer {
        Some(footer) => Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(
            file,
            footer.clone(),
        )),
        None => ParquetRecordBatchReaderBuilder::try_new(file),
    };
    builder.map_err(|e| ReadError::NotParquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The series a column holds, from its metadata; `None` for other columns.
fn series_of(index: usize, field: &arrow_schema::Field) -> Option<Series> {
    let meta = field.metadata();
    let metric = meta.get("metric")?.clone();
    let power = |key: &str| meta.get(key).and_then(|v| v.parse::<u8>().ok());
    let kind = match (
        meta.get("metric_type").map(String::as_str),
        field.data_type(),
    ) {
        (Some("counter"), DataType::UInt64 | DataType::Int64) => Kind::Counter,
        (Some("gauge"), DataType::Int64 | DataType::UInt64) => Kind::Gauge,
        (Some("histogram"), DataType::List(_) | DataType::LargeList(_)) => {
            let (grouping_power, max_value_power) =
                (power("grouping_power")?, power("max_value_power")?);
            histogram::Histogram::new(grouping_power, max_value_power).ok()?;
            Kind::Histogram {
                grouping_power,
                max_value_power,
            }
        }
        _ => return None,
    };
    let labels = meta
        .iter()
        .filter(|(k, _)| !DESCRIPTIVE.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Series {
        index,
        column: field.name().clone(),
        metric,
        labels,
        unit: meta.get("unit").cloned(),
        kind,
    })
}

/// Appends the values of the rows in `keep` (a null is `None`). Values a
/// type cannot hold (a negative counter, a gauge above i64::MAX) are `None`.
fn append(column: &dyn Array, keep: &[bool], out: &mut Values) -> Result<(), String> {
    let rows = (0..column.len()).filter(|i| keep[*i]);
    let valid = |i: usize| column.is_valid(i);
    match out {
        Values::Counter(v) => match column.data_type() {
            DataType::UInt64 => {
                let a = column.as_primitive::<UInt64Type>();
                v.extend(rows.map(|i| valid(i).then(|| a.value(i))));
            }
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                v.extend(rows.map(|i| valid(i).then(|| u64::try_from(a.value(i)).ok()).flatten()));
            }
            other => return Err(format!("a counter stored as {other}")),
        },
        Values::Gauge(v) => match column.data_type() {
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                v.extend(rows.map(|i| valid(i).then(|| a.value(i))));
            }
            DataType::UInt64 => {
                let a = column.as_primitive::<UInt64Type>();
                v.extend(rows.map(|i| valid(i).then(|| i64::try_from(a.value(i)).ok()).flatten()));
            }
            other => return Err(format!("a gauge stored as {other}")),
        },
        Values::Histogram(v) => {
            let row_values = |i: usize| -> Option<ArrayRef> {
                if let Some(list) = column.as_list_opt::<i32>() {
                    Some(list.value(i))
                } else {
                    column.as_list_opt::<i64>().map(|list| list.value(i))
                }
            };
            if column.as_list_opt::<i32>().is_none() && column.as_list_opt::<i64>().is_none() {
                return Err(format!("a histogram stored as {}", column.data_type()));
            }
            for i in rows {
                if !valid(i) {
                    v.push(None);
                    continue;
                }
                let Some(row) = row_values(i) else {
                    v.push(None);
                    continue;
                };
                let buckets = row
                    .as_primitive_opt::<UInt64Type>()
                    .ok_or_else(|| format!("histogram buckets stored as {}", row.data_type()))?;
                if buckets.null_count() == 0 {
                    v.push(Some(buckets.values().to_vec()));
                    continue;
                }
                v.push(Some(
                    (0..buckets.len())
                        .map(|b| {
                            if buckets.is_valid(b) {
                                buckets.value(b)
                            } else {
                                0
                            }
                        })
                        .collect(),
                ));
            }
        }
    }
    Ok(())
}

/// Per-second rates of a counter between consecutive rows: `None` at the
/// first row, where either value is absent, where time did not advance, and
/// where the counter went back (a restart: no rate can be known).
pub fn rates(timestamps: &[u64], values: &[Option<u64>]) -> Vec<Option<f64>> {
    let mut out = vec![None; values.len()];
    for i in 1..values.len() {
        if let (Some(a), Some(b)) = (values[i - 1], values[i]) {
            let dt = timestamps[i].saturating_sub(timestamps[i - 1]);
            if b >= a && dt > 0 {
                out[i] = Some((b - a) as f64 * 1e9 / dt as f64);
            }
        }
    }
    out
}

/// Percentiles (0..=100) of each interval between consecutive rows of a
/// histogram, row by row: [`IntervalPercentiles::next`] is given each row in
/// turn and keeps only the one before.
pub struct IntervalPercentiles {
    grouping_power: u8,
    max_value_power: u8,
    /// Buckets a row must have for this layout.
    buckets: usize,
    quantiles: Vec<f64>,
    previous: Option<Vec<u64>>,
    /// Rows whose bucket count did not fit the layout.
    pub misfits: u64,
}

impl IntervalPercentiles {
    /// For a histogram series (`None` for other kinds, or a layout the
    /// `histogram` crate does not define).
    pub fn new(kind: Kind, percentiles: &[f64]) -> Option<Self> {
        let Kind::Histogram {
            grouping_power,
            max_value_power,
        } = kind
        else {
            return None;
        };
        let buckets = histogram::Histogram::new(grouping_power, max_value_power)
            .ok()?
            .as_slice()
            .len();
        Some(Self {
            grouping_power,
            max_value_power,
            buckets,
            quantiles: percentiles.iter().map(|p| p / 100.0).collect(),
            previous: None,
            misfits: 0,
        })
    }

    /// The percentiles of the interval ending at this row: the upper edge
    /// of the bucket holding each, from the difference of this row's and the
    /// last row's bucket counts. `None` at the first row, where either row
    /// is absent or does not fit the layout, where a count went back, and
    /// where the interval holds no observation.
    pub fn next(&mut self, row: Option<Vec<u64>>) -> Option<Vec<u64>> {
        let row = match row {
            Some(r) if r.len() == self.buckets => Some(r),
            Some(_) => {
                self.misfits += 1;
                None
            }
            None => None,
        };
        let previous = std::mem::replace(&mut self.previous, row);
        let (a, b) = (previous?, self.previous.as_ref()?);
        let delta: Vec<u64> = a
            .iter()
            .zip(b)
            .map(|(a, b)| b.checked_sub(*a))
            .collect::<Option<_>>()?;
        if delta.iter().all(|c| *c == 0) {
            return None;
        }
        let h =
            histogram::Histogram::from_buckets(self.grouping_power, self.max_value_power, delta)
                .ok()?;
        let mut buckets = vec![None; self.quantiles.len()];
        h.quantile_buckets_into(&self.quantiles, &mut buckets)
            .ok()?;
        buckets.into_iter().map(|b| b.map(|b| b.end())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_skip_absent_values_restarts_and_stalled_clocks() {
        let ts = [
            0,
            1_000_000_000,
            2_000_000_000,
            2_000_000_000,
            3_000_000_000,
            5_000_000_000,
        ];
        let v = [Some(10), Some(20), None, Some(5), Some(3), Some(13)];
        assert_eq!(
            rates(&ts, &v),
            [None, Some(10.0), None, None, None, Some(5.0)]
        );
    }

    #[test]
    fn interval_percentiles_come_from_bucket_differences() {
        let kind = Kind::Histogram {
            grouping_power: 3,
            max_value_power: 64,
        };
        let empty = vec![0u64; 496];
        let mut second = empty.clone();
        second[3] = 99; // 99 observations of 3
        second[10] = 1; // 1 observation of 10 (values below 16 have a bucket each)
        let mut third = second.clone();
        third[10] += 5;
        let mut p = IntervalPercentiles::new(kind, &[50.0, 99.0, 100.0]).unwrap();
        assert_eq!(p.next(Some(empty.clone())), None);
        assert_eq!(p.next(Some(second)), Some(vec![3, 3, 10]));
        assert_eq!(p.next(Some(third.clone())), Some(vec![10, 10, 10]));
        assert_eq!(p.next(None), None);
        assert_eq!(p.next(Some(third)), None, "no row before it");
        assert_eq!(p.next(Some(vec![0; 10])), None);
        assert_eq!(p.misfits, 1);
    }
}
