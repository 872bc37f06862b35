"""Typed access to one field of a decoded object, failing with a ``FieldError``
at the field's path; shared by every kind's validator.

Owns the path and type wording (``join_path``, ``type_name``); mappings and
their allowed keys (``check_keys``: unknown, ignored and unsupported keys, a
close match suggested for a typo); required/optional strings, booleans,
integers in a range, lists and enumerations; the Kubernetes naming rules
(DNS-1123 labels and subdomains, DNS-1035 labels, port names, label keys and
values) and label/annotation maps; addresses, checked in one of two modes
(``address_mode``): inside the project's address plan (the default, for what
touches the network: ``up``, ``lb apply``, ``policy apply``), or any valid
address (commands that only render, resolve or program unattached maps).
A plan violation is a ``PlanFieldError`` (a FieldError), so a caller can tell
"foreign to the plan" from "malformed".
"""
from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator

from harness.addressing import AddressPlanError, check_project_address
from harness.scenario.errors import FieldError, PlanFieldError
from harness.scenario.model import IPAddress

PROTOCOLS = ("TCP", "UDP", "SCTP")
IP_FAMILIES = ("IPv4", "IPv6")


def join_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def type_name(value: object) -> str:
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


def mapping(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise FieldError(path, f"must be a mapping, got {type_name(value)}")
    return value


def check_keys(
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
            raise FieldError(path, f"keys must be strings, got {type_name(key)}")
        if key in unsupported:
            raise FieldError(join_path(path, key), "not supported by chainbench")
        close = difflib.get_close_matches(key, sorted(hints if hints is not None else allowed), 1)
        raise FieldError(join_path(path, key), "unknown field" + (f" (did you mean {close[0]!r}?)" if close else ""))


def str_field(m: dict, key: str, path: str, *, required: bool = False) -> str | None:
    value = m.get(key)
    if value is None:
        if required:
            raise FieldError(join_path(path, key), "required")
        return None
    if not isinstance(value, str):
        raise FieldError(join_path(path, key), f"must be a string, got {type_name(value)}")
    if required and not value:
        raise FieldError(join_path(path, key), "required")
    return value


def bool_field(m: dict, key: str, path: str, default: bool | None) -> bool | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FieldError(join_path(path, key), f"must be a boolean, got {type_name(value)}")
    return value


def int_value(value: object, path: str, lo: int, hi: int, what: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FieldError(path, f"must be an integer, got {type_name(value)}")
    if not lo <= value <= hi:
        raise FieldError(path, f"must be between {lo} and {hi}{what}, got {value}")
    return value


def int_field(m: dict, key: str, path: str, lo: int, hi: int, *, required: bool = False, what: str = "") -> int | None:
    value = m.get(key)
    if value is None:
        if required:
            raise FieldError(join_path(path, key), "required")
        return None
    return int_value(value, join_path(path, key), lo, hi, what)


def list_field(m: dict, key: str, path: str) -> list:
    value = m.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(join_path(path, key), f"must be a list, got {type_name(value)}")
    return value


def enum_field(m: dict, key: str, path: str, choices: tuple[str, ...], default: str | None) -> str | None:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        got = repr(value) if isinstance(value, str) else type_name(value)
        raise FieldError(join_path(path, key), f"must be one of {', '.join(choices)}, got {got}")
    return value


# ------------------------------------------------------------- names and labels

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


@functools.lru_cache(maxsize=4096)
def name_problem(rule: str, value: str) -> str | None:
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


def check_name(value: str, path: str, rule: str) -> str:
    problem = name_problem(rule, value)
    if problem:
        raise FieldError(path, problem)
    return value


def string_map(value: object, path: str, key_rule: str, value_rule: str | None) -> dict[str, str]:
    if value is None:
        return {}
    m = mapping(value, path)
    for key, val in m.items():
        if not isinstance(key, str):
            raise FieldError(path, f"keys must be strings, got {type_name(key)}")
        check_name(key.lower() if key_rule == "annotation-key" else key, f"{path}[{key}]", "label-key")
        if not isinstance(val, str):
            raise FieldError(f"{path}[{key}]", f"must be a string, got {type_name(val)}")
        if value_rule:
            check_name(val, f"{path}[{key}]", value_rule)
    return m


def label_map(value: object, path: str) -> dict[str, str]:
    return string_map(value, path, "label-key", "label-value")


# ------------------------------------------------------------------ addresses

#: True (the default): addresses and node names must fit the project's address plan;
#: False: any valid address and node name (set for one load by ``address_mode``).
_PLAN_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("plan_checked", default=True)


@contextlib.contextmanager
def address_mode(plan_checked: bool) -> Iterator[None]:
    """Within the block, addresses are checked against the plan (*plan_checked*) or
    only for validity."""
    token = _PLAN_CHECKED.set(plan_checked)
    try:
        yield
    finally:
        _PLAN_CHECKED.reset(token)


def plan_checked() -> bool:
    """Whether the load in progress checks addresses and node names against the plan."""
    return _PLAN_CHECKED.get()


@functools.lru_cache(maxsize=65536)
def checked_address(value: str) -> IPAddress | str:
    """*value* parsed and inside the plan, or why not (a string)."""
    try:
        return check_project_address(value)
    except AddressPlanError as err:
        return str(err)


@functools.lru_cache(maxsize=65536)
def valid_address(value: str) -> IPAddress | str:
    """*value* parsed (any address), or why not (a string)."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"


def address_parser() -> Callable[[str], IPAddress | str]:
    """The parser of the load in progress: ``checked_address`` or ``valid_address``."""
    return checked_address if _PLAN_CHECKED.get() else valid_address


def project_address(value: object, path: str) -> IPAddress:
    """A concrete address: a string, inside the project's address plan when the load
    checks it (``address_mode``), else any valid address."""
    if not isinstance(value, str):
        raise FieldError(path, f"must be an IP address string, got {type_name(value)}")
    result = address_parser()(value)
    if isinstance(result, str):
        if isinstance(valid_address(value), str):
            raise FieldError(path, result)          # malformed: not an address at all
        raise PlanFieldError(path, result)
    return result


def ip_family(addr: IPAddress) -> str:
    return "IPv4" if addr.version == 4 else "IPv6"
