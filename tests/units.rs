//! The systemd units in config/systemd: each starts a real role of the
//! binary with a shipped config, and systemd accepts it; each is hardened
//! (`systemd-analyze security`), runs as the `rezolus` user, and allows
//! every system call its role makes (checked with strace).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, BIN};

/// Each shipped unit: its path and text.
fn units() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let mut units: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect();
    units.sort();
    units
}

/// The values of `key=` lines in a unit, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// The highest exposure `systemd-analyze security` may give a shipped unit
/// (0 is fully locked down, 10 is none; the README quotes the scores).
const MAX_EXPOSURE: f64 = 2.5;

#[test]
fn units_are_hardened_and_run_unprivileged() {
    for (path, text) in units() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(values(&text, "User"), ["rezolus"], "{name}");
        assert_eq!(values(&text, "NoNewPrivileges"), ["yes"], "{name}");
        assert_eq!(values(&text, "ProtectSystem"), ["strict"], "{name}");
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let exposure: f64 = stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name}: no exposure level in: {stdout}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert!(
            exposure <= MAX_EXPOSURE,
            "{name}: exposure {exposure}\n{stdout}"
        );
    }
    // only the agent is granted capabilities, and only those it needs to start
    for (path, text) in units() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (ambient, bounding) = if name == "rezolus.service" {
            (vec!["CAP_BPF CAP_PERFMON"], vec!["CAP_BPF CAP_PERFMON"])
        } else {
            (vec![], vec![""])
        };
        assert_eq!(values(&text, "AmbientCapabilities"), ambient, "{name}");
        assert_eq!(values(&text, "CapabilityBoundingSet"), bounding, "{name}");
    }
}

/// `systemd-analyze syscall-filter`: each `@group` with its members
/// expanded.
fn syscall_groups() -> HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .unwrap();
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            let name = line.split_whitespace().next().unwrap().to_string();
            groups.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if let (Some(group), item) = (&current, line.trim()) {
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(group).unwrap().push(item.to_string());
            }
        }
    }
    groups
}

fn expand(item: &str, groups: &HashMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    match groups.get(item) {
        Some(members) => members.iter().for_each(|m| expand(m, groups, out)),
        None => {
            out.insert(item.to_string());
        }
    }
}

/// The system calls a unit's `SystemCallFilter=` lines allow.
fn allowed(text: &str, groups: &HashMap<String, Vec<String>>) -> BTreeSet<String> {
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for value in values(text, "SystemCallFilter") {
        let (set, items) = match value.strip_prefix('~') {
            Some(items) => (&mut deny, items),
            None => (&mut allow, value),
        };
        for item in items.split_whitespace() {
            expand(item, groups, set);
        }
    }
    assert!(!allow.is_empty(), "no SystemCallFilter allow-list");
    allow.difference(&deny).cloned().collect()
}

/// The system calls named in an `strace -f` output file.
fn traced(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?;
            let name = call.split('(').next()?;
            (call.contains('(')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_string())
        })
        .collect()
}

/// The process strace started (its only child).
fn tracee(strace: u32) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "strace started nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a role under `strace -f` through start, its work and a SIGTERM
/// stop, and checks that its unit's filter allows every call it made.
/// (Under systemd a call outside the filter fails with EPERM.)
#[test]
fn every_system_call_a_role_makes_passes_its_units_filter() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root (the agent loads BPF)"
    );
    let groups = syscall_groups();
    let units: HashMap<String, String> = units()
        .into_iter()
        .map(|(p, t)| (p.file_name().unwrap().to_string_lossy().into_owned(), t))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let plain_agent = Agent::start("", "");
    for (unit, role) in [
        ("rezolus.service", ""),
        ("rezolus-exporter.service", "exporter"),
        ("rezolus-hindsight.service", "hindsight"),
    ] {
        let trace = dir.path().join(format!("{unit}.strace"));
        let trace_arg = trace.display().to_string();
        let prefix = ["strace", "-f", "-qq", "-o", trace_arg.as_str()];
        let role_args: Vec<&str> = role.split_whitespace().collect();
        let source = format!("source = \"{}\"\n", plain_agent.addr);
        let general = match role {
            "" => "ttl = \"0s\"\n".to_string(),
            "exporter" => format!("{source}interval = \"500ms\"\n"),
            _ => format!(
                "{source}interval = \"100ms\"\nduration = \"10s\"\noutput = \"{}\"\n",
                dir.path().join("hindsight.parquet").display()
            ),
        };
        let running = Agent::start_wrapped(&prefix, || Ok(()), &role_args, &general, "");
        // its work: snapshots, scrapes, a dump
        match role {
            "" => {
                for path in ["/metrics/binary", "/metrics/json", "/samplers", "/"] {
                    running.get(path);
                }
                std::thread::sleep(Duration::from_millis(1300)); // a cgroup walk
                running.get("/metrics/binary");
            }
            "exporter" => {
                running.get("/metrics");
                std::thread::sleep(Duration::from_millis(1100));
                running.get("/metrics");
            }
            _ => {
                std::thread::sleep(Duration::from_millis(1000));
                let url = format!("http://{}/dump/file", running.addr);
                ureq::post(&url).send_empty().unwrap();
            }
        }
        let pid = tracee(running.pid());
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = running.stop(0);
        assert!(status.success(), "{unit}: {status:?}");
        let used = traced(&trace);
        assert!(used.len() > 20, "{unit}: only {used:?} traced");
        let allowed = allowed(&units[unit], &groups);
        let refused: Vec<_> = used.difference(&allowed).collect();
        assert!(refused.is_empty(), "{unit} would refuse {refused:?}");
    }
}

#[test]
fn units_start_real_roles_with_shipped_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(args[0], "/usr/bin/rezolus", "{}", path.display());
        // the config it names is one the repository ships
        let config = args.last().unwrap();
        let name = config
            .strip_prefix("/etc/rezolus/")
            .expect("config under /etc/rezolus");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name)
                .is_file(),
            "{}: no config/{name}",
            path.display()
        );
        // the role exists: `rezolus [ROLE] --help` succeeds
        let role = &args[1..args.len() - 1];
        let help = Command::new(BIN).args(role).arg("--help").output().unwrap();
        assert!(
            help.status.success(),
            "{}: rezolus {role:?} --help failed",
            path.display()
        );
        // for systemd: the same unit with this build's binary
        let copy = tmp.path().join(path.file_name().unwrap());
        std::fs::write(&copy, text.replace("/usr/bin/rezolus", BIN)).unwrap();
        units.push(copy);
    }
    assert_eq!(units.len(), 3, "{units:?}");
    // scripts/deps installs systemd: without systemd-analyze this fails
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze (Debian package systemd, installed by scripts/deps): {e}")
        });
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
