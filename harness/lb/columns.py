"""Many frontends at once as packed map entries: the bulk half of LB planning.

Owns turning frontends and backends (harness.lb.model) into the exact bytes of
their ``cb_lb{4,6}_services``, ``_backends`` and ``_reverse_nat`` entries as
numpy arrays laid out by the BTF-checked mirrors of harness.abi.structs (the
dtypes below are ``np.dtype`` of those ctypes mirrors, so a layout change
there changes them too).  Python work per object is limited to reading
attributes (``operator.attrgetter`` over lists, which runs in C); selecting
backends, numbering them, expanding slots and filling keys and values are
array operations over every frontend at once.

harness.lb.entries renders one frontend at a time with the same mirrors; the
two are kept byte-identical by tests/test_lb_columns.py.

- ``BackendRefs``: the backends of a list of backend tuples ("groups", one per
  distinct tuple object), flattened: address, port, protocol, state per
  reference, which group it is in, and each group's selectable backends in
  slot order (model.selectable: active ones sorted, else terminating ones).
- ``frontend_columns``: address, port, protocol, flags, affinity of frontends
  of one family.
- ``service_entries``: services-map keys and values of frontend scopes, slots
  1..n then the service entry (slot 0) per scope.
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

#: Backend order compares protocols as strings (model.Backend is ordered by its
#: fields): their rank in that order.
_PROTO_RANK = {p: i for i, p in enumerate(sorted(PROTOCOLS))}
_TYPE_FLAG = E.TYPE_FLAGS
_F = E.SVC_FLAGS
_M64 = (1 << 64) - 1

_BACKEND_FIELDS = ("port", "protocol", "state")
_FRONTEND_FIELDS = ("port", "protocol", "type", "affinity_timeout", "maglev", "local_scope",
                    "internal_local", "source_ranges")


def _columns(objects: list, fields: tuple[str, ...]) -> tuple:
    """(family, address high 64 bits, low 64 bits, port, then the other *fields* as
    sequences) of objects with an ``address`` and a ``port`` (the first of *fields*):
    one attribute read per object, in C, then transposed."""
    n = len(objects)
    if n == 0:
        empty = np.zeros(0, np.uint64)
        return (np.zeros(0, np.uint8), empty, empty, np.zeros(0, np.uint16)) + \
            tuple(() for _ in fields[1:])
    rows = list(map(attrgetter("address._version", "address._ip", *fields), objects))
    cols = list(zip(*rows))
    fam = np.fromiter(cols[0], np.uint8, n)
    hi = np.zeros(n, np.uint64)
    v6 = np.flatnonzero(fam == 6)
    if len(v6):             # 128-bit integers: split the IPv6 ones in Python
        ints = cols[1]
        v4 = np.flatnonzero(fam != 6)
        lo = np.zeros(n, np.uint64)
        if len(v4):
            lo[v4] = [ints[i] for i in v4.tolist()]
        big = [ints[i] for i in v6.tolist()]
        hi[v6] = [i >> 64 for i in big]
        lo[v6] = [i & _M64 for i in big]
    else:
        lo = np.fromiter(cols[1], np.uint64, n)
    port = np.fromiter(cols[2], np.uint16, n)
    return (fam, hi, lo, port) + tuple(cols[3:])


def _codes(names: Sequence[str], table: dict[str, int]) -> np.ndarray:
    """*names* as the numbers *table* gives them (every name must be in it)."""
    return np.fromiter(map(table.__getitem__, names), np.uint8, len(names))


def be16(values) -> np.ndarray:
    return np.asarray(values, np.uint16).byteswap()


@dataclass
class BackendRefs:
    """The backends of *groups* (tuples of Backends), flattened, one row per reference."""
    objects: list[Backend]          # row -> the Backend
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
        flat = list(chain.from_iterable(groups))
        group = np.repeat(np.arange(len(groups)), lens)
        fam, hi, lo, port, protos, states = _columns(flat, _BACKEND_FIELDS)
        proto, rank = _codes(protos, PROTOCOLS), _codes(protos, _PROTO_RANK)
        state = _codes(states, BACKEND_STATES)
        # Slot order: model.selectable, group by group (the group is the primary key).
        order = np.lexsort((rank, port, lo, hi, group))
        active = state == BACKEND_STATES[ACTIVE]
        has_active = np.bincount(group[active], minlength=len(groups)) > 0
        keep = active | (~has_active[group] & (state == BACKEND_STATES[TERMINATING]))
        selected = order[keep[order]]
        counts = np.bincount(group[selected], minlength=len(groups))
        return cls(flat, group, fam, hi, lo, port, proto, state, selected, counts)

    def unique(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each distinct backend (family, address, port, protocol), in order
        of first appearance; row -> index into those)."""
        n = len(self.objects)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
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
    fam, hi, lo, port, protos, types, affinity, maglev, local, int_local, ranges = \
        _columns(list(frontends), _FRONTEND_FIELDS)
    n = len(types)
    flags = np.fromiter(map(_TYPE_FLAG.__getitem__, types), np.uint16, n)
    affinity = np.fromiter(affinity, np.uint32, n)
    for values, flag in ((maglev, "SVC_F_MAGLEV"), (local, "SVC_F_LOCAL_SCOPE"),
                         (int_local, "SVC_F_INT_LOCAL")):
        flags[np.fromiter(values, bool, n)] |= _F[flag]
    flags[affinity > 0] |= _F["SVC_F_AFFINITY"]
    flags[np.fromiter(map(bool, ranges), bool, len(ranges))] |= _F["SVC_F_SOURCE_RANGE"]
    proto = _codes(protos, PROTOCOLS)
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


def service_entries(cols: FrontendColumns, rows: Scopes
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(keys, values, masters, row) of the services-map entries of *rows*: per row its
    slots 1..n then its service entry; *masters* marks the EXT service entries (slot 0,
    scope EXT: the entry every lookup finds first), *row* gives each entry's row."""
    counts = rows.counts.astype(np.int64)
    per = counts + 1
    row = np.repeat(np.arange(len(per)), per)
    start = np.cumsum(per) - per
    pos = np.arange(len(row)) - start[row]
    is_entry = pos == counts[row]
    fe = rows.frontend[row]
    keys = np.zeros(len(row), KEY[cols.family])
    cols._fill_key(keys, fe)
    keys["backend_slot"] = np.where(is_entry, 0, pos + 1)
    keys["scope"] = rows.scope[row]
    values = np.zeros(len(row), SERVICE)
    slot = ~is_entry
    id_start = np.cumsum(counts) - counts
    values["backend_id"][slot] = rows.ids[id_start[row[slot]] + pos[slot]]
    er = row[is_entry]
    values["count"][is_entry] = counts[er]
    values["rev_nat_index"][is_entry] = rows.rev_nat[er]
    values["flags"][is_entry] = rows.flags[er]
    values["affinity_timeout"][is_entry] = cols.affinity[rows.frontend[er]]
    masters = is_entry & (keys["scope"] == E.SCOPE_EXT)
    return keys, values, masters, row


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
