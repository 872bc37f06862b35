"""Attacks on the veth's verdicts, each written as the packets a pod (or the world)
would send, through the real programs of one node whose maps are shared:

    world 203.0.113.9 --+                    +-- web    198.18.0.20  ep 2  (ingress: TCP 80
    router 203.0.113.254|   node cb-node0    |                             from client; egress:
                        +-- from_netdev      |                             client only)
                                             +-- x      198.18.0.30  ep 3  (no policy: the attacker)
                                             +-- client 198.18.0.40  ep 4  (egress: TCP 80 to the
                                             |                             world, ICMP to the host;
                                             |                             ingress: default deny)
                                             +-- d      198.18.0.50  ep 5  (egress: deny all)

Every test fails on the datapath before issue 11's fixes (the finding it reproduces
is named) and passes after.
"""
from __future__ import annotations

import ipaddress
import socket

import pytest
from scapy.layers.inet import ICMP, IP, TCP, IPOption_RR
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6PacketTooBig, ICMPv6Unknown, IPv6

from harness import addressing
from harness.node import datapath
from harness.abi import drop_reasons
from harness.lb.desired import lb_state
from harness.policy.model import (ANY_PORT, ID_HOST, ID_WORLD, EndpointPolicy, IpcacheEntry,
                                  PolicyState, PortRange, Rule)
from harness.policy.control import PolicyControl
from harness.testrun.packets import checksum_errors, eth

from . import lbkit as K
from .nodekit import Node, verdict

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

DROP = drop_reasons.CODES
TCP_, ICMP_, ICMP6_ = 6, 1, 58
WEB, X, CLIENT, D = "198.18.0.20", "198.18.0.30", "198.18.0.40", "198.18.0.50"
WEB6, X6, CLIENT6, D6 = "2001:db8:1::20", "2001:db8:1::30", "2001:db8:1::40", "2001:db8:1::50"
WORLD, WORLD2, ROUTER = "203.0.113.9", "203.0.113.77", "203.0.113.254"
WORLD6, ROUTER6 = "2001:db8:4::9", "2001:db8:4::fe"
NODE0 = str(addressing.node_ip4(0))
IDS = {"default/web": 2, "default/x": 3, "default/client": 4, "default/d": 5}
WEB_ID, X_ID, CLIENT_ID, D_ID = 1001, 1002, 1003, 1004
VIP, NODE_PORT = "198.19.0.20", 31313


def policy(web_ingress=(Rule(False, CLIENT_ID, TCP_, PortRange(80, 80)),)) -> PolicyState:
    net = ipaddress.ip_network
    ipc = [IpcacheEntry(net(f"{ip}/32"), i) for ip, i in
           ((WEB, WEB_ID), (X, X_ID), (CLIENT, CLIENT_ID), (D, D_ID), (NODE0, ID_HOST))]
    ipc += [IpcacheEntry(net(f"{ip}/128"), i) for ip, i in
            ((WEB6, WEB_ID), (X6, X_ID), (CLIENT6, CLIENT_ID), (D6, D_ID))]
    eps = (
        EndpointPolicy("default/web", WEB_ID, True, True, tuple(web_ingress),
                       (Rule(False, CLIENT_ID, 0),)),
        EndpointPolicy("default/x", X_ID, False, False),
        EndpointPolicy("default/client", CLIENT_ID, True, True, (),
                       (Rule(False, ID_WORLD, TCP_, PortRange(80, 80)),
                        Rule(False, ID_HOST, ICMP_, ANY_PORT))),
        EndpointPolicy("default/d", D_ID, False, True),
    )
    return PolicyState((), tuple(ipc), eps)


@pytest.fixture
def node(load):
    n = Node(load)
    n.web = n.endpoint(2, WEB, WEB6)
    n.x = n.endpoint(3, X, X6)
    n.client = n.endpoint(4, CLIENT, CLIENT6)
    n.d = n.endpoint(5, D, D6)
    PolicyControl(n.coll.maps).apply(policy(), IDS)
    yield n
    n.close()


def program_services(n: Node, *docs) -> None:
    datapath.lb_control(n.coll).apply(lb_state(K.scenario(*docs)))


