// SPDX-License-Identifier: GPL-2.0
/* tcp_connect_latency: time from SYN sent to ESTABLISHED for active opens,
 * and TCP resets sent and received per CPU.
 *
 * sock:inet_sock_set_state marks both ends of a connect: the move to
 * SYN_SENT (just before the SYN goes out) stores the time in socket-local
 * storage; the move to ESTABLISHED (from SYN_SENT, or from SYN_RECV after a
 * simultaneous open) records the latency; any other move (refused, timed
 * out) clears it. Only connection set-up pays for this, not packets. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>

enum { TRANSMIT = 0, RECEIVE = 1, RESET_COUNTERS = 2 };

DEFINE_BANK(reset_bank, RESET_COUNTERS);

BANK_MAP(resets, reset_bank);

HISTOGRAM_MAP(latency, 1);

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u64);
} syn_sent_at SEC(".maps");

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_set_state, struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		u64 *start = bpf_sk_storage_get(&syn_sent_at, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (start)
			*start = bpf_ktime_get_ns();
		return 0;
	}
	/* a simultaneous open goes SYN_SENT -> SYN_RECV -> ESTABLISHED; a
	 * passive open's new socket starts in SYN_RECV with no storage */
	if (oldstate == TCP_SYN_SENT && newstate == TCP_SYN_RECV)
		return 0;
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		return 0;
	u64 *start = bpf_sk_storage_get(&syn_sent_at, sk, 0, 0);
	if (!start || !*start)
		return 0;
	if (newstate == TCP_ESTABLISHED)
		histogram_record(&latency, 0, bpf_ktime_get_ns() - *start);
	*start = 0;
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_send_reset, struct sock *sk, struct sk_buff *skb)
{
	struct reset_bank *bank = bank_of_this_cpu(&resets);
	if (bank)
		bank->counters[TRANSMIT] += 1;
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_receive_reset, struct sock *sk)
{
	struct reset_bank *bank = bank_of_this_cpu(&resets);
	if (bank)
		bank->counters[RECEIVE] += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
