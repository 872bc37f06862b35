"""The command line as a user runs it: a subprocess, stdout/stderr, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.topology import build
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

from harness.testrun.packets import eth

V4 = dict(src="198.18.0.10", dst="198.19.0.1")
#: tests that run no topology, pin nothing under the pin root and run no `down`
#: (test-run, bench micro, version, completion...): ci/run-tests.sh runs them beside the others
TEST_RUN_ONLY = pytest.mark.test_run_only


def chainbench(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=300)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("ERROR: ")
    return lines[0]


@pytest.fixture
def pcap(tmp_path):
    packets = [
        eth() / IP(**V4) / TCP(dport=80, flags="S"),
        eth() / IP(**V4) / UDP(dport=53),
        bytes(eth() / IP(**V4) / TCP())[:14 + 20 + 6],          # TCP header cut short
    ]
    path = tmp_path / "in.pcap"
    wrpcap(str(path), [eth().__class__(bytes(p)) for p in packets])
    return path, [bytes(p) for p in packets]


@TEST_RUN_ONLY
def test_test_run_json(pcap):
    path, packets = pcap
    proc = chainbench("test-run", "tc_parse_stats", "--pcap", str(path), "--json",
                      "--rodata", "drop_malformed=true", "--repeat", "10")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"index", "retval", "verdict", "drop_reason", "duration_ns", "packet_out"}
    assert [r["verdict"] for r in rows] == ["TC_ACT_OK", "TC_ACT_OK", "TC_ACT_SHOT"]
    assert [r["drop_reason"] for r in rows] == [None, None, 134]
    assert rows[2]["drop_reason_desc"] == "Invalid packet"
    assert [bytes.fromhex(r["packet_out"]) for r in rows] == packets
    assert all(isinstance(r["duration_ns"], int) for r in rows)


@TEST_RUN_ONLY
def test_test_run_table(pcap):
    path, _ = pcap
    proc = chainbench("test-run", "parse_stats:xdp_parse_stats", "--pcap", str(path))
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "VERDICT", "DROP"]
    assert len(lines) == 4 and "XDP_PASS" in lines[1]


@TEST_RUN_ONLY
def test_test_run_raw_ip_pcap(tmp_path):
    from scapy.utils import PcapWriter
    path = tmp_path / "raw.pcap"
    with PcapWriter(str(path), linktype=101) as w:      # DLT_RAW: no Ethernet header
        w.write(IP(**V4) / UDP(dport=53))
    proc = chainbench("test-run", "tc_parse_stats", "--pcap", str(path), "--json")
    row = json.loads(proc.stdout)
    assert row["verdict"] == "TC_ACT_OK"
    assert bytes.fromhex(row["packet_out"])[12:14] == b"\x08\x00"


@TEST_RUN_ONLY
@pytest.mark.parametrize("args, message", [
    (["test-run", "no_such_prog", "--pcap", "x.pcap"], "no program 'no_such_prog'"),
    (["test-run", "empty:empty_tc", "--pcap", "/nonexistent.pcap"], "/nonexistent.pcap: no such file"),
    (["test-run", "nothere:prog", "--pcap", "x.pcap"], "no compiled object"),
    (["test-run", "empty_tc", "--pcap", "PCAP", "--endpoint", "default/x"], "--endpoint needs --scenario"),
    (["test-run", "empty_tc", "--pcap", "PCAP", "--rodata", "nope"], "expected NAME=VALUE"),
    (["test-run", "tc_parse_stats", "--pcap", "PCAP", "--rodata", "nope=1"],
     "no const volatile variable nope"),
    (["test-run", "empty_tc", "--pcap", "PCAP", "--repeat", "0"], "--repeat must be >= 1"),
])
def test_bad_input_is_one_line_exit_2(pcap, args, message):
    path, _ = pcap
    args = [str(path) if a == "PCAP" else a for a in args]
    line = one_line_error(chainbench(*args, check_rc=2))
    assert message in line


@TEST_RUN_ONLY
def test_not_a_pcap(tmp_path):
    bogus = tmp_path / "bogus.pcap"
    bogus.write_text("hello")
    line = one_line_error(chainbench("test-run", "empty_tc", "--pcap", str(bogus), check_rc=2))
    assert "not a pcap/pcapng file" in line


@TEST_RUN_ONLY
def test_verifier_error_is_reported_not_traced(tmp_path, pcap):
    from .support import object_path
    path, _ = pcap
    proc = chainbench("test-run", f"{object_path('verifier_reject')}:unchecked_read", "--pcap",
                      str(path), check_rc=1)
    assert "program unchecked_read" in one_line_error(proc)
    assert "-v" in proc.stderr
    verbose = chainbench("-v", "test-run", f"{object_path('verifier_reject')}:unchecked_read",
                         "--pcap", str(path), check_rc=1)
    assert "BEGIN PROG LOAD LOG" in verbose.stderr


@TEST_RUN_ONLY
def test_programs_lists_objects():
    rows = [line.split() for line in chainbench("programs").stdout.splitlines()]
    assert rows[0] == ["OBJECT", "PROGRAM", "TYPE"]
    assert ["parse_stats", "tc_parse_stats", "sched_cls"] in rows
    assert ["empty", "empty_xdp", "xdp"] in rows
    assert ["lxc", "from_container", "sched_cls"] in rows


@TEST_RUN_ONLY
def test_bench_micro_tiny(tmp_path):
    proc = chainbench("bench", "micro", "--samples", "2", "--repeat", "2000", "--services", "1,50",
                      "--identities", "1", "--out", str(tmp_path))
    assert "indicative only" in proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["CASE", "VERDICT", "NS/PKT"]
    for name in ("parse_stats:tc_parse_stats", "lxc:from_container/established@1svc",
                 "lxc:from_container/new-flow@50svc", "lxc:from_container/non-service@50svc"):
        assert name in proc.stdout
    written = sorted(p.name for p in tmp_path.iterdir())
    # the result, latest.json, the dashboard and its service-map page
    assert {"latest.json", "index.html", "service-map.html"} <= set(written) and len(written) == 4
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["schema_version"] == 3 and doc["machine"]["cores"] >= 1
    results = {r["name"]: r for r in doc["suites"]["micro"]["results"]}
    tc = results["parse_stats:tc_parse_stats"]
    assert tc["floor"] == "empty:empty_tc" and tc["measure"] == "kernel"
    assert len(tc["samples_ns"]) == len(tc["floor_samples_ns"]) == len(tc["ratio_samples"]) == 2
    assert results["parse_stats:xdp_parse_stats"]["floor"] == "empty:empty_xdp"
    assert results["lxc:from_container/established@50svc"]["scale"] == {"services": 50}
    est = results["lxc:from_container/established@1svc"]
    assert est["verdict"] == "TC_ACT_OK" and est["ratio_to_floor"]["median"] > 1


def test_down_removes_every_leftover(load):
    import os

    from harness.host import bpffs, cgroups, netns
    ns = f"cb-down-{os.getpid()}"
    netns.create(ns)
    netns.run(ns, "ip", "link", "add", "cbd0", "type", "veth", "peer", "name", "cbd1")
    cg = cgroups.create(f"cb-down-{os.getpid()}")
    pin = bpffs.pin_path("down-test", "hash_map")
    load("loader_fixture").maps["hash_map"].pin(pin)
    # A test process killed before its clean-up leaves its private pin directory.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = os.path.join(bpffs.MOUNT_POINT, f"{bpffs.TEST_PIN_PREFIX}{dead}-0")
    os.makedirs(stale)
    load("loader_fixture").maps["hash_map"].pin(os.path.join(stale, "hash_map"))
    mine = bpffs.test_pin_dir(999)
    os.makedirs(mine)

    out = chainbench("down").stdout
    assert f"removed namespace {ns}" in out
    assert f"removed cgroup {cg}" in out
    assert f"removed pin {pin}" in out
    assert f"removed pin {stale}" in out and not os.path.exists(stale)
    assert os.path.isdir(mine), "a live process's test pins are its own to remove"
    os.rmdir(mine)
    assert not netns.exists(ns) and not os.path.exists(cg) and not os.path.exists(bpffs.PIN_ROOT)
    assert chainbench("down").stdout.strip() == "nothing to remove"


@pytest.fixture
def pinned_node():
    import shutil

    from harness.host import bpffs
    from harness.node import endpoints
    node = f"cb-node{100 + os.getpid() % 100}"
    yield node
    shutil.rmtree(os.path.join(bpffs.PIN_ROOT, node), ignore_errors=True)
    shutil.rmtree(os.path.join(endpoints.STATE_ROOT, node), ignore_errors=True)
    bpffs.prune()


def test_lb_apply_services_and_ct(pinned_node, tmp_path):
    from harness.scenario import SCENARIO_DIR
    scenario = str(SCENARIO_DIR / "minimal.yaml")
    out = chainbench("lb", "apply", "-f", scenario, "--node", pinned_node).stdout
    assert "1 frontends added" in out and "7 map writes" in out
    again = chainbench("lb", "apply", "-f", scenario, "--node", pinned_node).stdout
    assert "1 restored from the maps" in again and "0 map writes" in again
    table = chainbench("services", "--node", pinned_node).stdout.splitlines()
    assert table[0].split() == ["ID", "FRONTEND", "SERVICE", "TYPE", "BACKEND", "PACKETS", "BYTES"]
    assert "198.19.0.10:80/TCP" in table[1] and "198.18.0.10:8080/TCP (active)" in table[1]
    assert "198.18.1.10:8080/TCP (active)" in table[2]
    assert table[1].split()[2] == "default/web"      # the Service, from the scenario applied
    rows = json.loads(chainbench("services", "--node", pinned_node, "-o", "json").stdout)
    assert [r["frontend"] for r in rows] == ["198.19.0.10:80/TCP"]
    assert rows[0]["service"] == "default/web" and rows[0]["node"] == pinned_node
    assert len(rows[0]["backends"]) == 2
    assert chainbench("ct", "list", "--node", pinned_node).stdout.split()[:2] == ["PROTO", "DIR"]
    assert "0 entries removed" in chainbench("ct", "flush", "--node", pinned_node).stdout


def test_snat_stats(pinned_node):
    """`chainbench snat stats` reads the pinned allocation counters: one NodePort flow
    to a backend on another node is one allocation, its second packet none."""
    from harness import addressing
    from harness.node import datapath
    from harness.lb.desired import lb_state
    from harness.testrun.runner import Runner

    from . import lbkit as K
    scen = K.scenario(K.service("np", "198.19.0.20", [("http", 80, 8080, "TCP")],
                                [K.endpoint("198.18.1.20", "cb-node1")], svc_type="NodePort",
                                node_ports={"http": 31313}))
    with datapath.load("netdev", pinned_node, pinned=True) as coll:
        datapath.lb_control(coll).apply(lb_state(scen))
        runner = Runner(coll, "from_netdev")
        for flags in ("S", "A"):
            pkt = K.tcp4(str(addressing.node_ip4(0)), 31313, src="203.0.113.10", sport=50000,
                         flags=flags)
            assert runner.run(bytes(pkt)).verdict == "TC_ACT_OK"
    stats = json.loads(chainbench("snat", "stats", "--node", pinned_node, "-o", "json").stdout)
    assert [s["node"] for s in stats] == [pinned_node]
    assert stats[0]["ipv4"] == {"allocated": 1, "collisions": 0, "reused": 0, "exhausted": 0}
    table = chainbench("snat", "stats", "--node", pinned_node).stdout.splitlines()
    assert table[0].split() == ["FAMILY", "ALLOCATED", "COLLISIONS", "REUSED", "EXHAUSTED"]


def test_services_without_a_datapath_is_a_clear_error(tmp_path):
    line = one_line_error(chainbench("services", "--node", "cb-node-none", check_rc=2))
    assert "no datapath is pinned for node cb-node-none" in line


def test_lb_apply_bad_scenario(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: 70000}]\n")
    line = one_line_error(chainbench("lb", "apply", "-f", str(bad), "--node", "cb-node98", check_rc=2))
    assert "bad.yaml: document 1 (Service default/x): spec.ports[0].port" in line


def test_identities(tmp_path):
    from harness.scenario import SCENARIO_DIR
    rows = [line.split(None, 1) for line in
            chainbench("identities", "-f", str(SCENARIO_DIR / "minimal.yaml")).stdout.splitlines()]
    assert rows[0] == ["ID", "LABELS"]
    assert ["1", "reserved:host"] in rows and ["2", "reserved:world"] in rows
    assert any("k8s:app=client" in r[1] for r in rows[1:])
    doc = json.loads(chainbench("identities", "-f", str(SCENARIO_DIR / "minimal.yaml"),
                                "-o", "json").stdout)
    assert doc[0]["id"] == 1 and doc[0]["labels"] == "reserved:host"


def test_policy_apply_and_get(pinned_node, tmp_path):
    from harness.scenario import SCENARIO_DIR
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text((SCENARIO_DIR / "minimal.yaml").read_text().replace("cb-node0", pinned_node))
    out = chainbench("policy", "apply", "-f", str(scenario), "--node", pinned_node).stdout
    assert f"{pinned_node}: 2 endpoints" in out and "2 endpoints changed" in out
    again = chainbench("policy", "apply", "-f", str(scenario), "--node", pinned_node).stdout
    assert "ipcache 0 written" in again          # adopted from the pinned maps
    lines = chainbench("policy", "get", "default/backend-0", "--node", pinned_node).stdout.splitlines()
    assert lines[0].startswith("endpoint default/backend-0") and "ingress enforced" in lines[0]
    rules = [line.split() for line in lines[2:]]
    assert lines[1].split()[:5] == ["POLICY", "DIRECTION", "IDENTITY", "(LABELS)", "PORT/PROTO"]
    # As `cilium bpf policy get` prints them: 8080/TCP, and the peer's labels readable
    # (Cilium's derived namespace and cluster labels only in -o wide).
    assert any(r[:2] == ["Allow", "Ingress"] and "8080/TCP" in r and
               "k8s:app=client,k8s:io.kubernetes.pod.namespace=default" in r for r in rules)
    assert "k8s:io.cilium.k8s.policy.cluster" not in "\n".join(lines[2:])
    wide = chainbench("policy", "get", "default/backend-0", "--node", pinned_node, "-o", "wide")
    assert "k8s:io.cilium.k8s.policy.cluster=default" in wide.stdout
    doc = json.loads(chainbench("policy", "get", "backend-0", "--node", pinned_node,
                                "-o", "json").stdout)
    assert doc["endpoint"] == "default/backend-0" and doc["revision"] == 2
    assert doc["node"] == pinned_node
    client = [r for r in doc["rules"] if "k8s:app=client" in r["labels"]]
    assert client and client[0]["port_proto"] == "8080/TCP" and client[0]["direction"] == "Ingress"
    line = one_line_error(chainbench("policy", "get", "nope", "--node", pinned_node, check_rc=2))
    assert "no endpoint default/nope" in line


@TEST_RUN_ONLY
def test_test_run_with_scenario_enforces_policy(tmp_path):
    from harness.scenario import SCENARIO_DIR
    pcap = tmp_path / "client.pcap"
    pkts = [eth() / IP(src="198.18.0.2", dst="198.18.0.10") / TCP(sport=40000, dport=8080, flags="S"),
            eth() / IP(src="198.18.0.2", dst="198.18.0.10") / TCP(sport=40001, dport=22, flags="S"),
            eth() / IP(src="198.18.0.2", dst="203.0.113.5") / TCP(sport=40002, dport=80, flags="S"),
            eth() / IP(src="198.18.0.2", dst="203.0.113.200") / TCP(sport=40003, dport=80, flags="S"),
            eth() / IP(src="198.18.0.2", dst="198.19.0.10") / TCP(sport=40004, dport=80, flags="S")]
    wrpcap(str(pcap), [eth().__class__(bytes(p)) for p in pkts])
    proc = chainbench("test-run", "lxc:from_container", "--pcap", str(pcap), "--json",
                      "--scenario", str(SCENARIO_DIR / "minimal.yaml"), "--endpoint", "default/client")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["verdict"], r["drop_reason"]) for r in rows] == [
        ("TC_ACT_OK", None), ("TC_ACT_SHOT", 133), ("TC_ACT_OK", None), ("TC_ACT_SHOT", 133),
        ("TC_ACT_OK", None)]
    # The service packet was load-balanced to a backend on 8080, which policy allows.
    out = eth().__class__(bytes.fromhex(rows[4]["packet_out"]))
    assert out[IP].dst in ("198.18.0.10", "198.18.1.10") and out[TCP].dport == 8080


# --- several nodes, output formats, version, status, completion, did-you-mean ----------

@pytest.fixture
def two_pinned_nodes(tmp_path):
    """minimal.yaml's two nodes as two pinned datapaths (LB and policy programmed, no
    topology): client and backend-0 on the first, backend-1 on the second."""
    import shutil

    from harness.host import bpffs
    from harness.node import endpoints
    from harness.scenario import SCENARIO_DIR
    import re
    a, b = f"cb-node{150 + os.getpid() % 50}", f"cb-node{200 + os.getpid() % 50}"
    scenario = tmp_path / "two-nodes.yaml"
    scenario.write_text(re.sub(r"\bcb-node([01])\b", lambda m: (a, b)[int(m.group(1))],
                               (SCENARIO_DIR / "minimal.yaml").read_text()))
    try:
        for node in (a, b):
            chainbench("lb", "apply", "-f", str(scenario), "--node", node)
            chainbench("policy", "apply", "-f", str(scenario), "--node", node)
        yield a, b
    finally:
        for node in (a, b):
            shutil.rmtree(os.path.join(bpffs.PIN_ROOT, node), ignore_errors=True)
            shutil.rmtree(os.path.join(endpoints.STATE_ROOT, node), ignore_errors=True)
        bpffs.prune()


def test_read_commands_cover_every_node(two_pinned_nodes):
    """Without --node, services / ct list / snat stats / policy get read every node (no
    "several nodes are pinned"); a NODE column says whose row it is."""
    a, b = two_pinned_nodes
    table = chainbench("services").stdout.splitlines()
    assert table[0].split()[:4] == ["NODE", "ID", "FRONTEND", "SERVICE"]
    firsts = [line.split() for line in table[1:] if line.startswith("cb-node")]
    assert {(r[0], r[2], r[3]) for r in firsts} >= {(a, "198.19.0.10:80/TCP", "default/web"),
                                                   (b, "198.19.0.10:80/TCP", "default/web")}
    rows = json.loads(chainbench("services", "-o", "json").stdout)
    assert {(r["node"], r["service"]) for r in rows} >= {(a, "default/web"), (b, "default/web")}
    assert chainbench("ct", "list").stdout.split()[:3] == ["NODE", "PROTO", "DIR"]
    assert isinstance(json.loads(chainbench("snat", "stats", "-o", "json").stdout), list)
    # policy get finds the pod's node itself.
    on_b = chainbench("policy", "get", "default/backend-1").stdout.splitlines()[0]
    assert on_b.startswith(f"endpoint default/backend-1 on {b} ")
    doc = json.loads(chainbench("policy", "get", "backend-0", "-o", "json").stdout)
    assert doc["node"] == a and doc["rules"]
    line = one_line_error(chainbench("policy", "get", "default/nope", check_rc=2))
    assert "no endpoint default/nope on any node" in line
    # --node narrows: no NODE column.
    assert chainbench("services", "--node", b).stdout.split()[:2] == ["ID", "FRONTEND"]


def test_endpoints_name_their_node(two_pinned_nodes):
    """Endpoint ids are per node and repeat across nodes: NODE comes first, rows sort by
    node then id, and (NODE, ENDPOINT ID) is unique."""
    a, b = two_pinned_nodes
    lines = chainbench("endpoints").stdout.splitlines()
    assert lines[0].split()[:4] == ["NODE", "ENDPOINT", "ID", "NAME"]
    rows = [line.split() for line in lines[1:] if line.split()[0] in (a, b)]
    pairs = [(r[0], int(r[1])) for r in rows]
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs) == 3
    assert len({i for _, i in pairs}) < len(pairs)          # an id repeats across nodes
    assert {r[2]: r[0] for r in rows} == {"default/client": a, "default/backend-0": a,
                                          "default/backend-1": b}
    only_b = json.loads(chainbench("endpoints", "--node", b, "-o", "json").stdout)
    assert [(r["node"], r["name"]) for r in only_b] == [(b, "default/backend-1")]


def test_output_formats_parse_back(two_pinned_nodes):
    """-o json and -o yaml give the same document on every read command; -o wide adds
    NODE and LABELS where they apply."""
    import yaml

    from harness.scenario import SCENARIO_DIR
    a, b = two_pinned_nodes
    minimal = str(SCENARIO_DIR / "minimal.yaml")
    commands = {
        ("programs",): lambda d: {"object", "program", "type"} <= set(d[0]),
        ("identities", "-f", minimal): lambda d: d[0] == {**d[0], "id": 1,
                                                          "labels": "reserved:host"},
        ("services",): lambda d: {"node", "service", "frontend", "backends"} <= set(d[0]),
        ("ct", "list"): lambda d: isinstance(d, list),
        ("snat", "stats"): lambda d: isinstance(d, list),
        ("endpoints",): lambda d: {"node", "endpoint_id", "name", "labels"} <= set(d[0]),
        ("policy", "get", "default/backend-0"):
            lambda d: d["node"] == a and {"port_proto", "labels"} <= set(d["rules"][0]),
        ("status",): lambda d: {"kernel", "topology", "observer", "nodes"} <= set(d),
        ("version",): lambda d: {"chainbench", "kernel", "libbpf", "clang"} <= set(d),
    }
    for cmd, check in commands.items():
        as_json = json.loads(chainbench(*cmd, "-o", "json").stdout)
        as_yaml = yaml.safe_load(chainbench(*cmd, "-o", "yaml").stdout)
        assert as_json == as_yaml or cmd[0] == "status", cmd     # status: live counters
        assert check(as_json), cmd
    services = chainbench("services", "-o", "wide").stdout.splitlines()[0].split()
    assert services[0] == "NODE" and services[-1] == "LABELS"
    assert chainbench("services", "--node", a, "-o", "wide").stdout.split()[0] == "NODE"
    endpoints = chainbench("endpoints", "-o", "wide").stdout.splitlines()
    assert endpoints[0].split()[-1] == "LABELS"
    assert any(f"{a} " in ln and "k8s:app=client" in ln for ln in endpoints[1:])
    identities = chainbench("identities", "-f", minimal, "-o", "wide").stdout.splitlines()
    assert identities[0].split() == ["ID", "LABELS", "ENDPOINTS", "NODE"]
    assert any("default/backend-0,default/backend-1" in ln and "cb-node0,cb-node1" in ln
               for ln in identities)
    assert chainbench("ct", "list", "-o", "wide").stdout.split()[0] == "NODE"


def test_status_reports_maps_pins_and_observer(two_pinned_nodes):
    """Like `cilium status`: kernel features, pinned nodes, map pressure per map (minimal.yaml
    has two backends: 2 of 65536 in cb_lb4_backends), the observer's state."""
    import platform
    a, b = two_pinned_nodes
    doc = json.loads(chainbench("status", "-o", "json").stdout)
    assert doc["kernel"]["release"] == platform.release()
    features = {f["name"]: f["available"] for f in doc["kernel"]["features"]}
    assert features["BTF"] is os.path.exists("/sys/kernel/btf/vmlinux")
    assert {"bpf_loop", "tcx", "tc clsact", "cgroup BPF", "bpffs"} <= set(features)
    nodes = {n["name"]: n for n in doc["nodes"]}
    for node in (a, b):
        maps = {m["name"]: m for m in nodes[node]["maps"]}
        assert maps["cb_lb4_backends"]["entries"] == 2
        assert maps["cb_lb4_backends"]["max_entries"] == 65536
        assert maps["cb_lb4_backends"]["pressure"] == 2 / 65536
        assert maps["cb_endpoints"]["entries"] is None        # an array: always full
        assert nodes[node]["pinned"]
    assert nodes[a]["endpoints"] == 2 and nodes[b]["endpoints"] == 1
    # Pinned nodes without a topology: no observer was started for them.
    assert doc["observer"] == f"{a} not running; {b} not running"
    assert [(o["node"], o["running"]) for o in doc["observers"]] == [(a, False), (b, False)]
    text = chainbench("status").stdout
    assert "Observer:" in text and "Pinned:" in text and f"{a}:" in text
    assert any(ln.split()[:2] == [b, "cb_lb4_backends"] and ln.split()[-1] == "0.0%"
               for ln in text.splitlines())


