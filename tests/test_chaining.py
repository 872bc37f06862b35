"""The datapath chained after the real primary CNI, end to end.

`chainbench up` builds two nodes (ptp + host-local, then chainbench-cni),
the connectivity-check suite runs over real TCP/HTTP and ICMP, endpoints are
listed, and `chainbench down` (or an interrupted run) leaves nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.host import cgroups, netns
from harness.topology import chaining, connectivity
from harness.topology import build
from harness.host.bpffs import PIN_ROOT
from harness.topology.cni_runtime import CNIError
from harness.paths import STATE_ROOT
from harness.scenario import SCENARIO_DIR, load_scenario
from harness.topology.build import node_runtime, pod_runtime_conf
from harness.topology.state import scenario_with_real_addresses

SCENARIO = str(SCENARIO_DIR / "connectivity-check.yaml")


def nothing_left() -> list[str]:
    left = [n for n in netns.list_project()]
    left += cgroups.list_project()
    if os.path.isdir(PIN_ROOT) and os.listdir(PIN_ROOT):
        left.append(PIN_ROOT)
    if os.path.isdir(STATE_ROOT) and os.listdir(STATE_ROOT):
        left.append(STATE_ROOT)
    return left


@pytest.fixture
def topology(request):
    routing, datapath = (request.param, "bpf") if isinstance(request.param, str) else request.param
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    try:
        state = chaining.up(SCENARIO, routing=routing, datapath_kind=datapath)
        yield state
    finally:
        build.down()
    assert nothing_left() == []


@pytest.mark.parametrize("topology", ["native", "vxlan"], indirect=True)
def test_connectivity_check_passes(topology):
    scenario = scenario_with_real_addresses(load_scenario(SCENARIO), topology)
    results = connectivity.run(topology, scenario)
    failed = [(r.check.name, r.detail) for r in results if not r.ok]
    assert not failed
    assert len(results) == len(connectivity.CHECKS) and all(r.status == "PASS" for r in results)


@pytest.mark.parametrize("topology", [("native", "iptables"), ("vxlan", "iptables"),
                                      ("native", "nftables"), ("vxlan", "nftables")],
                         indirect=True)
def test_kube_proxy_baselines_pass_the_non_policy_checks(topology):
    scenario = scenario_with_real_addresses(load_scenario(SCENARIO), topology)
    results = connectivity.run(topology, scenario)
    by_status = {r.check.name: r.status for r in results}
    assert {n for n, s in by_status.items() if s == "N/A"} == \
        {c.name for c in connectivity.CHECKS if c.needs_policy}
    failed = [(r.check.name, r.detail) for r in results if r.status == "FAIL"]
    assert not failed


@pytest.mark.parametrize("topology", ["native"], indirect=True)
def test_endpoints_and_cni_check(topology):
    out = subprocess.run([sys.executable, "-m", "harness.cli", "endpoints", "-o", "json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    pods = [p for p in topology.pods if not p.host_network]
    assert set(rows) == {p.ref for p in pods}
    deny = rows["default/echo-ingress-deny"]
    assert deny["ingress_enforcement"] and not deny["egress_enforcement"]
    assert rows["default/echo-a"]["state"] == "ready" and rows["default/echo-a"]["identity_id"]
    assert all(r["ipv4"] == topology.pod(r["name"]).ipv4 for r in rows.values())
    # CNI CHECK runs the chain (ptp, then our plugin, which verifies its programs).
    pod = topology.pod("default/echo-a")
    node = topology.node(pod.node)
    runtime = node_runtime(topology, node)
    with open(node.conflist) as f:
        conflist = json.load(f)
    runtime.check(conflist, pod_runtime_conf(pod))
    # Without the veth's entry the node's programs drop everything: CHECK must notice.
    from harness.node.node import Node
    home = Node(pod.node)
    ifindex = netns.ifindex(pod.host_ifname, node.netns)
    entry = home.endpoint_config(ifindex)
    assert entry is not None and entry.id == rows["default/echo-a"]["endpoint_id"]
    home.remove_endpoint_config(entry.id)
    with pytest.raises(CNIError, match="no entry"):
        runtime.check(conflist, pod_runtime_conf(pod))
    from harness.abi.structs import from_be32
    home.set_endpoint_config(ifindex, entry.id, str(from_be32(entry.ip4)) if entry.ip4 else None,
                             str(entry.ip6.ipv6()) if any(entry.ip6.addr) else None)
    runtime.check(conflist, pod_runtime_conf(pod))
    # Remove our programs by hand: CHECK must notice.
    netns.run(node.netns, "tc", "qdisc", "del", "dev", pod.host_ifname, "clsact")
    with pytest.raises(CNIError, match="programs are not attached"):
        runtime.check(conflist, pod_runtime_conf(pod))


def _drops(node: str, reason: int) -> int:
    from harness.node.node import Node
    with Node(node).open_pinned() as maps:
        return sum(v.packets for k, per_cpu in maps["cb_metrics"].items() if k.reason == reason
                   for v in per_cpu)


def _send_udp(pod, src: str, dst: str, count: int) -> None:
    """Send *count* UDP datagrams from inside *pod*'s namespace with source *src* (a raw
    socket: the kernel lets the sender write any source address)."""
    code = ("import sys; from scapy.all import IP, UDP, send; "
            "send(IP(src=sys.argv[1], dst=sys.argv[2]) / UDP(sport=4321, dport=9) / b'cb', "
            "count=int(sys.argv[3]), verbose=False)")
    netns.run(pod.netns, sys.executable, "-c", code, src, dst, str(count), timeout=60)


_LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9))
print("ready", flush=True)
s.settimeout(0.2)
seen, end = [], time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        seen.append(s.recvfrom(64)[1][0])
    except socket.timeout:
        pass
print(" ".join(seen), flush=True)
"""


