//! What the dashboard shows: its sections and charts, planned from the
//! series a source holds, and their data computed from its intervals.
//!
//! * Counters are shown as rates per second, gauges as values, histograms
//!   as percentile lines per interval (p50, p90, p99, p99.9 and max, each the
//!   upper edge of the bucket holding it, as `parquet query` gives them) and
//!   as a heatmap of observations per power-of-two range.
//! * A metric served both as totals and broken down (`cpu_usage{state}` and
//!   `cpu_usage{state,id}`) is charted from the least broken-down series
//!   only, so nothing is counted twice; per-CPU series (`id`) are used only
//!   when nothing else is there (as in stock Rezolus files).
//! * When there are more intervals than points asked for, consecutive
//!   intervals are merged: counter changes and histogram buckets summed,
//!   gauges averaged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::source::{Delta, SeriesMeta, Source};
use crate::recording::reader::{Kind, ReadError};

/// The percentiles of a histogram's percentile chart.
pub const PERCENTILES: [f64; 5] = [50.0, 90.0, 99.0, 99.9, 100.0];
const PERCENTILE_NAMES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];
/// Lines of a broken-down chart beyond this many are summed into `rest (N more)`.
pub const MAX_LINES: usize = 8;

/// How a chart is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Lines,
    Percentiles,
    Heatmap,
}

/// A chart as the browser first sees it (its data comes separately).
#[derive(Debug, Clone, Serialize)]
pub struct ChartInfo {
    pub id: String,
    pub title: String,
    pub style: Style,
    /// The unit of the values: `nanoseconds`, `bytes`, `percent`, ... with
    /// `/s` for rates.
    pub unit: String,
}

#[derive(Debug, Clone)]
struct Term {
    series: usize,
    scale: f64,
}

#[derive(Debug, Clone)]
struct Line {
    name: String,
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Plan {
    /// Counter rates (`rate`) or gauge values, each line a weighted sum.
    Lines { rate: bool, lines: Vec<Line> },
    /// The sum of these histograms, in this layout.
    Histogram {
        series: Vec<Mapped>,
        grouping_power: u8,
        max_value_power: u8,
        heatmap: bool,
    },
    /// p99 of each group's histograms, in this layout.
    GroupP99 {
        groups: Vec<(String, Vec<Mapped>)>,
        grouping_power: u8,
        max_value_power: u8,
    },
}

/// A histogram series, and how its bucket indices map into the chart's
/// layout (`None`: it is the chart's layout). A series whose layout
/// changed mid-capture (an agent upgrade: a `#2` column) is charted in the
/// coarser of the two, so no interval is lost or mis-read.
type Mapped = (usize, Option<Arc<Vec<u32>>>);

/// Each bucket of layout (`from`, `max_value_power`) to the bucket of
/// layout (`to`, `max_value_power`) holding its values; `to <= from`, so
/// that the buckets nest.
fn bucket_map(from: u8, to: u8, max_value_power: u8) -> Vec<u32> {
    let bounds = |g: u8| -> Vec<(u64, u64)> {
        histogram::Histogram::new(g, max_value_power)
            .map(|h| h.into_iter().map(|b| (b.start(), b.end())).collect())
            .unwrap_or_default()
    };
    let target = bounds(to);
    bounds(from)
        .into_iter()
        .map(|(start, _)| target.partition_point(|(_, end)| *end < start) as u32)
        .collect()
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub info: ChartInfo,
    plan: Plan,
}

#[derive(Debug, Clone, Serialize)]
pub struct SectionInfo {
    pub id: String,
    pub title: String,
    pub charts: Vec<ChartInfo>,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub charts: Vec<Chart>,
}

impl Section {
    pub fn info(&self) -> SectionInfo {
        SectionInfo {
            id: self.id.clone(),
            title: self.title.clone(),
            charts: self.charts.iter().map(|c| c.info.clone()).collect(),
        }
    }
}

/// An area: section id, title, and whether a metric belongs to it.
type Area = (&'static str, &'static str, fn(&str) -> bool);

/// The areas, in order.
const AREAS: &[Area] = &[
    ("cpu", "CPU", |m| m.starts_with("cpu_") && !is_perf(m)),
    ("scheduler", "Scheduler", |m| m.starts_with("scheduler_")),
    ("syscall", "System calls", |m| m.starts_with("syscall")),
    ("softirq", "Softirq", |m| m.starts_with("softirq")),
    ("blockio", "Block IO", |m| m.starts_with("blockio_")),
    ("filesystem", "File systems", |m| {
        m.starts_with("filesystem_")
    }),
    ("network", "Network and TCP", |m| {
        m.starts_with("network_") || m.starts_with("tcp_") || m.starts_with("udp_")
    }),
    ("memory", "Memory", |m| m.starts_with("memory_")),
    ("cgroups", "Cgroups", |m| m.starts_with("cgroup_")),
    ("perf", "Performance counters", is_perf),
    ("rezolus", "Rezolus itself", |m| m.starts_with("rezolus_")),
];

fn is_perf(metric: &str) -> bool {
    metric.starts_with("perf_")
        || metric.starts_with("cpu_cycles")
        || metric.starts_with("cpu_instructions")
        || metric.ends_with("_cycles")
        || metric.ends_with("_instructions")
        || metric.contains("_frequency")
        || metric.contains("_ipc")
        || metric.contains("_ipns")
}

/// The series of a source, by metric and then by the set of label keys.
struct Index<'a> {
    series: &'a [SeriesMeta],
    by_metric: BTreeMap<&'a str, BTreeMap<Vec<&'a str>, Vec<usize>>>,
}

