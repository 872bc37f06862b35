"""Hubble's flow metrics, as Prometheus exposes them, and the HTTP endpoint that serves them.

``FlowMetrics(registry, config)`` keeps the counters Hubble's metric handlers keep
(cilium/cilium pkg/hubble/metrics/{flow,drop,tcp,port-distribution,icmp}), with their
names, labels and rules:

- ``flow``: ``hubble_flows_processed_total{protocol,type,subtype,verdict}``, every flow;
  type from the monitor message type (``Drop``, ``Trace`` with the observation point as
  subtype, ``PolicyVerdict``, ``L7`` with ``DNS``/``HTTP``/``Kafka``, ``Capture``; any
  other, such as a socket translation, ``Unknown`` with the type's number);
- ``drop``: ``hubble_drop_total{reason,protocol}``, DROPPED flows, reason the
  ``DropReason`` enum name (``POLICY_DENIED``);
- ``tcp``: ``hubble_tcp_flags_total{flag,family}``, FORWARDED or REDIRECTED TCP flows with
  flags: ``SYN``, ``SYN-ACK``, ``FIN``, ``RST``;
- ``port-distribution``: ``hubble_port_distribution_total{protocol,port}``, FORWARDED or
  REDIRECTED flows known not to be replies (``is_reply`` set and false), by destination
  port (0 for ICMP);
- ``icmp``: ``hubble_icmp_total{family,type}``, every ICMP flow, type as gopacket names
  it (``EchoRequest``, ``DestinationUnreachable(Port)``).

plus ``hubble_lost_events_total{source}`` (``observe_lost``).  Each metric takes
Hubble's context options (``metrics_config``): ``sourceContext`` /
``destinationContext`` (``identity|namespace|pod|pod-short|pod-name|dns|ip|
reserved-identity|workload-name|app``, alternatives separated by ``|``, the first
non-empty one wins) add a ``source`` / ``destination`` label; their ``Egress`` /
``Ingress`` variants override them for flows of that direction; ``labelsContext``
adds the listed ``source_pod``, ``destination_namespace``, ... labels.  The syntax is
Hubble's ``--metrics`` list: ``drop:sourceContext=namespace;destinationContext=pod``;
none given: Hubble's defaults, ``drop tcp flow port-distribution icmp``.

Every counter lives in the caller's ``CollectorRegistry`` (never the global one);
``serve`` exposes a registry over HTTP until ``close()``.  The datapath's own
counters, read from the node's pinned maps at scrape time, are
harness.observe.datapath_metrics.DatapathCollector.
"""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.exposition import start_http_server

from harness.errors import ChainbenchError, InputError
from harness.host import netns
from harness.observe import icmp_names

NAMESPACE = "hubble"
#: Hubble's metrics when none are named (its Helm chart's default set).
DEFAULT_METRICS = ("drop", "tcp", "flow", "port-distribution", "icmp")

# pkg/monitor/api: the monitor message types a flow's event_type.type carries.
MSG_DROP, MSG_CAPTURE, MSG_TRACE, MSG_POLICY_VERDICT = 1, 3, 4, 5
MSG_TRACE_SOCK, MSG_ACCESS_LOG = 7, 129
#: pkg/monitor/api TraceObservationPoints: a Trace flow's subtype.
TRACE_POINTS = {0: "to-endpoint", 1: "to-proxy", 2: "to-host", 3: "to-stack", 4: "to-overlay",
                5: "from-endpoint", 6: "from-proxy", 7: "from-host", 8: "from-stack",
                9: "from-overlay", 10: "from-network", 11: "to-network", 12: "to-crypto",
                13: "from-crypto"}


class MetricsConfigError(InputError, ValueError):
    """A metric or one of its options Hubble's syntax does not know (one line, exit 2)."""


# --- Hubble's --metrics syntax -------------------------------------------------------------

