/* SPDX-License-Identifier: GPL-2.0 */
/* The L4 ports of fragmented datagrams.  Only a datagram's first fragment
 * carries the L4 header; keyed with ports 0, the later ones would miss every
 * conntrack, service and NAT entry of their flow (a large UDP answer from a
 * backend would reach the client with the backend's address and never be
 * reassembled).  As Cilium's IPv4/IPv6 fragment maps do, a first fragment
 * records its ports under (source, destination, IP id, protocol), and a later
 * fragment takes them from there (PKT_F_FRAG_PORTS), so it is tracked,
 * translated and policed like its first fragment.  Its rewrites are address
 * only: the L4 header and checksum travel in the first fragment, whose
 * incremental update already covers the whole datagram's pseudo-header.
 *
 * A later fragment seen before its first (or after its entry was evicted)
 * keeps no ports: policy.h checks it as protocol/port 0.  Entries are keyed by
 * the addresses as each program sees them (before its own translation), so
 * every program of a node can share the maps.
 *
 * API: frag_track(&meta)
 */
#ifndef CB_FRAG_H
#define CB_FRAG_H

#include "lib/common.h"
#include "lib/parse.h"

#ifndef CB_FRAG_MAX
#define CB_FRAG_MAX	8192	/* datagrams in reassembly at once, Cilium's default */
#endif

struct frag4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;		/* the IPv4 identification */
	__u8   proto;
	__u8   pad;
};

struct frag6_key {
	union v6addr saddr;
	union v6addr daddr;
	__be32 id;		/* the fragment header's identification */
	__u8   proto;
	__u8   pad[3];
};

struct frag_ports {
	__be16 sport;
	__be16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_FRAG_MAX);
	__type(key, struct frag4_key);
	__type(value, struct frag_ports);
} cb_frag4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_FRAG_MAX);
	__type(key, struct frag6_key);
	__type(value, struct frag_ports);
} cb_frag6 SEC(".maps");

/* Protocols whose flows are keyed by ports (ICMP fragments keep today's handling). */
static __always_inline bool __frag_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

static __always_inline void __frag_use(struct pkt_meta *m, const struct frag_ports *ports)
{
	m->sport = ports->sport;
	m->dport = ports->dport;
	m->flags |= PKT_F_FRAG_PORTS;
}

/* A first fragment records its ports; a later one gets them back, if known. */
static __always_inline void frag_track(struct pkt_meta *m)
{
	struct frag_ports ports = { .sport = m->sport, .dport = m->dport }, *have;
	bool later = m->flags & PKT_F_LATER_FRAGMENT;

	if (!(m->flags & PKT_F_FRAGMENT) || !__frag_has_ports(m->l4_proto))
		return;
	if (!later && !(m->flags & PKT_F_L4))
		return;
	if (m->l3_proto == ETH_P_IP) {
		struct frag4_key key = {
			.saddr = m->saddr.p[0], .daddr = m->daddr.p[0],
			.id = (__be16)m->frag_id, .proto = m->l4_proto,
		};

		if (!later) {
			bpf_map_update_elem(&cb_frag4, &key, &ports, BPF_ANY);
			return;
		}
		have = bpf_map_lookup_elem(&cb_frag4, &key);
		if (have)
			__frag_use(m, have);
	} else if (m->l3_proto == ETH_P_IPV6) {
		struct frag6_key key = { .id = m->frag_id, .proto = m->l4_proto };

		key.saddr = m->saddr;
		key.daddr = m->daddr;
		if (!later) {
			bpf_map_update_elem(&cb_frag6, &key, &ports, BPF_ANY);
			return;
		}
		have = bpf_map_lookup_elem(&cb_frag6, &key);
		if (have)
			__frag_use(m, have);
	}
}

#endif /* CB_FRAG_H */
