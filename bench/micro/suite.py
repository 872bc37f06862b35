"""Micro benchmark: ns per packet of datapath programs, via BPF_PROG_TEST_RUN.

Entry points: ``run_suite(settings, progress)`` (bench.profiles.MicroSettings) gives
the suite's section of the result document, ``table(section)`` its header and rows (as
every suite: bench.control, bench.macro.suite); ``suite(services, identities, samples,
repeat, rounds, progress, pyperf_out)`` takes the settings one by one.

The method (A/B pairs with the empty program of the hook, one run per
BPF_PROG_TEST_RUN call, the first packet checked, pyperf workers on pinned
programs) is the README's "micro: ns per packet"; the pair itself is timed by
bench.micro.worker.  This module owns the parent's side: making the cases
(``discover_cases``, bench.micro.lb_cases, bench.micro.policy_cases), loading
and programming each scale once, checking every case's first packet, pinning
the programs under /sys/fs/bpf/cb-bench-<pid>/ (removed in a ``finally``),
running the pyperf workers (``workers=False``: the same pairs in this process),
and summarising the pairs (bench.stats).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pyperf
from scapy.layers.inet import IP, TCP

from bench.micro import events_cases, fresh_flows, lb_cases, policy_cases
from bench.micro import worker as W
from bench.micro.events_drain import EventsDrain
from bench.micro.fresh_flows import Cursor, Flows, FlowSpace
from bench.micro.case import MEASURE, METHOD, Case, CaseCheckFailed, Outcome
from bench.micro.worker import PAIRS_METADATA, PairTimer
from bench.profiles import MicroSettings
from bench.stats import MIN_SPREAD_SAMPLES, from_pyperf, mad_pct_text, summary
from harness.host import bpffs
from harness import paths
from harness.bpf import Collection, Program
from harness.bpf.collection import list_programs
from harness.bpf.programs import verdict_name
from harness.errors import ChainbenchError
from harness.node import datapath
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

FLOORS = {"sched_cls": ("empty", "empty_tc"), "xdp": ("empty", "empty_xdp")}
#: Below these, figures are indicative only (suite() wants indicative=True).
MIN_SAMPLES, MIN_REPEAT = 5, 100_000
FLOOR_SUFFIX = " [floor]"
#: Seconds pyperf waits for one worker before giving up.
WORKER_TIMEOUT = 900


class MicroBenchError(ChainbenchError, RuntimeError):
    """The micro suite could not measure (a worker failed, pyperf stopped)."""


def default_packet() -> bytes:
    """A TCP SYN from a pod to a service VIP: the packet generic programs are timed on."""

    return bytes(eth() / IP(src="198.18.0.10", dst="198.19.0.1")
                 / TCP(sport=40000, dport=80, flags="S", seq=1))


def discover_cases(packet: bytes | None = None) -> list[Case]:
    """Every packet-hook program of every compiled datapath object but the floors,
    on the default packet, with its hook's floor."""
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


def cases_for(services: list[int], identities: list[int], generic: bool = True,
              events: bool = False, repeat: int = MIN_REPEAT, scenario=None) -> list[Case]:
    """The suite's cases: every program on the default packet (*generic*), the LB
    cases at each service count, the policy cases at each identity count, and
    with *events* the events cases (bench.micro.events_cases, rings sized for
    *repeat* runs a sample)."""
    cases = discover_cases() if generic else []
    if generic and not cases:
        raise MicroBenchError(f"no compiled programs in {paths.bpf_objects_dir()} "
                              "(run `make build`)")
    for n in services:
        cases += lb_cases.cases(n)
    for n in identities:
        cases += policy_cases.cases(n)
    if events:
        cases += events_cases.cases(repeat)
    if scenario is not None:        # a user's own cluster (lb_cases.scenario_cases)
        cases += lb_cases.scenario_cases(scenario)
    return cases


# --- loading, programming, checking, pinning ----------------------------------------------

