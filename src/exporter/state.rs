//! What the exporter knows between scrapes: the snapshot at the previous
//! interval boundary (for distributions over the last interval), the rates
//! seen within the current interval (oversampling), and the agent's health.
//! Pure: fed fetched snapshots, it renders the exposition text.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use histogram::Histogram;

use super::config::Config;
use super::names::{DropReason, Placement, Plan, OWN_PREFIX};
use super::prometheus::{quantile_label, Exposition, Naming, Type, Value};
use crate::snapshot::{Received, ReceivedEntry};

/// The quantiles of the oversampled rates: median, p99 and max.
const RATE_QUANTILES: [(f64, &str); 3] = [(0.5, "0.5"), (0.99, "0.99"), (1.0, "1")];

/// What the exporter serves, and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub summaries: bool,
    /// (quantile in 0..=1, its label)
    pub quantiles: Vec<(f64, String)>,
    pub histograms: bool,
    pub grouping_power: u8,
    pub oversampled: Vec<String>,
    pub interval: Duration,
}

impl Options {
    pub fn from_config(config: &Config) -> Self {
        let p = &config.prometheus;
        Self {
            summaries: p.summaries,
            quantiles: p
                .percentiles
                .iter()
                .map(|&p| (p / 100.0, quantile_label(p)))
                .collect(),
            histograms: p.histograms,
            grouping_power: p.histogram_grouping_power,
            oversampled: if config.oversample.resolution.is_some() {
                config.oversample.counters.clone()
            } else {
                Vec::new()
            },
            interval: config.general.interval,
        }
    }
}

/// Rates of one oversampled counter series within the current interval.
struct Rates {
    /// What the counter's values are divided by to be in the base unit.
    divisor: f64,
    /// Per second, in the base unit.
    values: Vec<f64>,
}

/// The exporter's own families, written after the agent's.
const OWN: [&str; 6] = [
    "rezolus_exporter_agent_up",
    "rezolus_exporter_agent_reads_total",
    "rezolus_exporter_agent_read_errors_total",
    "rezolus_exporter_agent_resets_total",
    "rezolus_exporter_agent_last_read_timestamp_seconds",
    "rezolus_exporter_series_dropped_total",
];

/// At most this many distinct rename notes are remembered (so logged once);
/// past it, notes are logged at debug level only.
const NOTES_REMEMBERED: usize = 10_000;

pub struct State {
    options: Options,
    /// The snapshot at the last interval boundary.
    boundary: Option<Received>,
    /// The last fetch's time and its oversampled counters, by series name.
    last: Option<(SystemTime, HashMap<String, u64>)>,
    rates: BTreeMap<String, Rates>,
    up: bool,
    fetches: u64,
    errors: u64,
    resets: u64,
    /// Every counter's value at the last successful read (kept across failed
    /// reads, so an agent restarted during a gap is seen as a reset).
    counters: HashMap<String, u64>,
    last_success: Option<SystemTime>,
    /// The names of the last snapshot rendered, reused while its series
    /// stay the same.
    plan: Option<Plan>,
    /// Rename and drop notes already logged.
    noted: HashSet<String>,
    /// Series left out of renders (one per series per interval), by reason.
    dropped: BTreeMap<DropReason, u64>,
    rendered: String,
    /// Whether oversampled counters missing from the agent were reported.
    missing_reported: bool,
}

impl State {
    pub fn new(options: Options) -> Self {
        let mut this = Self {
            options,
            boundary: None,
            last: None,
            rates: BTreeMap::new(),
            up: false,
            fetches: 0,
            errors: 0,
            resets: 0,
            missing_reported: false,
            counters: HashMap::new(),
            last_success: None,
            plan: None,
            noted: HashSet::new(),
            dropped: BTreeMap::new(),
            rendered: String::new(),
        };
        this.rendered = this.render(None);
        this
    }

    /// The exposition text made at the last interval boundary.
    pub fn rendered(&self) -> &str {
        &self.rendered
    }

