//! Reading Parquet files with pyarrow and duckdb (installed by scripts/deps).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use serde_json::Value;

/// The Python with pyarrow and duckdb that scripts/deps installs.
pub fn python() -> PathBuf {
    let path = std::env::var_os("REZOLUS_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytools/bin/python"));
    assert!(
        path.exists(),
        "{} not found: run scripts/deps (it installs pyarrow and duckdb)",
        path.display()
    );
    path
}

/// Reads a recording with pyarrow (and counts its rows with duckdb): the
/// file metadata, each column's metadata, and each column's values.
pub fn read_parquet(path: &Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
import duckdb
path = sys.argv[1]
table = pq.read_table(path)
meta = {k.decode(): v.decode() for k, v in (pq.read_metadata(path).metadata or {}).items() if k != b"ARROW:schema"}
columns = {}
for field in table.schema:
    columns[field.name] = {
        "type": str(field.type),
        "metadata": {k.decode(): v.decode() for k, v in (field.metadata or {}).items()},
        "values": table.column(field.name).to_pylist(),
    }
rows = duckdb.sql(f"select count(*) from read_parquet('{path}')").fetchall()[0][0]
print(json.dumps({"rows": table.num_rows, "duckdb_rows": rows, "metadata": meta, "columns": columns}))
"#;
    let out = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow could not read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `timestamp` column of a file as [`read_parquet`] gives it.
pub fn timestamps(file: &Value) -> Vec<u64> {
    file["columns"]["timestamp"]["values"]
        .as_array()
        .expect("a timestamp column")
        .iter()
        .map(|v| v.as_u64().expect("an integer timestamp"))
        .collect()
}

pub fn field(name: &str, data_type: DataType, meta: &[(&str, &str)]) -> Field {
    Field::new(name, data_type, true).with_metadata(
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Writes `columns` (with `timestamp` first) as a Parquet file.
pub fn write(path: &Path, fields: Vec<Field>, columns: Vec<ArrayRef>) {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

pub const SECOND: u64 = 1_000_000_000;
pub const T0: u64 = 1_700_000_000 * SECOND;

/// Cumulative buckets holding `observations` (value, count), in the
/// histogram crate's own layout (grouping power 3, max value power 64).
pub fn buckets(observations: &[(u64, u64)]) -> Vec<u64> {
    let mut h = histogram::Histogram::new(3, 64).unwrap();
    for (value, count) in observations {
        h.add(*value, *count).unwrap();
    }
    h.as_slice().to_vec()
}

/// The upper edge of the histogram crate's bucket holding `value`.
pub fn edge(value: u64) -> u64 {
    let mut h = histogram::Histogram::new(3, 64).unwrap();
    h.increment(value).unwrap();
    h.iter().find(|b| b.count() > 0).unwrap().end()
}

/// A recording laid out as stock Rezolus writes them: a counter with a
/// label and a histogram column, four rows a second apart (the third with
/// the counter absent).
pub fn stock_file(path: &Path) {
    let timestamps = UInt64Array::from(vec![T0, T0 + SECOND, T0 + 2 * SECOND, T0 + 4 * SECOND]);
    let counter = UInt64Array::from(vec![Some(100), Some(150), None, Some(450)]);
    let rows = [
        buckets(&[]),
        buckets(&[(5, 99), (1000, 1)]),
        buckets(&[(5, 99), (1000, 1), (100, 10)]),
        buckets(&[(5, 99), (1000, 1), (100, 10), (70_000, 4)]),
    ];
    let mut list = ListBuilder::new(UInt64Builder::new());
    for row in &rows {
        list.values().append_slice(row);
        list.append(true);
    }
    let h_type = DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)));
    write(
        path,
        vec![
            Field::new("timestamp", DataType::UInt64, false),
            field(
                "requests/GET",
                DataType::UInt64,
                &[
                    ("metric", "requests"),
                    ("metric_type", "counter"),
                    ("unit", "requests"),
                    ("method", "GET"),
                ],
            ),
            field(
                "latency:buckets",
                h_type,
                &[
                    ("metric", "latency"),
                    ("metric_type", "histogram"),
                    ("unit", "nanoseconds"),
                    ("grouping_power", "3"),
                    ("max_value_power", "64"),
                ],
            ),
        ],
        vec![
            Arc::new(timestamps),
            Arc::new(counter),
            Arc::new(list.finish()),
        ],
    );
}
