//! Reading Rezolus recordings (ours, hindsight dumps, and stock Rezolus
//! Parquet files, which share the layout described in [`super::parquet`]):
//! which series a file holds, and their values over time, one column at a
//! time so that a long recording is never loaded whole.
//!
//! Series are found from each column's metadata: `metric`, `metric_type`
//! (`counter`, `gauge`, `histogram`), `unit`, for histograms
//! `grouping_power` and `max_value_power`, and every other key a label.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::Array;
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
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
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    schema: SchemaRef,
    timestamp: usize,
    pub series: Vec<Series>,
    /// The file's key-value metadata (`source`, `sampling_interval_ms`,
    /// `gaps`, ...).
    pub metadata: BTreeMap<String, String>,
    pub rows: u64,
}

impl Recording {
    /// Opens `path` and reads its schema: a clear error if the file is
    /// missing, not Parquet, or not laid out as a Rezolus recording.
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        let builder = builder(path)?;
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
            DataType::UInt64 | DataType::Int64
        ) {
            return Err(not_recording("its `timestamp` column is not an integer"));
        }
        let series: Vec<Series> = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(index, field)| series_of(index, field))
            .collect();
        if series.is_empty() {
            return Err(not_recording(
                "no column has Rezolus series metadata (`metric`, `metric_type`)",
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            schema,
            timestamp,
            series,
            metadata,
            rows,
        })
    }

    /// The timestamps (nanoseconds since the epoch) and the values of the
    /// given series (indices into [`Recording::series`]), reading only those
    /// columns.
    pub fn read(&self, wanted: &[usize]) -> Result<(Vec<u64>, Vec<Values>), ReadError> {
        let failed = |message: String| ReadError::Read {
            path: self.path.clone(),
            message,
        };
        let builder = builder(&self.path)?;
        let mut roots = vec![self.timestamp];
        roots.extend(wanted.iter().map(|&s| self.series[s].index));
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let mut timestamps = Vec::with_capacity(self.rows as usize);
        let mut values: Vec<Values> = wanted
            .iter()
            .map(|&s| match self.series[s].kind {
                Kind::Counter => Values::Counter(Vec::new()),
                Kind::Gauge => Values::Gauge(Vec::new()),
                Kind::Histogram { .. } => Values::Histogram(Vec::new()),
            })
            .collect();
        for batch in reader {
            let batch = batch.map_err(|e| failed(e.to_string()))?;
            // projected columns keep the file's order
            let position = |schema_index: usize| {
                let name = self.schema.field(schema_index).name();
                batch.schema().index_of(name).ok()
            };
            let ts =
                batch.column(position(self.timestamp).ok_or_else(|| {
                    failed("the timestamp column vanished from a row group".into())
                })?);
            match ts.data_type() {
                DataType::UInt64 => {
                    let a = ts.as_primitive::<UInt64Type>();
                    timestamps.extend((0..a.len()).map(|i| a.value(i)));
                }
                _ => {
                    let a = ts.as_primitive::<Int64Type>();
                    timestamps.extend((0..a.len()).map(|i| a.value(i).max(0) as u64));
                }
            }
            for (&s, out) in wanted.iter().zip(values.iter_mut()) {
                let column = position(self.series[s].index)
                    .map(|i| batch.column(i))
                    .ok_or_else(|| {
                        failed(format!("column {} is missing", self.series[s].column))
                    })?;
                append(column, out)
                    .map_err(|m| failed(format!("{}: {m}", self.series[s].column)))?;
            }
        }
        Ok((timestamps, values))
    }
}

fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, ReadError> {
    let file = File::open(path).map_err(|cause| ReadError::Open {
        path: path.to_path_buf(),
        cause,
    })?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ReadError::NotParquet {
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
        (Some("histogram"), DataType::List(_) | DataType::LargeList(_)) => Kind::Histogram {
            grouping_power: power("grouping_power")?,
            max_value_power: power("max_value_power")?,
        },
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

fn append(column: &dyn Array, out: &mut Values) -> Result<(), String> {
    let valid = |i: usize| column.is_valid(i);
    match out {
        Values::Counter(v) => match column.data_type() {
            DataType::UInt64 => {
                let a = column.as_primitive::<UInt64Type>();
                v.extend((0..a.len()).map(|i| valid(i).then(|| a.value(i))));
            }
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                v.extend((0..a.len()).map(|i| valid(i).then(|| a.value(i).max(0) as u64)));
            }
            other => return Err(format!("a counter stored as {other}")),
        },
        Values::Gauge(v) => match column.data_type() {
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                v.extend((0..a.len()).map(|i| valid(i).then(|| a.value(i))));
            }
            DataType::UInt64 => {
                let a = column.as_primitive::<UInt64Type>();
                v.extend((0..a.len()).map(|i| valid(i).then(|| a.value(i) as i64)));
            }
            other => return Err(format!("a gauge stored as {other}")),
        },
        Values::Histogram(v) => {
            let list = column
                .as_list_opt::<i32>()
                .ok_or_else(|| format!("a histogram stored as {}", column.data_type()))?;
            for i in 0..list.len() {
                if !valid(i) {
                    v.push(None);
                    continue;
                }
                let row = list.value(i);
                let buckets = row
                    .as_primitive_opt::<UInt64Type>()
                    .ok_or_else(|| format!("histogram buckets stored as {}", row.data_type()))?;
                v.push(Some((0..buckets.len()).map(|b| buckets.value(b)).collect()));
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

/// Percentiles (0..=100) of each interval between consecutive rows: the
/// upper edge of the bucket holding each, from the difference of the two
/// rows' bucket counts. `None` at the first row, where either row is
/// absent, where the layout changed or a count went back, and where the
/// interval holds no observation.
pub fn interval_percentiles(
    kind: Kind,
    values: &[Option<Vec<u64>>],
    percentiles: &[f64],
) -> Vec<Option<Vec<u64>>> {
    let Kind::Histogram {
        grouping_power,
        max_value_power,
    } = kind
    else {
        return vec![None; values.len()];
    };
    let quantiles: Vec<f64> = percentiles.iter().map(|p| p / 100.0).collect();
    let mut out = vec![None; values.len()];
    for i in 1..values.len() {
        let (Some(a), Some(b)) = (&values[i - 1], &values[i]) else {
            continue;
        };
        if a.len() != b.len() {
            continue;
        }
        let delta: Option<Vec<u64>> = a.iter().zip(b).map(|(a, b)| b.checked_sub(*a)).collect();
        let Some(delta) = delta else { continue };
        if delta.iter().all(|c| *c == 0) {
            continue;
        }
        let Ok(h) = histogram::Histogram::from_buckets(grouping_power, max_value_power, delta)
        else {
            continue;
        };
        let mut buckets = vec![None; quantiles.len()];
        if h.quantile_buckets_into(&quantiles, &mut buckets).is_ok() {
            out[i] = buckets.into_iter().map(|b| b.map(|b| b.end())).collect();
        }
    }
    out
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
        let values = [Some(empty.clone()), Some(second), Some(third), None];
        let p = interval_percentiles(kind, &values, &[50.0, 99.0, 100.0]);
        assert_eq!(p[0], None);
        assert_eq!(p[1], Some(vec![3, 3, 10]));
        assert_eq!(p[2], Some(vec![10, 10, 10]));
        assert_eq!(p[3], None);
    }
}
