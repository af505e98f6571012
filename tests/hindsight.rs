//! `rezolus hindsight` against a scripted agent: SIGHUP and HTTP dumps read
//! back with pyarrow, a SIGKILL and restart, damaged slots, wrap-around,
//! snapshots larger than a slot, and bad config.

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
    wait_log(&hs, "wrote");
    let file = read_parquet(&dir.path().join("hindsight.parquet"));
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
    let file = read_parquet(&dir.path().join("hindsight.parquet"));
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
    let file = dump_via_http(&hs, "", dir.path());
    let requests = column_u64(&file, "test_requests");
    let served = agent.served.load(Ordering::SeqCst);
    assert_eq!(requests.len(), 10);
    assert!(
        requests[0] >= served.saturating_sub(12),
        "{requests:?} of {served}"
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
