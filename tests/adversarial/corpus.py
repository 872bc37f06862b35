"""The malformed-packet corpus, generated deterministically from valid base packets
(built once with scapy, then mutated as bytes), and the seeded random mutator of
`make fuzz`.

  bases()             valid packets of every kind the spec names, each with the program
                      (and pod) it is run through; `warmup` ones open flows first
  truncations(b)      b cut at every length 0..len
  field_edges(b)      every header field at its edge and illegal values
  forged_quotes(b)    ICMP errors quoting other pods' flows, cut quotes, quotes with IP
                      options / extension headers, oversized errors
  with_trailer(b)     b with bytes after the IP packet
  expectation(case)   the verdict the spec makes definite for a case, else None
  fuzz(cases, seed)   endless seeded random byte/field mutations of the corpus
"""
from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, replace
from typing import Iterator

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
                                ICMPv6ND_RS, ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6,
                                IPv6ExtHdrFragment)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from scapy.layers.sctp import SCTP, SCTPChunkInit

from . import node as N
from . import wire as W

MAC_POD, MAC_HOST = "02:cb:00:00:00:01", "02:cb:00:00:00:02"


@dataclass(frozen=True)
class Case:
    family: str              # base / truncate / field / quote / trailer / fuzz
    label: str               # how it was made, e.g. "tcp4-client-world trunc 33"
    program: str
    pod: str | None
    frame: bytes
    warmup: bool = False     # a base run first so later packets find its flow

    def but(self, family: str, label: str, frame: bytes) -> "Case":
        return replace(self, family=family, label=f"{self.label} {label}", frame=frame,
                       warmup=False)


def _eth(vlan: bool):
    e = Ether(src=MAC_POD, dst=MAC_HOST)
    return e / Dot1Q(vlan=7) if vlan else e


# -- bases ------------------------------------------------------------------------------------
def _l3_l4(v6: bool, src: str, dst: str, l4, ext: int = 0, options=None, frag=None):
    if v6:
        ip = IPv6(src=src, dst=dst, hlim=64)
        if ext:
            # own bytes (scapy leaves AH's next header unset); checksums fixed by _built
            first, hdrs = _ext_bytes(ext, 6)
            return IPv6(src=src, dst=dst, hlim=64, nh=first) / Raw(hdrs + bytes(l4))
        if frag is not None:
            ip = ip / IPv6ExtHdrFragment(id=7, offset=frag[0], m=frag[1])
        return ip / l4
    ip = IP(src=src, dst=dst, ttl=64, id=77, options=options or [])
    if frag is not None:
        ip.frag, ip.flags = frag[0], ("MF" if frag[1] else 0)
    return ip / l4


def _built(pkt) -> bytes:
    return W.fix_checksums(bytes(Ether(bytes(pkt))))


