//! End-to-end tests of the agent: the real binary on an ephemeral port,
//! driven by real workloads, checked through its snapshots.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{run, Agent};

/// This thread's CPU time.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cores() -> i128 {
    std::thread::available_parallelism().unwrap().get() as i128
}

/// `cpu_usage` per CPU and in total, in nanoseconds: a thread burning CPU
/// moves busy time by what it burned, and all states together advance by
/// wall time times the number of CPUs.
#[test]
fn cpu_usage_follows_a_burning_thread() {
    let agent = Agent::start("", "");
    let before = agent.snapshot();
    let wall = Instant::now();
    let burned = std::thread::spawn(|| {
        let start = thread_cpu_ns();
        let mut x = 0u64;
        while thread_cpu_ns() - start < 600_000_000 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        thread_cpu_ns() - start
    })
    .join()
    .unwrap() as i128;
    let after = agent.snapshot();
    let elapsed = wall.elapsed().as_nanos() as i128;

    let delta = |state| {
        after.value("cpu_usage", &[("state", state)])
            - before.value("cpu_usage", &[("state", state)])
    };
    let busy = delta("user") + delta("nice") + delta("system");
    assert!(
        busy >= burned * 8 / 10,
        "busy {busy} ns < 80% of {burned} ns burned"
    );

    // guest time is already inside user/nice
    let all: i128 = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ]
    .iter()
    .map(|s| delta(s))
    .sum();
    let expected = elapsed * cores();
    assert!(
        all > expected * 7 / 10 && all < expected * 13 / 10,
        "all states advanced {all} ns over {elapsed} ns wall on {} CPUs",
        cores()
    );

    // per-CPU series exist for every CPU and sum to the total
    for id in 0..cores() {
        assert!(after
            .get("cpu_usage", &[("state", "user"), ("id", &id.to_string())])
            .is_some());
    }
    let per_cpu_user: i128 = (0..cores())
        .map(|id| after.value("cpu_usage", &[("state", "user"), ("id", &id.to_string())]))
        .sum();
    let total_user = after.value("cpu_usage", &[("state", "user")]);
    assert!(
        (per_cpu_user - total_user).abs() <= 2 * 10_000_000 * cores(),
        "{per_cpu_user} vs {total_user}"
    );
    assert_eq!(after.value("cpu_cores", &[]), cores());
}

fn meminfo_bytes(key: &str) -> i128 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    let kb: i128 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn memory_gauges_agree_with_proc_meminfo() {
    let agent = Agent::start("", "");
    let snap = agent.snapshot();
    assert_eq!(snap.value("memory_total", &[]), meminfo_bytes("MemTotal"));
    assert_eq!(
        snap.value("memory_swap_total", &[]),
        meminfo_bytes("SwapTotal")
    );
    for (metric, key) in [
        ("memory_available", "MemAvailable"),
        ("memory_free", "MemFree"),
        ("memory_cached", "Cached"),
    ] {
        let ours = snap.value(metric, &[]);
        let theirs = meminfo_bytes(key);
        assert!(
            (ours - theirs).abs() < 256 << 20,
            "{metric} {ours} vs {key} {theirs}"
        );
    }
}

/// Loopback TCP traffic of known size moves the `lo` interface counters and
/// the TCP segment counters by at least that much, and not wildly more.
#[test]
fn network_counters_follow_loopback_traffic() {
    const SIZE: usize = 16 << 20;
    let agent = Agent::start("", "");
    let before = agent.snapshot();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match conn.read(&mut buf).unwrap() {
                0 => break received,
                n => received += n,
            }
        }
    });
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let chunk = vec![0x5au8; 1 << 16];
    for _ in 0..SIZE / chunk.len() {
        conn.write_all(&chunk).unwrap();
    }
    drop(conn);
    assert_eq!(reader.join().unwrap(), SIZE);

    let after = agent.snapshot();
    let size = SIZE as i128;
    for direction in ["receive", "transmit"] {
        let labels = [("direction", direction), ("interface", "lo")];
        let bytes = after.value("network_bytes", &labels) - before.value("network_bytes", &labels);
        assert!(
            bytes >= size && bytes < size * 12 / 10,
            "lo {direction} bytes moved {bytes} for {size}"
        );
        let packets =
            after.value("network_packets", &labels) - before.value("network_packets", &labels);
        assert!(
            packets >= size / 65536,
            "lo {direction} packets moved {packets}"
        );
    }
    let segments = |s: &common::Snap| s.value("tcp_segments", &[("direction", "transmit")]);
    assert!(segments(&after) - segments(&before) >= size / 65536);
    let opens = |s: &common::Snap| s.value("tcp_active_opens", &[]);
    assert!(opens(&after) - opens(&before) >= 1);
}

/// The binary endpoint decodes with metriken-exposition (done by `snapshot()`)
/// and carries the same series as the JSON endpoint.
#[test]
fn binary_and_json_snapshots_agree() {
    let agent = Agent::start("ttl = \"30s\"", "");
    let snap = agent.snapshot();
    let json = agent.get_json("/metrics/json");
    let json_time = std::time::UNIX_EPOCH
        + Duration::new(
            json["systemtime"]["secs_since_epoch"].as_u64().unwrap(),
            json["systemtime"]["nanos_since_epoch"].as_u64().unwrap() as u32,
        );
    // within the TTL both endpoints serve the same snapshot
    assert_eq!(json_time, snap.systemtime);
    let json_count =
        json["counters"].as_array().unwrap().len() + json["gauges"].as_array().unwrap().len();
    assert_eq!(json_count, snap.entries.len());
    assert_eq!(json["metadata"]["source"], "rezolus");
    for entry in json["counters"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        assert!(
            name.starts_with(entry["metadata"]["metric"].as_str().unwrap()),
            "{name}"
        );
    }
}

