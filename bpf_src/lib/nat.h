/* SPDX-License-Identifier: GPL-2.0 */
/* Address and port rewrites for service translation, in place through
 * direct packet access, with incremental L3/L4 checksum updates:
 * DNAT of a packet to a backend, reverse NAT of a reply to the frontend,
 * source NAT to the node, reverse translation of ICMP errors (outer and
 * inner headers), and ICMP echo replies for service VIPs.
 *
 * Every function takes the packet's pkt_meta (from parse.h) and returns 0 or
 * a negative drop reason.
 *
 * API: nat4_rewrite_dst(), nat4_rewrite_src(), nat6_rewrite_dst(),
 *      nat6_rewrite_src(), icmp4_echo_reply(), icmp6_echo_reply(),
 *      icmp4_error_inner(), icmp6_error_inner(), nat4_rewrite_icmp_error(),
 *      nat6_rewrite_icmp_error()
 */
#ifndef CB_NAT_H
#define CB_NAT_H

#include "lib/common.h"
#include "lib/csum.h"
#include "lib/drop.h"
#include "lib/parse.h"

#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP_PARAMETERPROB	12
#define ICMPV6_DEST_UNREACH	1
#define ICMPV6_PKT_TOOBIG	2
#define ICMPV6_TIME_EXCEED	3
#define ICMPV6_PARAMPROB	4
#define ICMPV6_ECHO_REQUEST	128
#define ICMPV6_ECHO_REPLY	129

#define CB_ECHO_REPLY_TTL	64

/* Offset of the L4 checksum field, or -1 for protocols without ports.  SCTP
 * has ports but its CRC32c does not cover the addresses: its translation is
 * address only, and svc.h refuses port changes. */
static __always_inline int l4_csum_off(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP: return 16;
	case IPPROTO_UDP: return 6;
	default:	  return -1;
	}
}

/* Rewrite one address and one port of an L4 header's checksum.  A UDP
 * checksum of 0 means "none" and stays 0: over IPv4 (RFC 768), and over IPv6
 * too, where tunnels may send it (RFC 6936) and an update would turn it into
 * a wrong non-zero value; a computed 0 is sent as 0xffff. */
static __always_inline int __l4_fix(void *data, void *data_end, const struct pkt_meta *m,
				    __be16 *port, __be16 new_port, __be32 old_a, __be32 new_a,
				    const union v6addr *old6, const union v6addr *new6)
{
	int off = l4_csum_off(m->l4_proto);
	__sum16 *check;

	if (off < 0)
		return 0;
	check = data + PKT_OFF(m->l4_off) + off;
	if ((void *)(check + 1) > data_end)
		return -DROP_INVALID;
	if (m->l4_proto == IPPROTO_UDP && *check == 0) {
		*port = new_port;
		return 0;
	}
	if (old6)
		csum_replace16(check, old6, new6);
	else
		csum_replace4(check, old_a, new_a);
	csum_replace2(check, *port, new_port);
	if (m->l4_proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	*port = new_port;
	return 0;
}

static __always_inline __be16 *__l4_port(void *data, void *data_end, const struct pkt_meta *m,
					 bool dst)
{
	__be16 *ports = data + PKT_OFF(m->l4_off);

	if (!(m->flags & PKT_F_L4) || l4_csum_off(m->l4_proto) < 0)
		return NULL;
	if ((void *)(ports + 2) > data_end)
		return NULL;
	return dst ? ports + 1 : ports;
}

static __always_inline int __nat4_rewrite(struct __sk_buff *skb, const struct pkt_meta *m,
					  bool dst, __be32 addr, __be16 port)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct iphdr *ip4 = data + PKT_OFF(m->l3_off);
	__be32 *field, old;
	__be16 *l4port;

	if ((void *)(ip4 + 1) > data_end)
		return -DROP_INVALID;
	field = dst ? &ip4->daddr : &ip4->saddr;
	old = *field;
	csum_replace4(&ip4->check, old, addr);
	*field = addr;
	l4port = __l4_port(data, data_end, m, dst);
	if (!l4port)
		return 0;	/* ICMP and other protocols: the address is all */
	return __l4_fix(data, data_end, m, l4port, port, old, addr, NULL, NULL);
}

