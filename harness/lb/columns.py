"""Many frontends at once as packed map entries: the bulk half of LB planning.

Owns turning frontends and backends (harness.lb.model) into the exact bytes of
their ``cb_lb{4,6}_services``, ``_backends`` and ``_reverse_nat`` entries as
numpy arrays laid out by the BTF-checked mirrors of harness.abi.structs (the
dtypes below are ``np.dtype`` of those ctypes mirrors, so a layout change
there changes them too).  Python work is one attribute read per frontend and
per set of backends: the packed records (model.BACKEND_RECORD, FRONTEND_RECORD)
the objects made of their fields when they were created, joined in C into one
array; selecting backends, numbering them, expanding slots and filling keys and
values are array operations over every frontend at once.

harness.lb.entries renders one frontend at a time with the same mirrors; the
two are kept byte-identical by tests/test_lb_bulk.py.

- ``BackendRefs``: the backends of a list of backend tuples ("groups", one per
  distinct tuple object), flattened: address, port, protocol, state per
  reference, which group it is in, and each group's selectable backends in
  slot order (model.selectable: active ones sorted, else terminating ones).
- ``frontend_columns``: address, port, protocol, flags, affinity of frontends
  of one family.
- ``service_entries``: services-map keys and values of frontend scopes: their
  slots 1..n, and their service entries (slot 0).
- ``backend_values`` / ``reverse_nat_values``: those maps' values.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Sequence

import numpy as np

from harness.abi.structs import (Lb4Backend, Lb4Key, Lb4ReverseNat, Lb6Backend, Lb6Key,
                                Lb6ReverseNat, LbService)
from harness.lb import entries as E
from harness.lb import model as M
from harness.lb.model import ACTIVE, BACKEND_STATES, PROTOCOLS, TERMINATING, Backend, Frontend



def _dtype(struct: type) -> np.dtype:
    """The numpy dtype of a ctypes mirror, padded to the mirror's size (numpy leaves out
    the tail padding a union member's alignment adds, e.g. lb6_backend's)."""
    d = np.dtype(struct)
    size = ctypes.sizeof(struct)
    if d.itemsize == size:
        return d
    return np.dtype({"names": d.names, "formats": [d.fields[n][0] for n in d.names],
                     "offsets": [d.fields[n][1] for n in d.names], "itemsize": size})


KEY = {4: _dtype(Lb4Key), 6: _dtype(Lb6Key)}
SERVICE = _dtype(LbService)
BACKEND = {4: _dtype(Lb4Backend), 6: _dtype(Lb6Backend)}
REVERSE_NAT = {4: _dtype(Lb4ReverseNat), 6: _dtype(Lb6ReverseNat)}

_TYPE_FLAG = E.TYPE_FLAGS
_F = E.SVC_FLAGS
_M64 = (1 << 64) - 1

#: The packed records Backends and Frontends carry (harness.lb.model), as numpy sees them.
BACKEND_REC = np.dtype([(name, "<" + code) for name, code in M.BACKEND_RECORD])
FRONTEND_REC = np.dtype([(name, "<" + code) for name, code in M.FRONTEND_RECORD])
#: Frontend type code -> its flag (model.FRONTEND_TYPES order).
_TYPE_FLAGS = np.array([_TYPE_FLAG[t] for t in M.FRONTEND_TYPES], np.uint16)
_REC = attrgetter("_rec")
_SLOTS = attrgetter("_slots")


def records(objects: Sequence, dtype: np.dtype) -> np.ndarray:
    """The packed records of *objects* (Backends or Frontends) as one array: one attribute
    read per object, in C.  ValueError names the first object that is not programmable (a
    field that does not fit its record, or a name the model does not know)."""
    return _decoded(lambda: b"".join(map(_REC, objects)), lambda: objects, dtype)


def backend_records(groups: Sequence[tuple[Backend, ...]]) -> np.ndarray:
    """The records of every Backend of *groups*, group after group: a model.Backends set's
    as it joined them when it was made, a plain tuple's joined here."""
    def join() -> bytes:
        return b"".join([g._rec if type(g) is M.Backends else b"".join(map(_REC, g))
                         for g in groups])
    return _decoded(join, lambda: list(chain.from_iterable(groups)), BACKEND_REC)


