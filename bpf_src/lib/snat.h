/* SPDX-License-Identifier: GPL-2.0 */
/* Source NAT of NodePort/HostPort flows whose backend is on another node:
 * from_netdev rewrites the client's address to this node's and picks a port,
 * so the backend's replies come back through this node, where the same
 * program restores the client as destination and the frontend as source.
 *
 * Two LRU maps per family: forward (the DNATed flow -> the port it got) and
 * reverse (the reply as it arrives -> the client and the frontend id).  The
 * reverse entry is the mapping: it owns its port for (node address, backend,
 * backend port, protocol) and carries a lifetime that forward and reply
 * traffic refresh with conntrack's knobs (TCP SYN / established / closing,
 * non-TCP); once it has passed, the port may go to another flow and replies
 * no longer match.
 *
 * A new flow's port, from [CB_SNAT_PORT_MIN, CB_SNAT_PORT_MAX]: the flow
 * hash's port, then CB_SNAT_RETRIES random ones (as Cilium retries), a port
 * held by an expired mapping being as good as a free one; then, on kernels
 * with bpf_loop (5.17+; the CB_NO_BPF_LOOP build for older ones stops after
 * the random probes), every port from the hashed one on, so a flow is
 * refused only when the range is really exhausted.  SCTP keeps the client's
 * port: its CRC32c covers the ports, and a port change would need it
 * recomputed over the whole packet.
 *
 * cb_snat_stats counts, per family (index 0: IPv4, 1: IPv6) and per CPU:
 * allocated (new mappings), collisions (ports tried and found held by a live
 * mapping), reused (allocations that took over an expired mapping) and
 * exhausted (new flows dropped with DROP_NAT_NO_MAPPING); harness/snat.py
 * reads them.
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
#define CB_SNAT_PORT_SPAN	(CB_SNAT_PORT_MAX - CB_SNAT_PORT_MIN + 1)
#define CB_SNAT_RETRIES		32	/* random probes after the hashed one (Cilium: 32) */
#ifndef CB_SNAT_MAX
#define CB_SNAT_MAX		131072
#endif

/* snat_entry.flags: TCP state of a mapping, for its lifetime (as ct.h's) */
#define SNAT_F_SEEN_NON_SYN	(1 << 0)
#define SNAT_F_TX_CLOSING	(1 << 1)
#define SNAT_F_RX_CLOSING	(1 << 2)

#define SNAT_STATS_V4		0
#define SNAT_STATS_V6		1

/* The far side of a source-NATed flow: who to give a reply back to. */
struct snat_entry {
	union v6addr addr;	/* forward map: the node address used; reverse: the client */
	__be16 port;		/* forward: the port chosen; reverse: the client's port */
	__u8   flags;		/* reverse: SNAT_F_* */
	__u8   pad;
	__u32  rev_nat_index;	/* the frontend the client talked to */
	__u32  lifetime;	/* reverse: expiry, monotonic seconds; forward: 0 */
	__u32  created;		/* monotonic seconds */
};

/* Allocation figures, per family; summed over CPUs by the reader. */
struct snat_stats {
	__u64 allocated;
	__u64 collisions;
	__u64 reused;
	__u64 exhausted;
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct snat_stats);
} cb_snat_stats SEC(".maps");

static __always_inline __be16 __snat_port(__u32 n)
{
	return bpf_htons(CB_SNAT_PORT_MIN + n % CB_SNAT_PORT_SPAN);
}

/* Account a packet of the mapping's flow: TCP state and lifetime. */
static __always_inline void __snat_touch(struct snat_entry *e, __u8 proto, __u8 tcp_flags,
					 bool reply, __u32 now)
{
	__u8 flags = e->flags;
	__u32 lifetime;

	if (proto != IPPROTO_TCP) {
		lifetime = ct_lifetime_nontcp;
	} else {
		if ((tcp_flags & TCP_FLAG_SYN) && !(tcp_flags & TCP_FLAG_ACK) &&
		    (flags & (SNAT_F_TX_CLOSING | SNAT_F_RX_CLOSING)))
			/* A new SYN on a closing tuple: the port is being reused. */
			flags = 0;
		if (tcp_flags & TCP_FLAG_RST)
			flags |= SNAT_F_TX_CLOSING | SNAT_F_RX_CLOSING;
		else if (tcp_flags & TCP_FLAG_FIN)
			flags |= reply ? SNAT_F_RX_CLOSING : SNAT_F_TX_CLOSING;
		if (!(tcp_flags & TCP_FLAG_SYN))
			flags |= SNAT_F_SEEN_NON_SYN;
		if ((flags & (SNAT_F_TX_CLOSING | SNAT_F_RX_CLOSING)) ==
		    (SNAT_F_TX_CLOSING | SNAT_F_RX_CLOSING))
			lifetime = ct_lifetime_close;
		else if (flags & SNAT_F_SEEN_NON_SYN)
			lifetime = ct_lifetime_tcp;
		else
			lifetime = ct_lifetime_syn;
	}
	if (e->flags != flags)
		e->flags = flags;
	if (e->lifetime != now + lifetime)
		e->lifetime = now + lifetime;
}

