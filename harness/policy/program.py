"""Programming the policy maps: ipcache, endpoint configuration, policy rules.

Each endpoint's rules change atomically: the new rule set is written under
the endpoint's other generation, then one write to its ``cb_endpoints`` slot
switches generation and bumps the policy revision, then the old generation's
keys go.  A packet sees either the old rules or the new ones, never a mix;
conntrack entries verdicted under the old revision are checked again.  If
writing the new generation fails, what was written is removed and the old
rules stay live.  Endpoints whose rules did not change are not touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from harness.bpf import BpfError, KeyNotFoundError, Map
from harness.policy import entries as E
from harness.policy.model import EndpointPolicy, PolicyState
from harness.structs import PolicyKey


class PolicyApplyError(RuntimeError):
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
    def __init__(self, maps: Mapping[str, Map]):
        missing = [m for m in ("cb_ipcache", "cb_ipcache_hosts", "cb_endpoints", "cb_policy",
                               "cb_policy_exact") if m not in maps]
        if missing:
            raise ValueError(f"not a policy datapath: maps {', '.join(missing)} missing")
        self.maps = maps
        self._ipcache: dict[tuple[str, bytes], bytes] = {}     # (map, key) -> value
        self._endpoints: dict[int, _Endpoint] = {}

    def apply(self, state: PolicyState, ids: Mapping[str, int]) -> PolicyStats:
        """Program *state*'s ipcache, and the endpoints named in *ids* (pod -> endpoint id)."""
        stats = PolicyStats()
        self._apply_ipcache(state, stats)
        wanted = {ids[ep.pod]: ep for ep in state.endpoints if ep.pod in ids}
        for eid, ep in sorted(wanted.items()):
            self._apply_endpoint(eid, ep, stats)
        for eid in sorted(set(self._endpoints) - wanted.keys()):
            self._remove_endpoint(eid, stats)
        return stats

    # -- ipcache: new and changed prefixes first, stale ones last --------------------------
    def _apply_ipcache(self, state: PolicyState, stats: PolicyStats) -> None:
        want = {(E.ipcache_map(e.prefix), E.ipcache_key(e.prefix)): E.ipcache_value(e)
                for e in state.ipcache}
        for (name, k), v in want.items():
            if self._ipcache.get((name, k)) != v:
                self.maps[name].update(k, v)
                self._ipcache[(name, k)] = v
                stats.ipcache_writes += 1
        for name, k in [mk for mk in self._ipcache if mk not in want]:
            try:
                self.maps[name].delete(k)
            except KeyNotFoundError:
                pass
            del self._ipcache[(name, k)]
            stats.ipcache_deletes += 1

    # -- endpoints ---------------------------------------------------------------------------
    def _apply_endpoint(self, eid: int, ep: EndpointPolicy, stats: PolicyStats) -> None:
        cur = self._endpoints.get(eid)
        if cur is not None and cur.policy == ep:
            return
        gen = 1 - cur.generation if cur else 0
        revision = (cur.revision + 1) if cur else 1
        new_keys = {k.to_bytes(): k for k in E.endpoint_keys(eid, gen, ep)}
        written: list[tuple[Map, bytes]] = []
        try:
            for raw, key in new_keys.items():
                m = self._rule_map(key)
                m.update(raw, bytes(16))
                written.append((m, raw))
            self.maps["cb_endpoints"].update(eid, E.endpoint_value(ep, gen, revision))
        except (BpfError, ValueError) as exc:
            for m, raw in written:
                try:
                    m.delete(raw)
                except KeyNotFoundError:
                    pass
            raise PolicyApplyError(f"policy of endpoint {eid} ({ep.pod}) not changed: {exc}") \
                from exc
        stats.rule_writes += len(written)
        if cur is not None:
            stats.rule_deletes += self._delete_keys(cur.keys)
        self._endpoints[eid] = _Endpoint(ep, gen, revision, new_keys)
        stats.endpoints_changed += 1

    def _remove_endpoint(self, eid: int, stats: PolicyStats) -> None:
        cur = self._endpoints.pop(eid)
        self.maps["cb_endpoints"].update(eid, bytes(12))   # unmanaged: no enforcement
        stats.rule_deletes += self._delete_keys(cur.keys)
        stats.endpoints_changed += 1

    def _rule_map(self, key: E.PolicyEntryKey) -> Map:
        return self.maps["cb_policy_exact" if key.exact else "cb_policy"]

    def _delete_keys(self, keys: Mapping[bytes, E.PolicyEntryKey]) -> int:
        n = 0
        for raw, key in keys.items():
            try:
                self._rule_map(key).delete(raw)
                n += 1
            except KeyNotFoundError:
                pass
        return n

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