def ct4_sources(n: Node) -> set[str]:
    return {str(ipaddress.IPv4Address(bytes(k.saddr.to_bytes(4, "little"))))
            for k, _ in n.coll.maps["cb_ct4"].items()}


def passes(result) -> bool:
    return verdict(result) == "pass"


def dropped(result, reason: str) -> bool:
    return verdict(result) == DROP[reason]


# -- 1. the source address -------------------------------------------------------------

def test_a_pod_cannot_send_with_another_pods_source(node):
    spoofed = eth() / IP(src=WEB, dst=WORLD) / TCP(sport=22, dport=40000, flags="SA")
    res, _ = node.x.egress(spoofed)
    assert dropped(res, "DROP_INVALID_SIP")
    assert WEB not in ct4_sources(node), "a dropped packet must not leave conntrack state"
    own = eth() / IP(src=X, dst=WORLD) / TCP(sport=22, dport=40000, flags="S")
    assert passes(node.x.egress(own)[0])


def test_a_pod_cannot_send_with_another_pods_ipv6_source(node):
    spoofed = eth() / IPv6(src=WEB6, dst=WORLD6) / TCP(sport=22, dport=40000, flags="SA")
    assert dropped(node.x.egress(spoofed)[0], "DROP_INVALID_SIP")
    assert passes(node.x.egress(eth() / IPv6(src=X6, dst=WORLD6) / TCP(dport=80))[0])


def test_a_forged_reply_does_not_open_a_flow_the_policy_denies(node):
    """Finding 1: world -> web:22 is denied; a pod sends web:22 -> world with web's
    address; the world's next packet must not count as its reply."""
    assert dropped(node.web.ingress(eth() / IP(src=WORLD, dst=WEB) / TCP(
        sport=40000, dport=22, flags="S"))[0], "DROP_POLICY")
    forged = eth() / IP(src=WEB, dst=WORLD) / TCP(sport=22, dport=40000, flags="SA")
    assert dropped(node.x.egress(forged)[0], "DROP_INVALID_SIP")
    again = eth() / IP(src=WORLD, dst=WEB) / TCP(sport=40000, dport=22, flags="A")
    assert dropped(node.web.ingress(again)[0], "DROP_POLICY")


def test_a_pod_cannot_impersonate_another_to_a_backend(node):
    program_services(node, K.service("svc", VIP, [("http", 80, 8080, "TCP")],
                                     [K.endpoint("198.18.1.20")]))
    forged = eth() / IP(src=WEB, dst=VIP) / TCP(sport=40000, dport=80, flags="S")
    assert dropped(node.x.egress(forged)[0], "DROP_INVALID_SIP")
    assert WEB not in ct4_sources(node)
    res, out = node.x.egress(eth() / IP(src=X, dst=VIP) / TCP(sport=40000, dport=80, flags="S"))
    assert passes(res) and (out[IP].src, out[IP].dst, out[TCP].dport) == (X, "198.18.1.20", 8080)


def test_a_pod_without_an_ipv6_address_sends_no_ipv6(load):
    n = Node(load)
    try:
        v4only = n.endpoint(7, "198.18.0.70")
        res, _ = v4only.egress(eth() / IPv6(src="2001:db8:1::70", dst=WORLD6) / TCP(dport=80))
        assert dropped(res, "DROP_INVALID_SIP")
    finally:
        n.close()


@pytest.mark.parametrize("hlim, expect", [(255, "pass"), (64, DROP["DROP_INVALID_SIP"])])
def test_neighbour_discovery_is_exempt_only_as_rfc4861_sends_it(node, hlim, expect):
    ns = eth() / IPv6(src="fe80::30", dst="ff02::1:ff00:1", hlim=hlim) / ICMPv6ND_NS(tgt="fe80::1")
    assert verdict(node.x.egress(ns)[0]) == expect


# -- 3. ICMPv6 beyond neighbour discovery ----------------------------------------------

