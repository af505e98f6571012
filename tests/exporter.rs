//! `rezolus exporter` against a scripted agent (snapshots built by the test,
//! so every expected value is computed independently), against the real
//! agent, through `promtool`, and scraped by a real Prometheus server.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake::FakeAgent;
use common::{run, Agent};
use histogram::Histogram;
use prometheus_parse::{Sample, Scrape, Value};
use rezolus::metrics::{new_histogram, MetricDef, Series};
use rezolus::snapshot::{Emitter, Snapshot};

static VERSION: MetricDef = MetricDef::gauge("test_version", "versions", "");
static LATENCY: MetricDef =
    MetricDef::histogram("scheduler_runqueue_latency", "nanoseconds", "").labels(&["op"]);
static SYSCALL: MetricDef = MetricDef::counter("syscall", "syscalls", "").labels(&["op"]);
static CPU: MetricDef = MetricDef::counter("cpu_usage", "nanoseconds", "").labels(&["state"]);

fn histogram_of(values: &[u64]) -> Histogram {
    let mut h = new_histogram();
    for &v in values {
        h.increment(v).unwrap();
    }
    h
}

/// Deterministic latencies from 1 us to about 50 ms, skewed low.
fn latencies(n: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let exp = x % 16;
            1_000 + (x >> 8) % (1_000 << exp)
        })
        .collect()
}

fn snapshot(version: i64, latency: &Histogram, syscalls: u64) -> Snapshot {
    let mut snap = Snapshot::new(SystemTime::now());
    let mut out = Emitter::new(&mut snap);
    out.gauge(&Series::new(&VERSION, &[]), version);
    out.histogram(&Series::new(&LATENCY, &[("op", "read")]), latency.clone());
    out.counter(&Series::new(&SYSCALL, &[("op", "read")]), syscalls);
    out.counter(
        &Series::new(&CPU, &[("state", "user")]),
        1_500_000_000 + version as u64,
    );
    snap
}

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("exposition parses")
}

fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
}

