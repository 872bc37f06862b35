/* SPDX-License-Identifier: GPL-2.0 */
/* L3/L4 policy: per-endpoint configuration and the policy map.
 *
 * cb_endpoints (array, by endpoint id): the endpoint's identity, whether each
 * direction is enforced, the active rule generation and the policy revision.
 *
 * cb_policy (LPM trie): one entry per rule block, keyed big-endian as
 *   endpoint id and generation | deny | direction | remote identity | protocol | port
 * so a prefix ending after the identity matches every protocol, one ending
 * after the protocol every port, and a port range is a few prefixes.  Rules
 * for a single port are kept in cb_policy_exact (a hash, same key, full
 * prefix) instead: an LPM lookup costs more the deeper the trie (+45 ns at
 * 1,000 rules, measured), a hash lookup does not.  A verdict checks deny
 * rules (if the direction has any) before allow rules, each for the remote
 * identity then for any identity, exact map first, trie only if the
 * direction has wildcard or range rules; a deny wins over every allow.
 *
 * An endpoint's rules change atomically: the control plane writes the new
 * rules under the other generation, flips the generation (one array write)
 * and bumps the revision, then deletes the old ones.  Conntrack entries
 * remember the revision their verdict was taken at; a packet of an
 * established connection is checked again only when it changed.
 *
 * Later fragments carry no ports; one whose first fragment left its ports
 * (frag.h) is checked like it.  The others are checked as protocol/port 0,
 * so only rules for any port can allow them, and they are dropped outright
 * in a direction that has any deny rule (a port deny could not be applied).
 *
 * Each entry also says what kind of rule it is (its match type, protocol
 * and first port, written by the control plane), so that with the node's
 * events on the verdict is noted for the policy-verdict event (lib/events.h)
 * without another lookup.  A direction without enforcement notes nothing, as
 * Cilium sends no verdict there.
 *
 * API: endpoint_lookup(id), policy_check(ep, egress, identity, proto, port, later_fragment)
 */
#ifndef CB_POLICY_H
#define CB_POLICY_H

#include "lib/common.h"
#include "lib/drop.h"
#include "lib/events.h"

#ifndef CB_ENDPOINTS_MAX
#define CB_ENDPOINTS_MAX	4096
#endif
#ifndef CB_POLICY_MAX
#define CB_POLICY_MAX		1048576
#endif

#define CB_IDENTITY_ANY		0

/* endpoint_info.flags */
#define EP_F_MANAGED		(1 << 0)
#define EP_F_INGRESS_ENFORCED	(1 << 1)
#define EP_F_EGRESS_ENFORCED	(1 << 2)
#define EP_F_INGRESS_DENIES	(1 << 3)	/* ingress has deny rules */
#define EP_F_EGRESS_DENIES	(1 << 4)
#define EP_F_GENERATION		(1 << 5)	/* which rule generation is live */
#define EP_F_INGRESS_WIDE	(1 << 6)	/* ingress has wildcard/range rules (trie) */
#define EP_F_EGRESS_WIDE	(1 << 7)

/* Prefix lengths of policy keys: everything up to the identity (and the pad
 * byte after it), then the protocol, then the 16 bits of the port. */
#define POLICY_PREFIX_FIXED	72
#define POLICY_PREFIX_PROTO	80
#define POLICY_PREFIX_FULL	96

struct endpoint_info {
	__u32 identity;
	__u32 policy_revision;
	__u16 flags;		/* EP_F_* */
	__u16 pad;
};

struct policy_key {
	__u32 prefixlen;	/* bits of the fields below that must match */
	__be16 ep_gen;		/* endpoint id << 1 | generation */
	__u8  deny;		/* 1: deny rule */
	__u8  egress;		/* 1: egress, 0: ingress */
	__be32 identity;	/* remote identity; CB_IDENTITY_ANY: every one */
	__u8  pad;		/* always 0, inside the fixed prefix */
	__u8  proto;		/* IPPROTO_*; covered by the prefix or not */
	__be16 dport;		/* ICMP: the type */
};

struct policy_entry {
	__u64 packets;		/* connections (and re-checks) this entry decided */
	__u64 bytes;
	__u8  match_type;	/* the rule's POLICY_MATCH_* (lib/events.h) */
	__u8  proto;		/* the rule's protocol, 0: any */
	__u16 port;		/* the rule's first port (host order), 0: any */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
} cb_policy_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CB_ENDPOINTS_MAX);
	__type(key, __u32);
	__type(value, struct endpoint_info);
} cb_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CB_POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_entry);
} cb_policy SEC(".maps");

static __always_inline struct endpoint_info *endpoint_lookup(__u32 id)
{
	return id ? bpf_map_lookup_elem(&cb_endpoints, &id) : NULL;
}

static __always_inline struct policy_entry *__policy_lookup(__u16 ep_gen, __u8 deny, __u8 egress,
							    __u32 identity, __u8 proto,
							    __u16 port, bool wide)
{
	struct policy_key key = {
		.prefixlen = POLICY_PREFIX_FULL, .ep_gen = bpf_htons(ep_gen), .deny = deny,
		.egress = egress, .identity = bpf_htonl(identity), .proto = proto,
		.dport = bpf_htons(port),
	};
	struct policy_entry *e = bpf_map_lookup_elem(&cb_policy_exact, &key);

	if (!e && wide)
		e = bpf_map_lookup_elem(&cb_policy, &key);
	return e;
}

/* 0 to allow, or -DROP_POLICY (no rule allows) / -DROP_POLICY_DENY (a deny rule). */
static __always_inline int policy_check(__u32 ep_id, const struct endpoint_info *ep, bool egress,
					__u32 identity, __u8 proto, __u16 port, bool later_fragment,
					__u32 len)
{
	__u16 enforced = egress ? EP_F_EGRESS_ENFORCED : EP_F_INGRESS_ENFORCED;
	__u16 denies = egress ? EP_F_EGRESS_DENIES : EP_F_INGRESS_DENIES;
	bool wide = ep->flags & (egress ? EP_F_EGRESS_WIDE : EP_F_INGRESS_WIDE);
	__u16 ep_gen = (__u16)(ep_id << 1) | !!(ep->flags & EP_F_GENERATION);
	struct policy_entry *e;
	int pass;

	if (later_fragment) {
		if (ep->flags & denies) {
			events_note_policy(DROP_FRAG_NOSUPPORT, identity, POLICY_MATCH_NONE, 0, 0);
			return -DROP_FRAG_NOSUPPORT;
		}
		proto = 0;
		port = 0;
	}
#pragma unroll
	for (pass = 0; pass < 4; pass++) {
		__u8 deny = pass < 2;

		if (deny && !(ep->flags & denies))
			continue;
		if (!deny && !(ep->flags & enforced))
			return 0;
		e = __policy_lookup(ep_gen, deny, egress, (pass & 1) ? CB_IDENTITY_ANY : identity,
				    proto, port, wide);
		if (e) {
			__sync_fetch_and_add(&e->packets, 1);
			__sync_fetch_and_add(&e->bytes, len);
			events_note_policy(deny ? DROP_POLICY_DENY : 0, identity, e->match_type, e->proto,
					   e->port);
			return deny ? -DROP_POLICY_DENY : 0;
		}
	}
	events_note_policy(DROP_POLICY, identity, POLICY_MATCH_NONE, 0, 0);
	return -DROP_POLICY;
}

#endif /* CB_POLICY_H */
