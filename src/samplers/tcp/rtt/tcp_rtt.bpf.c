// SPDX-License-Identifier: GPL-2.0
/* tcp_rtt: the kernel's smoothed round-trip time and its mean deviation, as
 * tcp_info reports them (tcpi_rtt, tcpi_rttvar), sampled for every segment
 * an established connection receives (tcp:tcp_probe), in nanoseconds. A
 * connection that has no RTT sample yet (srtt 0) is skipped. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

enum { SRTT = 0, JITTER = 1 };

HISTOGRAM_MAP(rtt, 2);

static __always_inline void record(u32 srtt_us8, u32 mdev_us4)
{
	u64 srtt_us = srtt_us8 >> 3;
	if (!srtt_us)
		return;
	histogram_record(&rtt, SRTT, srtt_us * 1000);
	histogram_record(&rtt, JITTER, (u64)(mdev_us4 >> 2) * 1000);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_probe, struct sock *sk, struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		record(tp->srtt_us, tp->mdev_us);
	return 0;
}

/* The compatibility path: a raw tracepoint, where `sk` is a plain pointer
 * (no BTF-typed helper takes it): tcp_probe fires for TCP sockets only, so
 * it is read as a tcp_sock through CO-RE. */
SEC("raw_tp/tcp_probe")
int BPF_PROG(tcp_probe_compat, struct sock *sk, struct sk_buff *skb)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	record(BPF_CORE_READ(tp, srtt_us), BPF_CORE_READ(tp, mdev_us));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