fn scalar(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match find(scrape, metric, labels)?.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

fn quantiles(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> BTreeMap<String, f64> {
    match find(scrape, metric, labels).map(|s| &s.value) {
        Some(Value::Summary(qs)) => qs
            .iter()
            .map(|q| (q.quantile.to_string(), q.count))
            .collect(),
        Some(other) => panic!("{metric} is not a summary: {other:?}"),
        None => BTreeMap::new(),
    }
}

/// Polls `/metrics` until `done` holds for a scrape (or `timeout` passes,
/// which fails the test with the last text).
fn wait_for(
    exporter: &Agent,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Scrape, &str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = String::from_utf8(exporter.get("/metrics")).unwrap();
        if done(&scrape(&text), &text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; last /metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Held by tests that count system-wide yields through the real agent, so
/// one's workload does not land in another's counts.
static YIELDS: Mutex<()> = Mutex::new(());

fn exporter_for(source: SocketAddr, general: &str, extra: &str) -> Agent {
    Agent::exporter(&format!("source = \"{source}\"\n{general}"), extra)
}

/// Percentiles cover exactly the last interval: computed from the
/// difference of two snapshots, equal to those of a histogram the test built
/// from the same values; an idle interval and an agent restart show none.
#[test]
fn summaries_cover_the_last_interval_only() {
    let a = latencies(5_000, 1);
    let b = latencies(2_000, 2);
    let c = latencies(300, 3);
    let d = latencies(1_000, 4);
    let h0 = histogram_of(&a);
    let h1 = histogram_of(&[a.clone(), b.clone()].concat());
    let h3 = histogram_of(&c); // the agent restarted: counts start over
    let h4 = histogram_of(&[c.clone(), d.clone()].concat());
    let agent = FakeAgent::sequence(vec![
        snapshot(0, &h0, 10),
        snapshot(1, &h1, 20),
        snapshot(2, &h1, 20), // idle
        snapshot(3, &h3, 5),
        snapshot(4, &h4, 7),
    ]);
    let exporter = exporter_for(agent.addr, "interval = \"400ms\"", "");

    // the first scrape showing each version
    let mut texts: HashMap<i64, String> = HashMap::new();
    wait_for(
        &exporter,
        Duration::from_secs(20),
        "version 4",
        |s, text| {
            if let Some(v) = scalar(s, "test_version", &[]) {
                texts.entry(v as i64).or_insert_with(|| text.to_string());
            }
            texts.contains_key(&4)
        },
    );
    let seen: HashMap<i64, Scrape> = texts.iter().map(|(&v, t)| (v, scrape(t))).collect();
    for v in 0..=4 {
        assert!(seen.contains_key(&v), "version {v} was never served");
    }
    let family = "scheduler_runqueue_latency_seconds";
    let op = [("op", "read")];
    let expected = |values: &[u64]| -> BTreeMap<String, f64> {
        let h = histogram_of(values);
        [0.5, 0.9, 0.99, 0.999, 0.9999]
            .iter()
            .map(|&q| {
                let bucket = h.quantile_bucket(q).unwrap().unwrap();
                (q.to_string(), bucket.end() as f64 / 1e9)
            })
            .collect()
    };
    // no previous snapshot yet: no interval to describe
    assert!(quantiles(&seen[&0], family, &op).is_empty());
    assert_eq!(quantiles(&seen[&1], family, &op), expected(&b));
    assert!(
        quantiles(&seen[&2], family, &op).is_empty(),
        "idle interval has percentiles"
    );
    assert!(
        quantiles(&seen[&3], family, &op).is_empty(),
        "percentiles across a restart"
    );
    assert_eq!(quantiles(&seen[&4], family, &op), expected(&d));
    assert!(scalar(&seen[&4], "rezolus_exporter_agent_resets_total", &[]).unwrap() >= 1.0);
    // counters in base units with _total; the interval's count of events
    assert_eq!(scalar(&seen[&1], "syscall_total", &op), Some(20.0));
    let cpu = scalar(&seen[&1], "cpu_usage_seconds_total", &[("state", "user")]).unwrap();
    assert!((cpu - 1.500000001).abs() < 1e-12, "{cpu}");
    assert_eq!(
        scalar(&seen[&1], "rezolus_exporter_agent_up", &[]),
        Some(1.0)
    );
}

/// With `histograms = true`, each histogram is served in full: cumulative
/// buckets whose counts are exactly the number of values at or below each
/// `le`, reduced to the configured grouping power.
#[test]
fn full_histograms_count_values_below_each_bound() {
    let values = latencies(3_000, 7);
    let agent = FakeAgent::sequence(vec![snapshot(0, &histogram_of(&values), 1)]);
    let exporter = exporter_for(
        agent.addr,
        "interval = \"200ms\"",
        "[prometheus]\nsummaries = false\nhistograms = true\nhistogram_grouping_power = 1\n",
    );
    let text = wait_for(
        &exporter,
        Duration::from_secs(10),
        "the histogram",
        |s, _| find(s, "scheduler_runqueue_latency_distribution_seconds", &[]).is_some(),
    );
    let s = scrape(&text);
    let Value::Histogram(buckets) = &find(
        &s,
        "scheduler_runqueue_latency_distribution_seconds",
        &[("op", "read")],
    )
    .unwrap()
    .value
    else {
        panic!("not a histogram:\n{text}");
    };
    assert!(buckets.len() > 3, "{buckets:?}");
    // at grouping power 1 each power of two holds at most 2 buckets
    assert!(buckets.len() <= 2 * 64 + 1, "{} buckets", buckets.len());
    for bucket in buckets {
        let below = if bucket.less_than.is_infinite() {
            values.len()
        } else {
            let le_ns = (bucket.less_than * 1e9).round() as u64;
            values.iter().filter(|&&v| v <= le_ns).count()
        };
        assert_eq!(bucket.count as usize, below, "le={}", bucket.less_than);
    }
    assert!(
        text.contains("scheduler_runqueue_latency_distribution_seconds_count{op=\"read\"} 3000\n")
    );
    assert!(
        !text.contains("scheduler_runqueue_latency_seconds"),
        "summaries were off:\n{text}"
    );
}

/// A 200 ms burst inside a 1 s interval shows in the max of the 100 ms
/// rates, and not in their median.
#[test]
fn oversampling_catches_a_burst_shorter_than_the_interval() {
    const BASE: f64 = 1_000.0; // syscalls per second
    const BURST: f64 = 1_000_000.0;
    let start = SystemTime::now();
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    // the burst: from 300 ms to 500 ms into the second after next
    let burst_from = secs(start).floor() + 2.3;
    let burst_to = burst_from + 0.2;
    let t0 = secs(start);
    let agent = FakeAgent::start(Box::new(move |now| {
        let t = secs(now);
        let in_burst = (t.min(burst_to) - burst_from).max(0.0);
        let value = (BASE * (t - t0) + BURST * in_burst) as u64;
        let mut snap = Snapshot::new(now);
        Emitter::new(&mut snap).counter(&Series::new(&SYSCALL, &[("op", "read")]), value);
        snap
    }));
    let exporter = exporter_for(
        agent.addr,
        "interval = \"1s\"",
        "[oversample]\nresolution = \"100ms\"\n",
    );
    let op = [("op", "read")];
    let mut max_before_burst = 0.0f64;
    let text = wait_for(
        &exporter,
        Duration::from_secs(10),
        "the burst's interval",
        |s, _| {
            let q = quantiles(s, "syscall_per_second", &op);
            let last =
                scalar(s, "rezolus_exporter_agent_last_read_timestamp_seconds", &[]).unwrap_or(0.0);
            if last < burst_to {
                max_before_burst = max_before_burst.max(q.get("1").copied().unwrap_or(0.0));
                return false;
            }
            true
        },
    );
    let q = quantiles(&scrape(&text), "syscall_per_second", &op);
    assert!(
        max_before_burst < 2.0 * BASE,
        "a burst before the burst: {max_before_burst}"
    );
    let max = q["1"];
    assert!(
        (0.95 * BURST..1.05 * BURST).contains(&max),
        "max rate {max}, burst {BURST}:\n{text}"
    );
    assert!(q["0.5"] < 2.0 * BASE, "median rate {}:\n{text}", q["0.5"]);
    // the counter over the whole interval averages the burst away
    assert!(max > 3.0 * (BURST * 0.2 + BASE));
}

/// With the agent down the exporter keeps serving, says so, and leaves the
/// agent's metrics out; it recovers by itself when the agent comes back.
#[test]
fn agent_down_is_reported_and_recovered_from() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let exporter = exporter_for(addr, "interval = \"100ms\"", "");
    let text = wait_for(
        &exporter,
        Duration::from_secs(10),
        "a failed read",
        |s, _| scalar(s, "rezolus_exporter_agent_read_errors_total", &[]).unwrap_or(0.0) >= 1.0,
    );
    let s = scrape(&text);
    assert_eq!(scalar(&s, "rezolus_exporter_agent_up", &[]), Some(0.0));
    assert!(find(&s, "test_version", &[]).is_none());

    let h = histogram_of(&[1_000]);
    let agent = FakeAgent::start_on(
        TcpListener::bind(addr).expect("port still free"),
        Box::new(move |_| snapshot(7, &h, 1)),
    );
    wait_for(
        &exporter,
        Duration::from_secs(10),
        "the agent again",
        |s, _| {
            scalar(s, "rezolus_exporter_agent_up", &[]) == Some(1.0)
                && scalar(s, "test_version", &[]) == Some(7.0)
        },
    );
    drop(agent);
    wait_for(
        &exporter,
        Duration::from_secs(10),
        "the agent gone",
        |s, _| {
            scalar(s, "rezolus_exporter_agent_up", &[]) == Some(0.0)
                && find(s, "test_version", &[]).is_none()
        },
    );
    assert!(exporter.stop(libc::SIGTERM).success());
}

/// Snapshots around `n` sched_yield calls from one thread.
fn yields(n: u64) {
    std::thread::spawn(move || {
        for _ in 0..n {
            unsafe { libc::syscall(libc::SYS_sched_yield) };
        }
    })
    .join()
    .unwrap();
}

fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/deps installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
}

/// Against the real agent: every metric comes through valid (promtool finds
/// nothing to report, histograms and oversampling on), and a workload of N
/// yields moves `syscall_total{op="yield"}` by at least N.
#[test]
fn real_agent_through_the_exporter_passes_promtool() {
    let _alone = YIELDS.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start("", "");
    common::require_active(&agent, &["syscall"]);
    let exporter = exporter_for(
        agent.addr,
        "interval = \"500ms\"",
        "[prometheus]\nhistograms = true\n[oversample]\nresolution = \"100ms\"\n",
    );
    let yield_total = |s: &Scrape| scalar(s, "syscall_total", &[("op", "yield")]);
    let first = wait_for(
        &exporter,
        Duration::from_secs(10),
        "the agent's metrics",
        |s, _| yield_total(s).is_some(),
    );
    let before = yield_total(&scrape(&first)).unwrap();
    const N: u64 = 100_000;
    yields(N);
    let done = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // a render of a read made after the workload
    let text = wait_for(
        &exporter,
        Duration::from_secs(10),
        "a later interval",
        |s, _| {
            scalar(s, "rezolus_exporter_agent_last_read_timestamp_seconds", &[]).unwrap_or(0.0)
                > done
        },
    );
    let s = scrape(&text);
    let moved = yield_total(&s).unwrap() - before;
    assert!(
        (N as f64..N as f64 * 1.05).contains(&moved),
        "syscall_total{{op=yield}} moved {moved} for {N}"
    );
    assert!(scalar(&s, "cpu_usage_seconds_total", &[("state", "user")]).unwrap() > 0.0);
    assert!(scalar(&s, "memory_total_bytes", &[]).unwrap() > 1e8);
    assert!(find(&s, "syscall_per_second", &[("op", "yield")]).is_some());
    assert!(find(
        &s,
        "syscall_latency_distribution_seconds",
        &[("op", "yield")]
    )
    .is_some());
    assert!(text.contains("# TYPE scheduler_runqueue_latency_seconds summary\n"));
    promtool_check(&text);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Prometheus server scraping one target every second, with its
/// storage in a temporary directory; killed on drop.
struct PrometheusServer {
    child: std::process::Child,
    /// Its HTTP address (`host:port`).
    web: String,
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rezolus\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let web = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/deps installs it)");
        Self {
            child,
            web,
            _dir: dir,
        }
    }

    /// The results of an instant query: (labels, value) per series; `None`
    /// when Prometheus does not answer (yet).
    fn query_all(&self, q: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
        let url = format!("http://{}/api/v1/query", self.web);
        let mut response = ureq::get(&url).query("query", q).call().ok()?;
        let body: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        body["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Option<_>>()?;
                Some((labels, r["value"][1].as_str()?.parse().ok()?))
            })
            .collect()
    }

    /// The first result of an instant query.
    fn query(&self, q: &str) -> Option<f64> {
        self.query_all(q)?.first().map(|r| r.1)
    }

    /// A counter of Prometheus's own, summed over its labels.
    fn own_counter(&self, name: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.web);
        let text = ureq::get(&url)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let s = scrape(&text);
        let values: Vec<f64> = s
            .samples
            .iter()
            .filter(|x| x.metric == name)
            .filter_map(|x| match x.value {
                Value::Counter(v) | Value::Untyped(v) | Value::Gauge(v) => Some(v),
                _ => None,
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real Prometheus server scrapes the exporter and answers queries for a
/// counter rate and for percentiles (summary and histogram_quantile).
#[test]
fn prometheus_server_scrapes_the_exporter() {
    let _alone = YIELDS.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start("", "");
    common::require_active(&agent, &["syscall"]);
    let exporter = exporter_for(
        agent.addr,
        "interval = \"1s\"",
        "[prometheus]\nhistograms = true\n",
    );
    let prometheus = PrometheusServer::start(exporter.addr);

    // a steady yield workload while Prometheus scrapes
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                yields(1_000);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let query = |q: &str| prometheus.query(q);
    let found = Mutex::new(BTreeMap::new());
    let queries = [
        "rate(syscall_total{op=\"yield\"}[5s])",
        "max_over_time(syscall_latency_seconds{op=\"yield\",quantile=\"0.99\"}[10s])",
        "histogram_quantile(0.99, rate(syscall_latency_distribution_seconds_bucket{op=\"yield\"}[5s]))",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.lock().unwrap().len() < queries.len() && Instant::now() < deadline {
        for q in queries {
            if let Some(v) = query(q).filter(|v| *v > 0.0 && v.is_finite()) {
                found.lock().unwrap().insert(q, v);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
    let found = found.into_inner().unwrap();
    for q in queries {
        assert!(
            found.contains_key(q),
            "Prometheus never answered {q} with a positive value; got {found:?}"
        );
    }
    // at least the workload's rate (1000 yields per ~1.1 ms at most)
    assert!(found[queries[0]] > 1_000.0, "{found:?}");
    // a yield takes well under a second
    assert!(
        found[queries[1]] < 0.1 && found[queries[2]] < 0.1,
        "{found:?}"
    );
}

#[test]
fn bad_config_names_the_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exporter.toml");
    std::fs::write(&path, "[prometheus]\npercentiles = [50, 150]\n").unwrap();
    let out = run(&["exporter", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prometheus.percentiles") && err.contains("exporter.toml"),
        "{err}"
    );
    let out = run(&["exporter", "/nonexistent/exporter.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/exporter.toml"));
}

static CLASH_LAT: MetricDef =
    MetricDef::histogram("lat", "nanoseconds", "").labels(&["le", "quantile"]);
static CLASH_G: MetricDef = MetricDef::gauge("g", "bytes", "").labels(&["a-b", "a.b"]);
static CLASH_RESERVED: MetricDef = MetricDef::gauge("reserved", "", "").labels(&["__name__"]);
static CLASH_FOO_DASH: MetricDef = MetricDef::gauge("foo-bar", "bytes", "");
static CLASH_FOO: MetricDef = MetricDef::gauge("foo_bar", "bytes", "");
static CLASH_REQ: MetricDef = MetricDef::counter("requests", "", "");
static CLASH_REQ_TOTAL: MetricDef = MetricDef::counter("requests_total", "", "");
static CLASH_REQ_RATE: MetricDef = MetricDef::gauge("requests_per_second", "", "");
static CLASH_MISS: MetricDef = MetricDef::histogram("cache_miss", "", "");
static CLASH_MISS_COUNT: MetricDef = MetricDef::gauge("cache_miss_count", "", "");
static CLASH_MEM_H: MetricDef = MetricDef::histogram("mem", "bytes", "");
static CLASH_MEM_G: MetricDef = MetricDef::gauge("mem", "bytes", "");
static CLASH_NINE: MetricDef = MetricDef::gauge("9lives", "", "").labels(&["", "1x"]);
static CLASH_UP: MetricDef = MetricDef::gauge("rezolus_exporter_agent_up", "", "");
static CLASH_QUOTED: MetricDef = MetricDef::gauge("quoted", "", "").labels(&["v"]);
static CLASH_DUP: MetricDef = MetricDef::gauge("dup", "", "").labels(&["a"]);

/// A snapshot of families whose names or labels clash once translated to
/// Prometheus (docs/EXPORTER.md, "Names that clash"); `ms` drives the
/// counters and histograms.
fn clashing(now: SystemTime, ms: u64) -> Snapshot {
    let mut snap = Snapshot::new(now);
    let mut out = Emitter::new(&mut snap);
    let lat = latencies(1 + ms / 100, 9);
    out.histogram(
        &Series::new(&CLASH_LAT, &[("le", "y"), ("quantile", "x")]),
        histogram_of(&lat),
    );
    out.gauge(&Series::new(&CLASH_G, &[("a-b", "1"), ("a.b", "2")]), 11);
    out.gauge(&Series::new(&CLASH_RESERVED, &[("__name__", "n")]), 12);
    out.gauge(&Series::new(&CLASH_FOO_DASH, &[]), 13);
    out.gauge(&Series::new(&CLASH_FOO, &[]), 14);
    out.counter(&Series::new(&CLASH_REQ, &[]), ms);
    out.counter(&Series::new(&CLASH_REQ_TOTAL, &[]), 15);
    out.gauge(&Series::new(&CLASH_REQ_RATE, &[]), 16);
    out.histogram(&Series::new(&CLASH_MISS, &[]), histogram_of(&[1, 2, 3]));
    out.gauge(&Series::new(&CLASH_MISS_COUNT, &[]), 17);
    out.histogram(&Series::new(&CLASH_MEM_H, &[]), histogram_of(&[4096]));
    out.gauge(&Series::new(&CLASH_MEM_G, &[]), 18);
    out.gauge(&Series::new(&CLASH_NINE, &[("", "e"), ("1x", "a")]), 19);
    out.gauge(&Series::new(&CLASH_UP, &[]), 20);
    out.gauge(&Series::new(&CLASH_QUOTED, &[("v", "a\"b\\c\nd")]), 21);
    out.gauge(&Series::new(&CLASH_DUP, &[("a", "")]), 22);
    out.gauge(&Series::new(&CLASH_DUP, &[]), 23);
    snap
}

/// Families whose names and labels clash once translated are all served,
/// under their documented names, in text that promtool passes and that a
/// real Prometheus server ingests whole: the target stays up and no sample
/// is dropped as a duplicate.
#[test]
fn clashing_names_are_renamed_and_prometheus_keeps_every_series() {
    let start = Instant::now();
    let agent = FakeAgent::start(Box::new(move |now| {
        clashing(now, start.elapsed().as_millis() as u64)
    }));
    let exporter = exporter_for(
        agent.addr,
        "interval = \"1s\"",
        "[prometheus]\nhistograms = true\n[oversample]\nresolution = \"500ms\"\ncounters = [\"requests\"]\n",
    );
    // (PromQL selector, value if fixed)
    let expected: &[(&str, Option<f64>)] = &[
        ("up{job=\"rezolus\"}", Some(1.0)),
        ("rezolus_exporter_agent_up", Some(1.0)),
        ("exported_rezolus_exporter_agent_up", Some(20.0)),
        (
            "lat_distribution_seconds_bucket{exported_le=\"y\",exported_quantile=\"x\",le=\"+Inf\"}",
            None,
        ),
        (
            "lat_seconds_count{exported_le=\"y\",exported_quantile=\"x\"}",
            None,
        ),
        (
            "lat_seconds{exported_le=\"y\",exported_quantile=\"x\",quantile=\"0.5\"}",
            None,
        ),
        ("g_bytes{a_b=\"1\",a_b_2=\"2\"}", Some(11.0)),
        ("reserved{exported___name__=\"n\"}", Some(12.0)),
        ("foo_bar_bytes", Some(14.0)),
        ("foo_bar_bytes_2", Some(13.0)),
        ("requests_total", Some(15.0)),
        ("requests_2_total", None),
        ("requests_per_second", Some(16.0)),
        ("requests_per_second_2{quantile=\"1\"}", None),
        ("cache_miss_count", Some(3.0)),
        ("cache_miss_count_2", Some(17.0)),
        ("mem_bytes", Some(18.0)),
        ("mem_bytes_2_count", Some(1.0)),
        ("mem_distribution_bytes_count", Some(1.0)),
        ("_9lives{_=\"e\",_1x=\"a\"}", Some(19.0)),
        ("quoted{v=\"a\\\"b\\\\c\\nd\"}", Some(21.0)),
        ("dup", Some(23.0)),
    ];

    // the exposition itself
    let text = wait_for(
        &exporter,
        Duration::from_secs(10),
        "two intervals",
        |s, _| scalar(s, "rezolus_exporter_agent_reads_total", &[]).unwrap_or(0.0) >= 4.0,
    );
    promtool_check(&text);
    assert_eq!(
        text.matches("dup{").count() + text.matches("\ndup ").count(),
        1,
        "{text}"
    );

    let prometheus = PrometheusServer::start(exporter.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String>;
    loop {
        missing = expected
            .iter()
            .filter(|(q, want)| match prometheus.query_all(q).as_deref() {
                Some([(_, v)]) => want.is_some_and(|w| w != *v),
                _ => true,
            })
            .map(|(q, want)| format!("{q} (want {want:?}, got {:?})", prometheus.query_all(q)))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(missing.is_empty(), "not in Prometheus as one series with the value expected: {missing:#?}\nexposition:\n{text}");
    // nothing was rejected or dropped on ingestion
    let dropped = prometheus
        .query_all("rezolus_exporter_series_dropped_total{reason=\"duplicate_series\"}")
        .unwrap_or_default();
    assert!(dropped.first().is_some_and(|d| d.1 >= 1.0), "{dropped:?}");
    for own in [
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_exceeded_sample_limit_total",
    ] {
        assert_eq!(prometheus.own_counter(own), Some(0.0), "{own}");
    }
    assert_eq!(
        prometheus.query("scrape_samples_scraped").map(|v| v > 0.0),
        Some(true)
    );
}
