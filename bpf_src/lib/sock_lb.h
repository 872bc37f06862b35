/* SPDX-License-Identifier: GPL-2.0 */
/* Socket-level load balancing (Cilium's "socket LB" / kube-proxy
 * replacement at the socket layer): cgroup sock_addr programs rewrite the
 * destination of connect() and of unconnected sendmsg() from a service
 * frontend to a backend before the stack routes anything, so a TCP flow
 * needs no per-packet NAT and no service conntrack entry; the per-packet
 * datapath (from_container) then sees packets already addressed to the
 * backend and does not translate them again.
 *
 * So that the application keeps seeing the frontend, every translation
 * records a reverse entry keyed by (socket cookie, backend address, backend
 * port) -> (frontend address, frontend port, rev_nat_index); getpeername()
 * and recvmsg() (UDP source address) map the backend back to the frontend.
 * A reverse entry whose frontend is gone, or now has another
 * rev_nat_index, is stale: it is deleted and the address left as it is
 * (Cilium's rule).  The maps are LRU: entries of closed sockets age out.
 *
 * Backend selection is lb*_select_backend() with the netns cookie as the
 * affinity key (session affinity per network namespace, as Cilium does at
 * the socket layer).  The source address is not known at connect time, so
 * Maglev hashes the socket cookie in its place: each socket keeps one
 * backend, different sockets spread.
 *
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d on a dual-stack socket)
 * are translated through the IPv4 maps and written back mapped; their
 * reverse entries live in the IPv4 reverse map.  (The kernel runs only the
 * connect6 hook for such a connect, and recvmsg6/getpeername6 see mapped
 * addresses, so leaving them alone would let dual-stack clients bypass LB.)
 *
 * Sockets are internal clients: a two-scope frontend's INT entry
 * (lib/lb.h).  A frontend with loadBalancerSourceRanges is left alone here:
 * connect() does not know the source address the packet will carry, so the
 * per-packet datapath (from_container) checks it and translates.
 *
 * Translations are counted per frontend in cb_lb_stats: one "packet" per
 * connect()/sendmsg() translated, 0 bytes (the hooks do not see the
 * payload length).
 *
 * API: sock4_xlate_fwd(), sock6_xlate_fwd(), sock4_xlate_rev(),
 *      sock6_xlate_rev(), ctx_get_v6(), ctx_set_v6(), addr_is_v4_mapped()
 */
#ifndef CB_SOCK_LB_H
#define CB_SOCK_LB_H

#include <bpf/bpf_endian.h>
#include "lib/common.h"
#include "lib/lb.h"

#ifndef CB_LB_REVERSE_SK_MAX
#define CB_LB_REVERSE_SK_MAX	262144	/* Cilium's default for its *_reverse_sk maps */
#endif

/* errno values (uapi macros vmlinux.h lacks) */
#define CB_ENOMEM		12
#define CB_ECONNREFUSED		111
#define CB_EHOSTUNREACH		113

/* Return codes of cgroup sock_addr programs. */
#define SYS_REJECT		0
#define SYS_PROCEED		1

struct sock4_revnat_key {
	__u64  cookie;		/* socket cookie */
	__be32 address;		/* backend */
	__be16 port;
	__u16  pad;
};

struct sock4_revnat_val {
	__be32 address;		/* frontend */
	__be16 port;
	__u16  pad;
	__u32  rev_nat_index;
};

struct sock6_revnat_key {
	__u64  cookie;
	union v6addr address;
	__be16 port;
	__u8   pad[6];
};

struct sock6_revnat_val {
	union v6addr address;
	__be16 port;
	__u16  pad;
	__u32  rev_nat_index;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_LB_REVERSE_SK_MAX);
	__type(key, struct sock4_revnat_key);
	__type(value, struct sock4_revnat_val);
} cb_lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CB_LB_REVERSE_SK_MAX);
	__type(key, struct sock6_revnat_key);
	__type(value, struct sock6_revnat_val);
} cb_lb6_reverse_sk SEC(".maps");

