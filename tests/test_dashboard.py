"""The results dashboard (bench/report/dashboard.py) and the result schema.

The dashboard is rendered from synthetic result documents, then opened in
headless Chromium: the live DOM after the inline JS ran must hold every chart
with the right series and points, and a screenshot must show each series'
colour inside its chart (pixels read by the small PNG decoder below).  The
result schema (results/schema/results.schema.json) is checked with
bench.report.schema, which validates with jsonschema (Draft 2020-12).
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import struct
import time
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.report import dashboard
from bench.report.dashboard import DashboardError, load_documents, render
from bench.report.schema import KEYWORDS, keywords, validate
from bench.report.screenshot import ScreenshotError, run_chromium
from jsonschema import Draft202012Validator
from harness import paths

SCHEMA = paths.RESULTS / "schema" / "results.schema.json"

pytestmark = pytest.mark.test_run_only   # files and headless Chromium, no namespace: beside the others (ci/run-tests.sh)

# ---------------------------------------------------------------- synthetic documents

MICRO_SERVICES = (1, 100, 10000)
MICRO_CASES = {"established": 60.0, "new-flow": 180.0, "non-service": 48.0, "nodeport": 75.0,
               "ipv6-established": 66.0}
IDENTITIES = (1, 1000, 16000)
POLICY_CASES = {"policy-new": ("to_container", 250.0), "policy-established": ("from_container", 47.0)}
CONTROL_SERVICES = (100, 1000, 10000)
METHODS = ("bpf", "iptables-legacy", "iptables-nft", "nft")
MACRO_SERVICES = (1, 1000, 10000)
DATAPATHS = {"bpf-tc": 1.0, "bpf-tc-events": 0.97, "bpf-sock": 1.3, "iptables": 0.45,
             "nftables": 0.7}


def summ(median: float, mad_pct: float = 4.0, n: int = 5) -> dict:
    mad = median * mad_pct / 100
    return {"n": n, "median": median, "mad": mad, "mad_pct": mad_pct, "min": median - 2 * mad,
            "max": median + 2 * mad, "mean": median, "stdev": 1.4826 * mad}


def micro_result(obj: str, program: str, case: str | None, scale: dict, ns: float) -> dict:
    suffix = "".join(f"@{n}{'svc' if k == 'services' else 'id'}" for k, n in scale.items())
    floor = 9.0
    return {"name": f"{obj}:{program}" + (f"/{case}" if case else "") + suffix,
            "case": case or program, "object": obj, "program": program, "scale": scale,
            "verdict": "TC_ACT_OK", "measure": "wall",
            "ns_per_packet": summ(ns), "floor_ns_per_packet": summ(floor, 2.0),
            "ratio_to_floor": summ(ns / floor), "samples_ns": [ns] * 5,
            "floor_samples_ns": [floor] * 5, "ratio_samples": [ns / floor] * 5}


def micro_suite(speed: float) -> dict:
    results = [micro_result("lxc", "from_container", None, {}, 78.0 * speed),
               micro_result("parse_stats", "xdp_parse_stats", None, {}, 25.0 * speed)]
    for case, ns in MICRO_CASES.items():
        for n in MICRO_SERVICES:
            results.append(micro_result("lxc", "from_container", case, {"services": n},
                                        speed * ns * (1 + 0.02 * len(str(n)))))
    for case, (program, ns) in POLICY_CASES.items():
        for n in IDENTITIES:
            results.append(micro_result("lxc", program, case, {"identities": n}, speed * ns))
    return {"config": {"samples": 5, "repeat": 100000, "cpu": 1}, "results": results}


def control_suite(speed: float) -> dict:
    results = []
    for op in ("full", "change-one"):
        for n in CONTROL_SERVICES:
            for m in METHODS:
                status, detail = "ok", None
                if m == "iptables-legacy":
                    status, detail = "unavailable", "iptables-legacy is not installed"
                elif m == "iptables-nft" and n == 1000:
                    status, detail = "error", "iptables-restore: line 3 failed"
                elif m == "nft" and n == 10000:
                    status, detail = "timeout", "no answer in 60 s"
                base = {"bpf": 0.004, "iptables-nft": 0.05, "nft": 0.02}.get(m, 1.0)
                secs = speed * base * n ** 0.9 * (0.1 if op == "change-one" else 1.0)
                ok = status == "ok"
                results.append({
                    "method": m, "services": n, "endpoints_per_service": 10, "operation": op,
                    "status": status, "detail": detail,
                    "seconds": summ(secs) if ok else None, "samples_s": [secs] * 5 if ok else [],
                    "entries": n * 12 if ok else None,
                    "map_bytes": n * 900 if ok and m == "bpf" else None,
                    "rules_text_bytes": n * 700 if ok and m != "bpf" else None,
                    "ratio_to_bpf": summ(base / 0.004) if ok and m != "bpf" else None})
    return {"config": {"scales": list(CONTROL_SERVICES), "rounds": 5}, "results": results}


def slow_iptables(services: int) -> float:
    """How much slower kube-proxy's rule chains get with the number of services (made up)."""
    return 1 + services / 4000


