"""Rendering resolved policy as map entries: ipcache prefixes, endpoint
configuration, and LPM policy keys (bpf_src/lib/ipcache.h, lib/policy.h).

A rule becomes one LPM key per prefix-aligned block of its port range: a
range is split into the fewest (value, prefix length) blocks that cover it
exactly, as routing tables split address ranges.
"""
from __future__ import annotations

import ctypes
import ipaddress
import struct
from collections.abc import Iterable
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


def _enforcement_flags(ep: EndpointPolicy) -> int:
    """EP_F_MANAGED and the directions *ep* enforces and denies in."""
    flags = EP_FLAGS["EP_F_MANAGED"]
    if ep.ingress_enforced:
        flags |= EP_FLAGS["EP_F_INGRESS_ENFORCED"]
    if ep.egress_enforced:
        flags |= EP_FLAGS["EP_F_EGRESS_ENFORCED"]
    if any(r.deny for r in ep.ingress):
        flags |= EP_FLAGS["EP_F_INGRESS_DENIES"]
    if any(r.deny for r in ep.egress):
        flags |= EP_FLAGS["EP_F_EGRESS_DENIES"]
    return flags


def endpoint_flags(ep: EndpointPolicy, generation: int) -> int:
    flags = _enforcement_flags(ep)
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


# -- packed entries, built in bulk ----------------------------------------------------------
# The same bytes as the ctypes mirrors (PolicyKey, PolicyEntry, IpcacheKey, IpcacheEntry,
# EndpointInfo in harness.abi.structs, which Collection.load checks against BTF), built with
# struct instead of one ctypes object per entry.  A policy key's fields after prefixlen are
# big-endian (an LPM key): prefixlen is packed apart, in host order.
_KEY_HEAD = struct.Struct("<I")                  # prefixlen
_KEY_REST = struct.Struct(">HBBIBBH")            # ep_gen, deny, egress, identity, pad, proto, dport
_ENTRY = struct.Struct("<QQBBHI")                # packets, bytes, match_type, proto, port, pad
_IPCACHE_KEY = struct.Struct("<IB3x16s")         # prefixlen, family, pad, addr
_IPCACHE_VALUE = struct.Struct("<II")            # identity, tunnel_endpoint
_ENDPOINT_VALUE = struct.Struct("<IIHH")         # identity, policy_revision, flags, pad
for _packed, _mirror in ((_KEY_HEAD.size + _KEY_REST.size, PolicyKey), (_ENTRY.size, PolicyEntry),
                         (_IPCACHE_KEY.size, IpcacheKey), (_IPCACHE_VALUE.size, IpcacheValue),
                         (_ENDPOINT_VALUE.size, EndpointInfo)):
    if _packed != ctypes.sizeof(_mirror):
        raise ImportError(f"packed {_mirror.__name__} is {_packed} bytes, the mirror "
                          f"{ctypes.sizeof(_mirror)}")
_HEADS = {n: _KEY_HEAD.pack(n) for n in range(PREFIX_FIXED, PREFIX_FULL + 1)}
_MATCH_OF = {(any_id, kind): MATCH["POLICY_MATCH_" + name] for (any_id, kind), name in {
    (True, 0): "ALL", (False, 0): "L3_ONLY", (True, 1): "PROTO_ONLY", (False, 1): "L3_PROTO",
    (True, 2): "L4_ONLY", (False, 2): "L3_L4"}.items()}


@dataclass
class PackedRules:
    """One endpoint generation's rules as map entries: key bytes -> value bytes per map
    (``cb_policy_exact``: single ports; ``cb_policy``: the rest), and the EP_F_*_WIDE
    flags they need.  What endpoint_keys() and PolicyEntryKey.value() give, entry for entry."""
    exact: dict[bytes, bytes]
    wide: dict[bytes, bytes]
    wide_flags: int

    def by_map(self) -> dict[str, dict[bytes, bytes]]:
        return {"cb_policy_exact": self.exact, "cb_policy": self.wide}


def pack_rules(endpoint_id: int, generation: int, ep: EndpointPolicy) -> PackedRules:
    """*ep*'s rules for endpoint *endpoint_id*, generation *generation*, as packed entries."""
    ep_gen = (endpoint_id << 1) | generation
    exact: dict[bytes, bytes] = {}
    wide: dict[bytes, bytes] = {}
    flags = 0
    rest, entry = _KEY_REST.pack, _ENTRY.pack
    values: dict[tuple, bytes] = {}
    for egress, rules, wide_flag in ((0, ep.ingress, EP_FLAGS["EP_F_INGRESS_WIDE"]),
                                     (1, ep.egress, EP_FLAGS["EP_F_EGRESS_WIDE"])):
        for r in rules:
            proto, identity, deny = r.proto, r.identity, int(r.deny)
            lo, hi = r.ports.lo, r.ports.hi
            if proto != ANY_PROTO and lo == hi:          # one port: the exact map
                key = _HEADS[PREFIX_FULL] + rest(ep_gen, deny, egress, identity, 0, proto, lo)
                if key not in exact:
                    vkey = (identity == ANY_IDENTITY, 2, proto, lo)
                    value = values.get(vkey)
                    if value is None:
                        value = values[vkey] = entry(0, 0, _MATCH_OF[vkey[:2]], proto, lo, 0)
                    exact[key] = value
                continue
            if proto == ANY_PROTO:
                blocks, kind = ((0, None),), 0
            elif (lo, hi) == (0, 0xFFFF):
                blocks, kind = ((0, None),), 1
            else:
                blocks, kind = port_blocks(lo, hi), 2
            for start, bits in blocks:
                prefixlen = (PREFIX_FIXED if kind == 0 else PREFIX_PROTO if kind == 1
                             else PREFIX_PROTO + bits)
                key = _HEADS[prefixlen] + rest(ep_gen, deny, egress, identity, 0, proto, start)
                if prefixlen == PREFIX_FULL:
                    target = exact
                else:
                    target = wide
                    flags |= wide_flag
                if key not in target:
                    vkey = (identity == ANY_IDENTITY, kind, proto, start)
                    value = values.get(vkey)
                    if value is None:
                        value = values[vkey] = entry(0, 0, _MATCH_OF[vkey[:2]], proto, start, 0)
                    target[key] = value
    return PackedRules(exact, wide, flags)


def packed_endpoint_value(ep: EndpointPolicy, generation: int, revision: int, wide_flags: int) -> bytes:
    """endpoint_value(), with the EP_F_*_WIDE flags given (PackedRules.wide_flags)."""
    flags = _enforcement_flags(ep) | wide_flags
    if generation:
        flags |= EP_FLAGS["EP_F_GENERATION"]
    return _ENDPOINT_VALUE.pack(ep.identity, revision, flags, 0)


def packed_ipcache(entries: Iterable[IpcacheEntry]) -> dict[str, dict[bytes, bytes]]:
    """The ipcache as packed entries per map (ipcache_map, ipcache_key, ipcache_value)."""
    hosts: dict[bytes, bytes] = {}
    trie: dict[bytes, bytes] = {}
    key, value = _IPCACHE_KEY.pack, _IPCACHE_VALUE.pack
    for e in entries:
        prefix = e.prefix
        plen = prefix.prefixlen
        target = hosts if plen == prefix.max_prefixlen else trie
        target[key(IPCACHE_PREFIX_BASE + plen, prefix.version,
                   prefix.network_address.packed)] = value(e.identity, 0)
    return {"cb_ipcache_hosts": hosts, "cb_ipcache": trie}
