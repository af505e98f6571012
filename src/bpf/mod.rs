//! The Rust side of the BPF programs: loading with clean "unsupported"
//! reporting, reading mmap-ed counter banks and histograms, and the
//! histogram scheme shared with `rezolus.h`.
//!
//! BPF sources (`*.bpf.c`) live beside the sampler that uses them; the shared
//! C headers (`vmlinux.h`, `rezolus.h`) live in this folder.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use libbpf_rs::{ErrorKind, MapCore};

use std::sync::Arc;

use crate::metrics::{MetricDef, Series, HISTOGRAM_GROUPING_POWER, HISTOGRAM_MAX_VALUE_POWER};
use crate::samplers::{BpfPath, SamplerContext, SamplerOption, SamplerSpec};
use crate::snapshot::Emitter;
use crate::source::Unsupported;

/// Buckets per histogram in the shared scheme (`HISTOGRAM_BUCKETS` in rezolus.h).
pub const HISTOGRAM_BUCKETS: usize = 496;

/// The running kernel's own BTF: `tp_btf` programs and BTF-typed helpers
/// (`bpf_get_current_task_btf`) need it, and CO-RE uses it unless
/// `[general] btf` names another file.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Checks what every BPF sampler needs before trying to load: BTF for CO-RE
/// (the kernel's own, or the file `[general] btf` names) and the privilege
/// to load and attach programs.
pub fn check_support(ctx: &SamplerContext) -> Result<(), Unsupported> {
    if ctx.btf.is_none() && !kernel_has_btf() {
        return Err(Unsupported(
            "kernel has no BTF (/sys/kernel/btf/vmlinux missing; needs CONFIG_DEBUG_INFO_BTF): set `[general] btf` to a BTF file for this kernel to run the compatibility paths"
                .into(),
        ));
    }
    if !has_bpf_privilege() {
        return Err(Unsupported(
            "loading BPF programs needs CAP_BPF and CAP_PERFMON (root has them unless they were taken away)".into(),
        ));
    }
    Ok(())
}

/// Whether the kernel has BTF of its own ([`KERNEL_BTF`]), which the
/// default paths' `tp_btf` programs need.
pub fn kernel_has_btf() -> bool {
    Path::new(KERNEL_BTF).exists()
}

/// Checks that `path` is a BTF file libbpf can parse (raw BTF, or an ELF
/// file with a `.BTF` section). The error says why not.
pub fn check_btf_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err("not a file".into()),
        Err(e) => return Err(e.to_string()),
    }
    // neither raw BTF (magic 0xeB9F) nor ELF: said here, without libbpf's
    // own complaint on stderr
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Err(e) => return Err(e.to_string()),
        Ok(_)
            if magic[..2] != [0x9f, 0xeb] && magic[..2] != [0xeb, 0x9f] && magic != *b"\x7fELF" =>
        {
            return Err("not a BTF file (neither raw BTF nor an ELF file)".into())
        }
        Ok(_) => {}
    }
    // libbpf's own line on stderr would come before the error that says it
    let print = libbpf_rs::set_print(None);
    let parsed = libbpf_rs::btf::Btf::from_path(path).map(drop);
    libbpf_rs::set_print(print);
    parsed.map_err(|e| format!("not a BTF file libbpf can read ({e})"))
}

