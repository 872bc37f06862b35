"""Header arithmetic written from the RFCs, for the differential oracle: the
Internet checksum (RFC 1071) and its incremental update (RFC 1624, eqn. 3),
pseudo-headers (RFC 793/768 for IPv4, RFC 8200 8.1 for IPv6), and building
Ethernet/IPv4/IPv6/TCP/UDP/SCTP/ICMP/ICMPv6 packets as bytes (the random stage
builds ~10^5 packets; scapy is too slow for that).

Nothing here imports the project's harness: the oracle must not share the
datapath's assumptions.
"""
from __future__ import annotations

import ipaddress
import struct

TCP, UDP, SCTP, ICMP, ICMP6, GRE = 6, 17, 132, 1, 58, 47
HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS = 0, 43, 44, 51, 60
EXT_HDRS = (HOPOPTS, ROUTING, FRAGMENT, AH, DSTOPTS)
ETH_IP, ETH_IP6, ETH_ARP, ETH_8021Q, ETH_8021AD = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
MAC_A, MAC_B = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def addr(a) -> bytes:
    return ipaddress.ip_address(a).packed


def ones_sum(data: bytes, start: int = 0) -> int:
    """RFC 1071 one's complement sum of 16-bit big-endian words (odd byte padded)."""
    if len(data) & 1:
        data = data + b"\0"
    s = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes, start: int = 0) -> int:
    """RFC 1071: the complement of the one's complement sum."""
    return ~ones_sum(data, start) & 0xFFFF


def valid(data: bytes, start: int = 0) -> bool:
    """A block whose checksum field is filled in sums to all ones (-0)."""
    return ones_sum(data, start) == 0xFFFF


