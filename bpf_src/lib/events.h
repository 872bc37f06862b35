/* SPDX-License-Identifier: GPL-2.0 */
/* Datapath events for flow visibility: one BPF ring buffer per node.
 *
 * Every program of a node writes one kind of record, struct cb_event, to
 * cb_events: a fixed header, the fields of its type, and the first
 * CB_EVENT_CAP bytes of the packet.  Types and their sub-types follow
 * Cilium's monitor numbering (pkg/monitor/api), so the observer maps them to
 * Hubble's flow fields the way Hubble does:
 *
 *   CB_EVENT_DROP            subtype: drop reason (drop.h)
 *   CB_EVENT_TRACE           subtype: observation point (TRACE_TO_LXC ...)
 *   CB_EVENT_POLICY_VERDICT  subtype: 0; match type, allowed or denied, rule
 *   CB_EVENT_TRACE_SOCK      subtype: translation point (SOCK_XLATE_*)
 *
 * How many events a connection produces is the node's monitor aggregation
 * (monitor_aggregation, a load-time constant), with Cilium's levels:
 *   none (0), lowest (1): a trace event for every packet;
 *   low (2): no trace events at receive points (FROM_*);
 *   medium (3), maximum (4): as low, and a trace event only when conntrack
 *     says so: a connection's first packet, a TCP flag not seen before in
 *     its direction, and at most every CB_MONITOR_INTERVAL seconds;
 *   off (CB_MONITOR_OFF): no event at all (drops are still counted in
 *     cb_metrics).
 * Drop and policy-verdict events are never aggregated.  A record the ring
 * buffer has no room for is counted in cb_events_lost, never silently lost.
 */
#ifndef CB_EVENTS_H
#define CB_EVENTS_H

#include <bpf/bpf_endian.h>
#include "lib/common.h"

/* Message types (Cilium's pkg/monitor/api MessageType: Drop 1, Trace 4, PolicyVerdict 5, TraceSock 7) */
#define CB_EVENT_DROP			1
#define CB_EVENT_TRACE			4
#define CB_EVENT_POLICY_VERDICT		5
#define CB_EVENT_TRACE_SOCK		7

/* Trace observation points (Cilium's enum trace_point) */
#define TRACE_TO_LXC		0	/* Hubble: to-endpoint */
#define TRACE_TO_STACK		3
#define TRACE_FROM_LXC		5	/* Hubble: from-endpoint */
#define TRACE_FROM_NETWORK	10
#define TRACE_TO_NETWORK	11

/* Why a trace's packet was forwarded: its conntrack status (ct.h enum
 * ct_status: new = passed policy, established, reply, related), or, where no
 * conntrack lookup was made, Cilium's TRACE_REASON_UNKNOWN (Hubble then leaves
 * is_reply unset). */
#define TRACE_REASON_UNKNOWN	5

/* Socket translation points (Cilium's enum sock_xlate_point) */
#define SOCK_XLATE_PRE_DIRECTION_FWD	1
#define SOCK_XLATE_POST_DIRECTION_FWD	2
#define SOCK_XLATE_PRE_DIRECTION_REV	3
#define SOCK_XLATE_POST_DIRECTION_REV	4

/* Policy match types (Cilium's POLICY_MATCH_*) */
#define POLICY_MATCH_NONE	0
#define POLICY_MATCH_L3_ONLY	1
#define POLICY_MATCH_L3_L4	2
#define POLICY_MATCH_L4_ONLY	3
#define POLICY_MATCH_ALL	4
#define POLICY_MATCH_L3_PROTO	5	/* an identity, one protocol, any port */
#define POLICY_MATCH_PROTO_ONLY	6	/* any identity, one protocol, any port */

/* cb_event.flags */
#define CB_EVF_IPV6		(1 << 0)	/* the packet (or socket) is IPv6 */
#define CB_EVF_XLATED		(1 << 1)	/* service translation: orig_* is the frontend */
#define CB_EVF_ALLOWED		(1 << 2)	/* policy verdict: allowed */
#define CB_EVF_REPLY		(1 << 3)	/* the packet is a reply of its connection */
#define CB_EVF_REV_XLATED	(1 << 4)	/* reverse translation: orig_* was the backend */

/* Monitor aggregation levels (Cilium's option values) */
#define CB_MONITOR_NONE		0
#define CB_MONITOR_LOWEST	1
#define CB_MONITOR_LOW		2
#define CB_MONITOR_MEDIUM	3
#define CB_MONITOR_MAXIMUM	4
#define CB_MONITOR_OFF		255

