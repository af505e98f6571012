//! `rezolus hindsight` against a scripted agent: SIGHUP and HTTP dumps read
//! back with pyarrow, a SIGKILL and restart, damaged slots, wrap-around,
//! snapshots larger than a slot, bad config, a ring on a (nearly) full
//! disk, a ring sized when the agent comes up late, and one file per dump.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::fake::FakeAgent;
use common::parquet::read_parquet;
use common::{run, Agent};
use rezolus::metrics::{MetricDef, Series};
use rezolus::snapshot::{Emitter, Snapshot};
use serde_json::Value;

static REQUESTS: MetricDef = MetricDef::counter("test_requests", "requests", "");
static NOISE: MetricDef = MetricDef::gauge("test_noise", "values", "").labels(&["id"]);

/// Request n serves counter n, and `noise(n)` gauges of incompressible
/// values.
fn agent_with(noise: fn(u64) -> u64) -> FakeAgent {
    let mut n = 0u64;
    FakeAgent::start(Box::new(move |now| {
        n += 1;
        let mut snap = Snapshot::new(now);
        let mut out = Emitter::new(&mut snap);
        out.counter(&Series::new(&REQUESTS, &[]), n);
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for i in 0..noise(n) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.gauge(&Series::new(&NOISE, &[("id", &i.to_string())]), x as i64);
        }
        snap
    }))
}

fn agent() -> FakeAgent {
    agent_with(|_| 0)
}

fn start(agent: &FakeAgent, dir: &std::path::Path, general: &str) -> Agent {
    Agent::hindsight(&format!(
        "source = \"{}\"\noutput = \"{}\"\n{general}",
        agent.addr,
        dir.join("hindsight.parquet").display()
    ))
}

fn wait_served(agent: &FakeAgent, n: u64) {
    agent.wait_served(n, Duration::from_secs(20))
}

fn wait_log(hs: &Agent, text: &str) {
    common::wait_line(&hs.log, text, Duration::from_secs(20))
}

/// Waits for the log line of a dump written (`wrote N snapshots to PATH (…`)
/// and returns its path.
fn wait_dump(hs: &Agent) -> std::path::PathBuf {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let line = hs
            .log
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("no dump written");
        if let Some(rest) = line.split(" snapshots to ").nth(1) {
            let path = rest.rsplit_once(" (").map_or(rest, |(p, _)| p);
            return path.into();
        }
    }
}

fn column_u64(file: &Value, name: &str) -> Vec<u64> {
    file["columns"][name]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no column {name}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn post(hs: &Agent, path: &str) -> Value {
    let url = format!("http://{}{path}", hs.addr);
    let mut response = ureq::post(&url).send_empty().expect("POST");
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

/// Dumps via GET /dump into a file and reads it.
fn dump_via_http(hs: &Agent, query: &str, dir: &std::path::Path) -> Value {
    let bytes = hs.get(&format!("/dump{query}"));
    assert!(
        bytes.starts_with(b"PAR1"),
        "not Parquet: {:?}",
        &bytes[..bytes.len().min(200)]
    );
    let path = dir.join("http.parquet");
    std::fs::write(&path, &bytes).unwrap();
    read_parquet(&path)
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// SIGHUP writes the whole buffer, oldest to newest, while sampling goes on.
#[test]
fn sighup_writes_the_buffer_oldest_first() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let hs = start(
        &agent,
        dir.path(),
        "interval = \"100ms\"\nduration = \"10s\"",
    );
    wait_served(&agent, 20);
    unsafe { libc::kill(hs.pid() as i32, libc::SIGHUP) };
    let path = wait_dump(&hs);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("hindsight-")
            && name.ends_with("Z.parquet")
            && path.starts_with(dir.path()),
        "{path:?}"
    );
    let file = read_parquet(&path);
    let rows = file["rows"].as_u64().unwrap();
    assert!(rows >= 19, "{rows} rows");
    let requests = column_u64(&file, "test_requests");
    // consecutive: nothing lost, nothing repeated, in order (request 1 sized the slots)
    assert!(
        requests.windows(2).all(|w| w[1] == w[0] + 1),
        "{requests:?}"
    );
    let timestamps = column_u64(&file, "timestamp");
    for pair in timestamps.windows(2) {
        let step = pair[1] - pair[0];
        assert!((50_000_000..250_000_000).contains(&step), "step {step}");
    }
    // sampling went on
    let served = agent.served.load(Ordering::SeqCst);
    wait_served(&agent, served + 3);
    assert!(hs.stop(libc::SIGTERM).success());
}

/// The ring survives SIGKILL: after a restart, a dump holds the snapshots
/// from before the kill and the new ones after it.
#[test]
fn the_ring_survives_sigkill() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let general = "interval = \"100ms\"\nduration = \"30s\"";
    let hs = start(&agent, dir.path(), general);
    wait_served(&agent, 12);
    unsafe { libc::kill(hs.pid() as i32, libc::SIGKILL) };
    let killed_at = agent.served.load(Ordering::SeqCst);
    drop(hs);
    let hs = start(&agent, dir.path(), general);
    wait_served(&agent, killed_at + 10);
    let reply = post(&hs, "/dump/file");
    let file = read_parquet(std::path::Path::new(reply["path"].as_str().unwrap()));
    assert_eq!(reply["snapshots"].as_u64(), file["rows"].as_u64());
    let requests = column_u64(&file, "test_requests");
    assert!(
        requests.iter().filter(|&&r| r < killed_at).count() >= 8,
        "{requests:?}"
    );
    assert!(
        requests.iter().filter(|&&r| r > killed_at + 1).count() >= 5,
        "{requests:?}"
    );
    assert!(requests.windows(2).all(|w| w[0] < w[1]), "{requests:?}");
}

