"""The running topology, as recorded in /run/chainbench/topology.json.

``up`` writes the file before it creates anything and rewrites it as pods
come up, so ``down`` can undo even a crashed ``up`` in order (CNI DEL first).
Other commands read it to find a pod's namespace, host-side veth and real
addresses: ``load_state()``, ``TopologyState.pod("ns/name")``.

Pod IPs come from the CNI's IPAM, which may differ from the scenario's
``status.podIP``; ``scenario_with_real_addresses`` gives the scenario as the
topology runs it, for the LB and policy control planes.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.paths import STATE_ROOT
from harness.scenario import Scenario

STATE_PATH = os.path.join(STATE_ROOT, "topology.json")
STATE_VERSION = 1


@dataclass
class NodeState:
    name: str
    index: int
    netns: str
    ipv4: str                          # underlay address (no prefix)
    ipv6: str | None
    pod_cidr_v4: str
    pod_cidr_v6: str | None
    uplink: str
    conflist: str                      # path of the conflist its pods were added with
    cni_cache: str                     # the runtime's result cache directory
    vxlan: str | None = None           # tunnel device, vxlan mode
    #: This node's datapath when the topology's is "mixed" (bpf, iptables, nftables, none)
    datapath: str | None = None


@dataclass
class PodState:
    namespace: str
    name: str
    node: str
    netns: str                         # the pod's namespace; the node's when host_network
    host_network: bool
    container_id: str | None = None
    ifname: str | None = None
    host_ifname: str | None = None     # host-side veth in the node namespace
    mac: str | None = None             # the pod interface's MAC
    ipv4: str | None = None
    ipv6: str | None = None
    requested_ips: list[str] = field(default_factory=list)
    status: str = "pending"            # pending -> adding -> ready
    #: [hostPort, containerPort, protocol] of the pod's hostPorts
    port_mappings: list[list] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class TopologyState:
    routing: str
    datapath: str
    ipv6: bool
    scenario: str
    cni_path: list[str]
    underlay_netns: str
    world: dict[str, Any]              # netns, ipv4, ipv6
    nodes: list[NodeState]
    pods: list[PodState]
    complete: bool = False
    version: int = STATE_VERSION
    #: kube-proxy settings `up` ran with: masquerade_all (bool), nodeport_addresses (CIDRs)
    kube_proxy: dict[str, Any] = field(default_factory=dict)

    def pod(self, ref: str) -> PodState:
        """The pod ``"ns/name"`` (``"name"``: namespace default); KeyError if absent."""
        key = ref if "/" in ref else f"default/{ref}"
        for p in self.pods:
            if p.ref == key:
                return p
        raise KeyError(f"pod {key} is not in the topology")

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"node {name} is not in the topology")

    def namespaces(self) -> list[str]:
        """Every namespace of the topology (pods first, the underlay last)."""
        pods = [p.netns for p in self.pods if not p.host_network]
        return pods + [n.netns for n in self.nodes] + [self.world["netns"], self.underlay_netns]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TopologyState:
        data = dict(data)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"topology state version {data.get('version')!r} is not {STATE_VERSION}")
        data["nodes"] = [NodeState(**n) for n in data["nodes"]]
        data["pods"] = [PodState(**p) for p in data["pods"]]
        return cls(**data)


def save_state(state: TopologyState, path: str = STATE_PATH) -> None:
    """Write *state* atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_dict(), f, indent=1)
    os.replace(tmp, path)


def load_state(path: str = STATE_PATH) -> TopologyState | None:
    """The recorded topology, or None when none is up."""
    try:
        with open(path) as f:
            return TopologyState.from_dict(json.load(f))
    except FileNotFoundError:
        return None


def scenario_with_real_addresses(scenario: Scenario, state: TopologyState) -> Scenario:
    """A copy of *scenario* with the topology's pod IPs, nodes and host IPs.

    Pods take the addresses IPAM gave them (hostNetwork pods their node's
    underlay addresses), keeping the scenario's primary family first.
    EndpointSlice endpoints with a targetRef to a topology pod take that pod's
    address of the slice's family and its node; other endpoints (no
    targetRef, or a family the topology lacks) stay as written.
    """
    by_ref = {p.ref: p for p in state.pods}
    nodes = {n.name: n for n in state.nodes}

    def addresses(p: PodState, v6_first: bool) -> tuple:
        ips = [ipaddress.ip_address(a) for a in (p.ipv4, p.ipv6) if a]
        return tuple(sorted(ips, key=lambda a: (a.version == 4) == v6_first))

    pods = []
    for pod in scenario.pods:
        ps = by_ref.get(pod.ref)
        if ps is None or not (ps.ipv4 or ps.ipv6):
            pods.append(pod)
            continue
        v6_first = bool(pod.pod_ips) and pod.pod_ips[0].version == 6
        node = nodes.get(ps.node)
        pods.append(dataclasses.replace(
            pod, pod_ips=addresses(ps, v6_first), node_name=ps.node,
            host_ip=ipaddress.ip_address(node.ipv4) if node else pod.host_ip))

    slices = []
    for eps in scenario.endpoint_slices:
        endpoints = []
        for ep in eps.endpoints:
            ps = by_ref.get(f"{ep.target_ref_namespace or eps.meta.namespace}/{ep.target_ref_name}") \
                if ep.target_ref_name else None
            addr = (ps.ipv4 if eps.address_type == "IPv4" else ps.ipv6) if ps else None
            if addr:
                ep = dataclasses.replace(ep, addresses=(ipaddress.ip_address(addr),), node_name=ps.node)
            endpoints.append(ep)
        slices.append(dataclasses.replace(eps, endpoints=tuple(endpoints)))
    return dataclasses.replace(scenario, pods=tuple(pods), endpoint_slices=tuple(slices))
