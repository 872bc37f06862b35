"""The observer's reading and keeping of flows, without a topology: the batch reader of
a ring buffer (tests/bpf/events_writer.bpf.c writes whole struct cb_event records into a
small cb_events ring, pinned in a test pin directory), the flow log and its restart
rules, the bounded ring, and the Observer over them (harness.observe.ringreader, store,
observer)."""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest

from harness.bpf import Collection
from harness.host import bpffs
from harness.observe import observer as O
from harness.observe.decode import EVENT_DTYPE, EVENT_SIZE, EVENT_TRACE, event_record
from harness.observe.proto import observer_pb2
from harness.observe.ringreader import BatchReader
from harness.observe.store import FlowLog, FlowRing, Position, RawRecords, resume_position

from .support import object_path

pytestmark = pytest.mark.test_run_only

_SEQ = iter(range(100, 10_000))


def record(i: int) -> bytes:
    """A trace record whose ktime_ns is *i* (what the tests identify records by)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    pkt = bytes(Ether() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1000 + i % 50000,
                                                                        dport=53))
    return event_record(EVENT_TRACE, pkt, ktime_ns=i)


@pytest.fixture
def ring():
    """(collection of events_writer pinned in a test pin dir, pin dir)."""
    pin = bpffs.test_pin_dir(next(_SEQ))
    opened = []

    def load(**rodata):
        coll = Collection.load(str(object_path("events_writer")), rodata=rodata or None,
                               pin_dir=pin)
        opened.append(coll)
        return coll
    yield load, pin
    for coll in opened:
        coll.close()
    shutil.rmtree(pin, ignore_errors=True)


@pytest.fixture
def state_dir():
    path = tempfile.mkdtemp(prefix="cb-obs-", dir="/tmp")     # short: a Unix socket lives here
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(coll, ids) -> None:
    prog = coll.programs["write_event"]
    for i in ids:
        prog.test_run(record(i))


def ktimes(data: bytes) -> list[int]:
    return [int(x) for x in np.frombuffer(data, dtype=EVENT_DTYPE)["ktime_ns"]]


# ------------------------------------------------------------------------ batch reader

def test_batches_come_in_order_and_only_a_commit_moves_the_consumer(ring):
    load, _pin = ring
    coll = load()
    write(coll, range(10))
    with BatchReader(coll.maps["cb_events"], EVENT_SIZE) as reader:
        batch = reader.read(4)
        assert (batch.count, ktimes(batch.data)) == (4, [0, 1, 2, 3])
        assert reader.read(4).data == batch.data          # not committed: read again
        reader.commit(batch.end)
        assert reader.consumer_pos == batch.end
    # A new reader (a restarted observer) starts where the kernel's consumer position is.
    with BatchReader(coll.maps["cb_events"], EVENT_SIZE) as reader:
        rest = reader.read()
        assert ktimes(rest.data) == list(range(4, 10))
        reader.commit(rest.end)
        assert reader.read().count == 0 and not reader.wait(0.01)
        with pytest.raises(ValueError, match="only grow"):
            reader.commit(batch.end)


def test_a_full_ring_counts_lost_records_and_wraps(ring):
    load, _pin = ring
    coll = load()
    capacity = (1 << 14) // (EVENT_SIZE + 8)         # 70 records of 232 bytes
    write(coll, range(100))
    lost = sum(coll.maps["cb_events_lost"].lookup(0))
    assert lost == 100 - capacity
    got = []
    with BatchReader(coll.maps["cb_events"], EVENT_SIZE) as reader:
        for start in (0, 1000, 2000):                  # three times round the ring
            while True:
                batch = reader.read(16)
                if not batch.count:
                    break
                got += ktimes(batch.data)
                reader.commit(batch.end)
            write(coll, range(start + 1000, start + 1050))
        got += ktimes(reader.read().data)
    assert got == (list(range(capacity)) + list(range(1000, 1050)) + list(range(2000, 2050))
                   + list(range(3000, 3050)))


def test_discarded_and_odd_sized_records(ring):
    load, _pin = ring
    normal, discard, short = load(), load(discard=1), load(short_record=1)
    write(normal, [1])
    write(discard, [2])
    write(short, [3])
    write(normal, [4])
    with BatchReader(normal.maps["cb_events"], EVENT_SIZE) as reader:
        batch = reader.read()
    assert ktimes(batch.data) == [1, 4] and batch.odd == 1 and batch.count == 2


# ----------------------------------------------------------------------------- ring

def test_flow_ring_keeps_the_last_capacity_entries_and_counts_what_a_reader_missed():
    with pytest.raises(ValueError, match="one less than a power of two"):
        FlowRing(100)
    r = FlowRing(7)
    r.extend(range(5))
    assert len(r) == 5 and r.snapshot() == (0, [0, 1, 2, 3, 4])
    r.extend(range(5, 12))
    assert len(r) == 7 and r.snapshot() == (5, list(range(5, 12)))
    assert r.after(3) == (2, list(range(5, 12)))
    assert r.after(10) == (0, [10, 11])
    assert not r.wait_after(12, 0.01) and r.wait_after(11, 0)


# ------------------------------------------------------------------------------ log

def test_flow_log_round_trip_a_torn_frame_and_compaction(state_dir):
    path = os.path.join(state_dir, "flows.log")
    log = FlowLog(path, capacity=3)
    assert log.load().entries == [] and log.position is None
    log.append([b"a", b"b"], Position(7, 0, 464), seen=2, lost=[0, 1])
    log.append([b"c"], Position(7, 464, 696), seen=3, lost=[0, 2])
    log.close()
    again = FlowLog(path, capacity=3).load()
    assert again.entries == [b"a", b"b", b"c"] and again.position == Position(7, 464, 696)
    assert (again.seen, again.lost) == (3, [0, 2])
    # A frame cut short by a kill is dropped (its batch was not committed).
    with open(path, "ab") as f:
        f.write(FlowLog._frame([b"d"], Position(7, 696, 928), 4, [0, 2])[:-1])
    log = FlowLog(path, capacity=3)
    loaded = log.load()
    assert loaded.entries == [b"a", b"b", b"c"] and loaded.dropped_bytes > 0
    assert loaded.position == Position(7, 464, 696)
    # The file holds at most 2 x capacity entries; past that, the last capacity.
    for i in range(10):
        log.append([b"e%d" % i], Position(7, 696 + i, 697 + i), seen=4 + i, lost=[])
        assert log._entries_in_file <= 6
    log.close()
    assert FlowLog(path, capacity=3).load().entries == [b"e7", b"e8", b"e9"]


def test_resume_position():
    stored = Position(map_id=5, start=100, end=300)
    assert resume_position(stored, 5, 100) == 300        # stored, killed before the commit
    assert resume_position(stored, 5, 300) is None       # committed
    assert resume_position(stored, 6, 100) is None       # another map (re-created)
    assert resume_position(None, 5, 0) is None


# ------------------------------------------------------------------------- observer

def simple_builder(node: str):
    """GetFlowsResponses carrying each record's time and source port: enough for the
    ring and log to be checked record by record (the real builder is flows.py's)."""
    from harness.observe.decode import decode

    def build(data: bytes) -> list:
        out = []
        for row in decode(data, offset_ns=0):
            resp = observer_pb2.GetFlowsResponse(node_name=node)
            resp.time.FromNanoseconds(int(row["wall_ns"]))
            resp.flow.time.CopyFrom(resp.time)
            resp.flow.node_name = node
            resp.flow.l4.UDP.source_port = int(row["sport"])
            resp.flow.uuid = f"{int(row['ktime_ns'])}"
            out.append(resp)
        return out
    return build


def new_observer(pin: str, state: str, capacity: int = 63) -> O.Observer:
    obs = O.Observer("cb-test-node", capacity=capacity, state_dir=state, pin_dir=pin,
                     build=simple_builder("cb-test-node"), log=lambda _m: None)
    obs.load()
    return obs


def drain(obs: O.Observer) -> None:
    while obs.reader is None or obs.reader.pending_bytes():
        obs.step(0.01)


def uuids(obs: O.Observer) -> list[str]:
    return [e.flow.uuid for e in obs.ring.snapshot()[1] if e.HasField("flow")]


def test_observer_without_a_pinned_ring_says_so(state_dir):
    obs = O.Observer("cb-test-node", state_dir=state_dir, pin_dir=state_dir,
                     build=simple_builder("n"), log=lambda _m: None)
    assert obs.step(0.01) == 0
    assert obs.ring_state.startswith("no cb_events ring buffer is pinned at")


def test_observer_restart_keeps_flows_and_duplicates_none(ring, state_dir):
    """Killed after storing a batch but before committing it, or before storing it: the
    next observer serves every flow once."""
    load, pin = ring
    coll = load()
    obs = new_observer(pin, state_dir)
    write(coll, range(10))
    drain(obs)
    assert uuids(obs) == [str(i) for i in range(10)] and obs.seen == 10

    # Killed between storing a batch and committing it.
    write(coll, range(10, 15))

    def killed(_pos):
        raise KeyboardInterrupt("kill -9")
    obs.reader.commit = killed
    with pytest.raises(KeyboardInterrupt):
        obs.step(0.01)
    obs.close()
    obs = new_observer(pin, state_dir)
    assert uuids(obs) == [str(i) for i in range(15)]
    write(coll, range(15, 18))
    drain(obs)
    assert uuids(obs) == [str(i) for i in range(18)] and obs.seen == 18

    # Killed while building the batch, before storing it: read again.
    write(coll, range(18, 20))
    build = obs._build

    def dying(_data):
        raise KeyboardInterrupt("kill -9")
    obs._build = dying
    with pytest.raises(KeyboardInterrupt):
        obs.step(0.01)
    obs._build = build
    obs.close()
    obs = new_observer(pin, state_dir)
    drain(obs)
    assert uuids(obs) == [str(i) for i in range(20)] and obs.seen == 20
    obs.close()


def test_observer_reports_lost_records_once(ring, state_dir):
    load, pin = ring
    coll = load()
    obs = new_observer(pin, state_dir, capacity=255)
    write(coll, range(100))                    # 30 find the ring full
    drain(obs)
    obs.step(0.01)
    lost = [e.lost_events for e in obs.ring.snapshot()[1] if e.HasField("lost_events")]
    assert sum(e.num_events_lost for e in lost) == 30 == obs.lost_datapath
    assert {e.source for e in lost} == {1}         # PERF_EVENT_RING_BUFFER
    obs.close()
    obs = new_observer(pin, state_dir, capacity=255)
    drain(obs)
    obs._lost_polled = 0
    obs.step(0.01)                               # nothing new lost: no new LostEvent
    assert sum(e.lost_events.num_events_lost for e in obs.ring.snapshot()[1]
               if e.HasField("lost_events")) == 30
    short = load(short_record=1)
    write(short, [1, 2])
    drain(obs)
    local = [e.lost_events for e in obs.ring.snapshot()[1] if e.HasField("lost_events")
             and e.lost_events.source == 2]      # OBSERVER_EVENTS_QUEUE
    assert [e.num_events_lost for e in local] == [2] and obs.lost_local == 2
    obs.close()


def test_observer_ring_is_bounded_and_reloads_only_its_capacity(ring, state_dir):
    load, pin = ring
    coll = load()
    obs = new_observer(pin, state_dir, capacity=15)
    for start in range(0, 60, 20):
        write(coll, range(start, start + 20))
        drain(obs)
    assert uuids(obs) == [str(i) for i in range(45, 60)] and obs.seen == 60
    assert len(obs.ring) == 15
    obs.close()
    obs = new_observer(pin, state_dir, capacity=15)
    assert uuids(obs) == [str(i) for i in range(45, 60)] and obs.seen == 60
    obs.close()


# ------------------------------------------------- the observer's own path: raw records

def raw(ids, context=b'{"c":1}', start=0) -> "RawRecords":
    return RawRecords(b"".join(record(i) for i in ids), EVENT_SIZE, context_id=len(context),
                      context=context, offset_ns=-5, map_id=7, start=start)


def raw_ids(item) -> list[int]:
    return ktimes(item.records)


def test_flow_log_keeps_raw_records_with_their_context_once_per_file(state_dir):
    path = os.path.join(state_dir, "flows.log")
    log = FlowLog(path, capacity=7)
    log.load()
    log.append([raw(range(3)), b"lost"], Position(7, 0, 696), seen=3, lost=[])
    log.append([raw(range(3, 5), start=696)], Position(7, 696, 1160), seen=5, lost=[])
    log.close()
    with open(path, "rb") as f:
        assert f.read().count(b'{"c":1}') == 1              # the context: written once
    loaded = FlowLog(path, capacity=7).load()
    assert loaded.count == 6 and loaded.entries[1] == b"lost"
    first, _, second = loaded.entries
    assert raw_ids(first) == [0, 1, 2] and raw_ids(second) == [3, 4]
    assert (first.context, first.offset_ns, first.map_id, first.start, first.first) == \
        (b'{"c":1}', -5, 7, 0, 0)
    # Past 2 x capacity the file is rewritten with the last capacity entries: a run cut
    # keeps the index of its first record (its uuids) and its context comes along.
    log = FlowLog(path, capacity=7)
    log.load()
    log.append([raw(range(5, 13), context=b'{"c":22}', start=1160)], Position(7, 1160, 3016),
               seen=13, lost=[])
    log.close()
    loaded = FlowLog(path, capacity=7).load()
    (item,) = loaded.entries
    assert raw_ids(item) == list(range(6, 13)) and (item.start, item.first) == (1160, 1)
    assert item.context == b'{"c":22}' and loaded.count == 7


def lazy_observer(pin: str, state: str, capacity: int = 63) -> O.Observer:
    from harness.observe import flows as F
    ctx = F.NodeContext(endpoints=[F.EndpointInfo(1, 1001, "default", "a", ("k8s:app=a",),
                                                  "198.18.0.1")],
                        pods={"198.18.0.2": ("default", "b")})
    obs = O.Observer("cb-test-node", capacity=capacity, state_dir=state, pin_dir=pin,
                     context=ctx, log=lambda _m: None)
    obs.load()
    return obs


def served(obs: O.Observer) -> list[bytes]:
    return [e.SerializeToString() for e in obs.ring.snapshot()[1] if e.HasField("flow")]


def flow_ktimes(obs: O.Observer) -> list[int]:
    return [e.flow.l4.UDP.source_port - 1000 for e in obs.ring.snapshot()[1]
            if e.HasField("flow")]


def test_observer_keeps_raw_records_and_serves_the_same_flows_after_a_restart(ring, state_dir):
    """The observer's own path (no builder given): batches kept as records, flows built
    when served; killed between storing and committing a batch, the next observer serves
    every flow once, byte for byte the flows served before (uuids, times, endpoints)."""
    load, pin = ring
    coll = load()
    obs = lazy_observer(pin, state_dir)
    write(coll, range(10))
    drain(obs)
    assert flow_ktimes(obs) == list(range(10)) and obs.seen == 10
    before = served(obs)
    f = obs.ring.snapshot()[1][0].flow
    assert (f.source.pod_name, f.destination.pod_name, f.source.ID) == ("a", "b", 1)
    write(coll, range(10, 15))

    def killed(_pos):
        raise KeyboardInterrupt("kill -9")
    obs.reader.commit = killed
    with pytest.raises(KeyboardInterrupt):
        obs.step(0.01)
    obs.close()
    obs = lazy_observer(pin, state_dir)
    assert served(obs)[:10] == before and flow_ktimes(obs) == list(range(15))
    before = served(obs)
    write(coll, range(15, 18))
    drain(obs)
    assert served(obs)[:15] == before and flow_ktimes(obs) == list(range(18))
    uuids = [e.flow.uuid for e in obs.ring.snapshot()[1]]
    assert len(set(uuids)) == 18 and obs.seen == 18
    obs.close()


def test_observer_ring_of_raw_batches_is_bounded_and_reloads_the_same(ring, state_dir):
    load, pin = ring
    coll = load()
    obs = lazy_observer(pin, state_dir, capacity=15)
    for start in range(0, 60, 20):
        write(coll, range(start, start + 20))
        drain(obs)
    assert flow_ktimes(obs) == list(range(45, 60)) and obs.seen == 60 and len(obs.ring) == 15
    before = served(obs)
    obs.close()
    obs = lazy_observer(pin, state_dir, capacity=15)
    assert served(obs) == before and obs.seen == 60
    obs.close()


def test_observer_bench_runs_the_whole_path():
    """The benchmark drives every record through the observer's step (it raises when
    the observer saw fewer flows than records) and reports a rate per run.  How fast
    is the benchmark's to report (README), not a test's to assert on shared cores."""
    r = O.bench(count=20_000, runs=2)
    assert (r["events"], r["runs"]) == (20_000, 2)
    assert 0 < r["min"] <= r["median"] <= r["max"]
