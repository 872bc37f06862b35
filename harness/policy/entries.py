"""Rendering resolved policy as map entries: ipcache prefixes, endpoint
configuration, and LPM policy keys (bpf_src/lib/ipcache.h, lib/policy.h).

A rule becomes one LPM key per prefix-aligned block of its port range: a
range is split into the fewest (value, prefix length) blocks that cover it
exactly, as routing tables split address ranges.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from harness.abi.cheaders import defines
from harness.policy.model import ANY_IDENTITY, ANY_PROTO, EndpointPolicy, IpcacheEntry, Rule
from harness.abi.structs import (EndpointInfo, IpcacheEntry as IpcacheValue, IpcacheKey, PolicyEntry,
                                 PolicyKey, V6Addr)

_P = defines("lib/policy.h", "POLICY_PREFIX_")
EP_FLAGS = defines("lib/policy.h", "EP_F_")
MATCH = defines("lib/events.h", "POLICY_MATCH_")
IPCACHE_PREFIX_BASE = defines("lib/ipcache.h", "IPCACHE_PREFIX_BASE")["IPCACHE_PREFIX_BASE"]
PREFIX_FIXED, PREFIX_PROTO, PREFIX_FULL = (_P["POLICY_PREFIX_FIXED"], _P["POLICY_PREFIX_PROTO"],
                                           _P["POLICY_PREFIX_FULL"])


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """(start, prefix bits of 16) blocks covering exactly lo..hi."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return blocks


@dataclass(frozen=True)
class PolicyEntryKey:
    """A policy map key in readable form."""
    endpoint_id: int
    generation: int
    deny: bool
    egress: bool
    identity: int
    proto: int | None        # None: any protocol
    port: int | None         # None: any port (with proto None or a proto)
    port_prefix: int = 16    # bits of port that matter

    def to_bytes(self) -> bytes:
        if self.proto is None:
            prefixlen = PREFIX_FIXED
        elif self.port is None:
            prefixlen = PREFIX_PROTO
        else:
            prefixlen = PREFIX_PROTO + self.port_prefix
        key = PolicyKey(prefixlen=prefixlen,
                        ep_gen=_be16((self.endpoint_id << 1) | self.generation),
                        deny=int(self.deny), egress=int(self.egress),
                        identity=_be32(self.identity), proto=self.proto or 0,
                        dport=_be16(self.port or 0))
        return bytes(key)

    @classmethod
    def from_key(cls, key: PolicyKey) -> "PolicyEntryKey":
        ep_gen = _from_be16(key.ep_gen)
        proto = key.proto if key.prefixlen >= PREFIX_PROTO else None
        port = _from_be16(key.dport) if key.prefixlen > PREFIX_PROTO else None
        return cls(ep_gen >> 1, ep_gen & 1, bool(key.deny), bool(key.egress),
                   int.from_bytes(key.identity.to_bytes(4, "little"), "big"), proto, port,
                   max(0, key.prefixlen - PREFIX_PROTO))

    @property
    def match_type(self) -> int:
        """Cilium's policy match type of this rule, as policy-verdict events report it."""
        any_identity = self.identity == ANY_IDENTITY
        if self.proto is None:
            name = "ALL" if any_identity else "L3_ONLY"
        elif self.port is None:
            name = "PROTO_ONLY" if any_identity else "L3_PROTO"
        else:
            name = "L4_ONLY" if any_identity else "L3_L4"
        return MATCH["POLICY_MATCH_" + name]

    def value(self) -> bytes:
        """The map value of a new entry: zero counters and what kind of rule it is."""
        return bytes(PolicyEntry(match_type=self.match_type, proto=self.proto or 0,
                                 port=self.port or 0))

    @property
    def exact(self) -> bool:
        """A single-port rule: kept in the exact-match hash map."""
        return self.proto is not None and self.port is not None and self.port_prefix == 16

    def ports_text(self) -> str:
        if self.proto is None:
            return "ANY"
        if self.port is None:
            return f"{self.proto}/ANY"
        span = 1 << (16 - self.port_prefix)
        last = self.port + span - 1
        return f"{self.proto}/{self.port}" + (f"-{last}" if span > 1 else "")

    def port_proto_text(self) -> str:
        """As ``cilium bpf policy get`` prints it: ``8080/TCP``, ``8000-8063/TCP``,
        ``ANY/UDP`` (any port of a protocol), ``ANY`` (any protocol)."""
        if self.proto is None:
            return "ANY"
        proto = PROTO_NAMES.get(self.proto, str(self.proto))
        if self.port is None:
            return f"ANY/{proto}"
        last = self.port + (1 << (16 - self.port_prefix)) - 1
        return f"{self.port}" + (f"-{last}" if last != self.port else "") + f"/{proto}"


