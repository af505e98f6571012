//! Per-cgroup syscall counts (the syscall sampler's `cgroups` option), with
//! `cgroup_cpu` alongside, against cgroups the test makes in the machine's
//! cgroup v2 hierarchy, with python3 processes moved into them. Root only:
//! CI runs these as root.

mod common;

use std::process::Command;

use common::cgroups::{alone, names, series_count, Cgroup};
use common::{require_active, Agent, Snap};

fn syscalls(snap: &Snap, op: &str, name: &str) -> i128 {
    snap.get("cgroup_syscall", &[("op", op), ("name", name)])
        .unwrap_or(0)
}

const SYSCALL: &str = "[samplers.syscall]\nenabled = true\ncgroup_scan_interval_ms = 0\n";

/// The syscall sampler counting per cgroup, and `cgroup_cpu`, both
/// walking the hierarchy at every snapshot.
fn syscall_and_cpu_agent() -> Agent {
    let agent = Agent::start(
        "",
        &format!(
            "[defaults]\nenabled = false\n{SYSCALL}\
             [samplers.cgroup_cpu]\nenabled = true\nscan_interval_ms = 0\n"
        ),
    );
    require_active(&agent, &["syscall", "cgroup_cpu"]);
    agent
}

fn syscall_agent() -> Agent {
    let agent = Agent::start("", &format!("[defaults]\nenabled = false\n{SYSCALL}"));
    require_active(&agent, &["syscall"]);
    agent
}

fn cpu_seconds(snap: &Snap, name: &str) -> f64 {
    ["user", "system"]
        .iter()
        .map(|state| {
            snap.get("cgroup_cpu_usage", &[("state", state), ("name", name)])
                .unwrap_or(0) as f64
        })
        .sum::<f64>()
        / 1e9
}

/// A process in one of two sibling cgroups makes N sched_yield calls and
/// burns CPU until it has used a second: about a second of
/// `cgroup_cpu_usage` and N `cgroup_syscall{op=yield}` under its name, close
/// to nothing under the sibling's.
#[test]
fn cpu_and_syscalls_land_in_the_cgroup_that_made_them() {
    const N: i128 = 50_000;
    let _alone = alone();
    let agent = syscall_and_cpu_agent();
    let top = Cgroup::top(&format!("rzt{}sys", std::process::id()));
    let (busy, idle) = (top.child("busy"), top.child("idle"));
    let before = agent.snapshot();
    busy.python(&format!(
        "import time\nfor _ in range({N}): os.sched_yield()\n\
         while time.process_time() < 1.0: pass"
    ));
    let after = agent.snapshot();
    let yields = syscalls(&after, "yield", &busy.name) - syscalls(&before, "yield", &busy.name);
    assert!(
        (N..N + N / 20).contains(&yields),
        "{yields} yields under {} for {N}",
        busy.name
    );
    let used = cpu_seconds(&after, &busy.name) - cpu_seconds(&before, &busy.name);
    assert!((0.8..1.2).contains(&used), "{used} s under {}", busy.name);
    let other: i128 = ["yield", "read", "filesystem"]
        .iter()
        .map(|op| syscalls(&after, op, &idle.name) - syscalls(&before, op, &idle.name))
        .sum();
    assert_eq!(other, 0, "calls under the idle sibling");
    let idle_cpu = cpu_seconds(&after, &idle.name) - cpu_seconds(&before, &idle.name);
    assert!(idle_cpu < 0.02, "{idle_cpu} s under the idle sibling");
}

