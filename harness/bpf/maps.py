"""BPF maps: typed lookup/update/delete, iteration, batch operations, pinning.

Keys and values are ctypes types (a mirrored struct, an integer type, or a
byte array).  Per-CPU maps take and return one value per possible CPU.
Batch writes also take ``Packed`` records: many keys or values already laid
out back to back in one buffer (a bulk planner's output), passed to the
kernel without a copy per entry.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os
from typing import Any, Iterator, Sequence

from . import _libbpf as L
from .errors import BpfError, KeyNotFoundError, NotSupportedError, check

# enum bpf_map_type (uapi/linux/bpf.h)
MAP_TYPES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash",
    10: "lru_percpu_hash", 11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps",
    14: "devmap", 15: "sockmap", 16: "cpumap", 17: "xskmap", 18: "sockhash",
    19: "cgroup_storage", 20: "reuseport_sockarray", 21: "percpu_cgroup_storage",
    22: "queue", 23: "stack", 24: "sk_storage", 25: "devmap_hash", 26: "struct_ops",
    27: "ringbuf", 28: "inode_storage", 29: "task_storage", 30: "bloom_filter",
    31: "user_ringbuf", 32: "cgrp_storage",
}
PER_CPU = {"percpu_hash", "percpu_array", "lru_percpu_hash", "percpu_cgroup_storage"}

# update flags
ANY, NOEXIST, EXIST = 0, 1, 2
# creation flags (map_flags)
NO_PREALLOC, NO_COMMON_LRU = 1 << 0, 1 << 1

# What the kernel answers for a map type without batch support: EINVAL on
# older kernels, ENOTSUPP (524, kernel-internal) or EOPNOTSUPP on newer ones.
_NO_BATCH = {_errno.EINVAL, 524, _errno.EOPNOTSUPP}

_INT_TYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


class Packed(Sequence):
    """Fixed-size records back to back in one bytes buffer: keys or values of a
    batch, as a sequence of bytes (``len``, indexing, iteration) that batch
    operations hand to the kernel as they are."""

    __slots__ = ("data", "size")

    def __init__(self, data: bytes, size: int):
        if size <= 0 or len(data) % size:
            raise ValueError(f"{len(data)} bytes are not records of {size} bytes")
        self.data, self.size = bytes(data), size

    def __len__(self) -> int:
        return len(self.data) // self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return Packed(self.data[start * self.size:stop * self.size], self.size)
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return self.data[index * self.size:(index + 1) * self.size]

    def __iter__(self):
        size, data = self.size, self.data
        return (data[i:i + size] for i in range(0, len(data), size))

    def __reversed__(self):
        size, data = self.size, self.data
        return (data[i:i + size] for i in range(len(data) - size, -1, -size))

    def __eq__(self, other) -> bool:
        if isinstance(other, Packed):
            return (self.size, self.data) == (other.size, other.data)
        return NotImplemented

    def __reduce__(self):
        return (Packed, (self.data, self.size))


class _MapInfo(ctypes.Structure):
    # struct bpf_map_info prefix (uapi/linux/bpf.h)
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16)]


def raw_type(size: int) -> type:
    """The ctypes type used when a map's key or value has no better description."""
    return _INT_TYPES.get(size) or (ctypes.c_ubyte * size)


