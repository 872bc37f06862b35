/* SPDX-License-Identifier: GPL-2.0 */
/* Service load balancing: the services, backends, reverse-NAT, Maglev,
 * affinity and per-service counter maps, and backend selection.
 *
 * Layout follows Cilium's services map: one entry per frontend
 * (VIP, port, protocol) with backend_slot 0 holding the service (count of
 * active backends, reverse-NAT index, flags, affinity timeout), and entries
 * with slots 1..count holding one backend id each.  Unlike Cilium,
 * rev_nat_index is 32 bits wide, so more than 65,535 frontends fit.
 *
 * Two scopes (Cilium's design): a frontend whose external and internal
 * clients may reach different backends (externalTrafficPolicy and
 * internalTrafficPolicy differ on a NodePort, LoadBalancer or external IP)
 * has two service entries, scope LB_SCOPE_EXT (node-local backends with
 * ETP Local) and LB_SCOPE_INT (every backend, or the node's own with ITP
 * Local), each with its own slots.  The EXT entry, the one every lookup
 * finds first, carries SVC_F_TWO_SCOPES; from_netdev (clients outside the
 * node) stays on it, from_container and the socket LB (pods and host
 * processes) move on to the INT entry (lb*_lookup_service_internal).  Both
 * entries share the rev_nat_index: replies, counters and source ranges are
 * the frontend's.  The INT entry carries SVC_F_INT_SCOPE, so selection
 * reads its own slots, Maglev table (key rev_nat_index | CB_MAGLEV_INT_KEY)
 * and affinity entries.  Cost: a frontend without the flag pays one flag
 * test; a two-scope one a second hash lookup, at internal clients only.
 *
 * loadBalancerSourceRanges: a LoadBalancer frontend with ranges carries
 * SVC_F_SOURCE_RANGE and has one cb_lb{4,6}_source_range entry per range,
 * keyed (rev_nat_index, range) in an LPM trie (Cilium's lb4_source_range
 * layout, with our 32-bit rev_nat_index).  lb*_src_range_ok() drops (177,
 * DROP_NOT_IN_SRC_RANGE) a client outside them before any backend is
 * chosen; a frontend without the flag pays one flag test.  Where: Cilium
 * checks only traffic from outside the node (nodeport_lb*); we follow
 * kube-proxy, whose KUBE-FW chain (iptables) and firewall set (nftables)
 * filter every client of the LB IP, pods and host processes included, so
 * from_netdev and from_container both check, and the socket LB leaves such
 * frontends to from_container (connect() does not know the source address
 * yet; the packet does).
 *
 * API: lb4_lookup_service(), lb6_lookup_service() (scope EXT),
 *      lb4_lookup_service_internal(), lb6_lookup_service_internal(),
 *      lb4_src_range_ok(), lb6_src_range_ok(), lb4_lookup_backend(),
 *      lb6_lookup_backend(), lb4_select_backend(), lb6_select_backend(),
 *      lb_count_service()
 */
#ifndef CB_LB_H
#define CB_LB_H

#include "lib/common.h"
#include "lib/hash.h"

#ifndef CB_LB_SERVICES_MAX
#define CB_LB_SERVICES_MAX	65536	/* frontends + their backend slots */
#endif
#ifndef CB_LB_BACKENDS_MAX
#define CB_LB_BACKENDS_MAX	65536
#endif
#ifndef CB_LB_REVNAT_MAX
#define CB_LB_REVNAT_MAX	65536	/* frontends: reverse-NAT entries and counters */
#endif
#ifndef CB_LB_AFFINITY_MAX
#define CB_LB_AFFINITY_MAX	65536
#endif
#ifndef CB_MAGLEV_TABLE_SIZE
#define CB_MAGLEV_TABLE_SIZE	16381	/* a prime, Cilium's default M */
#endif
#define CB_MAGLEV_SERVICES_MAX	8192
#ifndef CB_LB_SRC_RANGE_MAX
#define CB_LB_SRC_RANGE_MAX	16384	/* loadBalancerSourceRanges entries, per family */
#endif
/* The Maglev table of a frontend's INT scope: its rev_nat_index with this bit. */
#define CB_MAGLEV_INT_KEY	0x80000000

