"""``GetFlowsResponse`` messages as ``hubble observe -o compact|dict|json|jsonpb|table``
prints them (hubble/pkg/printer), returned as text (the CLI writes it).

- json, jsonpb (hubble's ``json`` is an alias of ``jsonpb``): the message's protojson
  with proto field names (Hubble's generated MarshalJSON) written by Go's
  encoding/json: one compact object per line, fields in the schema's declaration
  order, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\u003c`` ...;
- compact (hubble's default): ``Dec  7 13:52:42.123: default/a:1234 (ID:1234) ->
  default/b:80 (ID:5678) to-endpoint FORWARDED (TCP Flags: SYN)``; the arrow and
  the sides flip for a reply, ``<>`` when it is not known;
- dict: ``  TIMESTAMP: ...`` key/value blocks separated by ``------------``;
- table: TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY, aligned as Go's
  tabwriter (min width 2, padding 3) once every row is known (``flush``).

Timestamps use Go's StampMilli in UTC; names (pod, service) replace addresses as
with ``--ip-translation`` (hubble's default); ``node_name=True`` is
``--print-node-name``.
"""
from __future__ import annotations

import datetime as _dt
import json
from typing import Iterable

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from harness.abi import drop_reasons
from harness.observe.proto import flow_pb2

FORMATS = ("compact", "dict", "json", "jsonpb", "table")
DICT_SEPARATOR = "------------"

# Cilium's names for what Hubble prints (pkg/monitor/api, pkg/identity).
MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_TRACE_SOCK = 1, 4, 5, 7
TRACE_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
                5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack",
                9: "from-overlay", 10: "from-network", 11: "to-network", 12: "from-crypto",
                13: "to-crypto"}
POLICY_MATCH = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all", 5: "L3-Proto",
                6: "Proto-Only"}
RESERVED_IDENTITIES = {0: "unknown", 1: "host", 2: "world", 3: "unmanaged", 4: "health",
                       5: "init", 6: "remote-node", 7: "kube-apiserver", 8: "ingress",
                       9: "world-ipv4", 10: "world-ipv6"}
#: Cilium's drop reason texts (pkg/monitor/api/drop.go), for the TYPE of a drop.
DROP_REASONS = {
    0: "Success", 2: "Invalid packet", 3: "Interface", 4: "Interface Decrypted",
    130: "Invalid source mac", 131: "Invalid destination mac", 132: "Invalid source ip",
    133: "Policy denied", 134: "Invalid packet", 135: "CT: Truncated or invalid header",
    136: "Fragmentation needed", 137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet", 139: "Unsupported L3 protocol",
    140: "Missed tail call", 141: "Error writing to packet", 142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code", 144: "Unknown ICMPv4 type", 145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type", 147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options", 149: "Invalid Geneve option",
    150: "Unknown L3 target address", 151: "Stale or unroutable IP",
    152: "No matching local container found", 153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum", 155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header", 157: "IP fragmentation not supported",
    158: "Service backend not found", 160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "NAT 46/64 not enabled", 162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state", 164: "Local host is unreachable",
    165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol", 167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade", 169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited", 171: "Invalid identity", 172: "Unknown sender",
    173: "NAT not needed", 174: "Is a ClusterIP",
    175: "First logical datagram fragment not found", 176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check", 178: "Socket lookup failed",
    179: "Socket assign failed", 180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist", 182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP", 184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address", 186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)", 189: "Authentication required",
    190: "No conntrack map found", 191: "No nat map found", 192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation", 194: "No egress gateway found",
    195: "Traffic is unencrypted", 196: "TTL exceeded", 197: "No node ID found",
    198: "Rate limited"}
_SOCK_POINTS = {1: "pre-xlate-fwd", 2: "post-xlate-fwd", 3: "pre-xlate-rev", 4: "post-xlate-rev"}


def drop_reason_text(code: int) -> str:
    """Cilium's text for a drop reason (the number when it has none)."""
    return DROP_REASONS.get(code) or (drop_reasons.DESCRIPTIONS.get(code) if code else None) \
        or str(code)


# ------------------------------------------------------------------------ json