def parse_metrics(specs: Iterable[str] | None) -> dict[str, dict[str, str]]:
    """``["drop:sourceContext=namespace;destinationContext=pod", "tcp"]`` -> {metric:
    {option: value}} (Hubble's ParseMetricList and ParseOptions; several metrics may
    share one argument separated by spaces, as Cilium's ``hubble-metrics`` setting
    does).  None or nothing: Hubble's default set.  Checked: unknown metric or option."""
    items = [item for spec in (specs or ()) for item in spec.split()]
    if not items:
        items = list(DEFAULT_METRICS)
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        name, _, raw = item.partition(":")
        if name not in _HANDLERS:
            raise MetricsConfigError(f"--metrics {item!r}: metric '{name}' does not exist "
                                     f"(known: {', '.join(_HANDLERS)})")
        options: dict[str, str] = {}
        for option in raw.split(";"):
            if option:
                key, _, value = option.partition("=")
                options[key] = value
        ContextOptions.parse(options, item)           # checked now: one line naming it
        parsed[name] = options
    return parsed


_IDENTIFIERS = ("identity", "namespace", "pod", "pod-short", "pod-name", "dns", "ip",
                "reserved-identity", "workload-name", "app")
#: labelsContext's labels, in the order Hubble adds them.
_CONTEXT_LABELS = ("source_ip", "source_pod", "source_namespace", "source_workload",
                   "source_app", "destination_ip", "destination_pod", "destination_namespace",
                   "destination_workload", "destination_app", "traffic_direction")
_CONTEXT_KEYS = {"sourcecontext": "source", "sourceegresscontext": "source_egress",
                 "sourceingresscontext": "source_ingress", "destinationcontext": "destination",
                 "destinationegresscontext": "destination_egress",
                 "destinationingresscontext": "destination_ingress",
                 "labelscontext": "labels"}
_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_APP_LABELS = ("k8s:app.kubernetes.io/name", "k8s:k8s-app", "k8s:app")
_KUBE_APISERVER = "reserved:kube-apiserver"
_INGRESS, _EGRESS = 1, 2                    # flow.TrafficDirection


class ContextOptions:
    """A metric's source/destination context options (pkg/hubble/metrics/api/context.go)."""

    def __init__(self) -> None:
        self.source: tuple[str, ...] = ()
        self.source_egress: tuple[str, ...] = ()
        self.source_ingress: tuple[str, ...] = ()
        self.destination: tuple[str, ...] = ()
        self.destination_egress: tuple[str, ...] = ()
        self.destination_ingress: tuple[str, ...] = ()
        self.labels: tuple[str, ...] = ()

    @classmethod
    def parse(cls, options: Mapping[str, str], where: str = "") -> "ContextOptions":
        ctx = cls()
        for key, value in options.items():
            attr = _CONTEXT_KEYS.get(key.lower())
            if attr is None:
                raise MetricsConfigError(
                    f"--metrics {where!r}: unknown option '{key}' (options: sourceContext, "
                    "destinationContext, sourceEgressContext, sourceIngressContext, "
                    "destinationEgressContext, destinationIngressContext, labelsContext)")
            if attr == "labels":
                wanted = value.split(",")
                bad = [w for w in wanted if w not in _CONTEXT_LABELS]
                if bad:
                    raise MetricsConfigError(f"--metrics {where!r}: invalid labelsContext value "
                                             f"'{bad[0]}' (labels: {', '.join(_CONTEXT_LABELS)})")
                ctx.labels = tuple(label for label in _CONTEXT_LABELS if label in wanted)
                continue
            ids = tuple(v.lower() for v in value.split("|"))
            bad = [v for v in ids if v not in _IDENTIFIERS]
            if bad:
                raise MetricsConfigError(f"--metrics {where!r}: {key}: unknown context '{bad[0]}' "
                                         f"(contexts: {'|'.join(_IDENTIFIERS)})")
            setattr(ctx, attr, ids)
        return ctx

    def label_names(self) -> list[str]:
        return (list(self.labels) + (["source"] if self.source else [])
                + (["destination"] if self.destination else []))

    def label_values(self, flow) -> list[str]:
        values = [_labels_context(label, flow) for label in self.labels]
        direction = flow.traffic_direction
        source_ids, dest_ids = self.source, self.destination
        if self.source_ingress and direction == _INGRESS:
            source_ids = self.source_ingress
        elif self.source_egress and direction == _EGRESS:
            source_ids = self.source_egress
        if self.destination_ingress and direction == _INGRESS:
            dest_ids = self.destination_ingress
        elif self.destination_egress and direction == _EGRESS:
            dest_ids = self.destination_egress
        if self.source:
            values.append(_first_context(source_ids, flow, True))
        if self.destination:
            values.append(_first_context(dest_ids, flow, False))
        return values


