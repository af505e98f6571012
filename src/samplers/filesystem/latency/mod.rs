//! `filesystem_latency`: read, write, open and fsync latency per file system
//! type.
//!
//! Emits histograms `filesystem_latency{fs, op}` (nanoseconds) and counters
//! `filesystem_operations{fs, op}`, `op` = read, write, open, fsync, `fs` =
//! the kernel's name for the type (`ext4`, `xfs`, `btrfs`, `tmpfs`, ... as in
//! `/proc/filesystems`). A type's series appear with its first operation;
//! calls that fail are not counted. Up to 16 types are counted on their
//! own, the rest as `fs="other"`.
//!
//! Two ways in, chosen at start and named in `/samplers` (`method`):
//! - **fentry**: fentry/fexit on the file systems' own file operations
//!   ([`TARGETS`]: ext4, xfs, btrfs, tmpfs, f2fs, nfs; a type whose functions
//!   this kernel lacks is not measured). The time is spent in the file
//!   system, whoever called it: read(2), io_uring, the kernel itself.
//! - **syscalls**: `tp_btf/sys_enter` and `sys_exit`, for read, pread64,
//!   readv, preadv, preadv2 (op read), the same for write, open, openat,
//!   openat2, creat (op open), fsync and fdatasync (op fsync), on regular
//!   files and directories. The time is the whole system call, page-cache
//!   hits included (as ext4dist measures); IO through io_uring or AIO is not
//!   seen, and neither are 32-bit compat system calls. Used where fentry can't
//!   load (some kernels refuse it: EPERM), or with option `fentry = 0`. When
//!   the `syscall` sampler runs too, its programs do this work
//!   ([`Share`]): a second pair of programs on those tracepoints would
//!   cost every system call two more dispatches.
//!
//! Type names come from the kernel (`file->f_inode->i_sb->s_type->name`);
//! types get a slot in the BPF program on first use, without a hash map
//! (`filesystem_latency.bpf.h`).

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/filesystem_latency.skel.rs"));
}

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, Skel};
use libbpf_rs::MapCore;

use crate::bpf::{
    check_support, choose_state_maps, classify, compat_map_option, kernel_has_btf, load_path,
    open_skel, possible_cpus, untracked_counter, BankCounter, MmapArray, NamedSlots,
    COMPAT_MAP_ENTRIES, HISTOGRAM_BUCKETS,
};
use crate::metrics::{MetricDef, Series};
use crate::samplers::BpfPath;
use crate::samplers::{Sampler, SamplerContext, SamplerOption, SamplerSpec, Source, SAMPLERS};
use crate::snapshot::Emitter;

pub static LATENCY: MetricDef = MetricDef::histogram(
    "filesystem_latency",
    "nanoseconds",
    "Latency of file system operations, by file system type (`fs`) and op; `method` in /samplers says what is timed",
)
.labels(&["fs", "op"]);
pub static OPERATIONS: MetricDef = MetricDef::counter(
    "filesystem_operations",
    "operations",
    "File system operations completed without error, by file system type (`fs`) and op",
)
.labels(&["fs", "op"]);

#[linkme::distributed_slice(SAMPLERS)]
static SPEC: SamplerSpec = SamplerSpec {
    name: "filesystem_latency",
    source: Source::Bpf(
        "fentry/fexit on file systems' file operations, else tp_btf/sys_enter and sys_exit",
    ),
    options: &[SamplerOption {
        key: "fentry",
        default: 1,
        min: 0,
        max: 1,
        description: "1: time the file systems' own operations with fentry/fexit where the kernel allows, else the system calls; 0: always the system calls",
    },
    compat_map_option(
        32768,
        "compatibility path, in this sampler's own programs: threads its hash map holds, each while it lives; an operation by a thread beyond is neither counted nor timed, and is counted in rezolus_bpf_untracked (in the syscall sampler's programs, that sampler's map and option)",
    )],
    metrics: || vec![&LATENCY, &OPERATIONS],
    init,
};

