"""Datapath events (bpf_src/lib/events.h) from the real programs, run with test_run.

    remote 198.18.1.10 (identity 1000) ---> [to_container | from_container] pod 198.18.0.20
                                                          endpoint 2, identity 1001
    pod ---> VIP 198.19.0.10:80 ---> backend 198.18.1.30:8080 (from_container DNAT)

Each test sends packets (pktgen), reads every record the programs wrote to
cb_events (setup: the node's aggregation level as the loader sets it), and checks
each field of each record against the packet and the rule that decided (check).
"""
from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from harness.abi import drop_reasons, monitor
from harness.abi.cheaders import defines
from harness.abi.structs import Event
from harness.bpf import RingBuffer
from harness.lb.control import LbControl
from harness.lb.desired import lb_state
from harness.node import datapath
from harness.observe import flows
from harness.observe.proto import flow_pb2
from harness.policy.control import PolicyControl
from harness.policy.model import (ANY_IDENTITY, ANY_PORT, ANY_PROTO, EndpointPolicy, IpcacheEntry,
                                  PolicyState, PortRange, Rule)
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

from . import lbkit

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

EV = defines("lib/events.h", "CB_EVENT_")
TRACE = defines("lib/events.h", "TRACE_")
EVF = defines("lib/events.h", "CB_EVF_")
MATCH = defines("lib/events.h", "POLICY_MATCH_")
DIR = defines("lib/common.h", "CB_DIR_")
CT = {"new": 0, "established": 1, "reply": 2}
DROP = drop_reasons.CODES

POD, POD6, REMOTE, REMOTE6 = "198.18.0.20", "2001:db8:1::20", "198.18.1.10", "2001:db8:1:1::10"
VIP, BACKEND = "198.19.0.10", "198.18.1.30"
CLIENT_ID, POD_ID = 1000, 1001
EP = 2
TCP_ = 6


def ipcache() -> tuple[IpcacheEntry, ...]:
    net = ipaddress.ip_network
    return (IpcacheEntry(net(f"{POD}/32"), POD_ID), IpcacheEntry(net(f"{POD6}/128"), POD_ID),
            IpcacheEntry(net(f"{REMOTE}/32"), CLIENT_ID),
            IpcacheEntry(net(f"{REMOTE6}/128"), CLIENT_ID),
            IpcacheEntry(net(f"{BACKEND}/32"), CLIENT_ID))


class Node:
    """The lxc programs of endpoint EP at an aggregation level, and their events."""

    def __init__(self, load, level: str, max_entries: dict | None = None):
        self.coll = load("lxc", max_entries=max_entries,
                         rodata={**datapath.rodata_for("lxc"),
                                 **datapath.endpoint_rodata(EP, POD, POD6),
                                 "monitor_aggregation": monitor.LEVELS[level]})
        self.into = Runner(self.coll, "to_container")
        self.out = Runner(self.coll, "from_container")
        self.got: list[Event] = []
        self.ring = RingBuffer(self.coll.maps["cb_events"], self.got.append, Event)

    def policy(self, ingress=(), egress=()):
        ep = EndpointPolicy("default/pod", POD_ID, bool(ingress), bool(egress), tuple(ingress),
                            tuple(egress))
        PolicyControl(self.coll.maps).apply(PolicyState((), ipcache(), (ep,)),
                                            {"default/pod": EP})

    def events(self) -> list[Event]:
        self.ring.consume()
        out, self.got[:] = list(self.got), []
        return out

    def lost(self) -> int:
        return sum(self.coll.maps["cb_events_lost"].lookup(0))

    def close(self):
        self.ring.close()


@pytest.fixture
def node(load):
    made = []

    def _make(level: str = "medium", **kwargs) -> Node:
        made.append(Node(load, level, **kwargs))
        return made[-1]
    yield _make
    for n in made:
        n.close()


def tcp_in(flags: str = "S", sport: int = 33000, dport: int = 80, src: str = REMOTE):
    return eth() / IP(src=src, dst=POD) / TCP(sport=sport, dport=dport, flags=flags)


