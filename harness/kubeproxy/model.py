"""The service ports kube-proxy would see, derived from an LbState.

kube-proxy works per ServicePort (Service x port name x protocol): one cluster
IP, its external IPs, load-balancer IPs and node port, and one endpoint list.
An LbState holds one Frontend per (address, port, protocol); this module
groups the IPv4 frontends of each service port back together.  HostPort
frontends are left out (kube-proxy does not program hostPort) and so are IPv6
ones (only the IPv4 proxier is rendered).

Endpoints are the frontend's selectable backends (ready ones; serving but
terminating ones only when none is ready, as kube-proxy's
CategorizeEndpoints), ordered as kube-proxy's EndpointsMap orders them: by the
"ip:port" string.  NodePort frontends with ``local_scope``
(externalTrafficPolicy: Local) are rendered with the Cluster policy: the
Local-policy chains (KUBE-SVL / local-*) are not generated.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from harness.lb.model import Backend, Frontend, LbState

from . import names


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    service: str                  # ns/name
    port_name: str
    protocol: str                 # TCP / UDP / SCTP
    cluster_ip: str | None
    port: int
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]
    affinity_timeout: int

    @property
    def name(self) -> str:
        """servicePortName as kube-proxy prints it: ns/name:port."""
        return names.service_port_name(self.service, self.port_name)

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def external(self) -> bool:
        """ExternallyAccessible(): node port, external IPs or LB IPs."""
        return bool(self.node_port or self.external_ips or self.lb_ips)


class ModelError(ValueError):
    """The LB state cannot be expressed as kube-proxy service ports."""


def _endpoints(backends: Iterable[Backend]) -> tuple[Endpoint, ...]:
    eps = {Endpoint(str(b.address), b.port) for b in backends}
    return tuple(sorted(eps, key=str))


def service_ports(state: LbState) -> tuple[ServicePort, ...]:
    """The IPv4 service ports of *state*, sorted by servicePortName and protocol."""
    groups: dict[tuple[str, str, str], list[Frontend]] = {}
    for f in state.frontends:
        if f.type == "HostPort" or not isinstance(f.address, ipaddress.IPv4Address):
            continue
        groups.setdefault((f.service, f.port_name, f.protocol), []).append(f)
    out = []
    for (service, port_name, protocol), fes in groups.items():
        cluster = [f for f in fes if f.type == "ClusterIP"]
        if len(cluster) > 1:
            raise ModelError(f"{service}:{port_name}/{protocol}: several IPv4 cluster IPs")
        node_ports = {f.port for f in fes if f.type == "NodePort"}
        if len(node_ports) > 1:
            raise ModelError(f"{service}:{port_name}/{protocol}: several node ports")
        ext = sorted({str(f.address) for f in fes if f.type == "ExternalIP"})
        lbs = sorted({str(f.address) for f in fes if f.type == "LoadBalancer"})
        port_src = cluster or [f for f in fes if f.type in ("ExternalIP", "LoadBalancer")]
        if not port_src:
            raise ModelError(f"{service}:{port_name}/{protocol}: node port without a cluster IP")
        ref = cluster[0] if cluster else port_src[0]      # all backends, Cluster policy
        out.append(ServicePort(
            service, port_name, protocol,
            str(cluster[0].address) if cluster else None, port_src[0].port,
            next(iter(node_ports)) if node_ports else None, tuple(ext), tuple(lbs),
            _endpoints(ref.selectable()), ref.affinity_timeout))
    return tuple(sorted(out, key=lambda sp: (sp.name, sp.proto)))
