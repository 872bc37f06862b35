/* SPDX-License-Identifier: GPL-2.0 */
/* Shared basics of every chainbench BPF program: constants vmlinux.h lacks
 * (they are macros in the uapi headers), address types, and helpers macros.
 * Include after vmlinux.h and <bpf/bpf_helpers.h>.
 */
#ifndef CB_COMMON_H
#define CB_COMMON_H

#include <bpf/bpf_core_read.h>

#define TC_ACT_UNSPEC	(-1)
#define TC_ACT_OK	0
#define TC_ACT_SHOT	2
#define TC_ACT_REDIRECT	7

#define ETH_HLEN	14
#define ETH_P_IP	0x0800
#define ETH_P_ARP	0x0806
#define ETH_P_8021Q	0x8100
#define ETH_P_8021AD	0x88A8
#define ETH_P_IPV6	0x86DD

/* IPv6 next-header values (macros in linux/in6.h; IPPROTO_TCP and friends
 * are enum members vmlinux.h already has). */
#define IPPROTO_HOPOPTS		0
#define IPPROTO_ROUTING		43
#define IPPROTO_FRAGMENT	44
#define IPPROTO_ICMPV6		58
#define IPPROTO_NONE		59
#define IPPROTO_DSTOPTS		60

#define IP_MF		0x2000	/* more fragments */
#define IP_OFFSET	0x1FFF	/* fragment offset, in 8-byte units */
#define IP6_OFFSET	0xFFF8	/* fragment offset in the IPv6 fragment header */

/* Direction of a packet relative to the endpoint whose program sees it. */
#define CB_DIR_INGRESS	1
#define CB_DIR_EGRESS	2

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* barrier_var(var) (bpf_helpers.h) hides a value from the compiler's range
 * analysis, so a bounds check the verifier needs is kept: the verifier does
 * not bound the result of a modulo, the compiler does. */
#ifndef barrier_var
#define barrier_var(var)	asm volatile("" : "+r"(var))
#endif

#define likely(x)	__builtin_expect(!!(x), 1)
#define unlikely(x)	__builtin_expect(!!(x), 0)

#define NSEC_PER_SEC	1000000000ULL

/* Monotonic seconds, the clock of every lifetime in the maps (CLOCK_MONOTONIC:
 * the harness's GC compares with time.clock_gettime(CLOCK_MONOTONIC)).  The
 * coarse clock is cheaper; kernels before 5.11 lack it, and CO-RE tells. */
static __always_inline __u32 cb_now_sec(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_ktime_get_coarse_ns))
		return (__u32)(bpf_ktime_get_coarse_ns() / NSEC_PER_SEC);
	return (__u32)(bpf_ktime_get_ns() / NSEC_PER_SEC);
}

/* skb->data and skb->data_end, each read with one direct load from the
 * context.  Left to itself, clang may compute &skb->data once and load
 * through the modified pointer after a helper call, which the verifier
 * refuses ("dereference of modified ctx ptr"); the asm pins the access form. */
static __always_inline void *ctx_data(const struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%[ptr] = *(u32 *)(%[ctx] + %[off])"
		     : [ptr] "=r"(ptr)
		     : [ctx] "r"(skb), [off] "i"(__builtin_offsetof(struct __sk_buff, data)));
	return ptr;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *skb)
{
	void *ptr;

	asm volatile("%[ptr] = *(u32 *)(%[ctx] + %[off])"
		     : [ptr] "=r"(ptr)
		     : [ctx] "r"(skb), [off] "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return ptr;
}

/* One IPv6 address, viewable as bytes, words or double words. */
union v6addr {
	__u8  addr[16];
	__be32 p[4];
	__u64 d[2];
};

/* Packets and bytes: the value of every counter map. */
struct traffic_counter {
	__u64 packets;
	__u64 bytes;
};

#endif /* CB_COMMON_H */
