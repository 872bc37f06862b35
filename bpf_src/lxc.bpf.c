// SPDX-License-Identifier: GPL-2.0
/* The programs on a pod's veth (host side), as Cilium attaches them in
 * chaining mode:
 *
 *   pod eth0 ==veth== host lxc*  --tc ingress--> from_container (pod -> world)
 *                                <--tc egress--- to_container   (world -> pod)
 *
 * from_container load-balances packets to service frontends (DNAT to a
 * backend, with a service conntrack entry; the internal scope of a two-scope
 * frontend, and a LoadBalancer's source ranges checked: lib/lb.h), answers
 * pings to service VIPs,
 * drops traffic to a ClusterIP on a port it does not serve, enforces the
 * endpoint's egress policy on new connections, and tracks connections.
 * to_container enforces ingress policy on new connections, tracks them, and
 * reverse-NATs replies (and ICMP errors about service flows) so the pod sees
 * the frontend.  Replies of allowed connections pass; an established
 * connection is checked again when the endpoint's policy revision changes.
 *
 * The veth is a security boundary: a pod may only speak as itself (source
 * check), may only call something a reply or an ICMP error when it is one of
 * its own connections, and every other packet meets its policy.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/common.h"
#include "lib/ct.h"
#include "lib/drop.h"
#include "lib/endpoint.h"
#include "lib/fib.h"
#include "lib/frag.h"
#include "lib/ipcache.h"
#include "lib/lb.h"
#include "lib/nat.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/svc.h"

char LICENSE[] SEC("license") = "GPL";

/* Which endpoint the programs run for (lib/endpoint.h): set per endpoint by
 * the loader, or, loaded once for a node, the entry of the packet's veth.
 * With an endpoint, a packet from the pod whose source is not one of its
 * addresses is dropped (132): the conntrack map is shared by the node, so a
 * forged source would plant entries under another pod's address (a "reply"
 * to a flow its policy denies) or impersonate it to a backend.  A program
 * loaded without an endpoint (test-run of the load balancer alone) checks
 * nothing; a shared one on a veth without an entry drops everything. */

/* The longest an ICMP error may be: RFC 1812 4.3.2.3 (576 bytes, IPv4) and
 * RFC 4443 2.4(c) (the minimum IPv6 MTU).  A longer "error" is not related
 * to anything: it is a way to carry data past policy. */
#define ICMP4_ERROR_MAX_LEN	576
#define ICMP6_ERROR_MAX_LEN	1280

/* The endpoint's id: the shared build carries it in the packet's metadata (a
 * stack slot: a pointer to the endpoint kept in a register would spill past
 * 512 bytes of stack); the per-endpoint build reads the loader's constant. */
#ifdef CB_ENDPOINT_SHARED
#define EP_ID(m)	((m)->endpoint_id)
#else
#define EP_ID(m)	endpoint_id
#endif

static __always_inline bool v6addr_equal(const union v6addr *a, const union v6addr *b)
{
	return a->d[0] == b->d[0] && a->d[1] == b->d[1];
}

/* IPv6 neighbour discovery (RFC 4861, types 133-137) is link-local control
 * between the pod and its gateway, sent from link-local or unspecified
 * addresses: it bypasses the source check, conntrack and policy, as in
 * Cilium.  RFC 4861 has receivers discard NDP whose hop limit is not 255, so
 * only such packets count; every other ICMPv6 type is policed.  From the pod,
 * the destination must also be link-scoped (fe80::/10, ff02::/16): the node
 * would route an "NDP" message to any other address onwards, past policy.
 * (Unicast NUD probes to a global address meet policy; the kernel falls back
 * to multicast solicitations.)  To the pod, the node is the only sender. */
