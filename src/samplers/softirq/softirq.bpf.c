// SPDX-License-Identifier: GPL-2.0
/* softirq: count and time per softirq kind, per CPU. Softirqs do not nest on
 * a CPU, so one start slot per CPU bank is enough. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>

#define KINDS 10 /* NR_SOFTIRQS */
enum { COUNT = 0, TIME = KINDS, START = 2 * KINDS, SOFTIRQ_COUNTERS = 2 * KINDS + 1 };

DEFINE_BANK(softirq_bank, SOFTIRQ_COUNTERS);

BANK_MAP(softirqs, softirq_bank);

static __always_inline int softirq_start(void)
{
	struct softirq_bank *bank = bank_of_this_cpu(&softirqs);
	if (bank)
		bank->counters[START] = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int softirq_end(unsigned int vec)
{
	u64 kind = vec;
	/* keep the compiler from indexing with an unchecked copy of vec */
	barrier_var(kind);
	if (kind >= KINDS)
		return 0;
	struct softirq_bank *bank = bank_of_this_cpu(&softirqs);
	if (!bank)
		return 0;
	u64 start = bank->counters[START];
	if (!start)
		return 0;
	bank->counters[COUNT + kind] += 1;
	bank->counters[TIME + kind] += bpf_ktime_get_ns() - start;
	bank->counters[START] = 0;
	return 0;
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(softirq_entry, unsigned int vec)
{
	return softirq_start();
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(softirq_exit, unsigned int vec)
{
	return softirq_end(vec);
}

/* The compatibility path: the same from raw tracepoints, which need no BTF
 * of the kernel's own. */
SEC("raw_tp/softirq_entry")
int BPF_PROG(softirq_entry_compat, unsigned int vec)
{
	return softirq_start();
}

SEC("raw_tp/softirq_exit")
int BPF_PROG(softirq_exit_compat, unsigned int vec)
{
	return softirq_end(vec);
}

char LICENSE[] SEC("license") = "GPL";
