"""The service map: recorded flows drawn as a graph, as the Hubble UI's service map draws them.

Owns turning flows (Hubble's ``flow.Flow`` as JSON with the proto field names,
the ``"flow"`` object of each line of ``hubble observe -o json`` or
``chainbench observe -o json``) into a graph, and rendering it as one
self-contained HTML page (``templates/servicemap.html.j2``).

The graph:

* nodes: pods, inside a compound node per namespace; services (a flow's
  ``destination_service`` / ``source_service``), in their namespace too;
  reserved peers (``world``, ``host``, ``remote-node``, ... by their
  ``reserved:`` label, else by their reserved identity number); a peer that is
  none of these by its ``cidr:``/``fqdn:`` label, else by its address;
* edges: source -> destination, one per (source, destination, port, protocol),
  labelled ``8080/TCP`` (``ICMPv4`` for ICMP), coloured by the verdicts of
  their flows: only forwarded green, only dropped (``DROPPED``, ``ERROR``) red,
  both amber and dashed; the counts per verdict are in the edge's tooltip and
  in the table under the graph.  A flow through a service draws two hops,
  source -> service -> backend, except a flow dropped at the source's egress,
  which never left it: its hop to the backend is not drawn.  Replies
  (``is_reply`` true) are left out, so each connection is drawn once, in its
  forward direction.

The drawing is cytoscape.js with the fCoSE layout, vendored at build time from
npm (``web/package.json``, pinned by ``web/package-lock.json``; ``make web``
installs them under ``build/web/``) and inlined into the page: viewing it
loads nothing from the network.  The layout is seeded, so a page draws the
same picture each time it is opened.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable

import jinja2
from markupsafe import Markup

from harness import paths
from harness.errors import InputError, UsageError

__all__ = ["FlowFileError", "Graph", "graph", "load_flow_lines", "parse_flow_lines", "render",
           "render_missing", "vendor_scripts", "write_page", "COLOURS"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "servicemap.html.j2"

#: The npm packages the page inlines, in load order (each UMD file sets the global
#: the next one reads: cytoscape, layoutBase, coseBase, then fcose registers itself).
VENDOR_SCRIPTS = (
    ("cytoscape", "dist/cytoscape.min.js"),
    ("layout-base", "layout-base.js"),
    ("cose-base", "cose-base.js"),
    ("cytoscape-fcose", "cytoscape-fcose.js"),
)

#: Edge colour and line style per verdict class.
COLOURS = {"forwarded": "#2e9d47", "dropped": "#d62728", "mixed": "#f0a202", "other": "#7f8793"}
LINES = {"forwarded": "solid", "dropped": "solid", "mixed": "dashed", "other": "dotted"}
DROP_VERDICTS = frozenset({"DROPPED", "ERROR"})
FORWARD_VERDICTS = frozenset({"FORWARDED", "REDIRECTED", "TRANSLATED", "TRACED", "AUDIT"})

#: Cilium's reserved identities (pkg/identity/numericidentity.go) by number, and the
#: order a peer carrying several ``reserved:`` labels is named by.
RESERVED_IDENTITIES = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init",
                       6: "remote-node", 7: "kube-apiserver", 8: "ingress", 9: "world",
                       10: "world"}
RESERVED_ORDER = ("host", "remote-node", "world", "kube-apiserver", "health", "ingress", "init",
                  "unmanaged")
#: world-ipv4 / world-ipv6 (dual-stack clusters) are the one world peer.
RESERVED_ALIASES = {"world-ipv4": "world", "world-ipv6": "world"}

#: Keys of a flow, one of which a bare flow object (a line without the envelope) has.
FLOW_KEYS = frozenset({"verdict", "source", "destination", "IP", "l4", "Type", "time"})
#: Envelope keys of ``GetFlowsResponse`` lines that hold no flow (skipped, not errors).
NON_FLOW_RESPONSES = frozenset({"node_status", "nodeStatus", "lost_events", "lostEvents"})


class FlowFileError(InputError):
    """A flows file that cannot be read: one line naming the file and line."""


# ---------------------------------------------------------------- reading flows

def _get(obj: dict, name: str, default: Any = None) -> Any:
    """A protojson field by its proto name, or by its lowerCamelCase JSON name
    (protojson parsers accept both; ``-o json`` writes the proto names)."""
    if name in obj:
        return obj[name]
    parts = name.split("_")
    camel = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return obj.get(camel, default)


def _check_flow(flow: Any) -> str | None:
    """The first field of *flow* that is not of its protojson type, as 'field: problem'."""
    if not isinstance(flow, dict):
        return f"flow: expected an object, got {type(flow).__name__}"
    for side in ("source", "destination"):
        ep = _get(flow, side)
        if ep is None:
            continue
        if not isinstance(ep, dict):
            return f"{side}: expected an object"
        for key in ("namespace", "pod_name"):
            if not isinstance(_get(ep, key, ""), str):
                return f"{side}.{key}: expected a string"
        labels = _get(ep, "labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return f"{side}.labels: expected a list of strings"
        identity = _get(ep, "identity", 0)
        if isinstance(identity, bool) or not isinstance(identity, int):
            return f"{side}.identity: expected an integer"
    for key in ("source_service", "destination_service"):
        svc = _get(flow, key)
        if svc is None:
            continue
        if not isinstance(svc, dict) or not all(isinstance(_get(svc, k, ""), str)
                                                for k in ("name", "namespace")):
            return f"{key}: expected an object with string name and namespace"
    ip = _get(flow, "IP")
    if ip is not None and (not isinstance(ip, dict) or not all(
            isinstance(ip.get(k, ""), str) for k in ("source", "destination"))):
        return "IP: expected an object with string source and destination"
    l4 = _get(flow, "l4")
    if l4 is not None:
        if not isinstance(l4, dict) or not all(isinstance(v, dict) for v in l4.values()):
            return "l4: expected an object of objects"
        for proto, body in l4.items():
            port = _get(body, "destination_port", 0)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                return f"l4.{proto}.destination_port: expected a port number"
    if not isinstance(_get(flow, "verdict", ""), str):
        return "verdict: expected a string"
    if not isinstance(_get(flow, "is_reply", False), bool):
        return "is_reply: expected true or false"
    for key in ("traffic_direction", "time", "node_name"):
        if not isinstance(_get(flow, key, ""), str):
            return f"{key}: expected a string"
    return None


def parse_flow_lines(lines: Iterable[str], name: str) -> list[dict]:
    """The flows of ``-o json`` lines (each ``{"flow": {...}, "node_name": ..., "time": ...}``;
    a bare flow object is accepted too).  Blank lines and the responses that carry no
    flow (``node_status``, ``lost_events``) are skipped.  A line that is not JSON, or
    whose flow has a field of the wrong type, raises FlowFileError naming *name* and
    the line."""
    flows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise FlowFileError(f"{name}:{number}: not JSON ({str(err).splitlines()[0]})") from None
        if not isinstance(obj, dict):
            raise FlowFileError(f"{name}:{number}: expected a JSON object per line, got "
                                f"{type(obj).__name__}")
        if "flow" in obj:
            flow = obj["flow"]
        elif NON_FLOW_RESPONSES & obj.keys():
            continue
        elif FLOW_KEYS & obj.keys():
            flow = obj
        else:
            raise FlowFileError(f"{name}:{number}: not a flow (no \"flow\" object; keys: "
                                f"{', '.join(sorted(obj)) or 'none'})")
        problem = _check_flow(flow)
        if problem:
            raise FlowFileError(f"{name}:{number}: {problem}")
        flows.append(flow)
    return flows


def load_flow_lines(path: Path | str) -> list[dict]:
    """The flows of a ``-o json`` file (see parse_flow_lines); FlowFileError (one line,
    naming the file) when it cannot be read."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return parse_flow_lines(f, str(path))
    except UnicodeDecodeError:
        raise FlowFileError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise FlowFileError(f"{path}: cannot read ({err.strerror or err})") from None


