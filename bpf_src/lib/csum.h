/* SPDX-License-Identifier: GPL-2.0 */
/* Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')),
 * applied in place through direct packet access, so a NAT rewrite costs a
 * few ALU instructions instead of helper calls.
 *
 * API: csum_replace4(&check, old, new), csum_replace2(&check, old, new),
 *      csum_replace16(&check, &old6, &new6)
 */
#ifndef CB_CSUM_H
#define CB_CSUM_H

#include "lib/common.h"

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Replace a 32-bit word covered by *check with another. */
static __always_inline void csum_replace4(__sum16 *check, __be32 from, __be32 to)
{
	__u32 sum = (__u16)~*check;

	sum += (__u16)~from + (__u16)~(from >> 16);
	sum += (__u16)to + (__u16)(to >> 16);
	*check = (__sum16)~csum_fold32(sum);
}

static __always_inline void csum_replace2(__sum16 *check, __be16 from, __be16 to)
{
	__u32 sum = (__u16)~*check;

	sum += (__u16)~from + (__u16)to;
	*check = (__sum16)~csum_fold32(sum);
}

static __always_inline void csum_replace16(__sum16 *check, const union v6addr *from,
					   const union v6addr *to)
{
	__u32 sum = (__u16)~*check;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		sum += (__u16)~from->p[i] + (__u16)~(from->p[i] >> 16);
		sum += (__u16)to->p[i] + (__u16)(to->p[i] >> 16);
	}
	*check = (__sum16)~csum_fold32(sum);
}

#endif /* CB_CSUM_H */
