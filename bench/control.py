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
from harness.lb.desired import lb_state
from harness.lb.model import LbState
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
    """*state* with the first IPv4 endpoint of the last service replaced in every one of
    its frontends (an EndpointSlice update); (new state, service)."""
    service = state.frontends[-1].service
    v4 = [f for f in state.frontends if f.service == service and f.family == 4]
    old = next(f.endpoints[0] for f in v4 if f.endpoints)
    new_be = dataclasses.replace(old, address=CHANGED_ENDPOINT)

    def swap(backends):
        return None if backends is None else tuple(new_be if b == old else b for b in backends)
    frontends = tuple(dataclasses.replace(f, backends=swap(f.backends),
                                          all_backends=swap(f.all_backends))
                      if f.service == service else f for f in state.frontends)
    return LbState(frontends), service


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


def bench_state(services: int, mix: str = "realistic") -> LbState:
    """The LB state the suite programs at *services* services."""
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


def _sample_bpf(state: LbState, new: LbState, service: str, timeout: float,
                measure_size: bool) -> dict:
    v6 = sum(1 for f in state.frontends if f.family == 6)
    sizes = datapath.scaled_max_entries(len(state.frontends) - v6, ENDPOINTS, v6,
                                        sum(1 for f in state.frontends if f.two_scopes))
    coll = Collection.load(str(paths.bpf_object("lxc")), rodata=datapath.service_rodata(),
                           max_entries=sizes)
    try:
        ctl = datapath.lb_control(coll)
        start = time.perf_counter()
        stats = ctl.apply(state)
        out = {"full": time.perf_counter() - start, "full-writes": stats.write_seconds}
        if measure_size:
            counts = ctl.entry_count()
            out["entries"] = sum(counts.values())
            out["map_bytes"] = sum(_memlock(m.fd) for name, m in coll.maps.items()
                                   if name.startswith("cb_lb"))
        start = time.perf_counter()
        stats = ctl.apply(new, services=[service])
        out["change-one"] = time.perf_counter() - start
        out["change-one-writes"] = stats.write_seconds
        return out
    finally:
        coll.close()


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
           measure_size: bool, config: ProxierConfig | None = None) -> dict:
    """Seconds of a full sync and of a one-service change with *method* (plus sizes);
    *config*: the kube-proxy's settings (node name and IPs)."""
    if method == "bpf":
        return _sample_bpf(state, new, service, timeout, measure_size)
    return _sample_kube_proxy(method, state, new, timeout, measure_size,
                              f"cb-ctl-{os.getpid()}", config)


# -- the suite ----------------------------------------------------------------------------
def run(scales: list[int], rounds: int = 1, methods: tuple[str, ...] = METHODS,
        timeout: float = 300, progress: Callable[[int, int, str], None] | None = None,
        method_timeouts: dict[str, float] | None = None, mix: str = "realistic") -> dict:
    """Time every method at every scale in *rounds* interleaved rounds; a load may take
    *timeout* seconds, or what *method_timeouts* gives its method."""
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
        state = bench_state(n, mix)
        new, service = changed_state(state)
        per: dict[str, dict] = {m: {"full": [], "change-one": [], "render": [], "full-writes": [],
                                    "change-one-writes": [], "cpu": [], "entries": None,
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
                                 measure_size=(r == 0), config=mix_config(mix))
                except Timeout as exc:
                    rec.update(status="timeout", detail=str(exc))
                    timed_out[m] = f"{n} services: {exc}"
                    continue
                except (kp.ApplyError, OSError) as exc:
                    rec.update(status="error", detail=str(exc).splitlines()[0][:300])
                    continue
                for op in ("full", "change-one", "render", "full-writes", "change-one-writes"):
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
    return {"config": {"scales": scales, "rounds": rounds, "methods": list(methods), "mix": mix,
                       "endpoints_per_service": ENDPOINTS, "timeout_s": timeout,
                       "method_timeouts_s": method_timeouts,
                       "method": "full sync from nothing, then one service changed; methods "
                                 "interleaved per round; kube-proxy rendering excluded "
                                 "(render_seconds)"},
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
    ``policy`` list is bench.policy_control's, at settings.policy_identities."""
    section = run(list(settings.scales), settings.rounds, timeout=settings.timeout,
                  method_timeouts=dict(settings.method_timeouts), progress=progress,
                  mix=settings.mix)
    section["policy"] = policy_control.run(list(settings.policy_identities), settings.rounds,
                                           progress)
    return section


# MAP MEM: the BPF LB maps' memlock bytes; RULES TEXT: bytes of the iptables-save /
# nft list output (kube-proxy).  Different quantities: never one column.
HEADER = ("SERVICES", "OPERATION", "METHOD", "STATUS", "SECONDS", "MAD", "VS BPF", "ENTRIES",
          "MAP MEM", "RULES TEXT")


def table(suite: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: services, operation, method, status, median s, MAD %, x bpf,
    entries, map memory (BPF), rules text (kube-proxy): "-" where a figure does not apply."""
    rows = []
    for r in suite["results"]:
        s = r["seconds"]
        ratio = r["ratio_to_bpf"]
        rows.append((str(r["services"]), r["operation"], r["method"],
                     r["status"] if r["status"] == "ok" else f"{r['status']}: {r['detail']}",
                     f"{s['median']:.4f}" if s else "-",
                     mad_pct_text(s),
                     f"{ratio['median']:.1f}x" if ratio else "-",
                     str(r["entries"]) if r["entries"] is not None else "-",
                     str(r["map_bytes"]) if r["map_bytes"] is not None else "-",
                     str(r["rules_text_bytes"]) if r["rules_text_bytes"] is not None else "-"))
    return HEADER, rows
