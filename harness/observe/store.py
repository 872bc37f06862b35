"""What the per-node observer keeps: the bounded ring of recent flows, and its log on disk.

``FlowRing(capacity)`` holds the last *capacity* entries (serialized or parsed
``observer.GetFlowsResponse``: a flow, or a lost-events notice, as Hubble's ring
holds ``v1.Event``), each with a sequence number, so a follower waiting for new
ones (``wait_after``) knows when it fell behind the ring (Hubble then reports a
``LostEvent`` from HUBBLE_RING_BUFFER).  Hubble's capacity is 2^n - 1
(``check_capacity``, harness.node.config's rule; default 4095).

``FlowLog(path, capacity)`` is the ring's copy on disk, so that an observer
restarted after a kill -9 serves the flows recorded before.  It is an append
file of frames, one per batch read from the ring buffer::

    header  "CBF1", map id u32, entries u32, consumer start u64, end u64,
            flows seen u64, CPUs u32, payload length u32, CRC-32 u32
            per-CPU lost-event totals reported so far (u64 each)
    payload per entry: length u32 + the serialized GetFlowsResponse

written (one write) *before* the batch's consumer position is committed to the
kernel: a frame whose positions the kernel's consumer position has not reached
yet is a batch stored by an observer killed before its commit (``resume``
commits it for it), so no record is stored twice and none is skipped.  A frame
cut short by a kill is dropped at load (its records were not committed either).
The file holds at most 2 x capacity entries: past that it is rewritten
(temporary file, rename) as one frame with the last *capacity*.
"""
from __future__ import annotations

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


# ----------------------------------------------------------------------------- ring

class FlowRing:
    """The last *capacity* entries, with sequence numbers from 0; thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = check_capacity(capacity)
        self._buf: list = [None] * capacity
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
        with self._cond:
            for entry in entries:
                self._buf[self._next % self.capacity] = entry
                self._next += 1
            self._cond.notify_all()

    def snapshot(self) -> tuple[int, list]:
        """(sequence number of the first, every entry held, oldest first)."""
        with self._cond:
            start = self.oldest_seq
            return start, [self._buf[s % self.capacity] for s in range(start, self._next)]

    def after(self, seq: int) -> tuple[int, list]:
        """(entries overwritten before the reader got them, the entries from *seq* on)."""
        with self._cond:
            oldest = self.oldest_seq
            missed = max(0, oldest - seq)
            start = max(seq, oldest)
            return missed, [self._buf[s % self.capacity] for s in range(start, self._next)]

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
    entries: list[bytes] = field(default_factory=list)
    position: Position | None = None
    seen: int = 0
    lost: list[int] = field(default_factory=list)
    dropped_bytes: int = 0                  # a frame cut short (a kill mid-write), removed


class FlowLog:
    """The append file at *path* (see the module doc)."""

    def __init__(self, path: str, capacity: int = DEFAULT_CAPACITY):
        self.path = path
        self.capacity = check_capacity(capacity)
        self._entries_in_file = 0
        self._recent: list[bytes] = []        # the last entries written (for compaction)
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
        entries: list[bytes] = []
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
                (n,) = _LEN.unpack_from(raw, at)
                batch.append(raw[at + 4:at + 4 + n])
                at += 4 + n
            entries.extend(batch)
            if len(entries) > 2 * self.capacity:
                del entries[:-self.capacity]
            out.position, out.seen, out.lost = Position(map_id, start, end), seen, lost
            pos = good = stop
        out.dropped_bytes = len(raw) - good
        out.entries = entries[-self.capacity:]
        self.position, self.seen, self.lost = out.position, out.seen, list(out.lost)
        if out.dropped_bytes or len(entries) > self.capacity:
            self._rewrite(out.entries)        # drop the torn frame, bound the file
        else:
            self._entries_in_file = len(entries)
            self._recent = list(out.entries)
        return out

    def _open(self) -> int:
        if self._fd is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        return self._fd

    @staticmethod
    def _frame(entries: Sequence[bytes], position: Position, seen: int,
               lost: Sequence[int]) -> bytes:
        body = struct.pack(f"<{len(lost)}Q", *lost) + b"".join(
            _LEN.pack(len(e)) + e for e in entries)
        length = len(body) - 8 * len(lost)
        return _HEADER.pack(_MAGIC, position.map_id, len(entries), position.start,
                            position.end, seen, len(lost), length, zlib.crc32(body)) + body

    def append(self, entries: Sequence[bytes], position: Position, seen: int,
               lost: Sequence[int]) -> None:
        """Store one batch (before its consumer position is committed): its entries, the
        positions it spans, the flows seen and the lost-event totals reported so far."""
        frame = self._frame(entries, position, seen, lost)
        fd = self._open()
        done = 0
        while done < len(frame):
            done += os.write(fd, frame[done:])
        self.position, self.seen, self.lost = position, seen, list(lost)
        self._entries_in_file += len(entries)
        self._recent.extend(entries)
        if len(self._recent) > self.capacity:
            del self._recent[:-self.capacity]
        if self._entries_in_file > 2 * self.capacity:
            self._rewrite(self._recent)

    def _rewrite(self, entries: list[bytes]) -> None:
        """The file as one frame of *entries* (temporary file, then rename)."""
        self.close()
        if self.position is None:            # nothing stored yet: an empty file
            if os.path.exists(self.path):
                os.unlink(self.path)
            self._entries_in_file, self._recent = 0, []
            return
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(self._frame(entries, self.position, self.seen, self.lost))
        os.replace(tmp, self.path)
        self._entries_in_file, self._recent = len(entries), list(entries)

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
