/* SPDX-License-Identifier: GPL-2.0 */
/* Connection tracking: one LRU map per family, shared by every endpoint of
 * a node.
 *
 * An entry is keyed by the tuple of the packet that created it, plus the
 * direction it was created in: CT_EGRESS (a packet leaving an endpoint),
 * CT_INGRESS (a packet entering one) or CT_SERVICE (a packet to a service
 * frontend, before DNAT; it remembers the backend).  A packet is a reply
 * when its swapped tuple names an entry of the opposite direction; an ICMP
 * error is related when its inner header names an entry.
 *
 * Lifetimes are absolute monotonic seconds; TCP entries move from the SYN
 * lifetime to the established one on the first packet without SYN, and to
 * the close lifetime on RST or FIN in both directions.  The harness removes
 * expired entries (`chainbench ct gc`); lookups treat them as absent.
 *
 * Monitor aggregation (lib/events.h, levels medium and maximum): a lookup
 * says in ct_state.monitor whether the packet deserves a trace event: it
 * brings a TCP flag its direction has not seen yet (the first SYN, the first
 * ACK, FIN, RST), or CB_MONITOR_INTERVAL seconds passed since the entry's
 * last report (last_report, then set to now).  A new connection is always
 * reported.  With other levels that work is compiled in but never runs.
 *
 * API: ct4_lookup(), ct6_lookup(), ct4_create(), ct6_create(), ct_update()
 */
#ifndef CB_CT_H
#define CB_CT_H

#include "lib/common.h"
#include "lib/parse.h"
#include "lib/events.h"

#ifndef CB_CT_MAX
#define CB_CT_MAX	262144
#endif

/* ct*_tuple.flags: the direction an entry was created in */
#define CT_EGRESS	(1 << 0)
#define CT_INGRESS	(1 << 1)
#define CT_SERVICE	(1 << 2)

/* ct_entry.flags */
#define CT_F_SEEN_NON_SYN	(1 << 0)
#define CT_F_TX_CLOSING		(1 << 1)
#define CT_F_RX_CLOSING		(1 << 2)
#define CT_F_NODEPORT		(1 << 3)	/* created by from_netdev for a NodePort/HostPort */
#define CT_F_SNAT		(1 << 4)	/* the flow is source-NATed to the node (remote backend) */
/* Created by from_netdev for a local backend before the backend's ingress
 * policy has seen the flow: until to_container allows it (and clears the
 * flag), the backend's packets on this tuple are not replies. */
#define CT_F_UNVERIFIED		(1 << 5)

#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02
#define TCP_FLAG_RST	0x04
#define TCP_FLAG_ACK	0x10

enum ct_status {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
	CT_RELATED = 3,
};

struct ct4_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;		/* ICMP echo: 0 for requests, the identifier for replies */
	__be16 sport;		/* ICMP echo: the identifier for requests, 0 for replies */
	__u8   nexthdr;
	__u8   flags;		/* CT_EGRESS / CT_INGRESS / CT_SERVICE */
	__u16  pad;
};

struct ct6_tuple {
	union v6addr daddr;
	union v6addr saddr;
	__be16 dport;
	__be16 sport;
	__u8   nexthdr;
	__u8   flags;
	__u16  pad;
};

struct ct_entry {
	__u64 tx_packets;	/* in the direction of the creating packet */
	__u64 tx_bytes;
	__u64 rx_packets;	/* replies */
	__u64 rx_bytes;
	__u32 lifetime;		/* expiry, monotonic seconds */
	__u32 created;		/* monotonic seconds */
	__u32 backend_id;	/* CT_SERVICE entries: the chosen backend */
	__u32 rev_nat_index;	/* non-zero: replies are reverse-NATed to this frontend */
	__u32 src_sec_id;	/* security identity of the remote side */
	__u16 flags;		/* CT_F_* */
	__u8  tx_flags_seen;	/* TCP flags seen in each direction */
	__u8  rx_flags_seen;
	__u32 policy_rev;	/* endpoint policy revision the verdict was taken at */
	__u32 last_report;	/* monotonic seconds of the last trace event (aggregation) */
};

