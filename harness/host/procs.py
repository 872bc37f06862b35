"""Processes the project starts that can outlive the command that started them
(pod servers, probes, wrk, locust, the CNI plugins a topology runs), and their
scratch directories: recorded, so that ``chainbench down`` ends every one.

``spawn(kind, argv)`` (or ``run``, its ``subprocess.run``) writes a record to
``PROC_ROOT/<id>.json`` *before* it forks, gives the child ``CHAINBENCH_PROC=<id>``
in its environment, and adds the child's PID and start time (field 22 of
``/proc/<pid>/stat``) right after, so a reused PID is never taken for it.  Its
owner removes the record once the process has ended (``stop``, ``release``).

``end_all`` (``chainbench down``) ends what the records name and is still alive:
the recorded PID (start time matching), the rest of its process group when it
leads one (nginx workers, a plugin's children), every process whose
environment carries a record's marker (children, and a child forked in the
instant its parent was SIGKILLed, before the PID was written), and every
process whose command line names a scratch directory (nginx rewrites its
environment, not its arguments) with its group.  SIGTERM, up to
``grace`` seconds, then SIGKILL; it returns once they are gone.

Scratch directories (``scratch_dir``) are made under ``SCRATCH_ROOT``, a project
directory that ``end_all`` empties after the processes are gone, so they are
found even when the process that made one was SIGKILLed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

from harness.paths import STATE_ROOT
from harness.host.signals import deferred

PROC_ROOT = os.path.join(STATE_ROOT, "procs")
SCRATCH_ROOT = os.path.join(STATE_ROOT, "scratch")
MARKER = "CHAINBENCH_PROC"
GRACE_S = 5.0


@dataclass
class Record:
    id: str
    kind: str                        # nginx, probe, wrk, locust, cni:<plugin>, ...
    argv: list[str]
    owner: int                       # PID of the command that started it
    pid: int | None = None
    start: str | None = None         # /proc/<pid>/stat starttime (clock ticks after boot)
    group: bool = False              # it leads its own session / process group
    scratch: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return os.path.join(PROC_ROOT, f"{self.id}.json")

    def save(self) -> None:
        tmp = f"{self.path}.tmp"
        for _ in range(10):                # another process may remove the emptied directory
            try:
                # makedirs(exist_ok=True) itself raises FileExistsError when the directory
                # is removed between its mkdir and its isdir check.
                os.makedirs(PROC_ROOT, exist_ok=True)
                with open(tmp, "w") as f:
                    json.dump(asdict(self), f)
                os.replace(tmp, self.path)
                return
            except (FileNotFoundError, FileExistsError):
                continue
        raise FileNotFoundError(PROC_ROOT)

    def describe(self, pid: int) -> str:
        """``kind pid (program)``; the program after a wrapper's ``--`` (nsenter)."""
        argv = self.argv[self.argv.index("--") + 1:] if "--" in self.argv[:-1] else self.argv
        return f"{self.kind} {pid} ({os.path.basename(argv[0]) if argv else '?'})"


# -- /proc ---------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot), None once it is gone."""
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(pid: int, start: str | None) -> bool:
    """*pid* still runs (not a zombie) and is the process that started at *start*."""
    fields = _stat(pid)
    return bool(fields) and fields[0] not in ("Z", "X") and (start is None or fields[19] == start)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _cmdline_has(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return needle in f.read()
    except OSError:
        return False


def _environ_has(pid: int, needles: set[bytes]) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    return next((e for e in env if e in needles), None)


# -- starting ------------------------------------------------------------------------------
def spawn(kind: str, argv: list[str], *, new_session: bool = False,
          env: dict[str, str] | None = None, scratch: list[str] | None = None,
          on_started: Callable[[subprocess.Popen], object] | None = None,
          **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv)``, recorded (see the module doc).  *on_started*
    (the caller registering how it stops the child) runs with the Popen before a
    SIGINT/SIGTERM that arrived meanwhile is delivered: a signal between the fork
    and the return would otherwise lose a child its caller never got."""
    rec = Record(uuid.uuid4().hex[:16], kind, [str(a) for a in argv][:12], os.getpid(),
                 group=new_session, scratch=list(scratch or ()))
    rec.save()
    child_env = dict(os.environ if env is None else env)
    child_env[MARKER] = rec.id
    with deferred():
        try:
            proc = subprocess.Popen(argv, env=child_env, start_new_session=new_session,
                                    **popen_kwargs)
        except BaseException:
            _remove(rec.path)
            raise
        rec.pid, rec.start = proc.pid, start_time(proc.pid)
        rec.save()
        proc.chainbench_record = rec          # type: ignore[attr-defined]
        if on_started is not None:
            on_started(proc)
    return proc


def release(proc: subprocess.Popen) -> None:
    """Forget *proc*'s record (it has ended)."""
    rec = getattr(proc, "chainbench_record", None)
    if rec is not None:
        _remove(rec.path)
        _rmdir_if_empty(PROC_ROOT)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    rec = getattr(proc, "chainbench_record", None)
    try:
        if rec is not None and rec.group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, grace: float = GRACE_S) -> None:
    """End *proc* (and its process group when it leads one): SIGTERM, *grace* seconds,
    SIGKILL; wait for it; forget its record."""
    try:
        if proc.poll() is None and grace > 0:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal(proc, signal.SIGKILL)      # the leader if still there, and the rest of a group
        proc.wait()
    finally:
        release(proc)


