"""Hubble's Observer API as a node's observer serves it (harness.observe.server), called
with a client generated from the same protos, and `chainbench observe`'s client
(harness.observe.client) merging two observers, without a topology: the observers
read test ring buffers (tests/bpf/events_writer.bpf.c) pinned in test pin directories,
and serve on Unix sockets in temporary directories."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import grpc
import pytest

from harness.bpf import Collection
from harness.errors import UsageError
from harness.host import bpffs
from harness.observe import client, server
from harness.observe import observer as O
from harness.observe.proto import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2

from .support import object_path
from .test_observer_store import record, simple_builder

pytestmark = pytest.mark.test_run_only

_SEQ = iter(range(20_000, 30_000))


class Running:
    """An observer reading its own test ring and serving on a Unix socket."""

    def __init__(self, name: str, capacity: int = 63):
        self.pin = bpffs.test_pin_dir(next(_SEQ))
        self.state = tempfile.mkdtemp(prefix="cb-obs-", dir="/tmp")
        self.coll = Collection.load(str(object_path("events_writer")), pin_dir=self.pin)
        self.obs = O.Observer(name, capacity=capacity, state_dir=self.state, pin_dir=self.pin,
                              build=simple_builder(name), log=lambda _m: None)
        self.obs.load()
        self.socket = os.path.join(self.state, "hubble.sock")
        self.server = server.serve(self.obs, self.socket)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.obs.step(0.02)

    def write(self, ids, settle: bool = True) -> None:
        ids = list(ids)
        target = self.obs.ring.next_seq + len(ids)
        for i in ids:
            self.coll.programs["write_event"].test_run(record(i))
        if settle:                               # every record is in the ring
            deadline = time.monotonic() + 10
            while self.obs.ring.next_seq < target and time.monotonic() < deadline:
                time.sleep(0.01)

    def close(self) -> None:
        self.channel.close()
        self.stop.set()
        self.thread.join()
        self.server.stop(0).wait()
        self.obs.close()
        self.coll.close()
        shutil.rmtree(self.pin, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)


@pytest.fixture
def running():
    made = []

    def make(name: str = "cb-test-a", capacity: int = 63) -> Running:
        made.append(Running(name, capacity))
        return made[-1]
    yield make
    for r in made:
        r.close()


def ids(responses) -> list[int]:
    return [int(r.flow.uuid) for r in responses if r.HasField("flow")]


def port_filter(port: int) -> flow_pb2.FlowFilter:
    return flow_pb2.FlowFilter(source_port=[str(port)])


# --------------------------------------------------------------------------- GetFlows

def test_get_flows_number_first_since_until(running):
    r = running()
    r.write(range(10))
    get = lambda **kw: ids(r.stub.GetFlows(observer_pb2.GetFlowsRequest(**kw)))
    assert get() == list(range(10))                      # number 0: every flow
    assert get(number=3) == [7, 8, 9]                    # the last 3
    assert get(number=3, first=True) == [0, 1, 2]
    flows = list(r.stub.GetFlows(observer_pb2.GetFlowsRequest()))
    since = observer_pb2.GetFlowsRequest()
    since.since.CopyFrom(flows[4].time)
    assert ids(r.stub.GetFlows(since)) == list(range(4, 10))
    until = observer_pb2.GetFlowsRequest()
    until.until.CopyFrom(flows[5].time)
    assert ids(r.stub.GetFlows(until)) == list(range(6))
    both = observer_pb2.GetFlowsRequest(number=2)
    both.since.CopyFrom(flows[4].time)
    assert ids(r.stub.GetFlows(both)) == [4, 5]          # since first, then number


def test_first_with_follow_is_invalid_and_agent_events_unimplemented(running):
    r = running()
    with pytest.raises(grpc.RpcError) as err:
        list(r.stub.GetFlows(observer_pb2.GetFlowsRequest(first=True, follow=True)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        list(r.stub.GetAgentEvents(observer_pb2.GetAgentEventsRequest()))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_follow_streams_new_flows_until_cancelled(running):
    r = running()
    r.write(range(5))
    call = r.stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, follow=True))
    got = []

    def read() -> None:
        try:
            for resp in call:
                got.append(resp)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED
    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:  # the last 2, then new ones
        time.sleep(0.02)
    r.write(range(5, 8))                                 # made after the call
    while len(ids(got)) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    call.cancel()
    t.join(5)
    assert ids(got) == [3, 4, 5, 6, 7] and not t.is_alive()


def test_a_follower_behind_the_ring_gets_a_lost_event(running):
    r = running(capacity=7)
    call = r.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    time.sleep(0.2)
    # Hold the follower: the ring moves 7 + 10 past it before it reads again.
    with r.obs.ring._cond:
        r.write(range(17), settle=False)
        time.sleep(0.3)
    got = []
    for resp in call:
        got.append(resp)
        if ids(got) and ids(got)[-1] == 16:
            break
    call.cancel()
    lost = [g.lost_events for g in got if g.HasField("lost_events")
            and g.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER]
    assert ids(got)[-1] == 16 and len(ids(got)) + sum(x.num_events_lost for x in lost) == 17


# ------------------------------------------------------------------- status and nodes

def test_server_status_and_nodes_count_the_ring(running):
    r = running(capacity=15)
    r.write(range(20))
    status = r.stub.ServerStatus(observer_pb2.ServerStatusRequest())
    assert (status.num_flows, status.max_flows, status.seen_flows) == (15, 15, 20)
    assert status.num_connected_nodes.value == 1 and status.uptime_ns > 0
    assert status.version.startswith("chainbench-")
    nodes = r.stub.GetNodes(observer_pb2.GetNodesRequest()).nodes
    assert [(n.name, n.state, n.num_flows, n.max_flows, n.seen_flows) for n in nodes] == [
        ("cb-test-a", relay_pb2.NODE_CONNECTED, 15, 15, 20)]
    assert nodes[0].address == f"unix://{r.socket}"


# ---------------------------------------------------------------------- the CLI client

def test_client_merges_nodes_by_time_and_keeps_last_or_first(running):
    a, b = running("cb-test-a"), running("cb-test-b")
    for i in range(6):
        (a if i % 2 == 0 else b).write([i])
    found = [client.Target("cb-test-a", f"unix://{a.socket}"),
             client.Target("cb-test-b", f"unix://{b.socket}")]
    merged = list(client.stream(client.request(all_flows=True), found))
    assert ids(merged) == list(range(6))
    assert [m.node_name for m in merged] == ["cb-test-a", "cb-test-b"] * 3
    assert ids(client.stream(client.request(last=4), found)) == [2, 3, 4, 5]
    assert ids(client.stream(client.request(first=2), found)) == [0, 1]
    assert ids(client.stream(client.request(), found)) == list(range(6))   # default last 20


def test_client_follow_merges_and_ends_when_closed(running):
    a, b = running("cb-test-a"), running("cb-test-b")
    found = [client.Target("cb-test-a", f"unix://{a.socket}"),
             client.Target("cb-test-b", f"unix://{b.socket}")]
    gen = client.stream(client.request(follow=True), found)
    got = []

    def write() -> None:
        time.sleep(0.5)
        for i in range(4):
            (a if i % 2 == 0 else b).write([i])
    t = threading.Thread(target=write)
    t.start()
    for resp in gen:
        got.append(resp)
        if len(got) == 4:
            break
    gen.close()                                       # what Ctrl-C does: calls cancelled
    t.join()
    assert ids(got) == [0, 1, 2, 3]


def test_client_request_checks_options_as_hubble():
    for kwargs, message in (({"last": 2, "first": 2}, "--last and --first"),
                            ({"first": 2, "follow": True}, "--first cannot be used with"),
                            ({"last": 0}, "--last 0"),
                            ({"since": "yesterday"}, "--since 'yesterday'")):
        with pytest.raises(UsageError, match=message):
            client.request(**kwargs)
    now = time.time()
    assert abs(client.parse_time("--since", "5m", now) - (now - 300) * 1e9) < 1e3
    assert abs(client.parse_time("--since", "1h30m", now) - (now - 5400) * 1e9) < 1e3
    assert client.parse_time("--since", "2024-05-01T10:00:00Z") == 1714557600 * 10 ** 9
    assert client.parse_time("--since", "2024-05-01T12:00:00.5+02:00") == \
        1714557600 * 10 ** 9 + 500_000_000
    req = client.request(since="10s", until="2s")
    assert req.since.ToNanoseconds() < req.until.ToNanoseconds() and req.number == 0


def test_client_with_no_observer_says_so(tmp_path):
    dead = client.Target("cb-test-x", f"unix://{tmp_path}/none.sock")
    with pytest.raises(client.NoObserverError, match="no flow observer answers"):
        list(client.stream(client.request(last=1), [dead]))
    with pytest.raises(client.NoObserverError, match="no flow observer answers"):
        list(client.stream(client.request(follow=True), [dead]))
