"""Policy enforcement in the real kernel, from hand-built resolved policy.

    remote 198.18.1.10 (identity 1000) ---> [to_container | from_container] pod 198.18.0.20
                                                          endpoint 2, identity 1001

Resolution from Kubernetes objects is tested elsewhere; here the rules are
written by hand so each datapath behaviour is pinned down on its own.
"""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from harness.node import datapath
from harness.abi import drop_reasons
from harness.policy import entries as PE
from harness.policy.model import (ANY_IDENTITY, ANY_PORT, ANY_PROTO, ID_WORLD, EndpointPolicy,
                                  IpcacheEntry, PolicyState, PortRange, Rule)
from harness.policy.control import PolicyControl, read_rules
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

POD, POD6, REMOTE, REMOTE6 = "198.18.0.20", "2001:db8:1::20", "198.18.1.10", "2001:db8:1:1::10"
OTHER = "198.18.1.11"
CLIENT_ID, POD_ID, OTHER_ID, CIDR_ID = 1000, 1001, 1002, (1 << 24) | 1
EP = 2
DROP = drop_reasons.CODES
TCP_, UDP_, ICMP_ = 6, 17, 1


def ipcache() -> tuple[IpcacheEntry, ...]:
    net = ipaddress.ip_network
    return (IpcacheEntry(net(f"{POD}/32"), POD_ID), IpcacheEntry(net(f"{POD6}/128"), POD_ID),
            IpcacheEntry(net(f"{REMOTE}/32"), CLIENT_ID),
            IpcacheEntry(net(f"{REMOTE6}/128"), CLIENT_ID),
            IpcacheEntry(net(f"{OTHER}/32"), OTHER_ID),
            IpcacheEntry(net("203.0.113.0/24"), CIDR_ID),
            IpcacheEntry(net("203.0.113.128/25"), ID_WORLD))


def policy(ingress=(), egress=(), ingress_enforced=None, egress_enforced=None) -> PolicyState:
    ep = EndpointPolicy("default/pod", POD_ID,
                        bool(ingress) if ingress_enforced is None else ingress_enforced,
                        bool(egress) if egress_enforced is None else egress_enforced,
                        tuple(ingress), tuple(egress))
    return PolicyState((), ipcache(), (ep,))


class Setup:
    def __init__(self, load):
        self.coll = load("lxc", rodata={**datapath.rodata_for("lxc"),
                                        **datapath.endpoint_rodata(EP, POD, POD6)})
        self.ctl = PolicyControl(self.coll.maps)
        self.into = Runner(self.coll, "to_container")
        self.out = Runner(self.coll, "from_container")

    def apply(self, state: PolicyState):
        return self.ctl.apply(state, {"default/pod": EP})

    def ingress(self, pkt):
        r = self.into.run(bytes(pkt))
        return "allow" if r.verdict == "TC_ACT_OK" else r.drop_reason

    def egress(self, pkt):
        r = self.out.run(bytes(pkt))
        return "allow" if r.verdict == "TC_ACT_OK" else r.drop_reason


def tcp_in(dport: int, src: str = REMOTE, sport: int = 33000, flags: str = "S"):
    return eth() / IP(src=src, dst=POD) / TCP(sport=sport, dport=dport, flags=flags)


@pytest.fixture
def s(load):
    return Setup(load)


def test_no_policy_allows_everything(s):
    s.apply(policy())
    assert s.ingress(tcp_in(22)) == "allow"
    assert s.egress(eth() / IP(src=POD, dst="203.0.113.9") / UDP(dport=53)) == "allow"


def test_identity_and_port_rule(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080))]))
    assert s.ingress(tcp_in(8080)) == "allow"
    assert s.ingress(tcp_in(8081, sport=33001)) == DROP["DROP_POLICY"]
    assert s.ingress(tcp_in(8080, src=OTHER)) == DROP["DROP_POLICY"]
    assert s.ingress(eth() / IP(src=REMOTE, dst=POD) / UDP(dport=8080)) == DROP["DROP_POLICY"]
    assert s.ingress(tcp_in(8080, src="203.0.113.200")) == DROP["DROP_POLICY"]


