// SPDX-License-Identifier: GPL-2.0
/* The program on a node's external device (tc ingress), for traffic from
 * outside the node to NodePort, HostPort, external-IP and LoadBalancer
 * frontends:
 *
 *   client --> [ext dev] from_netdev --DNAT--> local backend pod
 *                                    --DNAT+SNAT--> backend on another node
 *   backend reply (other node) --> from_netdev --reverse SNAT+DNAT--> client
 *
 * Clients here are external: the frontend's EXT scope (lib/lb.h).  With
 * externalTrafficPolicy: Local that scope holds the node's own backends
 * only, so a new flow keeps the client's source (only a remote backend is
 * SNATed: a flow established before the policy turned Local keeps its remote
 * backend and its SNAT); without a local backend the packet is dropped (158,
 * DROP_NO_SERVICE).  A LoadBalancer frontend with
 * loadBalancerSourceRanges drops other clients (177) before choosing.
 *
 * A local backend's replies are reverse-NATed by its from_container, which
 * finds the conntrack entry created here.  ClusterIPs are not reachable from
 * outside.  Everything else passes untouched.  With the node's events on,
 * from_netdev reports packets from the network (FROM_NETWORK) and to_netdev,
 * on tc egress, packets to it (TO_NETWORK), as the aggregation allows.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/common.h"
#include "lib/ct.h"
#include "lib/drop.h"
#include "lib/fib.h"
#include "lib/frag.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/parse.h"
#include "lib/snat.h"
#include "lib/svc.h"

char LICENSE[] SEC("license") = "GPL";

/* This node, set by the loader. */
const volatile __be32 node_ip4 = 0;
const volatile union v6addr node_ip6 = {};
const volatile __be32 node_pod_net4 = 0;	/* this node's pod CIDR */
const volatile __be32 node_pod_mask4 = 0;
const volatile __u64 node_pod_net6_hi = 0;	/* first 64 bits, network order (a /64) */

static __always_inline bool backend_is_local4(__be32 addr)
{
	return node_pod_mask4 && (addr & node_pod_mask4) == node_pod_net4;
}

static __always_inline bool backend_is_local6(const union v6addr *addr)
{
	return node_pod_net6_hi && addr->d[0] == node_pod_net6_hi;
}

/* The conntrack entry through which the local backend's from_container
 * reverse-NATs its replies.  It is created CT_F_UNVERIFIED: the backend's
 * ingress policy has not seen the flow yet, and until its to_container
 * admits it, the backend's packets on the reversed tuple are not replies
 * (else a client the policy denies would leave an entry that lets the
 * backend answer past its egress policy, SNATed to the NodePort).  An
 * existing entry is left to to_container, which accounts the packet; a
 * reused tuple takes the new frontend. */
static __always_inline int nodeport_ct4_record(struct ct4_tuple *t, struct ct_state *st,
					       const struct pkt_meta *m, __u32 len, __u32 now)
{
	struct ct_entry *e = __ct4_get(t, now);

	if (e) {
		if (e->rev_nat_index != st->rev_nat_index)
			e->rev_nat_index = st->rev_nat_index;
		return 0;
	}
	st->flags |= CT_F_UNVERIFIED;
	return ct4_create(t, st, m->tcp_flags, len, now);
}

static __always_inline int nodeport_ct6_record(struct ct6_tuple *t, struct ct_state *st,
					       const struct pkt_meta *m, __u32 len, __u32 now)
{
	struct ct_entry *e = __ct6_get(t, now);

	if (e) {
		if (e->rev_nat_index != st->rev_nat_index)
			e->rev_nat_index = st->rev_nat_index;
		return 0;
	}
	st->flags |= CT_F_UNVERIFIED;
	return ct6_create(t, st, m->tcp_flags, len, now);
}