static __always_inline bool icmp6_is_ndp(struct __sk_buff *skb, const struct pkt_meta *m,
					 bool from_pod)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct ipv6hdr *ip6 = data + PKT_OFF(m->l3_off);
	__u8 type = bpf_ntohs(m->dport) >> 8;
	__u8 d0 = m->daddr.addr[0], d1 = m->daddr.addr[1];

	if (m->l4_proto != IPPROTO_ICMPV6 || !(m->flags & PKT_F_L4) || type < 133 || type > 137)
		return false;
	if (from_pod && !(d0 == 0xfe && (d1 & 0xc0) == 0x80) && !(d0 == 0xff && (d1 & 0x0f) == 0x2))
		return false;
	if ((void *)(ip6 + 1) > data_end)
		return false;
	return ip6->hop_limit == 255;
}

/* Length of the IP packet, header included, as its header gives it (parse.h
 * recorded where it ends, capped at offset 0xffff: far above any limit here). */
static __always_inline __u32 ip_total_len(const struct pkt_meta *m)
{
	return m->l3_end - m->l3_off;
}

/* The "port" policy rules match: the destination port, or the ICMP type. */
static __always_inline __u16 policy_port(const struct pkt_meta *m)
{
	if (!pkt_has_ports(m))
		return 0;
	if (m->l4_proto == IPPROTO_ICMP || m->l4_proto == IPPROTO_ICMPV6)
		return bpf_ntohs(m->dport) >> 8;
	return bpf_ntohs(m->dport);
}

/* Policy for a new connection, or an established one whose verdict predates
 * the endpoint's current policy revision.  0, or a negative drop reason.  A
 * later fragment whose first fragment gave its ports is checked like it. */
static __always_inline int policy_verdict(const struct endpoint_info *ep, bool egress,
					  __u32 identity, const struct pkt_meta *m, __u32 len)
{
	return policy_check(EP_ID(m), ep, egress, identity, m->l4_proto,
			    policy_port(m),
			    (m->flags & PKT_F_LATER_FRAGMENT) && !(m->flags & PKT_F_FRAG_PORTS), len);
}

static __always_inline bool is_l4_lb_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* A ping to a service VIP is answered here, as Cilium does, when the
 * service has a backend; it never reaches a backend. */
static __always_inline int vip_echo_reply(struct __sk_buff *skb, const struct pkt_meta *m,
					  const struct lb_service *vip, bool v6)
{
	int ret;

	if (!vip->count)
		return -DROP_NO_SERVICE;
	/* Answering one fragment would send back a lone fragment with MF set. */
	if (m->flags & PKT_F_FRAGMENT)
		return -DROP_FRAG_NOSUPPORT;
	ret = v6 ? icmp6_echo_reply(skb, m) : icmp4_echo_reply(skb, m);
	if (ret < 0)
		return ret;
	/* Back out of the host-side veth, into the pod. */
	return bpf_redirect(skb->ifindex, 0);
}

/* Is the ICMP error *m* related to a connection of this endpoint?  An error
 * goes back to the source of the packet it quotes (Q), from Q's destination
 * or from a router on the way (RFC 792, RFC 4443).  So, seen from the pod:
 *  - an error the pod sends (!to_pod) quotes a packet the pod received: Q's
 *    destination is the pod, the error's source; the error goes to Q's source;
 *  - an error to the pod (to_pod) quotes a packet the pod sent: Q's source is
 *    the pod, the error's destination; the error may come from any router.
 * Q must name a live conntrack entry of that connection (keyed in the
 * direction that created it, so Q's tuple is tried as is and swapped) that
 * the endpoint's policy admitted, and the error must be no longer than an
 * ICMP error can be.  Returns the entry, with *in filled, or NULL. */
