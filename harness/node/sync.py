"""Bringing a node's pinned datapath maps in line with the cluster.

Every node holds the whole cluster's services (it load-balances at its pods'
veths) and the whole cluster's ipcache, and policy rules for its own
endpoints.  ``sync_node`` programs all three from the scenario, with the
topology's real pod addresses and the containers outside Kubernetes attached
on any node (endpoints.workloads: ``reserved:unmanaged`` in every ipcache),
adopting what the pinned maps already hold so only differences are written.
Callers serialise per node with ``node_lock``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from harness.host.locks import directory_lock
from harness.node import config as node_config
from harness.node import datapath
from harness.node.endpoints import READY, WAITING_FOR_IDENTITY, EndpointRegistry, workloads
from harness.paths import STATE_ROOT
from harness.lb.state import desired_state, node_addresses
from harness.policy.program import PolicyControl
from harness.policy.resolve import resolve
from harness.scenario import Scenario


@contextlib.contextmanager
def node_lock(node: str) -> Iterator[None]:
    """An exclusive lock on a node's datapath state (CNI ADDs may run concurrently).
    Re-entrant within a process: writing the maps (harness.journal) takes it
    again under callers that already hold it."""
    with directory_lock(os.path.join(STATE_ROOT, node)):
        yield


def sync_node(node: str, scenario: Scenario) -> str:
    """Program *node*'s LB and policy maps for *scenario* (real addresses); returns a summary."""
    registry = EndpointRegistry(node)
    with datapath.load("lxc", node, pinned=True) as coll:
        lb = datapath.lb_control(coll, node)
        lb.restore()
        lb_stats = lb.apply(desired_state(scenario, node_addresses(scenario)))
        state = resolve(scenario, local_node=node, np_ipblock=node_config.np_ipblock(node),
                        workloads=workloads())
        for ep in state.endpoints:
            rec = registry.records.get(ep.pod)
            if rec is not None:
                rec.identity = ep.identity
                if rec.state == WAITING_FOR_IDENTITY and ep.identity:
                    rec.state = READY           # programs attached, identity and policy set
        policy = PolicyControl(coll.maps, datapath.journal(node))
        policy.restore(r.id for r in registry.records.values())
        policy_stats = policy.apply(state, {p: r.id for p, r in registry.records.items()
                                            if r.state == READY})
    registry.save()
    registry.save_identities({i.id: ",".join(i.labels) for i in state.identities})
    return f"{node}: LB {lb_stats}; policy {policy_stats}"
