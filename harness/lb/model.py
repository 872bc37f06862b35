"""The load balancer's state: frontends (address, port, protocol a service answers
on) with their backends and the backends' states, as harness.lb.desired derives
them from a scenario and harness.lb.control writes them into the maps."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

from harness.scenario.model import IPAddress, IPNetwork

LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"

ACTIVE, TERMINATING, MAINTENANCE = "active", "terminating", "maintenance"
BACKEND_STATES = {ACTIVE: 0, TERMINATING: 1, "quarantined": 2, MAINTENANCE: 3}
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}

FRONTEND_TYPES = ("ClusterIP", "NodePort", "ExternalIP", "LoadBalancer", "HostPort")

#: Backends are ordered by their fields, so protocols compare as strings: each one's rank.
PROTOCOL_RANK = {p: i for i, p in enumerate(sorted(PROTOCOLS))}
#: A name the tables above do not know, in a packed record (the planner refuses it).
UNKNOWN = 0xFF

# Packed records: each Backend and Frontend packs its fields once, when it is made (as an
# agent parses an EndpointSlice when it arrives), and a Backends set joins its members',
# so that planning many of them (harness.lb.columns) reads one bytes object per set or
# frontend instead of one attribute per field of every object.  (name, struct code) in
# order, little-endian, no padding; the address is split into its high and low 64 bits
# (IPv4: low only).
BACKEND_RECORD = (("hi", "Q"), ("lo", "Q"), ("port", "H"), ("proto", "B"), ("state", "B"),
                  ("rank", "B"), ("family", "B"))
#: ``bits``: FRONTEND_BITS of the fields set; ``type``: index in FRONTEND_TYPES.
FRONTEND_RECORD = (("hi", "Q"), ("lo", "Q"), ("affinity", "I"), ("port", "H"), ("proto", "B"),
                   ("family", "B"), ("type", "B"), ("bits", "B"))
FRONTEND_BITS = {"maglev": 1, "local_scope": 2, "internal_local": 4, "source_ranges": 8}
_M64 = (1 << 64) - 1
_pack_backend = struct.Struct("<" + "".join(c for _, c in BACKEND_RECORD)).pack
_pack_frontend = struct.Struct("<" + "".join(c for _, c in FRONTEND_RECORD)).pack
_TYPE_CODE = {t: i for i, t in enumerate(FRONTEND_TYPES)}


@dataclass(frozen=True, order=True)
class Backend:
    address: IPAddress
    port: int
    protocol: str
    state: str = ACTIVE
    node: str | None = field(default=None, compare=False)
    #: BACKEND_RECORD of the fields above; None when they do not fit it (not programmable).
    _rec: bytes | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        try:
            ip = self.address._ip
            rec = _pack_backend(ip >> 64, ip & _M64, self.port,
                                PROTOCOLS.get(self.protocol, UNKNOWN),
                                BACKEND_STATES.get(self.state, UNKNOWN),
                                PROTOCOL_RANK.get(self.protocol, UNKNOWN), self.address._version)
        except (AttributeError, TypeError, struct.error):
            rec = None
        object.__setattr__(self, "_rec", rec)

    @property
    def key(self) -> tuple:
        """Identity of the backend in the backends map: address, port, protocol."""
        return (self.address, self.port, self.protocol)


class Backends(tuple):
    """A tuple of Backends that also keeps their records (BACKEND_RECORD each) joined,
    and where its selectable backends stand in slot order (``_slots``: their positions
    as ``selectable`` orders them, uint32 little-endian; None for a set mixing address
    families, which has no order).  That is how the agent holds an EndpointSlice's
    backends once it has parsed them: a full sync reads two bytes objects per set and
    does not sort its backends again (harness.lb.columns).  Equal to, and interchangeable with, a plain
    tuple of the same Backends."""

    def __new__(cls, backends: Iterable[Backend] = ()):
        self = super().__new__(cls, backends)
        try:
            self._rec = b"".join([b._rec for b in self])
        except TypeError:           # a Backend that is not programmable
            self._rec = None
        chosen = [i for i, b in enumerate(self) if b.state == ACTIVE] or \
            [i for i, b in enumerate(self) if b.state == TERMINATING]
        try:
            chosen.sort(key=self.__getitem__)
            self._slots = _pack_slots(chosen)
        except TypeError:           # families mixed: no order (the planner sorts them)
            self._slots = None
        return self


def _pack_slots(positions: list[int]) -> bytes:
    return struct.pack(f"<{len(positions)}I", *positions)


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
    #: FRONTEND_RECORD of the fields above; None when they do not fit it.
    _rec: bytes | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        try:
            ip = self.address._ip
            bits = sum(bit for name, bit in FRONTEND_BITS.items() if getattr(self, name))
            rec = _pack_frontend(ip >> 64, ip & _M64, self.affinity_timeout, self.port,
                                 PROTOCOLS.get(self.protocol, UNKNOWN), self.address._version,
                                 _TYPE_CODE.get(self.type, UNKNOWN), bits)
        except (AttributeError, TypeError, struct.error):
            rec = None
        object.__setattr__(self, "_rec", rec)

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
