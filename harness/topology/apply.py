"""``lb apply`` and ``policy apply``: a scenario programmed into one node's pinned maps
by hand (without ``up``), under the node's lock, adopting what the maps already hold
so only the differences are written (harness.node.sync programs a node of a running
topology the same way).  Each returns the summary line the CLI prints.
"""
from __future__ import annotations

from harness import validate
from harness.lb.desired import lb_state
from harness.node.endpoints import workloads
from harness.node.node import Node
from harness.policy.control import PolicyControl
from harness.policy.desired import policy_state
from harness.scenario import Scenario


def lb_apply(node: str, text: str, origin: str) -> str:
    """Program *node*'s LB maps from the scenario *text* (its errors name *origin*) and
    keep the text, so ``services`` names the frontends by their Service."""
    scenario = validate.load_text(text, origin)    # a refused frontend: one line naming the file
    state = lb_state(scenario, node=node)           # the node's view: traffic policies Local
    home = Node(node)
    with home.lock(), home.load("lxc") as coll:
        control = home.lb_control(coll)
        restored = control.restore()
        stats = control.apply(state)
    home.settings.save_lb_scenario(text)
    return (f"{node}: {len(state.frontends)} frontends from {scenario.source}"
            f"{f' ({restored} restored from the maps)' if restored else ''}; {stats}")


def policy_apply(node: str, scenario: Scenario, np_ipblock: str) -> str:
    """Resolve *scenario*'s policies for *node* and program its endpoints (each switches
    atomically); the endpoint and identity files change with the maps, as one change."""
    # Only this node's endpoints get rules (the ones it programs): at 16,000 identities the
    # whole cluster's would be millions of rules, resolved for nothing.
    state = policy_state(scenario, local_node=node, np_ipblock=np_ipblock, workloads=workloads(),
                         local_only=True)
    home = Node(node)
    with home.lock():
        registry = home.endpoints
        local = {p.ref for p in scenario.pods if p.node_name == node and not p.host_network}
        for ep in state.endpoints:
            if ep.pod in local:
                pod = scenario.pod(ep.pod)
                registry.fill(ep.pod, identity=ep.identity,
                              ipv4=str(pod.ipv4) if pod.ipv4 else None,
                              ipv6=str(pod.ipv6) if pod.ipv6 else None)
        for pod in [p for p, r in registry.records.items() if p not in local and not r.external]:
            registry.remove(pod)
        with home.load("lxc") as coll:
            control = PolicyControl(coll.maps, home.journal)
            control.restore(range(1, 4096))
            stats = control.apply(state, registry.ids(), files=registry.serialized(
                {i.id: ",".join(i.labels) for i in state.identities}))
    return (f"{node}: {len(registry.records)} endpoints, {len(state.identities)} identities, "
            f"{len(state.ipcache)} ipcache entries; {stats}")