class Map:
    """A map in the kernel, identified by its fd.

    lookup() raises KeyNotFoundError (a KeyError) for a missing key; get()
    returns a default instead.
    """

    def __init__(self, name: str, fd: int, map_type: int, key_size: int, value_size: int,
                 max_entries: int, key_type: type | None = None, value_type: type | None = None,
                 owns_fd: bool = False):
        self.name = name
        self.fd = fd
        self.type = MAP_TYPES.get(map_type, str(map_type))
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.per_cpu = self.type in PER_CPU
        self.ncpus = L.libbpf_num_possible_cpus() if self.per_cpu else 1
        self._owns_fd = owns_fd
        self.key_type = key_type or raw_type(key_size)
        self.value_type = value_type or raw_type(value_size)

    # -- typing --------------------------------------------------------------------
    @property
    def key_type(self) -> type:
        return self._key_type

    @key_type.setter
    def key_type(self, ctype: type) -> None:
        if self.key_size and ctypes.sizeof(ctype) != self.key_size:
            raise ValueError(f"map {self.name}: key type {ctype.__name__} is "
                             f"{ctypes.sizeof(ctype)} bytes, the map's key is {self.key_size}")
        self._key_type = ctype

    @property
    def value_type(self) -> type:
        return self._value_type

    @value_type.setter
    def value_type(self, ctype: type) -> None:
        if self.value_size and ctypes.sizeof(ctype) != self.value_size:
            raise ValueError(f"map {self.name}: value type {ctype.__name__} is "
                             f"{ctypes.sizeof(ctype)} bytes, the map's value is {self.value_size}")
        self._value_type = ctype

    @property
    def _value_stride(self) -> int:
        # Per-CPU values are laid out one per possible CPU, each rounded up to 8 bytes.
        return (self.value_size + 7) & ~7 if self.per_cpu else self.value_size

    def _to_c(self, obj: Any, ctype: type, size: int, what: str):
        if isinstance(obj, ctype):
            return obj
        if isinstance(obj, (bytes, bytearray, memoryview)):
            if len(obj) != size:
                raise ValueError(f"map {self.name}: {what} is {len(obj)} bytes, expected {size}")
            return ctype.from_buffer_copy(bytes(obj))
        if isinstance(obj, ctypes.Structure | ctypes.Array) or hasattr(obj, "_fields_"):
            if ctypes.sizeof(obj) != size:
                raise ValueError(f"map {self.name}: {what} is {ctypes.sizeof(obj)} bytes "
                                 f"({type(obj).__name__}), expected {size}")
            return ctype.from_buffer_copy(bytes(obj))
        if isinstance(obj, int) and ctype in _INT_TYPES.values():
            return ctype(obj)
        raise TypeError(f"map {self.name}: cannot use {type(obj).__name__} as {what} "
                        f"(expected {ctype.__name__})")

    def _key(self, key: Any):
        return self._to_c(key, self.key_type, self.key_size, "key")

    def _value_buffer(self, value: Any):
        if not self.per_cpu:
            return self._to_c(value, self.value_type, self.value_size, "value")
        values = value if isinstance(value, (list, tuple)) else [value] * self.ncpus
        if len(values) != self.ncpus:
            raise ValueError(f"map {self.name}: per-CPU value needs {self.ncpus} entries, "
                             f"got {len(values)}")
        buf = ctypes.create_string_buffer(self._value_stride * self.ncpus)
        for cpu, item in enumerate(values):
            # Keep the converted value referenced until memmove has read it.
            converted = self._to_c(item, self.value_type, self.value_size, "value")
            ctypes.memmove(ctypes.addressof(buf) + cpu * self._value_stride,
                           ctypes.addressof(converted), self.value_size)
        return buf

    def _decode_value(self, buf):
        if not self.per_cpu:
            return buf
        base = ctypes.addressof(buf)
        return [self.value_type.from_buffer_copy(
                    ctypes.string_at(base + cpu * self._value_stride, self.value_size))
                for cpu in range(self.ncpus)]

    def _empty_value(self):
        if self.per_cpu:
            return ctypes.create_string_buffer(self._value_stride * self.ncpus)
        return self.value_type()

    @staticmethod
    def _plain(value):
        """Integers come back as int, everything else as the ctypes object."""
        return value.value if isinstance(value, ctypes._SimpleCData) else value

    # -- element operations ---------------------------------------------------------
    def lookup(self, key: Any):
        """Return the value for *key*; per-CPU maps return a list, one per CPU."""
        ckey, value = self._key(key), self._empty_value()
        rc = L.bpf_map_lookup_elem(self.fd, ctypes.byref(ckey), ctypes.byref(value))
        if rc == -_errno.ENOENT:
            raise KeyNotFoundError(f"lookup in map {self.name}")
        check(rc, f"lookup in map {self.name}")
        decoded = self._decode_value(value)
        return [self._plain(v) for v in decoded] if self.per_cpu else self._plain(decoded)

    def get(self, key: Any, default=None):
        try:
            return self.lookup(key)
        except KeyNotFoundError:
            return default

    def update(self, key: Any, value: Any, flags: int = ANY) -> None:
        ckey, cval = self._key(key), self._value_buffer(value)
        rc = L.bpf_map_update_elem(self.fd, ctypes.byref(ckey), ctypes.byref(cval), flags)
        if rc == -_errno.E2BIG:
            raise BpfError(f"update map {self.name}", -rc,
                           f"full: max_entries={self.max_entries}")
        check(rc, f"update map {self.name}")

    def delete(self, key: Any) -> None:
        rc = L.bpf_map_delete_elem(self.fd, ctypes.byref(self._key(key)))
        if rc == -_errno.ENOENT:
            raise KeyNotFoundError(f"delete from map {self.name}")
        check(rc, f"delete from map {self.name}")

    # -- iteration --------------------------------------------------------------------
    def keys(self) -> Iterator:
        """Iterate over keys (a snapshot walk; concurrent changes may skip or repeat)."""
        prev = None
        nxt = self.key_type()
        while True:
            rc = L.bpf_map_get_next_key(self.fd, ctypes.byref(prev) if prev is not None else None,
                                        ctypes.byref(nxt))
            if rc == -_errno.ENOENT:
                return
            check(rc, f"iterate map {self.name}")
            current = self.key_type.from_buffer_copy(bytes(nxt))
            yield self._plain(current)
            prev = current

    __iter__ = keys

    def items(self) -> Iterator[tuple]:
        for key in self.keys():
            try:
                yield key, self.lookup(key)
            except KeyNotFoundError:   # deleted (or evicted from an LRU) while walking
                continue

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def clear(self) -> int:
        """Delete every entry; return how many were deleted."""
        keys = list(self.keys())
        if keys:
            self.delete_batch(keys)
        return len(keys)

    # -- batch operations --------------------------------------------------------------
    def _pack(self, items: Sequence, ctype: type, size: int, what: str):
        if isinstance(items, Packed):
            if items.size != size:
                raise ValueError(f"map {self.name}: {what}s of {items.size} bytes, "
                                 f"the map's are {size}")
            return items.data                   # read by the kernel in place
        if all(type(item) is bytes and len(item) == size for item in items):
            joined = b"".join(items)            # the common case, without a per-item copy
            return ctypes.create_string_buffer(joined, len(joined))
        buf = ctypes.create_string_buffer(size * len(items))
        for i, item in enumerate(items):
            if isinstance(item, (bytes, bytearray)) and len(item) == size:
                ctypes.memmove(ctypes.addressof(buf) + i * size, bytes(item), size)
                continue
            converted = self._to_c(item, ctype, size, what)   # referenced until copied
            ctypes.memmove(ctypes.addressof(buf) + i * size, ctypes.addressof(converted), size)
        return buf

    def update_batch(self, keys: Sequence, values: Sequence, flags: int = ANY) -> int:
        """Write many entries in one syscall per kernel batch; returns how many were written.

        Falls back to one update per entry on kernels or map types without
        batch support (array maps before 5.6, LPM tries)."""
        if len(keys) != len(values):
            raise ValueError(f"map {self.name}: {len(keys)} keys but {len(values)} values")
        if not keys:
            return 0
        if self.per_cpu:
            vals = b"".join(bytes(self._value_buffer(v)) for v in values)
            vbuf = ctypes.create_string_buffer(vals, len(vals))
        else:
            vbuf = self._pack(values, self.value_type, self.value_size, "value")
        kbuf = self._pack(keys, self.key_type, self.key_size, "key")
        count = ctypes.c_uint32(len(keys))
        opt = L.opts(L.MapBatchOpts, elem_flags=flags)
        rc = L.bpf_map_update_batch(self.fd, kbuf, vbuf, ctypes.byref(count), ctypes.byref(opt))
        if -rc in _NO_BATCH and count.value == 0:
            for k, v in zip(keys, values):
                self.update(k, v, flags)
            return len(keys)
        if rc < 0:
            raise BpfError(f"batch update of map {self.name}", -rc,
                           f"{count.value} of {len(keys)} entries written")
        return count.value

    def delete_batch(self, keys: Sequence) -> int:
        """Delete many entries; a missing key is an error (KeyNotFoundError)."""
        if not keys:
            return 0
        kbuf = self._pack(keys, self.key_type, self.key_size, "key")
        count = ctypes.c_uint32(len(keys))
        opt = L.opts(L.MapBatchOpts)
        rc = L.bpf_map_delete_batch(self.fd, kbuf, ctypes.byref(count), ctypes.byref(opt))
        if rc == -_errno.ENOENT:
            raise KeyNotFoundError(f"batch delete from map {self.name} "
                                   f"(after {count.value} of {len(keys)})")
        if -rc in _NO_BATCH and count.value == 0:
            for k in keys:
                self.delete(k)
            return len(keys)
        check(rc, f"batch delete from map {self.name}")
        return count.value

    def _raw_batches(self, chunk: int, stride: int) -> Iterator[tuple[bytes, bytes, int]]:
        """BPF_MAP_LOOKUP_BATCH over the whole map: (keys, values, count) per call, raw,
        values *stride* bytes each."""
        kbuf = ctypes.create_string_buffer(self.key_size * chunk)
        vbuf = ctypes.create_string_buffer(stride * chunk)
        in_batch, out_batch = None, ctypes.create_string_buffer(max(self.key_size, 8))
        while True:
            count = ctypes.c_uint32(chunk)
            opt = L.opts(L.MapBatchOpts)
            rc = L.bpf_map_lookup_batch(self.fd, in_batch, out_batch, kbuf, vbuf,
                                        ctypes.byref(count), ctypes.byref(opt))
            if rc < 0 and rc != -_errno.ENOENT:
                if -rc in _NO_BATCH:
                    raise NotSupportedError(f"batch lookup in map {self.name}", -rc)
                check(rc, f"batch lookup in map {self.name}")
            yield kbuf.raw[:count.value * self.key_size], vbuf.raw[:count.value * stride], \
                count.value
            if rc == -_errno.ENOENT:
                return
            in_batch = ctypes.create_string_buffer(out_batch.raw, len(out_batch))

    def dump_packed(self, chunk: int = 65536) -> tuple[Packed, Packed]:
        """Every entry as (keys, values) Packed records, read with BPF_MAP_LOOKUP_BATCH
        and not decoded (hash-type maps, not per-CPU)."""
        if self.per_cpu:
            raise ValueError(f"map {self.name}: dump_packed reads maps with one value per key")
        batches = list(self._raw_batches(chunk, self.value_size))
        return (Packed(b"".join(k for k, _, _ in batches), self.key_size),
                Packed(b"".join(v for _, v, _ in batches), self.value_size))

    def count(self, chunk: int = 65536) -> int:
        """How many entries the map holds, counted with BPF_MAP_LOOKUP_BATCH (hash-type
        maps; nothing is decoded, so a few million entries take well under a second)."""
        return sum(n for _, _, n in self._raw_batches(chunk, self._value_stride * self.ncpus))

    def lookup_batch(self, chunk: int = 4096) -> list[tuple]:
        """Read every entry with BPF_MAP_LOOKUP_BATCH (hash-type maps); returns (key, value) pairs."""
        out: list[tuple] = []
        stride = self._value_stride * self.ncpus
        for kraw, vraw, count in self._raw_batches(chunk, stride):
            for i in range(count):
                key = self.key_type.from_buffer_copy(kraw[i * self.key_size:(i + 1) * self.key_size])
                raw = ctypes.create_string_buffer(vraw[i * stride:(i + 1) * stride], stride)
                value = self._decode_value(raw) if self.per_cpu else self.value_type.from_buffer_copy(raw.raw[:self.value_size])
                out.append((self._plain(key), [self._plain(v) for v in value] if self.per_cpu else self._plain(value)))
        return out

    # -- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, map_type: str, name: str, key_size: int, value_size: int,
               max_entries: int, key_type: type | None = None, value_type: type | None = None,
               flags: int = 0) -> "Map":
        """Create a map outside any object (e.g. the inner maps of a map-in-map).
        The returned Map owns its fd: close() it once it is stored elsewhere."""
        types = {v: k for k, v in MAP_TYPES.items()}
        if map_type not in types:
            raise ValueError(f"unknown map type {map_type!r}")
        opt = L.opts(L.MapCreateOpts, map_flags=flags)
        fd = L.bpf_map_create(types[map_type], name.encode()[:15], key_size, value_size,
                              max_entries, ctypes.byref(opt))
        if fd < 0:
            raise BpfError(f"create {map_type} map {name}", -fd)
        return cls(name, fd, types[map_type], key_size, value_size, max_entries, key_type,
                   value_type, owns_fd=True)

    # -- pinning ---------------------------------------------------------------------------
    def pin(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        check(L.bpf_obj_pin(self.fd, path.encode()), f"pin map {self.name} at {path}")

    @classmethod
    def from_pin(cls, path: str, key_type: type | None = None,
                 value_type: type | None = None) -> "Map":
        """Open a pinned map; the returned Map owns its fd (close() it)."""
        fd = L.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError(f"open pinned map {path}", -fd)
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        try:
            check(L.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
                  f"read info of pinned map {path}")
            return cls(info.name.decode(), fd, info.type, info.key_size, info.value_size,
                       info.max_entries, key_type, value_type, owns_fd=True)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "Map":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Map({self.name!r}, {self.type}, key={self.key_type.__name__}, "
                f"value={self.value_type.__name__}, max_entries={self.max_entries})")



def _raw_pointer(buf: bytes | bytearray | memoryview):
    """A pointer to *buf*'s bytes for a syscall that only reads them (no copy for bytes
    and writable buffers; a read-only memoryview other than of bytes is copied once).
    The caller keeps *buf* alive across the call."""
    if isinstance(buf, bytes):
        return ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p)
    view = memoryview(buf)
    if view.readonly:
        if isinstance(view.obj, bytes) and view.contiguous and view.nbytes == len(view.obj):
            return ctypes.cast(ctypes.c_char_p(view.obj), ctypes.c_void_p)
        return ctypes.cast(ctypes.c_char_p(view.tobytes()), ctypes.c_void_p)
    return ctypes.cast((ctypes.c_char * view.nbytes).from_buffer(view), ctypes.c_void_p)
