"""``lb apply`` and ``policy apply``: a scenario programmed into one node's pinned maps
by hand (without ``up``), under the node's lock, adopting what the maps already hold
so only the differences are written (harness.node.sync programs a node of a running
topology the same way).  Each returns the summary line the CLI prints.
"""
from __future__ import annotations

from harness import validate
from harness.lb.state import desired_state
from harness.node import config as node_config
from harness.node import datapath
from harness.node.endpoints import EndpointRegistry, workloads
from harness.node.sync import node_lock
from harness.policy.program import PolicyControl
from harness.policy.resolve import resolve
from harness.scenario import Scenario


def lb_apply(node: str, text: str, origin: str) -> str:
    """Program *node*'s LB maps from the scenario *text* (its errors name *origin*) and
    keep the text, so ``services`` names the frontends by their Service."""
    scenario = validate.load_text(text, origin)    # a refused frontend: one line naming the file
    state = desired_state(scenario)
    with node_lock(node), datapath.load("lxc", node, pinned=True) as coll:
        control = datapath.lb_control(coll, node)
        restored = control.restore()
        stats = control.apply(state)
    node_config.save_lb_scenario(node, text)
    return (f"{node}: {len(state.frontends)} frontends from {scenario.source}"
            f"{f' ({restored} restored from the maps)' if restored else ''}; {stats}")


def policy_apply(node: str, scenario: Scenario, np_ipblock: str) -> str:
    """Resolve *scenario*'s policies for *node* and program its endpoints (each switches
    atomically); the endpoint and identity files change with the maps, as one change."""
    state = resolve(scenario, local_node=node, np_ipblock=np_ipblock, workloads=workloads())
    with node_lock(node):
        registry = EndpointRegistry(node)
        local = {p.ref for p in scenario.pods if p.node_name == node and not p.host_network}
        for ep in state.endpoints:
            if ep.pod in local:
                rec = registry.ensure(ep.pod)
                rec.identity = ep.identity
                pod = scenario.pod(ep.pod)
                rec.ipv4 = str(pod.ipv4) if pod.ipv4 else None
                rec.ipv6 = str(pod.ipv6) if pod.ipv6 else None
        for pod in [p for p, r in registry.records.items() if p not in local and not r.external]:
            registry.remove(pod)
        with datapath.load("lxc", node, pinned=True) as coll:
            control = PolicyControl(coll.maps, datapath.journal(node))
            control.restore(range(1, 4096))
            stats = control.apply(state, registry.ids(), files=registry.serialized(
                {i.id: ",".join(i.labels) for i in state.identities}))
    return (f"{node}: {len(registry.records)} endpoints, {len(state.identities)} identities, "
            f"{len(state.ipcache)} ipcache entries; {stats}")
