"""Reading services back out of the LB maps, for ``chainbench services``.

Decodes the services, backends, source-range and counter maps as the kernel
holds them (whoever programmed them), into rows like ``cilium service list``
prints (a two-scope frontend's INT scope as the row's internal backends, a
LoadBalancer's loadBalancerSourceRanges as its source ranges);
``name_services`` adds the Service each frontend belongs to (from the scenario
the node was programmed from, matched by frontend address, port and protocol).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from harness.bpf import Map
import ipaddress

from harness.lb.entries import SCOPE_INT, SRC_RANGE_STATIC_PREFIX, SVC_FLAGS
from harness.lb.model import BACKEND_STATES, PROTOCOLS
from harness.abi.structs import Lb4SrcRangeKey, Lb6SrcRangeKey, from_be16, from_be32

_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}
_STATE_NAMES = {v: k for k, v in BACKEND_STATES.items()}
_TYPES = (("SVC_F_NODEPORT", "NodePort"), ("SVC_F_HOSTPORT", "HostPort"),
          ("SVC_F_EXTERNAL_IP", "ExternalIP"), ("SVC_F_LOADBALANCER", "LoadBalancer"),
          ("SVC_F_CLUSTERIP", "ClusterIP"))
_EXTRAS = (("SVC_F_AFFINITY", "affinity"), ("SVC_F_MAGLEV", "maglev"),
           ("SVC_F_LOCAL_SCOPE", "local"), ("SVC_F_INT_LOCAL", "internal-local"),
           ("SVC_F_TWO_SCOPES", "two-scopes"), ("SVC_F_SOURCE_RANGE", "source-ranges"))


@dataclass
class BackendRow:
    id: int
    address: str
    port: int
    protocol: str
    state: str

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol} ({self.state})"


@dataclass
class ServiceRow:
    id: int
    address: str
    port: int
    protocol: str
    type: str
    flags: list[str]
    affinity_timeout: int
    backends: list[BackendRow] = field(default_factory=list)
    packets: int = 0
    bytes: int = 0
    node: str = ""
    service: str = ""            # namespace/name; "" when no scenario names it
    labels: dict[str, str] = field(default_factory=dict)
    #: A two-scope frontend's INT scope: the backends pods and host processes reach
    #: (``backends``: what clients outside the node reach); None: one scope.
    internal_backends: list[BackendRow] | None = None
    #: loadBalancerSourceRanges: the clients allowed (CIDRs); []: every client.
    source_ranges: list[str] = field(default_factory=list)

    @property
    def frontend(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}/{self.protocol}"

    def to_json(self) -> dict:
        return {"node": self.node, "id": self.id, "service": self.service or None,
                "labels": self.labels, "frontend": self.frontend, "type": self.type,
                "flags": self.flags,
                "affinity_timeout": self.affinity_timeout, "packets": self.packets,
                "bytes": self.bytes,
                "backends": [b.__dict__ for b in self.backends],
                "internal_backends": None if self.internal_backends is None else
                [b.__dict__ for b in self.internal_backends],
                "source_ranges": list(self.source_ranges)}


def _address(family: int, raw) -> str:
    if family == 4:
        return str(from_be32(raw))
    return str(raw.ipv6())


def _type(flags: int) -> tuple[str, list[str]]:
    kind = next((name for flag, name in _TYPES if flags & SVC_FLAGS[flag]), "unknown")
    return kind, [name for flag, name in _EXTRAS if flags & SVC_FLAGS[flag]]


def read_backends(maps: Mapping[str, Map]) -> dict[int, BackendRow]:
    """Every backend of both families, by id."""
    rows = {}
    for family in (4, 6):
        for bid, b in maps[f"cb_lb{family}_backends"].items():
            rows[bid] = BackendRow(bid, _address(family, b.address), from_be16(b.port),
                                   _PROTO_NAMES.get(b.proto, str(b.proto)),
                                   _STATE_NAMES.get(b.state, str(b.state)))
    return rows


def read_source_ranges(maps: Mapping[str, Map], family: int) -> dict[int, list[str]]:
    """rev_nat_index -> its loadBalancerSourceRanges (CIDRs, sorted), from the LPM map."""
    out: dict[int, list] = {}
    m = maps.get(f"cb_lb{family}_source_range")
    if m is None:
        return {}
    key_type = Lb4SrcRangeKey if family == 4 else Lb6SrcRangeKey
    for k in m.keys():
        key = key_type.from_buffer_copy(bytes(k))
        addr = from_be32(key.address) if family == 4 else key.address.ipv6()
        net = ipaddress.ip_network(f"{addr}/{key.prefixlen - SRC_RANGE_STATIC_PREFIX}",
                                   strict=False)
        out.setdefault(key.rev_nat_index, []).append(net)
    return {rid: [str(n) for n in sorted(nets)] for rid, nets in out.items()}


def read_services(maps: Mapping[str, Map]) -> list[ServiceRow]:
    rows: list[ServiceRow] = []
    stats = maps.get("cb_lb_stats")
    for family in (4, 6):
        services, backends = maps[f"cb_lb{family}_services"], maps[f"cb_lb{family}_backends"]
        entries = list(services.items())
        masters = {}
        internal: dict[tuple, object] = {}      # frontend -> its INT scope's entry
        slots: dict[tuple, dict[int, int]] = {}
        for k, v in entries:
            frontend = (bytes(k.address) if family == 6 else k.address, k.dport, k.proto,
                        k.scope)
            if k.backend_slot == 0:
                if k.dport == 0 and k.proto == 0:
                    continue              # the address-only entry of a ClusterIP
                if k.scope == SCOPE_INT:
                    internal[frontend[:3]] = v
                else:
                    masters[frontend] = (k, v)
            else:
                slots.setdefault(frontend, {})[k.backend_slot] = v.backend_id
        backend_rows = {bid: BackendRow(bid, _address(family, b.address), from_be16(b.port),
                                        _PROTO_NAMES.get(b.proto, str(b.proto)),
                                        _STATE_NAMES.get(b.state, str(b.state)))
                        for bid, b in backends.items()}
        ranges = read_source_ranges(maps, family)

        def slot_rows(frontend: tuple, count: int) -> list[BackendRow]:
            ids = [slots.get(frontend, {}).get(slot) for slot in range(1, count + 1)]
            return [backend_rows[bid] for bid in ids if bid in backend_rows]

        for frontend, (k, v) in masters.items():
            kind, extras = _type(v.flags)
            row = ServiceRow(v.rev_nat_index, _address(family, k.address), from_be16(k.dport),
                             _PROTO_NAMES.get(k.proto, str(k.proto)), kind, extras,
                             v.affinity_timeout)
            row.backends = slot_rows(frontend, v.count)
            int_entry = internal.get(frontend[:3])
            if v.flags & SVC_FLAGS["SVC_F_TWO_SCOPES"] and int_entry is not None:
                row.internal_backends = slot_rows(frontend[:3] + (SCOPE_INT,), int_entry.count)
            if v.flags & SVC_FLAGS["SVC_F_SOURCE_RANGE"]:
                row.source_ranges = ranges.get(v.rev_nat_index, [])
            if stats is not None:
                per_cpu = stats.get(v.rev_nat_index) or []
                row.packets = sum(c.packets for c in per_cpu)
                row.bytes = sum(c.bytes for c in per_cpu)
            rows.append(row)
    rows.sort(key=lambda r: r.id)
    return rows


def name_services(rows: list[ServiceRow], node: str,
                  names: Mapping[tuple[str, int, str], tuple[str, dict]]) -> None:
    """Set each row's node and, where *names* knows its frontend, its Service and labels."""
    for r in rows:
        r.node = node
        r.service, r.labels = names.get((r.address, r.port, r.protocol), ("", {}))


