// SPDX-License-Identifier: GPL-2.0
/* tcp_traffic: TCP packets and payload bytes as network devices send and
 * receive them, per CPU, and a histogram of payload bytes per packet.
 *
 * A packet here is one sk_buff at the device: transmit at
 * net:net_dev_start_xmit (before the driver may free it), receive at
 * net:netif_receive_skb (after GRO). With GSO/GRO one such packet may stand
 * for several segments on the wire. Payload is the skb's length past the IP
 * and TCP headers. IPv6 packets whose next header is not TCP (extension
 * headers) and non-first IPv4 fragments are not counted. */
#include "rezolus.h"
#include <bpf/bpf_tracing.h>
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

/* Reads the packet's headers with plain loads through an untrusted
 * read-only pointer (bpf_rdonly_cast with type 0): a load that would fault
 * reads zero instead, as with bpf_probe_read_kernel, at a fraction of a
 * helper call's cost. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

static __always_inline void account(struct sk_buff *skb, u32 direction)
{
	u16 protocol = skb->protocol;
	u32 network = skb->network_header;
	u8 *ip = bpf_rdonly_cast(skb->head + network, 0);
	u32 ip_len;

	if (protocol == bpf_htons(ETH_P_IP)) {
		/* TCP, and the first fragment (offset zero) */
		if (ip[9] != IPPROTO_TCP || ((ip[6] & 0x1f) | ip[7]))
			return;
		ip_len = (ip[0] & 0xf) * 4;
	} else if (protocol == bpf_htons(ETH_P_IPV6)) {
		if (ip[6] != IPPROTO_TCP)
			return;
		ip_len = IPV6_LEN;
	} else {
		return;
	}
	/* pointer plus offset, in that order, for the verifier */
	u8 *tcp = ip;
	barrier_var(tcp);
	tcp += ip_len;
	u8 data_offset = tcp[TCP_DATA_OFFSET];

	u32 headers = ip_len + (data_offset >> 4) * 4;
	/* skb->len counts from skb->data, which is at the link-layer header on
	 * transmit and at the network header on receive */
	u32 before_network = network - (u32)(skb->data - skb->head);
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

SEC("tp_btf/net_dev_start_xmit")
int BPF_PROG(tcp_transmit, struct sk_buff *skb, struct net_device *dev)
{
	account(skb, TRANSMIT);
	return 0;
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tcp_receive, struct sk_buff *skb)
{
	account(skb, RECEIVE);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