/* DNAT: destination to addr:port (port ignored for protocols without ports). */
static __always_inline int nat4_rewrite_dst(struct __sk_buff *skb, const struct pkt_meta *m,
					    __be32 addr, __be16 port)
{
	return __nat4_rewrite(skb, m, true, addr, port);
}

/* Reverse NAT / SNAT: source to addr:port. */
static __always_inline int nat4_rewrite_src(struct __sk_buff *skb, const struct pkt_meta *m,
					    __be32 addr, __be16 port)
{
	return __nat4_rewrite(skb, m, false, addr, port);
}

static __always_inline int __nat6_rewrite(struct __sk_buff *skb, const struct pkt_meta *m,
					  bool dst, const union v6addr *addr, __be16 port)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct ipv6hdr *ip6 = data + PKT_OFF(m->l3_off);
	union v6addr old, *field;
	__be16 *l4port;
	int ret = 0;

	if ((void *)(ip6 + 1) > data_end)
		return -DROP_INVALID;
	field = dst ? (union v6addr *)&ip6->daddr : (union v6addr *)&ip6->saddr;
	old = *field;
	l4port = __l4_port(data, data_end, m, dst);
	if (l4port) {
		ret = __l4_fix(data, data_end, m, l4port, port, 0, 0, &old, addr);
	} else if (m->l4_proto == IPPROTO_ICMPV6 && (m->flags & PKT_F_L4)) {
		/* ICMPv6's checksum covers the pseudo-header, so the address too
		 * (a later fragment has no ICMPv6 header to fix). */
		__sum16 *check = data + PKT_OFF(m->l4_off) + 2;

		if ((void *)(check + 1) > data_end)
			return -DROP_INVALID;
		csum_replace16(check, &old, addr);
	}
	*field = *addr;
	return ret;
}

static __always_inline int nat6_rewrite_dst(struct __sk_buff *skb, const struct pkt_meta *m,
					    const union v6addr *addr, __be16 port)
{
	return __nat6_rewrite(skb, m, true, addr, port);
}

static __always_inline int nat6_rewrite_src(struct __sk_buff *skb, const struct pkt_meta *m,
					    const union v6addr *addr, __be16 port)
{
	return __nat6_rewrite(skb, m, false, addr, port);
}

static __always_inline void __swap_macs(struct ethhdr *eth)
{
	__u8 tmp[6];

	__builtin_memcpy(tmp, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, tmp, 6);
}

/* Turn an ICMP echo request into the echo reply from its destination, in
 * place (the caller sends it back where it came from). */
static __always_inline int icmp4_echo_reply(struct __sk_buff *skb, const struct pkt_meta *m)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + PKT_OFF(m->l3_off);
	struct icmphdr *ic = data + PKT_OFF(m->l4_off);
	__be32 addr;
	__be16 old_word, new_word;

	if ((void *)(eth + 1) > data_end || (void *)(ip4 + 1) > data_end ||
	    (void *)(ic + 1) > data_end)
		return -DROP_INVALID;
	__swap_macs(eth);
	addr = ip4->saddr;		/* a swap leaves the IP checksum as it was */
	ip4->saddr = ip4->daddr;
	ip4->daddr = addr;
	old_word = *(__be16 *)&ip4->ttl;
	ip4->ttl = CB_ECHO_REPLY_TTL;
	csum_replace2(&ip4->check, old_word, *(__be16 *)&ip4->ttl);
	old_word = *(__be16 *)ic;	/* type and code */
	ic->type = ICMP_ECHOREPLY;
	ic->code = 0;
	new_word = *(__be16 *)ic;
	csum_replace2(&ic->checksum, old_word, new_word);
	return 0;
}

