"""All-or-nothing writes of a planned change into a node's maps.

Owns how ``LbControl`` and ``PolicyControl`` put a planned change (a list of
steps: batches of map writes or deletes, Maglev tables to install or remove,
each with what it replaces) into the maps, so that an `lb apply` or `policy
apply` that is interrupted leaves the maps as they were before it or as they
are after it, never a mix:

- A write that fails (map full, kernel refusal) undoes every step already
  made, from the values they replaced (``MapWriteError``).
- SIGINT, SIGTERM and SIGHUP that arrive while the steps are written are held
  and delivered again after the last step (``deferred_signals``): Ctrl-C,
  ``timeout`` and CI cancellation end the command with everything written, or,
  before the first write, nothing.  Planning happens before and only reads.
- SIGKILL cannot be held.  With a node (``Journal``), the whole change (every
  key's new value and the value it replaces, the Maglev tables, and state files
  to write with it) is first written to ``/run/chainbench/<node>/maps.journal``
  (temporary file, fsync, rename: it exists whole or not at all) and removed
  after the last step.  The next command that opens the node's pinned maps
  (``Node.load`` and ``Node.open_pinned``, harness.node.node: lb apply,
  policy apply, services, policy get, ct, endpoints, the CNI plugin) finds it
  and replays it to the end (``recover``): roll forward, and if a step cannot be
  made, roll everything back.  So after a SIGKILL chainbench never *reads* a
  half-applied change.

What this does not give: from the SIGKILL until that next command, the BPF
programs do see the maps as the killed process left them, part of the change
made.  Each step is still ordered so a packet never meets a dangling reference
(LbControl's phase order; a policy rule generation is complete before its
endpoint switches to it), but across services, or across endpoints and the
ipcache, the datapath can see some of the new state and some of the old for
that window.  Closing it needs every LB and policy map double-buffered behind
one switch word that the datapath reads first; with incremental applies (cost
proportional to what changes) that means either a full copy of each map per
apply or an overlay lookup per map access, and LPM tries (ipcache, wildcard
policy rules) cannot be overlaid.  That was judged not contained for now.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import pickle
from typing import Callable, Mapping

from harness.bpf import BpfError, KeyNotFoundError, Map
from harness.host.locks import directory_lock
from harness.host.signals import deferred as deferred_signals
from harness.errors import ChainbenchError

JOURNAL_NAME = "maps.journal"
_VERSION = 1

# A step is one of:
#   ("put", map, keys, values, olds)     olds[i]: bytes the key held, None if absent
#   ("del", map, keys, olds)
#   ("maglev", rid, ids, keys, old)      old: (ids, keys) of the table it replaces, or None
#   ("maglev-del", rid, old)
#   ("maglev-many", [(rid, ids, keys, old), ...])    tables installed together
#   ("maglev-del-many", [(rid, old), ...])           tables removed together
Step = tuple
MaglevInstall = Callable[[int, list, list], None]
MaglevRemove = Callable[[int], None]


class MapWriteError(ChainbenchError, RuntimeError):
    """A step failed; every step made before it was undone."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


