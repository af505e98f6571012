//! Syscall number to op class, for the architecture this binary is built
//! for (the numbers come from `libc::SYS_*`). Built in userspace and handed
//! to the BPF program before load.

/// The op classes, in the order of the BPF counter bank and histograms.
pub const CLASSES: [&str; 16] = [
    "other",
    "read",
    "write",
    "poll",
    "lock",
    "time",
    "sleep",
    "socket",
    "yield",
    "filesystem",
    "memory",
    "process",
    "query",
    "ipc",
    "timer",
    "event",
];

/// Size of the BPF lookup table (`MAX_SYSCALL_NR` in syscall.bpf.c).
pub const MAX_SYSCALL_NR: usize = 1024;

const fn class(name: &str) -> u8 {
    let mut i = 0;
    while i < CLASSES.len() {
        if const_eq(CLASSES[i], name) {
            return i as u8;
        }
        i += 1;
    }
    panic!("unknown class");
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

use libc::*;

/// One entry: the syscall's libc name (`SYS_<name>`, the kernel's
/// `__NR_<name>`), its number on this architecture, and its class.
macro_rules! sys {
    ($nr:ident, $class:literal) => {
        (stringify!($nr), $nr, class($class))
    };
}

/// Syscalls present on every Linux architecture.
static COMMON: &[(&str, c_long, u8)] = &[
    sys!(SYS_read, "read"),
    sys!(SYS_readv, "read"),
    sys!(SYS_pread64, "read"),
    sys!(SYS_preadv, "read"),
    sys!(SYS_preadv2, "read"),
    sys!(SYS_write, "write"),
    sys!(SYS_writev, "write"),
    sys!(SYS_pwrite64, "write"),
    sys!(SYS_pwritev, "write"),
    sys!(SYS_pwritev2, "write"),
    sys!(SYS_ppoll, "poll"),
    sys!(SYS_pselect6, "poll"),
    sys!(SYS_epoll_pwait, "poll"),
    sys!(SYS_epoll_pwait2, "poll"),
    sys!(SYS_epoll_ctl, "poll"),
    sys!(SYS_epoll_create1, "poll"),
    sys!(SYS_futex, "lock"),
    sys!(SYS_futex_waitv, "lock"),
    sys!(SYS_flock, "lock"),
    sys!(SYS_clock_gettime, "time"),
    sys!(SYS_clock_settime, "time"),
    sys!(SYS_clock_getres, "time"),
    sys!(SYS_clock_adjtime, "time"),
    sys!(SYS_gettimeofday, "time"),
    sys!(SYS_settimeofday, "time"),
    sys!(SYS_adjtimex, "time"),
    sys!(SYS_nanosleep, "sleep"),
    sys!(SYS_clock_nanosleep, "sleep"),
    sys!(SYS_socket, "socket"),
    sys!(SYS_socketpair, "socket"),
    sys!(SYS_bind, "socket"),
    sys!(SYS_listen, "socket"),
    sys!(SYS_accept, "socket"),
    sys!(SYS_accept4, "socket"),
    sys!(SYS_connect, "socket"),
    sys!(SYS_shutdown, "socket"),
    sys!(SYS_sendto, "socket"),
    sys!(SYS_recvfrom, "socket"),
    sys!(SYS_sendmsg, "socket"),
    sys!(SYS_recvmsg, "socket"),
    sys!(SYS_sendmmsg, "socket"),
    sys!(SYS_recvmmsg, "socket"),
    sys!(SYS_getsockopt, "socket"),
    sys!(SYS_setsockopt, "socket"),
    sys!(SYS_getsockname, "socket"),
    sys!(SYS_getpeername, "socket"),
    sys!(SYS_sched_yield, "yield"),
    sys!(SYS_openat, "filesystem"),
    sys!(SYS_openat2, "filesystem"),
    sys!(SYS_close, "filesystem"),
    sys!(SYS_close_range, "filesystem"),
    sys!(SYS_fstat, "filesystem"),
    sys!(SYS_newfstatat, "filesystem"),
    sys!(SYS_statx, "filesystem"),
    sys!(SYS_statfs, "filesystem"),
    sys!(SYS_fstatfs, "filesystem"),
    sys!(SYS_faccessat, "filesystem"),
    sys!(SYS_faccessat2, "filesystem"),
    sys!(SYS_mkdirat, "filesystem"),
    sys!(SYS_mknodat, "filesystem"),
    sys!(SYS_unlinkat, "filesystem"),
    sys!(SYS_renameat2, "filesystem"),
    sys!(SYS_linkat, "filesystem"),
    sys!(SYS_symlinkat, "filesystem"),
    sys!(SYS_readlinkat, "filesystem"),
    sys!(SYS_fchmod, "filesystem"),
    sys!(SYS_fchmodat, "filesystem"),
    sys!(SYS_fchown, "filesystem"),
    sys!(SYS_fchownat, "filesystem"),
    sys!(SYS_truncate, "filesystem"),
    sys!(SYS_ftruncate, "filesystem"),
    sys!(SYS_fallocate, "filesystem"),
    sys!(SYS_fsync, "filesystem"),
    sys!(SYS_fdatasync, "filesystem"),
    sys!(SYS_sync, "filesystem"),
    sys!(SYS_syncfs, "filesystem"),
    sys!(SYS_sync_file_range, "filesystem"),
    sys!(SYS_lseek, "filesystem"),
    sys!(SYS_getdents64, "filesystem"),
    sys!(SYS_fcntl, "filesystem"),
    sys!(SYS_ioctl, "filesystem"),
    sys!(SYS_utimensat, "filesystem"),
    sys!(SYS_sendfile, "filesystem"),
    sys!(SYS_splice, "filesystem"),
    sys!(SYS_tee, "filesystem"),
    sys!(SYS_copy_file_range, "filesystem"),
    sys!(SYS_dup, "filesystem"),
    sys!(SYS_dup3, "filesystem"),
    sys!(SYS_chdir, "filesystem"),
    sys!(SYS_fchdir, "filesystem"),
    sys!(SYS_getcwd, "filesystem"),
    sys!(SYS_mmap, "memory"),
    sys!(SYS_munmap, "memory"),
    sys!(SYS_mprotect, "memory"),
    sys!(SYS_mremap, "memory"),
    sys!(SYS_madvise, "memory"),
    sys!(SYS_process_madvise, "memory"),
    sys!(SYS_brk, "memory"),
    sys!(SYS_mlock, "memory"),
    sys!(SYS_mlock2, "memory"),
    sys!(SYS_munlock, "memory"),
    sys!(SYS_mlockall, "memory"),
    sys!(SYS_munlockall, "memory"),
    sys!(SYS_mincore, "memory"),
    sys!(SYS_msync, "memory"),
    sys!(SYS_membarrier, "memory"),
    sys!(SYS_clone, "process"),
    sys!(SYS_clone3, "process"),
    sys!(SYS_execve, "process"),
    sys!(SYS_execveat, "process"),
    sys!(SYS_exit, "process"),
    sys!(SYS_exit_group, "process"),
    sys!(SYS_wait4, "process"),
    sys!(SYS_waitid, "process"),
    sys!(SYS_kill, "process"),
    sys!(SYS_tkill, "process"),
    sys!(SYS_tgkill, "process"),
    sys!(SYS_prctl, "process"),
    sys!(SYS_set_tid_address, "process"),
    sys!(SYS_setpgid, "process"),
    sys!(SYS_setsid, "process"),
    sys!(SYS_setuid, "process"),
    sys!(SYS_setgid, "process"),
    sys!(SYS_rt_sigaction, "process"),
    sys!(SYS_rt_sigprocmask, "process"),
    sys!(SYS_rt_sigreturn, "process"),
    sys!(SYS_sigaltstack, "process"),
    sys!(SYS_pidfd_open, "process"),
    sys!(SYS_pidfd_send_signal, "process"),
    sys!(SYS_ptrace, "process"),
    sys!(SYS_unshare, "process"),
    sys!(SYS_setns, "process"),
    sys!(SYS_rseq, "process"),
    sys!(SYS_getpid, "query"),
    sys!(SYS_getppid, "query"),
    sys!(SYS_gettid, "query"),
    sys!(SYS_getuid, "query"),
    sys!(SYS_geteuid, "query"),
    sys!(SYS_getgid, "query"),
    sys!(SYS_getegid, "query"),
    sys!(SYS_getgroups, "query"),
    sys!(SYS_getpgid, "query"),
    sys!(SYS_getsid, "query"),
    sys!(SYS_prlimit64, "query"),
    sys!(SYS_getrusage, "query"),
    sys!(SYS_uname, "query"),
    sys!(SYS_sysinfo, "query"),
    sys!(SYS_getcpu, "query"),
    sys!(SYS_getpriority, "query"),
    sys!(SYS_sched_getaffinity, "query"),
    sys!(SYS_times, "query"),
    sys!(SYS_getrandom, "query"),
    sys!(SYS_pipe2, "ipc"),
    sys!(SYS_msgget, "ipc"),
    sys!(SYS_msgsnd, "ipc"),
    sys!(SYS_msgrcv, "ipc"),
    sys!(SYS_msgctl, "ipc"),
    sys!(SYS_semget, "ipc"),
    sys!(SYS_semop, "ipc"),
    sys!(SYS_semtimedop, "ipc"),
    sys!(SYS_semctl, "ipc"),
    sys!(SYS_shmget, "ipc"),
    sys!(SYS_shmat, "ipc"),
    sys!(SYS_shmdt, "ipc"),
    sys!(SYS_shmctl, "ipc"),
    sys!(SYS_mq_open, "ipc"),
    sys!(SYS_mq_timedsend, "ipc"),
    sys!(SYS_mq_timedreceive, "ipc"),
    sys!(SYS_timer_create, "timer"),
    sys!(SYS_timer_settime, "timer"),
    sys!(SYS_timer_gettime, "timer"),
    sys!(SYS_timer_getoverrun, "timer"),
    sys!(SYS_timer_delete, "timer"),
    sys!(SYS_timerfd_create, "timer"),
    sys!(SYS_timerfd_settime, "timer"),
    sys!(SYS_timerfd_gettime, "timer"),
    sys!(SYS_setitimer, "timer"),
    sys!(SYS_getitimer, "timer"),
    sys!(SYS_eventfd2, "event"),
    sys!(SYS_signalfd4, "event"),
    sys!(SYS_inotify_init1, "event"),
    sys!(SYS_inotify_add_watch, "event"),
    sys!(SYS_inotify_rm_watch, "event"),
    sys!(SYS_fanotify_init, "event"),
    sys!(SYS_fanotify_mark, "event"),
    sys!(SYS_io_uring_setup, "event"),
    sys!(SYS_io_uring_enter, "event"),
    sys!(SYS_io_uring_register, "event"),
    sys!(SYS_io_setup, "event"),
    sys!(SYS_io_submit, "event"),
    sys!(SYS_io_getevents, "event"),
];

/// Legacy syscalls that newer architectures (arm64, riscv) do not have.
#[cfg(target_arch = "x86_64")]
static LEGACY: &[(&str, c_long, u8)] = &[
    sys!(SYS_poll, "poll"),
    sys!(SYS_select, "poll"),
    sys!(SYS_epoll_wait, "poll"),
    sys!(SYS_epoll_create, "poll"),
    sys!(SYS_time, "time"),
    sys!(SYS_pause, "sleep"),
    sys!(SYS_open, "filesystem"),
    sys!(SYS_creat, "filesystem"),
    sys!(SYS_stat, "filesystem"),
    sys!(SYS_lstat, "filesystem"),
    sys!(SYS_access, "filesystem"),
    sys!(SYS_mkdir, "filesystem"),
    sys!(SYS_rmdir, "filesystem"),
    sys!(SYS_unlink, "filesystem"),
    sys!(SYS_rename, "filesystem"),
    sys!(SYS_link, "filesystem"),
    sys!(SYS_symlink, "filesystem"),
    sys!(SYS_readlink, "filesystem"),
    sys!(SYS_chmod, "filesystem"),
    sys!(SYS_chown, "filesystem"),
    sys!(SYS_lchown, "filesystem"),
    sys!(SYS_mknod, "filesystem"),
    sys!(SYS_getdents, "filesystem"),
    sys!(SYS_dup2, "filesystem"),
    sys!(SYS_fork, "process"),
    sys!(SYS_vfork, "process"),
    sys!(SYS_arch_prctl, "process"),
    sys!(SYS_getpgrp, "query"),
    sys!(SYS_pipe, "ipc"),
    sys!(SYS_alarm, "timer"),
    sys!(SYS_eventfd, "event"),
    sys!(SYS_signalfd, "event"),
    sys!(SYS_inotify_init, "event"),
];

#[cfg(not(target_arch = "x86_64"))]
static LEGACY: &[(&str, c_long, u8)] = &[];

/// Syscalls x86-64 and arm64 have (arm64 through `__ARCH_WANT_RENAMEAT` and
/// `__ARCH_WANT_SET_GET_RLIMIT`) but newer architectures (riscv) do not.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
static X86_AND_ARM64: &[(&str, c_long, u8)] = &[
    sys!(SYS_renameat, "filesystem"),
    sys!(SYS_getrlimit, "query"),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
static X86_AND_ARM64: &[(&str, c_long, u8)] = &[];

/// The lookup table handed to BPF: class index per syscall number, `other`
/// (0) for numbers not listed.
pub fn table() -> [u8; MAX_SYSCALL_NR] {
    table_from(
        COMMON
            .iter()
            .chain(LEGACY)
            .chain(X86_AND_ARM64)
            .map(|&(_, nr, class)| (nr, class)),
    )
}

/// The table of `(number, class)` entries.
fn table_from(entries: impl Iterator<Item = (c_long, u8)>) -> [u8; MAX_SYSCALL_NR] {
    let mut table = [0u8; MAX_SYSCALL_NR];
    for (nr, class) in entries {
        if let Ok(nr) = usize::try_from(nr) {
            if nr < MAX_SYSCALL_NR {
                table[nr] = class;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_classifies_known_syscalls() {
        let t = table();
        let of = |nr: c_long| CLASSES[t[nr as usize] as usize];
        assert_eq!(of(SYS_read), "read");
        assert_eq!(of(SYS_getpid), "query");
        assert_eq!(of(SYS_futex), "lock");
        assert_eq!(of(SYS_sched_yield), "yield");
        assert_eq!(of(SYS_clock_nanosleep), "sleep");
        assert_eq!(CLASSES[0], "other");
        // every class but `other` has members
        for (i, name) in CLASSES.iter().enumerate().skip(1) {
            assert!(t.contains(&(i as u8)), "{name} is empty");
        }
        // no syscall listed twice with different classes
        let mut seen = std::collections::HashMap::new();
        for &(_, nr, class) in COMMON.iter().chain(LEGACY).chain(X86_AND_ARM64) {
            if let Some(prev) = seen.insert(nr, class) {
                assert_eq!(prev, class, "syscall {nr} listed twice");
            }
        }
    }

    /// The `__ARCH_WANT_*` switches arm64 turns on in the generic table
    /// (arch/arm64/include/uapi/asm/unistd.h and asm/unistd.h).
    const ARM64_WANTS: [&str; 6] = [
        "__ARCH_WANT_RENAMEAT",
        "__ARCH_WANT_NEW_STAT",
        "__ARCH_WANT_SET_GET_RLIMIT",
        "__ARCH_WANT_TIME32_SYSCALLS",
        "__ARCH_WANT_MEMFD_SECRET",
        "__ARCH_WANT_SYS_CLONE3",
    ];

    /// arm64's syscall numbers, by name: the kernel's generic table
    /// (`asm-generic/unistd.h`, from the system's kernel headers) with
    /// arm64's switches.
    fn generic_numbers() -> std::collections::HashMap<String, c_long> {
        let path = "/usr/include/asm-generic/unistd.h";
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path} (Debian package linux-libc-dev): {e}"));
        let mut numbers = std::collections::HashMap::new();
        let mut aliases = Vec::new();
        // per open conditional: whether its lines apply to arm64, and
        // whether it is an `#ifdef __ARCH_WANT_*` (whose `#else` flips)
        let mut open: Vec<(bool, bool)> = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("#ifdef") => {
                    let switch = f.next().unwrap_or("");
                    let is_want = switch.starts_with("__ARCH_WANT_");
                    open.push((!is_want || ARM64_WANTS.contains(&switch), is_want));
                    continue;
                }
                Some("#if" | "#ifndef") => {
                    open.push((true, false));
                    continue;
                }
                Some("#else") => {
                    if let Some(top) = open.last_mut() {
                        if top.1 {
                            top.0 = !top.0;
                        }
                    }
                    continue;
                }
                Some("#endif") => {
                    open.pop();
                    continue;
                }
                Some("#define") if open.iter().all(|&(applies, _)| applies) => {}
                _ => continue,
            }
            let (Some(name), Some(value)) = (f.next(), f.next()) else {
                continue;
            };
            let name = name
                .strip_prefix("__NR3264_")
                .or_else(|| name.strip_prefix("__NR_"));
            if let Some(name) = name {
                match value.parse() {
                    Ok(n) => {
                        numbers.insert(name.to_string(), n);
                    }
                    Err(_) => aliases.push((name.to_string(), value.to_string())),
                }
            }
        }
        // `#define __NR_fstat __NR3264_fstat` (the 64-bit names)
        for (name, target) in aliases {
            let target = target
                .strip_prefix("__NR3264_")
                .or_else(|| target.strip_prefix("__NR_"))
                .unwrap_or(&target);
            if let Some(&n) = numbers.get(target) {
                numbers.entry(name).or_insert(n);
            }
        }
        numbers
    }

    /// arm64's table, built from the kernel's generic numbers: every
    /// syscall the table lists for all architectures exists there, the
    /// legacy x86-64 ones do not, and the classes come out as on x86-64.
    #[test]
    fn aarch64_table_from_the_generic_syscall_numbers() {
        let generic = generic_numbers();
        assert_eq!(generic.get("read"), Some(&63), "not the generic table");
        let name = |sys: &str| sys.strip_prefix("SYS_").unwrap().to_string();
        let mut entries = Vec::new();
        for &(sys, _, class) in COMMON {
            let nr = generic
                .get(&name(sys))
                .unwrap_or_else(|| panic!("{sys} is not a generic (arm64) syscall"));
            entries.push((*nr, class));
        }
        for &(sys, _, class) in X86_AND_ARM64 {
            let nr = generic
                .get(&name(sys))
                .unwrap_or_else(|| panic!("{sys} is not an arm64 syscall"));
            entries.push((*nr, class));
        }
        #[cfg(target_arch = "x86_64")]
        for &(sys, _, _) in LEGACY {
            assert!(
                !generic.contains_key(&name(sys)),
                "{sys} exists on arm64: move it to COMMON"
            );
        }
        let t = table_from(entries.into_iter());
        let of = |nr: c_long| CLASSES[t[nr as usize] as usize];
        assert_eq!(of(63), "read"); // read
        assert_eq!(of(64), "write"); // write
        assert_eq!(of(98), "lock"); // futex
        assert_eq!(of(172), "query"); // getpid
        assert_eq!(of(124), "yield"); // sched_yield
        assert_eq!(of(115), "sleep"); // clock_nanosleep
        assert_eq!(of(56), "filesystem"); // openat
        for (i, class) in CLASSES.iter().enumerate().skip(1) {
            assert!(t.contains(&(i as u8)), "{class} is empty on arm64");
        }
        // on this architecture, libc's numbers are the kernel's
        #[cfg(target_arch = "aarch64")]
        for &(sys, nr, _) in COMMON {
            assert_eq!(Some(&nr), generic.get(&name(sys)), "{sys}");
        }
    }
}
