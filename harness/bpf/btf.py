"""Read-only access to an object's BTF: struct layouts and data sections.

Two jobs need it: checking that the Python mirrors of map structs have the
layout the compiler gave the C structs, and finding ``const volatile``
variables in ``.rodata`` so they can be set before load.
"""
from __future__ import annotations

import ctypes
from ctypes import Structure, c_uint32
from dataclasses import dataclass

from . import _libbpf as L

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM = 1, 2, 3, 4, 5, 6
KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT = 7, 8, 9, 10, 11
KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = 12, 13, 14, 15
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = 16, 17, 18, 19


class _BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class _BtfMember(Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class _BtfArray(Structure):
    _fields_ = [("type", c_uint32), ("index_type", c_uint32), ("nelems", c_uint32)]


class _BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


@dataclass(frozen=True)
class Field:
    """One member of a struct, flattened: anonymous members are expanded."""
    name: str
    offset: int      # bytes from the start of the outermost struct
    size: int        # bytes
    bitfield: bool = False


@dataclass(frozen=True)
class Variable:
    name: str
    offset: int
    size: int


class Btf:
    """A view of a ``struct btf *`` owned by someone else (the bpf_object)."""

    def __init__(self, handle: int):
        if not handle:
            raise ValueError("object has no BTF (compile with -g)")
        self._h = handle

    def _type(self, type_id: int) -> _BtfType:
        ptr = L.btf__type_by_id(self._h, type_id)
        if not ptr:
            raise KeyError(f"BTF type id {type_id} not found")
        return _BtfType.from_address(ptr)

    def kind(self, type_id: int) -> int:
        return (self._type(type_id).info >> 24) & 0x1F

    def name(self, type_id: int) -> str:
        raw = L.btf__name_by_offset(self._h, self._type(type_id).name_off)
        return raw.decode() if raw else ""

    def resolve(self, type_id: int) -> int:
        """Strip typedefs and qualifiers."""
        rid = L.btf__resolve_type(self._h, type_id)
        if rid < 0:
            raise KeyError(f"cannot resolve BTF type id {type_id}")
        return rid

    def size(self, type_id: int) -> int:
        size = L.btf__resolve_size(self._h, type_id)
        if size < 0:
            raise KeyError(f"cannot size BTF type id {type_id}")
        return size

    def find(self, name: str, kind: int) -> int | None:
        type_id = L.btf__find_by_name_kind(self._h, name.encode(), kind)
        return type_id if type_id > 0 else None

    def describe(self, type_id: int) -> str:
        """A C-like name for a type, for messages: 'struct ct_key', 'unsigned int'."""
        rid = self.resolve(type_id)
        kind = self.kind(rid)
        prefix = {KIND_STRUCT: "struct ", KIND_UNION: "union ", KIND_ENUM: "enum "}.get(kind, "")
        return prefix + (self.name(rid) or "<anonymous>")

    def struct_fields(self, type_id: int) -> list[Field]:
        """Members of a struct/union, anonymous members flattened, offsets in bytes."""
        fields: list[Field] = []
        self._collect(self.resolve(type_id), 0, fields)
        return fields

    def _collect(self, type_id: int, base: int, out: list[Field]) -> None:
        t = self._type(type_id)
        kind, vlen, kflag = (t.info >> 24) & 0x1F, t.info & 0xFFFF, t.info >> 31
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise TypeError(f"BTF type {type_id} is not a struct or union")
        first = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
        for i in range(vlen):
            m = _BtfMember.from_address(first + i * ctypes.sizeof(_BtfMember))
            bit_off = m.offset & 0xFFFFFF if kflag else m.offset
            bit_size = (m.offset >> 24) if kflag else 0
            raw = L.btf__name_by_offset(self._h, m.name_off)
            name = raw.decode() if raw else ""
            member_type = self.resolve(m.type)
            if not name and self.kind(member_type) in (KIND_STRUCT, KIND_UNION):
                self._collect(member_type, base + bit_off // 8, out)
                continue
            is_bitfield = bool(bit_size) or bit_off % 8 != 0
            out.append(Field(name, base + bit_off // 8, self.size(member_type), is_bitfield))

    def member_types(self, type_id: int) -> dict[str, int]:
        """Member name -> member type id of a struct or union (unresolved)."""
        rid = self.resolve(type_id)
        t = self._type(rid)
        if (t.info >> 24) & 0x1F not in (KIND_STRUCT, KIND_UNION):
            raise TypeError(f"BTF type {rid} is not a struct or union")
        first = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
        out = {}
        for i in range(t.info & 0xFFFF):
            m = _BtfMember.from_address(first + i * ctypes.sizeof(_BtfMember))
            raw = L.btf__name_by_offset(self._h, m.name_off)
            out[raw.decode() if raw else ""] = m.type
        return out

    def pointee(self, type_id: int) -> int:
        """The type a pointer type points at."""
        rid = self.resolve(type_id)
        if self.kind(rid) != KIND_PTR:
            raise TypeError(f"BTF type {rid} is not a pointer")
        return self._type(rid).size_or_type

    def array(self, type_id: int) -> tuple[int, int]:
        """(element type id, number of elements) of an array type."""
        rid = self.resolve(type_id)
        if self.kind(rid) != KIND_ARRAY:
            raise TypeError(f"BTF type {rid} is not an array")
        arr = _BtfArray.from_address(ctypes.addressof(self._type(rid)) + ctypes.sizeof(_BtfType))
        return arr.type, arr.nelems

    def var_type(self, var_id: int) -> int:
        """The type of a variable (a BTF VAR, e.g. a map definition)."""
        if self.kind(var_id) != KIND_VAR:
            raise TypeError(f"BTF type {var_id} is not a variable")
        return self._type(var_id).size_or_type

    def datasec_variables(self, section: str) -> dict[str, Variable]:
        """Variables of a data section such as '.rodata', by name."""
        sec_id = self.find(section, KIND_DATASEC)
        if sec_id is None:
            return {}
        t = self._type(sec_id)
        vlen = t.info & 0xFFFF
        first = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
        result = {}
        for i in range(vlen):
            info = _BtfVarSecinfo.from_address(first + i * ctypes.sizeof(_BtfVarSecinfo))
            name = self.name(info.type)
            result[name] = Variable(name, info.offset, info.size)
        return result
