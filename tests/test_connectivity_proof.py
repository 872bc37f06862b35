"""Expected-fail connectivity checks pass only with proof from the datapath.

One bpf topology (connectivity-check.yaml, native routing) is built for the
module.  A check that must fail passes only when the drop counter of the
expected endpoint, direction and reason grew during it; a failure for any
other reason (here: the client's default route removed) is FAIL.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.topology import chaining, connectivity
from harness.topology import build
from harness.host import netns
from harness.node.endpoints import EndpointRegistry
from harness.scenario import SCENARIO_DIR, load_scenario
from harness.topology.state import scenario_with_real_addresses
from tests.test_chaining import nothing_left

SCENARIO = str(SCENARIO_DIR / "connectivity-check.yaml")


@pytest.fixture(scope="module")
def topology():
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    try:
        yield chaining.up(SCENARIO)
    finally:
        build.down()
    assert nothing_left() == []


@pytest.fixture(scope="module")
def scenario(topology):
    return scenario_with_real_addresses(load_scenario(SCENARIO), topology)


def _check(name: str) -> connectivity.Check:
    return next(c for c in connectivity.CHECKS if c.name == name)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "connectivity", *args],
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------ without a topology

def test_test_selects_and_excludes_like_cilium():
    names = lambda *p: [c.name for c in connectivity.select(connectivity.CHECKS, list(p))]
    assert names("pod-to-a") == ["pod-to-a", "pod-to-a-allowed-cnp", "pod-to-a-l3-denied-cnp"]
    assert names("pod-to-a", "!denied") == ["pod-to-a", "pod-to-a-allowed-cnp"]
    assert names("^echo-b$,^host-") == ["echo-b", "host-to-b-multi-node-clusterip",
                                         "host-to-b-multi-node-headless"]
    assert names("!multi-node,!intra-node") == [c.name for c in connectivity.CHECKS if not (
        "multi-node" in c.name or "intra-node" in c.name)]
    assert len(names("!multi-node", "!intra-node")) == 12


@pytest.mark.parametrize("pattern,message", [("pod-(", "--test 'pod-(': missing ),"),
                                             ("nothing-is-called-this", "no check matches")])
def test_bad_or_empty_test_selection_is_bad_input(pattern, message):
    proc = cli("--test", pattern)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------ on the topology

def test_expected_fail_checks_pass_with_the_drop_as_proof(topology):
    proc = cli("-o", "json")
    results = {r["check"]: r for r in json.loads(proc.stdout)}
    assert proc.returncode == 0, [r for r in results.values() if r["status"] != "PASS"]
    assert set(results) == {c.name for c in connectivity.CHECKS}
    assert all(r["status"] == "PASS" and r["flow_validation"] == "strict"
               for r in results.values())
    for check in connectivity.CHECKS:
        proof = results[check.name]["proof"]
        if check.expect == "pass":
            assert proof is None and results[check.name]["drops"] == []
            continue
        owner = check.client if check.drop_direction == "egress" else \
            check.target.partition(":")[2]
        pod = topology.pod(owner)
        assert proof["endpoint"] == pod.ref and proof["node"] == pod.node
        assert proof["endpoint_id"] == EndpointRegistry(pod.node).records[pod.ref].id
        assert (proof["reason"], proof["direction"]) == (check.drop_reason, check.drop_direction)
        assert proof["delta"] >= 1
        assert f"x{proof['delta']} counted on {pod.node} {pod.ref}" in results[check.name]["detail"]
    # Deny rules count 181, a missing allow 133.
    assert results["all-ingress-deny"]["proof"]["reason"] == 181
    assert results["pod-to-a-l3-denied-cnp"]["proof"]["reason"] == 133


def test_a_pass_check_that_fails_names_the_drop(topology, scenario):
    """A check expecting success from a client whose egress is denied fails, and its
    detail names the drop counted on the client's egress."""
    check = connectivity.Check("egress-deny-must-answer", "client-egress-deny", "svc:echo-a")
    [result] = connectivity.run(topology, scenario, checks=(check,))
    pod = topology.pod("client-egress-deny")
    assert result.status == "FAIL"
    assert f"dropped on {pod.node} {pod.ref}" in result.detail
    assert "egress: policy deny-rule drop (181) x" in result.detail


def test_not_applicable_is_counted_apart(topology):
    """Judged as the iptables datapath, policy checks are N/A: neither passed nor failed."""
    proc = cli("--datapath", "iptables", "--test", "pod-to-a,!allowed")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[2] for line in proc.stdout.splitlines()[1:-1]}
    assert rows == {"pod-to-a": "PASS", "pod-to-a-l3-denied-cnp": "N/A"}
    assert proc.stdout.splitlines()[-1] == "1 passed, 0 failed, 1 not applicable"


def test_a_denied_check_failing_for_broken_routing_is_a_failure(topology, scenario):
    """The reproducer of issue 12 finding 4: without a default route the request
    fails at once and no policy drop is counted; that is not the denial the check
    is about.  strict: FAIL (exit 1); warning: pass with a warning; disabled: the
    old judgement, labelled."""
    pod = topology.pod("default/pod-to-a-l3-denied-cnp")
    route = json.loads(netns.run(pod.netns, "ip", "-j", "route", "show", "default").stdout)[0]
    netns.run(pod.netns, "ip", "route", "del", "default")
    try:
        [result] = connectivity.run(topology, scenario, checks=(_check("pod-to-a-l3-denied-cnp"),))
        strict = cli("--test", "^pod-to-a-l3-denied-cnp$")
        warning = cli("--test", "^pod-to-a-l3-denied-cnp$", "--flow-validation", "warning",
                      "-o", "json")
        disabled = cli("--test", "^pod-to-a-l3-denied-cnp$", "--flow-validation", "disabled")
    finally:
        netns.run(pod.netns, "ip", "route", "add", "default", "via", route["gateway"],
                  "dev", route["dev"])
    assert result.status == "FAIL", result.detail
    assert "request failed (" in result.detail
    assert "no policy drop (133) was counted on " \
        f"{pod.node} {pod.ref} (endpoint {result.proof.watch.endpoint_id}) egress" in result.detail
    assert result.proof.delta == 0
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1] == "0 passed, 1 failed, 0 not applicable"
    [row] = json.loads(warning.stdout)
    assert warning.returncode == 0 and row["status"] == "PASS"
    assert "no policy drop (133) was counted" in row["warning"] and row["proof"]["delta"] == 0
    assert disabled.returncode == 0 and "flow validation disabled" in disabled.stdout
