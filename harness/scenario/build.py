"""Decoded documents → ``Scenario``, validated the way the Kubernetes API server
would: the table of kinds and their validators (harness.scenario.pods,
services, endpointslices, network_policies, cilium_policies, namespaces),
object metadata, v1 Lists (``kind: List``, or a typed ``<Kind>List`` as the API
server returns), then the cross-object checks (duplicate objects,
pod IP and hostIP clashes, frontends, EndpointSlices without their Service)
and the deterministic ClusterIP / nodePort allocation.  Everything fails with
a one-line ``ScenarioError`` naming file, document, object and field (first
error wins).

Allocation (for Services that do not set ``clusterIP``/``nodePort``)
    Services are visited in (namespace, name) order, never document order.
    Each missing ClusterIP gets the lowest free address of SERVICE_CIDR_V4
    (or SERVICE_CIDR_V6) above the network address; "free" means not
    written explicitly anywhere in the scenario and not allocated before.
    Missing nodePorts get the lowest free port from 30000 the same way,
    visiting (namespace, name, port index).

Kinds chainbench does not use (Deployments, ConfigMaps, Events, ...: anything
with an ``apiVersion`` and a ``kind`` outside the table) are skipped and counted
(``Scenario.skipped``), never refused, so a ``kubectl get ... -o yaml`` dump loads
as it is; a kind of the table under another apiVersion is still refused.  Node
objects are skipped too, but their ``status.addresses`` (InternalIP, else
ExternalIP) are kept as ``Scenario.node_ips``: a foreign node's addresses.

Deviation from Kubernetes
    Services may share a ClusterIP as long as every frontend (ClusterIP,
    port, protocol) is unique: 198.19.0.0/17 holds only 32,766 VIPs and the
    benchmarks need 100,000 services.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Any, Callable

from harness.addressing import SERVICE_CIDR_V4, SERVICE_CIDR_V6
from harness.scenario.cilium_policies import parse_cilium_network_policy
from harness.scenario.endpointslices import SLICE_KEYS, parse_endpoint_slice
from harness.scenario.errors import FieldError, PlanFieldError, ScenarioError
from harness.scenario.fields import (
    address_mode,
    check_keys,
    check_name,
    label_map,
    list_field,
    mapping,
    str_field,
    string_map,
    type_name,
    valid_address,
)
from harness.scenario.model import (
    SERVICE_NAME_LABEL,
    CiliumNetworkPolicy,
    EndpointSlice,
    IPAddress,
    Namespace,
    NetworkPolicy,
    ObjectMeta,
    Pod,
    Scenario,
    Service,
)
from harness.scenario.namespaces import parse_namespace
from harness.scenario.network_policies import parse_network_policy
from harness.scenario.pods import parse_pod
from harness.scenario.services import NODE_PORT_RANGE, SERVICE_CIDRS, ServiceDraft, parse_service

__all__ = ["scenario_from_documents"]


_META_KEYS = frozenset({"name", "namespace", "labels", "annotations"})
# Bookkeeping Kubernetes adds; accepted so `kubectl get -o yaml` output loads, and ignored.
_META_IGNORED = frozenset({
    "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
    "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields", "generateName", "selfLink",
})


def _meta(obj: dict, name_rule: str, document: int, prefix: str) -> ObjectMeta:
    raw = obj.get("metadata")
    if raw is None:
        raise FieldError("metadata", "required")
    m = mapping(raw, "metadata")
    check_keys(m, "metadata", _META_KEYS | _META_IGNORED, hints=_META_KEYS)
    name = check_name(str_field(m, "name", "metadata", required=True), "metadata.name", name_rule)  # type: ignore[arg-type]
    namespace = str_field(m, "namespace", "metadata") or "default"
    check_name(namespace, "metadata.namespace", "dns-label")
    labels = label_map(m.get("labels"), "metadata.labels")
    annotations = string_map(m.get("annotations"), "metadata.annotations", "annotation-key", None)
    return ObjectMeta(name, namespace, labels, annotations, document, prefix)


@dataclasses.dataclass(frozen=True)
class _Kind:
    kind: str
    name_rule: str
    top_keys: frozenset[str]
    parse: Callable[[dict, ObjectMeta, dict], Any]  # cache: per-load interning of shared values


_OBJECT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_KINDS: dict[tuple[str, str], _Kind] = {
    ("v1", "Pod"): _Kind("Pod", "dns-subdomain", _OBJECT_KEYS, parse_pod),
    ("v1", "Service"): _Kind("Service", "dns-1035", _OBJECT_KEYS, parse_service),
    ("discovery.k8s.io/v1", "EndpointSlice"): _Kind("EndpointSlice", "dns-subdomain", SLICE_KEYS,
                                                    parse_endpoint_slice),
    ("networking.k8s.io/v1", "NetworkPolicy"): _Kind("NetworkPolicy", "dns-subdomain", _OBJECT_KEYS,
                                                     parse_network_policy),
    ("cilium.io/v2", "CiliumNetworkPolicy"): _Kind("CiliumNetworkPolicy", "dns-subdomain",
                                                   _OBJECT_KEYS | {"specs"}, parse_cilium_network_policy),
    ("v1", "Namespace"): _Kind("Namespace", "dns-label", _OBJECT_KEYS, parse_namespace),
}
_KNOWN = ", ".join(f"{api} {kind}" for api, kind in _KINDS) + ", v1 List"
_KIND_NAMES = {kind: api for api, kind in _KINDS}
_LIST_KEYS = frozenset({"apiVersion", "kind", "items", "metadata"})
#: Node status.addresses types read as the node's addresses, in order of preference.
_NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


def _is_list(doc: dict) -> bool:
    """``kind: List`` (kubectl), or a typed list (``ServiceList``...) with items."""
    kind = doc.get("kind")
    return kind == "List" or (isinstance(kind, str) and kind.endswith("List") and len(kind) > 4
                              and kind[:-4] in set(_KIND_NAMES) | {"Node"} and "items" in doc)


class _Builder:
    """Accumulates validated objects document by document, then allocates and cross-checks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.seen: dict[tuple[str, str, str], int] = {}
        self.pods: list[Pod] = []
        self.drafts: list[ServiceDraft] = []
        self.slices: list[EndpointSlice] = []
        self.policies: list[NetworkPolicy] = []
        self.cilium_policies: list[CiliumNetworkPolicy] = []
        self.namespaces: list[Namespace] = []
        self.pod_ip_owner: dict[IPAddress, Pod] = {}
        self.node_host_ip: dict[str, Pod] = {}
        self.cache: dict = {}
        self.skipped: dict[str, int] = {}
        self.node_ips: dict[str, tuple[IPAddress, ...]] = {}

    # -- errors

    def fail_at(self, document: int, prefix: str, kind: str | None, ref: str | None, field: str,
                message: str, plan: bool = False) -> ScenarioError:
        return ScenarioError(message, source=self.source, document=document, kind=kind, ref=ref,
                             field=prefix + field if field else (prefix.rstrip(".") or None),
                             plan=plan)

    def fail(self, obj: Any, field: str, message: str) -> ScenarioError:
        meta: ObjectMeta = obj.meta
        return self.fail_at(meta.document, meta.field_prefix, obj.KIND, obj.ref, field, message)

    # -- documents

    def add_document(self, doc: object, document: int) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise self.fail_at(document, "", None, None, "",
                               f"a document must be a mapping (a Kubernetes object), got {type_name(doc)}")
        if _is_list(doc) and (doc.get("apiVersion") == "v1" or doc.get("kind") != "List"):
            try:
                check_keys(doc, "", _LIST_KEYS)
                items = list_field(doc, "items", "")
            except FieldError as err:
                raise self.fail_at(document, "", doc["kind"], None, err.field, err.message) from None
            item_kind = doc["kind"][:-4] if doc["kind"] != "List" else None
            for i, item in enumerate(items):
                if item_kind and isinstance(item, dict) and "kind" not in item:
                    # a typed list's items carry no kind: the list's
                    api = doc.get("apiVersion")
                    item = {"apiVersion": api, "kind": item_kind, **item}
                self.add_object(item, document, f"items[{i}].")
            return
        self.add_object(doc, document, "")

    def add_object(self, obj: object, document: int, prefix: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail_at(document, prefix, None, None, "",
                               f"must be a mapping (a Kubernetes object), got {type_name(obj)}")
        api, kind = obj.get("apiVersion"), obj.get("kind")
        shown_kind = kind if isinstance(kind, str) else None
        meta_raw = obj.get("metadata")
        ref = None
        if isinstance(meta_raw, dict) and isinstance(meta_raw.get("name"), str):
            ns = meta_raw.get("namespace")
            ref = (meta_raw["name"] if kind == "Namespace"
                   else f"{ns if isinstance(ns, str) and ns else 'default'}/{meta_raw['name']}")
        try:
            spec = self._kind(api, kind)
            if spec is None:                # a kind chainbench does not use: counted
                self.skipped[kind] = self.skipped.get(kind, 0) + 1  # type: ignore[index]
                if kind == "Node":
                    self._add_node(obj)
                return
            check_keys(obj, "", spec.top_keys)
            meta = _meta(obj, spec.name_rule, document, prefix)
            ref = meta.name if spec.kind == "Namespace" else meta.ref
            parsed = spec.parse(obj, meta, self.cache)
        except FieldError as err:
            raise self.fail_at(document, prefix, shown_kind, ref, err.field, err.message,
                               plan=isinstance(err, PlanFieldError)) from None
        key = (spec.kind, "" if spec.kind == "Namespace" else meta.namespace, meta.name)
        if key in self.seen:
            raise self.fail_at(document, prefix, spec.kind, ref, "metadata.name",
                               f"duplicate {spec.kind} {ref} (already defined in document {self.seen[key]})")
        self.seen[key] = document
        if isinstance(parsed, Pod):
            self._add_pod(parsed)
        elif isinstance(parsed, ServiceDraft):
            self.drafts.append(parsed)
        elif isinstance(parsed, EndpointSlice):
            self.slices.append(parsed)
        elif isinstance(parsed, NetworkPolicy):
            self.policies.append(parsed)
        elif isinstance(parsed, Namespace):
            self.namespaces.append(parsed)
        else:
            self.cilium_policies.append(parsed)

    @staticmethod
    def _kind(api: object, kind: object) -> _Kind | None:
        """The kind's validator; None for a kind chainbench does not use (skipped)."""
        if api is None:
            raise FieldError("apiVersion", "required")
        if kind is None:
            raise FieldError("kind", "required")
        if not isinstance(api, str) or not api:
            raise FieldError("apiVersion", f"must be a string, got {type_name(api)}")
        if not isinstance(kind, str) or not kind:
            raise FieldError("kind", f"must be a string, got {type_name(kind)}")
        spec = _KINDS.get((api, kind))
        if spec is not None:
            return spec
        if kind in _KIND_NAMES:
            raise FieldError("apiVersion", f"{kind} must be {_KIND_NAMES[kind]}, got {api!r}")
        if kind == "List":
            raise FieldError("apiVersion", f"List must be v1, got {api!r}")
        return None

    def _add_node(self, obj: dict) -> None:
        """A Node's addresses (status.addresses: InternalIP, else ExternalIP), by name."""
        meta = mapping(obj.get("metadata") or {}, "metadata")
        name = str_field(meta, "name", "metadata", required=True)
        check_name(name, "metadata.name", "dns-subdomain")  # type: ignore[arg-type]
        status = mapping(obj.get("status") or {}, "status")
        found: dict[str, list[IPAddress]] = {}
        for i, item in enumerate(list_field(status, "addresses", "status")):
            path = f"status.addresses[{i}]"
            item = mapping(item, path)
            kind = str_field(item, "type", path, required=True)
            if kind not in _NODE_ADDRESS_TYPES:
                continue                    # Hostname, InternalDNS, ExternalDNS
            addr = valid_address(str_field(item, "address", path, required=True))  # type: ignore[arg-type]
            if isinstance(addr, str):
                raise FieldError(f"{path}.address", addr)
            found.setdefault(kind, []).append(addr)
        for kind in _NODE_ADDRESS_TYPES:
            if found.get(kind):
                per_family: dict[int, IPAddress] = {}
                for addr in found[kind]:
                    per_family.setdefault(addr.version, addr)
                self.node_ips[name] = tuple(per_family.values())  # type: ignore[index]
                return

    def _add_pod(self, pod: Pod) -> None:
        if not pod.host_network:
            for i, addr in enumerate(pod.pod_ips):
                other = self.pod_ip_owner.get(addr)
                if other is not None:
                    raise self.fail(pod, "status.podIPs" if i else "status.podIP",
                                    f"{addr} is already the IP of pod {other.ref} (document {other.meta.document})")
                self.pod_ip_owner[addr] = pod
        if pod.node_name and pod.host_ip is not None:
            other = self.node_host_ip.setdefault(pod.node_name, pod)
            if other.host_ip != pod.host_ip:
                raise self.fail(pod, "status.hostIP", f"{pod.host_ip} differs from the hostIP {other.host_ip} "
                                f"of pod {other.ref} on the same node {pod.node_name}")
        self.pods.append(pod)

    # -- allocation and cross-object checks

    def _allocate_cluster_ips(self) -> dict[int, tuple[IPAddress, ...]]:
        used: dict[int, set[int]] = {4: set(), 6: set()}
        for d in self.drafts:
            for addr in d.explicit_ips:
                used[addr.version].add(int(addr))
        cursor = {4: int(SERVICE_CIDR_V4.network_address) + 1, 6: int(SERVICE_CIDR_V6.network_address) + 1}
        last = {4: int(SERVICE_CIDR_V4.broadcast_address) - 1, 6: int(SERVICE_CIDR_V6.broadcast_address)}
        result: dict[int, tuple[IPAddress, ...]] = {}
        pending = [(d.service.meta.namespace, d.service.meta.name, i) for i, d in enumerate(self.drafts)
                   if not d.service.headless and len(d.explicit_ips) < len(d.service.ip_families)]
        for _, _, i in sorted(pending):
            d = self.drafts[i]
            ips = list(d.explicit_ips)
            for family in d.service.ip_families[len(ips):]:
                version = 4 if family == "IPv4" else 6
                candidate = cursor[version]
                while candidate in used[version]:
                    candidate += 1
                if candidate > last[version]:
                    raise self.fail(d.service, "spec.clusterIP",
                                    f"no free {family} address left in the service CIDR {SERVICE_CIDRS[family]}")
                used[version].add(candidate)
                cursor[version] = candidate + 1
                ips.append(ipaddress.ip_address(candidate))
            result[i] = tuple(ips)
        return result

    def _allocate_node_ports(self) -> dict[int, dict[int, int]]:
        """nodePorts for the ports that need one; port index -1 is the Service's
        healthCheckNodePort (same range and pool, as the API server allocates it)."""
        used = {p.node_port for d in self.drafts for p in d.service.ports if p.node_port is not None}
        used |= {d.service.health_check_node_port for d in self.drafts
                 if d.service.health_check_node_port is not None}
        pending = sorted(((d.service.meta.namespace, d.service.meta.name, j, i)
                          for i, d in enumerate(self.drafts)
                          for j in (*d.node_port_wanted, *((-1,) if d.health_check_wanted else ()))),
                         key=lambda p: (p[0], p[1], p[2] < 0, p[2]))   # ports first, then the health check
        result: dict[int, dict[int, int]] = {}
        candidate = NODE_PORT_RANGE[0]
        for _, _, j, i in pending:
            while candidate in used:
                candidate += 1
            if candidate > NODE_PORT_RANGE[1]:
                field = "spec.healthCheckNodePort" if j < 0 else f"spec.ports[{j}].nodePort"
                raise self.fail(self.drafts[i].service, field,
                                f"no free nodePort left in {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
            used.add(candidate)
            result.setdefault(i, {})[j] = candidate
        return result

    def _services(self) -> list[Service]:
        cluster_ips = self._allocate_cluster_ips()
        node_ports = self._allocate_node_ports()
        services = []
        for i, d in enumerate(self.drafts):
            svc = d.service
            changes: dict[str, Any] = {}
            if i in cluster_ips:
                changes["cluster_ips"] = cluster_ips[i]
            if i in node_ports:
                changes["ports"] = tuple(dataclasses.replace(p, node_port=node_ports[i][j]) if j in node_ports[i] else p
                                         for j, p in enumerate(svc.ports))
                if -1 in node_ports[i]:
                    changes["health_check_node_port"] = node_ports[i][-1]
            services.append(dataclasses.replace(svc, **changes) if changes else svc)
        frontends: dict[tuple[IPAddress, int, str], Service] = {}
        node_port_owner: dict[tuple[int, str], Service] = {}
        for svc in services:
            for j, port in enumerate(svc.ports):
                for addr in svc.cluster_ips:
                    other = frontends.setdefault((addr, port.port, port.protocol), svc)
                    if other is not svc:
                        raise self.fail(svc, f"spec.ports[{j}]",
                                        f"frontend {_frontend(addr, port.port, port.protocol)} is already used by "
                                        f"Service {other.ref} (document {other.meta.document})")
                if port.node_port is not None:
                    other = node_port_owner.setdefault((port.node_port, port.protocol), svc)
                    if other is not svc:
                        raise self.fail(svc, f"spec.ports[{j}].nodePort",
                                        f"nodePort {port.node_port}/{port.protocol} is already used by Service "
                                        f"{other.ref} (document {other.meta.document})")
            if svc.health_check_node_port is not None:
                other = node_port_owner.get((svc.health_check_node_port, "TCP"))
                node_port_owner.setdefault((svc.health_check_node_port, "TCP"), svc)
                if other is not None:
                    raise self.fail(svc, "spec.healthCheckNodePort",
                                    f"port {svc.health_check_node_port}/TCP is already used by Service "
                                    f"{other.ref} (document {other.meta.document})")
        return services

    def finish(self) -> Scenario:
        services = self._services()
        names = {(s.meta.namespace, s.meta.name) for s in services}
        for es in self.slices:
            if (es.meta.namespace, es.service_name) not in names:
                raise self.fail(es, f"metadata.labels[{SERVICE_NAME_LABEL}]",
                                f"Service {es.meta.namespace}/{es.service_name} is not in the scenario")
        return Scenario(
            source=self.source,
            pods=tuple(self.pods),
            services=tuple(services),
            endpoint_slices=tuple(self.slices),
            network_policies=tuple(self.policies),
            cilium_network_policies=tuple(self.cilium_policies),
            namespaces=tuple(self.namespaces),
            skipped=tuple(sorted(self.skipped.items())),
            node_ips=dict(self.node_ips),
        )


def _frontend(addr: IPAddress, port: int, protocol: str) -> str:
    return f"[{addr}]:{port}/{protocol}" if addr.version == 6 else f"{addr}:{port}/{protocol}"


def scenario_from_documents(documents: Iterable[Any], source: str = "<string>", *,
                            plan_checked: bool = True) -> Scenario:
    """Validate already-decoded documents (``None`` = empty document) into a Scenario.
    *plan_checked*: addresses and node names must fit the project's address plan (what
    touches the network needs it); False accepts any valid address and node name."""
    builder = _Builder(source)
    with address_mode(plan_checked):
        for index, doc in enumerate(documents, 1):
            builder.add_document(doc, index)
        return builder.finish()
