"""Hubble's own tools on chainbench's flows, on the connectivity-check topology.

* ``chainbench connectivity --flows`` records the flows of the suite: every line
  parses as Hubble's GetFlowsResponse (unknown fields rejected), every check
  shows in them (a pass FORWARDED both ways, an expected failure DROPPED for
  policy, from its client pod to its target);
* hubble-audit2policy (PyPI), a real Hubble client, turns that file into
  least-privilege CiliumNetworkPolicies; chainbench accepts them, and with them
  in place of the suite's own policies every connection the flows showed
  allowed still passes, while a connection they never showed is denied.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from harness import paths
from harness.observe.proto import observer_pb2
from harness.topology import connectivity
from harness.topology.state import load_state


SCENARIO = paths.ROOT / "bench" / "scenarios" / "connectivity-check.yaml"
AUDIT2POLICY = Path(sys.executable).with_name("hubble-audit2policy")


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"chainbench {' '.join(args)}: {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The topology up, the suite run once with --flows: (results, flows file)."""
    out = tmp_path_factory.mktemp("flows")
    run_cli("down", check=False)
    run_cli("up", "-f", str(SCENARIO))
    try:
        flows = out / "flows.json"
        proc = run_cli("connectivity", "--flows", str(flows), "-o", "json", check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield json.loads(proc.stdout), flows
    finally:
        run_cli("down", check=False)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_recorded_line_is_hubbles_get_flows_response(suite):
    _, flows = suite
    lines = flows.read_text().splitlines()
    assert len(lines) > 50
    for line in lines:
        json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)
        doc = json.loads(line)
        assert set(doc) == {"flow", "node_name", "time"}


def test_every_check_shows_in_the_flows_with_its_endpoints(suite):
    results, flows = suite
    by_uuid = {d["flow"]["uuid"]: d["flow"] for d in _lines(flows)}
    for r in results:
        assert r["status"] == "PASS", r
        proof = r["flows"]
        assert proof and proof["ok"], r
        shown = [by_uuid[u] for u in proof["uuids"]]
        client = next(c for c in connectivity.CHECKS if c.name == r["check"]).client
        if r["expect"] == "fail":
            (drop,) = shown
            assert drop["verdict"] == "DROPPED"
            assert drop["drop_reason_desc"] in ("POLICY_DENIED", "POLICY_DENY")
            assert drop["source"]["pod_name"] == client and drop["source"]["namespace"] == "default"
        else:
            forward, reply = shown
            assert forward["verdict"] == reply["verdict"] == "FORWARDED"
            assert forward["is_reply"] is False and reply["is_reply"] is True
            if not client.startswith("host:"):
                assert forward["source"]["pod_name"] == client
                assert reply["destination"]["pod_name"] == client


def test_observe_draws_the_recorded_flows_as_a_service_map(suite, tmp_path):
    from .test_servicemap import embedded
    page = tmp_path / "map.html"
    run_cli("observe", "--all", "--service-map", str(page))
    data = embedded(page.read_text())
    edges = {(e["data"]["source"], e["data"]["target"], e["data"]["label"]): e["data"]["verdict"]
             for e in data["edges"]}
    # a check that passed, through its service; one denied at the client's egress
    assert edges[("pod:default/pod-to-a", "svc:default/echo-a", "8080/TCP")] in ("forwarded",
                                                                                 "mixed")
    assert edges[("svc:default/echo-a", "pod:default/echo-a", "8080/TCP")] == "forwarded"
    assert edges[("pod:default/client-egress-deny", "pod:default/echo-a", "8080/TCP")] == "dropped"


def test_hubble_audit2policy_policies_keep_what_was_seen_and_deny_the_rest(suite, tmp_path):
    results, flows = suite
    cnps = tmp_path / "cnps.yaml"
    proc = subprocess.run([str(AUDIT2POLICY), str(flows), "--no-enrich", "--verdict", "FORWARDED",
                           "--single-file", str(cnps)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    generated = [d for d in yaml.safe_load_all(cnps.read_text()) if d]
    assert generated and all(d["kind"] == "CiliumNetworkPolicy" for d in generated)
    names = {d["metadata"]["name"] for d in generated}
    assert {"allow-echo-a", "allow-pod-to-a", "allow-echo-b"} <= names

    # The suite's pods and services, its own policies replaced by the generated ones.
    docs = [d for d in yaml.safe_load_all(SCENARIO.read_text())
            if d and d["kind"] not in ("CiliumNetworkPolicy", "NetworkPolicy")]
    scenario = tmp_path / "audited.yaml"
    scenario.write_text(yaml.safe_dump_all(docs + generated, sort_keys=False))
    check = run_cli("scenario", "check", str(scenario), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    try:
        for node in ("cb-node0", "cb-node1"):
            run_cli("policy", "apply", "--node", node, "-f", str(scenario))
        seen = [r["check"] for r in results if r["expect"] == "pass"]
        again = run_cli("connectivity", "-o", "json", *[f"--test=^{name}$" for name in seen],
                        check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        assert {r["check"] for r in json.loads(again.stdout) if r["status"] == "PASS"} == set(seen)
        # Never seen: pod-to-b-intra-node only ever talked to echo-b.
        state = load_state()
        with connectivity.Servers(state):
            probe = subprocess.run(
                ["nsenter", f"--net=/run/netns/{state.pod('pod-to-b-intra-node').netns}", "--",
                 sys.executable, "-m", "harness.topology.servers.probe",
                 f"http://{state.pod('echo-a').ipv4}:{connectivity.ECHO_PORT}/", "--timeout", "2"],
                capture_output=True, text=True, timeout=15,
                env={**os.environ, "PYTHONPATH": str(paths.ROOT)})
        assert probe.returncode != 0, probe.stdout
        denied = run_cli("observe", "--last", "50", "--verdict", "DROPPED", "--from-pod",
                         "default/pod-to-b-intra-node", "-o", "json")
        reasons = {json.loads(line)["flow"]["drop_reason_desc"]
                   for line in denied.stdout.splitlines() if line.strip()}
        assert reasons == {"POLICY_DENIED"}
    finally:
        run_cli("down", check=False)