def _first_context(ids: Iterable[str], flow, source: bool) -> str:
    for ident in ids:
        value = _context(ident, flow, source)
        if value:
            return value
    return ""


def _context(ident: str, flow, source: bool) -> str:
    ep = flow.source if source else flow.destination
    if ident == "namespace":
        return ep.namespace
    if ident == "identity":
        return ",".join(ep.labels)
    if ident in ("pod", "pod-short"):
        name = ep.pod_name if ident == "pod" else _SHORT_POD.sub(r"\1", ep.pod_name)
        return f"{ep.namespace}/{name}" if ep.namespace else name
    if ident == "pod-name":
        return ep.pod_name
    if ident == "dns":
        return ",".join(flow.source_names if source else flow.destination_names)
    if ident == "ip":
        return flow.IP.source if source else flow.IP.destination
    if ident == "reserved-identity":
        if _KUBE_APISERVER in ep.labels:
            return _KUBE_APISERVER
        return next((label for label in ep.labels if label.startswith("reserved:")), "")
    if ident == "workload-name":
        return ep.workloads[0].name if ep.workloads else ""
    if ident == "app":
        return _app(ep.labels)
    return ""


def _app(labels: Iterable[str]) -> str:
    for label in labels:
        for key in _APP_LABELS:
            if label.startswith(key + "="):
                value = label[len(key) + 1:]
                if value:
                    return value
    return ""


def _labels_context(label: str, flow) -> str:
    if label == "traffic_direction":
        name = _enum_name(flow, "traffic_direction")
        return "unknown" if flow.traffic_direction == 0 else name.lower()
    side, _, what = label.partition("_")
    ep = flow.source if side == "source" else flow.destination
    if what == "ip":
        return flow.IP.source if side == "source" else flow.IP.destination
    if what == "pod":
        return ep.pod_name
    if what == "namespace":
        return ep.namespace
    if what == "workload":
        return ep.workloads[0].name if ep.workloads else ""
    return _app(ep.labels)                  # app


# --- what Hubble reads off a flow --------------------------------------------------------

def _enum_name(msg, field: str) -> str:
    """The enum value's name as Go's String() prints it (the number when unknown)."""
    value = getattr(msg, field)
    enum = msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number.get(value)
    return enum.name if enum is not None else str(value)


def _l4(flow) -> str | None:
    """Which of the flow's Layer4 oneof is set (TCP, UDP, ICMPv4, ICMPv6, SCTP), or None."""
    if not flow.HasField("l4"):
        return None
    return flow.l4.WhichOneof("protocol")


_L7_NAMES = {"dns": "DNS", "http": "HTTP", "kafka": "Kafka"}


def _l7_record(flow) -> str | None:
    """Which L7 record (dns, http, kafka) the flow carries; None without one (or with a
    flow.proto compiled without the L7 messages: no L7 proxy runs here)."""
    if "l7" not in flow.DESCRIPTOR.fields_by_name or not flow.HasField("l7"):
        return None
    return flow.l7.WhichOneof("record")


def flow_protocol(flow) -> str:
    """pkg/hubble/api/v1 FlowProtocol: the L7 protocol, else the L4 one."""
    kind = flow.event_type.type
    if kind == MSG_ACCESS_LOG:
        return _L7_NAMES.get(_l7_record(flow), "Unknown L7")
    if kind in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        return _l4(flow) or "Unknown L4"
    return "Unknown flow"


_FORWARDED, _DROPPED, _REDIRECTED = 1, 2, 5            # flow.Verdict




# --- the handlers ----------------------------------------------------------------------------