def tcp_out(flags: str = "S", sport: int = 40000, dport: int = 80, dst: str = REMOTE):
    return eth() / IP(src=POD, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


def kinds(events) -> list[tuple[int, int]]:
    return [(e.type, e.subtype) for e in events]


def captured(e: Event) -> bytes:
    return bytes(e.pkt[:e.cap_len])


# ----------------------------------------------------------------- drops


def test_a_drop_sends_its_reason_endpoint_direction_and_packet(node):
    n = node()
    pkt = bytes(eth() / IP(src="198.18.0.99", dst=REMOTE) / TCP(dport=80) / (b"x" * 200))
    assert n.out.run(pkt).drop_reason == DROP["DROP_INVALID_SIP"]
    (e,) = n.events()
    assert (e.type, e.subtype) == (EV["CB_EVENT_DROP"], DROP["DROP_INVALID_SIP"])
    assert (e.endpoint_id, e.dir) == (EP, DIR["CB_DIR_EGRESS"])
    assert e.orig_len == len(pkt) and e.cap_len == 128
    assert captured(e) == pkt[:128]
    assert not e.flags & EVF["CB_EVF_IPV6"] and e.ktime_ns > 0


def test_an_ipv6_drop_is_flagged_and_a_short_packet_is_captured_whole(node):
    n = node()
    pkt = bytes(eth() / IPv6(src="2001:db8:1::99", dst=REMOTE6) / TCP(dport=80))
    assert n.out.run(pkt).drop_reason == DROP["DROP_INVALID_SIP"]
    (e,) = n.events()
    assert e.flags & EVF["CB_EVF_IPV6"]
    assert e.cap_len == e.orig_len == len(pkt) and captured(e) == pkt


# ----------------------------------------------------------------- policy verdicts


@pytest.mark.parametrize("rule, match, proto, port", [
    (Rule(False, CLIENT_ID, TCP_, PortRange(80, 80)), "L3_L4", TCP_, 80),
    (Rule(False, CLIENT_ID, ANY_PROTO, ANY_PORT), "L3_ONLY", 0, 0),
    (Rule(False, ANY_IDENTITY, TCP_, PortRange(80, 80)), "L4_ONLY", TCP_, 80),
    (Rule(False, ANY_IDENTITY, ANY_PROTO, ANY_PORT), "ALL", 0, 0),
    (Rule(False, CLIENT_ID, TCP_, ANY_PORT), "L3_PROTO", TCP_, 0),
    (Rule(False, ANY_IDENTITY, TCP_, PortRange(64, 127)), "L4_ONLY", TCP_, 64),
])
def test_an_allowed_connection_sends_the_verdict_of_the_rule_that_allowed_it(node, rule, match,
                                                                              proto, port):
    n = node()
    n.policy(ingress=[rule])
    pkt = bytes(tcp_in())
    assert n.into.run(pkt).verdict == "TC_ACT_OK"
    verdict, trace = n.events()
    assert (verdict.type, verdict.subtype) == (EV["CB_EVENT_POLICY_VERDICT"], 0)
    assert verdict.flags & EVF["CB_EVF_ALLOWED"]
    assert (verdict.endpoint_id, verdict.dir) == (EP, DIR["CB_DIR_INGRESS"])
    assert verdict.remote_identity == CLIENT_ID
    assert (verdict.match_type, verdict.rule_proto, verdict.rule_port) == (MATCH["POLICY_MATCH_" + match],
                                                                           proto, port)
    assert captured(verdict) == pkt
    assert (trace.type, trace.subtype) == (EV["CB_EVENT_TRACE"], TRACE["TRACE_TO_LXC"])


def test_a_denied_connection_sends_the_verdict_then_the_drop(node):
    n = node()
    n.policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(443, 443))])
    assert n.into.run(bytes(tcp_in(dport=80))).drop_reason == DROP["DROP_POLICY"]
    verdict, drop = n.events()
    assert (verdict.type, verdict.subtype) == (EV["CB_EVENT_POLICY_VERDICT"], DROP["DROP_POLICY"])
    assert not verdict.flags & EVF["CB_EVF_ALLOWED"]
    assert (verdict.match_type, verdict.remote_identity) == (MATCH["POLICY_MATCH_NONE"], CLIENT_ID)
    assert (drop.type, drop.subtype, drop.dir) == (EV["CB_EVENT_DROP"], DROP["DROP_POLICY"],
                                                   DIR["CB_DIR_INGRESS"])


