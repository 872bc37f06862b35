"""A pure-Python reference model of from_container's service decisions (and,
with ``external=True``, from_netdev's for clients outside the node).

Small and obviously correct on purpose: given the LB state and a packet, it
says what the datapath must do: forward untouched, translate to a backend
(exactly which one when that is determined: an established flow, session
affinity, Maglev; one of a set for a random choice), answer a ping, or drop
with a reason.  Pods reach a frontend's internal backends
(``Frontend.internal``: the INT scope of a two-scope frontend), clients
outside the node its ``backends``; a LoadBalancer frontend with source ranges
drops other clients (177) before anything else, from either side.  The differential test feeds the same packets to the kernel
and to this model and compares.  Flow and affinity memory are kept here the
way the kernel keeps them in conntrack and the affinity map.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from harness import addressing
from harness.abi import drop_reasons
from harness.lb import flowhash, maglev
from harness.lb.model import ACTIVE, PROTOCOLS, Frontend, LbState

PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}


@dataclass(frozen=True)
class Packet:
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    proto: int                  # 6, 17, 1 (ICMP) or 58 (ICMPv6)
    sport: int = 0
    dport: int = 0
    syn: bool = False           # TCP SYN without ACK
    echo_request: bool = False  # ICMP(v6) echo request


@dataclass(frozen=True)
class Decision:
    action: str                         # "pass", "translate", "reply", "drop"
    drop_reason: int | None = None
    backends: frozenset[tuple] = frozenset()   # allowed (address, port) for "translate"
    frontend: Frontend | None = None
    new_flow: bool = False                     # a backend was chosen (not a held flow)


@dataclass
class ReferenceLb:
    state: LbState
    maglev_m: int
    maglev_seed: int
    flows: dict[tuple, tuple] = field(default_factory=dict)       # flow -> backend key
    affinity: dict[tuple, tuple] = field(default_factory=dict)    # (client, frontend) -> key
    _tables: dict[tuple, list[tuple]] = field(default_factory=dict)

    def update(self, state: LbState) -> None:
        self.state = state
        self._tables.clear()

    # -- what the kernel's maps would say --------------------------------------------
    def _backend_states(self) -> dict[tuple, str]:
        states: dict[tuple, str] = {}
        for f in self.state.frontends:
            for b in f.backends + (f.internal_backends or ()):
                states[b.key] = b.state
        return states

    def _table(self, f: Frontend, internal: bool) -> list[tuple]:
        key = (f.key, internal)
        if key not in self._tables:
            sel = f.selectable(internal)
            idx = maglev.build_table([b.key for b in sel], self.maglev_m)
            self._tables[key] = [sel[i].key for i in idx]
        return self._tables[key]

    def _cluster_ip_backends(self, addr) -> int | None:
        in_cidr = any(addr in net for net in (addressing.SERVICE_CIDR_V4,
                                               addressing.SERVICE_CIDR_V6))
        fes = [f for f in self.state.frontends if f.address == addr and f.type == "ClusterIP"]
        if not in_cidr or not fes:
            return None
        return sum(len(f.selectable()) for f in fes)

    # -- the decision ----------------------------------------------------------------------
    def decide(self, p: Packet, external: bool = False) -> Decision:
        """from_container's decision, or with *external* from_netdev's."""
        fe = None
        if p.proto in (6, 17):
            fe = self.state.by_key().get((p.daddr, p.dport, PROTO_NAMES[p.proto]))
        if external and (fe is None or fe.type == "ClusterIP"):
            return Decision("pass")
        if fe is not None and fe.source_ranges and \
                not any(p.saddr in net for net in fe.source_ranges if net.version == p.saddr.version):
            return Decision("drop", drop_reasons.CODES["DROP_NOT_IN_SRC_RANGE"], frontend=fe)
        if fe is None:
            vip_backends = self._cluster_ip_backends(p.daddr)
            if vip_backends is None:
                return Decision("pass")
            if p.echo_request:
                if vip_backends == 0:
                    return Decision("drop", drop_reasons.CODES["DROP_NO_SERVICE"])
                return Decision("reply")
            return Decision("drop", drop_reasons.CODES["DROP_IS_CLUSTER_IP"])

        flow = (p.saddr, p.sport, p.daddr, p.dport, p.proto)
        states = self._backend_states()
        held = self.flows.get(flow)
        if held is not None and held in states and not (states[held] != ACTIVE and p.syn):
            return Decision("translate", backends=frozenset({held[:2]}), frontend=fe)
        internal = not external
        selectable = fe.selectable(internal)
        if not selectable:
            return Decision("drop", drop_reasons.CODES["DROP_NO_SERVICE"], frontend=fe)
        if fe.affinity_timeout:
            pinned = self.affinity.get((p.saddr, fe.key, internal))
            if pinned is not None and states.get(pinned) == ACTIVE:
                return Decision("translate", backends=frozenset({pinned[:2]}), frontend=fe,
                                new_flow=True)
        if fe.maglev:
            h = (flowhash.flow_hash4 if p.saddr.version == 4 else flowhash.flow_hash6)(
                p.saddr, p.daddr, p.sport, p.dport, p.proto, self.maglev_seed)
            key = self._table(fe, internal)[h % self.maglev_m]
            return Decision("translate", backends=frozenset({key[:2]}), frontend=fe,
                            new_flow=True)
        return Decision("translate", backends=frozenset(b.key[:2] for b in selectable),
                        frontend=fe, new_flow=True)

    def observe(self, p: Packet, d: Decision, backend: tuple | None,
                external: bool = False) -> None:
        """Record what the kernel chose for a translated packet (random choices)."""
        if d.action != "translate" or backend is None or d.frontend is None:
            return
        key = (backend[0], backend[1], d.frontend.protocol)
        self.flows[(p.saddr, p.sport, p.daddr, p.dport, p.proto)] = key
        if d.frontend.affinity_timeout and d.new_flow:
            self.affinity[(p.saddr, d.frontend.key, not external)] = key
