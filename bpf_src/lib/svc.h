/* SPDX-License-Identifier: GPL-2.0 */
/* Translating a packet to a service frontend into a packet to one of its
 * backends: the service conntrack entry keeps an established flow on its
 * backend; a new flow (or one whose backend is gone, or a SYN reusing a
 * tuple whose backend stopped being active) gets a backend from
 * lb*_select_backend; then DNAT.  Used by from_container (ClusterIP,
 * NodePort and HostPort seen from a pod) and from_netdev (NodePort and
 * HostPort from outside).
 *
 * API: svc4_translate(), svc6_translate(), svc4_commit(), svc6_commit(),
 *      svc4_is_vip(), svc6_is_vip()
 */
#ifndef CB_SVC_H
#define CB_SVC_H

#include "lib/common.h"
#include "lib/ct.h"
#include "lib/drop.h"
#include "lib/lb.h"
#include "lib/nat.h"

/* Service CIDRs: only a miss inside them pays for the address-only lookup
 * that tells "ClusterIP, wrong port" from "not a service".  Mask 0: none. */
const volatile __be32 service_net4 = 0;
const volatile __be32 service_mask4 = 0;
const volatile __u64 service_net6_hi = 0;	/* first 64 bits, network order */
const volatile __u64 service_mask6_hi = 0;	/* service CIDRs are /64 or longer */

/* The cluster's pod CIDRs: a destination inside them is a pod, never a
 * frontend (the control plane refuses frontends there), so pod-to-pod
 * packets skip the service lookup.  Mask 0: no such shortcut. */
const volatile __be32 pod_net4 = 0;
const volatile __be32 pod_mask4 = 0;
const volatile __u64 pod_net6_hi = 0;
const volatile __u64 pod_mask6_hi = 0;

static __always_inline bool svc4_may_be_frontend(__be32 daddr)
{
	return !pod_mask4 || (daddr & pod_mask4) != pod_net4;
}

static __always_inline bool svc6_may_be_frontend(const union v6addr *daddr)
{
	return !pod_mask6_hi || (daddr->d[0] & pod_mask6_hi) != pod_net6_hi;
}

/* The address-only entry of a VIP, if daddr is one. */
static __always_inline struct lb_service *svc4_is_vip(__be32 daddr)
{
	if (!service_mask4 || (daddr & service_mask4) != service_net4)
		return NULL;
	return lb4_lookup_service(daddr, 0, 0);
}

static __always_inline struct lb_service *svc6_is_vip(const union v6addr *daddr)
{
	if (!service_mask6_hi || (daddr->d[0] & service_mask6_hi) != service_net6_hi)
		return NULL;
	return lb6_lookup_service(daddr, 0, 0);
}

/* A new flow's service entry, which the caller writes (svc*_commit) once the
 * packet has passed every check after the translation: a packet that policy
 * then drops must leave no state behind. */
struct svc4_pending {
	struct ct4_tuple t;
	struct ct_state st;
	bool new_flow;
};

struct svc6_pending {
	struct ct6_tuple t;
	struct ct_state st;
	bool new_flow;
};

static __always_inline int svc4_commit(const struct svc4_pending *pend, const struct pkt_meta *m,
				       __u32 len, __u32 now)
{
	struct ct4_tuple t = pend->t;

	return pend->new_flow ? ct4_create(&t, &pend->st, m->tcp_flags, len, now) : 0;
}

static __always_inline int svc6_commit(const struct svc6_pending *pend, const struct pkt_meta *m,
				       __u32 len, __u32 now)
{
	struct ct6_tuple t = pend->t;

	return pend->new_flow ? ct6_create(&t, &pend->st, m->tcp_flags, len, now) : 0;
}

static __always_inline bool __svc_reselect(__u8 state, const struct pkt_meta *m)
{
	/* Existing connections stay with a terminating or maintained backend;
	 * a fresh SYN on the same tuple is a new connection and must not. */
	if (state == BE_STATE_ACTIVE)
		return false;
	return m->l4_proto == IPPROTO_TCP && (m->tcp_flags & TCP_FLAG_SYN) &&
	       !(m->tcp_flags & TCP_FLAG_ACK);
}

/* Translate *m* (to frontend svc) to a backend.  On return *st carries the
 * rev_nat_index and backend id for the flow's conntrack entry, and *m the
 * new destination.  A new flow's service entry goes to *pend for the caller
 * to commit, or is written here when pend is NULL (from_netdev, whose packet
 * has no verdict left to take here).  0, or a negative drop reason. */