def _decoded(join, objects, dtype: np.dtype) -> np.ndarray:
    try:
        recs = np.frombuffer(join(), dtype)
    except TypeError:       # a None record: a field that does not fit
        bad = next(o for o in objects() if o._rec is None)
        raise ValueError(f"{bad!r}: not programmable (a field out of range)") from None
    unknown = np.zeros(len(recs), bool)
    for name in ("proto", "state", "type"):
        if name in dtype.names:
            unknown |= recs[name] == M.UNKNOWN
    if unknown.any():
        bad = objects()[int(np.flatnonzero(unknown)[0])]
        raise ValueError(f"{bad!r}: unknown protocol, state or type")
    return recs


def be16(values) -> np.ndarray:
    return np.asarray(values, np.uint16).byteswap()


@dataclass
class BackendRefs:
    """The backends of *groups* (tuples of Backends), flattened, one row per reference."""
    groups: Sequence[tuple[Backend, ...]]
    group: np.ndarray               # row -> its group
    family: np.ndarray              # 4 or 6
    hi: np.ndarray                  # address, high 64 bits (IPv6)
    lo: np.ndarray                  # address, low 64 bits (IPv4: the address)
    port: np.ndarray
    proto: np.ndarray               # IP protocol number
    state: np.ndarray               # BACKEND_STATES value
    selected: np.ndarray            # rows of every group's selectable backends, group by group
    counts: np.ndarray              # group -> how many are selectable

    @classmethod
    def of(cls, groups: list[tuple[Backend, ...]]) -> "BackendRefs":
        lens = np.fromiter(map(len, groups), np.int64, len(groups))
        group = np.repeat(np.arange(len(groups)), lens)
        recs = backend_records(groups)
        fam, hi, lo, port = recs["family"], recs["hi"], recs["lo"], recs["port"]
        proto, rank, state = recs["proto"], recs["rank"], recs["state"]
        if all(type(g) is M.Backends and g._slots is not None for g in groups):
            # Every set knows its slot order (model.Backends._slots): place them.
            slots = list(map(_SLOTS, groups))
            counts = np.fromiter(map(len, slots), np.int64, len(groups)) // 4
            local = np.frombuffer(b"".join(slots), "<u4").astype(np.int64)
            selected = local + np.repeat(np.cumsum(lens) - lens, counts)
            return cls(groups, group, fam, hi, lo, port, proto, state, selected, counts)
        # Slot order: model.selectable, group by group (the group is the primary key).
        order = np.lexsort((rank, port, lo, hi, group))
        active = state == BACKEND_STATES[ACTIVE]
        has_active = np.bincount(group[active], minlength=len(groups)) > 0
        keep = active | (~has_active[group] & (state == BACKEND_STATES[TERMINATING]))
        selected = order[keep[order]]
        counts = np.bincount(group[selected], minlength=len(groups))
        return cls(groups, group, fam, hi, lo, port, proto, state, selected, counts)

    @property
    def objects(self) -> list[Backend]:
        """Row -> the Backend (built on demand: planning reads the columns only)."""
        return list(chain.from_iterable(self.groups))

    def unique(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each distinct backend (family, address, port, protocol), in order
        of first appearance; row -> index into those)."""
        n = len(self.group)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if not self.hi.any() and not (self.lo >> np.uint64(32)).any():
            # IPv4 only: the identity fits one 64-bit number, one sort instead of four.
            ident = (self.lo << np.uint64(32)) | (self.port.astype(np.uint64) << np.uint64(16)) \
                | (self.proto.astype(np.uint64) << np.uint64(8)) | self.family.astype(np.uint64)
            _, first, inverse = np.unique(ident, return_index=True, return_inverse=True)
            by_appearance = np.argsort(first, kind="stable")
            rank = np.empty_like(by_appearance)
            rank[by_appearance] = np.arange(len(by_appearance))
            return first[by_appearance], rank[inverse.reshape(-1)]
        tail = (self.family.astype(np.uint64) << 32) | (self.port.astype(np.uint64) << 8) \
            | self.proto.astype(np.uint64)
        order = np.lexsort((np.arange(n), tail, self.lo, self.hi))
        h, lo, t = self.hi[order], self.lo[order], tail[order]
        start = np.ones(n, bool)
        start[1:] = (h[1:] != h[:-1]) | (lo[1:] != lo[:-1]) | (t[1:] != t[:-1])
        run = np.cumsum(start) - 1                  # sorted row -> run number
        first = order[start]                        # each run's first row (by row order)
        by_appearance = np.argsort(first, kind="stable")
        rank = np.empty_like(by_appearance)
        rank[by_appearance] = np.arange(len(by_appearance))
        inverse = np.empty(n, np.int64)
        inverse[order] = rank[run]
        return first[by_appearance], inverse

    def key(self, row: int) -> tuple:
        """The backend identity of *row*: (family, high, low, port, protocol number)."""
        return (int(self.family[row]), int(self.hi[row]), int(self.lo[row]),
                int(self.port[row]), int(self.proto[row]))


def backend_key(b: Backend) -> tuple:
    """(family, high, low, port, protocol number) of a Backend: BackendRefs.key's form."""
    i = b.address._ip
    return (b.address.version, i >> 64, i & _M64, b.port, PROTOCOLS[b.protocol])