class _Handler:
    name: str = ""
    metric: str = ""
    help: str = ""
    labels: tuple[str, ...] = ()
    context_first = False                  # drop puts the context labels before its own

    def __init__(self, registry: CollectorRegistry, options: Mapping[str, str]):
        self.context = ContextOptions.parse(options, self.name)
        ctx = self.context.label_names()
        names = ctx + list(self.labels) if self.context_first else list(self.labels) + ctx
        self.counter = Counter(self.metric, self.help, names, namespace=NAMESPACE,
                               registry=registry)

    def inc(self, own: list[str], flow, amount: int = 1) -> None:
        ctx = self.context.label_values(flow)
        self.counter.labels(*(ctx + own if self.context_first else own + ctx)).inc(amount)


class _FlowHandler(_Handler):
    name, metric, help = "flow", "flows_processed", "Total number of flows processed"
    labels = ("protocol", "type", "subtype", "verdict")

    def process(self, flow, amount: int = 1) -> None:
        kind = flow.event_type.type
        subtype = ""
        if kind == MSG_ACCESS_LOG:
            type_name = "L7"
            subtype = _L7_NAMES.get(_l7_record(flow), "")
        elif kind == MSG_DROP:
            type_name = "Drop"
        elif kind == MSG_CAPTURE:
            type_name = "Capture"
        elif kind == MSG_TRACE:
            type_name = "Trace"
            subtype = TRACE_POINTS.get(flow.event_type.sub_type & 0xFF, "")
        elif kind == MSG_POLICY_VERDICT:
            type_name = "PolicyVerdict"
        else:
            type_name, subtype = "Unknown", str(kind)
        self.inc([flow_protocol(flow), type_name, subtype, _enum_name(flow, "verdict")], flow,
                 amount)


class _DropHandler(_Handler):
    name, metric, help = "drop", "drop", "Number of drops"
    labels = ("reason", "protocol")
    context_first = True

    def process(self, flow, amount: int = 1) -> None:
        if flow.verdict == _DROPPED:
            self.inc([_enum_name(flow, "drop_reason_desc"), flow_protocol(flow)], flow, amount)


class _TcpHandler(_Handler):
    name, metric, help = "tcp", "tcp_flags", "TCP flag occurrences"
    labels = ("flag", "family")

    def process(self, flow, amount: int = 1) -> None:
        if flow.verdict not in (_FORWARDED, _REDIRECTED) or _l4(flow) != "TCP":
            return
        if not flow.HasField("IP") or not flow.l4.TCP.HasField("flags"):
            return
        flags, family = flow.l4.TCP.flags, _enum_name(flow.IP, "ipVersion")
        if flags.FIN:
            self.inc(["FIN", family], flow, amount)
        if flags.SYN:
            self.inc(["SYN-ACK" if flags.ACK else "SYN", family], flow, amount)
        if flags.RST:
            self.inc(["RST", family], flow, amount)


class _PortDistributionHandler(_Handler):
    name, metric = "port-distribution", "port_distribution"
    help = "Numbers of packets distributed by destination port"
    labels = ("protocol", "port")

    def process(self, flow, amount: int = 1) -> None:
        # Whether a flow is a reply must be known: a flow without is_reply is left out.
        if flow.verdict not in (_FORWARDED, _REDIRECTED) or not flow.HasField("is_reply") \
                or flow.is_reply.value:
            return
        proto = _l4(flow)
        if proto in ("TCP", "UDP", "SCTP"):
            self.inc([proto, str(getattr(flow.l4, proto).destination_port)], flow, amount)
        elif proto in ("ICMPv4", "ICMPv6"):
            self.inc([proto, "0"], flow, amount)


class _IcmpHandler(_Handler):
    name, metric, help = "icmp", "icmp", "Number of ICMP messages"
    labels = ("family", "type")

    def process(self, flow, amount: int = 1) -> None:
        proto = _l4(flow)
        if proto == "ICMPv4":
            msg = flow.l4.ICMPv4
            self.inc(["IPv4", icmp_names.type_code(4, msg.type, msg.code)], flow, amount)
        elif proto == "ICMPv6":
            # Hubble labelled these "IPv4" until cilium/cilium#41427 fixed it.
            msg = flow.l4.ICMPv6
            self.inc(["IPv6", icmp_names.type_code(6, msg.type, msg.code)], flow, amount)