@pytest.mark.parametrize("topology", ["native"], indirect=True)
def test_ipv4_only_pods_send_no_ipv6(topology):
    """A pod with no IPv6 address may send no IPv6 (132), and its interface does not
    try: the chained plugin turns IPv6 off on it, so the link-local MLD reports the
    kernel would send after the interface comes up never reach the datapath (they
    used to be counted as two 132 drops per endpoint, noise in the connectivity
    checks' drop proof)."""
    from harness.abi import drop_reasons
    invalid_source = drop_reasons.CODES["DROP_INVALID_SIP"]
    time.sleep(3)                        # MLDv2 repeats an unsolicited report within 1 s
    pods = [p for p in topology.pods if not p.host_network]
    assert pods and all(p.ipv6 is None for p in pods)
    for pod in pods:
        out = subprocess.run(["ip", "netns", "exec", pod.netns, "cat",
                              "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "1", pod.ref
    assert {n.name: _drops(n.name, invalid_source) for n in topology.nodes} == \
        {n.name: 0 for n in topology.nodes}


@pytest.mark.parametrize("topology", ["native"], indirect=True)
def test_a_pod_cannot_send_with_another_pods_source(topology):
    """The source check on real veths: a pod's raw packets carrying another pod's
    address are dropped at its from_container (132) and never arrive; its own do."""
    from harness.abi import drop_reasons
    sender = topology.pod("default/pod-to-a")
    victim = topology.pod("default/echo-a")
    target = topology.pod("default/echo-b")
    invalid_sip = drop_reasons.CODES["DROP_INVALID_SIP"]
    listener = subprocess.Popen(["ip", "netns", "exec", target.netns, sys.executable, "-c",
                                 _LISTEN, "8"], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        before = _drops(sender.node, invalid_sip)
        _send_udp(sender, victim.ipv4, target.ipv4, 5)
        assert _drops(sender.node, invalid_sip) - before >= 5
        _send_udp(sender, sender.ipv4, target.ipv4, 3)
        received = listener.communicate(timeout=30)[0].split()
    finally:
        listener.kill()
        listener.wait()
    assert received.count(sender.ipv4) == 3
    assert victim.ipv4 not in received


def run_plugin(command: str, conf: dict, env_extra: dict | None = None) -> tuple[int, dict | None]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "x", "CNI_NETNS": "/run/netns/none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=echo-a", **(env_extra or {}),
           "PATH": os.environ["PATH"]}
    proc = subprocess.run([chaining.plugin_dir() + "/chainbench-cni"], input=json.dumps(conf),
                          capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def test_plugin_error_paths():
    base = {"cniVersion": "1.0.0", "name": "chainbench", "type": "chainbench-cni",
            "scenario": SCENARIO, "node": "cb-node0"}
    rc, err = run_plugin("ADD", base)
    assert rc == 1 and err["code"] == 7 and "needs prevResult" in err["msg"]
    rc, err = run_plugin("ADD", {**base, "prevResult": {"cniVersion": "1.0.0", "interfaces": []}})
    assert rc == 1 and "no host-side interface" in err["msg"]
    # Neither a pod nor a container id: nothing to name the endpoint by (issue 12).
    rc, err = run_plugin("ADD", {**base, "prevResult": {"interfaces": [{"name": "v"}]}},
                         {"CNI_ARGS": "IgnoreUnknown=1", "CNI_CONTAINERID": ""})
    assert rc == 1 and err["code"] == 4 and "CNI_CONTAINERID is empty" in err["msg"]
    rc, err = run_plugin("ADD", {**base, "prevResult": {"interfaces": [{"name": "v"}]}},
                         {"CNI_ARGS": "K8S_POD_NAMESPACE=default"})
    assert rc == 1 and err["code"] == 4 and "without K8S_POD_NAME" in err["msg"]
    # DEL completes whatever is missing (no topology here: nothing to undo).
    rc, out = run_plugin("DEL", base, {"CNI_ARGS": "", "CNI_CONTAINERID": "", "CNI_NETNS": ""})
    assert (rc, out) == (0, None)
    proc = subprocess.run([chaining.plugin_dir() + "/chainbench-cni"], input="{not json",
                          capture_output=True, text=True, env={"CNI_COMMAND": "ADD",
                                                                "PATH": os.environ["PATH"]})
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6
    rc, err = run_plugin("ADD", {**base, "node": None,
                                 "prevResult": {"interfaces": [{"name": "v"}]}})
    assert rc == 1 and "cannot tell the node" in err["msg"]
    rc, out = run_plugin("VERSION", {})
    assert rc == 0 and out["supportedVersions"] == ["1.0.0"]


def test_interrupted_up_leaves_nothing():
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up", "-f", SCENARIO],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt once the build is under way (namespaces exist).
    deadline = time.monotonic() + 20
    while not netns.list_project() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    try:
        assert proc.returncode != 0
        assert "Traceback" not in err
        assert nothing_left() == []
    finally:
        build.down()


def _plugin_processes() -> dict[int, str]:
    """Live chainbench-cni processes of this checkout: pid -> start time (/proc/<pid>/stat)."""
    plugin = os.path.join(chaining.plugin_dir(), chaining.PLUGIN)
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if plugin.encode() in argv and stat[0] != "Z":
            found[int(pid)] = stat[19]
    return found


def test_killed_up_leaves_no_ready_half_built_endpoint_and_down_ends_its_plugins():
    """kill -9 of `up` while a pod's chainbench-cni ADD runs: `endpoints` shows no pod
    `ready` without an identity, and `down` ends the orphaned plugin processes (waiting
    for them) before it removes anything, so nothing comes back after it."""
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    before = set(_plugin_processes())
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up", "-f", SCENARIO],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        registry = os.path.join(STATE_ROOT, "cb-node0", "endpoints.json")
        # Some endpoints recorded, and a plugin ADD running right now.
        while not (os.path.exists(registry) and set(_plugin_processes()) - before):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no chainbench-cni ADD seen"
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        orphans = {p: s for p, s in _plugin_processes().items() if p not in before}
        out = subprocess.run([sys.executable, "-m", "harness.cli", "endpoints", "-o", "json"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        assert rows, "no endpoint recorded"
        bad = [r for r in rows if r["state"] == "ready" and not r["identity_id"]]
        assert not bad, f"half-built endpoints shown ready without identity: {bad}"
        down = subprocess.run([sys.executable, "-m", "harness.cli", "down"], capture_output=True,
                              text=True)
        assert down.returncode == 0, down.stderr
        alive = {p for p, s in _plugin_processes().items() if orphans.get(p) == s}
        assert not alive, f"chainbench-cni processes still running after down: {alive}"
        time.sleep(1)
        assert nothing_left() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        build.down()


def test_pod_add_reads_no_scenario_file(tmp_path):
    """Issue 13: the chained plugin takes the pod's addresses from prevResult and what
    it needs besides from the node's own state (written by `up`): with the scenario
    file gone after `up`, a pod deleted and added again through the node's conflist
    (a runtime's ADD: it syncs the node at once) still becomes a ready endpoint."""
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    scenario = tmp_path / "minimal.yaml"
    scenario.write_text((SCENARIO_DIR / "minimal.yaml").read_text())
    try:
        state = chaining.up(str(scenario))
        scenario.rename(tmp_path / "gone.yaml")
        pod = state.pod("default/backend-0")
        node = state.node(pod.node)
        runtime = node_runtime(state, node)
        with open(node.conflist) as f:
            conflist = json.load(f)
        runtime.delete(conflist, pod_runtime_conf(pod))
        result = runtime.add(conflist, pod_runtime_conf(pod))
        assert pod.ipv4 in json.dumps(result["ips"])
        out = subprocess.run([sys.executable, "-m", "harness.cli", "endpoints", "-o", "json"],
                             capture_output=True, text=True, check=True).stdout
        row = {r["name"]: r for r in json.loads(out)}["default/backend-0"]
        assert (row["state"], row["ipv4"]) == ("ready", pod.ipv4) and row["identity_id"]
        runtime.check(conflist, pod_runtime_conf(pod))
    finally:
        build.down()
    assert nothing_left() == []