/// Loads a sampler's programs on the path `ctx.bpf_path` asks for, with
/// `load(compat)`: `compat` forces the compatibility path; `auto` takes the
/// default path, or the compatibility path when the kernel has no BTF of its
/// own or the default path does not load. Returns what loaded and how, for
/// the sampler's [`crate::samplers::Sampler::method`]; when neither path
/// loads, the default path's error, with the compatibility path's after it.
pub fn load_path<S>(
    ctx: &SamplerContext,
    default_hooks: &str,
    compat_hooks: &str,
    load: impl Fn(bool) -> anyhow::Result<S>,
) -> anyhow::Result<(S, String)> {
    let compat = |why: &str| format!("compatibility path ({why}): {compat_hooks}");
    // a BTF file of another kernel shows as reads that do not relocate:
    // the error names the file, libbpf's log on stderr the read
    let load_compat = || {
        load(true).map_err(|e| match &ctx.btf {
            Some(btf) => e.context(format!(
                "relocated against `general.btf` {} (is it this kernel's? libbpf's log on stderr names any read that did not relocate)",
                btf.display()
            )),
            None => e,
        })
    };
    let only_compat = |why: &str| {
        load_compat()
            .map(|loaded| (loaded, compat(why)))
            .map_err(|e| e.context(format!("on the compatibility path ({why})")))
    };
    if ctx.bpf_path == BpfPath::Compat {
        return only_compat("path = \"compat\"");
    }
    if !kernel_has_btf() {
        return only_compat("the kernel has no BTF of its own");
    }
    match load(false) {
        Ok(loaded) => Ok((loaded, format!("default path: {default_hooks}"))),
        Err(default_error) => match load_compat() {
            Ok(loaded) => Ok((
                loaded,
                compat(&format!("the default path did not load: {default_error:#}")),
            )),
            Err(compat_error) => {
                let both = format!(
                    "default path: {default_error:#}; compatibility path: {compat_error:#} (libbpf's log of each is on stderr)"
                );
                Err(
                    if crate::source::is_unsupported(&default_error)
                        && crate::source::is_unsupported(&compat_error)
                    {
                        Unsupported(both).into()
                    } else {
                        anyhow::anyhow!(both)
                    },
                )
            }
        },
    }
}

/// Events a sampler's compatibility path could not follow because its
/// bounded map of tasks (or sockets) was full: served by the samplers that
/// keep such a map, while on that path.
pub static BPF_UNTRACKED: MetricDef = MetricDef::counter(
    "rezolus_bpf_untracked",
    "events",
    "Events the `sampler`'s compatibility path did not time (filesystem_latency: nor count) because its bounded task or socket map was full (the default path keeps per-task state in task storage and has no such bound)",
)
.labels(&["sampler"]);

/// The key of the option that sizes a sampler's compatibility-path hash map.
pub const COMPAT_MAP_ENTRIES: &str = "compat_map_entries";

/// The `compat_map_entries` option of a sampler whose compatibility path
/// keeps per-task (or per-socket) state in a preallocated hash map of
/// `default` entries; `description` says what an entry is and what happens
/// to an event that finds the map full. At most 2^20 entries: the kernel
/// allocates the whole map at load.
pub const fn compat_map_option(default: i64, description: &'static str) -> SamplerOption {
    SamplerOption {
        key: COMPAT_MAP_ENTRIES,
        default,
        min: 1,
        max: 1 << 20,
        description,
    }
}