_HANDLERS = {h.name: h for h in (_DropHandler, _TcpHandler, _FlowHandler,
                                 _PortDistributionHandler, _IcmpHandler)}


class FlowMetrics:
    """Hubble's flow metrics named in *config* (``--metrics`` strings, a parsed
    ``parse_metrics`` mapping, or None for Hubble's default set) in *registry*."""

    def __init__(self, registry: CollectorRegistry,
                 config: Iterable[str] | Mapping[str, Mapping[str, str]] | None = None):
        parsed = config if isinstance(config, Mapping) else parse_metrics(config)
        unknown = [name for name in parsed if name not in _HANDLERS]
        if unknown:
            raise MetricsConfigError(f"--metrics: metric '{unknown[0]}' does not exist "
                                     f"(known: {', '.join(_HANDLERS)})")
        # Hubble (client_golang) exposes no *_created series; neither do we (a process-wide
        # setting of prometheus-client).
        disable_created_metrics()
        self.registry = registry
        self.handlers = [_HANDLERS[name](registry, options) for name, options in parsed.items()]
        # what observe_batch must tell apart: endpoints and addresses (a context label), ports
        self._context = any(h.context.label_names() for h in self.handlers)
        self._ports = any(isinstance(h, _PortDistributionHandler) for h in self.handlers)
        self.lost_events = Counter("lost_events", "Number of lost events", ["source"],
                                   namespace=NAMESPACE, registry=registry)

    @property
    def enabled(self) -> list[str]:
        return [h.name for h in self.handlers]

    def observe(self, flow) -> None:
        """Count one ``flow.Flow`` in every enabled metric it concerns."""
        for handler in self.handlers:
            handler.process(flow)

    def observe_batch(self, batch) -> None:
        """Count every flow of *batch* (harness.observe.flows.FlowBatch) as ``observe``
        would, one at a time, without building each: the batch groups its rows by what
        these metrics read (``groups``, counted with numpy), and each group is counted
        once, by its size, with the labels of one flow of it."""
        reps, counts = batch.groups(context=self._context, ports=self._ports)
        entry = batch.entry
        for i, n in zip(reps.tolist(), counts.tolist()):
            flow = entry(i).flow
            for handler in self.handlers:
                handler.process(flow, n)

    def observe_lost(self, lost) -> None:
        """Count a ``flow.LostEvent`` (Hubble: ``source`` is its source's name in lower case,
        e.g. ``perf_event_ring_buffer``)."""
        self.lost_events.labels(_enum_name(lost, "source").lower()).inc(lost.num_events_lost)


# --- serving ---------------------------------------------------------------------------------

class MetricsServer:
    """A registry served over HTTP (``/metrics``) on a thread until ``close()``."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int):
        self._server, self._thread = start_http_server(port, host, registry=registry)
        self.host, self.port = host, self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9965) -> MetricsServer:
    """Serve *registry* on http://host:port/metrics (port 0: any free one) in the calling
    thread's network namespace (the listening socket stays there), until the returned
    server is closed."""
    try:
        return MetricsServer(registry, host, port)
    except OSError as exc:
        raise MetricsServeError(f"metrics: cannot listen on {host}:{port}: "
                                f"{exc.strerror or exc}") from None


class MetricsServeError(ChainbenchError, OSError):
    """The metrics address cannot be listened on (the port is taken, or no such address)."""


class MetricsScrapeError(ChainbenchError, OSError):
    """Nothing answered the scrape."""


def scrape(netns_name: str, port: int = 9965, host: str = "127.0.0.1",
           timeout: float = 5.0) -> str:
    """GET http://host:port/metrics from inside network namespace *netns_name* (a node's):
    the exposition text.  Proxy settings of the environment are not used."""
    url = f"http://{host}:{port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with netns.entered(netns_name):
        try:
            with opener.open(url, timeout=timeout) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            reason = getattr(reason, "strerror", None) or reason
            raise MetricsScrapeError(f"metrics: nothing answers on {url} in namespace "
                                     f"{netns_name} ({reason})") from None
