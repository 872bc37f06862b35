"""State abuse against one node (tests/adversarial/node.py's topology): spoofed sources,
forged replies, off-path RST/FIN, a full conntrack map, replays after a policy change.
Every packet is also checked against the invariants (tests/adversarial/invariants.py).

    world 203.0.113.9 --- from_netdev --+-- web    (ingress: TCP 80/8080 from client)
                                        +-- x      (no policy: the attacker)
                                        +-- client (egress: TCP 80 to world, ICMP to host;
                                        |           ingress: nothing)
                                        +-- d      (deny rules: egress TCP 22 world, ingress x)
"""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from harness.policy.model import ID_WORLD, PortRange, Rule

from .adversarial import invariants as I
from .adversarial import node as N
from .adversarial.corpus import _ext_bytes
from .adversarial.node import CLIENT, CLIENT6, NODE4, PODS, WORLD, WORLD2, WORLD6

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

ETH = Ether(src="02:cb:00:00:00:01", dst="02:cb:00:00:00:02")


@pytest.fixture
def node(load):
    n = N.AdvNode(load)
    yield n
    n.close()


def run(n: N.AdvNode, program: str, pod: str | None, pkt) -> N.Outcome:
    """Run *pkt* and assert the invariants hold for it."""
    frame = bytes(ETH / pkt)
    before = n.snapshot()
    out = n.run(program, pod, frame)
    created = n.snapshot() - before
    errs = I.check(frame, out, created)
    assert not errs, f"{program}[{pod}] {frame.hex()}: {errs}"
    return out


def tcp(src, dst, sport, dport, flags, v6=False, seq=1000, ack=0):
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    return ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)


def ct_entries(n: N.AdvNode) -> dict[str, bytes]:
    """{readable key: value bytes} of every conntrack entry."""
    st = n.state()
    return {N.describe_ct_key(k): v for m in ("cb_ct4", "cb_ct6") for k, v in st[m].items()}


def open_client_flow(n: N.AdvNode, sport: int = 40000, v6: bool = False) -> None:
    """client -> world:80 (allowed), the answer, the client's ACK: established."""
    c, w = (CLIENT6, WORLD6) if v6 else (CLIENT, WORLD)
    assert run(n, "from_container", "client", tcp(c, w, sport, 80, "S", v6)).short == "pass"
    assert run(n, "to_container", "client", tcp(w, c, 80, sport, "SA", v6, 5000, 1001)).short == "pass"
    assert run(n, "from_container", "client", tcp(c, w, sport, 80, "A", v6, 1001, 5001)).short == "pass"


# -- spoofed sources ------------------------------------------------------------------------

SPOOF_L4 = {
    "tcp-syn": lambda: TCP(sport=40000, dport=80, flags="S"),
    "tcp-synack": lambda: TCP(sport=80, dport=40000, flags="SA"),
    "udp": lambda: UDP(sport=40000, dport=53),
}


@pytest.mark.parametrize("pod", sorted(PODS))
@pytest.mark.parametrize("v6", [False, True])
def test_a_pod_spoofing_any_other_source_is_dropped_without_state(node, pod, v6):
    own = PODS[pod].ip6 if v6 else PODS[pod].ip4
    sources = [p.ip6 if v6 else p.ip4 for p in PODS.values()] + (
        [WORLD6, N.VIP6, N.NODE6, N.REMOTE6, "::", "fe80::1"] if v6 else
        [WORLD, N.VIP4, NODE4, N.REMOTE, "0.0.0.0", "255.255.255.255"])
    dests = ([WORLD6, N.VIP6] + [p.ip6 for p in PODS.values()] if v6 else
             [WORLD, N.VIP4, N.VIP_MISS4] + [p.ip4 for p in PODS.values()])
    before = node.snapshot()
    for src in sources:
        if src == own:
            continue
        for dst in dests:
            for name, l4 in SPOOF_L4.items():
                ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
                out = run(node, "from_container", pod, ip / l4())
                assert out.short == 132, (pod, src, dst, name, out.short)
            echo = (IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=5) if v6 else
                    IP(src=src, dst=dst) / ICMP(type=8, id=5))
            assert run(node, "from_container", pod, echo).short == 132, (pod, src, dst, "echo")
    assert node.snapshot() == before