/// The ops, in the order of `FS_OP_*` in filesystem_latency.h.
pub const OPS: [&str; 4] = ["read", "write", "open", "fsync"];
/// `FS_TYPES` in filesystem_latency.bpf.h.
const FS_TYPES: usize = 16;
const FS_SLOTS: usize = FS_TYPES + 1;
/// `FS_MAX_SYSCALL_NR` in filesystem_latency.bpf.h.
pub const MAX_SYSCALL_NR: usize = 1024;

/// fentry targets: per file system, its read_iter, write_iter, open and
/// fsync file operations (`None`: it has none of its own). At most six
/// (`TARGET(N)` slots in the BPF source).
pub const TARGETS: [(&str, [Option<&str>; 4]); 6] = [
    (
        "ext4",
        [
            Some("ext4_file_read_iter"),
            Some("ext4_file_write_iter"),
            Some("ext4_file_open"),
            Some("ext4_sync_file"),
        ],
    ),
    (
        "xfs",
        [
            Some("xfs_file_read_iter"),
            Some("xfs_file_write_iter"),
            Some("xfs_file_open"),
            Some("xfs_file_fsync"),
        ],
    ),
    (
        "btrfs",
        [
            Some("btrfs_file_read_iter"),
            Some("btrfs_file_write_iter"),
            Some("btrfs_file_open"),
            Some("btrfs_sync_file"),
        ],
    ),
    // tmpfs opens and fsyncs with generic helpers shared by other types
    (
        "tmpfs",
        [
            Some("shmem_file_read_iter"),
            Some("shmem_file_write_iter"),
            None,
            None,
        ],
    ),
    (
        "f2fs",
        [
            Some("f2fs_file_read_iter"),
            Some("f2fs_file_write_iter"),
            Some("f2fs_file_open"),
            Some("f2fs_sync_file"),
        ],
    ),
    (
        "nfs",
        [
            Some("nfs_file_read"),
            Some("nfs_file_write"),
            Some("nfs_file_open"),
            Some("nfs_file_fsync"),
        ],
    ),
];

/// Syscall number to op + 1 (0: not traced), for this architecture.
pub fn syscall_ops() -> [u8; MAX_SYSCALL_NR] {
    use libc::*;
    let mut table = [0u8; MAX_SYSCALL_NR];
    let mut set = |nrs: &[c_long], op: u8| {
        for &nr in nrs {
            if let Some(slot) = usize::try_from(nr).ok().and_then(|n| table.get_mut(n)) {
                *slot = op + 1;
            }
        }
    };
    set(
        &[SYS_read, SYS_pread64, SYS_readv, SYS_preadv, SYS_preadv2],
        0,
    );
    set(
        &[
            SYS_write,
            SYS_pwrite64,
            SYS_writev,
            SYS_pwritev,
            SYS_pwritev2,
        ],
        1,
    );
    set(&[SYS_openat, SYS_openat2], 2);
    #[cfg(target_arch = "x86_64")]
    set(&[SYS_open, SYS_creat], 2);
    set(&[SYS_fsync, SYS_fdatasync], 3);
    table
}

/// The text symbols of `/proc/kallsyms` among `wanted`.
fn kernel_functions(root: &Path, wanted: &[&str]) -> std::collections::HashSet<String> {
    let Ok(text) = std::fs::read(root.join("proc/kallsyms")) else {
        return Default::default();
    };
    crate::source::lines(&text)
        .filter_map(|line| {
            let mut fields = line.split(|b| *b == b' ');
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            let name = std::str::from_utf8(name).ok()?;
            let name = name.split('\t').next()?;
            (matches!(kind, b"t" | b"T") && wanted.contains(&name)).then(|| name.to_string())
        })
        .collect()
}

