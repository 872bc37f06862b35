"""The nodes' flow observers in a topology (minimal.yaml: two BPF nodes, three pods):
started by `chainbench up`, shown by `chainbench status`, served to `chainbench observe`
and to a gRPC client generated from Hubble's protos, restarted after a kill -9 with
their flows kept and none repeated, gone after `chainbench down`.

Events: each node's cb_events ring buffer receives records written by
tests/bpf/events_writer.bpf.c (loaded with the node's pin directory, so it writes
into the node's own ring buffer, or pins one where the datapath has none yet), with the
pods' real addresses and a port per record, so every flow is known to the test.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import json_format

from harness.bpf import Collection, Map
from harness.host import procs
from harness.node.node import Node
from harness.observe import supervise, where
from harness.observe.decode import EVENT_TRACE, event_record
from harness.observe.proto import flow_pb2, observer_pb2, observer_pb2_grpc
from harness.paths import STATE_ROOT
from harness.scenario import SCENARIO_DIR
from harness.topology import build
from tests.support import object_path
from tests.test_chaining import nothing_left

SCENARIO = str(SCENARIO_DIR / "minimal.yaml")
NODES = ("cb-node0", "cb-node1")
BUFFER = 63
CLIENT, BACKEND0, BACKEND1 = "198.18.0.2", "198.18.0.10", "198.18.1.10"


def chainbench(*args: str, check_rc: int | None = 0, timeout: float = 300):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


@pytest.fixture(scope="module")
def topology():
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    try:
        chainbench("up", "-f", SCENARIO, "--hubble-buffer-size", str(BUFFER))
        yield
    finally:
        build.down()
    assert nothing_left() == []


class Writer:
    """Writes trace records into a node's cb_events (its own, or one pinned for it)."""

    def __init__(self, node: str):
        home = Node(node)
        sizes = None
        pinned = os.path.join(home.pin_dir, where.EVENTS_MAP)
        if os.path.exists(pinned):
            with Map.from_pin(pinned) as m:
                sizes = {where.EVENTS_MAP: m.max_entries}
        self.coll = Collection.load(str(object_path("events_writer")), max_entries=sizes,
                                    pin_dir=home.pin_dir)

    def trace(self, src: str, dst: str, sport: int, dport: int = 80) -> None:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether
        pkt = bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))
        rec = event_record(EVENT_TRACE, pkt, subtype=0,
                           ktime_ns=time.clock_gettime_ns(time.CLOCK_MONOTONIC))
        self.coll.programs["write_event"].test_run(rec)


@pytest.fixture(scope="module")
def writers(topology):
    made = {n: Writer(n) for n in NODES}
    yield made
    for w in made.values():
        w.coll.close()


def stub(node: str):
    channel = grpc.insecure_channel(where.socket_target(Node(node)))
    return channel, observer_pb2_grpc.ObserverStub(channel)


def get_flows(node: str, **kwargs) -> list:
    channel, s = stub(node)
    with channel:
        return [r for r in s.GetFlows(observer_pb2.GetFlowsRequest(**kwargs), timeout=30)
                if r.HasField("flow")]


def get_flows_when_up(node: str) -> list:
    """get_flows, or [] while the node's observer is being restarted."""
    try:
        return get_flows(node)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return []


def ports(responses) -> list[int]:
    return [r.flow.l4.TCP.source_port for r in responses]


