"""``chainbench connectivity``: Cilium's connectivity-check suite on a running topology.

Each check is one real exchange with a deadline (an HTTP GET, or a ping) from
a client pod (or a node's host network) to a target, with an expected
outcome: most must succeed, the policy checks must fail.  Servers are
started for the run (nginx in the echo pods, the host-network echo and the
world; harness/topology/servers/nginx.py says why nginx) and stopped after it.  Host-network clients run in the node's ``cb-<node>-host``
cgroup, where socket LB translates service addresses, as Cilium's
kube-proxy replacement does for host processes.

The scenario is bench/scenarios/connectivity-check.yaml; checks name its
pods and services.  A topology of bench/scenarios/service-features.yaml runs
the Service feature checks instead (harness/topology/service_checks.py).  With the iptables or nftables datapaths, checks that
need network policy are reported "not applicable": enforcing policy is not
kube-proxy's job.

A check that must fail passes only with proof of why it failed (flow
validation, like ``cilium connectivity test --flow-validation``): the drop
counter of the expected reason (policy denied, 133, or a deny rule's 181) on
the expected endpoint and direction (the client's egress, or the server's
ingress) grew during the check.  The counters are per endpoint, direction
and reason (harness/node/drop_counters.py), so the checks that must fail run after
the others, never two on one endpoint and direction at once.

With ``--flows FILE`` the flows the nodes' observers recorded during the suite
are written to FILE (``hubble observe -o json`` lines) and each check must also
show in them (harness/topology/flow_proof.py): a pass as its connection
FORWARDED both ways, an expected failure as a DROPPED flow with its policy drop
reason from the client to the target.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness import paths
from harness.host import cgroups, procs
from harness.node import drop_counters
from harness.abi import drop_reasons
from harness.node.endpoints import EndpointRegistry
from harness.host.signals import shielded
from harness.errors import ChainbenchError
from harness.topology import flow_proof
from harness.topology.servers import nginx
from harness.topology.state import TopologyState

CHECK_TIMEOUT = 3.0
ECHO_PORT, HOST_ECHO_PORT, WORLD_PORT, HOSTPORT, NODEPORT = 8080, 41000, 80, 40000, 31313
DROP_POLICY = drop_reasons.CODES["DROP_POLICY"]              # 133: no rule allows
DROP_POLICY_DENY = drop_reasons.CODES["DROP_POLICY_DENY"]    # 181: a deny rule matched
#: --flow-validation: strict (a check that must fail needs the drop proof), warning
#: (missing proof is a warning), disabled (any failure passes, as before).
FLOW_VALIDATION = ("strict", "warning", "disabled")


@dataclass(frozen=True)
class Check:
    name: str
    client: str                 # pod name, or "host:<node>"
    target: str                 # see _resolve_target
    expect: str = "pass"        # "pass" or "fail"
    needs_policy: bool = False
    #: expect="fail": the drop the datapath must count, and where: "egress" at the
    #: client's endpoint, "ingress" at the server's.
    drop_reason: int = DROP_POLICY
    drop_direction: str = "egress"


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
    Check("all-ingress-deny", "pod-to-a", "pod:echo-ingress-deny", "fail", needs_policy=True,
          drop_reason=DROP_POLICY_DENY, drop_direction="ingress"),
    Check("all-egress-deny", "client-egress-deny", "svc:echo-a", "fail", needs_policy=True,
          drop_reason=DROP_POLICY_DENY),
    Check("client-egress-to-cidr-deny", "client-cidr-deny", "world", "fail", needs_policy=True,
          drop_reason=DROP_POLICY_DENY),
    Check("to-entities-world", "client-to-world", "world", needs_policy=True),
    Check("to-entities-world-only", "client-to-world", "svc:echo-a", "fail", needs_policy=True),
)

SERVERS = (("echo-a", ECHO_PORT), ("echo-b", ECHO_PORT), ("echo-ingress-deny", ECHO_PORT))


@dataclass(frozen=True)
class Watch:
    """One endpoint and direction whose drop counters a check reads."""
    node: str
    pod: str                    # namespace/name
    endpoint_id: int
    direction: str              # "ingress" / "egress"

    def where(self) -> str:
        return f"{self.node} {self.pod} (endpoint {self.endpoint_id}) {self.direction}"

    def holds(self, key: drop_counters.Key) -> bool:
        return (key.node, key.endpoint_id, key.direction) == \
            (self.node, self.endpoint_id, self.direction)


@dataclass(frozen=True)
class DropProof:
    """The drop an expected-fail check needs: its reason at *watch*, and how many
    packets the datapath counted there during the check (0: not seen)."""
    reason: int
    watch: Watch
    delta: int

    def to_dict(self) -> dict:
        return {"reason": self.reason, "reason_name": drop_reasons.describe(self.reason),
                "node": self.watch.node, "endpoint": self.watch.pod,
                "endpoint_id": self.watch.endpoint_id, "direction": self.watch.direction,
                "delta": self.delta}


@dataclass
class Result:
    check: Check
    status: str                 # PASS, FAIL, N/A
    detail: str
    seconds: float
    #: expect="fail" under flow validation: the expected drop and its count
    proof: DropProof | None = None
    #: drops counted on the check's endpoints during it (any reason), "where: what xN"
    drops: tuple[str, ...] = ()
    #: --flow-validation=warning: why the pass is not proven
    warning: str = ""
    #: wall-clock start and end of the check, and its connection's ends (for flows)
    window: tuple[float, float] = (0.0, 0.0)
    ends: flow_proof.Ends | None = None
    #: --flows: what the recorded flows show about the check
    flows: flow_proof.FlowProof | None = None

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def to_dict(self, flow_validation: str) -> dict:
        """The result as ``connectivity -o json`` reports it."""
        return {"check": self.check.name, "status": self.status, "expect": self.check.expect,
                "detail": self.detail, "seconds": round(self.seconds, 3),
                "flow_validation": flow_validation,
                "proof": self.proof.to_dict() if self.proof else None,
                "drops": list(self.drops), "warning": self.warning or None,
                "flows": self.flows.to_dict() if self.flows else None}


def select(checks: tuple[Check, ...], patterns: list[str]) -> tuple[Check, ...]:
    """The checks ``--test`` selects, as ``cilium connectivity test --test`` does: each
    pattern is a regular expression searched in the check's name (a comma separates
    several); one starting with ``!`` excludes; without including patterns, every
    check not excluded runs.  ValueError names a bad expression."""
    include, exclude = [], []
    for item in patterns:
        for pattern in filter(None, (p.strip() for p in item.split(","))):
            negate = pattern.startswith("!")
            expr = pattern[1:] if negate else pattern
            try:
                (exclude if negate else include).append(re.compile(expr))
            except re.error as exc:
                raise ValueError(f"--test {pattern!r}: {exc}") from None
    return tuple(c for c in checks
                 if (not include or any(r.search(c.name) for r in include))
                 and not any(r.search(c.name) for r in exclude))


class ConnectivityError(ChainbenchError, RuntimeError):
    pass


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


def _ends(state: TopologyState, scenario, check: Check, url: str) -> flow_proof.Ends:
    """The check's client address and the addresses its connection may go to: the one
    dialled and that of the pod serving it (after a service's translation)."""
    if check.client.startswith("host:"):
        client_ip = state.node(check.client.split(":", 1)[1]).ipv4
    else:
        client_ip = state.pod(check.client).ipv4
    targets = {flow_proof.host_of(url)}
    server = _server_pod(scenario, check.target)
    if server is not None:
        try:
            pod = state.pod(server)
        except KeyError:
            pod = None
        if pod is not None and not pod.host_network:
            targets.add(pod.ipv4)
    return flow_proof.Ends(str(client_ip), frozenset(str(t) for t in targets))


def _client_cmd(state: TopologyState, client: str, url: str) -> tuple[list[str], object]:
    probe = [_python(), "-m", "harness.topology.servers.probe", url, "--timeout", str(CHECK_TIMEOUT - 0.5)]
    if client.startswith("host:"):
        node = state.node(client.split(":", 1)[1])
        path = cgroups.host_cgroup(node.name)
        preexec = (lambda: cgroups.enter(path)) if os.path.isdir(path) else None
        return ["nsenter", f"--net=/run/netns/{node.netns}", "--", *probe], preexec
    return ["nsenter", f"--net=/run/netns/{state.pod(client).netns}", "--", *probe], None


def _server_pod(scenario, target: str) -> str | None:
    """The pod that serves *target* (one backend), or None (world, host network)."""
    kind, _, name = target.partition(":")
    if kind in ("pod", "hostport"):
        return name
    try:
        if kind in ("svc", "headless"):
            services = [scenario.service(name)]
        elif kind == "nodeport":
            services = [s for s in scenario.services if any(p.node_port == NODEPORT for p in s.ports)]
        else:
            return None
    except (KeyError, LookupError, ValueError):
        return None
    pods = {ep.target_ref_name for svc in services for sl in scenario.endpoint_slices_for(svc)
            for ep in sl.endpoints if ep.target_ref_name}
    return pods.pop() if len(pods) == 1 else None


def _watch(state: TopologyState, pod_name: str | None, direction: str) -> Watch | None:
    if pod_name is None or pod_name.startswith("host:"):
        return None
    try:
        pod = state.pod(pod_name)
    except KeyError:
        return None
    if pod.host_network:
        return None
    record = EndpointRegistry(pod.node).records.get(pod.ref)
    return Watch(pod.node, pod.ref, record.id, direction) if record else None


def _watches(state: TopologyState, scenario, check: Check) -> tuple[Watch | None, list[Watch]]:
    """(where the expected drop must be counted, every endpoint direction of the flow)."""
    client = _watch(state, check.client, "egress")
    server = _watch(state, _server_pod(scenario, check.target), "ingress")
    expected = None
    if check.expect == "fail":
        expected = client if check.drop_direction == "egress" else server
    return expected, [w for w in (client, server) if w is not None]


def _expected_key(scenario, check: Check) -> tuple[str | None, str]:
    """The endpoint (by pod name) and direction an expected-fail check's proof is read at."""
    if check.drop_direction == "egress":
        return check.client, "egress"
    return _server_pod(scenario, check.target), "ingress"


def _read_counters(nodes: set[str]) -> dict:
    counts: dict = {}
    for node in sorted(nodes):
        counts.update(drop_counters.read(node))
    return counts


def _why(output: str) -> str:
    """'timed out' from the probe's 'URLError: <urlopen error timed out>'."""
    m = re.search(r"<urlopen error (.*)>$", output)
    return m.group(1) if m else output


def _run_check(state: TopologyState, scenario, check: Check, datapath: str,
               validation: str = "strict") -> Result:
    start = time.monotonic()
    if check.needs_policy and datapath != "bpf":
        return Result(check, "N/A", "policy is not kube-proxy's job", 0.0)
    try:
        url = _resolve_target(state, scenario, check.target)
        cmd, preexec = _client_cmd(state, check.client, url)
        ends = _ends(state, scenario, check, url)
    except (KeyError, ConnectivityError) as exc:
        return Result(check, "FAIL", f"cannot run: {exc}", 0.0)
    result = _probe_check(state, scenario, check, validation, url, cmd, preexec, start)
    result.ends = ends
    return result


def _probe_check(state: TopologyState, scenario, check: Check, validation: str, url: str,
                 cmd: list[str], preexec, start: float) -> Result:
    expected, watches = (None, []) if validation == "disabled" else \
        _watches(state, scenario, check)
    if check.expect == "fail" and validation != "disabled" and expected is None:
        side = "client" if check.drop_direction == "egress" else "server"
        return Result(check, "FAIL", f"cannot run: the {side} of {check.target} has no endpoint "
                      f"to read the {check.drop_direction} drop counters of", 0.0)
    nodes = {w.node for w in watches}
    try:
        before = _read_counters(nodes)
    except drop_counters.CountersUnavailable as exc:
        if expected is not None:
            return Result(check, "FAIL", f"cannot run: {exc}", 0.0)
        watches, nodes, before = [], set(), {}
    proc = procs.run("probe", cmd, capture_output=True, text=True, timeout=CHECK_TIMEOUT + 5,
                     preexec_fn=preexec, env={**os.environ, "PYTHONPATH": _pythonpath()})
    seen = drop_counters.grown(before, _read_counters(nodes)) if nodes else {}
    took = time.monotonic() - start
    drops = tuple(f"{w.where()}: {drop_counters.describe(k.reason)} x{n}"
                  for w in watches for k, n in sorted(seen.items(), key=lambda i: i[0].reason)
                  if w.holds(k))
    succeeded = proc.returncode == 0
    output = ((proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or [""])[0]
    if succeeded:
        if check.expect == "pass":
            return Result(check, "PASS", f"{url}: answered {output}", took, drops=drops)
        return Result(check, "FAIL", f"{url}: answered {output}, but it must be denied "
                      f"({drop_counters.describe(check.drop_reason)})", took, drops=drops)
    failed = f"{url}: request failed ({_why(output)})"
    if check.expect == "pass":
        counted = f"; dropped on {'; '.join(drops)}" if drops else ""
        return Result(check, "FAIL", failed + counted, took, drops=drops)
    if validation == "disabled":
        return Result(check, "PASS", failed + " [flow validation disabled: why it failed "
                      "was not checked]", took)
    delta = sum(n for k, n in seen.items() if expected.holds(k) and k.reason == check.drop_reason)
    proof = DropProof(check.drop_reason, expected, delta)
    if delta:
        return Result(check, "PASS", f"{failed}; {drop_counters.describe(check.drop_reason)} "
                      f"x{delta} counted on {expected.where()}", took, proof, drops)
    missing = (f"{failed} but no {drop_counters.describe(check.drop_reason)} was counted on "
               f"{expected.where()}")
    if drops:
        missing += f" (counted: {'; '.join(drops)})"
    if validation == "warning":
        return Result(check, "PASS", missing, took, proof, drops, warning=missing)
    return Result(check, "FAIL", missing, took, proof, drops)


def _pythonpath() -> str:
    return os.pathsep.join([str(paths.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


class Servers:
    """The echo servers of the run, stopped however the run ends."""

    def __init__(self, state: TopologyState):
        self.state = state
        self.procs: list[subprocess.Popen] = []
        self.scratch: list[str] = []

    def _start(self, netns: str, port: int, name: str) -> None:
        if nginx.available():
            with shielded():    # a signal here must not leave the directory unrecorded
                server, directory = nginx.command(port, name)
                self.scratch.append(directory)
            kind = "nginx"
        else:
            server = [_python(), "-m", "harness.topology.servers.echo_http", "--port", str(port),
                      "--name", name]
            kind = "echo-server"
        cmd = ["nsenter", f"--net=/run/netns/{netns}", "--", *server]
        procs.spawn(kind, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    new_session=True, env={**os.environ, "PYTHONPATH": _pythonpath()},
                    on_started=self.procs.append)

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
            for directory in self.scratch:
                nginx.stop_scratch(directory)
            procs.prune_scratch_root()


def _waves(scenario, checks: list[Check]) -> list[list[Check]]:
    """Expected-fail checks in groups that may run at once: no two in a group read
    their proof at the same endpoint and direction."""
    waves: list[tuple[set, list[Check]]] = []
    for check in checks:
        key = _expected_key(scenario, check)
        for keys, wave in waves:
            if key not in keys:
                keys.add(key)
                wave.append(check)
                break
        else:
            waves.append(({key}, [check]))
    return [wave for _, wave in waves]


def run(state: TopologyState, scenario, datapath: str | None = None,
        checks: tuple[Check, ...] = CHECKS, flow_validation: str = "strict",
        flows_path: str | None = None) -> list[Result]:
    """Run *checks* against the topology (servers up for the duration), in their
    order; those expecting success first, all at once, then those that must fail
    (see _waves), so a drop counted during one is that one's.  With *flows_path*,
    the flows recorded meanwhile are written there and each check must show in them."""
    if flow_validation not in FLOW_VALIDATION:
        raise ValueError(f"flow validation {flow_validation!r}: one of {', '.join(FLOW_VALIDATION)}")
    datapath = datapath or state.datapath
    results: dict[Check, Result] = {}
    suite_start = time.time()

    def timed(c: Check) -> Result:
        began = time.time()
        r = _run_check(state, scenario, c, datapath, flow_validation)
        r.window = (began, time.time())
        return r
    with Servers(state):
        pool = ThreadPoolExecutor(max_workers=8)
        try:
            def batch(group):
                for c, r in zip(group, pool.map(timed, group)):
                    results[c] = r
            batch([c for c in checks if c.expect != "fail"])
            for wave in _waves(scenario, [c for c in checks if c.expect == "fail"]):
                batch(wave)
        finally:
            # Interrupted: the checks not started are dropped; running ones end within
            # their deadline (their probes are recorded processes: down ends any left).
            with shielded():
                pool.shutdown(wait=True, cancel_futures=True)
    ordered = [results[c] for c in checks]
    if flows_path is not None:
        _prove_with_flows(ordered, suite_start, flow_validation, flows_path)
    return ordered


def _prove_with_flows(results: list[Result], since: float, validation: str, path: str) -> None:
    """Fetch the flows recorded since *since*, write them to *path*, and match each
    check with its flows: under strict validation a check they do not show fails."""
    judged = [r for r in results if r.status != "N/A" and r.ends is not None]

    def proofs(responses):
        found, claimed = {}, set()
        for r in judged:
            found[id(r)] = flow_proof.prove(r.check.expect, r.check.drop_reason, r.ends,
                                            r.window, responses, claimed)
            claimed.update(found[id(r)].uuids)
        return found
    responses = flow_proof.settle(lambda rs: all(p.ok for p in proofs(rs).values()), since)
    flow_proof.write(path, responses)
    found = proofs(responses)
    for r in judged:
        r.flows = found[id(r)]
        if r.flows.ok or validation == "disabled" or r.status != "PASS":
            continue
        missing = f"flows: {r.flows.text}"
        if validation == "warning":
            r.warning = "; ".join(x for x in (r.warning, missing) if x)
        else:
            r.status, r.detail = "FAIL", f"{r.detail}; {missing}"