static __always_inline struct ct_entry *icmp4_related(const struct endpoint_config *self,
						      struct __sk_buff *skb,
						      const struct pkt_meta *m, bool to_pod,
						      __u32 now, struct icmp_inner *in)
{
	struct ct4_tuple t = {};
	struct ct_entry *e;
	__be32 pod = to_pod ? m->daddr.p[0] : m->saddr.p[0];
	__be32 peer = to_pod ? m->saddr.p[0] : m->daddr.p[0];

	if (ip_total_len(m) > ICMP4_ERROR_MAX_LEN)
		return NULL;
	if (icmp4_error_inner(ctx_data(skb), ctx_data_end(skb), m, in) < 0)
		return NULL;
	if (to_pod) {
		if (in->saddr.p[0] != pod)
			return NULL;
	} else if (in->daddr.p[0] != pod || in->saddr.p[0] != peer) {
		return NULL;
	}
	/* From the pod, *pod* is the source the source check passed already. */
	if (to_pod && EP_ID(m) && !endpoint_owns4(self, pod))
		return NULL;
	t.daddr = in->daddr.p[0];
	t.saddr = in->saddr.p[0];
	t.dport = in->dport;
	t.sport = in->sport;
	t.nexthdr = in->proto;
	t.flags = to_pod ? CT_EGRESS : CT_INGRESS;
	e = __ct4_get(&t, now);
	if (!e) {
		ct4_swap(&t);
		t.flags = to_pod ? CT_INGRESS : CT_EGRESS;
		e = __ct4_get(&t, now);
	}
	return e && !(e->flags & CT_F_UNVERIFIED) ? e : NULL;
}

static __always_inline struct ct_entry *icmp6_related(const struct endpoint_config *self,
						      struct __sk_buff *skb,
						      const struct pkt_meta *m, bool to_pod,
						      __u32 now, struct icmp_inner *in)
{
	const union v6addr *pod = to_pod ? &m->daddr : &m->saddr;
	const union v6addr *peer = to_pod ? &m->saddr : &m->daddr;
	struct ct6_tuple t = {};
	struct ct_entry *e;

	if (ip_total_len(m) > ICMP6_ERROR_MAX_LEN)
		return NULL;
	if (icmp6_error_inner(ctx_data(skb), ctx_data_end(skb), m, in) < 0)
		return NULL;
	if (to_pod) {
		if (!v6addr_equal(&in->saddr, pod))
			return NULL;
	} else if (!v6addr_equal(&in->daddr, pod) || !v6addr_equal(&in->saddr, peer)) {
		return NULL;
	}
	if (to_pod && EP_ID(m) && !endpoint_owns6(self, pod))
		return NULL;
	t.daddr = in->daddr;
	t.saddr = in->saddr;
	t.dport = in->dport;
	t.sport = in->sport;
	t.nexthdr = in->proto;
	t.flags = to_pod ? CT_EGRESS : CT_INGRESS;
	e = __ct6_get(&t, now);
	if (!e) {
		ct6_swap(&t);
		t.flags = to_pod ? CT_INGRESS : CT_EGRESS;
		e = __ct6_get(&t, now);
	}
	return e && !(e->flags & CT_F_UNVERIFIED) ? e : NULL;
}

/* A packet conntrack leaves alone (ct_tuple_ports: ICMP other than echo,
 * errors that are not related): the endpoint's policy decides each one. */
static __always_inline int untracked_verdict(struct __sk_buff *skb, const struct pkt_meta *m,
					     bool egress, __u32 remote_identity)
{
	struct endpoint_info *ep = endpoint_lookup(EP_ID(m));

	return ep ? policy_verdict(ep, egress, remote_identity, m, skb->len) : 0;
}

