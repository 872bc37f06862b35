"""Reading and cleaning the conntrack maps (``chainbench ct list|flush|gc``).

Entries carry absolute expiry times in monotonic seconds (the clock the
datapath reads: CLOCK_MONOTONIC_COARSE via bpf_ktime_get_coarse_ns, which
may trail CLOCK_MONOTONIC by a tick); ``gc`` deletes every entry whose
lifetime has passed, as Cilium's agent does on its GC interval.  The
datapath already treats expired entries as absent; GC gives their slots back.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Iterator, Mapping

from harness.bpf import Map
from harness.bpf.errors import NotSupportedError
from harness.abi.cheaders import defines
from harness.abi.structs import from_be16

CT_MAPS = ("cb_ct4", "cb_ct6")
_DIRS = {v: k.removeprefix("CT_").lower() for k, v in defines("lib/ct.h", "CT_").items()
         if k in ("CT_EGRESS", "CT_INGRESS", "CT_SERVICE")}
_FLAGS = {v: k.removeprefix("CT_F_").lower() for k, v in defines("lib/ct.h", "CT_F_").items()}
_PROTOS = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP"}
_TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"))


_CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)   # Linux's value


def now() -> int:
    """Monotonic seconds as the datapath reads them."""
    return int(time.clock_gettime(_CLOCK_MONOTONIC_COARSE))


@dataclass(frozen=True)
class CtRecord:
    family: int
    direction: str
    protocol: str
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    expires_in: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    rev_nat_index: int
    backend_id: int
    flags: tuple[str, ...]
    tcp_flags_seen: str

    def to_json(self) -> dict:
        d = self.__dict__.copy()
        d["saddr"], d["daddr"], d["flags"] = str(self.saddr), str(self.daddr), list(self.flags)
        return d


def _addr(family: int, value) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == 4:
        return ipaddress.IPv4Address(value.to_bytes(4, "little"))
    return value.ipv6()


def _tcp_flags(tx: int, rx: int) -> str:
    def names(v: int) -> str:
        return "|".join(n for bit, n in _TCP_FLAGS if v & bit) or "-"
    return f"tx={names(tx)} rx={names(rx)}"


def _entries(m: Map) -> list[tuple]:
    try:
        return m.lookup_batch()
    except NotSupportedError:
        return list(m.items())


def records(maps: Mapping[str, Map], at: int | None = None) -> Iterator[CtRecord]:
    at = now() if at is None else at
    for name, family in (("cb_ct4", 4), ("cb_ct6", 6)):
        if name not in maps:
            continue
        for k, v in _entries(maps[name]):
            yield CtRecord(
                family, _DIRS.get(k.flags, str(k.flags)), _PROTOS.get(k.nexthdr, str(k.nexthdr)),
                _addr(family, k.saddr), from_be16(k.sport), _addr(family, k.daddr),
                from_be16(k.dport), v.lifetime - at, v.tx_packets, v.tx_bytes, v.rx_packets,
                v.rx_bytes, v.rev_nat_index, v.backend_id,
                tuple(n for bit, n in sorted(_FLAGS.items()) if v.flags & bit),
                _tcp_flags(v.tx_flags_seen, v.rx_flags_seen))


def gc(maps: Mapping[str, Map], at: int | None = None) -> dict[str, int]:
    """Delete expired entries; return how many per map."""
    at = now() if at is None else at
    removed = {}
    for name in CT_MAPS:
        if name not in maps:
            continue
        expired = [k for k, v in _entries(maps[name]) if v.lifetime < at]
        deleted = 0
        for k in expired:
            # One by one, re-checked: the datapath may have refreshed the entry
            # since the walk, or the LRU evicted it.
            current = maps[name].get(k)
            if current is None or current.lifetime >= at:
                continue
            try:
                maps[name].delete(k)
                deleted += 1
            except KeyError:
                pass
        removed[name] = deleted
    return removed


def flush(maps: Mapping[str, Map]) -> dict[str, int]:
    """Delete every entry."""
    return {name: maps[name].clear() for name in CT_MAPS if name in maps}
