"""The command line as a user runs it: a subprocess, stdout/stderr, exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

from harness.testing import eth

V4 = dict(src="198.18.0.10", dst="198.19.0.1")


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


def test_test_run_table(pcap):
    path, _ = pcap
    proc = chainbench("test-run", "parse_stats:xdp_parse_stats", "--pcap", str(path))
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "VERDICT", "DROP"]
    assert len(lines) == 4 and "XDP_PASS" in lines[1]


def test_test_run_raw_ip_pcap(tmp_path):
    from scapy.utils import PcapWriter
    path = tmp_path / "raw.pcap"
    with PcapWriter(str(path), linktype=101) as w:      # DLT_RAW: no Ethernet header
        w.write(IP(**V4) / UDP(dport=53))
    proc = chainbench("test-run", "tc_parse_stats", "--pcap", str(path), "--json")
    row = json.loads(proc.stdout)
    assert row["verdict"] == "TC_ACT_OK"
    assert bytes.fromhex(row["packet_out"])[12:14] == b"\x08\x00"


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


def test_not_a_pcap(tmp_path):
    bogus = tmp_path / "bogus.pcap"
    bogus.write_text("hello")
    line = one_line_error(chainbench("test-run", "empty_tc", "--pcap", str(bogus), check_rc=2))
    assert "not a pcap/pcapng file" in line


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


def test_programs_lists_objects():
    rows = [line.split() for line in chainbench("programs").stdout.splitlines()]
    assert rows[0] == ["OBJECT", "PROGRAM", "TYPE"]
    assert ["parse_stats", "tc_parse_stats", "sched_cls"] in rows
    assert ["empty", "empty_xdp", "xdp"] in rows
    assert ["lxc", "from_container", "sched_cls"] in rows


def test_bench_micro_tiny(tmp_path):
    proc = chainbench("bench", "micro", "--samples", "2", "--repeat", "2000", "--services", "1,50",
                      "--identities", "1", "--out", str(tmp_path))
    assert "indicative only" in proc.stderr
    assert proc.stdout.splitlines()[0].split()[:3] == ["CASE", "VERDICT", "NS/PKT"]
    for name in ("parse_stats:tc_parse_stats", "lxc:from_container/established@1svc",
                 "lxc:from_container/new-flow@50svc", "lxc:from_container/non-service@50svc"):
        assert name in proc.stdout
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "latest.json" in written and "index.html" in written and len(written) == 3
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

    from harness import bpffs, cgroups, netns
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

    from harness import bpffs
    from harness import endpoints
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
    rows = json.loads(chainbench("services", "--node", pinned_node, "-o", "json").stdout)
    assert [r["frontend"] for r in rows] == ["198.19.0.10:80/TCP"]
    assert len(rows[0]["backends"]) == 2
    assert chainbench("ct", "list", "--node", pinned_node).stdout.split()[:2] == ["PROTO", "DIR"]
    assert "0 entries removed" in chainbench("ct", "flush", "--node", pinned_node).stdout


def test_snat_stats(pinned_node):
    """`chainbench snat stats` reads the pinned allocation counters: one NodePort flow
    to a backend on another node is one allocation, its second packet none."""
    from harness import addressing, datapath
    from harness.lb.state import desired_state
    from harness.testrun import Runner

    from . import lbkit as K
    scen = K.scenario(K.service("np", "198.19.0.20", [("http", 80, 8080, "TCP")],
                                [K.endpoint("198.18.1.20", "cb-node1")], svc_type="NodePort",
                                node_ports={"http": 31313}))
    with datapath.load("netdev", pinned_node, pinned=True) as coll:
        datapath.lb_control(coll).apply(desired_state(scen))
        runner = Runner(coll, "from_netdev")
        for flags in ("S", "A"):
            pkt = K.tcp4(str(addressing.node_ip4(0)), 31313, src="203.0.113.10", sport=50000,
                         flags=flags)
            assert runner.run(bytes(pkt)).verdict == "TC_ACT_OK"
    stats = json.loads(chainbench("snat", "stats", "--node", pinned_node, "-o", "json").stdout)
    assert stats["ipv4"] == {"allocated": 1, "collisions": 0, "reused": 0, "exhausted": 0}
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
    assert doc[0] == {"id": 1, "labels": "reserved:host"}


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
    assert any(r[:2] == ["Allow", "Ingress"] and "6/8080" in r and
               any("k8s:app=client" in cell for cell in r) for r in rules)
    doc = json.loads(chainbench("policy", "get", "backend-0", "--node", pinned_node,
                                "-o", "json").stdout)
    assert doc["endpoint"] == "default/backend-0" and doc["revision"] == 2
    line = one_line_error(chainbench("policy", "get", "nope", "--node", pinned_node, check_rc=2))
    assert "no endpoint default/nope" in line


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
