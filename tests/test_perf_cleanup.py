"""`bench macro --perf`'s measurement left nothing behind: perf record (its process, its
scratch directory with perf.data) and kernel.bpf_stats_enabled, on Ctrl-C, SIGTERM, and
after kill -9 once `chainbench down` ran.  No topology: the measurement is run around a
sleep, as the suite runs it around wrk."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.macro import perf_record
from harness.host import procs, sysctl

SETTING = "kernel.bpf_stats_enabled"
MEASURING = """
import time
from harness.host import signals
signals.install()
from bench.macro import bpf_runtime, perf_record, profiling
recorder, counting = perf_record.Recorder(120), bpf_runtime.Counting(set())
with recorder, counting, profiling.Measured(recorder, counting):
    print("measuring", flush=True)
    time.sleep(60)
"""


def _perf_processes() -> list[int]:
    return [r.pid for r in procs.records() if r.kind == "perf" and r.pid
            and procs.alive(r.pid, r.start)]


def _perf_scratch() -> list[str]:
    return glob.glob(os.path.join(procs.SCRATCH_ROOT, "perf-*"))


@pytest.fixture
def measuring():
    assert not _perf_processes() and not _perf_scratch()
    before = sysctl.read(SETTING)
    proc = subprocess.Popen([sys.executable, "-c", MEASURING], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "measuring", proc.communicate()
        assert _perf_processes() and _perf_scratch() and sysctl.read(SETTING) == "1"
        yield proc, before
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        subprocess.run([sys.executable, "-m", "harness.cli", "down"], capture_output=True)
        sysctl.write(SETTING, before)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_measurement_stops_perf_and_puts_the_setting_back(measuring, sig):
    proc, before = measuring
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)            # Ctrl-C: the whole process group
    else:
        proc.send_signal(sig)               # timeout / CI: the process only
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _perf_processes() == [] and _perf_scratch() == []
    assert sysctl.read(SETTING) == before
    assert not os.path.exists(sysctl.SAVED_ROOT)


def test_down_ends_the_perf_of_a_killed_run_and_puts_the_setting_back(measuring):
    proc, before = measuring
    proc.kill()
    proc.communicate()
    left = _perf_processes()
    assert left and sysctl.read(SETTING) == "1"           # what kill -9 leaves
    down = subprocess.run([sys.executable, "-m", "harness.cli", "down"], capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert any(line.startswith("removed process perf ") for line in down.stdout.splitlines())
    assert f"removed sysctl {SETTING} back to {before}" in down.stdout
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _perf_processes() == [] and _perf_scratch() == []
    assert sysctl.read(SETTING) == before
