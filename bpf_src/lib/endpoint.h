/* SPDX-License-Identifier: GPL-2.0 */
/* Which endpoint an lxc program runs for: its id and its own addresses.
 *
 * Two builds of the same source (the Makefile's lxc.bpf.o and lxc-shared.bpf.o):
 *  - per endpoint (lxc: test-run, the security suites, the micro benchmark):
 *    the loader sets endpoint_id, endpoint_ip4 and endpoint_ip6 (Cilium
 *    compiles them in as LXC_ID, LXC_IPV4, LXC_IPV6).  endpoint_id 0 is no
 *    endpoint at all (the load balancer tested alone): no source check, no
 *    policy.
 *  - shared by a node (lxc-shared, CB_ENDPOINT_SHARED: the node loads it once
 *    and every pod's veth runs the same programs): the endpoint is the
 *    entry of cb_endpoint_config for the interface the packet is on.
 *    from_container runs at the host-side veth's tc ingress, to_container at
 *    its tc egress; in both skb->ifindex is that veth (the device the packet
 *    arrives on, resp. leaves by), which the pod cannot choose.  An interface
 *    without an entry has no endpoint to speak as: its packets are dropped
 *    (DROP_NO_CONFIG), never let through unchecked.
 * A compile-time choice, not a const volatile one: a runtime switch, even
 * one the verifier resolves, made the per-endpoint programs ~30 ns slower
 * per packet (the id read from the packet's metadata instead of rodata).
 *
 * An unset address (0, ::) means the endpoint has none of that family and
 * may send none.
 *
 * API: self = endpoint_self(skb); endpoint_unknown(self): drop it;
 * endpoint_id_of(self), endpoint_owns4(self, addr), endpoint_owns6(self, addr).
 */
#ifndef CB_ENDPOINT_H
#define CB_ENDPOINT_H

#include "lib/common.h"

#ifndef CB_ENDPOINT_CONFIG_MAX
#define CB_ENDPOINT_CONFIG_MAX	4096
#endif

struct endpoint_config {
	__u32 id;		/* endpoint id (cb_endpoints, policy, metrics) */
	__be32 ip4;		/* its IPv4 address, 0: none */
	union v6addr ip6;	/* its IPv6 address, ::: none */
};

/* The node's endpoints by host-side veth ifindex (shared mode). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_ENDPOINT_CONFIG_MAX);
	__type(key, __u32);
	__type(value, struct endpoint_config);
} cb_endpoint_config SEC(".maps");

/* Set per endpoint by the loader (per-endpoint build). */
const volatile __u32 endpoint_id = 0;
const volatile __be32 endpoint_ip4 = 0;
const volatile union v6addr endpoint_ip6 = {};

#ifdef CB_ENDPOINT_SHARED
/* The entry of the interface the packet on *skb* is on, NULL when it has none. */
static __always_inline const struct endpoint_config *endpoint_self(const struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;

	return bpf_map_lookup_elem(&cb_endpoint_config, &ifindex);
}

/* A shared program on an interface without an entry, or whose entry names no
 * endpoint (id 0: which the per-endpoint build reads as "check nothing"): drop
 * (fail closed). */
static __always_inline bool endpoint_unknown(const struct endpoint_config *self)
{
	return !self || !self->id;
}

static __always_inline __u32 endpoint_id_of(const struct endpoint_config *self)
{
	return self->id;
}

static __always_inline bool endpoint_owns4(const struct endpoint_config *self, __be32 addr)
{
	return addr == self->ip4;
}

static __always_inline bool endpoint_owns6(const struct endpoint_config *self,
					   const union v6addr *addr)
{
	return addr->d[0] == self->ip6.d[0] && addr->d[1] == self->ip6.d[1];
}
#else
/* Per endpoint: no lookup, *self* is NULL and never read; the loader's values are
 * read instead, so this build is what it was before shared programs existed. */
static __always_inline const struct endpoint_config *endpoint_self(const struct __sk_buff *skb)
{
	return NULL;
}

static __always_inline bool endpoint_unknown(const struct endpoint_config *self)
{
	return false;
}

/* The endpoint id; 0: no endpoint (no source check, no policy). */
static __always_inline __u32 endpoint_id_of(const struct endpoint_config *self)
{
	return endpoint_id;
}

static __always_inline bool endpoint_owns4(const struct endpoint_config *self, __be32 addr)
{
	return addr == endpoint_ip4;
}

static __always_inline bool endpoint_owns6(const struct endpoint_config *self,
					   const union v6addr *addr)
{
	return addr->d[0] == endpoint_ip6.d[0] && addr->d[1] == endpoint_ip6.d[1];
}
#endif

#endif /* CB_ENDPOINT_H */
