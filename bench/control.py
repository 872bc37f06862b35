"""Control-plane benchmark: how long programming N services x 10 endpoints takes.

What is programmed (``mix``):

  realistic  bench/scenarios/services.yaml.j2 with mix=realistic: the Service features
             kube-proxy and Cilium implement in fixed shares (ITP/ETP Local, externalIPs,
             NodePort, LoadBalancer with ingress IPs and source ranges, health-check
             ports, ClientIP affinity, 20 % dual-stack, terminating endpoints), as node
             cb-node0 of two programs them (its traffic-policy view for BPF; kube-proxy
             with hostname cb-node0, both families: the IPv6 rules go through
             ip6tables-restore or the ``ip6 kube-proxy`` table, timed together with IPv4
             as one sync).
  clusterip  bench.micro.lb_cases.synthetic_state: IPv4 ClusterIPs only (the figures
             before issue 15).

Or a user's own cluster (``scenario``, ``chainbench bench control --scenario FILE``): a
scenario file, ``kubectl get ... -o yaml`` output as it is, programmed as its first node
(sorted by name) holds it, kube-proxy named after that node with its addresses.

Methods, each timed on the same LB state:

  bpf              LbControl.apply on a freshly loaded lxc collection sized for N
                   services: diff, then one batch write per map (BPF_MAP_UPDATE_BATCH).
                   ``seconds`` includes our Python planning (not the object load);
                   ``write_seconds`` is the map writes alone (the syscalls).
  iptables-legacy  kube-proxy's iptables-restore input (harness.kubeproxy) loaded with
  iptables-nft     ``iptables-restore -w --noflush --counters`` on that backend, in a
                   fresh ``cb-ctl-*`` namespace, as kube-proxy runs it.  Rendering is
                   timed separately (render_seconds) and not included.
  iptables-nft-flush  the same input without --noflush (tables replaced whole): not
                   kube-proxy's invocation, but what iptables-nft 1.8.x can load at
                   10k services (with --noflush it keeps a sorted linked list of every
                   chain name it meets, walked per line: super-quadratic, README).
                   Its change-one is kube-proxy's partial sync (with --noflush).
  nft              kube-proxy's nftables-mode table through one ``nft -f`` transaction.

For the kube-proxy methods ``cpu_seconds`` gives the loader's own user and system
time (the machine is shared: wall time alone overstates a busy moment).

Operations per method and scale:
  full        a full sync from nothing;
  change-one  then one service changes (its first endpoint is replaced): BPF applies
              that service only (LbControl.apply(..., services=[name])), kube-proxy
              a partial sync (the changed service's chains plus the top-level chains).

Size of what was programmed: ``entries`` (BPF: map entries written; iptables: rules
in ``iptables-save``; nft: rules + set/map elements in ``nft list table``), and two
different quantities, never mixed: ``map_bytes`` (BPF only: the kernel's memlock
figure of the LB maps, the memory they hold) and ``rules_text_bytes`` (kube-proxy
methods only: the size of the ``iptables-save`` / ``nft list table`` text, a measure
of the ruleset, not of kernel memory).  Before schema_version 3 both were ``bytes``.

Rounds interleave the methods (a different order each round) so the shared
machine's noise hits all of them alike; ratios to bpf are taken within a round.
Every load has a timeout: a method that exceeds it at one scale is reported
``timeout`` there and ``skipped`` at larger scales (it would only be slower).
Namespaces are created and removed per sample, also on failure and Ctrl-C.

Policy: resolving and programming policy at N identities, against the raw batch-write
floor (bench.policy_control), is the section's ``policy`` list.

Entry points, as every suite's (bench.micro.suite, bench.macro.suite): ``run_suite(settings,
progress)`` (bench.profiles.ControlSettings) gives the suite's section of the result
document, ``table(section)`` its header and rows; ``run(scales, rounds, ...)`` takes the
settings one by one.
"""
from __future__ import annotations

import dataclasses
import gc
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import time
from typing import Callable

from bench import policy_control
from bench.micro.lb_cases import synthetic_state
from bench.profiles import ControlSettings
from bench.stats import mad_pct_text, summary
from harness.node import datapath
from harness.host import netns
from harness import addressing, paths
from harness.bpf import Collection
from harness.kubeproxy import apply as kp
from harness.kubeproxy import iptables as ipt
from harness.kubeproxy import nftables as nft
from harness.kubeproxy.model import ProxierConfig
from harness import validate
from harness.lb.desired import lb_state, node_addresses
from harness.lb.model import LbState
from harness.scenario import Scenario
from harness.scenario.templates import load_template_scenario