def wait_for(predicate, timeout: float = 10.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def mine(responses, lo: int, hi: int) -> list:
    return [r for r in responses if lo <= r.flow.l4.TCP.source_port < hi]


# --------------------------------------------------------------------------------- tests

def test_up_starts_one_observer_per_bpf_node_and_status_shows_it(topology):
    doc = json.loads(chainbench("status", "-o", "json").stdout)
    found = {o["node"]: o for o in doc["observers"]}
    assert sorted(found) == list(NODES)
    for node in NODES:
        o = found[node]
        assert o["running"] and o["observer_running"] and o["restarts"] == 0
        assert os.path.exists(where.socket_path(Node(node)))
        # The observer runs inside the node's namespace; its TCP port is there, not here.
        ns = os.readlink(f"/proc/{o['observer_pid']}/ns/net")
        assert ns == f"net:[{os.stat(f'/run/netns/{node}').st_ino}]"
        assert ns != os.readlink("/proc/self/ns/net")
        listen = subprocess.run(["ip", "netns", "exec", node, "ss", "-Htln", "sport", "= :4245"],
                                capture_output=True, text=True, check=True).stdout
        # grpc listens on an IPv6 socket bound to the v4-mapped loopback address.
        assert listen.split()[3] in ("127.0.0.1:4245", "[::ffff:127.0.0.1]:4245"), listen
    root = subprocess.run(["ss", "-Htln", "sport", "= :4245"], capture_output=True,
                          text=True).stdout
    assert "4245" not in root
    assert "Observer:" in chainbench("status").stdout


def test_grpc_get_flows_with_filters_follow_and_server_status(writers):
    w = writers["cb-node0"]
    for i in range(10):
        w.trace(CLIENT, BACKEND0 if i % 2 else BACKEND1, 41000 + i)
    flows = wait_for(lambda: len(mine(get_flows("cb-node0"), 41000, 41010)) == 10
                     and mine(get_flows("cb-node0"), 41000, 41010), what="10 flows")
    assert ports(flows) == list(range(41000, 41010))
    assert all(f.flow.node_name == "cb-node0" and f.node_name == "cb-node0" for f in flows)
    to_b0 = flow_pb2.FlowFilter(destination_ip=[BACKEND0])
    assert ports(mine(get_flows("cb-node0", whitelist=[to_b0]), 41000, 41010)) == \
        list(range(41001, 41010, 2))
    assert ports(mine(get_flows("cb-node0", blacklist=[to_b0]), 41000, 41010)) == \
        list(range(41000, 41010, 2))
    # Follow: a flow made after the call arrives; the call ends when cancelled.
    channel, s = stub("cb-node0")
    with channel:
        call = s.GetFlows(observer_pb2.GetFlowsRequest(
            follow=True, whitelist=[flow_pb2.FlowFilter(source_port=["41999"])]))
        time.sleep(0.5)
        w.trace(CLIENT, BACKEND0, 41999)
        got = next(r for r in call if r.HasField("flow"))
        call.cancel()
    assert got.flow.l4.TCP.source_port == 41999 and got.flow.IP.destination == BACKEND0
    channel, s = stub("cb-node0")
    with channel:
        status = s.ServerStatus(observer_pb2.ServerStatusRequest())
    assert status.max_flows == BUFFER and status.seen_flows >= status.num_flows >= 11
    assert status.num_connected_nodes.value == 1


def test_observe_json_lines_are_hubbles(writers):
    writers["cb-node1"].trace(BACKEND1, CLIENT, 42000)
    writers["cb-node0"].trace(CLIENT, BACKEND1, 42001)
    wait_for(lambda: mine(get_flows("cb-node1"), 42000, 42001), what="node1's flow")
    wait_for(lambda: mine(get_flows("cb-node0"), 42001, 42002), what="node0's flow")
    out = chainbench("observe", "-o", "json", "--last", "30").stdout.splitlines()
    assert 2 <= len(out) <= 30
    parsed = [json_format.Parse(line, observer_pb2.GetFlowsResponse(),
                                ignore_unknown_fields=False) for line in out]
    nodes = {p.node_name for p in parsed if 42000 <= p.flow.l4.TCP.source_port <= 42001}
    assert nodes == set(NODES)                              # both observers, merged
    times = [p.time.ToNanoseconds() for p in parsed]
    assert times == sorted(times)
    one = chainbench("observe", "-o", "json", "--node", "cb-node1", "--last", "5").stdout
    assert {json.loads(line)["node_name"] for line in one.splitlines()} == {"cb-node1"}


def test_kill_9_observer_is_restarted_and_keeps_its_flows_once(writers):
    w = writers["cb-node1"]
    for i in range(5):
        w.trace(BACKEND1, CLIENT, 43000 + i)
    before = wait_for(lambda: len(mine(get_flows("cb-node1"), 43000, 43005)) == 5
                      and get_flows("cb-node1"), what="5 flows")
    home = Node("cb-node1")
    old = supervise.status(home)
    os.kill(old["observer_pid"], signal.SIGKILL)
    for i in range(5, 8):                     # made while it is down: read by the next one
        w.trace(BACKEND1, CLIENT, 43000 + i)
    new = wait_for(lambda: (s := supervise.status(home)) and s["restarts"] == 1
                   and s["observer_running"] and s["observer_pid"] != old["observer_pid"]
                   and s, what="the restart")
    assert new["pid"] == old["pid"] and new["last_exit"] == -signal.SIGKILL
    after = wait_for(lambda: len(mine(got := get_flows_when_up("cb-node1"), 43000, 43008)) == 8
                     and got, timeout=30, what="8 flows after the restart")
    uuids = [r.flow.uuid for r in after]
    assert len(uuids) == len(set(uuids))
    keys = [(r.flow.time.ToNanoseconds(), r.flow.IP.source, r.flow.IP.destination,
             r.flow.l4.TCP.source_port) for r in after]
    assert len(keys) == len(set(keys))
    assert [r.flow.uuid for r in before] == uuids[:len(before)]      # the old ones, unchanged
    assert ports(mine(after, 43000, 43008)) == list(range(43000, 43008))
    doc = json.loads(chainbench("status", "-o", "json").stdout)
    assert next(o for o in doc["observers"] if o["node"] == "cb-node1")["restarts"] == 1


def test_observe_without_observers_and_down_leaves_nothing(writers):
    chainbench("down")
    leftovers = [p for p in os.listdir("/proc") if p.isdigit()
                 and b"harness.observe." in _cmdline(int(p))]
    assert leftovers == [] and procs.live() == {}
    assert not os.path.exists(STATE_ROOT) or not any(
        os.path.exists(os.path.join(STATE_ROOT, n, where.SOCKET_NAME)) for n in NODES)
    proc = chainbench("observe", check_rc=1)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["ERROR: no flow observer is running (`chainbench up` starts one on each "
                     "BPF node)"]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
