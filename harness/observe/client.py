"""``chainbench observe``'s work: asking the nodes' observers for flows, as ``hubble observe``
asks Hubble Relay, and merging their answers by time as Relay does.

``targets(node)`` finds the observers (each BPF node's Unix socket under its state
dir, harness.observe.where; no namespace needed), ``request(...)`` builds the
``GetFlowsRequest`` from ``hubble observe``'s options (``--last N``, ``--first N``,
``--all``, ``--follow``, ``--since``/``--until`` as RFC 3339 times or durations
before now such as ``5m`` or ``1h30m``; with none of them, the last 20 flows, as
hubble), and ``stream(request, targets)`` yields the nodes' responses in time order:

- without ``--follow``: every node's answer, merged by time; ``--last N`` / ``--first
  N`` then keep the last / first N of the merged flows (lost-event notices ride along);
- with ``--follow``: each node's stream on its own thread, merged through a short
  sorting window (Relay's sort buffer); a node whose observer restarts is asked again
  for what came after the last flow it sent.  It ends when the caller stops iterating
  (Ctrl-C): every call is cancelled and every channel closed.

No observer reachable: ``NoObserverError`` (one line, exit 1).  A node that cannot be
reached while others can is named in ``warnings``.
"""
from __future__ import annotations

import heapq
import itertools
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator, Sequence

from harness.errors import ChainbenchError, UsageError
from harness.node.node import Node
from harness.observe import where
from harness.paths import STATE_ROOT

#: hubble observe's default when no --last/--first/--all/--since/--until/--follow.
DEFAULT_LAST = 20
#: How long a follower holds flows to order them across nodes (Relay's sort window).
SORT_WINDOW_S = 0.1
RECONNECT_S = 0.5
CALL_TIMEOUT_S = 30.0


class NoObserverError(ChainbenchError, RuntimeError):
    """No flow observer answers (exit 1)."""


@dataclass
class Target:
    node: str
    address: str                    # unix:///run/chainbench/<node>/hubble.sock


@dataclass
class Result:
    """What ``stream`` met besides flows."""
    warnings: list[str] = field(default_factory=list)


def targets(node: str | None = None) -> list[Target]:
    """The observers to ask: *node*'s, or every node's whose socket exists."""
    if node is not None:
        home = Node(node)
        if not os.path.exists(where.socket_path(home)):
            raise NoObserverError(f"no flow observer is running on {node} (no "
                                  f"{where.socket_path(home)}; `chainbench up` starts one "
                                  "on each BPF node)")
        return [Target(node, where.socket_target(home))]
    found = []
    names = sorted(os.listdir(STATE_ROOT)) if os.path.isdir(STATE_ROOT) else []
    for name in names:
        try:
            home = Node(name)
        except ValueError:
            continue
        if os.path.exists(where.socket_path(home)):
            found.append(Target(name, where.socket_target(home)))
    if not found:
        raise NoObserverError("no flow observer is running (`chainbench up` starts one on "
                              "each BPF node)")
    return found


# ---------------------------------------------------------------------------- times

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_time(flag: str, text: str, now: float | None = None) -> int:
    """*text* as ns since the epoch: an RFC 3339 time (``2024-05-01T10:00:00Z``, with
    or without fraction and zone; a bare date) or a Go duration before now (``5m``,
    ``1h30m``, ``90s``) as hubble accepts them."""
    now = time.time() if now is None else now
    value = text.strip()
    pos, seconds = 0, 0.0
    for m in _DURATION.finditer(value):
        if m.start() != pos:
            break
        seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if value and pos == len(value):
        return int((now - seconds) * 1e9)
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected an RFC 3339 time (2024-05-01T10:00:00Z) "
                         "or a duration before now (5m, 1h30m)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


# -------------------------------------------------------------------------- request

def request(*, last: int | None = None, first: int | None = None, all_flows: bool = False,
            follow: bool = False, since: str | None = None, until: str | None = None,
            whitelist: Sequence = (), blacklist: Sequence = ()):
    """The GetFlowsRequest for ``hubble observe``'s options (checked as hubble does)."""
    from harness.observe.proto import observer_pb2
    if last is not None and first is not None:
        raise UsageError("--last and --first cannot be used together")
    if first is not None and follow:
        raise UsageError("--first cannot be used with --follow")
    if all_flows and (last is not None or first is not None):
        raise UsageError("--all cannot be used with --last or --first")
    for flag, n in (("--last", last), ("--first", first)):
        if n is not None and n < 1:
            raise UsageError(f"{flag} {n}: expected a number of flows >= 1")
    req = observer_pb2.GetFlowsRequest(follow=follow, whitelist=list(whitelist),
                                       blacklist=list(blacklist))
    now = time.time()
    if since:
        req.since.FromNanoseconds(parse_time("--since", since, now))
    if until:
        req.until.FromNanoseconds(parse_time("--until", until, now))
    if since and until and req.since.ToNanoseconds() > req.until.ToNanoseconds():
        raise UsageError(f"--since {since} is after --until {until}")
    if first is not None:
        req.first, req.number = True, first
    elif last is not None:
        req.number = last
    elif not (all_flows or follow or since or until):
        req.number = DEFAULT_LAST
    return req


# --------------------------------------------------------------------------- stream

def _time_ns(resp) -> int:
    return resp.time.seconds * 1_000_000_000 + resp.time.nanos