METHODS = ("bpf", "iptables-legacy", "iptables-nft", "iptables-nft-flush", "nft")
ENDPOINTS = 10
#: Spare pod address the changed service's first endpoint moves to (never used by the pool).
CHANGED_ENDPOINT = ipaddress.IPv4Address("198.18.1.250")


class Timeout(Exception):
    """A load exceeded the suite's timeout."""


def available(method: str) -> str | None:
    """None when *method* can run here, else why not (one line)."""
    if method == "bpf":
        return None if paths.bpf_object("lxc").exists() else "lxc.bpf.o not built (make build)"
    if method == "nft":
        return None if shutil.which("nft") else "nft is not installed"
    backend = method.split("-")[1]
    return None if backend in kp.available_backends() else f"{method}: backend not installed"


def changed_state(state: LbState) -> tuple[LbState, str]:
    """*state* with the first IPv4 endpoint of the last service (that has one: a real
    cluster's last frontend may have none) replaced in every one of its frontends (an
    EndpointSlice update); (new state, service)."""
    service = next((f.service for f in reversed(state.frontends) if f.family == 4 and f.endpoints),
                   None)
    if service is None:
        raise ValueError("no Service with an IPv4 endpoint to change")
    v4 = [f for f in state.frontends if f.service == service and f.family == 4]
    old = next(f.endpoints[0] for f in v4 if f.endpoints)
    new_be = dataclasses.replace(old, address=CHANGED_ENDPOINT)

    def swap(backends):
        return None if backends is None else tuple(new_be if b == old else b for b in backends)
    frontends = tuple(dataclasses.replace(f, backends=swap(f.backends),
                                          all_backends=swap(f.all_backends))
                      if f.service == service else f for f in state.frontends)
    return LbState(frontends), service


def service_frontends(state: LbState, service: str) -> LbState:
    """*service*'s frontends alone: what an agent recomputes on one EndpointSlice event."""
    return LbState(tuple(f for f in state.frontends if f.service == service))


MIXES = ("realistic", "clusterip")
#: The node whose view the realistic mix is programmed as (of two).
MIX_NODE = "cb-node0"


def mix_config(mix: str) -> ProxierConfig | None:
    """The kube-proxy settings of *mix*: the node it is programmed as (its name and
    addresses decide the Local traffic policies), or None (no node: clusterip)."""
    if mix != "realistic":
        return None
    index = addressing.node_index(MIX_NODE)
    return ProxierConfig(hostname=MIX_NODE, node_ips=(str(addressing.node_ip4(index)),
                                                      str(addressing.node_ip6(index))))


def scenario_node(scenario: Scenario) -> str | None:
    """The node a user's scenario is programmed as: the first of its nodes (sorted)."""
    return scenario.nodes[0] if scenario.nodes else None


def scenario_config(scenario: Scenario) -> ProxierConfig | None:
    """The kube-proxy settings of a user's scenario: its first node's name and addresses
    (harness.lb.desired.node_addresses: the plan's, or a real cluster's own), as mix_config
    gives the template's; None when no pod names a node."""
    node = scenario_node(scenario)
    if node is None:
        return None
    return ProxierConfig(hostname=node,
                         node_ips=tuple(str(a) for a in node_addresses(scenario)[node]))


def load_bench_scenario(spec: str) -> Scenario:
    """A user's scenario file (``bench control --scenario``), any valid addresses (the
    maps are not attached, the rules load in a namespace of their own)."""
    return validate.load(spec, plan_checked=False)


def bench_state(services: int, mix: str = "realistic", scenario: Scenario | None = None) -> LbState:
    """The LB state the suite programs at *services* services, or *scenario*'s (a user's
    cluster, as its first node's maps hold it; *services* is then ignored)."""
    if scenario is not None:
        return lb_state(scenario, node=scenario_node(scenario))
    if mix == "clusterip":
        return synthetic_state(services, ENDPOINTS, ipv6=False, nodeport=False)
    if mix != "realistic":
        raise ValueError(f"mix {mix!r}: one of {', '.join(MIXES)}")
    scenario = load_template_scenario("services", services=services, endpoints=ENDPOINTS,
                                      mix="realistic", nodes=2, client=False)
    return lb_state(scenario, node=MIX_NODE)


