"""YAML → scenario model, validated the way the Kubernetes API server would.

Owns reading the document stream, per-kind validation, the cross-object
checks (duplicates, address clashes, frontends) and the deterministic
ClusterIP / nodePort allocation.  Everything fails with a one-line
``ScenarioError`` (first error wins).

Reading
    A stream whose documents are all one-line JSON objects (what the
    templates in ``bench/scenarios`` emit; JSON is YAML) is read with the
    ``json`` module: PyYAML, even with ``CSafeLoader``, needs over a minute
    for 100,000 services.  Anything else goes through PyYAML (``CSafeLoader``
    when available) with duplicate mapping keys rejected.  Empty documents
    are skipped but still counted in the 1-based document index.

Allocation (for Services that do not set ``clusterIP``/``nodePort``)
    Services are visited in (namespace, name) order, never document order.
    Each missing ClusterIP gets the lowest free address of SERVICE_CIDR_V4
    (or SERVICE_CIDR_V6) above the network address; "free" means not
    written explicitly anywhere in the scenario and not allocated before.
    Missing nodePorts get the lowest free port from 30000 the same way,
    visiting (namespace, name, port index).

Deviation from Kubernetes
    Services may share a ClusterIP as long as every frontend (ClusterIP,
    port, protocol) is unique: 198.19.0.0/17 holds only 32,766 VIPs and the
    benchmarks need 100,000 services.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import gc
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import yaml

from harness.addressing import (
    SERVICE_CIDR_V4,
    SERVICE_CIDR_V6,
    AddressPlanError,
    check_project_address,
    node_index,
    node_ip4,
)
from harness.scenario.errors import FieldError, ScenarioError
from harness.scenario.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    NAMESPACE_NAME_LABEL,
    SERVICE_NAME_LABEL,
    CiliumNetworkPolicy,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPAddress,
    Namespace,
    NetworkPolicy,
    ObjectMeta,
    Pod,
    Scenario,
    Service,
    ServicePort,
)

__all__ = ["load_scenario", "load_scenario_text", "scenario_from_documents", "NODE_PORT_RANGE"]

NODE_PORT_RANGE = (30000, 32767)
PROTOCOLS = ("TCP", "UDP", "SCTP")
NODE_MAX_INDEX = 253        # cb-node<i>: i picks the underlay address 198.19.128.<i + 1>

# =========================================================================== reading


_YamlBase: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_YamlBase):  # type: ignore[misc, valid-type]
    """Safe loader (C-accelerated when available) that rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


_DOC_START = re.compile(r"^---[ \t\r]*$", re.M)


class _NotJson(Exception):
    """The stream is not made of one-line JSON documents: read it as YAML instead."""


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _NotJson("duplicate key")  # the YAML path reports it with a line number
    return d


def _json_constant(name: str) -> Any:
    raise _NotJson(name)  # NaN/Infinity are not YAML


def _comment_only(chunk: str) -> bool:
    return all(not line.strip() or line.lstrip().startswith("#") for line in chunk.splitlines())


def _json_document(chunk: str) -> Any:
    body = chunk.strip()
    if not body or (body[0] == "#" and _comment_only(body)):
        return None
    if body[0] != "{":
        raise _NotJson("not a JSON object")
    try:
        return json.loads(body, object_pairs_hook=_json_pairs, parse_constant=_json_constant)
    except (ValueError, RecursionError):
        raise _NotJson("invalid JSON") from None


def _json_documents(text: str) -> Iterator[Any]:
    """The documents of *text*, lazily, if each is a JSON object; raises _NotJson otherwise.

    Document boundaries are lines that are exactly ``---``; an empty document
    after a ``---`` yields None (and counts), an empty preamble does not.
    """
    pos = 0
    for match in _DOC_START.finditer(text):
        doc = _json_document(text[pos:match.start()])
        if pos or doc is not None:
            yield doc
        pos = match.end()
    doc = _json_document(text[pos:])
    if pos or doc is not None:
        yield doc


def _yaml_error(err: yaml.YAMLError, text: str, source: str) -> ScenarioError:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        char = chr(err.character) if isinstance(err.character, int) else err.character
        return ScenarioError(f"invalid YAML: unacceptable character {char!r}", source=source, line=line)
    if mark is None:
        return ScenarioError(f"invalid YAML: {problem or err}", source=source)
    return ScenarioError(f"invalid YAML: {problem or err}", source=source, line=mark.line + 1, column=mark.column + 1)


def _yaml_documents(text: str, source: str) -> Iterator[Any]:
    loader = _StrictLoader(text)
    try:
        while True:
            try:
                if not loader.check_data():
                    return
                doc = loader.get_data()
            except yaml.YAMLError as err:
                raise _yaml_error(err, text, source) from None
            except RecursionError:
                raise ScenarioError("invalid YAML: nesting too deep", source=source) from None
            yield doc
    finally:
        loader.dispose()


class _GcPaused:
    """Pause the cyclic GC while building large object graphs (halves load time)."""

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


