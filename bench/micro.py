"""Micro benchmark: ns per packet of each datapath program, via BPF_PROG_TEST_RUN.

Method (fixed, so runs compare):
- each program runs on the same packet as the empty program of its hook
  (``empty_tc`` / ``empty_xdp``), which is the floor;
- one sample = one BPF_PROG_TEST_RUN call with ``repeat`` runs.  Two figures
  are kept per sample: the call's wall-clock time divided by ``repeat``, and
  the kernel's own per-run average (whole nanoseconds only).  Which one is
  reported as ns/packet depends on the hook (MEASURE below): for tc the
  per-call set-up (skb allocation, copies: ~12 us) vanishes at 100k runs, so
  wall-clock gives sub-ns resolution; XDP's test_run flips a static key
  around every call with repeat > 1 (~16 ms, jittery), which swamps wall-clock
  time, so XDP figures use the kernel's integer average;
- samples are interleaved (floor, A, B, floor, A, B, ...) and each program's
  ratio to the floor is taken within a round, so machine noise hits both
  sides of a ratio alike; medians and MAD summarise the rounds;
- the process is pinned to one CPU while measuring.
Packets are built once, outside any timed loop.
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
    """A TCP SYN from a pod to a service VIP: the packet every program is timed on."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="198.18.0.10", dst="198.19.0.1")
                 / TCP(sport=40000, dport=80, flags="S", seq=1))


@dataclass
class Case:
    """One program to time, and the packet and set-up it is timed with."""
    name: str
    object: str                 # bpf_src/<object>.bpf.c
    program: str
    packet: bytes
    measure: str = "wall"       # "wall" or "kernel", by hook (MEASURE)
    floor: str | None = None    # name of the floor case it is compared with
    rodata: dict = field(default_factory=dict)
    setup: Callable[[Collection], None] | None = None


def discover_cases(packet: bytes | None = None) -> list[Case]:
    """Every program of every compiled datapath object, each with its hook's floor."""
    from harness.bpf.collection import list_programs
    packet = packet or default_packet()
    cases: list[Case] = []
    floors_needed: set[tuple[str, str]] = set()
    for obj in paths.datapath_objects():
        obj_name = obj.name.removesuffix(".bpf.o")
        if obj_name == "empty":
            continue
        for prog, prog_type in list_programs(str(obj)).items():
            floor = FLOORS.get(prog_type)
            if floor is None:
                continue        # not a packet hook (cgroup programs and the like)
            floors_needed.add(floor)
            cases.append(Case(f"{obj_name}:{prog}", obj_name, prog, packet, MEASURE[prog_type],
                              floor=f"{floor[0]}:{floor[1]}"))
    floor_types = {v: k for k, v in FLOORS.items()}
    floor_cases = [Case(f"{o}:{p}", o, p, packet, MEASURE[floor_types[(o, p)]])
                   for o, p in sorted(floors_needed)]
    return floor_cases + cases


def _time_once(prog: Program, packet: bytes, repeat: int) -> tuple[float, int, str]:
    start = time.perf_counter_ns()
    result = prog.test_run(packet, repeat=repeat)
    elapsed = time.perf_counter_ns() - start
    return elapsed / repeat, result.duration_ns, result.verdict


def run(cases: list[Case], samples: int = 7, repeat: int = 100_000,
        cpu: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure *cases* interleaved; return the suite's result document."""
    if samples < 1 or repeat < 1:
        raise ValueError("samples and repeat must be >= 1")
    names = {c.name for c in cases}
    for c in cases:
        if c.floor and c.floor not in names:
            raise ValueError(f"case {c.name}: floor {c.floor} is not among the cases")
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    saved_affinity = os.sched_getaffinity(0)
    loaded: dict[str, Collection] = {}
    wall: dict[str, list[float]] = {c.name: [] for c in cases}
    kernel: dict[str, list[int]] = {c.name: [] for c in cases}
    verdicts: dict[str, str] = {}
    try:
        for c in cases:
            coll = Collection.load(str(paths.bpf_object(c.object)), rodata=c.rodata or None)
            loaded[c.name] = coll
            if c.setup:
                c.setup(coll)
        os.sched_setaffinity(0, {cpu})
        total, done = samples * len(cases), 0
        for _ in range(samples):
            for c in cases:
                ns, kns, verdict = _time_once(loaded[c.name].programs[c.program], c.packet, repeat)
                wall[c.name].append(ns)
                kernel[c.name].append(kns)
                verdicts[c.name] = verdict
                done += 1
                if progress:
                    progress(done, total)
    finally:
        os.sched_setaffinity(0, saved_affinity)
        for coll in loaded.values():
            coll.close()

    by_name = {c.name: c for c in cases}
    for c in cases:
        if c.floor and by_name[c.floor].measure != c.measure:
            raise ValueError(f"case {c.name}: measured by {c.measure}, its floor by "
                             f"{by_name[c.floor].measure}")

    def series(name: str) -> list[float]:
        return wall[name] if by_name[name].measure == "wall" else [float(k) for k in kernel[name]]

    results = []
    for c in cases:
        entry = {
            "name": c.name, "object": c.object, "program": c.program,
            "verdict": verdicts[c.name], "floor": c.floor, "measure": c.measure,
            "samples_ns": series(c.name), "wall_ns": wall[c.name], "kernel_ns": kernel[c.name],
            "ns_per_packet": summary(series(c.name)),
            "kernel_ns_per_packet": summary(kernel[c.name]),
        }
        if c.floor:
            ratios = [a / b for a, b in zip(series(c.name), series(c.floor))]
            entry["ratio_to_floor"] = summary(ratios)
            entry["ratio_samples"] = ratios
        results.append(entry)
    return {
        "config": {"samples": samples, "repeat": repeat, "cpu": cpu,
                   "packet_hex": cases[0].packet.hex() if cases else "",
                   "method": "BPF_PROG_TEST_RUN, interleaved rounds; ns/packet from wall-clock "
                             "per call / repeat (tc) or the kernel's average (xdp)"},
        "results": results,
    }


def table(suite: dict) -> list[tuple[str, ...]]:
    """Rows for printing: name, verdict, median ns, MAD %, source, kernel ns, ratio to floor."""
    rows = []
    for r in suite["results"]:
        ns = r["ns_per_packet"]
        ratio = r.get("ratio_to_floor")
        rows.append((r["name"], r["verdict"], f"{ns['median']:.2f}", f"{ns['mad_pct']:.1f}%",
                     r["measure"], f"{r['kernel_ns_per_packet']['median']:.0f}",
                     f"{ratio['median']:.2f}x" if ratio else "floor"))
    return rows

