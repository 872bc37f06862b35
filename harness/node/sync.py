"""Bringing a node's pinned datapath maps in line with the cluster.

Every node holds the whole cluster's services (it load-balances at its pods'
veths) and the whole cluster's ipcache, and policy rules for its own
endpoints.  ``sync_node`` programs all three from the scenario, with the
topology's real pod addresses and the containers outside Kubernetes attached
on any node (endpoints.workloads: ``reserved:unmanaged`` in every ipcache),
adopting what the pinned maps already hold so only differences are written.
Callers serialise per node with the node's lock (``Node(name).lock()``).
"""
from __future__ import annotations

import contextlib

from harness.node.endpoints import READY, workloads
from harness.node.node import Node
from harness.lb.desired import lb_state, node_addresses
from harness.policy.control import PolicyControl
from harness.policy.desired import policy_state
from harness.scenario import Scenario


def node_lock(node: str) -> contextlib.AbstractContextManager:
    """*node*'s exclusive, re-entrant lock (``Node(node).lock()``)."""
    return Node(node).lock()


def sync_node(node: str, scenario: Scenario) -> str:
    """Program *node*'s LB and policy maps for *scenario* (real addresses); returns a summary."""
    home = Node(node)
    registry = home.endpoints
    with home.load("lxc") as coll:
        lb = home.lb_control(coll)
        lb.restore()
        lb_stats = lb.apply(lb_state(scenario, node_addresses(scenario), node))
        # The node's endpoints only (its pods, and any pod its registry holds): every
        # other node's rules would be resolved for nothing (policy_state's local_only).
        state = policy_state(scenario, local_node=node, np_ipblock=home.settings.np_ipblock,
                             workloads=workloads(), local_only=True, held=registry.records)
        for ep in state.endpoints:
            if ep.pod in registry.records:
                registry.fill(ep.pod, identity=ep.identity)
        policy = PolicyControl(coll.maps, home.journal)
        policy.restore(r.id for r in registry.records.values())
        policy_stats = policy.apply(state, {p: r.id for p, r in registry.records.items()
                                            if r.state == READY})
    registry.save()
    registry.save_identities({i.id: ",".join(i.labels) for i in state.identities})
    return f"{node}: LB {lb_stats}; policy {policy_stats}"