    /// Takes one fetch's outcome; at an interval boundary, renders anew.
    pub fn observe(&mut self, fetched: Result<Received, String>, boundary: bool) {
        self.fetches += 1;
        match fetched {
            Err(_) => {
                // a gap: nothing before it is a valid base for a delta
                self.up = false;
                self.errors += 1;
                self.boundary = None;
                self.last = None;
                self.rates.clear();
                if boundary {
                    self.rendered = self.render(None);
                }
            }
            Ok(snap) => {
                self.up = true;
                self.last_success = Some(SystemTime::now());
                let counter_back = self.counters_went_back(&snap);
                self.add_rates(&snap);
                if boundary {
                    let histogram_back = self.histograms_went_back(&snap);
                    self.resets += u64::from(counter_back || histogram_back);
                    self.rendered = self.render(Some(&snap));
                    self.rates.clear();
                    self.boundary = Some(snap);
                } else {
                    self.resets += u64::from(counter_back);
                }
            }
        }
    }

    /// Whether any counter is below its value at the last successful read
    /// (every counter, oversampled or not); remembers the new values.
    fn counters_went_back(&mut self, snap: &Received) -> bool {
        let mut back = false;
        for c in &snap.counters {
            match self.counters.get_mut(&c.name) {
                Some(last) => {
                    back |= c.value < *last;
                    *last = c.value;
                }
                None => {
                    self.counters.insert(c.name.clone(), c.value);
                }
            }
        }
        back
    }

    /// Whether any histogram lost counts since the last interval boundary.
    fn histograms_went_back(&self, snap: &Received) -> bool {
        let Some(boundary) = &self.boundary else {
            return false;
        };
        let previous: HashMap<&str, &Histogram> = boundary
            .histograms
            .iter()
            .map(|h| (h.name.as_str(), &h.value))
            .collect();
        snap.histograms.iter().any(|h| {
            previous
                .get(h.name.as_str())
                .is_some_and(|p| h.value.checked_sub(p).is_err())
        })
    }

    fn add_rates(&mut self, snap: &Received) {
        if self.options.oversampled.is_empty() {
            return;
        }
        if !self.missing_reported {
            // once, on the first snapshot: a name in `oversample.counters`
            // that the agent does not serve (a typo, a disabled sampler)
            self.missing_reported = true;
            for wanted in &self.options.oversampled {
                if !snap.counters.iter().any(|c| c.metric() == wanted) {
                    tracing::warn!(
                        "`oversample.counters` lists {wanted:?}, which is not a counter the agent serves: no {wanted}_per_second"
                    );
                }
            }
        }
        let chosen =
            |c: &&ReceivedEntry<u64>| self.options.oversampled.iter().any(|m| m == c.metric());
        let now: HashMap<String, u64> = snap
            .counters
            .iter()
            .filter(chosen)
            .map(|c| (c.name.clone(), c.value))
            .collect();
        let previous = self.last.replace((snap.systemtime, now));
        let Some((then, before)) = previous else {
            return;
        };
        // the same (cached) snapshot again, or the agent's clock went back
        let Ok(dt) = snap.systemtime.duration_since(then) else {
            return;
        };
        if dt.is_zero() {
            return;
        }
        for c in snap.counters.iter().filter(chosen) {
            let Some(&old) = before.get(&c.name) else {
                continue;
            };
            if c.value < old {
                continue; // counted in `resets` by `counters_went_back`
            }
            let rates = self.rates.entry(c.name.clone()).or_insert_with(|| Rates {
                divisor: Naming::new(c.metric(), c.unit()).divisor,
                values: Vec::new(),
            });
            rates
                .values
                .push((c.value - old) as f64 / rates.divisor / dt.as_secs_f64());
        }
    }