/// Loads the fentry programs on every target function this kernel has.
fn load_fentry(
    ctx: &SamplerContext,
    root: &Path,
) -> anyhow::Result<(bpf::FilesystemLatencySkel<'static>, String)> {
    let wanted: Vec<&str> = TARGETS
        .iter()
        .flat_map(|(_, f)| f.iter().flatten().copied())
        .collect();
    let present = kernel_functions(root, &wanted);
    let mut open = open(ctx, false, false)?;
    let mut measured = Vec::new();
    for prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let target = name
            .rsplit_once('_')
            .and_then(|(head, n)| Some((head, n.parse::<usize>().ok()?)))
            .and_then(|(head, n)| {
                let op = OPS.iter().position(|op| head.starts_with(op))?;
                let (fs, functions) = TARGETS.get(n)?;
                Some((*fs, functions[op]?))
            });
        let mut prog = prog;
        match target {
            Some((fs, function)) if present.contains(function) => {
                prog.set_attach_target(0, Some(function.to_string()))
                    .map_err(|e| classify(e, &format!("targeting {function}")))?;
                if !measured.contains(&fs) {
                    measured.push(fs);
                }
            }
            _ => prog.set_autoload(false),
        }
    }
    if measured.is_empty() {
        return Err(crate::source::Unsupported(format!(
            "none of the file systems' operations is in {}",
            root.join("proc/kallsyms").display()
        ))
        .into());
    }
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the fentry/fexit programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching fentry/fexit to the file systems' operations"))?;
    Ok((skel, format!("fentry: {}", measured.join(", "))))
}

/// Loads this sampler's own system call programs.
fn load_syscalls(ctx: &SamplerContext) -> anyhow::Result<bpf::FilesystemLatencySkel<'static>> {
    let mut open = open(ctx, true, false)?;
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        if !name.starts_with("fs_sys_") || name.ends_with("_compat") {
            prog.set_autoload(false);
        }
    }
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the system call programs"))?;
    skel.attach()
        .map_err(|e| classify(e, "attaching to tp_btf/sys_enter and sys_exit"))?;
    Ok(skel)
}

/// Loads the compatibility path's programs: raw tracepoints on the system
/// calls, a hash map of threads.
fn load_compat(ctx: &SamplerContext) -> anyhow::Result<bpf::FilesystemLatencySkel<'static>> {
    let open = open(ctx, true, true)?;
    let mut skel = open
        .load()
        .map_err(|e| classify(e, "loading the compatibility path's programs"))?;
    skel.attach().map_err(|e| {
        classify(
            e,
            "attaching to raw_tp/sys_enter, sys_exit and sched_process_exit",
        )
    })?;
    Ok(skel)
}

/// Opens the object and sizes its maps; with `syscalls`, fills in the
/// system call table.
fn open(
    ctx: &SamplerContext,
    syscalls: bool,
    compat: bool,
) -> anyhow::Result<bpf::OpenFilesystemLatencySkel<'static>> {
    let mut open = open_skel(
        bpf::FilesystemLatencySkelBuilder::default(),
        ctx,
        compat,
        "opening the filesystem_latency BPF object",
    )?;
    // task storage does not exist before 5.11 (the *_compat maps are made
    // on the compatibility path only)
    let maps = &mut open.maps;
    choose_state_maps(
        ctx,
        &SPEC,
        compat,
        &mut [&mut maps.fs_starts],
        &mut maps.fs_starts_compat,
    )?;
    if syscalls {
        open.maps
            .rodata_data
            .as_deref_mut()
            .ok_or_else(|| anyhow::anyhow!("the filesystem_latency BPF object has no .rodata"))?
            .fs_syscall_op = syscall_ops();
    }
    let maps = &mut open.maps;
    prepare(
        &mut maps.fs_counters,
        &mut maps.fs_latency,
        &mut maps.fs_untracked_compat,
        true,
    )?;
    Ok(open)
}

/// Sizes an object's fs_* maps (from `filesystem_latency.bpf.h`): in full
/// when `used`, else to one entry each (the syscall sampler's object, when
/// it does not time file systems). `untracked` (`fs_untracked_compat`) is
/// made on the compatibility path only.
pub fn prepare(
    counters: &mut libbpf_rs::OpenMapMut<'_>,
    latency: &mut libbpf_rs::OpenMapMut<'_>,
    untracked: &mut libbpf_rs::OpenMapMut<'_>,
    used: bool,
) -> anyhow::Result<()> {
    let (banks, histograms) = match used {
        true => (possible_cpus()?, FS_SLOTS * OPS.len() * HISTOGRAM_BUCKETS),
        false => (1, 1),
    };
    counters
        .set_max_entries(banks as u32)
        .map_err(|e| classify(e, "sizing the file system counter banks"))?;
    latency
        .set_max_entries(histograms as u32)
        .map_err(|e| classify(e, "sizing the file system histograms"))?;
    untracked
        .set_max_entries(banks as u32)
        .map_err(|e| classify(e, "sizing the untracked-call banks"))?;
    Ok(())
}

