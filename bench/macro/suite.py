"""Macro benchmark: HTTP through a service VIP on the chained topology, per datapath.

Topology (bench/scenarios/macro.yaml, built by harness.topology.chaining.up with one
datapath per node, so every datapath is up at once and runs interleave):

  cb-node0  bpf        client-bpf     tc LB (from_container), flow events off
                       client-sock    socket LB (the sock programs on a cb- cgroup)
  cb-node1  iptables   client-ipt     kube-proxy iptables mode
  cb-node2  nftables   client-nft     kube-proxy nftables mode
  cb-node3  none       backend-0..9   nginx on 8080-8082 (no service handling)
  cb-node4  bpf        client-events  tc LB, flow events at aggregation medium and the
                                      node's flow observer running

Datapaths measured: ``bpf-tc`` (wrk in client-bpf: the VIP is translated per
packet by tc; monitor aggregation off, no observer), ``bpf-tc-events`` (the same
programs on cb-node4 with Cilium's default aggregation, medium, and the node's flow
observer reading and decoding the events on the same cores: the cost of visibility,
bench/macro/visibility.py), ``bpf-sock`` (wrk in client-sock, inside a cb- cgroup
with the socket-LB programs attached: connect() is translated once), ``iptables``
and ``nftables``.

A client pod per datapath and a backend port per measured service keep the
paths independent: no client reaches one backend tuple through two frontends
(or through a frontend and directly), so one datapath's runs leave no state
(conntrack entries, the backends' TIME_WAIT sockets) in another's way.

Services at scale N (all TCP port 80, 10 endpoints each): the measured ones
("last": the last in kube-proxy's iptables order, the worst case of the linear
KUBE-SERVICES walk, to backend port 8080; "random": one drawn with a fixed seed,
to 8081; plus up to 50 spread over the range for locust, to 8082) have the ten
real backends; the others
("fillers") have endpoints in a pod CIDR no node has (198.18.250-251.0/24), which
nothing ever sends to.  Every datapath is programmed with the same state.

Per scale, round, target and mode, each datapath runs wrk once (order rotated
each time: A/B/A/B), from its client pod to the VIP:
  keepalive  ``wrk -t1 -c32 --latency``: requests/s and latency p50/p90/p99
  new-conn   the same with ``-H 'Connection: close'``: one request per connection
CPU: system + softirq time of the whole machine from /proc/stat over the run,
per request (all namespaces share the kernel, so this is the datapath's cost
plus the same client and server work for every datapath).  Ratios to iptables
are taken within each round, and so is the ratio bpf-tc-events / bpf-tc (the section's
``visibility``, with the observer's CPU time and the events lost).  Locust (bench/macro/locust_run.py, distributed: one
master, worker processes) then drives a mix of keep-alive and new connections
over many services per datapath at the largest scale.

With ``--perf`` (bench.macro.profiling), each datapath then gets one more new-connection
run at the largest scale, profiled (perf record -a -g and the BPF programs' own run
time) and kept apart from the rounds' samples.

Traffic stays inside cb- namespaces; every run is bounded by -d; the topology,
servers, cgroup and links are removed however the suite ends.

Entry points, as every suite's (bench.micro.suite, bench.control): ``run_suite(settings,
progress)`` (bench.profiles.MacroSettings) gives the suite's section of the result
document, ``table(section)`` its header and rows; ``run(scales, rounds, ...)`` takes the
settings one by one.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from bench.macro import locust_run, profiling, visibility
from bench.profiles import MacroSettings
from bench.stats import mad_pct_text, summary
from harness import addressing, paths
from harness.bpf import attach_cgroup
from harness.errors import ChainbenchError
from harness.host import cgroups, netns, procs
from harness.host.signals import shielded
from harness.kubeproxy import apply as kp
from harness.lb.model import ACTIVE, Backend, Frontend, LbState
from harness.node import datapath
from harness.node.sync import node_lock
from harness.topology import chaining
from harness.topology.build import leftovers
from harness.topology.chaining import SOCK_PROGRAMS
from harness.topology.servers import nginx

SCENARIO = paths.SCENARIO_DIR / "macro.yaml"
DATAPATHS = ("bpf-tc", "bpf-tc-events", "bpf-sock", "iptables", "nftables")
NODES = {"cb-node0": "bpf", "cb-node1": "iptables", "cb-node2": "nftables", "cb-node3": "none",
         "cb-node4": "bpf"}
CLIENT = {"bpf-tc": "bench/client-bpf", "bpf-tc-events": "bench/client-events",
          "bpf-sock": "bench/client-sock", "iptables": "bench/client-ipt",
          "nftables": "bench/client-nft"}
NODE_OF = {"bpf-tc": "cb-node0", "bpf-tc-events": "cb-node4", "bpf-sock": "cb-node0",
           "iptables": "cb-node1", "nftables": "cb-node2"}
#: Each BPF node's monitor aggregation; the flow observer runs on the events node only.
MONITOR_AGGREGATION = {NODE_OF[dp]: level for dp, level in visibility.LEVELS.items()}
OBSERVED = (NODE_OF[visibility.EVENTS],)
BACKENDS = [f"bench/backend-{k}" for k in range(10)]
SERVER_PORT = 8080
TARGET_PORTS = {"last": 8080, "random": 8081}
LOCUST_PORT = 8082
SERVICE_PORT = 80
SOCK_CGROUP = "cb-macro-sock"
MODES = ("keepalive", "new-conn")
FILLER_CIDRS = (ipaddress.ip_network("198.18.250.0/24"), ipaddress.ip_network("198.18.251.0/24"))
LOCUST_SERVICES = 50
SEED = 20261126


class MacroError(ChainbenchError, RuntimeError):
    """The macro suite cannot run (one line)."""


# -- the services --------------------------------------------------------------------------
def _vip(i: int) -> ipaddress.IPv4Address:
    return addressing.SERVICE_CIDR_V4[1 + i]


def _filler(k: int) -> Backend:
    net = FILLER_CIDRS[k % 2]
    return Backend(net[1 + (k // 2) % 250], SERVER_PORT, "TCP", ACTIVE)


@dataclass(frozen=True)
class Services:
    state: LbState
    targets: dict[str, int]       # "last" / "random" -> service index
    real: list[int]               # indices with real backends (the targets among them)

    def url(self, index: int) -> str:
        return f"http://{_vip(index)}:{SERVICE_PORT}/"


def services(n: int, backends: list[ipaddress.IPv4Address], seed: int = SEED) -> Services:
    """N services; the last, a random one and up to LOCUST_SERVICES spread over the range
    have *backends*; names sort in index order (svc-00000...), kube-proxy's order."""
    if n < 1 or n > addressing.SERVICE_CIDR_V4.num_addresses - 2:
        raise MacroError(f"services {n}: expected 1..{addressing.SERVICE_CIDR_V4.num_addresses - 2}")
    rng = random.Random(seed + n)
    targets = {"last": n - 1}
    if n > 1:
        targets["random"] = rng.randrange(n - 1)
    real = sorted({*targets.values(), *(k * n // LOCUST_SERVICES for k in range(LOCUST_SERVICES))})
    port_of = {i: LOCUST_PORT for i in real}
    port_of.update({i: TARGET_PORTS[t] for t, i in targets.items()})
    width = max(5, len(str(n)))
    fes = []
    for i in range(n):
        if i in port_of:
            bes = tuple(Backend(b, port_of[i], "TCP", ACTIVE) for b in backends)
        else:
            bes = tuple(_filler(i * 10 + j) for j in range(10))
        fes.append(Frontend(f"bench/svc-{i:0{width}d}", "http", "ClusterIP", _vip(i),
                            SERVICE_PORT, "TCP", bes))
    return Services(LbState(tuple(fes)), targets, real)


def lb_map_max(n: int) -> int:
    """Cilium-style --bpf-lb-map-max holding N services x 10 backends (power of two)."""
    need = n * 12 + 1024
    size = 65536
    while size < need:
        size *= 2
    return size


# -- wrk -------------------------------------------------------------------------------------
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    """Requests, requests/s, latency percentiles (µs) and errors from ``wrk --latency``."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise ValueError("wrk printed no summary: " + (out.strip().splitlines() or ["(nothing)"])[-1])
    pct = {p: _us(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M)}
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return {"requests": int(m.group(1)), "rps": float(rps.group(1)),
            "p50": pct.get("50"), "p90": pct.get("90"), "p99": pct.get("99"), "errors": errors}


def _active_opens(ns: str) -> int:
    """TcpActiveOpens of namespace *ns* (/proc/net/snmp is per namespace)."""
    text = netns.run(ns, "cat", "/proc/net/snmp").stdout
    tcp = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("ActiveOpens")])


def _cpu_ticks() -> tuple[int, int]:
    """(system, softirq) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[3]), int(fields[7])


class Topology:
    """The macro topology: up, servers, socket-LB cgroup; torn down on exit."""

    def __init__(self, max_services: int, progress: Callable[[str], None] | None = None):
        self.max_services = max_services
        self.say = progress or (lambda _m: None)
        self.stack = ExitStack()
        self.state = None
        self.backend_ips: list[ipaddress.IPv4Address] = []
        self.sock_cgroup: str | None = None
        self.sock_program_ids: set[int] = set()
        self.observer: visibility.ObserverProbe | None = None

    def __enter__(self) -> "Topology":
        found = leftovers()
        if found:
            raise MacroError(f"leftovers of an earlier run ({', '.join(found[:3])}): "
                             "run `chainbench down` first")
        try:
            self.say(f"macro: building the topology ({len(NODES)} nodes, "
                     f"{len(CLIENT) - 1 + len(BACKENDS)} pods)")
            # Its cleanup also stops the flow observer (remove_chained_topology).
            self.stack.callback(lambda: self.state and chaining.remove_chained_topology(self.state))
            self.state = chaining.up(str(SCENARIO), routing="native", node_datapaths=NODES,
                                     lb_map_max=lb_map_max(self.max_services),
                                     node_monitor_aggregation=MONITOR_AGGREGATION,
                                     observers=OBSERVED)
            self.observer = visibility.ObserverProbe(OBSERVED[0])
            self.backend_ips = [ipaddress.IPv4Address(self.state.pod(b).ipv4) for b in BACKENDS]
            for dp in DATAPATHS:
                netns.run(self.client_netns(dp), "sysctl", "-qw",
                          "net.ipv4.ip_local_port_range=1024 65535")
            self._start_servers()
            self._attach_sock_lb()
        except BaseException:
            with shielded():
                self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        with shielded():            # a second Ctrl-C must not cut the teardown short
            self.stack.close()

    def client_netns(self, dp: str) -> str:
        return self.state.pod(CLIENT[dp]).netns

    def node_netns(self, dp_or_node: str) -> str:
        return self.state.node(NODE_OF.get(dp_or_node, dp_or_node)).netns

    def _start_servers(self) -> None:
        if not nginx.available():
            raise MacroError("nginx is not installed (make bench installs nginx-light)")
        for ref in BACKENDS:
            cmd, scratch = nginx.command(SERVER_PORT, ref.split("/")[1],
                                         extra_ports=(TARGET_PORTS["random"], LOCUST_PORT))
            self.stack.callback(nginx.stop_scratch, scratch)
            procs.spawn("nginx", ["nsenter", f"--net=/run/netns/{self.state.pod(ref).netns}",
                                  "--", *cmd], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, new_session=True,
                        on_started=lambda p: self.stack.callback(procs.stop, p))
        deadline = time.monotonic() + 10
        for ref in BACKENDS:
            while not netns.run(self.state.pod(ref).netns, "ss", "-Hltn",
                                f"sport = :{SERVER_PORT}").stdout.strip():
                if time.monotonic() > deadline:
                    raise MacroError(f"nginx in {ref} did not start")
                time.sleep(0.05)

    def _attach_sock_lb(self) -> None:
        path = cgroups.create(SOCK_CGROUP)
        self.stack.callback(cgroups.remove, path)
        coll = self.stack.enter_context(datapath.load("sock", NODE_OF["bpf-sock"], pinned=True))
        for name in SOCK_PROGRAMS:
            link = attach_cgroup(coll.programs[name], path)
            self.stack.callback(link.detach)
            self.sock_program_ids.add(coll.programs[name].id)
        self.sock_cgroup = path

    # -- programming the services --------------------------------------------------------
    def program(self, svcs: Services, iptables_backend: str) -> dict[str, float]:
        """The same services in every datapath; seconds each took."""
        took = {}
        for key, dp in (("bpf", "bpf-tc"), ("bpf-events", "bpf-tc-events")):
            node = NODE_OF[dp]
            with node_lock(node), datapath.load("lxc", node, pinned=True) as coll:
                ctl = datapath.lb_control(coll)
                ctl.restore()
                start = time.perf_counter()
                ctl.apply(svcs.state)
                took[key] = time.perf_counter() - start
        ns = self.node_netns("iptables")
        cli, restore = kp.BACKENDS[iptables_backend]
        # A fresh ruleset per scale: restore without --noflush empties both tables.
        netns.run(ns, restore, input="*nat\nCOMMIT\n*filter\nCOMMIT\n")
        took["iptables"] = kp.apply_iptables(ns, svcs.state, iptables_backend)
        ns = self.node_netns("nftables")
        netns.run(ns, "nft", "delete", "table", "ip", "kube-proxy", check=False)
        took["nftables"] = kp.apply_nft(ns, svcs.state)
        return took

    # -- load ----------------------------------------------------------------------------
    def wrk(self, dp: str, url: str, mode: str, seconds: float, connections: int,
            during: contextlib.AbstractContextManager | None = None) -> dict:
        """One wrk run from *dp*'s client to *url*; *during*: a context entered just
        around wrk itself (bench.macro.profiling's measurement), after the counters
        this reads before the run and before those it reads after."""
        cmd = ["nsenter", f"--net=/run/netns/{self.client_netns(dp)}", "--",
               shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
               "--latency", "--timeout", "2s"]
        if mode == "new-conn":
            cmd += ["-H", "Connection: close"]      # with the space, or wrk keeps alive
        cmd.append(url)
        preexec = (lambda: cgroups.enter(self.sock_cgroup)) if dp == "bpf-sock" else None
        opens0 = _active_opens(self.client_netns(dp))
        obs0 = self.observer.sample() if self.observer else None
        with during or contextlib.nullcontext():
            sys0, soft0 = _cpu_ticks()
            proc = procs.run("wrk", cmd, capture_output=True, text=True, timeout=seconds + 30,
                             preexec_fn=preexec)
            sys1, soft1 = _cpu_ticks()
        obs1 = self.observer.sample() if self.observer else None
        opens1 = _active_opens(self.client_netns(dp))
        if proc.returncode != 0:
            raise MacroError(f"wrk ({dp}) exit {proc.returncode}: {proc.stderr.strip()[:200]}")
        out = parse_wrk(proc.stdout)
        hz = os.sysconf("SC_CLK_TCK")
        per_req = 1e6 / hz / max(out["requests"], 1)
        out["cpu_us_per_request"] = {"system": (sys1 - sys0) * per_req,
                                     "softirq": (soft1 - soft0) * per_req}
        # TCP connections the client opened (its namespace's counter): proves the mode,
        # one per request with Connection: close, about one per wrk connection otherwise.
        out["connections_opened"] = opens1 - opens0
        # The events node's observer over this run (whichever datapath ran): its CPU
        # while its own datapath is loaded, and what it costs idle during the others.
        out["observer_cpu_s"] = self.observer.cpu_seconds(obs0, obs1) if self.observer else None
        if self.observer and dp == visibility.EVENTS:
            # What the observer still has to read of this run's events is its work too:
            # let it finish before the next datapath runs, so that one is not charged.
            out["observer_drain_s"], out["observer_drain_cpu_s"] = self.observer.drain()
        return out


def _iptables_backend() -> str:
    """The iptables backend of the baseline: legacy when installed (see README: the
    nf_tables backend's iptables-restore does not load 10k services here in bounded time)."""
    backends = kp.available_backends()
    if not backends:
        raise MacroError("no iptables-restore is installed")
    return "legacy" if "legacy" in backends else backends[0]


def run(scales: list[int], rounds: int = 1, seconds: float = 5, connections: int = 32,
        datapaths: tuple[str, ...] = DATAPATHS, locust_seconds: int = 15, locust_users: int = 50,
        progress: Callable[[int, int, str], None] | None = None, perf: bool = False) -> dict:
    """The macro suite: every datapath at every scale in interleaved rounds, then locust.
    With *perf*, one more profiled new-connection run per datapath at the largest scale
    (bench.macro.profiling) before locust: the section's ``profile``."""
    if rounds < 1 or seconds <= 0:
        raise ValueError("rounds must be >= 1 and seconds > 0")
    unknown = set(datapaths) - set(DATAPATHS)
    if unknown:
        raise ValueError(f"unknown datapath(s): {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        raise MacroError("wrk is not installed (make bench installs it)")
    scales = sorted(set(scales))
    backend = _iptables_backend()
    runs: list[dict] = []
    programming: list[dict] = []
    locust: list[dict] = []
    profiles: list[dict] = []
    plan = [(n, t) for n in scales for t in (["last", "random"] if n > 1 else ["last"])]
    total = len(plan) * rounds * len(MODES) * len(datapaths) + (len(datapaths) if locust_seconds
                                                                 else 0) \
        + (len(datapaths) if perf else 0)
    done = 0

    def tick(text: str) -> None:
        if progress:
            progress(done, total, text)

    with Topology(max(scales), progress=lambda m: tick(m)) as topo:
        topo.observer.start()
        for n in scales:
            tick(f"macro: programming {n} services into every datapath")
            svcs = services(n, topo.backend_ips)
            took = topo.program(svcs, backend)
            programming.append({"services": n, "seconds": took})
            for dp in datapaths:                         # warm-up; proves the path works
                url = svcs.url(svcs.targets["last"])
                warm = topo.wrk(dp, url, "keepalive", 1, connections)
                if warm["requests"] == 0 or warm["errors"]:
                    raise MacroError(f"{dp}: {url} does not answer through the datapath "
                                     f"({warm['requests']} requests, {warm['errors']} errors)")
            targets = ["last", "random"] if n > 1 else ["last"]
            for r in range(rounds):
                for ti, target in enumerate(targets):
                    for mi, mode in enumerate(MODES):
                        shift = (r + ti + mi) % len(datapaths)
                        order = datapaths[shift:] + datapaths[:shift]
                        for dp in order:
                            tick(f"macro: {n} services, {target}, {mode}, {dp} (round {r + 1})")
                            got = topo.wrk(dp, svcs.url(svcs.targets[target]), mode, seconds,
                                           connections)
                            runs.append({"datapath": dp, "services": n, "target": target,
                                         "mode": mode, "round": r, **got})
                            done += 1
            if perf and n == max(scales):
                for dp in datapaths:
                    tick(f"macro: {n} services, new-conn, {dp}: perf record and BPF run time")
                    profiles.append(profiling.profile(topo, dp, svcs.url(svcs.targets["last"]), n,
                                                      seconds, connections))
                    done += 1
            if locust_seconds and n == max(scales):
                urls = ([svcs.url(i) for i in svcs.real if i not in svcs.targets.values()]
                        or [svcs.url(svcs.targets["last"])])
                for dp in datapaths:
                    tick(f"macro: locust, {n} services, {dp}")
                    try:
                        stats = locust_run.run(topo.client_netns(dp), urls, users=locust_users,
                                               spawn_rate=locust_users, duration_s=locust_seconds,
                                               workers=2,
                                               cgroup=topo.sock_cgroup if dp == "bpf-sock" else None)
                        locust.append({"datapath": dp, "services": n, **_locust_summary(stats)})
                    except (locust_run.LocustRunError, OSError) as exc:
                        locust.append({"datapath": dp, "services": n, "error": str(exc)[:300]})
                    done += 1
        tick("macro: asking the flow observer for its account")
        observer = topo.observer.report(topo.state.pod(CLIENT[visibility.EVENTS]).ipv4)
    tick("macro: done")
    section = {"config": {"scales": scales, "rounds": rounds, "seconds": seconds,
                       "connections": connections, "threads": 1, "datapaths": list(datapaths),
                       "iptables_backend": backend, "endpoints_per_service": 10,
                       "locust_seconds": locust_seconds, "locust_users": locust_users,
                       "method": "wrk from a client pod to a ClusterIP per datapath, datapaths "
                                 "interleaved (rotated order) per round; ratios to iptables and "
                                 "bpf-tc-events/bpf-tc (events medium with observer / off) "
                                 "within a round; CPU from /proc/stat (whole machine)"},
            "programming": programming, "samples": runs, "results": summarise(runs),
            "visibility": visibility.cost(runs, observer), "locust": locust}
    if perf:
        section["config"]["perf"] = True
        section["profile"] = profiling.section(profiles)
    return section


def _locust_summary(stats: dict) -> dict:
    keep = ("users", "workers", "duration_s", "requests", "failures", "rps", "latency_ms",
            "new_connection_fraction")
    return {k: stats.get(k) for k in keep}


def summarise(runs: list[dict]) -> list[dict]:
    """Per datapath, scale, target and mode: medians over rounds and ratios to iptables;
    bpf-tc-events also its ratio to bpf-tc (events off), within rounds too."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["datapath"], r["services"], r["target"], r["mode"]), []).append(r)
    base = {(k[1], k[2], k[3]): {s["round"]: s["rps"] for s in v}
            for k, v in groups.items() if k[0] == "iptables"}
    to_off = visibility.ratios(runs)
    out = []
    for (dp, n, target, mode), samples in sorted(groups.items(),
                                                 key=lambda kv: (kv[0][1], kv[0][2], kv[0][3],
                                                                 DATAPATHS.index(kv[0][0]))):
        ref = base.get((n, target, mode), {})
        ratios = [s["rps"] / ref[s["round"]] for s in samples if ref.get(s["round"])]
        lat = {p: summary([s[p] for s in samples if s[p] is not None])
               for p in ("p50", "p90", "p99") if any(s[p] is not None for s in samples)}
        out.append({
            "datapath": dp, "services": n, "target": target, "mode": mode,
            "rps": summary([s["rps"] for s in samples]),
            "rps_samples": [s["rps"] for s in samples],
            "latency_us": lat,
            "cpu_us_per_request": {
                k: summary([s["cpu_us_per_request"][k] for s in samples])
                for k in ("softirq", "system")},
            "ratio_to_iptables": summary(ratios) if ratios else None,
            "errors": sum(s["errors"] for s in samples),
            "requests": sum(s["requests"] for s in samples),
        })
        if dp == visibility.EVENTS:
            got = to_off.get((n, target, mode))
            out[-1]["ratio_to_events_off"] = summary(got) if got else None
    return out


def run_suite(settings: MacroSettings,
              progress: Callable[[int, int, str], None] | None = None) -> dict:
    """The suite's section of the result document for *settings* (a profile's)."""
    return run(list(settings.scales), settings.rounds, settings.seconds, settings.connections,
               locust_seconds=settings.locust_seconds, locust_users=settings.locust_users,
               progress=progress, perf=settings.perf)


HEADER = ("SERVICES", "TARGET", "MODE", "DATAPATH", "REQ/S", "MAD", "P50 US", "P99 US",
          "CPU US/REQ", "VS IPTABLES", "ERRORS", "EVENTS/OFF")


def table(suite: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: services, target, mode, datapath, req/s, MAD %, p50/p99 µs,
    CPU µs/req, x iptables, errors, and for bpf-tc-events x bpf-tc (events off) with its MAD."""
    rows = []
    for r in suite["results"]:
        lat = r["latency_us"]
        cpu = r["cpu_us_per_request"]
        ratio = r["ratio_to_iptables"]
        rows.append((str(r["services"]), r["target"], r["mode"], r["datapath"],
                     f"{r['rps']['median']:.0f}", mad_pct_text(r["rps"]),
                     f"{lat['p50']['median']:.0f}" if "p50" in lat else "-",
                     f"{lat['p99']['median']:.0f}" if "p99" in lat else "-",
                     f"{cpu['system']['median'] + cpu['softirq']['median']:.1f}",
                     f"{ratio['median']:.2f}x" if ratio else "-",
                     str(r["errors"]), _events_off_text(r.get("ratio_to_events_off"))))
    return HEADER, rows


def _events_off_text(ratio: dict | None) -> str:
    """``0.971x ±0.8%`` (the spread only from two rounds on), ``-`` when there is none."""
    if not ratio:
        return "-"
    spread = mad_pct_text(ratio)
    return f"{ratio['median']:.3f}x" + (f" ±{spread}" if ratio["n"] >= 2 else "")
