//! `syscall`: system calls by op class, and their latency.
//!
//! Hooks: `tp_btf/sys_enter` (count, start time in task storage) and
//! `tp_btf/sys_exit` (latency histogram). Emits `syscall{op}` and `syscall`
//! (total) counters, `syscall_latency{op}` and `syscall_latency` (all
//! classes) histograms. The syscall-number-to-class table is built here for
//! the running architecture ([`classes`]) and written into the program's
//! read-only data before load.
//!
//! When the `filesystem_latency` sampler times system calls (fentry refused
//! or turned off), these programs do it for it, in the same runs
//! (`filesystem_latency.bpf.h`; see [`fs::Share`]).
//!
//! Option `latency_sampling = K`: time only one call in K per CPU (counts
//! stay exact). Each timed call costs two clock reads, which dominate this
//! sampler's overhead; sampling trades rare slow calls for that cost.
//!
//! Option `cgroups = 1` (the default) also counts each call for the calling
//! task's cgroup (v2): `cgroup_syscall{op, name}`, `name` being the cgroup's
//! path in the hierarchy. It is done in the same program, through the slots
//! of [`crate::cgroups::slots`] (cgroup-local storage, Linux 6.2 or later;
//! where that is missing the sampler runs without it and logs why). Tasks
//! count in their own cgroup only, not its ancestors. At most `max_cgroups`
//! cgroups (4096) are counted on their own; the rest count under
//! `name="other"` for as long as they live.

pub mod classes;

use super::filesystem_latency as fs;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/syscall.skel.rs"));
}

use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};

use crate::bpf::{
    check_support, choose_state_maps, classify, compat_map_option, load_path, open_skel,
    possible_cpus, untracked_counter, BankCounter, MmapArray, HISTOGRAM_BUCKETS,
};
use crate::cgroups::slots::{self, CgroupSlots, Column};
use crate::metrics::{MetricDef, Series, HISTOGRAM_GROUPING_POWER, HISTOGRAM_MAX_VALUE_POWER};
use crate::samplers::{
    Absent, Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS,
};
use crate::snapshot::Emitter;
use classes::CLASSES;

