"""What one kube-proxy process sees: its configuration and its service ports,
derived from an LbState.

kube-proxy works per ServicePort (Service x port name x protocol) and per IP
family: one cluster IP, its external IPs, load-balancer IPs (with
loadBalancerSourceRanges), node port, health-check node port, traffic
policies, and one endpoint list whose entries carry the EndpointSlice
conditions (ready, serving, terminating) and whether they are on this node.
An LbState holds one Frontend per (address, port, protocol); this module groups
the frontends of one family back into service ports.  HostPort frontends are
left out (kube-proxy does not program hostPort).

:class:`ProxierConfig` holds the proxier's settings that shape its output:
node name and IPs, the local-traffic detector (cluster CIDR), masqueradeAll,
--nodeport-addresses, whether NodePorts answer on localhost (IPv4 iptables
only), and the masquerade bit.

:attr:`ServicePort.categorized` is kube-proxy's CategorizeEndpoints
(pkg/proxy/topology.go, without topology hints): cluster endpoints are the ready
ones, or the serving-terminating ones when none is ready; local endpoints are
this node's ready ones, or its serving-terminating ones when it has no ready
one.  Endpoints are ordered as kube-proxy's EndpointsMap orders them: by the
"ip:port" string.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from harness.addressing import POD_CIDR_V4, POD_CIDR_V6, SERVICE_CIDR_V4, SERVICE_CIDR_V6
from harness.lb.model import ACTIVE, TERMINATING, Frontend, LbState

from . import names


@dataclass(frozen=True)
class ProxierConfig:
    """One kube-proxy's settings (pkg/proxy/{iptables,nftables} NewProxier)."""
    family: int = 4
    hostname: str | None = None
    node_ips: tuple[str, ...] = ()
    #: --cluster-cidr: the LocalTrafficDetector (traffic from it is "local").
    cluster_cidr: str | None = None
    masquerade_all: bool = False
    #: --nodeport-addresses as CIDRs; () means every local address.
    nodeport_addresses: tuple[str, ...] = ()
    #: route_localnet: NodePorts answer on 127.0.0.0/8 (IPv4 iptables mode).
    localhost_nodeports: bool = True
    masquerade_bit: int = 14
    # -- iptables mode (pkg/proxy/iptables) --------------------------------
    #: iptables supports MASQUERADE --random-fully (HasRandomFully(), iptables >= 1.6.2).
    random_fully: bool = True
    #: the nfacct counters ct_state_invalid_dropped_pkts and localhost_nps_accepted_pkts
    #: could be created (kube-proxy adds "-m nfacct" matches only then).
    nfacct: bool = False
    #: net.netfilter.nf_conntrack_tcp_be_liberal is set (no INVALID drop rule).
    conntrack_tcp_liberal: bool = False
    #: a LocalTrafficDetector is configured (False: NewNoOpLocalDetector).
    detect_local: bool = True
    #: the masquerade mark as written; None: kube-proxy's fmt.Sprintf("%#08x", 1<<bit).
    masquerade_mark_text: str | None = None
    # -- nftables mode (pkg/proxy/nftables) --------------------------------
    #: The ServiceCIDRs of this family (nftables' "Drop traffic to unallocated
    #: ClusterIPs" rule); None: the project's service CIDR of the family.
    service_cidrs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.cluster_cidr is None:
            object.__setattr__(self, "cluster_cidr",
                               str(POD_CIDR_V4 if self.family == 4 else POD_CIDR_V6))
        if self.service_cidrs is None:
            object.__setattr__(self, "service_cidrs",
                               (str(SERVICE_CIDR_V4 if self.family == 4 else SERVICE_CIDR_V6),))

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit

    @property
    def masquerade_mark_str(self) -> str:
        """The mark as kube-proxy's iptables mode writes it: Go's %#08x pads the
        digits to eight ("0x00004000"); iptables-save prints it back as 0x4000."""
        if self.masquerade_mark_text is not None:
            return self.masquerade_mark_text
        return "0x%08x" % self.masquerade_mark

    @property
    def local_detector(self) -> bool:
        """A LocalTrafficDetector is implemented (cluster_cidr "" means none: no-op)."""
        return self.detect_local and bool(self.cluster_cidr)

    @property
    def node_ip(self) -> str | None:
        """The primary node IP of this family (the first of node_ips)."""
        return next((ip for ip in self.node_ips
                     if ipaddress.ip_address(ip).version == self.family), None)

    def nodeport_ips(self) -> tuple[str, ...] | None:
        """NodePortAddresses.GetNodeIPs: the node's addresses of this family inside
        --nodeport-addresses (loopback left out, as kube-proxy's nftables mode does);
        None when every local address accepts NodePorts (MatchAll: no CIDR of this
        family given, or a zero CIDR)."""
        nets = [ipaddress.ip_network(c.strip(), strict=False) for c in self.nodeport_addresses]
        nets = [n for n in nets if n.version == self.family]
        if not nets or any(n.prefixlen == 0 for n in nets):
            return None
        out = []
        for ip in self.node_ips:
            addr = ipaddress.ip_address(ip)
            if addr.version == self.family and not addr.is_loopback and any(addr in n for n in nets):
                if ip not in out:
                    out.append(ip)
        return tuple(out)


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int
    ready: bool = field(default=True, compare=False)
    serving: bool = field(default=True, compare=False)
    terminating: bool = field(default=False, compare=False)
    local: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


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
    family: int = 4
    external_local: bool = False          # externalTrafficPolicy: Local
    internal_local: bool = False          # internalTrafficPolicy: Local
    source_ranges: tuple[str, ...] = ()   # loadBalancerSourceRanges
    health_check_node_port: int | None = None

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

    @property
    def external_policy_local(self) -> bool:
        """ExternalPolicyLocal(): ETP Local on an externally accessible port."""
        return self.external_local and self.external

    def uses_cluster_endpoints(self) -> bool:
        """UsesClusterEndpoints (pkg/proxy/serviceport.go): ITP Cluster, or any external
        destination ("even if the external traffic policy is Local, we need Cluster
        endpoints to implement short circuiting")."""
        return not self.internal_local or self.external

    def uses_local_endpoints(self) -> bool:
        return self.internal_local or self.external_policy_local

    @functools.cached_property
    def categorized(self) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...],
                                   tuple[Endpoint, ...], bool]:
        """CategorizeEndpoints: (cluster, local, all reachable, has any endpoints)."""
        eps = self.endpoints
        cluster: tuple[Endpoint, ...] = ()
        local: tuple[Endpoint, ...] = ()
        has_any = False
        if self.uses_cluster_endpoints():
            cluster = tuple(e for e in eps if e.ready)
            if not cluster:
                cluster = tuple(e for e in eps if e.serving and e.terminating)
            has_any = bool(cluster)
        if not self.uses_local_endpoints():
            return cluster, local, cluster, has_any
        local_ready = local_term = False
        for e in eps:
            if e.ready:
                has_any = True
                local_ready |= e.local
            elif e.serving and e.terminating:
                has_any = True
                local_term |= e.local
        if local_ready:
            local = tuple(e for e in eps if e.local and e.ready)
        elif local_term:
            local = tuple(e for e in eps if e.local and e.serving and e.terminating)
        if not self.uses_cluster_endpoints():
            return cluster, local, local, has_any
        reachable = tuple(sorted(set(cluster) | set(local), key=str))
        return cluster, local, reachable, has_any

    @property
    def cluster_endpoints(self) -> tuple[Endpoint, ...]:
        return self.categorized[0]

    @property
    def local_endpoints(self) -> tuple[Endpoint, ...]:
        return self.categorized[1]


