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
#include <bpf/bpf_core_read.h>

/* UNTRACKED: on the compatibility path, connects not timed because the
 * socket map was full */
enum { TRANSMIT = 0, RECEIVE = 1, UNTRACKED = 2, RESET_COUNTERS = 3 };

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

static __always_inline void count_reset(u32 direction)
{
	struct reset_bank *bank = bank_of_this_cpu(&resets);
	if (bank)
		bank->counters[direction] += 1;
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(tcp_send_reset, struct sock *sk, struct sk_buff *skb)
{
	count_reset(TRANSMIT);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcp_receive_reset, struct sock *sk)
{
	count_reset(RECEIVE);
	return 0;
}

/* ---- The compatibility path: for kernels without socket storage in
 * tracing programs (before 5.11) or without BTF of their own. Raw
 * tracepoints; the SYN time in a preallocated hash map keyed by the socket's
 * address, of the sampler's option compat_map_entries connects in flight
 * (sized at load; one that finds it full is not timed, counted in
 * UNTRACKED); an entry is deleted at the socket's next move, whatever it
 * is. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* sized at load */
	__type(key, u64);
	__type(value, u64);
} syn_sent_compat SEC(".maps");

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(tcp_set_state_compat, struct sock *sk, int oldstate, int newstate)
{
	/* a bitfield on older kernels, a field of its own on newer ones */
	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	u64 key = (u64)sk;
	if (newstate == TCP_SYN_SENT) {
		u64 now = bpf_ktime_get_ns();
		if (bpf_map_update_elem(&syn_sent_compat, &key, &now, BPF_ANY))
			count_reset(UNTRACKED);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT && newstate == TCP_SYN_RECV)
		return 0;
	if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
		return 0;
	u64 *start = bpf_map_lookup_elem(&syn_sent_compat, &key);
	if (!start)
		return 0;
	if (newstate == TCP_ESTABLISHED)
		histogram_record(&latency, 0, bpf_ktime_get_ns() - *start);
	bpf_map_delete_elem(&syn_sent_compat, &key);
	return 0;
}

SEC("raw_tp/tcp_send_reset")
int BPF_PROG(tcp_send_reset_compat)
{
	count_reset(TRANSMIT);
	return 0;
}

SEC("raw_tp/tcp_receive_reset")
int BPF_PROG(tcp_receive_reset_compat)
{
	count_reset(RECEIVE);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