def _channel(target: Target):
    import grpc
    return grpc.insecure_channel(target.address)


def _unreachable(exc) -> bool:
    import grpc
    return isinstance(exc, grpc.RpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _bad_request(exc) -> str | None:
    import grpc
    if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return exc.details()
    return None


def stream(req, found: Sequence[Target], result: Result | None = None) -> Iterator:
    """The nodes' GetFlowsResponses in time order (see the module doc)."""
    result = Result() if result is None else result
    if req.follow:
        yield from _follow(req, found, result)
    else:
        yield from _collect(req, found, result)


def _collect(req, found: Sequence[Target], result: Result) -> Iterator:
    from harness.observe.proto import observer_pb2_grpc
    answers: dict[str, list] = {}
    errors: dict[str, BaseException] = {}

    def ask(target: Target) -> None:
        with _channel(target) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            try:
                answers[target.node] = list(stub.GetFlows(req, timeout=CALL_TIMEOUT_S))
            except Exception as exc:   # noqa: BLE001 - reported per node below
                errors[target.node] = exc

    threads = [threading.Thread(target=ask, args=(t,), daemon=True) for t in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _judge_errors(errors, found, result)
    merged = sorted(itertools.chain(*answers.values()), key=_time_ns)
    if req.number:
        flows = [i for i, r in enumerate(merged) if r.HasField("flow")]
        keep = flows[:req.number] if req.first else flows[-req.number:]
        if keep:
            merged = merged[keep[0]:keep[-1] + 1]
        else:
            merged = []
    yield from merged


def _judge_errors(errors: dict, found: Sequence[Target], result: Result) -> None:
    for exc in errors.values():
        detail = _bad_request(exc)
        if detail:
            raise UsageError(detail)
    if errors and len(errors) == len(found):
        node, exc = next(iter(errors.items()))
        if all(_unreachable(e) for e in errors.values()):
            raise NoObserverError("no flow observer answers ("
                                  + ", ".join(f"{t.node}: {t.address}" for t in found) + ")")
        raise ChainbenchError(f"{node}: GetFlows failed: {_describe(exc)}")
    for node, exc in errors.items():
        result.warnings.append(f"{node}: no flows from its observer ({_describe(exc)})")


def _describe(exc: BaseException) -> str:
    import grpc
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


def _probe(found: Sequence[Target]) -> dict[str, BaseException]:
    """ServerStatus to each node (in parallel): the nodes whose observer does not answer."""
    from harness.observe.proto import observer_pb2, observer_pb2_grpc
    errors: dict[str, BaseException] = {}

    def ask(target: Target) -> None:
        with _channel(target) as channel:
            try:
                observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                    observer_pb2.ServerStatusRequest(), timeout=5.0)
            except Exception as exc:   # noqa: BLE001 - reported per node
                errors[target.node] = exc
    threads = [threading.Thread(target=ask, args=(t,), daemon=True) for t in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


class _Failed:
    """A follower's call the observer refused (not a restart): raised by the reader."""

    def __init__(self, node: str, exc: BaseException):
        self.node, self.exc = node, exc


def _follow(req, found: Sequence[Target], result: Result) -> Iterator:
    from harness.observe.proto import observer_pb2, observer_pb2_grpc
    errors = _probe(found)
    _judge_errors(errors, found, result)
    live = [t for t in found if t.node not in errors]
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    calls: dict[str, object] = {}
    lock = threading.Lock()

    def pump(target: Target) -> None:
        ask = req
        with _channel(target) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)
            while not stop.is_set():
                call = stub.GetFlows(ask)
                with lock:
                    calls[target.node] = call
                if stop.is_set():
                    call.cancel()
                    return
                try:
                    for resp in call:
                        out.put(resp)
                        if resp.HasField("flow"):
                            # Asked again after a restart: what came after this one.
                            ask = observer_pb2.GetFlowsRequest()
                            ask.CopyFrom(req)
                            ask.number = 0
                            ask.since.FromNanoseconds(_time_ns(resp) + 1)
                    return                   # the stream ended (--until reached)
                except Exception as exc:     # noqa: BLE001 - cancelled, or the observer went
                    if stop.is_set():
                        return
                    if not _unreachable(exc):
                        out.put(_Failed(target.node, exc))
                        return
                    stop.wait(RECONNECT_S)   # restarted by its supervisor: ask again

    threads = [threading.Thread(target=pump, args=(t,), daemon=True) for t in live]
    for t in threads:
        t.start()
    heap: list = []
    order = itertools.count()
    try:
        while any(t.is_alive() for t in threads) or not out.empty() or heap:
            try:
                resp = out.get(timeout=SORT_WINDOW_S / 2)
                if isinstance(resp, _Failed):
                    detail = _bad_request(resp.exc)
                    if detail:
                        raise UsageError(detail)
                    raise ChainbenchError(f"{resp.node}: GetFlows failed: "
                                          f"{_describe(resp.exc)}")
                heapq.heappush(heap, (_time_ns(resp), next(order), time.monotonic(), resp))
            except queue.Empty:
                pass
            now = time.monotonic()
            while heap and (now - heap[0][2] >= SORT_WINDOW_S or len(heap) > 10_000):
                yield heapq.heappop(heap)[3]
    finally:
        stop.set()
        with lock:
            for call in calls.values():
                call.cancel()
        for t in threads:
            t.join(timeout=2.0)