#: IP protocol numbers as policy listings name them.
PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMP", 58: "ICMPv6"}

#: Labels Cilium derives for every pod (namespace labels, cluster): left out of
#: the short form of a label set, which keeps the pod's own labels and namespace.
_DERIVED_LABEL_PREFIXES = ("k8s:io.cilium.k8s.namespace.labels.", "k8s:io.cilium.k8s.policy.")


def short_labels(labels: str | list[str] | tuple[str, ...]) -> str:
    """A label set (comma-separated or a list) readable in a table: the derived labels
    left out, e.g. ``k8s:app=echo-a,k8s:io.kubernetes.pod.namespace=default``."""
    items = [x for x in (labels.split(",") if isinstance(labels, str) else labels) if x]
    kept = [x for x in items if not x.startswith(_DERIVED_LABEL_PREFIXES)]
    return ",".join(kept or items)


def rule_keys(endpoint_id: int, generation: int, egress: bool, rule: Rule) -> list[PolicyEntryKey]:
    identity = rule.identity if rule.identity != ANY_IDENTITY else ANY_IDENTITY
    if rule.proto == ANY_PROTO:
        return [PolicyEntryKey(endpoint_id, generation, rule.deny, egress, identity, None, None)]
    if (rule.ports.lo, rule.ports.hi) == (0, 0xFFFF):
        return [PolicyEntryKey(endpoint_id, generation, rule.deny, egress, identity, rule.proto,
                               None)]
    return [PolicyEntryKey(endpoint_id, generation, rule.deny, egress, identity, rule.proto,
                           start, bits)
            for start, bits in port_blocks(rule.ports.lo, rule.ports.hi)]


def endpoint_keys(endpoint_id: int, generation: int, ep: EndpointPolicy) -> list[PolicyEntryKey]:
    keys: dict[bytes, PolicyEntryKey] = {}
    for egress, rules in ((False, ep.ingress), (True, ep.egress)):
        for rule in rules:
            for k in rule_keys(endpoint_id, generation, egress, rule):
                keys[k.to_bytes()] = k
    return list(keys.values())


def endpoint_flags(ep: EndpointPolicy, generation: int) -> int:
    flags = EP_FLAGS["EP_F_MANAGED"]
    if ep.ingress_enforced:
        flags |= EP_FLAGS["EP_F_INGRESS_ENFORCED"]
    if ep.egress_enforced:
        flags |= EP_FLAGS["EP_F_EGRESS_ENFORCED"]
    if any(r.deny for r in ep.ingress):
        flags |= EP_FLAGS["EP_F_INGRESS_DENIES"]
    if any(r.deny for r in ep.egress):
        flags |= EP_FLAGS["EP_F_EGRESS_DENIES"]
    for egress, rules in ((False, ep.ingress), (True, ep.egress)):
        if any(not k.exact for r in rules for k in rule_keys(0, 0, egress, r)):
            flags |= EP_FLAGS["EP_F_EGRESS_WIDE" if egress else "EP_F_INGRESS_WIDE"]
    if generation:
        flags |= EP_FLAGS["EP_F_GENERATION"]
    return flags


def endpoint_value(ep: EndpointPolicy, generation: int, revision: int) -> bytes:
    return bytes(EndpointInfo(identity=ep.identity, policy_revision=revision,
                              flags=endpoint_flags(ep, generation)))


def ipcache_map(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """Host prefixes go to the hash map, shorter ones to the trie (lib/ipcache.h)."""
    return "cb_ipcache_hosts" if prefix.prefixlen == prefix.max_prefixlen else "cb_ipcache"


def ipcache_key(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    return bytes(IpcacheKey(prefixlen=IPCACHE_PREFIX_BASE + prefix.prefixlen,
                            family=prefix.version, addr=V6Addr.of(prefix.network_address)))


def ipcache_value(entry: IpcacheEntry) -> bytes:
    return bytes(IpcacheValue(identity=entry.identity))


def _be16(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "big"), "little")


def _from_be16(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "little"), "big")


def _be32(v: int) -> int:
    return int.from_bytes(v.to_bytes(4, "big"), "little")
