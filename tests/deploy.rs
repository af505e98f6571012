//! Deployment: `[general] root` (a golden snapshot served from a fixture
//! tree; the agent run the way a container runs it, with the host's `/proc`
//! and `/sys` under a root and only CAP_BPF, CAP_PERFMON and
//! CAP_SYS_RESOURCE), and the capabilities the agent keeps once started.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::Path;

use common::Agent;
use serde_json::{json, Value};

/// The samplers that read only under the root.
const PROCFS_SAMPLERS: [&str; 8] = [
    "blockio_devices",
    "cgroup_cpu",
    "cpu_cores",
    "cpu_usage",
    "memory_meminfo",
    "memory_vmstat",
    "network_interfaces",
    "network_protocols",
];

const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// A config section enabling exactly `samplers`.
fn only(samplers: &[&str]) -> String {
    let mut text = String::from("[defaults]\nenabled = false\n");
    for name in samplers {
        text.push_str(&format!("[samplers.{name}]\nenabled = true\n"));
    }
    text
}

/// `MemTotal` of a meminfo file, in bytes, read by the test itself.
fn mem_total_bytes(path: &Path) -> u64 {
    let meminfo = std::fs::read_to_string(path).unwrap();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the golden file holds: every counter and gauge by name with its
/// value, the histograms' names, and each enabled sampler's state and reason
/// (the root's path written as `$ROOT`). Nothing that changes from run to run.
fn golden_view(snapshot: &Value, samplers: &Value, root: &Path) -> Value {
    let values = |kind: &str| -> BTreeMap<String, Value> {
        snapshot[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
            .collect()
    };
    let histograms: Vec<&str> = snapshot["histograms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let root = root.display().to_string();
    let states: BTreeMap<String, String> = samplers
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] != "disabled")
        .map(|s| {
            let mut state = s["state"].as_str().unwrap().to_string();
            if let Some(reason) = s["reason"].as_str() {
                state = format!("{state}: {}", reason.replace(&root, "$ROOT"));
            }
            (s["name"].as_str().unwrap().to_string(), state)
        })
        .collect();
    json!({
        "counters": values("counters"),
        "gauges": values("gauges"),
        "histograms": histograms,
        "samplers": states,
    })
}

/// The real binary, `root` pointed at a tree captured from a real machine,
/// serves exactly the golden snapshot. `REZOLUS_UPDATE_GOLDEN=1` rewrites the
/// golden file from what it serves (then check the diff before committing).
#[test]
fn golden_snapshot_from_a_fixture_root() {
    let root = manifest().join("fixtures/vm6.18");
    let agent = Agent::start(
        &format!("root = {:?}\n", root.display().to_string()),
        &only(&PROCFS_SAMPLERS),
    );
    let got = golden_view(
        &agent.get_json("/metrics/json"),
        &agent.get_json("/samplers"),
        &root,
    );
    let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
    let golden = manifest().join("tests/golden/agent-vm6.18.json");
    if std::env::var_os("REZOLUS_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (REZOLUS_UPDATE_GOLDEN=1 writes it)",
            golden.display()
        )
    });
    if text != want {
        let got_path = std::env::temp_dir().join("agent-vm6.18.got.json");
        std::fs::write(&got_path, &text).unwrap();
        panic!(
            "the snapshot differs from {}; what was served is in {} \
             (REZOLUS_UPDATE_GOLDEN=1 rewrites the golden file)",
            golden.display(),
            got_path.display()
        );
    }
    // the values are the tree's, not this machine's
    let total = mem_total_bytes(&root.join("proc/meminfo"));
    assert_eq!(got["gauges"]["memory_total"], json!(total));
    let online = std::fs::read_to_string(root.join("sys/devices/system/cpu/online")).unwrap();
    assert_eq!(online.trim(), "0-1");
    assert_eq!(got["gauges"]["cpu_cores"], json!(2));
}

