"""Locust in distributed mode as the macro benchmark's realistic-scenario driver.

``run(netns, targets, users=..., spawn_rate=..., duration_s=...)`` starts,
inside network namespace *netns* (``ip netns exec``) and optionally inside a
project cgroup (socket-LB programs attached to a ``cb-*`` cgroup then see the
clients' connects), one headless locust master bound to 127.0.0.1 of that
namespace and *workers* worker processes that connect to it, all running
``bench/macro/locustfile.py`` (many users over many services, a fraction of the
requests on new connections with ``Connection: close``).  It waits for the
end with a hard timeout, kills every process group it started however the
run ends (timeout, Ctrl-C, exception), and returns the stats::

    {"users", "workers", "duration_s", "requests", "failures", "rps",
     "latency_ms": {"p50", "p90", "p99"}, "new_connection_fraction",
     "by_connection": {"keepalive"|"close": {"requests", "failures", "latency_ms"}},
     "per_target": {url: {"requests", "failures", "close"}}, "errors": {...}}

Stats come from two files the master writes when it quits: locust's own
``--json-file`` (requests, failures, timestamps: the totals) and the
locustfile's report (``CHAINBENCH_LOCUST_REPORT``: latency at microsecond
resolution, per target, error messages), which the workers ship to the master
with their regular stats reports.  Latency falls back to locust's histogram
(whole milliseconds below 100 ms) if the report is missing.

Locust never leaves the namespace: it has no update check or telemetry in
2.47 (OpenTelemetry only with ``--otel``, which is not passed; the locustfile
is a local path, never a URL), the web UI is off (``--headless``), LOCUST_* /
OTEL_* variables of the caller are dropped and locust's config files
(``~/.locust.conf``, ``./locust.conf``, ``./pyproject.toml``) are not read
(cwd and HOME are a scratch directory).  Targets must be IP literals, so no
name is ever resolved.

Adding worker machines
----------------------
The master counts on ``workers + remote_workers`` workers before it starts
(``--expect-workers``; it gives up after ``worker_wait_s``).  A worker on
another machine runs the same locustfile with the same targets::

    CHAINBENCH_LOCUST_TARGETS=targets.json \\
      .venv/bin/python -m locust -f bench/macro/locustfile.py --worker \\
      --master-host <master-ip> --master-port <port>

(``CHAINBENCH_LOCUST_CLOSE_FRACTION`` as on the master; ``targets.json`` a
copy of the JSON list of URLs.)  Call ``run(..., remote_workers=R,
master_bind="0.0.0.0", master_port=5557)``: by default the master binds
127.0.0.1 *inside the client pod's namespace*, which nothing outside that
namespace can reach.  For remote workers the namespace needs an address
routable from the worker machines (e.g. the node's underlay address with a
route to the pod, or a port forward into the namespace) and the master port
(``--master-bind-port``, the only port the master listens on) open.  The
remote workers' requests leave from *their* machine, i.e. through whatever
path reaches the service VIPs from there, not through this pod's datapath;
the targets must be reachable from there.  Users are spread evenly over all
workers, and the returned stats include the remote workers' requests.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

from harness import paths
from harness.host import cgroups
from harness.host import netns as _netns
from harness.host import procs as recorded
from harness.host.signals import shielded

REPO = str(paths.ROOT)
LOCUSTFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locustfile.py")

MAX_TARGETS = 100_000
MAX_USERS = 100_000
MAX_WORKERS = 64
MAX_DURATION_S = 3600
_GRACE_S = 30.0          # startup + stop + final reports, beyond the run time


class LocustRunError(RuntimeError):
    """Locust did not produce stats (start failure, timeout, crash)."""


def _python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def validate_targets(targets) -> list[str]:
    """The targets as a list of ``http://IP:PORT/`` URLs, or a one-line ValueError."""
    if isinstance(targets, (str, bytes)) or not isinstance(targets, (list, tuple)):
        raise ValueError("targets: must be a list of http://IP:PORT/ URLs")
    if not targets:
        raise ValueError("targets: empty; give at least one http://IP:PORT/ URL")
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"targets: {len(targets)} URLs, at most {MAX_TARGETS}")
    out = []
    for i, url in enumerate(targets):
        if not isinstance(url, str):
            raise ValueError(f"targets[{i}]: {url!r}: not a string")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"targets[{i}]: {url!r}: {e}") from None
        if parts.scheme != "http":
            raise ValueError(f"targets[{i}]: {url!r}: must be http://IP:PORT/")
        try:
            ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            raise ValueError(f"targets[{i}]: {url!r}: host must be an IP address "
                             "(no names are resolved)") from None
        if port is None or not 0 < port < 65536:
            raise ValueError(f"targets[{i}]: {url!r}: needs an explicit port 1-65535")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError(f"targets[{i}]: {url!r}: only http://IP:PORT/PATH")
        out.append(url)
    return out


