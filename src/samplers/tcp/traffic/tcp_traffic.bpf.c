// SPDX-License-Identifier: GPL-2.0
/* tcp_traffic: TCP packets and payload bytes as network devices send and
 * receive them, per CPU, and a histogram of payload bytes per packet.
 *
 * A packet here is one sk_buff at the device: transmit at
 * net:net_dev_start_xmit (before the driver may free it), receive at
 * net:netif_receive_skb (after GRO). With GSO/GRO one such packet may stand
 * for several segments on the wire. Payload is the skb's length past the IP
 * and TCP headers. Not counted: IPv6 packets with extension headers other
 * than one Hop-by-Hop header before TCP, and non-first IPv4 fragments. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

enum { TRANSMIT = 0, RECEIVE = 1 };
/* bank layout: bytes by direction, then packets by direction */
enum { BYTES = 0, PACKETS = 2, TRAFFIC_COUNTERS = 4 };

DEFINE_BANK(traffic_bank, TRAFFIC_COUNTERS);

BANK_MAP(traffic, traffic_bank);

/* payload bytes per packet, by direction */
HISTOGRAM_MAP(size, 2);

#define IPV4_LEN 20
#define IPV6_LEN 40
#define TCP_DATA_OFFSET 12

/* The sk_buff fields read: directly from tp_btf's typed pointer, or
 * through CO-RE reads on the compatibility path. */
struct skb_fields {
	unsigned char *head;
	unsigned char *data;
	u32 len;
	u16 protocol;
	u16 network_header;
};

static __always_inline void fields_of(struct sk_buff *skb, struct skb_fields *f)
{
	f->head = skb->head;
	f->data = skb->data;
	f->len = skb->len;
	f->protocol = skb->protocol;
	f->network_header = skb->network_header;
}

static __always_inline void fields_read(struct sk_buff *skb, struct skb_fields *f)
{
	f->head = BPF_CORE_READ(skb, head);
	f->data = BPF_CORE_READ(skb, data);
	f->len = BPF_CORE_READ(skb, len);
	f->protocol = BPF_CORE_READ(skb, protocol);
	f->network_header = BPF_CORE_READ(skb, network_header);
}

/* Where the IP header starts, as an offset from skb->head. On transmit the
 * stack has set skb->network_header. On receive, netif_receive_skb fires
 * before __netif_receive_skb_core resets network_header, which is stale when
 * GRO did not run (GRO off, XDP attached, netif_rx drivers); skb->data is
 * at the IP header there once the link-layer header has been pulled. */
static __always_inline u32 network_offset(const struct skb_fields *skb, u32 direction,
					  u32 *before_network)
{
	u32 data = (u32)(skb->data - skb->head);
	if (direction == RECEIVE) {
		*before_network = 0;
		return data;
	}
	/* skb->len counts from skb->data, at the link-layer header here */
	u32 network = skb->network_header;
	*before_network = network - data;
	return network;
}

/* IPv6: the fixed header, then at most one Hop-by-Hop options header (as BIG
 * TCP's jumbo payload option uses) before TCP. Returns the bytes before the
 * TCP header, or 0 when the packet is not TCP in that shape. */
#define IPV6_HOPOPTS 0
static __always_inline u32 ipv6_tcp_offset(u8 next, u8 hop_next, u8 hop_len)
{
	if (next == IPPROTO_TCP)
		return IPV6_LEN;
	if (next == IPV6_HOPOPTS && hop_next == IPPROTO_TCP)
		return IPV6_LEN + (hop_len + 1) * 8;
	return 0;
}

/* Counts a TCP packet whose IP and TCP headers take `headers` bytes, after
 * `before_network` bytes of link-layer header counted in skb->len. */
static __always_inline void record(const struct skb_fields *skb, u32 direction,
				   u32 before_network, u32 headers)
{
	u32 len = skb->len;
	u32 payload = 0;
	if (len > before_network + headers)
		payload = len - before_network - headers;

	struct traffic_bank *bank = bank_of_this_cpu(&traffic);
	if (!bank)
		return;
	bank->counters[BYTES + direction] += payload;
	bank->counters[PACKETS + direction] += 1;
	histogram_record(&size, direction, payload);
}

/* Two ways to read the headers; userspace loads the first this kernel's
 * verifier accepts.
 *
 * Plain loads through an untrusted read-only pointer (bpf_rdonly_cast to
 * type 0, recent kernels): a load that would fault reads zero instead, at a
 * fraction of a helper call's cost. */