static __always_inline int from_netdev4(struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct ct_state st = { .flags = CT_F_NODEPORT };
	struct lb_service *svc;
	__be32 client = m->saddr.p[0];
	__be16 cport = m->sport, port;
	int ret;

	if (!pkt_has_ports(m) || (m->l4_proto != IPPROTO_TCP && m->l4_proto != IPPROTO_UDP &&
				   m->l4_proto != IPPROTO_SCTP))
		return 0;
	if (m->daddr.p[0] == node_ip4) {
		struct snat_entry *sn = snat4_lookup_reply(m->saddr.p[0], m->daddr.p[0], m->sport,
							   m->dport, m->l4_proto, m->tcp_flags, now);

		if (sn) {
			struct lb4_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb4_reverse_nat, &sn->rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			ret = nat4_rewrite_dst(skb, m, sn->addr.p[0], sn->port);
			if (ret < 0)
				return ret;
			ret = nat4_rewrite_src(skb, m, rn->address, rn->port);
			if (ret < 0)
				return ret;
			/* From the node's own address: back out, not into the stack. */
			return fib_redirect4(skb, m, rn->address, sn->addr.p[0]);
		}
	}
	svc = lb4_lookup_service(m->daddr.p[0], m->dport, m->l4_proto);
	if (!svc || (svc->flags & SVC_F_CLUSTERIP))
		return 0;
	if (!lb4_src_range_ok(svc, client))
		return -DROP_NOT_IN_SRC_RANGE;
	ret = svc4_translate(skb, m, svc, &st, 0, now, NULL);
	if (ret < 0)
		return ret;
	if (backend_is_local4(m->daddr.p[0])) {
		struct ct4_tuple t = {
			.daddr = m->daddr.p[0], .saddr = client, .dport = m->dport, .sport = cport,
			.nexthdr = m->l4_proto, .flags = CT_INGRESS,
		};

		return nodeport_ct4_record(&t, &st, m, skb->len, now);
	}
	port = snat4_assign(client, cport, m->daddr.p[0], m->dport, m->l4_proto, node_ip4,
			    svc->rev_nat_index, m->tcp_flags, now);
	if (!port)
		return -DROP_NAT_NO_MAPPING;
	return nat4_rewrite_src(skb, m, node_ip4, port);
}

static __always_inline int from_netdev6(struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct ct_state st = { .flags = CT_F_NODEPORT };
	union v6addr client = m->saddr, node = node_ip6;
	struct lb_service *svc;
	__be16 cport = m->sport, port;
	int ret;

	if (!pkt_has_ports(m) || (m->l4_proto != IPPROTO_TCP && m->l4_proto != IPPROTO_UDP &&
				   m->l4_proto != IPPROTO_SCTP))
		return 0;
	if (m->daddr.d[0] == node.d[0] && m->daddr.d[1] == node.d[1]) {
		struct snat_entry *sn = snat6_lookup_reply(&m->saddr, &m->daddr, m->sport,
							   m->dport, m->l4_proto, m->tcp_flags, now);

		if (sn) {
			struct lb6_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb6_reverse_nat, &sn->rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			ret = nat6_rewrite_dst(skb, m, &sn->addr, sn->port);
			if (ret < 0)
				return ret;
			ret = nat6_rewrite_src(skb, m, &rn->address, rn->port);
			if (ret < 0)
				return ret;
			return fib_redirect6(skb, m, &rn->address, &sn->addr);
		}
	}
	svc = lb6_lookup_service(&m->daddr, m->dport, m->l4_proto);
	if (!svc || (svc->flags & SVC_F_CLUSTERIP))
		return 0;
	if (!lb6_src_range_ok(svc, &client))
		return -DROP_NOT_IN_SRC_RANGE;
	ret = svc6_translate(skb, m, svc, &st, 0, now, NULL);
	if (ret < 0)
		return ret;
	if (backend_is_local6(&m->daddr)) {
		struct ct6_tuple t = {
			.dport = m->dport, .sport = cport, .nexthdr = m->l4_proto, .flags = CT_INGRESS,
		};

		t.daddr = m->daddr;
		t.saddr = client;
		return nodeport_ct6_record(&t, &st, m, skb->len, now);
	}
	port = snat6_assign(&client, cport, &m->daddr, m->dport, m->l4_proto, &node,
			    svc->rev_nat_index, m->tcp_flags, now);
	if (!port)
		return -DROP_NAT_NO_MAPPING;
	return nat6_rewrite_src(skb, m, &node, port);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	struct pkt_meta m = {};
	int ret = parse_skb(skb, &m);
	__u32 now;

	if (ret < 0)
		return drop_packet(skb, -ret, CB_DIR_INGRESS);
	events_trace_plain(skb, 0, CB_DIR_INGRESS, TRACE_FROM_NETWORK, true);
	frag_track(&m);
	now = cb_now_sec();
	if (m.l3_proto == ETH_P_IP)
		ret = from_netdev4(skb, &m, now);
	else if (m.l3_proto == ETH_P_IPV6)
		ret = from_netdev6(skb, &m, now);
	else
		return TC_ACT_OK;
	if (ret < 0)
		return drop_packet(skb, -ret, CB_DIR_INGRESS);
	return ret == TC_ACT_REDIRECT ? TC_ACT_REDIRECT : TC_ACT_OK;
}

/* The node's uplink, tc egress: only a trace event at TRACE_TO_NETWORK.  There
 * is no conntrack here, so with aggregation at medium or above it sends
 * nothing (as Cilium's to-netdev without a conntrack lookup); with events off
 * it is an empty program. */
SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	events_trace_plain(skb, 0, CB_DIR_EGRESS, TRACE_TO_NETWORK, false);
	return TC_ACT_OK;
}
