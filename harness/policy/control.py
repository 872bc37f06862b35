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
entries, each changed endpoint's new rules then its switch, endpoints that
went away, the old generations' rules, stale ipcache entries.  If any write
fails, every write of the apply is undone (PolicyApplyError) and nothing
changed; signals are held while it writes, and with a node's journal a
SIGKILL mid-way is finished by the next command that opens the node's maps
(see that module for what the datapath can see meanwhile).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from harness.errors import ChainbenchError
from harness import journal as map_journal
from harness.bpf import Map
from harness.policy import entries as E
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
    keys: dict[bytes, E.PolicyEntryKey] = field(default_factory=dict)


@dataclass
class PolicyStats:
    endpoints_changed: int = 0
    rule_writes: int = 0
    rule_deletes: int = 0
    ipcache_writes: int = 0
    ipcache_deletes: int = 0

    def __str__(self) -> str:
        return (f"{self.endpoints_changed} endpoints changed; {self.rule_writes} rule entries "
                f"written, {self.rule_deletes} deleted; ipcache {self.ipcache_writes} written, "
                f"{self.ipcache_deletes} deleted")


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
        stats = PolicyStats()
        steps: list[tuple] = []
        ipcache, stale = self._plan_ipcache(state, steps, stats)
        wanted = {ids[ep.pod]: ep for ep in state.endpoints if ep.pod in ids}
        endpoints = dict(self._endpoints)
        old_rules: list[dict[bytes, E.PolicyEntryKey]] = []
        for eid, ep in sorted(wanted.items()):
            cur = self._endpoints.get(eid)
            if cur is not None and cur.policy == ep:
                continue
            gen = 1 - cur.generation if cur else 0
            revision = (cur.revision + 1) if cur else 1
            new_keys = {k.to_bytes(): k for k in E.endpoint_keys(eid, gen, ep)}
            for name, keys in self._by_map(new_keys).items():
                steps.append(("put", name, keys, [new_keys[k].value() for k in keys],
                              [None] * len(keys)))
            stats.rule_writes += len(new_keys)
            steps.append(self._endpoint_step(eid, E.endpoint_value(ep, gen, revision)))
            if cur is not None:
                old_rules.append(cur.keys)
            endpoints[eid] = _Endpoint(ep, gen, revision, new_keys)
            stats.endpoints_changed += 1
        for eid in sorted(set(self._endpoints) - wanted.keys()):
            steps.append(self._endpoint_step(eid, bytes(12)))   # unmanaged: no enforcement
            old_rules.append(endpoints.pop(eid).keys)
            stats.endpoints_changed += 1
        for keys in old_rules:
            for name, raw in self._by_map(keys).items():
                olds = [self._current(name, k) for k in raw]
                present = [(k, v) for k, v in zip(raw, olds) if v is not None]
                if present:
                    steps.append(("del", name, [k for k, _ in present], [v for _, v in present]))
                    stats.rule_deletes += len(present)
        steps.extend(stale)
        try:
            map_journal.run(steps, map_journal.Writer(self.maps), self._journal, files)
        except map_journal.MapWriteError as exc:
            raise PolicyApplyError(f"policy not changed (every write undone): {exc}") \
                from exc.cause
        self._ipcache, self._endpoints = ipcache, endpoints
        return stats

    # -- planning (reads only) ----------------------------------------------------------------
    def _plan_ipcache(self, state: PolicyState, steps: list, stats: PolicyStats):
        """Steps writing new and changed prefixes (appended to *steps*), steps deleting
        stale ones (returned, to run last), and the ipcache as it will be."""
        want = {(E.ipcache_map(e.prefix), E.ipcache_key(e.prefix)): E.ipcache_value(e)
                for e in state.ipcache}
        puts: dict[str, list] = {}
        for (name, k), v in want.items():
            old = self._ipcache.get((name, k))
            if old != v:
                puts.setdefault(name, []).append((k, v, old))
        for name, items in puts.items():
            steps.append(("put", name, [k for k, _, _ in items], [v for _, v, _ in items],
                          [o for _, _, o in items]))
            stats.ipcache_writes += len(items)
        dels: dict[str, list] = {}
        for name, k in [mk for mk in self._ipcache if mk not in want]:
            old = self._current(name, k)
            if old is not None:
                dels.setdefault(name, []).append((k, old))
            stats.ipcache_deletes += 1
        stale = [("del", name, [k for k, _ in items], [o for _, o in items])
                 for name, items in dels.items()]
        return dict(want), stale

    def _endpoint_step(self, eid: int, value: bytes) -> tuple:
        m = self.maps["cb_endpoints"]
        old = m.get(eid)
        key = eid.to_bytes(4, "little")
        return ("put", "cb_endpoints", [key], [value], [bytes(old) if old is not None else None])

    def _by_map(self, keys: Mapping[bytes, E.PolicyEntryKey]) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        for raw, key in keys.items():
            out.setdefault("cb_policy_exact" if key.exact else "cb_policy", []).append(raw)
        return out

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
            keys = {k.to_bytes(): k for k, _, _ in read_rules(self.maps, eid)}
            self._endpoints[eid] = _Endpoint(None, gen, info.policy_revision, keys)
            adopted += 1
        return adopted

    # -- reading back ---------------------------------------------------------------------
    def revision(self, eid: int) -> int:
        return self._endpoints[eid].revision


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
