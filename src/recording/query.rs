//! `rezolus parquet summary` and `rezolus parquet query`: the common
//! questions about a recording, answered without writing SQL.

use std::fmt::Write as _;
use std::path::Path;

use super::reader::{rates, IntervalPercentiles, Recording, Values};

/// Output formats of `parquet query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// What `parquet query` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// The recording (Parquet, from `rezolus record`, hindsight or stock Rezolus)
    pub file: std::path::PathBuf,
    /// The metric, e.g. cpu_usage or syscall_latency
    pub metric: String,
    /// Only series with this label value, e.g. --label op=read; repeated, a series must have all of them
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Histograms: the percentiles of each interval, 0 to 100 (ignored for counters and gauges)
    #[arg(long, value_delimiter = ',', default_value = "50,90,99,99.9,100")]
    pub percentiles: Vec<f64>,
    /// Counters: per-second rates between rows instead of raw values (ignored for gauges and histograms)
    #[arg(long)]
    pub rate: bool,
    /// csv: a header of series names, a row per sample; json: {"timestamps": [...], "columns": [{"name", "values"}]}
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("`{text}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `parquet summary`: the time span, rows, gaps, and each metric with its
/// type, unit and number of series.
pub fn summary(path: &Path) -> anyhow::Result<String> {
    let recording = Recording::open(path)?;
    let timestamps = recording.timestamps()?;
    let mut out = String::new();
    writeln!(out, "file: {}", path.display())?;
    writeln!(out, "rows: {}", timestamps.len())?;
    if let (Some(first), Some(last)) = (timestamps.first(), timestamps.last()) {
        let (min, max) = (
            timestamps.iter().min().unwrap_or(first),
            timestamps.iter().max().unwrap_or(last),
        );
        writeln!(out, "first: {}", rfc3339(*first))?;
        writeln!(out, "last: {}", rfc3339(*last))?;
        writeln!(
            out,
            "span: {}",
            humantime::format_duration(std::time::Duration::from_millis((max - min) / 1_000_000))
        )?;
        let back = timestamps.windows(2).filter(|w| w[1] < w[0]).count();
        if back > 0 {
            writeln!(out, "timestamps going back: {back}")?;
        }
        let mut steps: Vec<u64> = timestamps
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        steps.sort_unstable();
        if let Some(median) = steps.get(steps.len() / 2) {
            writeln!(
                out,
                "interval (median): {}",
                humantime::format_duration(std::time::Duration::from_millis(median / 1_000_000))
            )?;
        }
    }
    for key in ["source", "version", "sampling_interval_ms"] {
        if let Some(v) = recording.metadata.get(key) {
            writeln!(out, "{key}: {v}")?;
        }
    }
    let gaps = recording
        .metadata
        .get("gaps")
        .and_then(|g| serde_json::from_str::<serde_json::Value>(g).ok())
        .and_then(|g| g.as_array().map(Vec::len))
        .unwrap_or(0);
    writeln!(out, "gaps: {gaps}")?;
    if !recording.ignored.is_empty() {
        writeln!(
            out,
            "unreadable columns (Rezolus metadata, but no known type or histogram layout): {}",
            recording.ignored.join(", ")
        )?;
    }
    // by metric, type and unit: a series that changed type mid-capture
    // (its `#2` column) shows as a line of its own
    let mut metrics: std::collections::BTreeMap<(&str, &'static str, &str), usize> =
        Default::default();
    for s in &recording.series {
        let unit = s.unit.as_deref().unwrap_or("");
        *metrics.entry((&s.metric, s.kind.name(), unit)).or_default() += 1;
    }
    let names: std::collections::BTreeSet<&str> = metrics.keys().map(|k| k.0).collect();
    writeln!(
        out,
        "metrics: {} ({} series)",
        names.len(),
        recording.series.len()
    )?;
    writeln!(out, "metric,type,unit,series")?;
    for ((metric, kind, unit), n) in metrics {
        writeln!(out, "{},{kind},{},{n}", csv_field(metric), csv_field(unit))?;
    }
    Ok(out)
}

/// A value in a query's table.
#[derive(Debug, Clone, Copy)]
enum Cell {
    U(u64),
    I(i64),
    F(f64),
}

impl Cell {
    fn text(&self) -> String {
        match self {
            Cell::U(v) => v.to_string(),
            Cell::I(v) => v.to_string(),
            Cell::F(v) => format!("{v:.3}"),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::U(v) => (*v).into(),
            Cell::I(v) => (*v).into(),
            Cell::F(v) => serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
        }
    }
}

/// Rows read per batch: a batch of a histogram column holds this many rows
/// of buckets (496 u64 each at grouping power 3).
const BATCH_ROWS: usize = 256;

/// `parquet query`: one row per recording row, one column per matching
/// series (per percentile for histograms).
pub fn query(args: &QueryArgs) -> anyhow::Result<String> {
    let recording = Recording::open(&args.file)?;
    for p in &args.percentiles {
        anyhow::ensure!(
            (0.0..=100.0).contains(p),
            "--percentiles: {p} is not between 0 and 100"
        );
    }
    let wanted: Vec<usize> = recording
        .series
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.metric == args.metric && args.labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
        })
        .map(|(i, _)| i)
        .collect();
    if wanted.is_empty() {
        let known = recording.series.iter().any(|s| s.metric == args.metric);
        anyhow::bail!(if known {
            let asked: Vec<String> = args
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "no series of {} in {} has the labels {}",
                args.metric,
                args.file.display(),
                asked.join(", ")
            )
        } else {
            format!(
                "{} holds no metric {} (`rezolus parquet summary` lists them)",
                args.file.display(),
                args.metric
            )
        });
    }
    let mut percentiles = args.percentiles.clone();
    percentiles.dedup_by(|a, b| a == b);
    let timestamps = recording.timestamps()?;
    // columns: (header, a value per row), read one series at a time
    let mut columns: Vec<(String, Vec<Option<Cell>>)> = Vec::new();
    for &s in &wanted {
        let series = &recording.series[s];
        // the column name is the series name, unique in the file (`#2` for
        // a series that changed description mid-capture)
        let mut name = series
            .column
            .strip_suffix(":buckets")
            .unwrap_or(&series.column)
            .to_string();
        // two columns of one name (not written by us): tell them apart
        if wanted
            .iter()
            .filter(|&&o| recording.series[o].column == series.column)
            .count()
            > 1
        {
            name = format!("{name}@{}", series.index);
        }
        let mut counter = Vec::new();
        let mut cells: Vec<Vec<Option<Cell>>> = Vec::new();
        let mut interval = IntervalPercentiles::new(series.kind, &percentiles);
        let mut stamps = Vec::new();
        recording.stream(s, BATCH_ROWS, |ts, values| {
            stamps.extend_from_slice(ts);
            match values {
                Values::Counter(v) => counter.extend(v),
                Values::Gauge(v) => cells.push(v.into_iter().map(|v| v.map(Cell::I)).collect()),
                Values::Histogram(v) => {
                    if let Some(interval) = interval.as_mut() {
                        for row in v {
                            cells.push(match interval.next(row) {
                                Some(p) => p.into_iter().map(|v| Some(Cell::U(v))).collect(),
                                None => vec![None; percentiles.len()],
                            });
                        }
                    }
                }
            }
        })?;
        anyhow::ensure!(
            stamps.len() == timestamps.len(),
            "{name}: read {} rows, the file has {}",
            stamps.len(),
            timestamps.len()
        );
        match series.kind {
            super::reader::Kind::Counter if args.rate => columns.push((
                format!("{name}:rate"),
                rates(&stamps, &counter)
                    .into_iter()
                    .map(|r| r.map(Cell::F))
                    .collect(),
            )),
            super::reader::Kind::Counter => {
                columns.push((name, counter.into_iter().map(|v| v.map(Cell::U)).collect()))
            }
            super::reader::Kind::Gauge => {
                columns.push((name, cells.into_iter().flatten().collect()))
            }
            super::reader::Kind::Histogram { .. } => {
                let Some(interval) = interval else {
                    anyhow::bail!(
                        "{name}: its grouping_power and max_value_power define no histogram layout"
                    );
                };
                if interval.misfits > 0 {
                    eprintln!(
                        "warning: {name}: {} rows hold a number of buckets its grouping_power and max_value_power do not define; the intervals next to them are left empty",
                        interval.misfits
                    );
                }
                for (i, p) in percentiles.iter().enumerate() {
                    columns.push((
                        format!("{name}:p{p}"),
                        cells
                            .iter()
                            .map(|row| row.get(i).copied().flatten())
                            .collect(),
                    ));
                }
            }
        }
    }
    let mut out = String::new();
    match args.format {
        Format::Csv => {
            let header: Vec<String> = std::iter::once("timestamp".to_string())
                .chain(columns.iter().map(|(h, _)| csv_field(h)))
                .collect();
            writeln!(out, "{}", header.join(","))?;
            for (row, ts) in timestamps.iter().enumerate() {
                let fields: Vec<String> = std::iter::once(rfc3339(*ts))
                    .chain(
                        columns
                            .iter()
                            .map(|(_, v)| v[row].map(|c| c.text()).unwrap_or_default()),
                    )
                    .collect();
                writeln!(out, "{}", fields.join(","))?;
            }
        }
        Format::Json => {
            // columnar: {"timestamps": [...], "columns": [{"name", "values"}]}
            let number = |cell: &Option<Cell>| cell.map_or(serde_json::Value::Null, |c| c.json());
            let json = serde_json::json!({
                "timestamps": timestamps.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>(),
                "columns": columns
                    .iter()
                    .map(|(name, values)| serde_json::json!({
                        "name": name,
                        "values": values.iter().map(number).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>(),
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
    }
    Ok(out)
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn rfc3339(nanos: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
        .to_string()
}
