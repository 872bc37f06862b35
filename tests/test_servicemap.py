"""The service map (harness/observe/servicemap.py): recorded flows drawn as a graph.

A known flow set (three namespaces, a service, forwarded and dropped flows,
replies, reserved peers) gives exactly the nodes and edges expected, with
their labels, verdicts and colours, in the JSON the page embeds; in headless
Chromium the page draws them (read back through cytoscape's own API, with
every network request made to fail) and its screenshot shows each verdict's
colour inside the graph's box; ``chainbench service-map`` writes the page and
refuses a bad flows file in one line naming the file and line, exit 2; the
dashboard draws ``results/flows.json`` as ``service-map.html``, or says plainly
that there is none.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from harness import cli
from harness.errors import InputError
from harness.observe import servicemap
from tests.servicemap_flows import CHECKS, connectivity_flows, json_lines
from tests.test_dashboard import (  # noqa: F401  (chromium: the fixture, imported to be used)
    chromium, colour_pixels, documents, hex_rgb, read_png, write_results)

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

DATA = re.compile(r'<script type="application/json" id="servicemap-data">(.*?)</script>', re.S)


# ---------------------------------------------------------------- a known flow set

def ep(ns: str, pod: str, identity: int) -> dict:
    return {"ID": identity % 1000, "identity": identity, "namespace": ns, "pod_name": pod,
            "labels": [f"k8s:app={pod.rsplit('-', 1)[0]}", f"k8s:io.kubernetes.pod.namespace={ns}"]}


WEB, API1, API2, PROM = (ep("frontend", "web-1", 1001), ep("backend", "api-1", 1002),
                         ep("backend", "api-2", 1003), ep("monitoring", "prom-0", 1004))
WORLD = {"identity": 2, "labels": ["reserved:world"]}
HOST = {"identity": 1, "labels": ["reserved:kube-apiserver", "reserved:host"]}
REMOTE = {"identity": 6}                      # no labels: named by its reserved identity
API_SVC = {"name": "api", "namespace": "backend"}


def tcp(port: int) -> dict:
    return {"TCP": {"source_port": 43210, "destination_port": port, "flags": {"SYN": True}}}


def fl(src, dst, l4, verdict="FORWARDED", direction="INGRESS", **extra) -> dict:
    return {"time": "2026-11-26T19:30:00.000000001Z", "verdict": verdict, "source": src,
            "destination": dst, "IP": {"source": "198.18.0.1", "destination": "198.18.1.1",
                                       "ipVersion": "IPv4"},
            "l4": l4, "Type": "L3_L4", "traffic_direction": direction, "is_reply": False, **extra}


def known_flows() -> list[dict]:
    reply = fl(API1, WEB, tcp(43210), direction="EGRESS", source_service=API_SVC)
    del reply["is_reply"]
    reply["isReply"] = True                   # the lowerCamelCase JSON name, as jsonpb writes it
    return [
        fl(WEB, API1, tcp(8080), destination_service=API_SVC),
        fl(WEB, API1, tcp(8080), destination_service=API_SVC),
        reply,
        # dropped at api-2's ingress: it went through the service to the backend
        fl(WEB, API2, tcp(8080), "DROPPED", destination_service=API_SVC, drop_reason_desc="POLICY_DENIED"),
        # dropped at web-1's egress: it never left, no hop from the service to api-1
        fl(WEB, API1, tcp(8080), "DROPPED", "EGRESS", destinationService=API_SVC),
        fl(PROM, API1, tcp(9090)),
        fl(API1, WORLD, tcp(443), "DROPPED", "EGRESS"),
        fl(WORLD, API1, tcp(51000), "DROPPED", is_reply=True),
        fl(REMOTE, WEB, {"ICMPv4": {"type": 8}}),
        fl(PROM, HOST, tcp(9100)),
        {"verdict": "FORWARDED", "time": "2026-11-26T19:30:02Z"},   # no end can be named
    ]


NAMESPACES = {"ns:backend": "backend", "ns:frontend": "frontend", "ns:monitoring": "monitoring"}
#: id -> (label, kind, parent)
NODES = {
    **{nid: (label, "namespace", None) for nid, label in NAMESPACES.items()},
    "pod:frontend/web-1": ("web-1", "pod", "ns:frontend"),
    "pod:backend/api-1": ("api-1", "pod", "ns:backend"),
    "pod:backend/api-2": ("api-2", "pod", "ns:backend"),
    "pod:monitoring/prom-0": ("prom-0", "pod", "ns:monitoring"),
    "svc:backend/api": ("api", "service", "ns:backend"),
    "reserved:world": ("world", "reserved", None),
    "reserved:host": ("host", "reserved", None),
    "reserved:remote-node": ("remote-node", "reserved", None),
}
#: (source, target, label) -> (verdict class, counts by verdict)
EDGES = {
    ("pod:frontend/web-1", "svc:backend/api", "8080/TCP"): ("mixed", {"FORWARDED": 2, "DROPPED": 2}),
    ("svc:backend/api", "pod:backend/api-1", "8080/TCP"): ("forwarded", {"FORWARDED": 2}),
    ("svc:backend/api", "pod:backend/api-2", "8080/TCP"): ("dropped", {"DROPPED": 1}),
    ("pod:monitoring/prom-0", "pod:backend/api-1", "9090/TCP"): ("forwarded", {"FORWARDED": 1}),
    ("pod:backend/api-1", "reserved:world", "443/TCP"): ("dropped", {"DROPPED": 1}),
    ("reserved:remote-node", "pod:frontend/web-1", "ICMPv4"): ("forwarded", {"FORWARDED": 1}),
    ("pod:monitoring/prom-0", "reserved:host", "9100/TCP"): ("forwarded", {"FORWARDED": 1}),
}


def embedded(html: str):
    return json.loads(DATA.search(html).group(1))


def test_the_page_embeds_exactly_the_known_graph():
    html = servicemap.render(known_flows(), "known.json")
    data = embedded(html)
    nodes = {n["data"]["id"]: (n["data"]["label"], n["data"]["kind"], n["data"].get("parent"))
             for n in data["nodes"]}
    assert nodes == NODES
    assert all(n["classes"] == n["data"]["kind"] for n in data["nodes"])
    # a compound node comes before its children (cytoscape needs the parent first)
    order = [n["data"]["id"] for n in data["nodes"]]
    assert all(order.index(p) < order.index(i) for i, (_, _, p) in NODES.items() if p)

    edges = {(e["data"]["source"], e["data"]["target"], e["data"]["label"]): e["data"]
             for e in data["edges"]}
    assert {k: (e["verdict"], e["counts"]) for k, e in edges.items()} == EDGES
    assert len(data["edges"]) == len(EDGES)            # one edge per (source, target, port)
    for key, e in edges.items():
        assert e["colour"] == servicemap.COLOURS[e["verdict"]], key
        assert e["line"] == ("dashed" if e["verdict"] == "mixed" else "solid"), key
        assert e["flows"] == sum(e["counts"].values())
        assert e["title"].splitlines()[1:] == [f"{v.lower()}: {n}" for v, n in e["counts"].items()]
    assert edges[("pod:frontend/web-1", "svc:backend/api", "8080/TCP")]["title"].startswith(
        "web-1 → api 8080/TCP")
    # the colours are what the legend says: green, red, amber
    r, g, b = hex_rgb(servicemap.COLOURS["forwarded"])
    assert g > r + 60 and g > b + 60
    r, g, b = hex_rgb(servicemap.COLOURS["dropped"])
    assert r > g + 120 and r > b + 120
    r, g, b = hex_rgb(servicemap.COLOURS["mixed"])
    assert r > 200 and 120 < g < 200 and b < 60

    g = servicemap.graph(known_flows())
    assert (g.flows, g.replies, g.unplaced) == (11, 2, 1)
    assert (g.first, g.last) == ("2026-11-26T19:30:00.000000001Z", "2026-11-26T19:30:02Z")
    for text in ("known.json", "flows <b>11</b>", "replies left out <b>2</b>", "edges <b>7</b>"):
        assert text in html, text
    # the table under the graph lists every edge with its counts
    rows = re.findall(r'<tr data-edge="e\d+">(.*?)</tr>', html, re.S)
    assert len(rows) == len(EDGES)
    assert any("pod:frontend/web-1" in r and "dropped 2, forwarded 2" in r for r in rows)  # most, then A-Z


def test_the_page_is_self_contained():
    html = servicemap.render(known_flows())
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html, re.I)
    scripts = re.findall(r"<script>/\* (\S+) (\S+) \((\w+)\), from npm", html)
    assert [s[0] for s in scripts] == [p for p, _ in servicemap.VENDOR_SCRIPTS]
    lock = json.loads((Path(__file__).parent.parent / "web" / "package-lock.json").read_text())
    for package, version, _ in scripts:       # the inlined build is the one the lock pins
        assert lock["packages"][f"node_modules/{package}"]["version"] == version, package
    # outside the vendored library (whose comments cite URLs), nothing names a resource
    ours = re.sub(r"<script>/\*.*?</script>", "", html, flags=re.S)
    assert not re.search(r"https?://|@import|url\(", ours)


def test_embedded_data_cannot_end_its_script():
    evil = "x</script><script>alert(1)</script><!--"
    flows = known_flows()
    flows[0] = copy.deepcopy(flows[0])
    flows[0]["source"]["labels"].append(evil)
    flows[5]["destination_service"] = {"name": evil, "namespace": "backend"}
    html = servicemap.render(flows)
    assert "<script>alert" not in html
    data = embedded(html)
    assert any(evil in n["data"]["title"] for n in data["nodes"])
    assert any(n["data"]["label"] == evil for n in data["nodes"])


def test_connectivity_check_flows_draw_every_check():
    """The fixture behind docs/service-map.png: each check's connection is an edge, dropped
    exactly where the check must fail, and no reply is drawn."""
    data = servicemap.graph(connectivity_flows())
    edges = {(e["data"]["source"], e["data"]["target"]): e["data"]["verdict"] for e in data.edges}

    def node(name):
        return f"reserved:{name}" if name in ("world", "host", "remote-node") else f"pod:default/{name}"
    for check, client, server, service, port, expect, direction in CHECKS:
        first = node(client), f"svc:default/{service}" if service else node(server)
        assert edges[first] in (("forwarded",) if expect == "pass" else ("dropped", "mixed")), check
        if service and expect == "pass":
            assert edges[(f"svc:default/{service}", node(server))] == "forwarded", check
    # an egress drop never reached the backend: svc -> echo-a carries forwarded flows only
    assert edges[("svc:default/echo-a", "pod:default/echo-a")] == "forwarded"
    assert edges[("pod:default/pod-to-a", "pod:default/echo-ingress-deny")] == "dropped"
    # replies (server -> client) are not drawn
    assert not any(a == "pod:default/echo-a" for a, _ in edges)
    assert data.replies == sum(1 for f in connectivity_flows() if f["is_reply"]) > 0


def test_no_flows_no_graph():
    for flows, said in (([], "no flows"),
                        ([fl(WEB, API1, tcp(80), is_reply=True)], "no flow to draw: 1 flow read, 1 reply")):
        html = servicemap.render(flows, "f.json")
        assert said in html and "f.json" in html
        assert 'id="cy"' not in html and "cytoscape" not in html
        assert embedded(html) is None


def test_a_malformed_flow_is_named():
    flows = known_flows()
    flows[3] = dict(flows[3], l4={"TCP": {"destination_port": "http"}})
    with pytest.raises(InputError, match=r"^flow 3: l4\.TCP\.destination_port: expected a port"):
        servicemap.graph(flows)


def test_without_the_graph_library_the_page_is_not_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHAINBENCH_BUILD_DIR", str(tmp_path / "nobuild"))
    flows = tmp_path / "flows.json"
    flows.write_text(json_lines(connectivity_flows()))
    out = tmp_path / "map.html"
    assert cli.main(["service-map", "--flows", str(flows), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run `make web`" in err[0] and "cytoscape" in err[0]
    assert not out.exists()


# ---------------------------------------------------------------- in headless Chromium

PROBE = """<script>(function () {
  var c = window.cy, r = document.getElementById("cy").getBoundingClientRect();
  var out = {ready: document.body.getAttribute("data-ready"),
    box: [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height],
    nodes: c.nodes().map(function (n) {
      return {id: n.id(), label: n.data("label"), parent: n.data("parent") || null,
              compound: n.isParent(), visible: n.visible(), bb: n.renderedBoundingBox()}; }),
    edges: c.edges().map(function (e) {
      return {source: e.source().id(), target: e.target().id(), label: e.data("label"),
              colour: e.style("line-color"), line: e.style("line-style"), visible: e.visible()}; })};
  var p = document.createElement("pre");
  p.id = "cb-probe";
  p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
})();</script></body>"""
#: Any host name resolves to nothing: a page that fetched anything would miss it.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"
W, H = 1400, 1000


def rgb(colour: str) -> str:
    return "rgb({},{},{})".format(*hex_rgb(colour))


def test_chromium_draws_the_nodes_and_edges(tmp_path, chromium):
    page = tmp_path / "service-map.html"
    page.write_text(servicemap.render(known_flows(), "known.json"))
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE, 1))
    dom = chromium(probe.as_uri(), OFFLINE, f"--window-size={W},{H}", "--dump-dom")
    found = re.search(r'<pre id="cb-probe">(.*?)</pre>', dom, re.S)
    assert found, "the page's script did not run (no window.cy)"
    state = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                       .replace("&lt;", "<").replace("&gt;", ">"))
    assert state["ready"] == "1"

    # cytoscape holds every node, with its namespace as its compound parent
    assert {n["id"]: (n["label"], n["parent"]) for n in state["nodes"]} == \
        {i: (label, parent) for i, (label, _, parent) in NODES.items()}
    assert {n["id"] for n in state["nodes"] if n["compound"]} == set(NAMESPACES)
    # ... and every edge, labelled, in its verdict's colour and line style
    assert sorted((e["source"], e["target"], e["label"]) for e in state["edges"]) == sorted(EDGES)
    for e in state["edges"]:
        verdict = EDGES[(e["source"], e["target"], e["label"])][0]
        assert e["colour"].replace(" ", "") == rgb(servicemap.COLOURS[verdict]), e
        assert e["line"] == ("dashed" if verdict == "mixed" else "solid"), e
        assert e["visible"], e
    # laid out inside the graph's box, not on top of each other
    bx, by, bw, bh = state["box"]
    assert bw > 1000 and bh > 400 and by + bh <= H, state["box"]
    centres = set()
    for n in state["nodes"]:
        bb = n["bb"]
        assert n["visible"] and bb["w"] > 10 and bb["h"] > 10, n
        assert -1 <= bb["x1"] and bb["x2"] <= bw + 1 and -1 <= bb["y1"] and bb["y2"] <= bh + 1, n
        centres.add((round(bb["x1"] + bb["w"] / 2), round(bb["y1"] + bb["h"] / 2)))
    assert len(centres) == len(state["nodes"])

    # the screenshot: not blank, and each verdict's colour drawn inside the graph's box
    shot = tmp_path / "map.png"
    chromium(page.as_uri(), OFFLINE, f"--window-size={W},{H}", f"--screenshot={shot}")
    width, height, bpp, rows = read_png(shot.read_bytes(), max_rows=round(by + bh))
    assert (width, height) == (W, H)
    box = (round(bx) + 3, round(by) + 3, round(bw) - 6, round(bh) - 6)
    for verdict in ("forwarded", "dropped", "mixed"):
        seen = colour_pixels(rows, bpp, box, hex_rgb(servicemap.COLOURS[verdict]), tolerance=10)
        assert seen >= 25, (verdict, seen)
    x, y, w, h = box
    pixels = [bytes(row[i:i + 3]) for row in rows[y:y + h] for i in range(x * bpp, (x + w) * bpp, bpp)]
    background = max(set(pixels[::97]), key=pixels[::97].count)
    assert background == bytes(hex_rgb("#fbfcfd"))           # the box's own background
    assert len(set(pixels)) > 100                              # text, shapes, anti-aliasing
    assert sum(p != background for p in pixels) > 0.03 * len(pixels)
    # and none of the edge colours outside the box (the right margin of the page)
    margin = (W - 10, 0, 10, round(by + bh))
    for colour in servicemap.COLOURS.values():
        assert colour_pixels(rows, bpp, margin, hex_rgb(colour)) == 0


# ---------------------------------------------------------------- chainbench service-map

def test_cli_writes_the_page(tmp_path, capsys):
    flows = tmp_path / "flows.json"
    flows.write_text(json_lines(known_flows()[:-1]) + '{"node_status": {}, "node_name": "cb-node0"}\n\n')
    out = tmp_path / "map.html"
    assert cli.main(["service-map", "--flows", str(flows), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == \
        f"service map written to {out}: 7 edge(s) from 10 flow(s), 2 replies left out"
    data = embedded(out.read_text())
    assert {(e["data"]["source"], e["data"]["target"], e["data"]["label"]) for e in data["edges"]} == set(EDGES)


@pytest.mark.parametrize("content, error", [
    ('{"flow": {"verdict": "FORWARDED"}}\n\n{"flow": {"verdict": "DROPPED"}\n', r"{f}:3: not JSON \("),
    ('{"flow": {"source": {"labels": "reserved:world"}}}\n', r"{f}:1: source\.labels: expected a list"),
    ('{"flow": {"verdict": "FORWARDED"}}\n[1, 2]\n', r"{f}:2: expected a JSON object per line, got list"),
    ('{"hello": "world"}\n', r"{f}:1: not a flow \(no \"flow\" object; keys: hello\)"),
    ('{"flow": {"is_reply": "yes"}}\n', r"{f}:1: is_reply: expected true or false"),
    ('{"flow": {"l4": {"TCP": {"destination_port": 70000}}}}\n',
     r"{f}:1: l4\.TCP\.destination_port: expected a port number"),
    (b"\xff\xfe\x00garbage\n", r"{f}: not UTF-8 text"),
    (None, r"{f}: cannot read \(No such file or directory\)"),
])
def test_cli_bad_flows_file(tmp_path, capsys, content, error):
    flows = tmp_path / "flows.json"
    if isinstance(content, bytes):
        flows.write_bytes(content)
    elif content is not None:
        flows.write_text(content)
    out = tmp_path / "map.html"
    assert cli.main(["service-map", "--flows", str(flows), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and captured.out == "", captured
    assert re.fullmatch("ERROR: " + error.format(f=re.escape(str(flows))) + ".*", err[0]), err[0]
    assert not out.exists()


def test_cli_unwritable_output(tmp_path, capsys):
    flows = tmp_path / "flows.json"
    flows.write_text(json_lines(known_flows()))
    out = tmp_path / "missing-dir" / "map.html"
    assert cli.main(["service-map", "--flows", str(flows), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ERROR: {out}: cannot write (No such file or directory)"]
    assert not out.parent.exists()


# ---------------------------------------------------------------- the dashboard's page

def test_dashboard_draws_results_flows(tmp_path):
    from bench.report.dashboard import render
    results = write_results(tmp_path / "results", documents())
    index = render(results).read_text()
    assert '<a href="service-map.html">service map</a>' in index
    page = (results / "service-map.html").read_text()
    assert "no recorded flows" in page and str(results / "flows.json") in page
    assert 'id="cy"' not in page and embedded(page) is None       # no graph without flows

    (results / "flows.json").write_text(json_lines(connectivity_flows()))
    index = render(results).read_text()
    assert "flows.json" not in index                  # not taken for a result document
    data = embedded((results / "service-map.html").read_text())
    assert data == servicemap.graph(connectivity_flows()).elements()

    (results / "flows.json").write_text(json_lines(connectivity_flows()) + "{oops\n")
    index = render(results).read_text()
    warnings = re.search(r'<section class="warnings".*?</section>', index, re.S).group(0)
    assert "flows.json: no service map" in warnings and "flows.json:128: not JSON" in warnings
    page = (results / "service-map.html").read_text()
    assert "the service map cannot be drawn" in page and embedded(page) is None