/// Bytes flipped in three slots: the dump skips exactly those snapshots
/// (and says so), and serves every other one.
#[test]
fn damaged_slots_are_skipped_exactly() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let general = "interval = \"100ms\"\nduration = \"60s\"";
    let hs = start(&agent, dir.path(), general);
    wait_served(&agent, 15);
    let status = hs.get_json("/status");
    let slot_bytes = status["slot_bytes"].as_u64().unwrap();
    assert!(hs.stop(libc::SIGTERM).success());
    let end = now_secs();
    // what the ring holds, undamaged: restart with the agent's history
    // only, dumping up to the stop
    let hs = start(&agent, dir.path(), general);
    let before = column_u64(
        &dump_via_http(&hs, &format!("?end={end}"), dir.path()),
        "test_requests",
    );
    assert!(hs.stop(libc::SIGTERM).success());
    assert!(before.len() >= 12, "{before:?}");

    let ring = dir.path().join("hindsight.parquet.ring");
    let mut bytes = std::fs::read(&ring).unwrap();
    for slot in [2u64, 5, 7] {
        let at = 4096 + slot * slot_bytes + 28 + 3;
        bytes[at as usize] ^= 0x5a;
    }
    std::fs::write(&ring, &bytes).unwrap();

    let hs = start(&agent, dir.path(), general);
    let status = hs.get_json("/status");
    assert_eq!(status["damaged_slots"], 3, "{status}");
    let after = column_u64(
        &dump_via_http(&hs, &format!("?end={end}"), dir.path()),
        "test_requests",
    );
    let expected: Vec<u64> = before
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 5, 7].contains(i))
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(after, expected);
    wait_log(&hs, "3 damaged slots");
}

/// Past its size the ring keeps only the newest `duration`; `?last=`
/// narrows a dump further, and /status describes the ring.
#[test]
fn the_ring_wraps_to_the_newest_duration() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let hs = start(
        &agent,
        dir.path(),
        "interval = \"100ms\"\nduration = \"1s\"",
    );
    wait_served(&agent, 35);
    let status = hs.get_json("/status");
    assert_eq!(status["slots"], 10);
    assert_eq!(status["snapshots"], 10);
    assert_eq!(
        status["ring_bytes"].as_u64().unwrap(),
        4096 + 10 * status["slot_bytes"].as_u64().unwrap()
    );
    // The ring keeps polling while the dump is written, so the dump holds
    // the newest ten as of some moment between these two counts.
    let served_before = agent.served.load(Ordering::SeqCst);
    let file = dump_via_http(&hs, "", dir.path());
    let served_after = agent.served.load(Ordering::SeqCst);
    let requests = column_u64(&file, "test_requests");
    assert_eq!(requests.len(), 10);
    assert!(
        requests[0] + 12 >= served_before && requests[9] <= served_after,
        "{requests:?} between {served_before} and {served_after}"
    );
    assert!(
        requests.windows(2).all(|w| w[1] == w[0] + 1),
        "{requests:?}"
    );
    let last = column_u64(
        &dump_via_http(&hs, "?last=450ms", dir.path()),
        "test_requests",
    );
    assert!((3..=6).contains(&last.len()), "{last:?}");
    // bad queries are refused, not guessed at
    let url = format!("http://{}/dump?last=soon", hs.addr);
    assert!(ureq::get(&url).call().is_err());
}