class Bench:
    """Cases loaded, programmed, checked and pinned for timing.  A context manager:
    leaving it closes every collection and removes the run's pin directory, on
    errors and Ctrl-C too."""

    def __init__(self, cases: list[Case], step: Callable[[], None] | None = None,
                 method: str = METHOD):
        if method not in MEASURE:
            raise ValueError(f"method must be one of {', '.join(MEASURE)}, not {method!r}")
        self.method = method
        names = [c.name for c in cases]
        if len(set(names)) != len(names):
            raise ValueError("case names must be unique")
        for c in cases:
            if c.fresh and any(o is not c and {o.maps or o.group or o.name, o.group or o.name}
                               & {c.maps or c.group or c.name, c.group or c.name}
                               for o in cases):
                raise ValueError(f"{c.name}: a fresh case's maps and collection are its own "
                                 "(its conntrack entries are counted)")
        self.cases = cases
        self.pin_dir: str | None = None
        self.programs: dict[str, Program] = {}      # case name -> program
        self.floors: dict[str, Program] = {}        # case name -> its floor
        self.first: dict[str, tuple[Outcome, int]] = {}   # case name -> first run, retval
        self.floor_retval: dict[str, int] = {}      # floor spec -> its return code
        self.pins: dict[str, tuple[str, str]] = {}  # case name -> (program pin, floor pin)
        self.flows: dict[str, Flows] = {}           # fresh case name -> its tuples
        self.cursor_pins: dict[str, str] = {}       # fresh case name -> its cursor's pin
        self._colls: dict[str, Collection] = {}
        self._floor_colls: dict[str, Collection] = {}
        self._step = step or (lambda: None)

    @staticmethod
    def load_steps(cases: list[Case]) -> int:
        """Progress steps of preparing *cases*: one per loaded collection and one
        per programmed set of maps."""
        return (len({c.group or c.name for c in cases})
                + len({c.maps or c.group or c.name for c in cases if c.setup}))

    def __enter__(self) -> "Bench":
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare(self) -> None:
        self.pin_dir = bpffs.bench_pin_dir()
        _remove_pins(self.pin_dir)          # left by a killed run with this pid
        os.makedirs(self.pin_dir)
        for c in self.cases:
            obj, _ = c.floor.split(":")
            if obj not in self._floor_colls:
                self._floor_colls[obj] = Collection.load(str(paths.bpf_object(obj)))
        map_dirs: dict[str, str] = {}
        programmed: set[str] = set()
        for c in self.cases:
            key = c.group or c.name
            new = key not in self._colls
            if new:
                pin = None
                if c.maps:
                    pin = map_dirs.setdefault(c.maps,
                                              os.path.join(self.pin_dir, f"maps{len(map_dirs)}"))
                self._colls[key] = Collection.load(str(paths.bpf_object(c.object)),
                                                   rodata=c.rodata or None,
                                                   max_entries=c.max_entries, pin_dir=pin,
                                                   map_flags=c.map_flags)
                self._step()
            coll = self._colls[key]
            if c.setup and (c.maps or key) not in programmed:
                c.setup(coll)
                programmed.add(c.maps or key)
                self._step()
            if c.program not in coll.programs:
                raise MicroBenchError(f"{c.name}: no program {c.program} in {c.object}")
            fobj, fprog = c.floor.split(":")
            self.programs[c.name] = coll.programs[c.program]
            self.floors[c.name] = self._floor_colls[fobj].programs[fprog]
            if c.fresh:
                pin = os.path.join(self.pin_dir, f"cursor{len(self.flows)}")
                self.flows[c.name] = Flows(FlowSpace(c.packet), Cursor.create(pin))
                self.cursor_pins[c.name] = pin
        for c in self.cases:
            self.first[c.name] = self.check(c)
            if self.method == "loop" and self.first[c.name][0].packet != c.packet:
                raise MicroBenchError(
                    f"{c.name}: the program rewrites its packet, and in a loop of runs on one "
                    "skb only the first run would see it: time it with method 'calls'")
            if c.floor not in self.floor_retval:
                self.floor_retval[c.floor] = self.floors[c.name].test_run(c.packet).retval

    def collection(self, c: Case) -> Collection:
        """The loaded collection *c* runs in."""
        return self._colls[c.group or c.name]

    def check(self, c: Case) -> tuple[Outcome, int]:
        """Run *c*'s packet (a fresh case: its next fresh packet) once, untimed, and
        apply its expect check."""
        packet = self.flows[c.name].packet() if c.fresh else c.packet
        r = Runner(self._colls[c.group or c.name], c.program).run(packet)
        out = Outcome(r.packet_out, r.verdict, r.drop_reason)
        if c.expect:
            try:
                c.expect(out)
            except CaseCheckFailed as exc:
                raise CaseCheckFailed(f"{c.name}: {exc}") from None
        return out, r.retval

    def pin_programs(self) -> None:
        """Pin every case program and floor (once each) for the workers."""
        pinned: dict[int, str] = {}
        for c in self.cases:
            for prog, kind in ((self.programs[c.name], "prog"), (self.floors[c.name], "floor")):
                if id(prog) not in pinned:
                    path = os.path.join(self.pin_dir, f"{kind}{len(pinned)}")
                    prog.pin(path)
                    pinned[id(prog)] = path
            self.pins[c.name] = (pinned[id(self.programs[c.name])], pinned[id(self.floors[c.name])])

    def ct_entries(self, c: Case) -> int:
        """Entries in a fresh case's conntrack map."""
        return self.collection(c).maps[c.fresh.ct_map].count()

    def fresh_mark(self, c: Case) -> tuple[int, int]:
        """(conntrack entries, next tuple index) of a fresh case."""
        return self.ct_entries(c), self.flows[c.name].cursor.next

    def close(self) -> None:
        for flows in self.flows.values():
            flows.close()
        self.flows.clear()
        for coll in [*self._colls.values(), *self._floor_colls.values()]:
            coll.close()
        self._colls.clear()
        self._floor_colls.clear()
        if self.pin_dir:
            _remove_pins(self.pin_dir)
            self.pin_dir = None