#define CB_MONITOR_INTERVAL	5	/* seconds: Cilium's --monitor-aggregation-interval */

#define CB_EVENT_CAP		128	/* bytes of the packet an event carries */

struct cb_event {
	__u64 ktime_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u8  type;		/* CB_EVENT_* */
	__u8  subtype;		/* drop reason / observation point / translation point */
	__u16 endpoint_id;	/* endpoint whose program emitted it; 0: the node's */
	__u32 ifindex;		/* the packet's device */
	__u32 orig_len;		/* the packet's length */
	__u16 cap_len;		/* bytes of it in pkt[] */
	__u8  flags;		/* CB_EVF_* */
	__u8  dir;		/* CB_DIR_INGRESS / CB_DIR_EGRESS, relative to the endpoint */
	__u32 remote_identity;	/* security identity of the other side, 0 unknown */
	__u8  match_type;	/* policy verdict: POLICY_MATCH_* */
	__u8  rule_proto;	/* policy verdict: the rule's protocol, 0 any */
	__u16 rule_port;	/* policy verdict: the rule's port (host order), 0 any */
	__u8  trace_reason;	/* trace: enum ct_status of the packet */
	__u8  l4_proto;		/* trace_sock: the socket's protocol */
	__be16 orig_port;	/* with CB_EVF_XLATED / _REV_XLATED: port before translation */
	__u32 rev_nat_index;	/* the service translated to or from, 0 none */
	union v6addr orig_addr;	/* address before translation (IPv4: p[0]) */
	union v6addr xlate_addr; /* trace_sock: address after translation */
	__be16 xlate_port;	/* trace_sock: port after translation */
	__u16 pad1;
	__u32 pad2;
	__u64 cookie;		/* trace_sock: the socket cookie */
	__u64 cgroup_id;	/* trace_sock: the socket's cgroup */
	__u8  pkt[CB_EVENT_CAP];
};

#ifndef CB_EVENTS_SIZE
#define CB_EVENTS_SIZE	(1 << 22)	/* bytes; the node's loader may resize it */
#endif

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CB_EVENTS_SIZE);
} cb_events SEC(".maps");

/* Records the ring buffer had no room for, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cb_events_lost SEC(".maps");

/* The node's aggregation level; off unless the loader says otherwise, so a
 * program loaded on its own (test-run, micro benchmarks) emits nothing. */
const volatile __u8 monitor_aggregation = CB_MONITOR_OFF;

static __always_inline bool events_enabled(void)
{
	return monitor_aggregation != CB_MONITOR_OFF;
}

/* Should a trace event at obs_point be sent?  monitor: conntrack asks for a
 * report (a new connection, new TCP flags, the interval elapsed). */
static __always_inline bool events_emit_trace(__u8 obs_point, bool monitor)
{
	if (!events_enabled())
		return false;
	if (monitor_aggregation >= CB_MONITOR_LOW &&
	    (obs_point == TRACE_FROM_LXC || obs_point == TRACE_FROM_NETWORK))
		return false;
	if (monitor_aggregation >= CB_MONITOR_MEDIUM && !monitor)
		return false;
	return true;
}

/* The key of cb_events_lost, a constant (not a stack slot: a caller may have
 * none to spare). */
static const __u32 events_lost_key = 0;

static __always_inline void events_count_lost(void)
{
	__u64 *lost = bpf_map_lookup_elem(&cb_events_lost, &events_lost_key);

	if (lost)
		*lost += 1;	/* per-CPU: no other CPU writes it */
}

