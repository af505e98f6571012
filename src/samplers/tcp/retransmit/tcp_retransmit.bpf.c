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

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb, struct sock *sk, struct sk_buff *skb, int err)
{
	if (err)
		return 0;
	const struct tcp_skb_cb *cb = (const void *)skb->cb;
	u32 segments = BPF_CORE_READ(cb, tcp_gso_segs);
	struct retransmit_bank *bank = bank_of_this_cpu(&retransmits);
	if (bank)
		bank->counters[SEGMENT] += segments ? segments : 1;
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(tcp_retransmit_synack, struct sock *sk, struct request_sock *req)
{
	struct retransmit_bank *bank = bank_of_this_cpu(&retransmits);
	if (bank)
		bank->counters[SYNACK] += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