def bases() -> list[Case]:
    """Valid packets of every kind, v4 and v6, with and without a VLAN tag."""
    out: list[Case] = []
    P = N.PODS

    def add(name, program, pod, l3l4_fn, warmup=False):
        for vlan in (False, True):
            frame = _built(_eth(vlan) / l3l4_fn())
            out.append(Case("base", f"{name}{'-vlan' if vlan else ''}", program, pod, frame,
                            warmup and not vlan))

    for v6 in (False, True):
        fam = "6" if v6 else "4"
        a = (lambda p: P[p].ip6) if v6 else (lambda p: P[p].ip4)
        world, world2, router = (N.WORLD6, N.WORLD6_2, N.ROUTER6) if v6 else (N.WORLD, N.WORLD2, N.ROUTER)
        vip, node = (N.VIP6, N.NODE6) if v6 else (N.VIP4, N.NODE4)
        payload = b"adversarial!" * 2
        tcp = lambda s, d, fl="S": TCP(sport=s, dport=d, flags=fl, seq=1000, ack=5 if "A" in fl else 0,  # noqa: E731
                                        window=512) / payload
        # flows (warm-up): client -> world:80 allowed; x -> service; web answered
        add(f"tcp{fam}-client-world", "from_container", "client",
            lambda: _l3_l4(v6, a("client"), world, tcp(40000, 80)), warmup=True)
        add(f"tcp{fam}-world-client-reply", "to_container", "client",
            lambda: _l3_l4(v6, world, a("client"), tcp(80, 40000, "SA")), warmup=True)
        add(f"tcp{fam}-x-vip", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), vip, tcp(40001, N.SVC_PORT)), warmup=True)
        add(f"udp{fam}-x-vip", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), vip, UDP(sport=40002, dport=N.SVC_PORT) / payload), warmup=True)
        add(f"udp{fam}-x-world", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), world, UDP(sport=40003, dport=53) / payload), warmup=True)
        add(f"tcp{fam}-client-web", "to_container", "web",
            lambda: _l3_l4(v6, a("client"), a("web"), tcp(40004, 80)), warmup=True)
        add(f"tcp{fam}-world-web-denied", "to_container", "web",
            lambda: _l3_l4(v6, world, a("web"), tcp(40005, 80)))
        add(f"tcp{fam}-x-d-denyrule", "to_container", "d",
            lambda: _l3_l4(v6, a("x"), a("d"), tcp(40006, 80)))
        add(f"tcp{fam}-d-world-22-denyrule", "from_container", "d",
            lambda: _l3_l4(v6, a("d"), world, tcp(40007, 22)))
        add(f"sctp{fam}-x-world", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), world, SCTP(sport=40008, dport=80, tag=1) / SCTPChunkInit()))
        add(f"gre{fam}-x-world", "from_container", "x",
            lambda: (IPv6(src=a("x"), dst=world, nh=47) if v6 else IP(src=a("x"), dst=world, proto=47))
            / (b"\0\0\x08\0" + payload))
        add(f"tcp{fam}-world-x", "to_container", "x",
            lambda: _l3_l4(v6, world2, a("x"), tcp(40009, 8080)))
        # fragments: first and later
        add(f"udp{fam}-x-world-firstfrag", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), world, UDP(sport=40010, dport=53, len=200) / payload, frag=(0, 1)))
        add(f"udp{fam}-x-world-laterfrag", "from_container", "x",
            lambda: _l3_l4(v6, a("x"), world, payload * 2, frag=(4, 0)))
        add(f"tcp{fam}-client-world-laterfrag", "from_container", "client",
            lambda: _l3_l4(v6, a("client"), world, payload * 2, frag=(8, 1)))
        if v6:
            for n in range(0, 6):
                add(f"tcp6-x-world-ext{n}", "from_container", "x",
                    lambda n=n: _l3_l4(True, a("x"), world, tcp(40020 + n, 80), ext=n))
                add(f"tcp6-world-x-ext{n}", "to_container", "x",
                    lambda n=n: _l3_l4(True, world, a("x"), tcp(40030 + n, 80), ext=n))
            add("echo6-x-world", "from_container", "x",
                lambda: IPv6(src=a("x"), dst=world) / ICMPv6EchoRequest(id=9, seq=1, data=payload))
            add("echo6-x-vip", "from_container", "x",
                lambda: IPv6(src=a("x"), dst=vip) / ICMPv6EchoRequest(id=10, seq=1, data=payload))
            add("ndp-ns-x", "from_container", "x",
                lambda: IPv6(src="fe80::30", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt="fe80::1"))
            add("ndp-na-to-x", "to_container", "x",
                lambda: IPv6(src="fe80::1", dst="fe80::30", hlim=255) / ICMPv6ND_NA(tgt="fe80::1"))
            add("ndp-rs-client", "from_container", "client",
                lambda: IPv6(src="fe80::40", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
            add("ptb6-router-client", "to_container", "client",
                lambda: IPv6(src=router, dst=a("client")) / ICMPv6PacketTooBig(mtu=1280)
                / IPv6(src=a("client"), dst=world) / TCP(sport=40000, dport=80, flags="S", seq=1000))
            add("unreach6-x-world", "from_container", "x",
                lambda: IPv6(src=a("x"), dst=world) / ICMPv6DestUnreach(code=4)
                / IPv6(src=world, dst=a("x")) / UDP(sport=53, dport=40003))
            add("timex6-router-x-svc", "to_container", "x",
                lambda: IPv6(src=router, dst=a("x")) / ICMPv6TimeExceeded()
                / IPv6(src=a("x"), dst=N.WEB6) / TCP(sport=40001, dport=N.TARGET_PORT, flags="S"))
        else:
            add("tcp4-x-world-options", "from_container", "x",
                lambda: _l3_l4(False, a("x"), world, tcp(40040, 80),
                               options=[IPOption_NOP(), IPOption_RR(routers=["1.2.3.4"])]))
            add("echo4-x-world", "from_container", "x",
                lambda: IP(src=a("x"), dst=world) / ICMP(type=8, id=9, seq=1) / payload, warmup=True)
            add("echo4-x-vip", "from_container", "x",
                lambda: IP(src=a("x"), dst=vip) / ICMP(type=8, id=10, seq=1) / payload)
            add("echo4-client-node", "from_container", "client",
                lambda: IP(src=a("client"), dst=node) / ICMP(type=8, id=11) / payload, warmup=True)
            add("echo4-node-client-reply", "to_container", "client",
                lambda: IP(src=node, dst=a("client")) / ICMP(type=0, id=11) / payload)
            add("unreach4-router-client", "to_container", "client",
                lambda: IP(src=router, dst=a("client")) / ICMP(type=3, code=4)
                / IP(src=a("client"), dst=world, id=1) / TCP(sport=40000, dport=80, flags="S", seq=1000))
            add("unreach4-x-world", "from_container", "x",
                lambda: IP(src=a("x"), dst=world) / ICMP(type=3, code=3)
                / IP(src=world, dst=a("x")) / UDP(sport=53, dport=40003))
            add("timex4-router-x-svc", "to_container", "x",
                lambda: IP(src=router, dst=a("x")) / ICMP(type=11)
                / IP(src=a("x"), dst=N.WEB) / TCP(sport=40001, dport=N.TARGET_PORT, flags="S"))
            add("timex4-web-x-svc-backend", "to_container", "x",
                lambda: IP(src=N.WEB, dst=a("x")) / ICMP(type=3, code=1)
                / IP(src=a("x"), dst=N.WEB) / UDP(sport=40002, dport=N.TARGET_PORT))
            # from the outside
            add("np-local", "from_netdev", None,
                lambda: IP(src=world, dst=node) / tcp(50000, N.NODEPORT_LOCAL), warmup=True)
            add("np-remote", "from_netdev", None,
                lambda: IP(src=world, dst=node) / tcp(50001, N.NODEPORT_REMOTE), warmup=True)
            add("np-other-port", "from_netdev", None,
                lambda: IP(src=world, dst=node) / UDP(sport=50002, dport=4789) / payload)
            add("netdev-to-pod", "from_netdev", None,
                lambda: IP(src=world, dst=a("web")) / tcp(50003, 80))
        if v6:
            add("netdev6-to-node", "from_netdev", None,
                lambda: IPv6(src=world, dst=node) / tcp(50004, N.NODEPORT_LOCAL))
    # non-IP
    out.append(Case("base", "arp", "from_container", "x",
                    bytes.fromhex("ffffffffffff02cb00000001" "0806" "0001080006040001"
                                  "02cb00000001c612001e" "000000000000c6120014")))
    return out


# -- expectations -------------------------------------------------------------------------------
def expectation(case: Case, lay: W.Layout | None = None) -> str | int | None:
    """What the spec makes definite: "REFUSED" (node.kernel_refuses: never run),
    134 for a packet the parser must reject, "pass" for a non-IP frame, 132 for a pod's
    packet with a source not its own; None where the verdict depends on more (policy,
    conntrack: the invariants still apply)."""
    f = case.frame
    lay = lay or W.layout(f)
    if N.kernel_refuses(f):
        return "REFUSED"
    if lay.ambiguous:
        return None
    if lay.ethertype not in (W.ETH_P_IP, W.ETH_P_IPV6):
        return "pass" if lay.ethertype is not None else None
    if lay.invalid:
        return 134
    if case.program == "from_container":
        s, n = lay.src
        pod = N.PODS[case.pod]
        own = ipaddress.ip_address(pod.ip4 if lay.version == 4 else pod.ip6).packed
        d, dn = lay.dst
        ndp = (lay.version == 6 and lay.proto == W.ICMP6 and lay.l4 is not None
               and 133 <= f[lay.l4] <= 137 and f[lay.l3 + 7] == 255
               and W.link_scoped6(f[d:d + dn]))
        if f[s:s + n] != own and not ndp:
            return 132
    return None


# -- mutations ----------------------------------------------------------------------------------
def truncations(b: Case) -> Iterator[Case]:
    for n in range(0, len(b.frame) + 1):
        yield b.but("truncate", f"cut {n}", b.frame[:n])


def with_trailer(b: Case) -> Iterator[Case]:
    for t in (b"\xaa", b"\x00\x01\x02\x03", bytes(range(0x40, 0x40 + 46))):
        yield b.but("trailer", f"trailer {len(t)}", b.frame + t)


def _set(f: bytes, off: int, size: int, value: int) -> bytes:
    if off + size > len(f):
        return f
    return f[:off] + value.to_bytes(size, "big") + f[off + size:]


def _addr_values(v6: bool) -> list[bytes]:
    P = N.PODS
    if v6:
        names = [p.ip6 for p in P.values()] + ["::", "::1", "ff02::1", "fe80::1", N.VIP6, N.NODE6,
                                                 N.WORLD6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    else:
        names = [p.ip4 for p in P.values()] + ["0.0.0.0", "255.255.255.255", "127.0.0.1",
                                                 "224.0.0.1", N.VIP4, N.NODE4, N.WORLD]
    return [ipaddress.ip_address(a).packed for a in names]


def field_edges(b: Case, full: bool = True) -> Iterator[Case]:
    """Every header field at edge and illegal values.  Mutations of fields other than
    a checksum get their checksums recomputed (wire.fix_checksums) so the invariant
    "valid stays valid" is exercised; checksum mutations are left as set.
    *full*: the 256-value sweeps (TCP flags, ICMP type, IPv6 next header) too."""
    f, lay = b.frame, W.layout(b.frame)
    a, p = lay.l3, lay.l4
    if a is None or lay.version is None:
        return

    def mut(label, off, size, value, fix=True):
        g = _set(f, off, size, value)
        if g != f:
            return b.but("field", label, W.fix_checksums(g) if fix else g)
        return None

    items = []
    if lay.version == 4:
        ihl = lay.hlen // 4
        items += [mut(f"ver {v}", a, 1, (v << 4) | ihl) for v in (0, 1, 3, 5, 6, 15)]
        items += [mut(f"ihl {v}", a, 1, 0x40 | v) for v in range(16)]
        items += [mut(f"tos {v}", a + 1, 1, v) for v in (1, 0xFC, 0xFF)]
        tot = lay.ip_end - a
        for v in sorted({0, 1, 19, 20, lay.hlen - 1, lay.hlen, lay.hlen + 1, lay.hlen + 4,
                         lay.hlen + 7, lay.hlen + 8, lay.hlen + 11, lay.hlen + 19, tot - 1, tot + 1,
                         0xFFFE, 0xFFFF}):
            items.append(mut(f"tot_len {v}", a + 2, 2, v))
        items += [mut(f"id {v}", a + 4, 2, v) for v in (0, 0xFFFF)]
        items += [mut(f"frag {v:#x}", a + 6, 2, v)
                  for v in (0x4000, 0x2000, 0x2001, 0x0001, 0x1FFF, 0x3FFF, 0x8000, 0xFFFF, 0x6000)]
        items += [mut(f"ttl {v}", a + 8, 1, v) for v in (0, 1, 254, 255)]
        items += [mut(f"proto {v}", a + 9, 1, v)
                  for v in (0, 1, 2, 4, 6, 17, 41, 47, 50, 51, 58, 132, 253, 254, 255)]
        items += [mut(f"ipcsum {v:#x}", a + 10, 2, v, fix=False) for v in (0, 0xFFFF)]
        for i, addr in enumerate(_addr_values(False)):
            items.append(b.but("field", f"src#{i}", W.fix_checksums(f[:a + 12] + addr + f[a + 16:])))
            items.append(b.but("field", f"dst#{i}", W.fix_checksums(f[:a + 16] + addr + f[a + 20:])))
    else:
        items += [mut(f"ver {v}", a, 1, (v << 4) | (f[a] & 0xF)) for v in (0, 4, 5, 7, 15)]
        items += [mut(f"flow {v:#x}", a, 4, v) for v in (0x6FFFFFFF, 0x60000001, 0x6FF00000)]
        plen = lay.ip_end - a - 40
        for v in sorted({0, 1, 7, 8, 19, 20, plen - 1, plen + 1, 0xFFFE, 0xFFFF}):
            items.append(mut(f"plen {v}", a + 4, 2, v))
        nhs = range(256) if full else (0, 1, 6, 17, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255)
        items += [mut(f"nh {v}", a + 6, 1, v) for v in nhs]
        items += [mut(f"hlim {v}", a + 7, 1, v) for v in (0, 1, 254, 255)]
        for i, addr in enumerate(_addr_values(True)):
            items.append(b.but("field", f"src#{i}", W.fix_checksums(f[:a + 8] + addr + f[a + 24:])))
            items.append(b.but("field", f"dst#{i}", W.fix_checksums(f[:a + 24] + addr + f[a + 40:])))
        for (t, off, size) in lay.ext:
            items += [mut(f"ext@{off} nh {v}", off, 1, v) for v in (0, 6, 17, 44, 58, 59, 255)]
            if t != 44:
                items += [mut(f"ext@{off} len {v}", off + 1, 1, v) for v in (0, 1, 255)]
            else:
                items += [mut(f"frag@{off} {v:#x}", off + 2, 2, v) for v in (1, 8, 9, 0xFFF8, 0xFFF9)]
    if p is not None:
        if lay.proto in (W.TCP, W.UDP, W.SCTP):
            for v in (0, 1, 0xFFFE, 0xFFFF):
                items += [mut(f"sport {v}", p, 2, v), mut(f"dport {v}", p + 2, 2, v)]
        if lay.proto == W.TCP:
            items += [mut(f"seq {v:#x}", p + 4, 4, v) for v in (0, 0xFFFFFFFF)]
            items += [mut(f"ack {v:#x}", p + 8, 4, v) for v in (0, 0xFFFFFFFF)]
            items += [mut(f"doff {v}", p + 12, 1, (v << 4) | (f[p + 12] & 0xF)) for v in range(16)]
            flags = range(256) if full else (0, 1, 2, 3, 4, 6, 0x10, 0x11, 0x12, 0x14, 0x29, 0xFF)
            items += [mut(f"flags {v:#x}", p + 13, 1, v) for v in flags]
            items += [mut(f"win {v}", p + 14, 2, v) for v in (0, 0xFFFF)]
            items += [mut(f"tcpcsum {v:#x}", p + 16, 2, v, fix=False) for v in (0, 0xFFFF)]
            items += [mut(f"urg {v}", p + 18, 2, v) for v in (1, 0xFFFF)]
        elif lay.proto == W.UDP:
            ulen = lay.ip_end - p
            items += [mut(f"ulen {v}", p + 4, 2, v)
                      for v in sorted({0, 1, 7, 8, 9, ulen - 1, ulen + 1, 0xFFFF})]
            items += [mut(f"udpcsum {v:#x}", p + 6, 2, v, fix=False) for v in (0, 0xFFFF)]
        elif lay.proto == W.SCTP:
            items += [mut(f"vtag {v:#x}", p + 4, 4, v) for v in (0, 0xFFFFFFFF)]
            items += [mut(f"crc {v:#x}", p + 8, 4, v, fix=False) for v in (0, 0xFFFFFFFF)]
        elif lay.proto in (W.ICMP, W.ICMP6):
            codes = (0, 1, 4, 255) if full else (0, 255)
            types = range(256) if full else (0, 3, 8, 11, 12, 128, 129, 133, 137, 255)
            items += [mut(f"type {t} code {c}", p, 2, (t << 8) | c) for t in types for c in codes]
            items += [mut(f"icmpcsum {v:#x}", p + 2, 2, v, fix=False) for v in (0, 0xFFFF)]
            items += [mut(f"icmpid {v:#x}", p + 4, 2, v) for v in (0, 0xFFFF)]
    for it in items:
        if it is not None:
            yield it


def forged_quotes(b: Case) -> Iterator[Case]:
    """For an ICMP error base: the quote's addresses replaced by every pod's (and the
    world's), the quote cut at every length (the error's lengths adjusted), the quote
    carrying IPv4 options or IPv6 extension headers, and errors padded around the
    576 / 1280-byte bounds."""
    f, lay = b.frame, W.layout(b.frame)
    q = W.quote(f, lay)
    if q is None:
        return
    qo, qv = q
    a = lay.l3
    v6 = lay.version == 6
    addrs = _addr_values(v6)
    src_off, dst_off, n = (qo + 8, qo + 24, 16) if qv == 6 else (qo + 12, qo + 16, 4)
    for i, addr in enumerate(addrs):
        for which, off in (("qsrc", src_off), ("qdst", dst_off)):
            g = f[:off] + addr + f[off + n:]
            if qv == 4:
                g = _fix_quoted_ip(g, qo)
            yield b.but("quote", f"{which}#{i}", W.fix_checksums(g))
    # cut quotes: keep the error consistent (lengths say what is there)
    for cut in range(0, lay.ip_end - qo):
        g = f[:qo + cut]
        yield b.but("quote", f"quote cut {cut}", W.fix_checksums(_set_ip_len(g, lay, len(g) - a)))
    # oversized: pad the error to the bounds
    bounds = (1279, 1280, 1281, 1500) if v6 else (575, 576, 577, 1500)
    for total in bounds:
        pad = total - (lay.ip_end - a)
        if pad > 0:
            g = f[:lay.ip_end] + b"\0" * pad
            yield b.but("quote", f"error size {total}", W.fix_checksums(_set_ip_len(g, lay, total)))
    # quotes with options / extension headers
    if qv == 4:
        qihl = (f[qo] & 0xF) * 4
        for extra in (4, 8, 40 - (qihl - 20)):
            if qihl + extra > 60:
                continue
            opts = (b"\x01" * (extra - 1) + b"\x00")
            g = f[:qo] + bytes([0x40 | (qihl + extra) // 4]) + f[qo + 1:qo + 2] \
                + (int.from_bytes(f[qo + 2:qo + 4], "big") + extra).to_bytes(2, "big") \
                + f[qo + 4:qo + qihl] + opts + f[qo + qihl:lay.ip_end]
            g = _fix_quoted_ip(g, qo)
            yield b.but("quote", f"quote options {extra}",
                        W.fix_checksums(_set_ip_len(g, lay, len(g) - a)))
    else:
        qnh = f[qo + 6]
        for k in range(1, 6):
            first, hdrs = _ext_bytes(k, qnh)
            g = f[:qo + 6] + bytes([first]) + f[qo + 7:qo + 40] + hdrs + f[qo + 40:lay.ip_end]
            qplen = int.from_bytes(f[qo + 4:qo + 6], "big") + len(hdrs)
            g = g[:qo + 4] + qplen.to_bytes(2, "big") + g[qo + 6:]
            yield b.but("quote", f"quote ext {k}", W.fix_checksums(_set_ip_len(g, lay, len(g) - a)))


_EXT_KINDS = (0, 60, 43, 51, 60)


def _ext_bytes(k: int, final_nh: int) -> tuple[int, bytes]:
    """k IPv6 extension headers as bytes (hop-by-hop, dstopts, routing, AH, dstopts;
    RFC 8200 / 4302 layouts), the last pointing at *final_nh*; returns (first type, bytes)."""
    kinds = _EXT_KINDS[:k]
    out = b""
    for i, t in enumerate(kinds):
        nh = kinds[i + 1] if i + 1 < len(kinds) else final_nh
        if t == 51:
            out += bytes([nh, 4, 0, 0]) + (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\0" * 12
        elif t == 43:
            out += bytes([nh, 0, 0, 0, 0, 0, 0, 0])
        else:
            out += bytes([nh, 0, 1, 4, 0, 0, 0, 0])      # PadN of 4
    return kinds[0], out


def _set_ip_len(g: bytes, lay: W.Layout, total: int) -> bytes:
    a = lay.l3
    if lay.version == 4:
        return g[:a + 2] + total.to_bytes(2, "big") + g[a + 4:]
    return g[:a + 4] + (total - 40).to_bytes(2, "big") + g[a + 6:]


def _fix_quoted_ip(g: bytes, q: int) -> bytes:
    ihl = (g[q] & 0xF) * 4
    if q + ihl > len(g):
        return g
    h = bytearray(g[q:q + ihl])
    h[10:12] = b"\0\0"
    h[10:12] = (~W.csum(bytes(h)) & 0xFFFF).to_bytes(2, "big")
    return g[:q] + bytes(h) + g[q + ihl:]


def corpus(full: bool = True) -> list[Case]:
    """The whole deterministic corpus, bases (warm-ups first) then every mutation."""
    bs = bases()
    with_t = [t for b in bs for t in with_trailer(b)]
    out = sorted(bs, key=lambda c: not c.warmup) + with_t
    for b in bs + with_t[1::3]:          # every base, and the 4-byte-trailer ones again
        out += truncations(b)
    for b in bs:
        out += field_edges(b, full=full and "vlan" not in b.label)
    for b in with_t[2::3]:               # 46-byte trailers: the length fields' edges
        out += field_edges(b, full=False)
    for b in bs:
        out += forged_quotes(b)
    return out


# -- random fuzzing -----------------------------------------------------------------------------
def fuzz(cases: list[Case], seed: int) -> Iterator[Case]:
    """Endless, seeded mutations of *cases*: 1-4 random byte writes (edge values
    preferred), at random offsets or header offsets, checksums fixed half the time."""
    rng = random.Random(seed)
    edges = (0, 1, 0x7F, 0x80, 0xFE, 0xFF)
    layouts: dict[int, W.Layout] = {}
    i = 0
    while True:
        i += 1
        k = rng.randrange(len(cases))
        c = cases[k]
        f = bytearray(c.frame)
        if not f:
            continue
        lay = layouts.get(k) or layouts.setdefault(k, W.layout(c.frame))
        anchors = [x for x in (lay.l3, lay.l4) if x is not None]
        for _ in range(rng.randint(1, 4)):
            if anchors and rng.random() < 0.7:
                off = rng.choice(anchors) + rng.randrange(0, 24)
            else:
                off = rng.randrange(len(f))
            if off >= len(f):
                continue
            f[off] = rng.choice(edges) if rng.random() < 0.5 else rng.randrange(256)
        if rng.random() < 0.2:
            f = f[:rng.randrange(len(f) + 1)]
        g = bytes(f)
        if rng.random() < 0.5:
            g = W.fix_checksums(g)
        yield c.but("fuzz", f"seed {seed} #{i}", g)
