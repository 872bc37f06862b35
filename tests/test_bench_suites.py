"""The control-plane and macro suites, and `chainbench bench` end to end, at smoke size.

These assert behaviour (every method/datapath ran and did what it is named
after, sizes were counted, nothing was left behind), never a timing.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import sys

import pytest

from bench import control
from bench.macro import suite as macro
from harness.host import cgroups, netns
from harness.kubeproxy import apply as kp
from harness.kubeproxy.model import service_ports

BACKENDS = [ipaddress.IPv4Address(f"198.18.3.{10 + k}") for k in range(10)]


# -- control ----------------------------------------------------------------------------
def test_control_smoke_every_method_programs_and_counts():
    suite = control.run([1, 100], rounds=1, timeout=120)
    by = {(r["method"], r["services"], r["operation"]): r for r in suite["results"]}
    methods = [m for m in control.METHODS if control.available(m) is None]
    assert "bpf" in methods and "nft" in methods
    for m in methods:
        for n in (1, 100):
            full, change = by[(m, n, "full")], by[(m, n, "change-one")]
            assert full["status"] == "ok", full
            assert change["status"] == "ok", change
            assert full["seconds"]["median"] > 0 and change["seconds"]["median"] > 0
            assert full["entries"] > 0
            if m == "bpf":      # two different quantities, each only where it applies
                assert full["map_bytes"] > 0 and full["rules_text_bytes"] is None
            else:
                assert full["rules_text_bytes"] > 0 and full["map_bytes"] is None
            if m != "bpf":
                assert full["ratio_to_bpf"]["median"] > 0
                assert full["render_seconds"]["median"] > 0
    # Sizes grow with the service count: 100 services x 10 endpoints hold more.
    for m in methods:
        assert by[(m, 100, "full")]["entries"] > by[(m, 1, "full")]["entries"]
    # BPF: 100 services x (10 slots + 1 master) + 100 reverse NAT + 100 VIP entries + backends.
    bpf100 = by[("bpf", 100, "full")]
    assert bpf100["entries"] >= 100 * 11 + 100 + 100
    assert bpf100["write_seconds"]["median"] <= bpf100["seconds"]["median"]
    # Planning and writing apart, beside the raw write floor of the same entries and
    # the process's peak RSS while applying.
    assert bpf100["plan_seconds"]["median"] + bpf100["write_seconds"]["median"] \
        <= bpf100["seconds"]["median"]
    assert 0 < bpf100["floor_seconds"]["median"]
    assert bpf100["ratio_to_floor"]["median"] > 0
    assert bpf100["peak_rss_bytes"] >= bpf100["rss_before_bytes"] > 0
    change = by[("bpf", 100, "change-one")]
    assert change["plan_seconds"]["median"] > 0 and change["floor_seconds"] is None
    assert not [n for n in netns.list_project() if n.startswith("cb-ctl-")]


def test_control_table_names_map_memory_and_rules_text_apart_and_no_mad_from_one_round():
    """bpf only (no namespace): one round has no spread, and the BPF maps' memlock is
    map memory, never in a column shared with kube-proxy's rules text size."""
    suite = control.run([1], rounds=1, methods=("bpf",), timeout=120)
    full = next(r for r in suite["results"] if r["operation"] == "full")
    assert full["map_bytes"] > 0 and full["rules_text_bytes"] is None and "bytes" not in full
    header, rows = control.table(suite)
    row = rows[0]
    assert len(header) == len(row)
    col = dict(zip(header, row))
    assert col["MAD"] == "n/a (1 round)"                  # not "0.0%"
    assert col["MAP MEM"] == str(full["map_bytes"]) and col["RULES TEXT"] == "-"
    # Planning, writing and the raw floor apart; the floor is BPF's own figure.
    assert full["plan_seconds"]["median"] > 0 and full["floor_seconds"]["median"] > 0
    assert float(col["PLAN"]) == float(f"{full['plan_seconds']['median']:.4g}")
    assert float(col["FLOOR"]) == float(f"{full['floor_seconds']['median']:.4g}") > 0
    assert col["X FLOOR"].endswith("x") and col["PEAK RSS"].endswith("MiB")