def test_deny_wins_over_allow(s):
    s.apply(policy(ingress=[Rule(False, ANY_IDENTITY, ANY_PROTO),
                            Rule(True, CLIENT_ID, TCP_, PortRange(22, 22))]))
    assert s.ingress(tcp_in(22)) == DROP["DROP_POLICY_DENY"]
    assert s.ingress(tcp_in(80, sport=33002)) == "allow"
    assert s.ingress(tcp_in(22, src=OTHER)) == "allow"
    # An allow for the exact identity and port does not beat a wider deny.
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(22, 22)),
                            Rule(True, ANY_IDENTITY, TCP_, ANY_PORT)]))
    assert s.ingress(tcp_in(22, sport=33003)) == DROP["DROP_POLICY_DENY"]


@pytest.mark.parametrize("port, verdict", [(999, "deny"), (1000, "allow"), (1500, "allow"),
                                           (2000, "allow"), (2001, "deny"), (65535, "deny")])
def test_port_ranges(s, port, verdict):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(1000, 2000))]))
    got = s.ingress(tcp_in(port))
    assert got == ("allow" if verdict == "allow" else DROP["DROP_POLICY"])


def test_port_blocks_cover_exactly():
    for lo, hi in [(0, 65535), (1, 1), (1000, 2000), (80, 443), (1024, 65535), (0, 0)]:
        covered = set()
        for start, bits in PE.port_blocks(lo, hi):
            span = 1 << (16 - bits)
            assert start % span == 0
            covered.update(range(start, start + span))
        assert covered == set(range(lo, hi + 1))


def test_reply_of_allowed_egress_passes_ingress_default_deny(s):
    s.apply(policy(egress=[Rule(False, CLIENT_ID, TCP_, PortRange(443, 443))],
                   ingress_enforced=True))
    out = eth() / IP(src=POD, dst=REMOTE) / TCP(sport=40000, dport=443, flags="S")
    assert s.egress(out) == "allow"
    reply = eth() / IP(src=REMOTE, dst=POD) / TCP(sport=443, dport=40000, flags="SA")
    assert s.ingress(reply) == "allow"
    # The same peer opening a connection the other way is a new connection.
    assert s.ingress(tcp_in(443, sport=40001)) == DROP["DROP_POLICY"]
    assert s.egress(eth() / IP(src=POD, dst=REMOTE) / TCP(dport=80)) == DROP["DROP_POLICY"]


def test_established_connection_is_rechecked_after_a_policy_change(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080))]))
    assert s.ingress(tcp_in(8080)) == "allow"
    assert s.ingress(tcp_in(8080, flags="A")) == "allow"
    stats = s.apply(policy(ingress=[Rule(False, OTHER_ID, TCP_, PortRange(8080, 8080))]))
    assert stats.endpoints_changed == 1
    assert s.ingress(tcp_in(8080, flags="A")) == DROP["DROP_POLICY"]


def test_generations_swap_atomically(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(80, 80))]))
    first = read_rules(s.coll.maps, EP)
    assert [k.generation for k, *_ in first] == [0]
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(81, 81))]))
    second = read_rules(s.coll.maps, EP)
    assert [(k.generation, k.port) for k, *_ in second] == [(1, 81)]
    assert len(s.coll.maps["cb_policy_exact"]) + len(s.coll.maps["cb_policy"]) == 1  # old gone
    assert s.ctl.revision(EP) == 2
    unchanged = s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(81, 81))]))
    assert unchanged.endpoints_changed == 0 and s.ctl.revision(EP) == 2


def test_hit_counters(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080)),
                            Rule(True, CLIENT_ID, TCP_, PortRange(22, 22))]))
    for sport in range(3):
        s.ingress(tcp_in(8080, sport=34000 + sport))
    s.ingress(tcp_in(22))
    hits = {(k.deny, k.port): pkts for k, pkts, _ in read_rules(s.coll.maps, EP)}
    assert hits == {(False, 8080): 3, (True, 22): 1}


def test_later_fragments(s):
    frag = eth() / IP(src=REMOTE, dst=POD, frag=100, proto=6) / (b"x" * 64)
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080))]))
    assert s.ingress(frag) == DROP["DROP_POLICY"]           # a port rule cannot match it
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, ANY_PROTO)]))
    assert s.ingress(frag) == "allow"                        # an L3 rule can
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, ANY_PROTO),
                            Rule(True, CLIENT_ID, TCP_, PortRange(22, 22))]))
    assert s.ingress(frag) == DROP["DROP_FRAG_NOSUPPORT"]   # a port deny could not apply