/// Snapshots that outgrow the slot size chosen at start are split over
/// slots, not truncated: every value comes back.
#[test]
fn snapshots_larger_than_a_slot_are_split_not_truncated() {
    // request n carries 40 n incompressible gauges
    let agent = agent_with(|n| 40 * n);
    let dir = tempfile::tempdir().unwrap();
    let hs = start(
        &agent,
        dir.path(),
        "interval = \"100ms\"\nduration = \"30s\"",
    );
    wait_log(&hs, "spans");
    wait_served(&agent, 12);
    let file = dump_via_http(&hs, "", dir.path());
    let requests = column_u64(&file, "test_requests");
    assert!(
        requests.windows(2).all(|w| w[1] == w[0] + 1),
        "{requests:?}"
    );
    let columns = file["columns"].as_object().unwrap();
    for (row, n) in requests.iter().enumerate() {
        let present = columns
            .iter()
            .filter(|(k, _)| k.starts_with("test_noise"))
            .filter(|(_, c)| !c["values"][row].is_null())
            .count() as u64;
        assert_eq!(present, 40 * n, "row {row} (request {n})");
    }
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hindsight.toml");
    std::fs::write(
        &path,
        "[general]\ninterval = \"1s\"\nduration = \"100ms\"\n",
    )
    .unwrap();
    let out = run(&["hindsight", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("general.duration") && err.contains("hindsight.toml"),
        "{err}"
    );
}

/// Another role's config names its role and the command to run.
#[test]
fn an_agent_config_names_its_role() {
    let out = run(&["hindsight", "config/agent.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config/agent.toml looks like an agent config (it sets ")
            && err.contains("`samplers`")
            && err.contains("run `rezolus config/agent.toml`"),
        "{err}"
    );
    let out = run(&["hindsight", "config/exporter.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("run `rezolus exporter config/exporter.toml`"),
        "{err}"
    );
}

/// Each POST /dump/file (and SIGHUP) writes a new file; beyond
/// `keep_dumps` the oldest of them is deleted, and nothing else.
#[test]
fn every_dump_is_a_new_file_and_the_oldest_beyond_the_limit_go() {
    let agent = agent();
    let dir = tempfile::tempdir().unwrap();
    let unrelated = dir.path().join("hindsight-notes.parquet");
    std::fs::write(&unrelated, b"mine").unwrap();
    let hs = start(
        &agent,
        dir.path(),
        "interval = \"100ms\"\nduration = \"10s\"\nkeep_dumps = 2",
    );
    wait_served(&agent, 5);
    let first = post(&hs, "/dump/file");
    let first = std::path::PathBuf::from(first["path"].as_str().unwrap());
    let second = post(&hs, "/dump/file");
    let second = std::path::PathBuf::from(second["path"].as_str().unwrap());
    assert_ne!(first, second);
    // both complete, each a valid file; the second has at least as much
    let rows = |p: &std::path::Path| read_parquet(p)["rows"].as_u64().unwrap();
    assert!(rows(&first) >= 4 && rows(&second) >= rows(&first));
    assert!(!dir.path().join("hindsight.parquet").exists());
    // a third (by SIGHUP): the first, the oldest, is deleted
    unsafe { libc::kill(hs.pid() as i32, libc::SIGHUP) };
    // (the POSTs logged their files too)
    let third = std::iter::repeat_with(|| wait_dump(&hs))
        .find(|p| *p != first && *p != second)
        .unwrap();
    assert!(rows(&third) >= rows(&second));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while first.exists() {
        assert!(std::time::Instant::now() < deadline, "{first:?} kept");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(second.exists() && third.exists() && unrelated.exists());
    assert_eq!(std::fs::read(&unrelated).unwrap(), b"mine");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "{names:?}"); // 2 dumps, the ring, ours
}

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = std::ffi::CString::new(dir.path().to_str().unwrap()).unwrap();
        let options = std::ffi::CString::new(format!("size={bytes}")).unwrap();
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.path().to_str().unwrap()).unwrap();
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs `rezolus ARGS` for at most `limit`: its exit status and stderr, or
/// `None` if it was still running (then killed).
fn run_for(args: &[&str], limit: Duration) -> Option<(std::process::ExitStatus, String)> {
    let mut child = std::process::Command::new(common::BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return Some((status, err));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A ring larger than the free space is refused at start, naming the ring,
/// its size and the space free.
#[test]
fn a_ring_that_does_not_fit_is_refused_at_start() {
    let agent = agent();
    let fs = Tmpfs::mount(3 << 20);
    let config = fs.path().join("hindsight.toml");
    // 1200 slots of 4 KiB: 4.7 MiB
    std::fs::write(
        &config,
        format!(
            "[general]\nsource = \"{}\"\noutput = \"{}\"\ninterval = \"100ms\"\nduration = \"120s\"\n",
            agent.addr,
            fs.path().join("hs.parquet").display()
        ),
    )
    .unwrap();
    let (status, err) = run_for(
        &["hindsight", config.to_str().unwrap()],
        Duration::from_secs(20),
    )
    .expect("hindsight started with a ring larger than its disk");
    assert!(!status.success());
    let ring = fs.path().join("hs.parquet.ring");
    assert!(
        err.contains(&format!(
            "cannot reserve 4.7 MiB for the ring {}: ",
            ring.display()
        )) && err.contains("MiB free on that filesystem"),
        "{err}"
    );
    // nothing reserved is left behind
    assert!(!ring.exists());
}

/// With its ring reserved, filling the rest of the disk never stops
/// hindsight, nor makes it log an error per tick; a dump on the full disk
/// fails clearly and leaves nothing behind, then works once there is room.
#[test]
fn a_full_disk_never_stops_the_ring() {
    let agent = agent();
    let fs = Tmpfs::mount(3 << 20);
    let hs = start(
        &agent,
        fs.path(),
        "interval = \"100ms\"\nduration = \"30s\"",
    );
    wait_served(&agent, 5);
    // fill the rest of the filesystem
    let filler = fs.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x55u8; 64 << 10];
        let err = loop {
            if let Err(e) = f.write_all(&block).and_then(|_| f.sync_data()) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    }
    let before = hs.get_json("/status")["snapshots"].as_u64().unwrap();
    let served = agent.served.load(Ordering::SeqCst);
    wait_served(&agent, served + 20);
    std::thread::sleep(Duration::from_millis(300));
    let after = hs.get_json("/status")["snapshots"].as_u64().unwrap();
    assert!(after >= before + 15, "{before} -> {after} snapshots");

    // a dump cannot be written: a clear error, no partial file
    let url = format!("http://{}/dump/file", hs.addr);
    match ureq::post(&url).send_empty() {
        Err(ureq::Error::StatusCode(500)) => {}
        other => panic!("dump on a full disk: {other:?}"),
    }
    let mut names: Vec<String> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["filler", "hindsight.parquet.ring"]);
    std::fs::remove_file(&filler).unwrap();
    let reply = post(&hs, "/dump/file");
    let file = read_parquet(std::path::Path::new(reply["path"].as_str().unwrap()));
    assert!(file["rows"].as_u64().unwrap() >= after);

    // the log: the failed dump once, with its cause once; never a ring error
    let log: Vec<String> = hs.log.try_iter().collect();
    let failed: Vec<&String> = log.iter().filter(|l| l.contains("dump failed")).collect();
    assert_eq!(failed.len(), 1, "{log:#?}");
    assert_eq!(
        failed[0].matches("No space left on device").count(),
        1,
        "{}",
        failed[0]
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("writing the ring") || l.contains("syncing the ring")),
        "{log:#?}"
    );
}

