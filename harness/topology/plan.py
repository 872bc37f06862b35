"""Planning a topology (pure): the namespaces, links, addresses and routes of N nodes.

Shape, for nodes i = 0..N-1 (every name below is a network namespace):

    cb-pod-<ns>-<name> --veth (ptp)-- cb-node<i> --eth0 / node<i>-- cb-underlay [br0]
                                                                      |-- world / eth0 -- cb-world

* ``cb-underlay`` holds the Linux bridge ``br0``: the underlay segment.  Each
  node's ``eth0`` (198.19.128.<i+1>/24, 2001:db8:3::<i+1>/64 when dual-stack)
  is a veth whose peer ``node<i>`` is a bridge port; so is the world's.
* ``native`` routing: each node routes every other node's pod CIDR via that
  node's underlay address (VPC/ENI-style routing: no tunnel, no masquerade).
* ``vxlan`` routing: each node has ``vxlan0`` (VNI 1, UDP port 8472 as Cilium,
  over eth0, no learning) with a fixed MAC 02:cb:00:00:<i/256>:<i%256> and the
  address 198.18.<i>.0/32 (the pod CIDR's network address, as flannel does).
  Node i reaches node j's pod CIDR ``via 198.18.<j>.0 dev vxlan0 onlink``
  (IPv6: via node j's vxlan0 link-local address), with a permanent neighbour
  entry giving j's vxlan0 MAC and a permanent FDB entry sending that MAC to
  j's underlay address: no ARP, no flooding, no learning.  Pod veths and
  vxlan0 get MTU 1450 (1500 minus the 50 bytes of VXLAN over IPv4).
* ``cb-world`` stands in for the internet: 203.0.113.10/24 (TEST-NET-3) and
  2001:db8:4::10/64 on a port of the same bridge.  Nodes route the world's
  prefix directly on eth0; the world routes each node's pod CIDR via that
  node (as a VPC route table would, so replies are symmetric in both modes)
  and 198.18.0.0/15 / 2001:db8::/32 via the first node as the catch-all
  (service VIPs).  Each Service's load-balancer IPs (status.loadBalancer.ingress)
  and external IPs get a host route via the node that would announce them, as a
  MetalLB L2/BGP speaker does with externalTrafficPolicy: Local: the node of the
  Service's first ready endpoint (by node name), else the first node.
* Pods: one namespace per pod, ``cb-pod-<namespace>-<name>``; names that
  collide or exceed 64 characters get a hash suffix.  hostNetwork pods get no
  namespace: they live in their node's.

Nodes come from the pods' ``spec.nodeName`` (``cb-node<i>``) or ``--nodes N``
(cb-node0..N-1); pods without a node are placed round-robin.  Pod IPs that
lie inside their node's pod CIDR are requested from IPAM (``runtimeConfig.ips``),
so a topology keeps the scenario's addresses when it can.
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from harness.errors import InputError
from harness import addressing
from harness.scenario import Pod, Scenario

ROUTING_MODES = ("native", "vxlan")
DATAPATHS = ("bpf", "iptables", "nftables", "mixed")   # mixed: per node (bench/macro)
Routing = Literal["native", "vxlan"]

UNDERLAY_NETNS = "cb-underlay"
UNDERLAY_BRIDGE = "br0"
WORLD_NETNS = "cb-world"
WORLD_PORT = "world"
NODE_UPLINK = "eth0"
POD_IFNAME = "eth0"
POD_NETNS_PREFIX = "cb-pod-"
#: ``ip netns`` takes names up to NAME_MAX; we keep them readable.
MAX_NETNS_NAME = 64

WORLD_IP4 = ipaddress.ip_interface("203.0.113.10/24")
WORLD_IP6 = ipaddress.ip_interface("2001:db8:4::10/64")
POD_SUPERNET_V4 = "198.18.0.0/15"
POD_SUPERNET_V6 = "2001:db8::/32"

UNDERLAY_MTU = 1500
VXLAN_DEV = "vxlan0"
VXLAN_VNI = 1
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50          # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
MAX_NODES = 254              # underlay addresses 198.19.128.1-.254


class PlanError(InputError, ValueError):
    """The scenario or the options do not make a topology (one line)."""


@dataclass(frozen=True)
class Route:
    dst: str
    via: str | None = None
    dev: str = NODE_UPLINK
    onlink: bool = False

    def args(self) -> list[str]:
        """``ip route add`` arguments."""
        out = ["route", "add", self.dst]
        if self.via:
            out += ["via", self.via]
        out += ["dev", self.dev]
        if self.onlink:
            out.append("onlink")
        return out


@dataclass(frozen=True)
class Neighbor:
    ip: str
    lladdr: str
    dev: str = VXLAN_DEV


@dataclass(frozen=True)
class FdbEntry:
    lladdr: str
    dst: str
    dev: str = VXLAN_DEV


@dataclass(frozen=True)
class VxlanPlan:
    local: str
    mac: str
    address: str                    # 198.18.<i>.0/32
    neighbors: tuple[Neighbor, ...]
    fdb: tuple[FdbEntry, ...]
    dev: str = VXLAN_DEV
    vni: int = VXLAN_VNI
    port: int = VXLAN_PORT
    mtu: int = UNDERLAY_MTU - VXLAN_OVERHEAD


@dataclass(frozen=True)
class NodePlan:
    name: str                       # also its namespace
    index: int
    ipv4: str                       # underlay address
    ipv6: str | None
    pod_cidr_v4: str
    pod_cidr_v6: str | None
    pod_mtu: int
    routes: tuple[Route, ...]
    vxlan: VxlanPlan | None
    uplink: str = NODE_UPLINK
    underlay_port: str = ""         # its peer's name in cb-underlay

    @property
    def netns(self) -> str:
        return self.name


@dataclass(frozen=True)
class PodPlan:
    namespace: str
    name: str
    node: str
    netns: str | None               # None: hostNetwork (lives in the node's namespace)
    container_id: str | None
    requested_ips: tuple[str, ...] = ()     # "addr/prefix", asked of IPAM
    ifname: str = POD_IFNAME
    #: hostPorts as CNI's portMappings capability describes them (portmap plugin)
    port_mappings: tuple[tuple[int, int, str], ...] = ()    # (hostPort, containerPort, protocol)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def host_network(self) -> bool:
        return self.netns is None


@dataclass(frozen=True)
class WorldPlan:
    ipv4: str
    ipv6: str | None
    routes: tuple[Route, ...]
    netns: str = WORLD_NETNS
    uplink: str = NODE_UPLINK
    underlay_port: str = WORLD_PORT


@dataclass(frozen=True)
class TopologyPlan:
    routing: Routing
    datapath: str
    ipv6: bool
    nodes: tuple[NodePlan, ...]
    pods: tuple[PodPlan, ...]
    world: WorldPlan
    scenario: str = ""
    underlay_netns: str = UNDERLAY_NETNS
    bridge: str = UNDERLAY_BRIDGE

    def namespaces(self) -> list[str]:
        """Every namespace the plan creates, in creation order."""
        return ([self.underlay_netns, self.world.netns] + [n.netns for n in self.nodes]
                + [p.netns for p in self.pods if p.netns])

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# --------------------------------------------------------------------- naming


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def pod_netns_names(refs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Namespace name for each (namespace, name): ``cb-pod-<ns>-<name>``, made unique.

    ``a-b/c`` and ``a/b-c`` would both give ``cb-pod-a-b-c``; such names, and
    names over MAX_NETNS_NAME, become a prefix plus an 8-hex hash of the ref.
    """
    base = {ref: f"{POD_NETNS_PREFIX}{ref[0]}-{ref[1]}" for ref in refs}
    counts = Counter(base.values())
    out = {}
    for ref, name in base.items():
        if counts[name] > 1 or len(name) > MAX_NETNS_NAME:
            name = f"{name[:MAX_NETNS_NAME - 9]}-{_hash(ref[0] + '/' + ref[1])}"
        out[ref] = name
    return out