static __always_inline int svc4_translate(struct __sk_buff *skb, struct pkt_meta *m,
					  const struct lb_service *svc, struct ct_state *st,
					  __u64 cookie, __u32 now, struct svc4_pending *pend)
{
	struct ct4_tuple t = {
		.daddr = m->daddr.p[0], .saddr = m->saddr.p[0],
		.dport = m->dport, .sport = m->sport,
		.nexthdr = m->l4_proto, .flags = CT_SERVICE,
	};
	struct lb4_backend *be = NULL;
	struct ct_entry *ce;
	__u32 backend_id = 0;
	bool new_flow = false;
	int ret;

	ce = ct4_lookup_service(&t, now);
	if (ce) {
		backend_id = ce->backend_id;
		be = lb4_lookup_backend(backend_id);
		if (be && !__svc_reselect(be->state, m)) {
			ct_update(ce, false, m->l4_proto, m->tcp_flags, skb->len, now);
		} else {
			be = NULL;
		}
	}
	if (!be) {
		backend_id = lb4_select_backend(svc, t.saddr, t.sport, t.daddr, t.dport,
						m->l4_proto, cookie, now);
		if (!backend_id)
			return -DROP_NO_SERVICE;
		be = lb4_lookup_backend(backend_id);
		if (!be)
			return -DROP_NO_SERVICE;
		new_flow = true;
	}
	/* SCTP's CRC32c covers the ports but not the addresses: an address-only
	 * DNAT keeps it valid, a port change would need it recomputed over the
	 * whole packet.  The control plane refuses such services; this is the
	 * defence in depth. */
	if (m->l4_proto == IPPROTO_SCTP && be->port != m->dport)
		return -DROP_CSUM_L4;
	st->backend_id = backend_id;
	st->rev_nat_index = svc->rev_nat_index;
	if (new_flow) {
		if (pend) {
			pend->t = t;
			pend->st = *st;
			pend->new_flow = true;
		} else {
			ret = ct4_create(&t, st, m->tcp_flags, skb->len, now);
			if (ret < 0)
				return ret;
		}
	}
	lb_count_service(svc->rev_nat_index, skb->len);
	ret = nat4_rewrite_dst(skb, m, be->address, be->port);
	if (ret < 0)
		return ret;
	m->daddr.p[0] = be->address;
	m->dport = be->port;
	return 0;
}

static __always_inline int svc6_translate(struct __sk_buff *skb, struct pkt_meta *m,
					  const struct lb_service *svc, struct ct_state *st,
					  __u64 cookie, __u32 now, struct svc6_pending *pend)
{
	struct ct6_tuple t = {
		.dport = m->dport, .sport = m->sport,
		.nexthdr = m->l4_proto, .flags = CT_SERVICE,
	};
	struct lb6_backend *be = NULL;
	struct ct_entry *ce;
	__u32 backend_id = 0;
	bool new_flow = false;
	int ret;

	t.daddr = m->daddr;
	t.saddr = m->saddr;
	ce = ct6_lookup_service(&t, now);
	if (ce) {
		backend_id = ce->backend_id;
		be = lb6_lookup_backend(backend_id);
		if (be && !__svc_reselect(be->state, m)) {
			ct_update(ce, false, m->l4_proto, m->tcp_flags, skb->len, now);
		} else {
			be = NULL;
		}
	}
	if (!be) {
		backend_id = lb6_select_backend(svc, &t.saddr, t.sport, &t.daddr, t.dport,
						m->l4_proto, cookie, now);
		if (!backend_id)
			return -DROP_NO_SERVICE;
		be = lb6_lookup_backend(backend_id);
		if (!be)
			return -DROP_NO_SERVICE;
		new_flow = true;
	}
	/* SCTP's CRC32c covers the ports but not the addresses: an address-only
	 * DNAT keeps it valid, a port change would need it recomputed over the
	 * whole packet.  The control plane refuses such services; this is the
	 * defence in depth. */
	if (m->l4_proto == IPPROTO_SCTP && be->port != m->dport)
		return -DROP_CSUM_L4;
	st->backend_id = backend_id;
	st->rev_nat_index = svc->rev_nat_index;
	if (new_flow) {
		if (pend) {
			pend->t = t;
			pend->st = *st;
			pend->new_flow = true;
		} else {
			ret = ct6_create(&t, st, m->tcp_flags, skb->len, now);
			if (ret < 0)
				return ret;
		}
	}
	lb_count_service(svc->rev_nat_index, skb->len);
	ret = nat6_rewrite_dst(skb, m, &be->address, be->port);
	if (ret < 0)
		return ret;
	m->daddr = be->address;
	m->dport = be->port;
	return 0;
}

#endif /* CB_SVC_H */