def test_status_and_read_commands_without_a_topology():
    """With nothing up, status says so (exit 0); read commands that need maps name the
    way out in one line (exit 2)."""
    from harness.node import datapath
    from harness.topology.state import load_state
    assert load_state() is None and not datapath.pinned_nodes(), "a topology is up"
    text = chainbench("status").stdout
    assert "Topology:     none" in text and "Pinned:       nothing pinned" in text
    assert "Observer:     none (no BPF node)" in text
    for cmd in (("services",), ("ct", "list"), ("policy", "get", "default/x")):
        assert "no datapath is pinned" in one_line_error(chainbench(*cmd, check_rc=2))
    assert chainbench("endpoints").stdout.split()[:2] == ["NODE", "ENDPOINT"]


@TEST_RUN_ONLY
def test_version():
    import platform
    import re

    from harness import paths
    doc = json.loads(chainbench("version", "-o", "json").stdout)
    assert doc["chainbench"] == "0.1.0" and doc["kernel"] == platform.release()
    assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?", doc["libbpf"])
    assert "clang version 19" in doc["clang"]               # the DWARF producer of build/
    if (paths.ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(paths.ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert doc["git_commit"].startswith(head)
    first = chainbench("version").stdout.splitlines()[0]
    assert first.startswith("chainbench 0.1.0")


@TEST_RUN_ONLY
@pytest.mark.parametrize("argv, message", [
    (["endpoint"], "unknown command 'endpoint'; did you mean 'endpoints'?"),
    (["servics", "-o", "json"], "unknown command 'servics'; did you mean 'services'?"),
    (["policy", "gett", "x"], "unknown command 'policy gett'; did you mean 'policy get'?"),
    (["-v", "statsu"], "unknown command 'statsu'; did you mean 'status'?"),
    (["zzzz"], "unknown command 'zzzz' (commands: build, programs"),
])
def test_unknown_command_did_you_mean(argv, message):
    proc = chainbench(*argv, check_rc=2)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {message}")
    assert proc.stdout == ""


def _complete(line: str, tmp_path) -> list[str]:
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [w.strip() for w in out.read_text().split("\n") if w.strip()]


@TEST_RUN_ONLY
def test_shell_completion(tmp_path):
    """argcomplete answers as a shell asks it (COMP_LINE/COMP_POINT/_ARGCOMPLETE)."""
    assert _complete("chainbench endp", tmp_path) == ["endpoints"]
    assert set(_complete("chainbench ", tmp_path)) >= {"services", "status", "version",
                                                        "completion", "endpoints", "policy"}
    assert _complete("chainbench policy g", tmp_path) == ["get"]
    assert set(_complete("chainbench services -o ", tmp_path)) == {"table", "wide", "json",
                                                                   "yaml"}
    script = chainbench("completion", "bash").stdout
    assert "complete " in script and "chainbench" in script and "_ARGCOMPLETE" in script
    assert "compdef" in chainbench("completion", "zsh").stdout


@pytest.fixture
def running_topology():
    """connectivity-check.yaml up (two nodes, native routing, the BPF datapath)."""
    from harness.topology import chaining
    from harness.scenario import SCENARIO_DIR
    try:
        yield chaining.up(str(SCENARIO_DIR / "connectivity-check.yaml"))
    finally:
        build.down()


def test_read_commands_on_a_running_topology(running_topology):
    """On a real topology: status lists each node's attached programs (from_netdev on the
    uplink, from/to_container on every pod veth, socket LB on the host cgroup); services
    name their Service on every node; policy get finds the node of a pod on cb-node1;
    endpoints put every pod on the node the topology placed it."""
    topo = running_topology
    doc = json.loads(chainbench("status", "-o", "json").stdout)
    assert doc["topology"]["nodes"] == len(topo.nodes) == 2 and doc["topology"]["complete"]
    status = {n["name"]: n for n in doc["nodes"]}
    for node in topo.nodes:
        attached = {(p["program"], p["hook"], p["target"]) for p in status[node.name]["programs"]}
        assert ("from_netdev", "tc ingress", node.uplink) in attached
        for pod in topo.pods:
            if pod.node == node.name and not pod.host_network:
                assert ("from_container", "tc ingress", pod.host_ifname) in attached
                assert ("to_container", "tc egress", pod.host_ifname) in attached
        assert {p for p, hook, _ in attached if hook.startswith("cgroup_")} >= {
            "sock4_connect", "sock6_connect"}
        assert status[node.name]["pinned_links"] == 8 and status[node.name]["datapath"] == "bpf"
    text = chainbench("status").stdout
    assert "Topology:     2 nodes" in text
    observer = next(line for line in text.splitlines() if line.startswith("Observer:"))
    assert all(f"{n.name} running (supervisor " in observer for n in topo.nodes), observer

    rows = json.loads(chainbench("services", "-o", "json").stdout)
    named = {(r["node"], r["service"]) for r in rows}
    assert {(n.name, "default/echo-a") for n in topo.nodes} <= named
    assert {(n.name, "default/echo-b") for n in topo.nodes} <= named

    remote = next(p for p in topo.pods if p.node == "cb-node1" and not p.host_network)
    first = chainbench("policy", "get", remote.ref).stdout.splitlines()[0]
    assert first.startswith(f"endpoint {remote.ref} on cb-node1 ")

    eps = json.loads(chainbench("endpoints", "-o", "json").stdout)
    assert {r["name"]: r["node"] for r in eps} == {
        p.ref: p.node for p in topo.pods if not p.host_network}
    assert chainbench("ct", "list").stdout.split()[0] == "NODE"
