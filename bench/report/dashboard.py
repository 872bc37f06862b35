"""The results dashboard: one self-contained HTML page drawn from a results directory.

Owns reading result documents for display (schema_version 3 and 2, and the
micro-only documents of schema_version 1), turning them into chart series and
table rows, and rendering ``bench/report/templates/dashboard.html.j2`` into
``results/index.html``.  The page needs no network when viewed: its CSS, its
small SVG line-chart drawer and its data (JSON in a
``<script type="application/json">`` tag) are all inline.

Which document is shown: ``latest.json`` when present, else the newest by
``created``.  Every other ``*.json`` of the directory (``kernel-matrix.json``
excepted, which gets a table of its own, and ``flows.json``, recorded flows
drawn as ``service-map.html`` by harness.observe.servicemap) is history.  A
file that is not a result document is skipped and named on the page, never fatal.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Iterable

import jinja2
from markupsafe import Markup

from harness.errors import InputError

__all__ = ["DashboardError", "load_documents", "render", "TEMPLATE_DIR", "TEMPLATE"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE = "dashboard.html.j2"
LATEST = "latest.json"
KERNEL_MATRIX = "kernel-matrix.json"
#: Recorded flows (`chainbench observe -o json` lines), drawn as SERVICE_MAP beside index.html.
FLOWS, SERVICE_MAP = "flows.json", "service-map.html"
#: Files of a results directory that are not documents of the history.
NOT_HISTORY = frozenset({LATEST, KERNEL_MATRIX, FLOWS})
#: A macro profile's stacks for speedscope, beside its document (bench.report.results).
SPEEDSCOPE_SUFFIX = ".speedscope.json"

#: Display order of control-plane methods and macro datapaths (others sort after, by name).
METHODS = ("bpf", "iptables-legacy", "iptables-nft", "nft")
DATAPATHS = ("bpf-tc", "bpf-tc-events", "bpf-sock", "iptables", "nftables")
OPERATIONS = ("full", "change-one")
#: History: the control figure is the bpf apply time at this many services.
HISTORY_CONTROL_SERVICES = 10000

#: Series colours.  Each family of names (micro cases, control methods, macro
#: datapaths) draws from the palette on its own, known names first in a fixed
#: order, so a name keeps its colour in every chart and from run to run.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf",
           "#e377c2", "#8c564b", "#bcbd22", "#393b79", "#637939", "#ad494a")
CASES = ("established", "new-flow", "non-service", "nodeport", "ipv6-established",
         "policy-new", "policy-established", "new-flow-expired")
FAMILIES = {"case": CASES, "method": METHODS, "datapath": DATAPATHS}
FLOOR_COLOUR = "#6f6f6f"

# <object>:<program>[/<case>][@<N>svc|@<N>id], the micro result names of schema_version 1.
_MICRO_NAME = re.compile(r"^(?P<object>[^:/@]+):(?P<program>[^/@]+)"
                         r"(?:/(?P<case>[^@]+))?(?:@(?P<n>\d+)(?P<unit>svc|id))?$")
_SCALE_UNITS = {"svc": "services", "id": "identities"}


class DashboardError(InputError):
    """The dashboard cannot be drawn (no result documents); the message is one line."""


# ---------------------------------------------------------------- documents

def _read_document(path: Path, warnings: list[str] | None) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        _warn(warnings, f"{path.name}: skipped, not valid JSON ({_one_line(err)})")
        return None
    if not isinstance(doc, dict) or "schema_version" not in doc:
        _warn(warnings, f"{path.name}: skipped, not a result document (no schema_version)")
        return None
    return doc


def _warn(warnings: list[str] | None, message: str) -> None:
    if warnings is not None:
        warnings.append(message)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _created(doc: dict) -> _dt.datetime | None:
    try:
        when = _dt.datetime.fromisoformat(str(doc.get("created")))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _chronological(doc: dict) -> tuple[_dt.datetime, str]:
    return (_created(doc) or _dt.datetime.min.replace(tzinfo=_dt.timezone.utc),
            str(doc.get("created", "")))


def load_documents(results_dir: Path, warnings: list[str] | None = None) -> list[dict]:
    """The result documents of *results_dir*, oldest first (by ``created``).

    Every ``*.json`` except ``latest.json``, ``kernel-matrix.json`` and the
    ``*.speedscope.json`` profiles; a file
    that is not valid JSON, or has no ``schema_version``, is left out, and a
    one-line reason is appended to *warnings* when given.
    """
    docs = []
    for path in sorted(Path(results_dir).glob("*.json")):
        if path.name in NOT_HISTORY or path.name.endswith(SPEEDSCOPE_SUFFIX) \
                or not path.is_file():
            continue
        doc = _read_document(path, warnings)
        if doc is not None:
            docs.append(doc)
    docs.sort(key=_chronological)
    return docs


def _kernel_matrix(results_dir: Path, warnings: list[str]) -> list[dict] | None:
    path = results_dir / KERNEL_MATRIX
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        warnings.append(f"{KERNEL_MATRIX}: skipped, not valid JSON ({_one_line(err)})")
        return None
    if isinstance(rows, dict):  # tolerate {"kernels": [...]} / {"results": [...]}
        rows = rows.get("kernels", rows.get("results"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        warnings.append(f"{KERNEL_MATRIX}: skipped, not a list of kernel results")
        return None
    return [{"kernel": r.get("kernel"), "status": r.get("status"), "detail": r.get("detail"),
             "passed": r.get("passed"), "failed": r.get("failed")} for r in rows]


# ---------------------------------------------------------------- formatting

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _median(summary: Any) -> float | None:
    return _num(summary.get("median")) if isinstance(summary, dict) else None


def _mad(summary: Any) -> float | None:
    return _num(summary.get("mad")) if isinstance(summary, dict) else None


def _fmt(value: Any, digits: int = 3) -> str:
    """*value* to *digits* significant figures, thousands separated; '—' for no value."""
    v = _num(value)
    if v is None:
        return "—"
    if v == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def _fmt_summary(summary: Any, unit: str = "") -> str:
    """'median ± mad' of a Summary."""
    med, mad = _median(summary), _mad(summary)
    if med is None:
        return "—"
    return f"{_fmt(med)}{unit}" + (f" ± {_fmt(mad, 2)}" if mad else "")


def _fmt_pct(summary: Any) -> str:
    pct = _num(summary.get("mad_pct")) if isinstance(summary, dict) else None
    n = _num(summary.get("n")) if isinstance(summary, dict) else None
    if pct is not None and n is not None and n < 2:       # one sample: no spread to show
        return f"n/a ({n:.0f} sample)"
    return "—" if pct is None else f"{pct:.1f} %"


def _control_sizes(r: dict) -> tuple[Any, Any]:
    """(map memory, rules text bytes) of a control result; schema_version 2 held
    either in ``bytes``, by method (bpf: map memory; kube-proxy: rules text)."""
    if "map_bytes" in r or "rules_text_bytes" in r:
        return r.get("map_bytes"), r.get("rules_text_bytes")
    return (r.get("bytes"), None) if r.get("method") == "bpf" else (None, r.get("bytes"))


def _fmt_bytes(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if abs(v) < 1024:
            return f"{v:,.0f} B" if unit == "B" else f"{_fmt(v)} {unit}"
        v /= 1024
    return f"{_fmt(v)} GiB"


def _count(n: float, plural: str) -> str:
    """'1 service', '10,000 services', '1 identity'."""
    singular = {"services": "service", "identities": "identity"}.get(plural, plural)
    return f"{n:,.0f} {singular if n == 1 else plural}"


def _fmt_int(value: Any) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:,.0f}"


def _short_time(doc: dict) -> str:
    when = _created(doc)
    return when.strftime("%Y-%m-%d %H:%M") if when else str(doc.get("created", "?"))


def _tick_time(doc: dict) -> str:
    when = _created(doc)
    return when.strftime("%m-%d %H:%M") if when else str(doc.get("created", "?"))[:16]


def _sha(doc: dict, width: int = 12) -> str:
    git = doc.get("git") if isinstance(doc.get("git"), dict) else {}
    sha = str(git.get("sha") or "?")[:width]
    return sha + (" (dirty)" if git.get("dirty") else "")


def _order(value: Any, known: tuple[str, ...]) -> tuple[int, str]:
    return (known.index(value) if value in known else len(known), str(value))


def _results(suite: Any, key: str = "results") -> list[dict]:
    rows = suite.get(key) if isinstance(suite, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


# ---------------------------------------------------------------- charts

class _Charts:
    """The chart specs of one page (what the inline JS draws), and the colour of each name."""

    def __init__(self) -> None:
        self.specs: dict[str, dict] = {}
        self._colours: dict[str, dict[str, str]] = {
            family: {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
            for family, names in FAMILIES.items()}

    def colour(self, family: str, name: str) -> str:
        given = self._colours.setdefault(family, {})
        if name not in given:
            given[name] = PALETTE[len(given) % len(PALETTE)]
        return given[name]

    def add(self, chart_id: str, title: str, x: dict, y: dict, series: list[dict]) -> dict | None:
        """Register a chart; None (nothing to draw) when no series has a point."""
        series = [s for s in series if any(p[1] is not None for p in s["points"])]
        if not series:
            return None
        spec = {"id": chart_id, "title": title, "x": x, "y": y, "series": series}
        self.specs[chart_id] = spec
        return spec

    def series(self, family: str, name: str, points: Iterable[tuple], dashed: bool = False,
               colour: str | None = None) -> dict:
        """A series: points (x, y, mad) sorted by x; y None is a gap."""
        pts = sorted(([x, y, err] for x, y, err in points), key=lambda p: p[0])
        return {"name": name, "colour": colour or self.colour(family, name), "dashed": dashed,
                "points": pts}


def _by_name(rows: Iterable[tuple[str, tuple]]) -> dict[str, list[tuple]]:
    grouped: dict[str, list[tuple]] = {}
    for name, point in rows:
        grouped.setdefault(name, []).append(point)
    return grouped


# ---------------------------------------------------------------- micro

def micro_case(result: dict) -> tuple[str, dict]:
    """(case, scale) of a micro result; derived from its name in schema_version 1."""
    scale = result.get("scale")
    if "case" in result and isinstance(scale, dict):
        return str(result["case"]), scale
    m = _MICRO_NAME.match(str(result.get("name", "")))
    if not m:
        return str(result.get("name", "?")), {}
    case = m.group("case") or m.group("program")
    if m.group("n") is None:
        return case, {}
    return case, {_SCALE_UNITS[m.group("unit")]: int(m.group("n"))}


#: Monitor aggregation levels in display order (the events table: off, the ratios' base, first).
EVENT_LEVELS = ("off", "maximum", "medium", "low", "lowest", "none")


def _events_level(r: dict) -> str | None:
    ev = r.get("events")
    return str(ev.get("level")) if isinstance(ev, dict) else None


def _micro_events(results: list[dict]) -> list[dict]:
    """The cost of flow events: each base case's levels side by side (off first), with
    ns above the empty program, the ratio to off, the records per packet and the
    records lost (bench/micro/events_cases.py)."""
    rows = [r for r in results if _events_level(r) is not None]
    rows.sort(key=lambda r: (str(r["events"].get("base_case")),
                             _order(_events_level(r), EVENT_LEVELS)))
    table = []
    for r in rows:
        ev = r["events"]
        lost = _num(ev.get("lost"))
        table.append({"name": r.get("name", "?"), "case": str(ev.get("base_case", "?")),
                      "level": _events_level(r),
                      "program": f"{r.get('object', '?')}:{r.get('program', '?')}",
                      "median": _fmt(_median(r.get("ns_per_packet"))),
                      "above": _fmt_summary(r.get("above_floor_ns")),
                      "ratio_to_off": _fmt_summary(r.get("ratio_to_off"), "×"),
                      "mad_pct": _fmt_pct(r.get("ratio_to_off")),
                      "per_packet": _fmt(ev.get("records_per_packet")),
                      "lost": _fmt_int(lost), "lost_bad": bool(lost)})
    return table


def _micro(suite: Any, charts: _Charts) -> dict | None:
    if not isinstance(suite, dict):
        return None
    rows = []
    for r in _results(suite):
        if _events_level(r) is not None:
            continue        # the events table's (_micro_events)
        case, scale = micro_case(r)
        dim = next((d for d in ("services", "identities") if d in scale), None)
        rows.append({"r": r, "case": case, "dim": dim, "n": _num(scale.get(dim)) if dim else None,
                     "program": f"{r.get('object', '?')}:{r.get('program', '?')}"})

    figures = []
    for dim, chart_id in (("services", "micro-services"), ("identities", "micro-identities")):
        scaled = [row for row in rows if row["dim"] == dim and row["n"] and row["n"] > 0]
        # A case name shared by two programs gets the program in its label.
        programs: dict[str, set] = {}
        for row in scaled:
            programs.setdefault(row["case"], set()).add(row["program"])

        def label(row: dict) -> str:
            if len(programs[row["case"]]) > 1:
                return f"{row['case']} ({row['program']})"
            return row["case"]
        grouped = _by_name((label(row), (row["n"], _median(row["r"].get("ns_per_packet")),
                                         _mad(row["r"].get("ns_per_packet"))))
                           for row in scaled)
        floors: dict[float, list[float]] = {}
        for row in scaled:
            f = _median(row["r"].get("floor_ns_per_packet"))
            if f is not None:
                floors.setdefault(row["n"], []).append(f)
        series = [charts.series("case", name, pts) for name, pts in
                  sorted(grouped.items(), key=lambda kv: _order(kv[0], CASES))]
        if floors:
            series.append(charts.series("floor", "floor (empty program)",
                                        [(n, statistics.median(v), None) for n, v in floors.items()],
                                        dashed=True, colour=FLOOR_COLOUR))
        spec = charts.add(chart_id, f"ns/packet vs {dim}", {"label": dim, "log": True},
                          {"label": "ns/packet (median)", "log": False, "zero": True}, series)
        figures.append({"spec": spec, "title": f"ns/packet vs {dim}",
                        "missing": f"no micro results with a {dim} scale in this run"})

    dim_rank = {None: 0, "services": 1, "identities": 2}
    rows.sort(key=lambda row: (dim_rank[row["dim"]], row["program"], row["case"], row["n"] or 0))
    table = []
    for row in rows:
        r = row["r"]
        scale = "—" if row["dim"] is None else _count(row["n"], row["dim"])
        table.append({"name": r.get("name", "?"), "program": row["program"], "case": row["case"],
                      "scale": scale, "verdict": r.get("verdict") or "—",
                      "median": _fmt(_median(r.get("ns_per_packet"))),
                      "mad_pct": _fmt_pct(r.get("ns_per_packet")),
                      "floor": _fmt(_median(r.get("floor_ns_per_packet"))),
                      "ratio": _fmt_summary(r.get("ratio_to_floor"))})
    return {"config": suite.get("config"), "figures": figures, "table": table,
            "events": _micro_events(_results(suite))}


# ---------------------------------------------------------------- control

def _control(suite: Any, charts: _Charts) -> dict | None:
    if not isinstance(suite, dict):
        return None
    results = sorted(_results(suite), key=lambda r: (
        _order(r.get("operation"), OPERATIONS), _num(r.get("services")) or 0,
        _order(r.get("method"), METHODS)))
    figures = []
    for op, chart_id, title in (("full", "control-full", "full apply time (s) vs services"),
                                ("change-one", "control-change-one",
                                 "change-one apply time (s) vs services")):
        rows = [r for r in results if r.get("operation") == op and (_num(r.get("services")) or 0) > 0]
        grouped = _by_name((str(r.get("method")), (
            _num(r.get("services")),
            _median(r.get("seconds")) if r.get("status") == "ok" else None,
            _mad(r.get("seconds")) if r.get("status") == "ok" else None)) for r in rows)
        series = [charts.series("method", name, pts) for name, pts in
                  sorted(grouped.items(), key=lambda kv: _order(kv[0], METHODS))]
        floor = [(_num(r.get("services")), _median(r.get("floor_seconds")),
                  _mad(r.get("floor_seconds"))) for r in rows
                 if r.get("method") == "bpf" and r.get("floor_seconds")]
        if floor:       # the same entries written raw: what the apply could at best take
            series.append(charts.series("method", "bpf raw write floor", floor, dashed=True,
                                        colour=charts.colour("method", "bpf")))
        spec = charts.add(chart_id, title, {"label": "services", "log": True},
                          {"label": "seconds (median, log)", "log": True}, series)
        figures.append({"spec": spec, "title": title,
                        "missing": f"no successful {op!r} results in this run"})
    table = []
    for r in results:
        method = r.get("method")
        ratio = "ref" if method == "bpf" else _fmt_summary(r.get("ratio_to_bpf"), "×")
        map_bytes, rules_bytes = _control_sizes(r)
        table.append({"method": method or "?", "services": _fmt_int(r.get("services")),
                      "endpoints": _fmt_int(r.get("endpoints_per_service")),
                      "operation": r.get("operation") or "?",
                      "status": str(r.get("status") or "?"), "detail": r.get("detail") or "",
                      "seconds": _fmt_summary(r.get("seconds")),
                      "mad_pct": _fmt_pct(r.get("seconds")),
                      "entries": _fmt_int(r.get("entries")),
                      "map_bytes": _fmt_bytes(map_bytes), "map_bytes_exact": _fmt_int(map_bytes),
                      "rules_bytes": _fmt_bytes(rules_bytes),
                      "rules_bytes_exact": _fmt_int(rules_bytes), "ratio": ratio,
                      "plan": _fmt_summary(r.get("plan_seconds")),
                      "write": _fmt_summary(r.get("write_seconds")),
                      "floor": _fmt_summary(r.get("floor_seconds")),
                      "floor_ratio": _fmt_summary(r.get("ratio_to_floor"), "×"),
                      "peak_rss": _fmt_bytes(r.get("peak_rss_bytes"))})
    return {"config": suite.get("config"), "figures": figures, "table": table,
            "policy": _control_policy(suite.get("policy"), charts)}


def _control_policy(rows: Any, charts: _Charts) -> dict | None:
    """bench.policy_control's results: a chart of total and floor seconds vs identities,
    and a table of resolve / plan / write / total / floor."""
    if not isinstance(rows, list) or not rows:
        return None
    rows = sorted((r for r in rows if isinstance(r, dict)), key=lambda r: _num(r.get("identities")) or 0)
    ok = [r for r in rows if r.get("status") == "ok"]
    series = [charts.series("policy", name, [(_num(r.get("identities")), _median(r.get(key)),
                                              _mad(r.get(key))) for r in ok], dashed=name == "floor")
              for name, key in (("total", "total_seconds"), ("resolve", "resolve_seconds"),
                                ("plan", "plan_seconds"), ("write", "write_seconds"),
                                ("floor", "floor_seconds"))]
    spec = charts.add("control-policy", "policy resolved and programmed (s) vs identities",
                      {"label": "identities", "log": True},
                      {"label": "seconds (median, log)", "log": True}, series)
    table = []
    for r in rows:
        entries = r.get("entries")
        table.append({"identities": _fmt_int(r.get("identities")),
                      "status": str(r.get("status") or "?"), "detail": r.get("detail") or "",
                      "endpoints": _fmt_int(r.get("endpoints")),
                      "policies": _fmt_int((_num(r.get("network_policies")) or 0)
                                           + (_num(r.get("cilium_network_policies")) or 0)),
                      "entries": _fmt_int(sum(entries.values()) if isinstance(entries, dict) else None),
                      "resolve": _fmt_summary(r.get("resolve_seconds")),
                      "plan": _fmt_summary(r.get("plan_seconds")),
                      "write": _fmt_summary(r.get("write_seconds")),
                      "total": _fmt_summary(r.get("total_seconds")),
                      "mad_pct": _fmt_pct(r.get("total_seconds")),
                      "cpu": _fmt_summary(r.get("cpu_seconds")),
                      "floor": _fmt_summary(r.get("floor_seconds")),
                      "ratio": _fmt_summary(r.get("floor_ratio"), "×")})
    return {"figure": {"spec": spec, "title": "policy: resolve + plan + write, and the floor",
                       "missing": "no successful policy results in this run"}, "table": table}


# ---------------------------------------------------------------- macro

def _macro(suite: Any, charts: _Charts) -> dict | None:
    if not isinstance(suite, dict):
        return None
    results = sorted(_results(suite), key=lambda r: (
        str(r.get("mode")), str(r.get("target")), _num(r.get("services")) or 0,
        _order(r.get("datapath"), DATAPATHS)))
    figures = []
    for mode, chart_id, title in (("new-conn", "macro-new-conn",
                                   "new-connection rate (req/s) vs services"),
                                  ("keepalive", "macro-keepalive", "keep-alive req/s vs services")):
        rows = [r for r in results if r.get("mode") == mode and r.get("target") == "last"
                and (_num(r.get("services")) or 0) > 0]
        grouped = _by_name((str(r.get("datapath")), (_num(r.get("services")), _median(r.get("rps")),
                                                     _mad(r.get("rps")))) for r in rows)
        series = [charts.series("datapath", name, pts) for name, pts in
                  sorted(grouped.items(), key=lambda kv: _order(kv[0], DATAPATHS))]
        spec = charts.add(chart_id, title, {"label": "services", "log": True},
                          {"label": "requests/s (median)", "log": False, "zero": True}, series)
        figures.append({"spec": spec, "title": title + " (target: last service)",
                        "missing": f"no {mode} results for the last service in this run"})
    table = []
    for r in results:
        lat = r.get("latency_us") if isinstance(r.get("latency_us"), dict) else {}
        cpu = r.get("cpu_us_per_request") if isinstance(r.get("cpu_us_per_request"), dict) else {}
        soft, system = _median(cpu.get("softirq")), _median(cpu.get("system"))
        table.append({"datapath": r.get("datapath") or "?", "services": _fmt_int(r.get("services")),
                      "target": r.get("target") or "?", "mode": r.get("mode") or "?",
                      "rps": _fmt(_median(r.get("rps"))), "mad_pct": _fmt_pct(r.get("rps")),
                      "p50": _fmt(_median(lat.get("p50"))), "p90": _fmt(_median(lat.get("p90"))),
                      "p99": _fmt(_median(lat.get("p99"))),
                      "softirq": _fmt(soft), "system": _fmt(system),
                      "cpu_total": _fmt(soft + system) if soft is not None and system is not None
                      else "—",
                      "ratio": _fmt_summary(r.get("ratio_to_iptables"), "×"),
                      "events_off": _fmt_summary(r.get("ratio_to_events_off"), "×"),
                      "errors": _fmt_int(r.get("errors"))})
    locust = []
    for r in sorted(_results(suite, "locust"), key=lambda r: (
            _num(r.get("services")) or 0, _order(r.get("datapath"), DATAPATHS))):
        lat = r.get("latency_ms") if isinstance(r.get("latency_ms"), dict) else {}
        locust.append({"datapath": r.get("datapath") or "?", "services": _fmt_int(r.get("services")),
                       "users": _fmt_int(r.get("users")), "workers": _fmt_int(r.get("workers")),
                       "duration": _fmt(r.get("duration_s")),
                       "requests": _fmt_int(r.get("requests")),
                       "failures": _fmt_int(r.get("failures")), "rps": _fmt(r.get("rps")),
                       "p50": _fmt(lat.get("p50")), "p90": _fmt(lat.get("p90")),
                       "p99": _fmt(lat.get("p99"))})
    return {"config": suite.get("config"), "figures": figures, "table": table, "locust": locust,
            "visibility": _macro_visibility(suite.get("visibility")),
            "profile": _macro_profile(suite.get("profile"))}


def _macro_profile(section: Any) -> list[dict] | None:
    """``bench macro --perf`` (bench/macro/profiling.py): per datapath, its CPU, kernel
    and BPF time per connection, its top kernel functions (the run's own samples by
    self and inclusive samples, the whole machine's by self samples; µs per connection
    and share of the samples) and its BPF programs."""
    if not isinstance(section, dict):
        return None
    out = []
    for e in sorted((e for e in section.get("datapaths") or [] if isinstance(e, dict)),
                    key=lambda e: _order(e.get("datapath"), DATAPATHS)):
        machine = e.get("top") if isinstance(e.get("top"), dict) else {}
        own = e.get("top_run") if isinstance(e.get("top_run"), dict) else machine
        bpf = e.get("bpf") if isinstance(e.get("bpf"), dict) else {}

        def rows(top: dict, kind: str) -> list[dict]:
            return [{"function": r.get("function") or "?",
                     "us": _fmt(r.get("us_per_connection")),
                     "pct": "—" if _num(r.get("fraction")) is None
                     else f"{100 * r['fraction']:.1f} %"}
                    for r in top.get(kind) or [] if isinstance(r, dict)]
        out.append({
            "datapath": e.get("datapath") or "?", "services": _fmt_int(e.get("services")),
            "connections": _fmt_int(e.get("connections")),
            "cpu_us": _fmt(e.get("cpu_us_per_connection")),
            "kernel_us": _fmt(e.get("kernel_us_per_connection")),
            "proc_stat_us": _fmt(e.get("cpu_us_per_connection_proc_stat")),
            "bpf_ns": _fmt(bpf.get("ns_per_connection")),
            "samples": f"{_fmt_int(e.get('busy_samples'))} busy of {_fmt_int(e.get('samples'))}",
            "processes": ", ".join(
                f"{p.get('comm')} ({p.get('pid')}) {100 * p['fraction']:.0f} %"
                for p in e.get("processes") or []
                if isinstance(p, dict) and _num(p.get("fraction")) is not None),
            "run_us": _fmt(e.get("run_us_per_connection")),
            "self": rows(own, "self"), "inclusive": rows(own, "inclusive"),
            "machine_self": rows(machine, "self"),
            "programs": [{"program": p.get("program") or "?", "type": p.get("type") or "?",
                          "instances": _fmt_int(p.get("instances")),
                          "runs_per_conn": _fmt(p.get("runs_per_connection")),
                          "ns_per_run": _fmt(p.get("ns_per_run")),
                          "ns_per_conn": _fmt(p.get("ns_per_connection"))}
                         for p in bpf.get("programs") or [] if isinstance(p, dict)]})
    return out


def _macro_visibility(section: Any) -> dict | None:
    """The cost of flow visibility (bench/macro/visibility.py): rows of req/s events off
    vs aggregation medium with the observer, their ratio within rounds, and the
    observer's account."""
    if not isinstance(section, dict):
        return None
    levels = section.get("monitor_aggregation") if isinstance(
        section.get("monitor_aggregation"), dict) else {}
    target = _num(section.get("target_cost_pct"))
    rows = []
    for r in sorted((r for r in section.get("results") or [] if isinstance(r, dict)),
                    key=lambda r: (str(r.get("mode")), _num(r.get("services")) or 0,
                                   str(r.get("target")))):
        cost = _num(r.get("cost_pct"))
        rows.append({"services": _fmt_int(r.get("services")), "target": r.get("target") or "?",
                     "mode": r.get("mode") or "?", "off": _fmt_summary(r.get("off_rps")),
                     "events": _fmt_summary(r.get("events_rps")),
                     "ratio": _fmt_summary(r.get("ratio"), "×"),
                     "cost": "—" if cost is None else f"{cost:.1f} %",
                     "ok": None if cost is None or target is None else cost <= target,
                     "observer_us": _fmt_summary(r.get("observer_cpu_us_per_request")),
                     "observer_total_us": _fmt_summary(
                         r.get("observer_total_cpu_us_per_request"))})
    obs = section.get("observer") if isinstance(section.get("observer"), dict) else None
    observer = None
    if obs:
        share = _num(obs.get("cpu_share"))
        observer = [("node", obs.get("node") or "?"),
                    ("CPU s (user + system)", f"{_fmt(obs.get('cpu_seconds'))} "
                     f"({_fmt(obs.get('user_seconds'))} + {_fmt(obs.get('system_seconds'))}) over "
                     f"{_fmt(obs.get('wall_seconds'))} s"),
                    ("CPU share of one core", "—" if share is None else f"{100 * share:.1f} %"),
                    ("flows seen", _fmt_int(obs.get("seen_flows"))),
                    ("flows of the client kept", _fmt_int(obs.get("flows_of_client"))),
                    ("events lost (cb_events_lost)", _fmt_int(obs.get("lost_events"))),
                    ("restarts", _fmt_int(obs.get("restarts")))]
    return {"off": section.get("off") or "?", "events": section.get("events") or "?",
            "levels": ", ".join(f"{k}: {v}" for k, v in levels.items()),
            "target": "—" if target is None else f"{target:g} %", "rows": rows,
            "observer": observer}