impl<'a> Index<'a> {
    fn new(series: &'a [SeriesMeta]) -> Self {
        let mut by_metric: BTreeMap<&str, BTreeMap<Vec<&str>, Vec<usize>>> = BTreeMap::new();
        for (i, s) in series.iter().enumerate() {
            let keys = s.labels.keys().map(String::as_str).collect();
            by_metric
                .entry(s.metric.as_str())
                .or_default()
                .entry(keys)
                .or_default()
                .push(i);
        }
        Self { series, by_metric }
    }

    /// The least broken-down set of a metric's series that has `label`
    /// (any set if `None`): those without `id` first, fewest keys first.
    /// Its series partition what the metric measures.
    fn set(&self, metric: &str, label: Option<&str>) -> Option<(&[&'a str], &[usize])> {
        let sets = self.by_metric.get(metric)?;
        sets.iter()
            .filter(|(keys, _)| label.is_none_or(|l| keys.contains(&l)))
            .min_by_key(|(keys, _)| (keys.contains(&"id"), keys.len()))
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    fn kind(&self, metric: &str) -> Option<Kind> {
        let (_, series) = self.set(metric, None)?;
        Some(self.series[*series.first()?].kind)
    }

    fn unit(&self, metric: &str) -> String {
        self.set(metric, None)
            .and_then(|(_, s)| self.series[s[0]].unit.clone())
            .unwrap_or_default()
    }

    /// Series of `metric` summed into one line per value of `label`
    /// (`None`: one line of everything), each scaled by `scale`.
    fn lines(&self, metric: &str, label: Option<&str>, scale: f64) -> Vec<Line> {
        let Some((_, set)) = self.set(metric, label) else {
            return Vec::new();
        };
        let mut groups: BTreeMap<String, Vec<Term>> = BTreeMap::new();
        for s in set {
            let name = match label {
                Some(l) => self.series[*s].labels.get(l).cloned().unwrap_or_default(),
                None => metric.to_string(),
            };
            groups
                .entry(name)
                .or_default()
                .push(Term { series: *s, scale });
        }
        groups
            .into_iter()
            .map(|(name, terms)| Line { name, terms })
            .collect()
    }

    /// The label a metric is broken down by in its own chart: the first
    /// key (other than `id`) of its least broken-down set with any; `name`
    /// (the cgroup) when present.
    fn breakdown(&self, metric: &str) -> Option<&'a str> {
        let sets = self.by_metric.get(metric)?;
        let (keys, _) = sets
            .iter()
            .filter(|(keys, _)| keys.iter().any(|k| *k != "id"))
            .min_by_key(|(keys, _)| (keys.contains(&"id"), keys.len()))?;
        if keys.contains(&"name") {
            return Some("name");
        }
        keys.iter().copied().find(|k| *k != "id")
    }

    /// The layout histograms `set` are summed in: the coarsest grouping
    /// power among those with the first's max value power (others are left
    /// out), and each series with its bucket map.
    fn common_layout(&self, set: &[usize]) -> Option<(u8, u8, Vec<Mapped>)> {
        let layout = |s: usize| match self.series[s].kind {
            Kind::Histogram {
                grouping_power,
                max_value_power,
            } => Some((grouping_power, max_value_power)),
            _ => None,
        };
        let m = layout(*set.first()?)?.1;
        let g = set
            .iter()
            .filter_map(|s| layout(*s))
            .filter(|l| l.1 == m)
            .map(|l| l.0)
            .min()?;
        let mut maps: BTreeMap<u8, Arc<Vec<u32>>> = BTreeMap::new();
        let series = set
            .iter()
            .filter_map(|s| {
                let (sg, sm) = layout(*s)?;
                if sm != m {
                    return None;
                }
                let map = (sg != g).then(|| {
                    Arc::clone(
                        maps.entry(sg)
                            .or_insert_with(|| Arc::new(bucket_map(sg, g, m))),
                    )
                });
                Some((*s, map))
            })
            .collect();
        Some((g, m, series))
    }

    fn histogram(&self, metric: &str, id: &str, title: &str, heatmap: bool) -> Option<Chart> {
        let (_, set) = self.set(metric, None)?;
        let (grouping_power, max_value_power, series) = self.common_layout(set)?;
        Some(Chart {
            info: ChartInfo {
                id: id.to_string(),
                title: title.to_string(),
                style: if heatmap {
                    Style::Heatmap
                } else {
                    Style::Percentiles
                },
                unit: self.unit(metric),
            },
            plan: Plan::Histogram {
                series,
                grouping_power,
                max_value_power,
                heatmap,
            },
        })
    }

    fn rate_chart(&self, id: &str, title: &str, unit: String, lines: Vec<Line>) -> Option<Chart> {
        (!lines.is_empty()).then(|| Chart {
            info: ChartInfo {
                id: id.to_string(),
                title: title.to_string(),
                style: Style::Lines,
                unit,
            },
            plan: Plan::Lines { rate: true, lines },
        })
    }

    /// The charts of one metric in its area's section.
    fn metric_charts(&self, metric: &str) -> Vec<Chart> {
        let Some(kind) = self.kind(metric) else {
            return Vec::new();
        };
        let unit = self.unit(metric);
        let label = self.breakdown(metric);
        let title = match label {
            Some(l) => format!("{metric} by {l}"),
            None => metric.to_string(),
        };
        match kind {
            Kind::Counter => self
                .rate_chart(
                    metric,
                    &title,
                    format!("{unit}/s"),
                    self.lines(metric, label, 1.0),
                )
                .into_iter()
                .collect(),
            Kind::Gauge => {
                // a gauge per CPU (a frequency, say) is averaged over the
                // CPUs, not summed
                let per_cpu = self
                    .set(metric, label)
                    .is_some_and(|(keys, _)| keys.contains(&"id"));
                let mut lines = self.lines(metric, label, 1.0);
                if per_cpu {
                    for line in &mut lines {
                        let n = line.terms.len() as f64;
                        line.terms.iter_mut().for_each(|t| t.scale = 1.0 / n);
                    }
                }
                let title = match per_cpu {
                    true => format!("{title} (mean over CPUs)"),
                    false => title,
                };
                vec![Chart {
                    info: ChartInfo {
                        id: metric.to_string(),
                        title,
                        style: Style::Lines,
                        unit,
                    },
                    plan: Plan::Lines { rate: false, lines },
                }]
            }
            Kind::Histogram { .. } => {
                let mut charts: Vec<Chart> = [
                    self.histogram(metric, &format!("{metric}:percentiles"), metric, false),
                    self.histogram(
                        metric,
                        &format!("{metric}:heatmap"),
                        &format!("{metric} heatmap"),
                        true,
                    ),
                ]
                .into_iter()
                .flatten()
                .collect();
                let grouped = label.and_then(|l| {
                    let (_, set) = self.set(metric, Some(l))?;
                    Some((l, self.common_layout(set)?))
                });
                if let Some((l, (grouping_power, max_value_power, mapped))) = grouped {
                    let groups: Vec<(String, Vec<Mapped>)> = self
                        .lines(metric, Some(l), 1.0)
                        .into_iter()
                        .map(|line| {
                            let series = line
                                .terms
                                .iter()
                                .filter_map(|t| {
                                    mapped.iter().find(|(s, _)| *s == t.series).cloned()
                                })
                                .collect();
                            (line.name, series)
                        })
                        .collect();
                    if (2..=64).contains(&groups.len()) {
                        charts.push(Chart {
                            info: ChartInfo {
                                id: format!("{metric}:p99"),
                                title: format!("{metric} p99 by {l}"),
                                style: Style::Lines,
                                unit,
                            },
                            plan: Plan::GroupP99 {
                                groups,
                                grouping_power,
                                max_value_power,
                            },
                        });
                    }
                }
                charts
            }
        }
    }

    fn overview(&self) -> Vec<Chart> {
        let mut charts = Vec::new();
        // CPU: busy time per state, as a share of all CPUs
        let cpus: BTreeSet<&str> = self
            .by_metric
            .get("cpu_usage")
            .into_iter()
            .flat_map(|sets| sets.values().flatten())
            .filter_map(|s| self.series[*s].labels.get("id").map(String::as_str))
            .collect();
        let cpu_unit = match cpus.len() {
            0 => ("cores", 1e-9),
            n => ("percent", 100.0 / (1e9 * n as f64)),
        };
        let mut lines = self.lines("cpu_usage", Some("state"), cpu_unit.1);
        if lines.len() > 1 {
            // idle time (and iowait, idle time waiting for IO) is not busy
            let all = lines
                .iter()
                .filter(|l| l.name != "idle" && l.name != "iowait")
                .flat_map(|l| l.terms.clone())
                .collect();
            lines.insert(
                0,
                Line {
                    name: "busy".into(),
                    terms: all,
                },
            );
        }
        charts.extend(self.rate_chart("overview:cpu", "CPU utilisation", cpu_unit.0.into(), lines));
        charts.extend(self.histogram(
            "scheduler_runqueue_latency",
            "overview:runqueue",
            "Run-queue latency",
            false,
        ));
        charts.extend(self.rate_chart(
            "overview:syscall",
            "System calls",
            "syscalls/s".into(),
            self.lines("syscall", None, 1.0),
        ));
        charts.extend(self.histogram(
            "syscall_latency",
            "overview:syscall_latency",
            "System call latency",
            false,
        ));
        charts.extend(self.rate_chart(
            "overview:blockio",
            "Block IO throughput",
            "bytes/s".into(),
            self.lines("blockio_bytes", Some("op"), 1.0),
        ));
        charts.extend(self.histogram(
            "blockio_latency",
            "overview:blockio_latency",
            "Block IO latency",
            false,
        ));
        charts.extend(self.rate_chart(
            "overview:network",
            "Network throughput",
            "bytes/s".into(),
            self.lines("network_bytes", Some("direction"), 1.0),
        ));
        // memory: used (total less available) and available
        let one = |metric: &str, scale: f64| -> Vec<Term> {
            self.set(metric, None)
                .map(|(_, s)| s.iter().map(|s| Term { series: *s, scale }).collect())
                .unwrap_or_default()
        };
        let (total, available) = (one("memory_total", 1.0), one("memory_available", -1.0));
        let mut lines = Vec::new();
        if !total.is_empty() && !available.is_empty() {
            lines.push(Line {
                name: "used".into(),
                terms: total.iter().cloned().chain(available).collect(),
            });
        }
        for (name, metric) in [
            ("available", "memory_available"),
            ("cached", "memory_cached"),
        ] {
            let terms = one(metric, 1.0);
            if !terms.is_empty() {
                lines.push(Line {
                    name: name.into(),
                    terms,
                });
            }
        }
        if !lines.is_empty() {
            charts.push(Chart {
                info: ChartInfo {
                    id: "overview:memory".into(),
                    title: "Memory".into(),
                    style: Style::Lines,
                    unit: "bytes".into(),
                },
                plan: Plan::Lines { rate: false, lines },
            });
        }
        charts
    }
}

/// The sections for a source's series: the overview, then one per area
/// with any metric, then `other` for metrics of no known area.
pub fn plan(series: &[SeriesMeta]) -> Vec<Section> {
    let index = Index::new(series);
    let mut sections = Vec::new();
    let overview = index.overview();
    if !overview.is_empty() {
        sections.push(Section {
            id: "overview".into(),
            title: "Overview".into(),
            charts: overview,
        });
    }
    let mut placed = BTreeSet::new();
    for (id, title, belongs) in AREAS {
        let charts: Vec<Chart> = index
            .by_metric
            .keys()
            .filter(|m| belongs(m) && placed.insert(**m))
            .flat_map(|m| index.metric_charts(m))
            .collect();
        if !charts.is_empty() {
            sections.push(Section {
                id: id.to_string(),
                title: title.to_string(),
                charts,
            });
        }
    }
    let rest: Vec<Chart> = index
        .by_metric
        .keys()
        .filter(|m| !placed.contains(*m))
        .flat_map(|m| index.metric_charts(m))
        .collect();
    if !rest.is_empty() {
        sections.push(Section {
            id: "other".into(),
            title: "Other".into(),
            charts: rest,
        });
    }
    sections
}

/// A chart's data: values per point (`None`: nothing known there).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ChartData {
    Lines {
        series: Vec<NamedValues>,
    },
    Heatmap {
        /// Row `r` counts observations in `[2^(low + r - 1), 2^(low + r))`
        /// (row 0 of `low = 0`: zeros).
        low: u32,
        /// Per point, observations per second in each row.
        rows: Vec<Vec<f64>>,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NamedValues {
    pub name: String,
    pub values: Vec<Option<f64>>,
}

/// A section's data from one source.
#[derive(Debug, Clone, Serialize)]
pub struct SectionData {
    /// Each point's time: the end of its interval(s), seconds since the
    /// epoch.
    pub t: Vec<f64>,
    /// How many intervals each point merges.
    pub step: usize,
    pub charts: BTreeMap<String, ChartData>,
}

/// Per chart, what is summed over the intervals of one point.
enum Acc {
    Lines {
        rate: bool,
        sums: Vec<f64>,
        seen: Vec<u32>,
        dt: u64,
        out: Vec<Vec<Option<f64>>>,
    },
    Histogram {
        buckets: Vec<u64>,
        dt: u64,
        any: bool,
        percentiles: Vec<Vec<Option<f64>>>,
        heat: Option<Vec<Vec<f64>>>,
        grouping_power: u8,
        max_value_power: u8,
    },
    GroupP99 {
        groups: Vec<Vec<u64>>,
        any: Vec<bool>,
        out: Vec<Vec<Option<f64>>>,
        grouping_power: u8,
        max_value_power: u8,
    },
}

/// The heatmap row of a value: 0 for 0, else 1 + floor(log2(value)).
fn heat_row(value: u64) -> usize {
    (64 - value.leading_zeros()) as usize
}

fn percentiles_of(
    buckets: &[u64],
    grouping_power: u8,
    max_value_power: u8,
    quantiles: &[f64],
) -> Vec<Option<f64>> {
    let none = vec![None; quantiles.len()];
    if buckets.iter().all(|b| *b == 0) {
        return none;
    }
    let Ok(h) =
        histogram::Histogram::from_buckets(grouping_power, max_value_power, buckets.to_vec())
    else {
        return none;
    };
    let mut out = vec![None; quantiles.len()];
    if h.quantile_buckets_into(quantiles, &mut out).is_err() {
        return none;
    }
    out.into_iter().map(|b| b.map(|b| b.end() as f64)).collect()
}

fn buckets_len(grouping_power: u8, max_value_power: u8) -> usize {
    histogram::Histogram::new(grouping_power, max_value_power)
        .map(|h| h.as_slice().len())
        .unwrap_or(0)
}

/// Computes a section's charts from `source` over `from..=to` (ns since
/// the epoch) with at most about `max_points` points: one scan of the
/// series the charts use.
pub fn compute(
    source: &Source,
    section: &Section,
    from: u64,
    to: u64,
    max_points: usize,
) -> Result<SectionData, ReadError> {
    // the series used, each once, and where each chart finds them
    let mut wanted: Vec<usize> = Vec::new();
    let mut position: BTreeMap<usize, usize> = BTreeMap::new();
    let mut at = |s: usize| -> usize {
        *position.entry(s).or_insert_with(|| {
            wanted.push(s);
            wanted.len() - 1
        })
    };
    struct Planned {
        id: String,
        plan: Plan,
    }
    let planned: Vec<Planned> = section
        .charts
        .iter()
        .map(|c| {
            let plan = match &c.plan {
                Plan::Lines { rate, lines } => Plan::Lines {
                    rate: *rate,
                    lines: lines
                        .iter()
                        .map(|l| Line {
                            name: l.name.clone(),
                            terms: l
                                .terms
                                .iter()
                                .map(|t| Term {
                                    series: at(t.series),
                                    scale: t.scale,
                                })
                                .collect(),
                        })
                        .collect(),
                },
                Plan::Histogram {
                    series,
                    grouping_power,
                    max_value_power,
                    heatmap,
                } => Plan::Histogram {
                    series: series.iter().map(|(s, m)| (at(*s), m.clone())).collect(),
                    grouping_power: *grouping_power,
                    max_value_power: *max_value_power,
                    heatmap: *heatmap,
                },
                Plan::GroupP99 {
                    groups,
                    grouping_power,
                    max_value_power,
                } => Plan::GroupP99 {
                    groups: groups
                        .iter()
                        .map(|(n, s)| {
                            let s = s.iter().map(|(s, m)| (at(*s), m.clone())).collect();
                            (n.clone(), s)
                        })
                        .collect(),
                    grouping_power: *grouping_power,
                    max_value_power: *max_value_power,
                },
            };
            Planned {
                id: c.info.id.clone(),
                plan,
            }
        })
        .collect();
    let mut accs: Vec<Acc> = planned
        .iter()
        .map(|p| match &p.plan {
            Plan::Lines { rate, lines } => Acc::Lines {
                rate: *rate,
                sums: vec![0.0; lines.len()],
                seen: vec![0; lines.len()],
                dt: 0,
                out: vec![Vec::new(); lines.len()],
            },
            Plan::Histogram {
                grouping_power,
                max_value_power,
                heatmap,
                ..
            } => Acc::Histogram {
                buckets: vec![0; buckets_len(*grouping_power, *max_value_power)],
                dt: 0,
                any: false,
                percentiles: vec![Vec::new(); PERCENTILES.len()],
                heat: heatmap.then(Vec::new),
                grouping_power: *grouping_power,
                max_value_power: *max_value_power,
            },
            Plan::GroupP99 {
                groups,
                grouping_power,
                max_value_power,
            } => Acc::GroupP99 {
                groups: vec![vec![0; buckets_len(*grouping_power, *max_value_power)]; groups.len()],
                any: vec![false; groups.len()],
                out: vec![Vec::new(); groups.len()],
                grouping_power: *grouping_power,
                max_value_power: *max_value_power,
            },
        })
        .collect();
    // the heatmap row of each bucket, per layout
    let mut rows_of: BTreeMap<(u8, u8), Vec<usize>> = BTreeMap::new();
    for acc in &accs {
        if let Acc::Histogram {
            grouping_power: g,
            max_value_power: m,
            heat: Some(_),
            ..
        } = acc
        {
            rows_of.entry((*g, *m)).or_insert_with(|| {
                histogram::Histogram::new(*g, *m)
                    .map(|h| h.into_iter().map(|b| heat_row(b.start())).collect())
                    .unwrap_or_default()
            });
        }
    }

    let step = source
        .intervals_between(from, to)
        .div_ceil(max_points.max(1))
        .max(1);
    let mut t: Vec<f64> = Vec::new();
    let mut pending = 0usize;
    let mut last_end = 0u64;
    let flush = |accs: &mut Vec<Acc>, t: &mut Vec<f64>, end: u64| {
        t.push(end as f64 / 1e9);
        for acc in accs.iter_mut() {
            match acc {
                Acc::Lines {
                    rate,
                    sums,
                    seen,
                    dt,
                    out,
                } => {
                    for ((sum, seen), out) in sums.iter_mut().zip(seen.iter_mut()).zip(out) {
                        let value = match (*seen, *rate) {
                            (0, _) => None,
                            (_, true) if *dt > 0 => Some(*sum * 1e9 / *dt as f64),
                            (_, true) => None,
                            (n, false) => Some(*sum / f64::from(n)),
                        };
                        out.push(value);
                        *sum = 0.0;
                        *seen = 0;
                    }
                    *dt = 0;
                }
                Acc::Histogram {
                    buckets,
                    dt,
                    any,
                    percentiles,
                    heat,
                    grouping_power,
                    max_value_power,
                } => {
                    let values = match any {
                        true => percentiles_of(
                            buckets,
                            *grouping_power,
                            *max_value_power,
                            &PERCENTILES.map(|p| p / 100.0),
                        ),
                        false => vec![None; PERCENTILES.len()],
                    };
                    for (out, v) in percentiles.iter_mut().zip(values) {
                        out.push(v);
                    }
                    if let Some(heat) = heat {
                        let rows = &rows_of[&(*grouping_power, *max_value_power)];
                        let mut column = vec![0.0; 65];
                        let per_second = if *dt > 0 { 1e9 / *dt as f64 } else { 0.0 };
                        for (b, count) in buckets.iter().enumerate() {
                            if *count > 0 {
                                column[rows[b]] += *count as f64 * per_second;
                            }
                        }
                        heat.push(column);
                    }
                    buckets.iter_mut().for_each(|b| *b = 0);
                    *dt = 0;
                    *any = false;
                }
                Acc::GroupP99 {
                    groups,
                    any,
                    out,
                    grouping_power,
                    max_value_power,
                } => {
                    for ((buckets, any), out) in groups.iter_mut().zip(any.iter_mut()).zip(out) {
                        let v = match any {
                            true => {
                                percentiles_of(buckets, *grouping_power, *max_value_power, &[0.99])
                                    [0]
                            }
                            false => None,
                        };
                        out.push(v);
                        buckets.iter_mut().for_each(|b| *b = 0);
                        *any = false;
                    }
                }
            }
        }
    };
    let add_histogram =
        |buckets: &mut [u64], (s, map): &Mapped, deltas: &[Option<Delta>]| -> bool {
            if let Some(Delta::Histogram(d)) = &deltas[*s] {
                for (i, c) in d {
                    let i = match map {
                        Some(map) => map.get(*i as usize).copied().unwrap_or(u32::MAX),
                        None => *i,
                    };
                    if let Some(b) = buckets.get_mut(i as usize) {
                        *b += c;
                    }
                }
                true
            } else {
                false
            }
        };
    source.scan(&wanted, from, to, &mut |end, dt, deltas| {
        for (acc, planned) in accs.iter_mut().zip(&planned) {
            match (acc, &planned.plan) {
                (
                    Acc::Lines {
                        sums,
                        seen,
                        dt: acc_dt,
                        ..
                    },
                    Plan::Lines { lines, .. },
                ) => {
                    let mut counted = false;
                    for ((line, sum), seen) in
                        lines.iter().zip(sums.iter_mut()).zip(seen.iter_mut())
                    {
                        let mut present = false;
                        let mut value = 0.0;
                        for term in &line.terms {
                            match &deltas[term.series] {
                                Some(Delta::Counter(d)) => {
                                    value += *d as f64 * term.scale;
                                    present = true;
                                }
                                Some(Delta::Gauge(g)) => {
                                    value += *g as f64 * term.scale;
                                    present = true;
                                }
                                _ => {}
                            }
                        }
                        if present {
                            *sum += value;
                            *seen += 1;
                            counted = true;
                        }
                    }
                    if counted {
                        *acc_dt += dt;
                    }
                }
                (
                    Acc::Histogram {
                        buckets,
                        dt: acc_dt,
                        any,
                        ..
                    },
                    Plan::Histogram { series, .. },
                ) => {
                    let mut present = false;
                    for s in series {
                        present |= add_histogram(buckets, s, deltas);
                    }
                    if present {
                        *any = true;
                        *acc_dt += dt;
                    }
                }
                (Acc::GroupP99 { groups, any, .. }, Plan::GroupP99 { groups: plan, .. }) => {
                    for ((buckets, any), (_, series)) in groups.iter_mut().zip(any).zip(plan) {
                        for s in series {
                            *any |= add_histogram(buckets, s, deltas);
                        }
                    }
                }
                _ => {}
            }
        }
        pending += 1;
        last_end = end;
        if pending == step {
            flush(&mut accs, &mut t, end);
            pending = 0;
        }
    })?;
    if pending > 0 {
        flush(&mut accs, &mut t, last_end);
    }

    let mut charts = BTreeMap::new();
    for (acc, planned) in accs.into_iter().zip(&planned) {
        let data = match (acc, &planned.plan) {
            (Acc::Lines { out, .. }, Plan::Lines { lines, .. }) => ChartData::Lines {
                series: top_lines(
                    lines
                        .iter()
                        .zip(out)
                        .map(|(l, values)| NamedValues {
                            name: l.name.clone(),
                            values,
                        })
                        .collect(),
                ),
            },
            (
                Acc::Histogram {
                    percentiles,
                    heat: None,
                    ..
                },
                _,
            ) => ChartData::Lines {
                series: PERCENTILE_NAMES
                    .iter()
                    .zip(percentiles)
                    .map(|(n, values)| NamedValues {
                        name: n.to_string(),
                        values,
                    })
                    .collect(),
            },
            (
                Acc::Histogram {
                    heat: Some(heat), ..
                },
                _,
            ) => {
                let used = |c: &Vec<f64>| -> Option<(usize, usize)> {
                    let lo = c.iter().position(|v| *v > 0.0)?;
                    let hi = c.iter().rposition(|v| *v > 0.0)?;
                    Some((lo, hi))
                };
                let (lo, hi) = heat
                    .iter()
                    .filter_map(used)
                    .fold(None, |acc: Option<(usize, usize)>, (l, h)| {
                        Some(acc.map_or((l, h), |(a, b)| (a.min(l), b.max(h))))
                    })
                    .unwrap_or((0, 0));
                ChartData::Heatmap {
                    low: lo as u32,
                    rows: heat.into_iter().map(|c| c[lo..=hi].to_vec()).collect(),
                }
            }
            (Acc::GroupP99 { out, .. }, Plan::GroupP99 { groups, .. }) => ChartData::Lines {
                series: highest_lines(
                    groups
                        .iter()
                        .zip(out)
                        .map(|((name, _), values)| NamedValues {
                            name: name.clone(),
                            values,
                        })
                        .collect(),
                ),
            },
            _ => continue,
        };
        charts.insert(planned.id.clone(), data);
    }
    Ok(SectionData { t, step, charts })
}

/// At most [`MAX_LINES`] percentile lines (which do not add up): those
/// with the highest peaks.
fn highest_lines(lines: Vec<NamedValues>) -> Vec<NamedValues> {
    let peak = |v: &NamedValues| v.values.iter().flatten().fold(f64::MIN, |a, b| a.max(*b));
    keep_largest(lines, MAX_LINES, peak).0
}

/// At most [`MAX_LINES`] lines: the largest by their sum, the rest summed
/// into one named `rest (N more)` (not `other`, which can be a label value).
fn top_lines(lines: Vec<NamedValues>) -> Vec<NamedValues> {
    if lines.len() <= MAX_LINES {
        return lines;
    }
    let total = |v: &NamedValues| v.values.iter().flatten().map(|x| x.abs()).sum::<f64>();
    let (mut kept, rest) = keep_largest(lines, MAX_LINES - 1, total);
    let n_rest = rest.len();
    let mut other = vec![None; rest.first().map_or(0, |r| r.values.len())];
    for line in rest {
        for (o, v) in other.iter_mut().zip(line.values) {
            if let Some(v) = v {
                *o = Some(o.unwrap_or(0.0) + v);
            }
        }
    }
    kept.push(NamedValues {
        name: format!("rest ({} more)", n_rest),
        values: other,
    });
    kept
}

/// The `n` lines largest by `size`, in their original order (so a chart's
/// lines keep their order, and colours, as data arrives), and the rest.
fn keep_largest(
    lines: Vec<NamedValues>,
    n: usize,
    size: impl Fn(&NamedValues) -> f64,
) -> (Vec<NamedValues>, Vec<NamedValues>) {
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|a, b| size(&lines[*b]).total_cmp(&size(&lines[*a])));
    let mut keep = vec![false; lines.len()];
    for i in order.into_iter().take(n) {
        keep[i] = true;
    }
    let (mut kept, mut rest) = (Vec::new(), Vec::new());
    for (line, k) in lines.into_iter().zip(keep) {
        match k {
            true => kept.push(line),
            false => rest.push(line),
        }
    }
    (kept, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(metric: &str, kind: Kind, labels: &[(&str, &str)]) -> SeriesMeta {
        SeriesMeta {
            metric: metric.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            unit: Some("nanoseconds".into()),
            kind,
        }
    }

    fn line_terms(chart: &Chart) -> Vec<(String, Vec<usize>)> {
        match &chart.plan {
            Plan::Lines { lines, .. } => lines
                .iter()
                .map(|l| (l.name.clone(), l.terms.iter().map(|t| t.series).collect()))
                .collect(),
            other => panic!("not lines: {other:?}"),
        }
    }

    fn chart<'a>(sections: &'a [Section], id: &str) -> &'a Chart {
        sections
            .iter()
            .flat_map(|s| &s.charts)
            .find(|c| c.info.id == id)
            .unwrap_or_else(|| panic!("no chart {id}"))
    }

