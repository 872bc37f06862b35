/* SPDX-License-Identifier: GPL-2.0 */
/* Safe parsing of Ethernet, one VLAN tag, IPv4 (with options), IPv6 (with
 * up to CB_IPV6_MAX_EXTHDRS extension headers), and the TCP, UDP, SCTP, ICMP
 * and ICMPv6 headers, into a struct pkt_meta.  Every read is bounds-checked
 * against data_end; a packet whose headers are cut short or inconsistent is
 * reported as DROP_INVALID and never read past its end.  Lengths in the IP
 * headers are checked against the whole packet (pkt_len), which may extend
 * past data_end: a real skb keeps its payload in pages, outside the linear
 * part the program can read directly.
 *
 * API: parse_packet(data, data_end, pkt_len, &meta) -> 0 or -DROP_INVALID
 *      parse_skb(skb, &meta)
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
	__u8  pad[3];
	__be32 frag_id;		/* fragments: the IP id (IPv4: 16 bits) or the fragment header's */
	union v6addr saddr;	/* IPv4 addresses use p[0] */
	union v6addr daddr;
};

static __always_inline int __parse_l4(void *data, void *l4, void *data_end,
				      struct pkt_meta *m)
{
	if (l4 - data > CB_PKT_OFF_MASK)
		return -DROP_INVALID;
	m->l4_off = (__u16)(l4 - data);
	switch (m->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return -DROP_INVALID;
		if (th->doff < 5 || l4 + th->doff * 4 > data_end)
			return -DROP_INVALID;
		m->sport = th->source;
		m->dport = th->dest;
		/* The flags byte follows the data-offset byte. */
		m->tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return -DROP_INVALID;
		m->sport = uh->source;
		m->dport = uh->dest;
		break;
	}
	case IPPROTO_SCTP: {
		/* The common header: source port, destination port, tag, checksum. */
		__be16 *ports = l4;

		if (l4 + 12 > data_end)
			return -DROP_INVALID;
		m->sport = ports[0];
		m->dport = ports[1];
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, then the echo identifier. */
		__u8 *ih = l4;

		if ((void *)(ih + 8) > data_end)
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

static __always_inline int __parse_ipv4(void *data, void *l3, void *data_end, __u32 pkt_len,
					struct pkt_meta *m)
{
	struct iphdr *ip4 = l3;
	int hlen = ipv4_hdr_len(ip4, data_end);

	if (hlen < 0)
		return hlen;
	if (l3 + hlen > data_end || bpf_ntohs(ip4->tot_len) < hlen ||
	    (l3 - data) + bpf_ntohs(ip4->tot_len) > pkt_len)
		return -DROP_INVALID;
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
	return __parse_l4(data, l3 + hlen, data_end, m);
}

static __always_inline int __parse_ipv6(void *data, void *l3, void *data_end, __u32 pkt_len,
					struct pkt_meta *m)
{
	struct ipv6hdr *ip6 = l3;
	void *cursor;
	__u8 nexthdr;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return -DROP_INVALID;
	if (ip6->version != 6 ||
	    (l3 - data) + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > pkt_len)
		return -DROP_INVALID;
	__builtin_memcpy(&m->saddr, &ip6->saddr, sizeof(m->saddr));
	__builtin_memcpy(&m->daddr, &ip6->daddr, sizeof(m->daddr));
	nexthdr = ip6->nexthdr;
	cursor = ip6 + 1;

#pragma unroll
	for (i = 0; i < CB_IPV6_MAX_EXTHDRS; i++) {
		struct ipv6_opt_hdr *opt = cursor;

		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(opt + 1) > data_end)
				return -DROP_INVALID;
			nexthdr = opt->nexthdr;
			cursor += (opt->hdrlen + 1) * 8;
			m->flags |= PKT_F_IP_OPTIONS;
			break;
		case IPPROTO_AH:
			if ((void *)(opt + 1) > data_end)
				return -DROP_INVALID;
			nexthdr = opt->nexthdr;
			cursor += (opt->hdrlen + 2) * 4;
			m->flags |= PKT_F_IP_OPTIONS;
			break;
		case IPPROTO_FRAGMENT: {
			struct frag_hdr *fh = cursor;

			if ((void *)(fh + 1) > data_end)
				return -DROP_INVALID;
			nexthdr = fh->nexthdr;
			cursor = fh + 1;
			m->flags |= PKT_F_FRAGMENT | PKT_F_IP_OPTIONS;
			m->frag_id = fh->identification;
			if (fh->frag_off & bpf_htons(IP6_OFFSET)) {
				m->flags |= PKT_F_LATER_FRAGMENT;
				m->l4_proto = nexthdr;
				m->l4_off = (__u16)(cursor - data);
				return 0;
			}
			break;
		}
		default:
			goto done;
		}
	}
	/* Still an extension header after the walk: too deep to classify. */
	if (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	    nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_AH ||
	    nexthdr == IPPROTO_FRAGMENT)
		return -DROP_INVALID;
done:
	if (cursor > data_end)
		return -DROP_INVALID;
	m->l4_proto = nexthdr;
	return __parse_l4(data, cursor, data_end, m);
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
