//! Always-on cost at 10 Hz (`cargo bench --bench always_on`; root, for the
//! BPF samplers and the cgroups).
//!
//! 1. With 100 cgroups alive (each visited by a process that made a system
//!    call and a context switch in it, so the per-cgroup BPF series exist),
//!    the real agent with every sampler on (its default config) and real
//!    hindsight at `interval = "100ms"` reading it: each process's CPU, as a
//!    share of one core, over `BENCH_SECONDS` (default 30) after a warm-up,
//!    and each one's RSS. Hindsight is the agent's only client, so the agent
//!    serves 10 snapshots a second.
//! 2. A fresh snapshot over HTTP (`ttl = "0s"`, so each request builds one):
//!    the agent's CPU per snapshot, from its own accounting, over
//!    `BENCH_REQUESTS` (default 2000) requests.
//!    Then the same for each sampler alone (every other one off, the 100
//!    cgroups still alive), and for none (the HTTP request and an empty
//!    snapshot): which sampler the agent's CPU goes to, and the floor of a
//!    request. `BENCH_SAMPLER_REQUESTS` (default 300) requests each.
//! 3. Snapshot cost as CPUs grow: the agent with its procfs and sysfs
//!    samplers (those the registry lists as reading files) and `root` at a
//!    fixture tree of 2, 64 and 512 CPUs (made from
//!    `fixtures/vm6.18`, one `/proc/stat` line per CPU and the online list
//!    widened), CPU per snapshot over HTTP as in 2, and its series count.
//!
//! The targets of issue 19 are printed beside the figures. With
//! `BASELINE_BIN=path/to/rezolus` (another build, e.g. of an older commit),
//! every figure is measured for that binary too, in the same run, and
//! printed first.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fetch_len, start_agent_of, us, usage, wait_for, Cgroups, Reaped, BIN};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let seconds = env("BENCH_SECONDS", 30);
    let requests = env("BENCH_REQUESTS", 2000) as usize;
    let cgroups = Cgroups::make(100);
    if let Some(c) = &cgroups {
        c.visit();
    }
    let baseline = std::env::var("BASELINE_BIN").ok();
    let bins: Vec<(&str, &str)> = baseline
        .iter()
        .map(|b| ("baseline", b.as_str()))
        .chain([("this build", BIN)])
        .collect();
    for &(label, bin) in &bins {
        println!("[{label}: {bin}]");
        ten_hertz(bin, dir.path(), seconds);
    }
    for &(label, bin) in &bins {
        let (agent, port) = start_agent_of(bin, dir.path(), "ttl = \"0s\"", "");
        let (cpu, bytes) = per_snapshot(&agent, port, requests);
        println!(
            "[{label}] fresh snapshot over HTTP, every sampler, ttl 0 ({requests} requests, {bytes} bytes each): agent CPU {cpu:.0} us per snapshot (target: at most 300 us)"
        );
    }
    let each = env("BENCH_SAMPLER_REQUESTS", 300) as usize;
    by_sampler(BIN, dir.path(), each);
    drop(cgroups);
    for &(label, bin) in &bins {
        println!("[{label}]");
        cpu_curve(bin, dir.path(), requests);
    }
}