def macro_suite() -> dict:
    results = []
    for mode, base in (("new-conn", 9000.0), ("keepalive", 30000.0)):
        for n in MACRO_SERVICES:
            for dp, factor in DATAPATHS.items():
                slow = 1.0 if dp.startswith("bpf") else slow_iptables(n)
                rps = base * factor / slow
                iptables_rps = base * DATAPATHS["iptables"] / slow_iptables(n)
                results.append({
                    "datapath": dp, "services": n, "target": "last", "mode": mode,
                    "rps": summ(rps), "rps_samples": [rps] * 5,
                    "latency_us": {"p50": summ(1e6 / rps), "p90": summ(2e6 / rps),
                                   "p99": summ(5e6 / rps)},
                    "cpu_us_per_request": {"softirq": summ(12.0 * slow), "system": summ(20.0)},
                    "ratio_to_iptables": summ(rps / iptables_rps),
                    "errors": 0})
                if dp == "bpf-tc-events":
                    results[-1]["ratio_to_events_off"] = summ(0.97, 1.0)
    # A random-target row: in the table, not in the charts (they show target=last).
    results.append(dict(copy.deepcopy(results[0]), target="random"))
    locust = [{"datapath": dp, "services": 10000, "users": 50, "workers": 2, "duration_s": 20,
               "requests": 12345, "failures": 0, "rps": 617.2,
               "latency_ms": {"p50": 3, "p90": 8, "p99": 20}}
              for dp in ("bpf-tc", "iptables")]
    visibility = {
        "off": "bpf-tc", "events": "bpf-tc-events",
        "monitor_aggregation": {"bpf-tc": "off", "bpf-tc-events": "medium"},
        "target_cost_pct": 5.0,
        "results": [{"services": 10000, "target": "last", "mode": mode, "off_rps": summ(base),
                     "events_rps": summ(base * ratio), "ratio": summ(ratio, 1.0),
                     "ratios": [ratio] * 5, "cost_pct": round(100 * (1 - ratio), 3),
                     "observer_cpu_us_per_request": summ(us)}
                    for mode, base, ratio, us in (("new-conn", 9000.0, 0.93, 41.5),
                                                  ("keepalive", 30000.0, 0.99, 1.25))],
        "observer": {"node": "cb-node4", "pid": 4242, "restarts": 0, "wall_seconds": 120.0,
                     "cpu_seconds": 18.5, "user_seconds": 16.0, "system_seconds": 2.5,
                     "cpu_share": 0.1542, "seen_flows": 812345, "flows_of_client": 4095,
                     "lost_events": 1234}}
    return {"config": {"duration_s": 10}, "results": results, "locust": locust,
            "visibility": visibility}