/* Result of a lookup, copied out of the entry. */
struct ct_state {
	__u32 rev_nat_index;
	__u32 backend_id;
	__u32 src_sec_id;
	__u32 policy_rev;
	__u16 flags;
	__u8  monitor;		/* events: report this packet (set only with aggregation) */
	__u8  pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_CT_MAX);
	__type(key, struct ct4_tuple);
	__type(value, struct ct_entry);
} cb_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_CT_MAX);
	__type(key, struct ct6_tuple);
	__type(value, struct ct_entry);
} cb_ct6 SEC(".maps");

/* Lifetimes in seconds (Cilium's defaults); settable before load. */
const volatile __u32 ct_lifetime_tcp = 21600;
const volatile __u32 ct_lifetime_nontcp = 60;
const volatile __u32 ct_lifetime_syn = 60;
const volatile __u32 ct_lifetime_close = 10;

static __always_inline __u8 ct_opposite(__u8 dir)
{
	return dir == CT_EGRESS ? CT_INGRESS : CT_EGRESS;
}

/* Should the packet be reported (monitor aggregation)?  Before ct_update
 * records its flags. */
static __always_inline bool ct_monitor(struct ct_entry *e, bool reply, __u8 tcp_flags, __u32 now)
{
	__u8 seen = reply ? e->rx_flags_seen : e->tx_flags_seen;

	if ((tcp_flags & ~seen) || now - e->last_report >= CB_MONITOR_INTERVAL) {
		e->last_report = now;
		return true;
	}
	return false;
}

/* Account a packet to an entry and move its TCP state and lifetime on. */
static __always_inline void ct_update(struct ct_entry *e, bool reply, __u8 proto,
				      __u8 tcp_flags, __u32 len, __u32 now)
{
	__u32 lifetime;
	__u16 flags = e->flags;

	/* Plain adds, not atomics: each direction has its own counters, and the
	 * packets of one direction of a flow are normally handled one CPU at a
	 * time, so a lost update is rare and only makes a statistic approximate.
	 * The two atomic adds cost ~13 ns a packet (measured, test_run, this
	 * kind of machine): more than the rest of the conntrack update. */
	if (reply) {
		e->rx_packets += 1;
		e->rx_bytes += len;
		e->rx_flags_seen |= tcp_flags;
	} else {
		e->tx_packets += 1;
		e->tx_bytes += len;
		e->tx_flags_seen |= tcp_flags;
	}
	if (proto != IPPROTO_TCP) {
		lifetime = ct_lifetime_nontcp;
	} else {
		if ((tcp_flags & TCP_FLAG_SYN) && !(tcp_flags & TCP_FLAG_ACK) &&
		    (flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)))
			/* A new SYN on a closing tuple: the port is being reused. */
			flags &= ~(CT_F_TX_CLOSING | CT_F_RX_CLOSING | CT_F_SEEN_NON_SYN);
		if (tcp_flags & TCP_FLAG_RST)
			flags |= CT_F_TX_CLOSING | CT_F_RX_CLOSING;
		else if (tcp_flags & TCP_FLAG_FIN)
			flags |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
		if (!(tcp_flags & TCP_FLAG_SYN))
			flags |= CT_F_SEEN_NON_SYN;

		if ((flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) ==
		    (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
			lifetime = ct_lifetime_close;
		else if (flags & CT_F_SEEN_NON_SYN)
			lifetime = ct_lifetime_tcp;
		else
			lifetime = ct_lifetime_syn;
	}
	if (flags != e->flags)
		e->flags = flags;
	/* Writes to a shared line are what costs: skip unchanged ones. */
	if (e->lifetime != now + lifetime)
		e->lifetime = now + lifetime;
}

static __always_inline void __ct_copy_state(struct ct_state *st, const struct ct_entry *e)
{
	st->rev_nat_index = e->rev_nat_index;
	st->backend_id = e->backend_id;
	st->src_sec_id = e->src_sec_id;
	st->policy_rev = e->policy_rev;
	st->flags = e->flags;
}

static __always_inline struct ct_entry *__ct4_get(struct ct4_tuple *t, __u32 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cb_ct4, t);

	return e && e->lifetime >= now ? e : NULL;
}

static __always_inline struct ct_entry *__ct6_get(struct ct6_tuple *t, __u32 now)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cb_ct6, t);

	return e && e->lifetime >= now ? e : NULL;
}

