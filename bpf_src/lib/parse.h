/* SPDX-License-Identifier: GPL-2.0 */
/* Safe parsing of Ethernet, one VLAN tag, IPv4 (with options), IPv6 (with
 * up to CB_IPV6_MAX_EXTHDRS extension headers), and the TCP, UDP, SCTP, ICMP
 * and ICMPv6 headers, into a struct pkt_meta.  Every read is bounds-checked
 * against data_end; a packet whose headers are cut short or inconsistent is
 * reported as DROP_INVALID and never read past its end.  Lengths in the IP
 * headers are checked against the whole packet (pkt_len), which may extend
 * past data_end: a real skb keeps its payload in pages, outside the linear
 * part the program can read directly.  Every header after the IP header
 * (IPv6 extension headers, the L4 header with TCP options) must also lie
 * within the IP packet's own length: bytes after it (Ethernet padding, or a
 * trailer anyone can append) belong to no header, so a packet naming an L4
 * header it has no room for is DROP_INVALID, not judged on its trailer.
 *
 * API: parse_packet(data, data_end, pkt_len, &meta) -> 0 or -DROP_INVALID
 *      parse_skb(skb, &meta)
 *      ipv6_skip_exthdrs(data, data_end, off, end, &nexthdr, &flags, &frag_id)
 *      pkt_within_l3(off, len, end)
 */
#ifndef CB_PARSE_H
#define CB_PARSE_H

#include "lib/common.h"
#include "lib/drop.h"

#ifndef CB_IPV6_MAX_EXTHDRS
#define CB_IPV6_MAX_EXTHDRS 4	/* Cilium walks the same number */
#endif

/* Header offsets recorded in pkt_meta stay below this, so that code adding
 * them to a packet pointer can mask them (the verifier only tracks packet
 * ranges for offsets it can bound well below 64 KiB). */
#define CB_PKT_OFF_MASK		0x3ff
#define PKT_OFF(off)		((off) & CB_PKT_OFF_MASK)

/* pkt_meta.flags */
#define PKT_F_FRAGMENT		(1 << 0)	/* part of a fragmented datagram */
#define PKT_F_LATER_FRAGMENT	(1 << 1)	/* not the first fragment: no L4 header */
#define PKT_F_IP_OPTIONS	(1 << 2)	/* IPv4 options or IPv6 extension headers */
#define PKT_F_VLAN		(1 << 3)
#define PKT_F_L4		(1 << 4)	/* sport/dport (or ICMP fields) are valid */
#define PKT_F_FRAG_PORTS	(1 << 5)	/* a later fragment's sport/dport, from its first
						 * fragment (frag.h); still no L4 header */

struct pkt_meta {
	__u16 l3_proto;		/* ETH_P_IP, ETH_P_IPV6, else the ethertype (host order) */
	__u8  l4_proto;		/* IPPROTO_*, after IPv6 extension headers */
	__u8  flags;		/* PKT_F_* */
	__u16 l3_off;		/* offset of the IP header from the start of the packet */
	__u16 l4_off;		/* offset of the L4 header */
	__be16 sport;		/* TCP/UDP ports; ICMP echo: identifier in sport */
	__be16 dport;		/* ICMP: type in the high byte, code in the low byte */
	__u8  tcp_flags;	/* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 */
	__u8  pad;
	__u16 l3_end;		/* offset of the end of the IP packet (0xffff if further);
				 * bytes from here on are a frame trailer */
	__be32 frag_id;		/* fragments: the IP id (IPv4: 16 bits) or the fragment header's */
	__u32 endpoint_id;	/* not parsed: the endpoint whose program runs (lib/endpoint.h) */
	union v6addr saddr;	/* IPv4 addresses use p[0] */
	union v6addr daddr;
};

/* Does [off, off + len) lie within the IP packet, which ends at offset *end*
 * (pkt_meta.l3_end)?  Offsets are from the start of the packet. */
static __always_inline bool pkt_within_l3(__u32 off, __u32 len, __u32 end)
{
	return off + len <= end;
}

/* The L4 header at *l4*, which must end by *end* (the IP packet's end, an
 * offset) as well as by data_end. */
static __always_inline int __parse_l4(void *data, void *l4, void *data_end, __u32 end,
				      struct pkt_meta *m)
{
	__u32 off = l4 - data;

