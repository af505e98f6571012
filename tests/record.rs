//! `rezolus record` and `rezolus parquet recover`: files read back with
//! pyarrow and duckdb (installed by scripts/deps), signals, a killed
//! recorder, an agent restarting mid-capture, and bad output paths.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::fake::FakeAgent;
use common::parquet::read_parquet;
use common::{run, Agent, BIN};
use rezolus::metrics::{new_histogram, MetricDef, Series};
use rezolus::snapshot::{Emitter, Snapshot};
use serde_json::Value;

static REQUESTS: MetricDef = MetricDef::counter("test_requests", "requests", "");
static LEVEL: MetricDef = MetricDef::gauge("test_level", "bytes", "");
static LATE: MetricDef = MetricDef::counter("test_late", "events", "");
static LATENCY: MetricDef =
    MetricDef::histogram("syscall_latency", "nanoseconds", "").labels(&["op"]);

/// What the scripted agent served, by snapshot time (ns): the request
/// number and the histogram's buckets.
type Served = Arc<Mutex<HashMap<u64, (u64, Vec<u64>)>>>;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A scripted agent: request n serves counter n, gauge -n, a histogram of n
/// values, and from the 6th request on a series that was not there before.
fn scripted_agent() -> (FakeAgent, Served) {
    let served: Served = Arc::default();
    let log = Arc::clone(&served);
    let mut n = 0u64;
    let agent = FakeAgent::start(Box::new(move |now| {
        n += 1;
        let mut h = new_histogram();
        for i in 0..n {
            h.increment(1_000 * (i + 1) * (i + 1)).unwrap();
        }
        log.lock()
            .unwrap()
            .insert(nanos(now), (n, h.as_slice().to_vec()));
        let mut snap = Snapshot::new(now);
        snap.duration = Duration::from_micros(n);
        let mut out = Emitter::new(&mut snap);
        out.counter(&Series::new(&REQUESTS, &[]), n);
        out.gauge(&Series::new(&LEVEL, &[]), -(n as i64));
        out.histogram(&Series::new(&LATENCY, &[("op", "read")]), h);
        if n >= 6 {
            out.counter(&Series::new(&LATE, &[]), n);
        }
        snap
    }));
    (agent, served)
}

fn values(file: &Value, column: &str) -> Vec<Value> {
    file["columns"][column]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no column {column}"))
        .clone()
}