def _remove_pins(directory: str) -> None:
    if not os.path.basename(directory).startswith(bpffs.BENCH_PIN_PREFIX) or \
            os.path.dirname(directory) != bpffs.MOUNT_POINT:
        raise ValueError(f"refusing to remove {directory}: not a bench pin directory")
    if os.path.isdir(directory):
        shutil.rmtree(directory)


# --- timing ---------------------------------------------------------------------------------

def _never_in_parent(loops: int) -> float:
    raise AssertionError("pyperf called a time function in its parent process")


def _measure_workers(bench: Bench, cases: list[Case], measures: dict[str, str], samples: int,
                     repeat: int, rounds: int, cpu: int, step: Callable[[], None]) -> dict:
    """Case name -> (case pyperf.Benchmark, [pair records of each run]), for *cases*
    (of *bench*)."""
    bench.pin_programs()
    plan = {"samples": samples, "rounds": rounds, "repeat": repeat, "cases": [
        {"name": c.name, "program_pin": bench.pins[c.name][0], "floor_pin": bench.pins[c.name][1],
         "packet": c.packet.hex(), "measure": measures[c.name], "method": bench.method,
         **({"fresh": {"cursor_pin": bench.cursor_pins[c.name]}} if c.fresh else {})}
        for c in cases]}
    runner = W.make_runner(samples, rounds)
    runner.parse_args(["--quiet", f"--affinity={cpu}", "--inherit-environ",
                       ",".join(W.INHERITED_ENV), "--hook", W.HOOK_NAME,
                       "--timeout", str(WORKER_TIMEOUT)])
    saved = os.environ.get(W.PLAN_ENV)
    os.environ[W.PLAN_ENV] = json.dumps(plan)
    measured = {}
    try:
        for entry, c in zip(plan["cases"], cases):
            try:
                with contextlib.redirect_stdout(io.StringIO()):   # pyperf prints each result
                    pb = runner.bench_time_func(c.name, _never_in_parent,
                                                **W.bench_kwargs(plan, entry))
            except SystemExit as exc:       # pyperf exits on Ctrl-C and on its own errors
                if isinstance(exc.__context__, KeyboardInterrupt):
                    raise KeyboardInterrupt from None
                raise MicroBenchError(f"pyperf stopped while timing {c.name} "
                                      f"(exit status {exc.code})") from None
            except (RuntimeError, ValueError) as exc:
                raise MicroBenchError(f"timing {c.name}: {exc} (the worker's error is "
                                      "printed above)") from exc
            measured[c.name] = (pb, [_run_pairs(run, measures[c.name], c.name)
                                     for run in pb.get_runs()])
            step()
    finally:
        if saved is None:
            os.environ.pop(W.PLAN_ENV, None)
        else:
            os.environ[W.PLAN_ENV] = saved
    return measured


