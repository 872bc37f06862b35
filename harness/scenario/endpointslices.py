"""EndpointSlice (discovery.k8s.io/v1) validation: the label naming its
Service, addressType, endpoints (addresses of that family, conditions,
nodeName, Pod targetRefs; equal endpoints interned per load) and ports.
Whether the Service exists is harness.scenario.build's check.
"""
from __future__ import annotations

from harness.scenario.errors import FieldError
from harness.scenario.fields import (
    PROTOCOLS,
    bool_field,
    check_keys,
    check_name,
    address_parser,
    enum_field,
    int_field,
    list_field,
    mapping,
    name_problem,
    project_address,
    str_field,
    type_name,
)
from harness.scenario.model import SERVICE_NAME_LABEL, Endpoint, EndpointPort, EndpointSlice, ObjectMeta


SLICE_KEYS = frozenset({"apiVersion", "kind", "metadata", "addressType", "endpoints", "ports"})
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
                    interned: dict[tuple, Endpoint], checked_address) -> Endpoint:
    """One endpoint.  Hot path (a million calls for 100k services): paths are built only on error,
    and equal endpoints are interned, so services sharing backends share Endpoint objects."""
    ep = raw if type(raw) is dict else mapping(raw, path)
    if not ep.keys() <= _ENDPOINT_ALLOWED:
        check_keys(ep, path, _ENDPOINT_ALLOWED, hints=_ENDPOINT_KEYS)
    raw_addrs = ep.get("addresses")
    if type(raw_addrs) is not list or not raw_addrs or len(raw_addrs) > 100:
        if raw_addrs is not None and not isinstance(raw_addrs, list):
            raise FieldError(f"{path}.addresses", f"must be a list, got {type_name(raw_addrs)}")
        raise FieldError(f"{path}.addresses", "at most 100 addresses" if raw_addrs
                         else "at least one address is required")
    addrs = []
    for value in raw_addrs:
        addr = checked_address(value) if type(value) is str else None
        if addr is None or type(addr) is str or addr.version != version:  # type: ignore[union-attr]
            apath = f"{path}.addresses[{len(addrs)}]"
            addr = project_address(value, apath)
            raise FieldError(apath, f"{addr} is not an {address_type} address (addressType is {address_type})")
        addrs.append(addr)

    cond = ep.get("conditions")
    if cond is None:
        ready, serving, terminating = True, True, False
    else:
        cpath = f"{path}.conditions"
        cond = mapping(cond, cpath)
        check_keys(cond, cpath, _CONDITION_KEYS)
        ready = bool_field(cond, "ready", cpath, True)
        serving = bool_field(cond, "serving", cpath, None)
        serving = ready if serving is None else serving
        terminating = bool_field(cond, "terminating", cpath, False)
    node_name = ep.get("nodeName")
    if node_name is not None and (type(node_name) is not str or name_problem("dns-subdomain", node_name)):
        check_name(str_field(ep, "nodeName", path), f"{path}.nodeName", "dns-subdomain")  # type: ignore[arg-type]
    ref_ns = ref_name = None
    ref = ep.get("targetRef")
    if ref is not None:
        rpath = f"{path}.targetRef"
        ref = mapping(ref, rpath)
        if not ref.keys() <= _TARGET_REF_ALLOWED:
            check_keys(ref, rpath, _TARGET_REF_ALLOWED, hints=_TARGET_REF_KEYS)
        kind = str_field(ref, "kind", rpath)
        if kind not in (None, "Pod"):
            raise FieldError(f"{rpath}.kind", f"only Pod targetRefs are supported, got {kind!r}")
        ref_name = check_name(str_field(ref, "name", rpath, required=True), f"{rpath}.name", "dns-subdomain")  # type: ignore[arg-type]
        ref_ns = str_field(ref, "namespace", rpath) or namespace
        check_name(ref_ns, f"{rpath}.namespace", "dns-label")
    zone = str_field(ep, "zone", path)
    key = (tuple(raw_addrs), ready, serving, terminating, node_name, ref_ns, ref_name, zone)
    endpoint = interned.get(key)
    if endpoint is None:
        endpoint = interned[key] = Endpoint(tuple(addrs), *key[1:])  # type: ignore[arg-type]
    return endpoint


def parse_endpoint_slice(obj: dict, meta: ObjectMeta, cache: dict) -> EndpointSlice:
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    if service_name is None:
        raise FieldError("metadata.labels", f"missing label {SERVICE_NAME_LABEL} naming the Service")
    check_name(service_name, f"metadata.labels[{SERVICE_NAME_LABEL}]", "dns-1035")
    if obj.get("addressType") == "FQDN":
        raise FieldError("addressType", "FQDN is not supported by chainbench")
    address_type = enum_field(obj, "addressType", "", ("IPv4", "IPv6"), None)
    if address_type is None:
        raise FieldError("addressType", "required")
    version = 4 if address_type == "IPv4" else 6
    raw_endpoints = list_field(obj, "endpoints", "")
    if len(raw_endpoints) > 1000:
        raise FieldError("endpoints", "at most 1000 endpoints per EndpointSlice")
    parse = address_parser()
    endpoints = tuple(
        _parse_endpoint(raw, f"endpoints[{i}]", version, address_type, meta.namespace, cache, parse)
        for i, raw in enumerate(raw_endpoints)
    )
    ports: list[EndpointPort] = []
    names: set[str] = set()
    raw_ports = list_field(obj, "ports", "")
    if len(raw_ports) > 100:
        raise FieldError("ports", "at most 100 ports per EndpointSlice")
    for i, raw in enumerate(raw_ports):
        path = f"ports[{i}]"
        raw = mapping(raw, path)
        check_keys(raw, path, _ENDPOINT_PORT_KEYS | _ENDPOINT_PORT_IGNORED, hints=_ENDPOINT_PORT_KEYS)
        name = str_field(raw, "name", path) or ""
        if name:
            check_name(name, f"{path}.name", "dns-label")
        if name in names:
            raise FieldError(f"{path}.name", f"duplicate port name {name!r}")
        names.add(name)
        ports.append(EndpointPort(name, enum_field(raw, "protocol", path, PROTOCOLS, "TCP"),  # type: ignore[arg-type]
                                  int_field(raw, "port", path, 1, 65535)))
    return EndpointSlice(meta, service_name, address_type, endpoints, tuple(ports))  # type: ignore[arg-type]