# ---------------------------------------------------------------- history

def _suite(doc: dict, name: str) -> Any:
    suites = doc.get("suites")
    return suites.get(name) if isinstance(suites, dict) else None


def _micro_established(doc: dict) -> dict[float, float | None]:
    """services -> ratio_to_floor median of the 'established' case."""
    out = {}
    for r in _results(_suite(doc, "micro")):
        case, scale = micro_case(r)
        n = _num(scale.get("services"))
        if case == "established" and n:
            out[n] = _median(r.get("ratio_to_floor"))
    return out


def _control_bpf(doc: dict) -> float | None:
    for r in _results(_suite(doc, "control")):
        if (r.get("method") == "bpf" and r.get("operation") == "full" and r.get("status") == "ok"
                and r.get("services") == HISTORY_CONTROL_SERVICES):
            return _median(r.get("seconds"))
    return None


def _macro_bpf_tc(doc: dict) -> dict[float, float | None]:
    """services -> bpf-tc new-conn (last service) ratio_to_iptables median."""
    out = {}
    for r in _results(_suite(doc, "macro")):
        n = _num(r.get("services"))
        if (r.get("datapath") == "bpf-tc" and r.get("mode") == "new-conn"
                and r.get("target") == "last" and n):
            out[n] = _median(r.get("ratio_to_iptables"))
    return out


