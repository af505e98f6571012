//! `rezolus status`: the agent's state in a table or JSON, exit statuses
//! for an agent down or a sampler failed, and `--cost` measuring the BPF
//! programs with the kernel's run-time statistics.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Agent, BIN};
use serde_json::Value;

fn status(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("status").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// VmRSS of `pid`, in bytes, read by the test itself.
fn vm_rss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The table and the JSON say what /samplers says; the table lists each
/// active sampler's absent metrics under it, grouped by reason
/// (scheduler_runqueue on its compatibility path has no per-cgroup sums).
#[test]
fn status_shows_the_agent_and_exits_zero() {
    let agent = Agent::start("", &common::on_path("scheduler_runqueue", "compat"));
    let addr = agent.addr.to_string();
    // 5 requests, each its own snapshot (ttl 0)
    for _ in 0..5 {
        agent.get("/metrics/binary");
    }
    let (code, stdout, stderr) = status(&["--json", &addr]);
    assert_eq!(code, 0, "{stderr}");
    let s: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["up"], true);
    assert_eq!(s["pid"], agent.pid());
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["snapshots"].as_u64().unwrap() >= 5, "{s}");
    assert!(s["snapshot_cpu_ns_mean"].as_u64().unwrap() > 0, "{s}");
    let rss = s["rss_bytes"].as_f64().unwrap();
    let theirs = vm_rss(agent.pid()) as f64;
    assert!(
        (rss - theirs).abs() / theirs < 0.25,
        "rss {rss} vs VmRSS {theirs}"
    );
    // the samplers and their states are /samplers' own
    let samplers = agent.get_json("/samplers");
    let names = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].to_string(), s["state"].to_string()))
            .collect()
    };
    assert_eq!(names(&s["samplers"]), names(&samplers));

    // the table says the same
    let (code, table, _) = status(&[&addr]);
    assert_eq!(code, 0);
    assert!(table.starts_with(&format!(
        "rezolus agent {} at http://{addr} (pid {})",
        env!("CARGO_PKG_VERSION"),
        agent.pid()
    )));
    for sampler in samplers.as_array().unwrap() {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == sampler["name"].as_str())
            .unwrap_or_else(|| panic!("{} missing from:\n{table}", sampler["name"]));
        assert!(line.contains(sampler["state"].as_str().unwrap()), "{line}");
    }
    let mut absent = 0;
    for sampler in samplers.as_array().unwrap() {
        let name = sampler["name"].as_str().unwrap();
        // the sampler's lines: its own, then those indented under it
        let lines: Vec<&str> = table
            .lines()
            .skip_while(|l| l.split_whitespace().next() != Some(name))
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .collect();
        for entry in sampler["absent"].as_array().into_iter().flatten() {
            let (metric, reason) = (
                entry["metric"].as_str().unwrap(),
                entry["reason"].as_str().unwrap(),
            );
            assert!(
                lines.iter().any(|l| {
                    let l = l.trim_start();
                    l.starts_with("absent: ") && l.contains(metric) && l.ends_with(reason)
                }),
                "{name}: {metric} ({reason}) not listed in:\n{table}"
            );
            absent += 1;
        }
    }
    assert!(
        absent >= 4,
        "scheduler_runqueue's per-cgroup sums: {absent}"
    );
    assert!(table.contains("capabilities kept: CAP_PERFMON"), "{table}");
}

#[test]
fn status_exits_1_when_the_agent_is_down_and_3_when_a_sampler_failed() {
    // nothing listens on a port just freed
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("127.0.0.1:{port}");
    let (code, stdout, stderr) = status(&[&down]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not answering"), "{stderr}");
    let (code, stdout, _) = status(&["--json", &down]);
    assert_eq!(code, 1);
    let s: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["up"], false);
    assert!(s["error"].as_str().unwrap().contains("refused"), "{s}");

    // a sampler that fails (its file is a directory), beside one that runs
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("proc/diskstats")).unwrap();
    std::fs::create_dir_all(root.path().join("sys/block")).unwrap();
    std::fs::write(root.path().join("proc/meminfo"), "MemTotal: 4 kB\n").unwrap();
    std::fs::write(root.path().join("proc/stat"), "cpu  1 2 3 4 5 6 7 8 9 10\n").unwrap();
    let agent = Agent::start(
        &format!("root = {:?}\n", root.path().display().to_string()),
        "[defaults]\nenabled = false\n[samplers.blockio_devices]\nenabled = true\n\
         [samplers.memory_meminfo]\nenabled = true\n",
    );
    assert_eq!(
        common::sampler_status(&agent, "blockio_devices")["state"],
        "failed"
    );
    let (code, stdout, stderr) = status(&[&agent.addr.to_string()]);
    assert_eq!(code, 3, "{stdout}{stderr}");
    assert!(
        stderr.contains("failed samplers: blockio_devices"),
        "{stderr}"
    );

    // bad arguments are usage errors
    let (code, _, stderr) = status(&["--cost", "1ms", &agent.addr.to_string()]);
    assert_eq!(code, 2, "{stderr}");
    for bad in [
        "not a url at all",
        "127.0.0.1",
        "127.0.0.1:99999",
        "127.0.0.1:4241?x=1",
    ] {
        let (code, _, stderr) = status(&[bad]);
        assert_eq!(code, 2, "{bad}: {stderr}");
        assert!(stderr.contains("not an agent address"), "{bad}: {stderr}");
    }

    // a server that answers /status with JSON that is not an agent's
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = server.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in server.incoming().take(2) {
            use std::io::{Read, Write};
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = "{\"status\": \"ok\"}";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let (code, stdout, stderr) = status(&[&other]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("not a Rezolus agent's status"), "{stderr}");
}

