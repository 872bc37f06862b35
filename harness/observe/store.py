"""What the per-node observer keeps: the bounded ring of recent flows, and its log on disk.

``FlowRing(capacity)`` holds the last *capacity* entries (serialized or parsed
``observer.GetFlowsResponse``: a flow, or a lost-events notice, as Hubble's ring
holds ``v1.Event``), each with a sequence number, so a follower waiting for new
ones (``wait_after``) knows when it fell behind the ring (Hubble then reports a
``LostEvent`` from HUBBLE_RING_BUFFER).  Hubble's capacity is 2^n - 1
(``check_capacity``, harness.node.config's rule; default 4095).

The observer keeps a batch of records as read (a ``LazyEntries``: the records, their
decoded columns, each flow built only when asked for, harness.observe.flows.FlowBatch);
the ring holds it as one entry per record and builds an entry when a reader takes it
(``snapshot``, ``after``), so the per-event path builds no protobuf message.

``FlowLog(path, capacity)`` is the ring's copy on disk, so that an observer
restarted after a kill -9 serves the flows recorded before.  It is an append
file of frames, one per batch read from the ring buffer::

    header  "CBF1", map id u32, items u32, consumer start u64, end u64,
            flows seen u64, CPUs u32, payload length u32, CRC-32 u32
            per-CPU lost-event totals reported so far (u64 each)
    payload per item, by its first word:
      length u32 (< 2^30) + the serialized GetFlowsResponse         one entry
      RAW | count u32 + context id u64, wall-clock offset i64,      count entries
        map id u32, start u64, first u32, record size u32 + the raw records
      CONTEXT | length u32 + context id u64 + the context           no entry

Raw records (``RawRecords``) are a batch kept as read: the flows are built from them
again after a restart, with the context they were first built with (the node's
endpoints, identities, ipcache, pods and Services as JSON, written once per file
before the first records that use it) and the same clock offset and uuids, so a
rebuilt flow is the flow served before.

written (one write) *before* the batch's consumer position is committed to the
kernel: a frame whose positions the kernel's consumer position has not reached
yet is a batch stored by an observer killed before its commit (``resume``
commits it for it), so no record is stored twice and none is skipped.  A frame
cut short by a kill is dropped at load (its records were not committed either).
The file holds at most 2 x capacity entries: a batch that would take it past
that is stored by rewriting it (temporary file, rename) as one frame with the
last *capacity* entries, the batch's among them.
"""
from __future__ import annotations

import abc
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from harness.node.config import DEFAULT_HUBBLE_BUFFER_SIZE as DEFAULT_CAPACITY
from harness.node.config import check_hubble_buffer_size as check_capacity

_MAGIC = b"CBF1"
_HEADER = struct.Struct("<4sIIQQQIII")
_LEN = struct.Struct("<I")
_RAW, _CONTEXT, _KIND = 1 << 31, 1 << 30, 3 << 30
_RAW_HEADER = struct.Struct("<QqIQII")
_CONTEXT_ID = struct.Struct("<Q")


