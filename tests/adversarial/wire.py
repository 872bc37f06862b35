"""Frames as bytes, read from the RFCs (not from scapy, not from the datapath): where
each header is, what the spec says a parser must reject, and the Internet checksums.

  layout(frame)          -> Layout: offsets of L2/L3/L4, lengths, fragment state, and
                            `invalid`: the spec's reason to drop it as 134 (None if sane)
  csum(data)             RFC 1071 one's-complement sum (folded, not complemented)
  checksums(frame, lay)  -> {name: valid?} for every checksum the frame carries:
                            IPv4 header (RFC 791), TCP (793), UDP (768; 0 = none),
                            ICMP (792), ICMPv6 (4443), the quoted IPv4 header of an ICMP
                            error, with the pseudo-headers of RFC 768/793/8200 s8.1
"""
from __future__ import annotations

from dataclasses import dataclass, field

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
EXT_HEADERS = (0, 43, 60, 51, 44)          # hop-by-hop, routing, dstopts, AH, fragment
MAX_EXT = 4
#: minimum L4 header a parser needs (spec: "Parsing")
L4_MIN = {TCP: 20, UDP: 8, SCTP: 12, ICMP: 8, ICMP6: 8}
ICMP4_ERRORS, ICMP6_ERRORS = (3, 11, 12), (1, 2, 3, 4)


@dataclass
class Layout:
    length: int
    ethertype: int | None = None      # after at most one VLAN tag
    vlan: bool = False
    l3: int | None = None
    version: int | None = None
    hlen: int = 0                      # IPv4 header incl. options / 40 for IPv6
    ip_end: int | None = None          # l3 + tot_len (v4) / l3 + 40 + payload_len (v6)
    proto: int | None = None           # the L4 protocol after extension headers
    l4: int | None = None              # offset of the L4 header (None: later fragment / absent)
    frag_off: int = 0                  # in 8-byte units
    more_frags: bool = False
    ext: list = field(default_factory=list)     # (type, offset, length) of IPv6 ext headers
    invalid: str | None = None         # the spec's reason for 134 (None: parses)
    ambiguous: str | None = None       # the spec gives no definite verdict for this shape
    l4_past_end: bool = False          # L4 header inside the frame but past the IP length

    @property
    def fragment(self) -> bool:
        return self.frag_off != 0 or self.more_frags

    @property
    def src(self) -> tuple[int, int] | None:
        """(offset, size) of the IP source address."""
        if self.l3 is None or self.version is None:
            return None
        return (self.l3 + 12, 4) if self.version == 4 else (self.l3 + 8, 16)

    @property
    def dst(self) -> tuple[int, int] | None:
        if self.l3 is None or self.version is None:
            return None
        return (self.l3 + 16, 4) if self.version == 4 else (self.l3 + 24, 16)


def layout(f: bytes) -> Layout:
    """Where everything is in frame *f*, and whether the spec calls it invalid."""
    n = len(f)
    lay = Layout(n)
    if n < 14:
        lay.invalid = "ethernet shorter than 14"
        return lay
    et, off = int.from_bytes(f[12:14], "big"), 14
    if et in (ETH_P_8021Q, ETH_P_8021AD):
        lay.vlan = True
        if n < 18:
            lay.ambiguous = "cut VLAN tag"
            return lay
        et, off = int.from_bytes(f[16:18], "big"), 18
    lay.ethertype = et
    if et == ETH_P_IP:
        _ipv4(f, off, lay)
    elif et == ETH_P_IPV6:
        _ipv6(f, off, lay)
    return lay