/// Part 1: agent and hindsight at 100 ms.
fn ten_hertz(bin: &str, dir: &Path, seconds: u64) {
    let (agent, port) = start_agent_of(bin, dir, "", "");
    let hs_port = common::free_port();
    let config = dir.join(format!("hindsight-{hs_port}.toml"));
    std::fs::write(
        &config,
        format!(
            "[general]\ninterval = \"100ms\"\nduration = \"5m\"\nsource = \"127.0.0.1:{port}\"\n\
             output = \"{}\"\nlisten = \"127.0.0.1:{hs_port}\"\n[log]\nlevel = \"warn\"\n",
            dir.join(format!("hindsight-{hs_port}.parquet")).display()
        ),
    )
    .expect("write hindsight's config");
    let hindsight = Reaped(
        Command::new(bin)
            .arg("hindsight")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn hindsight"),
    );
    wait_for(&format!("http://127.0.0.1:{hs_port}/status"), "hindsight");
    // warm-up: the ring made, allocations settled
    std::thread::sleep(Duration::from_secs(5));
    // hindsight's /status reads the ring: asked outside the window measured
    let status0 = hindsight_records(hs_port);
    let (a0, h0) = (usage(agent.pid()), usage(hindsight.pid()));
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let (a1, h1) = (usage(agent.pid()), usage(hindsight.pid()));
    let elapsed = started.elapsed().as_secs_f64();
    let written = hindsight_records(hs_port).saturating_sub(status0);
    let share = |cpu: Duration| cpu.as_secs_f64() / elapsed * 100.0;
    let (agent_share, hs_share) = (share(a1.cpu - a0.cpu), share(h1.cpu - h0.cpu));
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "agent at 10 snapshots/s + hindsight at 100 ms, every sampler, 100 cgroups, over {elapsed:.0} s ({written} snapshots written to the ring):"
    );
    println!(
        "  agent {agent_share:.2}% of a core, RSS {:.1} MB; hindsight {hs_share:.2}% of a core, RSS {:.1} MB; together {:.2}% (target: at most 0.5%, each under 10 MB)",
        mb(a1.rss),
        mb(h1.rss),
        agent_share + hs_share
    );
    println!(
        "  RSS in parts: agent {:.1} MB anonymous + {:.1} MB of mapped files (code, libraries, BPF maps); hindsight {:.1} + {:.1} MB",
        mb(a1.anon),
        mb(a1.file),
        mb(h1.anon),
        mb(h1.file)
    );
}