static __always_inline int icmp6_echo_reply(struct __sk_buff *skb, const struct pkt_meta *m)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + PKT_OFF(m->l3_off);
	struct icmp6hdr *ic = data + PKT_OFF(m->l4_off);
	struct in6_addr addr;
	__be16 old_word, new_word;

	if ((void *)(eth + 1) > data_end || (void *)(ip6 + 1) > data_end ||
	    (void *)(ic + 1) > data_end)
		return -DROP_INVALID;
	__swap_macs(eth);
	addr = ip6->saddr;		/* the pseudo-header sum is symmetric in the addresses */
	ip6->saddr = ip6->daddr;
	ip6->daddr = addr;
	ip6->hop_limit = CB_ECHO_REPLY_TTL;
	old_word = *(__be16 *)ic;
	ic->icmp6_type = ICMPV6_ECHO_REPLY;
	ic->icmp6_code = 0;
	new_word = *(__be16 *)ic;
	csum_replace2(&ic->icmp6_cksum, old_word, new_word);
	return 0;
}

static __always_inline bool icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline bool icmp6_is_error(__u8 type)
{
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

/* The packet an ICMP error quotes: its header offsets (relative to the
 * outer packet), protocol, addresses and ports, as the original sender sent it.
 * The quote ends where the outer IP packet ends (m->l3_end): every read and
 * write inside it is bounded by that as well as by data_end, since bytes
 * after it are a frame trailer, outside the ICMP checksum. */
struct icmp_inner {
	__u16 l3_off;
	__u16 l4_off;
	__u8  proto;
	__u8  pad[3];
	union v6addr saddr;
	union v6addr daddr;
	__be16 sport;
	__be16 dport;
};

/* The quoted packet's ports as conntrack keys its flow (ct_tuple_ports):
 * TCP/UDP/SCTP ports; for a quoted ICMP echo request or reply, the
 * identifier (request: source side, reply: destination side).  *l4* points
 * at the quoted L4 header (RFC 792 quotes 8 bytes of it; ports and the echo
 * identifier lie in the first 6).
 * -DROP_UNKNOWN_L4 for anything else: no tracked flow can be named by it. */
static __always_inline int __icmp_inner_ports(void *l4, void *data_end, __u32 l4_off,
					      __u32 end, struct icmp_inner *in)
{
	__be16 *ports = l4;
	__u8 type;

	switch (in->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if ((void *)(ports + 2) > data_end || !pkt_within_l3(l4_off, 4, end))
			return -DROP_INVALID;
		in->sport = ports[0];
		in->dport = ports[1];
		return 0;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* Each case bounds its own reads: the verifier cannot carry "not
		 * ICMP" from a shared check into the switch. */
		if ((void *)(ports + 3) > data_end || !pkt_within_l3(l4_off, 6, end))
			return -DROP_INVALID;
		type = *(__u8 *)l4;
		in->sport = 0;
		in->dport = 0;
		if (type == ICMP_ECHO || type == ICMPV6_ECHO_REQUEST)
			in->sport = ports[2];
		else if (type == ICMP_ECHOREPLY || type == ICMPV6_ECHO_REPLY)
			in->dport = ports[2];
		else
			return -DROP_UNKNOWN_L4;
		/* An ICMPv4 echo quoted as ICMPv6 (or the reverse) names nothing. */
		if ((in->proto == IPPROTO_ICMP) != (type == ICMP_ECHO || type == ICMP_ECHOREPLY))
			return -DROP_UNKNOWN_L4;
		return 0;
	default:
		return -DROP_UNKNOWN_L4;
	}
}

static __always_inline int icmp4_error_inner(void *data, void *data_end,
					     const struct pkt_meta *m, struct icmp_inner *in)
{
	struct iphdr *ip4 = data + PKT_OFF(m->l4_off) + 8;	/* after the 8-byte ICMP header */
	int hlen = ipv4_hdr_len(ip4, data_end);

	if (hlen < 0)
		return hlen;
	if (!pkt_within_l3(m->l4_off + 8, hlen, m->l3_end))
		return -DROP_INVALID;
	in->l3_off = m->l4_off + 8;
	in->l4_off = in->l3_off + hlen;
	in->proto = ip4->protocol;
	in->saddr.p[0] = ip4->saddr;
	in->daddr.p[0] = ip4->daddr;
	/* RFC 792: at least 8 bytes of the datagram follow its header. */
	return __icmp_inner_ports((void *)ip4 + hlen, data_end, in->l4_off, m->l3_end, in);
}

/* The quoted packet's extension headers are walked as the packet's own are
 * (a Packet Too Big quotes whatever the sender put there); a quoted later
 * fragment has no ports, so nothing can be said to be related to it. */
static __always_inline int icmp6_error_inner(void *data, void *data_end,
					     const struct pkt_meta *m, struct icmp_inner *in)
{
	struct ipv6hdr *ip6 = data + PKT_OFF(m->l4_off) + 8;
	__u8 nexthdr, flags = 0;
	__be32 frag_id = 0;	/* unused: a quote is never reassembled */
	int off;

	if ((void *)(ip6 + 1) > data_end || !pkt_within_l3(m->l4_off + 8, sizeof(*ip6), m->l3_end))
		return -DROP_INVALID;
	in->l3_off = m->l4_off + 8;
	__builtin_memcpy(&in->saddr, &ip6->saddr, sizeof(in->saddr));
	__builtin_memcpy(&in->daddr, &ip6->daddr, sizeof(in->daddr));
	nexthdr = ip6->nexthdr;
	off = ipv6_skip_exthdrs(data, data_end, in->l3_off + sizeof(*ip6), m->l3_end, &nexthdr,
				&flags, &frag_id);
	if (off < 0)
		return off;
	if (flags & PKT_F_LATER_FRAGMENT)
		return -DROP_UNKNOWN_L4;
	in->proto = nexthdr;
	if (off > CB_PKT_OFF_MASK)
		return -DROP_INVALID;
	/* Hidden from clang before it is stored: knowing off <= the mask from the
	 * check above, clang drops every PKT_OFF() mask of in->l4_off later on,
	 * and 5.10's verifier, which lost that bound, then refuses the pointers
	 * (variable offset up to 0x1ffff: "R2 offset is outside of the packet"). */
	barrier_var(off);
	in->l4_off = off;
	return __icmp_inner_ports(data + PKT_OFF(off), data_end, off, m->l3_end, in);
}

/* The quoted L4 checksum, if the quote (which ends at *end*) reaches it:
 * account for the new destination address and port, and carry its change
 * into the ICMP checksum.  A quoted UDP checksum of 0 stays 0, as in __l4_fix. */
static __always_inline void __icmp_fix_quoted_l4(void *data, void *data_end, __u32 end,
						 const struct icmp_inner *in, __sum16 *icmp_check,
						 __be32 old4, __be32 new4, const union v6addr *old6,
						 const union v6addr *new6, __be16 old_port,
						 __be16 new_port)
{
	int off = l4_csum_off(in->proto);
	__sum16 *check, before;

	if (off < 0)
		return;
	check = data + PKT_OFF(in->l4_off) + off;
	if ((void *)(check + 1) > data_end || !pkt_within_l3(in->l4_off + off, sizeof(*check), end))
		return;
	if (in->proto == IPPROTO_UDP && *check == 0)
		return;
	before = *check;
	if (old6)
		csum_replace16(check, old6, new6);
	else
		csum_replace4(check, old4, new4);
	csum_replace2(check, old_port, new_port);
	if (in->proto == IPPROTO_UDP && *check == 0)
		*check = 0xffff;
	csum_replace2(icmp_check, before, *check);
}

/* Reverse-translate an ICMP error about a service flow: the quoted packet
 * went client -> backend; make it read client -> frontend, and make the
 * error come from the frontend if the backend sent it.  Every checksum the
 * rewrite touches is fixed: the outer IP header's, the quoted IP header's,
 * the quoted L4 header's when it was quoted far enough to hold it, and the
 * ICMP checksum over all of that. */
static __always_inline int nat4_rewrite_icmp_error(struct __sk_buff *skb,
						   const struct pkt_meta *m,
						   const struct icmp_inner *in,
						   __be32 vip, __be16 vport)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct iphdr *outer = data + PKT_OFF(m->l3_off);
	struct icmphdr *ic = data + PKT_OFF(m->l4_off);
	struct iphdr *inner = data + PKT_OFF(in->l3_off);
	__be16 *inner_dport = data + PKT_OFF(in->l4_off) + 2;
	__be32 old_inner_daddr;
	__u16 old_inner_check;

	if ((void *)(outer + 1) > data_end || (void *)(ic + 1) > data_end ||
	    (void *)(inner + 1) > data_end || (void *)(inner_dport + 1) > data_end ||
	    !pkt_within_l3(in->l4_off, 4, m->l3_end))
		return -DROP_INVALID;
	old_inner_daddr = inner->daddr;
	if (outer->saddr == old_inner_daddr) {
		csum_replace4(&outer->check, outer->saddr, vip);
		outer->saddr = vip;
	}
	old_inner_check = inner->check;
	csum_replace4(&inner->check, old_inner_daddr, vip);
	inner->daddr = vip;
	/* The ICMP checksum covers the whole quoted packet. */
	csum_replace4(&ic->checksum, old_inner_daddr, vip);
	csum_replace2(&ic->checksum, old_inner_check, inner->check);
	__icmp_fix_quoted_l4(data, data_end, m->l3_end, in, &ic->checksum, old_inner_daddr, vip,
			     NULL, NULL, *inner_dport, vport);
	csum_replace2(&ic->checksum, *inner_dport, vport);
	*inner_dport = vport;
	return 0;
}

