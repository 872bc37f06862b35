// SPDX-License-Identifier: GPL-2.0
/* Socket-level load balancing: cgroup sock_addr programs, attached to the
 * cgroup of the pods (never the root cgroup), as Cilium attaches bpf_sock:
 *
 *   connect4/6     connect() to a frontend -> the chosen backend (TCP and UDP)
 *   sendmsg4/6     unconnected UDP sendto() to a frontend -> a backend
 *   recvmsg4/6     UDP recvfrom() from a backend -> reported as the frontend
 *   getpeername4/6 getpeername() of a translated socket -> the frontend
 *
 * The logic and the reverse-socket maps are in lib/sock_lb.h.  A frontend
 * with no backend fails connect()/sendmsg() with sock_no_backend_errno
 * (ECONNREFUSED by default) through bpf_set_retval.  The v6 programs
 * translate IPv4-mapped destinations through the IPv4 maps.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lib/common.h"
#include "lib/events.h"
#include "lib/lb.h"
#include "lib/sock_lb.h"

char LICENSE[] SEC("license") = "GPL";

/* Fail the system call with -err (EPERM where the kernel lacks set_retval). */
static __always_inline int sock_reject(int err)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_set_retval))
		bpf_set_retval(err);
	return SYS_REJECT;
}

/* The translation event of an IPv4 (or IPv4-mapped) address. */
static __always_inline void sock4_event(struct bpf_sock_addr *ctx, __u8 point, __be32 orig,
					__be16 orig_port, __be32 xlate, __be16 xlate_port)
{
	union v6addr o = { .p = { orig } }, x = { .p = { xlate } };

	events_sock(point, ctx->protocol, false, bpf_get_socket_cookie(ctx), &o, orig_port, &x,
		    xlate_port);
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_get_port(ctx);
	int ret;

	ret = sock4_xlate_fwd(&addr, &port, ctx->protocol, bpf_get_socket_cookie(ctx),
			      bpf_get_netns_cookie(ctx));
	if (ret < 0)
		return sock_reject(ret);
	if (ret > 0) {
		sock4_event(ctx, SOCK_XLATE_POST_DIRECTION_FWD, ctx->user_ip4, ctx_get_port(ctx),
			    addr, port);
		ctx->user_ip4 = addr;
		ctx_set_port(ctx, port);
	}
	return SYS_PROCEED;
}

static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	__be16 port = ctx_get_port(ctx);
	int ret;

	ctx_get_v6(ctx, &addr);
	if (addr_is_v4_mapped(&addr)) {
		__be32 addr4 = addr.p[3];

		ret = sock4_xlate_fwd(&addr4, &port, ctx->protocol, bpf_get_socket_cookie(ctx),
				      bpf_get_netns_cookie(ctx));
		if (ret > 0) {
			sock4_event(ctx, SOCK_XLATE_POST_DIRECTION_FWD, ctx->user_ip6[3],
				    ctx_get_port(ctx), addr4, port);
			ctx->user_ip6[3] = addr4;
		}
	} else {
		union v6addr orig = addr;

		ret = sock6_xlate_fwd(&addr, &port, ctx->protocol, bpf_get_socket_cookie(ctx),
				      bpf_get_netns_cookie(ctx));
		if (ret > 0) {
			events_sock(SOCK_XLATE_POST_DIRECTION_FWD, ctx->protocol, true,
				    bpf_get_socket_cookie(ctx), &orig, ctx_get_port(ctx), &addr, port);
			ctx_set_v6(ctx, &addr);
		}
	}
	if (ret < 0)
		return sock_reject(ret);
	if (ret > 0)
		ctx_set_port(ctx, port);
	return SYS_PROCEED;
}

static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_get_port(ctx);

	if (sock4_xlate_rev(&addr, &port, ctx->protocol, bpf_get_socket_cookie(ctx))) {
		sock4_event(ctx, SOCK_XLATE_POST_DIRECTION_REV, ctx->user_ip4, ctx_get_port(ctx),
			    addr, port);
		ctx->user_ip4 = addr;
		ctx_set_port(ctx, port);
	}
	return SYS_PROCEED;	/* recvmsg/getpeername programs must return 1 */
}

static __always_inline int sock6_rev(struct bpf_sock_addr *ctx)
{
	union v6addr addr;
	__be16 port = ctx_get_port(ctx);
	bool done;

	ctx_get_v6(ctx, &addr);
	if (addr_is_v4_mapped(&addr)) {
		__be32 addr4 = addr.p[3];

		done = sock4_xlate_rev(&addr4, &port, ctx->protocol, bpf_get_socket_cookie(ctx));
		if (done) {
			sock4_event(ctx, SOCK_XLATE_POST_DIRECTION_REV, ctx->user_ip6[3],
				    ctx_get_port(ctx), addr4, port);
			ctx->user_ip6[3] = addr4;
		}
	} else {
		union v6addr orig = addr;

		done = sock6_xlate_rev(&addr, &port, ctx->protocol, bpf_get_socket_cookie(ctx));
		if (done) {
			events_sock(SOCK_XLATE_POST_DIRECTION_REV, ctx->protocol, true,
				    bpf_get_socket_cookie(ctx), &orig, ctx_get_port(ctx), &addr, port);
			ctx_set_v6(ctx, &addr);
		}
	}
	if (done)
		ctx_set_port(ctx, port);
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_fwd(ctx);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_rev(ctx);
}
