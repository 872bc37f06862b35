"""A real Prometheus (Debian's ``/usr/bin/prometheus``) run inside a project namespace,
scraping targets there, and queried over its HTTP API from inside that namespace.

``Prometheus(netns, targets)`` writes its own configuration (every target scraped each
``interval``) and data directory in a scratch directory, starts the server inside
*netns* (``ip netns exec``) listening on ``127.0.0.1:<port>`` of that namespace only,
recorded as a project process (harness.host.procs: ``chainbench down`` ends it and
empties its scratch directory if the caller was killed), and bounded in time
(``timeout --kill-after``: it ends after *lifetime* seconds whatever happens to its
caller).  Leaving the ``with`` block, or ``stop()``, ends it and removes its directory.
``query(promql)`` is an instant query (``/api/v1/query``); ``wait_for`` polls one until
a predicate holds.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterable

from harness.errors import ChainbenchError
from harness.host import netns, procs

BINARY = "/usr/bin/prometheus"
PORT = 9090


class PrometheusError(ChainbenchError, RuntimeError):
    pass


class Prometheus:
    def __init__(self, netns_name: str, targets: Iterable[str] = ("127.0.0.1:9965",), *,
                 interval: str = "1s", port: int = PORT, lifetime: float = 300,
                 binary: str = BINARY):
        if not netns_name.startswith(netns.PREFIX):
            raise PrometheusError(f"namespace {netns_name!r}: Prometheus runs only in the "
                                  f"project's ({netns.PREFIX}*) namespaces")
        self.netns, self.targets = netns_name, list(targets)
        self.interval, self.port, self.lifetime, self.binary = interval, port, lifetime, binary
        self.proc: subprocess.Popen | None = None
        self.directory: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ running
    def start(self, ready_timeout: float = 30) -> "Prometheus":
        if not os.access(self.binary, os.X_OK):
            raise PrometheusError(f"{self.binary} is not installed (ci/install-deps.sh installs "
                                  "Debian's prometheus)")
        self.directory = procs.scratch_dir("prometheus-")
        config = os.path.join(self.directory, "prometheus.yml")
        with open(config, "w") as f:
            json.dump({"global": {"scrape_interval": self.interval,
                                  "evaluation_interval": self.interval},
                       "scrape_configs": [{"job_name": "chainbench",
                                           "scrape_interval": self.interval,
                                           "scrape_timeout": self.interval,
                                           "static_configs": [{"targets": self.targets}]}]},
                      f)                                   # JSON is YAML
        log = open(os.path.join(self.directory, "prometheus.log"), "wb")
        argv = ["ip", "netns", "exec", self.netns,
                "timeout", "--kill-after=5", str(int(self.lifetime)),
                self.binary, f"--config.file={config}",
                f"--storage.tsdb.path={os.path.join(self.directory, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn"]
        try:
            with log:
                self.proc = procs.spawn("prometheus", argv, new_session=True,
                                        scratch=[self.directory], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL)
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}: "
                                      f"{self.log_tail()}")
            try:
                if self._get("/-/ready", timeout=1).startswith("Prometheus"):
                    return
            except PrometheusError:
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(os.path.join(self.directory or "", "prometheus.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """End the server (SIGTERM to its group, then SIGKILL) and remove its directory."""
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None
        if self.directory is not None:
            procs.remove_scratch(self.directory)
            self.directory = None

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ its API
    def _get(self, path: str, timeout: float = 5) -> str:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with netns.entered(self.netns):
            try:
                with opener.open(self.url + path, timeout=timeout) as resp:
                    return resp.read().decode()
            except urllib.error.HTTPError as exc:
                body = exc.read().decode(errors="replace")
                raise PrometheusError(f"prometheus {path}: HTTP {exc.code}: {body}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise PrometheusError(f"prometheus {path}: {getattr(exc, 'reason', exc)}") \
                    from None

    def query(self, promql: str) -> list[dict]:
        """The instant vector *promql* evaluates to: [{"metric": {...}, "value": [t, "v"]}]."""
        doc = json.loads(self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql})))
        if doc.get("status") != "success":
            raise PrometheusError(f"query {promql!r}: {doc.get('error', doc)}")
        return doc["data"]["result"]

    def targets_health(self) -> list[dict]:
        """Its scrape targets as /api/v1/targets reports them (health, lastError...)."""
        return json.loads(self._get("/api/v1/targets"))["data"]["activeTargets"]

    def wait_for(self, promql: str, predicate: Callable[[list[dict]], bool],
                 timeout: float = 30) -> list[dict]:
        """Poll *promql* until *predicate* holds on its result; the result."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"query {promql!r}: condition not met after "
                                      f"{timeout:.0f} s; last result {result}; targets "
                                      f"{[(t['scrapeUrl'], t['health'], t['lastError']) for t in self.targets_health()]}")
            time.sleep(0.5)

