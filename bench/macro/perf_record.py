"""``perf record -a -g`` around one measured run, and its stacks folded.

``Recorder`` starts ``perf record`` (Debian's linux-perf) with its events disabled
(``-D -1``) and a control FIFO, so sampling covers exactly what runs between
``enable()`` and ``disable()`` (perf acknowledges each), not perf's own start-up.
It samples the software event cpu-clock on every CPU at ``frequency`` Hz, with call
graphs: each sample's period is nanoseconds of CPU time, so samples x period is CPU
time, on any machine (a VM has no hardware cycle counter to sample).

``perf record -a`` samples the whole machine, not one namespace or process: every
process and softirq on every CPU is in it.  A recording is attributed to whatever
the machine ran while it was enabled; the macro suite enables it around one
datapath's wrk run at a time, so each datapath's profile is that run's.

Bounds: the recorder is a recorded process (harness.host.procs, so ``chainbench
down`` ends one left behind) in its own session, its workload ``sleep BOUND``: perf
exits by itself after *bound_s* seconds even if this process is SIGKILLed.  Leaving
the ``with`` block (normally, on an error, Ctrl-C or SIGTERM) stops it (SIGINT to
its group, then SIGTERM/SIGKILL) and removes its scratch directory (the perf.data
file, the FIFOs and its log); on a normal exit the samples are folded first
(bench.report.flame) into ``folded``.
"""
from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time

from bench.report import flame
from harness.errors import ChainbenchError, UsageError
from harness.host import procs
from harness.host.signals import shielded

FREQUENCY_HZ = 999
EVENT = "cpu-clock"
READY_S = 30.0          # perf's start-up (it reads every process's maps) and each ack
SCRIPT_TIMEOUT_S = 300.0
#: What ``perf script`` prints: the period is needed, the rest names the frames.
SCRIPT_FIELDS = "comm,pid,tid,cpu,time,period,event,ip,sym,dso"


class PerfError(ChainbenchError, RuntimeError):
    """perf could not record or report (one line)."""


class PerfUnavailable(UsageError):
    """perf cannot record on this machine: ``--perf`` is refused (exit 2)."""


def perf_binary() -> str | None:
    return shutil.which("perf")


def check_available() -> None:
    """Raise PerfUnavailable (one line) unless a system-wide cpu-clock recording with
    call graphs works here: perf installed, permitted (perf_event_paranoid, CAP_PERFMON)."""
    perf = perf_binary()
    if perf is None:
        raise PerfUnavailable("--perf: perf is not installed (Debian: apt-get install linux-perf)")
    scratch = procs.scratch_dir("perf-check-")
    try:
        out = procs.run("perf", [perf, "record", "-q", "-a", "-g", "-e", EVENT, "-o",
                                 os.path.join(scratch, "perf.data"), "--", "true"],
                        capture_output=True, text=True, timeout=READY_S)
    except subprocess.TimeoutExpired:
        raise PerfUnavailable(f"--perf: perf record did not finish in {READY_S:g} s") from None
    finally:
        procs.remove_scratch(scratch)
    if out.returncode != 0:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            paranoid = f.read().strip()
        raise PerfUnavailable(f"--perf: perf record -a cannot record here (kernel."
                              f"perf_event_paranoid={paranoid}, uid {os.getuid()}): "
                              f"{why_not(out.stderr or '', out.returncode)}")