/// `--cost` turns the kernel's BPF statistics on for its duration only, and
/// reports each program's events per second: the syscall sampler's
/// `sys_enter` program ran at least once per call this test made.
#[test]
fn status_cost_measures_the_bpf_programs() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
    let _serial = common::serial();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.syscall]\nenabled = true\n\
         [samplers.scheduler_runqueue]\nenabled = true\n",
    );
    let addr = agent.addr.to_string();
    let measuring = std::thread::spawn({
        let addr = addr.clone();
        move || status(&["--json", "--cost", "2s", &addr])
    });
    // calls while it measures: 2 s of getppid, counted here
    let deadline = std::time::Instant::now() + Duration::from_millis(2600);
    let mut calls = 0u64;
    let mut seen_in_samplers = false;
    while std::time::Instant::now() < deadline {
        for _ in 0..10_000 {
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        calls += 10_000;
        if !seen_in_samplers && calls % 200_000 == 0 {
            // the same figures in /samplers while it runs
            seen_in_samplers = agent
                .get_json("/samplers")
                .as_array()
                .unwrap()
                .iter()
                .any(|s| {
                    s["name"] == "syscall"
                        && s["bpf_cost"]["events_per_second"].as_f64() > Some(0.0)
                });
        }
    }
    let (code, stdout, stderr) = measuring.join().unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(seen_in_samplers, "no bpf_cost in /samplers while measuring");
    let s: Value = serde_json::from_str(&stdout).unwrap();
    let programs = s["cost"]["programs"].as_array().unwrap();
    let enter = programs
        .iter()
        .find(|p| p["sampler"] == "syscall" && p["program"] == "syscall_enter")
        .unwrap_or_else(|| panic!("{programs:?}"));
    // the window asked for, measured by the command itself
    let seconds = s["cost"]["seconds"].as_f64().unwrap();
    assert!((2.0..2.5).contains(&seconds), "{seconds}");
    assert_eq!(enter["seconds"], s["cost"]["seconds"]);
    let events = enter["events_per_second"].as_f64().unwrap() * seconds;
    // the test made `calls` calls over about 2.6 s, most within the window
    let in_window = calls as f64 * (seconds - 0.5).max(0.0) / 2.6;
    assert!(
        events >= in_window,
        "{events} events, {calls} calls: {enter}"
    );
    let ns = enter["ns_per_event"].as_f64().unwrap();
    assert!(ns > 0.0 && ns < 100_000.0, "{enter}");
    assert!(enter["cpu_percent"].as_f64().unwrap() > 0.0, "{enter}");
    assert!(programs
        .iter()
        .any(|p| p["sampler"] == "scheduler_runqueue" && p["program"] == "sched_switch"));
    // a second measurement reports its own window, not one from the first
    std::thread::sleep(Duration::from_millis(1500));
    let (code, stdout, stderr) = status(&["--json", "--cost", "1s", &addr]);
    assert_eq!(code, 0, "{stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    let seconds = again["cost"]["seconds"].as_f64().unwrap();
    assert!((1.0..1.5).contains(&seconds), "{seconds}");
    // and the statistics are off again: the figures leave /samplers
    let off = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !agent
            .get_json("/samplers")
            .as_array()
            .unwrap()
            .iter()
            .any(|s| !s["bpf_cost"].is_null())
    });
    // (the kernel's statistics are global: another process holding them on,
    // e.g. a second `status --cost`, would keep the programs moving)
    assert!(off, "the statistics stayed on");
}

#[test]
fn status_cost_needs_root() {
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.syscall]\nenabled = true\n",
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(BIN)
        .args(["status", "--cost", "1s", &agent.addr.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}
