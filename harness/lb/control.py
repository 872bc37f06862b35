"""Programming the load balancer maps: diff, ordered batch writes, rollback.

``LbControl`` holds what it last wrote (as Cilium's agent does) and turns a
new desired state, for all services or just some, into the smallest set of
map writes, in an order the datapath can never trip over:

  1. backends (new, or changed state)     5. service entries (slot 0, scope EXT)
  2. reverse-NAT entries                  6. ClusterIP address-only entries
  3. source ranges (new ones)             7. deletions: service entries before
  4. Maglev tables; backend slots 1..n;      their slots and INT scopes, source
     a two-scope frontend's INT scope        ranges, reverse NAT, Maglev tables,
     (its slots, then its entry)             backends nobody uses

A packet therefore never finds a service entry whose slots, INT scope,
source ranges, backends or reverse-NAT entry are missing.  (A changed set of
source ranges allows the union of old and new between phases 3 and 7.)  Writes go out as one batch per map and
phase.  If any write fails, every write already made is undone from the
journal of the values it replaced, and LbApplyError is raised: the maps and
the LbControl are left exactly as they were before the call.  Planning only
reads; the writes run through ``harness.journal`` (signals held while they
run; with a node's journal, a SIGKILL mid-way is finished by the next command
that opens the node's maps: see that module for what the datapath can see).

Planning is in bulk (harness.lb.columns): the keys and values of every new or
changed frontend are built as packed arrays in one pass over all of them, and
each phase goes to the kernel as one BPF_MAP_UPDATE_BATCH straight from those
buffers.  Python work per frontend is a dictionary lookup and a record; per
distinct backend, one more.  Cost is proportional to what changes: changing
one service of 100,000 touches that service's entries only (pass that
service's frontends as *desired*, as an agent reacting to one EndpointSlice
does; a full desired state is filtered first, which reads all of it).
"""
from __future__ import annotations

import heapq
import ipaddress
import time
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from operator import attrgetter, is_not
from typing import Callable, Iterable, Mapping

import numpy as np

from harness import gcpause
from harness.errors import ChainbenchError
from harness import journal as map_journal
from harness.bpf import Map, Packed
from harness.lb import columns as C
from harness.lb import entries as E
from harness.lb.listing import read_backends, read_services
from harness.lb.model import ACTIVE, Backend, Frontend, LbState, selectable

#: (rev_nat_index, backend ids, backend keys): the keys name backends in the
#: Maglev permutation, so a table does not depend on how ids were assigned.
MaglevInstall = Callable[[int, list[int], list[tuple]], None]
MaglevRemove = Callable[[int], None]
#: Called while planning with every (rev_nat_index, backend ids, backend keys) the
#: apply will install, so the tables can be computed together (harness.lb.maglev_bulk).
MaglevPrepare = Callable[[list[tuple[int, list[int], list[tuple]]]], None]


