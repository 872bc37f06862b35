"""``chainbench up``/``down`` with the chosen service datapath.

bpf: build the topology (harness.topology) with ``chainbench-cni`` appended
to every node's conflist (it attaches from_container/to_container to each pod
veth as the pod is added), attach from_netdev to every node's uplink and
socket LB to its host cgroup, then sync every node's maps once all pods exist
(each node needs every pod's address).

iptables / nftables (the kube-proxy baselines): the same topology and primary
CNI, with the portmap plugin for hostPorts instead of our plugin, and
kube-proxy's rules (harness/kubeproxy) loaded in every node namespace from
the same Services and EndpointSlices.

down: the orderly topology teardown (CNI DEL), then every other leftover.
"""
from __future__ import annotations

import os
import shutil
import sys

from harness import datapath
from harness.bpf import attach_tc
from harness.node_sync import node_lock, sync_node
from harness.scenario import load_scenario
from harness.topology import build as topology
from harness.topology.state import TopologyState, scenario_with_real_addresses

PLUGIN = "chainbench-cni"


def plugin_dir() -> str:
    found = shutil.which(PLUGIN) or os.path.join(os.path.dirname(sys.executable), PLUGIN)
    if not os.path.exists(found):
        raise FileNotFoundError(f"{PLUGIN} is not installed (make test/bench installs it)")
    return os.path.dirname(os.path.abspath(found))


def up(scenario_path: str, nodes: int | None = None, routing: str = "native",
       datapath_kind: str = "bpf", progress=None) -> TopologyState:
    from harness.cni.runtime import discover_cni_path
    path = os.path.abspath(scenario_path)
    if datapath_kind == "bpf":
        # Each node is synced once all pods exist (below), not once per pod.
        chained = [{"type": PLUGIN, "scenario": path, "datapath": datapath_kind,
                    "deferSync": True}]
        state = topology.up(path, nodes, routing, datapath_kind, chained=chained,
                            cni_path=discover_cni_path() + [plugin_dir()], progress=progress)
    else:
        state = topology.up(path, nodes, routing, datapath_kind, portmap=True,
                            progress=progress)
    try:
        scenario = scenario_with_real_addresses(load_scenario(path), state)
        if datapath_kind == "bpf":
            attach_node_programs(state)
            attach_host_socket_lb(state)
            for node in state.nodes:
                with node_lock(node.name):
                    sync_node(node.name, scenario)
        else:
            apply_kube_proxy(state, scenario, datapath_kind)
    except BaseException:
        down()
        raise
    return state


def apply_kube_proxy(state: TopologyState, scenario, mode: str) -> dict[str, float]:
    """kube-proxy's rules for *scenario* in every node namespace; seconds per node."""
    from harness import addressing, netns
    from harness.kubeproxy import apply as kp
    from harness.lb.state import desired_state, node_addresses
    lb_state = desired_state(scenario, node_addresses(scenario))
    took = {}
    for node in state.nodes:
        # Host processes reach ClusterIPs through the OUTPUT chain, which DNATs
        # after the first route lookup: as a node's default route would, give
        # the service range a route (the DNAT re-routes to the backend).
        netns.run(node.netns, "ip", "route", "replace", str(addressing.SERVICE_CIDR_V4),
                  "dev", node.uplink)
        if mode == "iptables":
            took[node.name] = kp.apply_iptables(node.netns, lb_state)
        else:
            took[node.name] = kp.apply_nft(node.netns, lb_state)
    return took


def attach_node_programs(state: TopologyState) -> None:
    """from_netdev on every node's uplink, with the node's shared maps."""
    for node in state.nodes:
        with datapath.load("netdev", node.name, pinned=True) as coll:
            attach_tc(coll.programs["from_netdev"], node.uplink, "ingress", node.netns)


SOCK_PROGRAMS = ("sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername",
                 "sock6_connect", "sock6_sendmsg", "sock6_recvmsg", "sock6_getpeername")


def attach_host_socket_lb(state: TopologyState) -> None:
    """Socket LB for each node's host-network processes: the sock programs on the
    node's ``cb-<node>-host`` cgroup (host clients run in it), links pinned so
    they outlive this process (``chainbench down`` unpins them)."""
    from harness import bpffs, cgroups
    from harness.bpf import attach_cgroup
    from harness.connectivity import host_cgroup
    for node in state.nodes:
        path = host_cgroup(node.name)
        cgroups.create(os.path.basename(path))
        with datapath.load("sock", node.name, pinned=True) as coll:
            for name in SOCK_PROGRAMS:
                link = attach_cgroup(coll.programs[name], path)
                link.pin(bpffs.pin_path(node.name, "links", f"host-{name}"))
                link.detach()       # the pin keeps the attachment


def down() -> dict[str, list[str]]:
    return topology.down()
