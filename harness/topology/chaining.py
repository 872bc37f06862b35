"""``chainbench up``/``down`` with the chosen service datapath.

bpf: build the topology (harness.topology) with ``chainbench-cni`` appended
to every node's conflist (it attaches from_container/to_container to each pod
veth as the pod is added), attach from_netdev to every node's uplink and
socket LB to its host cgroup, then sync every node's maps once all pods exist
(each node needs every pod's address), then start each BPF node's flow observer
(harness.observe.supervise; ``down`` ends it with the other recorded processes).
Every node, whatever its datapath, gets kube-proxy's service health server
(harness/topology/servers/healthcheck.py) when a Service has a healthCheckNodePort:
Cilium's agent answers those ports too.

iptables / nftables (the kube-proxy baselines): the same topology and primary
CNI, with the portmap plugin for hostPorts instead of our plugin, and
kube-proxy's rules (harness/kubeproxy) loaded in every node namespace from
the same Services and EndpointSlices, rendered with each node's ProxierConfig
(its name and addresses, and the ``up`` options masqueradeAll and
--nodeport-addresses, recorded in the topology state); the renderers run one
proxier per IP family of the rules.

mixed (bench/macro/suite.py): each node its own datapath (bpf, iptables, nftables or
none), so several datapaths are up at once in one topology.

``chainbench down`` is harness.topology.build.down (the orderly teardown, CNI DEL,
then every other leftover);
remove_chained_topology(state): one topology and what its nodes own, nothing else.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
from typing import Collection

from harness import addressing, validate
from harness.bpf import attach_cgroup, attach_tc
from harness.host import bpffs, cgroups, netns
from harness.host.cgroups import host_cgroup
from harness.host.signals import shielded
from harness.kubeproxy import apply as kp
from harness.kubeproxy.model import ProxierConfig
from harness.lb.desired import lb_state, node_addresses
from harness.node import datapath
from harness.node.node import Node
from harness.node.record import SKIP_ANNOTATION
from harness.node.sync import sync_node
from harness.paths import STATE_ROOT
from harness.scenario import source
from harness.scenario.renumber import Renumbered, renumber_text
from harness.topology import build as topology
from harness.topology.cni_runtime import discover_cni_path
from harness.topology.plan import plan_topology
from harness.topology.servers import healthcheck
from harness.topology.state import TopologyState, save_state, scenario_with_real_addresses

PLUGIN = "chainbench-cni"


def plugin_dir() -> str:
    found = shutil.which(PLUGIN) or os.path.join(os.path.dirname(sys.executable), PLUGIN)
    if not os.path.exists(found):
        raise FileNotFoundError(f"{PLUGIN} is not installed (make test/bench installs it)")
    return os.path.dirname(os.path.abspath(found))


def up(scenario_path: str, nodes: int | None = None, routing: str = "native",
       datapath_kind: str = "bpf", progress=None, *,
       node_datapaths: dict[str, str] | None = None,
       lb_map_max: int | None = None, np_ipblock: str | None = None,
       hubble_buffer_size: int | None = None, monitor_aggregation: str | None = None,
       events_ring_size: int | None = None,
       node_monitor_aggregation: dict[str, str] | None = None,
       observers: Collection[str] | None = None,
       kube_proxy_masquerade_all: bool = False,
       nodeport_addresses: Collection[str] = ()) -> TopologyState:
    """Build the topology with *datapath_kind* on every node, or, with
    *node_datapaths* ({node: bpf|iptables|nftables|none}; the topology's datapath is
    then "mixed"), each node its own (none: the primary CNI only, no service
    handling: a node that only hosts backends).  *lb_map_max* sizes the LB maps of
    BPF nodes (Cilium's --bpf-lb-map-max); *np_ipblock* what a NetworkPolicy ipBlock
    selects on them (harness.policy.desired; default "pods"); *hubble_buffer_size* the
    flows each BPF node's observer keeps (Hubble's 4095 by default); *monitor_aggregation*
    and *events_ring_size* their flow events (harness.node.config; default medium, 4 MiB);
    *node_monitor_aggregation* ({node: level}) sets the level of the BPF nodes it names
    instead (bench/macro: events off on one node, medium on another, in one topology).
    *observers* names the BPF nodes whose flow observer is started (default: every one).
    *kube_proxy_masquerade_all* and *nodeport_addresses* (CIDRs, or "primary") are kube-proxy's
    --masquerade-all and --nodeport-addresses for the iptables / nftables nodes
    (harness.kubeproxy.model.ProxierConfig); the health servers listen on the
    node addresses inside *nodeport_addresses* too.  (BPF nodes serve NodePorts on
    their underlay addresses only, as Cilium on its devices' addresses; Cilium has no
    masqueradeAll.)"""
    try:
        nodeport_given = tuple(c if c == "primary" else str(ipaddress.ip_network(c, strict=False))
                               for c in nodeport_addresses)
    except ValueError as exc:
        raise ValueError(f"--nodeport-addresses: {exc}") from None
    path = os.path.abspath(scenario_path)
    scenario = validate.load(path)       # the validation `scenario check` applies
    plan = plan_topology(scenario, nodes, routing, "mixed" if node_datapaths else datapath_kind)
    kinds = {n.name: (node_datapaths or {}).get(n.name, datapath_kind if not node_datapaths
                                                 else "none") for n in plan.nodes}
    bad = {k for k in kinds.values() if k not in NODE_DATAPATHS}
    if bad:
        raise ValueError(f"node datapath {sorted(bad)[0]!r}: expected one of "
                         f"{', '.join(NODE_DATAPATHS)}")
    if node_datapaths and set(node_datapaths) - set(kinds):
        raise ValueError(f"node {sorted(set(node_datapaths) - set(kinds))[0]} is not in the "
                         "topology")
    bpf_names = {name for name, kind in kinds.items() if kind == "bpf"}
    for what, names in (("monitor aggregation", node_monitor_aggregation or {}),
                        ("observer", observers or ())):
        if set(names) - bpf_names:
            raise ValueError(f"{what} for node {sorted(set(names) - bpf_names)[0]}: not a BPF "
                             "node of the topology")
    levels = {name: (node_monitor_aggregation or {}).get(name, monitor_aggregation)
              for name in bpf_names}
    # Each BPF node is synced once all pods exist (below), not once per pod.
    chained = ({"type": PLUGIN, "datapath": "bpf", "deferSync": True},)
    per_node = {name: topology.NodePlugins(kind, portmap=kind in ("iptables", "nftables"),
                                           chained=chained if kind == "bpf" else ())
                for name, kind in kinds.items()}
    cni_path = discover_cni_path() + ([plugin_dir()] if "bpf" in kinds.values() else [])
    # What the chained plugin reads on each ADD instead of the scenario (harness.node.record).
    attached = {p.ref: p.meta.annotations.get(SKIP_ANNOTATION) == "skip"
                for p in scenario.pods if not p.host_network}
    try:
        for name, kind in kinds.items():
            if kind != "bpf":
                continue
            node = Node(name)
            if lb_map_max is not None:
                node.settings.save_lb_map_max(lb_map_max)
            if np_ipblock is not None:
                node.settings.save_np_ipblock(np_ipblock)
            if hubble_buffer_size is not None:
                node.settings.save_hubble_buffer_size(hubble_buffer_size)
            node.settings.save_events(levels[name], events_ring_size)
            node.record.write_pods(attached)
            # The node's lxc object, loaded once: each ADD only attaches its programs.
            node.ensure_lxc_programs()
        state = topology.build(plan, cni_path=cni_path, progress=progress, per_node=per_node)
        state.kube_proxy = {"masquerade_all": kube_proxy_masquerade_all,
                            "nodeport_addresses": list(nodeport_given)}
        save_state(state)
    except BaseException:
        # build undid the topology (CNI DEL, namespaces); what the chained plugin made
        # for the nodes (pins, endpoint state) and the node settings go too.
        with shielded():
            _remove_node_objects(list(kinds))
        raise
    try:
        scenario = scenario_with_real_addresses(scenario, state)
        bpf_nodes = [n for n in state.nodes if kinds[n.name] == "bpf"]
        attach_node_programs(state, bpf_nodes)
        attach_host_socket_lb(state, bpf_nodes)
        for node in bpf_nodes:
            home = Node(node.name)
            with home.lock():
                sync_node(node.name, scenario)
                home.record.write_cluster(scenario)     # later ADDs and DELs sync from it
        for mode in ("iptables", "nftables"):
            apply_kube_proxy(state, scenario, mode,
                             [n for n in state.nodes if kinds[n.name] == mode])
        start_observers([n for n in bpf_nodes if observers is None or n.name in observers])
        start_health_servers(state, scenario)
    except BaseException:
        with shielded():
            topology.down()
        raise
    return state


NODE_DATAPATHS = ("bpf", "iptables", "nftables", "none")


def start_observers(nodes: list) -> None:
    """Each node's flow observer, under its supervisor, serving before this returns."""
    from harness.observe import supervise   # lazy: only up starts observers
    for node in nodes:
        supervise.start(node.name, node.netns)


