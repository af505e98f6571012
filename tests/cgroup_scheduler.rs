//! Per-cgroup scheduling (the scheduler sampler's `cgroups` option) against
//! cgroups the test makes in the machine's cgroup v2 hierarchy, with python3
//! processes moved into them. Independent counts come from the kernel's own
//! per-task accounting (getrusage, /proc/PID/schedstat). Root only: CI runs
//! these as root.

mod common;

use common::cgroups::{alone, Cgroup};
use common::{require_active, Agent, Snap};

fn scheduler_agent() -> Agent {
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n\
         [samplers.scheduler_runqueue]\nenabled = true\ncgroup_scan_interval_ms = 0\n",
    );
    require_active(&agent, &["scheduler_runqueue"]);
    agent
}

fn value(snap: &Snap, metric: &str, labels: &[(&str, &str)]) -> i128 {
    snap.get(metric, labels).unwrap_or(0)
}

/// Every per-cgroup scheduler count of `name`, keyed "metric kind".
fn counts(snap: &Snap, name: &str) -> [(&'static str, i128); 5] {
    let switches = |kind| {
        value(
            snap,
            "cgroup_scheduler_context_switch",
            &[("kind", kind), ("name", name)],
        )
    };
    [
        ("voluntary", switches("voluntary")),
        ("involuntary", switches("involuntary")),
        (
            "runqueue_wait",
            value(snap, "cgroup_scheduler_runqueue_wait", &[("name", name)]),
        ),
        (
            "offcpu",
            value(snap, "cgroup_scheduler_offcpu", &[("name", name)]),
        ),
        (
            "migrations",
            value(snap, "cgroup_cpu_migrations", &[("name", name)]),
        ),
    ]
}

fn moved(before: &Snap, after: &Snap, name: &str) -> std::collections::HashMap<&'static str, i128> {
    counts(before, name)
        .into_iter()
        .zip(counts(after, name))
        .map(|((k, b), (_, a))| (k, a - b))
        .collect()
}

/// Two processes pinned to one CPU play pipe ping-pong N times in one of
/// two sibling cgroups. Each reports its own context switches (getrusage)
/// and run-queue wait (the kernel's run_delay from /proc/self/schedstat)
/// over the game. The cgroup's switches cover theirs (plus a few for fork
/// and exit), its run-queue wait is within 25% of theirs, its off-CPU time
/// covers the wait; the sibling's counts do not move.
#[test]
fn pipe_ping_pong_moves_its_cgroups_switches_and_run_queue_wait() {
    const N: usize = 20_000;
    let _alone = alone();
    let agent = scheduler_agent();
    let top = Cgroup::top(&format!("rzt{}sched", std::process::id()));
    let (busy, idle) = (top.child("busy"), top.child("idle"));
    let before = agent.snapshot();
    let report = busy.python(&format!(
        r#"import resource
os.sched_setaffinity(0, {{0}})
def mine():
    r = resource.getrusage(resource.RUSAGE_SELF)
    delay = int(open('/proc/self/schedstat').read().split()[1])
    return r.ru_nvcsw + r.ru_nivcsw, delay
a_r, a_w = os.pipe()
b_r, b_w = os.pipe()
pid = os.fork()
if pid == 0:
    s, d = mine()
    for _ in range({N}):
        os.read(a_r, 1)
        os.write(b_w, b'x')
    e, f = mine()
    os.write(b_w, ('%d %d' % (e - s, f - d)).encode().ljust(64))
    os._exit(0)
s, d = mine()
for _ in range({N}):
    os.write(a_w, b'x')
    os.read(b_r, 1)
child = os.read(b_r, 64).split()
e, f = mine()
os.waitpid(pid, 0)
print(e - s + int(child[0]), f - d + int(child[1]))
"#
    ));
    let after = agent.snapshot();
    let mut fields = report
        .split_whitespace()
        .map(|f| f.parse::<i128>().unwrap());
    let (switches, run_delay) = (fields.next().unwrap(), fields.next().unwrap());
    let got = moved(&before, &after, &busy.name);
    let cgroup_switches = got["voluntary"] + got["involuntary"];
    assert!(
        switches >= 2 * N as i128 - 10,
        "the processes report {switches} switches for {N} round trips"
    );
    assert!(
        (switches..switches + 200).contains(&cgroup_switches),
        "{cgroup_switches} switches under {} ({got:?}); the processes report {switches}",
        busy.name
    );
    let wait = got["runqueue_wait"] as f64;
    assert!(
        wait >= 0.8 * run_delay as f64 && wait <= 1.25 * run_delay as f64 + 1e6,
        "{wait} ns waited under {}; the kernel's run_delay is {run_delay} ns",
        busy.name
    );
    assert!(got["offcpu"] >= got["runqueue_wait"], "{got:?}");
    let still = moved(&before, &after, &idle.name);
    assert!(
        still.values().all(|v| *v == 0),
        "the idle sibling moved: {still:?}"
    );
}

/// A thread made to alternate between two CPUs K times is counted as
/// migrating under its cgroup as often as the kernel's own count for it
/// (`se.nr_migrations` in /proc/self/sched, which also counts moves that no
/// switch-in follows, so ours may be a few less).
#[test]
fn affinity_changes_move_the_cgroups_migrations() {
    const K: i128 = 2000;
    let _alone = alone();
    let agent = scheduler_agent();
    let top = Cgroup::top(&format!("rzt{}migr", std::process::id()));
    let (busy, idle) = (top.child("busy"), top.child("idle"));
    let before = agent.snapshot();
    let report = busy.python(&format!(
        r#"def migrations():
    for line in open('/proc/self/sched'):
        if line.startswith('se.nr_migrations'):
            return int(line.split(':')[1])
start = migrations()
for i in range({K}):
    os.sched_setaffinity(0, {{i % 2}})
print(migrations() - start)
"#
    ));
    let after = agent.snapshot();
    let kernel: i128 = report.trim().parse().unwrap();
    let got = moved(&before, &after, &busy.name);
    assert!(
        kernel >= K / 2,
        "the kernel counts {kernel} migrations for {K}"
    );
    assert!(
        (kernel - K / 100..kernel + 10).contains(&got["migrations"]),
        "{} migrations under {}; the kernel counts {kernel}",
        got["migrations"],
        busy.name
    );
    let still = moved(&before, &after, &idle.name);
    assert_eq!(still["migrations"], 0, "the idle sibling moved: {still:?}");
}