def why_not(stderr: str, returncode: int) -> str:
    """perf record's reason for failing, in one line, from its error text."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and ln.strip() != "Error:"]
    for words in (("is limited", "ermission denied", "not permitted"),
                  ("not supported", "No such", "failed")):
        found = next((ln for ln in lines if any(w in ln for w in words)), None)
        if found:
            return found
    return lines[0] if lines else f"exit {returncode}"


class Recorder:
    """``with Recorder(bound_s) as rec: rec.enable(); ...; rec.disable()``; then
    ``rec.folded`` (see the module doc)."""

    def __init__(self, bound_s: float, frequency: int = FREQUENCY_HZ):
        self.bound_s = bound_s
        self.frequency = frequency
        self.folded: flame.Folded | None = None
        self.enabled_s = 0.0
        self._scratch: str | None = None
        self._proc: subprocess.Popen | None = None
        self._ctl = self._ack = -1
        self._since: float | None = None

    def __enter__(self) -> "Recorder":
        perf = perf_binary()
        if perf is None:
            raise PerfUnavailable("--perf: perf is not installed")
        self._scratch = procs.scratch_dir("perf-")
        try:
            ctl, ack = (os.path.join(self._scratch, n) for n in ("ctl", "ack"))
            os.mkfifo(ctl, 0o600)
            os.mkfifo(ack, 0o600)
            # Read-write opens of a FIFO do not wait for the other end.
            self._ctl = os.open(ctl, os.O_RDWR)
            self._ack = os.open(ack, os.O_RDWR | os.O_NONBLOCK)
            log = open(os.path.join(self._scratch, "perf.log"), "w")
            with log:
                procs.spawn("perf", [perf, "record", "-a", "-g", "-e", EVENT,
                                     "-F", str(self.frequency), "-D", "-1",
                                     f"--control=fifo:{ctl},{ack}",
                                     "-o", os.path.join(self._scratch, "perf.data"),
                                     "--", "sleep", f"{self.bound_s:g}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            new_session=True, scratch=[self._scratch],
                            on_started=lambda p: setattr(self, "_proc", p))
        except BaseException:
            with shielded():
                self._close(graceful=False)
            raise
        return self

    def _command(self, word: str) -> None:
        os.write(self._ctl, f"{word}\n".encode())
        deadline = time.monotonic() + READY_S
        got = b""
        while b"ack" not in got:
            if self._proc.poll() is not None:
                raise PerfError(f"perf record exited ({self._proc.returncode}) before it "
                                f"acknowledged {word!r}: {self._log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise PerfError(f"perf record did not acknowledge {word!r} in {READY_S:g} s")
            ready, _, _ = select.select([self._ack], [], [], min(left, 0.2))
            if ready:
                try:
                    got += os.read(self._ack, 64)
                except BlockingIOError:
                    pass

    def enable(self) -> None:
        self._command("enable")
        self._since = time.monotonic()

    def disable(self) -> None:
        self._command("disable")
        if self._since is not None:
            self.enabled_s += time.monotonic() - self._since
            self._since = None

    def _log_tail(self) -> str:
        try:
            with open(os.path.join(self._scratch, "perf.log")) as f:
                lines = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(no output)"

    def __exit__(self, exc_type, *exc) -> None:
        with shielded():
            self._close(graceful=exc_type is None)

    def _close(self, graceful: bool) -> None:
        """Stop perf (SIGINT: it writes its data and ends its workload); on a normal exit
        fold the samples; always remove the scratch directory."""
        try:
            if self._proc is not None:
                if graceful and self._proc.poll() is None:
                    try:
                        os.killpg(self._proc.pid, signal.SIGINT)
                        self._proc.wait(timeout=READY_S)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
                procs.stop(self._proc, grace=0 if not graceful else procs.GRACE_S)
            for fd in (self._ctl, self._ack):
                if fd >= 0:
                    os.close(fd)
            self._ctl = self._ack = -1
            if graceful and self._scratch:
                self.folded = flame.fold(self._script())
        finally:
            if self._scratch:
                procs.remove_scratch(self._scratch)
                self._scratch = None

    def _script(self) -> str:
        data = os.path.join(self._scratch, "perf.data")
        if not os.path.exists(data):
            raise PerfError(f"perf record wrote no data: {self._log_tail()}")
        out = procs.run("perf", [perf_binary(), "script", "-i", data, "-F", SCRIPT_FIELDS],
                        capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
                        errors="replace")
        if out.returncode != 0:
            raise PerfError(f"perf script exit {out.returncode}: "
                            f"{(out.stderr or '').strip().splitlines()[-1:]}")
        return out.stdout