def _largest(per_doc: list[dict[float, float | None]]) -> float | None:
    """The largest scale at which any document has a value."""
    return max((n for values in per_doc for n, v in values.items() if v is not None), default=None)


def _history(docs: list[dict], charts: _Charts) -> dict:
    x = {"label": "result document (oldest → newest)", "categories": [_tick_time(d) for d in docs]}
    figures = []

    def figure(chart_id: str, title: str, family: str, name: str, ylabel: str,
               values: list[float | None], missing: str) -> None:
        series = charts.series(family, name, [(i, v, None) for i, v in enumerate(values)])
        spec = charts.add(chart_id, title, x, {"label": ylabel, "zero": True}, [series])
        figures.append({"spec": spec, "title": title, "missing": missing})

    micro = [_micro_established(d) for d in docs]
    top = _largest(micro)
    figure("history-micro", "micro: established ratio to floor"
           + (f" @ {_count(top, 'services')}" if top else ""), "case", "established",
           "× floor (median)", [m.get(top) for m in micro],
           "no document has a micro 'established' result at a service scale")
    figure("history-control", f"control: bpf full apply (s) @ "
           f"{_count(HISTORY_CONTROL_SERVICES, 'services')}", "method", "bpf",
           "seconds (median)", [_control_bpf(d) for d in docs],
           f"no document has a bpf full apply at {_count(HISTORY_CONTROL_SERVICES, 'services')}")
    macro = [_macro_bpf_tc(d) for d in docs]
    top = _largest(macro)
    figure("history-macro", "macro: bpf-tc new-conn ratio to iptables"
           + (f" @ {_count(top, 'services')}" if top else ""), "datapath", "bpf-tc",
           "× iptables (median)", [m.get(top) for m in macro],
           "no document has a macro bpf-tc new-conn ratio to iptables")

    documents = [{"index": i, "created": _short_time(d), "sha": _sha(d),
                  "profile": d.get("profile") or "—", "schema": d.get("schema_version"),
                  "suites": ", ".join(sorted(d["suites"])) if isinstance(d.get("suites"), dict)
                  else "—"}
                 for i, d in enumerate(docs)]
    return {"figures": figures, "documents": documents}


