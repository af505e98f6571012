//! CPU hotplug under a running agent. In its own test binary because it
//! takes a CPU offline: cargo runs test binaries one at a time, so no other
//! test runs meanwhile. Needs root and two CPUs (CI has both).

mod common;

use std::time::{Duration, Instant};

use common::{cores, ping_pong, require_active, Agent, Snap};

/// Takes a CPU offline; brings it back online when dropped, even if the
/// test fails.
struct Offline(usize);

impl Offline {
    fn new(cpu: usize) -> Self {
        set_online(cpu, false);
        Self(cpu)
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        set_online(self.0, true);
    }
}

fn set_online(cpu: usize, online: bool) {
    let path = format!("/sys/devices/system/cpu/cpu{cpu}/online");
    std::fs::write(&path, if online { "1" } else { "0" })
        .unwrap_or_else(|e| panic!("writing {path}: {e} (needs root)"));
}

/// Every counter of `before` is still there in `after` and has not gone
/// backwards.
fn assert_monotonic(before: &Snap, after: &Snap) {
    for e in &before.entries {
        let labels: Vec<(&str, &str)> = e
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let now = after
            .get(&e.metric, &labels)
            .unwrap_or_else(|| panic!("{} {labels:?} disappeared", e.metric));
        assert!(
            now >= e.value,
            "{} {labels:?}: {} -> {now}",
            e.metric,
            e.value
        );
    }
}

/// The last CPU goes offline and comes back while the agent runs: the
/// `cpu_software` totals never go backwards, and once the CPU is back its
/// own series count again (the agent opened a new group there without a
/// restart).
#[test]
fn cpu_hotplug_keeps_totals_and_counts_again_when_the_cpu_returns() {
    assert!(cores() >= 2, "needs two CPUs");
    let cpu = cores() - 1;
    let id = cpu.to_string();
    let agent = Agent::start(
        "",
        "[defaults]\nenabled = false\n[samplers.cpu_software]\nenabled = true\n",
    );
    require_active(&agent, &["cpu_software"]);
    ping_pong(cpu, 1000);
    let before = agent.snapshot();

    let offline = Offline::new(cpu);
    // CPU 0 keeps working and counting while the other is away; away for
    // longer than the agent's cached view of the online CPUs (1 s), so both
    // ways of noticing are exercised: a dead group, then the online list
    let switches =
        |s: &Snap, labels: &[(&str, &str)]| s.value("cpu_software_context_switches", labels);
    let away = Instant::now();
    let mut during = before;
    while away.elapsed() < Duration::from_millis(1500) {
        ping_pong(0, 1000);
        let now = agent.snapshot();
        assert_monotonic(&during, &now);
        assert!(switches(&now, &[]) >= switches(&during, &[]) + 2000);
        during = now;
    }
    drop(offline);

    // the agent notices within about a second; until then, nothing moves on
    // the returning CPU, so poll with a workload pinned there
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = agent.snapshot();
    loop {
        assert_monotonic(&during, &last);
        ping_pong(cpu, 1000);
        let now = agent.snapshot();
        assert_monotonic(&last, &now);
        let moved = switches(&now, &[("id", &id)]) - switches(&last, &[("id", &id)]);
        if moved >= 2000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "CPU {cpu} came back online but its context switches stopped at {}",
            switches(&now, &[("id", &id)])
        );
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
}
