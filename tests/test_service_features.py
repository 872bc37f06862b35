"""The Service features of issue 15, each checked end to end on a topology
(harness/topology/service_checks.py on bench/scenarios/service-features.yaml), on
every datapath (bpf, iptables, nftables) and routing mode (native, vxlan): one
``up`` per combination, with kube-proxy's --masquerade-all and
--nodeport-addresses set (the checks' expectations follow those settings).

kube-proxy's health-check responses are ported from kubernetes/kubernetes
pkg/proxy/healthcheck/service_health.go at commit
025f2834a128798cef30018a5e6a6ae82b5ad885 (hcHandler.ServeHTTP) and
pkg/proxy/endpointschangetracker.go (LocalReadyEndpoints: distinct local ready IPs).

Topology cases build machine-global state: each holds the file lock named by
$CHAINBENCH_TOPOLOGY_LOCK (when set) for its own ``up``..``down`` only.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

import pytest

from harness import validate
from harness.host import cgroups, netns, procs
from harness.host.bpffs import PIN_ROOT
from harness.paths import STATE_ROOT
from harness.scenario import SCENARIO_DIR, load_scenario
from harness.topology import build, chaining, service_checks
from harness.topology.plan import plan_topology
from harness.topology.servers import healthcheck
from harness.topology.state import NodeState, TopologyState, scenario_with_real_addresses

SCENARIO = str(SCENARIO_DIR / "service-features.yaml")
UNDERLAY = "198.19.128.0/24"
COMBINATIONS = [(d, r) for d in ("bpf", "iptables", "nftables") for r in ("native", "vxlan")]

# The body upstream writes for a service with one local endpoint (dedent + Trim).
UPSTREAM_BODY_1 = ('{\n\t"service": {\n\t\t"namespace": "default",\n\t\t"name": "etp-local"\n'
                   '\t},\n\t"localEndpoints": 1,\n\t"serviceProxyHealthy": true\n}')


# ------------------------------------------------------------------ no topology


def test_health_body_is_upstreams():
    assert healthcheck.body("default", "etp-local", 1).decode() == UPSTREAM_BODY_1
    head, _, body = healthcheck.response("default", "etp-local", 0).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Content-Type: application/json" in lines and "X-Content-Type-Options: nosniff" in lines
    assert f"Content-Length: {len(body)}" in lines and b'"localEndpoints": 0' in body


def test_local_endpoints_count_ready_local_ips_of_the_primary_family():
    scenario = validate.load(SCENARIO)
    assert healthcheck.local_endpoints(scenario, "cb-node0") == {("default", "etp-local"): (32020, 1)}
    assert healthcheck.local_endpoints(scenario, "cb-node1") == {("default", "etp-local"): (32020, 0)}


def test_world_routes_each_lb_and_external_ip_to_the_node_of_its_first_endpoint():
    plan = plan_topology(validate.load(SCENARIO))
    routes = {r.dst: r.via for r in plan.world.routes if r.dst.startswith("198.19.64.")}
    assert routes == {"198.19.64.20/32": "198.19.128.1",      # etp-local: echo-0 on cb-node0
                      "198.19.64.40/32": "198.19.128.2", "198.19.64.41/32": "198.19.128.2",
                      "198.19.64.42/32": "198.19.128.2", "198.19.64.50/32": "198.19.128.2"}


def _state(kube_proxy: dict) -> TopologyState:
    node = NodeState("cb-node0", 0, "cb-node0", "198.19.128.1", "2001:db8:3::1",
                     "198.18.0.0/24", "2001:db8:1::/64", "eth0", "", "")
    return TopologyState("native", "iptables", True, SCENARIO, [], "cb-underlay",
                         {"netns": "cb-world", "ipv4": "203.0.113.10", "ipv6": "2001:db8:4::10"},
                         [node], [], kube_proxy=kube_proxy)


def test_proxier_config_carries_the_node_and_the_up_options():
    state = _state({"masquerade_all": True, "nodeport_addresses": [UNDERLAY]})
    config = chaining.proxier_config(state, state.nodes[0], "iptables")
    assert (config.hostname, config.node_ips, config.masquerade_all, config.nodeport_addresses) \
        == ("cb-node0", ("198.19.128.1", "2001:db8:3::1"), True, (UNDERLAY,))
    # Without the option: iptables every address, nftables the node's primary ones.
    state = _state({})
    assert chaining.proxier_config(state, state.nodes[0], "iptables").nodeport_addresses == ()
    assert chaining.proxier_config(state, state.nodes[0], "nftables").nodeport_addresses == \
        ("198.19.128.1/32", "2001:db8:3::1/128")
    state = _state({"nodeport_addresses": ["primary", UNDERLAY]})
    assert chaining.proxier_config(state, state.nodes[0], "iptables").nodeport_addresses == \
        ("198.19.128.1/32", "2001:db8:3::1/128", UNDERLAY)


def test_nodeport_addresses_outcome_follows_the_datapath_and_the_setting():
    outcome = service_checks.CHECKS_BY_NAME["nodeport-addresses-out-of-range"].outcome
    assert outcome("bpf", {}) == "fail"                 # Cilium: its devices' addresses only
    assert outcome("iptables", {}) == "pass"            # every local address
    assert outcome("nftables", {}) == "fail"            # "primary"
    assert outcome("iptables", {"nodeport_addresses": [UNDERLAY]}) == "fail"
    assert outcome("nftables", {"nodeport_addresses": ["198.18.0.0/24"]}) == "pass"


def test_nodeport_addresses_option_is_checked():
    for bad, why in (("10.0.0.0/8", "outside the project's address plan"), ("x", "not a CIDR")):
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "up", "-f", SCENARIO,
                               "--nodeport-addresses", bad], capture_output=True, text=True)
        assert proc.returncode == 2 and why in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_sctp_packets_carry_a_valid_crc32c():
    from harness.topology.servers import sctp_echo
    assert sctp_echo.crc32c(b"123456789") == 0xE3069283          # RFC 3720 check value
    pkt = sctp_echo.packet(40000, 7777, 0, sctp_echo.init_chunk(sctp_echo.INIT, 0x1234))
    assert sctp_echo.parse(pkt)[:4] == (40000, 7777, 0, sctp_echo.INIT)
    assert sctp_echo.parse(pkt[:-1] + bytes([pkt[-1] ^ 1])) is None


# -------------------------------------------------------------------- topology


def _leftovers() -> list[str]:
    left = list(netns.list_project()) + list(cgroups.list_project())
    if os.path.isdir(PIN_ROOT) and os.listdir(PIN_ROOT):
        left.append(PIN_ROOT)
    if os.path.isdir(STATE_ROOT) and os.listdir(STATE_ROOT):
        left.append(STATE_ROOT)
    left += [desc for _start, desc in procs.live().values()]
    return left


@pytest.fixture(scope="module", params=COMBINATIONS, ids=[f"{d}-{r}" for d, r in COMBINATIONS])
def topology(request):
    datapath, routing = request.param
    lock_path = os.environ.get("CHAINBENCH_TOPOLOGY_LOCK")
    lock = open(lock_path, "a") if lock_path else None
    try:
        if lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _leftovers():
            pytest.fail(f"leftovers before the test: {_leftovers()}")
        try:
            state = chaining.up(SCENARIO, routing=routing, datapath_kind=datapath,
                                kube_proxy_masquerade_all=True, nodeport_addresses=[UNDERLAY])
            yield state
        finally:
            build.down()
        assert _leftovers() == []
    finally:
        if lock:
            lock.close()


def test_every_service_feature_check_passes(topology):
    scenario = scenario_with_real_addresses(load_scenario(SCENARIO), topology)
    results = service_checks.run(topology, scenario)
    assert [r.check.name for r in results] == [c.name for c in service_checks.CHECKS]
    failed = [f"{r.check.name}: {r.detail}" for r in results if r.status != "PASS"]
    assert not failed, "\n".join(failed)


def test_health_servers_answer_on_every_node_and_only_inside_nodeport_addresses(topology):
    kinds = sorted(r.kind for r in procs.records() if r.kind.startswith("healthcheck:"))
    assert kinds == ["healthcheck:cb-node0", "healthcheck:cb-node1"]
    node = topology.node("cb-node0")
    # --nodeport-addresses 198.19.128.0/24: not on the node's pod-gateway address.
    probe = [sys.executable, "-m", "harness.topology.servers.probe", "--json", "--timeout", "1"]
    out = subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", "--", *probe,
                          f"http://{node.ipv4}:32020/healthz"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["body"] == UPSTREAM_BODY_1
    out = subprocess.run(["nsenter", f"--net=/run/netns/{node.netns}", "--", *probe,
                          "http://198.18.0.1:32020/"], capture_output=True, text=True)
    assert out.returncode == 1 and "refused" in out.stderr
