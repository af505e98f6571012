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

/// Syscalls present on every Linux architecture.
static COMMON: &[(c_long, u8)] = &[
    (SYS_read, class("read")),
    (SYS_readv, class("read")),
    (SYS_pread64, class("read")),
    (SYS_preadv, class("read")),
    (SYS_preadv2, class("read")),
    (SYS_write, class("write")),
    (SYS_writev, class("write")),
    (SYS_pwrite64, class("write")),
    (SYS_pwritev, class("write")),
    (SYS_pwritev2, class("write")),
    (SYS_ppoll, class("poll")),
    (SYS_pselect6, class("poll")),
    (SYS_epoll_pwait, class("poll")),
    (SYS_epoll_pwait2, class("poll")),
    (SYS_epoll_ctl, class("poll")),
    (SYS_epoll_create1, class("poll")),
    (SYS_futex, class("lock")),
    (SYS_futex_waitv, class("lock")),
    (SYS_flock, class("lock")),
    (SYS_clock_gettime, class("time")),
    (SYS_clock_settime, class("time")),
    (SYS_clock_getres, class("time")),
    (SYS_clock_adjtime, class("time")),
    (SYS_gettimeofday, class("time")),
    (SYS_settimeofday, class("time")),
    (SYS_adjtimex, class("time")),
    (SYS_nanosleep, class("sleep")),
    (SYS_clock_nanosleep, class("sleep")),
    (SYS_socket, class("socket")),
    (SYS_socketpair, class("socket")),
    (SYS_bind, class("socket")),
    (SYS_listen, class("socket")),
    (SYS_accept, class("socket")),
    (SYS_accept4, class("socket")),
    (SYS_connect, class("socket")),
    (SYS_shutdown, class("socket")),
    (SYS_sendto, class("socket")),
    (SYS_recvfrom, class("socket")),
    (SYS_sendmsg, class("socket")),
    (SYS_recvmsg, class("socket")),
    (SYS_sendmmsg, class("socket")),
    (SYS_recvmmsg, class("socket")),
    (SYS_getsockopt, class("socket")),
    (SYS_setsockopt, class("socket")),
    (SYS_getsockname, class("socket")),
    (SYS_getpeername, class("socket")),
    (SYS_sched_yield, class("yield")),
    (SYS_openat, class("filesystem")),
    (SYS_openat2, class("filesystem")),
    (SYS_close, class("filesystem")),
    (SYS_close_range, class("filesystem")),
    (SYS_fstat, class("filesystem")),
    (SYS_newfstatat, class("filesystem")),
    (SYS_statx, class("filesystem")),
    (SYS_statfs, class("filesystem")),
    (SYS_fstatfs, class("filesystem")),
    (SYS_faccessat, class("filesystem")),
    (SYS_faccessat2, class("filesystem")),
    (SYS_mkdirat, class("filesystem")),
    (SYS_mknodat, class("filesystem")),
    (SYS_unlinkat, class("filesystem")),
    (SYS_renameat2, class("filesystem")),
    (SYS_linkat, class("filesystem")),
    (SYS_symlinkat, class("filesystem")),
    (SYS_readlinkat, class("filesystem")),
    (SYS_fchmod, class("filesystem")),
    (SYS_fchmodat, class("filesystem")),
    (SYS_fchown, class("filesystem")),
    (SYS_fchownat, class("filesystem")),
    (SYS_truncate, class("filesystem")),
    (SYS_ftruncate, class("filesystem")),
    (SYS_fallocate, class("filesystem")),
    (SYS_fsync, class("filesystem")),
    (SYS_fdatasync, class("filesystem")),
    (SYS_sync, class("filesystem")),
    (SYS_syncfs, class("filesystem")),
    (SYS_sync_file_range, class("filesystem")),
    (SYS_lseek, class("filesystem")),
    (SYS_getdents64, class("filesystem")),
    (SYS_fcntl, class("filesystem")),
    (SYS_ioctl, class("filesystem")),
    (SYS_utimensat, class("filesystem")),
    (SYS_sendfile, class("filesystem")),
    (SYS_splice, class("filesystem")),
    (SYS_tee, class("filesystem")),
    (SYS_copy_file_range, class("filesystem")),
    (SYS_dup, class("filesystem")),
    (SYS_dup3, class("filesystem")),
    (SYS_chdir, class("filesystem")),
    (SYS_fchdir, class("filesystem")),
    (SYS_getcwd, class("filesystem")),
    (SYS_mmap, class("memory")),
    (SYS_munmap, class("memory")),
    (SYS_mprotect, class("memory")),
    (SYS_mremap, class("memory")),
    (SYS_madvise, class("memory")),
    (SYS_process_madvise, class("memory")),
    (SYS_brk, class("memory")),
    (SYS_mlock, class("memory")),
    (SYS_mlock2, class("memory")),
    (SYS_munlock, class("memory")),
    (SYS_mlockall, class("memory")),
    (SYS_munlockall, class("memory")),
    (SYS_mincore, class("memory")),
    (SYS_msync, class("memory")),
    (SYS_membarrier, class("memory")),
    (SYS_clone, class("process")),
    (SYS_clone3, class("process")),
    (SYS_execve, class("process")),
    (SYS_execveat, class("process")),
    (SYS_exit, class("process")),
    (SYS_exit_group, class("process")),
    (SYS_wait4, class("process")),
    (SYS_waitid, class("process")),
    (SYS_kill, class("process")),
    (SYS_tkill, class("process")),
    (SYS_tgkill, class("process")),
    (SYS_prctl, class("process")),
    (SYS_set_tid_address, class("process")),
    (SYS_setpgid, class("process")),
    (SYS_setsid, class("process")),
    (SYS_setuid, class("process")),
    (SYS_setgid, class("process")),
    (SYS_rt_sigaction, class("process")),
    (SYS_rt_sigprocmask, class("process")),
    (SYS_rt_sigreturn, class("process")),
    (SYS_sigaltstack, class("process")),
    (SYS_pidfd_open, class("process")),
    (SYS_pidfd_send_signal, class("process")),
    (SYS_ptrace, class("process")),
    (SYS_unshare, class("process")),
    (SYS_setns, class("process")),
    (SYS_rseq, class("process")),
    (SYS_getpid, class("query")),
    (SYS_getppid, class("query")),
    (SYS_gettid, class("query")),
    (SYS_getuid, class("query")),
    (SYS_geteuid, class("query")),
    (SYS_getgid, class("query")),
    (SYS_getegid, class("query")),
    (SYS_getgroups, class("query")),
    (SYS_getpgid, class("query")),
    (SYS_getsid, class("query")),
    (SYS_prlimit64, class("query")),
    (SYS_getrusage, class("query")),
    (SYS_uname, class("query")),
    (SYS_sysinfo, class("query")),
    (SYS_getcpu, class("query")),
    (SYS_getpriority, class("query")),
    (SYS_sched_getaffinity, class("query")),
    (SYS_times, class("query")),
    (SYS_getrandom, class("query")),
    (SYS_pipe2, class("ipc")),
    (SYS_msgget, class("ipc")),
    (SYS_msgsnd, class("ipc")),
    (SYS_msgrcv, class("ipc")),
    (SYS_msgctl, class("ipc")),
    (SYS_semget, class("ipc")),
    (SYS_semop, class("ipc")),
    (SYS_semtimedop, class("ipc")),
    (SYS_semctl, class("ipc")),
    (SYS_shmget, class("ipc")),
    (SYS_shmat, class("ipc")),
    (SYS_shmdt, class("ipc")),
    (SYS_shmctl, class("ipc")),
    (SYS_mq_open, class("ipc")),
    (SYS_mq_timedsend, class("ipc")),
    (SYS_mq_timedreceive, class("ipc")),
    (SYS_timer_create, class("timer")),
    (SYS_timer_settime, class("timer")),
    (SYS_timer_gettime, class("timer")),
    (SYS_timer_getoverrun, class("timer")),
    (SYS_timer_delete, class("timer")),
    (SYS_timerfd_create, class("timer")),
    (SYS_timerfd_settime, class("timer")),
    (SYS_timerfd_gettime, class("timer")),
    (SYS_setitimer, class("timer")),
    (SYS_getitimer, class("timer")),
    (SYS_eventfd2, class("event")),
    (SYS_signalfd4, class("event")),
    (SYS_inotify_init1, class("event")),
    (SYS_inotify_add_watch, class("event")),
    (SYS_inotify_rm_watch, class("event")),
    (SYS_fanotify_init, class("event")),
    (SYS_fanotify_mark, class("event")),
    (SYS_io_uring_setup, class("event")),
    (SYS_io_uring_enter, class("event")),
    (SYS_io_uring_register, class("event")),
    (SYS_io_setup, class("event")),
    (SYS_io_submit, class("event")),
    (SYS_io_getevents, class("event")),
];

