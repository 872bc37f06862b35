"""A real cluster's objects mapped into the project's address plan (``chainbench up
--renumber``): nodes, pod, service and node addresses renumbered consistently in
every object that names them, and the mapping that was applied.

``fits_plan(scenario)`` says whether a scenario (loaded with any addresses) needs it.
``renumber_text(text, source)`` validates the dump as every command does (any valid
address), then rewrites its documents:

* nodes: every node a Pod or an EndpointSlice endpoint names, in natural order
  (``node2`` before ``node10``), becomes ``cb-node<i>``, i from 0;
* pod IPs (not hostNetwork): per node, pods in (namespace, name) order get
  198.18.<i>.10, .11, ... (IPv6: 2001:db8:1:<i>::a, ...), everywhere they appear:
  ``status.podIP(s)``, EndpointSlice addresses;
* node addresses (a Node's InternalIP / ExternalIP, pods' ``hostIP(s)``, hostNetwork
  pods' IPs): the node's underlay address, 198.19.128.<i + 1> (2001:db8:3::<i + 1>);
* ClusterIPs: per family, Services in (namespace, name) order get the service CIDR's
  addresses from the first (198.19.0.1, 2001:db8:2::1);
* externalIPs and load-balancer ingress IPs: the external VIP range
  (198.19.160.1..., 2001:db8:5::1...);
* EndpointSlice addresses that are neither a pod's nor a node's (endpoints outside
  the cluster): the world range from 203.0.113.100 (2001:db8:4::100);
* policy CIDRs (NetworkPolicy ipBlock, CiliumNetworkPolicy to/fromCIDR and CIDRSet,
  their ``except``) are rewritten only when they are exactly one renumbered pod or node
  address (/32, /128); any other prefix (10.244.0.0/16, 0.0.0.0/0) is kept as written,
  so a rule naming a foreign range no longer matches the renumbered pods.

Objects of kinds chainbench does not use are left out of the result (they were
skipped anyway), as are ``metadata.managedFields`` and the
``kubectl.kubernetes.io/last-applied-configuration`` annotation (they quote the old
addresses).  The result is plain multi-document YAML that loads in the plan.
"""
from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable
from typing import Any

import yaml

from harness import addressing
from harness.scenario.errors import ScenarioError
from harness.scenario.fields import checked_address
from harness.scenario.load import load_scenario_text
from harness.scenario.model import IPAddress, Scenario
from harness.scenario.read import NotJson, json_documents, yaml_documents

__all__ = ["EXTERNAL_VIP_CIDR_V6", "Renumbered", "fits_plan", "renumber_text"]

EXTERNAL_VIP_CIDR_V6 = addressing.EXTERNAL_VIP_CIDR_V6
#: First host of a node's pod CIDR given out (the topology keeps .0, .1 and the broadcast).
FIRST_POD_HOST = 10
_USED = {("v1", "Pod"), ("v1", "Service"), ("discovery.k8s.io/v1", "EndpointSlice"),
         ("networking.k8s.io/v1", "NetworkPolicy"), ("cilium.io/v2", "CiliumNetworkPolicy"),
         ("v1", "Namespace")}
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _in_plan(addr: IPAddress) -> bool:
    return not isinstance(checked_address(str(addr)), str)     # cached: a million endpoints


def _in_service_cidr(addr: IPAddress) -> bool:
    return addr in (addressing.SERVICE_CIDR_V4 if addr.version == 4 else addressing.SERVICE_CIDR_V6)


def fits_plan(scenario: Scenario) -> bool:
    """Whether every node name, address and ClusterIP of *scenario* lies inside the
    project's address plan (what ``up`` needs without ``--renumber``)."""
    for node in scenario.nodes:
        try:
            addressing.node_ip4(addressing.node_index(node))
        except addressing.AddressPlanError:
            return False
    for pod in scenario.pods:
        if not all(_in_plan(a) for a in (*pod.pod_ips, *([pod.host_ip] if pod.host_ip else []))):
            return False
    for svc in scenario.services:
        if not all(_in_service_cidr(a) for a in svc.cluster_ips):
            return False
        if not all(_in_plan(a) for a in (*svc.external_ips, *svc.load_balancer_ips)):
            return False
    return all(_in_plan(a) for s in scenario.endpoint_slices for ep in s.endpoints
               for a in ep.addresses)


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class Renumbered:
    """The rewritten scenario text and the mapping applied (``mapping``: by category,
    old -> new, every value a string)."""

    def __init__(self, text: str, mapping: dict[str, dict[str, str]], source: str,
                 dropped: tuple[tuple[str, int], ...]) -> None:
        self.text = text
        self.mapping = mapping
        self.source = source
        self.dropped = dropped

    def to_json(self) -> dict:
        return {"source": self.source, **self.mapping,
                "left_out": {kind: n for kind, n in self.dropped}}

    def lines(self) -> list[str]:
        """The mapping as ``kind: old -> new`` lines, category by category."""
        out = []
        for category, pairs in self.mapping.items():
            for old, new in pairs.items():
                out.append(f"{category.replace('_', ' ')}: {old} -> {new}")
        return out