def test_bench_tables_header_splits_map_memory_and_rules_text(capsys):
    from harness.cli import _print_bench_tables
    suite = {"config": {}, "results": [{
        "method": "nft", "services": 1, "operation": "full", "status": "ok", "detail": None,
        "seconds": {"n": 3, "median": 0.5, "mad": 0.01, "mad_pct": 2.0, "min": 0.4, "max": 0.6,
                    "mean": 0.5, "stdev": 0.1},
        "ratio_to_bpf": None, "entries": 12, "map_bytes": None, "rules_text_bytes": 4096}]}
    _print_bench_tables({"control": suite})
    header, row = capsys.readouterr().out.strip().splitlines()
    assert "MAP MEM" in header and "RULES TEXT" in header and "BYTES" not in header.split()
    assert row.split()[-4:] == ["12", "-", "4096", "-"] and "2.0%" in row   # no PEAK RSS


def test_micro_and_macro_tables_show_no_mad_from_a_single_sample():
    from bench.micro import suite as micro
    from bench.stats import summary
    one, three = summary([50.0]), summary([50.0, 52.0, 55.0])
    _, rows = micro.table({"results": [
        {"name": "x", "verdict": "ok", "measure": "kernel", "ns_per_packet": ns,
         "floor_ns_per_packet": ns, "ratio_to_floor": ratio}
        for ns, ratio in ((one, summary([1.5])), (three, summary([1.4, 1.5, 1.7])))]})
    assert rows[0][3] == "n/a (1 sample)" and rows[0][6] == "1.50x"
    assert rows[1][3] == "3.8%" and rows[1][6] == "1.50x ±0.10"
    _, macro_rows = macro.table({"results": [
        {"services": 1, "target": "last", "mode": "keepalive", "datapath": "bpf-tc", "rps": rps,
         "latency_us": {}, "cpu_us_per_request": {"system": one, "softirq": one},
         "ratio_to_iptables": None, "errors": 0} for rps in (one, three)]})
    assert macro_rows[0][5] == "n/a (1 round)" and macro_rows[1][5] == "3.8%"


def test_control_timeout_is_reported_and_later_scales_skipped():
    suite = control.run([50, 100], rounds=1, methods=("bpf", "nft"), timeout=0.001)
    by = {(r["method"], r["services"], r["operation"]): r for r in suite["results"]}
    assert by[("nft", 50, "full")]["status"] == "timeout"
    assert by[("nft", 50, "full")]["seconds"] is None
    assert by[("nft", 100, "full")]["status"] == "skipped"
    assert by[("bpf", 100, "full")]["status"] == "ok"
    assert not [n for n in netns.list_project() if n.startswith("cb-ctl-")]


def test_control_changed_state_changes_only_the_last_service():
    from bench.micro.lb_cases import synthetic_state
    state = synthetic_state(5, ipv6=False, nodeport=False)
    new, service = control.changed_state(state)
    assert service == state.frontends[-1].service
    assert new.frontends[:-1] == state.frontends[:-1]
    assert new.frontends[-1].backends[0].address == control.CHANGED_ENDPOINT
    assert new.frontends[-1].backends[1:] == state.frontends[-1].backends[1:]


def test_control_realistic_mix_changes_every_frontend_of_the_service():
    state = control.bench_state(20)          # svc-19: a LoadBalancer with source ranges
    assert {f.type for f in state.frontends} == {"ClusterIP", "NodePort", "LoadBalancer",
                                                   "ExternalIP"}
    new, service = control.changed_state(state)
    changed = [(a, b) for a, b in zip(state.frontends, new.frontends) if a != b]
    assert service == "default/svc-19"
    assert [a.type for a, _ in changed] == ["ClusterIP", "LoadBalancer"]
    for _, b in changed:
        assert control.CHANGED_ENDPOINT in {be.address for be in b.endpoints}
    assert control.bench_state(3, "clusterip").frontends[0].type == "ClusterIP"


def test_control_sizes_the_maps_for_both_families_and_scopes():
    """The realistic mix at 10k services has ~3,000 IPv6 frontends and two-scope
    ones: the BPF maps of the control suite hold them (it failed with E2BIG on
    cb_lb6_reverse_nat when only IPv4 was counted)."""
    from harness.node import datapath
    state = control.bench_state(10_000)
    v6 = [f for f in state.frontends if f.family == 6]
    scoped = [f for f in state.frontends if f.two_scopes]
    assert len(v6) > 1024 and scoped
    sizes = datapath.scaled_max_entries(len(state.frontends) - len(v6), control.ENDPOINTS,
                                        len(v6), len(scoped))
    assert sizes["cb_lb6_reverse_nat"] >= len(v6) and sizes["cb_lb4_reverse_nat"] >= \
        len(state.frontends) - len(v6)
    slots6 = sum(len(f.backends) + 1 + (len(f.internal) + 1 if f.two_scopes else 0) for f in v6)
    assert sizes["cb_lb6_services"] >= slots6