class LazyEntries(abc.ABC):
    """A run of ring entries whose messages are made on demand: ``len()`` entries,
    ``entry(i)`` the i-th (made once), ``log_item()`` what the log stores of them."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def entry(self, i: int): ...


@dataclass
class RawRecords:
    """*count* raw records of *size* bytes kept in the log, with what rebuilds their flows:
    the context (JSON, *context_id* its hash), the CLOCK_REALTIME - CLOCK_MONOTONIC
    offset used, and where they were read (map id, batch start, index of the first)."""
    records: bytes
    size: int
    context_id: int
    context: bytes
    offset_ns: int
    map_id: int
    start: int
    first: int = 0

    @property
    def count(self) -> int:
        return len(self.records) // self.size

    def tail(self, n: int) -> "RawRecords":
        """The last *n* records."""
        drop = self.count - n
        return RawRecords(self.records[drop * self.size:], self.size, self.context_id,
                          self.context, self.offset_ns, self.map_id, self.start,
                          self.first + drop)


def _count(item) -> int:
    return item.count if isinstance(item, RawRecords) else 1


def _last(items: list, n: int) -> list:
    """The items holding the last *n* entries (a run of raw records cut to fit)."""
    out, have = [], 0
    for item in reversed(items):
        if have >= n:
            break
        c = _count(item)
        if have + c > n:
            item, c = item.tail(n - have), n - have
        out.append(item)
        have += c
    out.reverse()
    return out


# ----------------------------------------------------------------------------- ring

class FlowRing:
    """The last *capacity* entries, with sequence numbers from 0; thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = check_capacity(capacity)
        self._buf: list = [None] * capacity
        self._idx: list[int] = [-1] * capacity  # >= 0: entry _idx of the LazyEntries in _buf
        self._next = 0                        # sequence number of the next entry
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return min(self._next, self.capacity)

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def oldest_seq(self) -> int:
        return max(0, self._next - self.capacity)

    def extend(self, entries: Iterable) -> None:
        """Append *entries*: entries, or LazyEntries standing for len() entries each."""
        cap = self.capacity
        with self._cond:
            for entry in entries:
                if isinstance(entry, LazyEntries):
                    self._extend_lazy(entry)
                    continue
                self._buf[self._next % cap] = entry
                self._idx[self._next % cap] = -1
                self._next += 1
            self._cond.notify_all()

    def _extend_lazy(self, lazy: LazyEntries) -> None:
        cap, n = self.capacity, len(lazy)
        skip = max(0, n - cap)                # overwritten at once: never held
        self._next += skip
        i = skip
        while i < n:
            at = self._next % cap
            k = min(n - i, cap - at)
            self._buf[at:at + k] = [lazy] * k
            self._idx[at:at + k] = range(i, i + k)
            self._next += k
            i += k

    def _held(self, start: int) -> list:
        """(holder, index) of the entries from *start* to the newest (under the lock)."""
        cap = self.capacity
        return [(self._buf[s % cap], self._idx[s % cap]) for s in range(start, self._next)]

    @staticmethod
    def _made(held: list) -> list:
        """The entries, LazyEntries' made now (outside the lock: building takes time)."""
        return [holder if i < 0 else holder.entry(i) for holder, i in held]

    def snapshot(self) -> tuple[int, list]:
        """(sequence number of the first, every entry held, oldest first)."""
        with self._cond:
            start = self.oldest_seq
            held = self._held(start)
        return start, self._made(held)

    def after(self, seq: int) -> tuple[int, list]:
        """(entries overwritten before the reader got them, the entries from *seq* on)."""
        with self._cond:
            oldest = self.oldest_seq
            missed = max(0, oldest - seq)
            held = self._held(max(seq, oldest))
        return missed, self._made(held)

    def wait_after(self, seq: int, timeout: float) -> bool:
        """Wait up to *timeout* s for an entry numbered *seq* or later; False on timeout or
        once closed."""
        with self._cond:
            if self._next > seq:
                return True
            if self._closed:
                return False
            self._cond.wait(timeout)
            return self._next > seq

    def close(self) -> None:
        """Wake every waiter (the observer stops)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ------------------------------------------------------------------------------ log

@dataclass
class Position:
    """Where the last stored batch lies in the kernel ring buffer's positions."""
    map_id: int
    start: int
    end: int


@dataclass
class Loaded:
    """What a log held: its last *capacity* entries and the counters of its last frame."""
    entries: list = field(default_factory=list)     # serialized entries and RawRecords
    position: Position | None = None
    seen: int = 0
    lost: list[int] = field(default_factory=list)
    dropped_bytes: int = 0                  # a frame cut short (a kill mid-write), removed

    @property
    def count(self) -> int:
        """Entries held (a RawRecords counts its records)."""
        return sum(_count(item) for item in self.entries)


