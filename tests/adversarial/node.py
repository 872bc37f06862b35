"""One node of the adversarial suite: its pods, services, policies and ipcache, loaded
with every map shared (tests/nodekit.py), plus a fast bytes-in/bytes-out runner and
cheap snapshots of the state a packet may create (conntrack and SNAT).

Shared by tests/test_adversarial_*.py and the differential stage (oracle.py).  Usage::

    from tests.adversarial.node import AdvNode, WEB, CLIENT, VIP4   # or: from .adversarial.node
    def test_x(load):                       # `load` is the conftest fixture
        n = AdvNode(load)                   # ct_max=64 to shrink cb_ct4/cb_ct6
        try:
            out = n.run("from_container", "client", frame_bytes)   # -> Outcome
            out.verdict, out.reason, out.data     # "TC_ACT_OK"/"TC_ACT_SHOT"/..., 134, bytes
            before = n.snapshot(); ...; n.snapshot() - before  # new (map, key) pairs
        finally:
            n.close()

Topology (all on node cb-node0; identities are Cilium-style numbers)::

    world 203.0.113.9 / 2001:db8:4::9 (identity 2)     node cb-node0 198.19.128.1 / 2001:db8:3::1
    router 203.0.113.254 / 2001:db8:4::fe              (identity 1, host)
         |
     from_netdev --+-- web    198.18.0.20 2001:db8:1::20  ep 2 id 1001
                   |         ingress enforced: TCP 80 and TCP 8080 from client only;
                   |         egress: not enforced
                   +-- x      198.18.0.30 2001:db8:1::30  ep 3 id 1002  no policy (the attacker)
                   +-- client 198.18.0.40 2001:db8:1::40  ep 4 id 1003
                   |         egress enforced: TCP 80 to world, ICMP(v4) any type to host
                   |         ingress enforced: nothing allowed (default deny)
                   +-- d      198.18.0.50 2001:db8:1::50  ep 5 id 1004
                             egress enforced: DENY TCP 22 to world, allow any protocol to world
                             ingress enforced: DENY anything from x, allow any protocol from any
    remote pod (node cb-node1) 198.18.1.20 / 2001:db8:1:1::20  id 1005

Services (ipFamilies as named; targetPort differs from port, so DNAT changes the port):
  svc4   ClusterIP 198.19.0.10:80 TCP and UDP -> :8080 on web (local) and 198.18.1.20 (remote)
  svc6   ClusterIP 2001:db8:2::10 port 80 TCP and UDP -> :8080 on web6 and 2001:db8:1:1::20
  nplocal  NodePort 198.19.0.20:80 TCP, nodePort 31313 -> web:8080 (local backend only)
  npremote NodePort 198.19.0.21:80 TCP, nodePort 31314 -> 198.18.1.21:8080 (remote: SNAT)
  An address in the service CIDR with no service (198.19.0.99) is a ClusterIP miss (174).

Programs: "from_container" / "to_container" need a pod name; "from_netdev" takes none.
"""
from __future__ import annotations

import ctypes
import errno as _errno
import ipaddress
from dataclasses import dataclass
from typing import Callable

from harness import addressing
from harness.node import datapath
from harness.bpf import BpfError, Collection
from harness.bpf import _libbpf as L
from harness.lb.desired import lb_state
from harness.policy.model import (ANY_IDENTITY, ANY_PORT, ANY_PROTO, ID_HOST, ID_WORLD,
                                  EndpointPolicy, IpcacheEntry, PolicyState, PortRange, Rule)
from harness.policy.control import PolicyControl

from .. import lbkit as K
from ..nodekit import Node