    fn render(&mut self, snap: Option<&Received>) -> String {
        let mut out = Exposition::default();
        if let Some(snap) = snap {
            let plan = match self.plan.take() {
                Some(plan) if plan.fits(snap) => plan,
                _ => self.plan_for(snap),
            };
            for reason in plan.dropped() {
                *self.dropped.entry(reason).or_default() += 1;
            }
            self.render_agent(&mut out, snap, &plan);
            self.plan = Some(plan);
        }
        let since_epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64()
        };
        let own: [(&str, Type, &str, Option<Value>); 5] = [
            (
                "rezolus_exporter_agent_up",
                Type::Gauge,
                "1 if the last read of the agent succeeded, 0 if it failed (agent metrics are then left out)",
                Some(Value::U(self.up as u64)),
            ),
            (
                "rezolus_exporter_agent_reads_total",
                Type::Counter,
                "Reads of the agent's snapshot",
                Some(Value::U(self.fetches)),
            ),
            (
                "rezolus_exporter_agent_read_errors_total",
                Type::Counter,
                "Reads of the agent's snapshot that failed",
                Some(Value::U(self.errors)),
            ),
            (
                "rezolus_exporter_agent_resets_total",
                Type::Counter,
                "Times a counter or histogram of the agent went backwards (e.g. the agent restarted); no delta is served across one",
                Some(Value::U(self.resets)),
            ),
            (
                "rezolus_exporter_agent_last_read_timestamp_seconds",
                Type::Gauge,
                "When the agent was last read successfully (Unix time)",
                self.last_success.map(|t| Value::F(since_epoch(t))),
            ),
        ];
        for (name, kind, text, value) in own {
            if let (Some(value), Some(mut family)) = (value, out.family(name, kind, || text.into()))
            {
                family.add("", "", None, value);
            }
        }
        if let Some(mut family) = out.family(OWN[5], Type::Counter, || {
            "Series of the agent left out of an interval's exposition (once per series and interval), by reason; see docs/EXPORTER.md".into()
        }) {
            for reason in DropReason::ALL {
                let n = self.dropped.get(&reason).copied().unwrap_or(0);
                family.add("", "", Some(("reason", reason.as_str())), Value::U(n));
            }
        }
        for conflict in &out.conflicts {
            tracing::debug!("left out {conflict}: its name is taken by a metric of another type");
        }
        out.render()
    }

    /// A new plan of names for `snap`, its notes logged once each.
    fn plan_for(&mut self, snap: &Received) -> Plan {
        let plan = Plan::new(snap, &self.options, &OWN);
        for note in &plan.notes {
            if self.noted.contains(note) {
                continue;
            }
            if self.noted.len() < NOTES_REMEMBERED {
                tracing::warn!("{note}");
                self.noted.insert(note.clone());
            } else {
                tracing::debug!("{note}");
            }
        }
        plan
    }

    fn render_agent(&mut self, out: &mut Exposition, snap: &Received, plan: &Plan) {
        debug_assert!(OWN.iter().all(|n| n.starts_with(OWN_PREFIX)));
        for (c, p) in snap.counters.iter().zip(&plan.counters) {
            if p.dropped.is_some() {
                continue;
            }
            let Some(name) = &p.main else { continue };
            if let Some(mut f) = out.family(name, Type::Counter, || help(c.metric(), p.divisor)) {
                f.add("", &p.labels, None, Value::scaled_u(c.value, p.divisor));
            }
        }
        for (g, p) in snap.gauges.iter().zip(&plan.gauges) {
            if p.dropped.is_some() {
                continue;
            }
            let Some(name) = &p.main else { continue };
            if let Some(mut f) = out.family(name, Type::Gauge, || help(g.metric(), p.divisor)) {
                f.add("", &p.labels, None, Value::scaled_i(g.value, p.divisor));
            }
        }
        let previous: HashMap<&str, &Histogram> = self
            .boundary
            .iter()
            .flat_map(|b| b.histograms.iter().map(|h| (h.name.as_str(), &h.value)))
            .collect();
        let interval = humantime::format_duration(self.options.interval).to_string();
        for (h, p) in snap.histograms.iter().zip(&plan.histograms) {
            if p.dropped.is_some() {
                continue;
            }
            if let Some(name) = &p.main {
                let delta = previous
                    .get(h.name.as_str())
                    .map(|p| h.value.checked_sub(p));
                let text = || {
                    format!(
                        "{}; percentiles over the last {interval} (upper edge of the bucket holding each)",
                        help(h.metric(), p.divisor)
                    )
                };
                if let Some(mut f) = out.family(name, Type::Summary, text) {
                    if let Some(Ok(delta)) = delta {
                        let quantiles: Vec<f64> =
                            self.options.quantiles.iter().map(|q| q.0).collect();
                        let mut buckets = vec![None; quantiles.len()];
                        if delta
                            .quantile_buckets_into(&quantiles, &mut buckets)
                            .is_ok()
                        {
                            for ((_, label), bucket) in self.options.quantiles.iter().zip(buckets) {
                                if let Some(bucket) = bucket {
                                    let value = Value::scaled_u(bucket.end(), p.divisor);
                                    f.add("", &p.labels, Some(("quantile", label)), value);
                                }
                            }
                        }
                    }
                    f.add("_count", &p.labels, None, Value::U(total(&h.value)));
                }
            }
            if let Some(name) = &p.extra {
                render_histogram(out, h, name, p, self.options.grouping_power);
            }
        }
        for (c, p) in snap.counters.iter().zip(&plan.counters) {
            let (None, Some(family), Some(counter)) = (p.dropped, &p.extra, &p.main) else {
                continue;
            };
            let Some(rates) = self.rates.get_mut(&c.name) else {
                continue;
            };
            if rates.values.is_empty() {
                continue;
            }
            rates.values.sort_by(f64::total_cmp);
            let text = || {
                format!(
                    "Rate of {counter} per second over each oversampling step within the last {interval}: quantile 0.5 is the median step, 1 the busiest"
                )
            };
            let Some(mut f) = out.family(family, Type::Summary, text) else {
                continue;
            };
            let len = rates.values.len();
            for (q, label) in RATE_QUANTILES {
                // nearest rank
                let rank = ((q * len as f64).ceil() as usize).clamp(1, len);
                f.add(
                    "",
                    &p.labels,
                    Some(("quantile", label)),
                    Value::F(rates.values[rank - 1]),
                );
            }
            f.add("_count", &p.labels, None, Value::U(len as u64));
        }
    }
}