static __always_inline void ct4_swap(struct ct4_tuple *t)
{
	__be32 a = t->daddr;
	__be16 p = t->dport;

	t->daddr = t->saddr;
	t->saddr = a;
	t->dport = t->sport;
	t->sport = p;
}

static __always_inline void ct6_swap(struct ct6_tuple *t)
{
	union v6addr a = t->daddr;
	__be16 p = t->dport;

	t->daddr = t->saddr;
	t->saddr = a;
	t->dport = t->sport;
	t->sport = p;
}

/* Look *t* (the packet's own tuple, flags = the direction it travels) up as
 * a reply and as a forward packet, in the order given by reply_first, and
 * account the packet to the entry found.  Returns CT_NEW, CT_ESTABLISHED or
 * CT_REPLY and fills *st.  *t is left as the packet's own tuple. */
static __always_inline enum ct_status ct4_lookup(struct ct4_tuple *t, bool reply_first,
						 __u8 tcp_flags, __u32 len, __u32 now,
						 struct ct_state *st)
{
	__u8 dir = t->flags;
	struct ct_entry *e;
	int pass;

#pragma unroll
	for (pass = 0; pass < 2; pass++) {
		bool as_reply = (pass == 0) == reply_first;

		if (as_reply) {
			ct4_swap(t);
			t->flags = ct_opposite(dir);
		}
		e = __ct4_get(t, now);
		if (as_reply) {
			ct4_swap(t);
			t->flags = dir;
		}
		if (e) {
			if (events_aggregated())
				st->monitor = ct_monitor(e, as_reply, tcp_flags, now);
			ct_update(e, as_reply, t->nexthdr, tcp_flags, len, now);
			__ct_copy_state(st, e);
			return as_reply ? CT_REPLY : CT_ESTABLISHED;
		}
	}
	return CT_NEW;
}

static __always_inline enum ct_status ct6_lookup(struct ct6_tuple *t, bool reply_first,
						 __u8 tcp_flags, __u32 len, __u32 now,
						 struct ct_state *st)
{
	__u8 dir = t->flags;
	struct ct_entry *e;
	int pass;

#pragma unroll
	for (pass = 0; pass < 2; pass++) {
		bool as_reply = (pass == 0) == reply_first;

		if (as_reply) {
			ct6_swap(t);
			t->flags = ct_opposite(dir);
		}
		e = __ct6_get(t, now);
		if (as_reply) {
			ct6_swap(t);
			t->flags = dir;
		}
		if (e) {
			if (events_aggregated())
				st->monitor = ct_monitor(e, as_reply, tcp_flags, now);
			ct_update(e, as_reply, t->nexthdr, tcp_flags, len, now);
			__ct_copy_state(st, e);
			return as_reply ? CT_REPLY : CT_ESTABLISHED;
		}
	}
	return CT_NEW;
}

/* The ports of a packet as conntrack keys them: TCP/UDP/SCTP ports; for ICMP
 * echo the identifier stands in the request's sport and the reply's dport,
 * so that a reply's swapped tuple names its request.  Returns false for
 * packets conntrack leaves alone: ICMP messages other than echo carry no
 * identifier that pairs a reply with its request, so keying them (by
 * addresses alone) would let any message between two addresses count as
 * the "reply" of any other.  The caller checks such packets against policy
 * one by one; errors about a tracked connection are handled before this,
 * as related. */
static __always_inline bool ct_tuple_ports(const struct pkt_meta *m, __be16 *sport,
					   __be16 *dport)
{
	__u8 type = bpf_ntohs(m->dport) >> 8;

	*sport = 0;
	*dport = 0;
	if (!pkt_has_ports(m))
		return true;
	switch (m->l4_proto) {
	case IPPROTO_ICMP:
		if (type == 8)		/* echo request */
			*sport = m->sport;
		else if (type == 0)	/* echo reply */
			*dport = m->sport;
		else
			return false;
		return true;
	case IPPROTO_ICMPV6:
		if (type == 128)
			*sport = m->sport;
		else if (type == 129)
			*dport = m->sport;
		else
			return false;
		return true;
	default:
		*sport = m->sport;
		*dport = m->dport;
		return true;
	}
}

