"""Reading the NodePort SNAT state of a loaded or pinned datapath (bpf_src/lib/snat.h).

``read_stats`` sums ``cb_snat_stats`` over CPUs, per family: ``allocated`` (new
mappings: a port given to a new flow), ``collisions`` (ports tried and found
held by a live mapping), ``reused`` (allocations that took over an expired
mapping) and ``exhausted`` (new flows dropped with DROP_NAT_NO_MAPPING, 167,
because no port of 32768-65535 was free or expired for that node address,
backend, backend port and protocol).  ``reverse_key4``/``lookup_reverse4``
name one mapping of ``cb_snat4_rev``.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.lb.model import PROTOCOLS
from harness.abi.structs import Ct4Tuple, SnatEntry, be16, be32

STATS_MAP = "cb_snat_stats"
_FAMILY_INDEX = {4: 0, 6: 1}


@dataclass(frozen=True)
class SnatStats:
    allocated: int = 0
    collisions: int = 0
    reused: int = 0
    exhausted: int = 0


def read_stats(maps) -> dict[int, SnatStats]:
    """{4: SnatStats, 6: SnatStats}, summed over CPUs."""
    out = {}
    for family, index in _FAMILY_INDEX.items():
        per_cpu = maps[STATS_MAP].lookup(index)
        out[family] = SnatStats(*(sum(getattr(v, f) for v in per_cpu)
                                  for f in ("allocated", "collisions", "reused", "exhausted")))
    return out


def reverse_key4(node: str, backend: str, backend_port: int, protocol: str,
                 port: int) -> Ct4Tuple:
    """The key of the reverse mapping of *port*: the reply backend -> node:port."""
    return Ct4Tuple(daddr=be32(node), saddr=be32(backend), dport=be16(port),
                    sport=be16(backend_port), nexthdr=PROTOCOLS[protocol])


def lookup_reverse4(maps, node: str, backend: str, backend_port: int, protocol: str,
                    port: int) -> SnatEntry | None:
    return maps["cb_snat4_rev"].get(reverse_key4(node, backend, backend_port, protocol, port))