static __always_inline int __from_container4(const struct endpoint_config *self,
					     struct __sk_buff *skb, struct pkt_meta *m,
					     __u32 now, struct svc4_pending *pend)
{
	struct ct_state st = {}, reply = {};
	struct endpoint_info *ep;
	struct lb_service *svc = NULL;
	struct ct4_tuple t = {};
	__u8 icmp_type = bpf_ntohs(m->dport) >> 8;
	enum ct_status status;
	int ret;

	if (EP_ID(m) && !endpoint_owns4(self, m->saddr.p[0]))
		return -DROP_INVALID_SIP;
	frag_track(m);		/* after the source check: a forged packet records nothing */
	if (is_l4_lb_proto(m->l4_proto) && pkt_has_ports(m) &&
	    svc4_may_be_frontend(m->daddr.p[0]))
		svc = lb4_lookup_service_internal(m->daddr.p[0], m->dport, m->l4_proto);
	if (svc) {
		if (!lb4_src_range_ok(svc, m->saddr.p[0]))
			return -DROP_NOT_IN_SRC_RANGE;
		events_note_xlate4(CB_EVF_XLATED, m->daddr.p[0], m->dport, svc->rev_nat_index);
		ret = svc4_translate(skb, m, svc, &st, 0, now, pend);
		if (ret < 0)
			return ret;
	} else {
		struct lb_service *vip = svc4_is_vip(m->daddr.p[0]);

		if (vip) {
			if (m->l4_proto == IPPROTO_ICMP && icmp_type == ICMP_ECHO &&
			    (m->flags & PKT_F_L4))
				return vip_echo_reply(skb, m, vip, false);
			if (m->flags & PKT_F_LATER_FRAGMENT)
				return -DROP_FRAG_NOSUPPORT;
			return -DROP_IS_CLUSTER_IP;
		}
	}

	if (m->l4_proto == IPPROTO_ICMP && (m->flags & PKT_F_L4) && icmp4_is_error(icmp_type)) {
		struct icmp_inner in = {};

		/* The pod reports an error about a connection it has: related. */
		if (icmp4_related(self, skb, m, false, now, &in))
			return 0;
	}
	if (!ct_tuple_ports(m, &t.sport, &t.dport))
		return untracked_verdict(skb, m, true, ipcache_lookup4(m->daddr.p[0]));
	t.daddr = m->daddr.p[0];
	t.saddr = m->saddr.p[0];
	t.nexthdr = m->l4_proto;
	t.flags = CT_EGRESS;
	ep = endpoint_lookup(EP_ID(m));
	status = ct4_lookup(&t, false, m->tcp_flags, skb->len, now, &reply);
	events_note_ct(status, status == CT_NEW || reply.monitor);
	/* A "reply" on a tuple this pod's ingress policy never admitted (a
	 * NodePort flow from_netdev recorded before the verdict) is the pod
	 * starting a connection of its own. */
	if (status == CT_REPLY && (reply.flags & CT_F_UNVERIFIED))
		status = CT_NEW;
	switch (status) {
	case CT_NEW:
		if (ep) {
			st.src_sec_id = ipcache_lookup4(t.daddr);
			ret = policy_verdict(ep, true, st.src_sec_id, m, skb->len);
			if (ret < 0)
				return ret;
			st.policy_rev = ep->policy_revision;
		}
		ret = ct4_create(&t, &st, m->tcp_flags, skb->len, now);
		if (ret < 0)
			return ret;
		break;
	case CT_ESTABLISHED:
		if (unlikely(reply.rev_nat_index != st.rev_nat_index))
			ct4_set_rev_nat(&t, st.rev_nat_index);	/* a reused tuple */
		if (ep && reply.policy_rev != ep->policy_revision) {
			ret = policy_verdict(ep, true, ipcache_lookup4(t.daddr), m, skb->len);
			if (ret < 0)
				return ret;
			ct4_set_policy_rev(&t, false, ep->policy_revision);
		}
		break;
	case CT_REPLY:
		/* A reply of a connection into this pod that was DNATed on its
		 * way in (NodePort/HostPort from outside): restore the frontend. */
		if (reply.rev_nat_index) {
			struct lb4_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb4_reverse_nat, &reply.rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			events_note_xlate4(CB_EVF_REV_XLATED, m->saddr.p[0], m->sport,
					   reply.rev_nat_index);
			ret = nat4_rewrite_src(skb, m, rn->address, rn->port);
			if (ret < 0 || !(reply.flags & CT_F_NODEPORT))
				return ret;
			/* Its source is now the node's own address: out of the
			 * node's device, not into its stack (lib/fib.h). */
			return fib_redirect4(skb, m, rn->address, m->daddr.p[0]);
		}
		break;
	default:
		break;
	}
	return 0;
}

