"""A model of one chainbench node written from SPEC.md and the RFCs (not from
harness/lb/reference.py or harness/policy/reference.py): given a frame and the
program it enters, predict the verdict and the exact output bytes, keeping its own
conntrack, SNAT and fragment tables.

Where the spec leaves a choice to the datapath (the backend of a new service flow,
the SNAT port of a NodePort flow to a remote backend) the model reads the choice
from the output packet, checks it is allowed, and holds the datapath to it.

Checksums of rewritten packets are computed from scratch (RFC 1071) when the input
checksum was valid and the covered data is all there; otherwise (a first fragment,
a truncated quote, a deliberately bad checksum) the RFC 1624 update is applied, so
the input's error is carried, never repaired or introduced.

step() returns a list of mismatch descriptions (empty: the datapath agreed).  Each
prediction carries tags naming the features it depends on (rfc.Parsed.tags and
the ones added here: fragment tracking, SCTP, quoted extension headers...), so a
mismatch report points at the area of the datapath involved.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from . import rfc
from .rfc import ICMP, ICMP6, SCTP, TCP, UDP

PASS, REDIRECT = "pass", "redirect"
DROP_INVALID_SIP, DROP_POLICY, DROP_INVALID, DROP_FRAG = 132, 133, 134, 157
DROP_NO_SERVICE, DROP_NAT_NO_MAPPING, DROP_IS_CLUSTER_IP, DROP_POLICY_DENY = 158, 167, 174, 181
ID_WORLD = 2
ICMP4_ERRORS, ICMP6_ERRORS = (3, 11, 12), (1, 2, 3, 4)
ECHO_REQ = {False: 8, True: 128}
ECHO_REP = {False: 0, True: 129}
SNAT_LO, SNAT_HI = 32768, 65535
INGRESS, EGRESS, SERVICE = "in", "eg", "svc"


@dataclass
class Rule:
    deny: bool
    identity: int            # 0: any
    proto: int               # 0: any (ports then any)
    lo: int = 0
    hi: int = 65535


@dataclass
class DirPolicy:
    enforced: bool = False
    rules: tuple = ()


@dataclass
class Pod:
    name: str
    ep_id: int
    identity: int
    ip4: bytes | None
    ip6: bytes | None
    ingress: DirPolicy = field(default_factory=DirPolicy)
    egress: DirPolicy = field(default_factory=DirPolicy)
    revision: int = 1

    def addr(self, v6: bool) -> bytes | None:
        return self.ip6 if v6 else self.ip4


@dataclass
class Service:
    frontend: tuple          # (addr bytes, port): what replies are translated back to
    backends: list           # [(addr bytes, port)]
    clusterip_only: bool


@dataclass
class Entry:
    rev_nat: tuple | None = None     # frontend (addr, port)
    unverified: bool = False
    rev: int = 0
    backend: tuple | None = None     # service entries


@dataclass
class Expect:
    verdict: object                  # PASS, REDIRECT or a drop reason
    out: bytes | None = None
    tags: set = field(default_factory=set)


def _p16(b: bytearray, off: int, v: int) -> None:
    b[off:off + 2] = struct.pack("!H", v)


def _g16(b, off: int) -> int:
    return struct.unpack_from("!H", b, off)[0]


def fmt(a: bytes) -> str:
    return str(ipaddress.ip_address(a)) if a else "-"


class Oracle:
    def __init__(self, node4: bytes, node6: bytes, local4: str, local6: str):
        self.pods: dict[str, Pod] = {}
        self.services: dict[tuple, Service] = {}      # (addr, port, proto) -> Service
        self.vips: dict[bytes, int] = {}              # ClusterIP -> backends over its ports
        self.ipcache: list[tuple] = []                # (network, identity)
        self.ct: dict[tuple, Entry] = {}
        self.snat_fwd: dict[tuple, int] = {}          # (v6, client, cport, be, bport, proto) -> port
        self.snat_rev: dict[tuple, tuple] = {}        # (v6, be, bport, proto, port) -> (client, cport, frontend)
        self.frags: dict[tuple, tuple] = {}           # (v6, src, dst, proto, ident) -> (sport, dport)
        self.node = {False: node4, True: node6}
        self.local = {False: ipaddress.ip_network(local4), True: ipaddress.ip_network(local6)}
        self._ipc_cache: dict[bytes, int] = {}

    # -- configuration ------------------------------------------------------------------
    def add_pod(self, pod: Pod) -> None:
        self.pods[pod.name] = pod

    def add_service(self, addr: str, port: int, proto: int, frontend: tuple, backends: list,
                    clusterip_only: bool, vip: bool) -> None:
        a = rfc.addr(addr)
        self.services[(a, port, proto)] = Service(frontend, backends, clusterip_only)
        if vip:
            self.vips[a] = self.vips.get(a, 0) + len(backends)

    def set_ipcache(self, entries: list[tuple[str, int]]) -> None:
        self.ipcache = [(ipaddress.ip_network(n), i) for n, i in entries]
        self._ipc_cache.clear()

    def set_policy(self, name: str, ingress: DirPolicy, egress: DirPolicy) -> None:
        pod = self.pods[name]
        if (pod.ingress, pod.egress) != (ingress, egress):
            pod.ingress, pod.egress = ingress, egress
            pod.revision += 1

    def identity(self, a: bytes) -> int:
        got = self._ipc_cache.get(a)
        if got is None:
            ip = ipaddress.ip_address(a)
            best, got = -1, ID_WORLD
            for net, ident in self.ipcache:
                if net.version == ip.version and ip in net and net.prefixlen > best:
                    best, got = net.prefixlen, ident
            self._ipc_cache[a] = got
        return got

    # -- policy (SPEC.md 5c, 5d) ---------------------------------------------------
    @staticmethod
    def policy(d: DirPolicy, identity: int, proto: int, port: int, later: bool) -> object:
        has_deny = any(r.deny for r in d.rules)
        if later:
            if has_deny:
                return DROP_FRAG
            proto, port = 0, 0

        def match(r: Rule, ident: int) -> bool:
            if r.identity != ident:
                return False
            if r.proto == 0:
                return True
            return r.proto == proto and r.lo <= port <= r.hi
        for deny in (True, False):
            if not deny and not d.enforced:
                return PASS
            for ident in (identity, 0):
                if any(r.deny == deny and match(r, ident) for r in d.rules):
                    return DROP_POLICY_DENY if deny else PASS
        return DROP_POLICY

    # -- the public step ----------------------------------------------------------------
    def step(self, program: str, pod: str | None, data: bytes, verdict: object,
             out: bytes) -> list[str]:
        """Predict, compare with what the datapath did, and commit the model's state."""
        self._choice = None
        self._commit: list = []
        self._always: list = []
        self._tags: set = set()
        exp = self.predict(program, pod, data, out)
        problems = []
        if exp.verdict != verdict:
            problems.append(f"verdict: expected {exp.verdict}, got {verdict}")
        elif exp.verdict in (PASS, REDIRECT) and exp.out != out:
            problems.append("bytes: " + describe_diff(exp.out, out))
        if self._choice:
            problems.append(self._choice)
        if problems:
            tags = sorted(self._tags | exp.tags)
            problems = [f"{p} [tags: {','.join(tags) or 'none'}]" for p in problems]
            return problems
        for fn in self._always + self._commit:
            fn()
        return []

    def predict(self, program: str, pod: str | None, data: bytes, out: bytes) -> Expect:
        p = rfc.parse(data)
        self._tags |= p.tags
        if p.kind == "invalid":
            return Expect(DROP_INVALID)
        if p.kind == "other":
            return Expect(PASS, data)
        self._frag_ports(p)
        if program == "from_container":
            return self.from_container(self.pods[pod], p, data, out)
        if program == "to_container":
            return self.to_container(self.pods[pod], p, data)
        return self.from_netdev(p, data, out)

    # -- fragments (Cilium: a later fragment gets the ports its first fragment had) -----
    def _frag_ports(self, p: rfc.Parsed) -> None:
        if not p.frag:
            return
        key = (p.v6, p.src, p.dst, p.proto, p.ident)
        if not p.later and p.has_l4 and p.proto in (TCP, UDP, SCTP):
            ports = (p.sport, p.dport)
            self._always.append(lambda: self.frags.__setitem__(key, ports))
        elif p.later and key in self.frags:
            p.sport, p.dport = self.frags[key]
            p.has_l4 = True
            p.tags.add("frag-tracking")
            self._tags.add("frag-tracking")

    # -- conntrack helpers --------------------------------------------------------------
    @staticmethod
    def tuple_ports(p: rfc.Parsed) -> tuple[int, int] | None:
        """Ports as conntrack keys them; None for untracked ICMP."""
        if not p.has_l4:
            return 0, 0
        if p.proto in (ICMP, ICMP6):
            if p.type == ECHO_REQ[p.v6] and p.proto == (ICMP6 if p.v6 else ICMP):
                return p.sport, 0
            if p.type == ECHO_REP[p.v6] and p.proto == (ICMP6 if p.v6 else ICMP):
                return 0, p.sport
            return None
        return p.sport, p.dport

    def _later(self, p) -> bool:
        return p.later and not p.has_l4

    def _policy_port(self, p) -> int:
        if not p.has_l4:
            return 0
        return p.type if p.proto in (ICMP, ICMP6) else p.dport

    def _create(self, key, entry) -> None:
        self._commit.append(lambda: self.ct.__setitem__(key, entry))

    # -- rewriting ----------------------------------------------------------------------
    def rewrite(self, p: rfc.Parsed, data: bytes, *, src=None, sport=None, dst=None,
                dport=None) -> bytes:
        """The packet with its source and/or destination address and port replaced,
        every checksum that covers them recomputed."""
        b = bytearray(data)
        l3 = p.l3
        a_off = (l3 + 8, l3 + 24) if p.v6 else (l3 + 12, l3 + 16)
        alen = 16 if p.v6 else 4
        if src is not None:
            b[a_off[0]:a_off[0] + alen] = src
        if dst is not None:
            b[a_off[1]:a_off[1] + alen] = dst
        ports_rewritable = p.has_l4 and not p.later and p.proto in (TCP, UDP)
        if ports_rewritable:
            if sport is not None:
                _p16(b, p.l4, sport)
            if dport is not None:
                _p16(b, p.l4 + 2, dport)
        if not p.v6:
            hl = (b[l3] & 0xF) * 4
            self._recheck(data, b, l3 + 10, data[l3:l3 + hl], b[l3:l3 + hl], complete=True)
        if p.has_l4 and not p.later and p.proto in (TCP, UDP, ICMP6):
            if p.proto == ICMP6 and not p.v6:
                return bytes(b)
            self._l4_recheck(p, data, b)
        return bytes(b)

    def _pseudo(self, p, buf, length) -> bytes:
        l3 = p.l3
        if p.v6:
            return bytes(buf[l3 + 8:l3 + 40]) + struct.pack("!IxxxB", length, p.proto)
        return bytes(buf[l3 + 12:l3 + 20]) + struct.pack("!BBH", 0, p.proto, length)

    def _l4_recheck(self, p, old: bytes, new: bytearray) -> None:
        off = p.l4 + rfc.l4_checksum_offset(p.proto)
        length = p.end - p.l4
        if p.proto == UDP and _g16(old, off) == 0:
            if p.v6:
                self._tags.add("v6-udp-zero")
            return                       # RFC 768: no checksum; kept over IPv4 and IPv6
        cov_old = self._pseudo(p, old, length) + bytes(old[p.l4:p.end])
        cov_new = self._pseudo(p, new, length) + bytes(new[p.l4:p.end])
        self._recheck(old, new, off, cov_old, cov_new, complete=not p.frag,
                      cover_off=len(cov_old) - length + (off - p.l4), udp=p.proto == UDP)

    @staticmethod
    def _recheck(old: bytes, new: bytearray, off: int, cov_old: bytes, cov_new, *,
                 complete: bool, cover_off: int | None = None, udp: bool = False) -> None:
        """Set the checksum at new[off] for the covered data cov_new (which holds the
        checksum field at cover_off, default: off relative to a cover that starts at
        the IP header)."""
        ck = _g16(old, off)
        co = 10 if cover_off is None else cover_off   # default: an IPv4 header's bytes 10-11
        zo = bytearray(cov_old)
        zn = bytearray(cov_new)
        zo[co:co + 2] = b"\0\0"
        zn[co:co + 2] = b"\0\0"
        if complete and rfc.ones_sum(bytes(zo), ck) == 0xFFFF:
            c = rfc.checksum(bytes(zn))
        else:
            if len(zo) & 1:
                zo += b"\0"
                zn += b"\0"
            c = rfc.incremental(ck, bytes(zo), bytes(zn))
        if udp and c == 0:
            c = 0xFFFF
        _p16(new, off, c)

    # -- ICMP errors --------------------------------------------------------------------
    def quote(self, p: rfc.Parsed, data: bytes) -> dict | None:
        """The packet an ICMP error quotes, if it can be read inside the error."""
        q0, end = p.l4 + 8, p.end
        if p.v6:
            if q0 + 40 > end or data[q0] >> 4 != 6:
                return None
            qp = rfc.Parsed()
            nh, cur, err = rfc.parse_ipv6_chain(qp, data, data[q0 + 6], q0 + 40, end)
            if err or qp.later:
                return None
            if qp.ext:
                self._tags.add("icmp6-quote-exthdr")
            src, dst, hl_end = data[q0 + 8:q0 + 24], data[q0 + 24:q0 + 40], cur
            proto = nh
        else:
            if q0 + 20 > end:
                return None
            vihl = data[q0]
            hl = (vihl & 0xF) * 4
            if vihl >> 4 != 4 or hl < 20 or q0 + hl > end:
                return None
            if _g16(data, q0 + 6) & 0x1FFF:
                return None
            src, dst, hl_end, proto = data[q0 + 12:q0 + 16], data[q0 + 16:q0 + 20], q0 + hl, data[q0 + 9]
        if proto in (TCP, UDP, SCTP):
            if hl_end + 4 > end:
                return None
            sport, dport = struct.unpack_from("!HH", data, hl_end)
            if proto == SCTP:
                self._tags.add("sctp")
        elif proto == (ICMP6 if p.v6 else ICMP):
            if hl_end + 8 > end:
                return None
            t, ident = data[hl_end], _g16(data, hl_end + 4)
            self._tags.add("quote-icmp")
            if t == ECHO_REQ[p.v6]:
                sport, dport = ident, 0
            elif t == ECHO_REP[p.v6]:
                sport, dport = 0, ident
            else:
                return None
        else:
            return None
        return {"q0": q0, "l4": hl_end, "proto": proto, "src": src, "dst": dst,
                "sport": sport, "dport": dport}

    def related(self, p: rfc.Parsed, data: bytes, own: bytes, to_pod: bool):
        """The live verified entry an ICMP error about the pod's own connection names."""
        if (p.end - p.l3) > (1280 if p.v6 else 576):
            return None, None
        q = self.quote(p, data)
        if q is None:
            return None, None
        if to_pod:
            if p.dst != own or q["src"] != own:
                return None, None
        elif q["dst"] != own or q["src"] != p.dst:
            return None, None
        fwd = (p.v6, q["src"], q["dst"], q["sport"], q["dport"], q["proto"])
        rev = (p.v6, q["dst"], q["src"], q["dport"], q["sport"], q["proto"])
        # The pod's own connection: what it sent is an egress entry, what it received an
        # ingress one (to_pod: Q is the pod's packet; else Q is a packet to the pod).
        keys = ((fwd + (EGRESS,), rev + (INGRESS,)) if to_pod else
                (fwd + (INGRESS,), rev + (EGRESS,)))
        for k in keys:
            e = self.ct.get(k)
            if e is not None:
                return (e, q) if not e.unverified else (None, None)
        return None, None

    def rewrite_error(self, p, data: bytes, q: dict, frontend: tuple) -> bytes:
        """Reverse-translate an error about a service flow (RFC 5508 4.2 style)."""
        vip, vport = frontend
        b = bytearray(data)
        alen = 16 if p.v6 else 4
        q0, ql4 = q["q0"], q["l4"]
        old_qdst = q["dst"]
        osrc = (p.l3 + 8) if p.v6 else (p.l3 + 12)
        if bytes(b[osrc:osrc + alen]) == old_qdst:
            b[osrc:osrc + alen] = vip
        qdst = (q0 + 24) if p.v6 else (q0 + 16)
        b[qdst:qdst + alen] = vip
        if not p.v6:
            qhl = (b[q0] & 0xF) * 4
            self._recheck(data, b, q0 + 10, data[q0:q0 + qhl], b[q0:q0 + qhl],
                          complete=True)
        proto = q["proto"]
        if proto in (TCP, UDP):
            _p16(b, ql4 + 2, vport)
            co = ql4 + rfc.l4_checksum_offset(proto)
            if co + 2 <= p.end:
                qck = _g16(data, co)
                if not (proto == UDP and qck == 0):
                    c = rfc.incremental(qck, old_qdst + struct.pack("!H", q["dport"]),
                                        vip + struct.pack("!H", vport))
                    if proto == UDP and c == 0:
                        c = 0xFFFF
                    _p16(b, co, c)
                elif p.v6:
                    self._tags.add("v6-udp-zero")
            elif co + 2 <= len(data):
                self._tags.add("icmp-quote-bound")
        # The outer checksums, over everything the rewrite touched.
        if not p.v6:
            hl = (data[p.l3] & 0xF) * 4
            self._recheck(data, b, p.l3 + 10, data[p.l3:p.l3 + hl], b[p.l3:p.l3 + hl],
                          complete=True)
            self._recheck(data, b, p.l4 + 2, data[p.l4:p.end], b[p.l4:p.end], complete=True,
                          cover_off=2)
        else:
            ln = p.end - p.l4
            cov_o = self._pseudo(p, data, ln) + bytes(data[p.l4:p.end])
            cov_n = self._pseudo(p, b, ln) + bytes(b[p.l4:p.end])
            self._recheck(data, b, p.l4 + 2, cov_o, cov_n, complete=True, cover_off=40 + 2)
        return bytes(b)

    def echo_reply(self, p, data: bytes) -> bytes:
        b = bytearray(data)
        b[0:6], b[6:12] = data[6:12], data[0:6]
        l3 = p.l3
        if p.v6:
            b[l3 + 8:l3 + 24], b[l3 + 24:l3 + 40] = data[l3 + 24:l3 + 40], data[l3 + 8:l3 + 24]
            b[l3 + 7] = 64
        else:
            b[l3 + 12:l3 + 16], b[l3 + 16:l3 + 20] = data[l3 + 16:l3 + 20], data[l3 + 12:l3 + 16]
            b[l3 + 8] = 64
            hl = (data[l3] & 0xF) * 4
            self._recheck(data, b, l3 + 10, data[l3:l3 + hl], b[l3:l3 + hl], complete=True)
        b[p.l4] = ECHO_REP[p.v6]
        b[p.l4 + 1] = 0
        ln = p.end - p.l4
        if p.v6:
            cov_o = self._pseudo(p, data, ln) + bytes(data[p.l4:p.end])
            cov_n = self._pseudo(p, b, ln) + bytes(b[p.l4:p.end])
            self._recheck(data, b, p.l4 + 2, cov_o, cov_n, complete=True, cover_off=42)
        else:
            self._recheck(data, b, p.l4 + 2, data[p.l4:p.end], b[p.l4:p.end], complete=True,
                          cover_off=2)
        return bytes(b)

    # -- services -----------------------------------------------------------------------
    def translate(self, p, data: bytes, svc: Service, out: bytes):
        """DNAT a packet to a frontend: (new bytes, backend) or (drop reason, None)."""
        if not svc.backends:
            return DROP_NO_SERVICE, None
        if p.proto == SCTP:
            self._tags.add("sctp")
        skey = (p.v6, p.src, p.dst, p.sport, p.dport, p.proto, SERVICE)
        e = self.ct.get(skey)
        if e is not None and e.backend in svc.backends:
            be = e.backend
        else:
            be = self._chosen_backend(p, svc, out)
            self._create(skey, Entry(rev_nat=svc.frontend, backend=be))
        port = be[1] if p.proto in (TCP, UDP) else None
        return self.rewrite(p, data, dst=be[0], dport=port), be

    def _chosen_backend(self, p, svc: Service, out: bytes) -> tuple:
        """The backend the datapath picked, read from its output; it must be one of
        the service's backends (spec: random choice)."""
        op = rfc.parse(out) if out else None
        if op is not None and op.kind == "ip" and op.v6 == p.v6:
            dport = op.dport if (op.has_l4 and p.proto in (TCP, UDP)) else None
            for be in svc.backends:
                if be[0] == op.dst and (dport is None or be[1] == dport):
                    return be
        return svc.backends[0]

    # -- programs -----------------------------------------------------------------------
    def _ndp(self, p, from_pod: bool) -> bool:
        """RFC 4861 NDP (hop limit 255); from a pod only to a link-scoped destination
        (fe80::/10, or multicast of link scope), which the node never routes on."""
        if not (p.v6 and p.proto == ICMP6 and p.has_l4 and 133 <= p.type <= 137
                and p.hlim == 255):
            return False
        return not from_pod or rfc.link_scoped6(p.dst)

    def _is_error(self, p) -> bool:
        if not p.has_l4 or p.later:
            return False
        if p.v6:
            return p.proto == ICMP6 and p.type in ICMP6_ERRORS
        return p.proto == ICMP and p.type in ICMP4_ERRORS

    def from_container(self, pod: Pod, p, data: bytes, out: bytes) -> Expect:
        if self._ndp(p, from_pod=True):
            return Expect(PASS, data)
        own = pod.addr(p.v6)
        if own is None or p.src != own:
            return Expect(DROP_INVALID_SIP)
        svc = None
        if p.has_l4 and p.proto in (TCP, UDP, SCTP):
            svc = self.services.get((p.dst, p.dport, p.proto))
        rev_nat = None
        if svc is not None:
            res, be = self.translate(p, data, svc, out)
            if be is None:
                return Expect(res)
            data, old = res, p
            p = rfc.parse(data)
            if old.later:               # ports from fragment tracking
                p.sport, p.has_l4 = old.sport, True
                p.dport = be[1] if old.proto in (TCP, UDP) else old.dport
            rev_nat = svc.frontend
        elif p.dst in self.vips:
            if (p.has_l4 and not p.later and p.proto == (ICMP6 if p.v6 else ICMP)
                    and p.type == ECHO_REQ[p.v6]):
                if not self.vips[p.dst]:
                    return Expect(DROP_NO_SERVICE)
                if p.frag:
                    return Expect(DROP_FRAG)
                return Expect(REDIRECT, self.echo_reply(p, data))
            if p.later:
                return Expect(DROP_FRAG)
            return Expect(DROP_IS_CLUSTER_IP)
        if self._is_error(p):
            e, _ = self.related(p, data, own, to_pod=False)
            if e is not None:
                return Expect(PASS, data)
        ports = self.tuple_ports(p)
        remote = self.identity(p.dst)
        if ports is None:
            v = self.policy(pod.egress, remote, p.proto, self._policy_port(p), self._later(p))
            return Expect(v, data if v == PASS else None)
        t = (p.v6, p.src, p.dst, ports[0], ports[1], p.proto)
        rt = (p.v6, p.dst, p.src, ports[1], ports[0], p.proto)
        e = self.ct.get(t + (EGRESS,))
        if e is not None:
            if e.rev_nat != rev_nat:
                self._commit.append(lambda: setattr(e, "rev_nat", rev_nat))
            if e.rev != pod.revision:
                v = self.policy(pod.egress, remote, p.proto, self._policy_port(p), self._later(p))
                if v != PASS:
                    return Expect(v)
                rev = pod.revision
                self._commit.append(lambda: setattr(e, "rev", rev))
            return Expect(PASS, data)
        r = self.ct.get(rt + (INGRESS,))
        if r is not None and not r.unverified:
            if r.rev_nat is not None:
                return Expect(PASS, self.rewrite(p, data, src=r.rev_nat[0], sport=r.rev_nat[1]))
            return Expect(PASS, data)
        v = self.policy(pod.egress, remote, p.proto, self._policy_port(p), self._later(p))
        if v != PASS:
            self._commit.clear()        # a dropped packet leaves no state behind
            return Expect(v)
        self._create(t + (EGRESS,), Entry(rev_nat=rev_nat, rev=pod.revision))
        return Expect(PASS, data)

    def to_container(self, pod: Pod, p, data: bytes) -> Expect:
        if self._ndp(p, from_pod=False):
            return Expect(PASS, data)
        own = pod.addr(p.v6)
        if self._is_error(p) and own is not None:
            e, q = self.related(p, data, own, to_pod=True)
            if e is not None:
                if e.rev_nat is not None:
                    return Expect(PASS, self.rewrite_error(p, data, q, e.rev_nat))
                return Expect(PASS, data)
        ports = self.tuple_ports(p)
        remote = self.identity(p.src)
        if ports is None:
            v = self.policy(pod.ingress, remote, p.proto, self._policy_port(p), self._later(p))
            return Expect(v, data if v == PASS else None)
        t = (p.v6, p.src, p.dst, ports[0], ports[1], p.proto)
        rt = (p.v6, p.dst, p.src, ports[1], ports[0], p.proto)
        r = self.ct.get(rt + (EGRESS,))
        if r is not None:
            if r.rev_nat is not None:
                return Expect(PASS, self.rewrite(p, data, src=r.rev_nat[0], sport=r.rev_nat[1]))
            return Expect(PASS, data)
        e = self.ct.get(t + (INGRESS,))
        if e is not None:
            if e.unverified or e.rev != pod.revision:
                v = self.policy(pod.ingress, remote, p.proto, self._policy_port(p), self._later(p))
                if v != PASS:
                    return Expect(v)
                rev = pod.revision

                def verify():
                    e.rev, e.unverified = rev, False
                self._commit.append(verify)
            return Expect(PASS, data)
        v = self.policy(pod.ingress, remote, p.proto, self._policy_port(p), self._later(p))
        if v != PASS:
            self._commit.clear()
            return Expect(v)
        self._create(t + (INGRESS,), Entry(rev=pod.revision))
        return Expect(PASS, data)

    def from_netdev(self, p, data: bytes, out: bytes) -> Expect:
        if not p.has_l4 or p.proto not in (TCP, UDP, SCTP):
            return Expect(PASS, data)
        if p.proto == SCTP:
            self._tags.add("sctp")
        node = self.node[p.v6]
        if p.dst == node:
            back = self.snat_rev.get((p.v6, p.src, p.sport, p.proto, p.dport))
            if back is not None:
                client, cport, fe = back
                d = self.rewrite(p, data, dst=client, dport=cport)
                return Expect(PASS, self.rewrite(rfc.parse(d), d, src=fe[0], sport=fe[1]))
        svc = self.services.get((p.dst, p.dport, p.proto))
        if svc is None or svc.clusterip_only:
            return Expect(PASS, data)
        client, cport = p.src, p.sport
        res, be = self.translate(p, data, svc, out)
        if be is None:
            return Expect(res)
        bport = be[1] if p.proto in (TCP, UDP) else p.dport
        if ipaddress.ip_address(be[0]) in self.local[p.v6]:
            key = (p.v6, client, be[0], cport, bport, p.proto, INGRESS)
            e = self.ct.get(key)
            if e is not None:
                self._commit.append(lambda: setattr(e, "rev_nat", svc.frontend))
            else:
                self._create(key, Entry(rev_nat=svc.frontend, unverified=True))
            return Expect(PASS, res)
        fkey = (p.v6, client, cport, be[0], bport, p.proto)
        port = self.snat_fwd.get(fkey)
        if port is None:
            port = self._snat_port(p, out, be, bport)
            rkey = (p.v6, be[0], bport, p.proto, port)
            val = (client, cport, svc.frontend)

            def remember():
                self.snat_fwd[fkey] = port
                self.snat_rev[rkey] = val
            self._commit.append(remember)
        return Expect(PASS, self.rewrite(rfc.parse(res), res, src=node, sport=port))

    def _snat_port(self, p, out: bytes, be, bport) -> int:
        op = rfc.parse(out) if out else None
        port = op.sport if (op is not None and op.kind == "ip" and op.has_l4) else None
        if port is None or not SNAT_LO <= port <= SNAT_HI:
            self._choice = f"SNAT port {port} outside [{SNAT_LO}, {SNAT_HI}]"
            self._tags.add("snat-port")
            return SNAT_LO
        if (p.v6, be[0], bport, p.proto, port) in self.snat_rev:
            self._choice = f"SNAT port {port} already maps another flow to {fmt(be[0])}:{bport}"
            self._tags.add("snat-port")
        return port


def describe_diff(exp: bytes | None, got: bytes | None) -> str:
    if exp is None or got is None:
        return f"expected {exp!r} got {got!r}"
    if len(exp) != len(got):
        return f"length: expected {len(exp)}, got {len(got)}\n  exp {exp.hex()}\n  got {got.hex()}"
    diffs = [i for i in range(len(exp)) if exp[i] != got[i]]
    spans = ", ".join(f"@{i}: {exp[i]:02x}->{got[i]:02x}" for i in diffs[:12])
    return f"{len(diffs)} bytes differ ({spans})\n  exp {exp.hex()}\n  got {got.hex()}"