class FlowLog:
    """The append file at *path* (see the module doc)."""

    def __init__(self, path: str, capacity: int = DEFAULT_CAPACITY):
        self.path = path
        self.capacity = check_capacity(capacity)
        self._entries_in_file = 0
        self._recent: list = []               # items of the last entries written (compaction)
        self._recent_count = 0
        self._contexts_in_file: set[int] = set()
        self._fd: int | None = None
        self.position: Position | None = None
        self.seen = 0
        self.lost: list[int] = []

    def load(self) -> Loaded:
        """Read the file (a missing one is empty), drop a torn last frame, keep the last
        *capacity* entries; the log then appends after them."""
        tmp = self.path + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)                    # a compaction killed before its rename
        out = Loaded()
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        pos = good = 0
        entries: list = []
        held = 0
        contexts: dict[int, bytes] = {}
        while pos + _HEADER.size <= len(raw):
            (magic, map_id, count, start, end, seen, ncpu, length,
             crc) = _HEADER.unpack_from(raw, pos)
            body = pos + _HEADER.size
            stop = body + 8 * ncpu + length
            if magic != _MAGIC or stop > len(raw) or \
                    zlib.crc32(raw[body:stop]) != crc:
                break
            lost = list(struct.unpack_from(f"<{ncpu}Q", raw, body))
            at, batch = body + 8 * ncpu, []
            for _ in range(count):
                (word,) = _LEN.unpack_from(raw, at)
                at += 4
                kind, n = word & _KIND, word & ~_KIND
                if kind == _CONTEXT:
                    (cid,) = _CONTEXT_ID.unpack_from(raw, at)
                    at += _CONTEXT_ID.size
                    contexts[cid] = raw[at:at + n]
                elif kind == _RAW:
                    cid, offset, rmap, rstart, first, size = _RAW_HEADER.unpack_from(raw, at)
                    at += _RAW_HEADER.size
                    batch.append(RawRecords(raw[at:at + n * size], size, cid, contexts[cid],
                                            offset, rmap, rstart, first))
                    n *= size
                else:
                    batch.append(raw[at:at + n])
                at += n
            entries.extend(batch)
            held += sum(_count(item) for item in batch)
            if held > 2 * self.capacity:
                entries = _last(entries, self.capacity)
                held = self.capacity
            out.position, out.seen, out.lost = Position(map_id, start, end), seen, lost
            pos = good = stop
        out.dropped_bytes = len(raw) - good
        out.entries = _last(entries, self.capacity)
        self.position, self.seen, self.lost = out.position, out.seen, list(out.lost)
        if out.dropped_bytes or held > self.capacity:
            self._rewrite(out.entries)        # drop the torn frame, bound the file
        else:
            self._entries_in_file = self._recent_count = held
            self._recent = list(out.entries)
            self._contexts_in_file = set(contexts)
        return out

    def _open(self) -> int:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        return self._fd

    @staticmethod
    def _frame(entries: Sequence, position: Position, seen: int,
               lost: Sequence[int], contexts: set[int] | None = None) -> bytes:
        """A frame of *entries* (serialized entries, RawRecords); the context of a
        RawRecords goes first unless its id is in *contexts* (those in the file
        already; updated)."""
        contexts = set() if contexts is None else contexts
        parts = [struct.pack(f"<{len(lost)}Q", *lost)]
        items = 0
        for e in entries:
            if isinstance(e, RawRecords):
                if e.context_id not in contexts:
                    parts += [_LEN.pack(_CONTEXT | len(e.context)),
                              _CONTEXT_ID.pack(e.context_id), e.context]
                    contexts.add(e.context_id)
                    items += 1
                parts += [_LEN.pack(_RAW | e.count),
                          _RAW_HEADER.pack(e.context_id, e.offset_ns, e.map_id, e.start,
                                           e.first, e.size), e.records]
            else:
                parts += [_LEN.pack(len(e)), e]
            items += 1
        body = b"".join(parts)
        length = len(body) - 8 * len(lost)
        return _HEADER.pack(_MAGIC, position.map_id, items, position.start,
                            position.end, seen, len(lost), length, zlib.crc32(body)) + body

    def append(self, entries: Sequence, position: Position, seen: int,
               lost: Sequence[int]) -> None:
        """Store one batch (before its consumer position is committed): its entries
        (serialized entries, RawRecords), the positions it spans, the flows seen and
        the lost-event totals reported so far."""
        added = sum(_count(e) for e in entries)
        recent = self._recent + list(entries)
        if self._recent_count + added > self.capacity:
            recent = _last(recent, self.capacity)
        if self._entries_in_file + added > 2 * self.capacity:
            # the file would pass its bound: rewritten at once with the last capacity
            # entries, this batch's among them (one write, not an append then a rewrite)
            self.position, self.seen, self.lost = position, seen, list(lost)
            self._rewrite(recent)
            return
        contexts = set(self._contexts_in_file)
        frame = self._frame(entries, position, seen, lost, contexts)
        fd = self._open()
        done = 0
        while done < len(frame):
            done += os.write(fd, frame[done:])
        self._contexts_in_file = contexts
        self.position, self.seen, self.lost = position, seen, list(lost)
        self._entries_in_file += added
        self._recent = recent
        self._recent_count = min(self._recent_count + added, self.capacity)

    def _rewrite(self, entries: list) -> None:
        """The file as one frame of *entries* (temporary file, then rename)."""
        self.close()
        if self.position is None:            # nothing stored yet: an empty file
            if os.path.exists(self.path):
                os.unlink(self.path)
            self._entries_in_file = self._recent_count = 0
            self._recent, self._contexts_in_file = [], set()
            return
        tmp = self.path + ".tmp"
        contexts: set[int] = set()
        with open(tmp, "wb") as f:
            f.write(self._frame(entries, self.position, self.seen, self.lost, contexts))
        os.replace(tmp, self.path)
        self._recent, self._contexts_in_file = list(entries), contexts
        self._entries_in_file = self._recent_count = sum(_count(e) for e in entries)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        for name in (self.path, self.path + ".tmp"):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass


def resume_position(stored: Position | None, map_id: int, consumer_pos: int) -> int | None:
    """The consumer position to commit before reading on, when the last stored batch was
    stored but not committed (an observer killed between the two); None otherwise."""
    if stored is None or stored.map_id != map_id:
        return None
    if stored.start <= consumer_pos < stored.end:
        return stored.end
    return None
