"""Keeping a node's flow observer running: ``python -m harness.observe.supervise --node N``.

``start(node)`` (``chainbench up``, for each BPF node) starts the supervisor through
harness.host.procs (recorded, in its own session, so ``chainbench down`` ends it
and everything it started, and the cleanup sweep finds a leftover) and waits until
the observer serves its socket.  The supervisor runs the observer
(harness.observe.observer, itself recorded) and starts it again when it dies,
after a pause that doubles from 0.25 s up to 10 s and starts over once a run has
lasted 30 s; every restart is counted in ``observer/supervisor.json``
(``status(node)``, shown by ``chainbench status``).  SIGTERM or SIGINT stop the
observer, then the supervisor, which removes its state file, the observer's socket
and its own process record; ``stop(node)`` does that from another process
(``remove_chained_topology``).  The recorded flows (``observer/flows.log``) and
the log stay with the node's state until it is removed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from harness.errors import ChainbenchError
from harness.host import procs
from harness.node.node import Node
from harness.observe import where

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0                 # a run this long resets the pause
START_TIMEOUT_S = 30.0          # start(): until the socket is served


class ObserverStartError(ChainbenchError, RuntimeError):
    """The observer did not come up (one line naming its log)."""


def _log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{os.getpid()}]: {msg}",
          file=sys.stderr, flush=True)


def _write_state(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def status(node: Node) -> dict | None:
    """The supervisor's state (pid, observer_pid, restarts, last_exit, started) with
    ``running``: whether that supervisor is alive; None if it never wrote one."""
    try:
        with open(where.supervisor_state(node)) as f:
            doc = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    doc["running"] = procs.alive(doc.get("pid", 0), doc.get("pid_start"))
    doc["observer_running"] = bool(doc.get("observer_pid")) and procs.alive(
        doc["observer_pid"], doc.get("observer_start"))
    return doc


# ------------------------------------------------------------------ from `up`/`down`

def start(node: str, netns_name: str | None = None, buffer_size: int | None = None,
          timeout: float = START_TIMEOUT_S) -> int:
    """Start the supervisor of *node*'s observer; wait until its socket is served.
    Returns the supervisor's pid."""
    home = Node(node)
    os.makedirs(where.observer_dir(home), exist_ok=True)
    argv = [sys.executable, "-m", "harness.observe.supervise", "--node", node,
            "--netns", netns_name or node]
    if buffer_size:
        argv += ["--buffer-size", str(buffer_size)]
    with open(where.log_file(home), "ab") as log:
        proc = procs.spawn("observer-supervisor", argv, new_session=True,
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                           cwd="/")
    sock = where.socket_path(home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(sock) and _serving(sock):
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    procs.stop(proc, grace=2.0)
    raise ObserverStartError(f"the flow observer of {node} did not start: "
                             f"{_last_line(where.log_file(home))} (log: {where.log_file(home)})")


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"


def _serving(sock: str) -> bool:
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(sock)
        return True
    except OSError:
        return False
    finally:
        s.close()


def stop(node: str, timeout: float = 10.0) -> bool:
    """Stop *node*'s supervisor and observer (SIGTERM, then SIGKILL to its session after
    *timeout*); True if one was running."""
    home = Node(node)
    doc = status(home)
    if doc is None or not doc["running"]:
        if doc is not None and doc.get("observer_running"):
            _kill(doc["observer_pid"], doc.get("observer_start"), timeout)
        _cleanup(home, doc.get("record") if doc else None)
        return False
    pid, start_t = doc["pid"], doc.get("pid_start")
    _kill(pid, start_t, timeout, group=True)
    _cleanup(home, doc.get("record"))
    return True


def _kill(pid: int, start_t: str | None, timeout: float, group: bool = False) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not procs.alive(pid, start_t):
            return
        try:
            if group and sig == signal.SIGKILL:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while procs.alive(pid, start_t) and time.monotonic() < deadline:
            time.sleep(0.02)


def _cleanup(home: Node, record: str | None) -> None:
    _remove(where.supervisor_state(home))
    _remove(where.socket_path(home))
    if record:
        _remove(os.path.join(procs.PROC_ROOT, f"{record}.json"))
        try:
            os.rmdir(procs.PROC_ROOT)
        except OSError:
            pass


# ------------------------------------------------------------------------ the loop

class Supervisor:
    def __init__(self, node: str, observer_args: list[str]):
        self.node = Node(node)
        self.observer_args = observer_args
        self.restarts = 0
        self.last_exit: int | None = None
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.record = os.environ.get(procs.MARKER)
        self.started = time.time()

    def save(self) -> None:
        child = self.child
        _write_state(where.supervisor_state(self.node), {
            "node": self.node.name, "pid": os.getpid(), "pid_start": procs.start_time(os.getpid()),
            "record": self.record, "observer_pid": child.pid if child else None,
            "observer_start": procs.start_time(child.pid) if child else None,
            "restarts": self.restarts, "last_exit": self.last_exit, "started": self.started})

    def _spawn(self) -> subprocess.Popen:
        argv = [sys.executable, "-m", "harness.observe.observer", "--node", self.node.name,
                *self.observer_args]
        return procs.spawn("observer", argv, stdin=subprocess.DEVNULL)

    def run(self) -> int:
        backoff = BACKOFF_MIN_S
        while not self.stopping:
            began = time.monotonic()
            self.child = self._spawn()
            self.save()
            while not self.stopping:
                try:
                    rc = self.child.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if self.stopping:
                break
            procs.release(self.child)
            _remove(where.socket_path(self.node))   # a killed observer's: nobody listens
            self.last_exit = rc
            self.restarts += 1
            if time.monotonic() - began >= STABLE_S:
                backoff = BACKOFF_MIN_S
            _log(f"observer {self.child.pid} of {self.node.name} exited with {rc}; restart "
                 f"{self.restarts} in {backoff:.2f} s")
            self.child = None
            self.save()
            deadline = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        if self.child is not None:
            procs.stop(self.child, grace=5.0)
        _cleanup(self.node, self.record)
        _log(f"stopped (observer of {self.node.name} restarted {self.restarts} times)")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.observe.supervise",
                                description="run a node's flow observer, restarting it")
    p.add_argument("--node", required=True)
    args, rest = p.parse_known_args(argv)
    sup = Supervisor(args.node, rest)

    def _stop(_signum, _frame) -> None:
        sup.stopping = True
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