	if (off > CB_PKT_OFF_MASK)
		return -DROP_INVALID;
	m->l4_off = (__u16)off;
	switch (m->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end || !pkt_within_l3(off, sizeof(*th), end))
			return -DROP_INVALID;
		if (th->doff < 5 || l4 + th->doff * 4 > data_end ||
		    !pkt_within_l3(off, th->doff * 4, end))
			return -DROP_INVALID;
		m->sport = th->source;
		m->dport = th->dest;
		/* The flags byte follows the data-offset byte. */
		m->tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end || !pkt_within_l3(off, sizeof(*uh), end))
			return -DROP_INVALID;
		m->sport = uh->source;
		m->dport = uh->dest;
		break;
	}
	case IPPROTO_SCTP: {
		/* The common header: source port, destination port, tag, checksum. */
		__be16 *ports = l4;

		if (l4 + 12 > data_end || !pkt_within_l3(off, 12, end))
			return -DROP_INVALID;
		m->sport = ports[0];
		m->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, then the echo identifier. */
		__u8 *ih = l4;

		if ((void *)(ih + 8) > data_end || !pkt_within_l3(off, 8, end))
			return -DROP_INVALID;
		m->dport = bpf_htons(((__u16)ih[0] << 8) | ih[1]);
		m->sport = *(__be16 *)(ih + 4);
		break;
	}
	default:
		return 0;	/* no ports for other protocols */
	}
	m->flags |= PKT_F_L4;
	return 0;
}

/* Length of the IPv4 header at *ip4*, or -DROP_INVALID if its fixed part is
 * cut short or it is not a sane IPv4 header (version, IHL). */
static __always_inline int ipv4_hdr_len(const struct iphdr *ip4, const void *data_end)
{
	__u32 hlen;

	if ((const void *)(ip4 + 1) > data_end)
		return -DROP_INVALID;
	hlen = ip4->ihl * 4;
	if (ip4->version != 4 || hlen < sizeof(*ip4))
		return -DROP_INVALID;
	return hlen;
}

/* m->l3_end for an IP packet ending at offset *end*; IPv6 jumbograms and GSO
 * packets may end past what 16 bits hold. */
static __always_inline __u16 __l3_end(__u32 end)
{
	return end > 0xffff ? 0xffff : (__u16)end;
}

static __always_inline int __parse_ipv4(void *data, void *l3, void *data_end, __u32 pkt_len,
					struct pkt_meta *m)
{
	struct iphdr *ip4 = l3;
	int hlen = ipv4_hdr_len(ip4, data_end);
	__u32 end;

	if (hlen < 0)
		return hlen;
	end = (l3 - data) + bpf_ntohs(ip4->tot_len);
	if (l3 + hlen > data_end || bpf_ntohs(ip4->tot_len) < hlen || end > pkt_len)
		return -DROP_INVALID;
	m->l3_end = __l3_end(end);
	m->l4_proto = ip4->protocol;
	m->saddr.p[0] = ip4->saddr;
	m->daddr.p[0] = ip4->daddr;
	if (hlen > (int)sizeof(*ip4))
		m->flags |= PKT_F_IP_OPTIONS;
	if (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		m->flags |= PKT_F_FRAGMENT;
		m->frag_id = ip4->id;
		if (ip4->frag_off & bpf_htons(IP_OFFSET)) {
			m->flags |= PKT_F_LATER_FRAGMENT;
			m->l4_off = (__u16)(l3 + hlen - data);
			return 0;
		}
	}
	/* A first fragment too short for its L4 header is invalid here too. */
	return __parse_l4(data, l3 + hlen, data_end, end, m);
}

static __always_inline bool ipv6_is_exthdr(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH ||
	       nexthdr == IPPROTO_FRAGMENT;
}

/* Walk the IPv6 extension headers from offset *off*, the first named by
 * *nexthdr*.  Each must lie within the IP packet, which ends at offset *end*,
 * and what is read of it within data_end.  Returns the offset of what follows
 * them, with *nexthdr* its protocol and PKT_F_* flags added to *flags*; a
 * later fragment (PKT_F_LATER_FRAGMENT) stops after its fragment header, as
 * no header follows.  -DROP_INVALID if a header is cut short or more than
 * CB_IPV6_MAX_EXTHDRS precede the upper layer.  Used for a packet and for
 * the packet an ICMPv6 error quotes. */
