"""Rendering the load balancer's state as map entries (keys and values as bytes).

One place turns Frontends and Backends into the exact bytes of
``cb_lb{4,6}_services`` (both scopes of a two-scope frontend),
``cb_lb{4,6}_backends``, ``cb_lb{4,6}_reverse_nat`` and
``cb_lb{4,6}_source_range`` entries, using the struct mirrors of
harness.abi.structs and the flag and scope values of bpf_src/lib/lb.h.
"""
from __future__ import annotations

from harness.abi.cheaders import defines
from harness.lb.model import BACKEND_STATES, PROTOCOLS, Backend, Frontend
from harness.abi.structs import (Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4SrcRangeKey, Lb6Backend,
                                Lb6Key, Lb6ReverseNat, Lb6SrcRangeKey, LbService, V6Addr, be16,
                                be32)

SVC_FLAGS = defines("lib/lb.h", "SVC_F_")
SCOPE_EXT = defines("lib/lb.h", "LB_SCOPE_EXT")["LB_SCOPE_EXT"]
SCOPE_INT = defines("lib/lb.h", "LB_SCOPE_INT")["LB_SCOPE_INT"]
#: The Maglev table key of a frontend's INT scope: rev_nat_index | this.
MAGLEV_INT_KEY = defines("lib/lb.h", "CB_MAGLEV_INT_KEY")["CB_MAGLEV_INT_KEY"]
SRC_RANGE_STATIC_PREFIX = defines("lib/lb.h", "LB_SRC_RANGE_STATIC_PREFIX")[
    "LB_SRC_RANGE_STATIC_PREFIX"]
SRC_RANGE_VALUE = b"\x01"
TYPE_FLAGS = {
    "ClusterIP": SVC_FLAGS["SVC_F_CLUSTERIP"],
    "NodePort": SVC_FLAGS["SVC_F_NODEPORT"],
    "ExternalIP": SVC_FLAGS["SVC_F_EXTERNAL_IP"],
    "HostPort": SVC_FLAGS["SVC_F_HOSTPORT"],
    "LoadBalancer": SVC_FLAGS["SVC_F_LOADBALANCER"],
}


def services_map(family: int) -> str:
    return f"cb_lb{family}_services"


def backends_map(family: int) -> str:
    return f"cb_lb{family}_backends"


def reverse_nat_map(family: int) -> str:
    return f"cb_lb{family}_reverse_nat"


def source_range_map(family: int) -> str:
    return f"cb_lb{family}_source_range"


def frontend_flags(f: Frontend) -> int:
    flags = TYPE_FLAGS[f.type]
    if f.affinity_timeout:
        flags |= SVC_FLAGS["SVC_F_AFFINITY"]
    if f.maglev:
        flags |= SVC_FLAGS["SVC_F_MAGLEV"]
    if f.local_scope:
        flags |= SVC_FLAGS["SVC_F_LOCAL_SCOPE"]
    if f.internal_local:
        flags |= SVC_FLAGS["SVC_F_INT_LOCAL"]
    if f.source_ranges:
        flags |= SVC_FLAGS["SVC_F_SOURCE_RANGE"]
    return flags


def service_key(family: int, address, port: int, protocol: str | None, slot: int) -> bytes:
    proto = PROTOCOLS[protocol] if protocol else 0
    if family == 4:
        return bytes(Lb4Key(address=be32(address), dport=be16(port), backend_slot=slot,
                            proto=proto))
    return bytes(Lb6Key(address=V6Addr.of(address), dport=be16(port), backend_slot=slot,
                        proto=proto))