# -- addresses and identities ------------------------------------------------------------
NODE_NAME = "cb-node0"
NODE4, NODE6 = str(addressing.node_ip4(0)), str(addressing.node_ip6(0))
WORLD, WORLD2, ROUTER = "203.0.113.9", "203.0.113.77", "203.0.113.254"
WORLD6, WORLD6_2, ROUTER6 = "2001:db8:4::9", "2001:db8:4::77", "2001:db8:4::fe"
REMOTE, REMOTE6 = "198.18.1.20", "2001:db8:1:1::20"       # a pod on cb-node1
REMOTE_NP = "198.18.1.21"                                  # npremote's backend
TCP_, UDP_, ICMP_, ICMP6_, SCTP_ = 6, 17, 1, 58, 132


@dataclass(frozen=True)
class Pod:
    name: str
    ep_id: int
    ip4: str
    ip6: str
    identity: int


PODS = {
    "web": Pod("web", 2, "198.18.0.20", "2001:db8:1::20", 1001),
    "x": Pod("x", 3, "198.18.0.30", "2001:db8:1::30", 1002),
    "client": Pod("client", 4, "198.18.0.40", "2001:db8:1::40", 1003),
    "d": Pod("d", 5, "198.18.0.50", "2001:db8:1::50", 1004),
}
WEB, X, CLIENT, D = (PODS[p].ip4 for p in ("web", "x", "client", "d"))
WEB6, X6, CLIENT6, D6 = (PODS[p].ip6 for p in ("web", "x", "client", "d"))
WEB_ID, X_ID, CLIENT_ID, D_ID = (PODS[p].identity for p in ("web", "x", "client", "d"))
REMOTE_ID = 1005
#: PolicyControl's pod name -> endpoint id
EP_IDS = {f"default/{p.name}": p.ep_id for p in PODS.values()}

VIP4, VIP6, VIP_MISS4 = "198.19.0.10", "2001:db8:2::10", "198.19.0.99"
NP_LOCAL_VIP, NP_REMOTE_VIP = "198.19.0.20", "198.19.0.21"
SVC_PORT, TARGET_PORT = 80, 8080
NODEPORT_LOCAL, NODEPORT_REMOTE = 31313, 31314
SNAT_PORTS = range(32768, 65536)

PROGRAMS = ("from_container", "to_container", "from_netdev")
#: Maps a packet may create entries in: what "a drop creates no state" is checked on.
STATE_MAPS = ("cb_ct4", "cb_ct6", "cb_snat4_fwd", "cb_snat4_rev", "cb_snat6_fwd",
              "cb_snat6_rev")

