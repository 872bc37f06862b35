/* SPDX-License-Identifier: GPL-2.0 */
/* Forwarding a packet the datapath rewrote for the network straight out of
 * the node's device, as Cilium's fib_redirect does for NodePort replies.
 *
 * A reply of a NodePort/HostPort connection from outside leaves its backend
 * with the client as destination and, once reverse-NATed, the node's own
 * address as source.  Handed to the node's stack it would be dropped as a
 * "martian" (a local source address arriving from a device), so it is sent on
 * here: a FIB lookup for its destination as the node would forward it (the
 * input device is the one the program runs on), the TTL / hop limit
 * decremented as a router does, and a redirect to the egress device with the
 * next hop's MAC; bpf_redirect_neigh (5.10+) resolves a neighbour the FIB does
 * not know yet.  A packet the FIB cannot forward (no route, TTL spent,
 * forwarding off) goes to the stack as before.
 *
 * API: fib_redirect4(), fib_redirect6()
 */
#ifndef CB_FIB_H
#define CB_FIB_H

#include "lib/common.h"
#include "lib/parse.h"

#ifndef ETH_ALEN
#define ETH_ALEN	6
#endif

#ifndef AF_INET
#define AF_INET		2
#endif
#ifndef AF_INET6
#define AF_INET6	10
#endif

static __always_inline int fib_send(struct __sk_buff *skb, struct bpf_fib_lookup *p, long rc)
{
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(p->ifindex, NULL, 0, 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, p->dmac, ETH_ALEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, p->smac, ETH_ALEN, 0) < 0)
		return TC_ACT_OK;
	return bpf_redirect(p->ifindex, 0);
}

/* *m*'s packet, now from *saddr* to *daddr* (after its rewrite). */
static __always_inline int fib_redirect4(struct __sk_buff *skb, const struct pkt_meta *m,
					 __be32 saddr, __be32 daddr)
{
	struct bpf_fib_lookup p = {
		.family = AF_INET, .ifindex = skb->ifindex, .l4_protocol = m->l4_proto,
		.ipv4_src = saddr, .ipv4_dst = daddr,
	};
	__u32 off = PKT_OFF(m->l3_off);
	__u8 ttl;
	__be16 before, after;
	long rc;

	if (bpf_skb_load_bytes(skb, off + offsetof(struct iphdr, ttl), &before, 2) < 0)
		return TC_ACT_OK;
	ttl = ((__u8 *)&before)[0];
	if (ttl <= 1)
		return TC_ACT_OK;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	after = before;
	((__u8 *)&after)[0] = ttl - 1;
	if (bpf_skb_store_bytes(skb, off + offsetof(struct iphdr, ttl), &after, 2, 0) < 0 ||
	    bpf_l3_csum_replace(skb, off + offsetof(struct iphdr, check), before, after, 2) < 0)
		return TC_ACT_OK;
	return fib_send(skb, &p, rc);
}

static __always_inline int fib_redirect6(struct __sk_buff *skb, const struct pkt_meta *m,
					 const union v6addr *saddr, const union v6addr *daddr)
{
	struct bpf_fib_lookup p = {
		.family = AF_INET6, .ifindex = skb->ifindex, .l4_protocol = m->l4_proto,
	};
	__u32 off = PKT_OFF(m->l3_off) + offsetof(struct ipv6hdr, hop_limit);
	__u8 hops;
	long rc;

	__builtin_memcpy(p.ipv6_src, saddr, sizeof(p.ipv6_src));
	__builtin_memcpy(p.ipv6_dst, daddr, sizeof(p.ipv6_dst));
	if (bpf_skb_load_bytes(skb, off, &hops, 1) < 0 || hops <= 1)
		return TC_ACT_OK;
	rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;
	hops--;
	if (bpf_skb_store_bytes(skb, off, &hops, 1, 0) < 0)
		return TC_ACT_OK;
	return fib_send(skb, &p, rc);
}

#endif /* CB_FIB_H */