/// A loaded object's fs_* maps, mapped: what this sampler reads.
pub struct FsMaps {
    counters: MmapArray,
    latency: MmapArray,
    types: NamedSlots,
    /// On the compatibility path: calls not timed, the thread map full.
    untracked: Option<MmapArray>,
}

impl FsMaps {
    /// Maps `fs_counters`, `fs_latency` and `fs_types`, checking their sizes
    /// against this file's copies of the header's numbers.
    pub fn new(
        counters: &libbpf_rs::Map<'_>,
        latency: &libbpf_rs::Map<'_>,
        types: &libbpf_rs::Map<'_>,
    ) -> anyhow::Result<Self> {
        let checks = [
            ("fs_types entries", types.max_entries() as usize, FS_TYPES),
            (
                "counter bank size",
                counters.value_size() as usize,
                (FS_SLOTS * OPS.len() * 8).next_multiple_of(64),
            ),
            (
                "latency histograms",
                latency.max_entries() as usize,
                FS_SLOTS * OPS.len() * HISTOGRAM_BUCKETS,
            ),
        ];
        for (what, loaded, expected) in checks {
            anyhow::ensure!(
                loaded == expected,
                "filesystem_latency.bpf.h and its loader disagree: {what} is {loaded}, expected {expected}"
            );
        }
        Ok(Self {
            counters: MmapArray::new(counters)?,
            latency: MmapArray::new(latency)?,
            types: NamedSlots::new(types)?,
            untracked: None,
        })
    }

    /// These maps with `fs_untracked_compat`, made on the compatibility
    /// path.
    pub fn with_untracked(mut self, untracked: &libbpf_rs::Map<'_>) -> anyhow::Result<Self> {
        self.untracked = Some(MmapArray::new(untracked)?);
        Ok(self)
    }
}

/// Hand-over of the system call path to the `syscall` sampler, whose
/// programs are already on sys_enter and sys_exit. Samplers start in name
/// order, so this one asks first ([`Share::Wanted`]), for the path it is
/// on; the syscall sampler, if it starts and loads that path, sees the
/// request ([`wanted`]), times file systems in its programs and hands over
/// their maps ([`provide`]); once every sampler has started, this one
/// takes them, or loads its own programs.
pub enum Share {
    None,
    /// Wanted on the compatibility path (`true`) or the default path.
    Wanted(bool),
    /// The maps, and the syscall sampler's `method`.
    Provided(FsMaps, String),
}

static SHARE: std::sync::Mutex<Share> = std::sync::Mutex::new(Share::None);

fn share() -> std::sync::MutexGuard<'static, Share> {
    SHARE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether filesystem_latency wants the syscall sampler's programs of the
/// compatibility path (`compat`) or of the default path to time file
/// system calls.
pub fn wanted(compat: bool) -> bool {
    matches!(*share(), Share::Wanted(on) if on == compat)
}

/// The syscall sampler's fs_* maps, its programs timing file system calls,
/// and its `method` (which path they are).
pub fn provide(maps: FsMaps, method: String) {
    *share() = Share::Provided(maps, method);
}

/// A type slot's series, by op: the counter and the histogram.
type SlotSeries = Vec<(Arc<Series>, Arc<Series>)>;