def backend_values(family: int, hi: np.ndarray, lo: np.ndarray, port: np.ndarray,
                   proto: np.ndarray, state: np.ndarray) -> np.ndarray:
    """cb_lb{family}_backends values."""
    out = np.zeros(len(port), BACKEND[family])
    if family == 4:
        out["address"] = lo.astype(np.uint32).byteswap()
    else:
        out["address"]["addr"] = _v6_bytes(hi, lo)
    out["port"] = be16(port)
    out["proto"] = proto
    out["state"] = state
    return out


def _v6_bytes(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    both = np.empty((len(hi), 2), ">u8")
    both[:, 0], both[:, 1] = hi, lo
    return both.view(np.uint8).reshape(-1, 16)


@dataclass
class FrontendColumns:
    """Frontends of one family, as columns."""
    family: int
    address: np.ndarray             # __be32 (IPv4) or (n, 16) bytes
    port: np.ndarray                # __be16
    proto: np.ndarray
    flags: np.ndarray
    affinity: np.ndarray

    def keys(self) -> list[bytes]:
        """Each frontend's service-entry key (slot 0, scope EXT): its identity in the map."""
        k = np.zeros(len(self.port), KEY[self.family])
        self._fill_key(k, slice(None))
        return k.view(f"V{k.itemsize}").tolist()

    def vip_keys(self, rows) -> list[bytes]:
        """The address-only (ClusterIP marker) key of the frontends in *rows*."""
        k = np.zeros(len(rows), KEY[self.family])
        if self.family == 4:
            k["address"] = self.address[rows]
        else:
            k["address"]["addr"] = self.address[rows]
        return k.view(f"V{k.itemsize}").tolist()

    def _fill_key(self, k: np.ndarray, rows) -> None:
        if self.family == 4:
            k["address"] = self.address[rows]
        else:
            k["address"]["addr"] = self.address[rows]
        k["dport"] = self.port[rows]
        k["proto"] = self.proto[rows]


def frontend_columns(frontends: Sequence[Frontend]) -> dict[int, tuple[np.ndarray, FrontendColumns]]:
    """Columns of *frontends*, per family: family -> (their positions in *frontends*,
    columns)."""
    recs = records(frontends, FRONTEND_REC)
    fam, hi, lo, port, proto = recs["family"], recs["hi"], recs["lo"], recs["port"], recs["proto"]
    affinity = recs["affinity"]
    flags = _TYPE_FLAGS[recs["type"]]
    bits = recs["bits"]
    for name, flag in (("maglev", "SVC_F_MAGLEV"), ("local_scope", "SVC_F_LOCAL_SCOPE"),
                       ("internal_local", "SVC_F_INT_LOCAL"),
                       ("source_ranges", "SVC_F_SOURCE_RANGE")):
        flags[(bits & M.FRONTEND_BITS[name]) > 0] |= _F[flag]
    flags[affinity > 0] |= _F["SVC_F_AFFINITY"]
    out = {}
    for family in (4, 6):
        rows = np.flatnonzero(fam == family)
        if not len(rows):
            continue
        address = lo[rows].astype(np.uint32).byteswap() if family == 4 else \
            _v6_bytes(hi[rows], lo[rows])
        out[family] = (rows, FrontendColumns(family, address, be16(port[rows]), proto[rows],
                                             flags[rows], affinity[rows]))
    return out


@dataclass
class Scopes:
    """Service entries to build: one row per frontend scope."""
    frontend: np.ndarray            # row -> index into the FrontendColumns
    scope: np.ndarray               # E.SCOPE_EXT / E.SCOPE_INT
    flags: np.ndarray               # the scope entry's flags
    rev_nat: np.ndarray
    counts: np.ndarray              # slots
    ids: np.ndarray                 # backend ids of every row's slots, row by row


def scope_flags(flags: np.ndarray, two_scopes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(EXT flags, INT flags) of frontends whose two-scope-ness is *two_scopes*."""
    ext = flags.copy()
    ext[two_scopes] |= _F["SVC_F_TWO_SCOPES"]
    internal = (flags & ~np.uint16(_F["SVC_F_LOCAL_SCOPE"])) | np.uint16(_F["SVC_F_INT_SCOPE"])
    return ext, internal


@dataclass
class ServiceEntries:
    """services-map entries of Scopes rows: every row's slots 1..n (row after row), and
    every row's scope entry (slot 0: count, reverse NAT index, flags), one per row."""
    slot_keys: np.ndarray
    slot_values: np.ndarray
    slot_row: np.ndarray            # slot -> its row
    keys: np.ndarray                # row -> its scope entry's key
    values: np.ndarray


def service_entries(cols: FrontendColumns, rows: Scopes) -> ServiceEntries:
    """The services-map entries of *rows* (see ServiceEntries)."""
    counts = rows.counts.astype(np.int64)
    n = len(counts)
    slot_row = np.repeat(np.arange(n, dtype=np.int32), counts)
    start = np.cumsum(counts) - counts
    slot_keys = np.zeros(len(slot_row), KEY[cols.family])
    cols._fill_key(slot_keys, rows.frontend[slot_row])
    slot_keys["backend_slot"] = np.arange(1, len(slot_row) + 1, dtype=np.int64) - \
        np.repeat(start, counts)
    slot_keys["scope"] = rows.scope[slot_row]
    slot_values = np.zeros(len(slot_row), SERVICE)
    slot_values["backend_id"] = rows.ids
    keys = np.zeros(n, KEY[cols.family])
    cols._fill_key(keys, rows.frontend)
    keys["scope"] = rows.scope
    values = np.zeros(n, SERVICE)
    values["count"] = counts
    values["rev_nat_index"] = rows.rev_nat
    values["flags"] = rows.flags
    values["affinity_timeout"] = cols.affinity[rows.frontend]
    return ServiceEntries(slot_keys, slot_values, slot_row, keys, values)


def reverse_nat_values(cols: FrontendColumns) -> np.ndarray:
    out = np.zeros(len(cols.port), REVERSE_NAT[cols.family])
    if cols.family == 4:
        out["address"] = cols.address
    else:
        out["address"]["addr"] = cols.address
    out["port"] = cols.port
    return out


def vip_values(counts: np.ndarray) -> list[bytes]:
    """Address-only entries' values for ClusterIPs with *counts* selectable backends."""
    out = np.zeros(len(counts), SERVICE)
    out["count"] = np.minimum(counts, 0xFFFF)
    out["flags"] = _F["SVC_F_VIP"] | _F["SVC_F_CLUSTERIP"]
    return out.view(f"V{SERVICE.itemsize}").tolist()


def u32_keys(values) -> np.ndarray:
    return np.asarray(values, "<u4")