def read_flow_stream(stream: IO[str], name: str = "<stdin>") -> list[dict]:
    """The flows of ``-o json`` lines read from *stream* (``--flows -``)."""
    try:
        return parse_flow_lines(stream, name)
    except UnicodeDecodeError:
        raise FlowFileError(f"{name}: not UTF-8 text") from None


# ---------------------------------------------------------------- the graph

@dataclass
class Graph:
    """Nodes and edges in cytoscape's element format, and what the page says about them."""
    nodes: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)
    flows: int = 0              # flows given
    replies: int = 0            # left out: is_reply
    unplaced: int = 0           # left out: neither end could be named
    first: str | None = None    # earliest and latest flow time (RFC 3339 text)
    last: str | None = None

    def elements(self) -> dict:
        return {"nodes": self.nodes, "edges": self.edges}


def _labels_title(labels: list[str], limit: int = 6) -> str:
    shown = labels[:limit]
    return "\n".join(shown + ([f"(+{len(labels) - limit} more)"] if len(labels) > limit else []))


class _Builder:
    def __init__(self) -> None:
        self.nodes: dict[str, dict] = {}
        self.edges: dict[tuple[str, str, str], collections.Counter] = {}

    def namespace(self, ns: str) -> str:
        node_id = f"ns:{ns}"
        self.nodes.setdefault(node_id, {"id": node_id, "label": ns, "kind": "namespace",
                                        "title": f"namespace {ns}"})
        return node_id

    def node(self, node_id: str, label: str, kind: str, ns: str = "", title: str = "") -> str:
        if node_id not in self.nodes:
            data = {"id": node_id, "label": label, "kind": kind, "title": title or label}
            if ns:
                data["parent"] = self.namespace(ns)
            self.nodes[node_id] = data
        return node_id

    def endpoint(self, ep: dict, address: str) -> str | None:
        """The node of one end of a flow (see the module's docstring), None if unnamed."""
        ns, pod = _get(ep, "namespace", ""), _get(ep, "pod_name", "")
        labels, identity = _get(ep, "labels", []), _get(ep, "identity", 0)
        if pod:
            title = "\n".join(x for x in (f"pod {ns}/{pod}" if ns else f"pod {pod}",
                                          f"identity {identity}" if identity else "",
                                          f"IP {address}" if address else "",
                                          _labels_title(labels)) if x)
            return self.node(f"pod:{ns}/{pod}", pod, "pod", ns, title)
        reserved = {RESERVED_ALIASES.get(x[9:], x[9:]) for x in labels if x.startswith("reserved:")}
        name = next((r for r in RESERVED_ORDER if r in reserved), min(reserved, default=None))
        if name is None and identity in RESERVED_IDENTITIES:
            name = RESERVED_IDENTITIES[identity]
        if name is not None:
            return self.node(f"reserved:{name}", name, "reserved", "", f"reserved:{name}")
        named = [x for x in labels if x.startswith(("fqdn:", "cidr:"))]
        if named:
            label = min(named, key=lambda x: (not x.startswith("fqdn:"), x)).split(":", 1)[1]
            return self.node(f"peer:{label}", label, "peer", ns, _labels_title(labels))
        if address:
            return self.node(f"ip:{address}", address, "peer", ns,
                             f"{address}" + (f"\nidentity {identity}" if identity else ""))
        return None

    def service(self, svc: dict | None) -> str | None:
        name = _get(svc, "name", "") if svc else ""
        if not name:
            return None
        ns = _get(svc, "namespace", "")
        return self.node(f"svc:{ns}/{name}", name, "service", ns,
                         f"service {ns}/{name}" if ns else f"service {name}")

    def hop(self, source: str, target: str, port: str, verdict: str) -> None:
        self.edges.setdefault((source, target, port), collections.Counter())[verdict] += 1


