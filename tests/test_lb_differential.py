"""Differential test: the kernel's service decisions against the reference model.

Hypothesis draws services (ports, protocols, backends in every endpoint
condition, Maglev, affinity), packets (to frontends, to wrong ports, pings,
to pods), repeated flows and a change of the services midway; every packet's
verdict, drop reason and translation must agree with harness.lb.reference.
"""
from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

import pytest

from harness.node import datapath
from harness.bpf import Collection
from harness.lb import maglev
from harness.lb.reference import Packet, ReferenceLb
from harness.lb.desired import lb_state
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

from . import lbkit as K
from .support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

VIPS = ["198.19.0.1", "198.19.0.2", "198.19.0.3"]
PORTS = [80, 443, 53]
CLIENTS = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]

conditions = st.sampled_from([
    dict(ready=True), dict(ready=False, serving=True, terminating=True),
    dict(ready=False, serving=False, terminating=True), dict(ready=False, serving=False),
])


@st.composite
def services(draw, generation: int):
    docs = []
    for i, vip in enumerate(VIPS):
        if not draw(st.booleans()):
            continue
        ports = draw(st.lists(st.tuples(st.sampled_from(PORTS), st.sampled_from(["TCP", "UDP"])),
                              min_size=1, max_size=2, unique=True))
        n = draw(st.integers(0, 4))
        # Backend addresses unique per service, so each backend has one state.
        eps = [K.endpoint(f"198.18.{10 + i}.{20 + j}", **draw(conditions)) for j in range(n)]
        docs += K.service(f"s{i}", vip, [(f"p{k}", p, 8000 + k, proto)
                                         for k, (p, proto) in enumerate(ports)], eps,
                          maglev=draw(st.booleans()), affinity=draw(st.sampled_from([0, 600])))
    return K.scenario(*docs)


packets = st.lists(st.tuples(
    st.sampled_from(VIPS + ["198.19.0.9", "198.18.10.20"]),     # frontends, a non-VIP, a pod
    st.sampled_from(PORTS + [8080]),
    st.sampled_from(["TCP", "UDP", "ICMP"]),
    st.sampled_from(CLIENTS),
    st.integers(40000, 40003),                                   # few ports: flows repeat
    st.booleans(),                                               # SYN (else ACK)
), min_size=1, max_size=25)


def to_wire(daddr, dport, proto, saddr, sport, syn) -> tuple[bytes, Packet]:
    ip = IP(src=saddr, dst=daddr)
    if proto == "TCP":
        l4, num = TCP(sport=sport, dport=dport, flags="S" if syn else "A"), 6
    elif proto == "UDP":
        l4, num = UDP(sport=sport, dport=dport), 17
    else:
        l4, num = ICMP(type=8, id=sport, seq=1), 1
    raw = bytes(eth() / ip / l4 / b"data")
    pkt = Packet(ipaddress.ip_address(saddr), ipaddress.ip_address(daddr), num,
                 sport if num != 1 else 0, dport if num != 1 else 0,
                 syn=num == 6 and syn, echo_request=num == 1)
    return raw, pkt


def check(runner: Runner, model: ReferenceLb, raw: bytes, pkt: Packet) -> None:
    expected = model.decide(pkt)
    result = runner.run(raw)
    out = Ether(result.packet_out)
    where = f"{pkt} expected {expected.action}/{expected.drop_reason}"
    if expected.action == "pass":
        assert result.verdict == "TC_ACT_OK" and result.packet_out == raw, where
    elif expected.action == "drop":
        assert (result.verdict, result.drop_reason) == ("TC_ACT_SHOT", expected.drop_reason), \
            f"{where}, kernel {result.verdict}/{result.drop_reason}"
    elif expected.action == "reply":
        assert result.verdict == "TC_ACT_REDIRECT" and out[IP].src == str(pkt.daddr), where
    else:
        assert result.verdict == "TC_ACT_OK", f"{where}, kernel {result.verdict}/{result.drop_reason}"
        l4 = out[TCP] if pkt.proto == 6 else out[UDP]
        chosen = (ipaddress.ip_address(out[IP].dst), l4.dport)
        assert chosen in expected.backends, f"{where}: kernel chose {chosen}, allowed {expected.backends}"
        assert (out[IP].src, l4.sport) == (str(pkt.saddr), pkt.sport)
        model.observe(pkt, expected, chosen)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kernel_agrees_with_reference_model(data):
    first = data.draw(services(0), label="services")
    # Fresh maps for every example; only the program run is loaded (to_container would be
    # verified again, with the same rodata, for every example: most of an example's time).
    with Collection.load(str(object_path("lxc")), rodata=datapath.rodata_for("lxc"),
                         programs=["from_container"]) as coll:
        ctl = datapath.lb_control(coll)
        ctl.apply(lb_state(first))
        model = ReferenceLb(lb_state(first), maglev.table_size(coll),
                            maglev.flow_hash_seed(coll))
        runner = Runner(coll, "from_container")
        for spec in data.draw(packets, label="packets"):
            check(runner, model, *to_wire(*spec))
        # The services change under established flows.
        second = data.draw(services(1), label="changed services")
        ctl.apply(lb_state(second))
        model.update(lb_state(second))
        for spec in data.draw(packets, label="packets after the change"):
            check(runner, model, *to_wire(*spec))