fn u64s(file: &Value, column: &str) -> Vec<u64> {
    values(file, column)
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// A running `rezolus record`, its log lines on a channel.
struct Recorder {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Recorder {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("record")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = common::log_lines(&mut child, "recorder");
        Self { child, log }
    }

    fn wait_log(&self, text: &str, timeout: Duration) {
        common::wait_line(&self.log, text, timeout)
    }

    fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "recorder did not exit after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "recorder did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3 s capture at 200 ms: about 15 rows, timestamps 200 ms apart, and
/// every value (histogram buckets included) equal to what the agent served
/// at that timestamp; a late series is null before it appeared.
#[test]
fn a_capture_reads_back_with_pyarrow_and_duckdb() {
    let (agent, served) = scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("capture.parquet");
    let source = format!("http://{}", agent.addr);
    let mut recorder = Recorder::start(&[
        "--interval",
        "200ms",
        "--duration",
        "3s",
        "--metadata",
        "run=unit test",
        "--metadata",
        "host=a",
        &source,
        out.to_str().unwrap(),
    ]);
    assert!(recorder.wait(Duration::from_secs(30)).success());
    assert!(
        !dir.path().join("capture.parquet.journal").exists(),
        "journal left behind"
    );

    let file = read_parquet(&out);
    let rows = file["rows"].as_u64().unwrap();
    assert!((14..=16).contains(&rows), "{rows} rows for 3s at 200ms");
    assert_eq!(file["duckdb_rows"].as_u64(), Some(rows));
    let meta = &file["metadata"];
    assert_eq!(meta["run"], "unit test");
    assert_eq!(meta["host"], "a");
    assert_eq!(meta["sampling_interval_ms"], "200");
    assert_eq!(meta["source"], "rezolus");
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));

    let timestamps = u64s(&file, "timestamp");
    for (i, pair) in timestamps.windows(2).enumerate() {
        let step = pair[1] as i64 - pair[0] as i64;
        // the first sample is taken at start, then on aligned ticks, the
        // first of them at least half an interval later
        let range = if i == 0 {
            90_000_000..360_000_000
        } else {
            140_000_000..260_000_000
        };
        assert!(range.contains(&step), "step {i}: {step} ns");
    }
    let hist_column = "syscall_latency{op=\"read\"}:buckets";
    let column = &file["columns"][hist_column];
    assert_eq!(column["type"], "list<item: uint64>");
    assert_eq!(column["metadata"]["metric"], "syscall_latency");
    assert_eq!(column["metadata"]["metric_type"], "histogram");
    assert_eq!(column["metadata"]["unit"], "nanoseconds");
    assert_eq!(column["metadata"]["op"], "read");
    assert_eq!(column["metadata"]["grouping_power"], "3");
    assert_eq!(column["metadata"]["max_value_power"], "64");
    assert_eq!(file["columns"]["test_requests"]["type"], "uint64");
    assert_eq!(
        file["columns"]["test_requests"]["metadata"]["metric_type"],
        "counter"
    );
    assert_eq!(file["columns"]["test_level"]["type"], "int64");

    let served = served.lock().unwrap();
    let requests = u64s(&file, "test_requests");
    let levels = values(&file, "test_level");
    let buckets = values(&file, hist_column);
    let late = values(&file, "test_late");
    let durations = u64s(&file, "duration");
    for (row, ts) in timestamps.iter().enumerate() {
        let (n, expected) = served
            .get(ts)
            .unwrap_or_else(|| panic!("row {row}: no snapshot served at {ts}"));
        assert_eq!(requests[row], *n, "row {row}");
        assert_eq!(levels[row].as_i64(), Some(-(*n as i64)));
        assert_eq!(durations[row], n * 1_000);
        let got: Vec<u64> = buckets[row]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(&got, expected, "row {row}: histogram buckets");
        if *n >= 6 {
            assert_eq!(late[row].as_u64(), Some(*n));
        } else {
            assert!(late[row].is_null(), "row {row}: {:?}", late[row]);
        }
    }
    assert!(requests.windows(2).all(|w| w[0] < w[1]));
}

/// The real agent, recorded for 2 s at 100 ms: every counter column is
/// monotonic, and the file holds the agent's histograms.
#[test]
fn a_capture_of_the_real_agent_has_monotonic_counters() {
    let agent = Agent::start("", "");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("real.parquet");
    let mut recorder = Recorder::start(&[
        "--interval",
        "100ms",
        "--duration",
        "2s",
        &format!("{}", agent.addr),
        out.to_str().unwrap(),
    ]);
    assert!(recorder.wait(Duration::from_secs(30)).success());
    let file = read_parquet(&out);
    let rows = file["rows"].as_u64().unwrap();
    assert!((19..=21).contains(&rows), "{rows} rows");
    let columns = file["columns"].as_object().unwrap();
    let mut counters = 0;
    for (name, column) in columns {
        if column["metadata"]["metric_type"] == "counter" {
            counters += 1;
            let vals: Vec<u64> = column["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            assert!(
                vals.windows(2).all(|w| w[0] <= w[1]),
                "{name} is not monotonic: {vals:?}"
            );
        }
    }
    assert!(counters > 50, "{counters} counter columns");
    assert!(columns.contains_key("cpu_usage{state=\"user\"}"));
    assert!(columns
        .keys()
        .any(|k| k.starts_with("scheduler_runqueue_latency") && k.ends_with(":buckets")));
}

