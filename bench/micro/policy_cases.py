"""Micro-benchmark cases of L3/L4 policy, at a given number of identities x rules.

Endpoint 1 (identity 100000, pod 198.18.0.2) has, per direction, one allow
rule (TCP 8080) for each of N remote identities, whose pods fill the ipcache
(one /32 each); the measured peer is the last one.  The cases of a scale
share one set of maps, programmed once.

  policy-new          to_container, a new connection from the peer: ipcache
                      lookup, policy lookups, conntrack create (conntrack
                      lifetimes set to expire at once, so every run is new)
  policy-established  from_container, a packet of an established, allowed
                      connection to the peer (conntrack hit; the verdict is
                      cached at the current policy revision)
  policy-deny         to_container, a new connection from the peer to a port
                      no rule allows (TCP 9090): ipcache lookup, conntrack miss,
                      policy lookups that find nothing, drop with DROP_POLICY
                      (133), counted in cb_metrics; nothing is created, so
                      every run is the same first packet
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP

from bench.micro.lb_cases import EXPIRED
from bench.micro.case import Case, CaseCheckFailed, Outcome
from harness.node import datapath
from harness.abi import drop_reasons
from harness.bpf import Collection
from harness.policy.model import EndpointPolicy, IpcacheEntry, PolicyState, PortRange, Rule
from harness.policy.control import PolicyControl
from harness.testrun.packets import eth

EP_ID, EP_IDENTITY = 1, 100000
POD = ipaddress.IPv4Address("198.18.0.2")
FIRST_PEER_IDENTITY = 1000
ALLOWED_PORT, DENIED_PORT = 8080, 9090


def _peer(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.18.16.0")) + i)


def state(identities: int) -> PolicyState:
    ipc = [IpcacheEntry(ipaddress.ip_network(f"{POD}/32"), EP_IDENTITY)]
    rules = []
    for i in range(identities):
        ipc.append(IpcacheEntry(ipaddress.ip_network(f"{_peer(i)}/32"), FIRST_PEER_IDENTITY + i))
        rules.append(Rule(False, FIRST_PEER_IDENTITY + i, 6, PortRange(ALLOWED_PORT, ALLOWED_PORT)))
    ep = EndpointPolicy("bench/pod", EP_IDENTITY, True, True, tuple(rules), tuple(rules))
    return PolicyState((), tuple(ipc), (ep,))


def _program(identities: int):
    def setup(coll: Collection) -> None:
        PolicyControl(coll.maps).apply(state(identities), {"bench/pod": EP_ID})
    return setup


def _expect_passed(packet: bytes):
    def check(out: Outcome) -> None:
        if out.verdict != "TC_ACT_OK" or out.drop_reason is not None:
            raise CaseCheckFailed(f"the allowed packet got {out.verdict} "
                                  f"(drop reason {out.drop_reason})")
        if out.packet != packet:
            raise CaseCheckFailed("the allowed packet was changed")
    return check


def _expect_denied(reason: str = "DROP_POLICY"):
    code = drop_reasons.CODES[reason]

    def check(out: Outcome) -> None:
        if out.verdict != "TC_ACT_SHOT" or out.drop_reason != code:
            raise CaseCheckFailed(f"expected TC_ACT_SHOT with {reason} ({code}), got "
                                  f"{out.verdict} (drop reason {out.drop_reason})")
    return check


def packets(identities: int) -> dict[str, bytes]:

    peer = str(_peer(identities - 1))
    return {
        "policy-new": bytes(eth() / IP(src=peer, dst=str(POD))
                            / TCP(sport=40000, dport=ALLOWED_PORT, flags="S")),
        "policy-established": bytes(eth() / IP(src=str(POD), dst=peer)
                                    / TCP(sport=40001, dport=ALLOWED_PORT, flags="A")),
        "policy-deny": bytes(eth() / IP(src=peer, dst=str(POD))
                             / TCP(sport=40002, dport=DENIED_PORT, flags="S")),
    }


def max_entries(identities: int) -> dict[str, int]:
    return {"cb_policy": 1024, "cb_policy_exact": max(1024, 4 * identities),
            "cb_ipcache": 1024, "cb_ipcache_hosts": max(1024, 2 * identities)}


def cases(identities: int, floor: str = "empty:empty_tc") -> list[Case]:
    """The policy cases at *identities* identities; they share one set of maps."""
    if identities < 1:
        raise ValueError("identities must be >= 1")
    pkts = packets(identities)
    base = {**datapath.service_rodata(), **datapath.endpoint_rodata(EP_ID, str(POD))}
    expired = {**base, "ct_lifetime_tcp": EXPIRED, "ct_lifetime_nontcp": EXPIRED,
               "ct_lifetime_syn": EXPIRED, "ct_lifetime_close": EXPIRED}
    tag = f"{identities}id"
    common = dict(floor=floor, setup=_program(identities), max_entries=max_entries(identities),
                  scale={"identities": identities}, maps=f"policy@{identities}")

    def case(short: str, prog: str, rodata: dict, group: str, expect) -> Case:
        return Case(f"lxc:{prog}/{short}@{tag}", "lxc", prog, pkts[short], rodata=rodata,
                    group=f"{group}@{identities}", expect=expect, variant=short, **common)
    return [
        case("policy-new", "to_container", expired, "policy-new",
             _expect_passed(pkts["policy-new"])),
        case("policy-established", "from_container", base, "policy",
             _expect_passed(pkts["policy-established"])),
        case("policy-deny", "to_container", base, "policy", _expect_denied()),
    ]
