// SPDX-License-Identifier: GPL-2.0
/* cpu_migrations: per-CPU counts of tasks migrated out of and into each CPU.
 * The hook may run on a third CPU, so the updates are atomic. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

enum { MIGRATED_IN = 0, MIGRATED_OUT = 1, MIGRATION_COUNTERS = 2 };

DEFINE_BANK(migration_bank, MIGRATION_COUNTERS);

BANK_MAP(migrations, migration_bank);

static __always_inline int count_migration(struct task_struct *p, int dest_cpu)
{
	u32 src, dst = dest_cpu;
	if (bpf_core_field_exists(p->cpu))
		src = BPF_CORE_READ(p, cpu);
	else
		src = BPF_CORE_READ(p, thread_info.cpu);
	if (src == dst)
		return 0;

	struct migration_bank *bank = bpf_map_lookup_elem(&migrations, &src);
	if (bank)
		__sync_fetch_and_add(&bank->counters[MIGRATED_OUT], 1);
	bank = bpf_map_lookup_elem(&migrations, &dst);
	if (bank)
		__sync_fetch_and_add(&bank->counters[MIGRATED_IN], 1);
	return 0;
}

SEC("tp_btf/sched_migrate_task")
int BPF_PROG(sched_migrate_task, struct task_struct *p, int dest_cpu)
{
	return count_migration(p, dest_cpu);
}

/* The compatibility path: the same count from a raw tracepoint, which needs
 * no BTF of the kernel's own (CO-RE reads relocate against [general] btf). */
SEC("raw_tp/sched_migrate_task")
int BPF_PROG(sched_migrate_task_compat, struct task_struct *p, int dest_cpu)
{
	return count_migration(p, dest_cpu);
}

char LICENSE[] SEC("license") = "GPL";
