//! The perf_events samplers against real workloads. CI runs these as root.
//! The software events work on every Linux machine; the hardware samplers
//! are checked against what the kernel itself says about the PMU: with one,
//! counts must follow a known workload; without one (as in a VM without a
//! virtual PMU), they must report `unsupported` with the reason and serve
//! nothing, while `cpu_software` counts.

mod common;

use std::time::{Duration, Instant};

use common::{
    cores, counter_delta, has_hardware_pmu, pin_to, ping_pong, require_active, sampler_status,
    Agent, Snap,
};

const HARDWARE: [&str; 4] = ["cpu_perf", "cpu_branch", "cpu_dtlb", "cpu_cache"];

/// The CPU the tests load: the last one, away from CPU 0's housekeeping.
fn test_cpu() -> usize {
    cores() - 1
}

fn only(samplers: &[&str]) -> String {
    let mut config = String::from("[defaults]\nenabled = false\n");
    for s in samplers {
        config.push_str(&format!("[samplers.{s}]\nenabled = true\n"));
    }
    config
}

/// Touches `pages` fresh 4 KiB pages (no huge pages), each a minor fault.
fn touch_fresh_pages(pages: usize) {
    let len = pages * 4096;
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        for i in 0..pages {
            std::ptr::write_volatile((p as *mut u8).add(i * 4096), 1);
        }
        libc::munmap(p, len);
    }
}

/// Context switches and page faults made on one CPU move that CPU's
/// series by at least that many, and by not much more.
#[test]
fn software_events_follow_a_pinned_workload() {
    const M: usize = 20_000;
    const PAGES: usize = 20_000;
    let cpu = test_cpu();
    let id = cpu.to_string();
    let agent = Agent::start("", &only(&["cpu_software"]));
    require_active(&agent, &["cpu_software"]);

    let before = agent.snapshot();
    ping_pong(cpu, M);
    std::thread::spawn(move || {
        pin_to(cpu);
        touch_fresh_pages(PAGES);
    })
    .join()
    .unwrap();
    let after = agent.snapshot();

    let switches = counter_delta(
        &before,
        &after,
        "cpu_software_context_switches",
        &[("id", &id)],
    );
    assert!(
        (2 * M as i128..6 * M as i128).contains(&switches),
        "cpu_software_context_switches{{id={id}}} moved {switches} for {M} pinned round trips"
    );
    let faults = counter_delta(
        &before,
        &after,
        "cpu_software_page_faults",
        &[("kind", "minor"), ("id", &id)],
    );
    assert!(
        (PAGES as i128..2 * PAGES as i128).contains(&faults),
        "minor faults on CPU {id} moved {faults} for {PAGES} pages"
    );
    // the totals cover every CPU
    let total = counter_delta(&before, &after, "cpu_software_context_switches", &[]);
    assert!(total >= switches, "total {total} < CPU {id}'s {switches}");
    let per_cpu: i128 = (0..cores())
        .map(|c| after.value("cpu_software_context_switches", &[("id", &c.to_string())]))
        .sum();
    assert_eq!(per_cpu, after.value("cpu_software_context_switches", &[]));
}

/// Moving a thread between CPU 0 and the last CPU by affinity: every move is
/// counted on the CPU it lands on.
#[test]
fn software_migrations_follow_affinity_changes() {
    const K: i128 = 50;
    assert!(cores() >= 2, "needs two CPUs");
    let other = test_cpu();
    let agent = Agent::start("", &only(&["cpu_software"]));
    let before = agent.snapshot();
    std::thread::spawn(move || {
        for i in 0..2 * K {
            pin_to(if i % 2 == 0 { other } else { 0 });
            std::hint::black_box((0..1000).sum::<u64>());
        }
    })
    .join()
    .unwrap();
    let after = agent.snapshot();
    for cpu in [0, other] {
        let moved = counter_delta(
            &before,
            &after,
            "cpu_software_migrations",
            &[("id", &cpu.to_string())],
        );
        assert!(
            moved >= K - 1,
            "cpu_software_migrations{{id={cpu}}} moved {moved}"
        );
    }
}

