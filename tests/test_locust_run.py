"""bench/macro/locust_run.py: locust in distributed mode (master + worker processes)
inside a cb- namespace against nginx servers, and its argument checks."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from bench.macro import locust_run
from harness.host import cgroups, netns
from harness.topology.servers import nginx

SERVERS = (("198.18.77.1", 8081), ("198.18.77.2", 8082), ("198.18.77.3", 8083))
LOG_FORMAT = "log_format cb '$http_connection $connection $connection_requests $status';"


def _start_nginx(ns: str, addr: str, port: int, name: str, scratch: list[str]) -> subprocess.Popen:
    cmd, directory = nginx.command(port, name, bind4=addr)
    scratch.append(directory)
    conf = cmd[cmd.index("-c") + 1]
    with open(conf) as f:
        text = f.read()
    # the test reads which requests came on which connection from the access log
    text = text.replace("access_log off;", f"{LOG_FORMAT} access_log {directory}/access.log cb;")
    with open(conf, "w") as f:
        f.write(text)
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_listening(ns: str, port: int, deadline: float) -> None:
    while not netns.run(ns, "ss", "-Hltn", f"sport = :{port}").stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"nginx on port {port} did not start")
        time.sleep(0.05)


@pytest.fixture
def servers():
    """A cb- namespace with three nginx servers on three addresses of a veth; yields (namespace, targets, access-log paths); removes everything."""
    assert nginx.available(), "nginx is not installed (make test installs nginx-light)"
    ns = f"cb-locust-test-{os.getpid()}"
    procs: list[subprocess.Popen] = []
    scratch: list[str] = []
    netns.create(ns)
    try:
        # a veth pair with both ends in the namespace (this kernel has no dummy)
        netns.run(ns, "ip", "link", "add", "cb-v0", "type", "veth", "peer", "name", "cb-v1")
        for addr, _ in SERVERS:
            netns.run(ns, "ip", "addr", "add", f"{addr}/24", "dev", "cb-v0")
        netns.run(ns, "ip", "link", "set", "cb-v0", "up")
        netns.run(ns, "ip", "link", "set", "cb-v1", "up")
        for i, (addr, port) in enumerate(SERVERS):
            procs.append(_start_nginx(ns, addr, port, f"svc{i}", scratch))
        deadline = time.monotonic() + 10
        for _, port in SERVERS:
            _wait_listening(ns, port, deadline)
        targets = [f"http://{addr}:{port}/" for addr, port in SERVERS]
        yield ns, targets, [os.path.join(d, "access.log") for d in scratch], procs
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for d in scratch:
            nginx.stop_scratch(d)
        netns.delete(ns)


def _read_access_logs(paths: list[str], procs: list[subprocess.Popen]) -> list[list[str]]:
    for p in procs:                   # stop nginx so that every line is written
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGQUIT)
    for p in procs:
        p.wait(timeout=10)
    out = []
    for path in paths:
        with open(path) as f:
            out.append([line.split() for line in f if line.strip()])
    return out


def _count_cgroup_procs(path: str, stop: threading.Event, seen: list[int]) -> None:
    while not stop.is_set():
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                seen.append(len(f.read().split()))
        except OSError:
            pass
        time.sleep(0.2)


def test_distributed_run_mixes_keepalive_and_new_connections(servers):
    ns, targets, logs, procs = servers
    cg = cgroups.create(f"cb-locust-test-{os.getpid()}")
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_count_cgroup_procs, args=(cg, stop, seen), daemon=True)
    watcher.start()
    try:
        start = time.monotonic()
        result = locust_run.run(ns, targets, users=10, spawn_rate=10, duration_s=5, workers=2,
                                cgroup=cg, timeout_s=35)
        took = time.monotonic() - start
    finally:
        stop.set()
        watcher.join()
        cgroups.remove(cg)
    print(f"\nlocust run took {took:.1f} s: {result}")

    assert result["users"] == 10 and result["workers"] == 2 and result["duration_s"] == 5
    assert result["requests"] > 0
    assert result["failures"] == 0, result.get("errors")
    assert result["rps"] > 0
    lat = result["latency_ms"]
    assert lat["p50"] is not None and 0 <= lat["p50"] <= lat["p90"] <= lat["p99"]
    # master + 2 workers ran inside the cgroup
    assert max(seen, default=0) >= 3

    # requests spread over the services, per locust's and per the servers' count
    per_target = result["per_target"]
    assert sum(1 for t in targets if per_target.get(t, {}).get("requests", 0) > 0) > 1
    assert sum(v["requests"] for v in per_target.values()) == result["requests"]

    # both connection modes, close ~30% of the requests
    by = result["by_connection"]
    assert by["keepalive"]["requests"] > 0 and by["close"]["requests"] > 0
    assert 0.15 < result["new_connection_fraction"] < 0.45

    lines = _read_access_logs(logs, procs)
    assert sum(1 for server in lines if server) > 1
    flat = [fields for server in lines for fields in server]
    close = [f for f in flat if f[0].lower() == "close"]
    keepalive = [f for f in flat if f[0] == "-"]
    assert close and keepalive
    assert all(f[3] == "200" for f in flat)
    # a close request is the only request of its connection
    assert all(f[2] == "1" for f in close)
    # keep-alive connections carry many requests
    assert max(int(f[2]) for f in keepalive) > 10
    # the servers saw what locust counted (the last in-flight requests at the
    # stop may be answered but not counted)
    assert len(flat) >= result["requests"]
    assert len(flat) - result["requests"] <= 10 * 2
    assert took < 35


@pytest.mark.parametrize("targets, message", [
    ([], "targets: empty"),
    ("http://198.18.77.1:80/", "targets: must be a list"),
    (["http://www.example.com:80/"], "host must be an IP address"),
    (["https://198.18.77.1:443/"], "must be http://IP:PORT/"),
    (["http://198.18.77.1/"], "needs an explicit port"),
    (["http://198.18.77.1:80/", 5], "targets[1]: 5: not a string"),
])
def test_bad_targets_one_line_value_error(targets, message):
    with pytest.raises(ValueError) as info:
        locust_run.run("cb-locust-never-created", targets, users=1, spawn_rate=1, duration_s=1)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_locustfile_and_repository_paths_exist():
    """locust_run moved into bench/macro/ with the locustfile, but its paths still went
    one directory up: locust found no bench/locustfile.py and every run failed."""
    assert os.path.isfile(locust_run.LOCUSTFILE), locust_run.LOCUSTFILE
    assert os.path.isfile(os.path.join(locust_run.REPO, "pyproject.toml")), locust_run.REPO


def test_bad_arguments_before_anything_starts():
    ok = ["http://198.18.77.1:80/"]
    with pytest.raises(ValueError, match="named cb-"):
        locust_run.run("default", ok, users=1, spawn_rate=1, duration_s=1)
    with pytest.raises(ValueError, match="does not exist"):
        locust_run.run(f"cb-locust-absent-{os.getpid()}", ok, users=1, spawn_rate=1, duration_s=1)


def test_parse_stats_falls_back_to_locust_histogram():
    entries = [
        {"name": "keepalive", "num_requests": 90, "num_failures": 0, "start_time": 100.0,
         "last_request_timestamp": 110.0, "response_times": {"1": 80, "3": 10}},
        {"name": "close", "num_requests": 10, "num_failures": 1, "start_time": 100.5,
         "last_request_timestamp": 109.0, "response_times": {"2": 9, "40": 1}},
    ]
    r = locust_run.parse_stats(entries, None, users=5, workers=2, duration_s=10)
    assert r["requests"] == 100 and r["failures"] == 1 and r["rps"] == 10.0
    assert r["new_connection_fraction"] == 0.1
    assert r["latency_ms"] == {"p50": 1.0, "p90": 3.0, "p99": 3.0}   # cumulative 80, 89, 99, 100
    assert "per_target" not in r


def test_timeout_kills_every_locust_process(servers):
    ns, targets, _, _ = servers
    start = time.monotonic()
    with pytest.raises(locust_run.LocustRunError, match="did not finish within 3 s"):
        locust_run.run(ns, targets, users=2, spawn_rate=2, duration_s=60, workers=2, timeout_s=3)
    assert time.monotonic() - start < 15
    # nothing but the test's nginx processes is left in the namespace
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    comms = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                comms.append(f.read().strip())
        except OSError:
            pass
    assert comms and set(comms) == {"nginx"}, comms
