"""Translation and parsing kept inside the IP packet's own length, in the real kernel.

    client pod 198.18.0.2 / 2001:db8:1::2 --veth-- [from_container | to_container]  (cb-node0)
    ClusterIP 198.19.0.10   :80/TCP -> :8080, :53/UDP -> :5353   backend 198.18.1.20 (cb-node1)
    ClusterIP 2001:db8:2::10 (same ports)                         backend 2001:db8:1:1::20
    NodePort 31313 on 198.19.128.1 (from_netdev) -> 198.18.1.20:8080
    world 203.0.113.80 / 2001:db8:ff::80, a router 2001:db8:ff::1

A frame may carry bytes after its IP packet (Ethernet padding, or a trailer an
attacker chose).  Headers the datapath reads (L4, IPv6 extension headers, the
packet an ICMP error quotes) must lie within the IP length, and rewrites must
never touch the trailer.  Each case comes from a reproducer of the adversarial
run (issue 11); every rewritten field and checksum is checked, and drops by the
reason counted in cb_metrics.
"""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6,
                                IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting, IPerror6)
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

from harness.node import datapath
from harness.abi import drop_reasons
from harness.policy.model import EndpointPolicy, IpcacheEntry, PolicyState
from harness.policy.control import PolicyControl

from . import lbkit as K
from .lbkit import CLIENT4, CLIENT6, assert_valid, endpoint, service

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

VIP, VIP6 = "198.19.0.10", "2001:db8:2::10"
BE, BE6 = "198.18.1.20", "2001:db8:1:1::20"
NODE0 = "198.19.128.1"
WORLD, WORLD6, ROUTER6 = "203.0.113.80", "2001:db8:ff::80", "2001:db8:ff::1"
EP, POD_ID = 2, 1001
DROP = drop_reasons.CODES
INVALID = DROP["DROP_INVALID"]
PORTS = [("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")]


def services() -> list:
    return (service("web", VIP, PORTS, [endpoint(BE)])
            + service("web6", VIP6, PORTS, [endpoint(BE6)], family="IPv6")
            + service("np", "198.19.0.20", [("http", 80, 8080, "TCP")], [endpoint(BE)],
                      svc_type="NodePort", node_ports={"http": 31313}))


@pytest.fixture
def dp(load):
    return K.build(load, K.scenario(services()), netdev=True)


def ct_entries(coll) -> int:
    return len(coll.maps["cb_ct4"]) + len(coll.maps["cb_ct6"])


def ip4_len(pkt, ip_len: int) -> bytes:
    """*pkt* with its IPv4 total length set to *ip_len* (header checksum to match); the
    bytes past it stay in the frame, as a trailer."""
    p = pkt.copy()
    p[IP].len = ip_len
    p[IP].chksum = None
    return bytes(p)


def ip6_len(pkt, payload_len: int) -> bytes:
    p = pkt.copy()
    p[IPv6].plen = payload_len
    return bytes(p)


def with_trailer(ip_packet: bytes, trailer: bytes):
    """An Ethernet frame holding *ip_packet* and then *trailer*, after the IP length."""
    ethertype = 0x86DD if ip_packet[0] >> 4 == 6 else 0x0800
    return bytes(K.eth())[:12] + ethertype.to_bytes(2, "big") + ip_packet + trailer


def icmp6_checksum_valid(pkt) -> bool:
    """Is the ICMPv6 checksum of *pkt* what scapy computes for the same bytes?  (Checked
    here: harness.testrun.packets.checksum_errors reads `chksum`, which ICMPv6 layers lack, so
    scapy hands it the quoted L4 header's field instead.)"""
    parsed = Ether(bytes(pkt))
    icmp = parsed[IPv6].payload
    have = icmp.getfieldval("cksum")
    icmp.cksum = None
    return Ether(bytes(parsed))[IPv6].payload.getfieldval("cksum") == have


