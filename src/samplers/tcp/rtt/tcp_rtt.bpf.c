// SPDX-License-Identifier: GPL-2.0
/* tcp_rtt: the kernel's smoothed round-trip time and its mean deviation, as
 * tcp_info reports them (tcpi_rtt, tcpi_rttvar), sampled for every segment
 * an established connection receives (tcp:tcp_probe), in nanoseconds. A
 * connection that has no RTT sample yet (srtt 0) is skipped. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>

enum { SRTT = 0, JITTER = 1 };

HISTOGRAM_MAP(rtt, 2);

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcp_probe, struct sock *sk, struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	u64 srtt_us = tp->srtt_us >> 3;
	if (!srtt_us)
		return 0;
	histogram_record(&rtt, SRTT, srtt_us * 1000);
	histogram_record(&rtt, JITTER, (u64)(tp->mdev_us >> 2) * 1000);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
