"""Service validation: type, ports (targetPort; nodePort within
NODE_PORT_RANGE), ClusterIPs (inside the service CIDRs when the load checks the
address plan) with the ipFamilies /
ipFamilyPolicy the API server would settle, session affinity, traffic
policies and externalIPs.  A Service comes out as a ``ServiceDraft``:
harness.scenario.build allocates its missing ClusterIPs and nodePorts.
"""
from __future__ import annotations

import dataclasses

from harness.addressing import SERVICE_CIDR_V4, SERVICE_CIDR_V6
from harness.scenario.errors import FieldError, PlanFieldError
from harness.scenario.policy_fields import parse_cidr
from harness.scenario.fields import (
    IP_FAMILIES,
    PROTOCOLS,
    bool_field,
    check_keys,
    check_name,
    enum_field,
    int_field,
    int_value,
    ip_family,
    label_map,
    list_field,
    mapping,
    plan_checked,
    project_address,
    str_field,
)
from harness.scenario.model import DEFAULT_AFFINITY_TIMEOUT, IPAddress, ObjectMeta, Service, ServicePort

NODE_PORT_RANGE = (30000, 32767)


_SERVICE_SPEC_KEYS = frozenset({
    "type", "clusterIP", "clusterIPs", "ports", "selector", "sessionAffinity", "sessionAffinityConfig",
    "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy", "externalIPs",
    "allocateLoadBalancerNodePorts", "loadBalancerSourceRanges", "healthCheckNodePort",
})
_SERVICE_SPEC_IGNORED = frozenset({"publishNotReadyAddresses", "loadBalancerClass"})
_SERVICE_SPEC_UNSUPPORTED = frozenset({
    "externalName", "loadBalancerIP", "trafficDistribution",
})
_SERVICE_PORT_KEYS = frozenset({"name", "protocol", "port", "targetPort", "nodePort"})
_SERVICE_PORT_IGNORED = frozenset({"appProtocol"})
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
SERVICE_CIDRS = {"IPv4": SERVICE_CIDR_V4, "IPv6": SERVICE_CIDR_V6}


@dataclasses.dataclass
class ServiceDraft:
    """A parsed Service whose missing ClusterIPs / nodePorts are not allocated yet."""

    service: Service
    explicit_ips: tuple[IPAddress, ...]
    node_port_wanted: tuple[int, ...]  # indexes into ports needing an allocated nodePort
    health_check_wanted: bool = False  # LoadBalancer + externalTrafficPolicy Local without healthCheckNodePort


def _cluster_ip(value: object, path: str, family: str | None = None) -> IPAddress:
    addr = project_address(value, path)
    fam = ip_family(addr)
    cidr = SERVICE_CIDRS[fam]
    if family is not None and fam != family:
        raise FieldError(path, f"{addr} is not an {family} address")
    if not plan_checked():
        return addr                 # any address: the cluster's own service CIDR is not known
    if addr not in cidr:
        raise PlanFieldError(path, f"{addr} is outside the service CIDR {cidr}")
    if addr == cidr.network_address or (addr.version == 4 and addr == cidr.broadcast_address):
        raise FieldError(path, f"{addr} is reserved in the service CIDR {cidr}")
    return addr


def _service_ports(spec: dict, stype: str, headless: bool) -> tuple[list[ServicePort], list[int]]:
    raw_ports = list_field(spec, "ports", "spec")
    if not raw_ports and not headless:
        raise FieldError("spec.ports", "at least one port is required")
    ports: list[ServicePort] = []
    wanted: list[int] = []
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    external = stype in ("NodePort", "LoadBalancer")
    allocate_lb = bool_field(spec, "allocateLoadBalancerNodePorts", "spec", None)
    if allocate_lb is not None and stype != "LoadBalancer":
        raise FieldError("spec.allocateLoadBalancerNodePorts", "may only be set when type is LoadBalancer")
    allocate = stype == "NodePort" or (stype == "LoadBalancer" and allocate_lb is not False)
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        raw = mapping(raw, path)
        check_keys(raw, path, _SERVICE_PORT_KEYS | _SERVICE_PORT_IGNORED, hints=_SERVICE_PORT_KEYS)
        name = str_field(raw, "name", path) or ""
        if name:
            check_name(name, f"{path}.name", "dns-label")
            if name in names:
                raise FieldError(f"{path}.name", f"duplicate port name {name!r}")
            names.add(name)
        elif len(raw_ports) > 1:
            raise FieldError(f"{path}.name", "required when the Service has more than one port")
        protocol = enum_field(raw, "protocol", path, PROTOCOLS, "TCP")
        port = int_field(raw, "port", path, 1, 65535, required=True)
        if (port, protocol) in seen:
            raise FieldError(path, f"duplicate port {port}/{protocol}")
        seen.add((port, protocol))  # type: ignore[arg-type]
        target = raw.get("targetPort")
        if target is None:
            target = port
        elif isinstance(target, str):
            check_name(target, f"{path}.targetPort", "port-name")
        else:
            int_value(target, f"{path}.targetPort", 1, 65535)
            if protocol == "SCTP" and target != port:
                raise FieldError(f"{path}.targetPort", f"must equal port ({port}) for SCTP, got {target}: "
                                 "SCTP's CRC32c covers the ports, chainbench translates addresses only")
        node_port = raw.get("nodePort")
        if node_port is not None:
            if not external:
                raise FieldError(f"{path}.nodePort", "may only be set when type is NodePort or LoadBalancer")
            int_value(node_port, f"{path}.nodePort", *NODE_PORT_RANGE, what=" (the NodePort range)")
            if (node_port, protocol) in node_ports:
                raise FieldError(f"{path}.nodePort", f"duplicate nodePort {node_port}/{protocol}")
            node_ports.add((node_port, protocol))  # type: ignore[arg-type]
        elif allocate:
            wanted.append(i)
        ports.append(ServicePort(name, protocol, port, target, node_port))  # type: ignore[arg-type]
    return ports, wanted