def load_scenario_text(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate a multi-document YAML scenario given as text.  A text
    without any object (empty, only comments or empty documents) is refused."""
    if text.startswith("\ufeff"):
        text = text[1:]
    with _GcPaused():
        try:
            scenario = scenario_from_documents(_json_documents(text), source)
        except _NotJson:
            scenario = scenario_from_documents(_yaml_documents(text, source), source)
    if not (scenario.pods or scenario.services or scenario.endpoint_slices or scenario.namespaces
            or scenario.network_policies or scenario.cilium_network_policies):
        raise ScenarioError("no objects: an empty scenario (expected Kubernetes objects: Pods, "
                            "Services, ...)", source=source)
    return scenario


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read, parse and validate the scenario file *path*."""
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ScenarioError(f"not UTF-8 text ({err.reason} at byte {err.start})", source=source) from None
    except OSError as err:
        raise ScenarioError(f"cannot read: {err.strerror or err}", source=source) from None
    return load_scenario_text(text, source)


# ==================================================================== field helpers


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _mapping(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise FieldError(path, f"must be a mapping, got {_type_name(value)}")
    return value


def _check_keys(
    m: dict,
    path: str,
    allowed: frozenset[str],
    unsupported: frozenset[str] = frozenset(),
    hints: Iterable[str] | None = None,
) -> None:
    """Reject keys outside *allowed*; *unsupported* get a clearer message."""
    if m.keys() <= allowed:
        return
    for key in m:
        if key in allowed:
            continue
        if not isinstance(key, str):
            raise FieldError(path, f"keys must be strings, got {_type_name(key)}")
        if key in unsupported:
            raise FieldError(_join(path, key), "not supported by chainbench")
        close = difflib.get_close_matches(key, sorted(hints if hints is not None else allowed), 1)
        raise FieldError(_join(path, key), "unknown field" + (f" (did you mean {close[0]!r}?)" if close else ""))


def _str(m: dict, key: str, path: str, *, required: bool = False) -> str | None:
    value = m.get(key)
    if value is None:
        if required:
            raise FieldError(_join(path, key), "required")
        return None
    if not isinstance(value, str):
        raise FieldError(_join(path, key), f"must be a string, got {_type_name(value)}")
    if required and not value:
        raise FieldError(_join(path, key), "required")
    return value


def _bool(m: dict, key: str, path: str, default: bool | None) -> bool | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(_join(path, key), f"must be a boolean, got {_type_name(value)}")
    return value


def _int_value(value: object, path: str, lo: int, hi: int, what: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(path, f"must be an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise FieldError(path, f"must be between {lo} and {hi}{what}, got {value}")
    return value


def _int(m: dict, key: str, path: str, lo: int, hi: int, *, required: bool = False, what: str = "") -> int | None:
    value = m.get(key)
    if value is None:
        if required:
            raise FieldError(_join(path, key), "required")
        return None
    return _int_value(value, _join(path, key), lo, hi, what)


def _list(m: dict, key: str, path: str) -> list:
    value = m.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(_join(path, key), f"must be a list, got {_type_name(value)}")
    return value


def _enum(m: dict, key: str, path: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        got = repr(value) if isinstance(value, str) else _type_name(value)
        raise FieldError(_join(path, key), f"must be one of {', '.join(choices)}, got {got}")
    return value


# ------------------------------------------------------------- names and labels

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


@functools.lru_cache(maxsize=4096)
def _name_problem(rule: str, value: str) -> str | None:
    """Why *value* breaks the Kubernetes naming *rule*, or None."""
    if rule == "dns-label":
        if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
            return None
        return (f"{value!r} is not a valid DNS-1123 label (at most 63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit)")
    if rule == "dns-subdomain":
        if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
            return None
        return (f"{value!r} is not a valid DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 253 characters)")
    if rule == "dns-1035":
        if len(value) <= 63 and _DNS1035_LABEL.fullmatch(value):
            return None
        return (f"{value!r} is not a valid DNS-1035 label (at most 63 lowercase letters, digits or '-', "
                "starting with a letter and ending with a letter or digit)")
    if rule == "port-name":
        if (len(value) <= 15 and _IANA_SVC_NAME.fullmatch(value) and "--" not in value
                and any("a" <= c <= "z" for c in value)):
            return None
        return (f"{value!r} is not a valid port name (at most 15 lowercase letters, digits or '-', "
                "with at least one letter, no '--', not starting or ending with '-')")
    if rule == "label-key":
        prefix, slash, name = value.rpartition("/")
        if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
            return f"{value!r} is not a valid label key: the prefix must be a DNS-1123 subdomain"
        if not name or len(name) > 63 or not _QUALIFIED_PART.fullmatch(name):
            return (f"{value!r} is not a valid label key (an optional DNS subdomain prefix and '/', then at "
                    "most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)")
        return None
    if rule == "label-value":
        if not value or (len(value) <= 63 and _QUALIFIED_PART.fullmatch(value)):
            return None
        return (f"{value!r} is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric)")
    raise ValueError(rule)


def _name(value: str, path: str, rule: str) -> str:
    problem = _name_problem(rule, value)
    if problem:
        raise FieldError(path, problem)
    return value


def _string_map(value: object, path: str, key_rule: str, value_rule: str | None) -> dict[str, str]:
    if value is None:
        return {}
    m = _mapping(value, path)
    for key, val in m.items():
        if not isinstance(key, str):
            raise FieldError(path, f"keys must be strings, got {_type_name(key)}")
        _name(key.lower() if key_rule == "annotation-key" else key, f"{path}[{key}]", "label-key")
        if not isinstance(val, str):
            raise FieldError(f"{path}[{key}]", f"must be a string, got {_type_name(val)}")
        if value_rule:
            _name(val, f"{path}[{key}]", value_rule)
    return m


def _labels(value: object, path: str) -> dict[str, str]:
    return _string_map(value, path, "label-key", "label-value")


# ------------------------------------------------------------------ addresses


@functools.lru_cache(maxsize=65536)
def _checked_address(value: str) -> IPAddress | str:
    try:
        return check_project_address(value)
    except AddressPlanError as err:
        return str(err)


def _address(value: object, path: str) -> IPAddress:
    """A concrete address: must be a string inside the project's address plan."""
    if not isinstance(value, str):
        raise FieldError(path, f"must be an IP address string, got {_type_name(value)}")
    result = _checked_address(value)
    if isinstance(result, str):
        raise FieldError(path, result)
    return result


def _family(addr: IPAddress) -> str:
    return "IPv4" if addr.version == 4 else "IPv6"


def _cidr(value: object, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR inside a policy: a match rule, so any valid prefix is accepted."""
    if not isinstance(value, str):
        raise FieldError(path, f"must be a CIDR string, got {_type_name(value)}")
    try:
        if "/" not in value:
            raise ValueError
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FieldError(path, f"{value!r} is not a valid CIDR") from None


def _except_list(values: list, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, path: str) -> None:
    for i, value in enumerate(values):
        sub = _cidr(value, f"{path}[{i}]")
        if sub.version != cidr.version or not sub.subnet_of(cidr) or sub.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
            raise FieldError(f"{path}[{i}]", f"{value} must be a strict subset of {cidr}")


# ========================================================================= objects

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
    m = _mapping(raw, "metadata")
    _check_keys(m, "metadata", _META_KEYS | _META_IGNORED, hints=_META_KEYS)
    name = _name(_str(m, "name", "metadata", required=True), "metadata.name", name_rule)  # type: ignore[arg-type]
    namespace = _str(m, "namespace", "metadata") or "default"
    _name(namespace, "metadata.namespace", "dns-label")
    labels = _labels(m.get("labels"), "metadata.labels")
    annotations = _string_map(m.get("annotations"), "metadata.annotations", "annotation-key", None)
    return ObjectMeta(name, namespace, labels, annotations, document, prefix)


# ----------------------------------------------------------------------------- Pod

_POD_SPEC_KEYS = frozenset({"nodeName", "hostNetwork", "containers"})
_POD_SPEC_IGNORED = frozenset({
    "restartPolicy", "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "dnsConfig",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "schedulerName", "securityContext",
    "tolerations", "volumes", "nodeSelector", "affinity", "priority", "priorityClassName", "enableServiceLinks",
    "preemptionPolicy", "hostname", "subdomain", "imagePullSecrets", "runtimeClassName",
    "topologySpreadConstraints", "readinessGates", "overhead", "hostAliases", "hostPID", "hostIPC",
    "shareProcessNamespace", "initContainers", "ephemeralContainers", "setHostnameAsFQDN", "os",
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
    for i, item in enumerate(_list(status, list_key, "status")):
        path = f"status.{list_key}[{i}]"
        item = _mapping(item, path)
        _check_keys(item, path, _IP_ITEM_KEYS)
        addr = _address(_str(item, "ip", path, required=True), f"{path}.ip")
        if any(a.version == addr.version for a in ips):
            raise FieldError(f"{path}.ip", f"{addr}: at most one address per IP family")
        ips.append(addr)
    single = status.get(single_key)
    if single is not None:
        addr = _address(single, f"status.{single_key}")
        if ips and ips[0] != addr:
            raise FieldError(f"status.{single_key}", f"{addr} does not match status.{list_key}[0] ({ips[0]})")
        if not ips:
            ips.append(addr)
    return tuple(ips)


def _topology_node(name: str, path: str) -> None:
    """Pods are placed on the topology's nodes, cb-node0 .. cb-node253 (one underlay
    address each): any other name is refused here, not when ``up`` builds nodes."""
    try:
        node_ip4(node_index(name))
    except AddressPlanError:
        raise FieldError(path, f"{name!r} is not a node of the topology (nodes are named "
                               f"cb-node0 .. cb-node{NODE_MAX_INDEX})") from None


def _parse_pod(obj: dict, meta: ObjectMeta, cache: dict) -> Pod:
    spec = _mapping(obj.get("spec") or {}, "spec")
    _check_keys(spec, "spec", _POD_SPEC_KEYS | _POD_SPEC_IGNORED, hints=_POD_SPEC_KEYS)
    node_name = _str(spec, "nodeName", "spec")
    if node_name is not None:
        _name(node_name, "spec.nodeName", "dns-subdomain")
        _topology_node(node_name, "spec.nodeName")
    host_network = bool(_bool(spec, "hostNetwork", "spec", False))

    ports: list[ContainerPort] = []
    port_names: set[str] = set()
    container_names: set[str] = set()
    for c, container in enumerate(_list(spec, "containers", "spec")):
        cpath = f"spec.containers[{c}]"
        container = _mapping(container, cpath)
        _check_keys(container, cpath, _CONTAINER_KEYS | _CONTAINER_IGNORED, hints=_CONTAINER_KEYS)
        cname = _name(_str(container, "name", cpath, required=True), f"{cpath}.name", "dns-label")  # type: ignore[arg-type]
        if cname in container_names:
            raise FieldError(f"{cpath}.name", f"duplicate container name {cname!r}")
        container_names.add(cname)
        for p, port in enumerate(_list(container, "ports", cpath)):
            ppath = f"{cpath}.ports[{p}]"
            port = _mapping(port, ppath)
            _check_keys(port, ppath, _CONTAINER_PORT_KEYS | _CONTAINER_PORT_IGNORED, hints=_CONTAINER_PORT_KEYS)
            name = _str(port, "name", ppath) or ""
            if name:
                _name(name, f"{ppath}.name", "port-name")
                if name in port_names:
                    raise FieldError(f"{ppath}.name", f"duplicate port name {name!r}")
                port_names.add(name)
            ports.append(ContainerPort(
                name=name,
                container_port=_int(port, "containerPort", ppath, 1, 65535, required=True),  # type: ignore[arg-type]
                protocol=_enum(port, "protocol", ppath, PROTOCOLS, "TCP"),  # type: ignore[arg-type]
                host_port=_int(port, "hostPort", ppath, 1, 65535),
            ))

    status = _mapping(obj.get("status") or {}, "status")
    _check_keys(status, "status", _POD_STATUS_KEYS | _POD_STATUS_IGNORED, hints=_POD_STATUS_KEYS)
    pod_ips = _ip_list(status, "podIPs", "podIP")
    host_ips = _ip_list(status, "hostIPs", "hostIP")
    host_ip = host_ips[0] if host_ips else None
    if host_network and pod_ips and host_ip is not None and pod_ips[0] != host_ip:
        raise FieldError("status.podIP", f"{pod_ips[0]}: a hostNetwork pod's IP must be its hostIP ({host_ip})")
    return Pod(meta, node_name, host_network, pod_ips, host_ip, tuple(ports))


# ------------------------------------------------------------------------- Service

_SERVICE_SPEC_KEYS = frozenset({
    "type", "clusterIP", "clusterIPs", "ports", "selector", "sessionAffinity", "sessionAffinityConfig",
    "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilies", "ipFamilyPolicy", "externalIPs",
    "allocateLoadBalancerNodePorts",
})
_SERVICE_SPEC_IGNORED = frozenset({"publishNotReadyAddresses", "loadBalancerClass"})
_SERVICE_SPEC_UNSUPPORTED = frozenset({
    "externalName", "loadBalancerIP", "loadBalancerSourceRanges", "healthCheckNodePort", "trafficDistribution",
})
_SERVICE_PORT_KEYS = frozenset({"name", "protocol", "port", "targetPort", "nodePort"})
_SERVICE_PORT_IGNORED = frozenset({"appProtocol"})
_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_IP_FAMILIES = ("IPv4", "IPv6")
_FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
_SERVICE_CIDRS = {"IPv4": SERVICE_CIDR_V4, "IPv6": SERVICE_CIDR_V6}


@dataclasses.dataclass
class _ServiceDraft:
    """A parsed Service whose missing ClusterIPs / nodePorts are not allocated yet."""

    service: Service
    explicit_ips: tuple[IPAddress, ...]
    node_port_wanted: tuple[int, ...]  # indexes into ports needing an allocated nodePort


def _cluster_ip(value: object, path: str, family: str | None = None) -> IPAddress:
    addr = _address(value, path)
    fam = _family(addr)
    cidr = _SERVICE_CIDRS[fam]
    if family is not None and fam != family:
        raise FieldError(path, f"{addr} is not an {family} address")
    if addr not in cidr:
        raise FieldError(path, f"{addr} is outside the service CIDR {cidr}")
    if addr == cidr.network_address or (addr.version == 4 and addr == cidr.broadcast_address):
        raise FieldError(path, f"{addr} is reserved in the service CIDR {cidr}")
    return addr


def _service_ports(spec: dict, stype: str, headless: bool) -> tuple[list[ServicePort], list[int]]:
    raw_ports = _list(spec, "ports", "spec")
    if not raw_ports and not headless:
        raise FieldError("spec.ports", "at least one port is required")
    ports: list[ServicePort] = []
    wanted: list[int] = []
    names: set[str] = set()
    seen: set[tuple[int, str]] = set()
    node_ports: set[tuple[int, str]] = set()
    external = stype in ("NodePort", "LoadBalancer")
    allocate_lb = _bool(spec, "allocateLoadBalancerNodePorts", "spec", None)
    if allocate_lb is not None and stype != "LoadBalancer":
        raise FieldError("spec.allocateLoadBalancerNodePorts", "may only be set when type is LoadBalancer")
    allocate = stype == "NodePort" or (stype == "LoadBalancer" and allocate_lb is not False)
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        raw = _mapping(raw, path)
        _check_keys(raw, path, _SERVICE_PORT_KEYS | _SERVICE_PORT_IGNORED, hints=_SERVICE_PORT_KEYS)
        name = _str(raw, "name", path) or ""
        if name:
            _name(name, f"{path}.name", "dns-label")
            if name in names:
                raise FieldError(f"{path}.name", f"duplicate port name {name!r}")
            names.add(name)
        elif len(raw_ports) > 1:
            raise FieldError(f"{path}.name", "required when the Service has more than one port")
        protocol = _enum(raw, "protocol", path, PROTOCOLS, "TCP")
        port = _int(raw, "port", path, 1, 65535, required=True)
        if (port, protocol) in seen:
            raise FieldError(path, f"duplicate port {port}/{protocol}")
        seen.add((port, protocol))  # type: ignore[arg-type]
        target = raw.get("targetPort")
        if target is None:
            target = port
        elif isinstance(target, str):
            _name(target, f"{path}.targetPort", "port-name")
        else:
            _int_value(target, f"{path}.targetPort", 1, 65535)
            if protocol == "SCTP" and target != port:
                raise FieldError(f"{path}.targetPort", f"must equal port ({port}) for SCTP, got {target}: "
                                 "SCTP's CRC32c covers the ports, chainbench translates addresses only")
        node_port = raw.get("nodePort")
        if node_port is not None:
            if not external:
                raise FieldError(f"{path}.nodePort", "may only be set when type is NodePort or LoadBalancer")
            _int_value(node_port, f"{path}.nodePort", *NODE_PORT_RANGE, what=" (the NodePort range)")
            if (node_port, protocol) in node_ports:
                raise FieldError(f"{path}.nodePort", f"duplicate nodePort {node_port}/{protocol}")
            node_ports.add((node_port, protocol))  # type: ignore[arg-type]
        elif allocate:
            wanted.append(i)
        ports.append(ServicePort(name, protocol, port, target, node_port))  # type: ignore[arg-type]
    return ports, wanted


def _service_addresses(spec: dict, stype: str) -> tuple[bool, tuple[IPAddress, ...], tuple[str, ...], str]:
    """(headless, explicit ClusterIPs, ipFamilies, ipFamilyPolicy) as the API server settles them."""
    families_raw = _list(spec, "ipFamilies", "spec")
    families: list[str] = []
    for i, fam in enumerate(families_raw):
        if fam not in _IP_FAMILIES:
            raise FieldError(f"spec.ipFamilies[{i}]", f"{fam!r} is not one of IPv4, IPv6")
        if fam in families:
            raise FieldError(f"spec.ipFamilies[{i}]", f"duplicate family {fam}")
        families.append(fam)
    policy = _enum(spec, "ipFamilyPolicy", "spec", _FAMILY_POLICIES, None)

    single = _str(spec, "clusterIP", "spec")
    listed = _list(spec, "clusterIPs", "spec")
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
            families.append(_family(addr))
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


def _parse_service(obj: dict, meta: ObjectMeta, cache: dict) -> _ServiceDraft:
    spec = _mapping(obj.get("spec") or {}, "spec")
    _check_keys(spec, "spec", _SERVICE_SPEC_KEYS | _SERVICE_SPEC_IGNORED, _SERVICE_SPEC_UNSUPPORTED,
                hints=_SERVICE_SPEC_KEYS)
    if spec.get("type") == "ExternalName":
        raise FieldError("spec.type", "ExternalName is not supported by chainbench")
    stype = _enum(spec, "type", "spec", _SERVICE_TYPES, "ClusterIP")
    headless, explicit, families, policy = _service_addresses(spec, stype)  # type: ignore[arg-type]
    ports, wanted = _service_ports(spec, stype, headless)  # type: ignore[arg-type]
    selector = _labels(spec.get("selector"), "spec.selector")

    affinity = _enum(spec, "sessionAffinity", "spec", ("None", "ClientIP"), "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    config = spec.get("sessionAffinityConfig")
    if config is not None:
        path = "spec.sessionAffinityConfig"
        if affinity != "ClientIP":
            raise FieldError(path, "may only be set when sessionAffinity is ClientIP")
        config = _mapping(config, path)
        _check_keys(config, path, frozenset({"clientIP"}))
        client = _mapping(config.get("clientIP") or {}, f"{path}.clientIP")
        _check_keys(client, f"{path}.clientIP", frozenset({"timeoutSeconds"}))
        timeout = _int(client, "timeoutSeconds", f"{path}.clientIP", 1, 86400) or DEFAULT_AFFINITY_TIMEOUT

    external_ips = tuple(_address(v, f"spec.externalIPs[{i}]") for i, v in enumerate(_list(spec, "externalIPs", "spec")))
    etp = _enum(spec, "externalTrafficPolicy", "spec", ("Cluster", "Local"), None)
    if etp is not None and stype == "ClusterIP" and not external_ips:
        raise FieldError("spec.externalTrafficPolicy",
                         "may only be set for externally-accessible services (NodePort, LoadBalancer or externalIPs)")
    itp = _enum(spec, "internalTrafficPolicy", "spec", ("Cluster", "Local"), "Cluster")

    service = Service(
        meta=meta, type=stype, cluster_ips=explicit, headless=headless, ports=tuple(ports),  # type: ignore[arg-type]
        selector=selector, session_affinity=affinity, affinity_timeout_seconds=timeout,  # type: ignore[arg-type]
        external_traffic_policy=etp or "Cluster", internal_traffic_policy=itp,  # type: ignore[arg-type]
        ip_families=families, external_ips=external_ips, ip_family_policy=policy,  # type: ignore[arg-type]
    )
    return _ServiceDraft(service, explicit, tuple(wanted))


# ------------------------------------------------------------------- EndpointSlice

_SLICE_KEYS = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
_ENDPOINT_KEYS = frozenset({"addresses", "conditions", "nodeName", "targetRef", "zone"})
_ENDPOINT_IGNORED = frozenset({"hostname", "hints", "deprecatedTopology"})
_ENDPOINT_ALLOWED = _ENDPOINT_KEYS | _ENDPOINT_IGNORED
_CONDITION_KEYS = frozenset({"ready", "serving", "terminating"})
_TARGET_REF_KEYS = frozenset({"kind", "namespace", "name"})
_TARGET_REF_IGNORED = frozenset({"uid", "apiVersion", "resourceVersion", "fieldPath"})
_TARGET_REF_ALLOWED = _TARGET_REF_KEYS | _TARGET_REF_IGNORED
_ENDPOINT_PORT_KEYS = frozenset({"name", "protocol", "port"})
_ENDPOINT_PORT_IGNORED = frozenset({"appProtocol"})


def _parse_endpoint(raw: object, path: str, version: int, address_type: str, namespace: str,
                    interned: dict[tuple, Endpoint]) -> Endpoint:
    """One endpoint.  Hot path (a million calls for 100k services): paths are built only on error,
    and equal endpoints are interned, so services sharing backends share Endpoint objects."""
    ep = raw if type(raw) is dict else _mapping(raw, path)
    if not ep.keys() <= _ENDPOINT_ALLOWED:
        _check_keys(ep, path, _ENDPOINT_ALLOWED, hints=_ENDPOINT_KEYS)
    raw_addrs = ep.get("addresses")
    if type(raw_addrs) is not list or not raw_addrs or len(raw_addrs) > 100:
        if raw_addrs is not None and not isinstance(raw_addrs, list):
            raise FieldError(f"{path}.addresses", f"must be a list, got {_type_name(raw_addrs)}")
        raise FieldError(f"{path}.addresses", "at most 100 addresses" if raw_addrs
                         else "at least one address is required")
    addrs = []
    for value in raw_addrs:
        addr = _checked_address(value) if type(value) is str else None
        if addr is None or type(addr) is str or addr.version != version:  # type: ignore[union-attr]
            apath = f"{path}.addresses[{len(addrs)}]"
            addr = _address(value, apath)
            raise FieldError(apath, f"{addr} is not an {address_type} address (addressType is {address_type})")
        addrs.append(addr)

    cond = ep.get("conditions")
    if cond is None:
        ready, serving, terminating = True, True, False
    else:
        cpath = f"{path}.conditions"
        cond = _mapping(cond, cpath)
        _check_keys(cond, cpath, _CONDITION_KEYS)
        ready = _bool(cond, "ready", cpath, True)
        serving = _bool(cond, "serving", cpath, None)
        serving = ready if serving is None else serving
        terminating = _bool(cond, "terminating", cpath, False)
    node_name = ep.get("nodeName")
    if node_name is not None and (type(node_name) is not str or _name_problem("dns-subdomain", node_name)):
        _name(_str(ep, "nodeName", path), f"{path}.nodeName", "dns-subdomain")  # type: ignore[arg-type]
    ref_ns = ref_name = None
    ref = ep.get("targetRef")
    if ref is not None:
        rpath = f"{path}.targetRef"
        ref = _mapping(ref, rpath)
        if not ref.keys() <= _TARGET_REF_ALLOWED:
            _check_keys(ref, rpath, _TARGET_REF_ALLOWED, hints=_TARGET_REF_KEYS)
        kind = _str(ref, "kind", rpath)
        if kind not in (None, "Pod"):
            raise FieldError(f"{rpath}.kind", f"only Pod targetRefs are supported, got {kind!r}")
        ref_name = _name(_str(ref, "name", rpath, required=True), f"{rpath}.name", "dns-subdomain")  # type: ignore[arg-type]
        ref_ns = _str(ref, "namespace", rpath) or namespace
        _name(ref_ns, f"{rpath}.namespace", "dns-label")
    zone = _str(ep, "zone", path)
    key = (tuple(raw_addrs), ready, serving, terminating, node_name, ref_ns, ref_name, zone)
    endpoint = interned.get(key)
    if endpoint is None:
        endpoint = interned[key] = Endpoint(tuple(addrs), *key[1:])  # type: ignore[arg-type]
    return endpoint


def _parse_endpoint_slice(obj: dict, meta: ObjectMeta, cache: dict) -> EndpointSlice:
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if service_name is None:
        raise FieldError("metadata.labels", f"missing label {SERVICE_NAME_LABEL} naming the Service")
    _name(service_name, f"metadata.labels[{SERVICE_NAME_LABEL}]", "dns-1035")
    if obj.get("addressType") == "FQDN":
        raise FieldError("addressType", "FQDN is not supported by chainbench")
    address_type = _enum(obj, "addressType", "", ("IPv4", "IPv6"), None)
    if address_type is None:
        raise FieldError("addressType", "required")
    version = 4 if address_type == "IPv4" else 6
    raw_endpoints = _list(obj, "endpoints", "")
    if len(raw_endpoints) > 1000:
        raise FieldError("endpoints", "at most 1000 endpoints per EndpointSlice")
    endpoints = tuple(
        _parse_endpoint(raw, f"endpoints[{i}]", version, address_type, meta.namespace, cache)
        for i, raw in enumerate(raw_endpoints)
    )
    ports: list[EndpointPort] = []
    names: set[str] = set()
    raw_ports = _list(obj, "ports", "")
    if len(raw_ports) > 100:
        raise FieldError("ports", "at most 100 ports per EndpointSlice")
    for i, raw in enumerate(raw_ports):
        path = f"ports[{i}]"
        raw = _mapping(raw, path)
        _check_keys(raw, path, _ENDPOINT_PORT_KEYS | _ENDPOINT_PORT_IGNORED, hints=_ENDPOINT_PORT_KEYS)
        name = _str(raw, "name", path) or ""
        if name:
            _name(name, f"{path}.name", "dns-label")
        if name in names:
            raise FieldError(f"{path}.name", f"duplicate port name {name!r}")
        names.add(name)
        ports.append(EndpointPort(name, _enum(raw, "protocol", path, PROTOCOLS, "TCP"),  # type: ignore[arg-type]
                                  _int(raw, "port", path, 1, 65535)))
    return EndpointSlice(meta, service_name, address_type, endpoints, tuple(ports))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- selectors

_SELECTOR_KEYS = frozenset({"matchLabels", "matchExpressions"})
_EXPRESSION_KEYS = frozenset({"key", "operator", "values"})
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_CILIUM_LABEL_SOURCES = frozenset({"any", "k8s", "reserved", "unspec", "container", "cidr", "fqdn", "kvstore",
                                   "cilium-generated"})


def _selector_key(key: object, path: str, cilium: bool) -> None:
    if not isinstance(key, str):
        raise FieldError(path, f"label keys must be strings, got {_type_name(key)}")
    if cilium and ":" in key:
        source, _, key = key.partition(":")
        if source not in _CILIUM_LABEL_SOURCES:
            raise FieldError(path, f"unknown label source {source!r} (known: {', '.join(sorted(_CILIUM_LABEL_SOURCES))})")
    _name(key, path, "label-key")


def _label_selector(value: object, path: str, *, cilium: bool = False) -> None:
    """A metav1.LabelSelector; Cilium keys may carry a ``source:`` prefix."""
    m = _mapping(value, path)
    _check_keys(m, path, _SELECTOR_KEYS)
    match = m.get("matchLabels")
    if match is not None:
        for key, val in _mapping(match, f"{path}.matchLabels").items():
            kpath = f"{path}.matchLabels[{key}]"
            _selector_key(key, kpath, cilium)
            if not isinstance(val, str):
                raise FieldError(kpath, f"must be a string, got {_type_name(val)}")
            _name(val, kpath, "label-value")
    for i, expr in enumerate(_list(m, "matchExpressions", path)):
        epath = f"{path}.matchExpressions[{i}]"
        expr = _mapping(expr, epath)
        _check_keys(expr, epath, _EXPRESSION_KEYS)
        _selector_key(_str(expr, "key", epath, required=True), f"{epath}.key", cilium)
        op = _str(expr, "operator", epath, required=True)
        if op not in _OPERATORS:
            raise FieldError(f"{epath}.operator", f"{op!r} is not a valid operator (In, NotIn, Exists, DoesNotExist)")
        values = _list(expr, "values", epath)
        if op in ("In", "NotIn") and not values:
            raise FieldError(f"{epath}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise FieldError(f"{epath}.values", f"must be empty when operator is {op}")
        for j, val in enumerate(values):
            if not isinstance(val, str):
                raise FieldError(f"{epath}.values[{j}]", f"must be a string, got {_type_name(val)}")
            _name(val, f"{epath}.values[{j}]", "label-value")


def _port_or_name(value: object, path: str, *, digits_ok: bool) -> int | str:
    """A port number 1-65535 or an IANA port name (Cilium also writes numbers as strings)."""
    if isinstance(value, str):
        if digits_ok and value.isdigit():
            return _int_value(int(value), path, 1, 65535)
        return _name(value, path, "port-name")
    return _int_value(value, path, 1, 65535)


def _port_range(m: dict, path: str, *, digits_ok: bool, protocols: tuple[str, ...], required: bool) -> None:
    _enum(m, "protocol", path, protocols, None)
    raw = m.get("port")
    if raw is None:
        if required:
            raise FieldError(f"{path}.port", "required")
        if m.get("endPort") is not None:
            raise FieldError(f"{path}.endPort", "requires a numeric port")
        return
    port = _port_or_name(raw, f"{path}.port", digits_ok=digits_ok)
    end = _int(m, "endPort", path, 1, 65535)
    if end is not None:
        if not isinstance(port, int):
            raise FieldError(f"{path}.endPort", "requires a numeric port")
        if end < port:
            raise FieldError(f"{path}.endPort", f"must not be below port {port}, got {end}")


# ------------------------------------------------------------------ NetworkPolicy

_NP_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_NP_INGRESS_KEYS = frozenset({"from", "ports"})
_NP_EGRESS_KEYS = frozenset({"to", "ports"})
_NP_PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})
_NP_PORT_KEYS = frozenset({"protocol", "port", "endPort"})
_IP_BLOCK_KEYS = frozenset({"cidr", "except"})


def _np_peer(peer: object, path: str) -> None:
    peer = _mapping(peer, path)
    _check_keys(peer, path, _NP_PEER_KEYS)
    if not any(peer.get(k) is not None for k in _NP_PEER_KEYS):
        raise FieldError(path, "must specify podSelector, namespaceSelector or ipBlock")
    block = peer.get("ipBlock")
    if block is not None:
        if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
            raise FieldError(f"{path}.ipBlock", "may not be combined with podSelector or namespaceSelector")
        bpath = f"{path}.ipBlock"
        block = _mapping(block, bpath)
        _check_keys(block, bpath, _IP_BLOCK_KEYS)
        if block.get("cidr") is None:
            raise FieldError(f"{bpath}.cidr", "required")
        cidr = _cidr(block["cidr"], f"{bpath}.cidr")
        _except_list(_list(block, "except", bpath), cidr, f"{bpath}.except")
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            _label_selector(peer[key], f"{path}.{key}")


def _np_rules(spec: dict, section: str, peers_key: str, keys: frozenset[str]) -> None:
    for i, rule in enumerate(_list(spec, section, "spec")):
        path = f"spec.{section}[{i}]"
        rule = _mapping(rule, path)
        _check_keys(rule, path, keys)
        for j, peer in enumerate(_list(rule, peers_key, path)):
            _np_peer(peer, f"{path}.{peers_key}[{j}]")
        for j, port in enumerate(_list(rule, "ports", path)):
            ppath = f"{path}.ports[{j}]"
            port = _mapping(port, ppath)
            _check_keys(port, ppath, _NP_PORT_KEYS)
            _port_range(port, ppath, digits_ok=False, protocols=PROTOCOLS, required=False)


def _parse_network_policy(obj: dict, meta: ObjectMeta, cache: dict) -> NetworkPolicy:
    if obj.get("spec") is None:
        raise FieldError("spec", "required")
    spec = _mapping(obj["spec"], "spec")
    _check_keys(spec, "spec", _NP_SPEC_KEYS)
    if spec.get("podSelector") is None:
        raise FieldError("spec.podSelector", "required (use {} to select every pod in the namespace)")
    _label_selector(spec["podSelector"], "spec.podSelector")
    seen: set[str] = set()
    for i, ptype in enumerate(_list(spec, "policyTypes", "spec")):
        if ptype not in ("Ingress", "Egress"):
            raise FieldError(f"spec.policyTypes[{i}]", f"{ptype!r} is not one of Ingress, Egress")
        if ptype in seen:
            raise FieldError(f"spec.policyTypes[{i}]", f"duplicate policy type {ptype}")
        seen.add(ptype)
    _np_rules(spec, "ingress", "from", _NP_INGRESS_KEYS)
    _np_rules(spec, "egress", "to", _NP_EGRESS_KEYS)
    return NetworkPolicy(meta, spec)


# ------------------------------------------------------------ CiliumNetworkPolicy

_CNP_RULE_KEYS = frozenset({"endpointSelector", "nodeSelector", "ingress", "egress", "ingressDeny", "egressDeny",
                            "description", "labels"})
_CNP_RULE_UNSUPPORTED = frozenset({"enableDefaultDeny"})
_CNP_LABEL_KEYS = frozenset({"key", "value", "source"})
_CNP_PORT_RULE_UNSUPPORTED = frozenset({"rules", "serverNames", "listener", "originatingTLS", "terminatingTLS"})
_CNP_PORT_KEYS = frozenset({"port", "endPort", "protocol"})
_CNP_PROTOCOLS = ("TCP", "UDP", "SCTP", "ANY")
_CNP_CIDR_SET_KEYS = frozenset({"cidr", "except"})
_CNP_CIDR_SET_UNSUPPORTED = frozenset({"cidrGroupRef", "cidrGroupSelector"})
_CNP_ICMP_FIELD_KEYS = frozenset({"type", "family"})
_ICMP_TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_CNP_ENTITIES = ("all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node", "kube-apiserver",
                 "init", "health", "unmanaged", "ingress", "none")
_CNP_SERVICE_KEYS = frozenset({"k8sService", "k8sServiceSelector"})

_CNP_DIRECTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "ingress": {"selectors": ("fromEndpoints", "fromRequires", "fromNodes"), "cidr": ("fromCIDR",),
                "cidrset": ("fromCIDRSet",), "entities": ("fromEntities",), "services": (),
                "unsupported": ("fromGroups", "authentication")},
    "egress": {"selectors": ("toEndpoints", "toRequires", "toNodes"), "cidr": ("toCIDR",),
               "cidrset": ("toCIDRSet",), "entities": ("toEntities",), "services": ("toServices",),
               "unsupported": ("toFQDNs", "toGroups", "authentication")},
}


def _cnp_to_services(items: list, path: str) -> None:
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        item = _mapping(item, ipath)
        _check_keys(item, ipath, _CNP_SERVICE_KEYS)
        if len([k for k in _CNP_SERVICE_KEYS if item.get(k) is not None]) != 1:
            raise FieldError(ipath, "exactly one of k8sService or k8sServiceSelector is required")
        if item.get("k8sService") is not None:
            spath = f"{ipath}.k8sService"
            ref = _mapping(item["k8sService"], spath)
            _check_keys(ref, spath, frozenset({"serviceName", "namespace"}))
            _name(_str(ref, "serviceName", spath, required=True), f"{spath}.serviceName", "dns-1035")  # type: ignore[arg-type]
        else:
            spath = f"{ipath}.k8sServiceSelector"
            ref = _mapping(item["k8sServiceSelector"], spath)
            _check_keys(ref, spath, frozenset({"selector", "namespace"}))
            if ref.get("selector") is None:
                raise FieldError(f"{spath}.selector", "required")
            _label_selector(ref["selector"], f"{spath}.selector")
        namespace = _str(ref, "namespace", spath)
        if namespace:
            _name(namespace, f"{spath}.namespace", "dns-label")


def _cnp_port_rules(items: list, path: str, deny: bool) -> None:
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        item = _mapping(item, ipath)
        _check_keys(item, ipath, frozenset({"ports"}), frozenset() if deny else _CNP_PORT_RULE_UNSUPPORTED)
        for j, port in enumerate(_list(item, "ports", ipath)):
            ppath = f"{ipath}.ports[{j}]"
            port = _mapping(port, ppath)
            _check_keys(port, ppath, _CNP_PORT_KEYS)
            _port_range(port, ppath, digits_ok=True, protocols=_CNP_PROTOCOLS, required=False)


def _cnp_icmps(items: list, path: str) -> None:
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        item = _mapping(item, ipath)
        _check_keys(item, ipath, frozenset({"fields"}))
        for j, fld in enumerate(_list(item, "fields", ipath)):
            fpath = f"{ipath}.fields[{j}]"
            fld = _mapping(fld, fpath)
            _check_keys(fld, fpath, _CNP_ICMP_FIELD_KEYS)
            _enum(fld, "family", fpath, _IP_FAMILIES, None)
            icmp_type = fld.get("type")
            if icmp_type is None:
                raise FieldError(f"{fpath}.type", "required")
            if isinstance(icmp_type, str):
                if not _ICMP_TYPE_NAME.fullmatch(icmp_type):
                    raise FieldError(f"{fpath}.type", f"{icmp_type!r} is not an ICMP type number or name")
            else:
                _int_value(icmp_type, f"{fpath}.type", 0, 255)


def _cnp_peer_rule(rule: object, path: str, direction: str, deny: bool) -> None:
    d = _CNP_DIRECTIONS[direction]
    known = frozenset(d["selectors"] + d["cidr"] + d["cidrset"] + d["entities"] + d["services"]
                      + ("toPorts", "icmps"))
    unsupported = frozenset(k for k in d["unsupported"] if not (deny and k in ("authentication", "toFQDNs")))
    rule = _mapping(rule, path)
    _check_keys(rule, path, known, unsupported)
    for key in d["selectors"]:
        for i, sel in enumerate(_list(rule, key, path)):
            _label_selector(sel, f"{path}.{key}[{i}]", cilium=True)
    for key in d["cidr"]:
        for i, value in enumerate(_list(rule, key, path)):
            _cidr(value, f"{path}.{key}[{i}]")
    for key in d["cidrset"]:
        for i, item in enumerate(_list(rule, key, path)):
            ipath = f"{path}.{key}[{i}]"
            item = _mapping(item, ipath)
            _check_keys(item, ipath, _CNP_CIDR_SET_KEYS, _CNP_CIDR_SET_UNSUPPORTED)
            if item.get("cidr") is None:
                raise FieldError(f"{ipath}.cidr", "required")
            _except_list(_list(item, "except", ipath), _cidr(item["cidr"], f"{ipath}.cidr"), f"{ipath}.except")
    for key in d["entities"]:
        for i, entity in enumerate(_list(rule, key, path)):
            if entity not in _CNP_ENTITIES:
                raise FieldError(f"{path}.{key}[{i}]", f"{entity!r} is not a Cilium entity ({', '.join(_CNP_ENTITIES)})")
    for key in d["services"]:
        _cnp_to_services(_list(rule, key, path), f"{path}.{key}")
    _cnp_port_rules(_list(rule, "toPorts", path), f"{path}.toPorts", deny)
    _cnp_icmps(_list(rule, "icmps", path), f"{path}.icmps")


def _cnp_rule(rule: object, path: str) -> dict:
    rule = _mapping(rule, path)
    _check_keys(rule, path, _CNP_RULE_KEYS, _CNP_RULE_UNSUPPORTED)
    present = [k for k in ("endpointSelector", "nodeSelector") if rule.get(k) is not None]
    if len(present) != 1:
        raise FieldError(path, "exactly one of endpointSelector or nodeSelector is required")
    _label_selector(rule[present[0]], f"{path}.{present[0]}", cilium=True)
    _str(rule, "description", path)
    for i, label in enumerate(_list(rule, "labels", path)):
        lpath = f"{path}.labels[{i}]"
        label = _mapping(label, lpath)
        _check_keys(label, lpath, _CNP_LABEL_KEYS)
        _str(label, "key", lpath, required=True)
        _str(label, "value", lpath)
        _str(label, "source", lpath)
    for section, direction, deny in (("ingress", "ingress", False), ("ingressDeny", "ingress", True),
                                     ("egress", "egress", False), ("egressDeny", "egress", True)):
        for i, item in enumerate(_list(rule, section, path)):
            _cnp_peer_rule(item, f"{path}.{section}[{i}]", direction, deny)
    return rule


def _parse_cilium_network_policy(obj: dict, meta: ObjectMeta, cache: dict) -> CiliumNetworkPolicy:
    spec = obj.get("spec")
    specs = obj.get("specs")
    if spec is None and not specs:
        raise FieldError("spec", "spec or specs is required")
    checked = _cnp_rule(spec, "spec") if spec is not None else None
    if specs is not None and not isinstance(specs, list):
        raise FieldError("specs", f"must be a list, got {_type_name(specs)}")
    rules = tuple(_cnp_rule(rule, f"specs[{i}]") for i, rule in enumerate(specs or ()))
    return CiliumNetworkPolicy(meta, checked, rules)


# ---------------------------------------------------------------------- Namespace

_NS_SPEC_KEYS = frozenset({"finalizers"})
_NS_STATUS_KEYS = frozenset({"phase", "conditions"})


def _parse_namespace(obj: dict, meta: ObjectMeta, cache: dict) -> Namespace:
    """A Namespace: cluster-scoped, its labels are what namespaceSelectors match."""
    raw = obj.get("metadata") or {}
    if raw.get("namespace") is not None:
        raise FieldError("metadata.namespace", "a Namespace is cluster-scoped: remove metadata.namespace")
    given = meta.labels.get(NAMESPACE_NAME_LABEL)
    if given is not None and given != meta.name:
        raise FieldError(f"metadata.labels[{NAMESPACE_NAME_LABEL}]",
                         f"must be the namespace's name {meta.name!r} (the API server sets it), got {given!r}")
    for key, allowed in (("spec", _NS_SPEC_KEYS), ("status", _NS_STATUS_KEYS)):
        if obj.get(key) is not None:
            _check_keys(_mapping(obj[key], key), key, allowed)
    return Namespace(dataclasses.replace(meta, namespace=""))


# ========================================================================= builder


@dataclasses.dataclass(frozen=True)
class _Kind:
    kind: str
    name_rule: str
    top_keys: frozenset[str]
    parse: Callable[[dict, ObjectMeta, dict], Any]  # cache: per-load interning of shared values


_OBJECT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_KINDS: dict[tuple[str, str], _Kind] = {
    ("v1", "Pod"): _Kind("Pod", "dns-subdomain", _OBJECT_KEYS, _parse_pod),
    ("v1", "Service"): _Kind("Service", "dns-1035", _OBJECT_KEYS, _parse_service),
    ("discovery.k8s.io/v1", "EndpointSlice"): _Kind("EndpointSlice", "dns-subdomain", _SLICE_KEYS,
                                                    _parse_endpoint_slice),
    ("networking.k8s.io/v1", "NetworkPolicy"): _Kind("NetworkPolicy", "dns-subdomain", _OBJECT_KEYS,
                                                     _parse_network_policy),
    ("cilium.io/v2", "CiliumNetworkPolicy"): _Kind("CiliumNetworkPolicy", "dns-subdomain",
                                                   _OBJECT_KEYS | {"specs"}, _parse_cilium_network_policy),
    ("v1", "Namespace"): _Kind("Namespace", "dns-label", _OBJECT_KEYS, _parse_namespace),
}
_KNOWN = ", ".join(f"{api} {kind}" for api, kind in _KINDS) + ", v1 List"
_LIST_KEYS = frozenset({"apiVersion", "kind", "items", "metadata"})


class _Builder:
    """Accumulates validated objects document by document, then allocates and cross-checks."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.seen: dict[tuple[str, str, str], int] = {}
        self.pods: list[Pod] = []
        self.drafts: list[_ServiceDraft] = []
        self.slices: list[EndpointSlice] = []
        self.policies: list[NetworkPolicy] = []
        self.cilium_policies: list[CiliumNetworkPolicy] = []
        self.namespaces: list[Namespace] = []
        self.pod_ip_owner: dict[IPAddress, Pod] = {}
        self.node_host_ip: dict[str, Pod] = {}
        self.cache: dict = {}

    # -- errors

    def fail_at(self, document: int, prefix: str, kind: str | None, ref: str | None, field: str,
                message: str) -> ScenarioError:
        return ScenarioError(message, source=self.source, document=document, kind=kind, ref=ref,
                             field=prefix + field if field else (prefix.rstrip(".") or None))

    def fail(self, obj: Any, field: str, message: str) -> ScenarioError:
        meta: ObjectMeta = obj.meta
        return self.fail_at(meta.document, meta.field_prefix, obj.KIND, obj.ref, field, message)

    # -- documents

    def add_document(self, doc: object, document: int) -> None:
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise self.fail_at(document, "", None, None, "",
                               f"a document must be a mapping (a Kubernetes object), got {_type_name(doc)}")
        if doc.get("kind") == "List" and doc.get("apiVersion") == "v1":
            try:
                _check_keys(doc, "", _LIST_KEYS)
                items = _list(doc, "items", "")
            except FieldError as err:
                raise self.fail_at(document, "", "List", None, err.field, err.message) from None
            for i, item in enumerate(items):
                self.add_object(item, document, f"items[{i}].")
            return
        self.add_object(doc, document, "")

    def add_object(self, obj: object, document: int, prefix: str) -> None:
        if not isinstance(obj, dict):
            raise self.fail_at(document, prefix, None, None, "",
                               f"must be a mapping (a Kubernetes object), got {_type_name(obj)}")
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
            _check_keys(obj, "", spec.top_keys)
            meta = _meta(obj, spec.name_rule, document, prefix)
            ref = meta.name if spec.kind == "Namespace" else meta.ref
            parsed = spec.parse(obj, meta, self.cache)
        except FieldError as err:
            raise self.fail_at(document, prefix, shown_kind, ref, err.field, err.message) from None
        key = (spec.kind, "" if spec.kind == "Namespace" else meta.namespace, meta.name)
        if key in self.seen:
            raise self.fail_at(document, prefix, spec.kind, ref, "metadata.name",
                               f"duplicate {spec.kind} {ref} (already defined in document {self.seen[key]})")
        self.seen[key] = document
        if isinstance(parsed, Pod):
            self._add_pod(parsed)
        elif isinstance(parsed, _ServiceDraft):
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
    def _kind(api: object, kind: object) -> _Kind:
        if api is None:
            raise FieldError("apiVersion", "required")
        if kind is None:
            raise FieldError("kind", "required")
        spec = _KINDS.get((api, kind)) if isinstance(api, str) and isinstance(kind, str) else None
        if spec is not None:
            return spec
        for (known_api, known_kind) in _KINDS:
            if known_kind == kind:
                raise FieldError("apiVersion", f"{kind} must be {known_api}, got {api!r}")
        if kind == "List":
            raise FieldError("apiVersion", f"List must be v1, got {api!r}")
        raise FieldError("kind", f"unknown kind {api} {kind} (known: {_KNOWN})")

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
                                    f"no free {family} address left in the service CIDR {_SERVICE_CIDRS[family]}")
                used[version].add(candidate)
                cursor[version] = candidate + 1
                ips.append(ipaddress.ip_address(candidate))
            result[i] = tuple(ips)
        return result

    def _allocate_node_ports(self) -> dict[int, dict[int, int]]:
        used = {p.node_port for d in self.drafts for p in d.service.ports if p.node_port is not None}
        pending = sorted((d.service.meta.namespace, d.service.meta.name, j, i)
                         for i, d in enumerate(self.drafts) for j in d.node_port_wanted)
        result: dict[int, dict[int, int]] = {}
        candidate = NODE_PORT_RANGE[0]
        for _, _, j, i in pending:
            while candidate in used:
                candidate += 1
            if candidate > NODE_PORT_RANGE[1]:
                raise self.fail(self.drafts[i].service, f"spec.ports[{j}].nodePort",
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
        )


def _frontend(addr: IPAddress, port: int, protocol: str) -> str:
    return f"[{addr}]:{port}/{protocol}" if addr.version == 6 else f"{addr}:{port}/{protocol}"


def scenario_from_documents(documents: Iterable[Any], source: str = "<string>") -> Scenario:
    """Validate already-decoded documents (``None`` = empty document) into a Scenario."""
    builder = _Builder(source)
    for index, doc in enumerate(documents, 1):
        builder.add_document(doc, index)
    return builder.finish()

