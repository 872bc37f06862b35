"""The Service feature checks (issue 15), run by ``chainbench connectivity`` on a
topology of bench/scenarios/service-features.yaml.

Each check is a real exchange from a client (a pod, or the world namespace
cb-world standing in for the internet) with an expected outcome and what proves
it: which server answered (each echo server names itself), which client
address the server saw (its ``X-Client-Address`` header: source preserved or
masqueraded), the status and body of a health-check node port, or the server
named in an SCTP INIT-ACK.  A check that must fail passes when no answer came
(timeout or refusal); it names a control check on the same path that must pass,
so a broken path is not taken for the feature: a check whose control failed
fails ("cannot judge").  With the feature missing each expected failure is
answered, and fails.

Outcomes follow kube-proxy (iptables and nftables datapaths) and Cilium's
kube-proxy replacement (bpf); where they differ, the check's ``expect`` function
says so.  Servers (HTTP in echo-0 and echo-1, the SCTP responder in echo-1)
run for the suite; the health-check servers are started by ``up``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from harness.host import procs
from harness.topology import connectivity
from harness.topology.connectivity import CHECK_TIMEOUT, Result
from harness.topology.servers import healthcheck
from harness.topology.state import TopologyState

SCENARIO_STEM = "service-features"
ECHO_PORT, SCTP_PORT = 8080, 7777
HTTP_SERVERS = ("echo-0", "echo-1")
SCTP_SERVER = "echo-1"


def _nodeport_addresses_outcome(datapath: str, settings: dict) -> str:
    """A NodePort dialled on the node's pod-gateway address (198.18.<i>.1, not an
    underlay address).  kube-proxy iptables: every local address unless
    --nodeport-addresses narrows it; nftables: the node's primary address unless
    set (cmd/kube-proxy/app/server_linux.go defaults it to "primary"); Cilium (bpf): only its NodePort addresses,
    the native devices' addresses (filtered by its own --nodeport-addresses), never
    the pod gateway."""
    if datapath == "bpf":
        return "fail"
    cidrs = settings.get("nodeport_addresses") or ()
    if datapath == "nftables" and not cidrs:
        return "fail"
    if not cidrs:
        return "pass"
    gateway_in = any(c != "primary" and ipaddress.ip_network(c).overlaps(
        ipaddress.ip_network("198.18.0.0/16")) for c in cidrs)
    return "pass" if gateway_in else "fail"


@dataclass(frozen=True)
class FeatureCheck:
    name: str
    client: str                  # a pod name, or "world"
    #: svc:NAME / svc6:NAME (ClusterIP), nodeport:NAME@NODE, gateway-nodeport:NAME@NODE,
    #: lb:NAME, extip:NAME, healthz:NAME@NODE
    target: str
    expect: str = "pass"
    protocol: str = "http"       # http, sctp, healthz
    #: the answer must come from one of these servers
    servers: tuple[str, ...] = ()
    #: what the server must see as the client: "client" (its own address, source
    #: preserved), "masquerade-all" (see _client_seen)
    client_seen: str | None = None
    requests: int = 1
    #: healthz: (status, localEndpoints)
    health: tuple[int, int] | None = None
    #: expect == "fail": the check on the same path that must pass
    control: str | None = None
    #: the expected outcome when it depends on the datapath and kube-proxy settings
    outcome: Callable[[str, dict], str] | None = None
    needs_policy: bool = False   # (connectivity.Check's interface)
    drop_reason: int = 0

    def resolved(self, datapath: str, settings: dict) -> "FeatureCheck":
        if self.outcome is None:
            return self
        return dataclasses.replace(self, expect=self.outcome(datapath, settings))


CHECKS = (
    # 1. externalTrafficPolicy: Local
    FeatureCheck("etp-local-nodeport-local-backend", "world", "nodeport:etp-local@cb-node0",
                 servers=("echo-0",), client_seen="client"),
    FeatureCheck("etp-local-nodeport-no-local-backend", "world", "nodeport:etp-local@cb-node1",
                 "fail", control="nodeport-from-world"),
    FeatureCheck("etp-local-lb-ip", "world", "lb:etp-local", servers=("echo-0",),
                 client_seen="client"),
    # 2. internalTrafficPolicy: Local
    # (10 requests: without the policy, 2 backends answer all from one with p = 2^-9)
    FeatureCheck("itp-local-node0", "client-0", "svc:itp-local", servers=("echo-0",), requests=10),
    FeatureCheck("itp-local-node1", "client-1", "svc:itp-local", servers=("echo-1",), requests=10),
    FeatureCheck("itp-local-no-local-backend", "client-1", "svc:itp-local-one", "fail",
                 control="itp-local-node1"),
    # 3. LoadBalancer IPs and loadBalancerSourceRanges
    FeatureCheck("lb-ip", "world", "lb:lb-open", servers=("echo-1",)),
    # (a NodePort from outside the cluster: the path the ETP Local checks depend on)
    FeatureCheck("nodeport-from-world", "world", "nodeport:lb-open@cb-node1", servers=("echo-1",)),
    FeatureCheck("lb-source-ranges-deny", "world", "lb:lb-ranges-deny", "fail",
                 control="lb-source-ranges-allow"),
    FeatureCheck("lb-source-ranges-allow", "world", "lb:lb-ranges-allow", servers=("echo-1",)),
    # 4. externalIPs
    FeatureCheck("external-ip", "world", "extip:ext-ip", servers=("echo-1",)),
    # 5. health-check node port
    FeatureCheck("health-check-node-port-local", "world", "healthz:etp-local@cb-node0",
                 protocol="healthz", health=(200, 1)),
    FeatureCheck("health-check-node-port-no-local", "world", "healthz:etp-local@cb-node1",
                 protocol="healthz", health=(503, 0)),
    # 6. dual-stack
    FeatureCheck("dual-stack-ipv4-clusterip", "client-0", "svc:dual-stack", servers=("echo-1",)),
    FeatureCheck("dual-stack-ipv6-clusterip", "client-0", "svc6:dual-stack", servers=("echo-1",)),
    # 7. terminating endpoints
    FeatureCheck("terminating-endpoint-fallback", "client-0", "svc:terminating",
                 servers=("echo-1",)),
    FeatureCheck("terminating-not-serving", "client-0", "svc:terminating-gone", "fail",
                 control="terminating-endpoint-fallback"),
    # 8. SCTP
    FeatureCheck("sctp-clusterip", "client-0", "svc:sctp", protocol="sctp", servers=("echo-1",)),
    # 9. masqueradeAll and --nodeport-addresses
    FeatureCheck("masquerade-all", "client-0", "svc:masq", servers=("echo-1",),
                 client_seen="masquerade-all"),
    FeatureCheck("nodeport-addresses-in-range", "client-0", "nodeport:np-addresses@cb-node0",
                 servers=("echo-1",)),
    FeatureCheck("nodeport-addresses-out-of-range", "client-0",
                 "gateway-nodeport:np-addresses@cb-node0", control="nodeport-addresses-in-range",
                 outcome=_nodeport_addresses_outcome),
)
CHECKS_BY_NAME = {c.name: c for c in CHECKS}


def applies(state: TopologyState) -> bool:
    """Whether the topology runs the Service features scenario."""
    return os.path.basename(state.scenario).split(".")[0] == SCENARIO_STEM


def _host(addr) -> str:
    return f"[{addr}]" if ":" in str(addr) else str(addr)


def _target(state: TopologyState, scenario, target: str) -> tuple[str, int]:
    """(address, port) a check dials."""
    kind, _, rest = target.partition(":")
    name, _, node_name = rest.partition("@")
    svc = scenario.service(name)
    port = svc.ports[0]
    if kind in ("svc", "svc6"):
        version = 6 if kind == "svc6" else 4
        ip = next(a for a in svc.cluster_ips if a.version == version)
        return str(ip), port.port
    if kind == "lb":
        return str(svc.load_balancer_ips[0]), port.port
    if kind == "extip":
        return str(svc.external_ips[0]), port.port
    node = state.node(node_name)
    if kind == "nodeport":
        return node.ipv4, port.node_port
    if kind == "gateway-nodeport":
        return str(ipaddress.ip_network(node.pod_cidr_v4)[1]), port.node_port
    if kind == "healthz":
        return node.ipv4, svc.health_check_node_port
    raise connectivity.ConnectivityError(f"unknown check target {target!r}")


def _client_netns(state: TopologyState, client: str) -> str:
    return state.world["netns"] if client == "world" else state.pod(client).netns


def _client_address(state: TopologyState, client: str, version: int) -> str | None:
    if client == "world":
        return state.world["ipv4"] if version == 4 else state.world["ipv6"]
    pod = state.pod(client)
    return pod.ipv4 if version == 4 else pod.ipv6


def _node_addresses(state: TopologyState, node_name: str) -> set[str]:
    """Every address a node may masquerade to: underlay, vxlan0 (the pod CIDR's
    network address) and the pod gateway."""
    node = state.node(node_name)
    net = ipaddress.ip_network(node.pod_cidr_v4)
    out = {node.ipv4, str(net[0]), str(net[1])}
    if node.ipv6:
        out.add(node.ipv6)
    return out


def _command(state: TopologyState, check: FeatureCheck, host: str, port: int) -> list[str]:
    if check.protocol == "sctp":
        tool = [sys.executable, "-m", "harness.topology.servers.sctp_echo", "connect", host,
                str(port), "--timeout", str(CHECK_TIMEOUT - 0.5)]
    else:
        tool = [sys.executable, "-m", "harness.topology.servers.probe",
                f"http://{_host(host)}:{port}/", "--json", "--timeout", str(CHECK_TIMEOUT - 0.5)]
    return ["nsenter", f"--net=/run/netns/{_client_netns(state, check.client)}", "--", *tool]


def _exchange(cmd: list[str]) -> tuple[bool, str]:
    proc = procs.run("probe", cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT + 5,
                     env={**os.environ, "PYTHONPATH": connectivity._pythonpath()})
    out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    return proc.returncode == 0, (out[-1] if out else f"exit {proc.returncode}")


def _client_seen(state: TopologyState, check: FeatureCheck, datapath: str, settings: dict,
                 version: int) -> tuple[set[str], str]:
    """The addresses the server may report as the client, and how to say it.

    "client": the client's own address (source preserved).  "masquerade-all":
    kube-proxy's --masquerade-all marks every connection to a ClusterIP for SNAT
    (KUBE-SVC / the service chain jumps to the masquerade mark whatever the source),
    so the server sees an address of the client's node; Cilium has no masqueradeAll
    (its masquerading is for traffic leaving the cluster, a ClusterIP is translated
    at the pod's veth or socket), so on bpf, as without the option, the server sees
    the pod's own address."""
    own = _client_address(state, check.client, version)
    if check.client_seen == "masquerade-all" and datapath != "bpf" \
            and settings.get("masquerade_all"):
        node = state.pod(check.client).node
        return _node_addresses(state, node), f"an address of {node} (masqueradeAll)"
    what = "the client's own address"
    if check.client_seen == "masquerade-all":
        what += (" (Cilium has no masqueradeAll)" if datapath == "bpf"
                 else " (masqueradeAll off)")
    return {own}, f"{what} {own}"


def _judge_http(state: TopologyState, check: FeatureCheck, datapath: str, settings: dict,
                where: str, answers: list[dict]) -> tuple[str, str]:
    version = 6 if where.startswith("[") else 4
    names = [a["body"].strip() for a in answers]
    for a in answers:
        if a["status"] != 200:
            return "FAIL", f"{where}: answered {a['status']}: {a['body'].strip()[:80]}"
    wrong = [n for n in names if check.servers and n not in check.servers]
    if wrong:
        return "FAIL", (f"{where}: answered by {', '.join(sorted(set(wrong)))} "
                        f"({names.count(wrong[0])}/{len(names)}), expected only "
                        f"{', '.join(check.servers)}")
    detail = f"{where}: answered by {', '.join(sorted(set(names)))} x{len(names)}"
    if check.client_seen:
        allowed, what = _client_seen(state, check, datapath, settings, version)
        seen = {a["headers"].get("X-Client-Address", "") for a in answers}
        if not seen <= allowed:
            return "FAIL", f"{detail}; the server saw client {', '.join(sorted(seen))}, not {what}"
        detail += f", client seen {', '.join(sorted(seen))} ({what})"
    return "PASS", detail


def _judge_healthz(check: FeatureCheck, scenario, where: str, answer: dict) -> tuple[str, str]:
    status, count = check.health
    name = check.target.split(":", 1)[1].split("@")[0]
    svc = scenario.service(name)
    want = healthcheck.body(svc.meta.namespace, svc.meta.name, count).decode()
    problems = []
    if answer["status"] != status:
        problems.append(f"status {answer['status']}, expected {status}")
    if answer["body"] != want:
        problems.append(f"body {answer['body']!r}, expected {want!r}")
    headers = {k.lower(): v for k, v in answer["headers"].items()}
    for key, value in (("content-type", "application/json"),
                       ("x-content-type-options", "nosniff")):
        if headers.get(key) != value:
            problems.append(f"header {key}: {headers.get(key)!r}, expected {value!r}")
    if problems:
        return "FAIL", f"{where}: " + "; ".join(problems)
    return "PASS", f"{where}: {status}, localEndpoints {count}"


def _summary(answer: str) -> str:
    """An answer in a few words: 'STATUS from SERVER' (HTTP) or the SCTP server's name."""
    try:
        doc = json.loads(answer)
        return f"{doc['status']} from {doc['body'].strip()[:60]}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return answer[:80]


def run_check(state: TopologyState, scenario, check: FeatureCheck, datapath: str,
              settings: dict) -> Result:
    """One check (its expected outcome already resolved)."""
    start = time.monotonic()
    try:
        host, port = _target(state, scenario, check.target)
        cmd = _command(state, check, host, port)
    except (KeyError, LookupError, StopIteration, connectivity.ConnectivityError) as exc:
        return Result(check, "FAIL", f"cannot run: {exc}", 0.0)
    where = f"{_host(host)}:{port}" + ("/sctp" if check.protocol == "sctp" else "")
    answers = []
    for _ in range(check.requests):
        ok, out = _exchange(cmd)
        if not ok:
            took = time.monotonic() - start
            failed = f"{where}: no answer ({connectivity._why(out)})"
            if check.expect == "fail":
                return Result(check, "PASS", failed, took)
            if check.protocol == "sctp" and "Protocol not supported" in out:
                failed += " [platform: raw SCTP sockets unavailable]"
            return Result(check, "FAIL", failed + (f" after {len(answers)} answers"
                                                   if answers else ""), took)
        answers.append(out)
    took = time.monotonic() - start
    if check.expect == "fail":
        return Result(check, "FAIL", f"{where}: answered {_summary(answers[0])}, but must not",
                      took)
    if check.protocol == "sctp":
        wrong = [a for a in answers if check.servers and a not in check.servers]
        if wrong:
            return Result(check, "FAIL", f"{where}: INIT-ACK from {wrong[0]}, expected "
                          f"{', '.join(check.servers)}", took)
        return Result(check, "PASS", f"{where}: INIT-ACK from {answers[0]}", took)
    try:
        parsed = [json.loads(a) for a in answers]
    except ValueError:
        return Result(check, "FAIL", f"{where}: unreadable answer {answers[0][:80]}", took)
    if check.protocol == "healthz":
        status, detail = _judge_healthz(check, scenario, where, parsed[0])
    else:
        status, detail = _judge_http(state, check, datapath, settings, where, parsed)
    return Result(check, status, detail, took)


class Servers(connectivity.Servers):
    """The suite's servers: HTTP in echo-0 and echo-1, the SCTP responder in echo-1."""

    def __enter__(self) -> "Servers":
        try:
            for name in HTTP_SERVERS:
                self._start(self.state.pod(name).netns, ECHO_PORT, name)
            cmd = ["nsenter", f"--net=/run/netns/{self.state.pod(SCTP_SERVER).netns}", "--",
                   sys.executable, "-m", "harness.topology.servers.sctp_echo", "serve",
                   "--port", str(SCTP_PORT), "--name", SCTP_SERVER]
            procs.spawn("sctp-echo", cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        new_session=True,
                        env={**os.environ, "PYTHONPATH": connectivity._pythonpath()},
                        on_started=self.procs.append)
            self._wait_http()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_http(self) -> None:
        deadline = time.monotonic() + 10
        for name in HTTP_SERVERS:
            netns = self.state.pod(name).netns
            while not subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", "ss", "-Hltn",
                                      f"sport = :{ECHO_PORT}"], capture_output=True,
                                     text=True).stdout.strip():
                if time.monotonic() > deadline:
                    raise connectivity.ConnectivityError(
                        f"server on port {ECHO_PORT} in {netns} did not start")
                time.sleep(0.05)