/// Chooses where a path keeps per-task (or per-socket) state, before load:
/// `local`, the default path's local-storage maps, are made on the default
/// path only (local storage in tracing programs needs 5.11); on the
/// compatibility path `compat_map`, its hash map, is sized from the
/// sampler's `compat_map_entries`.
pub fn choose_state_maps(
    ctx: &SamplerContext,
    spec: &SamplerSpec,
    compat: bool,
    local: &mut [&mut libbpf_rs::OpenMapMut<'_>],
    compat_map: &mut libbpf_rs::OpenMapMut<'_>,
) -> anyhow::Result<()> {
    for map in local {
        map.set_autocreate(!compat)
            .map_err(|e| classify(e, "choosing the per-task maps"))?;
    }
    if compat {
        let entries = ctx.option(spec, COMPAT_MAP_ENTRIES) as u32;
        compat_map
            .set_max_entries(entries)
            .map_err(|e| classify(e, "sizing the compatibility path's hash map"))?;
    }
    Ok(())
}

/// A sampler's `rezolus_bpf_untracked` series: counter `index` of its
/// banks (compatibility path).
pub fn untracked_counter(spec: &SamplerSpec, index: usize) -> BankCounter {
    BankCounter::new(&BPF_UNTRACKED, &[("sampler", spec.name)], index, None)
}

/// The number of arguments a tracepoint passes to raw tracepoint programs,
/// from its `btf_trace_<name>` type in the compatibility path's BTF
/// (`[general] btf` when set, else the kernel's own): how a compatibility
/// path tells a kernel's version of a tracepoint from another. `None` if
/// that BTF lacks the type.
pub fn tracepoint_arg_count(ctx: &SamplerContext, tracepoint: &str) -> Option<usize> {
    use libbpf_rs::btf::{types::FuncProto, Btf, BtfType};
    let btf = match &ctx.btf {
        Some(path) => Btf::from_path(path).ok()?,
        None => Btf::from_vmlinux().ok()?,
    };
    let typedef: BtfType<'_> = btf.type_by_name(&format!("btf_trace_{tracepoint}"))?;
    // a typedef of a pointer to the prototype, whose first parameter is
    // the tracepoint's own data pointer
    let proto = typedef.skip_mods_and_typedefs().next_type()?;
    let proto = FuncProto::try_from(proto).ok()?;
    Some(proto.len().saturating_sub(1))
}

/// Marks one path's programs for loading and its maps for creating: on the
/// compatibility path the programs whose name ends in `_compat`, on the
/// default path the others; maps named `*_compat` only on the compatibility
/// path (a default path's own maps, such as task storage, are the loader's
/// to leave out).
fn select_path(object: &mut libbpf_rs::OpenObject, compat: bool) -> anyhow::Result<()> {
    for mut prog in object.progs_mut() {
        let is_compat = prog.name().as_encoded_bytes().ends_with(b"_compat");
        prog.set_autoload(is_compat == compat);
    }
    for mut map in object.maps_mut() {
        if map.name().as_encoded_bytes().ends_with(b"_compat") {
            map.set_autocreate(compat)
                .map_err(|e| classify(e, "choosing the path's maps"))?;
        }
    }
    Ok(())
}

std::thread_local! {
    /// Set while [`open_skel`] opens a skeleton for the compatibility path.
    static OPENING_COMPAT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The ELF object a skeleton opens; called by the skeletons of objects that
/// declare kernel symbols (`build.rs` writes the call). On the
/// compatibility path that is `without_ksyms`, the twin built without them:
/// libbpf resolves kernel symbols against the running kernel's own BTF at
/// load, so the object itself would not load on a kernel without it, even
/// with `[general] btf`. Elsewhere, and for the default path, `object`.
#[doc(hidden)]
pub fn skeleton_object(object: &'static [u8], without_ksyms: &'static [u8]) -> &'static [u8] {
    if OPENING_COMPAT.get() {
        without_ksyms
    } else {
        object
    }
}

/// Opens a sampler's BPF skeleton for one path, that path's programs and
/// `*_compat` maps selected ([`select_path`]; a loader with variants of its
/// own then picks among them). The compatibility path (`compat`) relocates
/// against the BTF file of `[general] btf` when one is set; the default
/// path always against the kernel's own (it cannot load without it). On
/// the compatibility path, an object that declares kernel symbols is
/// opened as its twin without them ([`skeleton_object`]). `doing` names the
/// step for errors.
pub fn open_skel<B>(
    mut builder: B,
    ctx: &SamplerContext,
    compat: bool,
    doing: &str,
) -> anyhow::Result<B::Output>
where
    B: libbpf_rs::skel::SkelBuilder<'static>,
{
    if let Some(btf) = ctx.btf.as_ref().filter(|_| compat) {
        builder
            .object_builder_mut()
            .btf_custom_path(btf)
            .map_err(|e| anyhow::anyhow!("{doing}: BTF path {}: {e}", btf.display()))?;
    }
    OPENING_COMPAT.set(compat);
    let open = builder.open(object_storage());
    OPENING_COMPAT.set(false);
    let mut open = open.map_err(|e| classify(e, doing))?;
    select_path(
        libbpf_rs::skel::OpenSkel::open_object_mut(&mut open),
        compat,
    )?;
    Ok(open)
}

/// Root, CAP_SYS_ADMIN, or both CAP_BPF and CAP_PERFMON in the effective set.
fn has_bpf_privilege() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    // bytes, not text: the `Name:` line holds the process name, which may
    // be any bytes
    let Ok(status) = std::fs::read("/proc/self/status") else {
        return false;
    };
    let effective = crate::source::lines(&status)
        .find_map(|l| l.strip_prefix(b"CapEff:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Turns a libbpf error into an `anyhow` error, naming what was being done.
/// It is [`Unsupported`] when it means this kernel or this process can't:
/// EPERM (lockdown, an LSM), ENOENT/ESRCH (a hook or kernel type this kernel
/// lacks), EOPNOTSUPP/ENOTSUPP. Anything else is a failure; EACCES in
/// particular, once [`check_support`] passed, is the verifier rejecting a
/// program (its log is on stderr).
pub fn classify(err: libbpf_rs::Error, doing: &str) -> anyhow::Error {
    const ENOTSUPP: i32 = 524;
    match errno(&err) {
        Some(libc::EPERM | libc::ENOENT | libc::ESRCH | libc::EOPNOTSUPP | ENOTSUPP) => {
            Unsupported(format!("{doing}: {err}")).into()
        }
        Some(libc::EACCES) => anyhow::Error::new(err).context(format!(
            "{doing}: the verifier rejected a program (its log precedes this message)"
        )),
        _ if err.kind() == ErrorKind::Unsupported => Unsupported(format!("{doing}: {err}")).into(),
        _ => anyhow::Error::new(err).context(doing.to_string()),
    }
}

/// The errno behind a libbpf error: libbpf-rs keeps it only in the message.
fn errno(err: &libbpf_rs::Error) -> Option<i32> {
    let text = format!("{err:#}");
    let start = text.rfind("(os error ")? + "(os error ".len();
    text[start..].split(')').next()?.parse().ok()
}

/// Storage for a skeleton's open object that lives as long as the process:
/// a sampler holds its skeleton for the agent's lifetime.
pub fn object_storage() -> &'static mut MaybeUninit<libbpf_rs::OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// Number of possible CPUs: the size of per-CPU banks.
pub fn possible_cpus() -> anyhow::Result<usize> {
    libbpf_rs::num_possible_cpus().map_err(|e| anyhow::anyhow!("counting possible CPUs: {e}"))
}

/// One counter of a per-CPU bank as series: the all-CPU total and, if asked,
/// one series per CPU (label `id`). Per-CPU series are emitted for CPUs that
/// are online or have counted something, so possible-but-absent CPUs are
/// left out rather than reported as zeros.
pub struct BankCounter {
    index: usize,
    total: Arc<Series>,
    per_cpu: Vec<Arc<Series>>,
}

impl BankCounter {
    /// Counter `index` of each bank, as metric `def` with `labels`; with
    /// `cpus`, also per CPU.
    pub fn new(
        def: &'static MetricDef,
        labels: &[(&'static str, &str)],
        index: usize,
        cpus: Option<usize>,
    ) -> Self {
        let per_cpu = (0..cpus.unwrap_or(0))
            .map(|cpu| {
                let id = cpu.to_string();
                let mut with_id = labels.to_vec();
                with_id.push(("id", &id));
                Series::new(def, &with_id)
            })
            .collect();
        Self {
            index,
            total: Series::new(def, labels),
            per_cpu,
        }
    }

    /// Emits the total and per-CPU values; returns the total.
    pub fn emit(
        &self,
        banks: &MmapArray,
        online: &[usize],
        scratch: &mut Vec<u64>,
        out: &mut Emitter<'_>,
    ) -> u64 {
        let total = banks.bank_counter(self.index, scratch);
        out.counter(&self.total, total);
        for (cpu, series) in self.per_cpu.iter().enumerate() {
            let value = scratch.get(cpu).copied().unwrap_or(0);
            if value > 0 || online.contains(&cpu) {
                out.counter(series, value);
            }
        }
        total
    }
}

/// A read-only mapping of a `BPF_F_MMAPABLE` array map: values are read
/// straight from kernel memory, no syscall per value.
pub struct MmapArray {
    ptr: *const u8,
    len: usize,
    value_size: usize,
    entries: usize,
}

// SAFETY: the mapping is read-only shared memory, valid until drop.
unsafe impl Send for MmapArray {}

impl MmapArray {
    pub fn new(map: &libbpf_rs::Map<'_>) -> anyhow::Result<Self> {
        let value_size = (map.value_size() as usize).next_multiple_of(8);
        let entries = map.max_entries() as usize;
        let page = page_size();
        let len = (value_size * entries).next_multiple_of(page);
        // SAFETY: mapping a map fd read-only; the kernel checks the size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(anyhow::Error::new(std::io::Error::last_os_error())
                .context(format!("mmap of BPF map {}", map.name().to_string_lossy())));
        }
        Ok(Self {
            ptr: ptr as *const u8,
            len,
            value_size,
            entries,
        })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The `index`-th u64 of entry `entry`.
    pub fn u64(&self, entry: usize, index: usize) -> u64 {
        assert!(entry < self.entries && (index + 1) * 8 <= self.value_size);
        // SAFETY: in bounds (checked above) and 8-aligned (value_size is a
        // multiple of 8 and the mapping is page-aligned). Volatile: the
        // kernel writes it concurrently.
        unsafe {
            std::ptr::read_volatile(self.ptr.add(entry * self.value_size + index * 8) as *const u64)
        }
    }

    /// Sum of counter `index` over every bank (one entry per CPU), and the
    /// per-CPU values.
    pub fn bank_counter(&self, index: usize, per_cpu: &mut Vec<u64>) -> u64 {
        per_cpu.clear();
        per_cpu.extend((0..self.entries).map(|cpu| self.u64(cpu, index)));
        per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// Histogram `h` of an array of u64 buckets holding consecutive histograms.
    pub fn histogram(&self, h: usize) -> histogram::Histogram {
        // one bounds check for the whole histogram, not one per bucket
        let first = h * HISTOGRAM_BUCKETS;
        assert!(first + HISTOGRAM_BUCKETS <= self.entries && self.value_size >= 8);
        let mut buckets = Vec::with_capacity(HISTOGRAM_BUCKETS);
        for b in first..first + HISTOGRAM_BUCKETS {
            // SAFETY: in bounds (checked above) and 8-aligned, as in `u64`;
            // volatile because the kernel writes concurrently.
            buckets.push(unsafe {
                std::ptr::read_volatile(self.ptr.add(b * self.value_size) as *const u64)
            });
        }
        histogram::Histogram::from_buckets(
            HISTOGRAM_GROUPING_POWER,
            HISTOGRAM_MAX_VALUE_POWER,
            buckets,
        )
        .expect("bucket count matches the scheme")
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A named-slot table (`NAMED_SLOTS` in rezolus.h): slot `i` holds a
/// non-zero id once claimed by a program, then a name of up to
/// [`SLOT_NAME_LEN`] bytes, published by setting `named`.
pub struct NamedSlots(MmapArray);

/// `SLOT_NAME_LEN` in rezolus.h.
pub const SLOT_NAME_LEN: usize = 32;

impl NamedSlots {
    /// Maps the table; fails if the map's values are not `struct named_slot`.
    pub fn new(map: &libbpf_rs::Map<'_>) -> anyhow::Result<Self> {
        let expected = 16 + SLOT_NAME_LEN;
        anyhow::ensure!(
            map.value_size() as usize == expected,
            "BPF map {} has {}-byte values, not rezolus.h's {expected}-byte struct named_slot",
            map.name().to_string_lossy(),
            map.value_size()
        );
        Ok(Self(MmapArray::new(map)?))
    }

    pub fn len(&self) -> usize {
        self.0.entries()
    }

    pub fn is_empty(&self) -> bool {
        self.0.entries() == 0
    }

    /// The name of `slot` as a label value, once published (`None` before,
    /// or if the name is empty).
    pub fn name(&self, slot: usize) -> Option<String> {
        if self.0.u64(slot, 1) == 0 {
            return None;
        }
        // the program wrote the name before `named`
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let bytes: Vec<u8> = (0..SLOT_NAME_LEN / 8)
            .flat_map(|word| self.0.u64(slot, 2 + word).to_le_bytes())
            .collect();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        (end > 0).then(|| crate::source::label_value(&bytes[..end]))
    }
}

/// The BPF program file descriptors this process holds open (from
/// `/proc/self/fd`: links to `anon_inode:bpf-prog`).
pub fn program_fds() -> Vec<std::os::fd::RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<_> = entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog")
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// The BPF program fds open now that were not in `before` (a sorted
/// [`program_fds`] list): the programs loaded since.
pub fn program_fds_since(before: &[std::os::fd::RawFd]) -> Vec<std::os::fd::RawFd> {
    program_fds()
        .into_iter()
        .filter(|fd| before.binary_search(fd).is_err())
        .collect()
}

/// How many times the kernel skipped program `fd` because a program was
/// already running on that CPU (a tracepoint hit while the program ran,
/// e.g. from an interrupt): the `recursion_misses` of `bpf_prog_info`
/// (Linux 5.12+). Each skip is an event the program did not see. One
/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` call; `None` if it fails.
pub fn recursion_misses(fd: std::os::fd::RawFd) -> Option<u64> {
    prog_info(fd).ok().map(|info| info.recursion_misses)
}

/// The kernel's `bpf_prog_info` of program `fd` (one
/// `bpf(BPF_OBJ_GET_INFO_BY_FD)` call), or the call's errno.
pub fn prog_info(
    fd: std::os::fd::RawFd,
) -> Result<libbpf_rs::libbpf_sys::bpf_prog_info, std::io::Error> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: the kernel writes at most `len` bytes into `info`
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if rc == 0 {
        Ok(info)
    } else {
        // libbpf returns -errno
        Err(std::io::Error::from_raw_os_error(-rc))
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

#[cfg(test)]
mod histogram_test {
    include!(concat!(env!("OUT_DIR"), "/histogram_test.skel.rs"));
}

#[cfg(test)]
mod tests {
    use super::histogram_test::*;
    use super::*;
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    /// The bucket the `histogram` crate puts a value in.
    fn rust_index(value: u64) -> u32 {
        let mut h = crate::metrics::new_histogram();
        h.increment(value).unwrap();
        let buckets = h.as_slice();
        assert_eq!(buckets.len(), HISTOGRAM_BUCKETS);
        buckets.iter().position(|&c| c == 1).unwrap() as u32
    }

    /// The same values through the BPF-compiled `histogram_index` (run in the
    /// kernel with BPF_PROG_TEST_RUN) and through the `histogram` crate land
    /// in the same buckets. Runs as root in CI: a failure to load fails.
    #[test]
    fn verifier_rejection_is_a_failure_missing_hook_is_unsupported() {
        let io = |code| libbpf_rs::Error::from(std::io::Error::from_raw_os_error(code));
        assert!(!crate::source::is_unsupported(&classify(
            io(libc::EACCES),
            "loading"
        )));
        assert!(crate::source::is_unsupported(&classify(
            io(libc::ENOENT),
            "attaching"
        )));
        assert!(crate::source::is_unsupported(&classify(
            io(libc::EPERM),
            "loading"
        )));
        assert!(!crate::source::is_unsupported(&classify(
            io(libc::EINVAL),
            "loading"
        )));
    }

    #[test]
    fn bpf_and_rust_bucket_values_identically() {
        let mut values = vec![0u64, 1, 2, 3, 7, 15, 16, 17, u64::MAX, u64::MAX - 1];
        for p in 1..64 {
            let v = 1u64 << p;
            values.extend([v - 1, v, v + 1]);
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..256 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            values.push(seed >> (seed % 64));
        }

        let storage = object_storage();
        let skel = HistogramTestSkelBuilder::default()
            .open(storage)
            .unwrap()
            .load()
            .unwrap();
        let mut checked = 0;
        for chunk in values.chunks(64) {
            let mut args = types::histogram_test_args::default();
            args.values[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: plain-old-data struct generated from the program's BTF.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    &mut args as *mut _ as *mut u8,
                    std::mem::size_of::<types::histogram_test_args>(),
                )
            };
            let input = libbpf_rs::ProgramInput {
                context_in: Some(bytes),
                ..Default::default()
            };
            skel.progs.histogram_indices.test_run(input).unwrap();
            for (i, &value) in chunk.iter().enumerate() {
                assert_eq!(args.indices[i], rust_index(value), "value {value}");
                checked += 1;
            }
        }
        assert_eq!(checked, values.len());
    }
}

/// Every BPF program is also built for the other architecture we ship for
/// (`build.rs`): each object opens, and holds the same programs and maps as
/// the one built for this machine.
#[cfg(test)]
mod other_arch {
    use std::collections::BTreeSet;

    fn contents(path: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let object = libbpf_rs::ObjectBuilder::default()
            .open_file(path)
            .unwrap_or_else(|e| panic!("opening {path}: {e}"));
        let programs = object
            .progs()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        let maps = object
            .maps()
            .map(|m| m.name().to_string_lossy().into_owned())
            .collect();
        (programs, maps)
    }

    #[test]
    fn programs_build_for_the_other_architecture() {
        let other = if cfg!(target_arch = "aarch64") {
            "x86"
        } else {
            "arm64"
        };
        let out = env!("OUT_DIR");
        let stems = include_str!(concat!(env!("OUT_DIR"), "/bpf_objects.txt"));
        let mut checked = 0;
        for stem in stems.lines() {
            let native = contents(&format!("{out}/{stem}.bpf.o"));
            let cross = contents(&format!("{out}/{stem}.{other}.bpf.o"));
            assert!(!native.0.is_empty(), "{stem}: no programs");
            assert_eq!(native, cross, "{stem}: {other} build differs");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} objects");
    }

    /// Each object's twin without kernel symbols, which its skeleton opens
    /// on the compatibility path, has the programs the skeleton names, of
    /// the same types, and the maps, of the same types and sizes (the
    /// skeleton's typed views of `.rodata` and `.bss` assume those sizes).
    /// The twin loads without the kernel's own BTF: the agent tests prove
    /// that (`tests/bpf.rs`, path "no-btf").
    #[test]
    fn twins_without_kernel_symbols_match_their_objects() {
        fn shape(path: &str) -> (Vec<String>, Vec<String>) {
            let object = libbpf_rs::ObjectBuilder::default()
                .open_file(path)
                .unwrap_or_else(|e| panic!("opening {path}: {e}"));
            let programs = object
                .progs()
                .map(|p| format!("{:?} {:?}", p.name(), p.prog_type()))
                .collect();
            let maps = object
                .maps()
                .map(|m| {
                    format!(
                        "{:?} {:?} {} {} {}",
                        m.name(),
                        m.map_type(),
                        m.key_size(),
                        m.value_size(),
                        m.max_entries()
                    )
                })
                .collect();
            (programs, maps)
        }
        let out = env!("OUT_DIR");
        let twins = include_str!(concat!(env!("OUT_DIR"), "/bpf_twins.txt"));
        let mut checked = Vec::new();
        for stem in twins.lines() {
            let object = shape(&format!("{out}/{stem}.bpf.o"));
            let twin = shape(&format!("{out}/{stem}.without_ksyms.bpf.o"));
            assert_eq!(object, twin, "{stem}: its twin differs");
            checked.push(stem);
        }
        // the objects that call bpf_rdonly_cast on their default path
        for stem in ["syscall", "filesystem_latency", "tcp_traffic"] {
            assert!(checked.contains(&stem), "{stem} has no twin: {checked:?}");
        }
    }
}
