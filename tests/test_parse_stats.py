"""The first datapath program: per-protocol classification of well-formed,
truncated and malformed packets, at the tc and XDP hooks.

Each row: description, packet, expected classes counted, expected verdict
with drop_malformed set.  The packet must come out unchanged in every case.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, Dot1Q

from harness.abi import drop_reasons
from harness.abi.cheaders import enum_members
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

CLASSES = {m.name: m.value for m in enum_members("lib/parse_stats.h", "stat_class")}
V4 = dict(src="198.18.0.10", dst="198.19.0.1")
V6 = dict(src="2001:db8:1::10", dst="2001:db8:2::1")


def _raw(pkt) -> bytes:
    return bytes(pkt)


def _set_byte(pkt, offset: int, value: int) -> bytes:
    raw = bytearray(bytes(pkt))
    raw[offset] = value
    return bytes(raw)


WELL_FORMED = [
    ("tcp4", eth() / IP(**V4) / TCP(dport=80, flags="S"), {"STAT_IPV4", "STAT_TCP"}),
    ("udp4", eth() / IP(**V4) / UDP(dport=53), {"STAT_IPV4", "STAT_UDP"}),
    ("icmp4 echo", eth() / IP(**V4) / ICMP(), {"STAT_IPV4", "STAT_ICMP"}),
    ("ip options", eth() / IP(options=b"\x94\x04\x00\x00", **V4) / TCP(), {"STAT_IPV4", "STAT_TCP"}),
    ("gre (other l4)", eth() / IP(proto=47, **V4) / (b"\x00" * 8), {"STAT_IPV4", "STAT_L4_OTHER"}),
    ("first fragment", eth() / IP(flags="MF", **V4) / UDP() / (b"x" * 32),
     {"STAT_IPV4", "STAT_FRAGMENT", "STAT_UDP"}),
    ("later fragment", eth() / IP(frag=4, proto=17, **V4) / (b"x" * 32),
     {"STAT_IPV4", "STAT_FRAGMENT"}),
    ("tcp6", eth() / IPv6(**V6) / TCP(dport=443), {"STAT_IPV6", "STAT_TCP"}),
    ("udp6", eth() / IPv6(**V6) / UDP(), {"STAT_IPV6", "STAT_UDP"}),
    ("icmp6 echo", eth() / IPv6(**V6) / ICMPv6EchoRequest(), {"STAT_IPV6", "STAT_ICMPV6"}),
    ("v6 ext headers", eth() / IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting()
     / IPv6ExtHdrDestOpt() / TCP(), {"STAT_IPV6", "STAT_TCP"}),
    ("v6 first fragment", eth() / IPv6(**V6) / IPv6ExtHdrFragment(m=1) / UDP() / (b"x" * 16),
     {"STAT_IPV6", "STAT_FRAGMENT", "STAT_UDP"}),
    ("v6 later fragment", eth() / IPv6(**V6) / IPv6ExtHdrFragment(offset=8, nh=17) / (b"x" * 16),
     {"STAT_IPV6", "STAT_FRAGMENT"}),
    ("vlan tcp4", eth() / Dot1Q(vlan=10) / IP(**V4) / TCP(), {"STAT_IPV4", "STAT_TCP"}),
    ("arp", eth() / ARP(psrc="198.18.0.10", pdst="198.18.0.1"), {"STAT_ARP"}),
    ("unknown ethertype", _raw(eth())[:12] + b"\x88\xb5" + b"\x00" * 46, {"STAT_L3_OTHER"}),
]

_tcp4 = eth() / IP(**V4) / TCP()
# Cut short or inconsistent, yet long enough for tc's test_run, which insists
# on a whole Ethernet + IP header before it runs the program.
MALFORMED = [
    ("tcp header cut short", _raw(_tcp4)[:14 + 20 + 10]),
    ("tcp data offset < 5", _set_byte(_tcp4, 14 + 20 + 12, 0x40)),
    ("tcp data offset past the end", _set_byte(_tcp4, 14 + 20 + 12, 0xF0)),
    ("ipv4 total length past the end", _set_byte(_tcp4, 14 + 2, 0x7F)),
    ("ipv4 ihl < 5", _set_byte(_tcp4, 14, 0x44)),
    ("udp header cut short", _raw(eth() / IP(**V4) / UDP())[:14 + 20 + 4]),
    ("icmp header cut short", _raw(eth() / IP(**V4) / ICMP())[:14 + 20 + 4]),
    ("ipv6 payload length past the end", _raw(eth() / IPv6(plen=200, **V6) / TCP())),
    ("ipv6 tcp cut short", _raw(eth() / IPv6(**V6) / TCP())[:14 + 40 + 8]),
    ("ipv6 ext header cut short", _raw(eth() / IPv6(**V6) / IPv6ExtHdrHopByHop() / TCP())[:14 + 40 + 1]),
    ("five ipv6 ext headers", _raw(eth() / IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                                  / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt()
                                  / TCP())),
]
# Only XDP's test_run accepts frames shorter than the IP header.
XDP_ONLY_TRUNCATED = [
    ("ethernet only", _raw(_tcp4)[:14]),
    ("ipv4 header cut short", _raw(_tcp4)[:14 + 12]),
    ("ipv6 header cut short", _raw(eth() / IPv6(**V6))[:14 + 30]),
    ("vlan tag cut short", _raw(eth() / Dot1Q() / IP(**V4))[:16]),
]


def counted(coll) -> set[str]:
    names = {v: k for k, v in CLASSES.items()}
    return {names[k] for k, per_cpu in coll.maps["cb_parse_stats"].items()
            if sum(c.packets for c in per_cpu)}


@pytest.mark.parametrize("hook, program, passed", [("tc", "tc_parse_stats", "TC_ACT_OK"),
                                                    ("xdp", "xdp_parse_stats", "XDP_PASS")])
@pytest.mark.parametrize("desc, pkt, classes", WELL_FORMED, ids=[r[0] for r in WELL_FORMED])
def test_well_formed(load, hook, program, passed, desc, pkt, classes):
    coll = load("parse_stats", rodata={"drop_malformed": True})
    result = Runner(coll, program).run(_raw(pkt))
    assert result.verdict == passed and result.drop_reason is None
    assert result.packet_out == _raw(pkt)
    assert counted(coll) == classes


@pytest.mark.parametrize("desc, pkt", MALFORMED, ids=[r[0] for r in MALFORMED])
@pytest.mark.parametrize("hook, program, passed, dropped", [
    ("tc", "tc_parse_stats", "TC_ACT_OK", "TC_ACT_SHOT"),
    ("xdp", "xdp_parse_stats", "XDP_PASS", "XDP_DROP")])
def test_malformed(load, desc, pkt, hook, program, passed, dropped):
    observe = load("parse_stats")
    result = Runner(observe, program).run(pkt)
    assert (result.verdict, result.drop_reason) == (passed, None)
    assert result.packet_out == pkt
    assert counted(observe) == {"STAT_MALFORMED"}

    enforce = load("parse_stats", rodata={"drop_malformed": True})
    result = Runner(enforce, program).run(pkt)
    assert result.verdict == dropped
    assert result.drop_reason == drop_reasons.CODES["DROP_INVALID"]


@pytest.mark.parametrize("desc, pkt", XDP_ONLY_TRUNCATED, ids=[r[0] for r in XDP_ONLY_TRUNCATED])
def test_truncated_below_ip_header(load, desc, pkt):
    coll = load("parse_stats", rodata={"drop_malformed": True})
    result = Runner(coll, "xdp_parse_stats").run(pkt)
    assert result.verdict == "XDP_DROP" and result.drop_reason == 134
    assert counted(coll) == {"STAT_MALFORMED"}


def test_counters_count_bytes_and_repeats(load):
    coll = load("parse_stats")
    pkt = _raw(eth() / IP(**V4) / UDP() / (b"x" * 100))
    Runner(coll, "tc_parse_stats").run(pkt, repeat=1000)
    per_cpu = coll.maps["cb_parse_stats"].lookup(CLASSES["STAT_UDP"])
    assert sum(c.packets for c in per_cpu) == 1000
    assert sum(c.bytes for c in per_cpu) == 1000 * len(pkt)


def test_drop_metrics_are_per_reason_and_direction(load):
    coll = load("parse_stats", rodata={"drop_malformed": True})
    runner = Runner(coll, "tc_parse_stats")
    for desc, pkt in MALFORMED[:3]:
        runner.run(pkt)
    metrics = dict(coll.maps["cb_metrics"].items())
    assert [(k.reason, k.dir) for k in metrics] == [(134, 1)]
    assert sum(v.packets for v in next(iter(metrics.values()))) == 3
