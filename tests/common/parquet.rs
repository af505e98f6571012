//! Reading Parquet files with pyarrow and duckdb (installed by scripts/deps).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
