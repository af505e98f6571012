//! The floor of tracing cost, for `scripts/overhead`: loads and attaches
//! empty BPF programs (`src/bpf/floor.bpf.c`) on the tracepoints the
//! syscall and scheduler samplers use (`tp_btf/sys_enter`, `sys_exit`,
//! `sched_wakeup`, `sched_wakeup_new`, `sched_switch`), prints `ready`, and
//! keeps them attached until killed. A workload measured with this running
//! pays what any program on those hooks pays here, with no work in it.
//!
//! `floor_probe [syscall|scheduler|all]` (default `all`): which hooks.
//! Needs root (or CAP_BPF and CAP_PERFMON).

use std::io::Write;
use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};

mod floor {
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let (syscall, scheduler) = match which.as_str() {
        "all" => (true, true),
        "syscall" => (true, false),
        "scheduler" => (false, true),
        other => {
            eprintln!("floor_probe: expected syscall, scheduler or all, not {other:?}");
            std::process::exit(2);
        }
    };
    let mut object = MaybeUninit::uninit();
    let open = floor::FloorSkelBuilder::default()
        .open(&mut object)
        .unwrap_or_else(|e| fail("opening the floor programs", e));
    let skel = open
        .load()
        .unwrap_or_else(|e| fail("loading the floor programs", e));
    let progs = &skel.progs;
    let mut chosen = Vec::new();
    if syscall {
        chosen.extend([&progs.floor_sys_enter, &progs.floor_sys_exit]);
    }
    if scheduler {
        chosen.extend([
            &progs.floor_sched_wakeup,
            &progs.floor_sched_wakeup_new,
            &progs.floor_sched_switch,
        ]);
    }
    let _links: Vec<_> = chosen
        .into_iter()
        .map(|p| {
            p.attach()
                .unwrap_or_else(|e| fail("attaching a floor program", e))
        })
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

fn fail(what: &str, e: libbpf_rs::Error) -> ! {
    eprintln!("floor_probe: {what}: {e}");
    std::process::exit(1);
}