def tcp4_syn(dst: str = VIP, dport: int = 80, **kw):
    return K.tcp4(dst, dport, **kw)


def tcp6_syn(dst: str = VIP6, dport: int = 80, sport: int = 40000, ext=None):
    l3 = IPv6(src=CLIENT6, dst=dst, hlim=63)
    if ext is not None:
        l3 = l3 / ext
    return K.built(K.eth() / l3 / TCP(sport=sport, dport=dport, flags="S", seq=1000))


# --- 1. L4 and extension headers within the IP length -------------------------------------

FRAG6_FIRST = IPv6ExtHdrFragment(m=1, offset=0, id=7)

SHORT = {
    # IPv4: tot_len ends before (or inside) the L4 header; the rest is in the trailer.
    "v4-tcp-in-trailer": ("from_container", lambda: ip4_len(tcp4_syn(), 20)),
    "v4-tcp-half-in-trailer": ("from_container", lambda: ip4_len(tcp4_syn(), 28)),
    "v4-tcp-options-in-trailer": ("from_container", lambda: ip4_len(K.built(
        K.eth() / IP(src=CLIENT4, dst=VIP) / TCP(sport=40000, dport=80, flags="S",
                                               options=[("MSS", 1460), ("NOP", None),
                                                        ("WScale", 7), ("SAckOK", b"")])), 40)),
    "v4-udp-in-trailer": ("from_container", lambda: ip4_len(K.udp4(VIP, 53), 24)),
    "v4-sctp-in-trailer": ("from_container", lambda: ip4_len(K.built(
        K.eth() / IP(src=CLIENT4, dst=WORLD) / SCTP(sport=5000, dport=5001)), 28)),
    "v4-icmp-echo-in-trailer": ("from_container", lambda: ip4_len(K.built(
        K.eth() / IP(src=CLIENT4, dst=VIP) / ICMP(type=8, id=1, seq=1)), 24)),
    # An "empty" first fragment: MF, offset 0, no room for the L4 header it names.
    "v4-empty-first-fragment": ("from_container", lambda: ip4_len(K.built(
        K.eth() / IP(src=CLIENT4, dst=VIP, flags="MF", frag=0) / TCP(sport=40000, dport=80)), 24)),
    "v4-reply-in-trailer": ("to_container", lambda: ip4_len(K.built(
        K.eth() / IP(src=WORLD, dst=CLIENT4) / TCP(sport=443, dport=40000, flags="S")), 20)),
    "v4-nodeport-in-trailer": ("from_netdev", lambda: ip4_len(tcp4_syn(NODE0, 31313, src=WORLD),
                                                              20)),
    # IPv6: payload_len ends before the L4 header, or inside an extension header.
    "v6-tcp-payload-len-0": ("from_container", lambda: ip6_len(tcp6_syn(), 0)),
    "v6-udp-in-trailer": ("from_container", lambda: ip6_len(K.built(
        K.eth() / IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=40000, dport=53) / b"q"), 4)),
    "v6-icmp-echo-in-trailer": ("from_container", lambda: ip6_len(K.built(
        K.eth() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=1, seq=1)), 4)),
    "v6-exthdr-in-trailer": ("from_container", lambda: ip6_len(tcp6_syn(ext=IPv6ExtHdrDestOpt()),
                                                               4)),
    "v6-tcp-after-exthdr-in-trailer": ("from_container", lambda: ip6_len(
        tcp6_syn(ext=IPv6ExtHdrDestOpt()), 8)),
    "v6-empty-first-fragment": ("from_container", lambda: ip6_len(tcp6_syn(ext=FRAG6_FIRST), 8)),
    "v6-reply-in-trailer": ("to_container", lambda: ip6_len(K.built(
        K.eth() / IPv6(src=WORLD6, dst=CLIENT6) / TCP(sport=443, dport=40000, flags="S")), 0)),
}