    /// Totals and per-CPU series of one metric: only the totals are used,
    /// so nothing is counted twice; with per-CPU series only (stock
    /// Rezolus), those are summed per state.
    #[test]
    fn breakdowns_never_count_a_series_twice() {
        let ours = [
            series("cpu_usage", Kind::Counter, &[("state", "user")]),
            series("cpu_usage", Kind::Counter, &[("state", "idle")]),
            series(
                "cpu_usage",
                Kind::Counter,
                &[("state", "user"), ("id", "0")],
            ),
            series(
                "cpu_usage",
                Kind::Counter,
                &[("state", "user"), ("id", "1")],
            ),
            series(
                "cpu_usage",
                Kind::Counter,
                &[("state", "idle"), ("id", "0")],
            ),
            series(
                "cpu_usage",
                Kind::Counter,
                &[("state", "idle"), ("id", "1")],
            ),
        ];
        let sections = plan(&ours);
        let cpu = chart(&sections, "overview:cpu");
        // two CPUs: ns/s to percent of both
        assert_eq!(cpu.info.unit, "percent");
        assert_eq!(
            line_terms(cpu),
            [
                // busy leaves idle out
                ("busy".to_string(), vec![0]),
                ("idle".to_string(), vec![1]),
                ("user".to_string(), vec![0]),
            ]
        );
        assert_eq!(line_terms(chart(&sections, "cpu_usage")).len(), 2);

        let stock = &ours[2..];
        let sections = plan(stock);
        assert_eq!(
            line_terms(chart(&sections, "overview:cpu")),
            [
                ("busy".to_string(), vec![0, 1]),
                ("idle".to_string(), vec![2, 3]),
                ("user".to_string(), vec![0, 1]),
            ]
        );
    }