/// A python3 process that, for each cgroup it is sent, moves into it,
/// yields `yields` times, and moves back to `home` (so the cgroup can be
/// removed): one process for many cgroups, fast.
struct Mover {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Mover {
    fn new(home: &Cgroup, yields: usize) -> Self {
        let home = home.path.join("cgroup.procs");
        let script = format!(
            "import os, sys\npid = str(os.getpid())\nhome = {home:?}\n\
             open(home, 'w').write(pid)\nfor line in sys.stdin:\n\
             \x20   open(line.strip(), 'w').write(pid)\n\
             \x20   for _ in range({yields}): os.sched_yield()\n\
             \x20   open(home, 'w').write(pid)\n\
             \x20   print('ok', flush=True)\n",
            home = home.to_str().unwrap()
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn visit(&mut self, cgroup: &Cgroup) {
        use std::io::{BufRead, Write};
        let procs = cgroup.path.join("cgroup.procs");
        writeln!(self.stdin, "{}", procs.to_str().unwrap()).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "mover in {}", cgroup.name);
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Yield counts by cgroup name, in one pass over a snapshot.
fn yields_by_name(snap: &Snap) -> std::collections::HashMap<String, i128> {
    snap.entries
        .iter()
        .filter(|e| {
            e.metric == "cgroup_syscall" && e.labels.get("op").map(String::as_str) == Some("yield")
        })
        .filter_map(|e| Some((e.labels.get("name")?.clone(), e.value)))
        .collect()
}

/// Slots of removed cgroups are given back: 500 short-lived cgroups that
/// each make calls leave no series behind, and a slot's next owner starts
/// from zero.
#[test]
fn cgroup_slots_are_reused_from_zero() {
    let _alone = alone();
    // 16 slots: 500 cgroups reuse each about 30 times
    let agent = Agent::start(
        "",
        &format!("[defaults]\nenabled = false\n{SYSCALL}max_cgroups = 16\n"),
    );
    require_active(&agent, &["syscall"]);
    let top = Cgroup::top(&format!("rzt{}slots", std::process::id()));
    let mut mover = Mover::new(&top, 10);
    let warm = top.child("warm");
    mover.visit(&warm);
    drop(warm);
    agent.snapshot();
    let base = agent.snapshot();
    for i in 0..500 {
        let c = top.child(&format!("c{i}"));
        mover.visit(&c);
        let snap = agent.snapshot();
        let yields = syscalls(&snap, "yield", &c.name);
        assert!(
            (10..20).contains(&yields),
            "{yields} yields under {} (its slot's earlier counts leaked in?)",
            c.name
        );
        drop(c);
    }
    agent.snapshot();
    let end = agent.snapshot();
    let gone: Vec<String> = names(&end)
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}/c", top.name)))
        .collect();
    assert!(gone.is_empty(), "removed cgroups still served: {gone:?}");
    assert!(
        series_count(&end) * 100 <= series_count(&base) * 105,
        "{} series before, {} after",
        series_count(&base),
        series_count(&end)
    );
}

/// More cgroups making calls than there are slots: the extra ones are
/// counted under `other`, and a cgroup that had a slot keeps counting.
#[test]
fn cgroups_beyond_the_slots_are_counted_as_other() {
    const LIVE: usize = 5000;
    let _alone = alone();
    let agent = syscall_agent();
    let top = Cgroup::top(&format!("rzt{}over", std::process::id()));
    let first = top.child("first");
    first.python("os.sched_yield()");
    let many: Vec<Cgroup> = (0..LIVE).map(|i| top.child(&format!("m{i:04}"))).collect();
    let before = agent.snapshot();
    // one process visits every cgroup and yields once in each
    let paths: Vec<String> = many
        .iter()
        .map(|c| c.path.join("cgroup.procs").to_str().unwrap().to_string())
        .collect();
    let list = std::env::temp_dir().join(format!("rzt{}paths", std::process::id()));
    std::fs::write(&list, paths.join("\n")).unwrap();
    first.python(&format!(
            "pid = str(os.getpid())\nfor p in open({:?}).read().split('\\n'):\n    open(p, 'w').write(pid)\n    os.sched_yield()",
            list.to_str().unwrap()
        ),
    );
    let _ = std::fs::remove_file(&list);
    first.python("for _ in range(1000): os.sched_yield()");
    let after = agent.snapshot();
    let first_yields =
        syscalls(&after, "yield", &first.name) - syscalls(&before, "yield", &first.name);
    assert!(
        (1000..1100).contains(&first_yields),
        "{first_yields} yields under {} for 1000",
        first.name
    );
    let other = syscalls(&after, "yield", "other") - syscalls(&before, "yield", "other");
    let (was, now) = (yields_by_name(&before), yields_by_name(&after));
    let named: i128 = many
        .iter()
        .map(|c| now.get(&c.name).unwrap_or(&0) - was.get(&c.name).unwrap_or(&0))
        .sum();
    // every visit's yield is somewhere: a slot of its own, or other
    assert!(other > 0, "no cgroup overflowed into other");
    assert!(
        named + other >= LIVE as i128,
        "{named} named + {other} other yields for {LIVE} visits"
    );
    drop(many);
}

/// A removed cgroup's series are served once more and then leave, without
/// waiting for the next walk of the hierarchy (an hour away here): the
/// kernel's cgroup_rmdir tracepoint marks its slot.
#[test]
fn removed_cgroups_leave_without_waiting_for_a_walk() {
    let _alone = alone();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n\
         [samplers.syscall]\nenabled = true\ncgroup_scan_interval_ms = 3600000\n\
         [samplers.scheduler_runqueue]\nenabled = true\ncgroup_scan_interval_ms = 3600000\n",
    );
    require_active(&agent, &["syscall", "scheduler_runqueue"]);
    let top = Cgroup::top(&format!("rzt{}rmdir", std::process::id()));
    let short = top.child("short");
    short.python("import time\nos.sched_yield()\ntime.sleep(0.01)");
    let name = short.name.clone();
    let series_of = |snap: &Snap| {
        snap.entries
            .iter()
            .filter(|e| e.labels.get("name") == Some(&name))
            .map(|e| e.metric.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    // the first snapshot walks the hierarchy and names the slots
    let first = series_of(&agent.snapshot());
    for metric in ["cgroup_syscall", "cgroup_scheduler_context_switch"] {
        assert!(first.contains(metric), "{name} has no {metric}: {first:?}");
    }
    drop(short);
    let last = series_of(&agent.snapshot());
    assert_eq!(last, first, "{name} was not served once more after removal");
    let after = series_of(&agent.snapshot());
    assert!(after.is_empty(), "{name} still served: {after:?}");
}

/// Every call counted machine-wide is counted under some `name`: cgroups
/// made, used and removed between two walks of the hierarchy (never named)
/// are counted under `other`.
#[test]
fn cgroups_removed_before_a_walk_are_counted_as_other() {
    const CGROUPS: usize = 20;
    const YIELDS: i128 = 500;
    let _alone = alone();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n\
         [samplers.syscall]\nenabled = true\ncgroup_scan_interval_ms = 3600000\n",
    );
    require_active(&agent, &["syscall"]);
    let top = Cgroup::top(&format!("rzt{}brief", std::process::id()));
    let yields_total = |snap: &Snap| snap.value("syscall", &[("op", "yield")]);
    let by_name = |snap: &Snap| yields_by_name(snap).values().sum::<i128>();
    // the first snapshot walks the hierarchy; none of these exist yet
    let before = agent.snapshot();
    for i in 0..CGROUPS {
        let brief = top.child(&format!("b{i}"));
        brief.python(&format!("for _ in range({YIELDS}): os.sched_yield()"));
    }
    agent.snapshot();
    let after = agent.snapshot();
    let machine = yields_total(&after) - yields_total(&before);
    let named = by_name(&after) - by_name(&before);
    let other = syscalls(&after, "yield", "other") - syscalls(&before, "yield", "other");
    assert!(
        other >= CGROUPS as i128 * YIELDS,
        "{other} yields under other for {CGROUPS} x {YIELDS} in cgroups never named"
    );
    // the machine-wide and per-cgroup counters are read moments apart: a
    // yield by anything else in between may show in one and not the other
    assert!(
        (named - machine).abs() <= 5,
        "sum over names {named} != machine-wide {machine} (other {other})"
    );
}

/// A cgroup removed and made again under the same path (a service restart)
/// never shows up twice in one snapshot, and continues the old one's series:
/// the new one's own counts are added to the old one's last values, so no
/// series goes back (for `cgroup_syscall` and `cgroup_cpu_usage` alike).
#[test]
fn a_cgroup_made_again_under_the_same_path_continues_its_series() {
    let _alone = alone();
    let agent = syscall_and_cpu_agent();
    let top = Cgroup::top(&format!("rzt{}again", std::process::id()));
    let first = top.child("svc");
    let name = first.name.clone();
    first.python("for _ in range(500): os.sched_yield()");
    let cpu = |snap: &Snap| snap.get("cgroup_cpu_usage", &[("state", "user"), ("name", &name)]);
    let was = agent.snapshot();
    let cpu_before = cpu(&was).expect("no cgroup_cpu_usage");
    drop(first);
    let second = top.child("svc");
    second.python("for _ in range(100): os.sched_yield()");
    let mut seen = Vec::new();
    let mut last_cpu = cpu_before;
    for _ in 0..4 {
        let snap = agent.snapshot();
        let series: Vec<i128> = snap
            .entries
            .iter()
            .filter(|e| {
                e.metric == "cgroup_syscall"
                    && e.labels.get("op").map(String::as_str) == Some("yield")
                    && e.labels.get("name") == Some(&name)
            })
            .map(|e| e.value)
            .collect();
        assert!(series.len() <= 1, "{name} served twice: {series:?}");
        seen.push(series.first().copied());
        if let Some(now) = cpu(&snap) {
            assert!(
                now >= last_cpu,
                "cgroup_cpu_usage went back: {last_cpu} -> {now}"
            );
            last_cpu = now;
        }
    }
    // the old cgroup's last value, then the new one's added to it
    assert_eq!(seen[0], Some(500), "{seen:?}");
    assert!(
        seen[2..].iter().all(|v| matches!(v, Some(600..=610))),
        "{seen:?}"
    );
}