/* errno of a connect()/sendmsg() to a frontend without backends.
 * ECONNREFUSED is what a kube-proxy REJECT gives; Cilium uses EHOSTUNREACH
 * (113): set this knob to match it.  Needs bpf_set_retval (5.18+); without
 * it the kernel reports EPERM. */
const volatile __u32 sock_no_backend_errno = CB_ECONNREFUSED;

static __always_inline bool sock_lb_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

static __always_inline bool addr_is_v4_mapped(const union v6addr *a)
{
	return a->p[0] == 0 && a->p[1] == 0 && a->p[2] == bpf_htonl(0xffff);
}

/* user_ip6 is read and written as four 32-bit words: the kernel refuses
 * narrower writes to a sock_addr context. */
static __always_inline void ctx_get_v6(const struct bpf_sock_addr *ctx, union v6addr *a)
{
	a->p[0] = ctx->user_ip6[0];
	a->p[1] = ctx->user_ip6[1];
	a->p[2] = ctx->user_ip6[2];
	a->p[3] = ctx->user_ip6[3];
}

static __always_inline void ctx_set_v6(struct bpf_sock_addr *ctx, const union v6addr *a)
{
	ctx->user_ip6[0] = a->p[0];
	ctx->user_ip6[1] = a->p[1];
	ctx->user_ip6[2] = a->p[2];
	ctx->user_ip6[3] = a->p[3];
}

/* user_port holds the network-order port in its low 16 bits; it must be
 * written as a whole 32-bit word. */
static __always_inline __be16 ctx_get_port(const struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;

	return (__be16)port;
}

static __always_inline void ctx_set_port(struct bpf_sock_addr *ctx, __be16 port)
{
	ctx->user_port = (__u32)port;
}

static __always_inline int sock4_update_revnat(__u64 cookie, __be32 be_addr, __be16 be_port,
					       __be32 vip, __be16 vport, __u32 rev_nat_index)
{
	struct sock4_revnat_key key = { .cookie = cookie, .address = be_addr, .port = be_port };
	struct sock4_revnat_val val = { .address = vip, .port = vport,
					.rev_nat_index = rev_nat_index };
	struct sock4_revnat_val *old;

	/* Unconnected UDP translates every datagram: write only on a change. */
	old = bpf_map_lookup_elem(&cb_lb4_reverse_sk, &key);
	if (old && old->address == vip && old->port == vport &&
	    old->rev_nat_index == rev_nat_index)
		return 0;
	return bpf_map_update_elem(&cb_lb4_reverse_sk, &key, &val, BPF_ANY);
}

static __always_inline int sock6_update_revnat(__u64 cookie, const union v6addr *be_addr,
					       __be16 be_port, const union v6addr *vip,
					       __be16 vport, __u32 rev_nat_index)
{
	struct sock6_revnat_key key = { .cookie = cookie, .port = be_port };
	struct sock6_revnat_val val = { .port = vport, .rev_nat_index = rev_nat_index };
	struct sock6_revnat_val *old;

	key.address = *be_addr;
	val.address = *vip;
	old = bpf_map_lookup_elem(&cb_lb6_reverse_sk, &key);
	if (old && old->address.d[0] == vip->d[0] && old->address.d[1] == vip->d[1] &&
	    old->port == vport && old->rev_nat_index == rev_nat_index)
		return 0;
	return bpf_map_update_elem(&cb_lb6_reverse_sk, &key, &val, BPF_ANY);
}

/* Translate a destination (*addr, *port) of a socket of protocol *proto*:
 * 0 if it is not a service frontend (left as is), 1 if it now names a
 * backend, or a negative errno to fail the system call with. */