def _check_args(netns: str, users: int, spawn_rate: float, duration_s: int, workers: int,
                remote_workers: int, close_fraction: float, timeout_s: float | None) -> None:
    if not isinstance(netns, str) or not netns.startswith(_netns.PREFIX):
        raise ValueError(f"netns {netns!r}: project namespaces are named {_netns.PREFIX}*")
    if not _netns.exists(netns):
        raise ValueError(f"netns {netns}: does not exist")
    if not isinstance(users, int) or not 1 <= users <= MAX_USERS:
        raise ValueError(f"users: {users!r}: must be an integer 1-{MAX_USERS}")
    if not (isinstance(spawn_rate, (int, float)) and spawn_rate > 0):
        raise ValueError(f"spawn_rate: {spawn_rate!r}: must be > 0")
    if not isinstance(duration_s, int) or not 1 <= duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s: {duration_s!r}: must be an integer 1-{MAX_DURATION_S}")
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers: {workers!r}: must be an integer 1-{MAX_WORKERS}")
    if not isinstance(remote_workers, int) or not 0 <= remote_workers <= MAX_WORKERS:
        raise ValueError(f"remote_workers: {remote_workers!r}: must be an integer 0-{MAX_WORKERS}")
    if not (isinstance(close_fraction, (int, float)) and 0.0 <= close_fraction <= 1.0):
        raise ValueError(f"close_fraction: {close_fraction!r}: must be 0..1")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s: {timeout_s!r}: must be > 0")