@pytest.mark.parametrize("icmp_type", [138, 139, 140, 143, 200, 255])
def test_icmpv6_types_past_neighbour_discovery_meet_policy(node, icmp_type):
    """Finding 3: types >= 138 skipped conntrack and policy in both directions."""
    out = eth() / IPv6(src=CLIENT6, dst=WORLD6, hlim=255) / ICMPv6Unknown(type=icmp_type, msgbody=b"\0" * 4)
    assert dropped(node.client.egress(out)[0], "DROP_POLICY")
    into = eth() / IPv6(src=WORLD6, dst=CLIENT6, hlim=255) / ICMPv6Unknown(type=icmp_type, msgbody=b"\0" * 4)
    assert dropped(node.client.ingress(into)[0], "DROP_POLICY")


# -- 2. ICMP errors --------------------------------------------------------------------

def open_client_flow(n: Node, sport: int = 40000) -> None:
    """client -> world:80 (allowed) and the world's answer (a reply)."""
    syn = eth() / IP(src=CLIENT, dst=WORLD) / TCP(sport=sport, dport=80, flags="S")
    assert passes(n.client.egress(syn)[0])
    synack = eth() / IP(src=WORLD, dst=CLIENT) / TCP(sport=80, dport=sport, flags="SA")
    assert passes(n.client.ingress(synack)[0])


def error_from(src: str, dst: str, quote, code: int = 3, pad: int = 0):
    return eth() / IP(src=src, dst=dst) / ICMP(type=3, code=code) / quote / (b"\0" * pad)


