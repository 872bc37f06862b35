"""Micro benchmark: ns per packet of datapath programs, via BPF_PROG_TEST_RUN.

Method (fixed, so runs compare):
- every case is paired with the empty program of its hook (``empty_tc`` /
  ``empty_xdp``), the floor, run on the case's own packet; a round times the
  floor then the case, for every case in turn, so machine noise hits both
  sides of each ratio alike; ratios are taken within a round, and medians and
  MAD summarise the rounds;
- one sample = one BPF_PROG_TEST_RUN call with ``repeat`` runs.  Two figures
  are kept per sample: the call's wall-clock time divided by ``repeat``, and
  the kernel's own per-run average (whole nanoseconds only).  Which one is
  ns/packet depends on the hook (MEASURE): for tc the per-call set-up (skb
  allocation, copies: ~12 us) vanishes at 100k runs, so wall-clock gives
  sub-ns resolution; XDP's test_run flips a static key around every call with
  repeat > 1 (~16 ms, jittery), which swamps wall-clock time, so XDP figures
  use the kernel's integer average;
- each case runs once untimed first (a flow's first packet creates its
  conntrack entries; the timed runs are the established flow);
- the process is pinned to one CPU while measuring.
Packets are built once, outside any timed loop; maps are programmed once per
group of cases that share a loaded collection.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from bench.stats import summary
from harness import paths
from harness.bpf import Collection, Program

FLOORS = {"sched_cls": ("empty", "empty_tc"), "xdp": ("empty", "empty_xdp")}
#: Which per-sample figure is the ns/packet of a hook (see the module docstring).
MEASURE = {"sched_cls": "wall", "xdp": "kernel"}


def default_packet() -> bytes:
    """A TCP SYN from a pod to a service VIP: the packet generic programs are timed on."""
    from scapy.layers.inet import IP, TCP

    from harness.testing import eth
    return bytes(eth() / IP(src="198.18.0.10", dst="198.19.0.1")
                 / TCP(sport=40000, dport=80, flags="S", seq=1))


@dataclass
class Case:
    """One program to time, with its packet and the set-up of its maps."""
    name: str
    object: str                 # bpf_src/<object>.bpf.c
    program: str
    packet: bytes
    floor: str = "empty:empty_tc"
    rodata: dict = field(default_factory=dict)
    setup: Callable[[Collection], None] | None = None
    max_entries: dict | None = None
    group: str | None = None    # cases of a group share one loaded, programmed collection
    #: Checks the first run's output packet, so a case that does not take the path it
    #: names (a service miss instead of a hit, say) fails instead of timing the wrong thing.
    expect: Callable[[bytes], None] | None = None

    @property
    def measure(self) -> str:
        return "kernel" if self.floor == "empty:empty_xdp" else "wall"


def discover_cases(packet: bytes | None = None) -> list[Case]:
    """Every packet-hook program of every compiled datapath object but the floors,
    on the default packet, with its hook's floor."""
    from harness import datapath
    from harness.bpf.collection import list_programs
    packet = packet or default_packet()
    cases: list[Case] = []
    for obj in paths.datapath_objects():
        obj_name = obj.name.removesuffix(".bpf.o")
        if obj_name == "empty":
            continue
        for prog, prog_type in sorted(list_programs(str(obj)).items()):
            floor = FLOORS.get(prog_type)
            if floor is None:
                continue        # not a packet hook (cgroup programs and the like)
            cases.append(Case(f"{obj_name}:{prog}", obj_name, prog, packet,
                              floor=f"{floor[0]}:{floor[1]}",
                              rodata=datapath.rodata_for(obj_name), group=obj_name))
    return cases


def _time_once(prog: Program, packet: bytes, repeat: int) -> tuple[float, int, str]:
    start = time.perf_counter_ns()
    result = prog.test_run(packet, repeat=repeat)
    elapsed = time.perf_counter_ns() - start
    return elapsed / repeat, result.duration_ns, result.verdict