# -- forged replies -------------------------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_replies_to_flows_that_never_existed_meet_policy(node, v6):
    c, w = (CLIENT6, WORLD6) if v6 else (CLIENT, WORLD)
    ip = (lambda s, d: IPv6(src=s, dst=d)) if v6 else (lambda s, d: IP(src=s, dst=d))
    echo_reply = ICMPv6EchoReply(id=77) if v6 else ICMP(type=0, id=77)
    for pkt in (tcp(w, c, 80, 40000, "SA", v6), tcp(w, c, 80, 40000, "A", v6),
                tcp(w, c, 80, 40000, "R", v6), ip(w, c) / UDP(sport=53, dport=40000),
                ip(w, c) / echo_reply):
        assert run(node, "to_container", "client", pkt).short == 133, pkt.summary()
    # x (no policy) answering a client connection that never reached it
    assert run(node, "to_container", "client", tcp(PODS["x"].ip4 if not v6 else PODS["x"].ip6, c,
                                                   80, 40000, "SA", v6)).short == 133


@pytest.mark.parametrize("v6", [False, True])
def test_replies_to_denied_flows_meet_policy(node, v6):
    c, w = (CLIENT6, WORLD6) if v6 else (CLIENT, WORLD)
    # client -> world:22 is denied; the world's "answer" is not a reply
    assert run(node, "from_container", "client", tcp(c, w, 40001, 22, "S", v6)).short == 133
    assert run(node, "to_container", "client", tcp(w, c, 22, 40001, "SA", v6)).short == 133
    # world -> client:80 is denied; the client's "answer" is not a reply either
    assert run(node, "to_container", "client", tcp(w, c, 40002, 80, "S", v6)).short == 133
    assert run(node, "from_container", "client", tcp(c, w, 80, 40002, "SA", v6)).short == 133
    # d's deny rule: x -> d is denied (181); d's answer to x is a new connection of d
    x = PODS["x"].ip6 if v6 else PODS["x"].ip4
    d = PODS["d"].ip6 if v6 else PODS["d"].ip4
    assert run(node, "to_container", "d", tcp(x, d, 40003, 80, "S", v6)).short == 181
    assert run(node, "from_container", "x", tcp(x, d, 40003, 80, "S", v6)).short == "pass"
    assert run(node, "to_container", "d", tcp(x, d, 40003, 80, "A", v6)).short == 181


def test_an_unverified_nodeport_flow_gives_the_backend_no_reverse_nat(node):
    """world -> NodePort 31313 -> web:8080: web's ingress denies the world, so the entry
    stays unverified; web's packet on the tuple is a new connection of web (web's
    egress is not enforced: it passes) and must not be rewritten to the NodePort."""
    out = run(node, "from_netdev", None, tcp(WORLD, NODE4, 50000, N.NODEPORT_LOCAL, "S"))
    o = Ether(out.data)
    assert out.short == "pass" and (o[IP].dst, o[TCP].dport) == (N.WEB, N.TARGET_PORT)
    assert run(node, "to_container", "web", o[IP]).short == 133
    out = run(node, "from_container", "web", tcp(N.WEB, WORLD, N.TARGET_PORT, 50000, "SA"))
    o = Ether(out.data)
    assert out.short == "pass"
    assert (o[IP].src, o[TCP].sport) == (N.WEB, N.TARGET_PORT), "reverse-NATed an unverified flow"


# -- off-path RST/FIN -----------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["R", "F", "FA", "RA"])
@pytest.mark.parametrize("v6", [False, True])
def test_off_path_rst_and_fin_do_not_touch_an_established_entry(node, flags, v6):
    open_client_flow(node, 40000, v6)
    before = ct_entries(node)
    c, w, w2 = (CLIENT6, WORLD6, "2001:db8:4::77") if v6 else (CLIENT, WORLD, WORLD2)
    guesses = [tcp(w, c, 81, 40000, flags, v6), tcp(w, c, 80, 40001, flags, v6),
               tcp(w, c, 80, 39999, flags, v6), tcp(w2, c, 80, 40000, flags, v6),
               tcp(w, c, 40000, 80, flags, v6)]
    for g in guesses:
        assert run(node, "to_container", "client", g).short == 133, g.summary()
        if not v6:
            run(node, "from_netdev", None, g)
    after = ct_entries(node)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


# -- conntrack map full -----------------------------------------------------------------------