static __always_inline int __from_container6(const struct endpoint_config *self,
					     struct __sk_buff *skb, struct pkt_meta *m,
					     __u32 now, struct svc6_pending *pend)
{
	struct ct_state st = {}, reply = {};
	struct endpoint_info *ep;
	struct lb_service *svc = NULL;
	struct ct6_tuple t = {};
	__u8 icmp_type = bpf_ntohs(m->dport) >> 8;
	enum ct_status status;
	int ret;

	if (icmp6_is_ndp(skb, m, true))
		return 0;
	if (EP_ID(m) && !endpoint_owns6(self, &m->saddr))
		return -DROP_INVALID_SIP;
	frag_track(m);
	if (is_l4_lb_proto(m->l4_proto) && pkt_has_ports(m) &&
	    svc6_may_be_frontend(&m->daddr))
		svc = lb6_lookup_service_internal(&m->daddr, m->dport, m->l4_proto);
	if (svc) {
		if (!lb6_src_range_ok(svc, &m->saddr))
			return -DROP_NOT_IN_SRC_RANGE;
		events_note_xlate(CB_EVF_XLATED, &m->daddr, m->dport, svc->rev_nat_index);
		ret = svc6_translate(skb, m, svc, &st, 0, now, pend);
		if (ret < 0)
			return ret;
	} else {
		struct lb_service *vip = svc6_is_vip(&m->daddr);

		if (vip) {
			if (m->l4_proto == IPPROTO_ICMPV6 && icmp_type == ICMPV6_ECHO_REQUEST &&
			    (m->flags & PKT_F_L4))
				return vip_echo_reply(skb, m, vip, true);
			if (m->flags & PKT_F_LATER_FRAGMENT)
				return -DROP_FRAG_NOSUPPORT;
			return -DROP_IS_CLUSTER_IP;
		}
	}

	if (m->l4_proto == IPPROTO_ICMPV6 && (m->flags & PKT_F_L4) && icmp6_is_error(icmp_type)) {
		struct icmp_inner in = {};

		if (icmp6_related(self, skb, m, false, now, &in))
			return 0;
	}
	if (!ct_tuple_ports(m, &t.sport, &t.dport))
		return untracked_verdict(skb, m, true, ipcache_lookup6(&m->daddr));
	t.daddr = m->daddr;
	t.saddr = m->saddr;
	t.nexthdr = m->l4_proto;
	t.flags = CT_EGRESS;
	ep = endpoint_lookup(EP_ID(m));
	status = ct6_lookup(&t, false, m->tcp_flags, skb->len, now, &reply);
	events_note_ct(status, status == CT_NEW || reply.monitor);
	/* A "reply" on a tuple this pod's ingress policy never admitted (a
	 * NodePort flow from_netdev recorded before the verdict) is the pod
	 * starting a connection of its own. */
	if (status == CT_REPLY && (reply.flags & CT_F_UNVERIFIED))
		status = CT_NEW;
	switch (status) {
	case CT_NEW:
		if (ep) {
			st.src_sec_id = ipcache_lookup6(&t.daddr);
			ret = policy_verdict(ep, true, st.src_sec_id, m, skb->len);
			if (ret < 0)
				return ret;
			st.policy_rev = ep->policy_revision;
		}
		ret = ct6_create(&t, &st, m->tcp_flags, skb->len, now);
		if (ret < 0)
			return ret;
		break;
	case CT_ESTABLISHED:
		if (unlikely(reply.rev_nat_index != st.rev_nat_index))
			ct6_set_rev_nat(&t, st.rev_nat_index);	/* a reused tuple */
		if (ep && reply.policy_rev != ep->policy_revision) {
			ret = policy_verdict(ep, true, ipcache_lookup6(&t.daddr), m, skb->len);
			if (ret < 0)
				return ret;
			ct6_set_policy_rev(&t, false, ep->policy_revision);
		}
		break;
	case CT_REPLY:
		if (reply.rev_nat_index) {
			struct lb6_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb6_reverse_nat, &reply.rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			events_note_xlate(CB_EVF_REV_XLATED, &m->saddr, m->sport, reply.rev_nat_index);
			ret = nat6_rewrite_src(skb, m, &rn->address, rn->port);
			if (ret < 0 || !(reply.flags & CT_F_NODEPORT))
				return ret;
			return fib_redirect6(skb, m, &rn->address, &m->daddr);
		}
		break;
	default:
		break;
	}
	return 0;
}