/// An agent that reuses a snapshot for longer than the interval (ttl 1 s,
/// a reading every 100 ms) answers most readings with the snapshot it
/// served before: the recorder stores each snapshot once, never a copy as
/// a new sample, and says so. With the agent's default ttl, a capture at
/// 20 ms stores a new snapshot at (nearly) every interval.
#[test]
fn a_snapshot_served_again_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Agent::start("ttl = \"1s\"", "");
    let out = dir.path().join("repeats.parquet");
    let recorder = Recorder::start(&[
        "--interval",
        "100ms",
        "--duration",
        "3s",
        &slow.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    recorder.wait_log(
        "served its previous snapshot again",
        Duration::from_secs(10),
    );
    recorder.wait_log("readings repeated", Duration::from_secs(10));
    let mut recorder = recorder;
    assert!(recorder.wait(Duration::from_secs(30)).success());
    let timestamps = u64s(&read_parquet(&out), "timestamp");
    // a new snapshot once a second (plus the first), none twice
    assert!((3..=5).contains(&timestamps.len()), "{timestamps:?}");
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
    drop(slow);

    // the default ttl (the harness sets none when told "ttl")
    let agent = Agent::start("# the default ttl", "");
    let out = dir.path().join("fast.parquet");
    let mut recorder = Recorder::start(&[
        "--interval",
        "20ms",
        "--duration",
        "2s",
        &agent.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    assert!(recorder.wait(Duration::from_secs(30)).success());
    let timestamps = u64s(&read_parquet(&out), "timestamp");
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]));
    assert!(
        timestamps.len() >= 90,
        "{} of 100 samples",
        timestamps.len()
    );
}

