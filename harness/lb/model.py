"""The load balancer's state: frontends (address, port, protocol a service answers
on) with their backends and the backends' states, as harness.lb.desired derives
them from a scenario and harness.lb.control writes them into the maps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from harness.scenario.model import IPAddress, IPNetwork

LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"

ACTIVE, TERMINATING, MAINTENANCE = "active", "terminating", "maintenance"
BACKEND_STATES = {ACTIVE: 0, TERMINATING: 1, "quarantined": 2, MAINTENANCE: 3}
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}

FRONTEND_TYPES = ("ClusterIP", "NodePort", "ExternalIP", "LoadBalancer", "HostPort")


@dataclass(frozen=True, order=True)
class Backend:
    address: IPAddress
    port: int
    protocol: str
    state: str = ACTIVE
    node: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple:
        """Identity of the backend in the backends map: address, port, protocol."""
        return (self.address, self.port, self.protocol)


@dataclass(frozen=True)
class Frontend:
    service: str                 # namespace/name (HostPort: namespace/pod)
    port_name: str
    type: str                    # one of FRONTEND_TYPES
    address: IPAddress
    port: int
    protocol: str
    backends: tuple[Backend, ...]
    affinity_timeout: int = 0    # seconds; 0: no session affinity
    maglev: bool = False
    #: externalTrafficPolicy: Local on an externally reachable frontend (NodePort,
    #: LoadBalancer, ExternalIP): traffic from outside goes to node-local backends only.
    local_scope: bool = False
    #: internalTrafficPolicy: Local: internal clients (pods, host processes) reach
    #: node-local backends only (every frontend of such a Service carries it).
    internal_local: bool = False
    #: loadBalancerSourceRanges (LoadBalancer frontends): the clients allowed; () allows all.
    source_ranges: tuple[IPNetwork, ...] = ()
    #: spec.healthCheckNodePort of the Service (LoadBalancer, externalTrafficPolicy Local).
    health_check_node_port: int | None = None
    #: The node whose address this is (NodePort, HostPort); None for cluster-wide addresses.
    node: str | None = None
    #: Every backend of the service port, before any traffic-policy scoping narrowed
    #: ``backends`` to one node's; None when ``backends`` holds them all.
    all_backends: tuple[Backend, ...] | None = None
    #: The backends internal clients (pods, host processes) reach, where they differ from
    #: ``backends`` (what clients outside the node reach): an externally reachable
    #: frontend whose traffic policies differ.  The datapath keeps the two as two scopes
    #: (bpf_src/lib/lb.h); None: one set for every client.
    internal_backends: tuple[Backend, ...] | None = None

    @property
    def key(self) -> tuple:
        """Identity of the frontend in the services map."""
        return (self.address, self.port, self.protocol)

    @property
    def family(self) -> int:
        return self.address.version

    @property
    def endpoints(self) -> tuple[Backend, ...]:
        """Every backend of the service port (kube-proxy's endpoint list)."""
        return self.backends if self.all_backends is None else self.all_backends

    @property
    def internal(self) -> tuple[Backend, ...]:
        """The backends internal clients (pods, host processes) reach."""
        return self.backends if self.internal_backends is None else self.internal_backends

    @property
    def two_scopes(self) -> bool:
        return self.internal_backends is not None

    def selectable(self, internal: bool = False) -> tuple[Backend, ...]:
        """Backends new flows may go to, in a stable order: from outside the node, or with
        *internal*, from pods and host processes."""
        return selectable(self.internal if internal else self.backends)


def selectable(backends: Iterable[Backend]) -> tuple[Backend, ...]:
    """The active backends in a stable order, or if none is, the terminating ones
    (kube-proxy's fallback for new flows)."""
    backends = tuple(backends)
    active = tuple(sorted(b for b in backends if b.state == ACTIVE))
    if active:
        return active
    return tuple(sorted(b for b in backends if b.state == TERMINATING))


@dataclass(frozen=True)
class LbState:
    frontends: tuple[Frontend, ...]

    def by_key(self) -> dict[tuple, Frontend]:
        return {f.key: f for f in self.frontends}

    def services(self) -> tuple[str, ...]:
        return tuple(sorted({f.service for f in self.frontends}))

    def only(self, services: Iterable[str]) -> "LbState":
        wanted = set(services)
        return LbState(tuple(f for f in self.frontends if f.service in wanted))