/* The pod's packet, and once it has passed, the service entry of a new
 * service flow: a packet that is dropped leaves no conntrack state. */
static __always_inline int from_container4(const struct endpoint_config *self,
					   struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct svc4_pending pend = {};
	int ret = __from_container4(self, skb, m, now, &pend), err;

	if (ret >= 0 && pend.new_flow) {
		err = svc4_commit(&pend, m, skb->len, now);
		if (err < 0)
			return err;
	}
	return ret;
}

static __always_inline int from_container6(const struct endpoint_config *self,
					   struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct svc6_pending pend = {};
	int ret = __from_container6(self, skb, m, now, &pend), err;

	if (ret >= 0 && pend.new_flow) {
		err = svc6_commit(&pend, m, skb->len, now);
		if (err < 0)
			return err;
	}
	return ret;
}

/* An ICMP error to the pod about one of its connections is related traffic:
 * it passes without a policy check, and when the connection went to a
 * service it is made to speak of the frontend.  1 if handled (related), 0
 * if unrelated (the caller treats it as any other packet), or a negative
 * drop reason. */
static __always_inline int to_container_icmp4_error(const struct endpoint_config *self,
						    struct __sk_buff *skb,
						    const struct pkt_meta *m, __u32 now)
{
	struct icmp_inner in = {};
	struct lb4_reverse_nat *rn;
	struct ct_entry *e;
	int ret;

	e = icmp4_related(self, skb, m, true, now, &in);
	if (!e)
		return 0;
	if (!e->rev_nat_index)
		return 1;
	rn = bpf_map_lookup_elem(&cb_lb4_reverse_nat, &e->rev_nat_index);
	if (!rn)
		return -DROP_NAT_NO_MAPPING;
	ret = nat4_rewrite_icmp_error(skb, m, &in, rn->address, rn->port);
	return ret < 0 ? ret : 1;
}

static __always_inline int to_container_icmp6_error(const struct endpoint_config *self,
						    struct __sk_buff *skb,
						    const struct pkt_meta *m, __u32 now)
{
	struct icmp_inner in = {};
	struct lb6_reverse_nat *rn;
	struct ct_entry *e;
	int ret;

	e = icmp6_related(self, skb, m, true, now, &in);
	if (!e)
		return 0;
	if (!e->rev_nat_index)
		return 1;
	rn = bpf_map_lookup_elem(&cb_lb6_reverse_nat, &e->rev_nat_index);
	if (!rn)
		return -DROP_NAT_NO_MAPPING;
	ret = nat6_rewrite_icmp_error(skb, m, &in, &rn->address, rn->port);
	return ret < 0 ? ret : 1;
}

