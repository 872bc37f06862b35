"""Micro-benchmark cases of the service load balancer, at a given service count.

Each scale loads its own lxc collection, sized for N services x 10 backends,
programmed with a synthetic LB state (built directly, not parsed from YAML:
the micro suite times the datapath, not the loader):

- service i: ClusterIP 198.19.0.0/17 host (i mod 32766) + 1, port 80 + i div 32766,
  TCP, 10 backends drawn round-robin from a pool of 480 pods on port 8080
  (shared backends, as in bench/scenarios/services.yaml.j2);
- the measured service is the last one programmed.

Cases per scale:
  established  a TCP ACK of an established flow to the ClusterIP (CT hit, DNAT)
  new-flow     the same packet with conntrack lifetimes set to 2^32-1 (every
               entry is already expired when read), so every run takes the
               first-packet path: CT misses, backend selection, two CT creates,
               DNAT.  Same instructions as a real first packet.
  non-service  a packet of an established pod-to-pod flow (service miss, CT hit)
"""
from __future__ import annotations

import ipaddress

from bench.micro import Case
from harness import addressing, datapath
from harness.bpf import Collection
from harness.lb.state import ACTIVE, Backend, Frontend, LbState

BACKENDS_PER_SERVICE = 10
POD_POOL = 480
EXPIRED = 0xFFFFFFFF     # now + 2^32 - 1 wraps to now - 1: every lookup finds it expired
CLIENT = "198.18.0.2"


def _vip(i: int) -> tuple[ipaddress.IPv4Address, int]:
    hosts = addressing.SERVICE_CIDR_V4.num_addresses - 2
    return addressing.SERVICE_CIDR_V4[1 + i % hosts], 80 + i // hosts


def _pod(k: int) -> ipaddress.IPv4Address:
    node, host = k % 2, 10 + k // 2
    return addressing.node_pod_cidr_v4(node)[host]


def synthetic_state(services: int, backends: int = BACKENDS_PER_SERVICE) -> LbState:
    frontends = []
    for i in range(services):
        vip, port = _vip(i)
        bes = tuple(Backend(_pod((i * backends + j) % POD_POOL), 8080, "TCP", ACTIVE)
                    for j in range(backends))
        frontends.append(Frontend(f"bench/svc-{i}", "http", "ClusterIP", vip, port, "TCP", bes))
    return LbState(tuple(frontends))


def packets(services: int) -> dict[str, bytes]:
    from scapy.layers.inet import IP, TCP

    from harness.testing import eth
    vip, port = _vip(services - 1)
    return {
        "established": bytes(eth() / IP(src=CLIENT, dst=str(vip)) / TCP(sport=40000, dport=port,
                                                                        flags="A")),
        "non-service": bytes(eth() / IP(src=CLIENT, dst=str(_pod(3))) / TCP(sport=40001, dport=8080,
                                                                            flags="A")),
    }


class CaseCheckFailed(AssertionError):
    """A benchmark case's packet did not take the path the case is named after."""


def _expect_translated(vip: ipaddress.IPv4Address):
    def check(out: bytes) -> None:
        dst = ipaddress.IPv4Address(out[30:34])
        if dst == vip or dst not in ipaddress.ip_network("198.18.0.0/15"):
            raise CaseCheckFailed(f"expected a DNAT of {vip} to a backend, got {dst}")
    return check


def _expect_unchanged(packet: bytes):
    def check(out: bytes) -> None:
        if out != packet:
            raise CaseCheckFailed("a non-service packet was rewritten")
    return check


def _program(services: int):
    def setup(coll: Collection) -> None:
        datapath.lb_control(coll).apply(synthetic_state(services))
    return setup


def cases(services: int, floor: str = "empty:empty_tc") -> list[Case]:
    """The LB cases at *services* services (each a Case with its own collection)."""
    pkts = packets(services)
    sizes = datapath.scaled_max_entries(services, BACKENDS_PER_SERVICE)
    base = {**datapath.service_rodata()}
    expired = {**base, "ct_lifetime_tcp": EXPIRED, "ct_lifetime_nontcp": EXPIRED,
               "ct_lifetime_syn": EXPIRED, "ct_lifetime_close": EXPIRED}
    tag = f"{services}svc"
    vip = _vip(services - 1)[0]
    return [
        Case(f"lxc:from_container/established@{tag}", "lxc", "from_container",
             pkts["established"], floor=floor, rodata=base, setup=_program(services),
             max_entries=sizes, group=f"lb@{services}", expect=_expect_translated(vip)),
        Case(f"lxc:from_container/new-flow@{tag}", "lxc", "from_container", pkts["established"],
             floor=floor, rodata=expired, setup=_program(services), max_entries=sizes,
             group=f"lb-new@{services}", expect=_expect_translated(vip)),
        Case(f"lxc:from_container/non-service@{tag}", "lxc", "from_container",
             pkts["non-service"], floor=floor, rodata=base, max_entries=sizes,
             group=f"lb@{services}", expect=_expect_unchanged(pkts["non-service"])),
    ]