def _ipv4(f: bytes, off: int, lay: Layout) -> None:
    n = len(f)
    lay.l3 = off
    if n - off < 20:
        lay.invalid = "IPv4 header cut"
        return
    lay.version = f[off] >> 4
    ihl = (f[off] & 0xF) * 4
    tot = int.from_bytes(f[off + 2:off + 4], "big")
    if lay.version != 4:
        lay.invalid = "IPv4 version"
    elif ihl < 20:
        lay.invalid = "IHL < 5"
    elif off + ihl > n:
        lay.invalid = "IPv4 options cut"
    elif tot < ihl:
        lay.invalid = "tot_len < IHL"
    elif off + tot > n:
        lay.invalid = "tot_len past the frame"
    if lay.invalid:
        lay.version = 4 if lay.version == 4 else lay.version
        return
    lay.hlen, lay.ip_end, lay.proto = ihl, off + tot, f[off + 9]
    fo = int.from_bytes(f[off + 6:off + 8], "big")
    lay.frag_off, lay.more_frags = fo & 0x1FFF, bool(fo & 0x2000)
    if lay.frag_off == 0:
        _l4(f, off + ihl, lay)


def _ipv6(f: bytes, off: int, lay: Layout) -> None:
    n = len(f)
    lay.l3 = off
    if n - off < 40:
        lay.invalid = "IPv6 header cut"
        return
    lay.version = f[off] >> 4
    plen = int.from_bytes(f[off + 4:off + 6], "big")
    if lay.version != 6:
        lay.invalid = "IPv6 version"
        return
    if off + 40 + plen > n:
        lay.invalid = "payload_len past the frame"
        return
    lay.hlen, lay.ip_end = 40, off + 40 + plen
    nh, p = f[off + 6], off + 40
    while nh in EXT_HEADERS:
        if len(lay.ext) == MAX_EXT:
            lay.invalid = "more than 4 extension headers"
            return
        if p + 8 > n:
            lay.invalid = "extension header cut"
            return
        if nh == 44:
            size = 8
            fo = int.from_bytes(f[p + 2:p + 4], "big")
            lay.frag_off, lay.more_frags = fo >> 3, bool(fo & 1)
        elif nh == 51:
            size = (f[p + 1] + 2) * 4
        else:
            size = (f[p + 1] + 1) * 8
        if p + size > n:
            lay.invalid = "extension header cut"
            return
        if p + size > lay.ip_end:
            lay.ambiguous = "extension header past payload_len"
        lay.ext.append((nh, p, size))
        nh, p = f[p], p + size
        if lay.frag_off:
            lay.proto = nh
            return
    lay.proto = nh
    _l4(f, p, lay)


def _l4(f: bytes, p: int, lay: Layout) -> None:
    need = L4_MIN.get(lay.proto)
    if need is None:
        return
    if (lay.proto == ICMP and lay.version == 6) or (lay.proto == ICMP6 and lay.version == 4):
        lay.ambiguous = "ICMP of the other family"
        return
    end = lay.ip_end
    if p + need > end:
        lay.invalid = f"L4 header past the IP length ({lay.proto})"
        lay.l4_past_end = p + need <= len(f)
        return
    if lay.proto == TCP:
        doff = (f[p + 12] >> 4) * 4
        if doff < 20:
            lay.invalid = "TCP doff < 5"
            return
        if p + doff > end:
            lay.invalid = "TCP options past the IP length"
            lay.l4_past_end = p + doff <= len(f)
            return
    lay.l4 = p


# -- checksums --------------------------------------------------------------------------------
def csum(data: bytes, start: int = 0) -> int:
    """RFC 1071: the 16-bit one's-complement sum of *data* (odd length padded with a
    zero byte), folded, plus *start*; the checksum field is ~this & 0xffff."""
    if len(data) % 2:
        data += b"\0"
    s = start + sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _pseudo(f: bytes, lay: Layout, proto: int, length: int) -> int:
    a = lay.l3
    if lay.version == 4:
        ph = f[a + 12:a + 20] + bytes([0, proto]) + length.to_bytes(2, "big")
    else:
        ph = f[a + 8:a + 40] + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
    return csum(ph)


