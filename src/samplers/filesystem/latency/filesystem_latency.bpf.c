// SPDX-License-Identifier: GPL-2.0
/* filesystem_latency: read, write, open and fsync latency per file system
 * type, with two ways in (userspace loads one of them):
 *
 * - fentry/fexit on file systems' own file operations (ext4_file_read_iter,
 *   xfs_file_fsync, ...): the time inside the file system, whatever called
 *   it (read(2), io_uring, the kernel). Each pair of programs is given its
 *   target by userspace before load (TARGET slots below).
 * - tp_btf/sys_enter and sys_exit for read/write/pread64/pwrite64/readv/
 *   writev/preadv/pwritev/preadv2/pwritev2, open/openat/openat2/creat,
 *   fsync/fdatasync: the time of the whole system call, on regular files
 *   and directories only (filesystem_latency.bpf.h, which the syscall
 *   sampler's programs include too: when that sampler runs, it does this
 *   work and these two programs are not loaded). IO submitted through
 *   io_uring or AIO is not seen.
 *
 * Either way a call that fails is not counted, and the file system type is
 * taken from the file. */
#include "rezolus.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "filesystem_latency.bpf.h"

/* ---- the system call path, when this sampler runs it itself ---- */

SEC("tp_btf/sys_enter")
int BPF_PROG(fs_sys_enter, struct pt_regs *regs, long id)
{
	fs_syscall_enter(regs, id);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(fs_sys_exit, struct pt_regs *regs, long ret)
{
	fs_syscall_exit(regs, ret);
	return 0;
}

/* ---- the fentry path ---- */

static __always_inline void enter(u32 op)
{
	struct fs_start *s = bpf_task_storage_get(&fs_starts, bpf_get_current_task_btf(), 0,
						  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s)
		s->ts[op & (FS_OPS - 1)] = bpf_ktime_get_ns();
}

static __always_inline void leave(u32 op, struct file *file, long ret)
{
	struct fs_start *s = bpf_task_storage_get(&fs_starts, bpf_get_current_task_btf(), 0, 0);
	if (!s)
		return;
	op &= FS_OPS - 1;
	u64 start = s->ts[op];
	s->ts[op] = 0;
	if (start && ret >= 0 && file)
		fs_record(file, op, start, false);
}

/* one fentry/fexit pair per op for target slot N */
#define TARGET(N)                                                              \
	SEC("fentry")                                                          \
	int BPF_PROG(read_enter_##N) { enter(FS_OP_READ); return 0; }          \
	SEC("fexit")                                                           \
	int BPF_PROG(read_exit_##N, struct kiocb *iocb, void *iter, long ret)  \
	{ leave(FS_OP_READ, iocb->ki_filp, ret); return 0; }    \
	SEC("fentry")                                                          \
	int BPF_PROG(write_enter_##N) { enter(FS_OP_WRITE); return 0; }        \
	SEC("fexit")                                                           \
	int BPF_PROG(write_exit_##N, struct kiocb *iocb, void *iter, long ret) \
	{ leave(FS_OP_WRITE, iocb->ki_filp, ret); return 0; }   \
	SEC("fentry")                                                          \
	int BPF_PROG(open_enter_##N) { enter(FS_OP_OPEN); return 0; }          \
	SEC("fexit")                                                           \
	int BPF_PROG(open_exit_##N, struct inode *inode, struct file *file,    \
		     int ret)                                                  \
	{ leave(FS_OP_OPEN, file, ret); return 0; }                            \
	SEC("fentry")                                                          \
	int BPF_PROG(fsync_enter_##N) { enter(FS_OP_FSYNC); return 0; }        \
	SEC("fexit")                                                           \
	int BPF_PROG(fsync_exit_##N, struct file *file, loff_t start,          \
		     loff_t end, int datasync, int ret)                        \
	{ leave(FS_OP_FSYNC, file, ret); return 0; }

TARGET(0)
TARGET(1)
TARGET(2)
TARGET(3)
TARGET(4)
TARGET(5)

/* ---- The compatibility path: for kernels without task storage (before
 * 5.11), BTF-typed helpers or BTF of their own. Raw tracepoints on the
 * system calls, as above, with every kernel structure read through CO-RE;
 * the start times in a preallocated hash map keyed by thread id, of the
 * sampler's option compat_map_entries (sized at load; a call whose thread
 * finds it full is not timed, counted in fs_untracked_compat); a thread's
 * entry is deleted when it exits. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized at load */
	__type(key, u32);
	__type(value, struct fs_start);
} fs_starts_compat SEC(".maps");

SEC("raw_tp/sys_enter")
int BPF_PROG(fs_sys_enter_compat, struct pt_regs *regs, long id)
{
	u32 op = fs_op_of_untyped(id);
	if (!op || op > FS_OPS)
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct fs_start zero = {};
	struct fs_start *s = entry_or_add(&fs_starts_compat, &tid, &zero);
	if (!s) {
		fs_count_untracked();
		return 0;
	}
	op -= 1;
	/* the fd is the first argument of every call here but the opens */
	if (op != FS_OP_OPEN)
		s->fd = fs_fd_untyped(regs);
	s->ts[op & (FS_OPS - 1)] = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tp/sys_exit")
int BPF_PROG(fs_sys_exit_compat, struct pt_regs *regs, long ret)
{
	long id = bpf_core_field_exists(regs->orig_ax) ? (long)BPF_CORE_READ(regs, orig_ax)
						       : BPF_CORE_READ(regs, syscallno);
	u32 op = fs_op_of_untyped(id);
	if (!op || op > FS_OPS)
		return 0;
	op = (op - 1) & (FS_OPS - 1);
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct fs_start *s = bpf_map_lookup_elem(&fs_starts_compat, &tid);
	if (!s)
		return 0;
	u64 start = s->ts[op];
	s->ts[op] = 0;
	if (!start || ret < 0)
		return 0;
	fs_record_untyped(op, op == FS_OP_OPEN ? ret : s->fd, start);
	return 0;
}

/* an exiting thread's entry is freed (it runs in the exiting thread) */
SEC("raw_tp/sched_process_exit")
int BPF_PROG(fs_process_exit_compat)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&fs_starts_compat, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
