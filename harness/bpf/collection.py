"""A loaded BPF object file: its programs and maps, by name.

``Collection.load(path, rodata=...)`` opens the ELF object, sets
``const volatile`` knobs in ``.rodata``, checks the Python struct mirrors
against the object's BTF, loads everything into the kernel and gives back
Programs and Maps.  It is a context manager: leaving it closes every fd.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import os
from typing import Any

from . import _libbpf as L
from .btf import KIND_INT, KIND_STRUCT, KIND_UNION, Btf
from .errors import BpfError, ConfigError, StructMismatchError, VerifierError
from .layout import check_registered, registry
from .maps import Map, raw_type
from .programs import PROG_TYPES, Program


def _encode_constant(name: str, value: Any, size: int) -> bytes:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        try:
            return value.to_bytes(size, "little", signed=value < 0)
        except OverflowError:
            raise ConfigError(f"rodata {name}: {value} does not fit in {size} bytes") from None
    if isinstance(value, (bytes, bytearray)):
        if len(value) != size:
            raise ConfigError(f"rodata {name}: {len(value)} bytes given, variable is {size}")
        return bytes(value)
    if hasattr(value, "_fields_") or isinstance(value, ctypes.Array):
        return _encode_constant(name, bytes(value), size)
    raise ConfigError(f"rodata {name}: cannot encode {type(value).__name__}")


class Collection:
    """Programs and maps of one object file, loaded into the kernel."""

    def __init__(self, path: str, obj: int, btf: Btf, programs: dict[str, Program],
                 maps: dict[str, Map], checked_structs: list[str]):
        self.path = path
        self._obj = obj
        self.btf = btf
        self.programs = programs
        self.maps = maps
        self.checked_structs = checked_structs

    @classmethod
    def load(cls, path: str, rodata: dict[str, Any] | None = None,
             mirrors: dict[str, type] | None = None,
             max_entries: dict[str, int] | None = None,
             programs: list[str] | None = None,
             pin_dir: str | None = None,
             map_flags: dict[str, int] | None = None) -> "Collection":
        """Load the object at *path*.

        rodata: values for ``const volatile`` globals, by variable name.
        mirrors: C struct name -> ctypes mirror; defaults to every mirror
            registered (every CStruct subclass defined so far: the project's are
            in harness.abi.structs, which its loaders import).  A mismatch raises
            StructMismatchError before anything reaches the kernel.
        max_entries: resize maps before load, by map name.
        programs: load only these programs (others are left out).
        pin_dir: share maps through this bpffs directory: a map already pinned
            there under its name is reused (libbpf checks it is compatible),
            any other is created and pinned, so every collection loaded with
            the same pin_dir works on the same maps.
        map_flags: creation flags added to a map's own before load, by map name
            (harness.bpf.maps.NO_COMMON_LRU, say).
        """
        if not os.path.isfile(path):
            raise BpfError(f"open object {path}", _errno.ENOENT,
                           "run `make build` to compile bpf_src/")
        if mirrors is None:
            mirrors = registry()
        with L.captured_log() as log:
            obj = L.bpf_object__open_file(path.encode(), None)
        if not obj:
            raise BpfError(f"open object {path}", L.errno_now() or _errno.EINVAL,
                           log.text.strip().splitlines()[-1] if log.text.strip() else "")
        try:
            return cls._load_opened(path, obj, rodata or {}, mirrors, max_entries or {}, programs,
                                    pin_dir, map_flags or {})
        except BaseException:
            L.bpf_object__close(obj)
            raise

    @classmethod
    def _load_opened(cls, path, obj, rodata, mirrors, max_entries, wanted,
                     pin_dir, map_flags) -> "Collection":
        btf = Btf(L.bpf_object__btf(obj))
        checked = check_registered(btf, mirrors)
        map_handles = _walk(L.bpf_object__next_map, obj)
        prog_handles = _walk(L.bpf_object__next_program, obj)

        if rodata:
            _set_rodata(path, btf, map_handles, rodata)
        for name, entries in max_entries.items():
            handle = next((h for h in map_handles if L.bpf_map__name(h).decode() == name), None)
            if handle is None:
                raise ConfigError(f"{os.path.basename(path)}: max_entries for unknown map {name}")
            if L.bpf_map__set_max_entries(handle, entries) < 0:
                raise BpfError(f"resize map {name}", L.errno_now() or _errno.EINVAL)
        for name, flags in map_flags.items():
            handle = next((h for h in map_handles if L.bpf_map__name(h).decode() == name), None)
            if handle is None:
                raise ConfigError(f"{os.path.basename(path)}: map_flags for unknown map {name}")
            if L.bpf_map__set_map_flags(handle, L.bpf_map__map_flags(handle) | flags) < 0:
                raise BpfError(f"set flags of map {name}", L.errno_now() or _errno.EINVAL)
        if pin_dir is not None:
            os.makedirs(pin_dir, exist_ok=True)
            for handle in map_handles:
                if L.bpf_map__is_internal(handle):
                    continue        # .rodata/.bss belong to the object, not the node
                name = L.bpf_map__name(handle).decode()
                rc = L.bpf_map__set_pin_path(handle, os.path.join(pin_dir, name).encode())
                if rc < 0:
                    raise BpfError(f"set pin path of map {name}", -rc)
        if wanted is not None:
            names = {L.bpf_program__name(p).decode(): p for p in prog_handles}
            unknown = set(wanted) - names.keys()
            if unknown:
                raise BpfError(f"select programs in {path}", _errno.ENOENT,
                               f"no program {', '.join(sorted(unknown))}")
            for name, handle in names.items():
                L.bpf_program__set_autoload(handle, name in wanted)

        # Read the maps' BTF type ids now: once a pinned map is reused, libbpf
        # reports the ids of the object that created it, not of this one.
        type_ids = {h: (L.bpf_map__btf_key_type_id(h), L.bpf_map__btf_value_type_id(h))
                    for h in map_handles}
        with L.captured_log() as log:
            rc = L.bpf_object__load(obj)
        if rc < 0:
            if "BEGIN PROG LOAD LOG" in log.text or -rc in (_errno.EACCES, _errno.EPERM):
                raise VerifierError(f"load {os.path.basename(path)}", -rc, log.text)
            last = log.text.strip().splitlines()[-1] if log.text.strip() else ""
            raise BpfError(f"load {os.path.basename(path)}", -rc, last)

        maps = {}
        for handle in map_handles:
            m = _make_map(btf, handle, mirrors, *type_ids[handle])
            maps[m.name] = m
        programs = {}
        for handle in prog_handles:
            fd = L.bpf_program__fd(handle)
            if fd < 0:          # left out by `programs=`
                continue
            p = Program(L.bpf_program__name(handle).decode(), fd, L.bpf_program__type(handle),
                        L.bpf_program__section_name(handle).decode(), handle)
            programs[p.name] = p
        coll = cls(path, obj, btf, programs, maps, checked)
        # A Program or Map handed out keeps its collection (and so its fds)
        # alive; only close() or the last reference releases them.
        for item in (*programs.values(), *maps.values()):
            item._owner = coll
        return coll

    def close(self) -> None:
        """Release every fd of the object (programs stay attached only through links/pins)."""
        if self._obj:
            L.bpf_object__close(self._obj)
            self._obj = 0
            for m in self.maps.values():
                m.fd = -1
            for p in self.programs.values():
                p.fd = -1

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self) -> str:
        return (f"Collection({os.path.basename(self.path)!r}, programs={sorted(self.programs)}, "
                f"maps={sorted(self.maps)})")


def list_programs(path: str) -> dict[str, str]:
    """Program name -> program type ('sched_cls', 'xdp', ...) of an object file,
    read without loading anything into the kernel."""
    with L.captured_log() as log:
        obj = L.bpf_object__open_file(path.encode(), None)
    if not obj:
        raise BpfError(f"open object {path}", L.errno_now() or _errno.EINVAL, log.text.strip())
    try:
        return {L.bpf_program__name(h).decode():
                PROG_TYPES.get(L.bpf_program__type(h), str(L.bpf_program__type(h)))
                for h in _walk(L.bpf_object__next_program, obj)}
    finally:
        L.bpf_object__close(obj)


def list_maps(path: str) -> list[str]:
    """Map names of an object file (without loading anything)."""
    with L.captured_log() as log:
        obj = L.bpf_object__open_file(path.encode(), None)
    if not obj:
        raise BpfError(f"open object {path}", L.errno_now() or _errno.EINVAL, log.text.strip())
    try:
        return [L.bpf_map__name(h).decode() for h in _walk(L.bpf_object__next_map, obj)]
    finally:
        L.bpf_object__close(obj)


def _walk(next_fn, obj) -> list[int]:
    out, cur = [], None
    while True:
        cur = next_fn(obj, cur)
        if not cur:
            return out
        out.append(cur)


def _set_rodata(path: str, btf: Btf, map_handles: list[int], values: dict[str, Any]) -> None:
    variables = btf.datasec_variables(".rodata")
    unknown = sorted(set(values) - variables.keys())
    if unknown:
        known = ", ".join(sorted(variables)) or "none"
        raise ConfigError(f"{os.path.basename(path)}: no const volatile variable "
                       f"{', '.join(unknown)} in .rodata (known: {known})")
    handle = next((h for h in map_handles if L.bpf_map__name(h).decode().endswith(".rodata")), None)
    size = ctypes.c_size_t()
    data = L.bpf_map__initial_value(handle, ctypes.byref(size)) if handle else None
    if not data:
        raise BpfError(f"{path}: find .rodata", _errno.ENOENT)
    for name, value in values.items():
        var = variables[name]
        raw = _encode_constant(name, value, var.size)
        if var.offset + var.size > size.value:
            raise ConfigError(f"rodata {name} lies outside .rodata")
        ctypes.memmove(data + var.offset, raw, var.size)


def _btf_ctype(btf: Btf, type_id: int, size: int, mirrors: dict[str, type]) -> type | None:
    """The ctypes type for a map key/value: a mirror, an integer, or raw bytes."""
    if not type_id:
        return None
    rid = btf.resolve(type_id)
    kind = btf.kind(rid)
    if kind in (KIND_STRUCT, KIND_UNION):
        name = btf.name(rid)
        mirror = mirrors.get(name)
        if mirror is not None:
            return mirror
        return ctypes.c_ubyte * size
    if kind == KIND_INT:
        return raw_type(size)
    return None


def _make_map(btf: Btf, handle: int, mirrors: dict[str, type], key_type_id: int,
              value_type_id: int) -> Map:
    key_size, value_size = L.bpf_map__key_size(handle), L.bpf_map__value_size(handle)
    key_type = _btf_ctype(btf, key_type_id, key_size, mirrors)
    value_type = _btf_ctype(btf, value_type_id, value_size, mirrors)
    name = L.bpf_map__name(handle).decode()
    if key_type is not None and ctypes.sizeof(key_type) != key_size:
        raise StructMismatchError(f"map {name}: key type is {ctypes.sizeof(key_type)} bytes, "
                                  f"map key is {key_size}")
    return Map(name, L.bpf_map__fd(handle), L.bpf_map__type(handle), key_size, value_size,
               L.bpf_map__max_entries(handle), key_type, value_type)