def _service_addresses(spec: dict, stype: str) -> tuple[bool, tuple[IPAddress, ...], tuple[str, ...], str]:
    """(headless, explicit ClusterIPs, ipFamilies, ipFamilyPolicy) as the API server settles them."""
    families_raw = list_field(spec, "ipFamilies", "spec")
    families: list[str] = []
    for i, fam in enumerate(families_raw):
        if fam not in IP_FAMILIES:
            raise FieldError(f"spec.ipFamilies[{i}]", f"{fam!r} is not one of IPv4, IPv6")
        if fam in families:
            raise FieldError(f"spec.ipFamilies[{i}]", f"duplicate family {fam}")
        families.append(fam)
    policy = enum_field(spec, "ipFamilyPolicy", "spec", _FAMILY_POLICIES, None)

    single = str_field(spec, "clusterIP", "spec")
    listed = list_field(spec, "clusterIPs", "spec")
    if listed and single and listed[0] != single:
        raise FieldError("spec.clusterIPs", f"first entry {listed[0]!r} must equal spec.clusterIP ({single!r})")
    if len(listed) > 2:
        raise FieldError("spec.clusterIPs", "at most two addresses (one per IP family)")
    raw, base = (listed, "spec.clusterIPs") if listed else (([single] if single else []), "spec.clusterIP")
    headless = "None" in raw
    if headless:
        if raw != ["None"]:
            raise FieldError(base, "'None' (headless) cannot be combined with addresses")
        if stype != "ClusterIP":
            raise FieldError(base, f"'None' (headless) is only allowed for type ClusterIP, not {stype}")
        explicit: tuple[IPAddress, ...] = ()
    else:
        addrs: list[IPAddress] = []
        for i, value in enumerate(raw):
            path = f"{base}[{i}]" if listed else base
            addr = _cluster_ip(value, path, families[i] if i < len(families) else None)
            if any(a.version == addr.version for a in addrs):
                raise FieldError(path, f"{addr}: at most one address per IP family")
            addrs.append(addr)
        explicit = tuple(addrs)
        for addr in explicit[len(families):]:
            families.append(ip_family(addr))
    if not families:
        families = ["IPv4"]
    if policy is None:
        if len(families) > 1:
            raise FieldError("spec.ipFamilyPolicy", "must be PreferDualStack or RequireDualStack for two IP families")
        policy = "SingleStack"
    elif policy == "SingleStack" and len(families) > 1:
        raise FieldError("spec.ipFamilyPolicy", "SingleStack allows only one IP family")
    elif policy != "SingleStack" and len(families) == 1:
        families.append("IPv6" if families[0] == "IPv4" else "IPv4")
    return headless, explicit, tuple(families), policy