def _run_pairs(run, measure: str, name: str) -> list[dict]:
    """A worker run's pair records (warmup first), checked against its values."""
    meta = run.get_metadata()
    if PAIRS_METADATA not in meta:
        raise MicroBenchError(f"{name}: a pyperf run lacks its pairs (metadata {PAIRS_METADATA})")
    recs = json.loads(meta[PAIRS_METADATA])
    nwarm = len(run.warmups)
    if len(recs) != nwarm + len(run.values):
        raise MicroBenchError(f"{name}: {len(recs)} pairs recorded for {nwarm} warmups and "
                              f"{len(run.values)} values")
    for rec, value in zip(recs[nwarm:], run.values):
        if abs(rec[measure] * 1e-9 - value) > 1e-9 * value:
            raise MicroBenchError(f"{name}: pair records do not match pyperf's values")
    return recs


def _measure_in_process(bench: Bench, cases: list[Case], measures: dict[str, str],
                        samples: int, repeat: int, rounds: int, cpu: int,
                        step: Callable[[], None], drain: EventsDrain | None = None) -> dict:
    """The same pairs in this process: per round one warmup pass over *cases*, then
    *samples* passes; pyperf runs built from them.  With *drain* (the events cases)
    the passes start each at the next case (no case always follows the same one)
    and each case's ring buffer is drained after its sample (EventsDrain.after)."""

    timers = {c.name: PairTimer(bench.programs[c.name].fd, bench.floors[c.name].fd, c.packet,
                                repeat, measures[c.name], bench.method, bench.flows.get(c.name))
              for c in cases}
    per_round: dict[str, list[list[dict]]] = {c.name: [] for c in cases}
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
        if drain:
            drain.drain_all()           # the checks' records: before any sample
        for _ in range(rounds):
            start = {name: len(t.records) for name, t in timers.items()}
            for i in range(1 + samples):
                first = i % len(cases) if drain else 0
                for c in cases[first:] + cases[:first]:
                    if drain:
                        drain.before(c)
                    rec = timers[c.name].sample(warmup=i == 0)
                    if drain:
                        drain.after(c, rec)
            for name, t in timers.items():
                per_round[name].append(t.records[start[name]:])
    finally:
        os.sched_setaffinity(0, saved)
    measured = {}
    for c in cases:
        runs = []
        m = measures[c.name]
        for recs in per_round[c.name]:
            runs.append(pyperf.Run([r[m] * 1e-9 for r in recs[1:]],
                                   warmups=[(1, recs[0][m] * 1e-9)],
                                   metadata={"name": c.name, "unit": "second", "loops": 1,
                                             "inner_loops": repeat, "chainbench_measure": m,
                                             "chainbench_method": bench.method,
                                             PAIRS_METADATA: json.dumps(
                                                 recs, separators=(",", ":"))}))
        measured[c.name] = (pyperf.Benchmark(runs), per_round[c.name])
        step()
    return measured


# --- results --------------------------------------------------------------------------------

def _floor_benchmark(case_bench, runs_pairs: list[list[dict]], measure: str, name: str):
    """The floor side of a case's pairs as a pyperf benchmark: one run per case run,
    with the case run's metadata (minus the pairs) and the same value order."""

    key = "floor_" + measure
    runs = []
    for run, recs in zip(case_bench.get_runs(), runs_pairs):
        meta = {k: v for k, v in run.get_metadata().items() if k != PAIRS_METADATA}
        meta["name"] = name
        nwarm = len(run.warmups)
        runs.append(pyperf.Run([r[key] * 1e-9 for r in recs[nwarm:]],
                               warmups=[(1, r[key] * 1e-9) for r in recs[:nwarm]] or None,
                               metadata=meta, collect_metadata=False))
    return pyperf.Benchmark(runs)


def _preempted(rec: dict) -> bool:
    """Whether either side of a one-call sample lost the CPU mid-call (wall-clock
    time well above CPU time)."""
    return any(rec[p + "wall"] > 1.05 * rec[p + "cpu"] + 0.5 for p in ("", "floor_"))