def _port(flow: dict) -> str:
    """'8080/TCP', 'ICMPv4', or the L4 protocol alone when there is no port; '' without l4."""
    l4 = _get(flow, "l4") or {}
    for proto, body in l4.items():
        if proto.upper().startswith("ICMP"):
            return proto
        port = _get(body, "destination_port", 0)
        return f"{port}/{proto.upper()}" if port else proto.upper()
    return ""


def _verdict_class(counts: collections.Counter) -> str:
    dropped = sum(n for v, n in counts.items() if v in DROP_VERDICTS)
    forwarded = sum(n for v, n in counts.items() if v in FORWARD_VERDICTS)
    if dropped and forwarded:
        return "mixed"
    return "dropped" if dropped else "forwarded" if forwarded else "other"


def graph(flows: Iterable[dict]) -> Graph:
    """The service-map graph of *flows* (dicts as parse_flow_lines returns them).

    Raises InputError naming the flow (by its position) and field when a flow has a
    field of the wrong type.
    """
    build, out = _Builder(), Graph()
    for index, flow in enumerate(flows):
        problem = _check_flow(flow)
        if problem:
            raise InputError(f"flow {index}: {problem}")
        out.flows += 1
        when = _get(flow, "time", "")
        if when:
            out.first = min(out.first or when, when)
            out.last = max(out.last or when, when)
        if _get(flow, "is_reply", False):
            out.replies += 1
            continue
        ip = _get(flow, "IP") or {}
        source = build.endpoint(_get(flow, "source") or {}, ip.get("source", ""))
        destination = build.endpoint(_get(flow, "destination") or {}, ip.get("destination", ""))
        source_svc = build.service(_get(flow, "source_service"))
        destination_svc = build.service(_get(flow, "destination_service"))
        path = [n for n in (source, source_svc, destination_svc, destination) if n]
        if len(path) < 2:
            out.unplaced += 1
            continue
        verdict = _get(flow, "verdict", "") or "VERDICT_UNKNOWN"
        hops = list(zip(path, path[1:]))
        if (verdict in DROP_VERDICTS and _get(flow, "traffic_direction", "") == "EGRESS"
                and destination_svc and destination and len(hops) > 1):
            hops = hops[:-1]        # dropped leaving the source: it never reached the backend
        port = _port(flow)
        for a, b in hops:
            build.hop(a, b, port, verdict)

    # Namespaces first (a compound node before its children), then by kind and name.
    rank = {"namespace": 0, "pod": 1, "service": 2, "peer": 3, "reserved": 4}
    out.nodes = [{"data": data, "classes": data["kind"]} for data in
                 sorted(build.nodes.values(), key=lambda d: (rank[d["kind"]], d["id"]))]
    labels = {d["id"]: d["label"] for d in build.nodes.values()}
    for i, ((a, b, port), counts) in enumerate(sorted(build.edges.items())):
        kind = _verdict_class(counts)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        title = f"{labels[a]} → {labels[b]}" + (f" {port}" if port else "") + "\n" + \
            "\n".join(f"{v.lower()}: {n}" for v, n in ordered)
        out.edges.append({"data": {"id": f"e{i}", "source": a, "target": b, "label": port,
                                   "verdict": kind, "colour": COLOURS[kind], "line": LINES[kind],
                                   "counts": dict(ordered), "flows": sum(counts.values()),
                                   "title": title},
                          "classes": kind})
    return out