/* Record that the entry of *t* (looked up as *reply* or not) was checked
 * against policy revision *rev*: the endpoint's verdict is now taken, so the
 * entry stops being CT_F_UNVERIFIED. */
static __always_inline void ct4_set_policy_rev(struct ct4_tuple *t, bool reply, __u32 rev)
{
	struct ct_entry *e;
	__u8 dir = t->flags;

	if (reply) {
		ct4_swap(t);
		t->flags = ct_opposite(dir);
	}
	e = bpf_map_lookup_elem(&cb_ct4, t);
	if (reply) {
		ct4_swap(t);
		t->flags = dir;
	}
	if (e) {
		e->policy_rev = rev;
		if (e->flags & CT_F_UNVERIFIED)
			e->flags &= ~CT_F_UNVERIFIED;
	}
}

static __always_inline void ct6_set_policy_rev(struct ct6_tuple *t, bool reply, __u32 rev)
{
	struct ct_entry *e;
	__u8 dir = t->flags;

	if (reply) {
		ct6_swap(t);
		t->flags = ct_opposite(dir);
	}
	e = bpf_map_lookup_elem(&cb_ct6, t);
	if (reply) {
		ct6_swap(t);
		t->flags = dir;
	}
	if (e) {
		e->policy_rev = rev;
		if (e->flags & CT_F_UNVERIFIED)
			e->flags &= ~CT_F_UNVERIFIED;
	}
}

/* Point the forward entry of *t* at frontend *rev_nat_index* (0: none).  A
 * client port can be reused towards another service whose backend makes the
 * same tuple as an earlier connection's (or straight to that backend): the
 * SYN then finds the old entry, and its replies must be reverse-translated to
 * what the new connection asked for, not to the old frontend.  (Netfilter
 * avoids the same clash by remapping the source port.) */
static __always_inline void ct4_set_rev_nat(const struct ct4_tuple *t, __u32 rev_nat_index)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cb_ct4, t);

	if (e)
		e->rev_nat_index = rev_nat_index;
}

static __always_inline void ct6_set_rev_nat(const struct ct6_tuple *t, __u32 rev_nat_index)
{
	struct ct_entry *e = bpf_map_lookup_elem(&cb_ct6, t);

	if (e)
		e->rev_nat_index = rev_nat_index;
}

/* Service entries are looked up in the forward direction only. */
static __always_inline struct ct_entry *ct4_lookup_service(struct ct4_tuple *t, __u32 now)
{
	return __ct4_get(t, now);
}

static __always_inline struct ct_entry *ct6_lookup_service(struct ct6_tuple *t, __u32 now)
{
	return __ct6_get(t, now);
}

static __always_inline void __ct_init(struct ct_entry *e, const struct ct_state *st,
				      __u8 proto, __u8 tcp_flags, __u32 len, __u32 now)
{
	e->created = now;
	e->last_report = now;	/* a new connection is reported by its creator */
	e->backend_id = st->backend_id;
	e->rev_nat_index = st->rev_nat_index;
	e->src_sec_id = st->src_sec_id;
	e->policy_rev = st->policy_rev;
	e->flags = st->flags;
	ct_update(e, false, proto, tcp_flags, len, now);
}

/* Create the entry for *t* (forward direction).  0, or -DROP_CT_CREATE_FAILED. */
static __always_inline int ct4_create(struct ct4_tuple *t, const struct ct_state *st,
				      __u8 tcp_flags, __u32 len, __u32 now)
{
	struct ct_entry e = {};

	__ct_init(&e, st, t->nexthdr, tcp_flags, len, now);
	if (bpf_map_update_elem(&cb_ct4, t, &e, BPF_ANY) < 0)
		return -DROP_CT_CREATE_FAILED;
	return 0;
}

static __always_inline int ct6_create(struct ct6_tuple *t, const struct ct_state *st,
				      __u8 tcp_flags, __u32 len, __u32 now)
{
	struct ct_entry e = {};

	__ct_init(&e, st, t->nexthdr, tcp_flags, len, now);
	if (bpf_map_update_elem(&cb_ct6, t, &e, BPF_ANY) < 0)
		return -DROP_CT_CREATE_FAILED;
	return 0;
}

#endif /* CB_CT_H */
