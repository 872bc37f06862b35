"""Which nodes a read command covers, and what each node was programmed from.

Read commands (``services``, ``ct list``, ``policy get``, ``snat stats``,
``endpoints``, ``status``) cover every node with pinned maps unless ``--node``
names one, as ``kubectl get -A`` covers every namespace.  ``pod_node`` finds the
node of a pod (``policy get NS/POD``) from the running topology or, without
one, from the endpoint registries of the pinned nodes.  ``scenario_for`` is the
scenario a node's maps were programmed from (the topology's, with the
addresses IPAM gave; or the file ``lb apply`` last programmed), so the maps'
frontends can be named by their Service.
"""
from __future__ import annotations

import functools

from harness.errors import InputError
from harness.lb.desired import LbStateError, lb_state, node_addresses
from harness.node import datapath
from harness.node.node import Node
from harness.node.endpoints import EndpointRegistry
from harness.scenario import ScenarioError, load_scenario
from harness.topology.state import load_state, scenario_with_real_addresses


def select(node: str | None) -> list[str]:
    """The nodes a read command covers: *node* (checked), else every pinned node."""
    if node is not None:
        return [datapath.resolve_node(node)]
    nodes = datapath.pinned_nodes()
    if not nodes:
        raise datapath.NodeNotFound("no datapath is pinned (run `chainbench lb apply` or "
                                    "`chainbench up`)")
    return nodes


def pod_ref(text: str) -> str:
    """``NS/POD``, or ``POD`` in namespace default."""
    return text if "/" in text else f"default/{text}"


class PodNotFound(InputError, LookupError):
    pass


def pod_node(ref: str) -> str:
    """The node whose endpoint registry holds pod *ref* (the topology's placement first)."""
    pinned = datapath.pinned_nodes()
    state = load_state()
    if state is not None:
        try:
            node = state.pod(ref).node
        except KeyError:
            node = None
        if node in pinned and ref in EndpointRegistry(node).records:
            return node
    holders = [n for n in pinned if ref in EndpointRegistry(n).records]
    if len(holders) == 1:
        return holders[0]
    if holders:
        raise PodNotFound(f"endpoint {ref} is on several nodes ({', '.join(holders)}): "
                          "name one with --node")
    known = sorted(p for n in pinned for p in EndpointRegistry(n).records)
    raise PodNotFound(f"no endpoint {ref} on any node (known: {', '.join(known) or 'none'})"
                      if pinned else "no datapath is pinned (run `chainbench up`)")


@functools.lru_cache(maxsize=None)
def scenario_for(node: str):
    """The scenario *node*'s maps were programmed from, or None when unknown (or
    no longer readable)."""
    state = load_state()
    try:
        if state is not None and any(n.name == node for n in state.nodes):
            return scenario_with_real_addresses(load_scenario(state.scenario), state)
        path = Node(node).settings.lb_scenario
        return load_scenario(path) if path else None
    except (OSError, ScenarioError):
        return None


def service_names(node: str) -> dict[tuple[str, int, str], tuple[str, dict[str, str]]]:
    """(frontend address, port, protocol) -> (the Service's ``namespace/name``, its labels)
    (HostPort: ``namespace/pod``, the pod's labels), from the scenario *node* was
    programmed from."""
    scenario = scenario_for(node)
    if scenario is None:
        return {}
    try:
        state = lb_state(scenario, node_addresses(scenario))
    except LbStateError:
        return {}
    labels = {o.ref: dict(o.meta.labels) for o in (*scenario.services, *scenario.pods)}
    return {(str(f.address), f.port, f.protocol): (f.service, labels.get(f.service, {}))
            for f in state.frontends}
