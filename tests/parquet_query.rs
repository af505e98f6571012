//! `rezolus parquet summary` and `rezolus parquet query`: on a file in the
//! documented Rezolus layout built here with known values, on a real
//! capture (checked against pyarrow's reading), and on bad input.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use common::parquet::{edge, field, stock_file, write, SECOND, T0};
use common::{Agent, BIN};

fn rezolus(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fails unless `out` has each of `lines` as a whole line.
fn assert_lines(out: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            out.lines().any(|l| l == *line),
            "no line {line:?} in:\n{out}"
        );
    }
}

/// The values of column `name` in `parquet query --format json` output.
fn json_column(json: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    json["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no column {name} in {json}"))["values"]
        .as_array()
        .unwrap()
        .clone()
}

/// Rates and interval percentiles equal the values worked out here from
/// the rows written; an absent value leaves its rate and the next empty.
#[test]
fn rates_and_percentiles_of_a_stock_layout_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stock.parquet");
    stock_file(&path);
    let file = path.to_str().unwrap();

    let (ok, out, err) = rezolus(&[
        "parquet",
        "query",
        file,
        "requests",
        "--label",
        "method=GET",
        "--rate",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "timestamp,requests/GET:rate");
    let rates: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    // 150 - 100 over 1 s; row 3 absent; row 4 follows an absent row
    assert_eq!(rates, ["", "50.000", "", ""]);

    let (ok, out, err) = rezolus(&[
        "parquet",
        "query",
        file,
        "latency",
        "--percentiles",
        "50,99,100",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let column = |name: &str| -> Vec<Option<u64>> {
        json_column(&json, name)
            .iter()
            .map(|v| v.as_u64())
            .collect()
    };
    // interval 1: 99 × 5 and 1 × 1000; interval 2: 10 × 100; interval 3: 4 × 70000
    assert_eq!(
        column("latency:p50"),
        [None, Some(edge(5)), Some(edge(100)), Some(edge(70_000))]
    );
    assert_eq!(
        column("latency:p99"),
        [None, Some(edge(5)), Some(edge(100)), Some(edge(70_000))]
    );
    assert_eq!(
        column("latency:p100"),
        [None, Some(edge(1000)), Some(edge(100)), Some(edge(70_000))]
    );
    assert_eq!(json["timestamps"][1], "2023-11-14T22:13:21.000Z");

    let (ok, out, err) = rezolus(&["parquet", "summary", file]);
    assert!(ok, "{err}");
    assert_lines(
        &out,
        &[
            "rows: 4",
            "span: 4s",
            "interval (median): 1s",
            "metrics: 2 (2 series)",
            "latency,histogram,nanoseconds,1",
            "requests,counter,requests,1",
        ],
    );
}

/// On a real capture of the agent, the summary's rows and metrics and a
/// counter's rates agree with what pyarrow reads from the same file.
#[test]
fn a_real_capture_agrees_with_pyarrow() {
    let agent = Agent::start("", "[defaults]\nenabled = false\n[samplers.cpu_usage]\nenabled = true\n[samplers.syscall]\nenabled = true\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.parquet");
    let url = format!("http://{}", agent.addr);
    let (ok, _, err) = rezolus(&[
        "record",
        "--interval",
        "100ms",
        "--duration",
        "1s",
        &url,
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let file = common::parquet::read_parquet(&path);
    let columns = file["columns"].as_object().unwrap();
    let metrics: std::collections::BTreeSet<&str> = columns
        .values()
        .filter_map(|c| c["metadata"]["metric"].as_str())
        .collect();
    let series = columns
        .values()
        .filter(|c| c["metadata"]["metric"].is_string())
        .count();

    // the file says where each bucket ends
    let layouts: serde_json::Value =
        serde_json::from_str(file["metadata"]["histogram_buckets"].as_str().unwrap()).unwrap();
    let layout = layouts
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["grouping_power"] == 3 && l["max_value_power"] == 64)
        .expect("the layout of the syscall sampler's histograms");
    let bounds: Vec<u64> = layout["upper_bounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert_eq!(bounds.len(), 496);
    for (i, bound) in bounds.iter().enumerate() {
        // the bucket holding `bound` is `i`, and `bound + 1` is past it
        assert_eq!(edge(*bound), *bound, "bucket {i}");
        if *bound < u64::MAX {
            assert!(edge(bound + 1) > *bound, "bucket {i}");
        }
    }
    assert_eq!(
        bounds[..17],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17]
    );

    let (ok, out, err) = rezolus(&["parquet", "summary", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("rows: {}\n", file["rows"])), "{out}");
    assert!(
        out.contains(&format!("metrics: {} ({series} series)\n", metrics.len())),
        "{out}"
    );

    // the total syscall counter: its column is the one without labels
    let (_, column) = columns
        .iter()
        .find(|(_, c)| {
            c["metadata"]["metric"] == "syscall"
                && c["metadata"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .all(|k| ["metric", "metric_type", "unit"].contains(&k.as_str()))
        })
        .expect("a syscall total column");
    let values: Vec<Option<u64>> = column["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64())
        .collect();
    let stamps: Vec<u64> = columns["timestamp"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let (ok, out, err) = rezolus(&[
        "parquet",
        "query",
        path.to_str().unwrap(),
        "syscall",
        "--rate",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let served = json_column(&json, "syscall:rate");
    for i in 1..values.len() {
        let expected = match (values[i - 1], values[i]) {
            (Some(a), Some(b)) if b >= a => {
                Some((b - a) as f64 * 1e9 / (stamps[i] - stamps[i - 1]) as f64)
            }
            _ => None,
        };
        let got = served[i].as_f64();
        match (expected, got) {
            (Some(e), Some(g)) => {
                assert!((e - g).abs() <= 0.001 + e * 1e-9, "row {i}: {g} for {e}")
            }
            (None, None) => {}
            other => panic!("row {i}: {other:?}"),
        }
    }
}

/// Missing files, files that are not Parquet or not recordings, unknown
/// metrics and bad arguments: a clear message naming the problem, and a
/// non-zero exit.
#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stock = dir.path().join("stock.parquet");
    stock_file(&stock);
    let stock = stock.to_str().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not parquet").unwrap();
    let plain = dir.path().join("plain.parquet");
    write(
        &plain,
        vec![
            Field::new("timestamp", DataType::UInt64, false),
            Field::new("x", DataType::UInt64, true),
        ],
        vec![
            Arc::new(UInt64Array::from(vec![1u64])),
            Arc::new(UInt64Array::from(vec![2u64])),
        ],
    );
    let missing = dir.path().join("missing.parquet");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["parquet", "summary", missing.to_str().unwrap()],
            "No such file",
        ),
        (
            vec!["parquet", "summary", text.to_str().unwrap()],
            "is not a Parquet file",
        ),
        (
            vec!["parquet", "summary", plain.to_str().unwrap()],
            "is not a Rezolus recording",
        ),
        (
            vec!["parquet", "query", stock, "nosuch"],
            "holds no metric nosuch",
        ),
        (
            vec![
                "parquet",
                "query",
                stock,
                "requests",
                "--label",
                "method=PUT",
            ],
            "has the labels method=PUT",
        ),
        (
            vec!["parquet", "query", stock, "requests", "--label", "method"],
            "is not KEY=VALUE",
        ),
        (
            vec!["parquet", "query", stock, "latency", "--percentiles", "101"],
            "101 is not between 0 and 100",
        ),
        (
            vec!["parquet", "query", stock, "latency", "--format", "xml"],
            "xml",
        ),
    ];
    for (args, expected) in cases {
        let (ok, out, err) = rezolus(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

/// Files other tools write: snappy compression (pyarrow's default), a
/// clock that went back, counters past 2^53, and two columns of one name.
/// Numbers stay exact, the span does not underflow, and same-named
/// columns keep their own values and get headers of their own.
#[test]
fn odd_but_valid_files_read_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.parquet");
    let big = (1u64 << 53) + 1;
    let counter = |labels: &[(&str, &str)]| {
        let mut meta = vec![("metric", "c"), ("metric_type", "counter"), ("unit", "x")];
        meta.extend_from_slice(labels);
        field("c", DataType::UInt64, &meta)
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("timestamp", DataType::UInt64, false),
        counter(&[("a", "1")]),
        counter(&[("a", "2")]),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![
            T0 + 2 * SECOND,
            T0 + 3 * SECOND,
            T0,
        ])),
        Arc::new(UInt64Array::from(vec![big, u64::MAX, 5])),
        Arc::new(UInt64Array::from(vec![100, 300, 400])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema,
        Some(props),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let file = path.to_str().unwrap();

    let (ok, out, err) = rezolus(&["parquet", "summary", file]);
    assert!(ok, "{err}");
    assert_lines(
        &out,
        &[
            "rows: 3",
            "span: 3s",
            "timestamps going back: 1",
            "c,counter,x,2",
        ],
    );

    let (ok, out, err) = rezolus(&["parquet", "query", file, "c", "--format", "json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = json["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c@1", "c@2"]);
    assert_eq!(json["columns"][0]["values"][0].as_u64(), Some(big));
    assert_eq!(json["columns"][0]["values"][1].as_u64(), Some(u64::MAX));

    let (ok, out, err) = rezolus(&["parquet", "query", file, "c", "--label", "a=2", "--rate"]);
    assert!(ok, "{err}");
    let rates: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    // 100 -> 300 over 1 s; then the clock went back: no rate
    assert_eq!(rates, ["", "200.000", ""]);
}

/// The DuckDB and polars examples in docs/RECORDING.md (kept in
/// docs/examples, and quoted whole in the doc) run on a real capture and
/// agree with `rezolus parquet query`: CPU busy % from the counters' rates,
/// and the p99 of system call latency per interval, exactly.
#[test]
fn the_documented_duckdb_and_polars_examples_agree_with_query() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/RECORDING.md")).unwrap();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.cpu_usage]\nenabled = true\n[samplers.syscall]\nenabled = true\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.parquet");
    let file = path.to_str().unwrap();
    let url = format!("http://{}", agent.addr);
    let (ok, _, err) = rezolus(&[
        "record",
        "--interval",
        "100ms",
        "--duration",
        "1500ms",
        &url,
        file,
    ]);
    assert!(ok, "{err}");

    let run = |script: &str| -> Vec<(u64, f64)> {
        let source = std::fs::read_to_string(root.join("docs/examples").join(script)).unwrap();
        assert!(
            doc.contains(&source),
            "docs/RECORDING.md does not quote {script} whole"
        );
        let out = Command::new(common::parquet::python())
            .arg(root.join("docs/examples").join(script))
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (t, v) = l.split_once(',').unwrap();
                (t.parse().unwrap(), v.parse().unwrap())
            })
            .collect()
    };
    let query = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["parquet", "query", file];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        let (ok, out, err) = rezolus(&all);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let column = |json: &serde_json::Value, name: &str| -> Vec<Option<f64>> {
        json_column(json, name).iter().map(|v| v.as_f64()).collect()
    };

    // busy % from the rates `query` gives for the all-CPU state counters
    let rates = query(&["cpu_usage", "--rate"]);
    let rate = |state: &str| column(&rates, &format!("cpu_usage{{state=\"{state}\"}}:rate"));
    let busy: Vec<Vec<Option<f64>>> = ["user", "nice", "system", "irq", "softirq", "steal"]
        .iter()
        .map(|s| rate(s))
        .collect();
    let idle = [rate("idle"), rate("iowait")];
    let expected: Vec<Option<f64>> = (0..busy[0].len())
        .map(|row| {
            let b: Option<f64> = busy.iter().map(|c| c[row]).sum();
            let i: Option<f64> = idle.iter().map(|c| c[row]).sum();
            match (b, i) {
                (Some(b), Some(i)) if b + i > 0.0 => Some(100.0 * b / (b + i)),
                _ => None,
            }
        })
        .collect();
    let timestamps: Vec<u64> = common::parquet::read_parquet(&path)["columns"]["timestamp"]
        ["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for script in ["cpu_busy_duckdb.py", "cpu_busy_polars.py"] {
        let got = run(script);
        let want: Vec<(u64, f64)> = timestamps
            .iter()
            .zip(&expected)
            .filter_map(|(t, e)| Some((*t, (*e)?)))
            .collect();
        assert_eq!(got.len(), want.len(), "{script}: {got:?} vs {want:?}");
        assert!(!got.is_empty(), "{script} printed nothing");
        for ((t, g), (tw, w)) in got.iter().zip(&want) {
            assert_eq!(t, tw, "{script}");
            // rates are rounded to 0.001 per second in `query`'s output
            assert!((g - w).abs() < 0.01, "{script} at {t}: {g} vs {w}");
        }
    }

    let p99 = column(
        &query(&["syscall_latency", "--percentiles", "99"]),
        "syscall_latency:p99",
    );
    let want: Vec<(u64, f64)> = timestamps
        .iter()
        .zip(&p99)
        .filter_map(|(t, p)| Some((*t, (*p)?)))
        .collect();
    assert!(!want.is_empty());
    for script in ["p99_duckdb.py", "p99_polars.py"] {
        assert_eq!(run(script), want, "{script}");
    }
}

/// A reader that stops early (`| head`) ends the output quietly: no panic,
/// success.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.parquet");
    // far more output than a pipe holds
    let rows = 200_000u64;
    write(
        &path,
        vec![
            Field::new("timestamp", DataType::UInt64, false),
            field(
                "c",
                DataType::UInt64,
                &[("metric", "c"), ("metric_type", "counter"), ("unit", "x")],
            ),
        ],
        vec![
            Arc::new(UInt64Array::from_iter_values(
                (0..rows).map(|i| T0 + i * SECOND),
            )),
            Arc::new(UInt64Array::from_iter_values((0..rows).map(|i| i * 7))),
        ],
    );
    let mut child = Command::new(BIN)
        .args(["parquet", "query", path.to_str().unwrap(), "c", "--rate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "timestamp,c:rate\n");
    // stdout is closed here
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}
