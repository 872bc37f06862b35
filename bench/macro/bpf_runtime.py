"""BPF's own run time per program over one measured run (``kernel.bpf_stats_enabled``).

The kernel counts each program's runs and their total time (``run_cnt``,
``run_time_ns`` of ``struct bpf_prog_info``) only while the global setting
``kernel.bpf_stats_enabled`` is 1: ``Counting`` sets it for the length of its block
and puts the previous value back on every exit path (harness.host.sysctl; ``chainbench
down`` restores it after a SIGKILL).  Counting adds two clock reads per program run,
so it is on only during the measured run.

Our programs are the ones whose kernel name is a program of the compiled objects
(build/bpf/*.bpf.o; the kernel keeps 15 characters of a name) and that the topology
has attached (``topology_program_ids``: the tc programs on every node's uplink and
every pod's host-side veth, and the socket-LB programs the caller names): another
process's copies (a test suite's BPF_PROG_TEST_RUN counts too) are left out.  Each
node has its own copies; ``delta`` sums the copies of one program that ran, by name.
"""
from __future__ import annotations

import glob
import os

from harness import paths
from harness.bpf import ProgramStats, loaded_program_stats, tc_program_id
from harness.bpf.collection import list_programs
from harness.host import netns, sysctl

SETTING = "kernel.bpf_stats_enabled"
_NAME_LEN = 15


def our_program_names() -> set[str]:
    """Kernel names (15 characters at most) of the programs in the compiled objects."""
    names = set()
    for path in sorted(glob.glob(os.path.join(paths.bpf_objects_dir(), "*.bpf.o"))):
        names.update(n[:_NAME_LEN] for n in list_programs(path))
    return names


def topology_program_ids(state, extra: set[int] = frozenset()) -> set[int]:
    """Ids of the tc programs attached in topology *state* (each node's uplink, each
    pod's host-side veth, both directions), and *extra* (socket-LB programs)."""
    ids = set(extra)
    by_node = {n.name: n for n in state.nodes}
    hooks = [(n.uplink, n.netns) for n in state.nodes]
    hooks += [(p.host_ifname, by_node[p.node].netns) for p in state.pods
              if p.host_ifname and p.node in by_node]
    for ifname, ns in hooks:
        for direction in ("ingress", "egress"):
            try:
                pid = tc_program_id(ifname, direction, ns)
            except (OSError, netns.NetnsError):     # the interface went away meanwhile
                continue
            if pid:
                ids.add(pid)
    return ids


def snapshot(names: set[str], ids: set[int] | None = None) -> dict[int, ProgramStats]:
    """Run statistics of our loaded programs (of *ids* only, when given), by id."""
    return {s.id: s for s in loaded_program_stats(names) if ids is None or s.id in ids}


class Counting:
    """``with Counting(ids) as c: c.start(); ...; c.stop()``: the setting on between
    start and stop, the counters of our programs (those of *ids*, when given) read at
    both; ``c.before``, ``c.after``."""

    def __init__(self, ids: set[int] | None = None):
        self.ids = ids
        self.names = our_program_names()
        self.before: dict[int, ProgramStats] = {}
        self.after: dict[int, ProgramStats] = {}
        self._setting = None

    def __enter__(self) -> "Counting":
        return self

    def start(self) -> None:
        setting = sysctl.temporarily(SETTING, "1")
        setting.__enter__()             # on failure it has put the value back itself
        self._setting = setting
        self.before = snapshot(self.names, self.ids)

    def stop(self) -> None:
        try:
            self.after = snapshot(self.names, self.ids)
        finally:
            self._end()

    def _end(self) -> None:
        if self._setting is not None:
            setting, self._setting = self._setting, None
            setting.__exit__(None, None, None)

    def __exit__(self, *exc) -> None:
        self._end()


def delta(before: dict[int, ProgramStats], after: dict[int, ProgramStats],
          connections: int) -> list[dict]:
    """Per program name that ran between the snapshots (most time first): its copies
    that ran, runs, run time, ns per run, and runs and ns per connection."""
    by_name: dict[str, dict] = {}
    for pid, now in after.items():
        was = before.get(pid)
        runs = now.run_cnt - (was.run_cnt if was else 0)
        ns = now.run_time_ns - (was.run_time_ns if was else 0)
        if runs <= 0:
            continue
        row = by_name.setdefault(now.name, {"program": now.name, "type": now.type,
                                            "instances": 0, "runs": 0, "run_time_ns": 0})
        row["instances"] += 1
        row["runs"] += runs
        row["run_time_ns"] += ns
    rows = sorted(by_name.values(), key=lambda r: (-r["run_time_ns"], r["program"]))
    for row in rows:
        row["ns_per_run"] = row["run_time_ns"] / row["runs"]
        row["runs_per_connection"] = row["runs"] / connections if connections else None
        row["ns_per_connection"] = row["run_time_ns"] / connections if connections else None
    return rows