_HTML_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                               "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _ordered(message, value):
    """MessageToDict's output with every object's keys in the schema's declaration order
    (Go's protojson order; MessageToDict sorts by field number)."""
    if not isinstance(value, dict) or message.DESCRIPTOR.full_name.startswith("google.protobuf."):
        return value
    out = {}
    for fd in message.DESCRIPTOR.fields:
        if fd.name not in value:
            continue
        v = value[fd.name]
        if fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            sub = getattr(message, fd.name)
            if fd.is_repeated:
                v = [_ordered(m, x) for m, x in zip(sub, v)]
            else:
                v = _ordered(sub, v)
        out[fd.name] = v
    return out


def to_json(response) -> str:
    """One line of ``hubble observe -o json`` (= ``-o jsonpb``) for *response*."""
    d = json_format.MessageToDict(response, preserving_proto_field_name=True)
    text = json.dumps(_ordered(response, d), separators=(",", ":"), ensure_ascii=False)
    return text.translate(_HTML_ESCAPES)


# ------------------------------------------------------------ text helpers


def format_time(ts) -> str:
    """Go's time.StampMilli ("Jan _2 15:04:05.000") in UTC; "N/A" without a time."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return "N/A"
    t = _dt.datetime.fromtimestamp(ts.seconds, _dt.timezone.utc)
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}.{ts.nanos // 1_000_000:03d}"


def _ports(f) -> tuple[str, str]:
    kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    if kind in ("TCP", "UDP", "SCTP"):
        p = getattr(f.l4, kind)
        return str(p.source_port), str(p.destination_port)
    return "", ""


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hostname(ip: str, port: str, ns: str, pod: str, svc: str, names, translate: bool) -> str:
    """Hubble's Printer.Hostname."""
    host = ip
    if translate:
        if pod:
            host = f"{ns}/{pod}" if ns else pod
        elif svc:
            host = f"{ns}/{svc}" if ns else svc
        elif names:
            host = ",".join(names)
    if port and port != "0":
        return _join_host_port(host, port)
    return host


def host_names(f, translate: bool = True) -> tuple[str, str]:
    """Hubble's GetHostNames: the source and destination as printed."""
    if not f.HasField("IP"):
        if f.HasField("ethernet"):
            return f.ethernet.source, f.ethernet.destination
        return "", ""
    src_ns, src_pod = f.source.namespace, f.source.pod_name
    dst_ns, dst_pod = f.destination.namespace, f.destination.pod_name
    src_svc = dst_svc = ""
    if f.HasField("source_service"):
        src_ns, src_svc = f.source_service.namespace, f.source_service.name
    if f.HasField("destination_service"):
        dst_ns, dst_svc = f.destination_service.namespace, f.destination_service.name
    sport, dport = _ports(f)
    return (hostname(f.IP.source, sport, src_ns, src_pod, src_svc, list(f.source_names), translate),
            hostname(f.IP.destination, dport, dst_ns, dst_pod, dst_svc,
                     list(f.destination_names), translate))


def fmt_identity(identity: int) -> str:
    name = RESERVED_IDENTITIES.get(identity)
    return f"({name})" if name is not None else f"(ID:{identity})"


def flow_type(f) -> str:
    """Hubble's GetFlowType: the TYPE column."""
    et = f.event_type
    if et.type == MSG_TRACE:
        return TRACE_POINTS.get(et.sub_type, str(et.sub_type))
    if et.type == MSG_DROP:
        return drop_reason_text(et.sub_type)
    if et.type == MSG_POLICY_VERDICT:
        return (f"policy-verdict:{POLICY_MATCH.get(f.policy_match_type, 'unknown')} "
                f"{flow_pb2.TrafficDirection.Name(f.traffic_direction)}")
    if et.type == MSG_TRACE_SOCK:
        return _SOCK_POINTS.get(f.sock_xlate_point) or \
            flow_pb2.SocketTranslationPoint.Name(f.sock_xlate_point)
    return "UNKNOWN"