static __always_inline int nat6_rewrite_icmp_error(struct __sk_buff *skb,
						   const struct pkt_meta *m,
						   const struct icmp_inner *in,
						   const union v6addr *vip, __be16 vport)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);
	struct ipv6hdr *outer = data + PKT_OFF(m->l3_off);
	struct icmp6hdr *ic = data + PKT_OFF(m->l4_off);
	struct ipv6hdr *inner = data + PKT_OFF(in->l3_off);
	__be16 *inner_dport = data + PKT_OFF(in->l4_off) + 2;
	union v6addr old_inner_daddr, *outer_saddr;

	if ((void *)(outer + 1) > data_end || (void *)(ic + 1) > data_end ||
	    (void *)(inner + 1) > data_end || (void *)(inner_dport + 1) > data_end ||
	    !pkt_within_l3(in->l4_off, 4, m->l3_end))
		return -DROP_INVALID;
	__builtin_memcpy(&old_inner_daddr, &inner->daddr, sizeof(old_inner_daddr));
	outer_saddr = (union v6addr *)&outer->saddr;
	if (outer_saddr->d[0] == old_inner_daddr.d[0] && outer_saddr->d[1] == old_inner_daddr.d[1]) {
		/* ICMPv6's checksum covers the outer source via the pseudo-header. */
		csum_replace16(&ic->icmp6_cksum, outer_saddr, vip);
		*outer_saddr = *vip;
	}
	csum_replace16(&ic->icmp6_cksum, &old_inner_daddr, vip);
	__builtin_memcpy(&inner->daddr, vip, sizeof(*vip));
	__icmp_fix_quoted_l4(data, data_end, m->l3_end, in, &ic->icmp6_cksum, 0, 0,
			     &old_inner_daddr, vip, *inner_dport, vport);
	csum_replace2(&ic->icmp6_cksum, *inner_dport, vport);
	*inner_dport = vport;
	return 0;
}

#endif /* CB_NAT_H */