def document(created: str, sha: str, profile: str, suites: dict) -> dict:
    return {"schema_version": 3, "created": created, "git": {"sha": sha, "dirty": sha.startswith("0")},
            "profile": profile, "notes": [],
            "machine": {"cpu_model": "Test CPU @ 3.0GHz", "cores": 2, "kernel": "6.18.44",
                        "clang": "Debian clang version 19.1.7", "libbpf": "v1.1",
                        "iptables_backend": "nf_tables", "python": "3.11.7", "hostname": "vm"},
            "suites": suites}


def documents() -> tuple[dict, dict]:
    """Two runs: an older quick one (micro + control) and a newer full one (all three suites)."""
    older = document("2026-11-25T10:00:00+00:00", "0a1b2c3d4e5f", "quick",
                     {"micro": micro_suite(1.1), "control": control_suite(1.2)})
    newer = document("2026-11-26T19:30:00+00:00", "abc123def456", "full",
                     {"micro": micro_suite(1.0), "control": control_suite(1.0), "macro": macro_suite()})
    return older, newer


def write_results(directory: Path, docs, latest: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        stamp = doc["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
        (directory / f"{stamp}-{doc['git']['sha']}.json").write_text(json.dumps(doc))
    if latest is not None:
        (directory / "latest.json").write_text(json.dumps(latest))
    return directory


@pytest.fixture
def results_dir(tmp_path) -> Path:
    older, newer = documents()
    directory = write_results(tmp_path / "results", [newer, older], latest=newer)
    (directory / "kernel-matrix.json").write_text(json.dumps([
        {"kernel": "6.1.119", "status": "passed", "detail": None, "passed": 412, "failed": 0},
        {"kernel": "5.15.170", "status": "failed", "detail": "verifier: too many states",
         "passed": 398, "failed": 14}]))
    return directory


# ---------------------------------------------------------------- headless chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WIDTH = 1400


def _live_processes(marker: str) -> list[int]:
    """Pids (not zombies) whose command line holds *marker*."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
def chromium(tmp_path):
    """chromium(url, *args) -> stdout of one headless run, in its own session and
    profile; every process of the run is killed afterwards, and the test fails if
    any survives."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium is not installed (ci/install-deps.sh installs it)")
    profile = tmp_path / "chromium-profile"

    def run(url: str, *args: str, timeout: float = 30) -> str:
        try:
            return run_chromium([*args, url], str(profile), timeout)
        except ScreenshotError as exc:
            pytest.fail(str(exc))

    yield run
    deadline = time.monotonic() + 5
    while _live_processes(str(profile)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_processes(str(profile)), "chromium processes were left behind"


class ChartDom(HTMLParser):
    """The charts of a dumped DOM: per chart its box, per series its path data and dots."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict] = {}
        self.body: dict = {}
        self._chart: dict | None = None
        self._series: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        elif tag == "svg" and "data-chart" in a:
            self._chart = self.charts[a["data-chart"]] = {"box": a.get("data-box"), "series": {}}
        elif self._chart is None:
            return
        elif tag == "g" and "data-series" in a:
            self._series = self._chart["series"][a["data-series"]] = {"d": [], "points": 0}
        elif tag == "path" and "series" in cls and self._series is not None:
            self._series["d"].append(a.get("d") or "")
        elif tag == "circle" and "pt" in cls and self._series is not None:
            self._series["points"] += 1

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None
        elif tag == "g":
            self._series = None


# ---------------------------------------------------------------- a tiny PNG decoder

def _add_bytes(a: bytes, b: bytes) -> bytes:
    """Bytewise (a + b) mod 256, at C speed: each byte gets a 16-bit lane of one big
    integer, so carries stay in their lane (PNG's Up filter, most rows of a page)."""
    wide_a, wide_b = bytearray(2 * len(a)), bytearray(2 * len(b))
    wide_a[0::2], wide_b[0::2] = a, b
    total = int.from_bytes(wide_a, "little") + int.from_bytes(wide_b, "little")
    return total.to_bytes(2 * len(a) + 1, "little")[0:2 * len(a):2]


def read_png(data: bytes, max_rows: int | None = None) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, rows) of an 8-bit RGB/RGBA non-interlaced PNG;
    only the first *max_rows* rows are decoded when given."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev, rows = bytes(stride), []
    for y in range(min(height, max_rows or height)):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:        # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:      # Up
            line = bytearray(_add_bytes(line, prev))
        elif kind == 3:      # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:      # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                c = prev[i - bpp] if i >= bpp else 0
                b = prev[i]
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def colour_pixels(rows, bpp: int, box: tuple[int, int, int, int], rgb: tuple[int, int, int],
                  tolerance: int = 12) -> int:
    """How many pixels inside *box* (x, y, w, h) are within *tolerance* of *rgb* on every channel."""
    x, y, w, h = box
    r0, g0, b0 = rgb
    count = 0
    for row in rows[y:y + h]:
        for i in range(x * bpp, (x + w) * bpp, bpp):
            if abs(row[i] - r0) <= tolerance and abs(row[i + 1] - g0) <= tolerance \
                    and abs(row[i + 2] - b0) <= tolerance:
                count += 1
    return count


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


# ---------------------------------------------------------------- the rendered page

FLOOR = "floor (empty program)"
#: chart id -> {series name: points drawn}.  iptables-legacy is unavailable at every
#: scale (no series), iptables-nft errored at 1000 services (a gap), nft timed out at
#: 10000; the older document has no macro suite (a gap in the macro history).
EXPECTED = {
    "micro-services": {**{c: len(MICRO_SERVICES) for c in MICRO_CASES}, FLOOR: len(MICRO_SERVICES)},
    "micro-identities": {**{c: len(IDENTITIES) for c in POLICY_CASES}, FLOOR: len(IDENTITIES)},
    "control-full": {"bpf": 3, "iptables-nft": 2, "nft": 2},
    "control-change-one": {"bpf": 3, "iptables-nft": 2, "nft": 2},
    "macro-new-conn": {dp: len(MACRO_SERVICES) for dp in DATAPATHS},
    "macro-keepalive": {dp: len(MACRO_SERVICES) for dp in DATAPATHS},
    "history-micro": {"established": 2},
    "history-control": {"bpf": 2},
    "history-macro": {"bpf-tc": 1},
}
#: Series whose line is broken by a gap: drawn as two pieces (two M commands).
BROKEN = {("control-full", "iptables-nft"), ("control-change-one", "iptables-nft")}


def test_dashboard_draws_every_chart(results_dir, tmp_path, chromium):
    page = render(results_dir)
    assert page == results_dir / "index.html"
    html = page.read_text()
    specs = json.loads(re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>',
                                 html, re.S).group(1))["charts"]
    assert set(specs) == set(EXPECTED)

    # The live DOM after the inline JS ran: every chart, series and point drawn.
    dom = ChartDom()
    dom.feed(chromium(page.as_uri(), f"--window-size={WIDTH},1000", "--dump-dom"))
    assert "data-height" in dom.body, "the inline script did not finish"
    assert set(dom.charts) == set(EXPECTED)
    for chart_id, expected in EXPECTED.items():
        drawn = dom.charts[chart_id]["series"]
        assert {name: s["points"] for name, s in drawn.items()} == expected, chart_id
        for name, s in drawn.items():
            assert len(s["d"]) == 1, (chart_id, name)      # one line per series
            moves = re.findall(r"[ML]", s["d"][0])
            assert len(moves) == expected[name], (chart_id, name, s["d"][0])
            assert moves.count("M") == (2 if (chart_id, name) in BROKEN else 1), (chart_id, name)
    assert "ratio to floor" in html and "not in this run" not in html

    # The screenshot: each series' colour shows inside its chart's box.
    height = int(dom.body["data-height"])
    shot = tmp_path / "dashboard.png"
    chromium(page.as_uri(), f"--window-size={WIDTH},{height}", f"--screenshot={shot}")
    assert shot.is_file()
    boxes = {cid: tuple(int(v) for v in c["box"].split(",")) for cid, c in dom.charts.items()}
    bottom = max(y + h for _, y, _, h in boxes.values())
    width, shot_height, bpp, rows = read_png(shot.read_bytes(), max_rows=bottom)
    assert (width, shot_height) == (WIDTH, height) and bottom <= height
    assert tuple(rows[5][5 * bpp:5 * bpp + 3]) == (0x1d, 0x23, 0x30)   # the header's background
    for chart_id, box in boxes.items():
        assert box[2] > 300 and box[3] > 150, (chart_id, box)
        for series in specs[chart_id]["series"]:
            if series["dashed"]:
                continue  # the grey floor line: checked in the DOM above
            seen = colour_pixels(rows, bpp, box, hex_rgb(series["colour"]))
            assert seen >= 8, (chart_id, series["name"], series["colour"], seen)
    # and the decoder sees no chart colour where the page is empty: its right margin
    margin = (WIDTH - 8, 0, 8, bottom)
    for series in specs["micro-services"]["series"]:
        assert colour_pixels(rows, bpp, margin, hex_rgb(series["colour"])) == 0


def test_page_has_every_section(results_dir):
    latest = json.loads((results_dir / "latest.json").read_text())
    latest["notes"] = ["smoke profile: its figures are not benchmarks"]
    (results_dir / "latest.json").write_text(json.dumps(latest))
    html = render(results_dir, results_dir / "out" / "page.html").read_text()
    assert '<p class="note">smoke profile: its figures are not benchmarks</p>' in html
    for text in ("abc123def456", "2026-11-26 19:30", "full", "Test CPU @ 3.0GHz", "nf_tables",
                 "ns/packet vs services", "ns/packet vs identities", "ipv6-established",
                 "iptables-legacy is not installed", "no answer in 60 s", "timeout",
                 "unavailable", "keep-alive req/s vs services", "locust", "617",
                 "Kernel matrix", "5.15.170", "verifier: too many states",
                 "0a1b2c3d4e5f (dirty)"):
        assert text in html, text


def test_macro_shows_the_cost_of_visibility(results_dir):
    """bpf-tc-events vs bpf-tc: both req/s, the ratio within rounds and the cost against
    the 5 % target (flagged when over it), the observer's CPU and lost events."""
    html = render(results_dir, results_dir / "out" / "page.html").read_text()
    table = html.split('<table id="visibility">')[1].split("</table>")[0]
    cells = [[re.sub(r"<[^>]+>", "|", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
             for row in table.split("<tr>")[2:]]
    keepalive, new_conn = cells            # sorted by mode
    assert keepalive[:3] == ["10,000", "last", "keepalive"]
    assert keepalive[5].startswith("0.990×") and "1.0 %" in keepalive[6]
    assert "st-ok" in table.split("<tr>")[2]
    assert new_conn[2] == "new-conn" and "7.0 %" in new_conn[6]
    assert "st-failed" in table.split("<tr>")[3]          # over the 5 % target
    assert new_conn[7].startswith("41.5")
    observer = html.split('<table class="kv" id="observer">')[1].split("</table>")[0]
    for text in ("cb-node4", "18.5 (16.0 + 2.50) over 120 s", "15.4 %", "812,345", "1,234"):
        assert text in observer, text
    assert "bpf-tc: off, bpf-tc-events: medium" in html
    # The datapaths table: the events row has its events/off ratio, the others a dash.
    assert "0.970× ± 0.0097" in html


def test_no_documents(tmp_path):
    with pytest.raises(DashboardError, match="no result documents"):
        render(tmp_path)
    with pytest.raises(DashboardError):
        render(tmp_path / "missing")
    (tmp_path / "kernel-matrix.json").write_text("[]")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DashboardError) as err:
        render(tmp_path)
    assert "\n" not in str(err.value)


def test_corrupt_file_is_skipped_and_reported(tmp_path):
    older, newer = documents()
    directory = write_results(tmp_path, [older, newer])
    (directory / "20261126T000000Z-deadbeef.json").write_text('{"schema_version": 2, "created": ')
    (directory / "notes.json").write_text('{"hello": "world"}')
    warnings: list[str] = []
    docs = load_documents(directory, warnings)
    assert [d["git"]["sha"] for d in docs] == ["0a1b2c3d4e5f", "abc123def456"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)

    html = render(directory).read_text()
    section = re.search(r'<section class="warnings".*?</section>', html, re.S).group(0)
    assert "20261126T000000Z-deadbeef.json" in section and "not valid JSON" in section
    assert "notes.json" in section and "schema_version" in section
    assert "abc123def456" in html   # without latest.json the newest document is shown


def test_page_is_self_contained(results_dir):
    html = render(results_dir).read_text()
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(link|img|iframe|object|embed)\b", html, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    assert "@import" not in html and "url(" not in html


def test_embedded_data_cannot_end_its_script(tmp_path):
    older, newer = documents()
    evil = "x</script><script>alert(1)</script><!--"
    newer["suites"]["micro"]["results"].append(
        micro_result("lxc", "from_container", evil, {"services": 10}, 50.0))
    newer["suites"]["control"]["results"][0].update(status="error", detail=evil)
    html = render(write_results(tmp_path, [older, newer])).read_text()
    assert html.count("</script>") == 2 and "<script>alert" not in html
    data = re.search(r'id="dashboard-data">(.*?)</script>', html, re.S).group(1)
    series = json.loads(data)["charts"]["micro-services"]["series"]
    assert evil in [s["name"] for s in series]


def test_missing_suites_and_schema_1_names(tmp_path):
    """A schema_version 1 document: micro only, case and scale only in the names."""
    newer = documents()[1]
    v1 = {"schema_version": 1, "created": "2026-11-20T08:00:00+00:00",
          "git": {"sha": "111111111111", "dirty": False}, "machine": newer["machine"],
          "suites": {"micro": {"config": {}, "results": []}}}
    for r in newer["suites"]["micro"]["results"]:
        v1["suites"]["micro"]["results"].append(
            {k: v for k, v in r.items() if k not in ("case", "scale")})
    html = render(write_results(tmp_path, [v1])).read_text()
    assert html.count("not in this run") == 2          # control and macro
    specs = json.loads(re.search(r'id="dashboard-data">(.*?)</script>', html, re.S).group(1))["charts"]
    assert {s["name"] for s in specs["micro-services"]["series"]} == set(MICRO_CASES) | {FLOOR}
    assert {s["name"] for s in specs["micro-identities"]["series"]} == set(POLICY_CASES) | {FLOOR}
    assert dashboard.micro_case({"name": "lxc:from_container/new-flow@10000svc"}) == \
        ("new-flow", {"services": 10000})
    assert dashboard.micro_case({"name": "lxc:to_container/policy-new@16000id"}) == \
        ("policy-new", {"identities": 16000})
    assert dashboard.micro_case({"name": "netdev:from_netdev"}) == ("from_netdev", {})


def _control_rows(html: str) -> dict[tuple[str, str, str], list[str]]:
    """{(method, services, operation): [cells]} of the page's control table."""
    rows = {}
    for row in re.findall(r"<tr><td>([^<]*)</td>(.*?)</tr>", html, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)]
        titles = re.findall(r'title="([^"]*) bytes"', row[1])
        if len(titles) == 2:
            rows[(row[0], cells[0], cells[2])] = cells + titles
    return rows


@pytest.mark.parametrize("version", [2, 3])
def test_control_map_memory_and_rules_text_are_separate_columns(tmp_path, version):
    """Schema 2 held both in "bytes" (bpf: map memory, kube-proxy: rules text): shown apart."""
    newer = documents()[1]
    if version == 2:
        newer["schema_version"] = 2
        for r in newer["suites"]["control"]["results"]:
            r["bytes"] = r.pop("map_bytes") if r["method"] == "bpf" else r.pop("rules_text_bytes")
            r.pop("map_bytes", None), r.pop("rules_text_bytes", None)
    html = render(write_results(tmp_path, [newer])).read_text()
    assert ">map memory</th>" in html and ">rules text</th>" in html and ">bytes</th>" not in html
    rows = _control_rows(html)
    assert rows[("bpf", "100", "full")][-2:] == ["90,000", "—"]
    assert rows[("nft", "100", "full")][-2:] == ["—", "70,000"]


def test_mad_of_a_single_sample_is_not_shown_as_zero(tmp_path):
    newer = documents()[1]
    for r in newer["suites"]["control"]["results"]:
        if r["seconds"]:
            r["seconds"] = summ(r["seconds"]["median"], 0.0, n=1)
    html = render(write_results(tmp_path, [newer])).read_text()
    row = _control_rows(html)[("bpf", "100", "full")]
    assert row[5] == "n/a (1 sample)" and "0.0 %" not in row


# ---------------------------------------------------------------- the result schema

@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def test_schema_is_a_valid_2020_12_schema_of_known_keywords(schema):
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    # jsonschema ignores unknown keys: a misspelt keyword would check nothing.
    assert keywords(schema) <= KEYWORDS, keywords(schema) - KEYWORDS
    assert schema["properties"]["schema_version"] == {"const": 3}
    assert "Summary" in schema["$defs"]


def test_synthetic_documents_match_the_schema(schema):
    older, newer = documents()
    assert validate(older, schema) == []
    assert validate(newer, schema) == []


def control0(d: dict) -> dict:
    return d["suites"]["control"]["results"][0]


def macro0(d: dict) -> dict:
    return d["suites"]["macro"]["results"][0]


@pytest.mark.parametrize("mutate, error", [
    (lambda d: control0(d).update(method="ipvs"), r"\.method: 'ipvs' is not one of"),
    (lambda d: macro0(d).update(mode="burst"), r"\.mode: 'burst' is not one of"),
    (lambda d: control0(d).update(status="stalled"), r"\.status: 'stalled'"),
    (lambda d: d.update(profile="nightly"), r"\$\.profile: 'nightly'"),
    (lambda d: d.pop("created"), r"^\$: 'created' is a required property"),
    (lambda d: d["suites"]["micro"]["results"][0]["ns_per_packet"].pop("median"),
     r"ns_per_packet: 'median' is a required"),
    (lambda d: macro0(d)["latency_us"].pop("p99"), r"latency_us: 'p99' is a required"),
    (lambda d: d.update(schema_version=1), r"\$\.schema_version: 3 was expected"),
    (lambda d: control0(d).pop("map_bytes"), r"results\[0\]: 'map_bytes' is a required"),
    (lambda d: d["suites"]["micro"]["results"][0].update(scale={"services": 1, "identities": 1}),
     r"scale: .* has too many properties"),
    (lambda d: control0(d).update(seconds={"median": 1.0}),
     r"seconds: .* is not valid under any of the given schemas"),
    (lambda d: d["git"].update(dirty="no"), r"\$\.git\.dirty: 'no' is not of type 'boolean'"),
    (lambda d: d["suites"].update(soak={}), r"\$\.suites: .*\('soak' was unexpected\)"),
    (lambda d: d.update(created="2026-11-26 19:30"), r"\$\.created: '2026-11-26 19:30' does not match"),
])
def test_schema_rejects_bad_documents(schema, mutate, error):
    doc = documents()[1]
    mutate(doc)
    errors = validate(doc, schema)
    assert re.search(error, errors[0]), errors


@pytest.mark.parametrize("part, value, error", [
    ({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
     ["svc", "80"], r"^\$\[1\]: '80' is not of type 'integer'"),
    ({"$ref": "#/$defs/Port", "unevaluatedProperties": False},
     {"port": 80, "proto": "tcp"}, r"^\$: Unevaluated properties .*'proto'"),
    ({"type": "object", "properties": {"port": {"exclusiveMinimum": 0, "maximum": 65535}}},
     {"port": 0}, r"^\$\.port: 0 is less than or equal to the minimum of 0"),
    ({"type": "object", "properties": {"sha": {"type": "string", "pattern": "^[0-9a-f]+$"}}},
     {"sha": "HEAD"}, r"^\$\.sha: 'HEAD' does not match"),
    ({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]},
     3, r"^\$: 3 is valid under each of"),
    ({"type": "array", "uniqueItems": True}, [1, 2, 1], r"^\$: .* has non-unique elements"),
    ({"type": "object", "dependentRequired": {"map_bytes": ["entries"]}},
     {"map_bytes": 10}, r"^\$: 'entries' is a dependency of 'map_bytes'"),
])
def test_validate_checks_2020_12_keywords_beyond_the_old_subset(part, value, error):
    """Keywords the hand-written validator (before jsonschema) silently ignored: it
    returned no error for each of these documents."""
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": {
        "Port": {"type": "object", "properties": {"port": {"type": "integer"}}}, "part": part}}
    errors = validate(value, root["$defs"]["part"], root)
    assert errors and re.search(error, errors[0]), errors


