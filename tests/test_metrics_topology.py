"""Metrics over HTTP in a topology: ``chainbench metrics serve`` inside a node's namespace,
``chainbench metrics scrape`` parsed with prometheus-client's text parser, a real
Prometheus (Debian's) scraping it inside that namespace and answering PromQL over its
HTTP API, and Hubble's end-to-end check: after the connectivity check,
``sum by (reason) (hubble_drop_total)`` returns the policy drops and
``rate(hubble_flows_processed_total[1m])`` is non-zero, scraped from the nodes' observers
(127.0.0.1:9965 in each node's namespace).

One bpf topology (connectivity-check.yaml, native routing) for the module; nothing
listens in the root namespace.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from harness.host import netns
from harness.observe.metrics import FlowMetrics, serve
from harness.observe.prometheus_run import Prometheus
from harness.observe.proto import flow_pb2
from harness.scenario import SCENARIO_DIR
from harness.topology import build, chaining, check_suites
from tests.test_chaining import nothing_left

SCENARIO = str(SCENARIO_DIR / "connectivity-check.yaml")
SERVE_PORT = 9966           # 9965 is the node observer's (Hubble's port)
OBSERVER_PORT = 9965


@pytest.fixture(scope="module")
def topology():
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    try:
        yield chaining.up(SCENARIO)
    finally:
        build.down()
    assert nothing_left() == []


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


class Served:
    """``chainbench metrics serve`` running in the background until stopped."""

    def __init__(self, node: str, port: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "metrics", "serve", "--node", node,
             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stdout.readline()
        if "serving" not in self.banner:
            self.proc.kill()
            raise AssertionError(f"serve did not start: {self.banner!r} {self.proc.stderr.read()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return self.proc.returncode, err

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def listening(port: int, netns_name: str | None) -> bool:
    cmd = ["ss", "-Hltn", f"sport = :{port}"]
    out = (netns.run(netns_name, *cmd).stdout if netns_name else
           subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return bool(out.strip())


def test_serve_listens_in_the_nodes_namespace_and_scrape_parses(topology):
    node = topology.nodes[0]
    with Served(node.name, SERVE_PORT) as served:
        assert f"namespace {node.netns}" in served.banner
        assert listening(SERVE_PORT, node.netns)
        assert not listening(SERVE_PORT, None), "the metrics port must not be in the root netns"
        done = cli("metrics", "scrape", "--node", node.name, "--port", str(SERVE_PORT))
        assert done.returncode == 0, done.stderr
        got = families(done.stdout)
        pressure = {s.labels["map_name"]: s.value for s in got["cilium_bpf_map_pressure"]}
        assert {"cb_ct4", "cb_lb4_services", "cb_policy"} <= set(pressure)
        assert all(0 <= v <= 1 for v in pressure.values())
        services = {s.labels["service"] for s in got["chainbench_service_packets"]}
        assert "default/echo-a" in services, services
        assert {s.labels["status"] for s in got["chainbench_conntrack_entries"]} == {"alive",
                                                                                   "expired"}
        code, err = served.stop(signal.SIGTERM)
    assert code == 143, err
    assert not listening(SERVE_PORT, node.netns)


def test_serve_ends_with_130_on_ctrl_c(topology):
    node = topology.nodes[0]
    with Served(node.name, SERVE_PORT) as served:
        code, err = served.stop(signal.SIGINT)
    assert code == 130 and err.strip() == "interrupted (SIGINT)", err
    assert not listening(SERVE_PORT, node.netns)


def test_scrape_with_nothing_listening_is_one_line_and_exit_1(topology):
    done = cli("metrics", "scrape", "--node", topology.nodes[0].name, "--port", "9967")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "nothing answers on http://127.0.0.1:9967/metrics" in done.stderr


def test_serve_on_a_taken_port_is_one_line_and_exit_1(topology):
    node = topology.nodes[0]
    with Served(node.name, SERVE_PORT):
        done = cli("metrics", "serve", "--node", node.name, "--port", str(SERVE_PORT))
    assert done.returncode == 1 and done.stderr.startswith("ERROR: metrics: cannot listen on")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_real_prometheus_scrapes_the_datapath_metrics(topology):
    node = topology.nodes[0]
    with Served(node.name, SERVE_PORT), \
            Prometheus(node.netns, [f"127.0.0.1:{SERVE_PORT}"], lifetime=120) as prom:
        assert not listening(prom.port, None)
        result = prom.wait_for('cilium_bpf_map_pressure{map_name="cb_ct4"}', bool)
        assert 0 <= float(result[0]["value"][1]) <= 1
        sizes = prom.query("chainbench_bpf_map_max_entries")
        assert {r["metric"]["map_name"] for r in sizes} >= {"cb_ct4", "cb_lb_stats"}
        up = prom.query('up{job="chainbench"}')
        assert [r["value"][1] for r in up] == ["1"]
        directory = prom.directory
    assert not os.path.exists(directory), "Prometheus's data directory is removed"
    assert not listening(9090, node.netns)


def test_a_real_prometheus_reads_hubbles_flow_metrics_with_hubbles_queries(topology):
    """FlowMetrics served by ``serve`` in the node's namespace, fed while Prometheus scrapes:
    the issue's PromQL (``sum by (reason) (hubble_drop_total)``, ``rate(...[1m])``) reads
    them as it would read Hubble's."""
    node = topology.nodes[0]
    registry = CollectorRegistry()
    flows = FlowMetrics(registry, ["drop:sourceContext=namespace", "flow", "tcp"])
    with netns.entered(node.netns):
        server = serve(registry, "127.0.0.1", 9968)
    with server, Prometheus(node.netns, ["127.0.0.1:9968"], lifetime=120) as prom:
        prom.wait_for('up{job="chainbench"} == 1', bool)
        denied = flow_pb2.Flow(verdict=2, drop_reason_desc=133,
                               event_type=flow_pb2.CiliumEventType(type=1, sub_type=133),
                               source=flow_pb2.Endpoint(namespace="default"))
        denied.l4.TCP.flags.SYN = True
        forwarded = flow_pb2.Flow(verdict=1, event_type=flow_pb2.CiliumEventType(type=4))
        forwarded.l4.TCP.flags.SYN = True
        forwarded.IP.ipVersion = 1
        flows.observe(denied)
        flows.observe(denied)
        for _ in range(12):                     # over three scrapes: a rate
            flows.observe(forwarded)
            time.sleep(0.25)
        drops = prom.wait_for("sum by (reason) (hubble_drop_total)",
                              lambda r: r and r[0]["value"][1] == "2")
        assert [(r["metric"], r["value"][1]) for r in drops] == [({"reason": "POLICY_DENIED"}, "2")]
        by_source = prom.query("sum by (source, protocol) (hubble_drop_total)")
        assert [r["metric"] for r in by_source] == [{"source": "default", "protocol": "TCP"}]
        rate = prom.wait_for('rate(hubble_flows_processed_total{type="Trace"}[1m])',
                             lambda r: r and float(r[0]["value"][1]) > 0)
        assert rate[0]["metric"]["subtype"] == "to-endpoint"
        prom.wait_for('hubble_tcp_flags_total{flag="SYN",family="IPv4"} == 12', bool)