def _load_groups(cases: list[Case]) -> dict[str, Collection]:
    loaded: dict[str, Collection] = {}
    for c in cases:
        key = c.group or c.name
        if key in loaded:
            continue
        coll = Collection.load(str(paths.bpf_object(c.object)), rodata=c.rodata or None,
                               max_entries=c.max_entries)
        loaded[key] = coll
        if c.setup:
            c.setup(coll)
    return loaded


def run(cases: list[Case], samples: int = 7, repeat: int = 100_000,
        cpu: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure *cases*, each beside its floor, in interleaved rounds."""
    if samples < 1 or repeat < 1:
        raise ValueError("samples and repeat must be >= 1")
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    saved_affinity = os.sched_getaffinity(0)
    floors: dict[str, Collection] = {}
    loaded: dict[str, Collection] = {}
    series = {c.name: {"wall": [], "kernel": [], "floor_wall": [], "floor_kernel": []}
              for c in cases}
    verdicts: dict[str, str] = {}
    try:
        for c in cases:
            obj, _ = c.floor.split(":")
            if obj not in floors:
                floors[obj] = Collection.load(str(paths.bpf_object(obj)))
        loaded = _load_groups(cases)
        progs = {c.name: loaded[c.group or c.name].programs[c.program] for c in cases}
        floor_progs = {c.name: floors[c.floor.split(":")[0]].programs[c.floor.split(":")[1]]
                       for c in cases}
        for c in cases:                                   # untimed first packet
            first = progs[c.name].test_run(c.packet)
            if c.expect:
                c.expect(first.data_out)
        os.sched_setaffinity(0, {cpu})
        total, done = samples * len(cases), 0
        for _ in range(samples):
            for c in cases:
                s = series[c.name]
                fns, fkns, _ = _time_once(floor_progs[c.name], c.packet, repeat)
                ns, kns, verdict = _time_once(progs[c.name], c.packet, repeat)
                s["floor_wall"].append(fns)
                s["floor_kernel"].append(float(fkns))
                s["wall"].append(ns)
                s["kernel"].append(float(kns))
                verdicts[c.name] = verdict
                done += 1
                if progress:
                    progress(done, total)
    finally:
        os.sched_setaffinity(0, saved_affinity)
        for coll in [*loaded.values(), *floors.values()]:
            coll.close()

    results = []
    for c in cases:
        s = series[c.name]
        mine = s["wall"] if c.measure == "wall" else s["kernel"]
        floor = s["floor_wall"] if c.measure == "wall" else s["floor_kernel"]
        ratios = [a / b for a, b in zip(mine, floor)]
        results.append({
            "name": c.name, "object": c.object, "program": c.program,
            "verdict": verdicts[c.name], "floor": c.floor, "measure": c.measure,
            "samples_ns": mine, "floor_samples_ns": floor,
            "wall_ns": s["wall"], "kernel_ns": s["kernel"],
            "ns_per_packet": summary(mine), "floor_ns_per_packet": summary(floor),
            "kernel_ns_per_packet": summary(s["kernel"]),
            "ratio_to_floor": summary(ratios), "ratio_samples": ratios,
            "packet_hex": c.packet.hex(),
        })
    return {
        "config": {"samples": samples, "repeat": repeat, "cpu": cpu,
                   "method": "BPF_PROG_TEST_RUN; each case beside its floor on the same packet, "
                             "interleaved rounds; ns/packet from wall-clock per call / repeat "
                             "(tc) or the kernel's average (xdp)"},
        "results": results,
    }


def table(suite: dict) -> list[tuple[str, ...]]:
    """Rows: name, verdict, median ns, MAD %, clock, floor ns, ratio to floor."""
    rows = []
    for r in suite["results"]:
        ns, floor, ratio = r["ns_per_packet"], r["floor_ns_per_packet"], r["ratio_to_floor"]
        rows.append((r["name"], r["verdict"], f"{ns['median']:.2f}", f"{ns['mad_pct']:.1f}%",
                     r["measure"], f"{floor['median']:.2f}",
                     f"{ratio['median']:.2f}x ±{ratio['mad']:.2f}"))
    return rows