class ModelError(ValueError):
    """The LB state cannot be expressed as kube-proxy service ports."""


def _endpoints(frontend: Frontend, hostname: str | None) -> tuple[Endpoint, ...]:
    eps: dict[str, Endpoint] = {}
    for b in frontend.endpoints:
        ep = Endpoint(str(b.address), b.port, ready=b.state == ACTIVE,
                      serving=b.state in (ACTIVE, TERMINATING), terminating=b.state == TERMINATING,
                      local=hostname is not None and b.node == hostname)
        eps[str(ep)] = ep
    return tuple(eps[k] for k in sorted(eps))


def service_ports(state: LbState, config: ProxierConfig | None = None) -> tuple[ServicePort, ...]:
    """The service ports of *state* in *config*'s family, sorted by servicePortName
    and protocol."""
    config = config or ProxierConfig()
    addr_type = ipaddress.IPv4Address if config.family == 4 else ipaddress.IPv6Address
    groups: dict[tuple[str, str, str], list[Frontend]] = {}
    for f in state.frontends:
        if f.type == "HostPort" or not isinstance(f.address, addr_type):
            continue
        groups.setdefault((f.service, f.port_name, f.protocol), []).append(f)
    out = []
    for (service, port_name, protocol), fes in groups.items():
        cluster = [f for f in fes if f.type == "ClusterIP"]
        if len(cluster) > 1:
            raise ModelError(f"{service}:{port_name}/{protocol}: several cluster IPs of one family")
        node_ports = {f.port for f in fes if f.type == "NodePort"}
        if len(node_ports) > 1:
            raise ModelError(f"{service}:{port_name}/{protocol}: several node ports")
        ext = sorted({str(f.address) for f in fes if f.type == "ExternalIP"})
        lbs = [f for f in fes if f.type == "LoadBalancer"]
        port_src = cluster or [f for f in fes if f.type in ("ExternalIP", "LoadBalancer")]
        if not port_src:
            raise ModelError(f"{service}:{port_name}/{protocol}: node port without a cluster IP")
        ref = port_src[0]
        ranges = sorted({str(n) for f in lbs for n in f.source_ranges})
        out.append(ServicePort(
            service, port_name, protocol,
            str(cluster[0].address) if cluster else None, ref.port,
            next(iter(node_ports)) if node_ports else None, tuple(ext),
            tuple(sorted({str(f.address) for f in lbs})),
            _endpoints(ref, config.hostname), ref.affinity_timeout, config.family,
            external_local=any(f.local_scope for f in fes),
            internal_local=any(f.internal_local for f in cluster),
            source_ranges=tuple(ranges),
            health_check_node_port=ref.health_check_node_port))
    return tuple(sorted(out, key=lambda sp: (sp.name, sp.proto)))