# ---------------------------------------------------------------- the page

class VendorMissing(UsageError):
    """The graph library is not installed under build/web (``make web``)."""


def vendor_dir() -> Path:
    return paths.build_dir() / "web" / "node_modules"


def vendor_scripts() -> list[tuple[str, str]]:
    """[(a comment naming the package, version and licence, its JavaScript)] in load order."""
    out = []
    for package, file in VENDOR_SCRIPTS:
        base = vendor_dir() / package
        try:
            meta = json.loads((base / "package.json").read_text())
            text = (base / file).read_text(encoding="utf-8")
        except (OSError, ValueError):
            raise VendorMissing(f"{base / file}: the service map's graph library is not built "
                                "(run `make web`)") from None
        if "</script" in text.lower():      # would end the inline <script> element
            raise VendorMissing(f"{base / file}: holds '</script' and cannot be inlined")
        out.append((f"{package} {meta.get('version', '?')} ({meta.get('license', '?')}), "
                    f"from npm, web/package-lock.json", text))
    return out


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survives."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(**context: Any) -> str:
    defaults = {"graph": None, "message": None, "source": None, "legend": COLOURS,
                "vendor": [], "data_json": Markup("null")}
    return _environment().get_template(TEMPLATE).render({**defaults, **context})


def render(flows: Iterable[dict], source: str | None = None) -> str:
    """A standalone HTML page drawing *flows* (Hubble flow dicts) as a service map.

    *source* (e.g. the flows file's name) is shown in the page's header.  Without
    any flow to draw the page says so and draws nothing.  Raises VendorMissing when
    ``make web`` has not installed the graph library, InputError on a malformed flow.
    """
    return _render(graph(flows), source)


def _render(g: Graph, source: str | None) -> str:
    if not g.edges:
        why = "no flows" if not g.flows else \
            f"no flow to draw: {g.flows} flow{'s' if g.flows != 1 else ''} read, " \
            f"{g.replies} repl{'ies' if g.replies != 1 else 'y'} left out, " \
            f"{g.unplaced} without a named source or destination"
        return _page(message=why + (f" in {source}" if source else ""), source=source, graph=g)
    return _page(graph=g, source=source, vendor=[(c, Markup(js)) for c, js in vendor_scripts()],
                 data_json=Markup(_script_json(g.elements())))


def render_missing(message: str) -> str:
    """The service-map page when there are no flows to read: it says *message*, plainly."""
    return _page(message=message)


def write_page(flows_file: Path | str, out: Path | str) -> Graph:
    """Read a ``-o json`` flows file and write its service map to *out*; return the graph
    (for a summary).  ``chainbench service-map`` and ``observe --service-map`` call this."""
    flows = load_flow_lines(flows_file)
    return write_flows(flows, out, source=str(flows_file))


def write_flows(flows: list[dict], out: Path | str, source: str | None = None) -> Graph:
    """Write the service map of *flows* to *out*; return the graph."""
    g = graph(flows)
    page = _render(g, source)
    out = Path(out)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        raise InputError(f"{out}: cannot write ({err.strerror or err})") from None
    return g