def test_control_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown control method"):
        control.run([1], methods=("ipvs",))


# -- macro: pure parts ----------------------------------------------------------------------
def test_macro_services_put_the_measured_one_last_in_iptables_order():
    svcs = macro.services(2000, BACKENDS)
    names = [sp.name for sp in service_ports(svcs.state)]
    last = svcs.state.frontends[svcs.targets["last"]]
    assert names[-1].startswith(last.service)
    assert svcs.targets["random"] != svcs.targets["last"]
    real = {b.address for b in last.backends}
    assert real == set(BACKENDS)
    # Each measured service reaches the backends on its own port (see bench/macro/suite.py).
    rnd = svcs.state.frontends[svcs.targets["random"]]
    other = svcs.state.frontends[next(i for i in svcs.real if i not in svcs.targets.values())]
    assert {b.port for b in last.backends} == {macro.TARGET_PORTS["last"]}
    assert {b.port for b in rnd.backends} == {macro.TARGET_PORTS["random"]}
    assert {b.port for b in other.backends} == {macro.LOCUST_PORT}
    filler = svcs.state.frontends[1] if 1 not in svcs.real else svcs.state.frontends[2]
    assert all(any(b.address in net for net in macro.FILLER_CIDRS) for b in filler.backends)
    assert len(svcs.real) <= macro.LOCUST_SERVICES + 2
    assert macro.services(1, BACKENDS).targets == {"last": 0}


def test_macro_lb_map_max_holds_the_scale():
    assert macro.lb_map_max(1) == 65536
    assert macro.lb_map_max(10_000) >= 10_000 * 12
    assert macro.lb_map_max(10_000) & (macro.lb_map_max(10_000) - 1) == 0


WRK_OUT = """Running 1s test @ http://198.19.0.1:80/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   283.24us  100.00us   2.00ms   90.00%
  Latency Distribution
     50%  250.00us
     75%  300.00us
     90%    1.20ms
     99%    2.00s
  20000 requests in 1.00s, 3.00MB read
  Socket errors: connect 1, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  19990.20
Transfer/sec:      3.53MB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors():
    got = macro.parse_wrk(WRK_OUT)
    assert got == {"requests": 20000, "rps": 19990.2, "p50": 250.0, "p90": 1200.0,
                   "p99": 2_000_000.0, "errors": 10}
    with pytest.raises(ValueError, match="no summary"):
        macro.parse_wrk("unable to connect to 198.19.0.1:80 Connection refused\n")


def test_summarise_takes_ratios_within_rounds():
    def run(dp, rnd, rps):
        return {"datapath": dp, "services": 1, "target": "last", "mode": "new-conn",
                "round": rnd, "rps": rps, "requests": int(rps), "errors": 0, "p50": 1.0,
                "p90": 2.0, "p99": 3.0, "cpu_us_per_request": {"system": 1.0, "softirq": 2.0}}
    rows = macro.summarise([run("iptables", 0, 100), run("bpf-tc", 0, 300),
                            run("iptables", 1, 50), run("bpf-tc", 1, 200)])
    bpf = next(r for r in rows if r["datapath"] == "bpf-tc")
    assert bpf["ratio_to_iptables"]["median"] == pytest.approx(3.5)   # (3x, 4x)
    ipt = next(r for r in rows if r["datapath"] == "iptables")
    assert ipt["ratio_to_iptables"]["median"] == 1.0


def test_summarise_takes_the_events_to_off_ratio_within_rounds():
    """bpf-tc-events (aggregation medium, observer running) over bpf-tc (events off),
    round by round, on the events rows only; and the section's visibility account."""
    from bench.macro import visibility

    def run(dp, rnd, rps, mode="new-conn", obs=None):
        return {"datapath": dp, "services": 100, "target": "last", "mode": mode,
                "round": rnd, "rps": rps, "requests": int(rps), "errors": 0, "p50": 1.0,
                "p90": 2.0, "p99": 3.0, "cpu_us_per_request": {"system": 1.0, "softirq": 2.0},
                "observer_cpu_s": obs, "observer_drain_cpu_s": obs and obs / 2}
    runs = [run("bpf-tc", 0, 1000), run("bpf-tc-events", 0, 950, obs=0.05),
            run("bpf-tc", 1, 800), run("bpf-tc-events", 1, 792, obs=0.04),
            run("bpf-tc", 2, 1200), run("bpf-tc-events", 2, 1080, obs=0.06),
            run("bpf-tc", 0, 5000, "keepalive"), run("iptables", 0, 500)]
    rows = {(r["datapath"], r["mode"]): r for r in macro.summarise(runs)}
    events = rows[("bpf-tc-events", "new-conn")]
    # rounds: 0.95, 0.99, 0.90 -> median 0.95 (not 950/1000 of the medians' 950/1000 by luck)
    assert events["ratio_to_events_off"]["median"] == pytest.approx(0.95)
    assert events["ratio_to_events_off"]["n"] == 3
    assert "ratio_to_events_off" not in rows[("bpf-tc", "new-conn")]
    cost = visibility.cost(runs, None)
    (row,) = cost["results"]        # keepalive: the events datapath did not run
    assert (row["services"], row["target"], row["mode"]) == (100, "last", "new-conn")
    assert row["ratios"] == pytest.approx([0.95, 0.99, 0.90])
    assert row["cost_pct"] == pytest.approx(5.0)
    assert row["off_rps"]["median"] == 1000 and row["events_rps"]["median"] == 950
    assert row["observer_cpu_us_per_request"]["median"] == pytest.approx(0.05e6 / 950)
    assert row["observer_total_cpu_us_per_request"]["median"] == pytest.approx(0.075e6 / 950)
    assert cost["monitor_aggregation"] == {"bpf-tc": "off", "bpf-tc-events": "medium"}
    _, table_rows = macro.table({"results": [events, rows[("bpf-tc", "new-conn")]]})
    assert table_rows[0][-1] == "0.950x ±4.2%" and table_rows[1][-1] == "-"