/* Counts of one allocation, added to cb_snat_stats once at its end. */
struct __snat_tally {
	__u64 collisions;
	__u64 reused;
};

/* Give the port in *key (a reverse-map key) to *val: free, or held by an
 * expired mapping.  Looked up before inserting: a failed insert into a full
 * LRU map would evict some live entry for nothing.  Two CPUs taking over
 * the same expired port at the same instant can both succeed (there is no
 * compare-and-swap before 5.12); the later write wins the replies.
 * true if the port is now *val*'s. */
static __always_inline bool __snat_try(void *map, void *key, struct snat_entry *val,
				       __u32 now, struct __snat_tally *tally)
{
	struct snat_entry *old = bpf_map_lookup_elem(map, key);

	if (!old)
		return bpf_map_update_elem(map, key, val, BPF_NOEXIST) == 0;
	if (old->lifetime >= now) {
		tally->collisions++;
		return false;
	}
	if (bpf_map_update_elem(map, key, val, BPF_ANY) < 0)
		return false;
	tally->reused++;
	return true;
}

static __always_inline void __snat_count(__u32 family, const struct __snat_tally *tally,
					 bool allocated)
{
	struct snat_stats *s = bpf_map_lookup_elem(&cb_snat_stats, &family);

	if (!s)
		return;
	/* Per-CPU value: plain adds are safe. */
	s->collisions += tally->collisions;
	s->reused += tally->reused;
	if (allocated)
		s->allocated += 1;
	else
		s->exhausted += 1;
}

/* State of one IPv4/IPv6 allocation, shared with the bpf_loop callbacks. */
struct __snat4_alloc {
	struct ct4_tuple key;		/* reverse-map key; dport: the port tried */
	struct snat_entry val;
	struct __snat_tally tally;
	__u32 start;
	__u32 now;
	bool found;
};

struct __snat6_alloc {
	struct ct6_tuple key;
	struct snat_entry val;
	struct __snat_tally tally;
	__u32 start;
	__u32 now;
	bool found;
};

#ifndef CB_NO_BPF_LOOP
/* bpf_loop callbacks (called, so not inlined): try port start + i + 1.
 * Return 1 to stop the loop.  A callback is loaded as a function pointer
 * (ld_imm64 BPF_PSEUDO_FUNC), which verifiers before 5.13 refuse wherever it
 * stands, dead branch or not ("number of funcs in func_info doesn't match
 * number of subprogs" on 5.10): the Makefile also builds this object with
 * CB_NO_BPF_LOOP, and the loader takes that build on kernels without bpf_loop. */
static long __snat4_scan_one(__u32 i, void *ctx)
{
	struct __snat4_alloc *a = ctx;

	a->key.dport = __snat_port(a->start + i + 1);
	a->found = __snat_try(&cb_snat4_rev, &a->key, &a->val, a->now, &a->tally);
	return a->found;
}

static long __snat6_scan_one(__u32 i, void *ctx)
{
	struct __snat6_alloc *a = ctx;

	a->key.dport = __snat_port(a->start + i + 1);
	a->found = __snat_try(&cb_snat6_rev, &a->key, &a->val, a->now, &a->tally);
	return a->found;
}
#endif /* CB_NO_BPF_LOOP */

/* The probes every kernel runs: the hashed port, then random ones.  *dport
 * is the port field of *key*, which differs by family. */
static __always_inline bool __snat_probe(void *map, void *key, __be16 *dport,
					 struct snat_entry *val, __u32 start, __u32 now,
					 struct __snat_tally *tally)
{
	int i;

	for (i = 0; i <= CB_SNAT_RETRIES; i++) {
		*dport = __snat_port(i ? bpf_get_prandom_u32() : start);
		if (__snat_try(map, key, val, now, tally))
			return true;
	}
	return false;
}

/* The entry for a reply arriving at (daddr:dport) from (saddr:sport), if its
 * mapping is live; the reply refreshes it. */
static __always_inline struct snat_entry *snat4_lookup_reply(__be32 saddr, __be32 daddr,
							     __be16 sport, __be16 dport, __u8 proto,
							     __u8 tcp_flags, __u32 now)
{
	struct ct4_tuple key = { .daddr = daddr, .saddr = saddr, .dport = dport,
				 .sport = sport, .nexthdr = proto };
	struct snat_entry *e = bpf_map_lookup_elem(&cb_snat4_rev, &key);

	if (!e || e->lifetime < now)
		return NULL;
	__snat_touch(e, proto, tcp_flags, true, now);
	return e;
}

/* Give the flow client -> backend (already DNATed) a source port on node_ip;
 * the same flow keeps its port while its mapping is its own.  Returns the
 * port, or 0 if none was free (counted as exhausted). */
