// SPDX-License-Identifier: GPL-2.0
/* tcp_retransmit: TCP segments retransmitted, per CPU, counted the way the
 * kernel's RetransSegs (/proc/net/snmp) counts them: a successful
 * retransmission of an skb adds its segment count (tcp:tcp_retransmit_skb,
 * err == 0), a SYN-ACK retransmitted for a pending connection adds one
 * (tcp:tcp_retransmit_synack). */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

enum { SEGMENT = 0, SYNACK = 1, RETRANSMIT_COUNTERS = 2 };

DEFINE_BANK(retransmit_bank, RETRANSMIT_COUNTERS);

BANK_MAP(retransmits, retransmit_bank);

static __always_inline void count_segments(struct sk_buff *skb)
{
	const struct tcp_skb_cb *cb = (const void *)skb->cb;
	u32 segments = BPF_CORE_READ(cb, tcp_gso_segs);
	struct retransmit_bank *bank = bank_of_this_cpu(&retransmits);
	if (bank)
		bank->counters[SEGMENT] += segments ? segments : 1;
}

static __always_inline void count_synack(void)
{
	struct retransmit_bank *bank = bank_of_this_cpu(&retransmits);
	if (bank)
		bank->counters[SYNACK] += 1;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb, struct sock *sk, struct sk_buff *skb, int err)
{
	if (!err)
		count_segments(skb);
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(tcp_retransmit_synack, struct sock *sk, struct request_sock *req)
{
	count_synack();
	return 0;
}

/* Newer kernels give tcp_retransmit_skb an `err` argument (and fire it for
 * failed retransmissions too); their trace event struct then has an `err`
 * field, so its presence in the BTF in use says whether the raw tracepoint
 * has a third argument. Older kernels fire it for successes only. */
struct trace_event_raw_tcp_retransmit_skb___err {
	int err;
} __attribute__((preserve_access_index));

/* The compatibility path: raw tracepoints. */
SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb_compat, struct sock *sk, struct sk_buff *skb)
{
	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb___err, err)) {
		/* keeps the load of the third argument in this branch: the
		 * kernel refuses to attach a program that reads past the
		 * tracepoint's arguments */
		barrier();
		if (ctx[2])
			return 0;
	}
	count_segments(skb);
	return 0;
}

SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(tcp_retransmit_synack_compat, struct sock *sk, struct request_sock *req)
{
	count_synack();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
