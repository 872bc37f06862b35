"""Typed, immutable model of a scenario: the Kubernetes objects chainbench reads.

Every class is a frozen dataclass holding tuples (never lists).  Label maps,
selectors and policy specs are plain ``dict`` values, so the objects compare
by value but are not hashable.  Addresses are ``ipaddress`` objects.

``ObjectMeta.document`` / ``ObjectMeta.field_prefix`` remember where an object
came from (excluded from equality), so later stages can report problems in the
same one-line format through ``Scenario.error``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Union

from harness.scenario.errors import ScenarioError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Protocol = Literal["TCP", "UDP", "SCTP"]

#: Label that ties an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: Kubernetes' default ClientIP session-affinity timeout.
DEFAULT_AFFINITY_TIMEOUT = 10800


@dataclass(frozen=True)
class ObjectMeta:
    """The parts of ``metadata`` chainbench uses."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: 1-based index of the YAML document the object came from (0: built in code).
    document: int = field(default=0, compare=False, repr=False)
    #: Field path prefix inside that document ("items[3]." for a List item).
    field_prefix: str = field(default="", compare=False, repr=False)

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


# --------------------------------------------------------------------------- Pod


@dataclass(frozen=True)
class ContainerPort:
    name: str  # "" when unnamed
    container_port: int
    protocol: Protocol = "TCP"
    host_port: int | None = None


@dataclass(frozen=True)
class Pod:
    KIND: ClassVar[str] = "Pod"
    API_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta
    node_name: str | None
    host_network: bool
    #: From status.podIPs / status.podIP: at most one address per family, primary first.
    pod_ips: tuple[IPAddress, ...]
    host_ip: IPAddress | None
    container_ports: tuple[ContainerPort, ...] = ()

    @property
    def ref(self) -> str:
        return self.meta.ref

    @property
    def ipv4(self) -> ipaddress.IPv4Address | None:
        return next((a for a in self.pod_ips if a.version == 4), None)

    @property
    def ipv6(self) -> ipaddress.IPv6Address | None:
        return next((a for a in self.pod_ips if a.version == 6), None)


# ----------------------------------------------------------------------- Service


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" when unnamed (only allowed for a single port)
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    KIND: ClassVar[str] = "Service"
    API_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"]
    #: Explicit or allocated, one per entry of ip_families, in the same order; () when headless.
    cluster_ips: tuple[IPAddress, ...]
    headless: bool
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] = field(default_factory=dict)
    session_affinity: Literal["None", "ClientIP"] = "None"
    #: Effective ClientIP timeout (meaningful only when session_affinity is ClientIP).
    affinity_timeout_seconds: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    internal_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    ip_families: tuple[Literal["IPv4", "IPv6"], ...] = ("IPv4",)
    external_ips: tuple[IPAddress, ...] = ()
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] = "SingleStack"
    #: spec.loadBalancerSourceRanges: clients allowed to reach the load-balancer IPs (empty: all).
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    #: spec.healthCheckNodePort (LoadBalancer with externalTrafficPolicy: Local), allocated if unset.
    health_check_node_port: int | None = None
    #: status.loadBalancer.ingress[].ip: the load-balancer IPs the cloud assigned.
    load_balancer_ips: tuple[IPAddress, ...] = ()

    @property
    def ref(self) -> str:
        return self.meta.ref

    @property
    def cluster_ip(self) -> IPAddress | None:
        """The primary ClusterIP (None when headless)."""
        return self.cluster_ips[0] if self.cluster_ips else None

    def frontends(self) -> tuple[tuple[IPAddress, int, str], ...]:
        """Every (ClusterIP, port, protocol) this Service answers on."""
        return tuple((ip, p.port, p.protocol) for ip in self.cluster_ips for p in self.ports)


# ----------------------------------------------------------------- EndpointSlice


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    #: targetRef (kind Pod); the namespace defaults to the slice's when a name is given.
    target_ref_namespace: str | None = None
    target_ref_name: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class EndpointPort:
    name: str  # "" when unnamed
    protocol: Protocol
    port: int | None  # None: all ports (as Kubernetes allows)


@dataclass(frozen=True)
class EndpointSlice:
    KIND: ClassVar[str] = "EndpointSlice"
    API_VERSION: ClassVar[str] = "discovery.k8s.io/v1"

    meta: ObjectMeta
    service_name: str
    address_type: Literal["IPv4", "IPv6"]
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]

    @property
    def ref(self) -> str:
        return self.meta.ref


# ---------------------------------------------------------------------- Policies


@dataclass(frozen=True)
class NetworkPolicy:
    """networking.k8s.io/v1 NetworkPolicy; ``spec`` is the validated plain data."""

    KIND: ClassVar[str] = "NetworkPolicy"
    API_VERSION: ClassVar[str] = "networking.k8s.io/v1"

    meta: ObjectMeta
    spec: dict

    @property
    def ref(self) -> str:
        return self.meta.ref


