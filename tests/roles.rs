//! The client roles (record, hindsight, exporter) and the agent against
//! what long-running processes meet: signals during start-up, SIGHUP where
//! it means nothing, a wall clock that steps, and an agent whose series
//! change description mid-capture.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::fake::FakeAgent;
use common::parquet::read_parquet;
use common::{Agent, BIN};
use rezolus::metrics::{MetricDef, Series};
use rezolus::snapshot::{Emitter, Snapshot};

static REQUESTS: MetricDef = MetricDef::counter("requests", "requests", "");

/// A fake agent serving a counter that counts its requests; the first
/// `slow` requests take `delay` each.
fn agent(slow: u64, delay: Duration) -> FakeAgent {
    let mut n = 0u64;
    FakeAgent::start(Box::new(move |now| {
        n += 1;
        if n <= slow {
            std::thread::sleep(delay);
        }
        let mut snap = Snapshot::new(now);
        Emitter::new(&mut snap).counter(&Series::new(&REQUESTS, &[]), n);
        snap
    }))
}

/// A role started by hand (not waiting for readiness), its log lines on a
/// channel.
struct Role {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Role {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rezolus");
        let log = common::log_lines(&mut child, "role");
        Self { child, log }
    }

    /// `rezolus record --interval I --duration D SOURCE OUTPUT`.
    fn record(
        agent: &FakeAgent,
        interval: &str,
        duration: &str,
        out: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let url = format!("http://{}", agent.addr);
        let out = out.to_str().unwrap();
        let args = [
            "record",
            "--interval",
            interval,
            "--duration",
            duration,
            &url,
            out,
        ];
        Self::start(&args, env)
    }

    fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for a log line containing `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) {
        common::wait_line(&self.log, needle, timeout)
    }

    fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit in {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hindsight_config(dir: &Path, agent: &FakeAgent) -> PathBuf {
    let path = dir.join("hindsight.toml");
    std::fs::write(
        &path,
        format!(
            "[general]\nsource = \"{}\"\ninterval = \"100ms\"\nduration = \"10s\"\noutput = \"{}\"\n",
            agent.addr,
            dir.join("out/hs.parquet").display()
        ),
    )
    .unwrap();
    path
}

/// Parquet files hindsight wrote under `dir`.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    found
}

/// SIGHUP while hindsight is still starting (its first read of a slow
/// agent, and a prompt agent signalled right after exec) never kills it:
/// the dump is written once the ring holds a snapshot.
#[test]
fn sighup_during_hindsight_start_up_is_queued_not_fatal() {
    // (spawn returns once exec succeeded; the signals are blocked from the
    // C runtime's initialisers on, a millisecond or so later)
    for (slow, after) in [
        (1, Duration::from_millis(400)),
        (0, Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fake = agent(slow, Duration::from_millis(1500));
        let config = hindsight_config(dir.path(), &fake);
        let role = Role::start(&["hindsight", config.to_str().unwrap()], &[]);
        std::thread::sleep(after);
        role.signal(libc::SIGHUP);
        role.wait_for("wrote", Duration::from_secs(15));
        let written = dumps(&dir.path().join("out"));
        assert_eq!(written.len(), 1, "{written:?}");
        let file = read_parquet(&written[0]);
        assert!(file["rows"].as_u64().unwrap() >= 1, "{file}");
        role.signal(libc::SIGTERM);
        assert!(role.wait(Duration::from_secs(10)).success());
    }
}

/// SIGHUP to `record` is logged and ignored: the capture runs its course
/// and the file holds every sample.
#[test]
fn sighup_does_not_stop_a_recording() {
    let dir = tempfile::tempdir().unwrap();
    let fake = agent(0, Duration::ZERO);
    let out = dir.path().join("rec.parquet");
    let role = Role::record(&fake, "100ms", "2s", &out, &[]);
    role.wait_for("recording", Duration::from_secs(10));
    for _ in 0..3 {
        role.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
    }
    role.wait_for("SIGHUP received: ignored", Duration::from_secs(5));
    assert!(role.wait(Duration::from_secs(15)).success());
    let rows = read_parquet(&out)["rows"].as_u64().unwrap();
    assert!((18..=22).contains(&rows), "{rows} rows for 2 s at 100 ms");
}

/// SIGTERM while `record` is still reading the agent for the first time:
/// a clean exit, and no file at all (not a half-written one).
#[test]
fn sigterm_during_record_start_up_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let fake = agent(1, Duration::from_millis(2000));
    let out = dir.path().join("rec.parquet");
    let url = format!("http://{}", fake.addr);
    let role = Role::start(&["record", &url, out.to_str().unwrap()], &[]);
    std::thread::sleep(Duration::from_millis(400));
    role.signal(libc::SIGTERM);
    assert!(role.wait(Duration::from_secs(10)).success());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// SIGHUP to the agent and the exporter: logged, ignored, still serving.
#[test]
fn sighup_is_ignored_by_the_agent_and_the_exporter() {
    let agent = Agent::start("", "");
    let exporter = Agent::exporter(&format!("source = \"{}\"", agent.addr), "");
    for role in [&agent, &exporter] {
        unsafe { libc::kill(role.pid() as i32, libc::SIGHUP) };
    }
    for role in [&agent, &exporter] {
        common::wait_line(
            &role.log,
            "SIGHUP received: ignored",
            Duration::from_secs(5),
        );
        assert!(!role.get("/").is_empty());
    }
}

/// The libfaketime library that moves one process's clock (Debian's
/// `faketime`, installed by scripts/deps).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketimeMT.so.1 not found: scripts/deps installs Debian's faketime")
}

/// The recorder's wall clock steps 10 minutes back for a while, then
/// forward again: sampling keeps its cadence (no stall), rows stay in
/// capture order stamped with the clock as read, and the file lists both
/// steps in `clock_steps`.
#[test]
fn a_wall_clock_step_does_not_stall_the_recorder() {
    let dir = tempfile::tempdir().unwrap();
    let fake = agent(0, Duration::ZERO);
    let out = dir.path().join("step.parquet");
    let rc = dir.path().join("faketime.rc");
    std::fs::write(&rc, "+0\n").unwrap();
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", rc.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        // libfaketime moves the C library's monotonic clock with the wall
        // clock too (its default, as in the case that found this): the
        // cadence must not depend on it
    ];
    let role = Role::record(&fake, "200ms", "6s", &out, &env);
    role.wait_for("recording", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&rc, "-600\n").unwrap();
    role.wait_for("stepped back", Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&rc, "+0\n").unwrap();
    role.wait_for("stepped forward", Duration::from_secs(3));
    assert!(role.wait(Duration::from_secs(20)).success());

    let file = read_parquet(&out);
    // rows carry the agent's time (its clock did not step): one every
    // 200 ms throughout, no stall while the recorder's clock was behind
    let ts = common::parquet::timestamps(&file);
    assert!(
        (27..=32).contains(&ts.len()),
        "{} rows for 6 s at 200 ms",
        ts.len()
    );
    for w in ts.windows(2) {
        let d = w[1] as i128 - w[0] as i128;
        assert!(
            (100_000_000..=450_000_000).contains(&d),
            "{d} ns between rows: {ts:?}"
        );
    }
    // the agent's counter in capture order: none repeated or reordered
    // (a request cut short by the faked clock and made again is the one
    // skip allowed)
    let requests: Vec<u64> = file["columns"]["requests"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        requests.windows(2).all(|w| w[1] > w[0] && w[1] <= w[0] + 2),
        "{requests:?}"
    );
    // both steps of the recorder's clock are in the file
    let steps: serde_json::Value =
        serde_json::from_str(file["metadata"]["clock_steps"].as_str().unwrap()).unwrap();
    let steps: Vec<i64> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_ns"].as_i64().unwrap())
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[0] < -599_000_000_000 && steps[1] > 599_000_000_000,
        "{steps:?}"
    );
}

/// Snapshots as another agent might serve them: histogram `lat` with the
/// value 1000 ns in a layout of `power`, and `x` as a counter or a gauge.
fn drifting_snapshot(at: SystemTime, power: u8, x_is_gauge: bool, n: u64) -> Vec<u8> {
    use serde::Serialize;
    use std::collections::BTreeMap;
    #[derive(Serialize)]
    struct Entry<V> {
        name: String,
        value: V,
        metadata: BTreeMap<String, String>,
    }
    #[derive(Serialize)]
    struct Snap {
        systemtime: SystemTime,
        duration: Duration,
        metadata: BTreeMap<String, String>,
        counters: Vec<Entry<u64>>,
        gauges: Vec<Entry<i64>>,
        histograms: Vec<Entry<histogram::Histogram>>,
    }
    let meta = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let mut h = histogram::Histogram::new(power, 64).unwrap();
    h.increment(1000).unwrap();
    let lat = Entry {
        name: "lat".into(),
        value: h,
        metadata: meta(&[
            ("metric", "lat".into()),
            ("unit", "nanoseconds".into()),
            ("grouping_power", power.to_string()),
            ("max_value_power", "64".into()),
        ]),
    };
    let x_meta = meta(&[("metric", "x".into())]);
    let (counters, gauges) = if x_is_gauge {
        (
            vec![],
            vec![Entry {
                name: "x".into(),
                value: n as i64,
                metadata: x_meta,
            }],
        )
    } else {
        (
            vec![Entry {
                name: "x".into(),
                value: n,
                metadata: x_meta,
            }],
            vec![],
        )
    };
    let snap = Snap {
        systemtime: at,
        duration: Duration::ZERO,
        metadata: BTreeMap::new(),
        counters,
        gauges,
        histograms: vec![lat],
    };
    rmp_serde::to_vec(&snap).unwrap()
}

/// An agent whose histogram layout (grouping power 3, then 2, then 3) and
/// series type (counter, then gauge) change mid-capture: the recording
/// completes, every column's values decode right under its own metadata,
/// and both pyarrow and duckdb read it.
#[test]
fn series_that_change_description_mid_capture_are_recorded_exactly() {
    let mut n = 0u64;
    let fake = FakeAgent::start_bytes(Box::new(move |now| {
        n += 1;
        let power = if (4..8).contains(&n) { 2 } else { 3 };
        drifting_snapshot(now, power, (6..10).contains(&n), n)
    }));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("drift.parquet");
    let role = Role::record(&fake, "100ms", "1500ms", &out, &[]);
    assert!(role.wait(Duration::from_secs(20)).success());
    let file = read_parquet(&out);
    let rows = file["rows"].as_u64().unwrap() as usize;
    assert!(rows >= 12, "{rows} rows");
    assert_eq!(file["duckdb_rows"].as_u64().unwrap() as usize, rows);
    let columns = file["columns"].as_object().unwrap();
    let mut names: Vec<&str> = columns.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "duration",
            "lat#2:buckets",
            "lat:buckets",
            "timestamp",
            "x",
            "x#2"
        ]
    );
    assert_eq!(columns["x#2"]["metadata"]["metric_type"], "gauge");
    // each row has x in exactly one of its columns, and lat likewise
    for row in 0..rows {
        let present = |c: &str| !columns[c]["values"][row].is_null();
        assert!(present("x") != present("x#2"), "row {row}");
        assert!(
            present("lat:buckets") != present("lat#2:buckets"),
            "row {row}"
        );
    }
    // decoded with each column's own grouping power, every value is 1000
    for name in ["lat:buckets", "lat#2:buckets"] {
        let power: u8 = columns[name]["metadata"]["grouping_power"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let mut seen = 0;
        for row in columns[name]["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !v.is_null())
        {
            let buckets: Vec<u64> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let h = histogram::Histogram::from_buckets(power, 64, buckets).unwrap();
            let b = h.iter().find(|b| b.count() > 0).unwrap();
            assert!(b.start() <= 1000 && 1000 <= b.end(), "{name}: {b:?}");
            seen += 1;
        }
        assert!(seen >= 1, "{name} holds no value");
    }
}

static NOISE: MetricDef = MetricDef::gauge("noise", "", "").labels(&["id"]);

/// Unmounts a tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A recording on a disk that fills up stops with an error that names the
/// journal and the command that recovers it; that command, run with the
/// output elsewhere, gives a valid file of what was captured.
#[test]
fn a_full_disk_stops_the_recorder_with_the_recovery_command() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let _tmpfs = Tmpfs::mount(&small, "256k");
    // incompressible gauges: about 8 KiB per journal record
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let fake = FakeAgent::start(Box::new(move |now| {
        let mut snap = Snapshot::new(now);
        let mut out = Emitter::new(&mut snap);
        for i in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.gauge(&Series::new(&NOISE, &[("id", &i.to_string())]), x as i64);
        }
        snap
    }));
    let out = small.join("rec.parquet");
    let url = format!("http://{}", fake.addr);
    let output = Command::new(BIN)
        .args(["record", "--interval", "20ms", "--duration", "60s", &url])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let journal = format!("{}.journal", out.display());
    let command = format!("rezolus parquet recover {journal} {}", out.display());
    assert!(stderr.contains(&command), "{stderr}");
    assert_eq!(
        stderr.matches("No space left on device").count(),
        1,
        "the cause once: {stderr}"
    );

    // writing over the journal itself would lose both: refused
    let onto_itself = Command::new(BIN)
        .args(["parquet", "recover", "--force", &journal, &journal])
        .output()
        .unwrap();
    assert!(!onto_itself.status.success());
    let stderr = String::from_utf8_lossy(&onto_itself.stderr);
    assert!(stderr.contains("is the journal itself"), "{stderr}");
    assert!(Path::new(&journal).exists());

    let elsewhere = dir.path().join("rec.parquet");
    let recovered = Command::new(BIN)
        .args(["parquet", "recover", &journal])
        .arg(&elsewhere)
        .output()
        .unwrap();
    assert!(
        recovered.status.success(),
        "{}",
        String::from_utf8_lossy(&recovered.stderr)
    );
    let file = read_parquet(&elsewhere);
    assert!(file["rows"].as_u64().unwrap() >= 5, "{}", file["rows"]);
}

/// A second hindsight with the same output (here with another duration,
/// which would re-size the ring) is refused at start; the first one's ring
/// and its dumps are untouched.
#[test]
fn a_second_hindsight_on_the_same_ring_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = agent(0, Duration::ZERO);
    let config = hindsight_config(dir.path(), &fake);
    let first = Role::start(&["hindsight", config.to_str().unwrap()], &[]);
    first.wait_for("running", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let ring = dir.path().join("out/hs.parquet.ring");
    let size = std::fs::metadata(&ring).unwrap().len();

    let other = dir.path().join("other.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("10s", "2s");
    std::fs::write(&other, text).unwrap();
    let second = Command::new(BIN)
        .args(["hindsight", other.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert_eq!(std::fs::metadata(&ring).unwrap().len(), size);

    first.signal(libc::SIGHUP);
    first.wait_for("wrote", Duration::from_secs(10));
    let written = dumps(&dir.path().join("out"));
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(read_parquet(&written[0])["rows"].as_u64().unwrap() >= 3);
    first.signal(libc::SIGTERM);
    assert!(first.wait(Duration::from_secs(10)).success());
}

/// Hindsight under libfaketime: the wall clock steps back 10 minutes;
/// sampling goes on at its cadence, and a dump lists the step in its
/// `clock_steps` metadata.
#[test]
fn hindsight_keeps_sampling_through_a_clock_step_and_its_dump_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = agent(0, Duration::ZERO);
    let config = hindsight_config(dir.path(), &fake);
    let rc = dir.path().join("faketime.rc");
    std::fs::write(&rc, "+0\n").unwrap();
    let lib = libfaketime();
    let env = [
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", rc.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    let role = Role::start(&["hindsight", config.to_str().unwrap()], &env);
    role.wait_for("running", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let before = fake.served.load(std::sync::atomic::Ordering::SeqCst);
    std::fs::write(&rc, "-600\n").unwrap();
    role.wait_for("stepped back", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    // ten reads a second went on while the clock was behind
    let during = fake.served.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(during >= 15, "{during} reads in about 2 s at 100 ms");
    role.signal(libc::SIGHUP);
    role.wait_for("wrote", Duration::from_secs(10));
    let written = dumps(&dir.path().join("out"));
    assert_eq!(written.len(), 1, "{written:?}");
    let file = read_parquet(&written[0]);
    let steps: serde_json::Value = serde_json::from_str(
        file["metadata"]["clock_steps"]
            .as_str()
            .expect("clock_steps"),
    )
    .unwrap();
    assert_eq!(steps.as_array().unwrap().len(), 1, "{steps}");
    assert!(
        steps[0]["step_ns"].as_i64().unwrap() < -599_000_000_000,
        "{steps}"
    );
    role.signal(libc::SIGTERM);
    assert!(role.wait(Duration::from_secs(10)).success());
}
