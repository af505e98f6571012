//! Least privilege. Every role sets `no_new_privs` first thing, so nothing
//! it runs can gain privileges through `execve`. The agent needs root (or
//! CAP_BPF, CAP_PERFMON and, where BPF memory is charged to RLIMIT_MEMLOCK,
//! CAP_SYS_RESOURCE) only to load its BPF programs and open its perf
//! events; once its samplers have started, [`drop_capabilities`] keeps only
//! what a later step needs and drops the rest from the effective,
//! permitted, inheritable and ambient sets, in every thread, and from the
//! bounding set when it holds CAP_SETPCAP (root does; a process given only
//! some capabilities does not, and with `no_new_privs` and those sets empty
//! it cannot regain what its bounding set still names).
//!
//! What a later step may need, each decided when the samplers are up:
//!
//! - **CAP_PERFMON**, when a perf_events sampler is active: its counters are
//!   opened again for a CPU that comes online, and `cpu_perf` with `cgroups`
//!   opens counters for new cgroups. (CAP_SYS_ADMIN instead on kernels
//!   older than 5.8, which do not know CAP_PERFMON.)
//! - **CAP_BPF**, when a BPF sampler is active and this kernel refuses the
//!   `bpf()` system call on the agent's own programs and maps without it:
//!   kernels before 6.5 with `kernel.unprivileged_bpf_disabled` set check it
//!   for every `bpf()` command, and the agent updates its cgroup maps and
//!   reads its programs' statistics after start. Probed, not guessed from
//!   the version: the agent tries such a call with CAP_BPF lowered.

use std::io;
use std::os::fd::RawFd;

use caps::{CapSet, Capability, CapsHashSet};

/// Sets `no_new_privs` for the calling thread and the threads and
/// processes it starts later (`prctl(PR_SET_NO_NEW_PRIVS)`).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the agent's active samplers will still do after start.
#[derive(Debug, Default, Clone, Copy)]
pub struct Needs {
    /// A perf_events sampler is active.
    pub perf_events: bool,
    /// One of the active BPF samplers' programs, if any (to probe with).
    pub bpf_program: Option<RawFd>,
}

/// A capability kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub capability: Capability,
    pub why: &'static str,
}

/// The outcome of [`drop_capabilities`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// The process had no capabilities to drop.
    NothingHeld,
    /// Everything else was dropped; these were kept.
    Kept(Vec<Kept>),
}

/// Errors from [`drop_capabilities`]. The agent logs them and goes on
/// serving: a failed drop leaves it as privileged as it started.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("changing capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("the signal thread did not drop its capabilities")]
    SignalThread,
}

/// Drops every capability but those `needs` calls for, in this thread and
/// in the signal thread (the two threads that exist while the agent starts;
/// threads started later inherit the reduced sets). Call it from the thread
/// that runs the agent, after every sampler has started.
pub fn drop_capabilities(needs: Needs) -> Result<Dropped, DropError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    if permitted.is_empty() {
        return Ok(Dropped::NothingHeld);
    }
    // kernels older than 5.8 know neither CAP_PERFMON nor CAP_BPF: there
    // CAP_SYS_ADMIN stands for both
    let known = caps::runtime::thread_all_supported();
    let or_sys_admin = |capability: Capability| {
        if known.contains(&capability) {
            capability
        } else {
            Capability::CAP_SYS_ADMIN
        }
    };
    let mut kept = Vec::new();
    if needs.perf_events {
        kept.push(Kept {
            capability: or_sys_admin(Capability::CAP_PERFMON),
            why: "perf_events: re-opening counters for a CPU brought online, and for new cgroups",
        });
    }
    if let Some(fd) = needs.bpf_program {
        if bpf_needs_capability(fd, &permitted)? {
            kept.push(Kept {
                capability: or_sys_admin(Capability::CAP_BPF),
                why: "BPF: this kernel refuses bpf() on the agent's own maps and programs without it (kernel.unprivileged_bpf_disabled)",
            });
        }
    }
    kept.retain(|k| permitted.contains(&k.capability));
    kept.dedup_by_key(|k| k.capability);
    let keep: CapsHashSet = kept.iter().map(|k| k.capability).collect();
    reduce_to(&keep)?;
    let keep_there = keep.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let ran = crate::signals::in_signal_thread(move || {
        let _ = tx.send(reduce_to(&keep_there).map_err(|e| e.to_string()));
    });
    // without a signal thread (it could not start) there is nothing to do there
    if ran && !matches!(rx.try_recv(), Ok(Ok(()))) {
        return Err(DropError::SignalThread);
    }
    Ok(Dropped::Kept(kept))
}

/// Whether a `bpf()` command on our own program fails with EPERM once
/// CAP_BPF and CAP_SYS_ADMIN are lowered (they are raised again after).
fn bpf_needs_capability(fd: RawFd, permitted: &CapsHashSet) -> Result<bool, DropError> {
    let mut lowered = caps::read(None, CapSet::Effective)?;
    lowered.remove(&Capability::CAP_BPF);
    lowered.remove(&Capability::CAP_SYS_ADMIN);
    let before = caps::read(None, CapSet::Effective)?;
    caps::set(None, CapSet::Effective, &lowered)?;
    let refused =
        matches!(crate::bpf::prog_info(fd), Err(e) if e.raw_os_error() == Some(libc::EPERM));
    caps::set(
        None,
        CapSet::Effective,
        &before.intersection(permitted).copied().collect(),
    )?;
    Ok(refused)
}

/// Lowers the calling thread's capabilities to `keep`: the bounding set
/// first (which needs CAP_SETPCAP, still held then), then ambient,
/// inheritable, effective and permitted.
fn reduce_to(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for capability in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&capability) {
                caps::drop(None, CapSet::Bounding, capability)?;
            }
        }
    }
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient)?;
    }
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, keep)?;
    caps::set(None, CapSet::Permitted, keep)?;
    Ok(())
}

/// The effective capabilities of each thread of this process that holds
/// more than `allowed`, by thread id (from `/proc/self/task/*/status`).
pub fn threads_holding_more(allowed: u64) -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let status = std::fs::read(task.path().join("status")).ok()?;
            let effective = crate::source::lines(&status)
                .find_map(|l| l.strip_prefix(b"CapEff:"))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())?;
            (effective & !allowed != 0)
                .then(|| (task.file_name().to_string_lossy().into_owned(), effective))
        })
        .collect()
}

/// The bit mask of a set of capabilities, as `/proc/*/status` shows it.
pub fn mask(capabilities: impl IntoIterator<Item = Capability>) -> u64 {
    capabilities
        .into_iter()
        .fold(0, |m, c| m | (1u64 << c.index()))
}