/// Snapshots in hindsight's ring, from its `/status`.
fn hindsight_records(port: u16) -> u64 {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/status"))
        .call()
        .expect("hindsight /status")
        .body_mut()
        .read_to_string()
        .expect("hindsight /status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("hindsight /status JSON");
    status["snapshots"].as_u64().unwrap_or(0)
}

/// The agent's CPU per request of `/metrics/binary`, in us, and the body
/// size.
fn per_snapshot(agent: &Reaped, port: u16, requests: usize) -> (f64, usize) {
    let url = format!("http://127.0.0.1:{port}/metrics/binary");
    let client = common::client();
    let fetch = || fetch_len(&client, &url);
    for _ in 0..50 {
        fetch();
    }
    let before = usage(agent.pid()).cpu;
    let mut bytes = 0;
    for _ in 0..requests {
        bytes = fetch();
    }
    let cpu = usage(agent.pid()).cpu - before;
    (us(cpu) / requests as f64, bytes)
}

/// Part 2, by sampler: each sampler alone, fresh snapshots over HTTP, sorted
/// by cost; samplers not active here are listed with their state.
fn by_sampler(bin: &str, dir: &Path, requests: usize) {
    println!("[this build] fresh snapshot by sampler (each alone, ttl 0, {requests} requests each): agent CPU per snapshot");
    let (agent, port) = start_agent_of(bin, dir, "ttl = \"0s\"", "[defaults]\nenabled = false\n");
    std::thread::sleep(Duration::from_millis(1500));
    let (floor, floor_bytes) = per_snapshot(&agent, port, requests);
    drop(agent);
    let mut rows = Vec::new();
    let mut inactive = Vec::new();
    for spec in rezolus::samplers::registry() {
        let extra = format!(
            "[defaults]\nenabled = false\n[samplers.{}]\nenabled = true\n",
            spec.name
        );
        let (agent, port) = start_agent_of(bin, dir, "ttl = \"0s\"", &extra);
        // past the start-up work (a cgroup walk, first reads)
        std::thread::sleep(Duration::from_millis(1500));
        let state = sampler_state(port, spec.name);
        if state != "active" {
            inactive.push(format!("{} ({state})", spec.name));
            continue;
        }
        let (cpu, bytes) = per_snapshot(&agent, port, requests);
        rows.push((spec.name, cpu, bytes));
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  {:<22} {floor:>6.0} us ({floor_bytes} bytes): the request and an empty snapshot",
        "none"
    );
    let mut sum = 0.0;
    for (name, cpu, bytes) in &rows {
        println!(
            "  {name:<22} {cpu:>6.0} us ({bytes} bytes), {:.0} us above none",
            cpu - floor
        );
        sum += cpu - floor;
    }
    println!(
        "  sum above none: {sum:.0} us; not active here: {}",
        inactive.join(", ")
    );
}

/// A sampler's state in the agent's `/samplers`.
fn sampler_state(port: u16, name: &str) -> String {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/samplers"))
        .call()
        .expect("agent /samplers")
        .body_mut()
        .read_to_string()
        .expect("agent /samplers");
    let list: serde_json::Value = serde_json::from_str(&body).expect("/samplers JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["state"].as_str())
        .unwrap_or("missing")
        .to_string()
}

/// Part 3: the procfs side at 2, 64 and 512 CPUs.
fn cpu_curve(bin: &str, dir: &Path, requests: usize) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vm6.18");
    // the samplers that read files under the root (procfs, sysfs), from
    // the registry; cgroup_cpu finds no cgroup2 mount under a fixture
    let samplers: String = rezolus::samplers::registry()
        .into_iter()
        .filter(|s| matches!(s.source, rezolus::samplers::Source::Files(_)))
        .map(|s| format!("[samplers.{}]\nenabled = true\n", s.name))
        .collect();
    let extra = format!("[defaults]\nenabled = false\n{samplers}");
    println!("snapshot cost as CPUs grow (procfs and sysfs samplers, root at a fixture tree; target: under 5 ms at 512):");
    let mut rows = Vec::new();
    for cpus in [2usize, 64, 512] {
        let root = dir.join(format!("root-{cpus}"));
        if !root.exists() {
            copy_tree(&fixture, &root);
            widen(&root, cpus);
        }
        let (agent, port) = start_agent_of(
            bin,
            dir,
            &format!("ttl = \"0s\"\nroot = \"{}\"", root.display()),
            &extra,
        );
        let (cpu, bytes) = per_snapshot(&agent, port, requests);
        println!("  {cpus:>3} CPUs: {cpu:.0} us per snapshot ({bytes} bytes)");
        rows.push((cpus, cpu));
    }
    let (first, last) = (rows[0], rows[rows.len() - 1]);
    println!(
        "  growth {:.2} us per added CPU ({} to {} CPUs)",
        (last.1 - first.1) / (last.0 - first.0) as f64,
        first.0,
        last.0
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// Rewrites the tree's `/proc/stat` with `cpus` per-CPU lines (the
/// fixture's own lines, repeated with the numbers shifted so no two are
/// alike) and its online list as `0-(cpus-1)`.
fn widen(root: &Path, cpus: usize) {
    let stat = std::fs::read_to_string(root.join("proc/stat")).expect("fixture /proc/stat");
    let per_cpu: Vec<&str> = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .collect();
    let mut out = String::new();
    for line in stat.lines() {
        if line.starts_with("cpu") && !line.starts_with("cpu ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("cpu ") {
            for cpu in 0..cpus {
                let model = per_cpu[cpu % per_cpu.len()];
                let fields = model.split_whitespace().skip(1).enumerate().map(|(i, v)| {
                    let v: u64 = v.parse().unwrap_or(0);
                    (v + (cpu * (i + 1)) as u64).to_string()
                });
                out.push_str(&format!(
                    "cpu{cpu} {}\n",
                    fields.collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    std::fs::write(root.join("proc/stat"), out).expect("write /proc/stat");
    std::fs::write(
        root.join("sys/devices/system/cpu/online"),
        format!("0-{}\n", cpus - 1),
    )
    .expect("write the online list");
}