def frontend_entries(f: Frontend, rev_nat_index: int, backend_ids: list[int],
                     internal_ids: list[int] | None = None) -> dict[bytes, bytes]:
    """Services-map entries of one frontend.  With *internal_ids* (a two-scope frontend):
    the INT scope's slots 1..m and service entry first, then the EXT scope's; each
    scope's slots come before its service entry (slot 0), the order they are written."""
    entries = {}
    # One key and one value struct, re-serialised per slot: a full sync of 100k
    # services builds over a million of these.
    key = (Lb4Key(address=be32(f.address), dport=be16(f.port), proto=PROTOCOLS[f.protocol])
           if f.family == 4 else
           Lb6Key(address=V6Addr.of(f.address), dport=be16(f.port), proto=PROTOCOLS[f.protocol]))
    slot_value = LbService()
    flags = frontend_flags(f)
    scopes = [(SCOPE_EXT, backend_ids, flags)]
    if internal_ids is not None:
        scopes.insert(0, (SCOPE_INT, internal_ids, (flags & ~SVC_FLAGS["SVC_F_LOCAL_SCOPE"])
                          | SVC_FLAGS["SVC_F_INT_SCOPE"]))
        scopes[1] = (SCOPE_EXT, backend_ids, flags | SVC_FLAGS["SVC_F_TWO_SCOPES"])
    for scope, ids, scope_flags in scopes:
        key.scope = scope
        for slot, bid in enumerate(ids, start=1):
            key.backend_slot = slot
            slot_value.backend_id = bid
            entries[bytes(key)] = bytes(slot_value)
        key.backend_slot = 0
        entries[bytes(key)] = bytes(LbService(
            count=len(ids), rev_nat_index=rev_nat_index, flags=scope_flags,
            affinity_timeout=f.affinity_timeout))
    return entries


def source_range_entries(f: Frontend, rev_nat_index: int) -> dict[bytes, bytes]:
    """cb_lb{4,6}_source_range entries of a frontend's loadBalancerSourceRanges."""
    out = {}
    for net in f.source_ranges:
        if net.version != f.family:
            continue
        prefixlen = SRC_RANGE_STATIC_PREFIX + net.prefixlen
        if f.family == 4:
            key = Lb4SrcRangeKey(prefixlen=prefixlen, rev_nat_index=rev_nat_index,
                                 address=be32(net.network_address))
        else:
            key = Lb6SrcRangeKey(prefixlen=prefixlen, rev_nat_index=rev_nat_index,
                                 address=V6Addr.of(net.network_address))
        out[bytes(key)] = SRC_RANGE_VALUE
    return out


def key_scope(family: int, key: bytes) -> int:
    """lb*_key.scope of a services-map key."""
    return key[9 if family == 4 else 21]


def key_slot(family: int, key: bytes) -> int:
    """lb*_key.backend_slot of a services-map key (after the address and the port)."""
    offset = 6 if family == 4 else 18
    return int.from_bytes(key[offset:offset + 2], "little")


def maglev_table_key(rev_nat_index: int, internal: bool) -> int:
    """The Maglev table key of a frontend's EXT or INT scope (lib/lb.h lb_maglev_key)."""
    return rev_nat_index | (MAGLEV_INT_KEY if internal else 0)


def vip_entry(family: int, address, backends: int) -> tuple[bytes, bytes]:
    """The address-only entry marking a ClusterIP (count: selectable backends over its ports)."""
    flags = SVC_FLAGS["SVC_F_VIP"] | SVC_FLAGS["SVC_F_CLUSTERIP"]
    return (service_key(family, address, 0, None, 0),
            bytes(LbService(count=min(backends, 0xFFFF), flags=flags)))


def backend_value(b: Backend) -> bytes:
    state = BACKEND_STATES[b.state]
    if b.address.version == 4:
        return bytes(Lb4Backend(address=be32(b.address), port=be16(b.port),
                                proto=PROTOCOLS[b.protocol], state=state))
    return bytes(Lb6Backend(address=V6Addr.of(b.address), port=be16(b.port),
                            proto=PROTOCOLS[b.protocol], state=state))


def reverse_nat_value(f: Frontend) -> bytes:
    if f.family == 4:
        return bytes(Lb4ReverseNat(address=be32(f.address), port=be16(f.port)))
    return bytes(Lb6ReverseNat(address=V6Addr.of(f.address), port=be16(f.port)))


def u32(value: int) -> bytes:
    return value.to_bytes(4, "little")
