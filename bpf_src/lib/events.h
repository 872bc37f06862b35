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

#include "lib/common.h"

/* Message types (Cilium: MessageTypeDrop, Trace, PolicyVerdict, TraceSock) */
#define CB_EVENT_DROP			1
#define CB_EVENT_TRACE			4
#define CB_EVENT_POLICY_VERDICT		9
#define CB_EVENT_TRACE_SOCK		11

/* Trace observation points (Cilium's enum trace_point) */
#define TRACE_TO_LXC		0	/* Hubble: to-endpoint */
#define TRACE_TO_STACK		3
#define TRACE_FROM_LXC		5	/* Hubble: from-endpoint */
#define TRACE_FROM_NETWORK	10
#define TRACE_TO_NETWORK	11

/* Why a trace's packet was forwarded: its conntrack status (ct.h enum
 * ct_status: new = passed policy, established, reply, related). */

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

static __always_inline void events_count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&cb_events_lost, &zero);

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
	barrier_var(cap);
	if (cap == 0 || cap > CB_EVENT_CAP)
		return;
	if (bpf_skb_load_bytes(skb, 0, e->pkt, cap) == 0)
		e->cap_len = cap;
}

static __always_inline void events_submit(struct cb_event *e)
{
	bpf_ringbuf_submit(e, 0);
}

#endif /* CB_EVENTS_H */