def verdict_text(f) -> str:
    """Hubble's getVerdict (ALLOWED/DENIED/AUDITED for policy verdicts)."""
    name = flow_pb2.Verdict.Name(f.verdict) if f.verdict in flow_pb2.Verdict.values() \
        else str(f.verdict)
    pv = f.event_type.type == MSG_POLICY_VERDICT
    if f.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED) and pv:
        return "ALLOWED"
    if f.verdict in (flow_pb2.DROPPED, flow_pb2.ERROR) and pv:
        return "DENIED"
    if f.verdict == flow_pb2.AUDIT and pv:
        return "AUDITED"
    return name


def summary_text(f) -> str:
    """Hubble's getSummary."""
    out = ""
    if "ip_trace_id" in f.DESCRIPTOR.fields_by_name and f.HasField("ip_trace_id") \
            and f.ip_trace_id.trace_id > 0:
        out += f"IP Trace ID: {f.ip_trace_id.trace_id}; "
    out += f.Summary
    if f.auth_type:
        out += "; Auth: " + flow_pb2.AuthType.Name(f.auth_type)
    return out


# ----------------------------------------------------------------- printer


class Printer:
    """Formats GetFlowsResponse messages as ``hubble observe -o <output>``.

    ``format(response)`` returns the text for one response (a line with its newline;
    "" for ``table``, whose rows are aligned only once all are known), ``flush()``
    the table (header and rows) or "".
    """

    def __init__(self, output: str = "compact", *, node_name: bool = False,
                 ip_translation: bool = True):
        if output not in FORMATS:
            raise ValueError(f"invalid output format: {output} (one of {', '.join(FORMATS)})")
        self.output = output
        self.node_name = node_name
        self.ip_translation = ip_translation
        self._line = 0
        self._rows: list[list[str]] = []

    def format(self, response) -> str:
        if self.output in ("json", "jsonpb"):
            return to_json(response) + "\n"
        if not response.HasField("flow"):
            return ""
        f = response.flow
        src, dst = host_names(f, self.ip_translation)
        if self.output == "compact":
            src_id, dst_id = fmt_identity(f.source.identity), fmt_identity(f.destination.identity)
            node = f" [{f.node_name}]" if self.node_name else ""
            arrow = "->"
            if not f.HasField("is_reply"):
                arrow = "<>"
            elif f.is_reply.value:
                src, dst, src_id, dst_id, arrow = dst, src, dst_id, src_id, "<-"
            self._line += 1
            return (f"{format_time(f.time)}{node}: {src} {src_id} {arrow} {dst} {dst_id} "
                    f"{flow_type(f)} {verdict_text(f)} ({summary_text(f)})\n")
        if self.output == "dict":
            lines = []
            if self._line:
                lines.append(DICT_SEPARATOR)
            lines.append(f"  TIMESTAMP: {format_time(f.time)}")
            if self.node_name:
                lines.append(f"       NODE: {f.node_name}")
            lines += [f"     SOURCE: {src}", f"DESTINATION: {dst}", f"       TYPE: {flow_type(f)}",
                      f"    VERDICT: {verdict_text(f)}", f"    SUMMARY: {summary_text(f)}"]
            self._line += 1
            return "\n".join(lines) + "\n"
        # table
        if not self._rows:
            self._rows.append(["TIMESTAMP"] + (["NODE"] if self.node_name else [])
                              + ["SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"])
        self._rows.append([format_time(f.time)] + ([f.node_name] if self.node_name else [])
                          + [src, dst, flow_type(f), verdict_text(f), summary_text(f)])
        self._line += 1
        return ""

    def flush(self) -> str:
        """The table so far (Go's tabwriter: each column but the last padded to its
        widest cell + 3), or "" for the other formats."""
        if self.output != "table" or not self._rows:
            return ""
        rows, self._rows = self._rows, []
        widths = [max(2, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]) - 1)]
        return "".join("".join(cell.ljust(w) for cell, w in zip(r, widths)) + r[-1] + "\n"
                       for r in rows)


def format_flows(responses: Iterable, output: str = "compact", **options) -> str:
    """All of *responses* in one format (the table aligned over all of them)."""
    printer = Printer(output, **options)
    return "".join(printer.format(r) for r in responses) + printer.flush()
