"""The per-node flow observer: ``python -m harness.observe.observer --node cb-node0``.

Started (and restarted) by harness.observe.supervise for each BPF node.  It
enters the node's network namespace first (before any thread starts, so the
gRPC and metrics listeners are there), then:

- reloads the flows its predecessor recorded (harness.observe.store.FlowLog in the
  node's state dir) into the bounded ring (``--buffer-size``, Hubble's 4095 by
  default, the node setting ``chainbench up --hubble-buffer-size``);
- opens the node's pinned ``cb_events`` ring buffer and ``cb_events_lost``
  counter (bpf_src/lib/events.h).  A node without them (a datapath that emits no
  events) is said so once in the log and in ``ring_state``; the observer serves
  what it has and opens them as soon as they are pinned;
- reads batches of raw records (harness.observe.ringreader) and decodes them
  (harness.observe.flows.FlowBatch, with the node's context of the moment), stores
  each batch in the log *before* committing its consumer position (so a restarted
  observer neither loses nor repeats a record), then appends it to the ring and
  counts it in the metrics (grouped: FlowMetrics.observe_batch).  No ``flow.Flow``
  is built per event: a flow is built when GetFlows (or a metric's group) first
  asks for it, then kept; the log keeps the raw records with the context and clock
  offset they were decoded with, so the flows rebuilt after a restart are the same,
  uuids included;
- reports the datapath's lost records (the per-CPU ``cb_events_lost`` totals)
  and its own (records of the wrong size) as Hubble does: a ``LostEvent``
  (PERF_EVENT_RING_BUFFER per CPU, OBSERVER_EVENTS_QUEUE) in the ring;
- serves Hubble's Observer API (harness.observe.server) on the node's Unix socket
  and on 127.0.0.1:4245 of its namespace, and Hubble's metrics on 127.0.0.1:9965.

SIGTERM/SIGINT end it cleanly (the socket file is removed).

``python -m harness.observe.observer --bench`` measures the whole per-event path on
one core (``bench``): batches of synthetic records read through BatchReader's batch
path, decoded, enriched, stored in the log, kept in the ring and counted in the
metrics, by ``Observer.step`` itself.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Callable, Sequence

from harness.node.node import Node
from harness.observe import where
from harness.observe.store import (DEFAULT_CAPACITY, FlowLog, FlowRing, LazyEntries, Position,
                                   check_capacity, resume_position)

EVENT_SIZE = 224                      # struct cb_event (harness.observe.decode.EVENT_SIZE)
BATCH = 4096                          # records per read
#: Seconds the running observer lets records gather before reading a small batch, and
#: what counts as small: a batch's worth of 224-byte records (with their 8-byte headers).
COALESCE_S = 0.05
COALESCE_BYTES = BATCH * 232
METRICS_PORT = 9965                   # Hubble's metrics port
LOST_POLL_S = 1.0                     # how often cb_events_lost is read


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} observer[{os.getpid()}]: {msg}",
          file=sys.stderr, flush=True)


class Observer:
    """The observer's state: ring, log, counters, and the node's event maps once open.

    *build* turns a buffer of raw records into ``GetFlowsResponse``s (tests); by
    default a batch is kept as a harness.observe.flows.FlowBatch, its flows built
    when asked for with *context* (a harness.observe.flows.NodeContext; default:
    the node's, read again when it changed); *state_dir* and *pin_dir* default to
    the node's (tests give their own).
    """

    def __init__(self, node: str, *, capacity: int = DEFAULT_CAPACITY,
                 state_dir: str | None = None, pin_dir: str | None = None,
                 build: Callable[[bytes], list] | None = None, context=None,
                 log: Callable[[str], None] = _log):
        from harness.observe.proto import flow_pb2, observer_pb2
        self._flow_pb2, self._observer_pb2 = flow_pb2, observer_pb2
        self.node = Node(node)
        self.name = node
        self.capacity = check_capacity(capacity)
        self.state_dir = state_dir or self.node.state_dir
        self.pin_dir = pin_dir or self.node.pin_dir
        self.events_pin = os.path.join(self.pin_dir, where.EVENTS_MAP)
        self.lost_pin = os.path.join(self.pin_dir, where.LOST_MAP)
        self.ring = FlowRing(capacity)
        self.store = FlowLog(os.path.join(self.state_dir, "observer", "flows.log"), capacity)
        self.started_ns = time.monotonic_ns()
        self.seen = 0                         # flows observed (kept across restarts)
        self.lost_datapath = 0                # records the ring buffer had no room for
        self.lost_local = 0                   # records this observer could not use
        self._lost_reported: list[int] = []   # per-CPU cb_events_lost totals reported
        self.reader = None
        self._lost_map = None
        self._lost_polled = 0.0
        self.ring_state = "not opened"
        self._build = build
        self._fixed_context = context
        self._context = None                  # (NodeContext, its id, its JSON, FlowBuilder)
        self._restored: dict[int, object] = {}  # context id -> FlowBuilder (log reload)
        self._log = log
        self.metrics = None                   # harness.observe.metrics.FlowMetrics
        self._missing_said = False

    # ------------------------------------------------------------------ start-up

    def load(self) -> int:
        """Reload what the log holds into the ring; returns how many entries."""
        from harness.observe.store import RawRecords
        loaded = self.store.load()
        parse = self._observer_pb2.GetFlowsResponse.FromString
        self.ring.extend(self._restore(item) if isinstance(item, RawRecords) else parse(item)
                         for item in loaded.entries)
        self.seen = loaded.seen
        self._lost_reported = list(loaded.lost)
        if loaded.dropped_bytes:
            self._log(f"{self.store.path}: dropped a frame cut short ({loaded.dropped_bytes} "
                      "bytes; its records were not committed and are read again)")
        return loaded.count

    def _restore(self, item):
        """The FlowBatch of raw records from the log, built with the context they were
        first built with."""
        import socket
        from harness.observe import flows
        builder = self._restored.get(item.context_id)
        if builder is None:
            ctx = flows.NodeContext.from_json(item.context,
                                              ifname_fallback=socket.if_indextoname)
            builder = self._restored[item.context_id] = flows.FlowBuilder(self.name, ctx)
        return flows.FlowBatch.from_log(item, builder)

    def open_events(self) -> bool:
        """Open the node's pinned cb_events (and cb_events_lost) if pinned; True once open."""
        if self.reader is not None:
            return True
        if not os.path.exists(self.events_pin):
            self.ring_state = f"no {where.EVENTS_MAP} ring buffer is pinned at {self.events_pin}"
            if not self._missing_said:
                self._log(f"node {self.name}: {self.ring_state} (the datapath emits no flow "
                          "events yet); waiting for it")
                self._missing_said = True
            return False
        from harness.bpf import Map
        from harness.observe.ringreader import BatchReader
        with Map.from_pin(self.events_pin) as ring:
            reader = BatchReader(ring, EVENT_SIZE)
        resume = resume_position(self.store.position, reader.map_id, reader.consumer_pos)
        if resume is not None:
            self._log(f"the last stored batch ({self.store.position.start}..{resume}) was not "
                      "committed: committing it now (its records are already in the log)")
            reader.commit(resume)
        self.reader = reader
        if os.path.exists(self.lost_pin):
            self._lost_map = Map.from_pin(self.lost_pin)
        self.ring_state = f"reading {self.events_pin}"
        self._log(f"node {self.name}: {self.ring_state} (map id {reader.map_id}, "
                  f"{reader.size} bytes, consumer at {reader.consumer_pos})")
        return True

    def _current_context(self) -> tuple:
        """(NodeContext, id, JSON, FlowBuilder) of the node now: read again when the
        node's endpoints or cluster changed (pods added after the observer started)."""
        from harness.observe import flows
        cur = self._context
        if cur is None or (self._fixed_context is None and cur[0].is_stale()):
            ctx = self._fixed_context or flows.NodeContext.from_node(self.node)
            blob = ctx.to_json()
            cid = flows.context_id(blob)
            if cur is not None and cur[1] == cid:         # re-read, same facts
                cur = self._context = (ctx, cid, blob, cur[3])
            else:
                cur = self._context = (ctx, cid, blob, flows.FlowBuilder(self.name, ctx))
        return cur

    def _batch(self, batch) -> list:
        """A batch of records as the ring and the log keep it (FlowBatch), or, with a
        *build* of the caller's, its GetFlowsResponses."""
        if self._build is not None:
            return list(self._build(batch.data))
        from harness.observe import decode, flows
        _ctx, cid, blob, builder = self._current_context()
        return [flows.FlowBatch(builder, batch.data, offset_ns=decode.realtime_offset_ns(),
                                context_id=cid, context_blob=blob, map_id=self.reader.map_id,
                                start=batch.start)]

    # -------------------------------------------------------------------- reading

    def _lost_event(self, source: str, count: int, cpu: int | None = None):
        fp = self._flow_pb2
        lost = fp.LostEvent(source=fp.LostEventSource.Value(source), num_events_lost=count)
        if cpu is not None:
            lost.cpu.value = cpu
        resp = self._observer_pb2.GetFlowsResponse(lost_events=lost, node_name=self.name)
        resp.time.FromNanoseconds(time.time_ns())
        return resp

    def _datapath_lost(self) -> list:
        """LostEvents for what cb_events_lost counted since the last report, per CPU."""
        if self._lost_map is None:
            return []
        per_cpu = [int(v) for v in self._lost_map.lookup(0)]
        if len(self._lost_reported) != len(per_cpu):
            self._lost_reported = (self._lost_reported + [0] * len(per_cpu))[:len(per_cpu)]
        out = []
        for cpu, (now, before) in enumerate(zip(per_cpu, self._lost_reported)):
            if now > before:
                out.append(self._lost_event("PERF_EVENT_RING_BUFFER", now - before, cpu))
            elif now < before:               # the map was re-created: a new count
                if now:
                    out.append(self._lost_event("PERF_EVENT_RING_BUFFER", now, cpu))
        self.lost_datapath = sum(per_cpu)
        self._lost_reported = per_cpu
        return out

    def step(self, timeout: float = 0.2, coalesce: float = 0.0) -> int:
        """Wait up to *timeout* s for records and handle one batch; returns the entries
        added to the ring.  With *coalesce*, records that arrive while less than a batch
        is waiting are given that many seconds to gather first: the work per batch
        (decode, log, metrics) is paid once for many records instead of for each few
        (flows are then at most that much later)."""
        if not self.open_events():
            time.sleep(timeout)
            return 0
        got = self.reader.wait(timeout)
        if got and coalesce and self.reader.pending_bytes() < COALESCE_BYTES:
            time.sleep(coalesce)
        entries: list = []
        now = time.monotonic()
        if now - self._lost_polled >= LOST_POLL_S or got:
            self._lost_polled = now
            entries.extend(self._datapath_lost())
        batch = self.reader.read(BATCH) if got else None
        if batch is not None and batch.end > batch.start:
            if batch.count:
                entries.extend(self._flows(batch))
            if batch.odd:
                self.lost_local += batch.odd
                entries.append(self._lost_event("OBSERVER_EVENTS_QUEUE", batch.odd))
        elif not entries:
            return 0
        flows = sum(len(e) if isinstance(e, LazyEntries) else e.HasField("flow")
                    for e in entries)
        self.seen += flows
        if batch is not None and batch.end > batch.start:
            position = Position(self.reader.map_id, batch.start, batch.end)
        else:                                 # lost events only: no record consumed
            cons = self.reader.consumer_pos
            position = Position(self.reader.map_id, cons, cons)
        # Stored first, then committed: see harness.observe.store.
        self.store.append([e.log_item() if isinstance(e, LazyEntries) else e.SerializeToString()
                           for e in entries], position, self.seen, self._lost_reported)
        if batch is not None and batch.end > batch.start:
            self.reader.commit(batch.end)
        self.ring.extend(entries)
        self._feed_metrics(entries)
        return len(entries)

    def _flows(self, batch) -> list:
        """The batch's entries; a batch the decoder fails on is counted lost
        (OBSERVER_EVENTS_QUEUE) rather than crashing the observer on it again and again."""
        try:
            return self._batch(batch)
        except Exception as exc:   # noqa: BLE001 - reported as lost events, logged
            self.lost_local += batch.count
            self._log(f"{batch.count} records could not be turned into flows: "
                      f"{type(exc).__name__}: {exc}")
            return [self._lost_event("OBSERVER_EVENTS_QUEUE", batch.count)]

    def _feed_metrics(self, entries: Sequence) -> None:
        if self.metrics is None:
            return
        for e in entries:
            if isinstance(e, LazyEntries):
                self.metrics.observe_batch(e)
            elif e.HasField("flow"):
                self.metrics.observe(e.flow)
            else:
                self.metrics.observe_lost(e.lost_events)

    def uptime_ns(self) -> int:
        return time.monotonic_ns() - self.started_ns

    def close(self) -> None:
        self.ring.close()
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self._lost_map is not None:
            self._lost_map.close()
            self._lost_map = None
        self.store.close()


# ------------------------------------------------------------------------- metrics

def start_metrics(observer: Observer, port: int):
    """Hubble's flow metrics of this node and its datapath's own counters (read from the
    pinned maps at each scrape, services named from the node's context) on
    127.0.0.1:*port* of its namespace; returns the server to close, or None."""
    if not port:
        return None
    from harness.observe import metrics
    from harness.observe.datapath_metrics import DatapathCollector
    from prometheus_client import CollectorRegistry
    registry = CollectorRegistry()
    observer.metrics = metrics.FlowMetrics(registry)

    def service_names():
        ctx = observer._current_context()[0]
        return {k: (name, {}) for k, name in ctx.service_names().items()}
    registry.register(DatapathCollector(observer.name, pin_dir=observer.pin_dir,
                                        service_names=service_names))
    return metrics.serve(registry, "127.0.0.1", port)


# --------------------------------------------------------------------------- bench

def _synthetic_reader(records: bytes, total: int):
    """A BatchReader over an in-memory ring of *records* (ring-buffer slots: header then
    the record), handing out *total* records in all, the same records lap after lap
    (positions keep growing); its batches come from BatchReader's own fast path."""
    import numpy as np
    from harness.observe.ringreader import HDR_SIZE, Batch, BatchReader, _roundup

    class SyntheticReader(BatchReader):
        def __init__(self):                       # no map: the slots are in memory
            self.name, self.record_size, self.fd = "cb_events", EVENT_SIZE, -1
            self._epoll = self._prod = self._cons = None
            self._slot = _roundup(EVENT_SIZE)
            self._slot_dtype = np.dtype([("len", "<u4"), ("pg", "<u4"),
                                         ("rec", f"V{self._slot - HDR_SIZE}")])
            recs = np.frombuffer(records, dtype=f"V{EVENT_SIZE}")
            slots = np.zeros(len(recs), dtype=self._slot_dtype)
            slots["len"] = EVENT_SIZE
            slots["rec"] = recs.astype(f"V{self._slot - HDR_SIZE}")
            self._lap = len(recs)
            self._data = memoryview(slots.tobytes())
            self.map_id, self.size = 1, 1 << 30
            self._pos = self._done = 0

        consumer_pos = property(lambda self: self._pos)
        producer_pos = property(lambda self: (total - self._done) * self._slot + self._pos)

        def commit(self, position: int) -> None:
            self._done += (position - self._pos) // self._slot
            self._pos = position

        def wait(self, timeout: float) -> bool:
            return self._done < total

        def read(self, max_records: int = BATCH) -> Batch:
            n = min(max_records, total - self._done, self._lap - self._done % self._lap)
            at = (self._done % self._lap) * self._slot
            used, data, count = self._fast(at, n * self._slot)
            return Batch(self._pos, self._pos + used, data, count, EVENT_SIZE)

        def close(self) -> None:
            pass
    return SyntheticReader()


def bench(count: int = 1_000_000, runs: int = 5, capacity: int = DEFAULT_CAPACITY) -> dict:
    """Events/s the observer's whole per-event path reaches on one core: *count*
    synthetic records (decode.synthetic_records: every event type and layer) read in
    batches of BATCH, through ``Observer.step`` (decode, enrichment with
    flows.sample_context(), the log in a temporary state dir, the ring of *capacity*,
    Hubble's default metrics), *runs* times; the median and the range."""
    from prometheus_client import CollectorRegistry
    from harness.observe import decode, flows, metrics
    records = decode.synthetic_records(32 * BATCH)
    rates = []
    for _ in range(runs):
        state = tempfile.mkdtemp(prefix="cb-obs-bench-")
        try:
            obs = Observer("cb-bench", capacity=capacity, state_dir=state, pin_dir=state,
                           context=flows.sample_context(), log=lambda _m: None)
            obs.metrics = metrics.FlowMetrics(CollectorRegistry())
            obs.reader = _synthetic_reader(records, count)
            t0 = time.perf_counter()
            while obs.reader.wait(0):
                obs.step(0)
            elapsed = time.perf_counter() - t0
            if obs.seen != count:
                raise RuntimeError(f"bench: {obs.seen} flows seen of {count} records")
            obs.close()
        finally:
            shutil.rmtree(state, ignore_errors=True)
        rates.append(count / elapsed)
    return {"events": count, "batch": BATCH, "runs": runs, "median": statistics.median(rates),
            "min": min(rates), "max": max(rates)}


# ---------------------------------------------------------------------------- main

def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.observe.observer",
                                description="a node's flow observer (Hubble's Observer API)")
    p.add_argument("--node", required=True, help="the node (cb-node0)")
    p.add_argument("--netns", help="its network namespace, a cb-* one (default: the node's name)")
    p.add_argument("--buffer-size", type=int, help="flows kept (2^n - 1; default: the node's "
                                                   f"setting, else {DEFAULT_CAPACITY})")
    p.add_argument("--socket", help="the Unix socket (default: in the node's state dir)")
    p.add_argument("--listen", default=where.GRPC_ADDRESS,
                   help=f"TCP address inside the namespace ({where.GRPC_ADDRESS}; '' none)")
    p.add_argument("--metrics-port", type=int, default=METRICS_PORT,
                   help=f"metrics port on 127.0.0.1 inside the namespace ({METRICS_PORT}; 0 none)")
    p.add_argument("--state-dir", help="where the flows are kept (default: the node's)")
    p.add_argument("--pin-dir", help="where cb_events is pinned (default: the node's)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--bench"]:
        r = bench()
        print(f"observer: {r['events']:,} events (batches of {r['batch']}), {r['runs']} runs: "
              f"median {r['median']:,.0f} events/s (min {r['min']:,.0f}, max {r['max']:,.0f})")
        return 0
    args = _parse(argv)
    node = Node(args.node)
    netns_name = args.node if args.netns is None else args.netns
    stop = threading.Event()

    def _stop(signum, _frame) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    from harness.host import netns
    with netns.entered(netns_name):
        capacity = args.buffer_size or node.settings.hubble_buffer_size
        observer = Observer(args.node, capacity=capacity, state_dir=args.state_dir,
                            pin_dir=args.pin_dir)
        socket = args.socket or os.path.join(observer.state_dir, where.SOCKET_NAME)
        reloaded = observer.load()
        _log(f"node {args.node}: ring of {capacity} flows, {reloaded} reloaded from "
             f"{observer.store.path}, {observer.seen} seen before")
        from harness.observe import server
        grpc_server = server.serve(observer, socket, args.listen)
        metrics_server = None
        try:
            metrics_server = start_metrics(observer, args.metrics_port)
            _log(f"serving on unix://{socket}" + (f" and {args.listen}" if args.listen else "")
                 + f" in {netns_name}" + (f", metrics on 127.0.0.1:{args.metrics_port}"
                                           if metrics_server else ""))
            while not stop.is_set():
                observer.step(0.2, coalesce=COALESCE_S)
        finally:
            observer.close()
            grpc_server.stop(grace=1.0).wait()
            if metrics_server is not None:
                metrics_server.close()
            try:
                os.unlink(socket)
            except FileNotFoundError:
                pass
            _log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