class Writer:
    """Makes and undoes steps on a set of maps."""

    def __init__(self, maps: Mapping[str, Map], maglev_install: MaglevInstall | None = None,
                 maglev_remove: MaglevRemove | None = None,
                 maglev_install_many: Callable[[list], None] | None = None,
                 maglev_remove_many: Callable[[list], None] | None = None):
        self.maps = maps
        self.maglev_install = maglev_install
        self.maglev_remove = maglev_remove
        # Many tables in one outer-map batch: each update of a map-in-map waits an RCU
        # grace period (milliseconds), a batch once.  Without them, one at a time.
        self.maglev_install_many = maglev_install_many
        self.maglev_remove_many = maglev_remove_many

    def forward(self, steps: list[Step], done: list[Step], tolerant: bool = False) -> None:
        """Make *steps* in order, appending each to *done* before making it.
        *tolerant*: a delete of a missing key is no error (replaying a journal)."""
        for step in steps:
            done.append(step)
            kind = step[0]
            if kind == "put":
                _, name, keys, values, _ = step
                self.maps[name].update_batch(keys, values)
            elif kind == "del":
                self._delete(self.maps[name := step[1]], step[2], tolerant)
            elif kind == "maglev":
                self._install(step[1], step[2], step[3])
            elif kind == "maglev-del":
                if self.maglev_remove is not None:
                    self.maglev_remove(step[1])
            elif kind == "maglev-many":
                if self.maglev_install_many is not None:
                    self.maglev_install_many([(rid, ids, keys) for rid, ids, keys, _ in step[1]])
                else:
                    for rid, ids, keys, _ in step[1]:
                        self._install(rid, ids, keys)
            elif kind == "maglev-del-many":
                if self.maglev_remove_many is not None:
                    self.maglev_remove_many([rid for rid, _ in step[1]])
                elif self.maglev_remove is not None:
                    for rid, _ in step[1]:
                        self.maglev_remove(rid)
            else:
                raise ValueError(f"unknown step {kind!r}")

    def backward(self, done: list[Step]) -> None:
        """Undo *done* (steps possibly only partly made), last first."""
        for step in reversed(done):
            kind = step[0]
            if kind in ("put", "del"):
                m, keys, olds = self.maps[step[1]], step[2], step[-1]
                for key, old in zip(reversed(keys), reversed(olds)):
                    if old is None:
                        _delete_one(m, key)
                    else:
                        m.update(key, old)
            elif kind in ("maglev-many", "maglev-del-many"):
                for item in reversed(step[1]):
                    self._restore_table(item[0], item[-1])
            else:
                self._restore_table(step[1], step[-1])

    def _restore_table(self, rid: int, old: tuple | None) -> None:
        if old is not None:
            self._install(rid, *old)
        elif self.maglev_remove is not None:
            self.maglev_remove(rid)

    def _install(self, rid: int, ids: list, keys: list) -> None:
        if self.maglev_install is None:
            raise ValueError("a Maglev service needs a datapath with Maglev tables")
        self.maglev_install(rid, ids, keys)

    @staticmethod
    def _delete(m: Map, keys: list, tolerant: bool) -> None:
        try:
            m.delete_batch(keys)
        except KeyNotFoundError:
            if not tolerant:
                raise
            for key in keys:
                _delete_one(m, key)


def _delete_one(m: Map, key) -> None:
    try:
        m.delete(key)
    except KeyNotFoundError:
        pass
    except BpfError as exc:
        if exc.errno != _errno.ENOENT:
            raise


class Journal:
    """The write-ahead journal of the maps whose state lives in *directory* (a
    node's state directory), guarded by that directory's lock."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, JOURNAL_NAME)

    def lock(self) -> contextlib.AbstractContextManager:
        """The directory's lock (for a node: the node's lock, harness.node.node.Node.lock)."""
        return directory_lock(self.directory)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def write(self, steps: list[Step], files: Mapping[str, bytes]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump({"version": _VERSION, "steps": steps,
                         "files": dict(files)}, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.directory)

    def read(self) -> dict:
        with open(self.path, "rb") as f:
            record = pickle.load(f)
        if record.get("version") != _VERSION:
            raise ValueError(f"{self.path}: journal version {record.get('version')} "
                             f"(this chainbench writes {_VERSION})")
        return record

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path + ".tmp")       # a journal never finished: nothing was written
        if os.path.isdir(self.directory):
            _fsync_dir(self.directory)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(files: Mapping[str, bytes]) -> None:
    """Replace each file whole (temporary file and rename)."""
    for path, data in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def run(steps: list[Step], writer: Writer, journal: Journal | None = None,
        files: Mapping[str, bytes] | None = None) -> None:
    """Make *steps* (then write *files*) all or nothing: held signals, and with a
    *journal*, crash-safe (see the module docstring).  Raises MapWriteError after
    undoing everything when a step fails."""
    files = files or {}
    lock = journal.lock() if journal is not None else contextlib.nullcontext()
    with lock, deferred_signals():
        if journal is not None:
            journal.write(steps, files)
        done: list[Step] = []
        try:
            writer.forward(steps, done)
        except (BpfError, OSError, ValueError) as exc:
            writer.backward(done)
            if journal is not None:
                journal.remove()
            raise MapWriteError(str(exc), exc) from exc
        write_files(files)
        if journal is not None:
            journal.remove()


def finish(journal: Journal, record: dict, writer: Writer) -> str:
    """Roll the journal's change forward; if a step cannot be made, roll it all back."""
    done: list[Step] = []
    try:
        writer.forward(record["steps"], done, tolerant=True)
        outcome = "forward"
    except (BpfError, OSError, ValueError):
        writer.backward(done)
        outcome = "back"
    if outcome == "forward":
        write_files(record["files"])
    journal.remove()
    return outcome