def test_a_deny_rule_sends_its_own_match(node):
    n = node()
    n.policy(egress=[Rule(False, ANY_IDENTITY, ANY_PROTO, ANY_PORT),
                     Rule(True, CLIENT_ID, TCP_, PortRange(22, 22))])
    assert n.out.run(bytes(tcp_out(dport=22))).drop_reason == DROP["DROP_POLICY_DENY"]
    verdict, drop = n.events()
    assert not verdict.flags & EVF["CB_EVF_ALLOWED"]
    assert verdict.subtype == DROP["DROP_POLICY_DENY"]          # the reason, as the drop's
    assert (verdict.match_type, verdict.rule_proto, verdict.rule_port, verdict.dir) == (
        MATCH["POLICY_MATCH_L3_L4"], TCP_, 22, DIR["CB_DIR_EGRESS"])
    assert drop.subtype == DROP["DROP_POLICY_DENY"]


def test_a_direction_without_policy_sends_no_verdict(node):
    n = node()
    n.policy(ingress=[Rule(False, CLIENT_ID, TCP_, PortRange(80, 80))])     # egress not enforced
    assert n.out.run(bytes(tcp_out())).verdict == "TC_ACT_OK"
    assert [e.type for e in n.events()] == [EV["CB_EVENT_TRACE"]]


# ----------------------------------------------------------------- traces and aggregation


def test_medium_reports_a_connections_first_packet_new_flags_and_close_only(node):
    n = node("medium")
    sent = []
    for flags in ("S", "A", "A", "PA", "A", "FA"):
        pkt = bytes(tcp_out(flags))
        assert n.out.run(pkt).verdict == "TC_ACT_OK"
        sent.append((flags, [(e.subtype, e.trace_reason, captured(e) == pkt) for e in n.events()]))
    to_stack = TRACE["TRACE_TO_STACK"]
    assert sent == [("S", [(to_stack, CT["new"], True)]),
                    ("A", [(to_stack, CT["established"], True)]),   # ACK: a new flag
                    ("A", []),
                    ("PA", [(to_stack, CT["established"], True)]),  # PSH: a new flag
                    ("A", []),
                    ("FA", [(to_stack, CT["established"], True)])]  # FIN: a new flag


def test_a_reply_is_reported_once_per_new_flag_in_its_own_direction(node):
    n = node("medium")
    n.out.run(bytes(tcp_out("S")))
    n.events()
    reply = bytes(eth() / IP(src=REMOTE, dst=POD) / TCP(sport=80, dport=40000, flags="SA"))
    assert n.into.run(reply).verdict == "TC_ACT_OK"
    (e,) = n.events()
    assert (e.subtype, e.trace_reason) == (TRACE["TRACE_TO_LXC"], CT["reply"])
    assert e.flags & EVF["CB_EVF_REPLY"] and e.dir == DIR["CB_DIR_INGRESS"]
    n.into.run(reply)
    assert n.events() == []


@pytest.mark.parametrize("level, points", [
    ("none", ["TRACE_FROM_LXC", "TRACE_TO_STACK"]),
    ("lowest", ["TRACE_FROM_LXC", "TRACE_TO_STACK"]),
    ("low", ["TRACE_TO_STACK"]),
    ("maximum", []),
    ("off", []),
])
def test_each_level_reports_a_repeated_packet_as_cilium_does(node, level, points):
    n = node(level)
    for _ in range(2):
        n.out.run(bytes(tcp_out("S")))
        n.out.run(bytes(tcp_out("A")))
    n.events()
    n.out.run(bytes(tcp_out("A")))                     # nothing new about the connection
    assert [e.subtype for e in n.events()] == [TRACE[p] for p in points]


def test_a_trace_without_a_conntrack_lookup_says_so_and_hubble_leaves_is_reply_unset(node):
    """FROM_ENDPOINT is sent before conntrack: Cilium's TRACE_REASON_UNKNOWN, and the
    flow has no is_reply and no direction (a reply must not read as a request)."""
    n = node("none")
    n.out.run(bytes(tcp_out("S")))
    n.events()
    reply_from_pod = bytes(eth() / IP(src=POD, dst=REMOTE) / TCP(sport=80, dport=33000, flags="SA"))
    n.into.run(bytes(tcp_in("S", sport=33000, dport=80)))       # the remote's connection in
    n.events()
    n.out.run(reply_from_pod)
    entry, exit_ = n.events()
    assert entry.subtype == TRACE["TRACE_FROM_LXC"]
    assert entry.trace_reason == defines("lib/events.h", "TRACE_REASON_")["TRACE_REASON_UNKNOWN"]
    assert (exit_.subtype, exit_.trace_reason) == (TRACE["TRACE_TO_STACK"], CT["reply"])
    first, second = flows.build_flows("cb-node0", flows.NodeContext(),
                                      [bytes(entry), bytes(exit_)])
    assert not first.flow.HasField("is_reply")
    assert first.flow.traffic_direction == flow_pb2.TRAFFIC_DIRECTION_UNKNOWN
    assert second.flow.is_reply.value is True