/* lb*_key.scope */
#define LB_SCOPE_EXT		0
#define LB_SCOPE_INT		1

/* lb_service.flags */
#define SVC_F_CLUSTERIP		(1 << 0)
#define SVC_F_NODEPORT		(1 << 1)
#define SVC_F_EXTERNAL_IP	(1 << 2)
#define SVC_F_HOSTPORT		(1 << 3)
#define SVC_F_LOADBALANCER	(1 << 4)
#define SVC_F_AFFINITY		(1 << 5)	/* sessionAffinity: ClientIP */
#define SVC_F_MAGLEV		(1 << 6)	/* Maglev instead of random selection */
#define SVC_F_LOCAL_SCOPE	(1 << 7)	/* externalTrafficPolicy: Local */
#define SVC_F_VIP		(1 << 8)	/* address-only entry (port 0, proto 0) */
#define SVC_F_TWO_SCOPES	(1 << 9)	/* EXT entry: internal clients use the INT entry */
#define SVC_F_INT_SCOPE		(1 << 10)	/* this is the INT scope's entry */
#define SVC_F_SOURCE_RANGE	(1 << 11)	/* loadBalancerSourceRanges: check the client */
#define SVC_F_INT_LOCAL		(1 << 12)	/* internalTrafficPolicy: Local */

/* lb*_backend.state, Cilium's values */
#define BE_STATE_ACTIVE		0
#define BE_STATE_TERMINATING	1
#define BE_STATE_QUARANTINED	2
#define BE_STATE_MAINTENANCE	3

struct lb4_key {
	__be32 address;		/* frontend address */
	__be16 dport;		/* frontend port; 0 in the address-only entry */
	__u16  backend_slot;	/* 0: the service entry; 1..count: backend slots */
	__u8   proto;		/* IPPROTO_TCP/UDP/SCTP; 0 in the address-only entry */
	__u8   scope;		/* LB_SCOPE_EXT, or LB_SCOPE_INT for a two-scope frontend */
	__u8   pad[2];
};

struct lb6_key {
	union v6addr address;
	__be16 dport;
	__u16  backend_slot;
	__u8   proto;
	__u8   scope;
	__u8   pad[2];
};

/* Value of both services maps.  Slot entries use backend_id only. */
struct lb_service {
	__u32 backend_id;	/* slot entries: the backend in this slot */
	__u32 affinity_timeout;	/* seconds, with SVC_F_AFFINITY */
	__u32 rev_nat_index;	/* frontend id: reverse NAT, counters, Maglev table */
	__u16 count;		/* active backends (slots 1..count) */
	__u16 flags;		/* SVC_F_* */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8   proto;
	__u8   state;		/* BE_STATE_* */
};

struct lb6_backend {
	union v6addr address;
	__be16 port;
	__u8   proto;
	__u8   state;
};

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16  pad;
};

struct lb6_reverse_nat {
	union v6addr address;
	__be16 port;
	__u16  pad;
};

/* Session affinity: one map for both families; socket LB keys by netns cookie. */
struct lb_affinity_key {
	union v6addr client;	/* IPv4 in p[0]; netns cookie in d[0] */
	__u32 rev_nat_index;
	__u8  family;		/* 4, 6, or 0 for a netns cookie */
	__u8  scope;		/* LB_SCOPE_*: each scope has its own backends */
	__u8  pad[2];
};

/* loadBalancerSourceRanges, LPM trie keys: prefixlen counts the 32 bits of
 * rev_nat_index (always matched whole) plus the range's prefix length. */
struct lb4_src_range_key {
	__u32  prefixlen;
	__u32  rev_nat_index;
	__be32 address;
};

struct lb6_src_range_key {
	__u32  prefixlen;
	__u32  rev_nat_index;
	union v6addr address;
};

#define LB_SRC_RANGE_STATIC_PREFIX	32	/* the rev_nat_index bits */

struct lb_affinity_val {
	__u64 last_used;	/* monotonic seconds */
	__u32 backend_id;
	__u32 pad;
};