def test_up_rejects_per_node_events_settings_for_a_node_that_is_not_bpf():
    """chaining.up's per-node monitor aggregation and observers name BPF nodes only;
    refused before anything is built."""
    from harness.topology import chaining
    from harness.topology.build import leftovers
    before = leftovers()
    with pytest.raises(ValueError, match="monitor aggregation for node cb-node1: not a BPF"):
        chaining.up(str(macro.SCENARIO), node_datapaths=macro.NODES,
                    node_monitor_aggregation={"cb-node1": "off"})
    with pytest.raises(ValueError, match="observer for node cb-node3: not a BPF"):
        chaining.up(str(macro.SCENARIO), node_datapaths=macro.NODES, observers=("cb-node3",))
    assert leftovers() == before


def test_macro_scenario_is_the_one_in_bench_scenarios():
    """The macro suite's topology file moved with the suite into bench/macro/ but the
    scenarios stayed in bench/scenarios/: `bench macro` refused to start."""
    from bench.macro import suite as macro
    assert macro.SCENARIO.is_file(), macro.SCENARIO


# -- macro and the CLI, end to end ----------------------------------------------------------
@pytest.mark.skipif(not kp.available_backends(), reason="iptables-restore is not installed")
def test_bench_all_smoke_writes_results_and_dashboard(tmp_path):
    from harness.cli import main
    from harness.topology.build import leftovers
    rc = main(["bench", "all", "--profile", "smoke", "--out", str(tmp_path)])
    assert rc == 0
    docs = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(docs) == 1
    assert not (tmp_path / "latest.json").exists()       # only quick runs are "latest"
    doc = json.loads(docs[0].read_text())
    assert doc["schema_version"] == 3 and doc["profile"] == "smoke"
    assert set(doc["suites"]) == {"micro", "control", "macro"}

    m = doc["suites"]["macro"]
    rows = {(r["datapath"], r["services"], r["target"], r["mode"]): r for r in m["results"]}
    for dp in macro.DATAPATHS:
        for n, target in ((1, "last"), (100, "last"), (100, "random")):
            for mode in macro.MODES:
                r = rows[(dp, n, target, mode)]
                assert r["rps"]["median"] > 0 and r["errors"] == 0, r
                assert r["ratio_to_iptables"]["median"] > 0
    # Connection: close was honoured: about one connection per request in new-conn runs,
    # and far fewer than requests with keep-alive.
    for s in m["samples"]:
        if s["mode"] == "new-conn":
            assert s["connections_opened"] >= 0.9 * s["requests"], s
        else:
            assert s["connections_opened"] < 0.1 * s["requests"], s
    assert {loc["datapath"] for loc in m["locust"]} == set(macro.DATAPATHS)
    for loc in m["locust"]:
        assert "error" not in loc, loc
        assert loc["requests"] > 0 and loc["failures"] == 0

    # Without --perf: no profile, no speedscope file, the config as before.
    assert "profile" not in m and "perf" not in m["config"]
    assert not list(tmp_path.glob("*.speedscope.json"))
    assert (tmp_path / "index.html").exists()
    # Nothing of the run is left: no namespaces, cgroups or topology state.
    assert leftovers() == []
    assert not [c for c in cgroups.list_project()]