def run(state: TopologyState, scenario, datapath: str | None = None,
        checks: tuple[FeatureCheck, ...] = CHECKS) -> list[Result]:
    """Run *checks* (all at once, servers up meanwhile); then a check that must fail
    and passed fails if its control (run along, if not selected) did not pass."""
    datapath = datapath or state.datapath
    settings = state.kube_proxy or {}
    wanted = [c.resolved(datapath, settings) for c in checks]
    controls = [CHECKS_BY_NAME[c.control].resolved(datapath, settings) for c in wanted
                if c.expect == "fail" and c.control and c.control not in {w.name for w in wanted}]
    todo = list({c.name: c for c in wanted + controls}.values())
    with Servers(state):
        with ThreadPoolExecutor(max_workers=8) as pool:
            done = dict(zip([c.name for c in todo],
                            pool.map(lambda c: run_check(state, scenario, c, datapath, settings),
                                     todo)))
    out = []
    for c in wanted:
        r = done[c.name]
        control = done.get(c.control) if c.control else None
        if c.expect == "fail" and r.status == "PASS" and control is not None \
                and control.status != "PASS":
            r = Result(c, "FAIL", f"{r.detail}; cannot judge: its control {c.control} did not "
                       f"pass ({control.detail})", r.seconds)
        elif c.expect == "fail" and r.status == "PASS" and control is not None:
            r = Result(c, "PASS", f"{r.detail} (control {c.control} answered)", r.seconds)
        out.append(r)
    return out