struct lb_maglev_table {
	__u32 backend_ids[CB_MAGLEV_TABLE_SIZE];
};

/* The services, backends and reverse-NAT maps are preallocated: a full sync
 * writes every entry at once, and BPF_MAP_UPDATE_BATCH into a preallocated
 * hash map costs about half of what it costs with BPF_F_NO_PREALLOC, which
 * allocates per element (python -m bench.map_floor measures it).  The price is
 * max_entries elements of memory up front, and the reuse race of preallocated
 * hash maps: the element an update replaces or a delete removes goes back to
 * the free list at once, and the next write on that CPU may reuse it while a
 * packet on another CPU is still reading it.  Such a packet reads the entry
 * written into the element instead: another frontend's slot (a valid backend,
 * of another service; egress policy still judges the translated address) or
 * service entry (a count with no matching slot: dropped as no backend).  The
 * window is a map read long and opens only while the control plane writes. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_SERVICES_MAX);
	__type(key, struct lb4_key);
	__type(value, struct lb_service);
} cb_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_SERVICES_MAX);
	__type(key, struct lb6_key);
	__type(value, struct lb_service);
} cb_lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lb4_backend);
} cb_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lb6_backend);
} cb_lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_REVNAT_MAX);
	__type(key, __u32);
	__type(value, struct lb4_reverse_nat);
} cb_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CB_LB_REVNAT_MAX);
	__type(key, __u32);
	__type(value, struct lb6_reverse_nat);
} cb_lb6_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_LB_AFFINITY_MAX);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_val);
} cb_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CB_LB_SRC_RANGE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_src_range_key);
	__type(value, __u8);
} cb_lb4_source_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CB_LB_SRC_RANGE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb6_src_range_key);
	__type(value, __u8);
} cb_lb6_source_range SEC(".maps");

/* Packets and bytes per frontend (index: rev_nat_index), for `chainbench services`. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CB_LB_REVNAT_MAX);
	__type(key, __u32);
	__type(value, struct traffic_counter);
} cb_lb_stats SEC(".maps");

/* Maglev: rev_nat_index -> a one-entry array holding the lookup table, as
 * Cilium keeps it (the harness creates one inner map per Maglev service). */
struct cb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	/* Sized, not typed: a struct seen only through this map would reach
	 * BTF as a forward declaration, which libbpf cannot size. */
	__uint(value_size, sizeof(struct lb_maglev_table));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, CB_MAGLEV_SERVICES_MAX);
	__type(key, __u32);
	__array(values, struct cb_maglev_inner);
} cb_lb_maglev SEC(".maps");

/* Seed of the Maglev flow hash: fixed per installation so that the same
 * 5-tuple keeps its backend across program reloads. */
const volatile __u32 maglev_seed = 0x63686e62;	/* "chnb" */

static __always_inline struct lb_service *
lb4_lookup_service(__be32 addr, __be16 dport, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = dport, .proto = proto };

	return bpf_map_lookup_elem(&cb_lb4_services, &key);
}

static __always_inline struct lb_service *
lb6_lookup_service(const union v6addr *addr, __be16 dport, __u8 proto)
{
	struct lb6_key key = { .dport = dport, .proto = proto };

	key.address = *addr;
	return bpf_map_lookup_elem(&cb_lb6_services, &key);
}

/* The entry internal clients (pods, host processes) use: the EXT entry, or
 * for a two-scope frontend its INT entry. */
static __always_inline struct lb_service *
lb4_lookup_service_internal(__be32 addr, __be16 dport, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = dport, .proto = proto };
	struct lb_service *svc = bpf_map_lookup_elem(&cb_lb4_services, &key);

	if (svc && (svc->flags & SVC_F_TWO_SCOPES)) {
		key.scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cb_lb4_services, &key);
	}
	return svc;
}

static __always_inline struct lb_service *
lb6_lookup_service_internal(const union v6addr *addr, __be16 dport, __u8 proto)
{
	struct lb6_key key = { .dport = dport, .proto = proto };
	struct lb_service *svc;

	key.address = *addr;
	svc = bpf_map_lookup_elem(&cb_lb6_services, &key);
	if (svc && (svc->flags & SVC_F_TWO_SCOPES)) {
		key.scope = LB_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cb_lb6_services, &key);
	}
	return svc;
}