/// `root` that is relative, missing or holds no `proc` is refused at
/// start, naming the key.
#[test]
fn bad_root_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    // a proc directory with nothing mounted on it
    let unmounted = dir.path().join("unmounted");
    std::fs::create_dir_all(unmounted.join("proc")).unwrap();
    for (root, expect) in [
        ("host".to_string(), "must be an absolute path"),
        (
            dir.path().join("missing").display().to_string(),
            "No such file",
        ),
        (file.display().to_string(), "not a directory"),
        (dir.path().display().to_string(), "holds no proc directory"),
        (unmounted.display().to_string(), "is not a procfs"),
    ] {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!("[general]\nlisten = \"127.0.0.1:0\"\nroot = {root:?}\n"),
        )
        .unwrap();
        let out = common::run(&[config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{root}: {stderr}");
        assert!(
            stderr.contains("general.root") && stderr.contains(expect),
            "{root}: {stderr}"
        );
    }
}

/// `CapEff`, `CapPrm`, `CapBnd`, `CapAmb`, `CapInh` and `NoNewPrivs` of
/// each thread of `pid`.
fn thread_credentials(pid: u32) -> Vec<BTreeMap<String, u64>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let fields: BTreeMap<String, u64> = status
            .lines()
            .filter_map(|l| {
                let (key, value) = l.split_once(':')?;
                let value = value.trim();
                match key {
                    "CapEff" | "CapPrm" | "CapBnd" | "CapAmb" | "CapInh" => {
                        Some((key.to_string(), u64::from_str_radix(value, 16).ok()?))
                    }
                    "NoNewPrivs" => Some((key.to_string(), value.parse().ok()?)),
                    _ => None,
                }
            })
            .collect();
        threads.push(fields);
    }
    threads
}

/// Syscalls counted by the agent while this thread makes `n` of its own.
fn syscalls_seen(agent: &Agent, n: usize) -> i128 {
    let before = agent.snapshot();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and no side effects
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let after = agent.snapshot();
    common::counter_delta(&before, &after, "syscall", &[])
}

/// Started as root, the agent keeps only CAP_PERFMON (for the perf_events
/// sampler that runs here) in every thread and every set, with
/// no_new_privs; without a perf_events sampler it keeps nothing, also
/// after the fastest start (one procfs sampler). Its BPF samplers still
/// count afterwards.
#[test]
fn agent_drops_capabilities_once_started() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
    let _serial = common::serial();
    for (samplers, keep) in [
        (
            vec!["syscall", "cpu_software", "cpu_usage"],
            1u64 << CAP_PERFMON,
        ),
        (vec!["syscall", "cpu_usage"], 0),
        // a start this fast once left the signal thread, not yet known
        // when the others dropped theirs, with every capability: five tries
        (vec!["cpu_usage"], 0),
        (vec!["cpu_usage"], 0),
        (vec!["cpu_usage"], 0),
        (vec!["cpu_usage"], 0),
        (vec!["cpu_usage"], 0),
    ] {
        let agent = Agent::start("", &only(&samplers));
        common::require_active(&agent, &samplers);
        let threads = thread_credentials(agent.pid());
        assert!(threads.len() >= 2, "{threads:?}");
        for t in &threads {
            assert_eq!(t["CapEff"], keep, "{samplers:?}: {t:?}");
            assert_eq!(t["CapPrm"], keep, "{samplers:?}: {t:?}");
            assert_eq!(t["CapBnd"], keep, "{samplers:?}: {t:?}");
            assert_eq!(t["CapAmb"], 0, "{samplers:?}: {t:?}");
            assert_eq!(t["CapInh"], 0, "{samplers:?}: {t:?}");
            assert_eq!(t["NoNewPrivs"], 1, "{samplers:?}: {t:?}");
        }
        if samplers.contains(&"syscall") {
            let seen = syscalls_seen(&agent, 20_000);
            assert!(seen >= 20_000, "{samplers:?}: {seen} syscalls counted");
        }
        // what it kept, and why, is in the log
        let said = agent
            .startup
            .iter()
            .any(|l| l.contains("dropped every capability"));
        assert!(said, "{:?}", agent.startup);
    }
}

