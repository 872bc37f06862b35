"""The datapath's drop counters per node, endpoint, direction and reason.

Every drop goes through lib/drop.h, which counts it in the node's pinned
``cb_metrics`` map under (endpoint id, reason, direction), as Cilium's
metrics map counts (reason, direction); endpoint id 0 is a drop outside an
endpoint's programs (the node's device).  This module reads those counters
(a dump of the pinned map, summed over CPUs) and tells what grew between two
readings, for the connectivity checks' proof of why a request failed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from harness.abi import drop_reasons
from harness.abi.structs import MetricsKey, TrafficCounter
from harness.bpf import Map
from harness.node.node import Node

METRICS_MAP = "cb_metrics"
DIRECTIONS = {1: "ingress", 2: "egress"}        # lib/common.h CB_DIR_*
DIRECTION_CODES = {name: code for code, name in DIRECTIONS.items()}


class CountersUnavailable(LookupError):
    """The node has no pinned datapath counters (not a bpf node, or not up)."""


@dataclass(frozen=True)
class Key:
    node: str
    endpoint_id: int
    direction: str          # "ingress" / "egress"
    reason: int             # enum drop_reason


def read(node: str) -> dict[Key, int]:
    """Dropped packets counted so far on *node*, by key (forwarded traffic left out)."""
    path = os.path.join(Node(node).pin_dir, METRICS_MAP)
    if not os.path.exists(path):
        raise CountersUnavailable(f"node {node} has no pinned {METRICS_MAP} (not a bpf datapath)")
    counters = Map.from_pin(path, MetricsKey, TrafficCounter)
    try:
        out: dict[Key, int] = {}
        for key, per_cpu in counters.items():
            if key.reason:
                k = Key(node, key.endpoint_id, DIRECTIONS.get(key.dir, str(key.dir)), key.reason)
                out[k] = out.get(k, 0) + sum(v.packets for v in per_cpu)
        return out
    finally:
        counters.close()


def grown(before: dict[Key, int], after: dict[Key, int]) -> dict[Key, int]:
    """Keys whose count grew from *before* to *after*, with the growth."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}


def describe(reason: int) -> str:
    """'policy drop (133)' for the policy reasons, else 'Invalid packet (134)'."""
    name = drop_reasons.NAMES.get(reason, "")
    if name in ("DROP_POLICY", "DROP_POLICY_DENY"):
        kind = "policy drop" if name == "DROP_POLICY" else "policy deny-rule drop"
        return f"{kind} ({reason})"
    return f"{drop_reasons.describe(reason)} ({reason})"