def vxlan_mac(index: int) -> str:
    """Fixed, locally administered MAC of node *index*'s vxlan0."""
    return f"02:cb:00:00:{index >> 8:02x}:{index & 0xff:02x}"


def mac_link_local(mac: str) -> str:
    """The EUI-64 link-local address the kernel derives from *mac*."""
    b = [int(x, 16) for x in mac.split(":")]
    eui = [b[0] ^ 0x02, *b[1:3], 0xFF, 0xFE, *b[3:]]
    return str(ipaddress.IPv6Address(bytes([0xFE, 0x80] + [0] * 6 + eui)))


# ------------------------------------------------------------------- planning


def _node_indices(scenario: Scenario, nodes: int | None) -> list[int]:
    try:
        wanted = sorted({addressing.node_index(n) for n in scenario.nodes})
    except addressing.AddressPlanError as exc:
        raise PlanError(str(exc)) from None
    if nodes is None:
        indices = wanted or [0]
    else:
        if not 1 <= nodes <= MAX_NODES:
            raise PlanError(f"--nodes {nodes}: expected 1-{MAX_NODES}")
        indices = list(range(nodes))
        beyond = [i for i in wanted if i >= nodes]
        if beyond:
            raise PlanError(f"the scenario places pods on cb-node{beyond[0]}, but --nodes {nodes} "
                            f"makes cb-node0..cb-node{nodes - 1}")
    if indices[-1] >= MAX_NODES:
        raise PlanError(f"node cb-node{indices[-1]}: at most {MAX_NODES} nodes (cb-node0..)")
    return indices


