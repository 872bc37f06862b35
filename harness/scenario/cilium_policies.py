"""CiliumNetworkPolicy (cilium.io/v2) validation: ``spec`` and/or ``specs``,
each rule's endpointSelector or nodeSelector, ingress/egress and their Deny
forms (endpoints, CIDRs, CIDR sets, entities, toServices, toPorts, icmps).
What chainbench cannot enforce (L7 rules, FQDNs, groups...) is refused as
unsupported.  The rules are kept as written; harness.policy.desired gives them
their meaning.
"""
from __future__ import annotations

import re

from harness.scenario.errors import FieldError
from harness.scenario.fields import (
    IP_FAMILIES,
    check_keys,
    check_name,
    enum_field,
    int_value,
    list_field,
    mapping,
    str_field,
    type_name,
)
from harness.scenario.model import CiliumNetworkPolicy, ObjectMeta
from harness.scenario.policy_fields import check_except, label_selector, parse_cidr, port_range


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
        item = mapping(item, ipath)
        check_keys(item, ipath, _CNP_SERVICE_KEYS)
        if len([k for k in _CNP_SERVICE_KEYS if item.get(k) is not None]) != 1:
            raise FieldError(ipath, "exactly one of k8sService or k8sServiceSelector is required")
        if item.get("k8sService") is not None:
            spath = f"{ipath}.k8sService"
            ref = mapping(item["k8sService"], spath)
            check_keys(ref, spath, frozenset({"serviceName", "namespace"}))
            check_name(str_field(ref, "serviceName", spath, required=True), f"{spath}.serviceName", "dns-1035")  # type: ignore[arg-type]
        else:
            spath = f"{ipath}.k8sServiceSelector"
            ref = mapping(item["k8sServiceSelector"], spath)
            check_keys(ref, spath, frozenset({"selector", "namespace"}))
            if ref.get("selector") is None:
                raise FieldError(f"{spath}.selector", "required")
            label_selector(ref["selector"], f"{spath}.selector")
        namespace = str_field(ref, "namespace", spath)
        if namespace:
            check_name(namespace, f"{spath}.namespace", "dns-label")


def _cnp_port_rules(items: list, path: str, deny: bool) -> None:
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        item = mapping(item, ipath)
        check_keys(item, ipath, frozenset({"ports"}), frozenset() if deny else _CNP_PORT_RULE_UNSUPPORTED)
        for j, port in enumerate(list_field(item, "ports", ipath)):
            ppath = f"{ipath}.ports[{j}]"
            port = mapping(port, ppath)
            check_keys(port, ppath, _CNP_PORT_KEYS)
            port_range(port, ppath, digits_ok=True, protocols=_CNP_PROTOCOLS, required=False)


def _cnp_icmps(items: list, path: str) -> None:
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        item = mapping(item, ipath)
        check_keys(item, ipath, frozenset({"fields"}))
        for j, fld in enumerate(list_field(item, "fields", ipath)):
            fpath = f"{ipath}.fields[{j}]"
            fld = mapping(fld, fpath)
            check_keys(fld, fpath, _CNP_ICMP_FIELD_KEYS)
            enum_field(fld, "family", fpath, IP_FAMILIES, None)
            icmp_type = fld.get("type")
            if icmp_type is None:
                raise FieldError(f"{fpath}.type", "required")
            if isinstance(icmp_type, str):
                if not _ICMP_TYPE_NAME.fullmatch(icmp_type):
                    raise FieldError(f"{fpath}.type", f"{icmp_type!r} is not an ICMP type number or name")
            else:
                int_value(icmp_type, f"{fpath}.type", 0, 255)


def _cnp_peer_rule(rule: object, path: str, direction: str, deny: bool) -> None:
    d = _CNP_DIRECTIONS[direction]
    known = frozenset(d["selectors"] + d["cidr"] + d["cidrset"] + d["entities"] + d["services"]
                      + ("toPorts", "icmps"))
    unsupported = frozenset(k for k in d["unsupported"] if not (deny and k in ("authentication", "toFQDNs")))
    rule = mapping(rule, path)
    check_keys(rule, path, known, unsupported)
    for key in d["selectors"]:
        for i, sel in enumerate(list_field(rule, key, path)):
            label_selector(sel, f"{path}.{key}[{i}]", cilium=True)
    for key in d["cidr"]:
        for i, value in enumerate(list_field(rule, key, path)):
            parse_cidr(value, f"{path}.{key}[{i}]")
    for key in d["cidrset"]:
        for i, item in enumerate(list_field(rule, key, path)):
            ipath = f"{path}.{key}[{i}]"
            item = mapping(item, ipath)
            check_keys(item, ipath, _CNP_CIDR_SET_KEYS, _CNP_CIDR_SET_UNSUPPORTED)
            if item.get("cidr") is None:
                raise FieldError(f"{ipath}.cidr", "required")
            check_except(list_field(item, "except", ipath), parse_cidr(item["cidr"], f"{ipath}.cidr"), f"{ipath}.except")
    for key in d["entities"]:
        for i, entity in enumerate(list_field(rule, key, path)):
            if entity not in _CNP_ENTITIES:
                raise FieldError(f"{path}.{key}[{i}]", f"{entity!r} is not a Cilium entity ({', '.join(_CNP_ENTITIES)})")
    for key in d["services"]:
        _cnp_to_services(list_field(rule, key, path), f"{path}.{key}")
    _cnp_port_rules(list_field(rule, "toPorts", path), f"{path}.toPorts", deny)
    _cnp_icmps(list_field(rule, "icmps", path), f"{path}.icmps")


def _cnp_rule(rule: object, path: str) -> dict:
    rule = mapping(rule, path)
    check_keys(rule, path, _CNP_RULE_KEYS, _CNP_RULE_UNSUPPORTED)
    present = [k for k in ("endpointSelector", "nodeSelector") if rule.get(k) is not None]
    if len(present) != 1:
        raise FieldError(path, "exactly one of endpointSelector or nodeSelector is required")
    label_selector(rule[present[0]], f"{path}.{present[0]}", cilium=True)
    str_field(rule, "description", path)
    for i, label in enumerate(list_field(rule, "labels", path)):
        lpath = f"{path}.labels[{i}]"
        label = mapping(label, lpath)
        check_keys(label, lpath, _CNP_LABEL_KEYS)
        str_field(label, "key", lpath, required=True)
        str_field(label, "value", lpath)
        str_field(label, "source", lpath)
    for section, direction, deny in (("ingress", "ingress", False), ("ingressDeny", "ingress", True),
                                     ("egress", "egress", False), ("egressDeny", "egress", True)):
        for i, item in enumerate(list_field(rule, section, path)):
            _cnp_peer_rule(item, f"{path}.{section}[{i}]", direction, deny)
    return rule


def parse_cilium_network_policy(obj: dict, meta: ObjectMeta, cache: dict) -> CiliumNetworkPolicy:
    spec = obj.get("spec")
    specs = obj.get("specs")
    if spec is None and not specs:
        raise FieldError("spec", "spec or specs is required")
    checked = _cnp_rule(spec, "spec") if spec is not None else None
    if specs is not None and not isinstance(specs, list):
        raise FieldError("specs", f"must be a list, got {type_name(specs)}")
    rules = tuple(_cnp_rule(rule, f"specs[{i}]") for i, rule in enumerate(specs or ()))
    return CiliumNetworkPolicy(meta, checked, rules)
