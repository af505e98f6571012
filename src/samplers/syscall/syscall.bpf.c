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
 * calls not timed because the thread map was full */
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
 * deleted when it exits. No per-cgroup counts and no file system timing
 * (both need 5.11 helpers and more). */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized at load */
	__type(key, u32);
	__type(value, struct syscall_start);
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
	if (latency_sampling > 1 && ++bank->counters[SAMPLING_PHASE] % latency_sampling)
		return 0;

	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct syscall_start *s = bpf_map_lookup_elem(&start_compat, &tid);
	if (!s) {
		struct syscall_start zero = {};
		/* fails when full (or when this thread was just added: looked up again) */
		bpf_map_update_elem(&start_compat, &tid, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&start_compat, &tid);
		if (!s) {
			bank->counters[UNTRACKED] += 1;
			return 0;
		}
	}
	s->ts = bpf_ktime_get_ns();
	s->class = class;
	return 0;
}

SEC("raw_tp/sys_exit")
int BPF_PROG(syscall_exit_compat, struct pt_regs *regs, long ret)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct syscall_start *s = bpf_map_lookup_elem(&start_compat, &tid);
	if (!s || !s->ts)
		return 0;
	histogram_record(&latency, s->class & (CLASSES - 1), bpf_ktime_get_ns() - s->ts);
	s->ts = 0;
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