def start_health_servers(state: TopologyState, scenario) -> None:
    """kube-proxy's service health server in every node (when a Service has a
    healthCheckNodePort), on the node's addresses inside --nodeport-addresses."""
    if not any(s.health_check_node_port for s in scenario.services):
        return
    for node in state.nodes:
        mode = node.datapath or state.datapath
        cidrs = [ipaddress.ip_network(c) for c in nodeport_cidrs(state, node, mode)]
        addrs = [a for a in (node.ipv4, node.ipv6) if a and any(
            ipaddress.ip_address(a) in c for c in cidrs)] if cidrs else []
        healthcheck.start(node.name, node.netns, addrs)


def nodeport_cidrs(state: TopologyState, node, mode: str = "iptables") -> tuple[str, ...]:
    """--nodeport-addresses for *node*: the recorded CIDRs, "primary" standing for the
    node's own addresses (kube-proxy's keyword); unset, nftables mode means "primary"
    (cmd/kube-proxy/app/server_linux.go, platformApplyDefaults), iptables every
    address (())."""
    given = tuple((state.kube_proxy or {}).get("nodeport_addresses") or ())
    if mode == "nftables" and not given:
        given = ("primary",)
    ips = [ip for ip in (node.ipv4, node.ipv6 if state.ipv6 else None) if ip]
    out: list[str] = []
    for item in given:
        if item == "primary":
            out += [f"{ip}/{ipaddress.ip_address(ip).max_prefixlen}" for ip in ips]
        else:
            out.append(item)
    return tuple(dict.fromkeys(out))