struct FilesystemLatency {
    /// This sampler's own programs, when it runs any.
    _skel: Option<bpf::FilesystemLatencySkel<'static>>,
    /// Why fentry is not used, when it is not.
    no_fentry: Option<String>,
    /// Kept for loading the system call programs after every sampler has
    /// started.
    ctx: SamplerContext,
    /// On the compatibility path: calls not timed, the thread map full.
    untracked: Option<(MmapArray, BankCounter)>,
    method: String,
    /// The maps counted into; `None` until every sampler has started.
    maps: Option<FsMaps>,
    /// Series by type name (two slots may hold one name: a module unloaded
    /// and loaded again registers a new type).
    series: BTreeMap<String, SlotSeries>,
    /// The name of each slot, once the program has written it.
    names: Vec<Option<String>>,
    scratch: Vec<u64>,
}

fn init(ctx: &SamplerContext) -> anyhow::Result<Box<dyn Sampler>> {
    check_support(ctx)?;
    let mut names = vec![None; FS_SLOTS];
    names[FS_TYPES] = Some("other".to_string());
    let mut sampler = FilesystemLatency {
        _skel: None,
        no_fentry: None,
        ctx: ctx.clone(),
        untracked: None,
        method: String::new(),
        maps: None,
        series: BTreeMap::new(),
        names,
        scratch: Vec::new(),
    };
    if ctx.bpf_path == BpfPath::Compat || !kernel_has_btf() {
        // fentry and the typed programs need the kernel's own BTF; the
        // syscall sampler's compatibility programs, if they load
        sampler.no_fentry = Some("the compatibility path".to_string());
        *share() = Share::Wanted(true);
        return Ok(Box::new(sampler));
    }
    if ctx.option(&SPEC, "fentry") == 1 {
        // a refusal is expected on some kernels and reported in `method`:
        // libbpf's own lines about it (and its ulimit advice) would mislead
        let print = libbpf_rs::set_print(None);
        let fentry = load_fentry(ctx, &ctx.root);
        libbpf_rs::set_print(print);
        match fentry {
            Ok((skel, method)) => {
                sampler.maps = Some(FsMaps::new(
                    &skel.maps.fs_counters,
                    &skel.maps.fs_latency,
                    &skel.maps.fs_types,
                )?);
                sampler._skel = Some(skel);
                sampler.method = method;
                return Ok(Box::new(sampler));
            }
            Err(e) => sampler.no_fentry = Some(format!("fentry not used: {e:#}")),
        }
    } else {
        sampler.no_fentry = Some("fentry = 0".to_string());
    }
    // the system calls: the syscall sampler's programs if it starts
    *share() = Share::Wanted(false);
    Ok(Box::new(sampler))
}

impl FilesystemLatency {
    /// Once every sampler has started: the syscall sampler's maps if it
    /// took the work, else this sampler's own system call programs.
    fn bind(&mut self) -> anyhow::Result<()> {
        if self.maps.is_some() {
            return Ok(());
        }
        let why = self.no_fentry.take().unwrap_or_default();
        let provided = std::mem::replace(&mut *share(), Share::None);
        if let Share::Provided(mut maps, syscall_method) = provided {
            self.untracked = maps
                .untracked
                .take()
                .map(|banks| (banks, untracked_counter(&SPEC, 0)));
            self.maps = Some(maps);
            self.method = match self.untracked {
                Some(_) => format!("syscalls, {syscall_method}; in the syscall sampler's programs"),
                None => format!("syscalls, in the syscall sampler's programs ({why})"),
            };
            if self.untracked.is_some() && self.ctx.options.contains_key(COMPAT_MAP_ENTRIES) {
                tracing::warn!(
                    sampler = SPEC.name,
                    "`samplers.filesystem_latency.{COMPAT_MAP_ENTRIES}` does not apply: the syscall sampler's programs time file system calls, in its map of threads (`samplers.syscall.{COMPAT_MAP_ENTRIES}`)"
                );
            }
            return Ok(());
        }
        let ctx = &self.ctx;
        let (skel, method) = load_path(
            ctx,
            "tp_btf/sys_enter, tp_btf/sys_exit",
            "raw_tp/sys_enter, sys_exit, sched_process_exit, a hash map of threads",
            |compat| match compat {
                true => load_compat(ctx),
                false => load_syscalls(ctx),
            },
        )?;
        self.maps = Some(FsMaps::new(
            &skel.maps.fs_counters,
            &skel.maps.fs_latency,
            &skel.maps.fs_types,
        )?);
        if method.starts_with("compatibility") {
            self.untracked = Some((
                MmapArray::new(&skel.maps.fs_untracked_compat)?,
                untracked_counter(&SPEC, 0),
            ));
        }
        self._skel = Some(skel);
        self.method = match self.untracked {
            Some(_) => format!("syscalls, {method}"),
            None => format!("syscalls ({why})"),
        };
        Ok(())
    }
}

