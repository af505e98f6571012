//! The per-cgroup CPU sampler against cgroups the test makes in the
//! machine's cgroup v2 hierarchy. Root only: CI runs these as root.

mod common;

use std::time::Instant;

use common::cgroups::{alone, cgroup2_mount, names, series_count, walk_count, Cgroup};
use common::{require_active, Agent, Snap};

fn cpu_seconds(snap: &Snap, name: &str) -> f64 {
    ["user", "system"]
        .iter()
        .map(|state| {
            snap.get("cgroup_cpu_usage", &[("state", state), ("name", name)])
                .unwrap_or_else(|| panic!("no cgroup_cpu_usage for {name}")) as f64
        })
        .sum::<f64>()
        / 1e9
}

fn cgroup_agent(extra: &str) -> Agent {
    let agent = Agent::start("", &format!("[defaults]\nenabled = false\n{extra}"));
    require_active(&agent, &["cgroup_cpu"]);
    agent
}

/// The sampler, walking the hierarchy at every snapshot so that a cgroup
/// made just before one is in it.
const CPU: &str = "[samplers.cgroup_cpu]\nenabled = true\nscan_interval_ms = 0\n";

/// A second of CPU burnt in one of two sibling cgroups shows as about a
/// second under its name, and close to nothing under the sibling.
#[test]
fn cpu_time_lands_in_the_cgroup_that_used_it() {
    let _alone = alone();
    let agent = cgroup_agent(CPU);
    let top = Cgroup::top(&format!("rzt{}cpu", std::process::id()));
    let (busy, idle) = (top.child("busy"), top.child("idle"));
    let before = agent.snapshot();
    busy.run("timeout 1 sh -c 'while :; do :; done'; true");
    let after = agent.snapshot();
    let used = cpu_seconds(&after, &busy.name) - cpu_seconds(&before, &busy.name);
    assert!((0.8..1.2).contains(&used), "{used} s under {}", busy.name);
    let other = cpu_seconds(&after, &idle.name) - cpu_seconds(&before, &idle.name);
    assert!(other < 0.02, "{other} s under the idle sibling");
    // a parent's usage includes its children's
    let parent = cpu_seconds(&after, &top.name) - cpu_seconds(&before, &top.name);
    assert!(parent >= used, "parent {parent} s < child {used} s");
}

/// Read system calls the agent has made (`syscr` in /proc/PID/io).
fn reads(agent: &Agent) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", agent.pid())).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .and_then(|v| v.parse().ok())
        .expect("syscr in /proc/PID/io")
}