def test_after_the_connectivity_check_prometheus_sees_the_policy_drops_and_flows(topology):
    """The issue's end-to-end check: every node's observer (started by `up`) serves Hubble's
    metrics and the datapath's own counters on 127.0.0.1:9965 of its namespace, and a real
    Prometheus there sees the suite's policy drops, flow rates and service packets."""
    proms = []
    try:
        for node in topology.nodes:
            proms.append(Prometheus(node.netns, [f"127.0.0.1:{OBSERVER_PORT}"],
                                    lifetime=240).start())
        for prom in proms:
            prom.wait_for('up{job="chainbench"} == 1', bool, timeout=30)
        results = check_suites.run_selected([], None, "strict")
        assert all(r.ok for r in results), [(r.check.name, r.detail) for r in results
                                             if not r.ok]
        denied = [r for r in results if r.check.expect == "fail"]
        assert denied, "the suite has checks that policy must deny"
        drops: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            drops = {}
            for prom in proms:
                for r in prom.query("sum by (reason) (hubble_drop_total)"):
                    reason = r["metric"]["reason"]
                    drops[reason] = drops.get(reason, 0) + float(r["value"][1])
            if drops.get("POLICY_DENIED", 0) >= len(denied):
                break
            time.sleep(1)
        assert drops.get("POLICY_DENIED", 0) >= len(denied), drops
        rates = [float(r["value"][1]) for prom in proms
                 for r in prom.query("rate(hubble_flows_processed_total[1m])")]
        assert rates and max(rates) > 0, rates
        pressure = [r for prom in proms
                    for r in prom.query('cilium_bpf_map_pressure{map_name="cb_ct4"}')]
        assert len(pressure) == len(proms) and all(float(r["value"][1]) > 0 for r in pressure)
        served = sum(float(r["value"][1]) for prom in proms for r in prom.query(
            'chainbench_service_packets_total{service="default/echo-a"}'))
        assert served > 0
    finally:
        for prom in proms:
            prom.stop()