fn total(h: &Histogram) -> u64 {
    h.as_slice().iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// The full cumulative distribution as a Prometheus histogram: one `le` per
/// occupied bucket (at its upper edge), `+Inf`, `_count`, and `_sum`
/// estimated from bucket midpoints.
fn render_histogram(
    out: &mut Exposition,
    h: &ReceivedEntry<Histogram>,
    family: &str,
    p: &Placement,
    grouping_power: u8,
) {
    let value = if h.value.config().grouping_power() > grouping_power {
        match h.value.downsample(grouping_power) {
            Ok(v) => v,
            Err(_) => return,
        }
    } else {
        h.value.clone()
    };
    let text = || {
        format!(
            "{}; the full distribution since the agent started (_sum is estimated from bucket midpoints)",
            help(h.metric(), p.divisor)
        )
    };
    let Some(mut f) = out.family(family, Type::Histogram, text) else {
        return;
    };
    let mut cumulative = 0u64;
    let mut sum = 0f64;
    for bucket in value.iter() {
        if bucket.count() == 0 {
            continue;
        }
        cumulative = cumulative.wrapping_add(bucket.count());
        sum += bucket.count() as f64 * (bucket.start() as f64 + bucket.end() as f64) / 2.0;
        let le = Value::scaled_u(bucket.end(), p.divisor).to_string();
        f.add(
            "_bucket",
            &p.labels,
            Some(("le", &le)),
            Value::U(cumulative),
        );
    }
    f.add(
        "_bucket",
        &p.labels,
        Some(("le", "+Inf")),
        Value::U(cumulative),
    );
    f.add("_count", &p.labels, None, Value::U(cumulative));
    f.add("_sum", &p.labels, None, Value::F(sum / p.divisor));
}

/// HELP text: the metric's description where this build knows it.
fn help(metric: &str, divisor: f64) -> String {
    static KNOWN: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        crate::samplers::registry()
            .iter()
            .flat_map(|s| (s.metrics)())
            .chain(crate::agent::collector::AGENT_METRICS)
            .map(|m| (m.name, m.description))
            .collect()
    });
    let unit = if divisor != 1.0 { " (in seconds)" } else { "" };
    match known.get(metric) {
        Some(d) if !d.is_empty() => format!("{d}{unit}"),
        _ => format!("Rezolus metric {metric}{unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{new_histogram, MetricDef, Series};
    use crate::snapshot::{Emitter, Snapshot};

    static SYSCALL: MetricDef = MetricDef::counter("syscall", "syscalls", "");
    static LATENCY: MetricDef = MetricDef::histogram("syscall_latency", "nanoseconds", "");

    fn received(at_ms: u64, syscalls: u64, latencies: &[u64]) -> Received {
        let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms));
        let mut out = Emitter::new(&mut snap);
        out.counter(&Series::new(&SYSCALL, &[]), syscalls);
        let mut h = new_histogram();
        for &v in latencies {
            h.increment(v).unwrap();
        }
        out.histogram(&Series::new(&LATENCY, &[]), h);
        Received::from_msgpack(&snap.to_msgpack().unwrap()).unwrap()
    }

    fn state() -> State {
        let config = Config::parse("[oversample]\nresolution = \"100ms\"\n").unwrap();
        State::new(Options::from_config(&config))
    }

    #[test]
    fn rates_are_per_step_and_skip_a_counter_going_backwards() {
        let mut s = state();
        s.observe(Ok(received(0, 0, &[])), false);
        s.observe(Ok(received(100, 100, &[])), false); // 1000/s
        s.observe(Ok(received(200, 50, &[])), false); // reset: no rate
        s.observe(Ok(received(300, 550, &[])), true); // 5000/s
        let text = s.rendered();
        assert!(
            text.contains("syscall_per_second{quantile=\"0.5\"} 1000\n"),
            "{text}"
        );
        assert!(
            text.contains("syscall_per_second{quantile=\"1\"} 5000\n"),
            "{text}"
        );
        assert!(text.contains("syscall_per_second_count 2\n"), "{text}");
        assert!(
            text.contains("rezolus_exporter_agent_resets_total 1\n"),
            "{text}"
        );
    }

    fn plain() -> State {
        State::new(Options::from_config(&Config::parse("").unwrap()))
    }

    fn resets(s: &State) -> u64 {
        let line = s
            .rendered()
            .lines()
            .find(|l| l.starts_with("rezolus_exporter_agent_resets_total "))
            .unwrap()
            .to_string();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn resets_count_reads_where_any_counter_went_back_without_oversampling() {
        let mut s = plain();
        s.observe(Ok(received(0, 100, &[])), true);
        s.observe(Ok(received(1_000, 200, &[])), true);
        assert_eq!(resets(&s), 0);
        s.observe(Ok(received(2_000, 199, &[])), true); // back by one
        assert_eq!(resets(&s), 1);
        s.observe(Ok(received(3_000, 250, &[])), true);
        assert_eq!(resets(&s), 1);
        // the agent restarted during a gap: seen when reads resume
        s.observe(Err("connection refused".into()), true);
        s.observe(Ok(received(5_000, 3, &[])), true);
        assert_eq!(resets(&s), 2);
    }

    #[test]
    fn resets_count_non_oversampled_counters_and_histograms_with_oversampling() {
        static OTHER: MetricDef = MetricDef::counter("other", "", "");
        let with_other = |at_ms, other| {
            let mut snap = Snapshot::new(SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms));
            Emitter::new(&mut snap).counter(&Series::new(&OTHER, &[]), other);
            Received::from_msgpack(&snap.to_msgpack().unwrap()).unwrap()
        };
        let mut s = state(); // oversamples `syscall` only
        s.observe(Ok(with_other(0, 10)), false);
        s.observe(Ok(with_other(100, 9)), false);
        s.observe(Ok(with_other(200, 12)), true);
        assert_eq!(resets(&s), 1);
        // a histogram losing counts between boundaries
        s.observe(Ok(received(1_000, 1, &[5, 6, 7])), true);
        s.observe(Ok(received(2_000, 2, &[5])), true);
        assert_eq!(resets(&s), 2);
    }

    /// `_sum` of a full histogram is in the base unit (seconds here), like
    /// its `le` bounds.
    #[test]
    fn full_histogram_sum_is_in_seconds() {
        let config = Config::parse("[prometheus]\nhistograms = true\n").unwrap();
        let mut s = State::new(Options::from_config(&config));
        s.observe(Ok(received(0, 0, &[1_000_000, 3_000_000])), true);
        let text = s.rendered();
        let line = text
            .lines()
            .find(|l| l.starts_with("syscall_latency_distribution_seconds_sum "))
            .unwrap_or_else(|| panic!("{text}"));
        let sum: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // 4 ms, within the 12.5% bucket error
        assert!((0.0035..0.0045).contains(&sum), "{line}");
    }

    #[test]
    fn a_failed_read_breaks_the_interval() {
        let mut s = state();
        s.observe(Ok(received(0, 0, &[1_000])), true);
        s.observe(Err("connection refused".into()), true);
        let text = s.rendered().to_string();
        assert!(text.contains("rezolus_exporter_agent_up 0\n"), "{text}");
        assert!(!text.contains("syscall_total"), "{text}");
        // the next read has no base to take a delta or a rate from
        s.observe(Ok(received(1_000, 10, &[1_000, 2_000])), true);
        let text = s.rendered();
        assert!(text.contains("syscall_total 10\n"), "{text}");
        assert!(!text.contains("quantile"), "{text}");
        assert!(text.contains("syscall_latency_seconds_count 2\n"), "{text}");
        assert!(
            text.contains("rezolus_exporter_agent_read_errors_total 1\n"),
            "{text}"
        );
    }
}