pub static SYSCALL: MetricDef = MetricDef::counter(
    "syscall",
    "syscalls",
    "System calls entered, by op class; without `op`, all of them",
)
.labels(&["op"]);
pub static SYSCALL_LATENCY: MetricDef = MetricDef::histogram(
    "syscall_latency",
    "nanoseconds",
    "Time from system call entry to exit, by op class; without `op`, all of them",
)
.labels(&["op"]);
pub static CGROUP_SYSCALL: MetricDef = MetricDef::counter(
    "cgroup_syscall",
    "syscalls",
    "System calls entered by the tasks of cgroup `name` (`other`: cgroups beyond `max_cgroups`, or removed before they were named), by op class",
)
.labels(&["op", "name"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "syscall",
    source: Source::Bpf("tp_btf/sys_enter, tp_btf/sys_exit"),
    options: &[
        SamplerOption {
            key: "latency_sampling",
            default: 1,
            min: 1,
            max: 1 << 16,
            description: "time one call in this many per CPU for syscall_latency (1: every call)",
        },
        slots::OPTION_CGROUPS,
        slots::OPTION_MAX_CGROUPS,
        slots::OPTION_SCAN_INTERVAL,
        compat_map_option(
            32768,
            "compatibility path: threads its hash map holds, each while it lives; a call by a thread beyond is counted but not timed, and in rezolus_bpf_untracked",
        ),
    ],
    metrics: || vec![&SYSCALL, &SYSCALL_LATENCY, &CGROUP_SYSCALL],
    init,
};

struct Syscall {
    // keeps the programs attached for as long as the sampler lives
    _skel: bpf::SyscallSkel<'static>,
    counts: MmapArray,
    latency: MmapArray,
    total: Arc<Series>,
    per_class: Vec<BankCounter>,
    latency_total: Arc<Series>,
    latency_per_class: Vec<Arc<Series>>,
    /// On the compatibility path: calls not timed, the thread map full.
    untracked: Option<BankCounter>,
    scratch: Vec<u64>,
    /// Per-cgroup counts, when on and supported.
    cgroups: Option<CgroupSlots>,
    /// The per-cgroup metrics, when wanted but unsupported here.
    absent: Vec<Absent>,
    method: String,
}

/// The bank's `UNTRACKED` counter (compatibility path): after a counter per
/// class and the sampling phase.
const UNTRACKED: usize = CLASSES.len() + 1;

/// Opens and loads the programs of one path, counting per cgroup or not,
/// and timing file system calls for filesystem_latency when it asked for
/// this path.
fn load(
    ctx: &SamplerContext,
    latency_sampling: u32,
    count_cgroups: bool,
    compat: bool,
) -> anyhow::Result<bpf::SyscallSkel<'static>> {
    let mut open = open_skel(
        bpf::SyscallSkelBuilder::default(),
        ctx,
        compat,
        "opening the syscall BPF object",
    )?;
    let maps = &mut open.maps;
    choose_state_maps(
        ctx,
        &SPEC,
        compat,
        &mut [&mut maps.start, &mut maps.fs_starts],
        &mut maps.start_compat,
    )?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| anyhow::anyhow!("the syscall BPF object has no .rodata section"))?;
    rodata.syscall_class = classes::table();
    rodata.latency_sampling = latency_sampling;
    rodata.count_cgroups = count_cgroups;
    let time_filesystems = fs::wanted(compat);
    rodata.time_filesystems = time_filesystems;
    if time_filesystems {
        rodata.fs_syscall_op = fs::syscall_ops();
    }
    let maps = &mut open.maps;
    fs::prepare(
        &mut maps.fs_counters,
        &mut maps.fs_latency,
        &mut maps.fs_untracked_compat,
        time_filesystems,
    )?;
    let cpus = possible_cpus()? as u32;
    open.maps
        .counts
        .set_max_entries(cpus)
        .map_err(|e| classify(e, "sizing the syscall counter banks"))?;
    slots::prepare(slots::open_parts!(open), count_cgroups, cpus)?;
    open.load()
        .map_err(|e| classify(e, "loading the syscall BPF programs"))
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let latency_sampling = ctx.option(&SPEC, "latency_sampling") as u32;
    let wanted = ctx.option(&SPEC, slots::OPTION_CGROUPS.key) == 1;
    let ((mut skel, support), method) = load_path(
        ctx,
        "tp_btf/sys_enter, tp_btf/sys_exit, task storage",
        "raw_tp/sys_enter, sys_exit, sched_process_exit, a hash map of threads",
        |compat| {
            if compat {
                return Ok((
                    load(ctx, latency_sampling, false, true)?,
                    slots::on_compat_path(wanted),
                ));
            }
            slots::load_with_cgroups(SPEC.name, "cgroup_syscall", &ctx.root, wanted, |cgroups| {
                load(ctx, latency_sampling, cgroups, false)
            })
        },
    )?;
    let compat = method.starts_with("compatibility");
    let absent = support.absent(&[&CGROUP_SYSCALL]);
    let cgroups = match support {
        slots::Support::On(mount) => Some(CgroupSlots::with_options(
            ctx,
            &SPEC,
            mount,
            slots::loaded_maps!(skel),
            CLASSES.len(),
            CLASSES
                .iter()
                .map(|op| Column {
                    metric: &CGROUP_SYSCALL,
                    labels: vec![("op", *op)],
                })
                .collect(),
        )?),
        _ => None,
    };
    // the free slots are filled before the first event
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/sys_enter and sys_exit"))?;
    if skel.maps.rodata_data.is_some_and(|r| r.time_filesystems) {
        let maps = &skel.maps;
        let mut shared = fs::FsMaps::new(&maps.fs_counters, &maps.fs_latency, &maps.fs_types)?;
        if compat {
            shared = shared.with_untracked(&maps.fs_untracked_compat)?;
        }
        fs::provide(shared, method.clone());
    }
    let counts = MmapArray::new(&skel.maps.counts)?;
    let latency = MmapArray::new(&skel.maps.latency)?;
    Ok(Box::new(Syscall {
        _skel: skel,
        counts,
        latency,
        total: Series::new(&SYSCALL, &[]),
        per_class: CLASSES
            .iter()
            .enumerate()
            .map(|(i, class)| BankCounter::new(&SYSCALL, &[("op", class)], i, None))
            .collect(),
        latency_total: Series::new(&SYSCALL_LATENCY, &[]),
        latency_per_class: CLASSES
            .iter()
            .map(|c| Series::new(&SYSCALL_LATENCY, &[("op", c)]))
            .collect(),
        untracked: compat.then(|| untracked_counter(&SPEC, UNTRACKED)),
        scratch: Vec::new(),
        cgroups,
        absent,
        method,
    }))
}

impl Sampler for Syscall {
    fn absent(&self) -> Vec<Absent> {
        self.absent.clone()
    }

    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }

    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let mut total = 0u64;
        for counter in &self.per_class {
            total = total.wrapping_add(counter.emit(&self.counts, &[], &mut self.scratch, out));
        }
        out.counter(&self.total, total);
        if let Some(untracked) = &self.untracked {
            untracked.emit(&self.counts, &[], &mut self.scratch, out);
        }

        let mut all = vec![0u64; HISTOGRAM_BUCKETS];
        for (class, series) in self.latency_per_class.iter().enumerate() {
            let histogram = self.latency.histogram(class);
            for (sum, bucket) in all.iter_mut().zip(histogram.as_slice()) {
                *sum = sum.wrapping_add(*bucket);
            }
            out.histogram(series, histogram);
        }
        let all = histogram::Histogram::from_buckets(
            HISTOGRAM_GROUPING_POWER,
            HISTOGRAM_MAX_VALUE_POWER,
            all,
        )?;
        out.histogram(&self.latency_total, all);
        if let Some(cgroups) = &mut self.cgroups {
            cgroups.emit(out)?;
        }
        Ok(())
    }
}