def _result(bench: Bench, c: Case, measure: str, case_bench,
            runs_pairs: list[list[dict]]) -> tuple[dict, object]:
    first, retval = bench.first[c.name]
    pairs = [r for run, recs in zip(case_bench.get_runs(), runs_pairs)
             for r in recs[len(run.warmups):]]
    seen = {v for recs in runs_pairs for r in recs for v in r["retvals"]}
    if seen != {retval}:
        raise CaseCheckFailed(f"{c.name}: the first packet returned {retval}, timed runs "
                              f"returned {sorted(seen)}")
    floor_seen = {v for recs in runs_pairs for r in recs for v in r["floor_retvals"]}
    if floor_seen != {bench.floor_retval[c.floor]}:
        raise CaseCheckFailed(f"{c.name}: the floor {c.floor} returned {sorted(floor_seen)}")
    floor_bench = _floor_benchmark(case_bench, runs_pairs, measure, c.name + FLOOR_SUFFIX)
    mine = [round(v * 1e9, 6) for v in case_bench.get_values()]
    floor = [round(v * 1e9, 6) for v in floor_bench.get_values()]
    ratios = [a / b for a, b in zip(mine, floor)]
    prog = bench.programs[c.name]
    # Preemption shows (wall > CPU time) only when a sample is one call of a tc
    # program; XDP calls with repeat > 1 sleep in the static-key flip.
    one_call = bench.method == "loop" and c.hook == "sched_cls"
    return {
        "name": c.name, "case": c.variant, "scale": dict(c.scale),
        "object": c.object, "program": c.program,
        "verdict": verdict_name(prog.type, retval), "drop_reason": first.drop_reason,
        "floor": c.floor, "method": bench.method, "measure": measure,
        "samples_ns": mine, "floor_samples_ns": floor,
        "wall_ns": [r["wall"] for r in pairs], "cpu_ns": [r["cpu"] for r in pairs],
        "kernel_ns": [r["kernel"] for r in pairs],
        "ns_per_packet": from_pyperf(case_bench, 1e9),
        "floor_ns_per_packet": from_pyperf(floor_bench, 1e9),
        "kernel_ns_per_packet": summary([r["kernel"] for r in pairs]),
        "ratio_to_floor": summary(ratios), "ratio_samples": ratios,
        "above_floor_ns": summary([a - b for a, b in zip(mine, floor)]),
        "preempted_pairs": sum(_preempted(r) for r in pairs) if one_call else None,
        "rounds": len(runs_pairs),
        "pyperf": {"benchmark": c.name, "floor_benchmark": c.name + FLOOR_SUFFIX},
        "packet_hex": c.packet.hex(),
        **({"events": _events(c, case_bench, runs_pairs)} if c.events is not None else {}),
    }, floor_bench


def _events(c: Case, case_bench, runs_pairs: list[list[dict]]) -> dict:
    """What an events case's samples wrote to its ring (bench.micro.events_drain):
    records of the timed samples (warmups apart), by type and per packet, and the
    records lost (cb_events_lost) during every sample, warmups included."""
    timed, warm = [], []
    for run, recs in zip(case_bench.get_runs(), runs_pairs):
        nwarm = len(run.warmups)
        warm += recs[:nwarm]
        timed += recs[nwarm:]
    runs = sum(r["runs"] for r in timed)
    types: dict[str, int] = {}
    for r in timed:
        for kind, n in r["event_types"].items():
            types[kind] = types.get(kind, 0) + n
    records = sum(r["events"] for r in timed)
    return {
        "level": c.events, "monitor_aggregation": events_cases.level_value(c.events),
        "base_case": c.events_base, "ring_bytes": (c.max_entries or {}).get("cb_events"),
        "records": records, "records_per_packet": round(records / runs, 6) if runs else 0.0,
        "records_per_sample": [r["events"] for r in timed], "runs_per_sample": timed[0]["runs"],
        "by_type": types, "warmup_records": sum(r["events"] for r in warm),
        "lost": sum(r["lost"] for r in warm + timed),
        "lost_per_sample": [r["lost"] for r in timed],
    }