/// A journal a capture is still writing is locked: `parquet recover` and
/// a second capture with --force refuse it and leave it alone, and the
/// capture ends with its whole file.
#[test]
fn the_journal_of_a_running_capture_is_left_alone() {
    let (agent, _) = scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.parquet");
    let journal = dir.path().join("live.parquet.journal");
    let mut recorder = Recorder::start(&[
        "--interval",
        "100ms",
        "--duration",
        "3s",
        &agent.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    recorder.wait_log("recording", Duration::from_secs(10));
    agent.wait_served(5, Duration::from_secs(10));
    let refused = run(&["parquet", "recover", journal.to_str().unwrap()]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("being written by a running capture"), "{err}");
    let forced = run(&[
        "record",
        "--force",
        "--duration",
        "1s",
        &agent.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    assert!(!forced.status.success());
    let err = String::from_utf8_lossy(&forced.stderr);
    assert!(err.contains("being written by a running capture"), "{err}");
    assert!(journal.exists() && !out.exists());
    assert!(recorder.wait(Duration::from_secs(30)).success());
    assert!(!journal.exists());
    let rows = read_parquet(&out)["rows"].as_u64().unwrap();
    assert!(rows >= 25, "{rows} rows");
}

/// A journal cut inside its last record (a capture killed mid-write)
/// converts and goes; one with a damaged record followed by more stays
/// beside the file, with a warning, since the rest may still be read.
#[test]
fn a_journal_damaged_before_its_end_is_kept() {
    use rezolus::recording::journal::{Header, Writer};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let path = dir.path().join(name);
        let header = Header {
            url: "http://127.0.0.1:1/metrics/binary".into(),
            sampling_interval_ms: 100,
            metadata: Default::default(),
        };
        let mut w = Writer::create(std::fs::File::create(&path).unwrap(), &header).unwrap();
        let mut ends = Vec::new();
        for n in 0..20u64 {
            let mut snap = Snapshot::new(UNIX_EPOCH + Duration::from_secs(1_000 + n));
            Emitter::new(&mut snap).counter(&Series::new(&REQUESTS, &[]), n);
            w.snapshot(&snap.to_msgpack().unwrap()).unwrap();
            ends.push(w.bytes());
        }
        (path, ends)
    };
    let (cut, ends) = write("cut.journal");
    // outputs that cannot be written are refused before any work
    for (output, expect) in [
        (dir.path().to_path_buf(), "is a directory"),
        (dir.path().join("no/such/x.parquet"), "does not exist"),
    ] {
        let out = run(&[
            "parquet",
            "recover",
            "--force",
            cut.to_str().unwrap(),
            output.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{err}");
    }
    let file = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    file.set_len(ends[18] + 5).unwrap();
    let out = run(&["parquet", "recover", cut.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cut.exists());
    assert_eq!(read_parquet(&dir.path().join("cut"))["rows"], 19);

    let (damaged, ends) = write("damaged.journal");
    let mut bytes = std::fs::read(&damaged).unwrap();
    // inside record 10's payload
    bytes[ends[9] as usize + 20] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let out = run(&["parquet", "recover", damaged.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is kept"), "{err}");
    assert!(damaged.exists());
    assert_eq!(read_parquet(&dir.path().join("damaged"))["rows"], 10);
}

/// SIGTERM (and SIGINT) end a capture without a duration cleanly: exit 0,
/// a complete file holding every sample read, no journal left.
#[test]
fn a_stop_signal_finishes_the_file() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (agent, _) = scripted_agent();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stopped.parquet");
        let mut recorder = Recorder::start(&[
            "--interval",
            "100ms",
            &agent.addr.to_string(),
            out.to_str().unwrap(),
        ]);
        agent.wait_served(8, Duration::from_secs(10));
        let status = recorder.signal(signal);
        assert!(status.success(), "signal {signal}: {status:?}");
        let file = read_parquet(&out);
        let served = agent.served.load(Ordering::SeqCst);
        assert_eq!(file["rows"].as_u64(), Some(served), "signal {signal}");
        assert!(!dir.path().join("stopped.parquet.journal").exists());
    }
}

/// SIGKILL 30 s into a 1 s capture: `rezolus parquet recover` reads back at
/// least 25 s of it from the journal.
#[test]
fn a_killed_capture_is_recovered_from_its_journal() {
    let (agent, served) = scripted_agent();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("killed.parquet");
    let mut recorder = Recorder::start(&[
        "--interval",
        "1s",
        &agent.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    let started = Instant::now();
    agent.wait_served(30, Duration::from_secs(45));
    recorder.signal(libc::SIGKILL);
    let killed_after = started.elapsed();
    let journal = dir.path().join("killed.parquet.journal");
    assert!(journal.exists() && !out.exists());

    // a new capture refuses to clobber the journal
    let again = run(&[
        "record",
        "--duration",
        "1s",
        &agent.addr.to_string(),
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("parquet recover"));

    let recovered = run(&["parquet", "recover", journal.to_str().unwrap()]);
    assert!(
        recovered.status.success(),
        "{}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    assert!(!journal.exists());
    let file = read_parquet(&out);
    let rows = file["rows"].as_u64().unwrap();
    assert!(rows >= 25, "{rows} rows recovered after {killed_after:?}");
    let timestamps = u64s(&file, "timestamp");
    let span = (timestamps[timestamps.len() - 1] - timestamps[0]) as f64 / 1e9;
    assert!(span >= 25.0, "{span} s recovered");
    let served = served.lock().unwrap();
    let requests = u64s(&file, "test_requests");
    for (row, ts) in timestamps.iter().enumerate() {
        assert_eq!(served[ts].0, requests[row]);
    }
}

/// The agent goes away mid-capture and comes back on the same address:
/// the recorder keeps going, records the gap in the file's metadata, and
/// holds the samples from before and after.
#[test]
fn an_agent_restart_mid_capture_is_a_recorded_gap() {
    let (first, _) = scripted_agent();
    let addr = first.addr;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gap.parquet");
    let mut recorder = Recorder::start(&[
        "--interval",
        "100ms",
        &addr.to_string(),
        out.to_str().unwrap(),
    ]);
    first.wait_served(5, Duration::from_secs(10));
    let before = first.served.load(Ordering::SeqCst);
    let down_at = nanos(SystemTime::now());
    drop(first);
    recorder.wait_log("cannot read the agent", Duration::from_secs(10));
    let second = FakeAgent::start_on(
        TcpListener::bind(addr).expect("the address is free again"),
        Box::new(|now| {
            let mut snap = Snapshot::new(now);
            Emitter::new(&mut snap).counter(&Series::new(&REQUESTS, &[]), 1);
            snap
        }),
    );
    recorder.wait_log("reading the agent again", Duration::from_secs(10));
    second.wait_served(5, Duration::from_secs(10));
    assert!(recorder.signal(libc::SIGTERM).success());
    let after = second.served.load(Ordering::SeqCst);

    let file = read_parquet(&out);
    assert_eq!(file["rows"].as_u64(), Some(before + after));
    let gaps: Value =
        serde_json::from_str(file["metadata"]["gaps"].as_str().expect("gaps in metadata")).unwrap();
    let gaps = gaps.as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (start, end) = (
        gaps[0]["start_ns"].as_u64().unwrap(),
        gaps[0]["end_ns"].as_u64().unwrap(),
    );
    let timestamps = u64s(&file, "timestamp");
    let last_before = timestamps[before as usize - 1];
    let first_after = timestamps[before as usize];
    assert!(
        last_before < start && start >= down_at - 200_000_000,
        "gap starts {start}, last sample {last_before}"
    );
    assert!(
        start < end && end <= first_after + 1_000_000,
        "gap ends {end}, next sample {first_after}"
    );
}

/// Mistakes are refused before anything is captured, and name what is wrong.
#[test]
fn bad_outputs_sources_and_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, _) = scripted_agent();
    let source = agent.addr.to_string();
    let fail = |args: &[&str], expect: &str| {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
    };
    let missing = dir.path().join("no/such/dir/x.parquet");
    fail(
        &["record", &source, missing.to_str().unwrap()],
        "does not exist",
    );
    let existing = dir.path().join("exists.parquet");
    std::fs::write(&existing, b"keep me").unwrap();
    fail(&["record", &source, existing.to_str().unwrap()], "--force");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    let fresh = dir.path().join("fresh.parquet");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fail(
        &["record", &closed.to_string(), fresh.to_str().unwrap()],
        "cannot read the agent",
    );
    assert!(!fresh.exists() && !dir.path().join("fresh.parquet.journal").exists());
    fail(
        &[
            "record",
            "--interval",
            "5ms",
            &source,
            fresh.to_str().unwrap(),
        ],
        "--interval",
    );
    fail(
        &[
            "record",
            "--duration",
            "soon",
            &source,
            fresh.to_str().unwrap(),
        ],
        "--duration",
    );
    fail(
        &[
            "record",
            "--metadata",
            "novalue",
            &source,
            fresh.to_str().unwrap(),
        ],
        "KEY=VALUE",
    );
    fail(
        &[
            "parquet",
            "recover",
            dir.path().join("nothing.journal").to_str().unwrap(),
        ],
        "does not exist",
    );
    // a Parquet file given for the journal: said plainly, once, and no
    // suggestion to run the same command again
    let parquet = dir.path().join("x.parquet");
    std::fs::write(&parquet, b"PAR1 not a journal PAR1").unwrap();
    for args in [
        vec!["parquet", "recover", parquet.to_str().unwrap()],
        vec!["parquet", "recover", parquet.to_str().unwrap(), "y.parquet"],
    ] {
        let out = run(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{} is a Parquet file, not a recorder journal",
                parquet.display()
            )) && err.contains("journal files end in .journal"),
            "{err}"
        );
        assert_eq!(err.matches("not a recorder journal").count(), 1, "{err}");
        assert!(!err.contains("retry") && !err.contains("`rezolus"), "{err}");
    }
    // any other file that is not a journal
    let text = dir.path().join("notes.journal");
    std::fs::write(&text, b"hello").unwrap();
    let out = run(&["parquet", "recover", text.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not a recorder journal") && !err.contains("retry"),
        "{err}"
    );

    // --force overwrites
    let ok = run(&[
        "record",
        "--force",
        "--interval",
        "100ms",
        "--duration",
        "300ms",
        &source,
        existing.to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(read_parquet(&existing)["rows"].as_u64().unwrap() >= 2);

    // a directory the recorder's user cannot write
    use std::os::unix::process::CommandExt;
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args([
            "record",
            &source,
            locked.join("x.parquet").to_str().unwrap(),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not writable") && err.contains("locked"),
        "{err}"
    );
}