static __always_inline __be16 snat4_assign(__be32 client, __be16 cport, __be32 backend,
					   __be16 bport, __u8 proto, __be32 node_ip,
					   __u32 rev_nat_index, __u8 tcp_flags, __u32 now)
{
	struct ct4_tuple fwd = { .daddr = backend, .saddr = client, .dport = bport,
				 .sport = cport, .nexthdr = proto };
	struct snat_entry out = { .rev_nat_index = rev_nat_index, .created = now };
	struct __snat4_alloc a = {
		.key = { .daddr = node_ip, .saddr = backend, .sport = bport, .nexthdr = proto },
		.val = { .port = cport, .rev_nat_index = rev_nat_index, .created = now },
		.now = now,
	};
	struct snat_entry *have = bpf_map_lookup_elem(&cb_snat4_fwd, &fwd), *e;

	if (have) {
		a.key.dport = have->port;
		e = bpf_map_lookup_elem(&cb_snat4_rev, &a.key);
		/* Still this flow's (even if expired: nobody took the port over). */
		if (e && e->addr.p[0] == client && e->port == cport) {
			__snat_touch(e, proto, tcp_flags, false, now);
			return have->port;
		}
	}
	a.val.addr.p[0] = client;
	__snat_touch(&a.val, proto, tcp_flags, false, now);
	if (proto == IPPROTO_SCTP) {
		a.key.dport = cport;
		a.found = __snat_try(&cb_snat4_rev, &a.key, &a.val, now, &a.tally);
	} else {
		a.start = flow_hash4(client, backend, cport, bport, proto, 0) % CB_SNAT_PORT_SPAN;
		a.found = __snat_probe(&cb_snat4_rev, &a.key, &a.key.dport, &a.val, a.start,
				       now, &a.tally);
#ifndef CB_NO_BPF_LOOP
		if (!a.found)
			bpf_loop(CB_SNAT_PORT_SPAN, __snat4_scan_one, &a, 0);
#endif
	}
	__snat_count(SNAT_STATS_V4, &a.tally, a.found);
	if (!a.found)
		return 0;
	out.addr.p[0] = node_ip;
	out.port = a.key.dport;
	bpf_map_update_elem(&cb_snat4_fwd, &fwd, &out, BPF_ANY);
	return out.port;
}

static __always_inline struct snat_entry *snat6_lookup_reply(const union v6addr *saddr,
							     const union v6addr *daddr,
							     __be16 sport, __be16 dport, __u8 proto,
							     __u8 tcp_flags, __u32 now)
{
	struct ct6_tuple key = { .dport = dport, .sport = sport, .nexthdr = proto };
	struct snat_entry *e;

	key.daddr = *daddr;
	key.saddr = *saddr;
	e = bpf_map_lookup_elem(&cb_snat6_rev, &key);
	if (!e || e->lifetime < now)
		return NULL;
	__snat_touch(e, proto, tcp_flags, true, now);
	return e;
}

static __always_inline __be16 snat6_assign(const union v6addr *client, __be16 cport,
					   const union v6addr *backend, __be16 bport, __u8 proto,
					   const union v6addr *node_ip, __u32 rev_nat_index,
					   __u8 tcp_flags, __u32 now)
{
	struct ct6_tuple fwd = { .dport = bport, .sport = cport, .nexthdr = proto };
	struct snat_entry out = { .rev_nat_index = rev_nat_index, .created = now };
	struct __snat6_alloc a = {
		.key = { .sport = bport, .nexthdr = proto },
		.val = { .port = cport, .rev_nat_index = rev_nat_index, .created = now },
		.now = now,
	};
	struct snat_entry *have, *e;

	fwd.daddr = *backend;
	fwd.saddr = *client;
	a.key.daddr = *node_ip;
	a.key.saddr = *backend;
	have = bpf_map_lookup_elem(&cb_snat6_fwd, &fwd);
	if (have) {
		a.key.dport = have->port;
		e = bpf_map_lookup_elem(&cb_snat6_rev, &a.key);
		if (e && e->addr.d[0] == client->d[0] && e->addr.d[1] == client->d[1] &&
		    e->port == cport) {
			__snat_touch(e, proto, tcp_flags, false, now);
			return have->port;
		}
	}
	a.val.addr = *client;
	__snat_touch(&a.val, proto, tcp_flags, false, now);
	if (proto == IPPROTO_SCTP) {
		a.key.dport = cport;
		a.found = __snat_try(&cb_snat6_rev, &a.key, &a.val, now, &a.tally);
	} else {
		a.start = flow_hash6(client, backend, cport, bport, proto, 0) % CB_SNAT_PORT_SPAN;
		a.found = __snat_probe(&cb_snat6_rev, &a.key, &a.key.dport, &a.val, a.start,
				       now, &a.tally);
#ifndef CB_NO_BPF_LOOP
		if (!a.found)
			bpf_loop(CB_SNAT_PORT_SPAN, __snat6_scan_one, &a, 0);
#endif
	}
	__snat_count(SNAT_STATS_V6, &a.tally, a.found);
	if (!a.found)
		return 0;
	out.addr = *node_ip;
	out.port = a.key.dport;
	bpf_map_update_elem(&cb_snat6_fwd, &fwd, &out, BPF_ANY);
	return out.port;
}

#endif /* CB_SNAT_H */
