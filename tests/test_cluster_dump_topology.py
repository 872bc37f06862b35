"""``chainbench up --renumber`` on a real cluster's dump (tests/data/cluster-dump/cluster.yaml),
end to end: the mapping printed and saved, the topology built in the plan, one of the
dump's Services reached from one of its pods through the renumbered ClusterIP, then
``down`` leaves nothing.

Builds machine-global state: holds the file lock named by $CHAINBENCH_TOPOLOGY_LOCK
(when set) for its own ``up``..``down`` only.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.host import netns
from harness.topology.state import load_state

ROOT = Path(__file__).resolve().parent.parent
DUMP = ROOT / "tests" / "data" / "cluster-dump" / "cluster.yaml"
RENUMBER_MAP = "/run/chainbench/renumber.json"


def chainbench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def lock():
    path = os.environ.get("CHAINBENCH_TOPOLOGY_LOCK")
    f = open(path, "a") if path else None
    try:
        if f:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        if f:
            f.close()


def test_up_renumber_then_a_service_answers_then_down(lock):
    up = chainbench("up", "--renumber", "-f", str(DUMP))
    server = None
    try:
        assert up.returncode == 0, up.stderr
        assert f"renumbered {DUMP} into the address plan (saved in {RENUMBER_MAP}):" in up.stdout
        assert "  nodes: ip-10-0-1-23.ec2.internal -> cb-node0" in up.stdout
        assert "  cluster ips: 10.96.12.34 -> 198.19.0.2" in up.stdout
        assert "up: 2 nodes, 4 pods" in up.stdout
        with open(RENUMBER_MAP) as f:
            saved = json.load(f)
        assert saved["pod_ips"]["10.244.1.5"] == "198.18.0.11"
        state = load_state()
        web = state.pod("shop/web-7d9f8c6b5d-abcde")
        client = state.pod("shop/client-5c4f9b8d7-q2w3e")
        assert (web.node, web.ipv4, client.node, client.ipv4) == \
            ("cb-node0", "198.18.0.11", "cb-node1", "198.18.1.10")
        # the Service shop/web (one of its two backends serves) through its new ClusterIP
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{web.netns}", "--", sys.executable,
                                   "-m", "harness.topology.servers.echo_http", "--port", "8080",
                                   "--name", "web"], cwd=ROOT)
        probe = ["nsenter", f"--net=/run/netns/{client.netns}", "--", sys.executable, "-m",
                 "harness.topology.servers.probe", "--json", "--timeout", "2"]
        answered = None
        for _ in range(10):         # the other backend has no server: retry new connections
            out = subprocess.run([*probe, "http://198.18.0.11:8080/"], capture_output=True,
                                 text=True, cwd=ROOT)
            if out.returncode == 0:
                break
            time.sleep(0.3)
        assert out.returncode == 0, out.stderr       # the server is up, pod to pod
        for _ in range(20):
            out = subprocess.run([*probe, "http://198.19.0.2:80/"], capture_output=True,
                                 text=True, cwd=ROOT)
            if out.returncode == 0:
                answered = json.loads(out.stdout)
                break
        assert answered is not None and answered["body"].startswith("web"), out.stderr
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        down = chainbench("down")
        assert down.returncode == 0, down.stderr
    assert not os.path.exists(RENUMBER_MAP)
    assert not [n for n in netns.list_project() if n.startswith("cb-node")]