@pytest.mark.parametrize("case", sorted(SHORT))
def test_l4_header_past_the_ip_length_is_invalid(dp, case):
    program, build = SHORT[case]
    res, _ = dp.run(program, build())
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", INVALID)
    # Judged on nothing: no connection, no source NAT.
    assert ct_entries(dp.lxc) == ct_entries(dp.netdev) == 0
    assert len(dp.netdev.maps["cb_snat4_fwd"]) == 0


def test_padded_frame_is_translated_and_its_padding_kept(dp):
    """A minimum-size Ethernet frame (60 bytes) pads a bare SYN: the padding is no header."""
    syn = bytes(tcp4_syn(sport=40100))
    padding = b"\xa5" * (60 - len(syn))
    res, out = dp.run("from_container", syn + padding)
    assert res.verdict == "TC_ACT_OK"
    assert (out[IP].dst, out[TCP].dport, out[IP].len) == (BE, 8080, 40)
    assert bytes(out)[len(syn):] == padding
    assert_valid(out)
    # And the IPv6 SYN with a destination-options header is translated behind it.
    res, out = dp.run("from_container", tcp6_syn(sport=40100, ext=IPv6ExtHdrDestOpt()))
    assert res.verdict == "TC_ACT_OK"
    assert (out[IPv6].dst, out[TCP].dport, out[TCP].sport) == (BE6, 8080, 40100)
    assert_valid(out)


# --- 2. ICMP error quotes end where the outer IP packet ends ------------------------------

def ipv4_header_valid(header: bytes) -> bool:
    fresh = IP(header)
    fresh.chksum = None
    return IP(bytes(fresh)).chksum == IP(header).chksum


def quote_cut(dp, syn, quote_len: int, family: int = 4):
    """Send *syn* through from_container, then build the backend's port-unreachable for
    the translated packet, quoting *quote_len* bytes of it and carrying the rest of the
    translated packet after the outer IP packet, as a frame trailer."""
    res, out = dp.run("from_container", syn)
    assert res.verdict == "TC_ACT_OK"
    l3 = IP if family == 4 else IPv6
    sent = bytes(out[l3])
    quote, trailer = sent[:quote_len], sent[quote_len:]
    if family == 4:
        err = IP(src=out[IP].dst, dst=CLIENT4, ttl=64) / ICMP(type=3, code=3) / quote
    else:
        err = IPv6(src=out[IPv6].dst, dst=CLIENT6) / ICMPv6DestUnreach(code=4) / quote
    frame = with_trailer(bytes(err), trailer)
    return frame, trailer


def test_icmp_error_quote_cut_before_tcp_checksum_keeps_the_trailer(dp):
    frame, trailer = quote_cut(dp, tcp4_syn(sport=41000), 20 + 8)   # RFC 792's minimum
    res, back = dp.run("to_container", frame)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert bytes(back)[-len(trailer):] == trailer, "a frame trailer was rewritten"
    assert (back[IP].src, back[IP].dst, back[IP].len) == (VIP, CLIENT4, 56)
    assert (back[IPerror].src, back[IPerror].dst) == (CLIENT4, VIP)
    assert (back[TCPerror].sport, back[TCPerror].dport) == (41000, 80)
    assert ipv4_header_valid(bytes(back[IPerror])[:20])
    assert_valid(back)                                      # outer IP and ICMP checksums


def test_icmp_error_quote_cut_before_udp_checksum_keeps_the_trailer(dp):
    frame, trailer = quote_cut(dp, K.udp4(VIP, 53, sport=41001), 20 + 4)   # ports only
    res, back = dp.run("to_container", frame)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert bytes(back)[-len(trailer):] == trailer, "a frame trailer was rewritten"
    assert (back[IP].src, back[IPerror].dst) == (VIP, VIP)
    assert bytes(back[IPerror])[20:24] == (41001).to_bytes(2, "big") + (53).to_bytes(2, "big")
    assert ipv4_header_valid(bytes(back[IPerror])[:20])
    assert_valid(back)