@dataclass(frozen=True)
class CiliumNetworkPolicy:
    """cilium.io/v2 CiliumNetworkPolicy; ``spec``/``specs`` are validated plain data."""

    KIND: ClassVar[str] = "CiliumNetworkPolicy"
    API_VERSION: ClassVar[str] = "cilium.io/v2"

    meta: ObjectMeta
    spec: dict | None
    specs: tuple[dict, ...] = ()

    @property
    def ref(self) -> str:
        return self.meta.ref

    @property
    def rules(self) -> tuple[dict, ...]:
        """``spec`` (if any) followed by ``specs``."""
        return ((self.spec,) if self.spec is not None else ()) + self.specs


# --------------------------------------------------------------------- Namespace

#: The label the API server puts on every Namespace (its name; immutable).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Namespace:
    """v1 Namespace: only its labels matter (NetworkPolicy namespaceSelector).

    Cluster-scoped: ``meta.namespace`` is "" and ``ref`` is the name.  A namespace
    that pods or policies use without a Namespace object has just the automatic
    ``kubernetes.io/metadata.name`` label (see Scenario.namespace_labels).
    """

    KIND: ClassVar[str] = "Namespace"
    API_VERSION: ClassVar[str] = "v1"

    meta: ObjectMeta

    @property
    def ref(self) -> str:
        return self.meta.name


KubeObject = Union[Pod, Service, EndpointSlice, NetworkPolicy, CiliumNetworkPolicy, Namespace]


# ---------------------------------------------------------------------- Scenario


def split_ref(ref: str, source: str = "<string>") -> tuple[str, str]:
    """``"ns/name"`` → (ns, name); ``"name"`` → ("default", name)."""
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) == 1 and parts[0]:
        return "default", parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ScenarioError(f"invalid reference {ref!r}: expected NAMESPACE/NAME or NAME", source=source)


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: every object, in document order, plus lookups."""

    source: str
    pods: tuple[Pod, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    network_policies: tuple[NetworkPolicy, ...] = ()
    cilium_network_policies: tuple[CiliumNetworkPolicy, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    #: Objects of kinds chainbench does not use, skipped: (kind, count), sorted by kind.
    skipped: tuple[tuple[str, int], ...] = field(default=(), compare=False)
    #: Node objects' addresses (InternalIP, else ExternalIP; one per family), by node name.
    node_ips: dict = field(default_factory=dict, compare=False)
    _pods: dict = field(init=False, repr=False, compare=False)
    _services: dict = field(init=False, repr=False, compare=False)
    _slices: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for s in self.endpoint_slices:
            slices.setdefault((s.meta.namespace, s.service_name), []).append(s)
        object.__setattr__(self, "_pods", {(p.meta.namespace, p.meta.name): p for p in self.pods})
        object.__setattr__(self, "_services", {(s.meta.namespace, s.meta.name): s for s in self.services})
        object.__setattr__(self, "_slices", {k: tuple(v) for k, v in slices.items()})

    def skipped_text(self) -> str:
        """``skipped 2 Deployment, 1 ConfigMap`` style summary ("" when nothing was)."""
        return ", ".join(f"{n} {kind}" for kind, n in self.skipped)

    @property
    def nodes(self) -> tuple[str, ...]:
        """Sorted distinct ``spec.nodeName`` values of the pods."""
        return tuple(sorted({p.node_name for p in self.pods if p.node_name}))

    def namespace_labels(self, name: str) -> dict[str, str]:
        """The labels of namespace *name*: its Namespace object's, plus the automatic
        ``kubernetes.io/metadata.name`` (all a namespace without an object has)."""
        for ns in self.namespaces:
            if ns.meta.name == name:
                return {**ns.meta.labels, NAMESPACE_NAME_LABEL: name}
        return {NAMESPACE_NAME_LABEL: name}

    def pod(self, ref: str) -> Pod:
        """The pod named ``"ns/name"`` (or ``"name"`` in namespace default)."""
        key = split_ref(ref, self.source)
        try:
            return self._pods[key]
        except KeyError:
            raise ScenarioError(f"pod {key[0]}/{key[1]} is not in the scenario", source=self.source) from None

    def service(self, ref: str) -> Service:
        """The Service named ``"ns/name"`` (or ``"name"`` in namespace default)."""
        key = split_ref(ref, self.source)
        try:
            return self._services[key]
        except KeyError:
            raise ScenarioError(f"service {key[0]}/{key[1]} is not in the scenario", source=self.source) from None

    def endpoint_slices_for(self, service: Service | str) -> tuple[EndpointSlice, ...]:
        """EndpointSlices labelled ``kubernetes.io/service-name`` = the Service, same namespace."""
        key = (service.meta.namespace, service.meta.name) if isinstance(service, Service) else split_ref(service, self.source)
        return self._slices.get(key, ())

    def error(self, obj: KubeObject, field_path: str, message: str) -> ScenarioError:
        """A one-line ScenarioError about *obj*, for stages that interpret the scenario later."""
        return ScenarioError(
            message,
            source=self.source,
            document=obj.meta.document or None,
            kind=obj.KIND,
            ref=obj.ref,
            field=obj.meta.field_prefix + field_path,
        )