def format_table(rows: list[ServiceRow], node_column: bool = False,
                 wide: bool = False) -> list[tuple[str, ...]]:
    """Rows of [NODE,] ID, FRONTEND, SERVICE, TYPE, BACKENDS (one per line), PACKETS, BYTES
    [, LABELS] (see header())."""
    out = []
    for r in rows:
        kind = r.type + (f" ({', '.join(r.flags)})" if r.flags else "")
        first = f"1 => {r.backends[0]}" if r.backends else "(no backends)"
        labels = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items()))
        lines = [(str(r.id), r.frontend, r.service or "<unknown>", kind, first, str(r.packets),
                  str(r.bytes), labels)]
        for i, b in enumerate(r.backends[1:], start=2):
            lines.append(("", "", "", "", f"{i} => {b}", "", "", ""))
        if r.internal_backends is not None:     # the INT scope: pods and host processes
            lines += [("", "", "", "", f"internal {i} => {b}", "", "", "")
                      for i, b in enumerate(r.internal_backends, start=1)] or \
                [("", "", "", "", "internal: (no backends)", "", "", "")]
        if r.source_ranges:
            lines.append(("", "", "", "", f"source ranges {', '.join(r.source_ranges)}",
                          "", "", ""))
        for n, line in enumerate(lines):
            cells = line if wide else line[:-1]
            out.append(((r.node if n == 0 else "",) if node_column else ()) + cells)
    return out


def header(node_column: bool = False, wide: bool = False) -> tuple[str, ...]:
    cols = ("ID", "FRONTEND", "SERVICE", "TYPE", "BACKEND", "PACKETS", "BYTES")
    return (("NODE",) if node_column else ()) + cols + (("LABELS",) if wide else ())