def test_icmp_error_quoting_no_destination_port_is_not_translated(dp):
    """The quote ends after the source port: the destination port in the trailer is
    not the quote's, so the error is not known to be about the service flow."""
    frame, trailer = quote_cut(dp, tcp4_syn(sport=41002), 20 + 2)
    res, back = dp.run("to_container", frame)
    assert res.verdict == "TC_ACT_OK"
    assert bytes(back) == frame


def test_icmpv6_error_quote_cut_before_tcp_checksum_keeps_the_trailer(dp):
    frame, trailer = quote_cut(dp, tcp6_syn(sport=41003), 40 + 8, family=6)
    res, back = dp.run("to_container", frame)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert bytes(back)[-len(trailer):] == trailer, "a frame trailer was rewritten"
    assert (back[IPv6].src, back[IPv6].dst, back[IPv6].plen) == (VIP6, CLIENT6, 56)
    assert (back[IPerror6].src, back[IPerror6].dst) == (CLIENT6, VIP6)
    assert bytes(back[IPerror6])[40:44] == (41003).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert icmp6_checksum_valid(back)


# --- 3. A zero UDP checksum over IPv6 stays zero ------------------------------------------

def test_zero_udp_checksum_over_ipv6_stays_zero(dp):
    query = K.built(K.eth() / IPv6(src=CLIENT6, dst=VIP6, hlim=63)
                    / UDP(sport=42000, dport=53, chksum=0) / b"query")
    res, out = dp.run("from_container", query)
    assert res.verdict == "TC_ACT_OK"
    assert (out[IPv6].src, out[IPv6].dst, out[UDP].sport, out[UDP].dport) == (
        CLIENT6, BE6, 42000, 5353)
    assert out[UDP].chksum == 0 and out[UDP].len == query[UDP].len
    assert bytes(out[UDP].payload) == b"query"

    reply = K.built(K.eth() / IPv6(src=BE6, dst=CLIENT6) / UDP(sport=5353, dport=42000, chksum=0)
                    / b"answer")
    res, back = dp.run("to_container", reply)
    assert res.verdict == "TC_ACT_OK"
    assert (back[IPv6].src, back[UDP].sport, back[IPv6].dst, back[UDP].dport) == (
        VIP6, 53, CLIENT6, 42000)
    assert back[UDP].chksum == 0

    # The backend's port unreachable quoting the datagram: the quoted checksum stays 0.
    err = K.built(K.eth() / IPv6(src=BE6, dst=CLIENT6) / ICMPv6DestUnreach(code=4)
                  / bytes(out[IPv6]))
    res, back = dp.run("to_container", err)
    assert res.verdict == "TC_ACT_OK"
    quoted = bytes(back[IPerror6])
    assert (back[IPv6].src, back[IPerror6].dst) == (VIP6, VIP6)
    assert quoted[40:44] == (42000).to_bytes(2, "big") + (53).to_bytes(2, "big")
    assert quoted[46:48] == b"\x00\x00"
    assert icmp6_checksum_valid(back)


def test_udp_checksum_over_ipv6_is_still_updated(dp):
    res, out = dp.run("from_container", K.built(
        K.eth() / IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=42001, dport=53) / b"query"))
    assert res.verdict == "TC_ACT_OK" and out[UDP].dport == 5353 and out[UDP].chksum != 0
    assert_valid(out)


# --- 4. ICMPv6 errors quoting extension headers are related -------------------------------

def ingress_denied(dp):
    """Make the client pod endpoint EP with ingress policy enforced and no rule: only
    replies and related traffic may reach it."""
    net = ipaddress.ip_network
    ipcache = (IpcacheEntry(net(f"{CLIENT4}/32"), POD_ID),
               IpcacheEntry(net(f"{CLIENT6}/128"), POD_ID))
    ep = EndpointPolicy("default/client", POD_ID, True, False, (), ())
    PolicyControl(dp.lxc.maps).apply(PolicyState((), ipcache, (ep,)), {"default/client": EP})