static __always_inline int sock4_xlate_fwd(__be32 *addr, __be16 *port, __u8 proto,
					   __u64 sk_cookie, __u64 netns_cookie)
{
	struct lb_service *svc;
	struct lb4_backend *be;
	__be32 vip = *addr;
	__be16 vport = *port;
	__u32 backend_id;

	if (!sock_lb_proto(proto))
		return 0;
	svc = lb4_lookup_service_internal(vip, vport, proto);
	if (!svc || (svc->flags & SVC_F_SOURCE_RANGE))
		return 0;
	backend_id = lb4_select_backend(svc, (__be32)sk_cookie, (__be16)(sk_cookie >> 32),
					vip, vport, proto, netns_cookie, cb_now_sec());
	be = backend_id ? lb4_lookup_backend(backend_id) : NULL;
	if (!be)
		return -(int)sock_no_backend_errno;
	if (sock4_update_revnat(sk_cookie, be->address, be->port, vip, vport,
				svc->rev_nat_index) < 0)
		return -CB_ENOMEM;
	lb_count_service(svc->rev_nat_index, 0);
	*addr = be->address;
	*port = be->port;
	return 1;
}

static __always_inline int sock6_xlate_fwd(union v6addr *addr, __be16 *port, __u8 proto,
					   __u64 sk_cookie, __u64 netns_cookie)
{
	union v6addr vip = *addr, src = {};
	struct lb_service *svc;
	struct lb6_backend *be;
	__be16 vport = *port;
	__u32 backend_id;

	if (!sock_lb_proto(proto))
		return 0;
	svc = lb6_lookup_service_internal(&vip, vport, proto);
	if (!svc || (svc->flags & SVC_F_SOURCE_RANGE))
		return 0;
	src.d[0] = sk_cookie;
	backend_id = lb6_select_backend(svc, &src, 0, &vip, vport, proto, netns_cookie,
					cb_now_sec());
	be = backend_id ? lb6_lookup_backend(backend_id) : NULL;
	if (!be)
		return -(int)sock_no_backend_errno;
	if (sock6_update_revnat(sk_cookie, &be->address, be->port, &vip, vport,
				svc->rev_nat_index) < 0)
		return -CB_ENOMEM;
	lb_count_service(svc->rev_nat_index, 0);
	*addr = be->address;
	*port = be->port;
	return 1;
}

/* Map a backend (*addr, *port) the socket talks to back to its frontend;
 * true if rewritten. */
static __always_inline bool sock4_xlate_rev(__be32 *addr, __be16 *port, __u8 proto,
					    __u64 sk_cookie)
{
	struct sock4_revnat_key key = { .cookie = sk_cookie, .address = *addr, .port = *port };
	struct sock4_revnat_val *val;
	struct lb_service *svc;

	val = bpf_map_lookup_elem(&cb_lb4_reverse_sk, &key);
	if (!val)
		return false;
	svc = lb4_lookup_service(val->address, val->port, proto);
	if (!svc || svc->rev_nat_index != val->rev_nat_index) {
		bpf_map_delete_elem(&cb_lb4_reverse_sk, &key);
		return false;
	}
	*addr = val->address;
	*port = val->port;
	return true;
}

static __always_inline bool sock6_xlate_rev(union v6addr *addr, __be16 *port, __u8 proto,
					    __u64 sk_cookie)
{
	struct sock6_revnat_key key = { .cookie = sk_cookie, .port = *port };
	struct sock6_revnat_val *val;
	struct lb_service *svc;

	key.address = *addr;
	val = bpf_map_lookup_elem(&cb_lb6_reverse_sk, &key);
	if (!val)
		return false;
	svc = lb6_lookup_service(&val->address, val->port, proto);
	if (!svc || svc->rev_nat_index != val->rev_nat_index) {
		bpf_map_delete_elem(&cb_lb6_reverse_sk, &key);
		return false;
	}
	*addr = val->address;
	*port = val->port;
	return true;
}

#endif /* CB_SOCK_LB_H */
