"""Reading a BPF ring buffer in batches, with the consumer position in the caller's hands.

``BatchReader(ring_map)`` maps the ring buffer as libbpf does (the consumer
page read-write, the producer page and the data pages, mapped twice so a record
that wraps reads as one, read-only) and hands out what the producers have
submitted since the consumer position as one ``Batch``: the records' bytes back
to back (``data``, with a fast path when every record has the same size, as
struct cb_event has) and the positions it spans.  The kernel's consumer
position moves only when the caller ``commit``s the batch, so a reader can
store the records first and a reader started after it was killed resumes after
what the dead one committed: nothing is delivered twice and nothing is skipped.

harness.bpf.RingBuffer (libbpf's ring_buffer__poll) moves the consumer position
after each record's callback; here one persist covers a whole batch.  The
positions are 64-bit counters that only grow for the life of the map (the
kernel's ``consumer_pos``/``producer_pos``); ``map_id`` tells maps apart.
Reads assume x86-64 or arm64 ordering of plain loads as libbpf's acquire loads
give it (the length word is read before the record, once per record).
"""
from __future__ import annotations

import mmap
import os
import select
import struct
from dataclasses import dataclass

import numpy as np

from harness.bpf import Map

BUSY_BIT = 1 << 31            # BPF_RINGBUF_BUSY_BIT: reserved, not yet submitted
DISCARD_BIT = 1 << 30         # BPF_RINGBUF_DISCARD_BIT: reserved then discarded
HDR_SIZE = 8                  # BPF_RINGBUF_HDR_SZ: u32 len, u32 page offset
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _roundup(n: int) -> int:
    return (n + HDR_SIZE + 7) & ~7


def map_id(fd: int) -> int:
    """The kernel's id of the map behind *fd* (``/proc/self/fdinfo``)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("map_id:"):
                return int(line.split()[1])
    raise ValueError(f"fd {fd} is not a BPF map")


@dataclass
class Batch:
    """Records read from *start* to *end* (consumer positions); ``data`` holds the
    ``count`` records of ``size`` bytes back to back (``odd``: records of another size,
    left out and counted)."""
    start: int
    end: int
    data: bytes
    count: int
    size: int
    odd: int = 0


class BatchReader:
    """Batches of one record size *record_size* from the ring buffer *ring* (a Map
    of type ringbuf; the reader keeps its own fd)."""

    def __init__(self, ring: Map, record_size: int):
        if ring.type != "ringbuf":
            raise ValueError(f"map {ring.name} is a {ring.type} map, not a ringbuf")
        self.name = ring.name
        self.record_size = record_size
        self.fd = os.dup(ring.fd)
        self._cons = self._prod = None
        self._epoll: select.epoll | None = None
        try:
            self.map_id = map_id(self.fd)
            self.size = ring.max_entries            # data bytes (a power of two)
            self.mask = self.size - 1
            page = mmap.PAGESIZE
            self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
            self._prod = mmap.mmap(self.fd, page + 2 * self.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=page)
            self._data = memoryview(self._prod)[page:]
            self._epoll = select.epoll()
            self._epoll.register(self.fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise
        # One record slot of the fast path: header then the record, 8-byte aligned.
        self._slot = _roundup(record_size) if record_size else 0
        self._slot_dtype = np.dtype([("len", "<u4"), ("pg", "<u4"),
                                     ("rec", f"V{self._slot - HDR_SIZE}")]) if record_size else None

    # ---------------------------------------------------------------- positions

    @property
    def consumer_pos(self) -> int:
        return _U64.unpack_from(self._cons, 0)[0]

    @property
    def producer_pos(self) -> int:
        return _U64.unpack_from(self._prod, 0)[0]

    def pending_bytes(self) -> int:
        return self.producer_pos - self.consumer_pos

    def commit(self, position: int) -> None:
        """Move the kernel's consumer position to *position* (the end of a batch read
        and stored): the space is the producers' again, and a new reader starts there."""
        if position < self.consumer_pos:
            raise ValueError(f"consumer position {position} is behind "
                             f"{self.consumer_pos}: positions only grow")
        _U64.pack_into(self._cons, 0, position)

    # --------------------------------------------------------------------- reading

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for data; True if there is some."""
        if self.pending_bytes() > 0:
            return True
        try:
            return bool(self._epoll.poll(timeout))
        except InterruptedError:
            return False

    def read(self, max_records: int = 4096) -> Batch:
        """The submitted records after the consumer position, up to *max_records*
        (stopping at one still being written); nothing moves until ``commit``."""
        start = pos = self.consumer_pos
        prod = self.producer_pos
        if prod <= pos:
            return Batch(start, start, b"", 0, self.record_size)
        span = min(prod - pos, self.size, max_records * self._slot)
        off = pos & self.mask
        fast = self._fast(off, span)
        if fast is not None:
            return Batch(start, start + fast[0], fast[1], fast[2], self.record_size)
        return self._slow(start, prod, max_records)

    def _fast(self, off: int, span: int) -> tuple[int, bytes, int] | None:
        """(bytes consumed, records, count) when every record in the span has
        record_size and is submitted, up to the first busy one; None otherwise."""
        n = span // self._slot
        if n == 0:
            return None
        raw = np.frombuffer(self._data[off:off + n * self._slot], dtype=self._slot_dtype)
        lens = raw["len"]
        busy = np.flatnonzero(lens & BUSY_BIT)
        if len(busy):
            n = int(busy[0])
            raw, lens = raw[:n], lens[:n]
        if n == 0:
            return None
        plain = lens & ~np.uint32(DISCARD_BIT)
        if np.any(plain != self.record_size):
            return None
        keep = (lens & DISCARD_BIT) == 0
        recs = raw["rec"][keep] if not keep.all() else raw["rec"]
        data = np.ascontiguousarray(recs).view(np.uint8).reshape(len(recs), -1)
        data = data[:, :self.record_size].tobytes()
        return n * self._slot, data, len(recs)

    def _slow(self, pos: int, prod: int, max_records: int) -> Batch:
        start, out, odd = pos, [], 0
        while pos < prod and len(out) < max_records:
            off = pos & self.mask
            length = _U32.unpack_from(self._data, off)[0]
            if length & BUSY_BIT:
                break
            size = length & ~(BUSY_BIT | DISCARD_BIT)
            if not length & DISCARD_BIT:
                if size == self.record_size:
                    out.append(bytes(self._data[off + HDR_SIZE:off + HDR_SIZE + size]))
                else:
                    odd += 1
            pos += _roundup(size)
        return Batch(start, pos, b"".join(out), len(out), self.record_size, odd)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._prod is not None:
            self._data.release()
            self._prod.close()
            self._prod = None
        if self._cons is not None:
            self._cons.close()
            self._cons = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "BatchReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
