// SPDX-License-Identifier: GPL-2.0
/* The first datapath program: parse every packet with lib/parse.h and count
 * it per protocol class.  It proves the whole chain (CO-RE build, loader,
 * test_run, tc/XDP attach, metrics) and is the parser's regression test.
 * Malformed packets are counted and passed, or dropped with DROP_INVALID
 * when the loader sets drop_malformed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/common.h"
#include "lib/drop.h"
#include "lib/parse.h"
#include "lib/parse_stats.h"

char LICENSE[] SEC("license") = "GPL";

/* Set before load by the harness (Collection.load(rodata=...)). */
const volatile bool drop_malformed = false;

static __always_inline void count(enum stat_class cls, __u32 bytes)
{
	__u32 key = cls;
	struct traffic_counter *c = bpf_map_lookup_elem(&cb_parse_stats, &key);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

static __always_inline enum stat_class l3_class(__u16 proto)
{
	switch (proto) {
	case ETH_P_IP:	 return STAT_IPV4;
	case ETH_P_IPV6: return STAT_IPV6;
	case ETH_P_ARP:	 return STAT_ARP;
	default:	 return STAT_L3_OTHER;
	}
}

static __always_inline enum stat_class l4_class(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:    return STAT_TCP;
	case IPPROTO_UDP:    return STAT_UDP;
	case IPPROTO_ICMP:   return STAT_ICMP;
	case IPPROTO_ICMPV6: return STAT_ICMPV6;
	default:	     return STAT_L4_OTHER;
	}
}

/* Count a parsed packet; returns 0 to pass, or a negative drop reason. */
static __always_inline int count_parsed(int ret, const struct pkt_meta *m, __u32 len)
{
	if (ret < 0) {
		count(STAT_MALFORMED, len);
		return drop_malformed ? ret : 0;
	}
	count(l3_class(m->l3_proto), len);
	if (m->flags & PKT_F_FRAGMENT)
		count(STAT_FRAGMENT, len);
	if ((m->l3_proto == ETH_P_IP || m->l3_proto == ETH_P_IPV6) &&
	    !(m->flags & PKT_F_LATER_FRAGMENT))
		count(l4_class(m->l4_proto), len);
	return 0;
}

SEC("tc")
int tc_parse_stats(struct __sk_buff *skb)
{
	struct pkt_meta m = {};
	int ret = parse_skb(skb, &m);

	ret = count_parsed(ret, &m, skb->len);
	if (ret < 0)
		return drop_packet(skb, -ret, CB_DIR_INGRESS);
	return TC_ACT_OK;
}

SEC("xdp")
int xdp_parse_stats(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct pkt_meta m = {};
	int ret = parse_packet(data, data_end, data_end - data, &m);

	ret = count_parsed(ret, &m, data_end - data);

	if (ret < 0) {
		drop_xdp_packet(data_end - data, -ret, CB_DIR_INGRESS);
		return XDP_DROP;
	}
	return XDP_PASS;
}