def _requestable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, index: int, ipv6: bool) -> bool:
    if ip.version == 4:
        net = addressing.node_pod_cidr_v4(index)
        return ip in net and ip not in (net[0], net[1], net.broadcast_address)
    if not ipv6:
        return False
    net6 = addressing.node_pod_cidr_v6(index)
    return ip in net6 and ip not in (net6[0], net6[1])


def _node_plan(i: int, indices: list[int], routing: str, ipv6: bool) -> NodePlan:
    others = [j for j in indices if j != i]
    routes: list[Route] = [Route(str(addressing.WORLD_V4))]
    if ipv6:
        routes.append(Route(str(addressing.WORLD_V6)))
    vxlan = None
    if routing == "native":
        for j in others:
            routes.append(Route(str(addressing.node_pod_cidr_v4(j)), str(addressing.node_ip4(j))))
            if ipv6:
                routes.append(Route(str(addressing.node_pod_cidr_v6(j)), str(addressing.node_ip6(j))))
        pod_mtu = UNDERLAY_MTU
    else:
        neighbors, fdb = [], []
        for j in others:
            gw4 = str(addressing.node_pod_cidr_v4(j)[0])
            neighbors.append(Neighbor(gw4, vxlan_mac(j)))
            routes.append(Route(str(addressing.node_pod_cidr_v4(j)), gw4, VXLAN_DEV, onlink=True))
            if ipv6:
                gw6 = mac_link_local(vxlan_mac(j))
                neighbors.append(Neighbor(gw6, vxlan_mac(j)))
                routes.append(Route(str(addressing.node_pod_cidr_v6(j)), gw6, VXLAN_DEV))
            fdb.append(FdbEntry(vxlan_mac(j), str(addressing.node_ip4(j))))
        vxlan = VxlanPlan(local=str(addressing.node_ip4(i)), mac=vxlan_mac(i),
                          address=f"{addressing.node_pod_cidr_v4(i)[0]}/32",
                          neighbors=tuple(neighbors), fdb=tuple(fdb))
        pod_mtu = vxlan.mtu
    return NodePlan(
        name=f"cb-node{i}", index=i,
        ipv4=f"{addressing.node_ip4(i)}/{addressing.NODE_UNDERLAY_V4.prefixlen}",
        ipv6=f"{addressing.node_ip6(i)}/{addressing.NODE_UNDERLAY_V6.prefixlen}" if ipv6 else None,
        pod_cidr_v4=str(addressing.node_pod_cidr_v4(i)),
        pod_cidr_v6=str(addressing.node_pod_cidr_v6(i)) if ipv6 else None,
        pod_mtu=pod_mtu, routes=tuple(routes), vxlan=vxlan, underlay_port=f"node{i}")


