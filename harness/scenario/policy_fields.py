"""The match fields both policy kinds (NetworkPolicy, CiliumNetworkPolicy)
share: CIDRs (any valid prefix; ``except`` entries strictly inside), label
selectors (Cilium keys may carry a ``source:`` prefix), and port / endPort
ranges (numbers or port names).
"""
from __future__ import annotations

import ipaddress

from harness.scenario.errors import FieldError
from harness.scenario.fields import (
    check_keys,
    check_name,
    enum_field,
    int_field,
    int_value,
    list_field,
    mapping,
    str_field,
    type_name,
)


def parse_cidr(value: object, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR inside a policy: a match rule, so any valid prefix is accepted."""
    if not isinstance(value, str):
        raise FieldError(path, f"must be a CIDR string, got {type_name(value)}")
    try:
        if "/" not in value:
            raise ValueError
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise FieldError(path, f"{value!r} is not a valid CIDR") from None


def check_except(values: list, cidr: ipaddress.IPv4Network | ipaddress.IPv6Network, path: str) -> None:
    for i, value in enumerate(values):
        sub = parse_cidr(value, f"{path}[{i}]")
        if sub.version != cidr.version or not sub.subnet_of(cidr) or sub.prefixlen <= cidr.prefixlen:  # type: ignore[arg-type]
            raise FieldError(f"{path}[{i}]", f"{value} must be a strict subset of {cidr}")


# ---------------------------------------------------------------------- selectors

_SELECTOR_KEYS = frozenset({"matchLabels", "matchExpressions"})
_EXPRESSION_KEYS = frozenset({"key", "operator", "values"})
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_CILIUM_LABEL_SOURCES = frozenset({"any", "k8s", "reserved", "unspec", "container", "cidr", "fqdn", "kvstore",
                                   "cilium-generated"})


def _selector_key(key: object, path: str, cilium: bool) -> None:
    if not isinstance(key, str):
        raise FieldError(path, f"label keys must be strings, got {type_name(key)}")
    if cilium and ":" in key:
        source, _, key = key.partition(":")
        if source not in _CILIUM_LABEL_SOURCES:
            raise FieldError(path, f"unknown label source {source!r} (known: {', '.join(sorted(_CILIUM_LABEL_SOURCES))})")
    check_name(key, path, "label-key")


def label_selector(value: object, path: str, *, cilium: bool = False) -> None:
    """A metav1.LabelSelector; Cilium keys may carry a ``source:`` prefix."""
    m = mapping(value, path)
    check_keys(m, path, _SELECTOR_KEYS)
    match = m.get("matchLabels")
    if match is not None:
        for key, val in mapping(match, f"{path}.matchLabels").items():
            kpath = f"{path}.matchLabels[{key}]"
            _selector_key(key, kpath, cilium)
            if not isinstance(val, str):
                raise FieldError(kpath, f"must be a string, got {type_name(val)}")
            check_name(val, kpath, "label-value")
    for i, expr in enumerate(list_field(m, "matchExpressions", path)):
        epath = f"{path}.matchExpressions[{i}]"
        expr = mapping(expr, epath)
        check_keys(expr, epath, _EXPRESSION_KEYS)
        _selector_key(str_field(expr, "key", epath, required=True), f"{epath}.key", cilium)
        op = str_field(expr, "operator", epath, required=True)
        if op not in _OPERATORS:
            raise FieldError(f"{epath}.operator", f"{op!r} is not a valid operator (In, NotIn, Exists, DoesNotExist)")
        values = list_field(expr, "values", epath)
        if op in ("In", "NotIn") and not values:
            raise FieldError(f"{epath}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise FieldError(f"{epath}.values", f"must be empty when operator is {op}")
        for j, val in enumerate(values):
            if not isinstance(val, str):
                raise FieldError(f"{epath}.values[{j}]", f"must be a string, got {type_name(val)}")
            check_name(val, f"{epath}.values[{j}]", "label-value")


def _port_or_name(value: object, path: str, *, digits_ok: bool) -> int | str:
    """A port number 1-65535 or an IANA port name (Cilium also writes numbers as strings)."""
    if isinstance(value, str):
        if digits_ok and value.isdigit():
            return int_value(int(value), path, 1, 65535)
        return check_name(value, path, "port-name")
    return int_value(value, path, 1, 65535)


def port_range(m: dict, path: str, *, digits_ok: bool, protocols: tuple[str, ...], required: bool) -> None:
    enum_field(m, "protocol", path, protocols, None)
    raw = m.get("port")
    if raw is None:
        if required:
            raise FieldError(f"{path}.port", "required")
        if m.get("endPort") is not None:
            raise FieldError(f"{path}.endPort", "requires a numeric port")
        return
    port = _port_or_name(raw, f"{path}.port", digits_ok=digits_ok)
    end = int_field(m, "endPort", path, 1, 65535)
    if end is not None:
        if not isinstance(port, int):
            raise FieldError(f"{path}.endPort", "requires a numeric port")
        if end < port:
            raise FieldError(f"{path}.endPort", f"must not be below port {port}, got {end}")