def test_a_full_conntrack_map_keeps_policy(load):
    n = N.AdvNode(load, ct_max=64)
    try:
        open_client_flow(n, 40000)
        key = N.ct4_key(WORLD, CLIENT, 80, 40000, N.TCP_, N.CT_EGRESS)
        x = PODS["x"].ip4
        # x (no policy) floods flows, each used twice: the LRU's second chance keeps
        # entries that were looked up, so a flood of one-packet flows never evicts it
        for i in range(3000):
            flow = IP(src=x, dst=WORLD) / UDP(sport=1024 + i, dport=53)
            assert run(n, "from_container", "x", flow).short == "pass"
            assert run(n, "from_container", "x", flow).short == "pass"
            if i % 50 == 49 and key not in n.state()["cb_ct4"]:
                break
        ct = n.state()["cb_ct4"]
        assert len(ct) <= 64 * 2                # LRU: bounded (per-CPU free lists may overshoot)
        assert key not in ct, "the flood did not evict the client's flow"
        # new flows still meet policy
        assert run(n, "from_container", "client", tcp(CLIENT, WORLD, 41000, 81, "S")).short == 133
        assert run(n, "from_container", "client", tcp(CLIENT, WORLD, 41001, 80, "S")).short == "pass"
        # the evicted flow's packets are new again: the world's are checked (denied)
        assert run(n, "to_container", "client", tcp(WORLD, CLIENT, 80, 40000, "A", seq=5001, ack=1001)).short == 133
        # and a denied flow gains nothing from the flood
        assert run(n, "to_container", "client", tcp(WORLD, CLIENT, 40002, 80, "S")).short == 133
        assert run(n, "to_container", "web", tcp(x, N.WEB, 40003, 80, "S")).short == 133
    finally:
        n.close()


# -- replays after a policy change ----------------------------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_an_established_flow_is_rechecked_when_the_policy_changes(node, v6):
    open_client_flow(node, 40000, v6)
    c, w = (CLIENT6, WORLD6) if v6 else (CLIENT, WORLD)
    ack = tcp(c, w, 40000, 80, "A", v6, 1001, 5001)
    node.apply_policy(N.policy_state(client_egress=(Rule(False, ID_WORLD, N.TCP_, PortRange(443, 443)),)))
    assert run(node, "from_container", "client", ack).short == 133
    # allowed again: the same replay passes
    node.apply_policy(N.policy_state())
    assert run(node, "from_container", "client", ack).short == "pass"


@pytest.mark.parametrize("v6", [False, True])
def test_an_admitted_ingress_flow_is_rechecked_when_the_policy_changes(node, v6):
    c, web = (CLIENT6, N.WEB6) if v6 else (CLIENT, N.WEB)
    assert run(node, "to_container", "web", tcp(c, web, 40010, 80, "S", v6)).short == "pass"
    assert run(node, "to_container", "web", tcp(c, web, 40010, 80, "A", v6)).short == "pass"
    node.apply_policy(N.policy_state(web_ingress=()))
    assert run(node, "to_container", "web", tcp(c, web, 40010, 80, "A", v6)).short == 133
    # a rule for another port does not readmit it
    node.apply_policy(N.policy_state(web_ingress=(Rule(False, N.CLIENT_ID, N.TCP_, PortRange(81, 81)),)))
    assert run(node, "to_container", "web", tcp(c, web, 40010, 80, "A", v6)).short == 133


# -- issue 11's fixes, as definite cases -------------------------------------------------------

@pytest.mark.parametrize("ext", [1, 2, 3, 4])
def test_a_packet_too_big_quoting_extension_headers_is_related(node, ext):
    """RFC 4443 2.4(c): the error quotes as much of the packet as fits, extension
    headers included; the quoted tuple (past them) is the client's flow."""
    open_client_flow(node, 40000, v6=True)
    first, hdrs = _ext_bytes(ext, N.TCP_)
    quote = bytes(IPv6(src=CLIENT6, dst=WORLD6, nh=first, plen=len(hdrs) + 20)) + hdrs + bytes(
        TCP(sport=40000, dport=80, flags="A", seq=1001, ack=5001))
    ptb = IPv6(src=N.ROUTER6, dst=CLIENT6) / ICMPv6PacketTooBig(mtu=1280) / Raw(quote)
    assert run(node, "to_container", "client", ptb).short == "pass"


def test_nodeport_snat_ports_are_allocated_in_range_and_distinct(node):
    """Remote backend: SNAT to the node address and a port in [32768, 65535], one
    per client flow (two clients with the same source port must not share one)."""
    seen = {}
    for i, client in enumerate(("203.0.113.9", "203.0.113.10", "203.0.113.11")):
        out = run(node, "from_netdev", None, tcp(client, NODE4, 50000, N.NODEPORT_REMOTE, "S"))
        o = Ether(out.data)
        assert out.short == "pass" and (o[IP].src, o[IP].dst) == (NODE4, N.REMOTE_NP)
        assert o[TCP].sport in N.SNAT_PORTS
        seen[client] = o[TCP].sport
    assert len(set(seen.values())) == len(seen), seen