def run(kind: str, argv: list[str], *, input=None, timeout: float | None = None,
        capture_output: bool = False, check: bool = False,
        **popen_kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for a recorded process: killed on a timeout or on any
    exception (Ctrl-C, SIGTERM) while it runs, and forgotten once it has ended."""
    if capture_output:
        popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    started: list[subprocess.Popen] = []
    try:
        try:
            proc = spawn(kind, argv, on_started=started.append, **popen_kwargs)
        except BaseException:             # a signal held over the fork, delivered now
            for p in started:
                _signal(p, signal.SIGKILL)
                p.wait()
            raise
        with proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                _signal(proc, signal.SIGKILL)
                exc.stdout, exc.stderr = proc.communicate()
                raise
            except BaseException:
                _signal(proc, signal.SIGKILL)
                proc.wait()
                raise
    finally:
        for p in started:
            release(p)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


def scratch_dir(prefix: str) -> str:
    """A new scratch directory ``SCRATCH_ROOT/<prefix>XXXX`` (``down`` removes what is left)."""
    for _ in range(10):                    # another thread may remove the emptied root
        os.makedirs(SCRATCH_ROOT, exist_ok=True)
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(SCRATCH_ROOT)


def remove_scratch(directory: str) -> None:
    """Remove a scratch directory (and the scratch root once empty)."""
    shutil.rmtree(directory, ignore_errors=True)
    _rmdir_if_empty(SCRATCH_ROOT)


def prune_scratch_root() -> None:
    """Remove the scratch root if it is empty (a command interrupted between making
    the root and its directory leaves it so)."""
    _rmdir_if_empty(SCRATCH_ROOT)


# -- ending ---------------------------------------------------------------------------------
def records() -> list[Record]:
    out = []
    try:
        names = sorted(os.listdir(PROC_ROOT))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(PROC_ROOT, name)) as f:
                out.append(Record(**json.load(f)))
        except (OSError, ValueError, TypeError):
            continue
    return out


def live() -> dict[int, tuple[str | None, str]]:
    """Live processes of every record: pid -> (start time, description)."""
    recs = records()
    found: dict[int, tuple[str | None, str]] = {}
    for rec in recs:
        if rec.pid and alive(rec.pid, rec.start):
            found[rec.pid] = (rec.start, rec.describe(rec.pid))
    groups = {rec.pid: rec for rec in recs if rec.group and rec.pid and rec.start}
    needles = {f"{MARKER}={rec.id}".encode(): rec for rec in recs}
    me = os.getpid()
    scratch = (SCRATCH_ROOT.rstrip("/") + "/").encode()
    for pid in _pids():
        fields = _stat(pid)
        if pid == me or not fields or fields[0] in ("Z", "X"):
            continue
        if fields[2] == str(pid) and pid not in groups and _cmdline_has(pid, scratch):
            groups[pid] = Record("scratch", "scratch-user", _argv(pid), owner=0, pid=pid,
                                 start=fields[19], group=True)
            found[pid] = (fields[19], groups[pid].describe(pid))
    for pid in _pids():
        if pid == me or pid in found:
            continue
        fields = _stat(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue
        # A member of a recorded group started after its leader: the leader's descendant
        # (a process group id is not reused while the group has members).
        leader = groups.get(int(fields[2]))
        if leader is not None and int(fields[19]) >= int(leader.start):
            found[pid] = (fields[19], leader.describe(pid))
            continue
        hit = _environ_has(pid, set(needles)) if needles else None
        if hit is not None:
            found[pid] = (fields[19], needles[hit].describe(pid))
    return found


def end_all(grace: float = GRACE_S) -> dict[str, list[str]]:
    """End every recorded process still alive and wait for it; remove the records and
    every scratch directory.  Returns {"processes": [...], "temp dirs": [...]}."""
    targets = live()
    ended = [desc for _start, desc in targets.values()]
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid, (start, _desc) in targets.items():
            if alive(pid, start):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait_s
        while any(alive(p, s) for p, (s, _d) in targets.items()) and time.monotonic() < deadline:
            time.sleep(0.02)
        targets = {p: v for p, v in targets.items() if alive(p, v[0])}
        if not targets:
            break
        # Anything forked meanwhile by a process being ended carries the marker too.
        targets.update({p: v for p, v in live().items() if p not in targets})
    shutil.rmtree(PROC_ROOT, ignore_errors=True)
    scratch = sorted(os.path.join(SCRATCH_ROOT, n) for n in os.listdir(SCRATCH_ROOT)) \
        if os.path.isdir(SCRATCH_ROOT) else []
    shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)
    return {"processes": ended, "temp dirs": scratch}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass                    # not empty (other records), or gone