# -- one sample per method ---------------------------------------------------------------
def _memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def _rss_reset() -> None:
    """Start a new peak-RSS window for this process (VmHWM := VmRSS)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, bytes."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                got[line.split(":")[0]] = int(line.split()[1]) * 1024
    return got["VmRSS"], got["VmHWM"]


def _load_bpf(state: LbState) -> Collection:
    """A fresh lxc collection whose LB maps hold *state* (a user's cluster may have more
    than ENDPOINTS backends per frontend: the maps are sized for its mean)."""
    v6 = sum(1 for f in state.frontends if f.family == 6)
    slots = sum(len(f.backends) for f in state.frontends)
    per = max(ENDPOINTS, -(-slots // max(len(state.frontends), 1)))
    sizes = datapath.scaled_max_entries(len(state.frontends) - v6, per, v6,
                                        sum(1 for f in state.frontends if f.two_scopes))
    return Collection.load(str(paths.bpf_object("lxc")), rodata=datapath.service_rodata(),
                           max_entries=sizes)


#: The LB maps in the order an apply writes them (backends, reverse NAT, ranges, services).
FLOOR_MAPS = tuple(f"cb_lb{fam}_{m}" for m in ("backends", "reverse_nat", "source_range",
                                                "services") for fam in (4, 6))


def floor_entries(coll: Collection) -> dict[str, tuple]:
    """What an apply left in the LB maps, packed as it is in the kernel."""
    out = {}
    for name in FLOOR_MAPS:
        m = coll.maps[name]
        if m.type == "lpm_trie":       # no batch lookup: read entry by entry
            items = [(bytes(k), bytes(v)) for k, v in m.items()]
            out[name] = ([k for k, _ in items], [v for _, v in items])
        else:
            out[name] = m.dump_packed()
    return out


def _sample_floor(state: LbState, entries: dict[str, tuple]) -> float:
    """The raw batch-write floor: *entries* written into fresh maps, one batch per map,
    no planning (the seconds of the update_batch calls alone)."""
    coll = _load_bpf(state)
    try:
        seconds = 0.0
        for name, (keys, values) in entries.items():
            if len(keys):
                start = time.perf_counter()
                coll.maps[name].update_batch(keys, values)
                seconds += time.perf_counter() - start
        return seconds
    finally:
        coll.close()


def _sample_bpf(state: LbState, changed: LbState, service: str, timeout: float,
                measure_size: bool, floor: dict | None) -> dict:
    """One BPF sample: a full apply, then *service* re-applied from *changed* (its
    frontends alone, as an agent handling one EndpointSlice event passes them), and the
    raw write floor of the full apply's entries.  *floor*: entries of an earlier round
    (written before the apply, so the two alternate), or None (dump this apply's)."""
    out: dict = {}
    if floor is not None:
        out["floor"] = _sample_floor(state, floor)
    coll = _load_bpf(state)
    try:
        ctl = datapath.lb_control(coll)
        rss_before = _rss()[0]
        _rss_reset()
        gc.collect()            # the desired state's own garbage is not the apply's
        start = time.perf_counter()
        stats = ctl.apply(state)
        out["full"] = time.perf_counter() - start
        out["rss_before"], out["rss_peak"] = rss_before, _rss()[1]
        out["full-plan"], out["full-writes"] = stats.plan_seconds, stats.write_seconds
        if measure_size:
            counts = ctl.entry_count()
            out["entries"] = sum(counts.values())
            out["map_bytes"] = sum(_memlock(m.fd) for name, m in coll.maps.items()
                                   if name.startswith("cb_lb"))
        if floor is None:
            out["floor-entries"] = floor_entries(coll)
        gc.collect()
        start = time.perf_counter()
        stats = ctl.apply(changed, services=[service])
        out["change-one"] = time.perf_counter() - start
        out["change-one-plan"] = stats.plan_seconds
        out["change-one-writes"] = stats.write_seconds
    finally:
        coll.close()
    if floor is None:
        out["floor"] = _sample_floor(state, out["floor-entries"])
    return out


def _count_save(ns: str, backend: str, families: tuple[int, ...]) -> tuple[int, int]:
    """(rules, bytes of ``iptables-save`` [+ ``ip6tables-save``]) in *ns*."""
    rules = size = 0
    for family in families:
        cli = (kp.BACKENDS if family == 4 else kp.BACKENDS6)[backend][0]
        text = netns.run(ns, f"{cli}-save", timeout=300).stdout
        rules += sum(1 for line in text.splitlines() if line.startswith("-A "))
        size += len(text.encode())
    return rules, size


def _count_nft(ns: str, families: tuple[int, ...]) -> tuple[int, int]:
    """(rules + set/map elements, bytes of ``nft list table``) of kube-proxy's tables."""
    count = size = 0
    for family in families:
        fam = "ip" if family == 4 else "ip6"
        name = nft.TABLE.split()[1]
        text = netns.run(ns, "nft", "list", "table", fam, name, timeout=300).stdout
        listing = json.loads(netns.run(ns, "nft", "-j", "list", "table", fam, name,
                                       timeout=300).stdout)
        size += len(text.encode())
        for obj in listing.get("nftables", []):
            if "rule" in obj:
                count += 1
            for kind in ("set", "map"):
                if kind in obj:
                    count += len(obj[kind].get("elem", []))
    return count, size


def _guard(fn: Callable[[], float], timeout_note: str, cpu: list | None = None) -> float:
    """fn()'s seconds; its child processes' user + system CPU seconds appended to *cpu*."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        seconds = fn()
    except subprocess.TimeoutExpired as exc:
        raise Timeout(timeout_note) from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append((after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime))
    return seconds


def _sample_kube_proxy(method: str, state: LbState, new: LbState, timeout: float,
                       measure_size: bool, ns: str, config: ProxierConfig | None) -> dict:
    """One kube-proxy sample: a full sync (one proxier per family, timed together) and
    a partial one; the renders are timed apart (``render``)."""
    out: dict = {"cpu": []}
    netns.create(ns)
    try:
        if method == "nft":
            fams = nft.families(state)
            start = time.perf_counter()
            texts = [nft.render(state, kp.family_config(config, f)) for f in fams]
            out["render"] = time.perf_counter() - start
            out["full"] = _guard(lambda: sum(kp.nft_load(ns, t, timeout) for t in texts),
                                 f"nft -f > {timeout:.0f} s", out["cpu"])
            if measure_size:
                out["entries"], out["rules_text_bytes"] = _count_nft(ns, fams)
            out["change-one"] = _guard(
                lambda: kp.incremental_nft(ns, state, new, timeout, config),
                f"nft -f partial > {timeout:.0f} s")
        else:
            backend = method.split("-")[1]
            noflush = not method.endswith("-flush")
            fams = ipt.families(state)
            start = time.perf_counter()
            texts = {f: ipt.render(state, kp.family_config(config, f)) for f in fams}
            out["render"] = time.perf_counter() - start
            for f in fams:                  # kube-proxy ensures the jumps before restoring
                kp.ensure_jumps(ns, backend, f)
            out["full"] = _guard(lambda: sum(kp.restore(ns, texts[f], backend, timeout, noflush,
                                                        family=f) for f in fams),
                                 f"iptables-restore > {timeout:.0f} s", out["cpu"])
            for f in fams:                  # a restore without --noflush replaced them
                kp.ensure_jumps(ns, backend, f)
            if measure_size:
                out["entries"], out["rules_text_bytes"] = _count_save(ns, backend, fams)
            out["change-one"] = _guard(
                lambda: kp.incremental_iptables(ns, state, new, backend, timeout, config),
                f"iptables-restore partial > {timeout:.0f} s")
        return out
    finally:
        netns.delete(ns)


def sample(method: str, state: LbState, new: LbState, service: str, timeout: float,
           measure_size: bool, config: ProxierConfig | None = None,
           floor: dict | None = None) -> dict:
    """Seconds of a full sync and of a one-service change with *method* (plus sizes);
    *config*: the kube-proxy's settings (node name and IPs); *floor*: BPF only, the
    entries of an earlier round's apply for the raw write floor."""
    if method == "bpf":
        return _sample_bpf(state, service_frontends(new, service), service, timeout,
                           measure_size, floor)
    return _sample_kube_proxy(method, state, new, timeout, measure_size,
                              f"cb-ctl-{os.getpid()}", config)


# -- the suite ----------------------------------------------------------------------------
def run(scales: list[int], rounds: int = 1, methods: tuple[str, ...] = METHODS,
        timeout: float = 300, progress: Callable[[int, int, str], None] | None = None,
        method_timeouts: dict[str, float] | None = None, mix: str = "realistic",
        scenario: str | None = None) -> dict:
    """Time every method at every scale in *rounds* interleaved rounds; a load may take
    *timeout* seconds, or what *method_timeouts* gives its method.  With *scenario* (a
    scenario file: a user's cluster, ``kubectl get -o yaml`` output loads as it is), its
    Services are programmed instead of the mix, once (*scales* is ignored; the scale
    reported is its number of Services)."""
    loaded = load_bench_scenario(scenario) if scenario is not None else None
    if loaded is not None:
        scales = [len(loaded.services)]
    config = scenario_config(loaded) if loaded is not None else mix_config(mix)
    method_timeouts = dict(method_timeouts or {})
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown control method(s): {', '.join(sorted(unknown))}")
    reasons = {m: available(m) for m in methods}
    timed_out: dict[str, str] = {}
    results: list[dict] = []
    total = len(scales) * rounds * len(methods)
    done = 0
    for n in scales:
        state = bench_state(n, mix, loaded)
        new, service = changed_state(state)
        floor_entries: dict | None = None
        per: dict[str, dict] = {m: {"full": [], "change-one": [], "render": [], "full-writes": [],
                                    "change-one-writes": [], "full-plan": [],
                                    "change-one-plan": [], "floor": [], "rss_peak": [],
                                    "rss_before": [], "cpu": [], "entries": None,
                                    "map_bytes": None, "rules_text_bytes": None,
                                    "status": "ok", "detail": None}
                                for m in methods}
        for m in methods:
            if reasons[m]:
                per[m].update(status="unavailable", detail=reasons[m])
            elif m in timed_out:
                per[m].update(status="skipped", detail=f"timed out at a smaller scale "
                                                       f"({timed_out[m]})")
        for r in range(rounds):
            order = list(methods[r % len(methods):] + methods[:r % len(methods)])
            for m in order:
                done += 1
                rec = per[m]
                if rec["status"] != "ok":
                    continue
                if progress:
                    progress(done - 1, total, f"control: {m} @ {n} services, round {r + 1}")
                try:
                    got = sample(m, state, new, service, method_timeouts.get(m, timeout),
                                 measure_size=(r == 0), config=config,
                                 floor=floor_entries if r % 2 else None)
                except Timeout as exc:
                    rec.update(status="timeout", detail=str(exc))
                    timed_out[m] = f"{n} services: {exc}"
                    continue
                except (kp.ApplyError, OSError) as exc:
                    rec.update(status="error", detail=str(exc).splitlines()[0][:300])
                    continue
                if "floor-entries" in got:
                    floor_entries = got.pop("floor-entries")
                for op in ("full", "change-one", "render", "full-writes", "change-one-writes",
                           "full-plan", "change-one-plan", "floor", "rss_peak", "rss_before"):
                    if op in got:
                        rec[op].append(got[op])
                rec["cpu"] += got.get("cpu", [])
                if "entries" in got:
                    rec["entries"] = got["entries"]
                    rec["map_bytes"] = got.get("map_bytes")
                    rec["rules_text_bytes"] = got.get("rules_text_bytes")
        if progress:
            progress(done, total, f"control: {n} services done")
        results += _summarise(n, per)
    return {"config": {"scales": scales, "rounds": rounds, "methods": list(methods),
                       "mix": mix if loaded is None else "scenario",
                       **({"scenario": loaded.source, "node": scenario_node(loaded),
                           "frontends": len(bench_state(0, scenario=loaded).frontends)}
                          if loaded is not None else {}),
                       "endpoints_per_service": ENDPOINTS, "timeout_s": timeout,
                       "method_timeouts_s": method_timeouts,
                       "method": "full sync from nothing, then one service changed; methods "
                                 "interleaved per round; kube-proxy rendering excluded "
                                 "(render_seconds); bpf: planning and map writes apart, and "
                                 "the raw batch-write floor of the same entries (even rounds "
                                 "after the apply, odd rounds before it)"},
            "results": results}


def _summarise(n: int, per: dict[str, dict]) -> list[dict]:
    out = []
    bpf = per.get("bpf", {})
    for m, rec in per.items():
        for op in ("full", "change-one"):
            samples = rec[op]
            ok = rec["status"] == "ok" and samples
            ratio = None
            if ok and m != "bpf" and bpf.get("status") == "ok" and bpf[op]:
                pairs = list(zip(samples, bpf[op]))
                ratio = summary([a / b for a, b in pairs]) if pairs else None
            out.append({
                "method": m, "services": n, "endpoints_per_service": ENDPOINTS,
                "operation": op,
                "status": rec["status"] if rec["status"] != "ok" or samples else "error",
                "detail": rec["detail"],
                "seconds": summary(samples) if ok else None,
                "samples_s": list(samples),
                "render_seconds": summary(rec["render"]) if rec["render"] and op == "full"
                else None,
                "write_seconds": summary(rec[f"{op}-writes"]) if rec[f"{op}-writes"] else None,
                "plan_seconds": (summary(rec[f"{op}-plan"]) if rec[f"{op}-plan"] else
                                 summary(rec["render"]) if rec["render"] and op == "full"
                                 else None),
                "floor_seconds": summary(rec["floor"]) if rec["floor"] and op == "full"
                else None,
                "ratio_to_floor": summary([a / b for a, b in zip(samples, rec["floor"])])
                if ok and rec["floor"] and op == "full" else None,
                "peak_rss_bytes": max(rec["rss_peak"]) if rec["rss_peak"] and op == "full"
                else None,
                "rss_before_bytes": max(rec["rss_before"]) if rec["rss_before"] and op == "full"
                else None,
                "cpu_seconds": ({"user": summary([u for u, _ in rec["cpu"]]),
                                 "system": summary([s for _, s in rec["cpu"]])}
                                if rec["cpu"] and op == "full" else None),
                "entries": rec["entries"], "map_bytes": rec["map_bytes"],
                "rules_text_bytes": rec["rules_text_bytes"],
                "ratio_to_bpf": ratio,
            })
    return out


def run_suite(settings: ControlSettings,
              progress: Callable[[int, int, str], None] | None = None) -> dict:
    """The suite's section of the result document for *settings* (a profile's); its
    ``policy`` list is bench.policy_control's, at settings.policy_identities (not with a
    user's scenario, which the LB methods time alone)."""
    section = run(list(settings.scales), settings.rounds, timeout=settings.timeout,
                  method_timeouts=dict(settings.method_timeouts), progress=progress,
                  mix=settings.mix, scenario=settings.scenario)
    if settings.scenario is None:
        section["policy"] = policy_control.run(list(settings.policy_identities),
                                               settings.rounds, progress)
    return section


# PLAN: BPF planning / kube-proxy rendering; WRITE: BPF map writes (syscalls) /
# kube-proxy's loader (what SECONDS is for kube-proxy); FLOOR: the same entries
# written raw, x FLOOR: BPF total over it.  MAP MEM: the BPF LB maps' memlock
# bytes; RULES TEXT: bytes of the iptables-save / nft list output (kube-proxy).
# Different quantities: never one column.  PEAK RSS: this process while applying.
HEADER = ("SERVICES", "OPERATION", "METHOD", "STATUS", "SECONDS", "MAD", "VS BPF", "PLAN",
          "WRITE", "FLOOR", "X FLOOR", "ENTRIES", "MAP MEM", "RULES TEXT", "PEAK RSS")


def _s(fig: dict | None, fmt: str = "{:.4g}") -> str:
    return fmt.format(fig["median"]) if fig else "-"


def table(suite: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: services, operation, method, status, median s, MAD %, x bpf,
    plan / write / floor seconds, x floor, entries, map memory (BPF), rules text
    (kube-proxy), peak RSS: "-" where a figure does not apply."""
    rows = []
    for r in suite["results"]:
        s = r["seconds"]
        write = r.get("write_seconds") or (s if r["method"] != "bpf" else None)
        rss = r.get("peak_rss_bytes")
        rows.append((str(r["services"]), r["operation"], r["method"],
                     r["status"] if r["status"] == "ok" else f"{r['status']}: {r['detail']}",
                     _s(s, "{:.4f}"), mad_pct_text(s), _s(r["ratio_to_bpf"], "{:.1f}x"),
                     _s(r.get("plan_seconds")), _s(write), _s(r.get("floor_seconds")),
                     _s(r.get("ratio_to_floor"), "{:.2f}x"),
                     str(r["entries"]) if r["entries"] is not None else "-",
                     str(r["map_bytes"]) if r["map_bytes"] is not None else "-",
                     str(r["rules_text_bytes"]) if r["rules_text_bytes"] is not None else "-",
                     f"{rss / 2**20:.0f} MiB" if rss else "-"))
    return HEADER, rows
