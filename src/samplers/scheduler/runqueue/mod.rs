//! `scheduler_runqueue`: scheduler latency and context switches.
//!
//! Hooks: `tp_btf/sched_wakeup`, `tp_btf/sched_wakeup_new`,
//! `tp_btf/sched_switch`. Emits histograms `scheduler_runqueue_latency`
//! (runnable to running: after a wakeup, or after being preempted),
//! `scheduler_running` (time on CPU per slice) and `scheduler_offcpu` (switch
//! out to switch back in), and counters `scheduler_context_switch{kind}` per
//! CPU (`id`) and in total. The idle task is counted in switches but has no
//! latency samples.
//!
//! Option `cgroups = 1` (the default) also sums, per cgroup (v2) of the task
//! concerned, `name` being the cgroup's path in the hierarchy:
//! `cgroup_scheduler_runqueue_wait` and `cgroup_scheduler_offcpu`
//! (nanoseconds, added when the task is switched back in),
//! `cgroup_scheduler_context_switch{kind}` (counted for the task switched
//! out) and `cgroup_cpu_migrations` (a task switched in on a CPU other than
//! the one it last ran on: moves while it waits count once). Same program,
//! slots of [`crate::cgroups::slots`]; see the `syscall` sampler for the
//! limits (`max_cgroups`, `other`, Linux 6.2).

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/runqueue.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, choose_state_maps, classify, compat_map_option, load_path, open_skel,
    possible_cpus, tracepoint_arg_count, untracked_counter, BankCounter, MmapArray,
};
use crate::cgroups::slots::{self, CgroupSlots, Column};
use crate::metrics::{MetricDef, Series};
use crate::samplers::{Absent, Sampler, SamplerContext, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static RUNQUEUE_LATENCY: MetricDef = MetricDef::histogram(
    "scheduler_runqueue_latency",
    "nanoseconds",
    "Time tasks wait on a run queue: from wakeup or preemption until they run",
);
pub static RUNNING: MetricDef = MetricDef::histogram(
    "scheduler_running",
    "nanoseconds",
    "Time tasks run on a CPU per slice",
);
pub static OFFCPU: MetricDef = MetricDef::histogram(
    "scheduler_offcpu",
    "nanoseconds",
    "Time tasks spend off CPU: from switch out until switched back in",
);
pub static CONTEXT_SWITCH: MetricDef = MetricDef::counter(
    "scheduler_context_switch",
    "switches",
    "Context switches: `voluntary` (the task blocked) or `involuntary` (preempted while runnable); without `id`, all CPUs",
)
.labels(&["kind", "id"]);
pub static CGROUP_RUNQUEUE_WAIT: MetricDef = MetricDef::counter(
    "cgroup_scheduler_runqueue_wait",
    "nanoseconds",
    "Time the tasks of cgroup `name` waited on a run queue (from wakeup or preemption until they ran)",
)
.labels(&["name"]);
pub static CGROUP_OFFCPU: MetricDef = MetricDef::counter(
    "cgroup_scheduler_offcpu",
    "nanoseconds",
    "Time the tasks of cgroup `name` spent off CPU (from switch out until switched back in)",
)
.labels(&["name"]);
pub static CGROUP_CONTEXT_SWITCH: MetricDef = MetricDef::counter(
    "cgroup_scheduler_context_switch",
    "switches",
    "Context switches of the tasks of cgroup `name`: `voluntary` (the task blocked) or `involuntary` (preempted while runnable)",
)
.labels(&["kind", "name"]);
pub static CGROUP_MIGRATIONS: MetricDef = MetricDef::counter(
    "cgroup_cpu_migrations",
    "migrations",
    "Times a task of cgroup `name` started running on a CPU other than the one it last ran on",
)
.labels(&["name"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "scheduler_runqueue",
    source: Source::Bpf("tp_btf/sched_wakeup, tp_btf/sched_wakeup_new, tp_btf/sched_switch"),
    options: &[
        slots::OPTION_CGROUPS,
        slots::OPTION_MAX_CGROUPS,
        slots::OPTION_SCAN_INTERVAL,
        compat_map_option(
            32768,
            "compatibility path: tasks its hash map holds, each while it lives; a task beyond is counted but not timed, its wakeups and switches in rezolus_bpf_untracked",
        ),
    ],
    metrics: || {
        vec![
            &RUNQUEUE_LATENCY,
            &RUNNING,
            &OFFCPU,
            &CONTEXT_SWITCH,
            &CGROUP_RUNQUEUE_WAIT,
            &CGROUP_OFFCPU,
            &CGROUP_CONTEXT_SWITCH,
            &CGROUP_MIGRATIONS,
        ]
    },
    init,
};

/// Counters per cgroup slot (`CGROUP_COUNTERS` in runqueue.bpf.c).
const CGROUP_WIDTH: usize = 8;

/// The per-cgroup counters, in the order of the BPF `CG_*` constants.
fn cgroup_columns() -> Vec<Column> {
    let column = |metric, labels| Column { metric, labels };
    vec![
        column(&CGROUP_RUNQUEUE_WAIT, vec![]),
        column(&CGROUP_OFFCPU, vec![]),
        column(&CGROUP_CONTEXT_SWITCH, vec![("kind", "voluntary")]),
        column(&CGROUP_CONTEXT_SWITCH, vec![("kind", "involuntary")]),
        column(&CGROUP_MIGRATIONS, vec![]),
    ]
}

/// Counter order in the BPF bank (`VOLUNTARY`, `INVOLUNTARY`).
const KINDS: [&str; 2] = ["voluntary", "involuntary"];

/// The bank's `UNTRACKED` counter (compatibility path).
const UNTRACKED: usize = 2;

struct Runqueue {
    _skel: bpf::RunqueueSkel<'static>,
    switches: MmapArray,
    histograms: MmapArray,
    /// Histogram series in BPF order: runqueue latency, running, off-CPU.
    histogram_series: [Arc<Series>; 3],
    switch_counters: Vec<BankCounter>,
    /// On the compatibility path: tasks not followed, the task map full.
    untracked: Option<BankCounter>,
    scratch: Vec<u64>,
    /// Per-cgroup sums, when on and supported.
    cgroups: Option<CgroupSlots>,
    /// The per-cgroup metrics, when wanted but unsupported here.
    absent: Vec<Absent>,
    method: String,
}

/// Opens and loads the programs of one path, summing per cgroup or not
/// (never on the compatibility path).
fn load(
    ctx: &SamplerContext,
    count_cgroups: bool,
    compat: bool,
) -> anyhow::Result<bpf::RunqueueSkel<'static>> {
    let mut open = open_skel(
        bpf::RunqueueSkelBuilder::default(),
        ctx,
        compat,
        "opening the scheduler BPF object",
    )?;
    // task storage does not exist before 5.11 (times_compat, the hash map,
    // is made on the compatibility path only)
    let maps = &mut open.maps;
    choose_state_maps(
        ctx,
        &SPEC,
        compat,
        &mut [&mut maps.times],
        &mut maps.times_compat,
    )?;
    let cpus = possible_cpus()? as u32;
    open.maps
        .switches
        .set_max_entries(cpus)
        .map_err(|e| classify(e, "sizing the context switch banks"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow::anyhow!("the scheduler BPF object has no .rodata section"))?;
    rodata.count_cgroups = count_cgroups;
    // sched_switch passes prev_state (its fourth argument) on newer kernels
    rodata.switch_has_prev_state = tracepoint_arg_count(ctx, "sched_switch") >= Some(4);
    slots::prepare(slots::open_parts!(open), count_cgroups, cpus)?;
    open.load()
        .map_err(|e| classify(e, "loading the scheduler BPF programs"))
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let cpus = possible_cpus()?;
    let wanted = ctx.option(&SPEC, slots::OPTION_CGROUPS.key) == 1;
    let ((mut skel, support), method) = load_path(
        ctx,
        "tp_btf/sched_wakeup, tp_btf/sched_wakeup_new, tp_btf/sched_switch, task storage",
        "raw_tp/sched_wakeup, sched_wakeup_new, sched_switch, a hash map of tasks",
        |compat| {
            if compat {
                return Ok((load(ctx, false, true)?, slots::on_compat_path(wanted)));
            }
            slots::load_with_cgroups(
                SPEC.name,
                "per-cgroup scheduling",
                &ctx.root,
                wanted,
                |cgroups| load(ctx, cgroups, false),
            )
        },
    )?;
    let compat = method.starts_with("compatibility");
    let absent = support.absent(&[
        &CGROUP_RUNQUEUE_WAIT,
        &CGROUP_OFFCPU,
        &CGROUP_CONTEXT_SWITCH,
        &CGROUP_MIGRATIONS,
    ]);
    let cgroups = match support {
        slots::Support::On(mount) => Some(CgroupSlots::with_options(
            ctx,
            &SPEC,
            mount,
            slots::loaded_maps!(skel),
            CGROUP_WIDTH,
            cgroup_columns(),
        )?),
        _ => None,
    };
    // the free slots are filled before the first event
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to sched_wakeup, sched_wakeup_new, sched_switch",
        )
    })?;
    let switches = MmapArray::new(&skel.maps.switches)?;
    let histograms = MmapArray::new(&skel.maps.histograms)?;
    Ok(Box::new(Runqueue {
        _skel: skel,
        switches,
        histograms,
        histogram_series: [
            Series::new(&RUNQUEUE_LATENCY, &[]),
            Series::new(&RUNNING, &[]),
            Series::new(&OFFCPU, &[]),
        ],
        switch_counters: KINDS
            .iter()
            .enumerate()
            .map(|(i, kind)| BankCounter::new(&CONTEXT_SWITCH, &[("kind", kind)], i, Some(cpus)))
            .collect(),
        untracked: compat.then(|| untracked_counter(&SPEC, UNTRACKED)),
        scratch: Vec::new(),
        cgroups,
        absent,
        method,
    }))
}

impl Sampler for Runqueue {
    fn absent(&self) -> Vec<Absent> {
        self.absent.clone()
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }

    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let online = crate::source::online_cpus();
        for counter in self.switch_counters.iter().chain(&self.untracked) {
            counter.emit(&self.switches, &online, &mut self.scratch, out);
        }
        for (h, series) in self.histogram_series.iter().enumerate() {
            out.histogram(series, self.histograms.histogram(h));
        }
        if let Some(cgroups) = &mut self.cgroups {
            cgroups.emit(out)?;
        }
        Ok(())
    }
}
