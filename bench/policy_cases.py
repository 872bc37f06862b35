"""Micro-benchmark cases of L3/L4 policy, at a given number of identities x rules.

Endpoint 1 (identity 100000, pod 198.18.0.2) has, per direction, one allow
rule (TCP 8080) for each of N remote identities, whose pods fill the ipcache
(one /32 each); the measured peer is the last one.

  policy-new          to_container, a new connection from the peer: ipcache
                      lookup, policy lookups, conntrack create (conntrack
                      lifetimes set to expire at once, so every run is new)
  policy-established  from_container, a packet of an established, allowed
                      connection to the peer (conntrack hit; the verdict is
                      cached at the current policy revision)
"""
from __future__ import annotations

import ipaddress

from bench.lb_cases import EXPIRED, CaseCheckFailed
from bench.micro import Case
from harness import datapath
from harness.bpf import Collection
from harness.policy.model import EndpointPolicy, IpcacheEntry, PolicyState, PortRange, Rule
from harness.policy.program import PolicyControl

EP_ID, EP_IDENTITY = 1, 100000
POD = ipaddress.IPv4Address("198.18.0.2")
FIRST_PEER_IDENTITY = 1000


def _peer(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.16.0")) + i)


def state(identities: int) -> PolicyState:
    ipc = [IpcacheEntry(ipaddress.ip_network(f"{POD}/32"), EP_IDENTITY)]
    rules = []
    for i in range(identities):
        ipc.append(IpcacheEntry(ipaddress.ip_network(f"{_peer(i)}/32"), FIRST_PEER_IDENTITY + i))
        rules.append(Rule(False, FIRST_PEER_IDENTITY + i, 6, PortRange(8080, 8080)))
    ep = EndpointPolicy("bench/pod", EP_IDENTITY, True, True, tuple(rules), tuple(rules))
    return PolicyState((), tuple(ipc), (ep,))


def _program(identities: int):
    def setup(coll: Collection) -> None:
        PolicyControl(coll.maps).apply(state(identities), {"bench/pod": EP_ID})
    return setup


def _expect_passed(packet: bytes):
    def check(out: bytes) -> None:
        if out != packet:
            raise CaseCheckFailed("the allowed packet was changed")
    return check


def cases(identities: int, floor: str = "empty:empty_tc") -> list[Case]:
    from scapy.layers.inet import IP, TCP

    from harness.testing import eth
    peer = str(_peer(identities - 1))
    inbound = bytes(eth() / IP(src=peer, dst=str(POD)) / TCP(sport=40000, dport=8080, flags="S"))
    outbound = bytes(eth() / IP(src=str(POD), dst=peer) / TCP(sport=40001, dport=8080, flags="A"))
    base = {**datapath.service_rodata(), "endpoint_id": EP_ID}
    expired = {**base, "ct_lifetime_tcp": EXPIRED, "ct_lifetime_nontcp": EXPIRED,
               "ct_lifetime_syn": EXPIRED, "ct_lifetime_close": EXPIRED}
    sizes = {"cb_policy": 1024, "cb_policy_exact": max(1024, 4 * identities),
             "cb_ipcache": 1024, "cb_ipcache_hosts": max(1024, 2 * identities)}
    tag = f"{identities}id"
    return [
        Case(f"lxc:to_container/policy-new@{tag}", "lxc", "to_container", inbound, floor=floor,
             rodata=expired, setup=_program(identities), max_entries=sizes,
             group=f"policy-new@{identities}", expect=_expect_passed(inbound)),
        Case(f"lxc:from_container/policy-established@{tag}", "lxc", "from_container", outbound,
             floor=floor, rodata=base, setup=_program(identities), max_entries=sizes,
             group=f"policy@{identities}", expect=_expect_passed(outbound)),
    ]
