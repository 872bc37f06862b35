"""Bulk LB planning (harness.lb.control with harness.lb.columns) against the
per-object planner it replaced (tests/lb_control_oracle.py).

Seeded random sequences of desired states (both families, every frontend type,
two scopes, source ranges, affinity, Maglev, backends in every state, shared
between services) go through both, each on its own loaded lxc object: full
applies, applies scoped to some services (given the whole desired state or only
those services' frontends), removals, and a restore() into fresh controls
midway.  After every step the two must agree on every byte of every LB map,
the reverse-NAT and backend ids, the write and delete counts, the frontends
added, changed and removed, and the Maglev tables installed and removed.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from harness.lb import columns as C
from harness.lb import entries as E
from harness.lb import control as control_module
from harness.lb.control import LbControl
from harness.lb.model import (ACTIVE, MAINTENANCE, TERMINATING, Backend, Backends, Frontend,
                              LbState)
from harness.node import datapath

from . import lb_control_oracle as oracle

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # and beside the fault suite: it leaves nothing behind

MAPS = [m for fam in (4, 6) for m in (E.services_map(fam), E.backends_map(fam),
                                      E.reverse_nat_map(fam), E.source_range_map(fam))]
TYPES = ("ClusterIP", "NodePort", "ExternalIP", "LoadBalancer", "HostPort")


def contents(coll) -> dict[str, dict[bytes, bytes]]:
    out = {}
    for name in MAPS:
        m = coll.maps[name]
        out[name] = {(bytes(k) if not isinstance(k, int) else E.u32(k)): bytes(v)
                     for k, v in m.items()}
    return out


def maglev_tables(coll) -> dict[int, list[int]]:
    """Every installed Maglev table's contents, by its key."""
    from .test_maglev_bulk import installed
    return {int(k): installed(coll, int(k)) for k, _ in coll.maps["cb_lb_maglev"].items()}


class Recorder:
    """Maglev install/remove callbacks that record what they were asked."""

    def __init__(self, coll):
        from harness.lb import maglev, maglev_bulk
        self.calls: list[tuple] = []
        self.coll, self.maglev = coll, maglev
        self.tables = maglev_bulk.PreparedTables(coll)

    def install(self, rid, ids, keys):
        self.calls.append(("install", rid, list(ids), list(keys)))
        self.tables.install(rid, ids, keys)

    def remove(self, rid):
        self.calls.append(("remove", rid))
        self.maglev.remove_table(self.coll, rid)


def control(cls, coll) -> tuple[object, Recorder]:
    """*cls* over *coll*'s maps; LbControl prepares its Maglev tables in bulk."""
    rec = Recorder(coll)
    extra = {"maglev_prepare": rec.tables.prepare} if cls is LbControl else {}
    return cls(coll.maps, maglev_install=rec.install, maglev_remove=rec.remove, **extra), rec


class World:
    """Random services over a shared pool of backends."""

    def __init__(self, rnd: random.Random, v6_share: float = 0.3, sets: float = 0.5):
        self.rnd = rnd
        self.v6_share = v6_share
        self.sets = sets        # the share of backend tuples made as model.Backends sets
        self.pool = {4: [ipaddress.ip_address(f"198.18.1.{i}") for i in range(10, 40)],
                     6: [ipaddress.ip_address(f"2001:db8:1:1::{i:x}") for i in range(10, 40)]}
        self.states: dict = {}

    def backends(self, fam: int, port: int, proto: str) -> tuple[Backend, ...]:
        chosen = self.rnd.sample(self.pool[fam], self.rnd.randint(0, 6))
        out = []
        for a in chosen:
            state = self.states.setdefault((a, port, proto), self.rnd.choice(
                [ACTIVE, ACTIVE, ACTIVE, TERMINATING, MAINTENANCE]))
            out.append(Backend(a, port, proto, state, self.rnd.choice(["cb-node0", "cb-node1"])))
        ordered = sorted(out) if self.rnd.random() < 0.8 else out
        # harness.lb.desired's sets carry their joined records; anyone else's are tuples.
        return Backends(ordered) if self.rnd.random() < self.sets else tuple(ordered)

    def service(self, i: int) -> list[Frontend]:
        rnd = self.rnd
        fam = 6 if rnd.random() < self.v6_share else 4
        proto = rnd.choice(["TCP", "TCP", "UDP"])
        port = rnd.choice([80, 443, 53, 8080])
        backends = self.backends(fam, rnd.choice([8080, 9090]), proto)
        kind = rnd.choice(TYPES)
        addr = ipaddress.ip_address(f"198.19.{i // 200}.{i % 200 + 1}" if fam == 4
                                    else f"2001:db8:ff::{i + 1:x}")
        common = dict(affinity_timeout=rnd.choice([0, 0, 30]), maglev=rnd.random() < 0.15,
                      internal_local=rnd.random() < 0.2)
        out = [Frontend(f"ns/s{i}", "p", "ClusterIP", addr, port, proto, backends, **common)]
        if kind != "ClusterIP":
            ext = ipaddress.ip_address(f"203.0.113.{i % 250 + 1}" if fam == 4
                                       else f"2001:db8:ee::{i + 1:x}")
            local = rnd.random() < 0.4
            chosen = tuple(b for b in backends if b.node == "cb-node0") if local else backends
            internal = backends if chosen != backends else None
            ranges = ()
            if kind == "LoadBalancer" and rnd.random() < 0.5:
                ranges = (ipaddress.ip_network("203.0.113.0/28" if fam == 4
                                               else "2001:db8:aa::/48"),)
            out.append(Frontend(f"ns/s{i}", "p", kind, ext, 30000 + i, proto, chosen,
                                local_scope=local, internal_backends=internal,
                                source_ranges=ranges, **common))
        return out

    def state(self, n: int) -> dict[int, list[Frontend]]:
        return {i: self.service(i) for i in range(n)}