/// Started before the agent, hindsight waits for its first snapshot to
/// size the ring (not a 64 KiB guess), creating no ring meanwhile.
#[test]
fn the_ring_is_sized_from_the_agents_first_snapshot_when_it_comes_late() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("hindsight.parquet.ring");
    let late = {
        let ring = ring.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2500));
            assert!(!ring.exists(), "a ring was created before the agent was up");
            let listener = std::net::TcpListener::bind(addr).unwrap();
            let mut n = 0u64;
            FakeAgent::start_on(
                listener,
                Box::new(move |now| {
                    n += 1;
                    let mut snap = Snapshot::new(now);
                    Emitter::new(&mut snap).counter(&Series::new(&REQUESTS, &[]), n);
                    snap
                }),
            )
        })
    };
    let hs = Agent::hindsight(&format!(
        "source = \"{addr}\"\noutput = \"{}\"\ninterval = \"100ms\"\nduration = \"60s\"",
        dir.path().join("hindsight.parquet").display()
    ));
    let agent = late.join().expect("the late agent");
    wait_served(&agent, 5);
    let status = hs.get_json("/status");
    assert_eq!(status["slot_bytes"], 4096, "{status}");
    assert_eq!(status["ring_bytes"], 4096 + 600 * 4096, "{status}");
    assert_eq!(std::fs::metadata(&ring).unwrap().len(), 4096 + 600 * 4096);
    assert!(status["snapshots"].as_u64().unwrap() >= 3, "{status}");
}

/// SIGTERM while waiting for the agent stops hindsight cleanly.
#[test]
fn a_stop_signal_while_waiting_for_the_agent_stops_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hindsight.toml");
    std::fs::write(
        &config,
        format!(
            "[general]\nsource = \"{addr}\"\noutput = \"{}\"\n",
            dir.path().join("hs.parquet").display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(common::BIN)
        .args(["hindsight", config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("waiting for the agent"), "{err}");
    assert!(!dir.path().join("hs.parquet.ring").exists());
}