class _Allocator:
    """Addresses of one range handed out in order, the same one for the same old address."""

    def __init__(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network, first: int,
                 what: str, last: int | None = None) -> None:
        self.net, self.next, self.what = net, first, what
        self.last = net.num_addresses - 2 if last is None else last

    def take(self) -> IPAddress:
        if self.next > self.last:
            raise ScenarioError(f"--renumber: more {self.what} than {self.net} holds")
        addr = self.net[self.next]
        self.next += 1
        return addr


class _Mapper:
    def __init__(self, scenario: Scenario) -> None:
        self.nodes: dict[str, str] = {}
        self.node_addr: dict[IPAddress, IPAddress] = {}
        self.pod_addr: dict[IPAddress, IPAddress] = {}
        self.cluster_ip: dict[IPAddress, IPAddress] = {}
        self.external: dict[IPAddress, IPAddress] = {}
        self.other: dict[IPAddress, IPAddress] = {}
        self.cidrs: dict[str, str] = {}
        self._plan(scenario)

    def _plan(self, s: Scenario) -> None:
        names = {p.node_name for p in s.pods if p.node_name}
        names |= {ep.node_name for sl in s.endpoint_slices for ep in sl.endpoints if ep.node_name}
        ordered = sorted(names, key=_natural)
        if len(ordered) > addressing.NODE_UNDERLAY_V4.num_addresses - 2:
            raise ScenarioError(f"--renumber: {len(ordered)} nodes, the plan holds at most 254",
                                source=s.source)
        self.nodes = {name: f"cb-node{i}" for i, name in enumerate(ordered)}
        # pods without a node but with addresses go to the first node's CIDR
        first = ordered[0] if ordered else None
        for name, i in ((n, int(self.nodes[n][7:])) for n in ordered):
            self._node_address(s.node_ips.get(name, ()), i)
        for pod in s.pods:
            if pod.node_name:
                i = int(self.nodes[pod.node_name][7:])
                addrs = ([pod.host_ip] if pod.host_ip else []) + (list(pod.pod_ips) if pod.host_network else [])
                self._node_address(addrs, i)
        per_node: dict[str | None, list] = {}
        for pod in sorted(s.pods, key=lambda p: (p.meta.namespace, p.meta.name)):
            if not pod.host_network and pod.pod_ips:
                per_node.setdefault(pod.node_name or first, []).append(pod)
        for node, pods in per_node.items():
            i = int(self.nodes[node][7:]) if node else 0
            v4 = _Allocator(addressing.node_pod_cidr_v4(i), FIRST_POD_HOST, f"pods on {node}", 254)
            v6 = _Allocator(addressing.node_pod_cidr_v6(i), FIRST_POD_HOST, f"pods on {node}")
            for pod in pods:
                for addr in pod.pod_ips:
                    if addr not in self.pod_addr:
                        self.pod_addr[addr] = (v4 if addr.version == 4 else v6).take()
        svc4 = _Allocator(addressing.SERVICE_CIDR_V4, 1, "IPv4 ClusterIPs")
        svc6 = _Allocator(addressing.SERVICE_CIDR_V6, 1, "IPv6 ClusterIPs")
        ext4 = _Allocator(addressing.EXTERNAL_VIP_CIDR_V4, 1, "IPv4 external and load-balancer IPs")
        ext6 = _Allocator(EXTERNAL_VIP_CIDR_V6, 1, "IPv6 external and load-balancer IPs")
        for svc in sorted(s.services, key=lambda v: (v.meta.namespace, v.meta.name)):
            for addr in svc.cluster_ips:
                if addr not in self.cluster_ip:
                    self.cluster_ip[addr] = (svc4 if addr.version == 4 else svc6).take()
            for addr in (*svc.external_ips, *svc.load_balancer_ips):
                if addr not in self.external:
                    self.external[addr] = (ext4 if addr.version == 4 else ext6).take()
        oth4 = _Allocator(addressing.WORLD_V4, 100, "endpoints outside the cluster", 254)
        oth6 = _Allocator(addressing.WORLD_V6, 0x100, "endpoints outside the cluster")
        for pod in s.pods:
            if pod.host_network and not pod.node_name:
                for addr in pod.pod_ips:
                    if addr not in self.node_addr and addr not in self.other:
                        self.other[addr] = (oth4 if addr.version == 4 else oth6).take()
        for sl in sorted(s.endpoint_slices, key=lambda e: (e.meta.namespace, e.meta.name)):
            for ep in sl.endpoints:
                for addr in ep.addresses:
                    if addr not in self.pod_addr and addr not in self.node_addr \
                            and addr not in self.other:
                        self.other[addr] = (oth4 if addr.version == 4 else oth6).take()

    def _node_address(self, addrs: Iterable[IPAddress], i: int) -> None:
        for addr in addrs:
            new = addressing.node_ip4(i) if addr.version == 4 else addressing.node_ip6(i)
            old = self.node_addr.setdefault(addr, new)
            if old != new:
                raise ScenarioError(f"--renumber: address {addr} belongs to two nodes")

    # -- rewriting

    def endpoint_address(self, value: str) -> str:
        addr = ipaddress.ip_address(value)
        return str(self.pod_addr.get(addr) or self.node_addr.get(addr) or self.other[addr])

    def pod_address(self, value: str, host_network: bool) -> str:
        addr = ipaddress.ip_address(value)
        new = (self.node_addr if host_network else self.pod_addr).get(addr)
        if new is None:     # a hostNetwork pod on no node: its address is no node's
            new = self.other.get(addr)
        if new is None:
            raise ScenarioError(f"--renumber: {addr} of a pod on no node: set its spec.nodeName")
        return str(new)

    def cidr(self, value: str) -> str:
        net = ipaddress.ip_network(value, strict=False)
        if net.prefixlen != net.max_prefixlen:
            return value
        addr = net.network_address
        new = self.pod_addr.get(addr) or self.node_addr.get(addr)
        if new is None:
            return value
        out = f"{new}/{net.prefixlen}"
        self.cidrs[value] = out
        return out

    def mapping(self) -> dict[str, dict[str, str]]:
        def strs(d: dict) -> dict[str, str]:
            return {str(k): str(v) for k, v in d.items()}
        return {"nodes": dict(self.nodes), "node_addresses": strs(self.node_addr),
                "pod_ips": strs(self.pod_addr), "cluster_ips": strs(self.cluster_ip),
                "external_ips": strs(self.external), "other_endpoint_addresses": strs(self.other),
                "policy_cidrs": dict(self.cidrs)}


