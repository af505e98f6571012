//! Snapshot cost benchmark (`cargo bench --bench snapshot`).
//!
//! 1. In process: time to refresh every sampler and encode the msgpack
//!    snapshot, over many iterations.
//! 2. The real agent binary (ttl 0, so every request builds a snapshot): CPU
//!    time per snapshot served over HTTP, from the process's own accounting,
//!    and its resident memory.
//! 3. The same measurement, in the same run, for Debian's
//!    `prometheus-node-exporter` limited to the collectors that read the same
//!    sources (cpu, meminfo, vmstat, netdev, netstat, diskstats), when it is
//!    installed.
//! 4. The exporter's work per interval, in process: decode the agent's
//!    snapshot and render the Prometheus text (summaries; then summaries
//!    and full histograms).
//!
//! 5. 1000 live cgroups (made for the run under the cgroup2 mount, root
//!    only): the `cgroup_cpu` sampler alone, then with the per-cgroup counts
//!    of the `syscall` and `scheduler_runqueue` samplers after a process has
//!    made calls and context switches in every cgroup (so each has its
//!    slots and series); per snapshot between hierarchy walks, and with a
//!    walk at every snapshot.
//!
//! Environment: `BENCH_REQUESTS` (default 2000).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{fetch_len, free_port, thread_cpu, us, usage, Cgroups, Usage};
use rezolus::agent::collector::Collector;
use rezolus::agent::config::Config;
use rezolus::samplers::SamplerContext;

fn main() {
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    in_process(requests);
    cgroups_in_process(1000, requests / 4);
    exporter_in_process(requests, "");
    exporter_in_process(requests, "[prometheus]\nhistograms = true\n");
    let ours = over_http("rezolus agent", spawn_agent, "/metrics/binary", requests);
    let peer = which("prometheus-node-exporter").map(|path| {
        over_http(
            "node_exporter (same sources)",
            |port| spawn_node_exporter(&path, port),
            "/metrics",
            requests,
        )
    });
    match peer {
        Some(peer) => println!(
            "\nratio rezolus/node_exporter: CPU per snapshot {:.2}x, RSS {:.2}x",
            ours.cpu_per_request_us / peer.cpu_per_request_us,
            ours.rss_mb / peer.rss_mb
        ),
        None => println!("\n(prometheus-node-exporter not installed: no peer comparison; `apt-get install prometheus-node-exporter`)"),
    }
}

fn in_process(iterations: usize) {
    let mut collector = Collector::from_config(&Config::default(), &SamplerContext::default());
    for _ in 0..50 {
        collector.collect();
    }
    let mut times = Vec::with_capacity(iterations);
    let mut series = 0;
    let mut bytes = 0;
    let cpu_start = thread_cpu();
    for _ in 0..iterations {
        let start = Instant::now();
        let snapshot = collector.collect();
        let encoded = snapshot.to_msgpack().expect("encode");
        times.push(start.elapsed());
        series = snapshot.counters.len() + snapshot.gauges.len() + snapshot.histograms.len();
        bytes = encoded.len();
    }
    let cpu = thread_cpu() - cpu_start;
    times.sort();
    let mean = times.iter().sum::<Duration>() / iterations as u32;
    println!("in-process snapshot build + msgpack encode ({series} series, {bytes} bytes), {iterations} iterations:");
    println!(
        "  wall mean {:.1} us, p50 {:.1} us, p99 {:.1} us; CPU {:.1} us per snapshot",
        us(mean),
        us(times[iterations / 2]),
        us(times[iterations * 99 / 100]),
        us(cpu / iterations as u32)
    );
}