# ---------------------------------------------------------------- page

MACHINE_KEYS = ("cpu_model", "cores", "kernel", "clang", "libbpf", "iptables_backend", "python",
                "hostname")


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' survives
    (so no '</script>' or '<!--' can end or alter the element)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _context(current: dict, history: list[dict], warnings: list[str],
            kernels: list[dict] | None) -> dict:
    """Everything the template shows."""
    charts = _Charts()
    machine = current.get("machine") if isinstance(current.get("machine"), dict) else {}
    notes = current.get("notes")
    sections = {
        "micro": _micro(_suite(current, "micro"), charts),
        "control": _control(_suite(current, "control"), charts),
        "macro": _macro(_suite(current, "macro"), charts),
    }
    return {
        "sha": _sha(current), "created": _short_time(current),
        "created_raw": str(current.get("created", "?")),
        "profile": current.get("profile") or "—",
        "notes": [str(n) for n in notes if n] if isinstance(notes, list) else [],
        "schema_version": current.get("schema_version"),
        "machine": [(k, "—" if machine.get(k) is None else str(machine.get(k)))
                    for k in MACHINE_KEYS],
        **sections,
        "history": _history(history, charts),
        "kernels": kernels,
        "warnings": warnings,
        "data_json": Markup(_script_json({"charts": charts.specs})),
    }