def _objects(text: str, source: str) -> tuple[list[dict], dict[str, int]]:
    """The objects of the kinds chainbench uses, Lists flattened; the others counted."""
    try:
        docs = list(json_documents(text))
    except NotJson:
        docs = list(yaml_documents(text, source))
    out: list[dict] = []
    dropped: dict[str, int] = {}
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
            items, item_kind = doc["items"], (kind[:-4] if kind != "List" else None)
        else:
            items, item_kind = [doc], None
        for obj in items:
            if not isinstance(obj, dict):
                continue
            if item_kind and "kind" not in obj:
                obj = {"apiVersion": doc.get("apiVersion"), "kind": item_kind, **obj}
            if (obj.get("apiVersion"), obj.get("kind")) in _USED:
                out.append(copy.deepcopy(obj))
            else:
                kind = str(obj.get("kind"))
                dropped[kind] = dropped.get(kind, 0) + 1
    return out, dropped


def _clean_meta(obj: dict) -> None:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        ann = meta.get("annotations")
        if isinstance(ann, dict):
            ann.pop(_LAST_APPLIED, None)
            if not ann:
                meta.pop("annotations")


def _ip_items(items: Any, fn) -> None:
    for item in items or ():
        if isinstance(item, dict) and "ip" in item:
            item["ip"] = fn(item["ip"])


