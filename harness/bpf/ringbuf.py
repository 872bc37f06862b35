"""Reading a BPF ring buffer map from Python.

``RingBuffer(map, callback)`` calls ``callback(data)`` for each record, where
*data* is the record's bytes, or an instance of *event_type* when given.  An
exception raised by the callback cannot cross the C frames of libbpf (ctypes
would print and drop it), so it is held, polling stops, and ``poll`` raises it.
"""
from __future__ import annotations

import ctypes
import errno as _errno
from typing import Any, Callable

from . import _libbpf as L
from .errors import BpfError, check
from .maps import Map


class RingBuffer:
    def __init__(self, ring: Map, callback: Callable[[Any], Any], event_type: type | None = None):
        self._rb = None
        if ring.type != "ringbuf":
            raise ValueError(f"map {ring.name} is a {ring.type} map, not a ringbuf")
        self.map, self._callback, self._event_type = ring, callback, event_type
        self._error: BaseException | None = None
        # The CFUNCTYPE object must outlive the ring buffer, so keep it on self.
        self._sample_fn = L.RingBufferSampleFn(self._on_sample)
        self._rb = L.ring_buffer__new(ring.fd, self._sample_fn, None, None)
        if not self._rb:
            raise BpfError(f"open ring buffer {ring.name}", L.errno_now() or _errno.EINVAL)

    def _on_sample(self, _ctx, data, size) -> int:
        try:
            raw = ctypes.string_at(data, size)
            if self._event_type is not None:
                want = ctypes.sizeof(self._event_type)
                if size < want:
                    raise ValueError(f"ring buffer {self.map.name}: record of {size} bytes, "
                                     f"{self._event_type.__name__} needs {want}")
                self._callback(self._event_type.from_buffer_copy(raw[:want]))
            else:
                self._callback(raw)
            return 0
        except BaseException as exc:  # noqa: BLE001 - re-raised by poll()/consume()
            self._error = exc
            return -1   # a negative return stops libbpf's loop and is returned to us

    def _finish(self, rc: int, step: str) -> int:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if rc == -_errno.EINTR:
            return 0
        return check(rc, step)

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to *timeout_ms* for records and deliver them; returns how many."""
        self._check_open()
        return self._finish(L.ring_buffer__poll(self._rb, timeout_ms), f"poll {self.map.name}")

    def consume(self) -> int:
        """Deliver whatever records are ready without waiting."""
        self._check_open()
        return self._finish(L.ring_buffer__consume(self._rb), f"consume {self.map.name}")

    def _check_open(self) -> None:
        if not self._rb:
            raise BpfError(f"ring buffer {self.map.name}", _errno.EBADF, "closed")

    def close(self) -> None:
        if self._rb:
            L.ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
