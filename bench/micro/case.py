"""A micro benchmark case: the program to time, its packet, the set-up of its
maps, and the check that its packet takes the path the case is named after.
The cases themselves are made by ``suite.discover_cases``, ``lb_cases`` and
``policy_cases``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bench.micro.fresh_flows import FreshSpec
from harness.errors import ChainbenchError
from harness.bpf import Collection

#: Which figure of a sample is ns/packet, by method and hook (see bench/micro/suite.py).
MEASURE = {"calls": {"sched_cls": "kernel", "xdp": "kernel"},
           "loop": {"sched_cls": "cpu", "xdp": "kernel"}}
METHOD = "calls"


class CaseCheckFailed(ChainbenchError, AssertionError):
    """A benchmark case's packet did not take the path the case is named after."""


@dataclass(frozen=True)
class Outcome:
    """What a case's packet came out as: what ``expect`` checks."""
    packet: bytes
    verdict: str
    drop_reason: int | None = None


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
    group: str | None = None    # cases of a group share one loaded collection
    #: Checks the first run's outcome (packet out, verdict, drop reason), so a case
    #: that does not take the path it names (a service miss instead of a hit, say)
    #: fails instead of timing the wrong thing.
    expect: Callable[[Outcome], None] | None = None
    variant: str = ""           # the case's short name ("established", ...); default: the program
    scale: dict = field(default_factory=dict)   # {"services": N}, {"identities": N}, {}
    #: Cases with the same key share their maps (pinned in the run's directory);
    #: ``setup`` runs once per key.
    maps: str | None = None
    #: The monitor aggregation level (harness.abi.monitor.LEVELS) of an events case
    #: (bench.micro.events_cases), timed in-process with its ring buffer drained
    #: after each sample; None for every other case.
    events: str | None = None
    #: The case an events case loads at its level (its variant, "established").
    events_base: str | None = None
    #: A new tuple on every call (bench.micro.fresh_flows): *packet* is the template;
    #: the suite sizes ``fresh.ct_map`` for the run and checks every call inserted
    #: ``fresh.entries_per_call`` entries.  None: the one packet on every call.
    fresh: FreshSpec | None = None
    #: Creation flags added to maps' own at load, by map name (harness.bpf.maps).
    map_flags: dict | None = None

    def __post_init__(self) -> None:
        if not self.variant:
            self.variant = self.program

    @property
    def hook(self) -> str:
        return "xdp" if self.floor == "empty:empty_xdp" else "sched_cls"

    def measure(self, method: str = METHOD) -> str:
        """The clock whose figure is this case's ns/packet (MEASURE)."""
        return MEASURE[method][self.hook]