def _service_map(results_dir: Path, page: Path, warnings: list[str]) -> None:
    """Write the service map of ``results_dir/flows.json`` to *page*; without that file, or
    with one that cannot be drawn (named in *warnings*), a page that says so and draws nothing."""
    from harness.observe import servicemap   # lazy: only render() needs it
    flows = results_dir / FLOWS
    if not flows.is_file():
        page.write_text(servicemap.render_missing(
            f"no recorded flows: {flows} does not exist (`chainbench connectivity --flows "
            f"{flows}` or `chainbench observe -o json > {flows}` records them)"))
        return
    try:
        servicemap.write_page(flows, page)
    except InputError as exc:               # a bad line, or `make web` not run
        warnings.append(f"{FLOWS}: no service map ({exc})")
        page.write_text(servicemap.render_missing(f"the service map cannot be drawn: {exc}"))


def render(results_dir: Path, out: Path | None = None) -> Path:
    """Write the dashboard of *results_dir* to *out* (default ``results_dir/index.html``),
    and beside it the service map of the flows recorded in ``flows.json``.

    Raises DashboardError when the directory holds no result document.
    """
    results_dir = Path(results_dir)
    warnings: list[str] = []
    history = load_documents(results_dir, warnings)
    latest_path = results_dir / LATEST
    latest = _read_document(latest_path, warnings) if latest_path.is_file() else None
    if latest is None and not history:
        raise DashboardError(f"no result documents in {results_dir} (run `chainbench bench` first)")
    current = latest if latest is not None else history[-1]
    out = Path(out) if out is not None else results_dir / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    _service_map(results_dir, out.parent / SERVICE_MAP, warnings)
    page = _environment().get_template(TEMPLATE).render(
        _context(current, history or [current], warnings, _kernel_matrix(results_dir, warnings)))
    out.write_text(page)
    return out
