"""What a run may leave behind, and the root namespace's state to compare.

``root_snapshot()``: the root network namespace as text (``ip -d addr``, ``ip route
show table all`` and ``ip rule`` for IPv4 and IPv6, ``tc qdisc``, ``nft list
ruleset``, ``iptables-save``, ``ip6tables-save``), normalised only where the
output changes by itself (address lifetimes, route expiry, rule counters, the
save tools' dated comment lines).  ``root_diff(before, after)`` names what differs.

``project_leftovers(baseline, marker)``: every project object on the machine: cb-*
namespaces, cb-* links in the root namespace, pins under /sys/fs/bpf/chainbench
(other than a live process's own ``bench-<pid>`` directory), cb-* cgroups, recorded
processes, processes of the run (its ``FAULTS_MARKER`` in their environment) or of
this checkout (chainbench, chainbench-cni, locust) or serving from a cb- scratch
directory (nginx and its workers), wrk, cb-* temp directories, the project's
scratch and record directories, and project iptables/nft rules in the root
namespace.  Processes and temp directories that existed in *baseline* (taken
before the run: another checkout's, say) are not the run's.
"""
from __future__ import annotations

import difflib
import glob
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from harness.host import bpffs, cgroups, netns, procs
from harness import paths

MARKER_ENV = "FAULTS_MARKER"

ROOT_COMMANDS = {
    "ip -d addr": ["ip", "-d", "addr"],
    "ip route show table all": ["ip", "route", "show", "table", "all"],
    "ip -6 route show table all": ["ip", "-6", "route", "show", "table", "all"],
    "ip rule": ["ip", "rule"],
    "ip -6 rule": ["ip", "-6", "rule"],
    "tc qdisc": ["tc", "qdisc", "show"],
    "nft list ruleset": ["nft", "list", "ruleset"],
    "iptables-save": ["iptables-save"],
    "ip6tables-save": ["ip6tables-save"],
}
_NORMALISE = [
    (re.compile(r"(valid_lft|preferred_lft) \d+sec"), r"\1 N"),
    (re.compile(r"expires \d+sec"), "expires N"),
    (re.compile(r"\[\d+:\d+\]"), "[N:N]"),
    (re.compile(r"counter packets \d+ bytes \d+"), "counter packets N bytes N"),
    (re.compile(r"^# .*$", re.M), ""),
]
PROJECT_RULE = re.compile(r"KUBE-|cb-|chainbench|CILIUM", re.I)


def root_snapshot() -> dict[str, str]:
    out = {}
    for name, cmd in ROOT_COMMANDS.items():
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = proc.stdout if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr}"
        for pattern, repl in _NORMALISE:
            text = pattern.sub(repl, text)
        out[name] = text
    return out


def root_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, str]:
    """Command -> unified diff, for each command whose output changed."""
    return {name: "".join(difflib.unified_diff(before[name].splitlines(True),
                                               after.get(name, "").splitlines(True)))
            for name in before if before[name] != after.get(name)}


# -- processes --------------------------------------------------------------------------------
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


@dataclass(frozen=True)
class Proc:
    pid: int
    start: str
    pgid: int
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.pid} {' '.join(self.argv)[:120]}"


def processes() -> dict[int, Proc]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat").decode(errors="replace")
        if ")" not in stat:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        argv = tuple(a.decode(errors="replace") for a in _read(f"/proc/{name}/cmdline").split(b"\0")
                     if a)
        out[int(name)] = Proc(int(name), fields[19], int(fields[2]), argv)
    return out