def parse_service(obj: dict, meta: ObjectMeta, cache: dict) -> ServiceDraft:
    spec = mapping(obj.get("spec") or {}, "spec")
    check_keys(spec, "spec", _SERVICE_SPEC_KEYS | _SERVICE_SPEC_IGNORED, _SERVICE_SPEC_UNSUPPORTED,
                hints=_SERVICE_SPEC_KEYS)
    if spec.get("type") == "ExternalName":
        raise FieldError("spec.type", "ExternalName is not supported by chainbench")
    stype = enum_field(spec, "type", "spec", _SERVICE_TYPES, "ClusterIP")
    headless, explicit, families, policy = _service_addresses(spec, stype)  # type: ignore[arg-type]
    ports, wanted = _service_ports(spec, stype, headless)  # type: ignore[arg-type]
    selector = label_map(spec.get("selector"), "spec.selector")

    affinity = enum_field(spec, "sessionAffinity", "spec", ("None", "ClientIP"), "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    config = spec.get("sessionAffinityConfig")
    if config is not None:
        path = "spec.sessionAffinityConfig"
        if affinity != "ClientIP":
            raise FieldError(path, "may only be set when sessionAffinity is ClientIP")
        config = mapping(config, path)
        check_keys(config, path, frozenset({"clientIP"}))
        client = mapping(config.get("clientIP") or {}, f"{path}.clientIP")
        check_keys(client, f"{path}.clientIP", frozenset({"timeoutSeconds"}))
        timeout = int_field(client, "timeoutSeconds", f"{path}.clientIP", 1, 86400) or DEFAULT_AFFINITY_TIMEOUT

    external_ips = tuple(project_address(v, f"spec.externalIPs[{i}]") for i, v in enumerate(list_field(spec, "externalIPs", "spec")))
    etp = enum_field(spec, "externalTrafficPolicy", "spec", ("Cluster", "Local"), None)
    if etp is not None and stype == "ClusterIP" and not external_ips:
        raise FieldError("spec.externalTrafficPolicy",
                         "may only be set for externally-accessible services (NodePort, LoadBalancer or externalIPs)")
    itp = enum_field(spec, "internalTrafficPolicy", "spec", ("Cluster", "Local"), "Cluster")

    ranges = tuple(parse_cidr(v, f"spec.loadBalancerSourceRanges[{i}]")
                   for i, v in enumerate(list_field(spec, "loadBalancerSourceRanges", "spec")))
    if ranges and stype != "LoadBalancer":
        raise FieldError("spec.loadBalancerSourceRanges", "may only be set when type is LoadBalancer")
    hc_node_port = int_field(spec, "healthCheckNodePort", "spec", *NODE_PORT_RANGE,
                             what=" (the NodePort range)")
    hc_needed = stype == "LoadBalancer" and etp == "Local"
    if hc_node_port is not None and not hc_needed:
        raise FieldError("spec.healthCheckNodePort",
                         "may only be set when type is LoadBalancer and externalTrafficPolicy is Local")
    lb_ips = _ingress_ips(obj, stype)

    service = Service(
        meta=meta, type=stype, cluster_ips=explicit, headless=headless, ports=tuple(ports),  # type: ignore[arg-type]
        selector=selector, session_affinity=affinity, affinity_timeout_seconds=timeout,  # type: ignore[arg-type]
        external_traffic_policy=etp or "Cluster", internal_traffic_policy=itp,  # type: ignore[arg-type]
        ip_families=families, external_ips=external_ips, ip_family_policy=policy,  # type: ignore[arg-type]
        load_balancer_source_ranges=ranges, health_check_node_port=hc_node_port, load_balancer_ips=lb_ips,
    )
    return ServiceDraft(service, explicit, tuple(wanted), hc_needed and hc_node_port is None)


def _ingress_ips(obj: dict, stype: str) -> tuple[IPAddress, ...]:
    """status.loadBalancer.ingress[].ip: the addresses a cloud load balancer gave the Service."""
    status = mapping(obj.get("status") or {}, "status")
    # status.conditions: the API server's (e.g. LoadBalancerPortsError); ignored.
    check_keys(status, "status", frozenset({"loadBalancer", "conditions"}), hints=frozenset({"loadBalancer"}))
    lb = mapping(status.get("loadBalancer") or {}, "status.loadBalancer")
    check_keys(lb, "status.loadBalancer", frozenset({"ingress"}))
    out: list[IPAddress] = []
    for i, item in enumerate(list_field(lb, "ingress", "status.loadBalancer")):
        path = f"status.loadBalancer.ingress[{i}]"
        item = mapping(item, path)
        check_keys(item, path, frozenset({"ip", "ipMode", "hostname", "ports"}))
        if stype != "LoadBalancer":
            raise FieldError(path, "only a Service of type LoadBalancer has load-balancer ingress")
        if item.get("ip") is None:
            raise FieldError(f"{path}.ip", "required (a hostname-only ingress is not supported by chainbench)")
        addr = project_address(item["ip"], f"{path}.ip")
        if addr in out:
            raise FieldError(f"{path}.ip", f"duplicate ingress IP {addr}")
        out.append(addr)
    return tuple(out)
