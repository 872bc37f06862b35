/* SPDX-License-Identifier: GPL-2.0 */
/* Bob Jenkins' lookup3 final mix over three words: the flow hash Maglev
 * selection uses.  harness/lb/flowhash.py computes the same function, so the
 * reference model predicts the kernel's choice exactly.  Words are taken as
 * the CPU loads them from the packet (network-order bytes read as a
 * little-endian u32 on x86).
 *
 * API: flow_hash4(saddr, daddr, sport, dport, proto, seed)
 *      flow_hash6(&saddr, &daddr, sport, dport, proto, seed)
 */
#ifndef CB_HASH_H
#define CB_HASH_H

#include "lib/common.h"

#define CB_JHASH_INITVAL 0xdeadbeef

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += CB_JHASH_INITVAL;
	b += CB_JHASH_INITVAL;
	c += initval;
	c ^= b; c -= rol32(b, 14);
	a ^= c; a -= rol32(c, 11);
	b ^= a; b -= rol32(a, 25);
	c ^= b; c -= rol32(b, 16);
	a ^= c; a -= rol32(c, 4);
	b ^= a; b -= rol32(a, 14);
	c ^= b; c -= rol32(b, 24);
	return c;
}

static __always_inline __u32 flow_hash4(__be32 saddr, __be32 daddr, __be16 sport,
					__be16 dport, __u8 proto, __u32 seed)
{
	return jhash_3words(saddr, daddr, ((__u32)sport << 16) | dport, seed ^ proto);
}

static __always_inline __u32 fold_v6(const union v6addr *a)
{
	return a->p[0] ^ a->p[1] ^ a->p[2] ^ a->p[3];
}

static __always_inline __u32 flow_hash6(const union v6addr *saddr, const union v6addr *daddr,
					__be16 sport, __be16 dport, __u8 proto, __u32 seed)
{
	return jhash_3words(fold_v6(saddr), fold_v6(daddr), ((__u32)sport << 16) | dport,
			    seed ^ proto);
}

#endif /* CB_HASH_H */
