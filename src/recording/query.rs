//! `rezolus parquet summary` and `rezolus parquet query`: the common
//! questions about a recording, answered without writing SQL.

use std::fmt::Write as _;
use std::path::Path;

use super::reader::{interval_percentiles, rates, Recording, Values};

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
    /// Only series with this label value (repeatable), e.g. --label op=read
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Histograms: the percentiles of each interval, 0 to 100
    #[arg(long, value_delimiter = ',', default_value = "50,90,99,99.9,100")]
    pub percentiles: Vec<f64>,
    /// Counters: per-second rates between rows instead of raw values
    #[arg(long)]
    pub rate: bool,
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
    let (timestamps, _) = recording.read(&[])?;
    let mut out = String::new();
    writeln!(out, "file: {}", path.display())?;
    writeln!(out, "rows: {}", timestamps.len())?;
    if let (Some(first), Some(last)) = (timestamps.first(), timestamps.last()) {
        writeln!(out, "first: {}", rfc3339(*first))?;
        writeln!(out, "last: {}", rfc3339(*last))?;
        writeln!(
            out,
            "span: {}",
            humantime::format_duration(std::time::Duration::from_millis(
                (last - first) / 1_000_000
            ))
        )?;
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
    let mut metrics: std::collections::BTreeMap<&str, (&'static str, String, usize)> =
        Default::default();
    for s in &recording.series {
        let entry = metrics.entry(&s.metric).or_insert((
            s.kind.name(),
            s.unit.clone().unwrap_or_default(),
            0,
        ));
        entry.2 += 1;
    }
    writeln!(
        out,
        "metrics: {} ({} series)",
        metrics.len(),
        recording.series.len()
    )?;
    writeln!(out, "metric,type,unit,series")?;
    for (metric, (kind, unit, n)) in metrics {
        writeln!(out, "{metric},{kind},{unit},{n}")?;
    }
    Ok(out)
}

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
    let (timestamps, values) = recording.read(&wanted)?;
    // columns: (header, values per row)
    let mut columns: Vec<(String, Vec<Option<String>>)> = Vec::new();
    for (&s, values) in wanted.iter().zip(values) {
        let series = &recording.series[s];
        let name = series_name(&series.metric, &series.labels);
        match values {
            Values::Counter(v) if args.rate => columns.push((
                format!("{name}:rate"),
                rates(&timestamps, &v)
                    .into_iter()
                    .map(|r| r.map(|r| format!("{r:.3}")))
                    .collect(),
            )),
            Values::Counter(v) => columns.push((
                name,
                v.into_iter().map(|v| v.map(|v| v.to_string())).collect(),
            )),
            Values::Gauge(v) => columns.push((
                name,
                v.into_iter().map(|v| v.map(|v| v.to_string())).collect(),
            )),
            Values::Histogram(v) => {
                let per_row = interval_percentiles(series.kind, &v, &args.percentiles);
                for (i, p) in args.percentiles.iter().enumerate() {
                    columns.push((
                        format!("{name}:p{p}"),
                        per_row
                            .iter()
                            .map(|row| row.as_ref().map(|r| r[i].to_string()))
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
                            .map(|(_, v)| v[row].clone().unwrap_or_default()),
                    )
                    .collect();
                writeln!(out, "{}", fields.join(","))?;
            }
        }
        Format::Json => {
            // columnar: {"timestamps": [...], "columns": [{"name", "values"}]}
            let number = |text: &Option<String>| match text {
                Some(text) => text
                    .parse::<f64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| text.clone().into()),
                None => serde_json::Value::Null,
            };
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

/// `metric{k="v",...}`, labels in key order.
fn series_name(metric: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return metric.to_string();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{metric}{{{}}}", inner.join(","))
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