/// The agent run as a container runs it: in its own mount namespace, with
/// the host's `/proc` and `/sys` bind-mounted under `root`, as root but
/// with only CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE (`setpriv`). The
/// namespace's own `/proc/meminfo` and `/sys/devices/system/cpu/online` are
/// replaced by fakes, so reading them instead of the root's would show.
#[test]
fn agent_in_a_container_reads_the_hosts_proc_and_sys_under_root() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    for sub in ["proc", "sys"] {
        std::fs::create_dir_all(host.join(sub)).unwrap();
    }
    let fake_meminfo = dir.path().join("meminfo");
    std::fs::write(&fake_meminfo, "MemTotal: 1 kB\nMemFree: 1 kB\n").unwrap();
    let fake_online = dir.path().join("online");
    std::fs::write(&fake_online, "0\n").unwrap();
    let c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let binds: Vec<(CString, CString)> = vec![
        (c(Path::new("/proc")), c(&host.join("proc"))),
        (c(Path::new("/sys")), c(&host.join("sys"))),
        (c(&fake_meminfo), c(Path::new("/proc/meminfo"))),
        (
            c(&fake_online),
            c(Path::new("/sys/devices/system/cpu/online")),
        ),
    ];
    let setup = move || {
        common::private_mount_namespace()?;
        for (from, to) in &binds {
            // SAFETY: mount(2) on C strings prepared before fork
            let rc = unsafe {
                libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // as root, an execve grants the bounding set
    let agent = Agent::start_wrapped(
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+perfmon,+sys_resource",
            "--",
        ],
        setup,
        &[],
        &format!("ttl = \"0s\"\nroot = {:?}\n", host.display().to_string()),
        "",
    );
    // BPF, perf_events (software) and the procfs/sysfs samplers all run
    common::require_active(
        &agent,
        &[
            "syscall",
            "scheduler_runqueue",
            "softirq",
            "blockio",
            "tcp_traffic",
            "cpu_software",
            "cpu_usage",
            "memory_meminfo",
            "cgroup_cpu",
            "network_interfaces",
        ],
    );
    // it started with the three capabilities (those of them this test
    // holds: some sandboxes withhold CAP_SYS_RESOURCE), and kept CAP_PERFMON
    let ours = thread_credentials(std::process::id())[0]["CapBnd"];
    let started = ((1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_RESOURCE)) & ours;
    for t in thread_credentials(agent.pid()) {
        assert_eq!(t["CapEff"], 1 << CAP_PERFMON, "{t:?}");
        assert_eq!(t["CapPrm"], 1 << CAP_PERFMON, "{t:?}");
        // without CAP_SETPCAP it cannot lower its bounding set
        assert_eq!(t["CapBnd"], started, "{t:?}");
        assert_eq!(t["NoNewPrivs"], 1, "{t:?}");
    }
    let snap = agent.snapshot();
    // the host's meminfo, read under the root, not the fake in /proc
    let total = mem_total_bytes(Path::new("/proc/meminfo"));
    assert_eq!(snap.value("memory_total", &[]), i128::from(total));
    // per-CPU series for every CPU online on the host, from the root's
    // online list (the namespace's own says only CPU 0)
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus: Vec<String> = (0..common::cores()).map(|c| c.to_string()).collect();
    assert!(cpus.len() > 1, "needs 2 CPUs; online: {online}");
    for cpu in &cpus {
        assert!(
            snap.get("softirq", &[("kind", "timer"), ("id", cpu)])
                .is_some(),
            "no softirq series for CPU {cpu}"
        );
    }
    // the host's cgroup hierarchy, found under the root
    assert!(snap.value("cgroup_cpu_usage", &[("name", "/"), ("state", "user")]) > 0);
    let reason = common::sampler_status(&agent, "cgroup_cpu");
    assert_eq!(reason["state"], "active", "{reason}");
    // and the BPF samplers count this process's calls
    let seen = syscalls_seen(&agent, 20_000);
    assert!(seen >= 20_000, "{seen} syscalls counted");
}
