"""Service translation in the real kernel, field by field.

    client pod 198.18.0.2 --veth-- [from_container | to_container]  (node cb-node0)
    backends 198.18.1.20/.21 on cb-node1; ClusterIP 198.19.0.10:80 -> :8080

Every rewritten packet is compared with the input field by field, and its
checksums with what scapy computes for the same bytes.
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6,
                                IPerror6, TCPerror as TCPerror6)

from harness.abi import drop_reasons
from harness.abi.structs import Ct4Tuple, from_be16, from_be32

from . import lbkit as K
from .lbkit import CLIENT4, CLIENT6, assert_valid, endpoint, pod, service, tcp4, tcp6, udp4

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

VIP, VIP6 = "198.19.0.10", "2001:db8:2::10"
BE = ["198.18.1.20", "198.18.1.21"]
BE6 = ["2001:db8:1:1::20", "2001:db8:1:1::21"]
DROP = drop_reasons.CODES


def web(endpoints=None, **kw):
    eps = endpoints if endpoints is not None else [endpoint(b) for b in BE]
    return service("web", VIP, [("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")], eps, **kw)


@pytest.fixture
def dp(load):
    return K.build(load, K.scenario(web()))


def test_clusterip_tcp_dnat_every_field(dp):
    pkt = tcp4(VIP, 80, payload=b"GET / HTTP/1.1\r\n\r\n")
    res, out = dp.run("from_container", pkt)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert out[IP].dst in BE and out[TCP].dport == 8080
    # Nothing else moved.
    for layer, fields in ((IP, ("src", "ttl", "id", "proto", "len", "flags", "tos")),
                          (TCP, ("sport", "seq", "ack", "flags", "window", "dataofs"))):
        for f in fields:
            assert getattr(out[layer], f) == getattr(pkt[layer], f), f
    assert bytes(out[TCP].payload) == bytes(pkt[TCP].payload)
    assert (out.src, out.dst) == (pkt.src, pkt.dst)
    assert_valid(out)


def test_reply_is_reverse_nated(dp):
    _, out = dp.run("from_container", tcp4(VIP, 80))
    backend = out[IP].dst
    reply = K.eth() / IP(src=backend, dst=CLIENT4, ttl=64) / TCP(sport=8080, dport=40000,
                                                                  flags="SA", seq=5, ack=1001)
    res, back = dp.run("to_container", reply)
    assert res.verdict == "TC_ACT_OK"
    assert (back[IP].src, back[TCP].sport) == (VIP, 80)
    assert (back[IP].dst, back[TCP].dport) == (CLIENT4, 40000)
    assert (back[TCP].seq, back[TCP].ack, back[TCP].flags) == (5, 1001, reply[TCP].flags)
    assert_valid(back)


@pytest.mark.parametrize("family", [4, 6])
def test_reused_tuple_is_reverse_nated_to_the_new_frontend(load, family):
    """A client port reused towards another service (or straight to the backend) that
    lands on the same backend tuple: the SYN finds the old, closing connection's
    entry, and the replies must carry the new connection's source, not the old one's."""
    if family == 4:
        vips, backend, client, l3, pkt = ("198.19.0.10", "198.19.0.11"), BE[0], CLIENT4, IP, tcp4
    else:
        vips, backend, client, l3, pkt = (VIP6, "2001:db8:2::11"), BE6[0], CLIENT6, IPv6, tcp6
    fam = "IPv4" if family == 4 else "IPv6"
    dp = K.build(load, K.scenario(
        service("one", vips[0], [("http", 80, 8080, "TCP")], [endpoint(backend)], family=fam),
        service("two", vips[1], [("http", 80, 8080, "TCP")], [endpoint(backend)], family=fam)))

    def reply_source() -> tuple[str, int]:
        syn_ack = K.eth() / l3(src=backend, dst=client) / TCP(sport=8080, dport=40000,
                                                              flags="SA", seq=5, ack=1001)
        res, back = dp.run("to_container", syn_ack)
        assert res.verdict == "TC_ACT_OK"
        assert_valid(back)
        return back[l3].src, back[TCP].sport

    def connect(dst: str, dport: int) -> None:
        res, out = dp.run("from_container", pkt(dst, dport))
        assert res.verdict == "TC_ACT_OK"
        assert (out[l3].dst, out[TCP].dport) == (backend, 8080)
        assert reply_source() == (dst, dport)
        # The connection ends: FIN both ways, the tuple's entry is closing.
        dp.run("from_container", pkt(dst, dport, flags="FA"))
        fin = K.eth() / l3(src=backend, dst=client) / TCP(sport=8080, dport=40000, flags="FA")
        dp.run("to_container", fin)

    connect(vips[0], 80)
    connect(vips[1], 80)          # same client port, the other service, the same backend
    connect(backend, 8080)        # and straight to the backend: no translation back
    connect(vips[0], 80)


def test_udp_dnat_and_reverse(dp):
    res, out = dp.run("from_container", udp4(VIP, 53))
    assert out[IP].dst in BE and out[UDP].dport == 5353
    assert_valid(out)
    reply = K.eth() / IP(src=out[IP].dst, dst=CLIENT4) / UDP(sport=5353, dport=40000) / b"answer"
    _, back = dp.run("to_container", reply)
    assert (back[IP].src, back[UDP].sport) == (VIP, 53)
    assert_valid(back)


def test_udp_without_checksum_keeps_none(dp):
    pkt = udp4(VIP, 53, chksum=0)
    _, out = dp.run("from_container", pkt)
    assert out[UDP].chksum == 0 and out[IP].dst in BE
    header = IP(bytes(out[IP]))
    header.chksum = None
    assert IP(bytes(header)).chksum == out[IP].chksum


def test_non_service_packets_are_untouched(dp):
    for pkt in (tcp4("198.18.1.20", 8080), tcp4("203.0.113.10", 80),
                udp4("198.18.1.21", 53), tcp4(VIP.replace(".10", ".99"), 80)):
        res, out = dp.run("from_container", pkt)
        # 198.19.0.99 is inside the service CIDR but no VIP: not a ClusterIP drop.
        assert res.verdict == "TC_ACT_OK", pkt.summary()
        assert bytes(out) == bytes(pkt)


def test_clusterip_wrong_port_is_dropped(dp):
    res, _ = dp.run("from_container", tcp4(VIP, 81))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_IS_CLUSTER_IP"])
    res, _ = dp.run("from_container", udp4(VIP, 80))
    assert res.drop_reason == DROP["DROP_IS_CLUSTER_IP"]


def test_later_fragment_to_vip_is_dropped(dp):
    frag = K.eth() / IP(src=CLIENT4, dst=VIP, frag=20, proto=6) / (b"x" * 40)
    res, _ = dp.run("from_container", frag)
    assert res.drop_reason == DROP["DROP_FRAG_NOSUPPORT"]


def test_no_backend_drops_with_no_service(load):
    dp = K.build(load, K.scenario(web(endpoints=[])))
    res, _ = dp.run("from_container", tcp4(VIP, 80))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NO_SERVICE"])
    assert drop_reasons.describe(res.drop_reason) == "Service backend not found"
    res, _ = dp.run("from_container", K.eth() / IP(src=CLIENT4, dst=VIP) / ICMP(id=7, seq=1))
    assert res.drop_reason == DROP["DROP_NO_SERVICE"]


def test_ping_to_vip_is_answered(dp):
    req = K.built(K.eth() / IP(src=CLIENT4, dst=VIP, ttl=17) / ICMP(type=8, id=0x1234, seq=3)
                  / b"ping!")
    res, out = dp.run("from_container", req)
    assert res.verdict == "TC_ACT_REDIRECT"
    assert (out[IP].src, out[IP].dst, out[IP].ttl) == (VIP, CLIENT4, 64)
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].id, out[ICMP].seq) == (0, 0, 0x1234, 3)
    assert bytes(out[ICMP].payload) == b"ping!"
    assert (out.src, out.dst) == (req.dst, req.src)
    assert_valid(out)


def test_established_flow_keeps_its_backend(load):
    eps = [endpoint(f"198.18.1.{20 + i}") for i in range(8)]
    dp = K.build(load, K.scenario(web(endpoints=eps)))
    first = dp.run("from_container", tcp4(VIP, 80, sport=41000))[1][IP].dst
    for _ in range(50):
        _, out = dp.run("from_container", tcp4(VIP, 80, sport=41000, flags="A"))
        assert out[IP].dst == first
    svc_entries = [(k, v) for k, v in dp.lxc.maps["cb_ct4"].items() if k.flags == 4]
    assert len(svc_entries) == 1
    assert svc_entries[0][1].tx_packets == 51


def test_terminating_backend_keeps_old_flows_only(load):
    dp = K.build(load, K.scenario(web(endpoints=[endpoint(BE[0])])))
    _, out = dp.run("from_container", tcp4(VIP, 80, sport=42000))
    assert out[IP].dst == BE[0]
    # BE[0] starts terminating; BE[1] appears.
    dp.apply(K.scenario(web(endpoints=[endpoint(BE[0], ready=False, serving=True,
                                                terminating=True), endpoint(BE[1])])))
    _, out = dp.run("from_container", tcp4(VIP, 80, sport=42000, flags="A"))
    assert out[IP].dst == BE[0], "an established flow stays on its terminating backend"
    for sport in range(43000, 43040):
        _, out = dp.run("from_container", tcp4(VIP, 80, sport=sport))
        assert out[IP].dst == BE[1], "new flows never pick a terminating backend"
    # A new SYN reusing the old tuple is a new connection.
    _, out = dp.run("from_container", tcp4(VIP, 80, sport=42000, flags="S"))
    assert out[IP].dst == BE[1]


def test_only_terminating_backends_still_serve(load):
    dp = K.build(load, K.scenario(web(endpoints=[endpoint(BE[0], ready=False, serving=True,
                                                          terminating=True)])))
    _, out = dp.run("from_container", tcp4(VIP, 80))
    assert out[IP].dst == BE[0]


def test_removed_backend_flow_is_moved(load):
    dp = K.build(load, K.scenario(web(endpoints=[endpoint(BE[0])])))
    dp.run("from_container", tcp4(VIP, 80, sport=44000))
    dp.apply(K.scenario(web(endpoints=[endpoint(BE[1])])))
    _, out = dp.run("from_container", tcp4(VIP, 80, sport=44000, flags="A"))
    assert out[IP].dst == BE[1]


def test_icmp_error_about_service_flow_is_reverse_translated(dp):
    _, out = dp.run("from_container", udp4(VIP, 53, sport=45000))
    backend = out[IP].dst
    # Linux quotes the whole datagram when it fits: every checksum is checkable.
    err = K.eth() / IP(src=backend, dst=CLIENT4) / ICMP(type=3, code=3) / bytes(out[IP])
    res, back = dp.run("to_container", err)
    assert res.verdict == "TC_ACT_OK"
    assert (back[IP].src, back[IP].dst) == (VIP, CLIENT4)
    assert (back[IPerror].src, back[IPerror].dst) == (CLIENT4, VIP)
    assert (back[UDPerror].sport, back[UDPerror].dport) == (45000, 53)
    errors = K.checksum_errors(back, quoted=True)
    assert not errors, errors
    # RFC 792's minimum quote (IP header + 8 bytes) is translated too.
    err = K.eth() / IP(src=backend, dst=CLIENT4) / ICMP(type=3, code=3) / bytes(out[IP])[:28]
    _, back = dp.run("to_container", err)
    assert back[IPerror].dst == VIP and back[UDPerror].dport == 53
    assert_valid(back)


def test_icmp_error_from_a_router_keeps_its_source(dp):
    _, out = dp.run("from_container", tcp4(VIP, 80, sport=45100))
    err = K.eth() / IP(src="198.19.128.9", dst=CLIENT4) / ICMP(type=11, code=0) / bytes(out[IP])[:28]
    _, back = dp.run("to_container", err)
    assert back[IP].src == "198.19.128.9"
    assert back[IPerror].dst == VIP and back[TCPerror].dport == 80
    assert_valid(back)


def test_ct_entries_and_lifetimes(dp):
    dp.run("from_container", tcp4(VIP, 80, sport=46000))
    entries = {k.flags: (k, v) for k, v in dp.lxc.maps["cb_ct4"].items()}
    assert set(entries) == {1, 4}                    # CT_EGRESS and CT_SERVICE
    k, v = entries[1]
    assert from_be32(k.saddr).exploded == CLIENT4 and from_be16(k.sport) == 46000
    assert str(from_be32(k.daddr)) in BE and from_be16(k.dport) == 8080
    assert v.rev_nat_index == dp.control.frontend_id((K.ip(VIP), 80, "TCP"))
    assert v.lifetime - v.created == 60              # SYN seen only
    dp.run("from_container", tcp4(VIP, 80, sport=46000, flags="A"))
    v = dp.lxc.maps["cb_ct4"].lookup(k)
    assert v.lifetime - v.created >= 21600           # established
    dp.run("from_container", tcp4(VIP, 80, sport=46000, flags="R"))
    v = dp.lxc.maps["cb_ct4"].lookup(k)
    assert v.lifetime - v.created <= 11              # closing after RST


def test_lru_eviction_under_full_ct_map(load):
    dp = K.build(load, K.scenario(web()), max_entries={"cb_ct4": 64})
    for sport in range(20000, 21000):
        res, _ = dp.run("from_container", tcp4(VIP, 80, sport=sport))
        assert res.verdict == "TC_ACT_OK"
    assert len(dp.lxc.maps["cb_ct4"]) <= 64


# --- IPv6 ---------------------------------------------------------------------------

def web6(**kw):
    return service("web6", VIP6, [("http", 80, 8080, "TCP")],
                   [endpoint(b) for b in BE6], family="IPv6", **kw)


def test_ipv6_dnat_and_reverse(load):
    dp = K.build(load, K.scenario(web6()))
    res, out = dp.run("from_container", tcp6(VIP6, 80))
    assert res.verdict == "TC_ACT_OK"
    assert out[IPv6].dst in BE6 and out[TCP].dport == 8080
    assert (out[IPv6].src, out[IPv6].hlim, out[TCP].sport) == (CLIENT6, 63, 40000)
    assert_valid(out)
    reply = K.eth() / IPv6(src=out[IPv6].dst, dst=CLIENT6) / TCP(sport=8080, dport=40000, flags="SA")
    _, back = dp.run("to_container", reply)
    assert (back[IPv6].src, back[TCP].sport) == (VIP6, 80)
    assert_valid(back)


def test_ipv6_ping_and_wrong_port(load):
    dp = K.build(load, K.scenario(web6()))
    req = K.eth() / IPv6(src=CLIENT6, dst=VIP6) / ICMPv6EchoRequest(id=9, seq=2, data=b"hi")
    res, out = dp.run("from_container", req)
    assert res.verdict == "TC_ACT_REDIRECT"
    assert (out[IPv6].src, out[IPv6].dst) == (VIP6, CLIENT6)
    assert out.haslayer(ICMPv6EchoReply) and out[ICMPv6EchoReply].id == 9
    assert_valid(out)
    res, _ = dp.run("from_container", tcp6(VIP6, 443))
    assert res.drop_reason == DROP["DROP_IS_CLUSTER_IP"]


def test_ipv6_icmp_error_reverse_translated(load):
    dp = K.build(load, K.scenario(web6()))
    _, out = dp.run("from_container", tcp6(VIP6, 80, sport=47000))
    err = K.eth() / IPv6(src=out[IPv6].dst, dst=CLIENT6) / ICMPv6DestUnreach(code=4) / bytes(out[IPv6])[:48]
    _, back = dp.run("to_container", err)
    assert back[IPv6].src == VIP6
    assert back[IPerror6].dst == VIP6 and back[TCPerror6].dport == 80
    assert_valid(back)


def test_dual_stack_service(load):
    docs = web() + web6()
    dp = K.build(load, K.scenario(docs))
    assert dp.run("from_container", tcp4(VIP, 80))[1][IP].dst in BE
    assert dp.run("from_container", tcp6(VIP6, 80))[1][IPv6].dst in BE6


# --- NodePort and HostPort -------------------------------------------------------------

NODE0, NODE1 = "198.19.128.1", "198.19.128.2"
WORLD = "203.0.113.10"


def nodeport(local_backend: bool, **kw):
    ip_ = "198.18.0.20" if local_backend else "198.18.1.20"
    node = "cb-node0" if local_backend else "cb-node1"
    return service("np", "198.19.0.20", [("http", 80, 8080, "TCP")], [endpoint(ip_, node)],
                   svc_type="NodePort", node_ports={"http": 31313}, **kw)


def test_nodeport_from_a_pod_is_translated_at_its_veth(load):
    dp = K.build(load, K.scenario(nodeport(False)))
    for node_ip in (NODE0, NODE1):
        _, out = dp.run("from_container", tcp4(node_ip, 31313))
        assert (out[IP].dst, out[TCP].dport) == ("198.18.1.20", 8080)
        assert_valid(out)


def test_nodeport_from_outside_to_local_backend(load):
    dp = K.build(load, K.scenario(nodeport(True)), netdev=True)
    pkt = tcp4(NODE0, 31313, src=WORLD, sport=50000)
    res, out = dp.run("from_netdev", pkt)
    assert res.verdict == "TC_ACT_OK"
    assert (out[IP].src, out[IP].dst, out[TCP].dport) == (WORLD, "198.18.0.20", 8080)
    assert_valid(out)
    # The backend's reply leaves through its from_container, which restores the frontend.
    # (The node's maps are shared; here the two collections share nothing, so hand the
    # conntrack entry from_netdev made to the lxc collection, as pinning would.)
    for k, v in dp.netdev.maps["cb_ct4"].items():
        dp.lxc.maps["cb_ct4"].update(k, v)
    # The backend's to_container admits the flow (its ingress verdict) on the way in.
    admitted, _ = dp.run("to_container", out)
    assert admitted.verdict == "TC_ACT_OK"
    reply = K.eth() / IP(src="198.18.0.20", dst=WORLD) / TCP(sport=8080, dport=50000, flags="SA")
    _, back = dp.run("from_container", reply)
    assert (back[IP].src, back[TCP].sport, back[IP].dst) == (NODE0, 31313, WORLD)
    assert_valid(back)


def test_nodeport_from_outside_to_remote_backend_is_snated(load):
    dp = K.build(load, K.scenario(nodeport(False)), netdev=True)
    res, out = dp.run("from_netdev", tcp4(NODE0, 31313, src=WORLD, sport=50001))
    assert res.verdict == "TC_ACT_OK"
    assert (out[IP].dst, out[TCP].dport) == ("198.18.1.20", 8080)
    assert out[IP].src == NODE0 and 32768 <= out[TCP].sport <= 65535
    assert_valid(out)
    snat_port = out[TCP].sport
    # The same flow keeps its port.
    _, again = dp.run("from_netdev", tcp4(NODE0, 31313, src=WORLD, sport=50001, flags="A"))
    assert again[TCP].sport == snat_port
    # The backend's reply comes back to this node and goes out to the client.
    reply = K.eth() / IP(src="198.18.1.20", dst=NODE0) / TCP(sport=8080, dport=snat_port, flags="SA")
    _, back = dp.run("from_netdev", reply)
    assert (back[IP].src, back[TCP].sport) == (NODE0, 31313)
    assert (back[IP].dst, back[TCP].dport) == (WORLD, 50001)
    assert_valid(back)


def test_clusterip_is_not_reachable_from_outside(load):
    dp = K.build(load, K.scenario(web()), netdev=True)
    pkt = tcp4(VIP, 80, src=WORLD)
    res, out = dp.run("from_netdev", pkt)
    assert res.verdict == "TC_ACT_OK" and bytes(out) == bytes(pkt)


def test_external_traffic_policy_local(load):
    scen = K.scenario(service("loc", "198.19.0.30", [("http", 80, 8080, "TCP")],
                              [endpoint("198.18.1.20", "cb-node1")], svc_type="NodePort",
                              node_ports={"http": 31000}, local=True))
    dp = K.build(load, scen, netdev=True)
    res, _ = dp.run("from_netdev", tcp4(NODE0, 31000, src=WORLD))
    assert res.drop_reason == DROP["DROP_NO_SERVICE"]       # no backend on cb-node0
    _, out = dp.run("from_container", tcp4(NODE1, 31000))
    assert out[IP].dst == "198.18.1.20"                     # cb-node1's frontend has one


def test_hostport(load):
    scen = K.scenario(pod("echo-b", "198.18.0.30", "cb-node0", host_ports=[(8080, 40000, "TCP")]))
    dp = K.build(load, scen, netdev=True)
    _, out = dp.run("from_netdev", tcp4(NODE0, 40000, src=WORLD))
    assert (out[IP].dst, out[TCP].dport) == ("198.18.0.30", 8080)
    _, out = dp.run("from_container", tcp4(NODE0, 40000))
    assert (out[IP].dst, out[TCP].dport) == ("198.18.0.30", 8080)
    assert_valid(out)


def test_external_ip(load):
    dp = K.build(load, K.scenario(web(external_ips=["203.0.113.50"])))
    _, out = dp.run("from_container", tcp4("203.0.113.50", 80))
    assert out[IP].dst in BE


def test_per_service_counters(dp):
    for sport in range(3):
        dp.run("from_container", tcp4(VIP, 80, sport=48000 + sport))
    rid = dp.control.frontend_id((K.ip(VIP), 80, "TCP"))
    per_cpu = dp.lxc.maps["cb_lb_stats"].lookup(rid)
    assert sum(c.packets for c in per_cpu) == 3


def test_ct_tuple_mirror_roundtrip(dp):
    dp.run("from_container", tcp4(VIP, 80, sport=49000))
    keys = list(dp.lxc.maps["cb_ct4"].keys())
    assert all(isinstance(k, Ct4Tuple) for k in keys)
