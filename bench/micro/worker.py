"""The timing side of the micro benchmark: one A/B pair of BPF_PROG_TEST_RUN calls
at a time, and the pyperf worker process that does it on pinned programs.

This module's main() is what bench.micro.suite's pyperf.Runner spawns
(WORKER_PROGRAM, its ``program_args``).  The parent has loaded, programmed and pinned
everything; it passes the plan (case names, pin paths, packets, repeat) in
the environment variable CHAINBENCH_MICRO_PLAN, which pyperf hands to
workers through ``--inherit-environ``.  A worker registers every case as a
pyperf benchmark in plan order, as the parent does, and pyperf runs only the
one its ``--worker-task`` names: it opens that case's program and floor by
pin path and times them.

One pyperf value is one A/B pair: ``repeat`` runs of the floor and
``repeat`` runs of the case on the same packet, back to back, in alternating
order (floor first on even pairs, case first on odd ones, so neither side is
always second).  pyperf records the case's per-run time (``loops`` is 1,
``inner_loops`` is repeat); the hook ``chainbench_pairs`` puts every pair of
the process (both sides on every clock, return codes, order) into the run's
metadata, from which the parent builds the floor's pyperf benchmark and the
per-pair ratios.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
import time

import pyperf

from bench.micro.fresh_flows import Cursor, Flows, FlowSpace
from harness import paths
from harness.bpf import BpfError, Program
from harness.bpf import _libbpf as L

PLAN_ENV = "CHAINBENCH_MICRO_PLAN"
#: Environment variables workers need (pyperf passes only what --inherit-environ lists).
INHERITED_ENV = (PLAN_ENV, "CHAINBENCH_LIBBPF")
HOOK_NAME = PAIRS_METADATA = "chainbench_pairs"
_ROOT = str(paths.ROOT)     # the repository, so a worker imports this checkout
#: What pyperf runs as a worker (its program_args): this module's main(), with the
#: source tree first on sys.path whatever the worker's cwd and environment.
WORKER_PROGRAM = ("-c", f"import sys; sys.path.insert(0, {_ROOT!r}); "
                        "from bench.micro.worker import main; main()")

_OUT_HEADROOM = 512
#: How one sample of *repeat* runs is taken (see bench.micro.suite's docstring):
#:   calls  repeat BPF_PROG_TEST_RUN calls of one run each: every run gets a fresh
#:          copy of the packet; the figure is the mean of the kernel's per-run
#:          durations (whole ns each: the mean has sub-ns resolution)
#:   loop   one call of repeat runs: the kernel reruns the program on the same
#:          skb, so it is only valid for programs that leave the packet as it was
METHODS = ("calls", "loop")
#: The clocks of a sample, each as ns per run: wall-clock time; the calling
#: thread's CPU time (CLOCK_THREAD_CPUTIME_ID: wall-clock time without the time
#: other tasks had the CPU when this one was preempted mid-call); the kernel's
#: own per-run duration.  With "calls", wall and CPU time include each call's
#: syscall and skb set-up (microseconds): only "kernel" measures the program.
CLOCKS = ("wall", "cpu", "kernel")


class Shot:
    """BPF_PROG_TEST_RUN of one packet, *repeat* runs per call.  Buffers and the
    options struct are built once; only the syscalls are inside the timed span."""

    def __init__(self, fd: int, packet: bytes, repeat: int = 1):
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.fd, self.repeat = fd, repeat
        self._din = ctypes.create_string_buffer(packet, len(packet))
        self._dout = ctypes.create_string_buffer(len(packet) + _OUT_HEADROOM)
        self._opt = L.opts(L.TestRunOpts, data_in=ctypes.addressof(self._din),
                           data_size_in=len(packet), data_out=ctypes.addressof(self._dout),
                           data_size_out=len(self._dout), repeat=repeat)
        self._ref = ctypes.byref(self._opt)

    def __call__(self, calls: int = 1,
                 block: tuple[int, int] | None = None) -> tuple[float, float, float, list[int]]:
        """*calls* calls: (wall-clock ns, this thread's CPU ns, the kernel's ns, each
        per run, the kernel's figure averaged over the calls; the distinct return
        codes).  With *block* (address, stride: bench.micro.fresh_flows.Flows.block)
        call i runs the packet at address + i * stride instead of the one packet,
        each of the same size."""
        if calls < 1:
            raise ValueError("calls must be >= 1")
        opt, call, fd, ref = self._opt, L.bpf_prog_test_run_opts, self.fd, self._ref
        size = len(self._dout)
        kernel, seen = 0, set()
        add = seen.add
        # Two loops rather than one with a test per call: the timed loop of one packet
        # stays exactly what the figures before fresh flows measured.
        if block is None:
            cpu0 = time.thread_time_ns()
            start = time.perf_counter_ns()
            for _ in range(calls):
                opt.data_size_out = size
                rc = call(fd, ref)
                if rc < 0:
                    raise BpfError(f"test_run of program fd {fd}", -rc)
                kernel += opt.duration
                add(opt.retval)
            elapsed = time.perf_counter_ns() - start
            cpu = time.thread_time_ns() - cpu0
        else:
            addr, stride = block
            cpu0 = time.thread_time_ns()
            start = time.perf_counter_ns()
            for i in range(calls):
                opt.data_in = addr + i * stride
                opt.data_size_out = size
                rc = call(fd, ref)
                if rc < 0:
                    raise BpfError(f"test_run of program fd {fd}", -rc)
                kernel += opt.duration
                add(opt.retval)
            elapsed = time.perf_counter_ns() - start
            cpu = time.thread_time_ns() - cpu0
            opt.data_in = ctypes.addressof(self._din)
        runs = calls * self.repeat
        return elapsed / runs, cpu / runs, kernel / calls, sorted(seen)

    @property
    def data_out(self) -> bytes:
        return self._dout.raw[:self._opt.data_size_out]


class PairTimer:
    """A case and its floor on the same packet, timed as alternating A/B pairs of
    *repeat* runs a side, taken as *method* (METHODS); *measure* (CLOCKS) names
    the figure that is ns/packet."""

    def __init__(self, case_fd: int, floor_fd: int, packet: bytes, repeat: int, measure: str,
                 method: str = "calls", flows=None):
        if measure not in CLOCKS:
            raise ValueError(f"measure must be one of {', '.join(CLOCKS)}, not {measure!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        if method == "calls" and measure != "kernel":
            raise ValueError("with method 'calls' only the kernel's figure measures the program")
        if flows is not None and method != "calls":
            raise ValueError("fresh flows need method 'calls' (one packet per call)")
        per_call = repeat if method == "loop" else 1
        self.calls = 1 if method == "loop" else repeat
        self.case = Shot(case_fd, packet, per_call)
        self.floor = Shot(floor_fd, packet, per_call)
        self.repeat, self.measure, self.method = repeat, measure, method
        #: bench.micro.fresh_flows.Flows: a new tuple per call (both sides of a pair
        #: run the same packets), or None: the one packet
        self.flows = flows
        self.records: list[dict] = []

    def sample(self, warmup: bool = False) -> dict:
        """Time one pair; the record holds per-run ns of both sides on every clock.
        A *warmup* pair of method "calls" makes a tenth of the calls (it is
        discarded; it only brings caches and branch predictors to their state)."""
        calls = max(1, self.calls // 10) if warmup else self.calls
        case_first = len(self.records) % 2 == 1
        block = self.flows.block(calls) if self.flows is not None else None
        if case_first:
            c = self.case(calls, block)
            f = self.floor(calls, block)
        else:
            f = self.floor(calls, block)
            c = self.case(calls, block)
        rec = {"runs": calls * self.case.repeat, "wall": c[0], "cpu": c[1], "kernel": c[2],
               "floor_wall": f[0], "floor_cpu": f[1], "floor_kernel": f[2],
               "retvals": c[3], "floor_retvals": f[3], "case_first": case_first}
        self.records.append(rec)
        return rec

    def ns(self, rec: dict, floor: bool = False) -> float:
        """The figure of a record that is ns/packet (see CLOCKS)."""
        return rec[("floor_" if floor else "") + self.measure]


# --- pyperf --------------------------------------------------------------------------

_active: PairTimer | None = None     # the timer of this worker's task


class _PairsHook:
    """pyperf hook: after each batch of values, writes the worker's A/B records
    into the run's metadata (pyperf passes the metadata dict to teardown)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def teardown(self, metadata: dict) -> None:
        if _active is not None:
            metadata[PAIRS_METADATA] = json.dumps(_active.records, separators=(",", ":"))


