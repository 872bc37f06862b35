"""Running a command, signalling it at a seeded point, and recording what each point found.

Points: for a command and a signal, ``points(command, sig, n, seed)`` draws *n*
fractions from ``random.Random(f"{seed}:{command}:{signal}")``; a point's delay is
its fraction of the window it is drawn in (the command's measured duration, or
its early part: ``window``).  How each signal is sent, as users send them:
SIGINT to the process group (Ctrl-C in a terminal), SIGTERM and SIGKILL to the
process only (``timeout``, CI cancellation, ``kill``/``kill -9``), so children
the command started outlive a SIGKILL and are ``down``'s to end.

``report(record)`` appends one JSON line per point to the file named by
FAULTS_REPORT (when set) and prints it.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from .leftovers import MARKER_ENV

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
EXIT_TIMEOUT = 180.0            # seconds an interrupted command may take to unwind


@dataclass(frozen=True)
class Point:
    command: str
    signal: str
    index: int
    fraction: float

    @property
    def id(self) -> str:
        return f"{self.command}-{self.signal}-{self.index}"


def points(command: str, sig: str, n: int, seed: int) -> list[Point]:
    rng = random.Random(f"{seed}:{command}:{sig}")
    return [Point(command, sig, i, rng.random()) for i in range(n)]


def chainbench(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, **kwargs)


@dataclass
class Outcome:
    returncode: int
    seconds: float              # start to exit
    signalled: bool             # False: the command had ended before the point
    stderr: str
    marker: str


def run_until(argv: list[str], delay: float | None, sig: str | None) -> Outcome:
    """Run ``chainbench ARGV`` in its own session; at *delay* seconds send *sig* (see the
    module doc); wait for its exit (killing its group after EXIT_TIMEOUT)."""
    marker = uuid.uuid4().hex
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", *argv], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, MARKER_ENV: marker})
    signalled = False
    try:
        if sig is not None and delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                signalled = True
                if sig == "SIGINT":
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    proc.send_signal(SIGNALS[sig])
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        err = f"did not exit within {EXIT_TIMEOUT:.0f} s of the signal; killed. {err}"
    return Outcome(proc.returncode, time.monotonic() - start, signalled, err, marker)


def expected_exit(sig: str, signalled: bool) -> set[int]:
    """Exit codes that are right for the point: 128 + signal for SIGINT/SIGTERM (the
    CLI unwinds and says so; death by the signal itself when it came before the CLI
    took the signals over, in the interpreter's first ~0.1 s, when nothing was
    made yet: the leftover checks hold either way), death by SIGKILL; 0 or 1 when
    the command had ended before the signal (1: connectivity reports failed checks
    that way)."""
    if not signalled:
        return {0, 1}
    return {-signal.SIGKILL} if sig == "SIGKILL" else {128 + SIGNALS[sig], -SIGNALS[sig]}


def report(record: dict) -> None:
    line = json.dumps(record, sort_keys=True)
    print(line)
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