def incremental(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over the changed 16-bit words."""
    s = (~check & 0xFFFF)
    for i in range(0, len(old), 2):
        m, m2 = struct.unpack("!H", old[i:i + 2])[0], struct.unpack("!H", new[i:i + 2])[0]
        s += (~m & 0xFFFF) + m2
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return ones_sum(src + dst + struct.pack("!BBH", 0, proto, length))


def pseudo6(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return ones_sum(src + dst + struct.pack("!IxxxB", length, proto))


# -- building ---------------------------------------------------------------------------

def eth(ethertype: int, vlan: int | None = None, dst: bytes = MAC_A, src: bytes = MAC_B) -> bytes:
    if vlan is not None:
        return dst + src + struct.pack("!HHH", ETH_8021Q, vlan, ethertype)
    return dst + src + struct.pack("!H", ethertype)


def tcp_hdr(sport, dport, flags=0x02, seq=1000, ack=0, options=b"", doff=None) -> bytes:
    if len(options) % 4:
        options += b"\x01" * (4 - len(options) % 4)
    d = doff if doff is not None else 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, d << 4, flags, 8192, 0, 0) + options


def udp_hdr(sport, dport, length) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, 0)


def sctp_hdr(sport, dport, tag=0x1234) -> bytes:
    # The CRC32c (RFC 4960 6.8) is never rewritten; any value will do.
    return struct.pack("!HHII", sport, dport, tag, 0x0BADC0DE)


def icmp_hdr(type_, code=0, rest=0) -> bytes:
    return struct.pack("!BBHI", type_, code, 0, rest)


def l4_checksum_offset(proto: int) -> int | None:
    return {TCP: 16, UDP: 6, ICMP: 2, ICMP6: 2}.get(proto)


def fill_l4(proto: int, seg: bytearray, v6: bool, src: bytes, dst: bytes,
            udp_zero: bool = False) -> None:
    """Fill the checksum of a whole (unfragmented) L4 segment in place."""
    off = l4_checksum_offset(proto)
    if off is None or len(seg) < off + 2:
        return
    seg[off:off + 2] = b"\0\0"
    if proto == UDP and udp_zero:
        return
    if proto == ICMP:
        c = checksum(bytes(seg))
    else:
        ph = pseudo6(src, dst, proto, len(seg)) if v6 else pseudo4(src, dst, proto, len(seg))
        c = checksum(bytes(seg), ph)
        if proto == UDP and c == 0:
            c = 0xFFFF          # RFC 768: a computed zero is sent as all ones
    seg[off:off + 2] = struct.pack("!H", c)


def ipv4(src, dst, proto, payload: bytes, ttl=64, ident=1, flags_frag=0, options=b"",
         tos=0, tot_len=None, ihl=None, version=4, fill_csum=True) -> bytes:
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    h_ihl = ihl if ihl is not None else 5 + len(options) // 4
    tl = tot_len if tot_len is not None else 20 + len(options) + len(payload)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", (version << 4) | (h_ihl & 0xF), tos, tl & 0xFFFF,
                                ident, flags_frag, ttl, proto, 0, addr(src), addr(dst)) + options)
    if fill_csum:
        hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    return bytes(hdr) + payload


def ipv6(src, dst, nexthdr, payload: bytes, hlim=64, plen=None, flow=0, version=6) -> bytes:
    pl = plen if plen is not None else len(payload)
    return struct.pack("!IHBB16s16s", (version << 28) | flow, pl & 0xFFFF, nexthdr, hlim,
                       addr(src), addr(dst)) + payload


def ext_opts(nexthdr: int, units: int = 0) -> bytes:
    """A hop-by-hop/dstopts/routing header of (units + 1) * 8 bytes (PadN filled)."""
    body = bytes([1, 4 + units * 8]) + b"\0" * (4 + units * 8)
    return bytes([nexthdr, units]) + body


def ext_ah(nexthdr: int, units: int = 1) -> bytes:
    """An AH header of (units + 2) * 4 bytes."""
    return bytes([nexthdr, units]) + b"\0\0" + struct.pack("!II", 0x100, 1) + b"\0" * (4 * units - 4)


def ext_frag(nexthdr: int, offset_units: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset_units << 3) | int(more), ident)


def segment(proto: int, v6: bool, src, dst, *, sport=0, dport=0, flags=0x02, payload=b"",
            icmp_type=8, icmp_code=0, ident=0, seq=0, udp_zero=False, tcp_options=b"") -> bytes:
    """A whole L4 segment with a correct checksum."""
    s, d = addr(src), addr(dst)
    if proto == TCP:
        seg = bytearray(tcp_hdr(sport, dport, flags, options=tcp_options) + payload)
    elif proto == UDP:
        seg = bytearray(udp_hdr(sport, dport, 8 + len(payload)) + payload)
    elif proto == SCTP:
        return sctp_hdr(sport, dport) + payload
    elif proto in (ICMP, ICMP6):
        seg = bytearray(icmp_hdr(icmp_type, icmp_code, (ident << 16) | seq) + payload)
    else:
        return payload
    fill_l4(proto, seg, v6, s, d, udp_zero)
    return bytes(seg)


def link_scoped6(addr: bytes) -> bool:
    """RFC 4291: link-local unicast (fe80::/10) or multicast of link scope (ffx2::)."""
    return (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or (addr[0] == 0xFF and addr[1] & 0x0F == 2)


# -- parsing (the spec's rules, SPEC.md "Parsing") ----------------------------------

class Parsed:
    """What the spec's parser sees in a frame.  kind: "invalid" (134), "other"
    (not IP: passes untouched) or "ip".  Offsets are from the frame start."""
    __slots__ = ("kind", "v6", "l3", "end", "l4", "proto", "src", "dst", "frag", "later",
                 "has_l4", "sport", "dport", "type", "code", "tcp_flags", "ident", "hlim",
                 "tags", "ext")

    def __init__(self):
        self.kind, self.v6, self.l3, self.end, self.l4 = "ip", False, 14, 0, 0
        self.proto, self.src, self.dst = 0, b"", b""
        self.frag = self.later = self.has_l4 = False
        self.sport = self.dport = self.type = self.code = self.tcp_flags = self.ident = 0
        self.hlim = 0
        self.tags: set[str] = set()
        self.ext = 0


def _invalid(p: Parsed, tag: str | None = None) -> Parsed:
    p.kind = "invalid"
    if tag:
        p.tags.add(tag)
    return p


L4_MIN = {TCP: 20, UDP: 8, SCTP: 12, ICMP: 8, ICMP6: 8}


def parse_l4(p: Parsed, data: bytes, off: int) -> Parsed:
    """The L4 header at *off* must lie inside the IP packet (p.end)."""
    p.l4 = off
    need = L4_MIN.get(p.proto)
    if need is None:
        return p                                    # no ports: conntrack uses 0
    if off + need > p.end:
        # Inside the frame but past the IP length: being fixed now (134 after merge).
        return _invalid(p, "l4-past-totlen" if off + need <= len(data) else None)
    if p.proto == TCP:
        doff = data[off + 12] >> 4
        if doff < 5:
            return _invalid(p)
        if off + doff * 4 > p.end:
            return _invalid(p, "l4-past-totlen" if off + doff * 4 <= len(data) else None)
        p.tcp_flags = data[off + 13]
    if p.proto in (ICMP, ICMP6):
        p.type, p.code = data[off], data[off + 1]
        p.sport = struct.unpack_from("!H", data, off + 4)[0]      # echo identifier
    else:
        p.sport, p.dport = struct.unpack_from("!HH", data, off)
    p.has_l4 = True
    return p


def parse_ipv6_chain(p: Parsed, data: bytes, nexthdr: int, cur: int, end: int,
                     max_ext: int = 4) -> tuple[int, int, str | None]:
    """Walk at most *max_ext* extension headers: (l4 proto, l4 offset, error)."""
    for _ in range(max_ext):
        if nexthdr not in EXT_HDRS:
            return nexthdr, cur, None
        if cur + (8 if nexthdr == FRAGMENT else 2) > end:
            return nexthdr, cur, "cut"
        p.ext += 1
        if nexthdr == FRAGMENT:
            fo, ident = struct.unpack_from("!HI", data, cur + 2)
            p.frag, p.ident = True, ident
            nexthdr = data[cur]
            cur += 8
            if fo >> 3:
                p.later = True
                return nexthdr, cur, None
            continue
        ln = (data[cur + 1] + 2) * 4 if nexthdr == AH else (data[cur + 1] + 1) * 8
        if cur + ln > end:
            return nexthdr, cur, "cut"
        nexthdr = data[cur]
        cur += ln
    if nexthdr in EXT_HDRS:
        return nexthdr, cur, "deep"
    return nexthdr, cur, None


def parse(data: bytes) -> Parsed:
    p = Parsed()
    n = len(data)
    if n < 14:
        return _invalid(p)
    et = struct.unpack_from("!H", data, 12)[0]
    l3 = 14
    if et in (ETH_8021Q, ETH_8021AD):
        if n < 18:
            return _invalid(p)
        et = struct.unpack_from("!H", data, 16)[0]
        l3 = 18
    p.l3 = l3
    if et == ETH_IP:
        if l3 + 20 > n:
            return _invalid(p)
        vihl = data[l3]
        hl = (vihl & 0xF) * 4
        tl = struct.unpack_from("!H", data, l3 + 2)[0]
        if vihl >> 4 != 4 or hl < 20 or l3 + hl > n or tl < hl or l3 + tl > n:
            return _invalid(p)
        p.end = l3 + tl
        p.proto = data[l3 + 9]
        p.src, p.dst = data[l3 + 12:l3 + 16], data[l3 + 16:l3 + 20]
        p.ident = struct.unpack_from("!H", data, l3 + 4)[0]
        p.hlim = data[l3 + 8]
        ff = struct.unpack_from("!H", data, l3 + 6)[0]
        if ff & 0x3FFF:
            p.frag = True
            if ff & 0x1FFF:
                p.later = True
                p.l4 = l3 + hl
                return p
        return parse_l4(p, data, l3 + hl)
    if et == ETH_IP6:
        if l3 + 40 > n:
            return _invalid(p)
        if data[l3] >> 4 != 6:
            return _invalid(p)
        plen = struct.unpack_from("!H", data, l3 + 4)[0]
        if l3 + 40 + plen > n:
            return _invalid(p)
        p.v6, p.end = True, l3 + 40 + plen
        p.src, p.dst = data[l3 + 8:l3 + 24], data[l3 + 24:l3 + 40]
        p.hlim = data[l3 + 7]
        nh, cur, err = parse_ipv6_chain(p, data, data[l3 + 6], l3 + 40, p.end)
        if err:
            return _invalid(p)
        p.proto = nh
        if p.later:
            p.l4 = cur
            return p
        return parse_l4(p, data, cur)
    p.kind = "other"
    return p