class PairsHookEntry:
    """What pyperf.Runner(hooks=...) takes: a name and load() -> the hook class."""
    name = HOOK_NAME

    @staticmethod
    def load():
        return _PairsHook


def make_runner(samples: int, rounds: int) -> pyperf.Runner:
    """A pyperf.Runner: *rounds* worker processes per case, each 1 warmup pair
    then *samples* pairs, one pair per value.  pyperf allows one Runner per class
    and process; each call makes its own subclass so a process may run the suite
    more than once (tests do)."""
    runner_cls = type("MicroRunner", (pyperf.Runner,), {})
    return runner_cls(values=samples, processes=rounds, loops=1, warmups=1,
                      program_args=WORKER_PROGRAM, hooks=[PairsHookEntry])


def time_func_for(entry: dict, repeat: int):
    """The pyperf time function of a plan entry: opens the pins on first use."""
    timer: list[PairTimer] = []
    programs: list[Program] = []        # held for the fds the timer uses

    def time_func(loops: int) -> float:
        global _active
        if loops != 1:
            raise ValueError("the micro suite times one A/B pair per value: run with --loops 1")
        if not timer:
            programs[:] = [Program.from_pin(entry["program_pin"]),
                           Program.from_pin(entry["floor_pin"])]
            flows = None
            if entry.get("fresh"):
                flows = Flows(FlowSpace(bytes.fromhex(entry["packet"])),
                              Cursor.open(entry["fresh"]["cursor_pin"]))
            timer.append(PairTimer(programs[0].fd, programs[1].fd, bytes.fromhex(entry["packet"]),
                                   repeat, entry["measure"], entry["method"], flows))
            _active = timer[0]
        t = timer[0]
        rec = t.sample(warmup=not t.records)    # pyperf's one warmup comes first
        return t.ns(rec) * repeat * 1e-9          # seconds for `repeat` runs
    return time_func


def bench_kwargs(plan: dict, entry: dict) -> dict:
    """bench_time_func's keyword arguments for a plan entry (parent and worker alike)."""
    return {"inner_loops": plan["repeat"],
            "metadata": {"chainbench_measure": entry["measure"],
                         "chainbench_method": entry["method"]}}


def main(argv: list[str] | None = None) -> None:
    plan_text = os.environ.get(PLAN_ENV)
    if not plan_text:
        sys.exit(f"{PLAN_ENV} is not set: bench.micro.worker runs as a pyperf worker of "
                 "bench.micro.suite.suite()")
    plan = json.loads(plan_text)
    runner = make_runner(plan["samples"], plan["rounds"])
    runner.parse_args(argv)
    if not runner.args.worker:
        sys.exit("bench.micro.worker only runs as a pyperf worker (--worker)")
    # Every case in plan order (the --worker-task numbering); pyperf runs only this
    # worker's task and skips the others without calling anything.
    for entry in plan["cases"]:
        runner.bench_time_func(entry["name"], time_func_for(entry, plan["repeat"]),
                               **bench_kwargs(plan, entry))


if __name__ == "__main__":
    main()