static __always_inline int ipv6_skip_exthdrs(void *data, void *data_end, __u32 off, __u32 end,
					     __u8 *nexthdr, __u8 *flags, __be32 *frag_id)
{
	int i;

#pragma unroll
	for (i = 0; i < CB_IPV6_MAX_EXTHDRS; i++) {
		struct ipv6_opt_hdr *opt = data + PKT_OFF(off);
		struct frag_hdr *fh = (void *)opt;
		__u32 len;

		if (!ipv6_is_exthdr(*nexthdr))
			return off;
		if (off > CB_PKT_OFF_MASK)
			return -DROP_INVALID;
		if (*nexthdr == IPPROTO_FRAGMENT) {
			if ((void *)(fh + 1) > data_end || !pkt_within_l3(off, sizeof(*fh), end))
				return -DROP_INVALID;
			*nexthdr = fh->nexthdr;
			*flags |= PKT_F_FRAGMENT | PKT_F_IP_OPTIONS;
			*frag_id = fh->identification;
			if (fh->frag_off & bpf_htons(IP6_OFFSET)) {
				*flags |= PKT_F_LATER_FRAGMENT;
				return off + sizeof(*fh);
			}
			len = sizeof(*fh);
		} else {
			if ((void *)(opt + 1) > data_end)
				return -DROP_INVALID;
			/* AH counts 4-byte units minus 2, the others 8-byte units minus 1. */
			if (*nexthdr == IPPROTO_AH)
				len = (opt->hdrlen + 2) * 4;
			else
				len = (opt->hdrlen + 1) * 8;
			*nexthdr = opt->nexthdr;
			*flags |= PKT_F_IP_OPTIONS;
		}
		if (!pkt_within_l3(off, len, end))
			return -DROP_INVALID;
		off += len;
	}
	/* Still an extension header after the walk: too deep to classify. */
	if (ipv6_is_exthdr(*nexthdr))
		return -DROP_INVALID;
	return off;
}

static __always_inline int __parse_ipv6(void *data, void *l3, void *data_end, __u32 pkt_len,
					struct pkt_meta *m)
{
	struct ipv6hdr *ip6 = l3;
	__u32 end;
	__u8 nexthdr;
	int off;

	if ((void *)(ip6 + 1) > data_end)
		return -DROP_INVALID;
	end = (l3 - data) + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || end > pkt_len)
		return -DROP_INVALID;
	m->l3_end = __l3_end(end);
	__builtin_memcpy(&m->saddr, &ip6->saddr, sizeof(m->saddr));
	__builtin_memcpy(&m->daddr, &ip6->daddr, sizeof(m->daddr));
	nexthdr = ip6->nexthdr;
	off = ipv6_skip_exthdrs(data, data_end, (l3 - data) + sizeof(*ip6), end, &nexthdr,
				&m->flags, &m->frag_id);
	if (off < 0)
		return off;
	m->l4_proto = nexthdr;
	if (m->flags & PKT_F_LATER_FRAGMENT) {
		m->l4_off = (__u16)off;
		return 0;
	}
	if (off > CB_PKT_OFF_MASK)
		return -DROP_INVALID;
	/* Masked again: clang checks a copy of off and adds another (R5 offset
	 * is outside of the packet). */
	return __parse_l4(data, data + PKT_OFF(off), data_end, end, m);
}

static __always_inline int parse_packet(void *data, void *data_end, __u32 pkt_len,
					struct pkt_meta *m)
{
	struct ethhdr *eth = data;
	void *l3 = eth + 1;
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return -DROP_INVALID;
	proto = bpf_ntohs(eth->h_proto);
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		struct vlan_hdr *vh = l3;

		if ((void *)(vh + 1) > data_end)
			return -DROP_INVALID;
		proto = bpf_ntohs(vh->h_vlan_encapsulated_proto);
		l3 = vh + 1;
		m->flags |= PKT_F_VLAN;
	}
	m->l3_proto = proto;
	m->l3_off = (__u16)(l3 - data);
	if (proto == ETH_P_IP)
		return __parse_ipv4(data, l3, data_end, pkt_len, m);
	if (proto == ETH_P_IPV6)
		return __parse_ipv6(data, l3, data_end, pkt_len, m);
	return 0;
}

/* Are m->sport/m->dport the flow's ports: parsed here, or a later
 * fragment's, recorded from its first fragment? */
static __always_inline bool pkt_has_ports(const struct pkt_meta *m)
{
	return m->flags & (PKT_F_L4 | PKT_F_FRAG_PORTS);
}

/* Linear bytes wanted before parsing an skb: Ethernet, a VLAN tag, IPv6 with
 * common extension headers, and TCP with options. */
#define CB_PARSE_PULL_LEN	128

/* parse_packet() on an skb, first pulling headers that a real (non-linear)
 * skb may hold outside its linear part; test_run's skbs are always linear. */
static __always_inline int parse_skb(struct __sk_buff *skb, struct pkt_meta *m)
{
	void *data = ctx_data(skb), *data_end = ctx_data_end(skb);

	if (data + CB_PARSE_PULL_LEN > data_end && data_end - data < skb->len) {
		/* Pulling more than the packet holds fails: ask for what there is. */
		bpf_skb_pull_data(skb, skb->len < CB_PARSE_PULL_LEN ? skb->len : CB_PARSE_PULL_LEN);
		data = ctx_data(skb);
		data_end = ctx_data_end(skb);
	}
	return parse_packet(data, data_end, skb->len, m);
}

#endif /* CB_PARSE_H */
