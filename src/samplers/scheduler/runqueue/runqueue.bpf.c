// SPDX-License-Identifier: GPL-2.0
/* scheduler_runqueue: per-task timestamps in task storage, set at wakeup and
 * at context switch, give three histograms (run-queue latency, time on CPU
 * per slice, time off CPU) and per-CPU voluntary/involuntary switch counts.
 * With count_cgroups, the same events are also summed per cgroup
 * (cgroup_slot.h): nanoseconds waited on a run queue and off CPU, switches
 * by kind, and migrations (a task switched in on a CPU other than the one it
 * last ran on). Each task caches its cgroup's slot in its own storage. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

/* per-cgroup counters, in the order of CGROUP_COLUMNS in mod.rs */
enum { CG_RUNQUEUE_WAIT = 0, CG_OFFCPU = 1, CG_VOLUNTARY = 2, CG_INVOLUNTARY = 3,
       CG_MIGRATIONS = 4 };
#define CGROUP_COUNTERS 8
#include "cgroup_slot.h"

#define TASK_RUNNING 0
#define TASK_DEAD 0x80

/* UNTRACKED: on the compatibility path, tasks switched in or woken that
 * found the task map full (their times are not taken) */
enum { VOLUNTARY = 0, INVOLUNTARY = 1, UNTRACKED = 2, SWITCH_COUNTERS = 3 };
enum { RUNQUEUE_LATENCY = 0, RUNNING = 1, OFFCPU = 2, HISTOGRAMS = 3 };

DEFINE_BANK(switch_bank, SWITCH_COUNTERS);

BANK_MAP(switches, switch_bank);

HISTOGRAM_MAP(histograms, HISTOGRAMS);

/* A task's clock, on either path */
struct task_clock {
	u64 enqueued;      /* woken or preempted: waiting on a run queue */
	u64 running_since; /* switched in */
	u64 offcpu_since;  /* switched out */
};

struct task_times {
	struct task_clock clock;
	struct cgroup_slot_cache cgroup;
	u32 last_cpu;      /* the CPU it last ran on, plus one */
};

/* A task switched out at `now`: its slice on CPU is recorded, its time off
 * CPU starts, and if still runnable its wait on a run queue too. */
static __always_inline void switched_out(struct task_clock *c, u64 now, bool runnable)
{
	if (c->running_since)
		histogram_record(&histograms, RUNNING, now - c->running_since);
	c->running_since = 0;
	c->offcpu_since = now;
	c->enqueued = runnable ? now : 0;
}

/* A task switched in at `now`: its wait on a run queue and its time off CPU
 * are recorded (the clock is restarted by running()). */
static __always_inline void switched_in(struct task_clock *c, u64 now)
{
	if (c->enqueued)
		histogram_record(&histograms, RUNQUEUE_LATENCY, now - c->enqueued);
	if (c->offcpu_since)
		histogram_record(&histograms, OFFCPU, now - c->offcpu_since);
}

static __always_inline void running(struct task_clock *c, u64 now)
{
	c->enqueued = 0;
	c->offcpu_since = 0;
	c->running_since = now;
}

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_times);
} times SEC(".maps");