/// Legacy syscalls that newer architectures (arm64, riscv) do not have.
#[cfg(target_arch = "x86_64")]
static LEGACY: &[(c_long, u8)] = &[
    (SYS_poll, class("poll")),
    (SYS_select, class("poll")),
    (SYS_epoll_wait, class("poll")),
    (SYS_epoll_create, class("poll")),
    (SYS_time, class("time")),
    (SYS_pause, class("sleep")),
    (SYS_open, class("filesystem")),
    (SYS_creat, class("filesystem")),
    (SYS_stat, class("filesystem")),
    (SYS_lstat, class("filesystem")),
    (SYS_access, class("filesystem")),
    (SYS_mkdir, class("filesystem")),
    (SYS_rmdir, class("filesystem")),
    (SYS_unlink, class("filesystem")),
    (SYS_rename, class("filesystem")),
    (SYS_renameat, class("filesystem")),
    (SYS_link, class("filesystem")),
    (SYS_symlink, class("filesystem")),
    (SYS_readlink, class("filesystem")),
    (SYS_chmod, class("filesystem")),
    (SYS_chown, class("filesystem")),
    (SYS_lchown, class("filesystem")),
    (SYS_mknod, class("filesystem")),
    (SYS_getdents, class("filesystem")),
    (SYS_dup2, class("filesystem")),
    (SYS_fork, class("process")),
    (SYS_vfork, class("process")),
    (SYS_arch_prctl, class("process")),
    (SYS_getpgrp, class("query")),
    (SYS_getrlimit, class("query")),
    (SYS_pipe, class("ipc")),
    (SYS_alarm, class("timer")),
    (SYS_eventfd, class("event")),
    (SYS_signalfd, class("event")),
    (SYS_inotify_init, class("event")),
];

#[cfg(not(target_arch = "x86_64"))]
static LEGACY: &[(c_long, u8)] = &[];

/// The lookup table handed to BPF: class index per syscall number, `other`
/// (0) for numbers not listed.
pub fn table() -> [u8; MAX_SYSCALL_NR] {
    let mut table = [0u8; MAX_SYSCALL_NR];
    for &(nr, class) in COMMON.iter().chain(LEGACY) {
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
        for &(nr, class) in COMMON.iter().chain(LEGACY) {
            if let Some(prev) = seen.insert(nr, class) {
                assert_eq!(prev, class, "syscall {nr} listed twice");
            }
        }
    }
}