/* A zeroed record with the common header filled, or NULL (counted lost). */
static __always_inline struct cb_event *events_reserve(__u8 type, __u8 subtype,
						       __u16 endpoint_id, __u8 dir)
{
	struct cb_event *e = bpf_ringbuf_reserve(&cb_events, sizeof(*e), 0);

	if (!e) {
		events_count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ktime_ns = bpf_ktime_get_ns();
	e->type = type;
	e->subtype = subtype;
	e->endpoint_id = endpoint_id;
	e->dir = dir;
	return e;
}

/* Copy the packet's first bytes into the record. */
static __always_inline void events_capture(struct cb_event *e, struct __sk_buff *skb)
{
	__u32 cap = skb->len;

	e->ifindex = skb->ifindex;
	e->orig_len = skb->len;
	if (cap > CB_EVENT_CAP)
		cap = CB_EVENT_CAP;
	if (cap == 0)
		return;
	/* The verifier needs the length in [1, CB_EVENT_CAP] in the register
	 * passed; clang's own range checks test cap - 1 and pass cap.  The
	 * mask (CB_EVENT_CAP is a power of two) is what the verifier bounds. */
	cap -= 1;
	barrier_var(cap);
	cap = (cap & (CB_EVENT_CAP - 1)) + 1;
	if (bpf_skb_load_bytes(skb, 0, e->pkt, cap) == 0)
		e->cap_len = cap;
}

static __always_inline void events_submit(struct cb_event *e)
{
	bpf_ringbuf_submit(e, 0);
}

/* Is a trace event sent only when conntrack asks (medium, maximum)? */
static __always_inline bool events_aggregated(void)
{
	return events_enabled() && monitor_aggregation >= CB_MONITOR_MEDIUM;
}

static __always_inline bool skb_is_ipv6(const struct __sk_buff *skb)
{
	return skb->protocol == bpf_htons(ETH_P_IPV6);
}

/* What a program learns about a packet on its way (the policy verdict, the
 * connection's status, a service translation), for the events it sends at
 * its exit.  Kept per CPU, not on the stack, which the lxc programs have
 * none of to spare; a tc program runs to its end on one CPU, so the note is
 * the packet's until the next program starts (events_note_reset).  Written
 * only under events_enabled(): with events off no code touches it. */
#define NOTE_POLICY	(1 << 6)	/* a policy verdict was taken */
#define NOTE_MONITOR	(1 << 7)	/* conntrack asks for a report */

struct cb_event_note {
	__u8  flags;		/* CB_EVF_XLATED/_REV_XLATED/_REPLY/_ALLOWED, NOTE_* */
	__u8  ct_status;	/* enum ct_status, the trace's reason */
	__u8  match_type;	/* policy verdict: POLICY_MATCH_* */
	__u8  rule_proto;
	__u16 rule_port;
	__be16 orig_port;
	__u8  drop_reason;	/* policy verdict: why a denied packet was refused */
	__u8  pad[3];
	__u32 identity;		/* policy verdict: the remote identity */
	__u32 rev_nat_index;
	union v6addr orig_addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cb_event_note);
} cb_event_note SEC(".maps");

static __always_inline struct cb_event_note *events_note(void)
{
	if (!events_enabled())
		return NULL;
	return bpf_map_lookup_elem(&cb_event_note, &events_lost_key);
}

/* A new packet: nothing noted, and a packet conntrack does not see is
 * reported (as Cilium: no conntrack, no aggregation). */
static __always_inline void events_note_reset(void)
{
	struct cb_event_note *n = events_note();

	if (n) {
		n->flags = NOTE_MONITOR;
		n->ct_status = TRACE_REASON_UNKNOWN;
	}
}

/* Conntrack's view: the status and whether it asks for a report. */
static __always_inline void events_note_ct(__u8 status, bool monitor)
{
	struct cb_event_note *n = events_note();

	if (!n)
		return;
	n->ct_status = status;
	if (!monitor && events_aggregated())
		n->flags &= ~NOTE_MONITOR;
	if (status == 2 /* CT_REPLY */)
		n->flags |= CB_EVF_REPLY;
}

/* A translation: the packet was for (flag XLATED) or came from (REV_XLATED)
 * addr:port before it was rewritten. */
static __always_inline void events_note_xlate(__u8 flag, const union v6addr *addr, __be16 port,
					      __u32 rev_nat_index)
{
	struct cb_event_note *n = events_note();

	if (!n)
		return;
	n->flags |= flag;
	n->orig_addr = *addr;
	n->orig_port = port;
	n->rev_nat_index = rev_nat_index;
}

static __always_inline void events_note_xlate4(__u8 flag, __be32 addr, __be16 port,
					       __u32 rev_nat_index)
{
	union v6addr a = { .p = { addr } };

	events_note_xlate(flag, &a, port, rev_nat_index);
}

/* The policy verdict: allowed (drop_reason 0) or the reason it was refused,
 * the remote identity, and the entry that decided (POLICY_MATCH_NONE: none did). */
static __always_inline void events_note_policy(__u8 drop_reason, __u32 identity, __u8 match_type,
					       __u8 proto, __u16 port)
{
	struct cb_event_note *n = events_note();

	if (!n)
		return;
	n->flags |= NOTE_POLICY;
	if (!drop_reason)
		n->flags |= CB_EVF_ALLOWED;
	else
		n->flags &= ~CB_EVF_ALLOWED;
	n->drop_reason = drop_reason;
	n->identity = identity;
	n->match_type = match_type;
	n->rule_proto = proto;
	n->rule_port = port;
}

