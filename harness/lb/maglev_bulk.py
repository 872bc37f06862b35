"""Maglev tables for many frontends at once, computed with numpy.

Owns ``build_tables`` (the unweighted tables of many backend lists in one
call) and ``install_tables`` (build them all, then write each one).  The
result is exactly ``[maglev.build_table(keys, m, seed=seed) for keys in
backend_lists]``; ``harness.lb.maglev`` stays the reference (and the only
path for weighted tables), and tests/test_maglev_bulk.py checks the two
against each other.

How: every backend name is hashed once per call, whatever the number of
tables it appears in.  Tables with the same number of backends N form a
group that is filled together, one *round* (N turns: every backend, in name
order, takes its next free preferred slot) per step, over all tables of the
group at once:

1. every backend walks its preference list (offset + j * skip) mod M from
   where it stopped to the first slot still empty at the start of the
   round, looking ahead a few slots at a time, more each time it finds none;
2. within a table two backends may have picked the same slot: the earlier
   one in turn order keeps it, the later one walks on to its next slot that
   is empty at the round's start, until no two backends of a table share a
   slot.  That is the sequential rule: backend i takes the first of its
   preferences that is neither filled before the round nor taken by a
   backend before it in the round (a slot a backend walks past is always
   held, at the end, by a backend before it, because the owner of a
   contended slot only ever changes to an earlier backend);
3. the round's slots are written and every backend's walk resumes after its
   slot.

The last round of a table is partial (M turns in all), as in the paper.  A
group of few tables, or of tables of many backends, is filled table by table
with ``maglev.populate`` on the same permutations, which is faster there (see
``BULK_MIN_WALKS``).
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np

from harness.bpf import Collection, KeyNotFoundError, Map
from harness.lb.maglev import (_table_def, check_table, install_table, remove_table, _U32_MAX, DEFAULT_TABLE_SIZE, MAGLEV_MAP, BackendKey, _check_size,
                               backend_name, permutation, populate, table_size, write_table)

__all__ = ["BULK_MIN_TABLES", "BULK_MIN_WALKS", "BULK_MAX_BACKENDS", "build_tables",
           "install_tables"]

#: A group (tables of one backend count N) is filled in bulk when it has at least
#: BULK_MIN_TABLES tables, tables x N >= BULK_MIN_WALKS and N <= BULK_MAX_BACKENDS; otherwise
#: table by table by ``maglev.populate`` (faster there: a bulk fill pays numpy's
#: per-call cost every round, M/N rounds, and many same-round conflicts at large
#: N).  Measured at M = 16381: crossover at about 25 tables of 10 backends,
#: 3 tables of 100 or 300; none up to 16 tables of 1000.
BULK_MIN_TABLES = 2
BULK_MIN_WALKS = 300
BULK_MAX_BACKENDS = 500
#: Tables filled together at most: bounds the scratch memory (6 bytes x M a table)
#: and keeps it in cache (128 measured faster than 64 or 512 at 1000 x 10 backends).
_CHUNK = 128
#: A walk past a filled slot looks ahead about M / (empty slots) slots, at most this many.
AHEAD_CAP = 16
#: The last TAIL_FACTOR * sqrt(M) turns find slots from the empty slots' side.
TAIL_FACTOR = 1.0


def _names(backends: Sequence[BackendKey]) -> list[bytes]:
    names = [backend_name(b) for b in backends]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError("backends with the same name: "
                         + ", ".join(d.decode(errors="replace") for d in dup))
    return names


def _mod(x: np.ndarray, m: int) -> np.ndarray:
    """x mod m: numpy's floor division by a scalar is several times faster than %."""
    return x - x // m * m


def _first_free(filled: np.ndarray, base: np.ndarray, slot: np.ndarray, skip: np.ndarray,
                m: int, ahead: int) -> np.ndarray:
    """For every walk (row offset base, at slot, stepping skip): the first slot at or
    after slot that is empty (< 0) in filled (the tables, flattened).  Looks at the
    slot itself, then *ahead* further slots of the walks still on a filled one,
    twice as many each time for walks that found none."""
    slot = slot.copy()
    todo = np.flatnonzero(filled[base + slot] >= 0)
    start = 1
    while todo.size:
        steps = np.arange(start, start + ahead, dtype=slot.dtype)
        cand = _mod(slot[todo, None] + skip[todo, None] * steps, m)
        empty = filled[base[todo, None] + cand] < 0
        first = empty.argmax(axis=1)
        rows = np.arange(todo.size)
        found = empty[rows, first]
        slot[todo] = np.where(found, cand[rows, first], slot[todo])
        todo = todo[~found]
        start += ahead
        ahead = min(ahead * 2, m)
    return slot


def _nearest_free(free: np.ndarray, row: np.ndarray, slot: np.ndarray, inverse: np.ndarray,
                  m: int) -> np.ndarray:
    """The same as _first_free once few slots are left, from the other side: a walk
    at slot with skip s reaches free slot f after (f - slot) * s^-1 mod m steps;
    take the nearest of its table's free slots (free: tables x F)."""
    cand = free[row]
    steps = _mod(_mod(cand - slot[:, None], m) * inverse[:, None], m)
    return cand[np.arange(row.size), steps.argmin(axis=1)]