def _free_port(netns: str, host: str) -> int:
    result: list = []

    def probe() -> None:             # setns acts on the calling thread only
        try:
            with _netns.entered(netns):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host if host != "0.0.0.0" else "", 0))
                    result.append(s.getsockname()[1])
        except BaseException as e:  # noqa: BLE001 - re-raised below
            result.append(e)
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _child_env(scratch: str, targets_path: str, report_path: str, close_fraction: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LOCUST_", "OTEL_", "CHAINBENCH_LOCUST_"))}
    env.update(HOME=scratch, CHAINBENCH_LOCUST_TARGETS=targets_path,
               CHAINBENCH_LOCUST_REPORT=report_path,
               CHAINBENCH_LOCUST_CLOSE_FRACTION=repr(float(close_fraction)),
               PYTHONUNBUFFERED="1")
    return env


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM then SIGKILL the process group *proc* leads (its own session); its
    record goes (harness.host.procs)."""
    recorded.stop(proc, grace=grace_s)


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, errors="replace") as f:
            text = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _percentiles(hist: dict, scale_ms: float) -> dict:
    """p50/p90/p99 (ms) of a {value: count} histogram; value * scale_ms is ms."""
    items = sorted((float(k), int(n)) for k, n in hist.items() if int(n) > 0)
    total = sum(n for _, n in items)
    out = {}
    for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
        if not total:
            out[name] = None
            continue
        need = max(1, -(-int(q * total * 1_000_000) // 1_000_000))   # ceil(q * total)
        cum = 0
        for value, n in items:
            cum += n
            if cum >= need:
                out[name] = round(value * scale_ms, 3)
                break
    return out


def _merge_hists(*hists: dict) -> dict:
    merged: dict = {}
    for h in hists:
        for k, n in h.items():
            merged[k] = merged.get(k, 0) + n
    return merged


def parse_stats(locust_json: list, report: dict | None, *, users: int, workers: int,
                duration_s: int) -> dict:
    """The result dict from locust's ``--json-file`` entries and the locustfile's report."""
    entries = [e for e in locust_json if e.get("name") in ("keepalive", "close")]
    requests = sum(int(e["num_requests"]) for e in entries)
    failures = sum(int(e["num_failures"]) for e in entries)
    starts = [e["start_time"] for e in entries if e.get("start_time")]
    ends = [e["last_request_timestamp"] for e in entries if e.get("last_request_timestamp")]
    span = (max(ends) - min(starts)) if starts and ends else 0.0
    span = span if span > 0.5 else float(duration_s)
    by_mode = {e["name"]: e for e in entries}

    by_connection = {}
    for mode in ("keepalive", "close"):
        e = by_mode.get(mode, {})
        if report and report.get("hist", {}).get(mode):
            lat = _percentiles(report["hist"][mode], 0.001)
        else:
            lat = _percentiles(e.get("response_times", {}), 1.0)
        by_connection[mode] = {"requests": int(e.get("num_requests", 0)),
                               "failures": int(e.get("num_failures", 0)), "latency_ms": lat}
    if report and any(report.get("hist", {}).values()):
        latency = _percentiles(_merge_hists(*report["hist"].values()), 0.001)
        latency_source = "locustfile (1 us resolution)"
    else:
        latency = _percentiles(_merge_hists(*(e.get("response_times", {}) for e in entries)), 1.0)
        latency_source = "locust (1 ms resolution below 100 ms)"

    result = {
        "users": users, "workers": workers, "duration_s": duration_s,
        "requests": requests, "failures": failures,
        "rps": round(requests / span, 1) if requests else 0.0,
        "latency_ms": latency, "latency_source": latency_source,
        "new_connection_fraction": round(by_connection["close"]["requests"] / requests, 4) if requests else 0.0,
        "by_connection": by_connection,
    }
    if report:
        result["per_target"] = {url: {"requests": c[0], "failures": c[1], "close": c[2]}
                                for url, c in sorted(report.get("targets", {}).items())}
        result["errors"] = report.get("errors", {})
    return result


def run(netns: str, targets: list[str], *, users: int, spawn_rate: float, duration_s: int,
        workers: int = 2, cgroup: str | None = None, timeout_s: float | None = None,
        close_fraction: float = 0.3, remote_workers: int = 0, master_bind: str = "127.0.0.1",
        master_port: int | None = None, worker_wait_s: float = 30.0) -> dict:
    """Run the locust scenario against *targets* from namespace *netns*; see the module doc.

    *timeout_s* bounds the whole run (default: duration_s + worker_wait_s + 30 s);
    raises ValueError on bad arguments, LocustRunError when locust gives no stats.
    """
    targets = validate_targets(targets)
    _check_args(netns, users, spawn_rate, duration_s, workers, remote_workers, close_fraction,
                timeout_s)
    try:
        ipaddress.ip_address(master_bind)
    except ValueError:
        raise ValueError(f"master_bind: {master_bind!r}: must be an IP address") from None
    if cgroup is not None:
        cgroups.check_project_cgroup(cgroup)
        if not os.path.isdir(cgroup):
            raise ValueError(f"cgroup {cgroup}: does not exist")
    if timeout_s is None:
        timeout_s = duration_s + worker_wait_s + _GRACE_S

    scratch = recorded.scratch_dir("cb-locust-")
    procs: list[subprocess.Popen] = []
    logs: list[str] = []
    try:
        targets_path = os.path.join(scratch, "targets.json")
        with open(targets_path, "w") as f:
            json.dump(targets, f)
        report_path = os.path.join(scratch, "report.json")
        stats_prefix = os.path.join(scratch, "stats")      # locust appends .json
        env = _child_env(scratch, targets_path, report_path, close_fraction)
        port = master_port or _free_port(netns, master_bind)
        connect_host = "127.0.0.1" if master_bind in ("0.0.0.0", "127.0.0.1") else master_bind
        preexec = None
        if cgroup is not None:
            path = cgroup
            preexec = lambda: cgroups.enter(path)  # noqa: E731 - the child, before exec
        base = ["ip", "netns", "exec", netns, _python(), "-m", "locust", "-f", LOCUSTFILE,
                "--loglevel", "INFO"]
        master_cmd = [*base, "--master", "--headless", "--master-bind-host", master_bind,
                      "--master-bind-port", str(port),
                      "--expect-workers", str(workers + remote_workers),
                      "--expect-workers-max-wait", str(int(worker_wait_s)),
                      "-u", str(users), "-r", str(spawn_rate), "-t", f"{duration_s}s",
                      "--stop-timeout", "0", "--only-summary", "--json-file", stats_prefix]
        worker_cmd = [*base, "--worker", "--master-host", connect_host, "--master-port", str(port)]

        def start(cmd: list[str], name: str) -> subprocess.Popen:
            log = os.path.join(scratch, f"{name}.log")
            logs.append(log)
            with open(log, "wb") as out:
                proc = recorded.spawn("locust", cmd, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=out, cwd=scratch, env=env, new_session=True,
                                      preexec_fn=preexec)
            procs.append(proc)
            return proc

        deadline = time.monotonic() + timeout_s
        master = start(master_cmd, "master")
        for i in range(workers):
            start(worker_cmd, f"worker{i}")
        while master.poll() is None:
            if time.monotonic() > deadline:
                raise LocustRunError(f"locust did not finish within {timeout_s:.0f} s "
                                     f"(master: {_tail(logs[0])})")
            for i, w in enumerate(procs[1:]):
                if w.poll() not in (None, 0):
                    raise LocustRunError(f"locust worker{i} exited with {w.returncode}: "
                                         f"{_tail(logs[i + 1])}")
            time.sleep(0.1)
        for w in procs[1:]:           # they quit on the master's quit message
            try:
                w.wait(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass

        stats_file = f"{stats_prefix}.json"
        if not os.path.exists(stats_file):
            raise LocustRunError(f"locust master exited with {master.returncode} without stats: "
                                 f"{_tail(logs[0])}")
        with open(stats_file) as f:
            locust_json = json.load(f)
        report = None
        if os.path.exists(report_path):
            with open(report_path) as f:
                report = json.load(f)
        result = parse_stats(locust_json, report, users=users, workers=workers + remote_workers,
                             duration_s=duration_s)
        result["master_exit_code"] = master.returncode
        return result
    finally:
        with shielded():
            for proc in reversed(procs):
                _kill_group(proc, grace_s=2.0)
            recorded.remove_scratch(scratch)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.macro.locust_run NETNS URL... [-u N] [-r R] [-t S] [-w W]``: print the result JSON."""
    p = argparse.ArgumentParser(prog="python -m bench.macro.locust_run")
    p.add_argument("netns")
    p.add_argument("targets", nargs="+")
    p.add_argument("-u", "--users", type=int, default=10)
    p.add_argument("-r", "--spawn-rate", type=float, default=10.0)
    p.add_argument("-t", "--duration", type=int, default=10)
    p.add_argument("-w", "--workers", type=int, default=2)
    p.add_argument("--cgroup")
    p.add_argument("--close-fraction", type=float, default=0.3)
    args = p.parse_args(argv)
    try:
        result = run(args.netns, args.targets, users=args.users, spawn_rate=args.spawn_rate,
                     duration_s=args.duration, workers=args.workers, cgroup=args.cgroup,
                     close_fraction=args.close_fraction)
    except ValueError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    except LocustRunError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