/* May *saddr* use frontend *svc*?  Always, unless it has source ranges. */
static __always_inline bool lb4_src_range_ok(const struct lb_service *svc, __be32 saddr)
{
	struct lb4_src_range_key key;

	if (!(svc->flags & SVC_F_SOURCE_RANGE))
		return true;
	key.prefixlen = LB_SRC_RANGE_STATIC_PREFIX + 32;
	key.rev_nat_index = svc->rev_nat_index;
	key.address = saddr;
	return bpf_map_lookup_elem(&cb_lb4_source_range, &key) != NULL;
}

static __always_inline bool lb6_src_range_ok(const struct lb_service *svc,
					     const union v6addr *saddr)
{
	struct lb6_src_range_key key;

	if (!(svc->flags & SVC_F_SOURCE_RANGE))
		return true;
	key.prefixlen = LB_SRC_RANGE_STATIC_PREFIX + 128;
	key.rev_nat_index = svc->rev_nat_index;
	key.address = *saddr;
	return bpf_map_lookup_elem(&cb_lb6_source_range, &key) != NULL;
}

static __always_inline struct lb4_backend *lb4_lookup_backend(__u32 backend_id)
{
	return bpf_map_lookup_elem(&cb_lb4_backends, &backend_id);
}

static __always_inline struct lb6_backend *lb6_lookup_backend(__u32 backend_id)
{
	return bpf_map_lookup_elem(&cb_lb6_backends, &backend_id);
}

