"""Fresh flows: a new 5-tuple on every BPF_PROG_TEST_RUN call of a micro case,
so each call makes the conntrack inserts a connection's first packet makes, and
the count that proves it did.

A fresh case (``Case.fresh``, a ``FreshSpec``) names a template packet (IPv4,
TCP, no options); call ``k`` of the run gets source port ``PORTS[k % P]`` and
source address ``CLIENTS[k // P]`` (P = len(PORTS)), both checksums kept valid.
The space (``SPACE``, about 4.2e9 tuples) is far larger than any run's calls.
Indexes are handed out by a ``Cursor``: a one-entry array map pinned beside the
run's programs, read and advanced before each sample, so the pyperf worker
processes of a case (which run one after another) and the parent's checks never
take an index twice.  Packets of a sample are built before its timed span, into
one buffer the timing walks through (``Flows.block``).

``ct_max_entries(spec, calls)`` sizes the conntrack map so its LRU never evicts
during a run of *calls* calls; ``calls_of_run`` counts those calls.  The suite
compares the map's entry count before and after timing with the calls made
(``FreshSpec.entries_per_call`` each) and fails the case when they differ.
"""
from __future__ import annotations

import ctypes
import ipaddress
import struct
from dataclasses import dataclass

from harness.bpf import Map
from harness.bpf import _libbpf as L
from harness.bpf.maps import NO_COMMON_LRU
from harness.errors import ChainbenchError

#: Source ports of the space (the ephemeral range a client could use, and more).
PORTS = range(1024, 65536)
#: Source addresses: hosts .1-.254 of the pod CIDRs of nodes 2-255 (198.18.2.0 -
#: 198.18.255.0/24), clients no benchmark backend (nodes 0 and 1) shares.
CLIENT_NODES = range(2, 256)
CLIENT_HOSTS = range(1, 255)
SPACE = len(PORTS) * len(CLIENT_NODES) * len(CLIENT_HOSTS)
#: Untimed calls a run adds to its timed ones: the suite's check of the first
#: packet and its check after timing.
CHECK_CALLS = 2
#: Headroom of the conntrack map over the entries a run inserts: a CPU's LRU
#: keeps up to 128 free nodes to itself (LOCAL_FREE_TARGET), so a common LRU
#: evicts a little before it is full.
LRU_SLACK = 4096

_IP, _TCP = 14, 34              # offsets in an Ethernet/IPv4 (no options)/TCP packet
_HDR = struct.Struct("!HI")     # IPv4 checksum and source address (adjacent)
_PORT = struct.Struct("!H")


class FreshFlowsError(ChainbenchError, RuntimeError):
    """A fresh case cannot get new tuples (space used up, bad template)."""


def client(index: int) -> ipaddress.IPv4Address:
    """The source address of the *index*-th block of PORTS tuples."""
    node, host = divmod(index, len(CLIENT_HOSTS))
    return ipaddress.IPv4Address(f"198.18.{CLIENT_NODES[node]}.{CLIENT_HOSTS[host]}")


def tuple_of(k: int) -> tuple[ipaddress.IPv4Address, int]:
    """(source address, source port) of index *k*."""
    if not 0 <= k < SPACE:
        raise FreshFlowsError(f"tuple index {k} outside the space of {SPACE}")
    block, port = divmod(k, len(PORTS))
    return client(block), PORTS[port]


@dataclass(frozen=True)
class FreshSpec:
    """What makes a case fresh: its conntrack map and how many entries one call
    of its packet inserts (a ClusterIP flow from a pod: the service entry and the
    egress entry)."""
    ct_map: str = "cb_ct4"
    entries_per_call: int = 2