TC_ACT = {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT"}


# -- policy and services -----------------------------------------------------------------
def policy_state(web_ingress: tuple[Rule, ...] | None = None,
                 client_egress: tuple[Rule, ...] | None = None) -> PolicyState:
    """The node's policy (see the module docstring); pass rules to change web's ingress
    or client's egress (e.g. for revision tests)."""
    net = ipaddress.ip_network
    ipc = [IpcacheEntry(net(f"{p.ip4}/32"), p.identity) for p in PODS.values()]
    ipc += [IpcacheEntry(net(f"{p.ip6}/128"), p.identity) for p in PODS.values()]
    ipc += [IpcacheEntry(net(f"{NODE4}/32"), ID_HOST), IpcacheEntry(net(f"{NODE6}/128"), ID_HOST),
            IpcacheEntry(net(f"{REMOTE}/32"), REMOTE_ID), IpcacheEntry(net(f"{REMOTE6}/128"), REMOTE_ID),
            IpcacheEntry(net(f"{REMOTE_NP}/32"), REMOTE_ID)]
    if web_ingress is None:
        web_ingress = (Rule(False, CLIENT_ID, TCP_, PortRange(80, 80)),
                       Rule(False, CLIENT_ID, TCP_, PortRange(8080, 8080)))
    if client_egress is None:
        client_egress = (Rule(False, ID_WORLD, TCP_, PortRange(80, 80)),
                         Rule(False, ID_HOST, ICMP_, ANY_PORT))
    eps = (
        EndpointPolicy("default/web", WEB_ID, True, False, tuple(web_ingress), ()),
        EndpointPolicy("default/x", X_ID, False, False),
        EndpointPolicy("default/client", CLIENT_ID, True, True, (), tuple(client_egress)),
        EndpointPolicy("default/d", D_ID, True, True,
                       (Rule(True, X_ID, ANY_PROTO), Rule(False, ANY_IDENTITY, ANY_PROTO)),
                       (Rule(True, ID_WORLD, TCP_, PortRange(22, 22)),
                        Rule(False, ID_WORLD, ANY_PROTO))),
    )
    return PolicyState((), tuple(ipc), eps)


def services() -> list:
    tcp_udp = [("tcp", SVC_PORT, TARGET_PORT, "TCP"), ("udp", SVC_PORT, TARGET_PORT, "UDP")]
    return [
        K.service("svc4", VIP4, tcp_udp, [K.endpoint(WEB, NODE_NAME), K.endpoint(REMOTE, "cb-node1")]),
        K.service("svc6", VIP6, tcp_udp, [K.endpoint(WEB6, NODE_NAME), K.endpoint(REMOTE6, "cb-node1")],
                  family="IPv6"),
        K.service("nplocal", NP_LOCAL_VIP, [("http", SVC_PORT, TARGET_PORT, "TCP")],
                  [K.endpoint(WEB, NODE_NAME)], svc_type="NodePort",
                  node_ports={"http": NODEPORT_LOCAL}),
        K.service("npremote", NP_REMOTE_VIP, [("http", SVC_PORT, TARGET_PORT, "TCP")],
                  [K.endpoint(REMOTE_NP, "cb-node1")], svc_type="NodePort",
                  node_ports={"http": NODEPORT_REMOTE}),
    ]


# -- running packets ------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one program did with one frame.

    verdict: "TC_ACT_OK" / "TC_ACT_SHOT" / "TC_ACT_REDIRECT" / "TC_ACT_<n>" for any other
    return code / "REFUSED" when the kernel refused the frame before the program ran
    (BPF_PROG_TEST_RUN wants an Ethernet header and, for ethertype IPv4/IPv6, the
    whole fixed IP header: see `kernel_refuses`).
    reason: the drop reason counted in cb_metrics by this run (None if none grew).
    grown: every cb_metrics drop reason that grew during the run, with its growth.
    data: the frame as the program left it.
    """
    program: str
    pod: str | None
    retval: int
    verdict: str
    reason: int | None
    grown: dict
    data: bytes

    @property
    def passed(self) -> bool:
        return self.verdict in ("TC_ACT_OK", "TC_ACT_REDIRECT")

    @property
    def short(self) -> str | int:
        """"pass" for OK/REDIRECT, the drop reason for a drop, else the verdict."""
        if self.passed:
            return "pass"
        if self.verdict == "TC_ACT_SHOT" and self.reason is not None:
            return self.reason
        return self.verdict


class _FastMap:
    """Raw (key bytes -> value bytes) reads of one hash-type map in one syscall per
    chunk (BPF_MAP_LOOKUP_BATCH), with buffers allocated once."""

    def __init__(self, m, chunk: int = 1024):
        self.m, self.chunk = m, chunk
        self.ks, self.vs = m.key_size, m._value_stride * (m.ncpus if m.per_cpu else 1)
        self.kbuf = ctypes.create_string_buffer(self.ks * chunk)
        self.vbuf = ctypes.create_string_buffer(self.vs * chunk)
        self.out_batch = ctypes.create_string_buffer(max(self.ks, 8))

    def items(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        in_batch = None
        while True:
            count = ctypes.c_uint32(self.chunk)
            opt = L.opts(L.MapBatchOpts)
            rc = L.bpf_map_lookup_batch(self.m.fd, in_batch, self.out_batch, self.kbuf, self.vbuf,
                                        ctypes.byref(count), ctypes.byref(opt))
            if rc < 0 and rc != -_errno.ENOENT:
                raise BpfError(f"batch lookup in map {self.m.name}", -rc)
            kraw, vraw = self.kbuf.raw, self.vbuf.raw
            for i in range(count.value):
                out[kraw[i * self.ks:(i + 1) * self.ks]] = vraw[i * self.vs:(i + 1) * self.vs]
            if rc == -_errno.ENOENT or count.value == 0:
                return out
            in_batch = ctypes.create_string_buffer(self.out_batch.raw, len(self.out_batch))


class AdvNode:
    """The node of the module docstring in test-run, maps shared.

    *load* is conftest's ``load`` fixture; *ct_max* shrinks cb_ct4/cb_ct6 (max_entries)
    for map-pressure tests.  ``close()`` unpins the maps (always call it).
    """

    def __init__(self, load: Callable[..., Collection], ct_max: int | None = None,
                 program_services: bool = True):
        if ct_max:
            sizes = {"cb_ct4": ct_max, "cb_ct6": ct_max}
            inner = load
            load = lambda obj, **kw: inner(obj, max_entries=sizes, **kw)   # noqa: E731
        self.node = Node(load, NODE_NAME)
        try:
            self.endpoints = {p.name: self.node.endpoint(p.ep_id, p.ip4, p.ip6) for p in PODS.values()}
            self._netdev_coll = self.node._load("netdev", datapath.rodata_for("netdev", NODE_NAME))
            self.maps = self.node.coll.maps
            self.policy = PolicyControl(self.maps)
            self.policy.apply(policy_state(), EP_IDS)
            if program_services:
                datapath.lb_control(self.node.coll).apply(lb_state(K.scenario(*services())))
        except BaseException:
            self.node.close()
            raise
        self._progs = {(name, "from_container"): ep.coll.programs["from_container"]
                       for name, ep in self.endpoints.items()}
        self._progs.update({(name, "to_container"): ep.coll.programs["to_container"]
                            for name, ep in self.endpoints.items()})
        self._progs[(None, "from_netdev")] = self._netdev_coll.programs["from_netdev"]
        self._metrics = _FastMap(self.maps["cb_metrics"], chunk=256)
        self._state = {name: _FastMap(self.maps[name]) for name in STATE_MAPS if name in self.maps}
        self._drops = self._drop_counts()
        self.packets = 0            # frames run (every program), for the suite's counts

    # -- programming -------------------------------------------------------------------------
    def apply_policy(self, state: PolicyState) -> None:
        """Replace the policy (bumps the revision of every endpoint whose rules changed)."""
        self.policy.apply(state, EP_IDS)

    def pod(self, name: str) -> Pod:
        return PODS[name]

    # -- running ---------------------------------------------------------------------------
    def _drop_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for k, v in self._metrics.items().items():
            reason = k[0]                         # struct metrics_key: reason is byte 0
            if reason:
                # traffic_counter per CPU: packets (u64) first, then bytes.
                n = sum(int.from_bytes(v[i:i + 8], "little")
                        for i in range(0, len(v), self._metrics.vs // self._metrics.m.ncpus))
                counts[reason] = counts.get(reason, 0) + n
        return counts

    def run(self, program: str, pod: str | None, data: bytes) -> Outcome:
        """Run *data* (an Ethernet frame) through *program* of *pod* (None for from_netdev).

        cb_metrics is read only after a drop (or a refused frame): a drop reason that grew
        during a passing run shows up in the next drop's ``grown`` (the invariants flag
        more than one grown reason)."""
        prog = self._progs[(pod if program != "from_netdev" else None, program)]
        self.packets += 1
        try:
            res = prog.test_run(data)
        except BpfError as exc:
            if exc.errno == _errno.EINVAL:
                return Outcome(program, pod, -1, "REFUSED", None, {}, b"")
            raise
        verdict = TC_ACT.get(res.retval, f"TC_ACT_{res.retval}")
        reason, grown = None, {}
        if res.retval != 0 and res.retval != 7:
            counts = self._drop_counts()
            grown = {r: n - self._drops.get(r, 0) for r, n in counts.items()
                     if n > self._drops.get(r, 0)}
            self._drops = counts
            if grown:
                reason = max(grown, key=grown.get)
        return Outcome(program, pod, res.retval, verdict, reason, grown, bytes(res.data_out))

    def egress(self, pod: str, data: bytes) -> Outcome:
        return self.run("from_container", pod, data)

    def ingress(self, pod: str, data: bytes) -> Outcome:
        return self.run("to_container", pod, data)

    def netdev(self, data: bytes) -> Outcome:
        return self.run("from_netdev", None, data)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, dict[bytes, bytes]]:
        """Every conntrack and SNAT entry, raw: {map: {key bytes: value bytes}}."""
        return {name: fm.items() for name, fm in self._state.items()}

    def snapshot(self) -> frozenset[tuple[str, bytes]]:
        """The (map, key bytes) pairs of every conntrack/SNAT entry: compare two
        snapshots with set difference to see what a packet created."""
        return frozenset((name, k) for name, fm in self._state.items() for k in fm.items())

    def clear_state(self) -> None:
        """Delete every conntrack/SNAT entry (e.g. between corpus groups, to keep
        snapshots small)."""
        for name in self._state:
            self.maps[name].clear()

    def close(self) -> None:
        self.node.close()


def kernel_refuses(data: bytes) -> bool:
    """Frames BPF_PROG_TEST_RUN refuses (EINVAL) before any program runs: shorter than
    an Ethernet header, or ethertype IPv4/IPv6 (untagged) without the fixed IP header."""
    if len(data) < 14:
        return True
    et = int.from_bytes(data[12:14], "big")
    return (et == 0x0800 and len(data) < 34) or (et == 0x86DD and len(data) < 54)


# -- decoding conntrack keys (for readable assertions) --------------------------------------
CT_EGRESS, CT_INGRESS, CT_SERVICE = 1, 2, 4


def ct4_key(daddr: str, saddr: str, dport: int, sport: int, proto: int, flags: int) -> bytes:
    """struct ct4_tuple as the map holds it (ports big-endian as on the wire)."""
    return (ipaddress.IPv4Address(daddr).packed + ipaddress.IPv4Address(saddr).packed
            + dport.to_bytes(2, "big") + sport.to_bytes(2, "big") + bytes([proto, flags]) + b"\0\0")


def ct6_key(daddr: str, saddr: str, dport: int, sport: int, proto: int, flags: int) -> bytes:
    return (ipaddress.IPv6Address(daddr).packed + ipaddress.IPv6Address(saddr).packed
            + dport.to_bytes(2, "big") + sport.to_bytes(2, "big") + bytes([proto, flags]) + b"\0\0")


def describe_ct_key(key: bytes) -> str:
    """'proto saddr:sport -> daddr:dport [flags]' for a raw ct4/ct6 key."""
    n = 4 if len(key) == 16 else 16
    ip = ipaddress.ip_address
    d, s = ip(key[:n]), ip(key[n:2 * n])
    dport, sport = int.from_bytes(key[2 * n:2 * n + 2], "big"), int.from_bytes(key[2 * n + 2:2 * n + 4], "big")
    proto, flags = key[2 * n + 4], key[2 * n + 5]
    names = "|".join(f for bit, f in ((1, "egress"), (2, "ingress"), (4, "service")) if flags & bit)
    return f"{proto} {s}:{sport} -> {d}:{dport} [{names}]"


#: struct ct_entry field offsets (lib/ct.h), for reading values from state().
CT_ENTRY = {"tx_packets": (0, 8), "tx_bytes": (8, 8), "rx_packets": (16, 8), "rx_bytes": (24, 8),
            "lifetime": (32, 4), "created": (36, 4), "backend_id": (40, 4),
            "rev_nat_index": (44, 4), "src_sec_id": (48, 4), "flags": (52, 2),
            "tx_flags_seen": (54, 1), "rx_flags_seen": (55, 1), "policy_rev": (56, 4)}


def ct_field(value: bytes, name: str) -> int:
    off, size = CT_ENTRY[name]
    return int.from_bytes(value[off:off + size], "little")