def project_processes(marker: str | None = None) -> set[Proc]:
    """Processes of the project: the run's (marker), this checkout's chainbench,
    chainbench-cni and locust, wrk, and whatever serves from a cb- scratch directory
    (with its process group: nginx workers)."""
    venv = os.path.dirname(sys.executable)
    mine = (str(paths.ROOT), venv)
    needle = f"{MARKER_ENV}={marker}".encode() if marker else None
    found: set[Proc] = set()
    leaders: set[int] = set()
    all_procs = processes()
    me = os.getpid()
    for p in all_procs.values():
        if p.pid == me:
            continue
        text = " ".join(p.argv)
        if needle and needle in _read(f"/proc/{p.pid}/environ").split(b"\0"):
            found.add(p)
        elif any(m in text for m in mine) and re.search(r"chainbench|harness\.cli|locust", text):
            found.add(p)
        elif p.argv and os.path.basename(p.argv[0]) == "wrk":
            found.add(p)
        elif procs.SCRATCH_ROOT in text or "/cb-nginx-" in text or "/cb-locust-" in text:
            found.add(p)
            leaders.add(p.pgid)
    found |= {p for p in all_procs.values() if p.pgid in leaders and p.pid != me}
    return found


def temp_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "cb-*")))


@dataclass
class Baseline:
    """What existed before the run and is not the run's to clean up: a topology the test
    set up first runs its nodes' flow observers (recorded processes, and so the records'
    directory)."""
    processes: set[tuple[int, str]] = field(default_factory=set)
    temp_dirs: set[str] = field(default_factory=set)
    recorded: set[tuple[int, str | None]] = field(default_factory=set)

    @classmethod
    def take(cls) -> "Baseline":
        dirs = temp_dirs() | {d for d in (procs.PROC_ROOT, procs.SCRATCH_ROOT)
                              if os.path.exists(d)}
        return cls({(p.pid, p.start) for p in project_processes()}, dirs,
                   {(pid, start) for pid, (start, _d) in procs.live().items()})

    def after_down(self) -> "Baseline":
        """After ``down`` nothing of the project may be left, the topology's own included."""
        project_dirs = {procs.PROC_ROOT, procs.SCRATCH_ROOT}
        return Baseline(self.processes, self.temp_dirs - project_dirs, set())


def _pins() -> list[str]:
    out = []
    if not os.path.isdir(bpffs.PIN_ROOT):
        return out
    for entry in sorted(os.listdir(bpffs.PIN_ROOT)):
        m = re.fullmatch(r"bench-(\d+)", entry)
        if m and os.path.exists(f"/proc/{m.group(1)}"):
            continue            # a running micro benchmark's own pins (another test's)
        for dirpath, _dirs, files in os.walk(os.path.join(bpffs.PIN_ROOT, entry)):
            out.extend(os.path.join(dirpath, f) for f in files)
        if not os.path.isdir(os.path.join(bpffs.PIN_ROOT, entry)):
            out.append(os.path.join(bpffs.PIN_ROOT, entry))
    return out


def project_leftovers(baseline: Baseline | None = None,
                      marker: str | None = None) -> dict[str, list[str]]:
    """Every kind of project leftover -> what is there (empty lists when clean)."""
    baseline = baseline or Baseline()
    links = [line.split(":")[1].strip().split("@")[0]
             for line in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                        text=True).stdout.splitlines()]
    firewall = [f"{name}: {line}" for name in ("nft list ruleset", "iptables-save",
                                                "ip6tables-save")
                for line in subprocess.run(ROOT_COMMANDS[name], capture_output=True,
                                           text=True).stdout.splitlines()
                if PROJECT_RULE.search(line)]
    project_dirs = [d for d in (procs.PROC_ROOT, procs.SCRATCH_ROOT)
                    if os.path.exists(d) and d not in baseline.temp_dirs]
    return {
        "namespaces": netns.list_project(),
        "links": [n for n in links if n.startswith("cb-")],
        "pins": _pins(),
        "cgroups": cgroups.list_project(),
        "recorded processes": [d for pid, (s, d) in procs.live().items()
                               if (pid, s) not in baseline.recorded],
        "processes": sorted(str(p) for p in project_processes(marker)
                            if (p.pid, p.start) not in baseline.processes),
        "temp dirs": sorted(temp_dirs() - baseline.temp_dirs) + project_dirs,
        "firewall rules": firewall,
    }


def nonempty(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in found.items() if v}