def calls_of_run(samples: int, repeat: int, rounds: int) -> int:
    """Calls of one case in a run: per round one warmup sample (a tenth of the
    calls) and *samples* samples of *repeat* calls, plus the checks."""
    return rounds * (max(1, repeat // 10) + samples * repeat) + CHECK_CALLS


def ct_max_entries(spec: FreshSpec, calls: int, map_flags: int = 0) -> int:
    """max_entries of the conntrack map for *calls* fresh calls without an LRU
    eviction.  A per-CPU LRU (NO_COMMON_LRU) splits max_entries between the
    possible CPUs and the timing uses one: each CPU's share must hold the run."""
    need = spec.entries_per_call * calls
    size = need + need // 16 + LRU_SLACK
    if map_flags & NO_COMMON_LRU:
        size *= L.libbpf_num_possible_cpus()
    return size


class FlowSpace:
    """The packets of a template, one per tuple index."""

    def __init__(self, template: bytes):
        if (len(template) < _TCP + 20 or template[12:14] != b"\x08\x00"
                or template[_IP] != 0x45 or template[_IP + 9] != 6):
            raise FreshFlowsError("a fresh case's packet must be Ethernet/IPv4 (no options)/TCP")
        self.template = bytes(template)
        self.size = len(template)
        t = bytearray(template)
        t[_IP + 10:_IP + 16] = bytes(6)     # checksum and source address
        t[_TCP:_TCP + 2] = bytes(2)         # source port
        t[_TCP + 16:_TCP + 18] = bytes(2)   # TCP checksum
        ip_len = struct.unpack_from("!H", t, _IP + 2)[0]
        self._ip_sum = _sum16(bytes(t[_IP:_IP + 20]))
        seg = bytes(t[_TCP:_IP + ip_len])
        # pseudo header without the source address: destination, protocol, length
        self._tcp_sum = _sum16(seg) + _sum16(bytes(t[_IP + 16:_IP + 20])) + 6 + len(seg)

    def fill(self, buf, start: int, n: int) -> None:
        """Write the packets of indexes start .. start+n-1 into *buf* (n templates)."""
        size, ip_sum, tcp_sum = self.size, self._ip_sum, self._tcp_sum
        pack_hdr, pack_port = _HDR.pack_into, _PORT.pack_into
        P = len(PORTS)
        k, end = start, start + n
        off = 0
        while k < end:
            block, first = divmod(k, P)
            addr = int(client(block))
            a = (addr >> 16) + (addr & 0xFFFF)
            ip_c = _fold_not(ip_sum + a)
            base = tcp_sum + a
            for port in PORTS[first:first + (end - k)]:
                pack_hdr(buf, off + _IP + 10, ip_c, addr)
                pack_port(buf, off + _TCP, port)
                pack_port(buf, off + _TCP + 16, _fold_not(base + port))
                off += size
                k += 1

    def packet(self, k: int) -> bytes:
        tuple_of(k)         # in the space
        buf = bytearray(self.template)
        self.fill(buf, k, 1)
        return bytes(buf)


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold_not(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Cursor:
    """The next unused tuple index of a fresh case, in a one-entry array map."""

    def __init__(self, m: Map):
        self.map = m

    @classmethod
    def create(cls, pin_path: str) -> "Cursor":
        m = Map.create("array", "cb_fresh_next", 4, 8, 1, ctypes.c_uint32, ctypes.c_uint64)
        m.update(0, 0)
        m.pin(pin_path)
        return cls(m)

    @classmethod
    def open(cls, pin_path: str) -> "Cursor":
        return cls(Map.from_pin(pin_path, ctypes.c_uint32, ctypes.c_uint64))

    @property
    def next(self) -> int:
        return int(self.map.lookup(0))

    def claim(self, n: int) -> int:
        """Take *n* indexes; the first of them."""
        start = self.next
        if start + n > SPACE:
            raise FreshFlowsError(f"fresh tuples used up: {start} + {n} > {SPACE}")
        self.map.update(0, start + n)
        return start

    def close(self) -> None:
        self.map.close()


class Flows:
    """Fresh packets of a template, indexes claimed from a cursor."""

    def __init__(self, space: FlowSpace, cursor: Cursor):
        self.space, self.cursor = space, cursor
        self._buf = None

    def block(self, n: int) -> tuple[int, int]:
        """*n* fresh packets back to back: (address of the first, stride).  The
        buffer stays valid until the next call."""
        start = self.cursor.claim(n)
        if self._buf is None or len(self._buf) < n * self.space.size:
            self._buf = ctypes.create_string_buffer(n * self.space.size)
        ctypes.memmove(self._buf, self.space.template * n, n * self.space.size)
        self.space.fill(self._buf, start, n)
        return ctypes.addressof(self._buf), self.space.size

    def packet(self) -> bytes:
        """One fresh packet (the suite's untimed checks)."""
        return self.space.packet(self.cursor.claim(1))

    def close(self) -> None:
        self.cursor.close()