/// `cgroup_cpu` alone over `count` cgroups made for the run.
fn cgroups_in_process(count: usize, iterations: usize) {
    let Some(cgroups) = Cgroups::make(count) else {
        return;
    };
    let cpu = "[samplers.cgroup_cpu]\nenabled = true\nscan_interval_ms = {interval}\n";
    let bpf = "[samplers.syscall]\nenabled = true\ncgroup_scan_interval_ms = {interval}\n\
               [samplers.scheduler_runqueue]\nenabled = true\ncgroup_scan_interval_ms = {interval}\n";
    for (samplers, config) in [
        ("cgroup_cpu", cpu.to_string()),
        (
            "cgroup_cpu, syscall, scheduler_runqueue",
            format!("{cpu}{bpf}"),
        ),
    ] {
        for (label, interval) in [
            ("between walks", 3_600_000),
            ("scanning at every snapshot, a walk only after a change", 0),
        ] {
            let config = Config::parse(&format!(
                "[defaults]\nenabled = false\n{}",
                config.replace("{interval}", &interval.to_string())
            ))
            .expect("config");
            let mut collector = Collector::from_config(&config, &SamplerContext::default());
            if config.samplers.contains_key("syscall") {
                cgroups.visit();
            }
            // the first walk names the slots
            collector.collect();
            let cpu_start = thread_cpu();
            let mut series = 0;
            for _ in 0..iterations {
                let snapshot = collector.collect();
                let _ = snapshot.to_msgpack().expect("encode");
                series = snapshot.counters.len() + snapshot.gauges.len();
            }
            let cpu = thread_cpu() - cpu_start;
            println!(
                "{samplers} with {count} cgroups, {label} ({series} series): CPU {:.1} us per snapshot (build + encode)",
                us(cpu / iterations as u32)
            );
        }
    }
    // the cgroups above are empty, and cgroup_cpu reads an empty cgroup's
    // cpu.stat only after it changes: now with a task in each
    let sleepers = cgroups.populate();
    // the sleepers are in place once every cgroup says so
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cgroups.children.iter().any(|c| {
        !std::fs::read_to_string(c.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "sleepers not in their cgroups"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let config = Config::parse(&format!(
        "[defaults]\nenabled = false\n{}",
        cpu.replace("{interval}", "3600000")
    ))
    .expect("config");
    let mut collector = Collector::from_config(&config, &SamplerContext::default());
    collector.collect();
    let cpu_start = thread_cpu();
    for _ in 0..iterations {
        let _ = collector.collect().to_msgpack().expect("encode");
    }
    let cpu = thread_cpu() - cpu_start;
    println!(
        "cgroup_cpu with {count} cgroups, a sleeping task in each, between walks: CPU {:.1} us per snapshot (build + encode)",
        us(cpu / iterations as u32)
    );
    drop(sleepers);
}

fn exporter_in_process(iterations: usize, config: &str) {
    use rezolus::exporter::config::Config as ExporterConfig;
    use rezolus::exporter::state::{Options, State};
    use rezolus::snapshot::Received;
    let mut collector = Collector::from_config(&Config::default(), &SamplerContext::default());
    let config = ExporterConfig::parse(config).expect("exporter config");
    let mut state = State::new(Options::from_config(&config));
    let (mut decode, mut render) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0;
    for _ in 0..iterations {
        let encoded = collector.collect().to_msgpack().expect("encode");
        let start = thread_cpu();
        let received = Received::from_msgpack(&encoded).expect("decode");
        let decoded = thread_cpu();
        state.observe(Ok(received), true);
        bytes = state.rendered().len();
        render += thread_cpu() - decoded;
        decode += decoded - start;
    }
    let histograms = if config.prometheus.histograms {
        " + full histograms"
    } else {
        ""
    };
    println!(
        "exporter, in process (summaries{histograms}; {bytes} bytes of text): CPU per interval {:.1} us decode + {:.1} us render",
        us(decode / iterations as u32),
        us(render / iterations as u32)
    );
}

struct HttpResult {
    cpu_per_request_us: f64,
    rss_mb: f64,
}

fn over_http(label: &str, spawn: impl Fn(u16) -> Child, path: &str, requests: usize) -> HttpResult {
    let port = free_port();
    let mut child = spawn(port);
    let url = format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&url).call().is_err() {
        assert!(Instant::now() < deadline, "{label} did not start");
        assert!(child.try_wait().unwrap().is_none(), "{label} exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = common::client();
    let fetch = || fetch_len(&client, &url);
    for _ in 0..50 {
        fetch();
    }
    let pid = child.id();
    let cpu_before = usage(pid).cpu;
    let start = Instant::now();
    let mut body = 0;
    for _ in 0..requests {
        body = fetch();
    }
    let elapsed = start.elapsed();
    let Usage { rss, hwm, cpu, .. } = usage(pid);
    let cpu = cpu - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    let result = HttpResult {
        cpu_per_request_us: us(cpu) / requests as f64,
        rss_mb: rss as f64 / (1 << 20) as f64,
    };
    println!(
        "{label}: {requests} requests of {path} ({body} bytes each) in {:.2} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  CPU per snapshot {:.1} us (process user+system); RSS {:.1} MB (peak {:.1} MB)",
        result.cpu_per_request_us,
        result.rss_mb,
        hwm as f64 / (1 << 20) as f64
    );
    result
}

fn spawn_agent(port: u16) -> Child {
    let dir = std::env::temp_dir().join(format!("rezolus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[general]\nlisten = \"127.0.0.1:{port}\"\nttl = \"0s\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_rezolus"))
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn rezolus")
}

fn spawn_node_exporter(path: &str, port: u16) -> Child {
    let mut args = vec![
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--collector.disable-defaults".into(),
    ];
    for c in ["cpu", "meminfo", "vmstat", "netdev", "netstat", "diskstats"] {
        args.push(format!("--collector.{c}"));
    }
    Command::new(path)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node_exporter")
}

fn which(name: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).is_file())
}