static __always_inline int enqueue(struct task_struct *p)
{
	struct task_times *t = bpf_task_storage_get(&times, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (t)
		t->clock.enqueued = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	return enqueue(p);
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new, struct task_struct *p)
{
	return enqueue(p);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	/* the kernel's own rule for nvcsw/nivcsw */
	u32 kind = (preempt || prev_state == TASK_RUNNING) ? INVOLUNTARY : VOLUNTARY;
	struct switch_bank *bank = bank_of_this_cpu(&switches);
	if (bank)
		bank->counters[kind] += 1;

	u64 now = bpf_ktime_get_ns();

	if (prev->pid) { /* not the idle task */
		struct task_times *t = bpf_task_storage_get(&times, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t) {
			/* still runnable (involuntary): it waits on the run queue */
			switched_out(&t->clock, now, kind == INVOLUNTARY);
			if (count_cgroups)
				cgroup_add(cached_cgroup_slot(prev, &t->cgroup),
					   kind == INVOLUNTARY ? CG_INVOLUNTARY : CG_VOLUNTARY, 1);
		}
	}

	if (next->pid) {
		struct task_times *t = bpf_task_storage_get(&times, next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t) {
			switched_in(&t->clock, now);
			if (count_cgroups) {
				u32 slot = cached_cgroup_slot(next, &t->cgroup);
				u32 cpu = bpf_get_smp_processor_id() + 1;
				if (t->clock.enqueued)
					cgroup_add(slot, CG_RUNQUEUE_WAIT, now - t->clock.enqueued);
				if (t->clock.offcpu_since)
					cgroup_add(slot, CG_OFFCPU, now - t->clock.offcpu_since);
				if (t->last_cpu && t->last_cpu != cpu)
					cgroup_add(slot, CG_MIGRATIONS, 1);
				t->last_cpu = cpu;
			}
			running(&t->clock, now);
		}
	}
	return 0;
}

/* ---- The compatibility path: for kernels without task storage (before
 * 5.11) or without BTF of their own. Raw tracepoints, and the per-task
 * times in a preallocated hash map keyed by thread id, of the sampler's
 * option compat_map_entries (sized at load; a task that finds it full is
 * counted in UNTRACKED and not timed); a task's entry is deleted at its
 * last switch (TASK_DEAD). No per-cgroup counts (they need cgroup storage,
 * 5.11 and 6.2 helpers). */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized at load */
	__type(key, u32);
	__type(value, struct task_clock);
} times_compat SEC(".maps");

/* set by userspace before load: whether the kernel's sched_switch
 * tracepoint passes prev_state (newer kernels); else it is read from the
 * task, as the kernel did before */
const volatile bool switch_has_prev_state = true;

/* the task's state field before it was renamed __state */
struct task_struct___state {
	long state;
} __attribute__((preserve_access_index));

static __always_inline struct task_clock *times_of_compat(u32 pid)
{
	struct task_clock zero = {};
	struct task_clock *t = entry_or_add(&times_compat, &pid, &zero);
	if (!t) {
		struct switch_bank *bank = bank_of_this_cpu(&switches);
		if (bank)
			__sync_fetch_and_add(&bank->counters[UNTRACKED], 1);
	}
	return t;
}

static __always_inline int enqueue_compat(struct task_struct *p)
{
	struct task_clock *t = times_of_compat(BPF_CORE_READ(p, pid));
	if (t)
		t->enqueued = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tp/sched_wakeup")
int BPF_PROG(sched_wakeup_compat, struct task_struct *p)
{
	return enqueue_compat(p);
}

SEC("raw_tp/sched_wakeup_new")
int BPF_PROG(sched_wakeup_new_compat, struct task_struct *p)
{
	return enqueue_compat(p);
}

SEC("raw_tp/sched_switch")
int BPF_PROG(sched_switch_compat, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	long prev_state;
	if (switch_has_prev_state)
		prev_state = (unsigned int)ctx[3];
	else if (bpf_core_field_exists(prev->__state))
		prev_state = BPF_CORE_READ(prev, __state);
	else
		prev_state = BPF_CORE_READ((struct task_struct___state *)prev, state);
	u32 kind = (preempt || prev_state == TASK_RUNNING) ? INVOLUNTARY : VOLUNTARY;
	struct switch_bank *bank = bank_of_this_cpu(&switches);
	if (bank)
		bank->counters[kind] += 1;

	u64 now = bpf_ktime_get_ns();
	u32 prev_pid = BPF_CORE_READ(prev, pid);
	u32 next_pid = BPF_CORE_READ(next, pid);

	if (prev_pid && (prev_state & TASK_DEAD)) {
		/* a dead task's last switch: its entry goes (made again
		 * here, it would never be freed) */
		bpf_map_delete_elem(&times_compat, &prev_pid);
	} else if (prev_pid) {
		struct task_clock *t = times_of_compat(prev_pid);
		if (t)
			switched_out(t, now, kind == INVOLUNTARY);
	}

	if (next_pid) {
		struct task_clock *t = times_of_compat(next_pid);
		if (t) {
			switched_in(t, now);
			running(t, now);
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
