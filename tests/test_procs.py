"""Recorded processes (harness.host.procs): what `chainbench down` ends, and what it must not.

Each test points the records and scratch roots at its own temporary directory,
so it ends only what it started.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.host import procs


@pytest.fixture(autouse=True)
def private_roots(tmp_path, monkeypatch):
    monkeypatch.setattr(procs, "PROC_ROOT", str(tmp_path / "procs"))
    monkeypatch.setattr(procs, "SCRATCH_ROOT", str(tmp_path / "scratch"))
    return tmp_path


def _gone(pid: int, start: str | None) -> bool:
    return not procs.alive(pid, start)


OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from harness.host import procs
    procs.PROC_ROOT, procs.SCRATCH_ROOT = sys.argv[1], sys.argv[2]
    d = procs.scratch_dir("cb-test-")
    # a server in its own session that forks a worker (as nginx does)
    p = procs.spawn("server", ["sh", "-c", "sleep 60 & exec sleep 61"], new_session=True)
    print(p.pid, d, flush=True)
    time.sleep(60)
""")


def test_end_all_ends_the_processes_of_a_sigkilled_owner_and_their_scratch(private_roots):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, procs.PROC_ROOT, procs.SCRATCH_ROOT],
                             stdout=subprocess.PIPE, text=True)
    try:
        pid_text, scratch = owner.stdout.readline().split()
        leader = int(pid_text)
        time.sleep(0.2)                              # the worker has forked
        members = [int(p) for p in os.listdir("/proc") if p.isdigit()
                   and (procs._stat(int(p)) or ["", "", "0"])[2] == str(leader)]
        assert leader in members and len(members) == 2, members
        starts = {p: procs.start_time(p) for p in members}
    finally:
        owner.kill()
        owner.wait()
    assert all(procs.alive(p, s) for p, s in starts.items()), "the server died with its owner"
    assert {d for _s, d in procs.live().values()} >= {f"server {leader} (sh)"}
    ended = procs.end_all(grace=2)
    assert all(_gone(p, s) for p, s in starts.items())
    assert len(ended["processes"]) == 2 and ended["temp dirs"] == [scratch]
    assert not os.path.exists(scratch) and not os.path.exists(procs.PROC_ROOT)
    assert procs.end_all() == {"processes": [], "temp dirs": []}


def test_a_reused_pid_is_never_ended():
    """A record whose PID now names another process (its start time differs) ends nothing."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        rec = procs.Record("reused0000000000", "server", ["nginx"], owner=1, pid=other.pid,
                           start=str(int(procs.start_time(other.pid)) - 1))
        rec.save()
        assert procs.live() == {}
        assert procs.end_all(grace=1)["processes"] == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_child_forked_before_its_pid_was_recorded_is_found_by_its_marker():
    """The owner was SIGKILLed between writing the record and writing the PID: the
    child carries the record's marker in its environment, and that is enough."""
    rec = procs.Record("nopid00000000000", "cni-chainbench-cni", ["chainbench-cni"], owner=1)
    rec.save()
    child = subprocess.Popen(["sleep", "30"], env={**os.environ, procs.MARKER: rec.id})
    try:
        start = procs.start_time(child.pid)
        assert [d for _s, d in procs.live().values()] == [f"cni-chainbench-cni {child.pid} "
                                                          "(chainbench-cni)"]
        procs.end_all(grace=1)
        child.wait(timeout=5)
        assert child.returncode == -signal.SIGTERM and _gone(child.pid, start)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_process_ignoring_sigterm_is_killed_and_waited_for():
    p = procs.spawn("stubborn", [sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print(1, flush=True); time.sleep(60)"],
                    stdout=subprocess.PIPE)
    p.stdout.readline()
    start = procs.start_time(p.pid)
    began = time.monotonic()
    assert len(procs.end_all(grace=0.5)["processes"]) == 1
    assert _gone(p.pid, start) and time.monotonic() - began < 5
    p.wait()


def test_run_records_while_running_and_kills_on_timeout_or_interrupt():
    out = procs.run("probe", ["sh", "-c", f"ls {procs.PROC_ROOT}; echo $CHAINBENCH_PROC"],
                    capture_output=True, text=True)
    listed, marker = out.stdout.split()
    assert listed == f"{marker}.json"                   # recorded while it ran
    assert not os.path.exists(procs.PROC_ROOT)          # and forgotten after
    with pytest.raises(subprocess.TimeoutExpired):
        procs.run("probe", ["sleep", "30"], timeout=0.3)
    assert procs.live() == {} and not os.path.exists(procs.PROC_ROOT)

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            procs.run("probe", ["sleep", "30"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert procs.live() == {} and not os.path.exists(procs.PROC_ROOT)


def test_record_format(private_roots):
    p = procs.spawn("server", ["sleep", "30"], new_session=True)
    try:
        (name,) = os.listdir(procs.PROC_ROOT)
        with open(os.path.join(procs.PROC_ROOT, name)) as f:
            data = json.load(f)
        assert data["pid"] == p.pid and data["start"] == procs.start_time(p.pid)
        assert data["group"] is True and data["owner"] == os.getpid()
    finally:
        procs.stop(p, grace=1)
    assert p.returncode == -signal.SIGTERM and not os.path.exists(procs.PROC_ROOT)


SIGNAL_IN_SPAWN = textwrap.dedent("""
    import signal, sys
    from harness.host import procs
    from harness.host import signals
    procs.PROC_ROOT, procs.SCRATCH_ROOT = sys.argv[1], sys.argv[2]
    signals.install()
    real = procs.start_time
    def start_time_then_sigterm(pid):       # SIGTERM lands between the fork and the return
        signal.raise_signal(signal.SIGTERM)
        return real(pid)
    procs.start_time = start_time_then_sigterm
    mine = []
    try:
        procs.spawn("server", ["sleep", "60"], on_started=mine.append)
        print("no interruption", flush=True)
    except signals.Interrupted as exc:
        print("interrupted", exc.signum, [p.pid for p in mine], flush=True)
        for p in mine:
            procs.stop(p)
        print("stopped", [p.poll() for p in mine], flush=True)
""")


def test_a_signal_during_spawn_still_hands_the_child_to_its_caller(private_roots):
    """Found by the fault suite (SIGTERM of `connectivity` left an nginx running): a
    signal between the fork and spawn()'s return lost the Popen, so the caller could
    not stop the child.  It is held until on_started has the child."""
    out = subprocess.run([sys.executable, "-c", SIGNAL_IN_SPAWN, procs.PROC_ROOT,
                          procs.SCRATCH_ROOT], capture_output=True, text=True, timeout=60)
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"interrupted {int(signal.SIGTERM)} ["), (lines, out.stderr)
    assert lines[0] != f"interrupted {int(signal.SIGTERM)} []", "the child was lost"
    assert lines[1] == "stopped [-15]", lines
    assert procs.live() == {}
