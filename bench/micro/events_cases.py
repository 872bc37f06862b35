"""Micro-benchmark cases of the cost of flow events (issue 14's "cost of visibility").

Three existing cases, each loaded at three monitor aggregation levels (the
rodata ``monitor_aggregation`` of bpf_src/lib/events.h, one load per level):

  established         lb_cases' established ClusterIP hit (from_container, CT hit, DNAT)
  policy-established  policy_cases' allowed pod->pod packet of an established connection
  policy-new          policy_cases' allowed new connection (every run a conntrack miss)

  levels (LEVELS)     off (255: no event), medium (3: Cilium's default, a trace
                      only when conntrack asks), none (0: a trace for every packet)

A case is named ``<the base case's name>/events=<level>`` and its variant
``<base variant> events=<level>``, so the dashboard and the tables show the
three levels of a case side by side.  The levels of a scenario share one set
of maps (its conntrack entries, its ring buffer) so only the events differ.

bench.micro.suite times these cases in its own process, every sample of every
level back to back (one interleaved run), drains the ring buffer after each
sample and reads cb_events_lost around it; the ring is sized here to hold one
sample's records (RECORDS_PER_PACKET records per run of the sample).
"""
from __future__ import annotations

import ctypes
import dataclasses

from bench.micro import lb_cases, policy_cases
from bench.micro.case import Case
from harness.abi import monitor
from harness.abi.structs import Event

#: The levels timed, "off" (the baseline of the ratios) first.
LEVELS = ("off", "medium", "none")
BASELINE = "off"
#: The base cases: (module, variant).
BASES = ((lb_cases, "established"), (policy_cases, "policy-established"),
         (policy_cases, "policy-new"))
#: Records one run of a case may write at most (a policy verdict and a trace, or
#: a trace at the program's entry and one at its exit), for the ring's size.
RECORDS_PER_PACKET = 2
#: A ring-buffer record: the struct and the kernel's 8-byte header, 8-aligned.
RECORD_BYTES = (ctypes.sizeof(Event) + 8 + 7) // 8 * 8
MIN_RING = 1 << 22          # lib/events.h's compiled-in CB_EVENTS_SIZE
#: The runs of the suite's warmup pass and the checks before timing, on top of a sample.
SLACK_RUNS = 1024


def ring_bytes(runs: int) -> int:
    """The ring size (a power of two, >= a page) holding *runs* runs' records."""
    need = (runs + SLACK_RUNS) * RECORDS_PER_PACKET * RECORD_BYTES
    size = MIN_RING
    while size < need:
        size <<= 1
    return size


def level_value(level: str) -> int:
    """monitor_aggregation of *level* (harness.abi.monitor.LEVELS)."""
    return monitor.LEVELS[level]


def cases(runs_per_sample: int, services: int = 1, identities: int = 1,
          levels: tuple[str, ...] = LEVELS) -> list[Case]:
    """The events cases: each base case at each of *levels*, its ring sized for
    *runs_per_sample* runs (the suite's ``repeat``)."""
    if BASELINE not in levels:
        raise ValueError(f"the levels must include {BASELINE!r}, the ratios' baseline")
    unknown = [lv for lv in levels if lv not in monitor.LEVELS]
    if unknown:
        raise ValueError(f"unknown aggregation level(s) {', '.join(unknown)}: one of "
                         f"{', '.join(monitor.LEVELS)}")
    ring = ring_bytes(runs_per_sample)
    made = {"lb": {c.variant: c for c in lb_cases.cases(services)},
            "policy": {c.variant: c for c in policy_cases.cases(identities)}}
    out = []
    for module, variant in BASES:
        base = made["lb" if module is lb_cases else "policy"][variant]
        for level in levels:
            out.append(dataclasses.replace(
                base, name=f"{base.name}/events={level}", variant=f"{variant} events={level}",
                rodata={**base.rodata, "monitor_aggregation": level_value(level)},
                group=f"{base.group}/events={level}", maps=f"events-{base.maps}",
                max_entries={**(base.max_entries or {}), "cb_events": ring},
                events=level, events_base=variant))
    return out