class LbApplyError(ChainbenchError, RuntimeError):
    """Programming failed; every change of the failed call was rolled back."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


@dataclass(slots=True, eq=False)
class _Record:
    """What one programmed frontend wrote (its entries follow from these)."""
    frontend: Frontend
    rev_nat_index: int
    backend_ids: tuple[int, ...]                # EXT scope's slots, in slot order
    internal_ids: tuple[int, ...] | None        # the INT scope's, for a two-scope frontend
    uses: tuple[int, ...]                       # every backend its entries may name, per scope (any order)
    ranges: dict[bytes, bytes] | None = None    # its source-range entries
    kernel: dict[bytes, bytes] | None = None    # restored: the services entries the kernel held

    def tables(self) -> dict[int, tuple[list[int], list[tuple]]]:
        """Its Maglev tables: table key -> (backend ids, backend keys)."""
        f = self.frontend
        if not f.maglev:
            return {}
        out = {}
        if self.backend_ids:
            out[E.maglev_table_key(self.rev_nat_index, False)] = (
                list(self.backend_ids), [b.key for b in f.selectable()])
        if self.internal_ids:
            out[E.maglev_table_key(self.rev_nat_index, True)] = (
                list(self.internal_ids), [b.key for b in f.selectable(internal=True)])
        return out


@dataclass
class ApplyStats:
    writes: int = 0
    deletes: int = 0
    frontends_added: int = 0
    frontends_changed: int = 0
    frontends_removed: int = 0
    maglev_tables: int = 0
    #: Seconds spent planning (reading only: what to write), out of the whole apply.
    plan_seconds: float = 0.0
    #: Seconds spent in the map writes and deletes (syscalls), out of the whole apply.
    write_seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.frontends_added} frontends added, {self.frontends_changed} changed, "
                f"{self.frontends_removed} removed; {self.writes} map writes, "
                f"{self.deletes} deletes, {self.maglev_tables} Maglev tables")


class _Ids:
    """Smallest-free-first id allocator (ids start at 1), taking many at once."""

    def __init__(self):
        self.top = 1                    # every id from here on is free
        self.holes: list[int] = []      # free ids below top (a heap)

    def copy(self) -> "_Ids":
        c = _Ids()
        c.top, c.holes = self.top, list(self.holes)
        return c

    def take(self, n: int = 1) -> list[int]:
        out = [heapq.heappop(self.holes) for _ in range(min(n, len(self.holes)))]
        rest = n - len(out)
        out.extend(range(self.top, self.top + rest))
        self.top += rest
        return out

    def give(self, value: int) -> None:
        heapq.heappush(self.holes, value)

    def adopt(self, used: Iterable[int]) -> None:
        """Mark *used* taken (a fresh allocator adopting what the maps hold)."""
        used = set(used) | {i for i in range(1, self.top) if i not in self.holes}
        self.top = max(used, default=0) + 1
        self.holes = [i for i in range(1, self.top) if i not in used]
        heapq.heapify(self.holes)


#: A batch of one phase: (keys, values or None for deletes, what the keys held).
_Chunk = tuple


@dataclass
class _Plan:
    # (phase, map name) -> chunks, executed in phase order
    phases: dict[tuple[str, str], list[_Chunk]] = field(default_factory=dict)
    maglev_install: dict[int, tuple[list[int], list[tuple]]] = field(default_factory=dict)
    maglev_remove: list[int] = field(default_factory=list)
    records: dict[bytes, _Record | None] = field(default_factory=dict)
    new_backends: dict[tuple, int] = field(default_factory=dict)       # key -> new id
    backend_values: dict[int, bytes | None] = field(default_factory=dict)
    refs: dict[int, int] = field(default_factory=dict)
    vips: dict[bytes, bytes | None] = field(default_factory=dict)
    #: (its key, address-only key, is a ClusterIP, EXT slots) of every new or changed
    #: frontend
    addresses: list[tuple[bytes, bytes, bool, int]] = field(default_factory=list)
    #: backend ids named by new and changed frontends, and how many times each
    increments: tuple = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    fe_ids: _Ids | None = None
    be_ids: _Ids | None = None
    freed_fe_ids: list[int] = field(default_factory=list)
    freed_be_ids: list[int] = field(default_factory=list)
    stats: ApplyStats = field(default_factory=ApplyStats)

    def put(self, phase: str, mapname: str, keys, values, olds) -> None:
        if len(keys):
            self.phases.setdefault((phase, mapname), []).append((keys, values, olds))


#: Up to this many new or changed frontends are planned one by one (the array
#: operations of bulk planning cost about half a millisecond whatever their size).
SMALL = 16

# Phases in execution order (see the module docstring).
_PHASES = ("backends", "revnat", "ranges", "slots", "masters", "vips",
           "del-masters", "del-slots", "del-ranges", "del-revnat", "del-backends")

def _packed(arr: np.ndarray) -> Packed:
    return Packed(arr.tobytes(), arr.dtype.itemsize)


def _family_of_key(key: bytes) -> int:
    return 4 if len(key) == C.KEY[4].itemsize else 6


class LbControl:
    """The LB maps of one datapath and what was last programmed into them."""

    def __init__(self, maps: Mapping[str, Map], maglev_install: MaglevInstall | None = None,
                 maglev_remove: MaglevRemove | None = None,
                 journal: map_journal.Journal | None = None,
                 maglev_prepare: MaglevPrepare | None = None,
                 maglev_install_many: Callable[[list], None] | None = None,
                 maglev_remove_many: Callable[[list], None] | None = None):
        missing = [m for f in (4, 6) for m in (E.services_map(f), E.backends_map(f),
                                               E.reverse_nat_map(f)) if m not in maps]
        if missing:
            raise ValueError(f"not an LB datapath: maps {', '.join(missing)} missing")
        self.maps = maps
        self._maglev_install = maglev_install
        self._maglev_remove = maglev_remove
        self._maglev_prepare = maglev_prepare
        self._maglev_many = (maglev_install_many, maglev_remove_many)
        self._journal = journal
        self._fe: dict[bytes, _Record] = {}                 # service-entry key -> record
        self._by_service: dict[str, set[bytes]] = {}        # service -> its frontends' keys
        self._clusterips: dict[bytes, set[bytes]] = {}      # address-only key -> ClusterIPs there
        self._vip: dict[bytes, bytes] = {}                  # address-only entries written
        self._fe_ids, self._be_ids = _Ids(), _Ids()
        self._backend_id: dict[tuple, int] = {}             # backend key -> id (columns.backend_key)
        self._backend_key: dict[int, tuple] = {}            # id -> backend key
        self._backend_value: dict[int, bytes] = {}          # id -> value written
        self._refs: dict[int, int] = {}                     # backend id -> scopes naming it

    # -- queries ----------------------------------------------------------------------
    @property
    def state(self) -> LbState:
        return LbState(tuple(r.frontend for r in self._fe.values()))

    def frontend_id(self, frontend_key: tuple) -> int:
        addr, port, proto = frontend_key
        return self._fe[E.service_key(addr.version, addr, port, proto, 0)].rev_nat_index

    def backend_id(self, backend_key: tuple) -> int:
        addr, port, proto = backend_key
        return self._backend_id[C.backend_key(Backend(addr, port, proto))]

    def records(self) -> list[tuple[Frontend, int, list[int]]]:
        """(frontend, rev_nat_index, slot backend ids) of everything programmed."""
        return [(r.frontend, r.rev_nat_index, list(r.backend_ids)) for r in self._fe.values()]

    def entry_count(self) -> dict[str, int]:
        """Entries written per map."""
        counts: dict[str, int] = {}

        def add(name: str, n: int) -> None:
            if n:
                counts[name] = counts.get(name, 0) + n
        for key, r in self._fe.items():
            fam = _family_of_key(key)
            add(E.services_map(fam), len(r.kernel) if r.kernel is not None else
                len(r.backend_ids) + 1 + (len(r.internal_ids) + 1
                                          if r.internal_ids is not None else 0))
            add(E.reverse_nat_map(fam), 1)
            add(E.source_range_map(fam), len(r.ranges or ()))
        for key in self._vip:
            add(E.services_map(_family_of_key(key)), 1)
        for value in self._backend_value.values():
            add(E.backends_map(4 if len(value) == C.BACKEND[4].itemsize else 6), 1)
        return counts

    # -- restoring ----------------------------------------------------------------------
    def restore(self) -> int:
        """Adopt what the maps already hold (pinned maps programmed by an earlier run),
        so the next apply writes only differences.  Returns the frontends adopted.

        Restored frontends lack their service names (the maps do not keep them);
        a full apply() reconciles them, an apply() for some services only leaves
        them alone."""
        if self._fe:
            raise ValueError("restore() is for a fresh LbControl")
        rows = read_services(self.maps)
        held: dict[str, dict[bytes, bytes]] = {}
        for fam in (4, 6):
            for name in (E.services_map(fam), E.backends_map(fam)):
                held[name] = {bytes(k) if not isinstance(k, int) else E.u32(k): bytes(v)
                              for k, v in self.maps[name].items()}
        for fam in (4, 6):
            for key, value in held[E.backends_map(fam)].items():
                self._backend_value[int.from_bytes(key, "little")] = value
        self._be_ids.adopt(self._backend_value)

        def backend(b) -> Backend:
            return Backend(ipaddress.ip_address(b.address), b.port, b.protocol,
                           b.state if b.state != "quarantined" else ACTIVE)
        for r in rows:
            addr = ipaddress.ip_address(r.address)
            backends = tuple(backend(b) for b in r.backends)
            internal = None if r.internal_backends is None else tuple(
                backend(b) for b in r.internal_backends)
            f = Frontend("", "", r.type, addr, r.port, r.protocol, backends,
                         r.affinity_timeout if "affinity" in r.flags else 0,
                         "maglev" in r.flags, "local" in r.flags,
                         internal_local="internal-local" in r.flags,
                         source_ranges=tuple(ipaddress.ip_network(n) for n in r.source_ranges),
                         internal_backends=internal)
            ids = tuple(b.id for b in r.backends)
            internal_ids = None if r.internal_backends is None else \
                tuple(b.id for b in r.internal_backends)
            entries = E.frontend_entries(f, r.id, list(ids),
                                         None if internal_ids is None else list(internal_ids))
            smap = E.services_map(addr.version)
            # Keep the bytes the kernel holds (the service entry may differ in detail).
            kernel = {k: held[smap].get(k, v) for k, v in entries.items()}
            key = E.service_key(addr.version, addr, r.port, r.protocol, 0)
            uses = tuple(sorted(set(ids) | set(internal_ids or ())))
            rec = _Record(f, r.id, ids, internal_ids, uses,
                          E.source_range_entries(f, r.id) or None, kernel)
            self._index(key, rec)
            for bid in uses:
                self._refs[bid] = self._refs.get(bid, 0) + 1
            for b in r.backends + (r.internal_backends or []):
                self._backend_id[C.backend_key(backend(b))] = b.id
                self._backend_key[b.id] = C.backend_key(backend(b))
        self._fe_ids.adopt(r.rev_nat_index for r in self._fe.values())
        for fam in (4, 6):
            for key, value in held[E.services_map(fam)].items():
                if int.from_bytes(value[14:16], "little") & E.SVC_FLAGS["SVC_F_VIP"]:
                    self._vip[key] = value
        # Backends no slot names (terminating ones, or leftovers): known, unreferenced;
        # the next full apply keeps those it wants and deletes the rest.
        for bid, b in read_backends(self.maps).items():
            key = C.backend_key(Backend(ipaddress.ip_address(b.address), b.port, b.protocol))
            if key not in self._backend_id:
                self._backend_id[key] = bid
                self._backend_key[bid] = key
                self._refs[bid] = 0
        return len(rows)

    # -- applying -----------------------------------------------------------------------
    def apply(self, desired: LbState, services: Iterable[str] | None = None) -> ApplyStats:
        """Make the maps hold *desired*.  With *services*, only those services are
        touched: their frontends in *desired* replace theirs, others stay."""
        scope = None if services is None else set(services)
        start = time.perf_counter()
        writer = map_journal.Writer(self.maps, self._maglev_install, self._maglev_remove,
                                    *self._maglev_many)
        try:
            with gcpause.paused():
                plan = self._plan(desired, scope)
            steps = self._steps(plan)
            if plan.maglev_install and self._maglev_prepare is not None:
                self._maglev_prepare([(rid, ids, keys) for rid, (ids, keys)
                                      in plan.maglev_install.items()])
        except ValueError as exc:
            raise LbApplyError(f"LB programming failed, nothing was written: {exc}", exc) from exc
        plan.stats.plan_seconds = time.perf_counter() - start
        try:
            start = time.perf_counter()
            map_journal.run(steps, writer, self._journal)
            plan.stats.write_seconds = time.perf_counter() - start
        except map_journal.MapWriteError as exc:
            raise LbApplyError(f"LB programming failed and was rolled back: {exc}",
                               exc.cause) from exc.cause
        with gcpause.paused():
            self._commit(plan)
        return plan.stats

    def _plan(self, desired: LbState, scope: set[str] | None) -> _Plan:
        plan = _Plan(fe_ids=self._fe_ids.copy(), be_ids=self._be_ids.copy())
        fes = list(desired.frontends) if scope is None else \
            [f for f in desired.frontends if f.service in scope]
        keys, cols = self._keys(fes)
        want = dict(zip(keys, fes))
        if len(want) != len(fes):           # the same frontend twice: the last one counts
            fes = list(want.values())
            keys, cols = self._keys(fes)
        if scope is None:
            have = self._fe
        else:   # by index: changing one service of 100,000 must not walk them all
            have = {k: self._fe[k] for svc in scope for k in self._by_service.get(svc, ())}
        removed = [k for k in have if k not in want]
        if have:                            # new or changed, in desired order
            todo = [i for i, (k, f) in enumerate(zip(keys, fes))
                    if (rec := have.get(k)) is None or (rec.frontend is not f
                                                         and rec.frontend != f)]
            changed = [keys[i] for i in todo if keys[i] in have]
        else:
            todo, changed = list(range(len(fes))), []
        gone = [have[k] for k in chain(removed, changed)]

        for k in removed:
            plan.records[k] = None
            rec = have[k]
            # Freed at commit, not now: reused within this plan, the id's
            # new entries would be written before the old ones are deleted.
            plan.freed_fe_ids.append(rec.rev_nat_index)
            plan.maglev_remove.extend(rec.tables())
        plan.stats.frontends_removed = len(removed)
        plan.stats.frontends_changed = len(changed)
        plan.stats.frontends_added = len(todo) - len(changed)

        if len(todo) <= SMALL:
            new_entries = self._plan_new_small(plan, [fes[i] for i in todo],
                                               [keys[i] for i in todo], have)
        else:
            new_entries = self._plan_new(plan, [fes[i] for i in todo], [keys[i] for i in todo],
                                         cols, todo, have)
        self._plan_old(plan, removed, changed, have, new_entries)
        self._plan_refs(plan, gone, scope is None)
        self._plan_vips(plan, removed, changed, have)
        plan.stats.maglev_tables = len(plan.maglev_install)
        return plan

    @staticmethod
    def _keys(fes: list[Frontend]) -> tuple[list[bytes], dict[int, tuple]]:
        """Every frontend's service-entry key, and per family (positions, columns): for a
        few frontends (planned one by one), the keys alone."""
        if len(fes) <= SMALL:
            return [E.service_key(f.family, f.address, f.port, f.protocol, 0)
                    for f in fes], {}
        cols = C.frontend_columns(fes)
        if len(cols) == 1:
            return next(iter(cols.values()))[1].keys(), cols
        keys = np.empty(len(fes), object)
        for rows, c in cols.values():
            keys[rows] = c.keys()
        return keys.tolist(), cols

    def _plan_new(self, plan: _Plan, todo: list[Frontend], todo_keys: list[bytes],
                  cols: dict[int, tuple], todo_rows: list[int],
                  have: Mapping[bytes, _Record]) -> dict[bytes, dict[bytes, bytes]]:
        """Entries of new and changed frontends; returns the changed ones' new services
        entries (key -> value), to compare with what they had."""
        # Backend tuples, each distinct object once, numbered in desired order (a
        # frontend's EXT tuple, then its INT one).
        ext_t = list(map(attrgetter("backends"), todo))
        int_t = list(map(attrgetter("internal_backends"), todo))
        groups, ext_g, int_g = _distinct(ext_t, int_t)
        refs = C.BackendRefs.of(groups)
        first, inverse = refs.unique()
        ukeys = list(zip(refs.family[first].tolist(), refs.hi[first].tolist(),
                         refs.lo[first].tolist(), refs.port[first].tolist(),
                         refs.proto[first].tolist()))
        uid = [self._backend_id.get(k, 0) for k in ukeys]
        missing = [j for j, bid in enumerate(uid) if not bid]
        for j, bid in zip(missing, plan.be_ids.take(len(missing))):
            uid[j] = bid
            plan.new_backends[ukeys[j]] = bid
        uid_arr = np.array(uid, np.uint32)
        ref_ids = uid_arr[inverse] if len(inverse) else np.zeros(0, np.uint32)
        # Backend values: each distinct backend in the state its first reference gives.
        for fam in (4, 6):
            sel = first[refs.family[first] == fam]
            if not len(sel):
                continue
            vals = C.backend_values(fam, refs.hi[sel], refs.lo[sel], refs.port[sel],
                                    refs.proto[sel], refs.state[sel])
            ids = uid_arr[inverse[sel]].tolist()
            put_k, put_v, olds = [], [], []
            for bid, v in zip(ids, vals.view(f"V{vals.itemsize}").tolist()):
                old = self._backend_value.get(bid)
                if old != v:
                    put_k.append(E.u32(bid))
                    put_v.append(v)
                    olds.append(old)
                    plan.backend_values[bid] = v
            plan.put("backends", E.backends_map(fam), put_k, put_v, olds)

        # Reference counts: every backend of a group, once per scope naming the group.
        ext_a, int_a = np.array(ext_g, np.int64), np.array(int_g, np.int64)
        mult = np.bincount(ext_a, minlength=len(groups)) + \
            np.bincount(int_a[int_a >= 0], minlength=len(groups))
        plan.increments = (ref_ids, mult[refs.group].astype(np.int32))
        # Each group's selectable ids (slot order) and every id it names (a multiset: the
        # reference counts' input), one tuple for both where every backend is selectable.
        counts = refs.counts
        sel_ids = ref_ids[refs.selected]
        lens = np.bincount(refs.group, minlength=len(groups)) if len(groups) else counts
        del refs, first, inverse, ext_t, int_t      # the biggest arrays: free them early
        all_start = np.cumsum(lens) - lens
        it = iter(sel_ids.tolist())
        g_sel = [tuple(islice(it, n)) for n in counts.tolist()]
        g_all = g_sel.copy()
        same = counts == lens
        differ = np.flatnonzero(~same)
        if len(differ):
            flat_all = ref_ids.tolist()
            for g, a, n in zip(differ.tolist(), all_start[differ].tolist(),
                               lens[differ].tolist()):
                g_all[g] = tuple(flat_all[a:a + n])
            del flat_all

        # Reverse NAT indexes: changed frontends keep theirs, new ones take the next free.
        olds, new_rows, rids = _rev_nat_ids(plan, todo_keys, have)

        # Records.
        records = plan.records
        for k, f, rid, eg, ig in zip(todo_keys, todo, rids, ext_g, int_g):
            records[k] = _Record(f, rid, g_sel[eg], None if ig < 0 else g_sel[ig],
                                 g_all[eg] if ig < 0 else g_all[eg] + g_all[ig])
        # Source ranges and Maglev tables: per frontend that has (or had) them.
        extras = {j for j, rec in enumerate(olds)
                  if rec is not None and (rec.ranges or rec.frontend.maglev)}

        # Services entries and reverse NAT, per family, in bulk.
        changed_entries: dict[bytes, dict[bytes, bytes]] = {}
        is_new = np.zeros(len(todo), bool)
        is_new[new_rows] = True
        sel_start = np.cumsum(counts) - counts
        ext_ga, int_ga = ext_a, int_a
        rid_a = np.array(rids, np.uint32)
        where = np.full(sum(len(rows) for rows, _ in cols.values()), -1, np.int64)
        where[np.array(todo_rows, np.int64)] = np.arange(len(todo_rows))  # desired -> todo
        for fam, (rows, c) in cols.items():
            at = where[rows]
            fr = np.flatnonzero(at >= 0)                       # rows of c
            if not len(fr):
                continue
            js = at[fr]                                        # their todo indexes
            eg, ig = ext_ga[js], int_ga[js]
            two = ig >= 0
            ext_flags, int_flags = C.scope_flags(c.flags[fr], two)
            rid = rid_a[js]
            frontend = np.concatenate([np.flatnonzero(two), np.arange(len(js))])
            scope_groups = np.concatenate([ig[two], eg])
            scopes = C.Scopes(
                frontend=fr[frontend],
                scope=np.concatenate([np.full(two.sum(), E.SCOPE_INT, np.uint8),
                                      np.full(len(js), E.SCOPE_EXT, np.uint8)]),
                flags=np.concatenate([int_flags[two], ext_flags]),
                rev_nat=rid[frontend], counts=counts[scope_groups],
                ids=_gather(sel_ids, sel_start[scope_groups], counts[scope_groups]))
            ent = C.service_entries(c, scopes)
            owner = js[frontend]                    # scope row -> index into todo
            row_new = is_new[owner]
            master = scopes.scope == E.SCOPE_EXT     # the row's entry is what lookups find
            smap = E.services_map(fam)
            # New frontends' entries: slots and INT scope entries, then EXT entries.
            if row_new.all():           # (a first apply: the slots as built, not copied)
                slot_keys, slot_values = ent.slot_keys, ent.slot_values
            else:
                slot_new = row_new[ent.slot_row]
                slot_keys, slot_values = ent.slot_keys[slot_new], ent.slot_values[slot_new]
            plan.put("slots", smap, _packed(slot_keys), _packed(slot_values),
                     [None] * len(slot_keys))
            del slot_keys, slot_values
            for phase, mask in (("slots", row_new & ~master), ("masters", row_new & master)):
                plan.put(phase, smap, _packed(ent.keys[mask]), _packed(ent.values[mask]),
                         [None] * int(mask.sum()))
            # Changed frontends' entries, to compare with what they wrote.
            if not row_new.all():
                old_row = ~row_new
                slot_old = old_row[ent.slot_row]
                for ks, vs, rows_ in ((ent.slot_keys[slot_old], ent.slot_values[slot_old],
                                       ent.slot_row[slot_old]),
                                      (ent.keys[old_row], ent.values[old_row],
                                       np.flatnonzero(old_row))):
                    for o, k, v in zip(owner[rows_].tolist(),
                                       ks.view(f"V{ks.itemsize}").tolist(),
                                       vs.view(f"V{vs.itemsize}").tolist()):
                        changed_entries.setdefault(todo_keys[o], {})[k] = v
            del ent
            sub = np.flatnonzero(is_new[js])
            if len(sub):
                rn = C.reverse_nat_values(C.FrontendColumns(
                    fam, c.address[fr[sub]], c.port[fr[sub]], c.proto[fr[sub]],
                    c.flags[fr[sub]], c.affinity[fr[sub]]))
                plan.put("revnat", E.reverse_nat_map(fam),
                         _packed(C.u32_keys(rid[sub])), _packed(rn), [None] * len(sub))
            # ClusterIP markers: every address these frontends are on.
            vks = c.vip_keys(fr)
            cluster = (c.flags[fr] & np.uint16(E.SVC_FLAGS["SVC_F_CLUSTERIP"])) > 0
            plan.addresses.extend(zip([todo_keys[j] for j in js.tolist()], vks,
                                      cluster.tolist(), counts[eg].tolist()))
            extra = np.uint16(E.SVC_FLAGS["SVC_F_SOURCE_RANGE"] | E.SVC_FLAGS["SVC_F_MAGLEV"])
            extras.update(js[(c.flags[fr] & extra) > 0].tolist())
        for j in sorted(extras):
            self._plan_extras(plan, todo[j], records[todo_keys[j]], olds[j])
        return changed_entries

    def _plan_new_small(self, plan: _Plan, todo: list[Frontend], todo_keys: list[bytes],
                        have: Mapping[bytes, _Record]) -> dict[bytes, dict[bytes, bytes]]:
        """_plan_new for a few frontends, one at a time (harness.lb.entries): the same
        entries, ids and counts, without the fixed cost of the array operations."""
        seen: set[int] = set()
        groups: list[tuple] = []
        for f in todo:
            for t in (f.backends, f.internal_backends):
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    groups.append(t)
        C.records(todo, C.FRONTEND_REC)     # ValueError for what the maps cannot hold
        C.backend_records(groups)
        first: dict[tuple, Backend] = {}
        for b in chain.from_iterable(groups):
            first.setdefault(C.backend_key(b), b)
        ids: dict[tuple, int] = {}
        missing = []
        for k in first:
            bid = self._backend_id.get(k)
            if bid is None:
                missing.append(k)
            else:
                ids[k] = bid
        for k, bid in zip(missing, plan.be_ids.take(len(missing))):
            ids[k] = plan.new_backends[k] = bid
        puts: dict[int, tuple[list, list, list]] = {4: ([], [], []), 6: ([], [], [])}
        for k, b in first.items():
            bid, v = ids[k], E.backend_value(b)
            old = self._backend_value.get(bid)
            if old != v:
                ks, vs, os_ = puts[b.address.version]
                ks.append(E.u32(bid))
                vs.append(v)
                os_.append(old)
                plan.backend_values[bid] = v
        for fam, (ks, vs, os_) in puts.items():
            plan.put("backends", E.backends_map(fam), ks, vs, os_)

        def slot_ids(t) -> tuple[int, ...]:
            return tuple(ids[C.backend_key(b)] for b in selectable(t))

        def all_ids(t) -> tuple[int, ...]:
            return tuple(ids[C.backend_key(b)] for b in t)
        olds, new_rows, rids = _rev_nat_ids(plan, todo_keys, have)
        increments: list[int] = []
        changed_entries: dict[bytes, dict[bytes, bytes]] = {}
        for k, f, rid, old in zip(todo_keys, todo, rids, olds):
            two = f.internal_backends is not None
            ext_ids = slot_ids(f.backends)
            int_ids = slot_ids(f.internal_backends) if two else None
            uses = all_ids(f.backends) + (all_ids(f.internal_backends) if two else ())
            increments.extend(uses)
            rec = plan.records[k] = _Record(f, rid, ext_ids, int_ids, uses)
            if f.source_ranges or f.maglev or (old is not None and (
                    old.ranges or old.frontend.maglev)):
                self._plan_extras(plan, f, rec, old)
            entries = E.frontend_entries(f, rid, list(ext_ids),
                                         None if int_ids is None else list(int_ids))
            smap = E.services_map(f.family)
            if old is None:
                for phase, is_m in (("slots", False), ("masters", True)):
                    ks = [x for x in entries if _is_master(f.family, x) == is_m]
                    plan.put(phase, smap, ks, [entries[x] for x in ks], [None] * len(ks))
                plan.put("revnat", E.reverse_nat_map(f.family), [E.u32(rid)],
                         [E.reverse_nat_value(f)], [None])
            else:
                changed_entries[k] = entries
            plan.addresses.append((k, _vip_key(k), f.type == "ClusterIP", len(ext_ids)))
        plan.increments = (np.array(increments, np.int64), np.ones(len(increments), np.int64))
        return changed_entries

    def _plan_extras(self, plan: _Plan, f: Frontend, rec: _Record, old: _Record | None) -> None:
        """Source ranges and Maglev tables of one new or changed frontend."""
        new_ranges = E.source_range_entries(f, rec.rev_nat_index) if f.source_ranges else {}
        old_ranges = (old.ranges or {}) if old else {}
        if new_ranges and E.source_range_map(f.family) not in self.maps:
            raise ValueError(f"{f.service}: source ranges need a datapath with "
                             f"{E.source_range_map(f.family)}")
        rec.ranges = new_ranges or None
        if new_ranges or old_ranges:
            rmap = E.source_range_map(f.family)
            ks = [x for x in new_ranges if old_ranges.get(x) != new_ranges[x]]
            plan.put("ranges", rmap, ks, [new_ranges[x] for x in ks],
                     [old_ranges.get(x) for x in ks])
            ds = [x for x in old_ranges if x not in new_ranges]
            plan.put("del-ranges", rmap, ds, None, [old_ranges[x] for x in ds])
        if f.maglev or (old is not None and old.frontend.maglev):
            old_tables = old.tables() if old else {}
            new_tables = rec.tables()
            for table_key, table in new_tables.items():
                if old_tables.get(table_key, (None,))[0] != table[0]:
                    plan.maglev_install[table_key] = table
            plan.maglev_remove.extend(t for t in old_tables if t not in new_tables)

    def _plan_old(self, plan: _Plan, removed: list[bytes], changed: list[bytes],
                  have: Mapping[bytes, _Record], new_entries: dict[bytes, dict]) -> None:
        """Deletions of removed frontends; writes and deletions of changed ones."""
        for k in removed:
            rec = have[k]
            f = rec.frontend
            fam = f.family
            old = self._entries(rec)
            masters = [x for x in old if _is_master(fam, x)]
            others = [x for x in old if not _is_master(fam, x)]
            plan.put("del-masters", E.services_map(fam), masters, None, [old[x] for x in masters])
            plan.put("del-slots", E.services_map(fam), others, None, [old[x] for x in others])
            if rec.ranges:
                plan.put("del-ranges", E.source_range_map(fam), list(rec.ranges), None,
                         list(rec.ranges.values()))
            plan.put("del-revnat", E.reverse_nat_map(fam), [E.u32(rec.rev_nat_index)], None,
                     [E.reverse_nat_value(f)])
        for k in changed:
            rec = have[k]
            fam = rec.frontend.family
            smap = E.services_map(fam)
            old, new = self._entries(rec), new_entries.get(k, {})
            for phase, is_m in (("slots", False), ("masters", True)):
                ks = [x for x, v in new.items() if old.get(x) != v and _is_master(fam, x) == is_m]
                plan.put(phase, smap, ks, [new[x] for x in ks], [old.get(x) for x in ks])
            ds = [x for x in old if x not in new]
            plan.put("del-slots", smap, ds, None, [old[x] for x in ds])

    @staticmethod
    def _entries(rec: _Record) -> dict[bytes, bytes]:
        if rec.kernel is not None:
            return rec.kernel
        return E.frontend_entries(rec.frontend, rec.rev_nat_index, list(rec.backend_ids),
                                  None if rec.internal_ids is None else list(rec.internal_ids))

    def _plan_refs(self, plan: _Plan, gone: list[_Record], full: bool) -> None:
        """Backend reference counts after the plan; backends nobody names any more go."""
        inc, weights = plan.increments
        dec = np.fromiter(chain.from_iterable(r.uses for r in gone), np.int64)
        ids = np.concatenate([inc, dec])
        if len(ids) <= 4 * SMALL:               # a few: without the array operations
            delta: dict[int, int] = {}
            for bid, w in zip(inc.tolist(), weights.tolist()):
                delta[bid] = delta.get(bid, 0) + w
            for bid in dec.tolist():
                delta[bid] = delta.get(bid, 0) - 1
            for bid, d in delta.items():
                plan.refs[bid] = self._refs.get(bid, 0) + d
        else:   # ids are allocated densely from 1: count by id, no sort
            size = int(ids.max()) + 1
            delta = np.bincount(inc, weights=weights, minlength=size).astype(np.int64) - \
                np.bincount(dec, minlength=size)
            touched = np.flatnonzero(np.bincount(ids, minlength=size))
            for bid, d in zip(touched.tolist(), delta[touched].tolist()):
                plan.refs[bid] = self._refs.get(bid, 0) + d
        dead = [bid for bid, n in plan.refs.items() if n <= 0]
        if full:    # unreferenced backends (adopted by restore()) go unless this apply wants them
            dead += [bid for bid, n in self._refs.items() if n == 0 and bid not in plan.refs]
        by_family: dict[int, list[int]] = {4: [], 6: []}
        for bid in dead:
            value = plan.backend_values.get(bid, self._backend_value.get(bid))
            if value is None:
                continue
            by_family[4 if len(value) == C.BACKEND[4].itemsize else 6].append(bid)
            plan.backend_values[bid] = None
            plan.freed_be_ids.append(bid)
        for fam, bids in by_family.items():
            plan.put("del-backends", E.backends_map(fam), [E.u32(b) for b in bids], None,
                     [self._backend_value[b] for b in bids])

    def _plan_vips(self, plan: _Plan, removed: list[bytes], changed: list[bytes],
                   have: Mapping[bytes, _Record]) -> None:
        """Recompute the address-only entries of the addresses this plan touches."""
        members: dict[bytes, int] = {}       # address -> selectable backends of its ClusterIPs
        touched: set[bytes] = set()
        for k in chain(removed, changed):
            touched.add(_vip_key(k))
        for _, vk, cluster, n in plan.addresses:
            touched.add(vk)
            if cluster:
                members[vk] = members.get(vk, 0) + n
        for vk in touched:
            for k in self._clusterips.get(vk, ()):
                if k not in plan.records:
                    members[vk] = members.get(vk, 0) + len(self._fe[k].backend_ids)
        present = list(members)
        values = C.vip_values(np.array([members[vk] for vk in present], np.int64))
        puts: dict[int, tuple[list, list, list]] = {4: ([], [], []), 6: ([], [], [])}
        for vk, v in zip(present, values):
            old = self._vip.get(vk)
            if old != v:
                ks, vs, os_ = puts[_family_of_key(vk)]
                ks.append(vk)
                vs.append(v)
                os_.append(old)
                plan.vips[vk] = v
        dels: dict[int, tuple[list, list]] = {4: ([], []), 6: ([], [])}
        for vk in touched:
            if vk not in members and vk in self._vip:
                ks, os_ = dels[_family_of_key(vk)]
                ks.append(vk)
                os_.append(self._vip[vk])
                plan.vips[vk] = None
        for fam in (4, 6):
            plan.put("vips", E.services_map(fam), *puts[fam])
            plan.put("del-masters", E.services_map(fam), dels[fam][0], None, dels[fam][1])

    # -- execution ---------------------------------------------------------------------------
    def _steps(self, plan: _Plan) -> list[tuple]:
        """The plan as map_journal steps, in phase order, each with what it replaces."""
        if plan.maglev_install and self._maglev_install is None:
            raise ValueError("a Maglev service needs a datapath with Maglev tables")
        tables: dict[int, tuple] | None = None

        def old_table(table_key: int) -> tuple | None:
            nonlocal tables
            if tables is None:
                tables = {k: t for r in self._fe.values() for k, t in r.tables().items()}
            return tables.get(table_key)

        steps: list[tuple] = []
        for phase in _PHASES:
            if phase == "slots" and plan.maglev_install:
                steps.append(("maglev-many", [(rid, list(ids), list(keys), old_table(rid))
                                              for rid, (ids, keys)
                                              in plan.maglev_install.items()]))
            if phase == "del-backends" and self._maglev_remove is not None \
                    and plan.maglev_remove:
                steps.append(("maglev-del-many", [(rid, old_table(rid))
                                                  for rid in plan.maglev_remove]))
            for (ph, mapname), chunks in plan.phases.items():
                if ph != phase:
                    continue
                for keys, values, olds in _merged(chunks):
                    if phase.startswith("del-"):
                        steps.append(("del", mapname, keys, olds))
                        plan.stats.deletes += len(keys)
                    else:
                        steps.append(("put", mapname, keys, values, olds))
                        plan.stats.writes += len(keys)
        return steps

    def _commit(self, plan: _Plan) -> None:
        for key in [k for k in plan.records if k in self._fe]:
            self._unindex(key, self._fe[key])
        added = {k: r for k, r in plan.records.items() if r is not None}
        self._fe.update(added)
        by_service = self._by_service
        for key, service in zip(added, map(attrgetter("frontend.service"), added.values())):
            keys = by_service.get(service)
            if keys is None:
                by_service[service] = {key}
            else:
                keys.add(key)
        for key, vk, cluster, _ in plan.addresses:
            if cluster:
                self._clusterips.setdefault(vk, set()).add(key)
        for vk, v in plan.vips.items():
            if v is None:
                self._vip.pop(vk, None)
            else:
                self._vip[vk] = v
        self._backend_id.update(plan.new_backends)
        self._backend_key.update((bid, k) for k, bid in plan.new_backends.items())
        for bid, v in plan.backend_values.items():
            if v is None:
                self._backend_value.pop(bid, None)
            else:
                self._backend_value[bid] = v
        self._refs.update(plan.refs)
        for bid in plan.freed_be_ids:
            del self._backend_id[self._backend_key.pop(bid)]
            self._refs.pop(bid, None)
        self._fe_ids, self._be_ids = plan.fe_ids, plan.be_ids
        for rid in plan.freed_fe_ids:
            self._fe_ids.give(rid)
        for bid in plan.freed_be_ids:
            self._be_ids.give(bid)

    def _index(self, key: bytes, rec: _Record) -> None:
        self._fe[key] = rec
        self._by_service.setdefault(rec.frontend.service, set()).add(key)
        if rec.frontend.type == "ClusterIP":
            self._clusterips.setdefault(_vip_key(key), set()).add(key)

    def _unindex(self, key: bytes, rec: _Record) -> None:
        del self._fe[key]
        for index, name in ((self._by_service, rec.frontend.service),
                            (self._clusterips, _vip_key(key))):
            keys = index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[name]


def _rev_nat_ids(plan: _Plan, keys: list[bytes], have: Mapping[bytes, _Record]
                 ) -> tuple[list, list[int], list[int]]:
    """(each frontend's record, the rows of new ones, each one's reverse NAT index):
    changed frontends keep theirs, new ones take the next free, in order."""
    if not have:                # a first apply: every frontend is new
        return [None] * len(keys), list(range(len(keys))), plan.fe_ids.take(len(keys))
    olds = [have.get(k) for k in keys]
    new_rows = [j for j, rec in enumerate(olds) if rec is None]
    rids = [0 if rec is None else rec.rev_nat_index for rec in olds]
    for j, rid in zip(new_rows, plan.fe_ids.take(len(new_rows))):
        rids[j] = rid
    return olds, new_rows, rids


def _merged(chunks: list[_Chunk]) -> list[_Chunk]:
    """*chunks* of one phase and map as one batch."""
    if len(chunks) == 1:
        return chunks
    if all(isinstance(k, Packed) and (v is None or isinstance(v, Packed)) for k, v, _ in chunks):
        keys = Packed(b"".join(k.data for k, _, _ in chunks), chunks[0][0].size)
        values = None if chunks[0][1] is None else \
            Packed(b"".join(v.data for _, v, _ in chunks), chunks[0][1].size)
    else:
        keys = [x for k, _, _ in chunks for x in k]
        values = None if chunks[0][1] is None else [x for _, v, _ in chunks for x in v]
    return [(keys, values, [o for _, _, os_ in chunks for o in os_])]


def _distinct(ext: list[tuple], internal: list[tuple | None]
              ) -> tuple[list[tuple], list[int], list[int]]:
    """(the distinct objects of *ext* and *internal* (None left out), in the order
    ext[0], internal[0], ext[1], ...; each ext's index among them; each internal's, -1
    for None): by object identity, with the loops in C (an id names one object here:
    they are all alive)."""
    if any(map(is_not, internal, repeat(None))):
        seq = [t for pair in zip(ext, internal) for t in pair if t is not None]
        int_g = None
    else:
        seq, int_g = ext, [-1] * len(ext)
    objects = dict(zip(map(id, seq), seq))              # first appearance order
    number = dict(zip(objects, range(len(objects))))
    ext_g = list(map(number.__getitem__, map(id, ext)))
    if int_g is None:
        int_g = [-1 if u is None else number[id(u)] for u in internal]
    return list(objects.values()), ext_g, int_g


def _gather(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """values[starts[i]:starts[i]+counts[i]] for every i, concatenated."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, values.dtype)
    begin = np.cumsum(counts) - counts
    idx = np.arange(total) - np.repeat(begin, counts) + np.repeat(starts.astype(np.int64), counts)
    return values[idx]


def _vip_key(key: bytes) -> bytes:
    """The address-only key of a frontend's service-entry key (port and protocol 0)."""
    if len(key) == C.KEY[4].itemsize:
        return key[:4] + bytes(8)
    return key[:16] + bytes(8)


def _is_master(family: int, key: bytes) -> bool:
    """Is *key* a frontend's EXT service entry (slot 0), the one every lookup finds
    first?  Slots and the INT scope's entry are written before it, deleted after."""
    return E.key_slot(family, key) == 0 and E.key_scope(family, key) == E.SCOPE_EXT
