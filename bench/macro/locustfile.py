"""Locust scenario of the macro benchmark: many users over many services, a mix
of keep-alive and new connections.

Self-contained (only locust is imported) so that a worker on another machine
needs this file and the targets, nothing else of the project.  Run by
``bench/macro/locust_run.py``; its docstring says how to add worker machines.

Environment:

``CHAINBENCH_LOCUST_TARGETS``
    path to a JSON file holding a list of ``"http://IP:PORT/"`` URLs (the
    services), or the JSON list itself.  Every request goes to one of them,
    picked at random.  Required.
``CHAINBENCH_LOCUST_CLOSE_FRACTION``
    fraction (0..1, default 0.3) of requests sent with ``Connection: close``
    on a connection opened for that request alone (new-connection
    behaviour); the others reuse the user's keep-alive connection to that
    service (one per user and service).
``CHAINBENCH_LOCUST_REPORT``
    where the master (or a non-distributed run) writes, when locust quits,
    what locust's own stats do not hold: latency at microsecond resolution
    per connection mode (locust rounds to whole milliseconds below 100 ms),
    requests/failures per target and the first error messages.  Workers ship
    their part with every stats report.  Optional.

Requests are named ``keepalive`` and ``close`` in locust's stats.
"""
from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, between, events, task
from locust.runners import MasterRunner, WorkerRunner

MODES = ("keepalive", "close")
_MAX_ERRORS = 20


def _load_targets() -> list[str]:
    raw = os.environ.get("CHAINBENCH_LOCUST_TARGETS", "").strip()
    if not raw:
        raise SystemExit("CHAINBENCH_LOCUST_TARGETS: not set (path to a JSON list of http://IP:PORT/ URLs)")
    if not raw.startswith("["):
        try:
            with open(raw) as f:
                raw = f.read()
        except OSError as e:
            raise SystemExit(f"CHAINBENCH_LOCUST_TARGETS: {raw}: {e.strerror}") from None
    try:
        targets = json.loads(raw)
    except ValueError as e:
        raise SystemExit(f"CHAINBENCH_LOCUST_TARGETS: not JSON: {e}") from None
    if (not isinstance(targets, list) or not targets
            or not all(isinstance(t, str) and t.startswith("http://") for t in targets)):
        raise SystemExit("CHAINBENCH_LOCUST_TARGETS: must be a non-empty JSON list of http:// URLs")
    return targets


def _close_fraction() -> float:
    raw = os.environ.get("CHAINBENCH_LOCUST_CLOSE_FRACTION", "0.3")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise SystemExit(f"CHAINBENCH_LOCUST_CLOSE_FRACTION: {raw!r}: must be a number 0..1")
    return value


TARGETS = _load_targets()
CLOSE_FRACTION = _close_fraction()


def bucket_us(response_time_ms: float) -> int:
    """Histogram bucket of a latency: whole microseconds below 1 ms, three
    significant digits above (at most 0.5% off)."""
    us = int(round(response_time_ms * 1000))
    if us < 1000:
        return max(us, 0)
    mag = 10 ** (len(str(us)) - 3)
    return int(round(us / mag)) * mag


class _Accumulator:
    """What this process saw since its last report (workers) or in total (master)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hist: dict[str, dict[str, int]] = {m: {} for m in MODES}
        self.targets: dict[str, list[int]] = {}      # url -> [requests, failures, close requests]
        self.errors: dict[str, int] = {}

    def add(self, mode: str, url: str, response_time_ms: float, exception) -> None:
        key = str(bucket_us(response_time_ms))
        hist = self.hist.setdefault(mode, {})
        hist[key] = hist.get(key, 0) + 1
        counts = self.targets.setdefault(url, [0, 0, 0])
        counts[0] += 1
        if exception is not None:
            counts[1] += 1
            msg = f"{mode} {url}: {exception!r}"[:300]
            if msg in self.errors or len(self.errors) < _MAX_ERRORS:
                self.errors[msg] = self.errors.get(msg, 0) + 1
        if mode == "close":
            counts[2] += 1

    def snapshot(self) -> dict:
        return {"hist": self.hist, "targets": self.targets, "errors": self.errors}

    def merge(self, data: dict) -> None:
        for mode, hist in data.get("hist", {}).items():
            mine = self.hist.setdefault(mode, {})
            for key, n in hist.items():
                mine[key] = mine.get(key, 0) + n
        for url, counts in data.get("targets", {}).items():
            mine = self.targets.setdefault(url, [0, 0, 0])
            for i, n in enumerate(counts[:3]):
                mine[i] += n
        for msg, n in data.get("errors", {}).items():
            if msg in self.errors or len(self.errors) < _MAX_ERRORS:
                self.errors[msg] = self.errors.get(msg, 0) + n


_acc = _Accumulator()
_env = None


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    global _env
    _env = environment


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, exception=None, url=None, **_kw) -> None:
    if name in MODES:
        _acc.add(name, url or "?", response_time or 0.0, exception)


@events.report_to_master.add_listener
def _on_report_to_master(client_id, data, **_kw) -> None:
    data["chainbench"] = _acc.snapshot()
    _acc.reset()


@events.worker_report.add_listener
def _on_worker_report(client_id, data, **_kw) -> None:
    if "chainbench" in data:
        _acc.merge(data["chainbench"])


@events.quit.add_listener
def _on_quit(exit_code, **_kw) -> None:
    # fired after the master's runner.quit(), i.e. after the workers' final reports
    path = os.environ.get("CHAINBENCH_LOCUST_REPORT")
    if not path or _env is None or isinstance(_env.runner, WorkerRunner):
        return
    report = {"distributed": isinstance(_env.runner, MasterRunner),
              "close_fraction": CLOSE_FRACTION, "targets_configured": len(TARGETS), **_acc.snapshot()}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, path)


class ServiceUser(FastHttpUser):
    """One client: each task is one GET to a random service, keep-alive or
    on a new connection with ``Connection: close``."""

    host = TARGETS[0]              # requests use absolute URLs; locust wants a host
    wait_time = between(0, 0.01)
    network_timeout = 10.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        # a second session for the close requests: its connections never carry
        # a keep-alive request, so every close request opens its own connection
        # lazy: locust loads this file itself; its fasthttp client only once users start
        from locust.contrib.fasthttp import FastHttpSession
        self.fresh = FastHttpSession(base_url=self.host, request_event=self.environment.events.request,
                                     user=self, network_timeout=self.network_timeout,
                                     connection_timeout=self.connection_timeout, max_retries=0,
                                     concurrency=1)

    @task
    def request(self) -> None:
        url = random.choice(TARGETS)
        if CLOSE_FRACTION and random.random() < CLOSE_FRACTION:
            self.fresh.get(url, name="close", headers={"Connection": "close"})
            # the server closed its side; drop the client too so that a server
            # ignoring the header still gets a new connection next time
            self.fresh.client.clientpool.close()
        else:
            self.client.get(url, name="keepalive")