def _nginx_servers() -> set[tuple[int, str]]:
    """Live nginx processes serving from a cb-nginx-* directory: (pid, start time)."""
    import os
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"nginx" in cmdline and b"cb-nginx-" in cmdline and stat[0] != "Z":
            found.add((int(pid), stat[19]))
    return found


def _scratch_dirs() -> set[str]:
    """cb-* scratch directories: the system temp directory's and the project's."""
    import glob
    import tempfile

    from harness.host import procs
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "cb-*"))) | \
        set(glob.glob(os.path.join(procs.SCRATCH_ROOT, "*")))


@pytest.fixture
def macro_run():
    """A clean machine before; `chainbench down` after, whatever the test found."""
    import subprocess

    from harness.topology.build import leftovers
    if leftovers() or cgroups.list_project():
        pytest.fail(f"leftovers before the test: {leftovers() + cgroups.list_project()}")
    yield _start_macro_smoke
    subprocess.run([sys.executable, "-m", "harness.cli", "down"], capture_output=True)


def _start_macro_smoke():
    """`chainbench bench macro --profile smoke` in its own session, once its topology,
    servers and socket-LB cgroup are up (a couple of seconds into the wrk runs)."""
    import subprocess
    import time

    from harness.topology.state import STATE_PATH
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "macro", "--profile",
                             "smoke", "--no-write"], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(STATE_PATH) or not os.path.isdir(
            os.path.join(cgroups.cgroup2_mount(), macro.SOCK_CGROUP)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the macro topology did not come up"
        time.sleep(0.2)
    time.sleep(2)                       # into the wrk runs
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_bench_macro_interrupted_leaves_nothing_behind(sig, macro_run):
    """Ctrl-C (SIGINT to the process group) or SIGTERM (what `timeout` and CI
    cancellation send, to the process only) in the middle of the macro suite: exit
    128 + signal, and the topology, servers, their scratch directories, cgroup and
    socket-LB links are gone."""
    import subprocess

    from harness.topology.build import leftovers
    servers, scratch = _nginx_servers(), _scratch_dirs()
    proc = macro_run()
    try:
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "interrupted" in err
    assert leftovers() == []
    assert cgroups.list_project() == []
    assert _nginx_servers() - servers == set()
    assert _scratch_dirs() - scratch == set()


def test_down_ends_the_servers_of_a_killed_macro_run(macro_run):
    """kill -9 of the macro suite leaves its nginx servers running (they have their own
    sessions); `chainbench down` ends them, waits for them and removes their scratch
    directories, and says so."""
    import subprocess

    from harness.topology.build import leftovers
    servers, scratch = _nginx_servers(), _scratch_dirs()
    proc = macro_run()
    proc.kill()
    proc.communicate()
    assert _nginx_servers() - servers, "no server outlived the killed run"
    down = subprocess.run([sys.executable, "-m", "harness.cli", "down"], capture_output=True,
                          text=True)
    assert down.returncode == 0, down.stderr
    assert _nginx_servers() - servers == set()
    assert _scratch_dirs() - scratch == set()
    assert "removed process" in down.stdout and "nginx" in down.stdout, down.stdout
    assert leftovers() == [] and cgroups.list_project() == []


def test_bpf_lb_map_max_sizes_every_pinned_load_of_a_node():
    """--bpf-lb-map-max is a node setting: every pinned load on the node (the plugin,
    node programs, the CLI) creates or reuses LB maps of that size."""
    import os
    import shutil

    from harness.host import bpffs
    from harness.node import datapath
    from harness.node.node import Node
    node = f"cb-mapmax-{os.getpid()}"
    Node(node).settings.save_lb_map_max(131072)
    try:
        with datapath.load("lxc", node, pinned=True) as lxc:
            assert lxc.maps["cb_lb4_services"].max_entries == 131072
            assert lxc.maps["cb_lb_stats"].max_entries == 131072
        with datapath.load("sock", node, pinned=True) as sock:    # reuses the pinned maps
            assert sock.maps["cb_lb4_services"].max_entries == 131072
    finally:
        Node(node).settings.remove()
        shutil.rmtree(bpffs.pin_path(node), ignore_errors=True)
        bpffs.prune()
    with pytest.raises(ValueError, match="bpf-lb-map-max"):
        Node(node).settings.save_lb_map_max(10)


@pytest.mark.skipif(not kp.available_backends(), reason="iptables-restore is not installed")
def test_macro_measures_the_cost_of_visibility_and_leaves_nothing(macro_run):
    """bpf-tc (events off, no observer) and bpf-tc-events (aggregation medium, its node's
    observer running) in the same interleaved rounds: both answer, the ratio events/off
    is taken, the observer saw the events client's flows (asked with `chainbench observe`
    while the suite runs) and its CPU time and lost events are reported; afterwards no
    observer, topology or state is left."""
    import subprocess

    from bench.macro import visibility
    from harness.node.node import Node
    from harness.observe import supervise
    from harness.topology.build import leftovers
    from harness.topology.state import load_state
    seen: dict = {}

    def progress(_done, _total, text):
        if not text.startswith("macro: asking the flow observer") or seen:
            return
        client = load_state().pod(macro.CLIENT[visibility.EVENTS]).ipv4
        out = subprocess.run([sys.executable, "-m", "harness.cli", "observe", "--node",
                              macro.NODE_OF[visibility.EVENTS], "--all", "--from-ip", client,
                              "-o", "json"], capture_output=True, text=True, timeout=60)
        seen.update(client=client, observe=out,
                    settings={n: Node(n).settings.monitor_aggregation
                              for n in macro.MONITOR_AGGREGATION},
                    status={n: supervise.status(Node(n)) for n in macro.MONITOR_AGGREGATION})

    suite = macro.run([100], rounds=2, seconds=1, connections=8, locust_seconds=0,
                      progress=progress)
    rows = {(r["datapath"], r["target"], r["mode"]): r for r in suite["results"]}
    for target in ("last", "random"):
        for mode in macro.MODES:
            off, events = rows[("bpf-tc", target, mode)], rows[("bpf-tc-events", target, mode)]
            assert off["rps"]["median"] > 0 and off["errors"] == 0, off
            assert events["rps"]["median"] > 0 and events["errors"] == 0, events
            assert events["ratio_to_events_off"]["n"] == 2
    vis = suite["visibility"]
    assert {(r["target"], r["mode"]) for r in vis["results"]} == {
        (t, m) for t in ("last", "random") for m in macro.MODES}
    for r in vis["results"]:
        assert len(r["ratios"]) == 2 and all(x > 0 for x in r["ratios"])
        assert r["observer_cpu_us_per_request"]["median"] >= 0
        assert (r["observer_total_cpu_us_per_request"]["median"]
                >= r["observer_cpu_us_per_request"]["median"])
    obs = vis["observer"]
    assert obs["node"] == "cb-node4" and obs["restarts"] == 0
    assert obs["cpu_seconds"] > 0 and obs["cpu_share"] > 0
    assert obs["seen_flows"] > 0 and obs["flows_of_client"] > 0 and obs["lost_events"] >= 0
    # Every wrk run has the observer's CPU over it; more during its own datapath's runs.
    cpu = {dp: sum(s["observer_cpu_s"] for s in suite["samples"] if s["datapath"] == dp)
           for dp in ("bpf-tc", "bpf-tc-events")}
    assert cpu["bpf-tc-events"] > cpu["bpf-tc"]

    # While it ran: medium on the events node and off on bpf-tc's, one observer only,
    # and `chainbench observe` showed the events client's flows (Hubble's JSON).
    assert seen["settings"] == {"cb-node0": "off", "cb-node4": "medium"}
    assert seen["status"]["cb-node0"] is None
    assert seen["status"]["cb-node4"]["observer_running"]
    assert seen["observe"].returncode == 0, seen["observe"].stderr
    flows = [json.loads(line)["flow"] for line in seen["observe"].stdout.splitlines()]
    assert flows and all(f["IP"]["source"] == seen["client"] for f in flows)
    assert {f["source"]["pod_name"] for f in flows} == {"client-events"}
    assert any(f.get("Type") == "L3_L4" and f.get("verdict") == "FORWARDED" for f in flows)

    # Nothing left: the observer and its supervisor went with the topology.
    assert leftovers() == [] and cgroups.list_project() == []
    assert supervise.status(Node("cb-node4")) is None
