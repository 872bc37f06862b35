"""Differential test: the kernel's policy verdicts against the reference evaluator.

Hypothesis draws pods with random labels in two namespaces and random
CiliumNetworkPolicies and NetworkPolicies (the strategies of
test_policy_resolve); the scenario is resolved and programmed into a real
lxc datapath for one endpoint, and every query (direction, remote address,
protocol, port) is sent as the first packet of a new connection through
to_container (ingress) or from_container (egress).  The kernel's verdict
must equal harness.policy.reference.verdict, which evaluates the Kubernetes
objects directly.
"""
from __future__ import annotations

import ipaddress
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.sctp import SCTP

import pytest

from harness.node import datapath
from harness.abi import drop_reasons
from harness.bpf import Collection
from harness.policy.control import PolicyControl, endpoint_ids
from harness.policy.reference import verdict
from harness.policy.desired import policy_state
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

from .support import object_path
from .test_policy_resolve import NODE_IPS, REMOTES_WORLD, scenarios

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

EXPECT = {"allow": "allow", "deny-default": drop_reasons.CODES["DROP_POLICY"],
          "deny-rule": drop_reasons.CODES["DROP_POLICY_DENY"]}
_sports = itertools.count(20000)


def packet(local: str, remote: str, ingress: bool, proto: int, port: int) -> bytes | None:
    v6 = ipaddress.ip_address(remote).version == 6
    if v6 != (ipaddress.ip_address(local).version == 6):
        return None
    src, dst = (remote, local) if ingress else (local, remote)
    sport = 20000 + next(_sports) % 40000
    l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    if proto == 6:
        l4 = TCP(sport=sport, dport=port, flags="S")
    elif proto == 17:
        l4 = UDP(sport=sport, dport=port)
    elif proto == 132:
        l4 = SCTP(sport=sport, dport=port)
    elif proto == 1 and not v6 and port in (0, 8):
        l4 = ICMP(type=port, id=sport)
    elif proto == 58 and v6 and port in (128, 129):
        l4 = (ICMPv6EchoRequest if port == 128 else ICMPv6EchoReply)(id=sport)
    else:
        return None          # not a packet that can carry this query
    return bytes(eth() / l3 / l4 / b"payload")


def targeted(state, ref: str, pod_ips: list[str]) -> list[tuple]:
    """Queries aimed at the endpoint's own rules (random queries rarely hit a
    deny rule's exact peer and port): for each rule, a remote the ipcache
    gives that rule's identity, at both ends of its port range."""
    try:
        ep = state.endpoint(ref)
    except KeyError:
        return []
    by_identity: dict[int, list[str]] = {}
    for entry in state.ipcache:
        host = entry.prefix.network_address if entry.prefix.num_addresses == 1 else \
            entry.prefix.network_address + 1
        by_identity.setdefault(entry.identity, []).append(str(host))
    out = []
    for ingress, rules in ((True, ep.ingress), (False, ep.egress)):
        for rule in rules[:12]:
            remotes = pod_ips if rule.identity == 0 else by_identity.get(rule.identity, [])
            for remote in remotes[:2]:
                proto = rule.proto or 6
                for port in {rule.ports.lo, rule.ports.hi} if rule.proto else {80}:
                    out.append((ingress, remote, proto, port))
    return out


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.data())
def test_kernel_policy_agrees_with_reference(drawn, data):
    scenario, refs, local_node = drawn
    ref = data.draw(st.sampled_from(refs), label="endpoint")
    pod = scenario.pod(ref)
    state = policy_state(scenario, local_node=local_node)
    ids = endpoint_ids(refs)
    rodata = {**datapath.rodata_for("lxc"),
              **datapath.endpoint_rodata(ids[ref], str(pod.ipv4) if pod.ipv4 else None,
                                         str(pod.ipv6) if pod.ipv6 else None)}
    pod_ips = [str(ip) for p in scenario.pods if not p.host_network for ip in p.pod_ips]
    with Collection.load(str(object_path("lxc")), rodata=rodata) as coll:
        PolicyControl(coll.maps).apply(state, ids)
        runners = {True: Runner(coll, "to_container"), False: Runner(coll, "from_container")}
        queries = data.draw(st.lists(st.tuples(
            st.booleans(),
            st.one_of(st.sampled_from(pod_ips + NODE_IPS), st.sampled_from(REMOTES_WORLD)),
            st.sampled_from([6, 17, 132, 1, 58]),
            st.sampled_from([0, 8, 53, 80, 128, 443, 1000, 1027, 8080]),
        ), min_size=1, max_size=25), label="queries")
        for ingress, remote, proto, port in targeted(state, ref, pod_ips) + queries:
            for local in (str(ip) for ip in pod.pod_ips):
                raw = packet(local, remote, ingress, proto, port)
                if raw is None or remote == local:
                    continue
                want = EXPECT[verdict(scenario, ref, "ingress" if ingress else "egress", remote,
                                      proto, port, local_node=local_node)]
                result = runners[ingress].run(raw)
                got = "allow" if result.verdict == "TC_ACT_OK" else result.drop_reason
                assert got == want, (ref, "ingress" if ingress else "egress", remote, proto,
                                     port, result.verdict)