def _add_ratios_to_off(results: list[dict]) -> None:
    """Each events result's cost against its case at level off of the same run,
    sample by sample (the samples of one index were taken back to back): the
    ratio of the ns above the empty program (the programs' own cost), and the ns
    more than off."""
    offs = {(r["events"]["base_case"], json.dumps(r["scale"], sort_keys=True)): r
            for r in results if "events" in r and r["events"]["level"] == events_cases.BASELINE}
    for r in results:
        if "events" not in r:
            continue
        key = (r["events"]["base_case"], json.dumps(r["scale"], sort_keys=True))
        off = offs.get(key)
        if off is None:
            raise MicroBenchError(f"{r['name']}: no {events_cases.BASELINE!r} case of "
                                  f"{key[0]} in this run to compare with")
        mine = [a - b for a, b in zip(r["samples_ns"], r["floor_samples_ns"])]
        base = [a - b for a, b in zip(off["samples_ns"], off["floor_samples_ns"])]
        if len(mine) != len(base):
            raise MicroBenchError(f"{r['name']}: {len(mine)} samples, its off case "
                                  f"{len(base)}")
        if min(base) <= 0:
            raise MicroBenchError(f"{off['name']}: a sample at or below the empty program's "
                                  "time; no ratio to it")
        ratios = [a / b for a, b in zip(mine, base)]
        r["events"]["baseline"] = off["name"]
        r["ratio_to_off"] = summary(ratios)
        r["ratio_to_off_samples"] = [round(x, 6) for x in ratios]
        r["above_off_ns"] = summary([a - b for a, b in zip(mine, base)])


def _execute(cases: list[Case], samples: int, repeat: int, rounds: int, cpu: int | None,
             progress: Callable[[int, int], None] | None, pyperf_out: Path | str | None,
             workers: bool, indicative: bool, extra: dict, method: str) -> dict:
    if samples < 1 or repeat < 1 or rounds < 1:
        raise ValueError("samples, repeat and rounds must be >= 1")
    if method not in MEASURE:
        raise ValueError(f"method must be one of {', '.join(MEASURE)}, not {method!r}")
    if not cases:
        raise ValueError("no cases to measure")
    cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
    cases = [_sized(c, fresh_flows.calls_of_run(samples, repeat, rounds)) for c in cases]
    measures = {c.name: c.measure(method) for c in cases}
    total, done = Bench.load_steps(cases) + len(cases), 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    plain = [c for c in cases if c.events is None]
    evs = [c for c in cases if c.events is not None]
    t0 = time.monotonic()
    with Bench(cases, step, method) as bench:
        t1 = time.monotonic()
        marks = {c.name: bench.fresh_mark(c) for c in cases if c.fresh}
        measured = {}
        if plain:
            measure = _measure_workers if workers else _measure_in_process
            measured.update(measure(bench, plain, measures, samples, repeat, rounds, cpu, step))
        t_events = time.monotonic()
        if evs:     # in this process, so the ring is drained by the timing process itself
            with EventsDrain(bench, evs) as drain:
                measured.update(_measure_in_process(bench, evs, measures, samples, repeat,
                                                    rounds, cpu, step, drain))
                untimed = drain.untimed
        t2 = time.monotonic()
        for c in cases:                 # still on its path after timing
            bench.check(c)
        inserts = {c.name: _check_inserts(bench, c, marks[c.name]) for c in cases if c.fresh}
        results, benches = [], []
        for c in cases:
            case_bench, runs_pairs = measured[c.name]
            res, floor_bench = _result(bench, c, measures[c.name], case_bench, runs_pairs)
            if c.fresh:
                res["fresh"] = inserts[c.name]
            results.append(res)
            benches += [case_bench, floor_bench]
        _add_ratios_to_off(results)
    if pyperf_out is not None:
        pyperf_out = Path(pyperf_out)
        pyperf_out.parent.mkdir(parents=True, exist_ok=True)
        pyperf.BenchmarkSuite(benches).dump(str(pyperf_out), replace=True)
    floors: dict[str, list[float]] = {}
    for r in results:
        floors.setdefault(r["floor"], []).extend(r["floor_samples_ns"])
    config = {
        **extra,
        "samples": samples, "repeat": repeat, "rounds": rounds, "cpu": cpu,
        "indicative": indicative, "workers": workers,
        "pyperf": {"version": pyperf.__version__,
                   "file": str(pyperf_out) if pyperf_out is not None else None,
                   "processes_per_case": rounds if workers else 0,
                   "warmups_per_run": 1, "values_per_run": samples,
                   "benchmarks": "each case, and '<case>" + FLOOR_SUFFIX + "' for its floor"},
        "floors": {spec: summary(v) for spec, v in floors.items()},
        "seconds": {"prepare": round(t1 - t0, 3), "measure": round(t2 - t1, 3),
                    "total": round(time.monotonic() - t0, 3)},
        "method": method, "measure": dict(MEASURE[method]),
        **({"events": _events_config(evs, untimed, t2 - t_events)} if evs else {}),
        "description": "BPF_PROG_TEST_RUN; each sample an A/B pair (the case and its floor on "
                       "the same packet, back to back, order alternating); ratios within "
                       "pairs; " + _DESCRIBE[method] + "; pyperf "
                       + ("worker processes" if workers else "runs built in-process"),
    }
    return {"config": config, "results": results}