@pytest.fixture
def ep_dp(load):
    dp = K.build(load, K.scenario(services()), **datapath.endpoint_rodata(EP, CLIENT4, CLIENT6))
    ingress_denied(dp)
    return dp


QUOTED_EXT = {
    "hop-by-hop": lambda: IPv6ExtHdrHopByHop(),
    "destination-options": lambda: IPv6ExtHdrDestOpt(),
    "routing": lambda: IPv6ExtHdrRouting(addresses=[]),
    "first-fragment": lambda: IPv6ExtHdrFragment(m=1, offset=0, id=9),
    "dst-options-and-fragment": lambda: IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1, id=9),
}


def ptb(src: str, quoted: bytes):
    return K.built(K.eth() / IPv6(src=src, dst=CLIENT6) / ICMPv6PacketTooBig(mtu=1280) / quoted)


@pytest.mark.parametrize("ext", sorted(QUOTED_EXT))
def test_packet_too_big_quoting_extension_headers_is_related(ep_dp, ext):
    syn = tcp6_syn(WORLD6, 443, sport=43000, ext=QUOTED_EXT[ext]())
    res, out = ep_dp.run("from_container", syn)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    err = ptb(ROUTER6, bytes(out[IPv6]))
    res, back = ep_dp.run("to_container", err)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert bytes(back) == bytes(err) and icmp6_checksum_valid(back)
    # Policy is enforced: the same error about a connection the pod does not have is not.
    other = tcp6_syn(WORLD6, 443, sport=43999, ext=QUOTED_EXT[ext]())
    res, _ = ep_dp.run("to_container", ptb(ROUTER6, bytes(other[IPv6])))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_POLICY"])


def test_packet_too_big_quoting_a_later_fragment_is_not_related(ep_dp):
    res, _ = ep_dp.run("from_container", tcp6_syn(WORLD6, 443, sport=43100))
    assert res.verdict == "TC_ACT_OK"
    # A later fragment has no L4 header; its first bytes merely look like the flow's ports.
    later = (IPv6(src=CLIENT6, dst=WORLD6, hlim=63)
             / IPv6ExtHdrFragment(m=1, offset=185, id=11, nh=6)
             / ((43100).to_bytes(2, "big") + (443).to_bytes(2, "big") + b"d" * 60))
    res, _ = ep_dp.run("to_container", ptb(ROUTER6, bytes(later)))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_POLICY"])


@pytest.mark.parametrize("ext", ["hop-by-hop", "destination-options", "first-fragment"])
@pytest.mark.parametrize("sender", ["backend", "router"])
def test_packet_too_big_about_a_service_flow_with_extension_headers(ep_dp, ext, sender):
    syn = tcp6_syn(VIP6, 80, sport=44000, ext=QUOTED_EXT[ext]())
    res, out = ep_dp.run("from_container", syn)
    assert res.verdict == "TC_ACT_OK"
    assert (out[IPv6].dst, out[TCP].dport) == (BE6, 8080)
    assert_valid(out)
    src = BE6 if sender == "backend" else ROUTER6
    err = ptb(src, bytes(out[IPv6]))
    res, back = ep_dp.run("to_container", err)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert (back[IPv6].src, back[IPv6].dst) == (VIP6 if sender == "backend" else ROUTER6, CLIENT6)
    assert back[ICMPv6PacketTooBig].mtu == 1280
    quoted = bytes(back[IPerror6])
    assert len(quoted) == len(bytes(out[IPv6]))
    inner = IPv6(quoted)
    assert (inner.src, inner.dst, inner[TCP].sport, inner[TCP].dport) == (CLIENT6, VIP6, 44000, 80)
    # The quote is the client's packet again, byte for byte, checksums included.
    assert quoted == bytes(syn[IPv6])
    assert icmp6_checksum_valid(back)
