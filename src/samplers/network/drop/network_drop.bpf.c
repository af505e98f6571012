// SPDX-License-Identifier: GPL-2.0
/* network_drop: packets the kernel dropped, by drop reason, per CPU.
 * skb:kfree_skb fires for drops only (normal frees go to skb:consume_skb);
 * its reason is an `enum skb_drop_reason`, whose names userspace reads from
 * the running kernel's BTF. One counter slot per reason below OTHER; larger
 * values (subsystem reasons, or a future kernel's) share the OTHER slot. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>

#define REASON_SLOTS 256
#define OTHER (REASON_SLOTS - 1)

DEFINE_BANK(drop_bank, REASON_SLOTS);

BANK_MAP(drops, drop_bank);

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, unsigned int reason)
{
	u32 slot = reason < OTHER ? reason : OTHER;
	struct drop_bank *bank = bank_of_this_cpu(&drops);
	if (bank)
		bank->counters[slot & (REASON_SLOTS - 1)] += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