# --- traffic policies, load-balancer IPs and source ranges, from pods and from outside ------

NODE = "cb-node0"
NODE0 = "198.19.128.1"
LB_IPS = ["203.0.113.90", "203.0.113.91"]
POLICY_VIPS = ["198.19.0.50", "198.19.0.51"]
PODS = ["198.18.0.2", "198.18.0.3"]                 # clients on cb-node0 (from_container)
WORLD = ["203.0.113.10", "203.0.113.200"]           # clients outside (from_netdev)
RANGES = ["203.0.113.0/28", "198.18.0.2/32", "198.18.0.0/24"]
NODE_PORTS = [31090, 31091]


# Mostly ready endpoints, so most packets meet a backend.
policy_conditions = st.one_of(st.just(dict(ready=True)), st.just(dict(ready=True)), conditions)


@st.composite
def policy_services(draw):
    docs = []
    present = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    for i, vip in enumerate(POLICY_VIPS):
        if not present[i]:
            continue
        eps = [K.endpoint(f"198.18.{node}.{30 + 4 * i + j}", f"cb-node{node}",
                          **draw(policy_conditions))
               for node in (0, 1) for j in range(draw(st.integers(0, 2)))]
        docs += K.service(f"p{i}", vip, [("http", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")],
                          eps, svc_type="LoadBalancer",
                          node_ports={"http": NODE_PORTS[i], "dns": NODE_PORTS[i]},
                          lb_ips=[LB_IPS[i]], local=draw(st.booleans()),
                          internal_local=draw(st.booleans()),
                          source_ranges=draw(st.lists(st.sampled_from(RANGES), max_size=2,
                                                      unique=True)),
                          maglev=draw(st.booleans()), affinity=draw(st.sampled_from([0, 600])))
    return K.scenario(*docs)


policy_packets = st.lists(st.tuples(
    st.sampled_from([(a, 80) for a in POLICY_VIPS + LB_IPS] + [(NODE0, p) for p in NODE_PORTS]),
    st.sampled_from(["TCP", "UDP"]),
    st.sampled_from(PODS + WORLD),
    st.integers(40000, 40002),
    st.booleans(),
), min_size=1, max_size=20)


def check_policy_packet(runners: dict, model: ReferenceLb, dst, proto, saddr, sport, syn):
    daddr, dport = dst
    if proto == "UDP":
        dport = 53 if dport == 80 else dport
    raw, pkt = to_wire(daddr, dport, proto, saddr, sport, syn)
    external = saddr in WORLD
    expected = model.decide(pkt, external=external)
    result = runners["from_netdev" if external else "from_container"].run(raw)
    where = f"{'outside' if external else 'pod'} {pkt} expected {expected.action}/" \
            f"{expected.drop_reason}"
    if expected.action == "pass":
        assert result.verdict == "TC_ACT_OK" and result.packet_out == raw, where
        return
    if expected.action == "drop":
        assert (result.verdict, result.drop_reason) == ("TC_ACT_SHOT", expected.drop_reason), \
            f"{where}, kernel {result.verdict}/{result.drop_reason}"
        return
    assert result.verdict == "TC_ACT_OK", f"{where}, kernel {result.verdict}/{result.drop_reason}"
    out = Ether(result.packet_out)
    l4 = out[TCP] if pkt.proto == 6 else out[UDP]
    chosen = (ipaddress.ip_address(out[IP].dst), l4.dport)
    assert chosen in expected.backends, f"{where}: kernel chose {chosen}, allowed {expected.backends}"
    local = chosen[0] in ipaddress.ip_network("198.18.0.0/24")
    if external and not local:
        # SNAT to the node: a new flow under ETP Local never meets a remote backend (the
        # model's choice), a flow established before the policy turned Local keeps it.
        assert out[IP].src == NODE0, where
    else:
        assert (out[IP].src, l4.sport) == (str(pkt.saddr), pkt.sport), where
    model.observe(pkt, expected, chosen, external=external)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_traffic_policies_and_source_ranges_agree_with_reference_model(data):
    """cb-node0's maps (lb_state(..., node="cb-node0")): pods through from_container,
    clients outside through from_netdev, each with its scope and the source ranges."""
    first = data.draw(policy_services(), label="services")
    # Fresh maps for every example; only the programs run are loaded.
    with Collection.load(str(object_path("lxc")), rodata=datapath.rodata_for("lxc", NODE),
                         programs=["from_container"]) as lxc, \
            Collection.load(str(object_path("netdev")), rodata=datapath.rodata_for("netdev", NODE),
                            programs=["from_netdev"]) as netdev:
        controls = [datapath.lb_control(lxc), datapath.lb_control(netdev)]
        state = lb_state(first, node=NODE)
        for ctl in controls:
            ctl.apply(state)
        model = ReferenceLb(state, maglev.table_size(lxc), maglev.flow_hash_seed(lxc))
        runners = {"from_container": Runner(lxc, "from_container"),
                   "from_netdev": Runner(netdev, "from_netdev")}
        for spec in data.draw(policy_packets, label="packets"):
            check_policy_packet(runners, model, *spec)
        second = lb_state(data.draw(policy_services(), label="changed services"), node=NODE)
        for ctl in controls:
            ctl.apply(second)
        model.update(second)
        for spec in data.draw(policy_packets, label="packets after the change"):
            check_policy_packet(runners, model, *spec)