def _fill_group(offsets: np.ndarray, skips: np.ndarray, m: int) -> np.ndarray:
    """populate() for T tables of N backends each (offsets, skips: T x N, in turn
    order); returns T x m slot owners (indices into each table's N)."""
    t, n = offsets.shape
    dtype = np.int16 if n < 2 ** 15 else np.int32
    filled = np.full(t * m, -1, dtype=dtype)
    owner = np.full(t * m, n, dtype=np.int32)          # scratch: earliest claimant of a slot
    # walks stay below 2 * m * m (a step count times a skip), tables below t * m
    it = np.int32 if 2 * m * m + m < 2 ** 31 and t * m < 2 ** 31 else np.int64
    rows_all = np.arange(t, dtype=it)[:, None].repeat(n, axis=1)
    who_all = np.broadcast_to(np.arange(n, dtype=np.int32), (t, n))
    pos = offsets.astype(it)
    skips = skips.astype(it)
    inverses = np.array([pow(int(x), -1, m) for x in skips.ravel()], dtype=it).reshape(t, n)
    tail = max(n, int(TAIL_FACTOR * m ** 0.5))
    free = None                                         # tables x F empty slots, in the tail
    for first_turn in range(0, m, n):
        active = min(n, m - first_turn)                 # the last round is partial
        row = rows_all[:, :active].ravel()
        base = row * m
        who = who_all[:, :active].ravel()
        step = skips[:, :active].ravel()
        if m - first_turn <= tail:
            if free is None:
                free = np.nonzero(filled.reshape(t, m) < 0)[1].reshape(t, m - first_turn)
            inverse = inverses[:, :active].ravel()
            slot = _nearest_free(free, row, pos[:, :active].ravel(), inverse, m)
        else:
            ahead = min(AHEAD_CAP, -(-m // (m - first_turn)))     # about the expected walk
            slot = _first_free(filled, base, pos[:, :active].ravel(), step, m, ahead)
        while True:                                     # the earlier backend keeps a shared slot
            key = base + slot
            np.minimum.at(owner, key, who)
            lost = np.flatnonzero(owner[key] != who)
            owner[key] = n
            if not lost.size:
                break
            restart = _mod(slot[lost] + step[lost], m)
            if free is not None:
                slot[lost] = _nearest_free(free, row[lost], restart, inverse[lost], m)
            else:
                slot[lost] = _first_free(filled, base[lost], restart, step[lost], m, ahead)
        filled[base + slot] = who
        pos[:, :active] = _mod(slot + step, m).reshape(t, active)
        if free is not None and first_turn + active < m:
            left = free[filled[free + (np.arange(t, dtype=it) * m)[:, None]] < 0]
            free = left.reshape(t, m - first_turn - active)
    return filled.reshape(t, m)


def build_tables(backend_lists: Sequence[Sequence[BackendKey]], m: int = DEFAULT_TABLE_SIZE,
                 *, seed: bytes = b"") -> np.ndarray:
    """The unweighted Maglev tables of many backend lists: a T x m int32 array whose
    row k equals ``maglev.build_table(backend_lists[k], m, seed=seed)`` (indices into
    backend_lists[k]).  T = 0 gives a 0 x m array.  Raises ValueError as
    build_table does (m not prime, m <= a list's length, an empty list, two
    backends of a list with the same name) before any table is filled."""
    tables = np.empty((len(backend_lists), m if isinstance(m, int) else 0), dtype=np.int32)
    perms: dict[bytes, tuple[int, int]] = {}
    groups: dict[int, list[tuple[int, list[int], list[tuple[int, int]]]]] = {}
    if not backend_lists:
        _check_size(m, 1)
    for k, backends in enumerate(backend_lists):
        _check_size(m, len(backends))
        names = _names(backends)
        order = sorted(range(len(names)), key=names.__getitem__)      # turns go by name
        for name in names:
            if name not in perms:
                perms[name] = permutation(name, m, seed)
        groups.setdefault(len(names), []).append((k, order, [perms[names[i]] for i in order]))
    for n, members in groups.items():
        if (len(members) < BULK_MIN_TABLES or len(members) * n < BULK_MIN_WALKS
                or n > BULK_MAX_BACKENDS):
            for k, order, pairs in members:
                tables[k] = np.asarray(order, dtype=np.int32)[populate(pairs, m)]
            continue
        for start in range(0, len(members), _CHUNK):
            chunk = members[start:start + _CHUNK]
            pairs = np.array([p for _, _, p in chunk], dtype=np.int64).reshape(len(chunk), n, 2)
            slots = _fill_group(pairs[:, :, 0], pairs[:, :, 1], m)
            orders = np.array([o for _, o, _ in chunk], dtype=np.int32)
            tables[[k for k, _, _ in chunk]] = np.take_along_axis(orders, slots.astype(np.intp),
                                                                  axis=1)
    return tables


def install_tables(collection: Collection,
                   items: Sequence[tuple[int, Sequence[int], Sequence[BackendKey]]],
                   *, seed: bytes = b"", outer: str = MAGLEV_MAP) -> None:
    """Install the Maglev tables of many frontends, each as ``maglev.install_table(
    collection, rev_nat_index, backend_ids, keys=keys, seed=seed, outer=outer)``
    would: items are (rev_nat_index, backend_ids, keys), keys naming the backends
    in the order of backend_ids (pass the ids themselves to name backends by id,
    install_table's default).  Every item is checked and every table built
    before the first is written (ValueError as install_table/write_table raise
    it); each is then written by ``maglev.write_table``, swapped in in one map
    update."""
    size = table_size(collection, outer)
    for rev_nat_index, backend_ids, keys in items:
        if len(keys) != len(backend_ids):
            raise ValueError(f"{len(keys)} keys for {len(backend_ids)} backend ids")
        if len(set(backend_ids)) != len(backend_ids):
            raise ValueError("backend ids repeat")
        if any(not 0 < b <= _U32_MAX for b in backend_ids):
            raise ValueError("backend ids in a Maglev table must be in 1..2^32-1 "
                             "(0 means 'no backend' to the datapath)")
        if not 0 <= rev_nat_index <= _U32_MAX:
            raise ValueError(f"rev_nat_index {rev_nat_index} is out of range")
    slots = build_tables([keys for _, _, keys in items], size, seed=seed)
    for (rev_nat_index, backend_ids, _), row in zip(items, slots):
        write_table(collection, rev_nat_index, np.asarray(backend_ids, dtype=np.int64)[row], outer)


class PreparedTables:
    """Maglev tables built in bulk ahead of their installs, for one collection.

    ``prepare(items)`` builds the tables of (rev_nat_index, backend_ids, keys)
    items together (``build_tables``: computing only, nothing written);
    ``install(rev_nat_index, backend_ids, keys)`` then writes a prepared table,
    or builds one table alone when it was not prepared (a journal replayed by
    a later process), exactly as ``maglev.install_table`` would.  LbControl
    prepares every table of an apply while it plans and installs each in the
    apply's phase order."""

    def __init__(self, collection: Collection, seed: bytes = b"", outer: str = MAGLEV_MAP):
        self.collection, self.seed, self.outer = collection, seed, outer
        self._built: dict[tuple, np.ndarray] = {}

    def prepare(self, items: Sequence[tuple[int, Sequence[int], Sequence[BackendKey]]]) -> None:
        self._built.clear()
        size = table_size(self.collection, self.outer)
        slots = build_tables([keys for _, _, keys in items], size, seed=self.seed)
        for (rid, ids, keys), row in zip(items, slots):
            self._built[(rid, tuple(ids), tuple(keys))] = \
                np.asarray(ids, dtype=np.int64)[row]

    def install_many(self, items: Sequence[tuple[int, Sequence[int], Sequence[BackendKey]]]
                     ) -> None:
        """Install many tables with one batch update of the outer map: each inner map is
        created and filled first, then all are swapped in together (each update of a
        map-in-map waits for an RCU grace period, milliseconds; a batch waits once)."""
        d, m = _table_def(self.collection, self.outer)
        unprepared = [(rid, ids, keys) for rid, ids, keys in items
                      if (rid, tuple(ids), tuple(keys)) not in self._built]
        if unprepared:
            self.prepare(unprepared + [(rid, ids, keys) for rid, ids, keys in items
                                       if (rid, tuple(ids), tuple(keys)) in self._built])
        inners = []
        try:
            for rid, ids, keys in items:
                table = self._built.pop((rid, tuple(ids), tuple(keys)))
                check_table(table, rid, m, self.outer)
                inner = Map.create(d.map_type, f"cb_maglev_{rid}", d.key_size, d.value_size,
                                   d.max_entries, flags=d.map_flags)
                inners.append(inner)
                inner.update(0, table.astype("<u4").tobytes())
            self.collection.maps[self.outer].update_batch(
                [ctypes.c_uint32(rid) for rid, _, _ in items],
                [ctypes.c_uint32(inner.fd) for inner in inners])
        finally:
            for inner in inners:
                inner.close()

    def remove_many(self, rev_nat_indexes: Sequence[int]) -> None:
        """Remove many frontends' tables with one batch delete (missing ones are no error)."""
        outer = self.collection.maps[self.outer]
        try:
            outer.delete_batch([ctypes.c_uint32(rid) for rid in rev_nat_indexes])
        except KeyNotFoundError:
            for rid in rev_nat_indexes:
                remove_table(self.collection, rid, self.outer)

    def install(self, rev_nat_index: int, backend_ids: Sequence[int],
                keys: Sequence[BackendKey]) -> None:
        table = self._built.pop((rev_nat_index, tuple(backend_ids), tuple(keys)), None)
        if table is None:
            install_table(self.collection, rev_nat_index, backend_ids, keys=keys,
                          seed=self.seed, outer=self.outer)
        else:
            write_table(self.collection, rev_nat_index, table, self.outer)