def _rewrite_pod(obj: dict, m: _Mapper) -> None:
    spec = obj.get("spec") or {}
    host_network = bool(spec.get("hostNetwork"))
    if spec.get("nodeName"):
        spec["nodeName"] = m.nodes[spec["nodeName"]]
    elif spec is not None and (obj.get("status") or {}).get("podIP") and not host_network:
        first = next(iter(m.nodes.values()), None)
        if first:
            obj.setdefault("spec", {})["nodeName"] = first
    for container in spec.get("containers") or ():
        for port in container.get("ports") or () if isinstance(container, dict) else ():
            if isinstance(port, dict):
                port.pop("hostIP", None)    # an address of the old node; ignored anyway
    status = obj.get("status") or {}
    if status.get("podIP"):
        status["podIP"] = m.pod_address(status["podIP"], host_network)
    _ip_items(status.get("podIPs"), lambda v: m.pod_address(v, host_network))
    if status.get("hostIP"):
        status["hostIP"] = m.pod_address(status["hostIP"], True)
    _ip_items(status.get("hostIPs"), lambda v: m.pod_address(v, True))


def _rewrite_service(obj: dict, m: _Mapper) -> None:
    spec = obj.get("spec") or {}

    def cip(v: str) -> str:
        return v if v in ("None", "") else str(m.cluster_ip[ipaddress.ip_address(v)])
    if spec.get("clusterIP"):
        spec["clusterIP"] = cip(spec["clusterIP"])
    if spec.get("clusterIPs"):
        spec["clusterIPs"] = [cip(v) for v in spec["clusterIPs"]]
    if spec.get("externalIPs"):
        spec["externalIPs"] = [str(m.external[ipaddress.ip_address(v)]) for v in spec["externalIPs"]]
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    _ip_items(ingress, lambda v: str(m.external[ipaddress.ip_address(v)]))


def _rewrite_slice(obj: dict, m: _Mapper) -> None:
    for ep in obj.get("endpoints") or ():
        ep["addresses"] = [m.endpoint_address(v) for v in ep.get("addresses") or ()]
        if ep.get("nodeName"):
            ep["nodeName"] = m.nodes[ep["nodeName"]]


def _rewrite_cidr_set(block: Any, m: _Mapper) -> None:
    if isinstance(block, dict) and isinstance(block.get("cidr"), str):
        block["cidr"] = m.cidr(block["cidr"])
        if isinstance(block.get("except"), list):
            block["except"] = [m.cidr(v) for v in block["except"]]


def _rewrite_network_policy(obj: dict, m: _Mapper) -> None:
    spec = obj.get("spec") or {}
    for section, key in (("ingress", "from"), ("egress", "to")):
        for rule in spec.get(section) or ():
            for peer in rule.get(key) or ():
                _rewrite_cidr_set(peer.get("ipBlock"), m)


def _rewrite_cilium_policy(obj: dict, m: _Mapper) -> None:
    rules = ([obj["spec"]] if isinstance(obj.get("spec"), dict) else []) + \
        [r for r in obj.get("specs") or () if isinstance(r, dict)]
    for rule in rules:
        for section in ("ingress", "ingressDeny", "egress", "egressDeny"):
            for item in rule.get(section) or ():
                for key in ("fromCIDR", "toCIDR"):
                    if isinstance(item.get(key), list):
                        item[key] = [m.cidr(v) for v in item[key]]
                for key in ("fromCIDRSet", "toCIDRSet"):
                    for block in item.get(key) or ():
                        _rewrite_cidr_set(block, m)


_REWRITE = {"Pod": _rewrite_pod, "Service": _rewrite_service, "EndpointSlice": _rewrite_slice,
            "NetworkPolicy": _rewrite_network_policy, "CiliumNetworkPolicy": _rewrite_cilium_policy}


def renumber_text(text: str, source: str) -> Renumbered:
    """*text* (a dump from *source*) validated with any addresses, then mapped into the
    address plan (see the module docstring); a ScenarioError in one line when invalid."""
    scenario = load_scenario_text(text, source, plan_checked=False)
    mapper = _Mapper(scenario)
    objects, dropped = _objects(text.lstrip("\ufeff"), source)
    for obj in objects:
        _clean_meta(obj)
        rewrite = _REWRITE.get(obj["kind"])
        if rewrite:
            rewrite(obj, mapper)
    header = (f"# {source} renumbered into chainbench's address plan (chainbench up --renumber)\n")
    body = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
    return Renumbered(header + body, mapper.mapping(), source, tuple(sorted(dropped.items())))