def proxier_config(state: TopologyState, node, mode: str = "iptables") -> ProxierConfig:
    """*node*'s kube-proxy settings: its name, its addresses (one per family of the
    topology; the renderer keeps its family's), masqueradeAll and --nodeport-addresses
    (nodeport_cidrs) as ``up`` recorded them."""
    settings = state.kube_proxy or {}
    ips = tuple(ip for ip in (node.ipv4, node.ipv6 if state.ipv6 else None) if ip)
    cidrs = nodeport_cidrs(state, node, mode)
    return ProxierConfig(family=4, hostname=node.name, node_ips=ips,
                         masquerade_all=bool(settings.get("masquerade_all")),
                         nodeport_addresses=cidrs)


def apply_kube_proxy(state: TopologyState, scenario, mode: str,
                     nodes: list | None = None) -> dict[str, float]:
    """kube-proxy's rules for *scenario* in each of *nodes* (default: every node),
    each node with its own ProxierConfig (proxier_config; the renderer syncs one
    proxier per family the rules have); seconds per node."""
    frontends = lb_state(scenario, node_addresses(scenario))
    apply = kp.apply_iptables if mode == "iptables" else kp.apply_nft
    took = {}
    for node in state.nodes if nodes is None else nodes:
        # Host processes reach ClusterIPs through the OUTPUT chain, which DNATs
        # after the first route lookup: as a node's default route would, give
        # the service range a route (the DNAT re-routes to the backend).
        netns.run(node.netns, "ip", "route", "replace", str(addressing.SERVICE_CIDR_V4),
                  "dev", node.uplink)
        if state.ipv6 and node.ipv6:
            netns.run(node.netns, "ip", "-6", "route", "replace",
                      str(addressing.SERVICE_CIDR_V6), "dev", node.uplink)
        took[node.name] = apply(node.netns, frontends, config=proxier_config(state, node, mode))
    return took


def attach_node_programs(state: TopologyState, nodes: list | None = None) -> None:
    """from_netdev (tc ingress) on each node's uplink (default: every node), with its
    shared maps; and to_netdev (tc egress) where the node's monitor aggregation lets it
    report anything (none, lowest, low: without conntrack it is silent above)."""
    for node in state.nodes if nodes is None else nodes:
        with datapath.load("netdev", node.name, pinned=True) as coll:
            attach_tc(coll.programs["from_netdev"], node.uplink, "ingress", node.netns)
            if Node(node.name).settings.monitor_aggregation in TO_NETWORK_LEVELS:
                attach_tc(coll.programs["to_netdev"], node.uplink, "egress", node.netns)


#: Aggregation levels at which to_netdev's TO_NETWORK trace events are sent.
TO_NETWORK_LEVELS = ("none", "lowest", "low")

SOCK_PROGRAMS = ("sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername",
                 "sock6_connect", "sock6_sendmsg", "sock6_recvmsg", "sock6_getpeername")


