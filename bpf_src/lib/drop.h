/* SPDX-License-Identifier: GPL-2.0 */
/* Drop reasons and the single exit path for drops.
 *
 * Codes follow Cilium's numbering (positive here; helpers return them
 * negated).  This enum is the only definition: harness/drop_reasons.py reads
 * the names and descriptions from this file, so keep one entry per line in
 * the form `NAME = CODE, / * description * /`.
 *
 * API: drop_packet(skb, reason, dir) and drop_endpoint_packet(skb, endpoint_id,
 * reason, dir) count the drop in the metrics map, send a drop event (reason,
 * endpoint, direction, the packet's first bytes; lib/events.h) when the
 * node's events are on, and return TC_ACT_SHOT.  drop_xdp_packet(ctx,
 * reason, dir) counts an XDP program's drop (no event: no node runs one).
 */
#ifndef CB_DROP_H
#define CB_DROP_H

#include "lib/events.h"
#include "lib/metrics.h"

enum drop_reason {
	DROP_INVALID_SIP = 132,		/* Invalid source ip */
	DROP_POLICY = 133,		/* Policy denied */
	DROP_INVALID = 134,		/* Invalid packet */
	DROP_CT_INVALID_HDR = 135,	/* CT: Invalid header */
	DROP_CT_UNKNOWN_PROTO = 137,	/* CT: Unknown L4 protocol */
	DROP_UNKNOWN_L3 = 139,		/* Unknown L3 target address */
	DROP_WRITE_ERROR = 141,		/* Failed to write to packet */
	DROP_UNKNOWN_L4 = 142,		/* Unknown L4 protocol */
	DROP_UNROUTABLE = 151,		/* Unroutable */
	DROP_CSUM_L3 = 153,		/* Error while correcting L3 checksum */
	DROP_CSUM_L4 = 154,		/* Error while correcting L4 checksum */
	DROP_CT_CREATE_FAILED = 155,	/* Failed to create a connection tracking entry */
	DROP_FRAG_NOSUPPORT = 157,	/* Fragmented packet not supported */
	DROP_NO_SERVICE = 158,		/* Service backend not found */
	DROP_UNKNOWN_CT = 163,		/* Unknown connection tracking state */
	DROP_NO_CONFIG = 165,		/* No configuration available to perform policy decision */
	DROP_NAT_NO_MAPPING = 167,	/* No mapping for NAT masquerade */
	DROP_NO_FIB = 169,		/* No FIB entry */
	DROP_INVALID_IDENTITY = 171,	/* Invalid identity */
	DROP_IS_CLUSTER_IP = 174,	/* Packet to a ClusterIP without a port */
	DROP_NOT_IN_SRC_RANGE = 177,	/* Denied by LB src range check */
	DROP_POLICY_DENY = 181,		/* Policy denied by denylist */
	DROP_AUTH_REQUIRED = 189,	/* Authentication required */
};

static __always_inline int drop_endpoint_packet(struct __sk_buff *skb, __u16 endpoint_id,
						enum drop_reason reason, __u8 dir)
{
	metrics_count(endpoint_id, (__u8)reason, dir, skb->len);
	events_drop(skb, endpoint_id, (__u8)reason, dir);	/* drops are never aggregated */
	return TC_ACT_SHOT;
}

static __always_inline int drop_packet(struct __sk_buff *skb, enum drop_reason reason, __u8 dir)
{
	return drop_endpoint_packet(skb, 0, reason, dir);
}

static __always_inline void drop_xdp_packet(__u32 len, enum drop_reason reason, __u8 dir)
{
	metrics_count(0, (__u8)reason, dir, len);
}

#endif /* CB_DROP_H */
