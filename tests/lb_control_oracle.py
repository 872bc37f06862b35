"""The per-object LB planner chainbench used before bulk planning: a test oracle.

tests/test_lb_bulk.py programs the same sequences of desired states through it
and through harness.lb.control.LbControl and compares every map byte for byte,
the ids assigned and the write counts.  What follows is its original docstring.

Programming the load balancer maps: diff, ordered batch writes, rollback.

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

Cost is proportional to what changes: changing one service of 100,000
touches that service's entries only.
"""
from __future__ import annotations

import time
import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from harness.errors import ChainbenchError
from harness import journal as map_journal
from harness.bpf import Map
from harness.lb import entries as E
from harness.lb.listing import read_backends, read_services
from harness.lb.model import ACTIVE, Backend, Frontend, LbState

#: (rev_nat_index, backend ids, backend keys): the keys name backends in the
#: Maglev permutation, so a table does not depend on how ids were assigned.
MaglevInstall = Callable[[int, list[int], list[tuple]], None]
MaglevRemove = Callable[[int], None]


class LbApplyError(ChainbenchError, RuntimeError):
    """Programming failed; every change of the failed call was rolled back."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


@dataclass
class _FrontendRecord:
    frontend: Frontend
    rev_nat_index: int
    backend_ids: list[int]              # selectable backends, in slot order
    entries: dict[bytes, bytes]         # its services-map entries (both scopes)
    internal_ids: list[int] | None = None   # the INT scope's, for a two-scope frontend
    ranges: dict[bytes, bytes] = field(default_factory=dict)    # its source-range entries

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
    #: Seconds spent in the map writes and deletes (syscalls), out of the whole apply.
    write_seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.frontends_added} frontends added, {self.frontends_changed} changed, "
                f"{self.frontends_removed} removed; {self.writes} map writes, "
                f"{self.deletes} deletes, {self.maglev_tables} Maglev tables")


class _Ids:
    """Smallest-free-first id allocator (ids start at 1)."""

    def __init__(self):
        self.used: set[int] = set()
        self._next = 1

    def copy(self) -> "_Ids":
        c = _Ids()
        c.used, c._next = set(self.used), self._next
        return c

    def take(self) -> int:
        while self._next in self.used:
            self._next += 1
        self.used.add(self._next)
        return self._next

    def give(self, value: int) -> None:
        self.used.discard(value)
        self._next = min(self._next, value)


@dataclass
class _Plan:
    # (phase, map name) -> {key: value or None (delete)}, executed in insertion order
    phases: dict[tuple[str, str], dict[bytes, bytes | None]] = field(default_factory=dict)
    maglev_install: dict[int, tuple[list[int], list[tuple]]] = field(default_factory=dict)
    maglev_remove: list[int] = field(default_factory=list)
    records: dict[tuple, _FrontendRecord | None] = field(default_factory=dict)
    backend_ids: dict[tuple, int] = field(default_factory=dict)    # new or released (-id)
    refs: dict[int, int] = field(default_factory=dict)
    fe_ids: _Ids | None = None
    be_ids: _Ids | None = None
    freed_fe_ids: list[int] = field(default_factory=list)
    freed_be_ids: list[int] = field(default_factory=list)
    stats: ApplyStats = field(default_factory=ApplyStats)

    def put(self, phase: str, mapname: str, key: bytes, value: bytes | None) -> None:
        self.phases.setdefault((phase, mapname), {})[key] = value


# Phases in execution order (see the module docstring).
_PHASES = ("backends", "revnat", "ranges", "slots", "masters", "vips",
           "del-masters", "del-slots", "del-ranges", "del-revnat", "del-backends")


class LbControl:
    """The LB maps of one datapath and what was last programmed into them."""

    def __init__(self, maps: Mapping[str, Map], maglev_install: MaglevInstall | None = None,
                 maglev_remove: MaglevRemove | None = None,
                 journal: map_journal.Journal | None = None):
        missing = [m for f in (4, 6) for m in (E.services_map(f), E.backends_map(f),
                                               E.reverse_nat_map(f)) if m not in maps]
        if missing:
            raise ValueError(f"not an LB datapath: maps {', '.join(missing)} missing")
        self.maps = maps
        self._maglev_install = maglev_install
        self._maglev_remove = maglev_remove
        self._journal = journal
        self._fe: dict[tuple, _FrontendRecord] = {}
        self._by_addr: dict[object, set[tuple]] = {}        # address -> frontend keys
        self._by_service: dict[str, set[tuple]] = {}        # service -> frontend keys
        self._fe_ids, self._be_ids = _Ids(), _Ids()
        self._backend_id: dict[tuple, int] = {}             # backend key -> id
        self._refs: dict[int, int] = {}                     # backend id -> frontends using it
        self._kernel: dict[tuple[str, bytes], bytes] = {}   # (map, key) -> value we wrote

    # -- queries ----------------------------------------------------------------------
    @property
    def state(self) -> LbState:
        return LbState(tuple(r.frontend for r in self._fe.values()))

    def frontend_id(self, frontend_key: tuple) -> int:
        return self._fe[frontend_key].rev_nat_index

    def backend_id(self, backend_key: tuple) -> int:
        return self._backend_id[backend_key]

    def records(self) -> list[tuple[Frontend, int, list[int]]]:
        """(frontend, rev_nat_index, slot backend ids) of everything programmed."""
        return [(r.frontend, r.rev_nat_index, list(r.backend_ids)) for r in self._fe.values()]

    def entry_count(self) -> dict[str, int]:
        """Entries written per map."""
        counts: dict[str, int] = {}
        for name, _ in self._kernel:
            counts[name] = counts.get(name, 0) + 1
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
        for name in (E.services_map(4), E.services_map(6), E.backends_map(4),
                     E.backends_map(6), E.reverse_nat_map(4), E.reverse_nat_map(6),
                     E.source_range_map(4), E.source_range_map(6)):
            if name not in self.maps:
                continue
            for k, v in self.maps[name].items():
                key = bytes(k) if not isinstance(k, int) else E.u32(k)
                self._kernel[(name, key)] = bytes(v)
        for bkey_bytes in [k for (n, k) in self._kernel if "_backends" in n]:
            self._be_ids.used.add(int.from_bytes(bkey_bytes, "little"))
        for r in rows:
            addr = ipaddress.ip_address(r.address)
            backends = tuple(Backend(ipaddress.ip_address(b.address), b.port, b.protocol,
                                     b.state if b.state != "quarantined" else ACTIVE)
                             for b in r.backends)
            internal = None if r.internal_backends is None else tuple(
                Backend(ipaddress.ip_address(b.address), b.port, b.protocol,
                        b.state if b.state != "quarantined" else ACTIVE)
                for b in r.internal_backends)
            f = Frontend("", "", r.type, addr, r.port, r.protocol, backends,
                         r.affinity_timeout if "affinity" in r.flags else 0,
                         "maglev" in r.flags, "local" in r.flags,
                         internal_local="internal-local" in r.flags,
                         source_ranges=tuple(ipaddress.ip_network(n) for n in r.source_ranges),
                         internal_backends=internal)
            ids = [b.id for b in r.backends]
            internal_ids = None if r.internal_backends is None else \
                [b.id for b in r.internal_backends]
            rid = r.id
            entries = E.frontend_entries(f, rid, ids, internal_ids)
            # Keep the bytes the kernel holds (the service entry may differ in detail).
            smap = E.services_map(addr.version)
            entries = {k: self._kernel.get((smap, k), v) for k, v in entries.items()}
            self._fe[f.key] = _FrontendRecord(f, rid, ids, entries, internal_ids,
                                              E.source_range_entries(f, rid))
            self._by_addr.setdefault(addr, set()).add(f.key)
            self._by_service.setdefault(f.service, set()).add(f.key)
            self._fe_ids.used.add(rid)
            for bid in {b.id for b in r.backends + (r.internal_backends or [])}:
                self._refs[bid] = self._refs.get(bid, 0) + 1
            for b in r.backends + (r.internal_backends or []):
                self._backend_id[(ipaddress.ip_address(b.address), b.port, b.protocol)] = b.id
        # Backends no slot names (terminating ones, or leftovers): known, unreferenced;
        # the next full apply keeps those it wants and deletes the rest.
        for bid, b in read_backends(self.maps).items():
            key = (ipaddress.ip_address(b.address), b.port, b.protocol)
            if key not in self._backend_id:
                self._backend_id[key] = bid
                self._refs[bid] = 0
        return len(rows)

    # -- applying -----------------------------------------------------------------------
    def apply(self, desired: LbState, services: Iterable[str] | None = None) -> ApplyStats:
        """Make the maps hold *desired*.  With *services*, only those services are
        touched: their frontends in *desired* replace theirs, others stay."""
        scope = None if services is None else set(services)
        plan = self._plan(desired, scope)
        writer = map_journal.Writer(self.maps, self._maglev_install, self._maglev_remove)
        try:
            steps = self._steps(plan)
        except ValueError as exc:
            raise LbApplyError(f"LB programming failed, nothing was written: {exc}", exc) from exc
        try:
            start = time.perf_counter()
            map_journal.run(steps, writer, self._journal)
            plan.stats.write_seconds = time.perf_counter() - start
        except map_journal.MapWriteError as exc:
            raise LbApplyError(f"LB programming failed and was rolled back: {exc}",
                               exc.cause) from exc.cause
        self._commit(plan)
        return plan.stats

    def _plan(self, desired: LbState, scope: set[str] | None) -> _Plan:
        plan = _Plan(fe_ids=self._fe_ids.copy(), be_ids=self._be_ids.copy())
        want = {f.key: f for f in desired.frontends if scope is None or f.service in scope}
        if scope is None:
            have = dict(self._fe)
        else:       # by index: changing one service of 100,000 must not walk them all
            have = {k: self._fe[k] for svc in scope for k in self._by_service.get(svc, ())}
        ids = dict(self._backend_id)
        # Unreferenced backends (adopted by restore()) go unless this apply wants them.
        refs: dict[int, int] = {bid: 0 for bid, n in self._refs.items() if n == 0} \
            if scope is None else {}

        def ref(frontend: Frontend, delta: int) -> None:
            for b in _uses(frontend):
                bid = ids[b.key]
                refs[bid] = refs.get(bid, self._refs.get(bid, 0)) + delta

        for key, rec in have.items():
            new = want.get(key)
            if new == rec.frontend:
                continue
            ref(rec.frontend, -1)
            if new is None:
                f = rec.frontend
                for k in rec.entries:
                    plan.put("del-masters" if _is_master(f.family, k) else "del-slots",
                             E.services_map(f.family), k, None)
                for k in rec.ranges:
                    plan.put("del-ranges", E.source_range_map(f.family), k, None)
                plan.put("del-revnat", E.reverse_nat_map(f.family), E.u32(rec.rev_nat_index), None)
                plan.maglev_remove.extend(rec.tables())
                plan.records[key] = None
                # Freed at commit, not now: reused within this plan, the id's
                # new entries would be written before the old ones are deleted.
                plan.freed_fe_ids.append(rec.rev_nat_index)
                plan.stats.frontends_removed += 1

        checked: set[tuple[int, str]] = set()
        for key, f in want.items():
            old = have.get(key)
            if old is not None and old.frontend == f:
                continue
            for b in _uses(f):
                bid = ids.get(b.key)
                if bid is None:
                    bid = ids[b.key] = plan.be_ids.take()
                    plan.backend_ids[b.key] = bid
                if (bid, b.state) in checked:       # shared by many frontends: once
                    continue
                checked.add((bid, b.state))
                bmap = E.backends_map(b.address.version)
                value = E.backend_value(b)
                if self._kernel.get((bmap, E.u32(bid))) != value:
                    plan.put("backends", bmap, E.u32(bid), value)
            ref(f, +1)
            if old is None:
                rid = plan.fe_ids.take()
                plan.put("revnat", E.reverse_nat_map(f.family), E.u32(rid), E.reverse_nat_value(f))
                plan.stats.frontends_added += 1
            else:
                rid = old.rev_nat_index
                plan.stats.frontends_changed += 1
            slot_ids = [ids[b.key] for b in f.selectable()]
            internal_ids = [ids[b.key] for b in f.selectable(internal=True)] \
                if f.two_scopes else None
            new_entries = E.frontend_entries(f, rid, slot_ids, internal_ids)
            old_entries = old.entries if old else {}
            smap = E.services_map(f.family)
            for k, v in new_entries.items():
                if old_entries.get(k) != v:
                    plan.put("masters" if _is_master(f.family, k) else "slots", smap, k, v)
            for k in old_entries:
                if k not in new_entries:
                    plan.put("del-slots", smap, k, None)
            new_ranges = E.source_range_entries(f, rid)
            old_ranges = old.ranges if old else {}
            if new_ranges and E.source_range_map(f.family) not in self.maps:
                raise ValueError(f"{f.service}: source ranges need a datapath with "
                                 f"{E.source_range_map(f.family)}")
            for k, v in new_ranges.items():
                if old_ranges.get(k) != v:
                    plan.put("ranges", E.source_range_map(f.family), k, v)
            for k in old_ranges:
                if k not in new_ranges:
                    plan.put("del-ranges", E.source_range_map(f.family), k, None)
            rec = _FrontendRecord(f, rid, slot_ids, new_entries, internal_ids, new_ranges)
            old_tables = old.tables() if old else {}
            for table_key, table in rec.tables().items():
                if old_tables.get(table_key, (None,))[0] != table[0]:
                    plan.maglev_install[table_key] = table
            plan.maglev_remove.extend(t for t in old_tables if t not in rec.tables())
            plan.records[key] = rec

        # Backends whose last user went away in this plan.
        by_id = {bid: bkey for bkey, bid in ids.items()}
        for bid, count in refs.items():
            if count <= 0:
                bkey = by_id[bid]
                plan.put("del-backends", E.backends_map(bkey[0].version), E.u32(bid), None)
                plan.backend_ids[bkey] = -bid
                plan.freed_be_ids.append(bid)
        plan.refs = refs
        self._plan_vips(plan)
        plan.stats.maglev_tables = len(plan.maglev_install)
        return plan

    def _plan_vips(self, plan: _Plan) -> None:
        """Recompute the address-only entries of the ClusterIPs this plan touches."""
        touched: dict[object, set[tuple]] = {}
        for key in plan.records:
            addr = key[0]
            if addr not in touched:
                touched[addr] = set(self._by_addr.get(addr, ()))
            if plan.records[key] is None:
                touched[addr].discard(key)
            else:
                touched[addr].add(key)
        for addr, keys in touched.items():
            recs = [plan.records[k] if k in plan.records else self._fe[k] for k in keys]
            cluster = [r for r in recs if r.frontend.type == "ClusterIP"]
            k, v = E.vip_entry(addr.version, addr, sum(len(r.backend_ids) for r in cluster))
            smap = E.services_map(addr.version)
            if cluster:
                if self._kernel.get((smap, k)) != v:
                    plan.put("vips", smap, k, v)
            elif (smap, k) in self._kernel:
                plan.put("del-masters", smap, k, None)

    # -- execution ---------------------------------------------------------------------------
    def _steps(self, plan: _Plan) -> list[tuple]:
        """The plan as map_journal steps, in phase order, each with what it replaces
        (the kernel's values as _kernel holds them: it changes only at commit)."""
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
            if phase == "slots":
                for rid, (ids, keys) in plan.maglev_install.items():
                    steps.append(("maglev", rid, list(ids), list(keys), old_table(rid)))
            if phase == "del-backends" and self._maglev_remove is not None:
                for rid in plan.maglev_remove:
                    steps.append(("maglev-del", rid, old_table(rid)))
            for (ph, mapname), changes in plan.phases.items():
                if ph != phase or not changes:
                    continue
                keys = list(changes)
                olds = [self._kernel.get((mapname, k)) for k in keys]
                if phase.startswith("del-"):
                    steps.append(("del", mapname, keys, olds))
                    plan.stats.deletes += len(keys)
                else:
                    steps.append(("put", mapname, keys, [changes[k] for k in keys], olds))
                    plan.stats.writes += len(keys)
        return steps

    def _commit(self, plan: _Plan) -> None:
        for (_, mapname), changes in plan.phases.items():
            for k, v in changes.items():
                if v is None:
                    self._kernel.pop((mapname, k), None)
                else:
                    self._kernel[(mapname, k)] = v
        for key, rec in plan.records.items():
            old = self._fe.get(key)
            if old is not None:
                self._unindex(old.frontend.service, key)
            addr_keys = self._by_addr.setdefault(key[0], set())
            if rec is None:
                self._fe.pop(key, None)
                addr_keys.discard(key)
            else:
                self._fe[key] = rec
                addr_keys.add(key)
                self._by_service.setdefault(rec.frontend.service, set()).add(key)
            if not addr_keys:
                del self._by_addr[key[0]]
        for bkey, bid in plan.backend_ids.items():
            if bid < 0:
                self._backend_id.pop(bkey, None)
                self._refs.pop(-bid, None)
            else:
                self._backend_id[bkey] = bid
        for bid, count in plan.refs.items():
            if count > 0:
                self._refs[bid] = count
        self._fe_ids, self._be_ids = plan.fe_ids, plan.be_ids
        for rid in plan.freed_fe_ids:
            self._fe_ids.give(rid)
        for bid in plan.freed_be_ids:
            self._be_ids.give(bid)


    def _unindex(self, service: str, key: tuple) -> None:
        keys = self._by_service.get(service)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_service[service]


def _is_master(family: int, key: bytes) -> bool:
    """Is *key* a frontend's EXT service entry (slot 0), the one every lookup finds
    first?  Slots and the INT scope's entry are written before it, deleted after."""
    return E.key_slot(family, key) == 0 and E.key_scope(family, key) == E.SCOPE_EXT


def _uses(f: Frontend) -> tuple[Backend, ...]:
    """Every backend *f*'s entries name, in either scope, each once."""
    if f.internal_backends is None:
        return f.backends
    return tuple({b.key: b for b in f.backends + f.internal_backends}.values())