#[test]
fn samplers_endpoint_tells_the_truth() {
    let agent = Agent::start("", "[samplers.memory_vmstat]\nenabled = false\n");
    let status = agent.get_json("/samplers");
    let snap = agent.snapshot();
    let emitted = snap.metrics();
    let listed: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let registered: Vec<&str> = rezolus::samplers::registry()
        .iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, registered);

    for sampler in status.as_array().unwrap() {
        let name = sampler["name"].as_str().unwrap();
        let state = sampler["state"].as_str().unwrap();
        // the metrics only this sampler declares (several samplers share
        // e.g. perf_group_time_enabled)
        let declared_by = |metric: &str| {
            rezolus::samplers::registry()
                .iter()
                .filter(|s| (s.metrics)().iter().any(|d| d.name == metric))
                .count()
        };
        let metrics: Vec<&str> = (rezolus::samplers::find(name).unwrap().metrics)()
            .iter()
            .map(|d| d.name)
            .filter(|m| declared_by(m) == 1)
            .collect();
        let present = metrics.iter().any(|m| emitted.contains(m));
        let needs_pmu = sampler["source"]
            .as_str()
            .unwrap()
            .contains("needs a hardware PMU");
        if name == "memory_vmstat" {
            assert_eq!(state, "disabled");
            assert!(!present, "disabled sampler's metrics are served");
        } else if needs_pmu && !common::has_hardware_pmu() {
            // checked in detail by tests/perf.rs
            assert_eq!(state, "unsupported", "{sampler}");
            assert!(sampler["reason"].as_str().is_some_and(|r| !r.is_empty()));
            assert!(!present, "unsupported sampler's metrics are served");
        } else {
            assert_eq!(state, "active", "{sampler}");
            assert!(sampler.get("reason").is_none());
            assert!(
                present,
                "{name} is active but none of {metrics:?} is served"
            );
        }
    }
}

/// Every metric the agent serves is in docs/METRICS.md, and so is every
/// metric any sampler declares.
#[test]
fn every_metric_is_documented() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md")).unwrap();
    let documented = |m: &str| docs.contains(&format!("| `{m}` |"));
    let agent = Agent::start("", "");
    for metric in agent.snapshot().metrics() {
        assert!(
            documented(metric),
            "{metric} is emitted but not in docs/METRICS.md"
        );
    }
    for spec in rezolus::samplers::registry() {
        for def in (spec.metrics)() {
            assert!(
                documented(def.name),
                "{} ({}) is not in docs/METRICS.md",
                def.name,
                spec.name
            );
        }
    }
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let agent = Agent::start("", "");
        let status = agent.stop(signal);
        assert!(status.success(), "exit after signal {signal}: {status:?}");
    }
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_string())
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
    assert!(out.stdout.is_empty(), "stdout not empty");
}

#[test]
fn bad_config_is_a_clear_error() {
    fails_with(
        &["/no/such/agent.toml"],
        &["/no/such/agent.toml", "No such file"],
    );
    let (_d, path) = write_config("[general]\nlisten = \"127.0.0.1:0\"\nttl = 10ms\n");
    fails_with(&[&path], &[&path, "line 3"]);
    let (_d, path) = write_config("[general]\nlisen = \"127.0.0.1:0\"\n");
    fails_with(&[&path], &[&path, "lisen"]);
    let (_d, path) = write_config("[samplers.cpu_usge]\nenabled = false\n");
    fails_with(&["agent", &path], &["samplers.cpu_usge"]);
    let (_d, path) = write_config("[general]\nttl = \"fast\"\n");
    fails_with(&[&path], &["ttl", "fast"]);
}

/// Another role's config given to the agent names that role and the
/// command to run.
#[test]
fn another_roles_config_names_its_role() {
    fails_with(
        &["config/exporter.toml"],
        &[
            "config/exporter.toml looks like an exporter config (it sets ",
            "`general.source`",
            "`prometheus`",
            "run `rezolus exporter config/exporter.toml`",
        ],
    );
    fails_with(
        &["agent", "config/hindsight.toml"],
        &[
            "config/hindsight.toml looks like a hindsight config",
            "`general.output`",
            "run `rezolus hindsight config/hindsight.toml`",
        ],
    );
    fails_with(
        &["exporter", "config/hindsight.toml"],
        &[
            "looks like a hindsight config",
            "run `rezolus hindsight config/hindsight.toml`",
        ],
    );
}

#[test]
fn address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (_d, path) = write_config(&format!("[general]\nlisten = \"{addr}\"\n"));
    fails_with(&[&path], &[&addr, "general.listen"]);
}

#[test]
fn cli_forms() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rezolus {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("agent") && help.contains("CONFIG"),
        "{help}"
    );
    let out = run(&[]);
    assert!(!out.status.success());
}

#[test]
fn root_identifies_the_agent() {
    let agent = Agent::start("", "");
    let body = String::from_utf8(agent.get("/")).unwrap();
    assert!(
        body.starts_with(&format!("rezolus {}", env!("CARGO_PKG_VERSION"))),
        "{body}"
    );
}