/// Cgroups in the hierarchy whose subtree has a live task.
fn populated_count(dir: &std::path::Path) -> usize {
    let here = std::fs::read_to_string(dir.join("cgroup.events"))
        .map_or(true, |e| e.contains("populated 1"));
    let below: usize = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| populated_count(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    usize::from(here) + below
}

/// Empty cgroups are not read again until a task enters them: with 200
/// empty cgroups tracked, a snapshot makes fewer reads than there are
/// populated cgroups plus 40 (each would cost one, 200 in all); and CPU
/// used later by a task in one of them, or by one that is still running
/// in another, shows at the next snapshot.
#[test]
fn empty_cgroups_are_not_read_until_a_task_enters() {
    let _alone = alone();
    let agent = cgroup_agent("[samplers.cgroup_cpu]\nenabled = true\n");
    let top = Cgroup::top(&format!("rzt{}empty", std::process::id()));
    let children: Vec<Cgroup> = (0..200).map(|i| top.child(&format!("c{i}"))).collect();
    let started = Instant::now();
    while !children
        .iter()
        .all(|c| names(&agent.snapshot()).contains(&c.name))
    {
        assert!(
            started.elapsed().as_secs() < 5,
            "the cgroups are not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    agent.snapshot();
    let populated = populated_count(&cgroup2_mount());
    let before = reads(&agent);
    for _ in 0..10 {
        agent.snapshot();
    }
    let per_snapshot = (reads(&agent) - before) / 10;
    eprintln!("{per_snapshot} reads per snapshot, {populated} populated cgroups");
    assert!(
        (per_snapshot as usize) < populated + 40,
        "{per_snapshot} reads per snapshot with {populated} populated cgroups and 200 empty ones"
    );

    // a task that ran and left, and one still running; first the kernel's
    // cached inodes are dropped: it notifies a change of cgroup.events only
    // while that file's inode is cached (the agent's watch on it keeps it)
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let before = agent.snapshot();
    children[7].run("timeout 0.5 sh -c 'while :; do :; done'; true");
    let running = children[9].path.join("cgroup.procs");
    let mut spinner = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && while :; do :; done",
            running.display()
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = agent.snapshot();
    let _ = spinner.kill();
    let _ = spinner.wait();
    for (c, least) in [(&children[7], 0.35), (&children[9], 0.2)] {
        let used = cpu_seconds(&after, &c.name) - cpu_seconds(&before, &c.name);
        assert!(used >= least, "{used} s under {}", c.name);
    }
    let idle = cpu_seconds(&after, &children[8].name) - cpu_seconds(&before, &children[8].name);
    assert!(idle == 0.0, "{idle} s under an empty cgroup");
}

/// The kernel notifies a change of `cgroup.events` at most once per 10 to
/// 13 ms and holds later changes back: a task that leaves a cgroup (read as
/// empty) and comes back within that interval must still be read. Ten
/// rounds; in each, what the agent serves is at least what `cpu.stat` said
/// just before the request.
#[test]
fn a_task_back_within_the_kernels_notification_interval_is_read() {
    let _alone = alone();
    let agent = cgroup_agent(CPU);
    let top = Cgroup::top(&format!("rzt{}back", std::process::id()));
    let c = top.child("c");
    let mut burner = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && while :; do :; done",
            top.path.join("cgroup.procs").display()
        ))
        .spawn()
        .unwrap();
    let pid = burner.id().to_string();
    let move_to = |cg: &Cgroup| std::fs::write(cg.path.join("cgroup.procs"), &pid).unwrap();
    let kernel = || -> f64 {
        let stat = std::fs::read_to_string(c.path.join("cpu.stat")).unwrap();
        let field = |key: &str| -> f64 {
            stat.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok())
                .unwrap()
        };
        (field("user_usec") + field("system_usec")) / 1e6
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut stale = Vec::new();
    for round in 0..10 {
        move_to(&c);
        std::thread::sleep(std::time::Duration::from_millis(30));
        move_to(&top);
        // the agent sees the change and reads c as empty
        std::thread::sleep(std::time::Duration::from_millis(3));
        agent.snapshot();
        // back within the kernel's interval: this change's event waits
        move_to(&c);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let before_request = kernel();
        let served = cpu_seconds(&agent.snapshot(), &c.name);
        // user and system are served in nanoseconds from microseconds
        if served + 1e-6 < before_request {
            stale.push((round, served, before_request));
        }
    }
    let _ = burner.kill();
    let _ = burner.wait();
    assert!(
        stale.is_empty(),
        "served less than cpu.stat showed before the request (round, served s, cpu.stat s): {stale:?}"
    );
}

/// 500 short-lived cgroups, each running a short task: afterwards the
/// series count and the agent's RSS are back within 5% of where they were,
/// and no series names a removed cgroup for more than one snapshot after its
/// removal. All the per-cgroup samplers are on: `cgroup_cpu`, whose last
/// value is the one read before removal, and the per-cgroup counts of
/// `syscall` and `scheduler_runqueue`, which serve a removed cgroup's final
/// counts once more.
#[test]
fn short_lived_cgroups_leave_nothing_behind() {
    let _alone = alone();
    let agent = cgroup_agent(&format!(
        "{CPU}[samplers.rezolus_rusage]\nenabled = true\n\
         [samplers.syscall]\nenabled = true\ncgroup_scan_interval_ms = 0\n\
         [samplers.scheduler_runqueue]\nenabled = true\ncgroup_scan_interval_ms = 0\n"
    ));
    require_active(&agent, &["syscall", "scheduler_runqueue"]);
    let top = Cgroup::top(&format!("rzt{}churn", std::process::id()));
    let rss = |s: &Snap| s.value("rezolus_memory_resident", &[]) as f64;
    let metrics_of = |snap: &Snap, name: &str| {
        snap.entries
            .iter()
            .filter(|e| e.labels.get("name").map(String::as_str) == Some(name))
            .map(|e| e.metric.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    // warm up: allocations that stay (buffers, maps) happen on first use
    for i in 0..50 {
        let c = top.child(&format!("warm{i}"));
        c.run("true");
        agent.snapshot();
    }
    agent.snapshot();
    agent.snapshot();
    let base = agent.snapshot();
    for i in 0..500 {
        let c = top.child(&format!("c{i}"));
        c.run("true");
        let served = metrics_of(&agent.snapshot(), &c.name);
        for metric in [
            "cgroup_cpu_usage",
            "cgroup_syscall",
            "cgroup_scheduler_context_switch",
        ] {
            assert!(served.contains(metric), "{} has no {metric}", c.name);
        }
        let gone = c.name.clone();
        drop(c);
        agent.snapshot();
        let still = metrics_of(&agent.snapshot(), &gone);
        assert!(
            still.is_empty(),
            "{gone} still served two snapshots after its removal: {still:?}"
        );
    }
    agent.snapshot();
    let end = agent.snapshot();
    let (n0, n1) = (series_count(&base), series_count(&end));
    assert!(
        n1 * 100 <= n0 * 105,
        "{n0} series before, {n1} after 500 cgroups came and went"
    );
    assert!(
        rss(&end) <= rss(&base) * 1.05,
        "RSS {} before, {} after",
        rss(&base),
        rss(&end)
    );
}

/// More live cgroups than `max_cgroups`: the agent keeps serving, reports
/// how many it left out, and the cgroups it tracked first keep counting.
#[test]
fn more_cgroups_than_the_maximum_are_counted_not_served() {
    const LIVE: usize = 5000;
    let _alone = alone();
    let agent = cgroup_agent(CPU);
    let top = Cgroup::top(&format!("rzt{}many", std::process::id()));
    let first = top.child("first");
    agent.snapshot();
    let started = Instant::now();
    let many: Vec<Cgroup> = (0..LIVE).map(|i| top.child(&format!("m{i:04}"))).collect();
    eprintln!("made {LIVE} cgroups in {:?}", started.elapsed());
    let before = agent.snapshot();
    first.run("timeout 0.5 sh -c 'while :; do :; done'; true");
    let after = agent.snapshot();
    let total = names(&after).len();
    let untracked = after.value("cgroup_untracked", &[]) as usize;
    assert!(
        total <= 4096,
        "{total} cgroups served, more than the maximum"
    );
    // every cgroup is either served or counted as left out
    let existing = walk_count(&cgroup2_mount());
    assert_eq!(
        total + untracked,
        existing,
        "{total} served + {untracked} left out"
    );
    let used = cpu_seconds(&after, &first.name) - cpu_seconds(&before, &first.name);
    assert!(
        (0.35..0.65).contains(&used),
        "{used} s under {}",
        first.name
    );
    drop(many);
    // once they are gone there is room again and nothing is left out
    agent.snapshot();
    let snap = agent.snapshot();
    assert_eq!(snap.value("cgroup_untracked", &[]), 0);
}

/// With the default scan interval, a new cgroup is served within about a
/// second, and a removed one is gone from the next snapshot.
#[test]
fn new_cgroups_appear_within_the_scan_interval() {
    let _alone = alone();
    let agent = cgroup_agent("[samplers.cgroup_cpu]\nenabled = true\n");
    agent.snapshot();
    let c = Cgroup::top(&format!("rzt{}scan", std::process::id()));
    let made = Instant::now();
    while !names(&agent.snapshot()).contains(&c.name) {
        assert!(
            made.elapsed() < std::time::Duration::from_secs(3),
            "{} not served 3 s after it was made",
            c.name
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let name = c.name.clone();
    drop(c);
    assert!(
        !names(&agent.snapshot()).contains(&name),
        "{name} served after removal"
    );
}

/// With an open-file limit of 256 and 300 cgroups, every cgroup is still
/// served (files beyond the sampler's share are opened per read), and the
/// HTTP server keeps answering.
#[test]
fn a_low_open_file_limit_costs_neither_cgroups_nor_http() {
    let _alone = alone();
    let top = Cgroup::top(&format!("rzt{}fds", std::process::id()));
    let many: Vec<Cgroup> = (0..300).map(|i| top.child(&format!("f{i:03}"))).collect();
    let agent = Agent::start_limited(
        &[],
        "ttl = \"0s\"",
        &format!("[defaults]\nenabled = false\n{CPU}"),
        256,
        &[],
    );
    require_active(&agent, &["cgroup_cpu"]);
    for _ in 0..20 {
        let snap = agent.snapshot();
        let served = names(&snap);
        let missing: Vec<&String> = many
            .iter()
            .map(|c| &c.name)
            .filter(|n| !served.contains(*n))
            .collect();
        assert!(missing.is_empty(), "{} of 300 not served", missing.len());
        assert_eq!(snap.value("cgroup_untracked", &[]), 0);
    }
}

/// Removed cgroups make room at once: with `max_cgroups = 10` and 30
/// cgroups, removing 3 tracked ones lets 3 more in at the next walk.
#[test]
fn removed_cgroups_make_room_at_the_next_walk() {
    let _alone = alone();
    let top = Cgroup::top(&format!("rzt{}room", std::process::id()));
    let mut many: Vec<Cgroup> = (0..30).map(|i| top.child(&format!("r{i:02}"))).collect();
    let agent = cgroup_agent(&format!("{CPU}max_cgroups = 10\n"));
    let existing = walk_count(&cgroup2_mount());
    let snap = agent.snapshot();
    assert_eq!(names(&snap).len(), 10);
    assert_eq!(snap.value("cgroup_untracked", &[]) as usize, existing - 10);
    // remove three tracked ones
    let served = names(&snap);
    let mut removed = 0;
    many.retain(|c| {
        let tracked = served.contains(&c.name);
        if tracked && removed < 3 {
            removed += 1;
            false
        } else {
            true
        }
    });
    assert_eq!(
        removed, 3,
        "fewer than 3 of the test's cgroups were tracked"
    );
    let snap = agent.snapshot();
    assert_eq!(names(&snap).len(), 10, "{:?}", names(&snap));
    assert_eq!(
        snap.value("cgroup_untracked", &[]) as usize,
        existing - 3 - 10
    );
}

/// With cgroup v1 alone (the cgroup2 mount taken away in the agent's own
/// mount namespace): `cgroup_cpu` is unsupported with the reason, and the
/// syscall and scheduler samplers run without their per-cgroup metrics,
/// which `/samplers` lists as absent with the reason.
#[test]
fn with_cgroup_v1_alone_per_cgroup_metrics_are_reported_absent() {
    use std::os::unix::ffi::OsStrExt;
    let mount = std::ffi::CString::new(cgroup2_mount().as_os_str().as_bytes()).unwrap();
    let agent = Agent::start_with_setup(
        move || {
            common::private_mount_namespace()?;
            // SAFETY: a plain system call on a C string that outlives it
            if unsafe { libc::umount2(mount.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        },
        "",
        "[defaults]\nenabled = false\n\
         [samplers.cgroup_cpu]\nenabled = true\n\
         [samplers.syscall]\nenabled = true\n\
         [samplers.scheduler_runqueue]\nenabled = true\n",
    );
    let cpu = common::sampler_status(&agent, "cgroup_cpu");
    assert_eq!(cpu["state"], "unsupported", "{cpu}");
    assert!(cpu["reason"].as_str().unwrap().contains("cgroup2"), "{cpu}");
    for (sampler, metrics) in [
        ("syscall", &["cgroup_syscall"][..]),
        (
            "scheduler_runqueue",
            &[
                "cgroup_scheduler_runqueue_wait",
                "cgroup_scheduler_offcpu",
                "cgroup_scheduler_context_switch",
                "cgroup_cpu_migrations",
            ][..],
        ),
    ] {
        let status = common::sampler_status(&agent, sampler);
        assert_eq!(status["state"], "active", "{status}");
        for metric in metrics {
            let absent = status["absent"]
                .as_array()
                .unwrap_or_else(|| panic!("{sampler} lists nothing absent: {status}"))
                .iter()
                .find(|a| a["metric"] == *metric)
                .unwrap_or_else(|| panic!("{metric} not listed absent: {status}"));
            assert!(
                absent["reason"].as_str().unwrap().contains("cgroup2"),
                "{absent}"
            );
        }
    }
    let snap = agent.snapshot();
    assert!(snap.get("syscall", &[("op", "read")]).is_some());
    assert!(
        !snap.metrics().iter().any(|m| m.starts_with("cgroup_")),
        "{:?}",
        snap.metrics()
    );
}
