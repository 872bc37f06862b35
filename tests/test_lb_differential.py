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

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

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
    with Collection.load(str(object_path("lxc")), rodata=datapath.rodata_for("lxc")) as coll:
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