def _sized(c: Case, calls: int) -> Case:
    """*c*, a fresh case with its conntrack map sized for *calls* calls without an
    LRU eviction (bench.micro.fresh_flows.ct_max_entries); any other as it is."""
    if not c.fresh:
        return c
    flags = (c.map_flags or {}).get(c.fresh.ct_map, 0)
    size = fresh_flows.ct_max_entries(c.fresh, calls, flags)
    return replace(c, max_entries={**(c.max_entries or {}), c.fresh.ct_map: size})


def _check_inserts(bench: Bench, c: Case, mark: tuple[int, int]) -> dict:
    """That every call of a fresh case since *mark* (Bench.fresh_mark) inserted its
    conntrack entries: the map grew by entries_per_call for each tuple taken.  Fewer
    means calls found entries (a tuple taken twice) or the LRU evicted some."""
    before, first = mark
    after, end = bench.fresh_mark(c)
    calls, inserted = end - first, after - before
    expected = c.fresh.entries_per_call * calls
    if inserted != expected:
        raise CaseCheckFailed(
            f"{c.name}: {calls} calls on fresh tuples inserted {inserted} {c.fresh.ct_map} "
            f"entries, not {expected} ({c.fresh.entries_per_call} per call): the timed "
            "calls did not all create new flows")
    return {"ct_map": c.fresh.ct_map, "ct_max_entries": (c.max_entries or {})[c.fresh.ct_map],
            "map_flags": (c.map_flags or {}).get(c.fresh.ct_map, 0),
            "calls": calls, "entries_per_call": c.fresh.entries_per_call,
            "entries_before": before, "entries_after": after}


def _events_config(cases: list[Case], untimed: int, seconds: float) -> dict:
    return {
        "levels": list(dict.fromkeys(c.events for c in cases)),
        "cases": list(dict.fromkeys(c.events_base for c in cases)),
        "baseline": events_cases.BASELINE,
        "workers": False, "seconds": round(seconds, 3), "untimed_records": untimed,
        "description": "each case loaded at each monitor_aggregation level (rodata per load; "
                       "the levels of a case share its maps); timed in this process, every "
                       "pass over all of them back to back (starting one case later each "
                       "pass), the ring buffer drained and cb_events_lost read after each "
                       "sample; ratio_to_off: ns above the empty program at the level / at "
                       "off, sample by sample",
    }


_DESCRIBE = {
    "calls": "each sample repeat calls of one run, ns/packet the mean of the kernel's per-run "
             "durations (every run sees the packet as built)",
    "loop": "each sample one call of repeat runs (programs that leave the packet unchanged "
            "only), ns/packet the calling thread's CPU time / repeat (tc) or the kernel's "
            "average (xdp)",
}