def test_write_refuses_a_bad_document_naming_the_field(tmp_path):
    """bench.results.write: InvalidDocument, one line naming the field; nothing written."""
    from bench.report import results
    doc = documents()[1]
    control0(doc).update(method="ipvs")
    macro0(doc)["latency_us"].pop("p99")
    with pytest.raises(results.InvalidDocument) as caught:
        results.write(doc, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(r"result document does not match results\.schema\.json: "
                        r"\$\.suites\.\w+\.results\[0\]\.\S+: .* \(and 1 more\)", message), message
    assert list(tmp_path.iterdir()) == []
    doc = documents()[1]
    assert results.write(doc, tmp_path).name == "20261126T193000Z-abc123def456.json"


def test_screenshot_is_a_png_of_the_whole_page(results_dir, tmp_path):
    """`make dashboard-screenshot` (bench/report/screenshot.py): a PNG as wide as asked and as
    tall as the rendered page, with no Chromium process left behind."""
    from bench.report.screenshot import screenshot
    out, height = screenshot(results_dir, tmp_path / "docs" / "dashboard.png", width=1000)
    width, png_height, _bpp, _rows = read_png(out.read_bytes(), max_rows=1)
    assert (width, png_height) == (1000, height)
    assert height > 1000            # every section of the sample documents is drawn
    assert not _live_processes("cb-chromium-")


def test_screenshot_without_results_is_bad_input(tmp_path, capsys):
    from bench.report.screenshot import main
    assert main(["--results", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR:")
    assert not (tmp_path / "x.png").exists()


def test_control_shows_plan_write_and_the_raw_write_floor(tmp_path):
    """bpf full results with planning, writes and the raw write floor: a dashed floor
    curve beside bpf's and the columns in the table; older results show dashes."""
    newer = documents()[1]
    for r in newer["suites"]["control"]["results"]:
        if r["method"] == "bpf" and r["operation"] == "full" and r["seconds"]:
            total = r["seconds"]["median"]
            r.update(plan_seconds=summ(total * 0.6), write_seconds=summ(total * 0.35),
                     floor_seconds=summ(total * 0.3), ratio_to_floor=summ(3.33),
                     peak_rss_bytes=700 * 2**20, rss_before_bytes=600 * 2**20)
    html = render(write_results(tmp_path, [newer])).read_text()
    assert "bpf raw write floor" in html
    for column in (">plan</th>", ">write</th>", ">raw write floor</th>", ">× floor</th>",
                   ">peak RSS</th>"):
        assert column in html
    assert "3.33×" in html and "700 MiB" in html