/// Each group's enabled time follows the wall clock, and software events,
/// which never multiplex, run all the time they are enabled.
#[test]
fn group_times_follow_the_wall_clock() {
    let agent = Agent::start("", &only(&["cpu_software"]));
    let before = agent.snapshot();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let after = agent.snapshot();
    let wall = started.elapsed().as_nanos() as i128;
    for cpu in 0..cores() {
        let labels = [("sampler", "cpu_software"), ("id", &*cpu.to_string())];
        let enabled = counter_delta(&before, &after, "perf_group_time_enabled", &labels);
        let running = counter_delta(&before, &after, "perf_group_time_running", &labels);
        assert!(
            enabled > wall * 8 / 10 && enabled < wall * 12 / 10,
            "CPU {cpu}: enabled {enabled} ns over {wall} ns"
        );
        assert_eq!(running, enabled, "CPU {cpu}");
    }
}

/// Retires `2n` instructions (and a handful more) in a loop whose length is
/// known exactly.
fn retire_2n_instructions(n: u64) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) n => _, options(nomem, nostack));
    }
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("2:", "subs {n}, {n}, #1", "b.ne 2b", n = inout(reg) n => _, options(nomem, nostack));
    }
}

fn hardware_metrics(snap: &Snap) -> Vec<&str> {
    snap.metrics()
        .into_iter()
        .filter(|m| {
            m.starts_with("cpu_cycles")
                || m.starts_with("cpu_instructions")
                || m.starts_with("cpu_branch")
                || m.starts_with("cpu_dtlb")
                || m.starts_with("cpu_cache")
                || m.starts_with("cpu_frequency")
        })
        .collect()
}

/// With a PMU: a thread pinned to one CPU retiring a known number of
/// instructions moves that CPU's `cpu_instructions` by at least that many
/// and by less than ten times as many. Without one: every hardware sampler
/// is unsupported with the reason, none of their metrics is served, and the
/// software events still count.
#[test]
fn hardware_counters_follow_instructions_or_report_no_pmu() {
    const N: u64 = 500_000_000;
    let mut samplers = HARDWARE.to_vec();
    samplers.push("cpu_software");
    let agent = Agent::start("", &only(&samplers));
    let cpu = test_cpu();
    let id = cpu.to_string();

    if !has_hardware_pmu() {
        for name in HARDWARE {
            let s = sampler_status(&agent, name);
            assert_eq!(s["state"], "unsupported", "{s}");
            let reason = s["reason"].as_str().unwrap();
            assert!(reason.contains("no PMU here counts it"), "{s}");
        }
        require_active(&agent, &["cpu_software"]);
        let snap = agent.snapshot();
        assert!(
            hardware_metrics(&snap).is_empty(),
            "{:?}",
            hardware_metrics(&snap)
        );
        assert!(snap.get("cpu_software_context_switches", &[]).is_some());
        return;
    }

    require_active(&agent, &HARDWARE);
    let before = agent.snapshot();
    std::thread::spawn(move || {
        pin_to(cpu);
        retire_2n_instructions(N);
    })
    .join()
    .unwrap();
    let after = agent.snapshot();
    let retired = counter_delta(&before, &after, "cpu_instructions", &[("id", &id)]);
    let known = 2 * N as i128;
    assert!(
        (known..10 * known).contains(&retired),
        "cpu_instructions{{id={id}}} moved {retired} for {known} instructions"
    );
    let cycles = counter_delta(&before, &after, "cpu_cycles", &[("id", &id)]);
    assert!(cycles > 0, "cpu_cycles{{id={id}}} moved {cycles}");
    let branches = counter_delta(&before, &after, "cpu_branch_instructions", &[("id", &id)]);
    assert!(
        branches >= N as i128,
        "{branches} branches for a {N}-iteration loop"
    );
    // a busy CPU runs at some plausible frequency, however it is estimated
    let hz = after
        .entries
        .iter()
        .find(|e| e.metric == "cpu_frequency" && e.labels.get("id") == Some(&id))
        .map(|e| e.value)
        .expect("cpu_frequency for the busy CPU");
    assert!((50_000_000..10_000_000_000).contains(&hz), "{hz} Hz");
}

/// Run as an unprivileged user, the perf samplers say what they need.
#[test]
fn unprivileged_perf_samplers_are_unsupported() {
    const NOBODY: u32 = 65534;
    let agent = Agent::start_as(Some(NOBODY), "", &only(&["cpu_software", "cpu_perf"]));
    for name in ["cpu_software", "cpu_perf"] {
        let s = sampler_status(&agent, name);
        assert_eq!(s["state"], "unsupported", "{s}");
        assert!(s["reason"].as_str().unwrap().contains("CAP_PERFMON"), "{s}");
    }
}