def attach_host_socket_lb(state: TopologyState, nodes: list | None = None) -> None:
    """Socket LB for each node's host-network processes: the sock programs on the
    node's ``cb-<node>-host`` cgroup (host clients run in it), links pinned so
    they outlive this process (``chainbench down`` unpins them)."""
    for node in state.nodes if nodes is None else nodes:
        path = host_cgroup(node.name)
        cgroups.create(os.path.basename(path))
        with datapath.load("sock", node.name, pinned=True) as coll:
            for name in SOCK_PROGRAMS:
                link = attach_cgroup(coll.programs[name], path)
                link.pin(Node(node.name).pin_path("links", f"host-{name}"))
                link.detach()       # the pin keeps the attachment


#: Where ``up --renumber`` saves the mapping it applied (removed by ``down``).
RENUMBER_MAP = os.path.join(STATE_ROOT, "renumber.json")


def renumber_scenario(spec: str, params: dict | None = None) -> Renumbered:
    """The scenario *spec* names (a real cluster's dump), mapped into the address plan
    (harness.scenario.renumber), validated as ``up`` validates it."""
    text, name = source.read(spec, dict(params or {}))
    renumbered = renumber_text(text, name)
    validate.load_text(renumbered.text, name)
    return renumbered


def up_scenario(spec: str, params: dict | None = None, nodes: int | None = None,
                routing: str = "native", datapath_kind: str = "bpf", progress=None, *,
                lb_map_max: int | None = None, np_ipblock: str | None = None,
                hubble_buffer_size: int | None = None, monitor_aggregation: str | None = None,
                events_ring_size: int | None = None, kube_proxy_masquerade_all: bool = False,
                nodeport_addresses: Collection[str] = (),
                renumbered: Renumbered | None = None) -> TopologyState:
    """``up`` from the scenario *spec* names (a file, ``-`` for standard input, or a
    ``.j2`` template rendered with *params*), validated first (errors name *spec* as
    given).  The CNI plugin and later commands read the scenario from a file: standard
    input and templates are kept under /run/chainbench (removed again if ``up`` fails,
    else by ``down``).  A scenario outside the address plan is refused in one line
    naming ``--renumber``; *renumbered* (renumber_scenario(spec)) is what ``up
    --renumber`` builds instead: its text kept under /run/chainbench, its mapping in
    RENUMBER_MAP."""
    kept: list[str] = []
    if renumbered is not None:
        os.makedirs(STATE_ROOT, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="scenario-renumbered-", suffix=".yaml", dir=STATE_ROOT)
        kept.append(path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(renumbered.text)
        with open(RENUMBER_MAP, "w", encoding="utf-8") as f:
            json.dump({**renumbered.to_json(), "scenario": path}, f, indent=1)
        kept.append(RENUMBER_MAP)
    else:
        text, name = source.read(spec, dict(params or {}))
        validate.load_text(text, name)      # outside the plan: one line naming --renumber
        path = source.materialize(spec, text, STATE_ROOT)
        if path != os.path.abspath(spec):
            kept.append(path)
    try:
        return up(path, nodes, routing, datapath_kind, progress, lb_map_max=lb_map_max,
                  np_ipblock=np_ipblock, hubble_buffer_size=hubble_buffer_size,
                  monitor_aggregation=monitor_aggregation, events_ring_size=events_ring_size,
                  kube_proxy_masquerade_all=kube_proxy_masquerade_all,
                  nodeport_addresses=nodeport_addresses)
    except BaseException:
        for p in kept:
            if os.path.exists(p):
                os.unlink(p)
        raise


def remove_chained_topology(state: TopologyState) -> dict[str, list[str]]:
    """Remove one topology and what its nodes own (pins, node state, host cgroups),
    leaving any other project object alone (``down`` removes everything)."""
    summary = topology.remove_topology(state)         # CNI DEL first: it needs the pins
    _remove_node_objects([node.name for node in state.nodes])
    return summary


def _remove_node_objects(nodes: list[str]) -> None:
    """The flow observers, pins, node state and host cgroups of *nodes*."""
    from harness.observe import supervise   # lazy: the observer's modules
    for node in nodes:
        supervise.stop(node)
        healthcheck.stop(node)
        shutil.rmtree(Node(node).pin_path(), ignore_errors=True)
        shutil.rmtree(Node(node).state_dir, ignore_errors=True)
        if os.path.isdir(host_cgroup(node)):
            cgroups.remove(host_cgroup(node))
    bpffs.prune()
    if os.path.isdir(STATE_ROOT) and not os.listdir(STATE_ROOT):
        os.rmdir(STATE_ROOT)