static __always_inline int to_container4(const struct endpoint_config *self,
					 struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct ct_state st = {};
	struct ct4_tuple t = {};
	struct endpoint_info *ep;
	enum ct_status status;
	int ret;
	__u8 icmp_type = bpf_ntohs(m->dport) >> 8;

	if (m->l4_proto == IPPROTO_ICMP && (m->flags & PKT_F_L4) && icmp4_is_error(icmp_type)) {
		ret = to_container_icmp4_error(self, skb, m, now);
		if (ret != 0)
			return ret < 0 ? ret : 0;
	}
	if (!ct_tuple_ports(m, &t.sport, &t.dport))
		return untracked_verdict(skb, m, false, ipcache_lookup4(m->saddr.p[0]));
	t.daddr = m->daddr.p[0];
	t.saddr = m->saddr.p[0];
	t.nexthdr = m->l4_proto;
	t.flags = CT_INGRESS;
	ep = endpoint_lookup(EP_ID(m));
	status = ct4_lookup(&t, true, m->tcp_flags, skb->len, now, &st);
	events_note_ct(status, status == CT_NEW || st.monitor);
	switch (status) {
	case CT_NEW:
		if (ep) {
			st.src_sec_id = ipcache_lookup4(t.saddr);
			ret = policy_verdict(ep, false, st.src_sec_id, m, skb->len);
			if (ret < 0)
				return ret;
			st.policy_rev = ep->policy_revision;
		}
		return ct4_create(&t, &st, m->tcp_flags, skb->len, now);
	case CT_ESTABLISHED:
		/* A flow from_netdev DNATed here (CT_F_UNVERIFIED) meets the
		 * ingress policy on its first packet, like any new one. */
		if ((st.flags & CT_F_UNVERIFIED) ||
		    (ep && st.policy_rev != ep->policy_revision)) {
			if (ep) {
				ret = policy_verdict(ep, false, ipcache_lookup4(t.saddr), m, skb->len);
				if (ret < 0)
					return ret;
			}
			ct4_set_policy_rev(&t, false, ep ? ep->policy_revision : 0);
		}
		return 0;
	case CT_REPLY:
		if (st.rev_nat_index) {
			struct lb4_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb4_reverse_nat, &st.rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			events_note_xlate4(CB_EVF_REV_XLATED, m->saddr.p[0], m->sport,
					   st.rev_nat_index);
			return nat4_rewrite_src(skb, m, rn->address, rn->port);
		}
		return 0;
	default:
		return 0;
	}
}

static __always_inline int to_container6(const struct endpoint_config *self,
					 struct __sk_buff *skb, struct pkt_meta *m, __u32 now)
{
	struct ct_state st = {};
	struct ct6_tuple t = {};
	struct endpoint_info *ep;
	enum ct_status status;
	int ret;
	__u8 icmp_type = bpf_ntohs(m->dport) >> 8;

	if (icmp6_is_ndp(skb, m, false))
		return 0;
	if (m->l4_proto == IPPROTO_ICMPV6 && (m->flags & PKT_F_L4) && icmp6_is_error(icmp_type)) {
		ret = to_container_icmp6_error(self, skb, m, now);
		if (ret != 0)
			return ret < 0 ? ret : 0;
	}
	if (!ct_tuple_ports(m, &t.sport, &t.dport))
		return untracked_verdict(skb, m, false, ipcache_lookup6(&m->saddr));
	t.daddr = m->daddr;
	t.saddr = m->saddr;
	t.nexthdr = m->l4_proto;
	t.flags = CT_INGRESS;
	ep = endpoint_lookup(EP_ID(m));
	status = ct6_lookup(&t, true, m->tcp_flags, skb->len, now, &st);
	events_note_ct(status, status == CT_NEW || st.monitor);
	switch (status) {
	case CT_NEW:
		if (ep) {
			st.src_sec_id = ipcache_lookup6(&t.saddr);
			ret = policy_verdict(ep, false, st.src_sec_id, m, skb->len);
			if (ret < 0)
				return ret;
			st.policy_rev = ep->policy_revision;
		}
		return ct6_create(&t, &st, m->tcp_flags, skb->len, now);
	case CT_ESTABLISHED:
		/* A flow from_netdev DNATed here (CT_F_UNVERIFIED) meets the
		 * ingress policy on its first packet, like any new one. */
		if ((st.flags & CT_F_UNVERIFIED) ||
		    (ep && st.policy_rev != ep->policy_revision)) {
			if (ep) {
				ret = policy_verdict(ep, false, ipcache_lookup6(&t.saddr), m, skb->len);
				if (ret < 0)
					return ret;
			}
			ct6_set_policy_rev(&t, false, ep ? ep->policy_revision : 0);
		}
		return 0;
	case CT_REPLY:
		if (st.rev_nat_index) {
			struct lb6_reverse_nat *rn;

			rn = bpf_map_lookup_elem(&cb_lb6_reverse_nat, &st.rev_nat_index);
			if (!rn)
				return -DROP_NAT_NO_MAPPING;
			events_note_xlate(CB_EVF_REV_XLATED, &m->saddr, m->sport, st.rev_nat_index);
			return nat6_rewrite_src(skb, m, &rn->address, rn->port);
		}
		return 0;
	default:
		return 0;
	}
}

