"""The topology: planning (pure), and real namespaces wired by ptp/host-local.

The connectivity tests build 2 nodes x 2 pods (dual-stack) once per routing
mode (native, vxlan) and check pod-to-pod on the same node and across nodes
(ping and TCP), pod-to-world and world-to-pod; then ``up`` refusing over
leftovers, and interrupted or failing ``up`` runs leaving nothing behind.
These tests need the machine free of other cb-* namespaces (``up`` refuses
otherwise).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.host import netns
from harness.topology.cni_runtime import CNIError
from harness.scenario import load_scenario_text
from harness.topology import build
from harness.topology.build import TopologyError, node_runtime, pod_runtime_conf, remove_topology, up
from harness.topology.plan import PlanError, mac_link_local, plan_topology, pod_netns_names, vxlan_mac
from harness.topology.state import STATE_PATH, NodeState, PodState, TopologyState, load_state, \
    scenario_with_real_addresses

HELPERS = Path(__file__).parent / "helpers"
ROOT = Path(__file__).resolve().parent.parent


def pod_doc(name: str, node: str | None = None, ips: tuple[str, ...] = (), host_network: bool = False,
            namespace: str = "default") -> str:
    spec = {"containers": [{"name": "c"}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": spec}
    if ips:
        doc["status"] = {"podIPs": [{"ip": ip} for ip in ips]}
    return json.dumps(doc)


def scenario(*docs: str, source: str = "test.yaml"):
    return load_scenario_text("\n---\n".join(docs), source)


def wait_for_clean_machine(timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while build.leftovers():
        if time.monotonic() > deadline:
            pytest.fail(f"leftovers block `up`: {build.leftovers()} (run `chainbench down`)")
        time.sleep(0.2)


def assert_nothing_left(namespaces: list[str]) -> None:
    assert not [ns for ns in namespaces if netns.exists(ns)]
    assert not os.path.exists(STATE_PATH)
    assert not any(os.path.exists(f"/run/chainbench/cb-node{i}/ipam") for i in range(3))


# ---------------------------------------------------------------- planning


def test_plan_nodes_pods_and_names():
    scen = scenario(pod_doc("a", "cb-node1", ("198.18.1.10",)), pod_doc("b"), pod_doc("c"),
                    pod_doc("h", "cb-node0", host_network=True),
                    pod_doc("x", "cb-node0", ("198.18.5.7",)))
    plan = plan_topology(scen)
    assert [n.name for n in plan.nodes] == ["cb-node0", "cb-node1"] and not plan.ipv6
    pods = {p.ref: p for p in plan.pods}
    assert pods["default/a"].requested_ips == ("198.18.1.10/24",)
    assert pods["default/a"].netns == "cb-pod-default-a" and pods["default/a"].container_id == "default_a"
    assert [pods["default/b"].node, pods["default/c"].node] == ["cb-node0", "cb-node1"]   # round-robin
    assert pods["default/h"].host_network and pods["default/h"].netns is None
    assert pods["default/x"].requested_ips == ()                      # not in cb-node0's pod CIDR
    assert plan.namespaces()[:4] == ["cb-underlay", "cb-world", "cb-node0", "cb-node1"]
    assert [n.name for n in plan_topology(scen, nodes=3).nodes] == ["cb-node0", "cb-node1", "cb-node2"]
    with pytest.raises(PlanError, match="cb-node1, but --nodes 1"):
        plan_topology(scen, nodes=1)
    with pytest.raises(PlanError, match="--routing"):
        plan_topology(scen, routing="gre")
    with pytest.raises(PlanError, match="--datapath"):
        plan_topology(scen, datapath="ebpf")
    assert plan_topology(scenario(pod_doc("v6", None, ("198.18.0.9", "2001:db8:1::9")))).ipv6


def test_plan_reserved_ips_are_not_requested():
    plan = plan_topology(scenario(pod_doc("a", "cb-node0", ("198.18.0.1",)),
                                  pod_doc("b", "cb-node0", ("198.18.0.255",)),
                                  pod_doc("c", "cb-node0", ("198.18.0.3", "2001:db8:1::1"))), ipv6=True)
    assert [p.requested_ips for p in plan.pods] == [(), (), ("198.18.0.3/24",)]   # gateways, broadcast


def test_pod_netns_names_are_unique_and_bounded():
    names = pod_netns_names([("a-b", "c"), ("a", "b-c"), ("default", "web"), ("default", "x" * 80)])
    assert names[("default", "web")] == "cb-pod-default-web"
    assert len(set(names.values())) == 4
    assert names[("a-b", "c")].startswith("cb-pod-a-b-c-") and len(names[("a-b", "c")]) == 21
    assert all(len(n) <= 64 and n.startswith("cb-pod-") for n in names.values())


def test_plan_routes_native_and_vxlan():
    scen = scenario(pod_doc("a", "cb-node0"), pod_doc("b", "cb-node2"))
    native = plan_topology(scen, ipv6=True)
    n0 = native.node("cb-node0")
    assert [r.args() for r in n0.routes] == [
        ["route", "add", "203.0.113.0/24", "dev", "eth0"],
        ["route", "add", "2001:db8:4::/64", "dev", "eth0"],
        ["route", "add", "198.18.2.0/24", "via", "198.19.128.3", "dev", "eth0"],
        ["route", "add", "2001:db8:1:2::/64", "via", "2001:db8:3::3", "dev", "eth0"]]
    assert n0.vxlan is None and n0.pod_mtu == 1500
    world = [r.args() for r in native.world.routes]
    assert ["route", "add", "198.18.2.0/24", "via", "198.19.128.3", "dev", "eth0", "onlink"] in world
    assert ["route", "add", "198.18.0.0/15", "via", "198.19.128.1", "dev", "eth0", "onlink"] in world

    vx = plan_topology(scen, routing="vxlan", ipv6=True).node("cb-node0")
    assert vx.pod_mtu == 1450 and vx.vxlan.mtu == 1450
    assert (vx.vxlan.vni, vx.vxlan.port, vx.vxlan.local, vx.vxlan.mac, vx.vxlan.address) == \
        (1, 8472, "198.19.128.1", "02:cb:00:00:00:00", "198.18.0.0/32")
    assert ["route", "add", "198.18.2.0/24", "via", "198.18.2.0", "dev", "vxlan0", "onlink"] in \
        [r.args() for r in vx.routes]
    assert [(e.lladdr, e.dst) for e in vx.vxlan.fdb] == [("02:cb:00:00:00:02", "198.19.128.3")]
    assert mac_link_local(vxlan_mac(2)) == "fe80::cb:ff:fe00:2"


def test_scenario_with_real_addresses():
    scen = load_scenario_text((ROOT / "bench" / "scenarios" / "minimal.yaml").read_text(), "minimal.yaml")
    node = NodeState("cb-node1", 1, "cb-node1", "198.19.128.2", None, "198.18.1.0/24", None, "eth0", "", "")
    state = TopologyState("native", "bpf", False, "minimal.yaml", [], "cb-underlay", {"netns": "cb-world"},
                          [node], [PodState("default", "backend-1", "cb-node1", "cb-pod-default-backend-1",
                                            False, ipv4="198.18.1.77")])
    real = scenario_with_real_addresses(scen, state)
    assert real.pod("backend-1").pod_ips == (ipaddress.ip_address("198.18.1.77"),)
    assert real.pod("backend-1").host_ip == ipaddress.ip_address("198.19.128.2")
    assert real.pod("backend-0") == scen.pod("backend-0")
    addrs = [str(a) for ep in real.endpoint_slices_for("web")[0].endpoints for a in ep.addresses]
    assert addrs == ["198.18.0.10", "198.18.1.77"]
    assert real.services == scen.services and real.cilium_network_policies == scen.cilium_network_policies


# ------------------------------------------------------------- connectivity


class Topo:
    def __init__(self, state: TopologyState):
        self.state = state
        self.servers: list[subprocess.Popen] = []

    def serve(self, ref: str, port: int = 8080) -> None:
        pod = self.state.pod(ref)
        specs = [f"--tcp={pod.ipv4}:{port}"] + ([f"--tcp=[{pod.ipv6}]:{port}"] if pod.ipv6 else [])
        proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable,
                                 str(HELPERS / "sock_lb_server.py"), *specs, "--lifetime", "60"],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def tcp(self, src: str, addr: str, port: int = 8080) -> dict:
        out = netns.run(self.state.pod(src).netns, sys.executable, str(HELPERS / "sock_lb_client.py"),
                        "tcp", addr, str(port)).stdout
        return json.loads(out)[0]

    def ping(self, ns: str, addr: str) -> None:
        netns.run(ns, "ping", "-c", "1", "-W", "2", addr)

    def stop(self) -> None:
        for proc in self.servers:
            proc.terminate()
        for proc in self.servers:
            proc.wait(timeout=5)


TWO_BY_TWO = [pod_doc("a0", "cb-node0", ("198.18.0.10", "2001:db8:1::10")), pod_doc("b0", "cb-node0"),
              pod_doc("a1", "cb-node1"), pod_doc("b1", "cb-node1"),
              pod_doc("host1", "cb-node1", host_network=True)]


@pytest.fixture(scope="class", params=["native", "vxlan"])
def topo(request):
    wait_for_clean_machine()
    state = up(scenario(*TWO_BY_TWO), routing=request.param, ipv6=True)
    t = Topo(state)
    try:
        yield t
    finally:
        t.stop()
        summary = remove_topology()
        assert summary["errors"] == [] and sorted(summary["pods"]) == ["default/a0", "default/a1",
                                                                        "default/b0", "default/b1"]
        assert_nothing_left(state.namespaces())


def vxlan_tx(ns: str) -> int:
    return json.loads(netns.run(ns, "ip", "-s", "-j", "link", "show", "vxlan0").stdout)[0]["stats64"]["tx"]["packets"]


class TestTwoNodesTwoPods:
    """One topology per routing mode, shared by the tests of the class."""

    def test_state_is_recorded(self, topo):
        state = load_state()
        assert state is not None and state.complete and state.to_dict() == topo.state.to_dict()
        assert [n.name for n in state.nodes] == ["cb-node0", "cb-node1"] and state.datapath == "bpf"
        a0 = state.pod("a0")
        assert (a0.ipv4, a0.ipv6) == ("198.18.0.10", "2001:db8:1::10")    # the scenario's, via IPAM
        for pod in state.pods:
            if pod.host_network:
                assert (pod.netns, pod.ipv4) == ("cb-node1", "198.19.128.2")
                continue
            addrs = json.loads(netns.run(pod.netns, "ip", "-j", "addr", "show", "dev", "eth0").stdout)[0]
            assert addrs["address"] == pod.mac
            assert {pod.ipv4, pod.ipv6} <= {a["local"] for a in addrs["addr_info"]}
            assert ipaddress.ip_address(pod.ipv4) in ipaddress.ip_network(state.node(pod.node).pod_cidr_v4)
            netns.run(pod.node, "ip", "link", "show", "dev", pod.host_ifname)
            node = state.node(pod.node)
            node_runtime(state, node).check(Path(node.conflist).read_text(), pod_runtime_conf(pod))

    def test_pod_to_pod_same_and_cross_node(self, topo):
        s = topo.state
        topo.serve("b0")
        topo.serve("a1")
        before = vxlan_tx("cb-node0") if s.routing == "vxlan" else 0
        for src, dst in (("a0", "b0"), ("a0", "a1")):        # same node, then across nodes
            for family in ("ipv4", "ipv6"):
                addr = getattr(s.pod(dst), family)
                topo.ping(s.pod(src).netns, addr)
                reply = topo.tcp(src, addr)
                assert "error" not in reply, reply
                # Routed end to end: the server sees the client's own address (no NAT).
                assert reply["server"]["peer"][0] == getattr(s.pod(src), family)
                assert reply["server"]["local"][0] == addr
        if s.routing == "vxlan":
            assert vxlan_tx("cb-node0") >= before + 4
        else:
            assert "vxlan0" not in netns.run("cb-node0", "ip", "-o", "link").stdout

    def test_pod_and_world(self, topo):
        s = topo.state
        for ref in ("a0", "a1"):
            topo.ping(s.pod(ref).netns, "203.0.113.10")
            topo.ping(s.pod(ref).netns, "2001:db8:4::10")
            topo.ping("cb-world", s.pod(ref).ipv4)
        topo.ping("cb-world", s.pod("host1").ipv4)
        topo.ping(s.pod("a0").netns, s.pod("host1").ipv4)                 # pod to a hostNetwork pod


# --------------------------------------------------------- refusal and undo


def test_up_refuses_over_leftovers():
    wait_for_clean_machine()
    left = f"cb-topot-left-{os.getpid()}"
    netns.create(left)
    try:
        with pytest.raises(TopologyError, match=rf"{left}.*run `chainbench down` first"):
            up(scenario(pod_doc("a", "cb-node0")))
        assert netns.exists(left) and not netns.exists("cb-node0")    # nothing touched
    finally:
        netns.delete(left)
    os.makedirs(os.path.dirname(STATE_PATH), exist_ok=True)
    Path(STATE_PATH).write_text("{}")
    try:
        with pytest.raises(TopologyError, match="topology.json.*run `chainbench down` first"):
            up(scenario(pod_doc("a", "cb-node0")))
    finally:
        os.unlink(STATE_PATH)


SIX_PODS = [pod_doc(f"p{i}", f"cb-node{i % 2}") for i in range(6)]


@pytest.mark.parametrize("fail_at", ["routes", "pod default/p3"])
def test_failure_midway_undoes_everything(fail_at):
    wait_for_clean_machine()
    plan = plan_topology(scenario(*SIX_PODS), routing="vxlan")

    def progress(step: str) -> None:
        if step == fail_at:
            raise RuntimeError(f"injected failure at {step}")
    with pytest.raises(RuntimeError, match="injected failure"):
        build.build(plan, progress=progress)
    assert_nothing_left(plan.namespaces())


UP_SCRIPT = """
import sys, time
from harness.topology.build import up
def progress(step):
    print(step, flush=True)
    if step.startswith("pod"):
        time.sleep(0.3)
