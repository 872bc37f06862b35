/* SPDX-License-Identifier: GPL-2.0 */
/* Source NAT of NodePort/HostPort flows whose backend is on another node:
 * from_netdev rewrites the client's address to this node's and picks a port,
 * so the backend's replies come back through this node, where the same
 * program restores the client as destination and the frontend as source.
 *
 * Two LRU maps per family: forward (the DNATed flow -> the port it got) and
 * reverse (the reply as it arrives -> the client and the frontend id).
 * Ports come from [CB_SNAT_PORT_MIN, CB_SNAT_PORT_MAX], chosen by flow hash
 * with a few probes on collision.
 *
 * API: snat4_lookup_reply(), snat4_assign(), snat6_lookup_reply(), snat6_assign()
 */
#ifndef CB_SNAT_H
#define CB_SNAT_H

#include "lib/common.h"
#include "lib/ct.h"
#include "lib/drop.h"
#include "lib/hash.h"

#define CB_SNAT_PORT_MIN	32768	/* above the NodePort range, as Cilium's NAT */
#define CB_SNAT_PORT_MAX	65535
#define CB_SNAT_PROBES		8
#ifndef CB_SNAT_MAX
#define CB_SNAT_MAX		131072
#endif

/* The far side of a source-NATed flow: who to give a reply back to. */
struct snat_entry {
	union v6addr addr;	/* forward map: the node address used; reverse: the client */
	__be16 port;		/* forward: the port chosen; reverse: the client's port */
	__u16  pad;
	__u32  rev_nat_index;	/* reverse: the frontend the client talked to */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_SNAT_MAX);
	__type(key, struct ct4_tuple);	/* the DNATed packet: client -> backend */
	__type(value, struct snat_entry);
} cb_snat4_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_SNAT_MAX);
	__type(key, struct ct4_tuple);	/* the reply as it arrives: backend -> node:port */
	__type(value, struct snat_entry);
} cb_snat4_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_SNAT_MAX);
	__type(key, struct ct6_tuple);
	__type(value, struct snat_entry);
} cb_snat6_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_SNAT_MAX);
	__type(key, struct ct6_tuple);
	__type(value, struct snat_entry);
} cb_snat6_rev SEC(".maps");

static __always_inline __be16 __snat_port(__u32 hash, int probe)
{
	__u32 span = CB_SNAT_PORT_MAX - CB_SNAT_PORT_MIN + 1;

	return bpf_htons(CB_SNAT_PORT_MIN + (hash + probe * 7919) % span);
}

/* The entry for a reply arriving at (daddr:dport) from (saddr:sport), if any. */
static __always_inline struct snat_entry *snat4_lookup_reply(__be32 saddr, __be32 daddr,
							     __be16 sport, __be16 dport, __u8 proto)
{
	struct ct4_tuple key = { .daddr = daddr, .saddr = saddr, .dport = dport,
				 .sport = sport, .nexthdr = proto };

	return bpf_map_lookup_elem(&cb_snat4_rev, &key);
}

/* Give the flow client -> backend (already DNATed) a source port on node_ip;
 * the same flow keeps its port.  Returns the port or 0 if none was free. */
static __always_inline __be16 snat4_assign(__be32 client, __be16 cport, __be32 backend,
					   __be16 bport, __u8 proto, __be32 node_ip,
					   __u32 rev_nat_index)
{
	struct ct4_tuple fwd = { .daddr = backend, .saddr = client, .dport = bport,
				 .sport = cport, .nexthdr = proto };
	struct ct4_tuple rev = { .daddr = node_ip, .saddr = backend, .sport = bport,
				 .nexthdr = proto };
	struct snat_entry *have = bpf_map_lookup_elem(&cb_snat4_fwd, &fwd);
	struct snat_entry back = { .port = cport, .rev_nat_index = rev_nat_index };
	struct snat_entry out = { .rev_nat_index = rev_nat_index };
	__u32 hash = flow_hash4(client, backend, cport, bport, proto, 0);
	int probe;

	if (have)
		return have->port;
	back.addr.p[0] = client;
	out.addr.p[0] = node_ip;
#pragma unroll
	for (probe = 0; probe < CB_SNAT_PROBES; probe++) {
		rev.dport = __snat_port(hash, probe);
		if (bpf_map_update_elem(&cb_snat4_rev, &rev, &back, BPF_NOEXIST) == 0) {
			out.port = rev.dport;
			bpf_map_update_elem(&cb_snat4_fwd, &fwd, &out, BPF_ANY);
			return rev.dport;
		}
	}
	return 0;
}

static __always_inline struct snat_entry *snat6_lookup_reply(const union v6addr *saddr,
							     const union v6addr *daddr,
							     __be16 sport, __be16 dport, __u8 proto)
{
	struct ct6_tuple key = { .dport = dport, .sport = sport, .nexthdr = proto };

	key.daddr = *daddr;
	key.saddr = *saddr;
	return bpf_map_lookup_elem(&cb_snat6_rev, &key);
}

static __always_inline __be16 snat6_assign(const union v6addr *client, __be16 cport,
					   const union v6addr *backend, __be16 bport, __u8 proto,
					   const union v6addr *node_ip, __u32 rev_nat_index)
{
	struct ct6_tuple fwd = { .dport = bport, .sport = cport, .nexthdr = proto };
	struct ct6_tuple rev = { .sport = bport, .nexthdr = proto };
	struct snat_entry back = { .port = cport, .rev_nat_index = rev_nat_index };
	struct snat_entry out = { .rev_nat_index = rev_nat_index };
	struct snat_entry *have;
	__u32 hash;
	int probe;

	fwd.daddr = *backend;
	fwd.saddr = *client;
	have = bpf_map_lookup_elem(&cb_snat6_fwd, &fwd);
	if (have)
		return have->port;
	rev.daddr = *node_ip;
	rev.saddr = *backend;
	back.addr = *client;
	out.addr = *node_ip;
	hash = flow_hash6(client, backend, cport, bport, proto, 0);
#pragma unroll
	for (probe = 0; probe < CB_SNAT_PROBES; probe++) {
		rev.dport = __snat_port(hash, probe);
		if (bpf_map_update_elem(&cb_snat6_rev, &rev, &back, BPF_NOEXIST) == 0) {
			out.port = rev.dport;
			bpf_map_update_elem(&cb_snat6_fwd, &fwd, &out, BPF_ANY);
			return rev.dport;
		}
	}
	return 0;
}

#endif /* CB_SNAT_H */