static __always_inline int __from_container(const struct endpoint_config *self,
					    struct __sk_buff *skb)
{
	struct pkt_meta m = {};
	int ret = parse_skb(skb, &m);
	__u32 now;

#ifdef CB_ENDPOINT_SHARED
	m.endpoint_id = endpoint_id_of(self);
#endif
	if (ret < 0)
		return drop_endpoint_packet(skb, EP_ID(&m), -ret, CB_DIR_EGRESS);
	events_note_reset();
	events_trace_plain(skb, EP_ID(&m), CB_DIR_EGRESS, TRACE_FROM_LXC, true);
	now = cb_now_sec();
	if (m.l3_proto == ETH_P_IP)
		ret = from_container4(self, skb, &m, now);
	else if (m.l3_proto == ETH_P_IPV6)
		ret = from_container6(self, skb, &m, now);
	else
		return TC_ACT_OK;
	events_exit(skb, EP_ID(&m), CB_DIR_EGRESS, ret, TRACE_TO_STACK);
	if (ret < 0)
		return drop_endpoint_packet(skb, EP_ID(&m), -ret, CB_DIR_EGRESS);
	return ret == TC_ACT_REDIRECT ? TC_ACT_REDIRECT : TC_ACT_OK;
}

static __always_inline int __to_container(const struct endpoint_config *self,
					  struct __sk_buff *skb)
{
	struct pkt_meta m = {};
	int ret = parse_skb(skb, &m);
	__u32 now;

#ifdef CB_ENDPOINT_SHARED
	m.endpoint_id = endpoint_id_of(self);
#endif
	if (ret < 0)
		return drop_endpoint_packet(skb, EP_ID(&m), -ret, CB_DIR_INGRESS);
	events_note_reset();
	frag_track(&m);
	now = cb_now_sec();
	if (m.l3_proto == ETH_P_IP)
		ret = to_container4(self, skb, &m, now);
	else if (m.l3_proto == ETH_P_IPV6)
		ret = to_container6(self, skb, &m, now);
	else
		return TC_ACT_OK;
	events_exit(skb, EP_ID(&m), CB_DIR_INGRESS, ret, TRACE_TO_LXC);
	if (ret < 0)
		return drop_endpoint_packet(skb, EP_ID(&m), -ret, CB_DIR_INGRESS);
	return TC_ACT_OK;
}

/* The endpoint is found first (its key's stack slot is free again before the
 * packet's metadata needs one): a shared program on a veth the node has no
 * endpoint for drops everything. */
SEC("tc")
int from_container(struct __sk_buff *skb)
{
	const struct endpoint_config *self = endpoint_self(skb);

	if (endpoint_unknown(self))
		return drop_packet(skb, DROP_NO_CONFIG, CB_DIR_EGRESS);
	return __from_container(self, skb);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	const struct endpoint_config *self = endpoint_self(skb);

	if (endpoint_unknown(self))
		return drop_packet(skb, DROP_NO_CONFIG, CB_DIR_INGRESS);
	return __to_container(self, skb);
}