impl Sampler for FilesystemLatency {
    fn method(&self) -> Option<String> {
        Some(self.method.clone())
    }

    fn all_started(&mut self) -> anyhow::Result<()> {
        self.bind()
    }

    fn refresh(&mut self, out: &mut Emitter<'_>) -> anyhow::Result<()> {
        let Some(maps) = &self.maps else {
            anyhow::bail!("not bound to its maps (all_started was not called)");
        };
        if let Some((banks, counter)) = &self.untracked {
            counter.emit(banks, &[], &mut self.scratch, out);
        }
        // per name and op: the count and the histogram, summed over slots
        for slot in 0..FS_TYPES {
            if self.names[slot].is_none() {
                self.names[slot] = maps.types.name(slot);
            }
        }
        let mut totals: BTreeMap<&str, [(u64, Option<histogram::Histogram>); 4]> = BTreeMap::new();
        for slot in 0..FS_SLOTS {
            let Some(name) = self.names[slot].as_deref() else {
                continue;
            };
            let entry = totals.entry(name).or_default();
            for (op, (count, histogram)) in entry.iter_mut().enumerate() {
                let index = slot * OPS.len() + op;
                let n = maps.counters.bank_counter(index, &mut self.scratch);
                if n == 0 {
                    continue;
                }
                *count += n;
                let h = maps.latency.histogram(index);
                *histogram = Some(match histogram.take() {
                    Some(sum) => sum.wrapping_add(&h)?,
                    None => h,
                });
            }
        }
        for (name, ops) in totals {
            for (op, (count, histogram)) in ops.into_iter().enumerate() {
                let Some(histogram) = histogram else { continue };
                let series = self.series.entry(name.to_string()).or_insert_with(|| {
                    OPS.iter()
                        .map(|op| {
                            let labels = [("fs", name), ("op", *op)];
                            (
                                Series::new(&OPERATIONS, &labels),
                                Series::new(&LATENCY, &labels),
                            )
                        })
                        .collect()
                });
                out.counter(&series[op].0, count);
                out.histogram(&series[op].1, histogram);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_table_maps_each_traced_call_to_its_op() {
        let table = syscall_ops();
        let op = |nr: libc::c_long| table[nr as usize];
        assert_eq!(op(libc::SYS_read), 1);
        assert_eq!(op(libc::SYS_pwritev2), 2);
        assert_eq!(op(libc::SYS_openat), 3);
        assert_eq!(op(libc::SYS_fdatasync), 4);
        assert_eq!(op(libc::SYS_getppid), 0);
        assert_eq!(op(libc::SYS_close), 0);
        assert_eq!(table.iter().filter(|op| **op != 0).count(), {
            let common = 5 + 5 + 2 + 2;
            if cfg!(target_arch = "x86_64") {
                common + 2
            } else {
                common
            }
        });
    }

    #[test]
    fn kallsyms_lines_yield_text_symbols_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/kallsyms"),
            "ffffffff81000000 T ext4_file_read_iter\n\
             ffffffff81000010 d ext4_sync_file\n\
             ffffffffc0000000 t xfs_file_fsync\t[xfs]\n\
             garbage\n\
             ffffffff81000020 T unrelated\n",
        )
        .unwrap();
        let found = kernel_functions(
            dir.path(),
            &["ext4_file_read_iter", "ext4_sync_file", "xfs_file_fsync"],
        );
        let mut found: Vec<_> = found.into_iter().collect();
        found.sort();
        assert_eq!(found, ["ext4_file_read_iter", "xfs_file_fsync"]);
    }
}
