//! `scheduler_runqueue_latency` against the scheduler's own count of
//! run-queue wait. In a test binary of its own: `cargo test` runs one
//! binary at a time, and the histogram is system-wide, so no other test's
//! threads may wait on the run queue meanwhile. Root only; CI runs it as
//! root.

mod common;

use std::time::Duration;

use common::{cores, pin_to, require_path, Agent, Snap};

/// A thread's run-queue wait so far, in ns: `run_delay`, the second field
/// of `/proc/self/task/TID/schedstat`, which the scheduler keeps itself
/// (sched_info), apart from any BPF program.
fn run_delay(tid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    text.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Nanoseconds a histogram gained between two snapshots, each observation
/// taken at its bucket's middle (grouping power 3: within 1/16 of the true
/// value for any value over 16 ns).
fn added_ns(before: &histogram::Histogram, after: &histogram::Histogram) -> f64 {
    before
        .iter()
        .zip(after.iter())
        .map(|(b, a)| (a.count() - b.count()) as f64 * (a.start() as f64 + a.end() as f64) / 2.0)
        .sum()
}

/// Two CPU-bound threads pinned to one CPU take turns by preemption, each
/// waiting on the run queue while the other runs. Over a second, the time
/// `scheduler_runqueue_latency` gains (system-wide) matches the two
/// threads' own run-queue wait as the scheduler counts it (`run_delay`):
/// no less than 90% of it (observations at bucket middles), no more than
/// 125% (others' waits, and a wait begun before the first snapshot).
#[test]
fn runqueue_latency_adds_up_to_the_schedulers_run_delay() {
    assert!(cores() >= 2, "needs two CPUs");
    for path in ["auto", "compat", "no-btf"] {
        runqueue_latency_adds_up_to_the_schedulers_run_delay_on(path);
    }
}

fn runqueue_latency_adds_up_to_the_schedulers_run_delay_on(path: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    eprintln!("scheduler_runqueue on path {path}");
    let agent = Agent::start_on(path, &["scheduler_runqueue"], "", "");
    require_path(&agent, &["scheduler_runqueue"], path);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let (stop, tx) = (stop.clone(), tx.clone());
            std::thread::spawn(move || {
                pin_to(1);
                tx.send(unsafe { libc::gettid() }).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let tids: Vec<i32> = (0..2).map(|_| rx.recv().unwrap()).collect();
    pin_to(0);
    std::thread::sleep(Duration::from_millis(100));

    let delay = || tids.iter().map(|&tid| run_delay(tid)).sum::<u64>();
    let rq = |s: &Snap| s.histogram("scheduler_runqueue_latency", &[]).clone();
    let before = agent.snapshot();
    let delay_before = delay();
    std::thread::sleep(Duration::from_secs(1));
    let delay_after = delay();
    let after = agent.snapshot();
    stop.store(true, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }

    let kernel = (delay_after - delay_before) as f64;
    let ours = added_ns(&rq(&before), &rq(&after));
    eprintln!("{path}: run_delay {kernel:.0} ns, scheduler_runqueue_latency {ours:.0} ns");
    // two threads sharing a CPU each wait about half the time
    assert!(
        kernel > 0.5e9,
        "run_delay {kernel} ns: did the threads share a CPU?"
    );
    assert!(
        ours >= 0.9 * kernel && ours <= 1.25 * kernel,
        "{path}: run-queue latency added {ours:.0} ns; the scheduler's run_delay {kernel:.0} ns"
    );
}