def checksums(f: bytes, lay: Layout) -> dict[str, bool]:
    """Every checksum the frame carries and whether it verifies.  UDP over v4 or v6
    with checksum 0 is reported as "udp0" (no checksum, RFC 768; the spec keeps it 0
    over IPv6 too)."""
    out: dict[str, bool] = {}
    if lay.invalid or lay.l3 is None or lay.version is None or lay.ip_end is None:
        return out
    a = lay.l3
    if lay.version == 4:
        out["ip"] = csum(f[a:a + lay.hlen]) == 0xFFFF
    p = lay.l4
    if p is None or lay.fragment:
        return out
    seg = f[p:lay.ip_end]
    if lay.proto == TCP:
        out["tcp"] = csum(seg, _pseudo(f, lay, TCP, len(seg))) == 0xFFFF
    elif lay.proto == UDP:
        if f[p + 6:p + 8] == b"\0\0":
            out["udp0"] = True
        else:
            out["udp"] = csum(seg, _pseudo(f, lay, UDP, len(seg))) == 0xFFFF
    elif lay.proto == ICMP and lay.version == 4:
        out["icmp"] = csum(seg) == 0xFFFF
        if f[p] in ICMP4_ERRORS:
            q = p + 8
            if q + 20 <= lay.ip_end and f[q] >> 4 == 4:
                qh = (f[q] & 0xF) * 4
                if qh >= 20 and q + qh <= lay.ip_end:
                    out["quoted-ip"] = csum(f[q:q + qh]) == 0xFFFF
    elif lay.proto == ICMP6 and lay.version == 6:
        out["icmp6"] = csum(seg, _pseudo(f, lay, ICMP6, len(seg))) == 0xFFFF
    return out


def quote(f: bytes, lay: Layout) -> tuple[int, int] | None:
    """(offset, version) of the packet an ICMP/ICMPv6 error quotes, if any."""
    p = lay.l4
    if p is None or lay.ip_end is None or lay.frag_off:
        return None
    if (lay.proto == ICMP and lay.version == 4 and f[p] in ICMP4_ERRORS) or (
            lay.proto == ICMP6 and lay.version == 6 and f[p] in ICMP6_ERRORS):
        q = p + 8
        if q < lay.ip_end:
            return q, f[q] >> 4
    return None


def fix_checksums(f: bytes) -> bytes:
    """*f* with its IPv4 header checksum and (unfragmented, whole) L4 checksum
    recomputed, so a mutation of another field still carries valid checksums."""
    lay = layout(f)
    if lay.invalid or lay.l3 is None or lay.ip_end is None:
        return f
    b = bytearray(f)
    a = lay.l3
    if lay.version == 4:
        b[a + 10:a + 12] = b"\0\0"
        b[a + 10:a + 12] = (~csum(bytes(b[a:a + lay.hlen])) & 0xFFFF).to_bytes(2, "big")
    p = lay.l4
    if p is None or lay.fragment:
        return bytes(b)
    field = {TCP: 16, UDP: 6, ICMP: 2, ICMP6: 2}.get(lay.proto)
    if field is None or (lay.proto == UDP and b[p + 6:p + 8] == b"\0\0"):
        return bytes(b)
    b[p + field:p + field + 2] = b"\0\0"
    seg = bytes(b[p:lay.ip_end])
    start = 0 if (lay.proto == ICMP and lay.version == 4) else _pseudo(bytes(b), lay, lay.proto, len(seg))
    c = ~csum(seg, start) & 0xFFFF
    if lay.proto == UDP and c == 0:
        c = 0xFFFF
    b[p + field:p + field + 2] = c.to_bytes(2, "big")
    return bytes(b)


def link_scoped6(addr: bytes) -> bool:
    """RFC 4291: link-local unicast (fe80::/10) or multicast of link scope (ffx2::)."""
    return (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) or (addr[0] == 0xFF and addr[1] & 0x0F == 2)
