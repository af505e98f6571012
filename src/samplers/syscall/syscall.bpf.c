// SPDX-License-Identifier: GPL-2.0
/* syscall: per op class, a count at sys_enter (per-CPU banks) and the
 * latency from sys_enter to sys_exit (one histogram per class). The start
 * time lives in task-local storage: no hash map on the hot path. With
 * latency_sampling = K > 1, only one call in K per CPU is timed (its two clock
 * reads are most of this program's cost); every call is still counted.
 * With count_cgroups, each call is also counted for the calling task's
 * cgroup (cgroup_slot.h), in the same program: a second program on
 * sys_enter would cost a second dispatch per call. For the same reason,
 * with time_filesystems these programs also time file system calls for the
 * filesystem_latency sampler (filesystem_latency.bpf.h), which then reads
 * the fs_* maps of this object. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>

#define MAX_SYSCALL_NR 1024
#define CLASSES 16

#define CGROUP_COUNTERS CLASSES
#include "cgroup_slot.h"
#include "../filesystem/latency/filesystem_latency.bpf.h"

/* set by userspace before load when filesystem_latency shares these programs */
const volatile bool time_filesystems = false;

/* op class per syscall number, filled in by userspace before load */
const volatile u8 syscall_class[MAX_SYSCALL_NR] = {};
/* time one call in this many per CPU; set by userspace before load */
const volatile u32 latency_sampling = 1;

/* a counter per class, then the sampling phase, then (compatibility path)
 * calls that would have been timed but for the thread map being full */
#define SAMPLING_PHASE CLASSES
#define UNTRACKED (CLASSES + 1)
DEFINE_BANK(syscall_bank, CLASSES + 2);

BANK_MAP(counts, syscall_bank);

HISTOGRAM_MAP(latency, CLASSES);

struct syscall_start {
	u64 ts;
	u32 class;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_start);
} start SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(syscall_enter, struct pt_regs *regs, long id)
{
	u32 class = 0;
	if (id >= 0 && id < MAX_SYSCALL_NR)
		class = syscall_class[id] & (CLASSES - 1);
	/* a 32-bit compat call's number means another call: class other */
	if (class && compat_syscall())
		class = 0;

	struct syscall_bank *bank = bank_of_this_cpu(&counts);
	if (!bank)
		return 0;
	bank->counters[class] += 1;
	if (count_cgroups)
		cgroup_add(current_cgroup_slot(), class, 1);
	if (time_filesystems)
		fs_syscall_enter(regs, id);
	if (latency_sampling > 1 && ++bank->counters[SAMPLING_PHASE] % latency_sampling)
		return 0;

	struct syscall_start *s = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0,
						       BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s) {
		s->ts = bpf_ktime_get_ns();
		s->class = class;
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(syscall_exit, struct pt_regs *regs, long ret)
{
	if (time_filesystems)
		fs_syscall_exit(regs, ret);
	struct syscall_start *s = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0, 0);
	if (!s || !s->ts)
		return 0;
	histogram_record(&latency, s->class & (CLASSES - 1), bpf_ktime_get_ns() - s->ts);
	s->ts = 0;
	return 0;
}

/* ---- The compatibility path: for kernels without task storage (before
 * 5.11) or without BTF of their own. Raw tracepoints; the start time in a
 * preallocated hash map keyed by thread id, of the sampler's option
 * compat_map_entries (sized at load; a call whose thread finds it full is
 * counted but not timed, and counted in UNTRACKED); a thread's entry is
 * deleted when it exits. With time_filesystems, a file system call's entry
 * also holds its op and fd, for filesystem_latency (its start is the
 * call's); no second map or program. No per-cgroup counts (they need 5.11
 * helpers and more). */
struct syscall_start_compat {
	u64 ts;
	/* a file system call's fd, but for the opens */
	s64 fd;
	u32 class;
	/* the file system op + 1, 0: none */
	u16 fs_op;
	/* timed for syscall_latency (latency_sampling) */
	u8 timed;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized at load */
	__type(key, u32);
	__type(value, struct syscall_start_compat);
} start_compat SEC(".maps");

SEC("raw_tp/sys_enter")
int BPF_PROG(syscall_enter_compat, struct pt_regs *regs, long id)
{
	u32 class = 0;
	if (id >= 0 && id < MAX_SYSCALL_NR)
		class = syscall_class[id] & (CLASSES - 1);
	if (class && compat_syscall_untyped())
		class = 0;

	struct syscall_bank *bank = bank_of_this_cpu(&counts);
	if (!bank)
		return 0;
	bank->counters[class] += 1;
	bool timed = true;
	if (latency_sampling > 1 && ++bank->counters[SAMPLING_PHASE] % latency_sampling)
		timed = false;
	u32 fs_op = 0;
	if (time_filesystems) {
		fs_op = fs_op_of_untyped(id);
		if (fs_op > FS_OPS)
			fs_op = 0;
	}
	if (!timed && !fs_op)
		return 0;

	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct syscall_start_compat zero = {};
	struct syscall_start_compat *s = entry_or_add(&start_compat, &tid, &zero);
	if (!s) {
		if (timed)
			bank->counters[UNTRACKED] += 1;
		if (fs_op)
			fs_count_untracked();
		return 0;
	}
	s->ts = bpf_ktime_get_ns();
	s->class = class;
	s->timed = timed;
	s->fs_op = fs_op;
	if (fs_op && fs_op - 1 != FS_OP_OPEN)
		s->fd = fs_fd_untyped(regs);
	return 0;
}

SEC("raw_tp/sys_exit")
int BPF_PROG(syscall_exit_compat, struct pt_regs *regs, long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct syscall_start_compat *s = bpf_map_lookup_elem(&start_compat, &tid);
	if (!s || !s->ts)
		return 0;
	u64 start = s->ts;
	s->ts = 0;
	if (s->timed)
		histogram_record(&latency, s->class & (CLASSES - 1), bpf_ktime_get_ns() - start);
	if (time_filesystems && s->fs_op && ret >= 0) {
		u32 op = (s->fs_op - 1) & (FS_OPS - 1);
		fs_record_untyped(op, op == FS_OP_OPEN ? ret : s->fd, start);
	}
	return 0;
}

/* an exiting thread's entry is freed (it runs in the exiting thread) */
SEC("raw_tp/sched_process_exit")
int BPF_PROG(sched_process_exit_compat, struct task_struct *p)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&start_compat, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