static __always_inline void lb_count_service(__u32 rev_nat_index, __u32 bytes)
{
	struct traffic_counter *c = bpf_map_lookup_elem(&cb_lb_stats, &rev_nat_index);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* *table_key*: the rev_nat_index, with CB_MAGLEV_INT_KEY for an INT scope. */
static __always_inline __u32 lb_maglev_pick(__u32 table_key, __u32 hash)
{
	struct lb_maglev_table *table;
	void *inner;
	__u32 zero = 0, idx;

	inner = bpf_map_lookup_elem(&cb_lb_maglev, &table_key);
	if (!inner)
		return 0;
	table = bpf_map_lookup_elem(inner, &zero);
	if (!table)
		return 0;
	idx = hash % CB_MAGLEV_TABLE_SIZE;
	barrier_var(idx);
	if (idx >= CB_MAGLEV_TABLE_SIZE)	/* for the verifier: it does not bound a modulo */
		return 0;
	return table->backend_ids[idx];
}

static __always_inline __u32 lb_affinity_get(struct lb_affinity_key *key, __u32 timeout,
					     __u32 now)
{
	struct lb_affinity_val *val = bpf_map_lookup_elem(&cb_lb_affinity, key);

	if (!val || val->last_used + timeout < now)
		return 0;
	val->last_used = now;
	return val->backend_id;
}

static __always_inline void lb_affinity_set(struct lb_affinity_key *key, __u32 backend_id,
					    __u32 now)
{
	struct lb_affinity_val val = { .last_used = now, .backend_id = backend_id };

	bpf_map_update_elem(&cb_lb_affinity, key, &val, BPF_ANY);
}

/* The backend id in slot 1..count of a service (0 if none). */
static __always_inline __u32 lb4_slot_backend(const struct lb4_key *svc_key, __u16 slot)
{
	struct lb4_key key = *svc_key;
	struct lb_service *entry;

	key.backend_slot = slot;
	entry = bpf_map_lookup_elem(&cb_lb4_services, &key);
	return entry ? entry->backend_id : 0;
}

static __always_inline __u32 lb6_slot_backend(const struct lb6_key *svc_key, __u16 slot)
{
	struct lb6_key key = *svc_key;
	struct lb_service *entry;

	key.backend_slot = slot;
	entry = bpf_map_lookup_elem(&cb_lb6_services, &key);
	return entry ? entry->backend_id : 0;
}

/* The scope whose slots, Maglev table and affinity entries *svc* selects from. */
static __always_inline __u8 lb_svc_scope(const struct lb_service *svc)
{
	return (svc->flags & SVC_F_INT_SCOPE) ? LB_SCOPE_INT : LB_SCOPE_EXT;
}

/* The Maglev table of *scope* of frontend *rev_nat_index*. */
static __always_inline __u32 lb_maglev_key(__u32 rev_nat_index, __u8 scope)
{
	return rev_nat_index | (scope == LB_SCOPE_INT ? CB_MAGLEV_INT_KEY : 0);
}

/* Choose a backend for a new flow from (saddr, sport) to frontend (vip,
 * vport, proto): affinity first, then Maglev or random, in the scope of the
 * entry *svc* (lb_svc_scope).  *cookie* is the netns cookie when socket LB
 * asks (affinity per network namespace), else 0.
 * Returns the backend id, 0 if the service has none. */
static __always_inline __u32 lb4_select_backend(const struct lb_service *svc, __be32 saddr,
						__be16 sport, __be32 vip, __be16 vport,
						__u8 proto, __u64 cookie, __u32 now)
{
	struct lb_affinity_key akey = {};
	__u32 backend_id = 0;
	__u8 scope;

	if (svc->count == 0)
		return 0;
	scope = lb_svc_scope(svc);
	if (svc->flags & SVC_F_AFFINITY) {
		if (cookie) {
			akey.client.d[0] = cookie;
		} else {
			akey.client.p[0] = saddr;
			akey.family = 4;
		}
		akey.rev_nat_index = svc->rev_nat_index;
		akey.scope = scope;
		backend_id = lb_affinity_get(&akey, svc->affinity_timeout, now);
		if (backend_id) {
			struct lb4_backend *be = lb4_lookup_backend(backend_id);

			if (be && be->state == BE_STATE_ACTIVE)
				return backend_id;
			backend_id = 0;
		}
	}
	if (svc->flags & SVC_F_MAGLEV) {
		backend_id = lb_maglev_pick(lb_maglev_key(svc->rev_nat_index, scope),
					    flow_hash4(saddr, vip, sport, vport, proto, maglev_seed));
	} else {
		struct lb4_key key = { .address = vip, .dport = vport, .proto = proto,
				       .scope = scope };

		backend_id = lb4_slot_backend(&key, (bpf_get_prandom_u32() % svc->count) + 1);
	}
	if (backend_id && (svc->flags & SVC_F_AFFINITY))
		lb_affinity_set(&akey, backend_id, now);
	return backend_id;
}

static __always_inline __u32 lb6_select_backend(const struct lb_service *svc,
						const union v6addr *saddr, __be16 sport,
						const union v6addr *vip, __be16 vport,
						__u8 proto, __u64 cookie, __u32 now)
{
	struct lb_affinity_key akey = {};
	__u32 backend_id = 0;
	__u8 scope;

	if (svc->count == 0)
		return 0;
	scope = lb_svc_scope(svc);
	if (svc->flags & SVC_F_AFFINITY) {
		if (cookie)
			akey.client.d[0] = cookie;
		else {
			akey.client = *saddr;
			akey.family = 6;
		}
		akey.rev_nat_index = svc->rev_nat_index;
		akey.scope = scope;
		backend_id = lb_affinity_get(&akey, svc->affinity_timeout, now);
		if (backend_id) {
			struct lb6_backend *be = lb6_lookup_backend(backend_id);

			if (be && be->state == BE_STATE_ACTIVE)
				return backend_id;
			backend_id = 0;
		}
	}
	if (svc->flags & SVC_F_MAGLEV) {
		backend_id = lb_maglev_pick(lb_maglev_key(svc->rev_nat_index, scope),
					    flow_hash6(saddr, vip, sport, vport, proto, maglev_seed));
	} else {
		struct lb6_key key = { .dport = vport, .proto = proto, .scope = scope };

		key.address = *vip;
		backend_id = lb6_slot_backend(&key, (bpf_get_prandom_u32() % svc->count) + 1);
	}
	if (backend_id && (svc->flags & SVC_F_AFFINITY))
		lb_affinity_set(&akey, backend_id, now);
	return backend_id;
}

#endif /* CB_LB_H */
