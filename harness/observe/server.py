"""Hubble's gRPC Observer service, served by a node's observer (grpcio).

``serve(observer, socket_path, listen)`` serves the ``observer.Observer`` service of
Cilium's observer.proto on the Unix socket and on *listen* (``127.0.0.1:4245``; the
observer has entered its node's namespace before) so the ``hubble`` CLI can use
``--server unix://...`` or, inside the namespace, ``--server localhost:4245``.

- ``GetFlows`` reads the observer's ring as Hubble's local observer does
  (pkg/hubble/observer/local_observer.go): ``first`` from the oldest flow, ``since``
  from the first flow at or after it, otherwise the last ``number`` flows matching
  the filters (all of them for 0), or, in follow mode without ``number``, only new
  ones; ``until`` ends the stream at the first flow after it; ``number`` bounds a
  non-follow request; ``follow`` then streams new flows until the client cancels.
  ``whitelist``/``blacklist`` are Hubble's FlowFilter lists (harness.observe.filters):
  a flow passes if it matches any whitelist filter (or there is none) and no
  blacklist filter.  LostEvents pass every filter, as in Hubble; a follower that
  falls behind the ring gets one from HUBBLE_RING_BUFFER.  ``first`` with
  ``follow`` is INVALID_ARGUMENT.
- ``ServerStatus``: flows in the ring, its capacity, flows seen, uptime, connected
  nodes (this one), version.
- ``GetNodes``: this node, NODE_CONNECTED, with the same counts (Hubble's local
  observer leaves it to Relay; chainbench has no relay, so each observer answers for
  its node).
- ``GetAgentEvents``/``GetDebugEvents``: UNIMPLEMENTED (no agent or debug events).
"""
from __future__ import annotations

import os
import time
from concurrent import futures
from typing import Iterator

import grpc

from harness.observe.proto import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2

#: Concurrent calls (each follower holds a worker until it cancels).
MAX_WORKERS = 32
#: How often a waiting follower checks that its client is still there.
FOLLOW_TICK_S = 0.5


def version() -> str:
    from harness.facts.version import package_version
    return f"chainbench-{package_version()}"


def _time_ns(entry) -> int:
    return entry.time.seconds * 1_000_000_000 + entry.time.nanos


def _is_lost(entry) -> bool:
    return entry.HasField("lost_events")


class Matcher:
    """Whether an entry passes the request's whitelist/blacklist (flows.filters)."""

    def __init__(self, whitelist, blacklist):
        whitelist, blacklist = list(whitelist), list(blacklist)
        self._none = not whitelist and not blacklist
        if not self._none:
            from harness.observe import filters
            self._selector = filters.FlowSelector(whitelist, blacklist)   # compiled once

    def __call__(self, entry) -> bool:
        if self._none or _is_lost(entry):
            return True
        return self._selector(entry.flow)


def start_index(entries: list, request, match: Matcher) -> int:
    """Where a request starts reading the ring's *entries* (oldest first; Hubble's
    newRingReader)."""
    has_since = request.HasField("since")
    if request.first and not has_since:
        return 0
    if request.follow and request.number == 0 and not has_since:
        return len(entries)
    since = request.since.ToNanoseconds() if has_since else None
    count = 0
    idx = len(entries)
    while idx > 0:
        entry = entries[idx - 1]
        if _is_lost(entry) or not match(entry):
            idx -= 1
            continue
        if since is not None:
            if _time_ns(entry) < since:
                break
        else:
            count += 1
            if count == request.number:
                idx -= 1
                break
        idx -= 1
    return idx


class ObserverService(observer_pb2_grpc.ObserverServicer):
    def __init__(self, observer):
        self.observer = observer

    # ------------------------------------------------------------------- flows

    def GetFlows(self, request, context) -> Iterator:
        if request.first and request.follow:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "first cannot be specified with follow")
        from harness.observe.filters import FilterError
        try:
            match = Matcher(request.whitelist, request.blacklist)
        except FilterError as exc:      # a filter this server cannot evaluate: say so
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ring = self.observer.ring
        start_seq, entries = ring.snapshot()
        idx = start_index(entries, request, match)
        since = request.since.ToNanoseconds() if request.HasField("since") else None
        until = request.until.ToNanoseconds() if request.HasField("until") else None
        sent = 0
        for entry in entries[idx:]:
            verdict = self._judge(entry, match, since, until)
            if verdict is None:
                return
            if verdict:
                if not request.follow and request.number and sent >= request.number:
                    return
                yield entry
                sent += not _is_lost(entry)
        if not request.follow:
            return
        seq = start_seq + len(entries)
        while context.is_active():
            if not ring.wait_after(seq, FOLLOW_TICK_S):
                continue
            missed, new = ring.after(seq)
            if missed:
                lost = flow_pb2.LostEvent(source=flow_pb2.HUBBLE_RING_BUFFER,
                                          num_events_lost=missed)
                notice = observer_pb2.GetFlowsResponse(lost_events=lost,
                                                       node_name=self.observer.name)
                notice.time.FromNanoseconds(time.time_ns())
                yield notice
            seq += missed + len(new)
            for entry in new:
                verdict = self._judge(entry, match, since, until)
                if verdict is None:
                    return
                if verdict:
                    yield entry

    @staticmethod
    def _judge(entry, match: Matcher, since: int | None, until: int | None) -> bool | None:
        """True: send it; False: skip it; None: past ``until``, the stream ends."""
        if _is_lost(entry):
            return True
        if until is not None or since is not None:
            t = _time_ns(entry)
            if until is not None and t > until:
                return None
            if since is not None and t < since:
                return False
        return match(entry)

    # ------------------------------------------------------------------ status

    def ServerStatus(self, request, context):
        obs = self.observer
        status = observer_pb2.ServerStatusResponse(
            num_flows=len(obs.ring), max_flows=obs.ring.capacity, seen_flows=obs.seen,
            uptime_ns=obs.uptime_ns(), version=version())
        status.num_connected_nodes.value = 1
        status.num_unavailable_nodes.value = 0
        return status

    def GetNodes(self, request, context):
        obs = self.observer
        node = observer_pb2.Node(
            name=obs.name, version=version(), address=f"unix://{obs.socket_path}",
            state=relay_pb2.NODE_CONNECTED, uptime_ns=obs.uptime_ns(),
            num_flows=len(obs.ring), max_flows=obs.ring.capacity, seen_flows=obs.seen)
        return observer_pb2.GetNodesResponse(nodes=[node])

    def GetAgentEvents(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetAgentEvents not implemented: "
                      "chainbench has no agent events")

    def GetDebugEvents(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetDebugEvents not implemented: "
                      "chainbench has no debug events")


def serve(observer, socket_path: str, listen: str | None = None) -> grpc.Server:
    """Start the Observer service for *observer* on unix:*socket_path* (a stale socket
    file is replaced) and on *listen* (host:port, none if empty); returns the server."""
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    observer.socket_path = socket_path
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS,
                                                    thread_name_prefix="cb-observer-grpc"),
                         maximum_concurrent_rpcs=MAX_WORKERS)
    observer_pb2_grpc.add_ObserverServicer_to_server(ObserverService(observer), server)
    server.add_insecure_port(f"unix:{socket_path}")
    if listen:
        if server.add_insecure_port(listen) == 0:
            raise OSError(f"cannot listen on {listen}")
    server.start()
    return server
