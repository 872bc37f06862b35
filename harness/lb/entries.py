"""Rendering the load balancer's state as map entries (keys and values as bytes).

One place turns Frontends and Backends into the exact bytes of
``cb_lb{4,6}_services``, ``cb_lb{4,6}_backends`` and ``cb_lb{4,6}_reverse_nat``
entries, using the struct mirrors of harness.abi.structs and the flag values of
bpf_src/lib/lb.h.
"""
from __future__ import annotations

from harness.abi.cheaders import defines
from harness.lb.model import BACKEND_STATES, PROTOCOLS, Backend, Frontend
from harness.abi.structs import (Lb4Backend, Lb4Key, Lb4ReverseNat, Lb6Backend, Lb6Key,
                             Lb6ReverseNat, LbService, V6Addr, be16, be32)

SVC_FLAGS = defines("lib/lb.h", "SVC_F_")
_TYPE_FLAG = {
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


def frontend_flags(f: Frontend) -> int:
    flags = _TYPE_FLAG[f.type]
    if f.affinity_timeout:
        flags |= SVC_FLAGS["SVC_F_AFFINITY"]
    if f.maglev:
        flags |= SVC_FLAGS["SVC_F_MAGLEV"]
    if f.local_scope:
        flags |= SVC_FLAGS["SVC_F_LOCAL_SCOPE"]
    return flags


def service_key(family: int, address, port: int, protocol: str | None, slot: int) -> bytes:
    proto = PROTOCOLS[protocol] if protocol else 0
    if family == 4:
        return bytes(Lb4Key(address=be32(address), dport=be16(port), backend_slot=slot,
                            proto=proto))
    return bytes(Lb6Key(address=V6Addr.of(address), dport=be16(port), backend_slot=slot,
                        proto=proto))


def frontend_entries(f: Frontend, rev_nat_index: int, backend_ids: list[int]) -> dict[bytes, bytes]:
    """Services-map entries of one frontend: slots 1..n then the service entry (slot 0)."""
    entries = {}
    # One key and one value struct, re-serialised per slot: a full sync of 100k
    # services builds over a million of these.
    key = (Lb4Key(address=be32(f.address), dport=be16(f.port), proto=PROTOCOLS[f.protocol])
           if f.family == 4 else
           Lb6Key(address=V6Addr.of(f.address), dport=be16(f.port), proto=PROTOCOLS[f.protocol]))
    slot_value = LbService()
    for slot, bid in enumerate(backend_ids, start=1):
        key.backend_slot = slot
        slot_value.backend_id = bid
        entries[bytes(key)] = bytes(slot_value)
    key.backend_slot = 0
    entries[bytes(key)] = bytes(LbService(
        count=len(backend_ids), rev_nat_index=rev_nat_index, flags=frontend_flags(f),
        affinity_timeout=f.affinity_timeout))
    return entries


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