def test_icmp_type_rules(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, ICMP_, PortRange(8, 8))]))
    assert s.ingress(eth() / IP(src=REMOTE, dst=POD) / ICMP(type=8, id=1)) == "allow"
    assert s.ingress(eth() / IP(src=REMOTE, dst=POD) / ICMP(type=13, id=2)) == DROP["DROP_POLICY"]


def test_cidr_identity_with_except(s):
    s.apply(policy(egress=[Rule(False, CIDR_ID, ANY_PROTO)]))
    assert s.egress(eth() / IP(src=POD, dst="203.0.113.5") / TCP(dport=80)) == "allow"
    assert s.egress(eth() / IP(src=POD, dst="203.0.113.200") / TCP(dport=80)) == DROP["DROP_POLICY"]
    assert s.egress(eth() / IP(src=POD, dst="198.51.100.1") / TCP(dport=80)) == DROP["DROP_POLICY"]


def test_world_identity(s):
    s.apply(policy(egress=[Rule(False, ID_WORLD, ANY_PROTO)]))
    assert s.egress(eth() / IP(src=POD, dst="203.0.113.200") / TCP(dport=80)) == "allow"
    assert s.egress(eth() / IP(src=POD, dst=REMOTE) / TCP(dport=80)) == DROP["DROP_POLICY"]


def test_ipv6(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080))]))
    ok = eth() / IPv6(src=REMOTE6, dst=POD6) / TCP(sport=1, dport=8080, flags="S")
    bad = eth() / IPv6(src=REMOTE6, dst=POD6) / TCP(sport=2, dport=8081, flags="S")
    assert s.ingress(ok) == "allow"
    assert s.ingress(bad) == DROP["DROP_POLICY"]


def test_drops_are_counted_per_endpoint_and_reason(s):
    s.apply(policy(ingress=[Rule(True, CLIENT_ID, ANY_PROTO)], ingress_enforced=True))
    for sport in range(4):
        s.ingress(tcp_in(80, sport=35000 + sport))
    counts = {(k.endpoint_id, k.reason, k.dir): sum(c.packets for c in v)
              for k, v in s.coll.maps["cb_metrics"].items()}
    assert counts == {(EP, DROP["DROP_POLICY_DENY"], 1): 4}


def test_endpoint_removed_means_unmanaged(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(80, 80))]))
    assert s.ingress(tcp_in(22)) == DROP["DROP_POLICY"]
    s.ctl.apply(PolicyState((), ipcache(), ()), {})
    assert s.ingress(tcp_in(22, sport=36000)) == "allow"
    assert len(s.coll.maps["cb_policy"]) == len(s.coll.maps["cb_policy_exact"]) == 0


def test_icmp_errors_pass_only_when_related(s):
    s.apply(policy(egress=[Rule(False, CLIENT_ID, UDP_, PortRange(53, 53))],
                   ingress_enforced=True))
    query = eth() / IP(src=POD, dst=REMOTE) / UDP(sport=5000, dport=53) / b"q"
    assert s.egress(query) == "allow"
    related = eth() / IP(src=REMOTE, dst=POD) / ICMP(type=3, code=3) / bytes(query[IP])
    assert s.ingress(related) == "allow"
    stranger = eth() / IP(src=REMOTE, dst=POD) / ICMP(type=3, code=3) / bytes(
        IP(src=POD, dst=REMOTE) / UDP(sport=5001, dport=53) / b"q")
    assert s.ingress(stranger) == DROP["DROP_POLICY"]


def test_pod_may_report_errors_about_its_allowed_connections(s):
    s.apply(policy(ingress=[Rule(False, CLIENT_ID, UDP_, PortRange(9000, 9000))],
                   egress_enforced=True))
    datagram = eth() / IP(src=REMOTE, dst=POD) / UDP(sport=6000, dport=9000) / b"d"
    assert s.ingress(datagram) == "allow"
    unreachable = eth() / IP(src=POD, dst=REMOTE) / ICMP(type=3, code=3) / bytes(datagram[IP])
    assert s.egress(unreachable) == "allow"
    unrelated = eth() / IP(src=POD, dst=REMOTE) / ICMP(type=3, code=3) / bytes(
        IP(src=OTHER, dst=POD) / UDP(sport=6001, dport=9000) / b"d")
    assert s.egress(unrelated) == DROP["DROP_POLICY"]
