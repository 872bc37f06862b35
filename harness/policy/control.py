"""Programming the policy maps: ipcache, endpoint configuration, policy rules.

Each endpoint's rules change atomically: the new rule set is written under
the endpoint's other generation, then one write to its ``cb_endpoints`` slot
switches generation and bumps the policy revision, then the old generation's
keys go.  A packet sees either the old rules or the new ones, never a mix;
conntrack entries verdicted under the old revision are checked again.  If
writing the new generation fails, what was written is removed and the old
rules stay live.  Endpoints whose rules did not change are not touched.

A whole apply is one change: it is planned first (reading only), then written
through ``harness.journal`` in this order: new and changed ipcache
entries, every changed endpoint's new rules, then their switches and those
of endpoints that went away (one batch), the old generations' rules, stale
ipcache entries; each phase is one batch per map, written from packed
bytes (entries.pack_rules, entries.packed_ipcache: no object per entry).  If any write
fails, every write of the apply is undone (PolicyApplyError) and nothing
changed; signals are held while it writes, and with a node's journal a
SIGKILL mid-way is finished by the next command that opens the node's maps
(see that module for what the datapath can see meanwhile).
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from harness.errors import ChainbenchError
from harness import journal as map_journal
from harness.bpf import Map, Packed
from harness.policy import entries as E
from harness import gcpause
from harness.policy.model import EndpointPolicy, PolicyState
from harness.abi.structs import PolicyKey


class PolicyApplyError(ChainbenchError, RuntimeError):
    pass


def endpoint_ids(pods: Iterable[str]) -> dict[str, int]:
    """Endpoint ids for test-run and tests: 1.. in namespace/name order."""
    return {pod: i for i, pod in enumerate(sorted(pods), start=1)}


@dataclass
class _Endpoint:
    policy: EndpointPolicy | None       # None: adopted from the maps by restore()
    generation: int
    revision: int
    keys: dict[str, bytes] = field(default_factory=dict)    # map -> its keys, packed


@dataclass
class PolicyStats:
    endpoints_changed: int = 0
    rule_writes: int = 0
    rule_deletes: int = 0
    ipcache_writes: int = 0
    ipcache_deletes: int = 0
    #: Seconds of the apply spent planning (reading the maps, building the entries) and
    #: writing them (the journal's steps).
    plan_seconds: float = 0.0
    write_seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.endpoints_changed} endpoints changed; {self.rule_writes} rule entries "
                f"written, {self.rule_deletes} deleted; ipcache {self.ipcache_writes} written, "
                f"{self.ipcache_deletes} deleted")


#: The rule maps, in the order their steps are written.
RULE_MAPS = ("cb_policy_exact", "cb_policy")


class PolicyControl:
    def __init__(self, maps: Mapping[str, Map], journal: map_journal.Journal | None = None):
        missing = [m for m in ("cb_ipcache", "cb_ipcache_hosts", "cb_endpoints", "cb_policy",
                               "cb_policy_exact") if m not in maps]
        if missing:
            raise ValueError(f"not a policy datapath: maps {', '.join(missing)} missing")
        self.maps = maps
        self._journal = journal
        self._ipcache: dict[tuple[str, bytes], bytes] = {}     # (map, key) -> value
        self._endpoints: dict[int, _Endpoint] = {}

    def apply(self, state: PolicyState, ids: Mapping[str, int],
              files: Mapping[str, bytes] | None = None) -> PolicyStats:
        """Program *state*'s ipcache, and the endpoints named in *ids* (pod -> endpoint id);
        *files* (path -> content) are written with the maps, as part of the same change."""
        with gcpause.paused():
            stats = PolicyStats()
            start = time.perf_counter()
            steps, after = self._plan(state, ids, stats)
            stats.plan_seconds = time.perf_counter() - start
            start = time.perf_counter()
            try:
                map_journal.run(steps, map_journal.Writer(self.maps), self._journal, files)
            except map_journal.MapWriteError as exc:
                raise PolicyApplyError(f"policy not changed (every write undone): {exc}") \
                    from exc.cause
            finally:
                stats.write_seconds = time.perf_counter() - start
            self._ipcache, self._endpoints = after
            return stats

    # -- planning (reads only) ----------------------------------------------------------------
    def plan(self, state: PolicyState, ids: Mapping[str, int]) -> tuple[list[tuple], PolicyStats]:
        """The journal steps apply(state, ids) would write now (harness.journal's step
        format) and their counts, without writing them or changing this control."""
        stats = PolicyStats()
        with gcpause.paused():
            steps, _ = self._plan(state, ids, stats)
        return steps, stats

    def _plan(self, state: PolicyState, ids: Mapping[str, int], stats: PolicyStats) -> tuple:
        """The journal steps that make the maps *state* (see the module docstring for their
        order), counted in *stats*, and (ipcache, endpoints) as they will be once written.
        Each map gets one batch per phase, built from packed bytes (entries.pack_rules,
        entries.packed_ipcache)."""
        steps: list[tuple] = []
        ipcache, stale = self._plan_ipcache(state, steps, stats)
        wanted = {ids[ep.pod]: ep for ep in state.endpoints if ep.pod in ids}
        endpoints = dict(self._endpoints)
        old_rules: list[dict[str, bytes]] = []
        new_rules: dict[str, list[dict[bytes, bytes]]] = {name: [] for name in RULE_MAPS}
        switches: list[tuple[int, bytes]] = []
        for eid, ep in sorted(wanted.items()):
            cur = self._endpoints.get(eid)
            if cur is not None and cur.policy == ep:
                continue
            gen = 1 - cur.generation if cur else 0
            revision = (cur.revision + 1) if cur else 1
            packed = E.pack_rules(eid, gen, ep)
            for name, entries in packed.by_map().items():
                new_rules[name].append(entries)
                stats.rule_writes += len(entries)
            switches.append((eid, E.packed_endpoint_value(ep, gen, revision, packed.wide_flags)))
            if cur is not None:
                old_rules.append(cur.keys)
            endpoints[eid] = _Endpoint(ep, gen, revision,
                                       {name: b"".join(e) for name, e in packed.by_map().items()})
            stats.endpoints_changed += 1
        for name in RULE_MAPS:              # every changed endpoint's new generation
            keys = b"".join(k for entries in new_rules[name] for k in entries)
            if keys:
                steps.append(_put_new(self.maps[name], keys, b"".join(
                    v for entries in new_rules[name] for v in entries.values())))
        for eid in sorted(set(self._endpoints) - wanted.keys()):
            switches.append((eid, bytes(12)))     # unmanaged: no enforcement
            old_rules.append(endpoints.pop(eid).keys)
            stats.endpoints_changed += 1
        if switches:                        # then the switches, all in one batch
            steps.append(self._endpoint_step(switches))
        for name in RULE_MAPS:              # then the old generations go
            raw = [k for keys in old_rules for k in _split(keys.get(name, b""), PolicyKey)]
            olds = [self._current(name, k) for k in raw]
            present = [(k, v) for k, v in zip(raw, olds) if v is not None]
            if present:
                steps.append(("del", name, [k for k, _ in present], [v for _, v in present]))
                stats.rule_deletes += len(present)
        steps.extend(stale)
        return steps, (ipcache, endpoints)

    def _plan_ipcache(self, state: PolicyState, steps: list, stats: PolicyStats):
        """Steps writing new and changed prefixes (appended to *steps*), steps deleting
        stale ones (returned, to run last), and the ipcache as it will be."""
        want: dict[tuple[str, bytes], bytes] = {}
        for name, entries in E.packed_ipcache(state.ipcache).items():
            fresh: list[tuple[bytes, bytes]] = []
            changed: list[tuple[bytes, bytes, bytes]] = []
            for k, v in entries.items():
                want[(name, k)] = v
                old = self._ipcache.get((name, k))
                if old is None:
                    fresh.append((k, v))
                elif old != v:
                    changed.append((k, v, old))
            if fresh:
                steps.append(_put_new(self.maps[name], b"".join(k for k, _ in fresh),
                                      b"".join(v for _, v in fresh)))
            if changed:
                steps.append(("put", name, [k for k, _, _ in changed], [v for _, v, _ in changed],
                              [o for _, _, o in changed]))
            stats.ipcache_writes += len(fresh) + len(changed)
        dels: dict[str, list] = {}
        for name, k in [mk for mk in self._ipcache if mk not in want]:
            old = self._current(name, k)
            if old is not None:
                dels.setdefault(name, []).append((k, old))
            stats.ipcache_deletes += 1
        stale = [("del", name, [k for k, _ in items], [o for _, o in items])
                 for name, items in dels.items()]
        return want, stale

    def _endpoint_step(self, switches: list[tuple[int, bytes]]) -> tuple:
        m = self.maps["cb_endpoints"]
        olds = [m.get(eid) for eid, _ in switches]
        return ("put", "cb_endpoints", [eid.to_bytes(4, "little") for eid, _ in switches],
                [v for _, v in switches], [bytes(o) if o is not None else None for o in olds])

    def _current(self, name: str, key: bytes) -> bytes | None:
        value = self.maps[name].get(key)
        return bytes(value) if value is not None else None

    # -- restoring --------------------------------------------------------------------------
    def restore(self, ids: Iterable[int]) -> int:
        """Adopt what the maps hold for endpoints *ids* and the ipcache (pinned maps
        programmed by an earlier run); returns the endpoints adopted.  Their next
        apply writes a new generation, since the maps do not say which policy
        produced the old one."""
        for name in ("cb_ipcache", "cb_ipcache_hosts"):
            for k, v in self.maps[name].items():
                self._ipcache[(name, bytes(k))] = bytes(v)
        adopted = 0
        for eid in ids:
            info = self.maps["cb_endpoints"].get(eid)
            if info is None or not info.flags & E.EP_FLAGS["EP_F_MANAGED"]:
                continue
            gen = 1 if info.flags & E.EP_FLAGS["EP_F_GENERATION"] else 0
            keys: dict[str, list[bytes]] = {}
            for k, _, _ in read_rules(self.maps, eid):
                keys.setdefault("cb_policy_exact" if k.exact else "cb_policy", []).append(k.to_bytes())
            self._endpoints[eid] = _Endpoint(None, gen, info.policy_revision,
                                             {name: b"".join(ks) for name, ks in keys.items()})
            adopted += 1
        return adopted

    # -- reading back ---------------------------------------------------------------------
    def revision(self, eid: int) -> int:
        return self._endpoints[eid].revision


def _split(packed: bytes, ctype: type) -> list[bytes]:
    size = ctypes.sizeof(ctype)
    return [packed[at:at + size] for at in range(0, len(packed), size)]


def read_rules(maps: Mapping[str, Map], eid: int) -> list[tuple[E.PolicyEntryKey, int, int]]:
    """The live rules of endpoint *eid* with their hit counters, as the kernel holds them."""
    info = maps["cb_endpoints"].lookup(eid)
    gen = 1 if info.flags & E.EP_FLAGS["EP_F_GENERATION"] else 0
    out = []
    for name in ("cb_policy_exact", "cb_policy"):
        for k, v in maps[name].items():
            key = E.PolicyEntryKey.from_key(PolicyKey.from_buffer_copy(bytes(k)))
            if key.endpoint_id == eid and key.generation == gen:
                out.append((key, v.packets, v.bytes))
    out.sort(key=lambda r: (r[0].egress, r[0].deny, r[0].identity, r[0].proto or 0,
                            r[0].port or 0))
    return out


def _put_new(m: Map, keys: bytes, values: bytes) -> tuple:
    """A journal step writing packed entries whose keys *m* does not hold yet (undoing
    it deletes them)."""
    packed = Packed(keys, m.key_size)
    return ("put", m.name, packed, Packed(values, m.value_size), [None] * len(packed))
