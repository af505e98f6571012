//! `rezolus view`: its API on a stock-layout file built here with known
//! values and on real captures (checked against pyarrow's reading), A/B
//! comparison, a live agent, the report, bad input, and the dashboard in a
//! real browser (headless Chromium) served and as a report.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::browser::{artifact, Browser};
use common::parquet::{edge, read_parquet, stock_file, SECOND, T0};
use common::{Agent, BIN};
use serde_json::Value;

/// A `rezolus view` serving on an ephemeral loopback port; stopped on drop.
struct View {
    child: Child,
    url: String,
}

impl View {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("view")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("rezolus view printed no URL");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        Self { child, url }
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.get_as(path, None)
    }

    /// GET with this `Host` header (default: the URL's).
    fn get_as(&self, path: &str, host: Option<&str>) -> (u16, String) {
        let url = format!("{}{}", self.url, path.trim_start_matches('/'));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.get(&url);
        if let Some(host) = host {
            request = request.header("Host", host);
        }
        let mut response = request.call().unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A source's point times (`t`), seconds since the epoch.
fn times(source: &Value) -> Vec<f64> {
    source["t"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The named line of a lines chart: its values (`None` for null).
fn line(chart: &Value, name: &str) -> Vec<Option<f64>> {
    chart["series"]
        .as_array()
        .unwrap_or_else(|| panic!("not a lines chart: {chart}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no line {name} in {chart}"))["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::as_f64)
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// On a file in the documented layout with known values: the counter's
/// rate, the histogram's percentiles and its heatmap per interval are the
/// values worked out here; an absent value leaves its interval empty.
#[test]
fn api_gives_rates_and_percentiles_of_a_stock_layout_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stock.parquet");
    stock_file(&path);
    let view = View::start(&[path.to_str().unwrap()]);

    let dashboard = view.json("/api/dashboard");
    assert_eq!(dashboard["mode"], "file");
    assert_eq!(
        dashboard["sources"][0]["start"].as_f64(),
        Some((T0 / SECOND) as f64)
    );
    let other = dashboard["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "other")
        .expect("metrics of no known area are in `other`");
    let ids: Vec<&str> = other["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["latency:percentiles", "latency:heatmap", "requests"]);

    let data = view.json("/api/section/other");
    let source = &data["sources"][0];
    // intervals end at rows 2, 3 and 4: T0+1s, T0+2s, T0+4s
    let t = times(source);
    let t0 = (T0 / SECOND) as f64;
    assert_eq!(t, [t0 + 1.0, t0 + 2.0, t0 + 4.0]);
    // 150 - 100 over 1 s; then the counter is absent, then follows an absence
    assert_eq!(
        line(&source["charts"]["requests"], "GET"),
        [Some(50.0), None, None]
    );
    let latency = &source["charts"]["latency:percentiles"];
    let edge = |v| Some(edge(v) as f64);
    // interval 1: 99 × 5 and 1 × 1000; interval 2: 10 × 100; interval 3: 4 × 70000
    assert_eq!(line(latency, "p50"), [edge(5), edge(100), edge(70_000)]);
    assert_eq!(line(latency, "p99"), [edge(5), edge(100), edge(70_000)]);
    assert_eq!(line(latency, "max"), [edge(1000), edge(100), edge(70_000)]);
    // heatmap: observations per second per power-of-two range of values
    let heat = &source["charts"]["latency:heatmap"];
    let low = heat["low"].as_u64().unwrap() as usize;
    let row = |v: u64| 64 - v.leading_zeros() as usize - low;
    let rows = heat["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0][row(5)].as_f64(), Some(99.0));
    assert_eq!(rows[0][row(1000)].as_f64(), Some(1.0));
    assert_eq!(rows[1][row(100)].as_f64(), Some(10.0));
    // 4 observations over 2 s (the bucket of 70000 starts at 65536)
    assert_eq!(rows[2][row(65_536)].as_f64(), Some(2.0));
    let total: f64 = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert_eq!(total, 99.0 + 1.0 + 10.0 + 2.0);

    // a time range: only the intervals ending in it
    let from = t0 + 1.5;
    let data = view.json(&format!("/api/section/other?from={from}&to={}", t0 + 2.5));
    assert_eq!(data["sources"][0]["t"].as_array().unwrap().len(), 1);
    // unknown section, bad query: an HTTP error, not a half answer
    assert_eq!(view.get("/api/section/nosuch").0, 404);
    assert_eq!(view.get("/api/section/other?from=yesterday").0, 400);
    assert_eq!(view.get("/api/section/other?points=0").0, 400);
    assert_eq!(view.get("/api/section/other?points=1000000").0, 400);
    // merged points: 3 intervals in 2 points
    let merged = view.json("/api/section/other?points=2");
    assert_eq!(merged["sources"][0]["step"], 2);
    assert_eq!(merged["sources"][0]["t"].as_array().unwrap().len(), 2);
    // a web page reaching the server under another name (DNS rebinding)
    // is refused; the address itself and localhost are fine
    assert_eq!(view.get_as("/api/dashboard", Some("evil.example")).0, 403);
    assert_eq!(view.get_as("/api/dashboard", Some("localhost:8080")).0, 200);
}

/// `rezolus view RECORDING --report REPORT`, which must succeed.
fn write_report(recording: &Path, report: &Path) {
    let out = common::run(&[
        "view",
        recording.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Records the agent for `duration` while `work` runs.
fn record(agent: &Agent, interval: &str, duration: &str, out: &Path, work: impl FnOnce()) {
    let url = format!("http://{}", agent.addr);
    let recorder = Command::new(BIN)
        .args([
            "record",
            "--interval",
            interval,
            "--duration",
            duration,
            &url,
            out.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    work();
    let output = recorder.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Busy threads, more than there are CPUs, for `time`: a CPU burst and
/// run-queue latency.
fn burst(time: Duration) {
    let threads: Vec<_> = (0..common::cores() * 3)
        .map(|_| {
            std::thread::spawn(move || {
                let end = Instant::now() + time;
                let mut x = 0u64;
                while Instant::now() < end {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(x);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Synced writes to a file on the disk under `dir`: block IO.
fn synced_writes(dir: &Path, n: usize) {
    use std::io::Write;
    let path = dir.join("io-work");
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..n {
        f.write_all(&[7u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
    }
    let _ = std::fs::remove_file(path);
}

/// The intervals of a capture as pyarrow reads them: per row, the
/// timestamp and the values of the column of `metric` with exactly
/// `labels`.
fn column(file: &Value, metric: &str, labels: &[(&str, &str)]) -> Vec<Value> {
    let (_, c) = file["columns"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, c)| {
            let meta = c["metadata"].as_object().unwrap();
            meta.get("metric").and_then(Value::as_str) == Some(metric)
                && meta
                    .keys()
                    .filter(|k| {
                        ![
                            "metric",
                            "metric_type",
                            "unit",
                            "grouping_power",
                            "max_value_power",
                        ]
                        .contains(&k.as_str())
                    })
                    .count()
                    == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| meta.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no column {metric} {labels:?}"));
    c["values"].as_array().unwrap().clone()
}

/// The p99 of an interval's bucket counts, worked out by rank: the
/// smallest bucket at which the running count reaches ceil(0.99 × total),
/// reported as that bucket's upper edge.
fn p99_by_rank(delta: &[u64]) -> Option<f64> {
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let target = ((0.99 * total as f64).ceil() as u64).clamp(1, total);
    let mut running = 0;
    let layout = histogram::Histogram::new(3, 64).unwrap();
    for (i, count) in delta.iter().enumerate() {
        running += count;
        if running >= target {
            return Some(layout.iter().nth(i).unwrap().end() as f64);
        }
    }
    None
}

/// On a real capture with a CPU burst: the overview's system call rate and
/// run-queue p99 per interval equal what is worked out here from pyarrow's
/// reading of the same file, and the CPU chart shows the burst.
#[test]
fn api_on_a_real_capture_agrees_with_pyarrow() {
    let _serial = common::serial();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.cpu_usage]\nenabled = true\n\
         [samplers.syscall]\nenabled = true\n[samplers.scheduler_runqueue]\nenabled = true\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capture.parquet");
    record(&agent, "250ms", "3s", &path, || {
        std::thread::sleep(Duration::from_millis(1000));
        burst(Duration::from_millis(1000));
    });
    let file = read_parquet(&path);
    let stamps = common::parquet::timestamps(&file);
    let view = View::start(&[path.to_str().unwrap()]);
    let data = view.json("/api/section/overview");
    let source = &data["sources"][0];
    let t = times(source);
    assert_eq!(t.len(), stamps.len() - 1, "one point per interval");
    for (i, t) in t.iter().enumerate() {
        assert!(close(*t, stamps[i + 1] as f64 / 1e9));
    }

    // system calls: the total counter's change over each interval's length
    let syscalls = column(&file, "syscall", &[]);
    let served = line(&source["charts"]["overview:syscall"], "syscall");
    for i in 1..stamps.len() {
        let expected = match (syscalls[i - 1].as_u64(), syscalls[i].as_u64()) {
            (Some(a), Some(b)) if b >= a => {
                Some((b - a) as f64 * 1e9 / (stamps[i] - stamps[i - 1]) as f64)
            }
            _ => None,
        };
        match (expected, served[i - 1]) {
            (Some(e), Some(g)) => assert!(close(e, g), "interval {i}: {g} for {e}"),
            (None, None) => {}
            other => panic!("interval {i}: {other:?}"),
        }
    }

    // run-queue latency: p99 of each interval's bucket differences
    let runqueue = column(&file, "scheduler_runqueue_latency", &[]);
    let served = line(&source["charts"]["overview:runqueue"], "p99");
    let mut compared = 0;
    for i in 1..stamps.len() {
        let buckets = |v: &Value| -> Option<Vec<u64>> {
            v.as_array()
                .map(|a| a.iter().map(|b| b.as_u64().unwrap_or(0)).collect())
        };
        let expected = match (buckets(&runqueue[i - 1]), buckets(&runqueue[i])) {
            (Some(a), Some(b)) => {
                let delta: Vec<u64> = a.iter().zip(&b).map(|(a, b)| b - a).collect();
                p99_by_rank(&delta)
            }
            _ => None,
        };
        assert_eq!(served[i - 1], expected, "interval {i}");
        compared += usize::from(expected.is_some());
    }
    assert!(
        compared >= stamps.len() / 2,
        "too few intervals held run-queue observations"
    );

    // the burst: some interval has the CPUs well over half busy, the
    // quiet second before it does not
    let busy = line(&source["charts"]["overview:cpu"], "busy");
    let peak = busy.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    assert!(
        peak > 80.0,
        "CPU busy peaked at {peak}% during a burst on every CPU"
    );
    assert!(busy[0].is_some_and(|b| b < peak));
}

/// Two recordings side by side: each source's data is its own, and the
/// dashboard names both.
#[test]
fn compare_serves_both_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.parquet");
    stock_file(&a);
    let b = dir.path().join("b.parquet");
    std::fs::copy(&a, &b).unwrap();
    let view = View::start(&[a.to_str().unwrap(), b.to_str().unwrap()]);
    let dashboard = view.json("/api/dashboard");
    assert_eq!(dashboard["mode"], "compare");
    assert_eq!(dashboard["sources"].as_array().unwrap().len(), 2);
    assert!(dashboard["title"].as_str().unwrap().contains(" vs "));
    let data = view.json("/api/section/other");
    let sources = data["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0]["charts"], sources[1]["charts"]);
    assert_eq!(
        line(&sources[1]["charts"]["requests"], "GET"),
        [Some(50.0), None, None]
    );
}

/// A live agent: intervals accumulate while it runs, no more than the
/// window holds, with the system call rate of a known workload.
#[test]
fn live_agent_is_read_every_interval_into_a_bounded_window() {
    let _serial = common::serial();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.syscall]\nenabled = true\n",
    );
    // host:port, without http://
    let address = agent.addr.to_string();
    let view = View::start(&[&address, "--interval", "100ms", "--window", "1s"]);
    let dashboard = view.json("/api/dashboard");
    assert_eq!(dashboard["mode"], "live");
    assert_eq!(dashboard["interval_ms"], 100);
    // a known number of system calls over a known time
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(2500) {
        for _ in 0..1000 {
            unsafe { libc::getppid() };
        }
        n += 1000;
        std::thread::sleep(Duration::from_millis(1));
    }
    let data = view.json("/api/section/overview");
    let source = &data["sources"][0];
    let points = source["t"].as_array().unwrap().len();
    // 1 s of 100 ms intervals (one more may straddle the window's start)
    assert!(
        (8..=11).contains(&points),
        "{points} points in a 1 s window"
    );
    let rates = line(&source["charts"]["overview:syscall"], "syscall");
    let mean = rates.iter().flatten().sum::<f64>() / rates.iter().flatten().count() as f64;
    let ours = n as f64 / start.elapsed().as_secs_f64();
    assert!(
        mean >= ours * 0.9,
        "{mean:.0} syscalls/s served while this test alone made {ours:.0}/s"
    );
    assert!(data.get("error").is_none(), "{}", data["error"]);
    // the agent goes away: the answers say so
    drop(agent);
    std::thread::sleep(Duration::from_millis(600));
    let data = view.json("/api/section/overview");
    assert!(
        data["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error once the agent is gone: {}",
        data.get("error").unwrap_or(&Value::Null)
    );
}

/// The report: one HTML file with the data and code inlined and nothing
/// fetched from anywhere.
#[test]
fn report_is_one_self_contained_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stock.parquet");
    stock_file(&path);
    let report = dir.path().join("report.html");
    write_report(&path, &report);
    let html = std::fs::read_to_string(&report).unwrap();
    for reference in [
        "src=\"http",
        "href=\"http",
        "@import",
        "url(http",
        "fetch(\"http",
    ] {
        assert!(
            !html.contains(reference),
            "the report refers out: {reference}"
        );
    }
    assert!(html.contains("uPlot"), "the chart library is inlined");
    assert!(
        html.contains("\"latency:percentiles\""),
        "the data is inlined"
    );
}

/// Missing files, files that are not Parquet or not recordings, an agent
/// that does not answer, a port in use: a message naming the problem, a
/// non-zero exit, and no URL printed.
#[test]
fn bad_input_is_a_clear_error_and_nothing_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not parquet").unwrap();
    let missing = dir.path().join("missing.parquet");
    let stock = dir.path().join("stock.parquet");
    stock_file(&stock);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let link = dir.path().join("link.html");
    std::os::unix::fs::symlink(&text, &link).unwrap();
    let hard = dir.path().join("hard.parquet");
    std::fs::hard_link(&stock, &hard).unwrap();
    let stock = stock.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![missing.to_str().unwrap()], "No such file"),
        (vec![text.to_str().unwrap()], "is not a Parquet file"),
        (
            vec![&dead_url, "--interval", "100ms"],
            "reading the agent at",
        ),
        (vec![stock, "--listen", &busy], "(--listen)"),
        (vec![stock, text.to_str().unwrap()], "is not a Parquet file"),
        (vec![&dead_url, stock], "needs two recordings"),
        (vec![stock, "--points", "0"], "--points"),
        (vec![stock, "--interval", "5s"], "apply to a live agent"),
        (vec![stock, &dead_url], "needs two recordings"),
        (vec![&dead_url, "--interval", "1ms"], "at least 10ms"),
        (
            vec![stock, "--report", stock],
            "is the recording being read",
        ),
        (
            vec![stock, "--report", "/nonexistent-dir/r.html"],
            "does not exist",
        ),
        (
            vec![stock, "--report", dir.path().to_str().unwrap()],
            "is a directory",
        ),
        (
            vec![stock, "--report", "r.html", "--listen", "127.0.0.1:0"],
            "--listen does not apply",
        ),
        // a link (or a device, a FIFO) would be replaced, not written to
        (
            vec![stock, "--report", link.to_str().unwrap()],
            "not a regular file",
        ),
        // the recording under another name
        (
            vec![stock, "--report", hard.to_str().unwrap()],
            "is the recording being read",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["view"];
        all.extend(&args);
        let out = Command::new(BIN)
            .args(&all)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(
            !stdout.contains("http://"),
            "{args:?} printed a URL: {stdout}"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // a Parquet file that is not a recording, and one sample only
    let plain = dir.path().join("plain.parquet");
    common::parquet::write(
        &plain,
        vec![arrow_schema::Field::new(
            "x",
            arrow_schema::DataType::UInt64,
            true,
        )],
        vec![std::sync::Arc::new(arrow_array::UInt64Array::from(vec![
            1u64,
        ]))],
    );
    let out = common::run(&["view", plain.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a Rezolus recording"));
    // the recording asked to be overwritten by its report is untouched
    assert!(common::run(&["parquet", "summary", stock]).status.success());
    // timestamps that never go forward: no interval to show
    let backwards = dir.path().join("backwards.parquet");
    common::parquet::write(
        &backwards,
        vec![
            arrow_schema::Field::new("timestamp", arrow_schema::DataType::UInt64, false),
            common::parquet::field(
                "c",
                arrow_schema::DataType::UInt64,
                &[("metric", "c"), ("metric_type", "counter")],
            ),
        ],
        vec![
            std::sync::Arc::new(arrow_array::UInt64Array::from(vec![
                3 * SECOND,
                2 * SECOND,
                SECOND,
            ])),
            std::sync::Arc::new(arrow_array::UInt64Array::from(vec![1u64, 2, 3])),
        ],
    );
    let out = common::run(&["view", backwards.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("never increase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens the page in Chromium, waits for the overview's charts, and fails
/// on any JavaScript error or on an overview chart without data points;
/// saves a screenshot.
fn check_in_browser(url: &str, shot: &str) -> Value {
    let mut browser = Browser::start(1400, 1000);
    browser.open(url);
    browser.wait_for(
        "window.rezolusStatus !== undefined && window.rezolusStatus.ready",
        Duration::from_secs(30),
    );
    let status = browser.eval("JSON.stringify(window.rezolusStatus)");
    let status: Value = serde_json::from_str(status.as_str().unwrap()).unwrap();
    // every chart the page drew: a canvas of its size, and pixels on it
    // other than the background, axes and grid (which are grey or black)
    let drawn = browser.eval(
        r#"Array.from(document.querySelectorAll('.card canvas')).map(c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let coloured = 0;
            for (let i = 0; i < d.length; i += 4) {
              const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
              if (a > 0 && (Math.max(r, g, b) - Math.min(r, g, b)) > 60) coloured++;
            }
            return coloured;
          })"#,
    );
    browser.screenshot(&artifact(shot));
    assert!(browser.errors.is_empty(), "{url}: {:?}", browser.errors);
    assert!(
        status["errors"].as_array().unwrap().is_empty(),
        "{url}: {status}"
    );
    assert_eq!(status["section"], "overview");
    let charts = status["charts"].as_array().unwrap();
    let drawn = drawn.as_array().unwrap();
    assert_eq!(charts.len(), drawn.len(), "one canvas per chart");
    for (chart, coloured) in charts.iter().zip(drawn) {
        assert!(
            chart["points"].as_u64().unwrap() > 0,
            "{url}: chart {} has no data points",
            chart["id"]
        );
        assert!(
            coloured.as_u64().unwrap() > 20,
            "{url}: chart {} drew no coloured pixels",
            chart["id"]
        );
    }
    // dragging across the first chart zooms every chart to that range
    let before: Vec<(f64, f64)> = ranges(&mut browser);
    drag(&mut browser, 0.3, 0.7);
    let after = ranges(&mut browser);
    assert!(
        after.iter().all(|r| *r == after[0]),
        "charts zoomed apart: {after:?}"
    );
    let (full, zoomed) = (before[0].1 - before[0].0, after[0].1 - after[0].0);
    assert!(
        zoomed < full * 0.6 && zoomed > full * 0.2,
        "a drag over 40% of the chart zoomed {full} to {zoomed}"
    );

    // every section draws without an error, and histograms' heatmaps show
    let ids =
        browser.eval("Array.from(document.querySelectorAll('nav button')).map(b => b.dataset.id)");
    let mut heat = 0;
    for id in ids.as_array().unwrap() {
        let id = id.as_str().unwrap();
        browser.eval(&format!("location.hash = '{id}'"));
        browser.wait_for(
            &format!("window.rezolusStatus.ready && window.rezolusStatus.section === '{id}'"),
            Duration::from_secs(30),
        );
        let s: Value = serde_json::from_str(
            browser
                .eval("JSON.stringify(window.rezolusStatus)")
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert!(
            s["errors"].as_array().unwrap().is_empty(),
            "section {id}: {s}"
        );
        assert!(
            browser.errors.is_empty(),
            "section {id}: {:?}",
            browser.errors
        );
        assert!(
            !s["charts"].as_array().unwrap().is_empty(),
            "section {id} drew no chart"
        );
        heat += s["charts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["id"].as_str().unwrap().ends_with(":heatmap") && c["points"].as_u64() > Some(0)
            })
            .count();
    }
    assert!(heat > 0, "no heatmap had data");
    status
}

/// Drags across the first chart from `a` to `b` (shares of its width).
fn drag(browser: &mut Browser, a: f64, b: f64) {
    let over = browser.eval(
        "(() => { const r = document.querySelector('.u-over').getBoundingClientRect(); \
         return [r.left, r.top, r.width, r.height]; })()",
    );
    let r: Vec<f64> = over
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (y, x0, x1) = (r[1] + r[3] / 2.0, r[0] + r[2] * a, r[0] + r[2] * b);
    for (kind, x) in [
        ("mousePressed", x0),
        ("mouseMoved", (x0 + x1) / 2.0),
        ("mouseMoved", x1),
        ("mouseReleased", x1),
    ] {
        browser.call(
            "Input.dispatchMouseEvent",
            serde_json::json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1}),
        );
    }
}

/// Each chart's x range.
fn ranges(browser: &mut Browser) -> Vec<(f64, f64)> {
    browser
        .eval("window.rezolusStatus.ranges()")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
        .collect()
}

/// The dashboard in a real browser, served and as a report opened from
/// disk: on a capture with a CPU burst and block IO, every overview chart
/// draws data and no JavaScript error occurs.
#[test]
fn dashboard_draws_every_overview_chart_in_a_browser() {
    let _serial = common::serial();
    let agent = Agent::start("", "");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("capture.parquet");
    record(&agent, "500ms", "4s", &path, || {
        std::thread::sleep(Duration::from_millis(800));
        burst(Duration::from_millis(1200));
        synced_writes(dir.path(), 32);
    });
    drop(agent);

    let view = View::start(&[path.to_str().unwrap()]);
    let status = check_in_browser(&view.url, "view-overview.png");
    let expected = [
        "overview:cpu",
        "overview:runqueue",
        "overview:syscall",
        "overview:syscall_latency",
        "overview:blockio",
        "overview:blockio_latency",
        "overview:network",
        "overview:memory",
    ];
    let ids: Vec<&str> = status["charts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, expected);

    drop(view);

    // merged points (4 a chart, for about 8 intervals): zooming into 30%
    // of the time asks the server for that range at full resolution
    let merged = View::start(&[path.to_str().unwrap(), "--points", "4"]);
    let mut browser = Browser::start(1400, 1000);
    browser.open(&merged.url);
    browser.wait_for(
        "window.rezolusStatus !== undefined && window.rezolusStatus.ready",
        Duration::from_secs(30),
    );
    assert!(browser.eval("window.rezolusStatus.step").as_u64() > Some(1));
    drag(&mut browser, 0.1, 0.4);
    browser.wait_for("window.rezolusStatus.step === 1", Duration::from_secs(10));
    let after = ranges(&mut browser);
    assert!(after.iter().all(|r| *r == after[0]), "{after:?}");
    // another section, still zoomed: asked for that range too
    browser.eval("location.hash = 'cpu'");
    browser.wait_for(
        "window.rezolusStatus.ready && window.rezolusStatus.section === 'cpu'",
        Duration::from_secs(30),
    );
    assert_eq!(browser.eval("window.rezolusStatus.step"), 1);
    assert_eq!(ranges(&mut browser)[0], after[0]);
    assert!(browser.errors.is_empty(), "{:?}", browser.errors);
    drop(browser);
    drop(merged);

    // A/B: every chart twice, A beside B
    let compare = View::start(&[path.to_str().unwrap(), path.to_str().unwrap()]);
    let status = check_in_browser(&compare.url, "view-compare-overview.png");
    let charts = status["charts"].as_array().unwrap();
    assert_eq!(charts.len(), 2 * expected.len());
    assert!(charts.iter().any(|c| c["source"] == 1));
    drop(compare);

    let report = dir.path().join("report.html");
    write_report(&path, &report);
    let status = check_in_browser(
        &format!("file://{}", report.display()),
        "view-report-overview.png",
    );
    assert_eq!(status["charts"].as_array().unwrap().len(), expected.len());
}

/// A live agent in a real browser: the charts gain points as the agent is
/// read, updated in place (the same canvas), with no JavaScript error.
#[test]
fn live_dashboard_updates_in_place_in_a_browser() {
    let _serial = common::serial();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.cpu_usage]\nenabled = true\n\
         [samplers.syscall]\nenabled = true\n[samplers.scheduler_runqueue]\nenabled = true\n",
    );
    let url = format!("http://{}", agent.addr);
    let view = View::start(&[&url, "--interval", "200ms"]);
    let mut browser = Browser::start(1400, 1000);
    browser.open(&view.url);
    browser.wait_for(
        "window.rezolusStatus !== undefined && window.rezolusStatus.ready",
        Duration::from_secs(30),
    );
    let points = |browser: &mut Browser| -> u64 {
        browser
            .eval("window.rezolusStatus.charts.find(c => c.id === 'overview:syscall').points")
            .as_u64()
            .unwrap()
    };
    let canvas = "document.querySelector('[data-chart=\"overview:syscall\"] canvas')";
    browser.eval(&format!("{canvas}.dataset.mark = 'first'; true"));
    let before = points(&mut browser);
    std::thread::sleep(Duration::from_millis(1500));
    let after = points(&mut browser);
    assert!(
        after >= before + 4,
        "the syscall chart went from {before} to {after} points in 1.5 s at 200 ms"
    );
    assert_eq!(
        browser.eval(&format!("{canvas}.dataset.mark")),
        "first",
        "the charts were drawn anew instead of updated"
    );
    assert!(browser.errors.is_empty(), "{:?}", browser.errors);
    browser.screenshot(&artifact("view-live-overview.png"));
}
