"""Trace events from real traffic at every observation point (machine-wide).

A node at monitor aggregation `none` reports every packet at every point it has
a program: a TCP connection attempt from client (cb-node0) to backend-1
(cb-node1) on 8080, which the scenario's policies allow and where nothing
listens, leaves the pod (FROM_ENDPOINT, TO_STACK), node0's uplink (TO_NETWORK),
enters node1's (FROM_NETWORK) and the backend's veth (TO_ENDPOINT); the reset
comes back the same way.  The flows `chainbench observe` prints carry each of them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from harness.scenario import SCENARIO_DIR
from harness.topology import build
from tests.test_chaining import nothing_left

SCENARIO = str(SCENARIO_DIR / "minimal.yaml")
CLIENT, BACKEND1 = "198.18.0.2", "198.18.1.10"


def chainbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def every_packet():
    assert nothing_left() == []
    try:
        chainbench("up", "-f", SCENARIO, "--monitor-aggregation", "none")
        yield
    finally:
        build.down()
    assert nothing_left() == []


def test_a_connection_across_nodes_shows_at_every_observation_point(every_packet):
    connect = ("import socket, sys\n"
               "try:\n"
               f"    socket.create_connection(('{BACKEND1}', 8080), timeout=3)\n"
               "except ConnectionRefusedError:\n"
               "    sys.exit(0)\n"
               "sys.exit(1)\n")
    refused = subprocess.run(["ip", "netns", "exec", "cb-pod-default-client", sys.executable, "-c",
                              connect], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 0, refused.stderr      # answered (RST): both ways crossed
    points: dict[str, set[str]] = {}
    for _ in range(20):
        out = chainbench("observe", "--all", "-o", "json", "--protocol", "tcp", "--type", "trace").stdout
        points = {}
        for line in out.splitlines():
            flow = json.loads(line)["flow"]
            ends = (flow["IP"]["source"], flow["IP"]["destination"])
            if ends in ((CLIENT, BACKEND1), (BACKEND1, CLIENT)):
                points.setdefault(flow["trace_observation_point"], set()).add(
                    "request" if ends[0] == CLIENT else "reply")
        if len(points) == 5 and all(len(v) == 2 for v in points.values()):
            break
        time.sleep(0.25)
    assert points == {p: {"request", "reply"} for p in
                      ("FROM_ENDPOINT", "TO_STACK", "TO_NETWORK", "FROM_NETWORK", "TO_ENDPOINT")}
