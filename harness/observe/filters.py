"""Hubble's flow filters (``flow.FlowFilter``) applied to ``flow.Flow``, and the filters
``hubble observe``'s options make.

Semantics (pkg/hubble/filters): a flow passes ``select(flows, whitelist, blacklist)``
when it matches any whitelist filter (or there is none) and no blacklist filter;
within one filter every field that is set must match, and the values listed in one
field are alternatives.  Fields supported: uuid, source_ip/destination_ip (an
address or a CIDR), source_pod/destination_pod and source_service/
destination_service (``[namespace/][name prefix]``), source_label/
destination_label (Kubernetes label selectors over Cilium's ``source:key=value``
labels, a ``k8s:`` source prefix allowed), source_identity/destination_identity,
verdict, drop_reason_desc, event_type (type, optional sub-type),
source_port/destination_port, protocol, tcp_flags (a flow matches a listed set
when it has all of its flags), traffic_direction, node_name (Hubble's
``cluster/node`` patterns with ``*``), ip_version, reply.  A filter setting a field
this module does not evaluate raises FilterError rather than matching wrongly.

``filters_from_cli(args)`` builds (whitelist, blacklist) from ``hubble observe``'s
options (``--pod x`` matches either side: two filters).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Sequence

from harness.observe.proto import flow_pb2

#: ``--type`` names (Cilium's monitor message types: pkg/monitor/api/types.go).
MESSAGE_TYPE_NAMES = {"drop": 1, "debug": 2, "capture": 3, "trace": 4, "policy-verdict": 5,
                      "trace-sock": 7, "l7": 129, "agent": 130}
#: trace sub-types by name (``--type trace:to-endpoint``).
TRACE_POINT_NAMES = {"to-endpoint": 0, "to-proxy": 1, "to-host": 2, "to-stack": 3,
                     "to-overlay": 4, "from-endpoint": 5, "from-proxy": 6, "from-host": 7,
                     "from-stack": 8, "from-overlay": 9, "from-network": 10, "to-network": 11,
                     "from-crypto": 12, "to-crypto": 13}
CLUSTER_NAME = "default"        # Cilium's default cluster name, for node-name patterns

#: FlowFilter fields flow_matches evaluates.
SUPPORTED = frozenset({
    "uuid", "source_ip", "destination_ip", "source_pod", "destination_pod", "source_label",
    "destination_label", "source_service", "destination_service", "source_identity",
    "destination_identity", "verdict", "drop_reason_desc", "event_type", "source_port",
    "destination_port", "protocol", "tcp_flags", "traffic_direction", "node_name",
    "ip_version", "reply"})


#: FlowFilter.drop_reason_desc is Hubble's; the schema compiled into build/proto (proto/,
#: the subset chainbench serves) may lack it.
_HAS_DROP_REASON_DESC = "drop_reason_desc" in flow_pb2.FlowFilter.DESCRIPTOR.fields_by_name


class FilterError(ValueError):
    """A filter that cannot be evaluated: a bad value, or a field not supported."""


# ----------------------------------------------------------------- compiling


def _ips(values: Sequence[str]) -> Callable[[str], bool]:
    exact, nets = set(), []
    for v in values:
        if "/" in v:
            try:
                nets.append(ipaddress.ip_network(v, strict=False))
            except ValueError:
                raise FilterError(f"invalid CIDR in filter: {v!r}") from None
        else:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise FilterError(f"invalid IP address in filter: {v!r}") from None
            exact.add(v)

    def match(ip: str) -> bool:
        if not ip:
            return False
        if ip in exact:
            return True
        if nets:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(addr.version == n.version and addr in n for n in nets)
        return False
    return match


def _namespaced(values: Sequence[str]) -> Callable[[str, str], bool]:
    """Hubble's ``[namespace/][name prefix]``: no namespace is the default one (as
    k8s.ParseNamespaceName); an empty namespace before the slash (``/name``, what
    ``--all-namespaces`` makes) is any namespace."""
    parsed = []
    for v in values:
        if "/" in v:
            ns, prefix = v.split("/", 1)
            any_ns = ns == ""
        else:
            ns, prefix, any_ns = "default", v, False
            if not v:
                raise FilterError(f"invalid filter, must be [namespace/][<name>], got {v!r}")
        parsed.append((ns, prefix, any_ns))

    def match(ns: str, name: str) -> bool:
        if not ns and not name:
            return False
        return any((not p or name.startswith(p)) and (any_ns or n == ns)
                   for n, p, any_ns in parsed)
    return match


# Kubernetes label selectors over Cilium labels (pkg/hubble/filters/labels.go).
_COLON_SOURCE = re.compile(r"([^,]\s*[a-z0-9-]+):([a-z0-9-]+)")
_REQ = re.compile(r"""\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*
                      (?:(?P<op>==|=|!=|\s+in\s+|\s+notin\s+|>|<)\s*
                         (?P<val>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$""", re.X)


@dataclass(frozen=True)
class _Requirement:
    source: str             # "" any source
    key: str
    op: str                 # exists, !exists, =, !=, in, notin, >, <
    values: tuple[str, ...]


def _split_source(key: str) -> tuple[str, str]:
    """Cilium's parseSource with '.': the part before the first dot is the source."""
    if key.startswith("$"):
        return "reserved", key[1:]
    if "." in key:
        src, rest = key.split(".", 1)
        return src, rest
    return "", key


def _split_requirements(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


@lru_cache(maxsize=256)
def parse_selector(selector: str) -> tuple[_Requirement, ...]:
    """A Kubernetes label selector (``k8s:app=foo,env in (a,b),!debug``), with Cilium's
    source prefixes (``k8s:``, ``reserved:``), as Hubble parses it."""
    translated = _COLON_SOURCE.sub(r"\1.\2", selector)
    reqs = []
    for part in _split_requirements(translated):
        m = _REQ.match(part)
        if not m:
            raise FilterError(f"invalid label selector {selector!r}")
        src, key = _split_source(m.group("key"))
        op = (m.group("op") or "").strip()
        val = m.group("val")
        if m.group("neg"):
            if op:
                raise FilterError(f"invalid label selector {selector!r}")
            reqs.append(_Requirement(src, key, "!exists", ()))
        elif not op:
            reqs.append(_Requirement(src, key, "exists", ()))
        elif op in ("in", "notin"):
            if not val or not val.startswith("("):
                raise FilterError(f"invalid label selector {selector!r}")
            values = tuple(v.strip() for v in val[1:-1].split(",") if v.strip())
            reqs.append(_Requirement(src, key, op, values))
        elif op in (">", "<"):
            try:
                int(val)
            except (TypeError, ValueError):
                raise FilterError(f"invalid label selector {selector!r}") from None
            reqs.append(_Requirement(src, key, op, (val,)))
        else:
            reqs.append(_Requirement(src, key, "=" if op in ("=", "==") else "!=", (val or "",)))
    return tuple(reqs)


def _parse_labels(labels: Iterable[str]) -> list[tuple[str, str, str]]:
    """Cilium labels ``source:key=value`` -> (source, key, value)."""
    out = []
    for label in labels:
        src, rest = ("", label)
        if label.startswith("$"):
            src, rest = "reserved", label[1:]
        elif ":" in label:
            src, rest = label.split(":", 1)
        key, _, value = rest.partition("=")
        out.append((src, key, value))
    return out


def _selector_matches(reqs: Sequence[_Requirement], labels: list[tuple[str, str, str]]) -> bool:
    for req in reqs:
        found = [v for s, k, v in labels
                 if k == req.key and (not req.source or req.source == "any" or s == req.source)]
        has = bool(found)
        value = found[0] if found else None
        if req.op == "exists":
            ok = has
        elif req.op == "!exists":
            ok = not has
        elif req.op == "=":
            ok = has and value == req.values[0]
        elif req.op == "!=":
            ok = not has or value != req.values[0]
        elif req.op == "in":
            ok = has and value in req.values
        elif req.op == "notin":
            ok = not has or value not in req.values
        else:
            try:
                ok = has and (int(value) > int(req.values[0]) if req.op == ">"
                              else int(value) < int(req.values[0]))
            except ValueError:
                ok = False
        if not ok:
            return False
    return True


def _labels(selectors: Sequence[str]) -> Callable[[Sequence[str]], bool]:
    parsed = [parse_selector(s) for s in selectors]

    def match(labels: Sequence[str]) -> bool:
        lab = _parse_labels(labels)
        return any(_selector_matches(p, lab) for p in parsed)
    return match


def _ports(values: Sequence[str]) -> set[int]:
    out = set()
    for v in values:
        try:
            port = int(v, 10)
        except ValueError:
            raise FilterError(f"invalid port {v!r}") from None
        if not 0 <= port <= 65535:
            raise FilterError(f"invalid port {v!r}")
        out.add(port)
    return out


def _l4_ports(flow) -> tuple[int, int] | None:
    l4 = flow.l4
    kind = l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        p = getattr(l4, kind)
        return p.source_port, p.destination_port
    return None


_PROTOCOLS = {"tcp", "udp", "sctp", "icmp", "icmpv4", "icmpv6", "dns", "http", "kafka"}


def _protocols(values: Sequence[str]) -> Callable[[object], bool]:
    wanted = set()
    for v in values:
        p = v.lower()
        if p not in _PROTOCOLS:
            raise FilterError(f"unknown protocol: {v!r}")
        wanted.add(p)

    def match(flow) -> bool:
        kind = flow.l4.WhichOneof("protocol")
        for p in wanted:
            if p == "tcp" and kind == "TCP" or p == "udp" and kind == "UDP" \
                    or p == "sctp" and kind == "SCTP" \
                    or p == "icmp" and kind in ("ICMPv4", "ICMPv6") \
                    or p == "icmpv4" and kind == "ICMPv4" or p == "icmpv6" and kind == "ICMPv6":
                return True
            if p in ("dns", "http", "kafka") and flow.HasField("l7") and \
                    flow.l7.WhichOneof("record") == p:
                return True
        return False
    return match


_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _fqdn_regexp(pattern: str) -> str:
    pattern = pattern.strip().lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not pattern:
        raise FilterError("empty pattern")
    if pattern.endswith("."):
        raise FilterError("multiple trailing dots in pattern")
    out = []
    for ch in pattern:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append("[-.0-9a-z]*")
        elif ch == "-" or ch == "_" or ch.isdigit() or "a" <= ch <= "z":
            out.append(ch)
        else:
            raise FilterError(f"{ch!r}: invalid rune in pattern")
    return "".join(out)


_FQDN = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"


def _node_names(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Hubble's node-name patterns: ``[cluster/]node``, ``*`` a wildcard, an empty
    element any name."""
    alts = []
    for pattern in patterns:
        if not pattern:
            raise FilterError("empty pattern")
        elems = pattern.split("/")
        if len(elems) > 2:
            raise FilterError("too many slashes in pattern")
        cluster, node = ("", elems[0]) if len(elems) == 1 else elems
        alts.append((_fqdn_regexp(cluster) if cluster else _FQDN) + "/"
                    + (_fqdn_regexp(node) if node else _FQDN))
    rx = re.compile(r"\A(?:" + "|".join(alts) + r")\Z")

    def match(name: str) -> bool:
        if not name:
            return False
        if "/" not in name:
            name = f"{CLUSTER_NAME}/{name}"
        return rx.match(name) is not None
    return match


@lru_cache(maxsize=1024)
def _compile_cached(data: bytes) -> tuple[Callable, ...]:
    flt = flow_pb2.FlowFilter()
    flt.ParseFromString(data)
    return _compile(flt)


def _compile(flt) -> tuple[Callable, ...]:
    """The checks of one FlowFilter (each a function of a Flow), all of which must pass."""
    checks: list[Callable] = []
    for fd, _ in flt.ListFields():
        if fd.name not in SUPPORTED:
            raise FilterError(f"flow filter field {fd.name} is not supported")
    if flt.uuid:
        uuids = set(flt.uuid)
        checks.append(lambda f: f.uuid in uuids)
    if flt.source_ip:
        m_sip = _ips(flt.source_ip)
        checks.append(lambda f: m_sip(f.IP.source))
    if flt.destination_ip:
        m_dip = _ips(flt.destination_ip)
        checks.append(lambda f: m_dip(f.IP.destination))
    if flt.source_pod:
        m_sp = _namespaced(flt.source_pod)
        checks.append(lambda f: m_sp(f.source.namespace, f.source.pod_name))
    if flt.destination_pod:
        m_dp = _namespaced(flt.destination_pod)
        checks.append(lambda f: m_dp(f.destination.namespace, f.destination.pod_name))
    if flt.source_service:
        m_ss = _namespaced(flt.source_service)
        checks.append(lambda f: m_ss(f.source_service.namespace, f.source_service.name))
    if flt.destination_service:
        m_ds = _namespaced(flt.destination_service)
        checks.append(lambda f: m_ds(f.destination_service.namespace,
                                     f.destination_service.name))
    if flt.source_label:
        m_sl = _labels(flt.source_label)
        checks.append(lambda f: m_sl(f.source.labels))
    if flt.destination_label:
        m_dl = _labels(flt.destination_label)
        checks.append(lambda f: m_dl(f.destination.labels))
    if flt.source_identity:
        sids = set(flt.source_identity)
        checks.append(lambda f: f.source.identity in sids)
    if flt.destination_identity:
        dids = set(flt.destination_identity)
        checks.append(lambda f: f.destination.identity in dids)
    if flt.verdict:
        verdicts = set(flt.verdict)
        checks.append(lambda f: f.verdict in verdicts)
    if _HAS_DROP_REASON_DESC and flt.drop_reason_desc:
        reasons = set(flt.drop_reason_desc)
        checks.append(lambda f: f.drop_reason_desc in reasons)
    if flt.event_type:
        types = [(t.type, t.match_sub_type, t.sub_type) for t in flt.event_type]

        def event_type(f) -> bool:
            if not f.HasField("event_type"):
                return False
            et = f.event_type
            return any((not t or et.type == t) and (not ms or et.sub_type == st)
                       for t, ms, st in types)
        checks.append(event_type)
    if flt.source_port:
        sports = _ports(flt.source_port)
        checks.append(lambda f: (p := _l4_ports(f)) is not None and p[0] in sports)
    if flt.destination_port:
        dports = _ports(flt.destination_port)
        checks.append(lambda f: (p := _l4_ports(f)) is not None and p[1] in dports)
    if flt.protocol:
        checks.append(_protocols(flt.protocol))
    if flt.tcp_flags:
        wanted = [tuple(n for n in _FLAG_NAMES if getattr(t, n)) for t in flt.tcp_flags]

        def tcp_flags(f) -> bool:
            if f.l4.WhichOneof("protocol") != "TCP" or not f.l4.TCP.HasField("flags"):
                return False
            have = f.l4.TCP.flags
            return any(all(getattr(have, n) for n in names) for names in wanted)
        checks.append(tcp_flags)
    if flt.traffic_direction:
        directions = set(flt.traffic_direction)
        checks.append(lambda f: f.traffic_direction in directions)
    if flt.node_name:
        m_node = _node_names(flt.node_name)
        checks.append(lambda f: m_node(f.node_name))
    if flt.ip_version:
        versions = set(flt.ip_version)
        checks.append(lambda f: f.HasField("IP") and f.IP.ipVersion in versions)
    if flt.reply:
        replies = set(flt.reply)
        checks.append(lambda f: f.HasField("is_reply") and f.is_reply.value in replies)
    return tuple(checks)


def compile_filter(flt) -> Callable[[object], bool]:
    """A function Flow -> bool for one FlowFilter (FilterError for a bad one)."""
    checks = _compile_cached(flt.SerializeToString(deterministic=True))
    return lambda flow: all(check(flow) for check in checks)


def flow_matches(flow, flt) -> bool:
    """Whether *flow* (flow.Flow, or a GetFlowsResponse carrying one) matches *flt*."""
    if hasattr(flow, "flow") and not hasattr(flow, "verdict"):
        flow = flow.flow
    return compile_filter(flt)(flow)


class FlowSelector:
    """whitelist/blacklist compiled once: ``selector(flow) -> bool``."""

    def __init__(self, whitelist: Sequence = (), blacklist: Sequence = ()):
        self._white = [compile_filter(f) for f in whitelist]
        self._black = [compile_filter(f) for f in blacklist]

    def __call__(self, flow) -> bool:
        if hasattr(flow, "flow") and not hasattr(flow, "verdict"):
            flow = flow.flow
        if self._white and not any(m(flow) for m in self._white):
            return False
        return not any(m(flow) for m in self._black)


def select(flows: Iterable, whitelist: Sequence = (), blacklist: Sequence = ()) -> list:
    """The flows (Flow or GetFlowsResponse) passing *whitelist* and *blacklist*."""
    selector = FlowSelector(whitelist, blacklist)
    return [f for f in flows if selector(f)]


# ----------------------------------------------------------- hubble observe


class _Tracker:
    """One side (whitelist or blacklist) of hubble observe's filterTracker: a left
    and a right filter (their OR), and the namespaces to apply."""

    def __init__(self):
        self.left = None
        self.right = None
        self.ns: list[str] = []
        self.src_ns: list[str] = []
        self.dst_ns: list[str] = []

    def apply_left(self, fn):
        if self.left is None:
            self.left = flow_pb2.FlowFilter()
        fn(self.left)

    def apply_right(self, fn):
        if self.right is None:
            self.right = flow_pb2.FlowFilter()
        fn(self.right)

    def apply(self, fn):
        self.apply_left(fn)
        self.apply_right(fn)

    def filters(self) -> list:
        if self.left is None and self.right is None and not (self.ns or self.src_ns
                                                             or self.dst_ns):
            return []
        left = self.left or flow_pb2.FlowFilter()
        right = self.right or flow_pb2.FlowFilter()
        if self.dst_ns:
            _apply_dest(left, self.dst_ns)
            _apply_dest(right, self.dst_ns)
        if self.src_ns:
            _apply_src(left, self.src_ns)
            _apply_src(right, self.src_ns)
        if self.ns:
            _apply_src(left, self.ns)
            _apply_dest(right, self.ns)
        if left == right:
            return [left]
        return [left, right]


def _add_namespaces(values: Sequence[str], namespaces: Sequence[str]) -> list[str]:
    if not namespaces or not values:
        return list(values)
    out = []
    for v in values:
        if "/" in v:
            out.append(v)
            continue
        out.extend(f"{ns}/{v}" for ns in namespaces)
    return out


def _apply_src(ff, namespaces):
    if not ff.source_pod and not ff.source_service:
        ff.source_pod.append("")
    pods = _add_namespaces(ff.source_pod, namespaces)
    svcs = _add_namespaces(ff.source_service, namespaces)
    del ff.source_pod[:]
    ff.source_pod.extend(pods)
    del ff.source_service[:]
    ff.source_service.extend(svcs)


def _apply_dest(ff, namespaces):
    if not ff.destination_pod and not ff.destination_service:
        ff.destination_pod.append("")
    pods = _add_namespaces(ff.destination_pod, namespaces)
    svcs = _add_namespaces(ff.destination_service, namespaces)
    del ff.destination_pod[:]
    ff.destination_pod.extend(pods)
    del ff.destination_service[:]
    ff.destination_service.extend(svcs)


_TCP_FLAG_SET = {n: n for n in _FLAG_NAMES}


def _tcp_flags(value: str):
    flags = flow_pb2.TCPFlags()
    for name in value.split(","):
        up = name.strip().upper()
        if up not in _TCP_FLAG_SET:
            raise FilterError(f"unknown tcp flag: {name}")
        setattr(flags, up, True)
    return flags


def _event_type(value: str):
    t = flow_pb2.EventTypeFilter()
    head, _, sub = value.partition(":")
    if head in MESSAGE_TYPE_NAMES:
        t.type = MESSAGE_TYPE_NAMES[head]
    else:
        try:
            t.type = int(head, 10)
        except ValueError:
            raise FilterError(f"unable to parse type {head!r}, not a known type name "
                              f"({', '.join(MESSAGE_TYPE_NAMES)}) and not a number") from None
    if sub:
        if t.type == MESSAGE_TYPE_NAMES["trace"] and sub in TRACE_POINT_NAMES:
            t.sub_type = TRACE_POINT_NAMES[sub]
        else:
            try:
                t.sub_type = int(sub, 10)
            except ValueError:
                raise FilterError(f"unable to parse event sub-type {sub!r}") from None
        t.match_sub_type = True
    return t


def _verdict(value: str) -> int:
    try:
        return flow_pb2.Verdict.Value(value)
    except ValueError:
        raise FilterError(f"invalid --verdict value: {value}") from None


def _drop_reason(value: str) -> int:
    if not value:
        raise FilterError("empty --drop-reason-desc value")
    try:
        return flow_pb2.DropReason.Value(value)
    except ValueError:
        raise FilterError(f"invalid --drop-reason-desc value: {value}") from None


def _traffic_direction(value: str) -> int:
    v = value.lower()
    if v == "ingress":
        return flow_pb2.INGRESS
    if v == "egress":
        return flow_pb2.EGRESS
    raise FilterError(f"{v}: invalid traffic direction, expected ingress or egress")


def _ip_version(value: str) -> int:
    v = value.lower()
    if v in ("4", "v4", "ipv4", "ip4"):
        return flow_pb2.IPv4
    if v in ("6", "v6", "ipv6", "ip6"):
        return flow_pb2.IPv6
    return flow_pb2.IP_NOT_USED


def _identity(value: str) -> int:
    from harness.observe.flows import RESERVED_NAMES
    by_name = {n: i for i, n in RESERVED_NAMES.items()}
    if value in by_name:
        return by_name[value]
    try:
        return int(value, 10)
    except ValueError:
        raise FilterError(f"invalid security identity {value!r}, expected one of "
                          f"{', '.join(sorted(by_name))} or a numeric value") from None


#: Options that come as X (either side), from-X and to-X: FlowFilter's source and
#: destination fields, and how the value is read.
_PAIRED = {
    "pod": ("source_pod", "destination_pod", str),
    "ip": ("source_ip", "destination_ip", str),
    "label": ("source_label", "destination_label", str),
    "service": ("source_service", "destination_service", str),
    "port": ("source_port", "destination_port", str),
    "identity": ("source_identity", "destination_identity", _identity),
}


def _set(t: _Tracker, name: str, val) -> None:
    """hubble observe's flowFilter.set for one option."""
    def both(left_field, right_field, value):
        t.apply_left(lambda f: getattr(f, left_field).append(value))
        t.apply_right(lambda f: getattr(f, right_field).append(value))

    def each(fld, value):
        t.apply(lambda f: getattr(f, fld).append(value))

    base = name.removeprefix("from-").removeprefix("to-")
    if base in _PAIRED:
        src, dst, convert = _PAIRED[base]
        value = convert(val)
        if name.startswith("from-"):
            each(src, value)
        elif name.startswith("to-"):
            each(dst, value)
        else:
            both(src, dst, value)
    elif name == "uuid":
        each("uuid", val)
    elif name == "ipv4":
        each("ip_version", flow_pb2.IPv4)
    elif name == "ipv6":
        each("ip_version", flow_pb2.IPv6)
    elif name == "ip-version":
        each("ip_version", _ip_version(val))
    elif name == "namespace":
        t.ns.append(val)
    elif name == "from-namespace":
        t.src_ns.append(val)
    elif name == "to-namespace":
        t.dst_ns.append(val)
    elif name == "all-namespaces":
        t.ns.append("")
    elif name == "verdict":
        each("verdict", _verdict(val))
    elif name == "drop-reason-desc":
        if not _HAS_DROP_REASON_DESC:
            raise FilterError("--drop-reason-desc: this build's FlowFilter has no "
                              "drop_reason_desc field")
        each("drop_reason_desc", _drop_reason(val))
    elif name == "type":
        et = _event_type(val)
        t.apply(lambda f: f.event_type.append(et))
    elif name == "protocol":
        each("protocol", val)
    elif name in ("node", "node-name"):
        each("node_name", val)
    elif name == "tcp-flags":
        flags = _tcp_flags(val)
        t.apply(lambda f: f.tcp_flags.append(flags))
    elif name == "traffic-direction":
        each("traffic_direction", _traffic_direction(val))
    elif name == "reply":
        each("reply", val if isinstance(val, bool) else str(val).lower() in ("1", "true"))
    else:
        raise FilterError(f"unknown filter option --{name}")


#: Option groups hubble observe refuses to combine.
_CONFLICTS = (("from-ip", "ip", "from-namespace", "namespace", "all-namespaces"),
              ("from-ip", "ip", "from-pod", "pod"),
              ("to-ip", "ip", "to-namespace", "namespace", "all-namespaces"),
              ("to-ip", "ip", "to-pod", "pod"),
              ("to-pod", "namespace", "all-namespaces"),
              ("from-pod", "namespace", "all-namespaces"),
              ("to-service", "namespace", "all-namespaces"),
              ("from-service", "namespace", "all-namespaces"),
              ("label", "from-label"), ("label", "to-label"),
              ("service", "from-service"), ("service", "to-service"),
              ("port", "to-port"), ("port", "from-port"),
              ("identity", "to-identity"), ("identity", "from-identity"))

#: hubble observe's filter options, as filters_from_cli reads them (argparse dest names
#: use '_' for '-').
CLI_OPTIONS = ("uuid", "pod", "from-pod", "to-pod", "ip", "from-ip", "to-ip", "ip-version",
               "label", "from-label", "to-label", "namespace", "from-namespace", "to-namespace",
               "service", "from-service", "to-service", "port", "from-port", "to-port",
               "identity", "from-identity", "to-identity", "verdict", "drop-reason-desc",
               "type", "protocol", "node", "node-name", "tcp-flags", "traffic-direction")


def filters_from_cli(args, *, options: Sequence[tuple[str, object]] | None = None) -> tuple[list, list]:
    """(whitelist, blacklist) of FlowFilters from hubble-observe-like options.

    *args*: an argparse Namespace (or a mapping) with list-valued attributes named
    after CLI_OPTIONS (``from_pod`` for ``--from-pod``), plus optional booleans
    ``ipv4``, ``ipv6``, ``all_namespaces``, ``reply`` (True/False/None) and ``not_``
    (a list of ``(option, value)`` pairs: hubble's ``--not --option value``,
    which go to the blacklist).  Or *options*: the options in command-line order as
    ``(name, value)`` pairs (``("not", None)`` sends the next one to the blacklist).
    Raises FilterError for a bad value or a combination hubble refuses.
    """
    pairs: list[tuple[str, object]] = []
    if options is not None:
        pairs = list(options)
    else:
        get = (args.get if isinstance(args, Mapping)
               else lambda k, d=None: getattr(args, k, d))
        for name in CLI_OPTIONS:
            for value in get(name.replace("-", "_")) or ():
                pairs.append((name, value))
        for flag in ("ipv4", "ipv6", "all_namespaces"):
            if get(flag):
                pairs.append((flag.replace("_", "-"), None))
        reply = get("reply")
        if reply is not None:
            pairs.append(("reply", bool(reply)))
        for name, value in get("not_") or ():
            pairs.append(("not", None))
            pairs.append((name, value))
    white, black = _Tracker(), _Tracker()
    changed: dict[int, list[str]] = {id(white): [], id(black): []}
    negate = False
    for name, value in pairs:
        if name == "not":
            if negate:
                raise FilterError("consecutive --not statements")
            negate = True
            continue
        tracker = black if negate else white
        negate = False
        seen = changed[id(tracker)]
        if name not in seen:
            seen.append(name)
        for group in _CONFLICTS:
            hits = [n for n in group if n in seen]
            if len(hits) > 1:
                raise FilterError(f"filters --{hits[0]} and --{hits[1]} cannot be combined")
        _set(tracker, name, value)
    return white.filters(), black.filters()