def announced_routes(scenario: Scenario, indices: list[int], ipv6: bool) -> tuple[Route, ...]:
    """The world's host routes to the Services' load-balancer and external IPs (see the
    module doc: via the announcing node's underlay address)."""
    routes: dict[str, Route] = {}
    for svc in scenario.services:
        addrs = [*svc.load_balancer_ips, *svc.external_ips]
        if not addrs:
            continue
        ready = sorted({addressing.node_index(ep.node_name)
                        for sl in scenario.endpoint_slices_for(svc) for ep in sl.endpoints
                        if ep.ready and ep.node_name and ep.node_name.startswith("cb-node")
                        and addressing.node_index(ep.node_name) in indices})
        node = ready[0] if ready else indices[0]
        for addr in addrs:
            if addr.version == 6 and not ipv6:
                continue
            via = addressing.node_ip4(node) if addr.version == 4 else addressing.node_ip6(node)
            dst = f"{addr}/{addr.max_prefixlen}"
            routes.setdefault(dst, Route(dst, str(via), onlink=True))
    return tuple(routes.values())


def _world_plan(indices: list[int], ipv6: bool, announced: tuple[Route, ...] = ()) -> WorldPlan:
    first = indices[0]
    routes = [Route(str(addressing.NODE_UNDERLAY_V4))]
    routes += [Route(str(addressing.node_pod_cidr_v4(i)), str(addressing.node_ip4(i)), onlink=True)
               for i in indices]
    routes.append(Route(POD_SUPERNET_V4, str(addressing.node_ip4(first)), onlink=True))
    if ipv6:
        routes.append(Route(str(addressing.NODE_UNDERLAY_V6)))
        routes += [Route(str(addressing.node_pod_cidr_v6(i)), str(addressing.node_ip6(i)), onlink=True)
                   for i in indices]
        routes.append(Route(POD_SUPERNET_V6, str(addressing.node_ip6(first)), onlink=True))
    routes += announced
    return WorldPlan(ipv4=str(WORLD_IP4), ipv6=str(WORLD_IP6) if ipv6 else None, routes=tuple(routes))


def plan_topology(scenario: Scenario, nodes: int | None = None, routing: str = "native",
                  datapath: str = "bpf", ipv6: bool | None = None,
                  request_scenario_ips: bool = True) -> TopologyPlan:
    """The topology for *scenario*; ``ipv6=None`` means dual-stack iff a pod has an IPv6 address."""
    if routing not in ROUTING_MODES:
        raise PlanError(f"--routing {routing}: expected one of {', '.join(ROUTING_MODES)}")
    if datapath not in DATAPATHS:
        raise PlanError(f"--datapath {datapath}: expected one of {', '.join(DATAPATHS)}")
    indices = _node_indices(scenario, nodes)
    if ipv6 is None:
        ipv6 = any(p.ipv6 is not None for p in scenario.pods if not p.host_network)

    placed: list[tuple[Pod, int]] = []
    rr = 0
    for pod in scenario.pods:
        if pod.node_name:
            placed.append((pod, addressing.node_index(pod.node_name)))
        else:
            placed.append((pod, indices[rr % len(indices)]))
            rr += 1
    names = pod_netns_names([(p.meta.namespace, p.meta.name) for p, _ in placed if not p.host_network])
    ip_counts = Counter(ip for p, _ in placed if not p.host_network for ip in p.pod_ips)
    pods = []
    for pod, i in placed:
        ref = (pod.meta.namespace, pod.meta.name)
        if pod.host_network:
            pods.append(PodPlan(pod.meta.namespace, pod.meta.name, f"cb-node{i}", None, None))
            continue
        requested: tuple[str, ...] = ()
        if request_scenario_ips:
            requested = tuple(
                f"{ip}/{(addressing.node_pod_cidr_v4(i) if ip.version == 4 else addressing.node_pod_cidr_v6(i)).prefixlen}"
                for ip in pod.pod_ips if ip_counts[ip] == 1 and _requestable(ip, i, ipv6))
        mappings = tuple((cp.host_port, cp.container_port, cp.protocol.lower())
                         for cp in pod.container_ports if cp.host_port)
        pods.append(PodPlan(pod.meta.namespace, pod.meta.name, f"cb-node{i}", names[ref],
                            f"{pod.meta.namespace}_{pod.meta.name}", requested,
                            port_mappings=mappings))
    return TopologyPlan(routing=routing, datapath=datapath, ipv6=ipv6,
                        nodes=tuple(_node_plan(i, indices, routing, ipv6) for i in indices),
                        pods=tuple(pods),
                        world=_world_plan(indices, ipv6, announced_routes(scenario, indices, ipv6)),
                        scenario=scenario.source)