def suite(services: list[int], identities: list[int], samples: int = 7,
          repeat: int = MIN_REPEAT, rounds: int = 1,
          progress: Callable[[int, int], None] | None = None,
          pyperf_out: Path | str | None = None, *, indicative: bool = False,
          generic: bool = True, workers: bool = True, cpu: int | None = None,
          method: str = METHOD, events: bool = False, scenario: str | None = None) -> dict:
    """The micro suite: every program on the default packet (*generic*), the LB
    cases at each count of *services* (x 10 backends), the policy cases at each
    count of *identities*; each case beside its floor in *rounds* x *samples*
    A/B pairs of *repeat* runs.

    Fewer than 5 samples or 100000 runs per sample need *indicative* (the
    result says so).  *progress(done, total)* is called after each loaded
    collection and each measured case.  *pyperf_out*: where to write the
    pyperf JSON (cases and floors).  *workers*: time in pyperf worker
    processes (default) or in this process.  *cpu*: the CPU timing runs on
    (default: the last one this process may use).  *method*: "calls" (default)
    or "loop" (see the module docstring).  *events*: also the cost of flow
    events (bench.micro.events_cases: cases at monitor aggregation off, medium
    and none, timed in this process, each with ``events`` and ``ratio_to_off``).

    Returns {"config": {...}, "results": [...]}, one result per case.
    """
    if not indicative and (samples < MIN_SAMPLES or repeat < MIN_REPEAT):
        raise ValueError(f"fewer than {MIN_SAMPLES} samples or {MIN_REPEAT} runs per sample "
                         "give indicative figures only: pass indicative=True")
    loaded = None
    if scenario is not None:        # any valid addresses: the programs are not attached
        from harness import validate
        loaded = validate.load(scenario, plan_checked=False)
    cases = cases_for(services, identities, generic, events, repeat, loaded)
    extra = {"services": list(services), "identities": list(identities), "generic": generic,
             **({"scenario": loaded.source} if loaded is not None else {})}
    return _execute(cases, samples, repeat, rounds, cpu, progress, pyperf_out, workers,
                    indicative, extra, method)


def run(cases: list[Case], samples: int = 7, repeat: int = MIN_REPEAT, cpu: int | None = None,
        progress: Callable[[int, int], None] | None = None, *, rounds: int = 1,
        workers: bool = True, pyperf_out: Path | str | None = None,
        method: str = METHOD) -> dict:
    """Measure the given *cases* as suite() does (figures below 5 samples or
    100000 runs per sample are marked indicative)."""
    indicative = samples < MIN_SAMPLES or repeat < MIN_REPEAT
    return _execute(cases, samples, repeat, rounds, cpu, progress, pyperf_out, workers,
                    indicative, {}, method)


def indicative(settings: MicroSettings) -> bool:
    """Whether *settings* give indicative figures only (too few samples or runs)."""
    return settings.samples < MIN_SAMPLES or settings.repeat < MIN_REPEAT


def run_suite(settings: MicroSettings,
              progress: Callable[[int, int, str], None] | None = None) -> dict:
    """The suite's section of the result document for *settings* (a profile's); short
    runs are marked indicative.  *progress(done, total, description)*."""
    return suite(list(settings.services), list(settings.identities), samples=settings.samples,
                 repeat=settings.repeat, rounds=settings.rounds,
                 indicative=indicative(settings), generic=settings.generic,
                 events=settings.events, scenario=settings.scenario,
                 progress=(lambda done, total: progress(done, total, "micro")) if progress
                 else None)


HEADER = ("CASE", "VERDICT", "NS/PKT", "MAD", "CLOCK", "EMPTY NS", "VS EMPTY", "ABOVE EMPTY",
          "VS OFF", "EVENTS/PKT")


def _ratio_text(ratio: dict) -> str:
    spread = f" ±{ratio['mad']:.2f}" if ratio["n"] >= MIN_SPREAD_SAMPLES else ""
    return f"{ratio['median']:.2f}x{spread}"


def _events_text(r: dict) -> str:
    ev = r.get("events")
    if not ev:
        return "-"
    text = f"{ev['records_per_packet']:.4g}"
    return text + (f" ({ev['lost']} LOST)" if ev["lost"] else "")


def table(suite: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: name, verdict, median ns, MAD %, clock, floor ns, ratio to
    floor, ns above the floor (median ± MAD), and for the events cases the ratio
    of that to the case at level off and the records written per packet (lost
    records named)."""
    rows = []
    for r in suite["results"]:
        ns, floor, ratio = r["ns_per_packet"], r["floor_ns_per_packet"], r["ratio_to_floor"]
        above = r.get("above_floor_ns")
        above_text = "-" if not above else (
            f"{above['median']:.1f}" + (f" ±{above['mad']:.1f}"
                                        if above["n"] >= MIN_SPREAD_SAMPLES else ""))
        rows.append((r["name"], r["verdict"], f"{ns['median']:.2f}", mad_pct_text(ns, "sample"),
                     r["measure"], f"{floor['median']:.2f}", _ratio_text(ratio), above_text,
                     _ratio_text(r["ratio_to_off"]) if r.get("ratio_to_off") else "-",
                     _events_text(r)))
    return HEADER, rows
