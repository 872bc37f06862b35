"""Python mirrors of C structs, and the check that keeps them true to the BTF.

A mirror subclasses :class:`CStruct` and names its C struct in ``_c_name_``;
defining it registers it.  When an object is loaded, every registered mirror
whose struct appears in the object's BTF is compared member by member (name,
offset, size) and the load is refused on any difference, so a header change
that is not mirrored fails loudly instead of corrupting map entries.
"""
from __future__ import annotations

import ctypes

from .btf import KIND_STRUCT, KIND_UNION, Btf, Field
from .errors import StructMismatchError

_REGISTRY: dict[str, type["CStruct"]] = {}


class CStruct(ctypes.Structure):
    """Base of every Python mirror of a C struct shared with BPF programs."""

    _c_name_: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._c_name_ and cls.__dict__.get("_register_", True):
            _REGISTRY[cls._c_name_] = cls

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_
                          if not name.startswith("pad"))
        return f"{type(self).__name__}({parts})"

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))


def registry() -> dict[str, type[CStruct]]:
    """All mirrors defined so far, by C struct name."""
    return dict(_REGISTRY)


def mirror_fields(cls: type[ctypes.Structure], base: int = 0) -> list[Field]:
    """The mirror's members flattened the way Btf.struct_fields flattens C ones."""
    out: list[Field] = []
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for spec in cls._fields_:
        name, ctype = spec[0], spec[1]
        descriptor = getattr(cls, name)
        if name in anonymous:
            out.extend(mirror_fields(ctype, base + descriptor.offset))
            continue
        out.append(Field(name, base + descriptor.offset, ctypes.sizeof(ctype), len(spec) == 3))
    return out


def check_layout(btf: Btf, cls: type[ctypes.Structure], c_name: str | None = None) -> None:
    """Raise StructMismatchError if *cls* differs from struct *c_name* in *btf*."""
    c_name = c_name or getattr(cls, "_c_name_", "") or cls.__name__
    type_id = btf.find(c_name, KIND_STRUCT) or btf.find(c_name, KIND_UNION)
    if type_id is None:
        raise StructMismatchError(f"struct {c_name}: not in the object's BTF")
    where = f"struct {c_name} (mirror {cls.__module__}.{cls.__qualname__})"
    c_size, py_size = btf.size(type_id), ctypes.sizeof(cls)
    problems = []
    if c_size != py_size:
        problems.append(f"size {c_size} in BTF, {py_size} in the mirror")
    c_fields = {f.name: f for f in btf.struct_fields(type_id)}
    py_fields = {f.name: f for f in mirror_fields(cls)}
    for name, cf in c_fields.items():
        pf = py_fields.get(name)
        if pf is None:
            problems.append(f"field {name!r} missing from the mirror")
        elif (cf.offset, cf.size) != (pf.offset, pf.size):
            problems.append(f"field {name!r} at offset {cf.offset} size {cf.size} in BTF, "
                            f"offset {pf.offset} size {pf.size} in the mirror")
        elif cf.bitfield or pf.bitfield:
            problems.append(f"field {name!r} is a bitfield: shared structs use whole fields")
    for name in py_fields.keys() - c_fields.keys():
        problems.append(f"field {name!r} is in the mirror but not in the C struct")
    if problems:
        raise StructMismatchError(f"{where}: " + "; ".join(problems))


def check_registered(btf: Btf, mirrors: dict[str, type[ctypes.Structure]]) -> list[str]:
    """Check every mirror whose struct the object's BTF contains; return their names."""
    checked = []
    for c_name, cls in sorted(mirrors.items()):
        if btf.find(c_name, KIND_STRUCT) is None and btf.find(c_name, KIND_UNION) is None:
            continue
        check_layout(btf, cls, c_name)
        checked.append(c_name)
    return checked