up(sys.argv[1], routing="native", progress=progress)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_up_leaves_nothing(tmp_path, sig):
    wait_for_clean_machine()
    path = tmp_path / "six.yaml"
    path.write_text("\n---\n".join(SIX_PODS))
    plan = plan_topology(scenario(*SIX_PODS))
    proc = subprocess.Popen([sys.executable, "-c", UP_SCRIPT, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pods_started = 0
        while pods_started < 3:                               # a few pods are in, more to come
            line = proc.stdout.readline()
            assert line, f"up ended early: {proc.stderr.read()}"
            pods_started += line.startswith("pod ")
        assert netns.exists("cb-node0") and os.path.exists(STATE_PATH)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            remove_topology()
    assert proc.returncode != 0 and "Interrupted" in err
    assert_nothing_left(plan.namespaces())


def test_down_runs_cni_del_then_cleanup(monkeypatch):
    wait_for_clean_machine()
    state = up(scenario(pod_doc("a", "cb-node0"), pod_doc("b", "cb-node1")), routing="vxlan")
    monkeypatch.setattr(build.cleanup, "remove_leftovers",          # the machine-wide sweep is test_cli's
                        lambda: {"namespaces": ["cb-other"], "cgroups": [], "pins": [], "states": []})
    summary = build.down()
    assert sorted(summary["pods"]) == ["default/a", "default/b"] and summary["errors"] == []
    assert set(summary["namespaces"]) == set(state.namespaces()) | {"cb-other"}
    assert_nothing_left(state.namespaces())
    assert build.down()["pods"] == []                                # nothing recorded any more


def test_chained_plugin_hook(tmp_path):
    """What the chained BPF plugin will get: each pod's ADD after ptp, DEL on teardown."""
    wait_for_clean_machine()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "cb-echo").write_text(f"#!/bin/sh\nexec {sys.executable} {HELPERS / 'cni_echo_plugin.py'} \"$@\"\n")
    (plugins / "cb-echo").chmod(0o755)
    log = tmp_path / "calls.jsonl"
    state = up(scenario(pod_doc("a", "cb-node0"), pod_doc("b", "cb-node0")), datapath="iptables",
               chained=[{"type": "cb-echo", "recordFile": str(log)}], cni_path=[str(plugins)])
    try:
        assert state.datapath == "iptables" and state.cni_path[0] == str(plugins)
        adds = [json.loads(line) for line in log.read_text().splitlines()]
        assert [c["env"]["CNI_COMMAND"] for c in adds] == ["ADD", "ADD"]
        for call, ref in zip(adds, ("default/a", "default/b")):
            pod = state.pod(ref)
            assert call["env"]["CNI_CONTAINERID"] == pod.container_id
            assert call["env"]["CNI_NETNS"] == f"/run/netns/{pod.netns}"
            assert f"K8S_POD_NAME={pod.name}" in call["env"]["CNI_ARGS"]
            assert call["config"]["prevResult"]["interfaces"][0]["name"] == pod.host_ifname
            assert call["netns_inode"] == os.stat("/run/netns/cb-node0").st_ino
    finally:
        summary = remove_topology()
    dels = [json.loads(line) for line in log.read_text().splitlines()][2:]
    assert [c["env"]["CNI_COMMAND"] for c in dels] == ["DEL", "DEL"] and summary["errors"] == []
    assert_nothing_left(state.namespaces())


def test_missing_chained_plugin_fails_before_anything_is_made():
    wait_for_clean_machine()
    with pytest.raises(CNIError, match="failed to find plugin 'chainbench-cni'"):
        up(scenario(pod_doc("a", "cb-node0")), chained=[{"type": "chainbench-cni"}])
    assert build.leftovers() == []
