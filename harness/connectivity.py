"""``chainbench connectivity``: Cilium's connectivity-check suite on a running topology.

Each check is one real exchange with a deadline (an HTTP GET, or a ping) from
a client pod (or a node's host network) to a target, with an expected
outcome: most must succeed, the policy checks must fail.  Servers are
started for the run (nginx in the echo pods, the host-network echo and the
world; harness/servers/nginx.py says why nginx) and stopped after it.  Host-network clients run in the node's ``cb-<node>-host``
cgroup, where socket LB translates service addresses, as Cilium's
kube-proxy replacement does for host processes.

The scenario is bench/scenarios/connectivity-check.yaml; checks name its
pods and services.  With the iptables or nftables datapaths, checks that
need network policy are reported "not applicable": enforcing policy is not
kube-proxy's job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness import cgroups, procs
from harness.topology.signals import shielded
from harness.topology.state import TopologyState

CHECK_TIMEOUT = 3.0
ECHO_PORT, HOST_ECHO_PORT, WORLD_PORT, HOSTPORT, NODEPORT = 8080, 41000, 80, 40000, 31313


@dataclass(frozen=True)
class Check:
    name: str
    client: str                 # pod name, or "host:<node>"
    target: str                 # see _resolve_target
    expect: str = "pass"        # "pass" or "fail"
    needs_policy: bool = False


CHECKS = (
    Check("echo-a", "pod-to-a", "pod:echo-a"),
    Check("echo-b", "pod-to-b-intra-node", "pod:echo-b"),
    Check("echo-b-host", "pod-to-a", "hostpod:echo-b-host"),
    Check("pod-to-a", "pod-to-a", "svc:echo-a"),
    Check("pod-to-a-allowed-cnp", "pod-to-a-allowed-cnp", "svc:echo-a", needs_policy=True),
    Check("pod-to-a-l3-denied-cnp", "pod-to-a-l3-denied-cnp", "svc:echo-a", "fail",
          needs_policy=True),
    Check("pod-to-b-intra-node", "pod-to-b-intra-node", "svc:echo-b"),
    Check("pod-to-b-intra-node-hostport", "pod-to-b-intra-node-hostport", "hostport:echo-b"),
    Check("pod-to-b-intra-node-nodeport", "pod-to-b-intra-node-nodeport", "nodeport:cb-node1"),
    Check("pod-to-b-multi-node-clusterip", "pod-to-b-multi-node-clusterip", "svc:echo-b"),
    Check("pod-to-b-multi-node-headless", "pod-to-b-multi-node-headless", "headless:echo-b-headless"),
    Check("pod-to-b-multi-node-hostport", "pod-to-b-multi-node-hostport", "hostport:echo-b"),
    Check("pod-to-b-multi-node-nodeport", "pod-to-b-multi-node-nodeport", "nodeport:cb-node1"),
    Check("host-to-b-multi-node-clusterip", "host:cb-node0", "svc:echo-b"),
    Check("host-to-b-multi-node-headless", "host:cb-node0", "headless:echo-b-headless"),
    Check("pod-to-external", "pod-to-external-1111", "world"),
    Check("all-ingress-deny", "pod-to-a", "pod:echo-ingress-deny", "fail", needs_policy=True),
    Check("all-egress-deny", "client-egress-deny", "svc:echo-a", "fail", needs_policy=True),
    Check("client-egress-to-cidr-deny", "client-cidr-deny", "world", "fail", needs_policy=True),
    Check("to-entities-world", "client-to-world", "world", needs_policy=True),
    Check("to-entities-world-only", "client-to-world", "svc:echo-a", "fail", needs_policy=True),
)

SERVERS = (("echo-a", ECHO_PORT), ("echo-b", ECHO_PORT), ("echo-ingress-deny", ECHO_PORT))


@dataclass
class Result:
    check: Check
    status: str                 # PASS, FAIL, N/A
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"


class ConnectivityError(RuntimeError):
    pass


def host_cgroup(node: str) -> str:
    return os.path.join(cgroups.cgroup2_mount(), f"cb-{node}-host")


def _python() -> str:
    return sys.executable


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _resolve_target(state: TopologyState, scenario, target: str) -> str:
    kind, _, name = target.partition(":")
    if kind == "world":
        return _url(state.world["ipv4"], WORLD_PORT)
    if kind == "pod":
        return _url(state.pod(name).ipv4, ECHO_PORT)
    if kind == "hostpod":
        return _url(state.node(state.pod(name).node).ipv4, HOST_ECHO_PORT)
    if kind == "svc":
        svc = scenario.service(name)
        return _url(str(svc.cluster_ip), svc.ports[0].port)
    if kind == "headless":
        # What DNS would answer for a headless service: its endpoints' addresses.
        slices = scenario.endpoint_slices_for(scenario.service(name))
        return _url(str(slices[0].endpoints[0].addresses[0]), slices[0].ports[0].port)
    if kind == "hostport":
        return _url(state.node(state.pod(name).node).ipv4, HOSTPORT)
    if kind == "nodeport":
        return _url(state.node(name).ipv4, NODEPORT)
    raise ConnectivityError(f"unknown check target {target!r}")


def _client_cmd(state: TopologyState, client: str, url: str) -> tuple[list[str], object]:
    probe = [_python(), "-m", "harness.servers.probe", url, "--timeout", str(CHECK_TIMEOUT - 0.5)]
    if client.startswith("host:"):
        node = state.node(client.split(":", 1)[1])
        path = host_cgroup(node.name)
        preexec = (lambda: cgroups.enter(path)) if os.path.isdir(path) else None
        return ["nsenter", f"--net=/run/netns/{node.netns}", "--", *probe], preexec
    return ["nsenter", f"--net=/run/netns/{state.pod(client).netns}", "--", *probe], None


def _run_check(state: TopologyState, scenario, check: Check, datapath: str) -> Result:
    start = time.monotonic()
    if check.needs_policy and datapath != "bpf":
        return Result(check, "N/A", "policy is not kube-proxy's job", 0.0)
    try:
        url = _resolve_target(state, scenario, check.target)
        cmd, preexec = _client_cmd(state, check.client, url)
    except (KeyError, ConnectivityError) as exc:
        return Result(check, "FAIL", f"cannot run: {exc}", 0.0)
    proc = procs.run("probe", cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT + 5,
                     preexec_fn=preexec, env={**os.environ, "PYTHONPATH": _pythonpath()})
    took = time.monotonic() - start
    succeeded = proc.returncode == 0
    detail = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""]
    detail = f"{url}: {'answered ' + detail[0] if succeeded else detail[0]}"
    status = "PASS" if succeeded == (check.expect == "pass") else "FAIL"
    return Result(check, status, detail, took)


def _pythonpath() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


class Servers:
    """The echo servers of the run, stopped however the run ends."""

    def __init__(self, state: TopologyState):
        self.state = state
        self.procs: list[subprocess.Popen] = []
        self.scratch: list[str] = []

    def _start(self, netns: str, port: int, name: str) -> None:
        from harness.servers import nginx
        if nginx.available():
            server, directory = nginx.command(port, name)
            self.scratch.append(directory)
            kind = "nginx"
        else:
            server = [_python(), "-m", "harness.servers.echo_http", "--port", str(port),
                      "--name", name]
            kind = "echo-server"
        cmd = ["nsenter", f"--net=/run/netns/{netns}", "--", *server]
        self.procs.append(procs.spawn(kind, cmd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, new_session=True,
                                      env={**os.environ, "PYTHONPATH": _pythonpath()}))

    def __enter__(self) -> "Servers":
        try:
            for name, port in SERVERS:
                self._start(self.state.pod(name).netns, port, name)
            host = self.state.pod("echo-b-host")
            self._start(self.state.node(host.node).netns, HOST_ECHO_PORT, "echo-b-host")
            self._start(self.state.world["netns"], WORLD_PORT, "world")
            self._wait_listening()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_listening(self) -> None:
        targets = [(self.state.pod(n).netns, p) for n, p in SERVERS]
        targets.append((self.state.node(self.state.pod("echo-b-host").node).netns, HOST_ECHO_PORT))
        targets.append((self.state.world["netns"], WORLD_PORT))
        deadline = time.monotonic() + 10
        for netns, port in targets:
            while True:
                probe = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "ss", "-Hltn",
                                        f"sport = :{port}"], capture_output=True, text=True)
                if probe.stdout.strip():
                    break
                if time.monotonic() > deadline:
                    raise ConnectivityError(f"server on port {port} in {netns} did not start")
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        with shielded():
            for p in self.procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in self.procs:
                procs.stop(p)
            from harness.servers import nginx
            for directory in self.scratch:
                nginx.stop_scratch(directory)


def run(state: TopologyState, scenario, datapath: str | None = None,
        checks: tuple[Check, ...] = CHECKS) -> list[Result]:
    """Run *checks* against the topology (servers up for the duration)."""
    datapath = datapath or state.datapath
    with Servers(state):
        pool = ThreadPoolExecutor(max_workers=8)
        try:
            return list(pool.map(lambda c: _run_check(state, scenario, c, datapath), checks))
        finally:
            # Interrupted: the checks not started are dropped; running ones end within
            # their deadline (their probes are recorded processes: down ends any left).
            with shielded():
                pool.shutdown(wait=True, cancel_futures=True)
