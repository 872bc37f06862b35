"""NetworkPolicy (networking.k8s.io/v1) validation: podSelector, policyTypes,
ingress/egress peers (pod and namespace selectors, or an ipBlock) and ports.
The spec is kept as written; harness.policy.desired gives it its meaning.
"""
from __future__ import annotations

from harness.scenario.errors import FieldError
from harness.scenario.fields import PROTOCOLS, check_keys, list_field, mapping
from harness.scenario.model import NetworkPolicy, ObjectMeta
from harness.scenario.policy_fields import check_except, label_selector, parse_cidr, port_range


_NP_SPEC_KEYS = frozenset({"podSelector", "policyTypes", "ingress", "egress"})
_NP_INGRESS_KEYS = frozenset({"from", "ports"})
_NP_EGRESS_KEYS = frozenset({"to", "ports"})
_NP_PEER_KEYS = frozenset({"podSelector", "namespaceSelector", "ipBlock"})
_NP_PORT_KEYS = frozenset({"protocol", "port", "endPort"})
_IP_BLOCK_KEYS = frozenset({"cidr", "except"})


def _np_peer(peer: object, path: str) -> None:
    peer = mapping(peer, path)
    check_keys(peer, path, _NP_PEER_KEYS)
    if not any(peer.get(k) is not None for k in _NP_PEER_KEYS):
        raise FieldError(path, "must specify podSelector, namespaceSelector or ipBlock")
    block = peer.get("ipBlock")
    if block is not None:
        if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
            raise FieldError(f"{path}.ipBlock", "may not be combined with podSelector or namespaceSelector")
        bpath = f"{path}.ipBlock"
        block = mapping(block, bpath)
        check_keys(block, bpath, _IP_BLOCK_KEYS)
        if block.get("cidr") is None:
            raise FieldError(f"{bpath}.cidr", "required")
        cidr = parse_cidr(block["cidr"], f"{bpath}.cidr")
        check_except(list_field(block, "except", bpath), cidr, f"{bpath}.except")
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            label_selector(peer[key], f"{path}.{key}")


def _np_rules(spec: dict, section: str, peers_key: str, keys: frozenset[str]) -> None:
    for i, rule in enumerate(list_field(spec, section, "spec")):
        path = f"spec.{section}[{i}]"
        rule = mapping(rule, path)
        check_keys(rule, path, keys)
        for j, peer in enumerate(list_field(rule, peers_key, path)):
            _np_peer(peer, f"{path}.{peers_key}[{j}]")
        for j, port in enumerate(list_field(rule, "ports", path)):
            ppath = f"{path}.ports[{j}]"
            port = mapping(port, ppath)
            check_keys(port, ppath, _NP_PORT_KEYS)
            port_range(port, ppath, digits_ok=False, protocols=PROTOCOLS, required=False)


def parse_network_policy(obj: dict, meta: ObjectMeta, cache: dict) -> NetworkPolicy:
    if obj.get("spec") is None:
        raise FieldError("spec", "required")
    spec = mapping(obj["spec"], "spec")
    check_keys(spec, "spec", _NP_SPEC_KEYS)
    if spec.get("podSelector") is None:
        raise FieldError("spec.podSelector", "required (use {} to select every pod in the namespace)")
    label_selector(spec["podSelector"], "spec.podSelector")
    seen: set[str] = set()
    for i, ptype in enumerate(list_field(spec, "policyTypes", "spec")):
        if ptype not in ("Ingress", "Egress"):
            raise FieldError(f"spec.policyTypes[{i}]", f"{ptype!r} is not one of Ingress, Egress")
        if ptype in seen:
            raise FieldError(f"spec.policyTypes[{i}]", f"duplicate policy type {ptype}")
        seen.add(ptype)
    _np_rules(spec, "ingress", "from", _NP_INGRESS_KEYS)
    _np_rules(spec, "egress", "to", _NP_EGRESS_KEYS)
    return NetworkPolicy(meta, spec)