static __always_inline void account_plain(struct sk_buff *buf, u32 direction)
{
	struct skb_fields fields, *skb = &fields;
	fields_of(buf, skb);
	u16 protocol = skb->protocol;
	u32 before_network;
	u32 network = network_offset(skb, direction, &before_network);
	u8 *ip = bpf_rdonly_cast(skb->head + network, 0);
	u32 ip_len;

	if (protocol == bpf_htons(ETH_P_IP)) {
		/* TCP, and the first fragment (offset zero) */
		if (ip[9] != IPPROTO_TCP || ((ip[6] & 0x1f) | ip[7]))
			return;
		ip_len = (ip[0] & 0xf) * 4;
	} else if (protocol == bpf_htons(ETH_P_IPV6)) {
		ip_len = ipv6_tcp_offset(ip[6], ip[IPV6_LEN], ip[IPV6_LEN + 1]);
		if (!ip_len)
			return;
	} else {
		return;
	}
	/* pointer plus offset, in that order, for the verifier */
	u8 *tcp = ip;
	barrier_var(tcp);
	tcp += ip_len;
	u8 data_offset = tcp[TCP_DATA_OFFSET];
	record(skb, direction, before_network, ip_len + (data_offset >> 4) * 4);
}

/* Copies with bpf_probe_read_kernel (any kernel): one copy covers the IP
 * header and the TCP header's data offset unless there are IPv4 options or
 * an IPv6 Hop-by-Hop header. */
static __always_inline void account_copy(const struct skb_fields *skb, u32 direction)
{
	u16 protocol = skb->protocol;
	unsigned char *head = skb->head;
	u32 before_network;
	u32 network = network_offset(skb, direction, &before_network);
	u32 ip_len;
	u8 data_offset;
	u8 h[IPV6_LEN + TCP_DATA_OFFSET + 1];

	if (protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_probe_read_kernel(h, IPV4_LEN + TCP_DATA_OFFSET + 1, head + network))
			return;
		if (h[9] != IPPROTO_TCP || ((h[6] & 0x1f) | h[7]))
			return;
		ip_len = (h[0] & 0xf) * 4;
		if (ip_len == IPV4_LEN)
			data_offset = h[IPV4_LEN + TCP_DATA_OFFSET];
		else if (bpf_probe_read_kernel(&data_offset, 1,
					       head + network + ip_len + TCP_DATA_OFFSET))
			return;
	} else if (protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_probe_read_kernel(h, sizeof(h), head + network))
			return;
		ip_len = ipv6_tcp_offset(h[6], h[IPV6_LEN], h[IPV6_LEN + 1]);
		if (!ip_len)
			return;
		if (ip_len == IPV6_LEN)
			data_offset = h[IPV6_LEN + TCP_DATA_OFFSET];
		else if (bpf_probe_read_kernel(&data_offset, 1,
					       head + network + ip_len + TCP_DATA_OFFSET))
			return;
	} else {
		return;
	}
	record(skb, direction, before_network, ip_len + (data_offset >> 4) * 4);
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(tcp_transmit, struct sk_buff *skb, struct net_device *dev)
{
	account_plain(skb, TRANSMIT);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tcp_receive, struct sk_buff *skb)
{
	account_plain(skb, RECEIVE);
	return 0;
}

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(tcp_transmit_copy, struct sk_buff *skb, struct net_device *dev)
{
	struct skb_fields fields;
	fields_of(skb, &fields);
	account_copy(&fields, TRANSMIT);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tcp_receive_copy, struct sk_buff *skb)
{
	struct skb_fields fields;
	fields_of(skb, &fields);
	account_copy(&fields, RECEIVE);
	return 0;
}

/* The compatibility path: raw tracepoints, the sk_buff's fields read
 * through CO-RE, the headers copied. */
SEC("raw_tp/net_dev_start_xmit")
int BPF_PROG(tcp_transmit_compat, struct sk_buff *skb)
{
	struct skb_fields fields;
	fields_read(skb, &fields);
	account_copy(&fields, TRANSMIT);
	return 0;
}

SEC("raw_tp/netif_receive_skb")
int BPF_PROG(tcp_receive_compat, struct sk_buff *skb)
{
	struct skb_fields fields;
	fields_read(skb, &fields);
	account_copy(&fields, RECEIVE);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