/* A record of the packet alone: its type, sub-type, endpoint and direction. */
static __always_inline void events_send_packet(struct __sk_buff *skb, __u8 type, __u8 subtype,
					       __u16 endpoint_id, __u8 dir)
{
	struct cb_event *e = events_reserve(type, subtype, endpoint_id, dir);

	if (!e)
		return;
	if (skb_is_ipv6(skb))
		e->flags |= CB_EVF_IPV6;
	if (type == CB_EVENT_TRACE)
		e->trace_reason = TRACE_REASON_UNKNOWN;	/* no conntrack lookup here */
	events_capture(e, skb);
	events_submit(e);
}

static __always_inline void events_drop(struct __sk_buff *skb, __u16 endpoint_id, __u8 reason,
					__u8 dir)
{
	if (events_enabled())
		events_send_packet(skb, CB_EVENT_DROP, reason, endpoint_id, dir);
}

/* The events a packet's program sends at its exit, from its note: the
 * policy verdict if one was taken, then the trace at obs_point when the
 * packet passed (ret >= 0) and the aggregation lets it through.  Drops send
 * their own event (drop.h). */
static __always_inline void events_exit(struct __sk_buff *skb, __u16 endpoint_id, __u8 dir,
					int ret, __u8 obs_point)
{
	struct cb_event_note *n = events_note();
	struct cb_event *e;
	__u8 ipv6;

	if (!n)
		return;
	ipv6 = skb_is_ipv6(skb) ? CB_EVF_IPV6 : 0;
	if (n->flags & NOTE_POLICY) {
		e = events_reserve(CB_EVENT_POLICY_VERDICT, n->drop_reason, endpoint_id, dir);
		if (e) {
			e->flags = ipv6 | (n->flags & CB_EVF_ALLOWED);
			e->remote_identity = n->identity;
			e->match_type = n->match_type;
			e->rule_proto = n->rule_proto;
			e->rule_port = n->rule_port;
			events_capture(e, skb);
			events_submit(e);
		}
	}
	if (ret < 0 || !events_emit_trace(obs_point, n->flags & NOTE_MONITOR))
		return;
	e = events_reserve(CB_EVENT_TRACE, obs_point, endpoint_id, dir);
	if (!e)
		return;
	e->flags = ipv6 | (n->flags & (CB_EVF_XLATED | CB_EVF_REV_XLATED | CB_EVF_REPLY));
	e->trace_reason = n->ct_status;
	if (n->flags & (CB_EVF_XLATED | CB_EVF_REV_XLATED)) {	/* else an earlier packet's */
		e->orig_addr = n->orig_addr;
		e->orig_port = n->orig_port;
		e->rev_nat_index = n->rev_nat_index;
	}
	events_capture(e, skb);
	events_submit(e);
}

/* A trace event at an observation point with nothing noted (the packet as
 * the program received it, FROM_*; or a program without conntrack). */
static __always_inline void events_trace_plain(struct __sk_buff *skb, __u16 endpoint_id,
					       __u8 dir, __u8 obs_point, bool monitor)
{
	if (events_emit_trace(obs_point, monitor))
		events_send_packet(skb, CB_EVENT_TRACE, obs_point, endpoint_id, dir);
}

/* A socket-LB translation (no packet): the socket's call went to orig:port
 * and now goes to xlate:port (forward), or a reply's source backend is
 * reported as the frontend (reverse). */
static __always_inline void events_sock(__u8 point, __u8 proto, bool ipv6, __u64 cookie,
					const union v6addr *orig, __be16 orig_port,
					const union v6addr *xlate, __be16 xlate_port)
{
	struct cb_event *e;

	if (!events_enabled())
		return;
	e = events_reserve(CB_EVENT_TRACE_SOCK, point, 0, 0);
	if (!e)
		return;
	e->flags = ipv6 ? CB_EVF_IPV6 : 0;
	e->l4_proto = proto;
	e->orig_addr = *orig;
	e->orig_port = orig_port;
	e->xlate_addr = *xlate;
	e->xlate_port = xlate_port;
	e->cookie = cookie;
	e->cgroup_id = bpf_get_current_cgroup_id();
	events_submit(e);
}

#endif /* CB_EVENTS_H */