def test_a_pod_may_report_an_error_about_its_own_connection(node):
    open_client_flow(node)
    quote = IP(src=WORLD, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA")
    # client's egress allows no ICMP to the world: only relatedness lets this through.
    assert passes(node.client.egress(error_from(CLIENT, WORLD, quote))[0])


def test_an_error_to_an_unrelated_address_is_not_related(node):
    """Finding 2: the quote named the client's own flow, the error went elsewhere."""
    open_client_flow(node)
    quote = IP(src=WORLD, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA")
    res, _ = node.client.egress(error_from(CLIENT, WORLD2, quote, pad=1200))
    assert dropped(res, "DROP_POLICY")


def test_an_error_quoting_the_pods_own_packet_the_wrong_way_is_not_related(node):
    open_client_flow(node)
    own = IP(src=CLIENT, dst=WORLD) / TCP(sport=40000, dport=80, flags="S")
    assert dropped(node.client.egress(error_from(CLIENT, WORLD, own))[0], "DROP_POLICY")


def test_an_error_longer_than_rfc1812_allows_is_not_related(node):
    open_client_flow(node)
    quote = IP(src=WORLD, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA")
    big = error_from(CLIENT, WORLD, quote, pad=1200)
    assert len(big[IP]) > 576
    assert dropped(node.client.egress(big)[0], "DROP_POLICY")


def test_a_pod_cannot_send_errors_quoting_another_pods_connection(node):
    """Finding 2: d's egress denies the world; it quoted the client's flow."""
    open_client_flow(node)
    quote = IP(src=WORLD, dst=CLIENT) / TCP(sport=80, dport=40000, flags="SA")
    assert dropped(node.d.egress(error_from(D, WORLD, quote))[0], "DROP_POLICY")


def test_an_error_to_a_pod_quoting_another_pods_connection_meets_its_policy(node):
    """Finding 2: an error to web quoting the client's flow passed web's ingress."""
    open_client_flow(node)
    quote = IP(src=CLIENT, dst=WORLD) / TCP(sport=40000, dport=80, flags="S")
    assert dropped(node.web.ingress(error_from(WORLD, WEB, quote))[0], "DROP_POLICY")
    # The same error to the client, from a router on the path, is related.
    assert passes(node.client.ingress(error_from(ROUTER, CLIENT, quote, code=4))[0])


def test_icmpv6_packet_too_big_relatedness(node):
    syn = eth() / IPv6(src=CLIENT6, dst=WORLD6) / TCP(sport=40000, dport=80, flags="S")
    assert passes(node.client.egress(syn)[0])
    quote = IPv6(src=CLIENT6, dst=WORLD6) / TCP(sport=40000, dport=80, flags="S")
    ptb = eth() / IPv6(src=ROUTER6, dst=CLIENT6) / ICMPv6PacketTooBig(mtu=1280) / quote
    assert passes(node.client.ingress(ptb)[0])
    to_web = eth() / IPv6(src=ROUTER6, dst=WEB6) / ICMPv6PacketTooBig(mtu=1280) / quote
    assert dropped(node.web.ingress(to_web)[0], "DROP_POLICY")
    big = eth() / IPv6(src=ROUTER6, dst=CLIENT6) / ICMPv6PacketTooBig(mtu=1280) / quote / (
        b"\0" * 1300)
    assert dropped(node.client.ingress(big)[0], "DROP_POLICY")


# -- (a) ICMP without an identifier is not tracked --------------------------------------

def test_icmp_without_identifier_never_counts_as_a_reply(node):
    """Seen in the random stage: after earlier ICMP between the same addresses, an
    ICMP type 9 with IP options from the node passed the pod's ingress policy."""
    stamp = eth() / IP(src=CLIENT, dst=NODE0) / ICMP(type=13)
    assert passes(node.client.egress(stamp)[0])
    advert = eth() / IP(src=NODE0, dst=CLIENT, options=[IPOption_RR()]) / ICMP(type=9)
    assert dropped(node.client.ingress(advert)[0], "DROP_POLICY")
    # Echo keeps its request/reply pairing.
    assert passes(node.client.egress(eth() / IP(src=CLIENT, dst=NODE0) / ICMP(type=8, id=7))[0])
    assert passes(node.client.ingress(eth() / IP(src=NODE0, dst=CLIENT) / ICMP(type=0, id=7))[0])


# -- 4. NodePort conntrack before the backend's verdict ---------------------------------

def nodeport_to_web():
    return K.service("np", VIP, [("http", 80, 8080, "TCP")], [K.endpoint(WEB, "cb-node0")],
                     svc_type="NodePort", node_ports={"http": NODE_PORT})


def test_a_nodeport_flow_the_backend_denies_gives_it_no_reply_path(node):
    """Finding 4: from_netdev's entry let web answer a client its ingress denied,
    past its egress policy and SNATed to the NodePort."""
    program_services(node, nodeport_to_web())
    res, out = node.from_netdev(K.tcp4(NODE0, NODE_PORT, src=WORLD, sport=50000))
    assert passes(res) and (out[IP].dst, out[TCP].dport) == (WEB, 8080)
    assert dropped(node.web.ingress(out)[0], "DROP_POLICY")
    answer = eth() / IP(src=WEB, dst=WORLD) / TCP(sport=8080, dport=50000, flags="SA")
    assert dropped(node.web.egress(answer)[0], "DROP_POLICY")


def test_a_nodeport_flow_the_backend_admits_is_answered_from_the_nodeport(node):
    PolicyControl(node.coll.maps).apply(policy(web_ingress=(
        Rule(False, ID_WORLD, TCP_, PortRange(8080, 8080)),)), IDS)
    program_services(node, nodeport_to_web())
    _, out = node.from_netdev(K.tcp4(NODE0, NODE_PORT, src=WORLD, sport=50000))
    assert passes(node.web.ingress(out)[0])
    res, back = node.web.egress(eth() / IP(src=WEB, dst=WORLD) / TCP(
        sport=8080, dport=50000, flags="SA"))
    assert passes(res)
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (
        NODE0, NODE_PORT, WORLD, 50000)
    assert not checksum_errors(back)


# -- a ping to a VIP as a fragment ------------------------------------------------------

def test_a_fragmented_ping_to_a_vip_is_not_answered(node):
    program_services(node, K.service("svc", VIP, [("http", 80, 8080, "TCP")],
                                     [K.endpoint("198.18.1.20")]))
    whole = eth() / IP(src=CLIENT, dst=VIP) / ICMP(type=8, id=9) / (b"x" * 16)
    res, out = node.client.egress(whole)
    assert res.verdict == "TC_ACT_REDIRECT" and out[ICMP].type == 0
    first = eth() / IP(src=CLIENT, dst=VIP, flags="MF", id=77) / ICMP(type=8, id=9) / (b"x" * 16)
    assert dropped(node.client.egress(first)[0], "DROP_FRAG_NOSUPPORT")



# -- errors about pings (found by the differential stage) --------------------------------

def test_an_error_about_the_pods_ping_is_related(node):
    """An error quoting a tracked echo request names its entry by the identifier."""
    ping = eth() / IP(src=CLIENT, dst=NODE0) / ICMP(type=8, id=77) / b"abcdefgh"
    assert passes(node.client.egress(ping)[0])
    quote = IP(src=CLIENT, dst=NODE0) / ICMP(type=8, id=77) / b"abcdefgh"
    exceeded = eth() / IP(src=ROUTER, dst=CLIENT) / ICMP(type=11, code=0) / quote
    assert passes(node.client.ingress(exceeded)[0])
    other = IP(src=CLIENT, dst=NODE0) / ICMP(type=8, id=78) / b"abcdefgh"
    assert dropped(node.client.ingress(eth() / IP(src=ROUTER, dst=CLIENT) / ICMP(
        type=11, code=0) / other)[0], "DROP_POLICY")


def test_an_icmpv6_error_about_the_pods_ping_is_related(node):
    from dataclasses import replace

    from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6TimeExceeded
    state = policy()
    eps = tuple(replace(ep, egress=ep.egress + (Rule(False, ID_WORLD, ICMP6_, ANY_PORT),))
                if ep.pod == "default/client" else ep for ep in state.endpoints)
    PolicyControl(node.coll.maps).apply(replace(state, endpoints=eps), IDS)
    ping = eth() / IPv6(src=CLIENT6, dst=WORLD6) / ICMPv6EchoRequest(id=5, data=b"abcdefgh")
    assert passes(node.client.egress(ping)[0])
    quote = IPv6(src=CLIENT6, dst=WORLD6) / ICMPv6EchoRequest(id=5, data=b"abcdefgh")
    err = eth() / IPv6(src=ROUTER6, dst=CLIENT6) / ICMPv6TimeExceeded() / quote
    res, out = node.client.ingress(err)
    assert passes(res) and bytes(out) == bytes(err)
    other = IPv6(src=CLIENT6, dst=WORLD6) / ICMPv6EchoRequest(id=6, data=b"abcdefgh")
    assert dropped(node.client.ingress(eth() / IPv6(src=ROUTER6, dst=CLIENT6) /
                                       ICMPv6TimeExceeded() / other)[0], "DROP_POLICY")


def test_neighbour_discovery_to_a_routed_address_meets_policy(node):
    """An "NDP" message to a global address would be routed on by the node: from the
    pod, only link-scoped NDP is exempt."""
    na = eth() / IPv6(src=CLIENT6, dst=WORLD6, hlim=255) / ICMPv6Unknown(type=136, msgbody=b"\0" * 20)
    assert dropped(node.client.egress(na)[0], "DROP_POLICY")
    ns = eth() / IPv6(src="fe80::40", dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt="fe80::1")
    assert passes(node.client.egress(ns)[0])


# -- 6. a node's shared programs: the endpoint is the veth's entry ---------------------
#
# A topology's node loads its lxc object once (lxc-shared) and each pod's veth
# runs the same programs: the endpoint (id, addresses) is the cb_endpoint_config entry
# of the interface the packet is on (skb->ifindex: the host-side veth, at tc ingress
# and egress alike).  Test-run packets arrive on the interface __sk_buff.ifindex names
# (the loopback here: it is the only one every namespace has).

LO = socket.if_nametoindex("lo")
NOWHERE = 1_000_000                   # an ifindex no interface has


def metrics_endpoints(n: Node, reason: str) -> set[int]:
    return {k.endpoint_id for k, per_cpu in n.coll.maps["cb_metrics"].items()
            if k.reason == DROP[reason] and sum(v.packets for v in per_cpu)}


def test_a_shared_program_drops_a_forged_ipv4_source(node):
    x = node.shared_endpoint(LO, 3, X, X6)
    spoofed = eth() / IP(src=WEB, dst=WORLD) / TCP(sport=22, dport=40000, flags="SA")
    assert dropped(x.egress(spoofed)[0], "DROP_INVALID_SIP")
    assert WEB not in ct4_sources(node), "a dropped packet must not leave conntrack state"
    assert metrics_endpoints(node, "DROP_INVALID_SIP") == {3}, "counted on the veth's endpoint"
    assert passes(x.egress(eth() / IP(src=X, dst=WORLD) / TCP(sport=22, dport=40000, flags="S"))[0])


def test_a_shared_program_drops_a_forged_ipv6_source(node):
    x = node.shared_endpoint(LO, 3, X, X6)
    spoofed = eth() / IPv6(src=WEB6, dst=WORLD6) / TCP(sport=22, dport=40000, flags="SA")
    assert dropped(x.egress(spoofed)[0], "DROP_INVALID_SIP")
    assert passes(x.egress(eth() / IPv6(src=X6, dst=WORLD6) / TCP(dport=80))[0])


def test_a_shared_program_meets_the_policy_of_the_veths_endpoint(node):
    """client (4) denies all ingress and allows egress TCP 80 to the world only."""
    client = node.shared_endpoint(LO, 4, CLIENT, CLIENT6)
    assert dropped(client.ingress(eth() / IP(src=WORLD, dst=CLIENT) / TCP(
        sport=40000, dport=22, flags="S"))[0], "DROP_POLICY")
    assert dropped(client.egress(eth() / IP(src=CLIENT, dst=WORLD) / TCP(dport=443))[0],
                   "DROP_POLICY")
    assert passes(client.egress(eth() / IP(src=CLIENT, dst=WORLD) / TCP(dport=80))[0])
    assert metrics_endpoints(node, "DROP_POLICY") == {4}


def test_a_shared_program_on_an_interface_without_an_entry_drops_everything(node):
    """Fail closed: a veth the node has no endpoint for (another veth has one) sends
    and receives nothing, whatever the source, and leaves no state."""
    node.shared_endpoint(NOWHERE, 3, X, X6)
    stray = node.shared_endpoint(LO)
    for pkt in (eth() / IP(src=X, dst=WORLD) / TCP(sport=22, dport=40000, flags="S"),
                eth() / IP(src=WEB, dst=WORLD) / TCP(sport=22, dport=40000, flags="SA"),
                eth() / IPv6(src=X6, dst=WORLD6) / TCP(dport=80)):
        assert dropped(stray.egress(pkt)[0], "DROP_NO_CONFIG")
    assert dropped(stray.ingress(eth() / IP(src=WORLD, dst=X) / TCP(sport=80, dport=40000,
                                                                   flags="SA"))[0],
                   "DROP_NO_CONFIG")
    assert not ct4_sources(node)


def test_a_shared_program_treats_an_entry_without_an_endpoint_id_as_none(node):
    """Id 0 means "no endpoint" (no source check, no policy) in the per-endpoint build;
    in a shared program an entry can only name an endpoint, so one with id 0 (a
    half-written or corrupt entry) fails closed like a missing one."""
    x = node.shared_endpoint(LO, 0, X, X6)            # the entry exists, with id 0
    forged = eth() / IP(src=WEB, dst=WORLD) / TCP(sport=22, dport=40000, flags="SA")
    assert dropped(x.egress(forged)[0], "DROP_NO_CONFIG")
    assert dropped(x.ingress(eth() / IP(src=WORLD, dst=X) / TCP(sport=80, dport=40000,
                                                                flags="SA"))[0],
                   "DROP_NO_CONFIG")
    assert not ct4_sources(node)


def test_a_shared_program_drops_once_the_entry_is_removed(node):
    """CNI DEL removes the veth's entry: what still arrives on it is dropped."""
    x = node.shared_endpoint(LO, 3, X, X6)
    own = eth() / IP(src=X, dst=WORLD) / TCP(sport=22, dport=40000, flags="S")
    assert passes(x.egress(own)[0])
    node.coll.maps["cb_endpoint_config"].delete(LO)
    assert dropped(x.egress(own)[0], "DROP_NO_CONFIG")