    #[test]
    fn lines_beyond_the_limit_are_summed_into_other() {
        let lines: Vec<NamedValues> = (0..12)
            .map(|i| NamedValues {
                name: format!("l{i}"),
                values: vec![Some(i as f64), None],
            })
            .collect();
        let top = top_lines(lines);
        assert_eq!(top.len(), MAX_LINES);
        // the largest, in their own order
        let names: Vec<&str> = top.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["l5", "l6", "l7", "l8", "l9", "l10", "l11", "rest (5 more)"]
        );
        let other = top.last().unwrap();
        // l0..=l4 summed; a point absent everywhere stays absent
        assert_eq!(other.values, [Some(10.0), None]);
    }

    /// Case 08's class: a histogram whose layout changes mid-capture (two
    /// series of one name) is charted in the coarser layout throughout, so
    /// the intervals after the change are neither lost nor mis-read.
    #[test]
    fn a_histogram_layout_change_is_charted_in_the_coarser_layout() {
        use crate::snapshot::{Received, ReceivedEntry};
        use crate::view::source::{LiveStore, Source};
        let snapshot = |grouping_power: u8, count: u64| {
            let mut h = histogram::Histogram::new(grouping_power, 64).unwrap();
            h.add(1000, count).unwrap();
            Received {
                systemtime: std::time::UNIX_EPOCH,
                duration: std::time::Duration::ZERO,
                metadata: BTreeMap::new(),
                counters: vec![],
                gauges: vec![],
                histograms: vec![ReceivedEntry {
                    name: "scheduler_runqueue_latency".into(),
                    value: h,
                    metadata: BTreeMap::from([(
                        "metric".to_string(),
                        "scheduler_runqueue_latency".to_string(),
                    )]),
                }],
            }
        };
        let second = 1_000_000_000;
        let store = std::sync::Arc::new(std::sync::Mutex::new(LiveStore::new(
            "test".into(),
            60 * second,
        )));
        for (t, g, n) in [(1, 3, 1), (2, 3, 2), (3, 2, 1), (4, 2, 3)] {
            crate::view::source::lock(&store).add(t * second, &snapshot(g, n));
        }
        let source = Source::Live(store);
        let sections = plan(&source.series());
        let chart = sections
            .iter()
            .flat_map(|s| &s.charts)
            .find(|c| c.info.id == "overview:runqueue")
            .unwrap();
        let section = Section {
            id: "t".into(),
            title: "t".into(),
            charts: vec![chart.clone()],
        };
        let data = compute(&source, &section, 0, u64::MAX, 100).unwrap();
        let ChartData::Lines { series } = &data.charts["overview:runqueue"] else {
            panic!("not lines");
        };
        // the grouping power 2 bucket holding 1000
        let mut h = histogram::Histogram::new(2, 64).unwrap();
        h.increment(1000).unwrap();
        let edge = h.iter().find(|b| b.count() > 0).unwrap().end() as f64;
        // interval 2 crosses the change: no delta can be known there
        assert_eq!(series[0].name, "p50");
        assert_eq!(series[0].values, [Some(edge), None, Some(edge)]);
    }
}