def test_a_trace_carries_a_translation_only_when_its_packet_had_one(node):
    n = service_node(node)
    n.out.run(bytes(tcp_out("S", dst=VIP)))
    (xlated,) = n.events()
    assert xlated.flags & EVF["CB_EVF_XLATED"]
    n.out.run(bytes(tcp_out("S", sport=40001, dst=REMOTE)))     # no service: nothing to report
    (plain,) = n.events()
    assert not plain.flags & (EVF["CB_EVF_XLATED"] | EVF["CB_EVF_REV_XLATED"])
    assert bytes(plain.orig_addr.addr) == bytes(16) and plain.orig_port == plain.rev_nat_index == 0


def test_off_sends_nothing_not_even_drops(node):
    n = node("off")
    n.out.run(bytes(eth() / IP(src="198.18.0.99", dst=REMOTE) / TCP(dport=80)))
    n.out.run(bytes(tcp_out("S")))
    assert n.events() == [] and n.lost() == 0


# ----------------------------------------------------------------- service translation


def service_node(node, level="medium") -> Node:
    n = node(level)
    scen = lbkit.scenario(lbkit.pod("pod", POD, "cb-node0"),
                          lbkit.service("web", VIP, [("http", 80, 8080, "TCP")],
                                        [lbkit.endpoint(BACKEND)]))
    LbControl(n.coll.maps).apply(lb_state(scen))
    return n


def test_a_service_connection_reports_the_frontend_and_carries_the_backend(node):
    n = service_node(node)
    assert n.out.run(bytes(tcp_out("S", dst=VIP))).verdict == "TC_ACT_OK"
    (e,) = n.events()
    assert (e.type, e.subtype) == (EV["CB_EVENT_TRACE"], TRACE["TRACE_TO_STACK"])
    assert e.flags & EVF["CB_EVF_XLATED"] and not e.flags & EVF["CB_EVF_REV_XLATED"]
    assert ipaddress.IPv4Address(bytes(e.orig_addr.addr[:4])) == ipaddress.IPv4Address(VIP)
    assert int.from_bytes(e.orig_port.to_bytes(2, "little"), "big") == 80
    assert e.rev_nat_index != 0
    sent = IP(captured(e)[14:])
    assert (sent.dst, sent[TCP].dport) == (BACKEND, 8080)      # the packet as it left


def test_a_service_reply_reports_the_backend_it_came_from(node):
    n = service_node(node)
    n.out.run(bytes(tcp_out("S", dst=VIP)))
    (fwd,) = n.events()
    reply = bytes(eth() / IP(src=BACKEND, dst=POD) / TCP(sport=8080, dport=40000, flags="SA"))
    assert n.into.run(reply).verdict == "TC_ACT_OK"
    (e,) = n.events()
    assert e.subtype == TRACE["TRACE_TO_LXC"]
    assert e.flags & EVF["CB_EVF_REV_XLATED"] and e.flags & EVF["CB_EVF_REPLY"]
    assert ipaddress.IPv4Address(bytes(e.orig_addr.addr[:4])) == ipaddress.IPv4Address(BACKEND)
    assert int.from_bytes(e.orig_port.to_bytes(2, "little"), "big") == 8080
    assert e.rev_nat_index == fwd.rev_nat_index
    delivered = IP(captured(e)[14:])
    assert (delivered.src, delivered[TCP].sport) == (VIP, 80)


# ----------------------------------------------------------------- overflow


def test_a_full_ring_counts_what_it_could_not_take(node):
    n = node("none", max_entries={"cb_events": 4096})
    runs = 40
    for i in range(runs):
        n.out.run(bytes(tcp_out("S", sport=41000 + i)))     # two traces each at level none
    got = n.events()
    assert 0 < len(got) < 2 * runs
    assert len(got) + n.lost() == 2 * runs
