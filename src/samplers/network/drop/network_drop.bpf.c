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

static __always_inline void count_drop(u32 reason)
{
	u32 slot = reason < OTHER ? reason : OTHER;
	/* keep the compiler from indexing with an unchecked copy of reason */
	barrier_var(slot);
	slot &= REASON_SLOTS - 1;
	struct drop_bank *bank = bank_of_this_cpu(&drops);
	if (bank)
		bank->counters[slot] += 1;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, unsigned int reason)
{
	count_drop(reason);
	return 0;
}

/* The compatibility path: a raw tracepoint. Kernels before drop reasons
 * pass no reason: userspace says so from the tracepoint's arguments in the
 * BTF in use, and every drop counts as reason NOT_SPECIFIED (its number,
 * from that BTF or 2). */
const volatile bool kfree_skb_has_reason = true;
const volatile u32 unspecified_reason = 2;

SEC("raw_tp/kfree_skb")
int BPF_PROG(kfree_skb_compat)
{
	u32 reason = unspecified_reason;
	if (kfree_skb_has_reason) {
		/* keeps the load of the third argument in this branch: the
		 * kernel refuses to attach a program that reads past the
		 * tracepoint's arguments */
		barrier();
		reason = (u32)ctx[2];
	}
	count_drop(reason);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
