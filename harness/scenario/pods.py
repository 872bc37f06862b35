"""Pod validation: containers and their ports, pod and host IPs (one per IP
family; inside the address plan when the load checks it), hostNetwork, and a
nodeName (one the topology has, cb-node0 .. cb-node253, when the load checks
the plan; else any DNS subdomain).  Clashes between pods are
harness.scenario.build's.
"""
from __future__ import annotations

from harness.addressing import AddressPlanError, node_index, node_ip4
from harness.scenario.errors import FieldError, PlanFieldError
from harness.scenario.fields import (
    PROTOCOLS,
    bool_field,
    check_keys,
    check_name,
    enum_field,
    int_field,
    list_field,
    mapping,
    plan_checked,
    project_address,
    str_field,
)
from harness.scenario.model import ContainerPort, IPAddress, ObjectMeta, Pod

NODE_MAX_INDEX = 253        # cb-node<i>: i picks the underlay address 198.19.128.<i + 1>


_POD_SPEC_KEYS = frozenset({"nodeName", "hostNetwork", "containers"})
_POD_SPEC_IGNORED = frozenset({
    "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "dnsConfig",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "schedulerName", "securityContext",
    "tolerations", "volumes", "nodeSelector", "affinity", "priority", "priorityClassName", "enableServiceLinks",
    "preemptionPolicy", "hostname", "subdomain", "imagePullSecrets", "runtimeClassName",
    "topologySpreadConstraints", "readinessGates", "overhead", "hostAliases", "hostPID", "hostIPC",
    "shareProcessNamespace", "initContainers", "ephemeralContainers", "setHostnameAsFQDN", "os",
    "schedulingGates", "resourceClaims", "hostUsers", "resources",
})
_CONTAINER_KEYS = frozenset({"name", "ports"})
_CONTAINER_IGNORED = frozenset({
    "image", "command", "args", "env", "envFrom", "resources", "workingDir", "imagePullPolicy", "securityContext",
    "readinessProbe", "livenessProbe", "startupProbe", "volumeMounts", "volumeDevices", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "stdin", "stdinOnce", "tty", "resizePolicy",
    "restartPolicy",
})
_CONTAINER_PORT_KEYS = frozenset({"name", "containerPort", "protocol", "hostPort"})
_CONTAINER_PORT_IGNORED = frozenset({"hostIP"})
_POD_STATUS_KEYS = frozenset({"podIP", "podIPs", "hostIP", "hostIPs"})
_POD_STATUS_IGNORED = frozenset({
    "phase", "conditions", "message", "reason", "nominatedNodeName", "startTime", "containerStatuses",
    "initContainerStatuses", "ephemeralContainerStatuses", "qosClass", "resize", "resourceClaimStatuses",
    "observedGeneration",
})
_IP_ITEM_KEYS = frozenset({"ip"})


def _ip_list(status: dict, list_key: str, single_key: str) -> tuple[IPAddress, ...]:
    """status.podIPs/podIP (or hostIPs/hostIP): primary first, one per family."""
    ips: list[IPAddress] = []
    for i, item in enumerate(list_field(status, list_key, "status")):
        path = f"status.{list_key}[{i}]"
        item = mapping(item, path)
        check_keys(item, path, _IP_ITEM_KEYS)
        addr = project_address(str_field(item, "ip", path, required=True), f"{path}.ip")
        if any(a.version == addr.version for a in ips):
            raise FieldError(f"{path}.ip", f"{addr}: at most one address per IP family")
        ips.append(addr)
    single = status.get(single_key)
    if single is not None:
        addr = project_address(single, f"status.{single_key}")
        if ips and ips[0] != addr:
            raise FieldError(f"status.{single_key}", f"{addr} does not match status.{list_key}[0] ({ips[0]})")
        if not ips:
            ips.append(addr)
    return tuple(ips)


def _topology_node(name: str, path: str) -> None:
    """Pods are placed on the topology's nodes, cb-node0 .. cb-node253 (one underlay
    address each): any other name is refused here, not when ``up`` builds nodes."""
    if not plan_checked():
        return
    try:
        node_ip4(node_index(name))
    except AddressPlanError:
        raise PlanFieldError(path, f"{name!r} is not a node of the topology (nodes are named "
                               f"cb-node0 .. cb-node{NODE_MAX_INDEX})") from None


def parse_pod(obj: dict, meta: ObjectMeta, cache: dict) -> Pod:
    spec = mapping(obj.get("spec") or {}, "spec")
    check_keys(spec, "spec", _POD_SPEC_KEYS | _POD_SPEC_IGNORED, hints=_POD_SPEC_KEYS)
    node_name = str_field(spec, "nodeName", "spec")
    if node_name is not None:
        check_name(node_name, "spec.nodeName", "dns-subdomain")
        _topology_node(node_name, "spec.nodeName")
    host_network = bool(bool_field(spec, "hostNetwork", "spec", False))

    ports: list[ContainerPort] = []
    port_names: set[str] = set()
    container_names: set[str] = set()
    for c, container in enumerate(list_field(spec, "containers", "spec")):
        cpath = f"spec.containers[{c}]"
        container = mapping(container, cpath)
        check_keys(container, cpath, _CONTAINER_KEYS | _CONTAINER_IGNORED, hints=_CONTAINER_KEYS)
        cname = check_name(str_field(container, "name", cpath, required=True), f"{cpath}.name", "dns-label")  # type: ignore[arg-type]
        if cname in container_names:
            raise FieldError(f"{cpath}.name", f"duplicate container name {cname!r}")
        container_names.add(cname)
        for p, port in enumerate(list_field(container, "ports", cpath)):
            ppath = f"{cpath}.ports[{p}]"
            port = mapping(port, ppath)
            check_keys(port, ppath, _CONTAINER_PORT_KEYS | _CONTAINER_PORT_IGNORED, hints=_CONTAINER_PORT_KEYS)
            name = str_field(port, "name", ppath) or ""
            if name:
                check_name(name, f"{ppath}.name", "port-name")
                if name in port_names:
                    raise FieldError(f"{ppath}.name", f"duplicate port name {name!r}")
                port_names.add(name)
            ports.append(ContainerPort(
                name=name,
                container_port=int_field(port, "containerPort", ppath, 1, 65535, required=True),  # type: ignore[arg-type]
                protocol=enum_field(port, "protocol", ppath, PROTOCOLS, "TCP"),  # type: ignore[arg-type]
                host_port=int_field(port, "hostPort", ppath, 1, 65535),
            ))

    status = mapping(obj.get("status") or {}, "status")
    check_keys(status, "status", _POD_STATUS_KEYS | _POD_STATUS_IGNORED, hints=_POD_STATUS_KEYS)
    pod_ips = _ip_list(status, "podIPs", "podIP")
    host_ips = _ip_list(status, "hostIPs", "hostIP")
    host_ip = host_ips[0] if host_ips else None
    if host_network and pod_ips and host_ip is not None and pod_ips[0] != host_ip:
        raise FieldError("status.podIP", f"{pod_ips[0]}: a hostNetwork pod's IP must be its hostIP ({host_ip})")
    return Pod(meta, node_name, host_network, pod_ips, host_ip, tuple(ports))