def flat(services: dict[int, list[Frontend]]) -> LbState:
    return LbState(tuple(f for i in sorted(services) for f in services[i]))


def check_same(new, old, coll_new, coll_old, rec_new, rec_old, got_new, got_old, state):
    for field in ("writes", "deletes", "frontends_added", "frontends_changed",
                  "frontends_removed", "maglev_tables"):
        assert getattr(got_new, field) == getattr(got_old, field), field
    assert contents(coll_new) == contents(coll_old)
    assert rec_new.calls == rec_old.calls
    for f in state.frontends:
        assert new.frontend_id(f.key) == old.frontend_id(f.key)
        for b in f.backends + (f.internal_backends or ()):
            assert new.backend_id(b.key) == old.backend_id(b.key)
    assert new.entry_count() == old.entry_count()
    assert maglev_tables(coll_new) == maglev_tables(coll_old)
    assert sorted(new.records(), key=repr) == sorted(old.records(), key=repr)


@pytest.mark.parametrize("small", [0, 10**9], ids=["bulk", "one-by-one"])
@pytest.mark.parametrize("seed", range(16))
def test_bulk_planner_writes_what_the_per_object_planner_wrote(load, seed, small, monkeypatch):
    """Both of LbControl's ways to plan new and changed frontends (in bulk, and one by
    one for a few) against the oracle.  Seeds 10-12 are IPv4 only (columns.BackendRefs
    numbers IPv4-only backends by one sort of one 64-bit identity); seeds 13-15 make
    every backend tuple a model.Backends set (their slot order is not sorted again)."""
    monkeypatch.setattr(control_module, "SMALL", small)
    rnd = random.Random(seed)
    world = World(rnd, v6_share=0.0 if 10 <= seed < 13 else 0.3,
                  sets=1.0 if seed >= 13 else 0.5)
    colls = [load("lxc", rodata=datapath.rodata_for("lxc")) for _ in range(2)]
    new, rec_new = control(LbControl, colls[0])
    old, rec_old = control(oracle.LbControl, colls[1])
    services = world.state(rnd.randint(5, 40))

    def step(state, scope=None):
        got_new = new.apply(state, services=scope)
        got_old = old.apply(state, services=scope)
        check_same(new, old, colls[0], colls[1], rec_new, rec_old, got_new, got_old,
                   flat(services))

    step(flat(services))
    step(flat(services))                                   # idempotent: nothing written
    for round_ in range(6):
        kind = rnd.choice(["change", "remove", "add", "scoped", "scoped-only", "restore"])
        if kind == "restore":
            new, rec_new = control(LbControl, colls[0])
            old, rec_old = control(oracle.LbControl, colls[1])
            assert new.restore() == old.restore()
            step(flat(services))
            continue
        picked = rnd.sample(sorted(services), max(1, len(services) // 4))
        if kind == "remove":
            for i in picked:
                del services[i]
            step(flat(services))
        elif kind == "add":
            for j in range(3):
                i = max(services, default=0) + 1 + j
                services[i] = world.service(i)
            step(flat(services))
        else:
            for i in picked:
                if rnd.random() < 0.5:      # new backends
                    services[i] = [dataclasses.replace(f, backends=world.backends(
                        f.family, 8080, f.protocol), internal_backends=None)
                        for f in services[i]]
                else:                       # same values, new objects
                    services[i] = [dataclasses.replace(f) for f in services[i]]
            scope = [f"ns/s{i}" for i in picked]
            if kind == "change":
                step(flat(services))
            elif kind == "scoped":
                step(flat(services), scope)
            else:
                step(LbState(tuple(f for i in picked if i in services
                                   for f in services[i])), scope)


def test_columns_render_what_entries_renders():
    """harness.lb.columns and harness.lb.entries give the same bytes for every frontend
    type, family, flag and backend state."""
    rnd = random.Random(7)
    world = World(rnd)
    fes = [f for i in range(60) for f in world.service(i)]
    for fam in (4, 6):
        mine = [f for f in fes if f.family == fam]
        rows, cols = C.frontend_columns(mine)[fam]
        assert rows.tolist() == list(range(len(mine)))
        assert cols.keys() == [E.service_key(fam, f.address, f.port, f.protocol, 0)
                               for f in mine]
        assert C.reverse_nat_values(cols).view(f"V{C.REVERSE_NAT[fam].itemsize}").tolist() \
            == [E.reverse_nat_value(f) for f in mine]
        flags = [E.frontend_flags(f) for f in mine]
        assert cols.flags.tolist() == flags
    groups = [f.backends for f in fes]
    refs = C.BackendRefs.of(groups)
    start = 0
    for g, t in enumerate(groups):
        from harness.lb.model import selectable
        rows = refs.selected[start:start + refs.counts[g]]
        assert [refs.objects[r] for r in rows] == list(selectable(t))
        start += refs.counts[g]
    for fam in (4, 6):
        rows = [r for r, b in enumerate(refs.objects) if b.address.version == fam]
        vals = C.backend_values(fam, refs.hi[rows], refs.lo[rows], refs.port[rows],
                                refs.proto[rows], refs.state[rows])
        assert vals.view(f"V{vals.itemsize}").tolist() == \
            [E.backend_value(refs.objects[r]) for r in rows]


def test_sets_and_tuples_give_the_same_records():
    """A Backends set's joined records are its members' (the planner reads either)."""
    world = World(random.Random(3))
    for fam in (4, 6):
        t = tuple(world.backends(fam, 8080, "TCP") or (Backend(world.pool[fam][0], 1, "UDP"),))
        assert Backends(t) == t and hash(Backends(t)) == hash(t)
        assert C.backend_records([Backends(t)]).tobytes() == C.backend_records([t]).tobytes()
        assert Backends(t)._rec == b"".join(b._rec for b in t)


def test_sets_place_their_slots_as_the_sort_does():
    """BackendRefs from Backends sets (their own slot order) and from the same tuples
    (sorted in bulk) select the same rows, in the same order, for every mix of states:
    active ones first, terminating ones only where no backend is active."""
    rnd = random.Random(5)
    world = World(rnd, sets=0.0)
    tuples = [world.backends(fam, port, "TCP") for fam in (4, 6) for port in (80, 81)
              for _ in range(40)]
    tuples.append(tuple(Backend(ipaddress.ip_address(f"198.18.1.{i}"), 80, "TCP", TERMINATING)
                        for i in (9, 3, 7)))
    tuples.append(())
    by_sort = C.BackendRefs.of(tuples)
    by_sets = C.BackendRefs.of([Backends(t) for t in tuples])
    assert by_sets.selected.tolist() == by_sort.selected.tolist()
    assert by_sets.counts.tolist() == by_sort.counts.tolist()
    mixed = Backends((Backend(ipaddress.ip_address("198.18.1.1"), 80, "TCP"),
                      Backend(ipaddress.ip_address("2001:db8::1"), 80, "TCP")))
    assert mixed._slots is None            # no order across families: sorted in bulk
    assert C.BackendRefs.of([mixed]).counts.tolist() == [2]


@pytest.mark.parametrize("bad", [
    Backend(ipaddress.ip_address("198.18.1.10"), 70000, "TCP"),
    Backend(ipaddress.ip_address("198.18.1.10"), 80, "ICMP"),
    Backend(ipaddress.ip_address("198.18.1.10"), 80, "TCP", "draining"),
], ids=["port", "protocol", "state"])
@pytest.mark.parametrize("as_set", [False, True], ids=["tuple", "set"])
@pytest.mark.parametrize("small", [0, 10**9], ids=["bulk", "one-by-one"])
def test_a_backend_that_cannot_be_programmed_writes_nothing(load, bad, as_set, small,
                                                             monkeypatch):
    """A backend whose port, protocol or state the maps cannot hold fails the apply with
    LbApplyError naming it, before anything is written."""
    monkeypatch.setattr(control_module, "SMALL", small)
    coll = load("lxc", rodata=datapath.rodata_for("lxc"))
    ctl, _ = control(LbControl, coll)
    good = Backend(ipaddress.ip_address("198.18.1.11"), 80, "TCP")
    bes = (good, bad)
    fes = [Frontend(f"ns/s{i}", "p", "ClusterIP", ipaddress.ip_address(f"198.19.0.{i + 1}"),
                    80, "TCP", Backends(bes) if as_set else bes) for i in range(20)]
    before = contents(coll)
    with pytest.raises(control_module.LbApplyError, match="nothing was written") as err:
        ctl.apply(LbState(tuple(fes)))
    assert "198.18.1.10" in str(err.value)
    assert contents(coll) == before
    assert ctl.entry_count() == {}
