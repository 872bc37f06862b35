"""Datapath events (struct cb_event, bpf_src/lib/events.h) decoded into columns, vectorized.

``EVENT_DTYPE`` is struct cb_event as a numpy structured dtype (checked field
by field against the ctypes mirror harness.abi.structs.Event at import).
``decode(records)`` turns a batch of raw records (the ring buffer's ``bytes``
objects, one buffer of n * 224 bytes, or an array of EVENT_DTYPE) into one
structured array of ``DECODED_DTYPE``: the event's header fields, and what
the packet in ``pkt[]`` says, parsed with numpy over the whole batch at once
(no per-record Python loop):

- Ethernet: source and destination MAC, ethertype;
- IPv4 (header length, no L4 for a fragment that is not the first) or IPv6
  (hop-by-hop, routing, destination-options, fragment and AH extension headers
  skipped, up to ``MAX_IPV6_EXT`` of them): ``ip_version``, ``ip_src``/``ip_dst``
  (16 bytes; IPv4 in the first 4, as union v6addr), ``proto`` (the L4 protocol
  after the extension headers);
- TCP (ports, flags with NS as bit 8), UDP, SCTP (ports), ICMPv4/ICMPv6 (type,
  code), each only when its header lies within the captured bytes.

``layers`` says which of these were found (``L_*`` bits), as the layers
gopacket decodes for Hubble's parser (pkg/hubble/parser/threefour): flows.py
builds ``flow.Flow`` from these columns.  ``wall_ns`` is the event's time as
wall-clock nanoseconds: ``ktime_ns`` is CLOCK_MONOTONIC (bpf_ktime_get_ns), to
which the CLOCK_REALTIME - CLOCK_MONOTONIC offset is added.

``python -m harness.observe.decode --bench`` measures records/s (``bench``).
"""
from __future__ import annotations

import ctypes
import statistics
import sys
import time
from typing import Iterable, Sequence

import numpy as np

from harness.abi.cheaders import defines
from harness.abi.structs import Event

#: Size of one record (struct cb_event).
EVENT_SIZE = 224
#: Bytes of the packet a record carries (CB_EVENT_CAP).
EVENT_CAP = 128

EVENT_DTYPE = np.dtype([
    ("ktime_ns", "<u8"), ("type", "u1"), ("subtype", "u1"), ("endpoint_id", "<u2"),
    ("ifindex", "<u4"), ("orig_len", "<u4"), ("cap_len", "<u2"), ("flags", "u1"), ("dir", "u1"),
    ("remote_identity", "<u4"), ("match_type", "u1"), ("rule_proto", "u1"),
    ("rule_port", "<u2"), ("trace_reason", "u1"), ("l4_proto", "u1"),
    ("orig_port", ">u2"),                       # __be16: read as the port number
    ("rev_nat_index", "<u4"), ("orig_addr", "u1", (16,)), ("xlate_addr", "u1", (16,)),
    ("xlate_port", ">u2"), ("pad1", "<u2"), ("pad2", "<u4"), ("cookie", "<u8"),
    ("cgroup_id", "<u8"), ("pkt", "u1", (EVENT_CAP,)),
])


def _check_abi() -> None:
    """EVENT_DTYPE has the mirror's fields, offsets and sizes (the mirror is checked
    against the object's BTF when a program loads)."""
    if EVENT_DTYPE.itemsize != ctypes.sizeof(Event) or EVENT_DTYPE.itemsize != EVENT_SIZE:
        raise ImportError(f"EVENT_DTYPE is {EVENT_DTYPE.itemsize} bytes, struct cb_event "
                          f"{ctypes.sizeof(Event)} (expected {EVENT_SIZE})")
    names = [name for name, _ in Event._fields_]
    if list(EVENT_DTYPE.names) != names:
        raise ImportError(f"EVENT_DTYPE fields {EVENT_DTYPE.names} != Event's {names}")
    for name in names:
        dt, offset = EVENT_DTYPE.fields[name][:2]
        field = getattr(Event, name)
        if (offset, dt.itemsize) != (field.offset, field.size):
            raise ImportError(f"EVENT_DTYPE.{name} at {offset} ({dt.itemsize} bytes), "
                              f"Event.{name} at {field.offset} ({field.size} bytes)")


_check_abi()

_C = defines("lib/events.h", "CB_EVENT_")
EVENT_DROP = _C["CB_EVENT_DROP"]
EVENT_TRACE = _C["CB_EVENT_TRACE"]
EVENT_POLICY_VERDICT = _C["CB_EVENT_POLICY_VERDICT"]
EVENT_TRACE_SOCK = _C["CB_EVENT_TRACE_SOCK"]
_F = defines("lib/events.h", "CB_EVF_")
EVF_IPV6 = _F["CB_EVF_IPV6"]
EVF_XLATED = _F["CB_EVF_XLATED"]
EVF_ALLOWED = _F["CB_EVF_ALLOWED"]
EVF_REPLY = _F["CB_EVF_REPLY"]
EVF_REV_XLATED = _F["CB_EVF_REV_XLATED"]
assert EVENT_CAP == _C["CB_EVENT_CAP"], "CB_EVENT_CAP changed: EVENT_DTYPE.pkt must follow"

# Layers found in the packet (DECODED_DTYPE.layers).
L_ETH, L_IPV4, L_IPV6, L_TCP, L_UDP, L_SCTP, L_ICMPV4, L_ICMPV6 = (1 << i for i in range(8))
L_L4 = L_TCP | L_UDP | L_SCTP | L_ICMPV4 | L_ICMPV6

# TCP flag bits as DECODED_DTYPE.tcp_flags holds them (the header's byte 13, NS as bit 8).
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR, TCP_NS = (
    1 << i for i in range(9))

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
ETH_HLEN = 14
#: IPv6 extension headers skipped before the L4 header: hop-by-hop, routing, fragment,
#: AH, destination options.
IPV6_EXT_HEADERS = (0, 43, 44, 51, 60)
MAX_IPV6_EXT = 4

DECODED_DTYPE = np.dtype([
    # the event's header
    ("ktime_ns", "<u8"), ("wall_ns", "<i8"), ("type", "u1"), ("subtype", "u1"),
    ("endpoint_id", "<u2"), ("ifindex", "<u4"), ("orig_len", "<u4"), ("cap_len", "<u2"),
    ("flags", "u1"), ("dir", "u1"), ("remote_identity", "<u4"), ("match_type", "u1"),
    ("rule_proto", "u1"), ("rule_port", "<u2"), ("trace_reason", "u1"), ("l4_proto", "u1"),
    ("orig_port", "<u2"), ("rev_nat_index", "<u4"), ("orig_addr", "u1", (16,)),
    ("xlate_addr", "u1", (16,)), ("xlate_port", "<u2"), ("cookie", "<u8"), ("cgroup_id", "<u8"),
    # parsed from pkt[]
    ("layers", "<u2"), ("eth_src", "u1", (6,)), ("eth_dst", "u1", (6,)), ("ethertype", "<u2"),
    ("ip_version", "u1"), ("ip_src", "u1", (16,)), ("ip_dst", "u1", (16,)), ("proto", "u1"),
    ("sport", "<u2"), ("dport", "<u2"), ("tcp_flags", "<u2"), ("icmp_type", "u1"),
    ("icmp_code", "u1"),
])

_HEADER = ("ktime_ns", "type", "subtype", "endpoint_id", "ifindex", "orig_len", "cap_len",
           "flags", "dir", "remote_identity", "match_type", "rule_proto", "rule_port",
           "trace_reason", "l4_proto", "orig_port", "rev_nat_index", "orig_addr", "xlate_addr",
           "xlate_port", "cookie", "cgroup_id")


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now, in ns (the smallest of a few reads, so a
    preemption between the two clock reads does not skew it)."""
    best = None
    for _ in range(5):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1]


def as_events(records: bytes | bytearray | memoryview | np.ndarray | Iterable[bytes]) -> np.ndarray:
    """The records as an array of EVENT_DTYPE (a view where the input is one buffer)."""
    if isinstance(records, np.ndarray):
        if records.dtype == EVENT_DTYPE:
            return records
        if records.dtype == np.uint8:
            records = records.tobytes()
        else:
            raise TypeError(f"an array of {records.dtype} is no batch of struct cb_event")
    if not isinstance(records, (bytes, bytearray, memoryview)):
        records = list(records)
        buf = b"".join(records)
        if len(buf) != len(records) * EVENT_SIZE:
            bad = next(i for i, r in enumerate(records) if len(r) != EVENT_SIZE)
            raise ValueError(f"record {bad} is {len(records[bad])} bytes, not {EVENT_SIZE} "
                             "(struct cb_event)")
        records = buf
    if len(records) % EVENT_SIZE:
        raise ValueError(f"a buffer of {len(records)} bytes is no whole number of "
                         f"{EVENT_SIZE}-byte records")
    return np.frombuffer(records, dtype=EVENT_DTYPE)


def _be16(pkt: np.ndarray, rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (pkt[rows, at].astype(np.uint16) << 8) | pkt[rows, at + 1]


def decode(records, offset_ns: int | None = None) -> np.ndarray:
    """Decode a batch of records (see as_events) into an array of DECODED_DTYPE.

    *offset_ns*: CLOCK_REALTIME - CLOCK_MONOTONIC (default: read now) for ``wall_ns``.
    """
    ev = as_events(records)
    n = len(ev)
    out = np.zeros(n, dtype=DECODED_DTYPE)
    if n == 0:
        return out
    for name in _HEADER:
        out[name] = ev[name]
    if offset_ns is None:
        offset_ns = realtime_offset_ns()
    out["wall_ns"] = ev["ktime_ns"].astype(np.int64) + np.int64(offset_ns)

    pkt = ev["pkt"]                                  # (n, 128) uint8 view
    cap = np.minimum(ev["cap_len"], EVENT_CAP).astype(np.int32)
    layers = np.zeros(n, dtype=np.uint16)

    # Ethernet
    eth = cap >= ETH_HLEN
    layers[eth] |= L_ETH
    out["eth_dst"] = np.where(eth[:, None], pkt[:, 0:6], 0)
    out["eth_src"] = np.where(eth[:, None], pkt[:, 6:12], 0)
    ethertype = np.where(eth, (pkt[:, 12].astype(np.uint16) << 8) | pkt[:, 13], 0)
    out["ethertype"] = ethertype

    # IPv4: version 4, header length >= 20 within the capture
    ihl = (pkt[:, 14] & 0x0F).astype(np.int32) * 4
    v4 = ((ethertype == ETH_P_IP) & (cap >= ETH_HLEN + 20) & ((pkt[:, 14] >> 4) == 4)
          & (ihl >= 20))
    # IPv6: the fixed header within the capture
    v6 = (ethertype == ETH_P_IPV6) & (cap >= ETH_HLEN + 40) & ((pkt[:, 14] >> 4) == 6)
    layers[v4] |= L_IPV4
    layers[v6] |= L_IPV6
    out["ip_version"] = np.where(v4, 4, np.where(v6, 6, 0))
    ip_src = np.zeros((n, 16), dtype=np.uint8)
    ip_dst = np.zeros((n, 16), dtype=np.uint8)
    ip_src[v4, :4] = pkt[v4, 26:30]
    ip_dst[v4, :4] = pkt[v4, 30:34]
    ip_src[v6] = pkt[v6, 22:38]
    ip_dst[v6] = pkt[v6, 38:54]
    out["ip_src"] = ip_src
    out["ip_dst"] = ip_dst

    # The L4 header: its protocol and offset; no L4 for a later fragment (IPv4: MF or
    # offset, as gopacket; the first fragment carries the L4 header, so it is decoded).
    frag_off = ((pkt[:, 20].astype(np.uint16) & 0x1F) << 8) | pkt[:, 21]
    proto = np.where(v4, pkt[:, 23], 0).astype(np.int32)
    l4_at = np.where(v4, ETH_HLEN + ihl, 0).astype(np.int32)
    l4_ok = v4 & (frag_off == 0)

    if v6.any():
        rows = np.flatnonzero(v6)
        nh = pkt[rows, 20].astype(np.int32)
        at = np.full(len(rows), ETH_HLEN + 40, dtype=np.int32)
        ok = np.ones(len(rows), dtype=bool)
        for _ in range(MAX_IPV6_EXT):
            ext = ok & np.isin(nh, IPV6_EXT_HEADERS)
            if not ext.any():
                break
            fits = at + 8 <= cap[rows]
            ok &= ~ext | fits
            ext &= fits
            safe = np.minimum(at, EVENT_CAP - 8)
            hlen = pkt[rows, safe + 1].astype(np.int32)
            size = np.where(nh == 44, 8, np.where(nh == 51, (hlen + 2) * 4, (hlen + 1) * 8))
            later_fragment = (nh == 44) & ((_be16(pkt, rows, safe + 2) & 0xFFF8) != 0)
            ok &= ~(ext & later_fragment)
            nh = np.where(ext, pkt[rows, safe], nh)
            at = np.where(ext, at + size, at)
        ok &= ~np.isin(nh, IPV6_EXT_HEADERS)     # more than MAX_IPV6_EXT of them
        proto[rows] = nh
        l4_at[rows] = at
        l4_ok[rows] = ok
    out["proto"] = np.where(v4 | v6, proto, 0)

    # L4 headers, each only when it lies within the capture
    room = cap - l4_at
    tcp = l4_ok & (proto == IPPROTO_TCP) & (room >= 20)
    udp = l4_ok & (proto == IPPROTO_UDP) & (room >= 8)
    sctp = l4_ok & (proto == IPPROTO_SCTP) & (room >= 12)
    icmp4 = l4_ok & v4 & (proto == IPPROTO_ICMP) & (room >= 8)
    icmp6 = l4_ok & v6 & (proto == IPPROTO_ICMPV6) & (room >= 4)
    layers[tcp] |= L_TCP
    layers[udp] |= L_UDP
    layers[sctp] |= L_SCTP
    layers[icmp4] |= L_ICMPV4
    layers[icmp6] |= L_ICMPV6
    ported = tcp | udp | sctp
    if ported.any():
        rows = np.flatnonzero(ported)
        at = l4_at[rows]
        sport = np.zeros(n, dtype=np.uint16)
        dport = np.zeros(n, dtype=np.uint16)
        sport[rows] = _be16(pkt, rows, at)
        dport[rows] = _be16(pkt, rows, at + 2)
        out["sport"] = sport
        out["dport"] = dport
    if tcp.any():
        rows = np.flatnonzero(tcp)
        at = l4_at[rows]
        flags = np.zeros(n, dtype=np.uint16)
        flags[rows] = pkt[rows, at + 13] | ((pkt[rows, at + 12].astype(np.uint16) & 1) << 8)
        out["tcp_flags"] = flags
    icmp = icmp4 | icmp6
    if icmp.any():
        rows = np.flatnonzero(icmp)
        at = l4_at[rows]
        itype = np.zeros(n, dtype=np.uint8)
        icode = np.zeros(n, dtype=np.uint8)
        itype[rows] = pkt[rows, at]
        icode[rows] = pkt[rows, at + 1]
        out["icmp_type"] = itype
        out["icmp_code"] = icode
    out["layers"] = layers
    return out


# ------------------------------------------------------------------ benchmark


def sample_packets() -> list[tuple[int, int, bytes]]:
    """(event type, flags, packet) samples of every kind decode parses, built with scapy:
    TCP SYN/SYN-ACK/ACK-PSH/FIN/RST over IPv4 and IPv6, UDP, SCTP, ICMPv4 and ICMPv6
    echo, an IPv6 packet behind extension headers, a later IPv4 fragment."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt,
                                    IPv6ExtHdrFragment, IPv6ExtHdrHopByHop)
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    a4, b4 = "198.18.0.10", "198.18.1.20"
    a6, b6 = "2001:db8::a", "2001:db8::1:14"
    pkts = [
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / TCP(sport=40000, dport=8080, flags="S")),
        (EVENT_TRACE, EVF_REPLY, eth / IP(src=b4, dst=a4) / TCP(sport=8080, dport=40000, flags="SA")),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / TCP(sport=40000, dport=8080, flags="PA")
         / (b"GET / HTTP/1.1\r\n" * 8)),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / TCP(sport=40000, dport=8080, flags="FA")),
        (EVENT_DROP, 0, eth / IP(src=a4, dst=b4) / TCP(sport=40001, dport=80, flags="S")),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / UDP(sport=5353, dport=53) / (b"q" * 30)),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / SCTP(sport=9, dport=9)),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4) / ICMP(type=8, id=7, seq=1)),
        (EVENT_TRACE, 0, eth / IP(src=a4, dst=b4, frag=10) / (b"x" * 40)),
        (EVENT_POLICY_VERDICT, EVF_IPV6 | EVF_ALLOWED,
         eth / IPv6(src=a6, dst=b6) / TCP(sport=40000, dport=8080, flags="S")),
        (EVENT_TRACE, EVF_IPV6, eth / IPv6(src=a6, dst=b6) / UDP(sport=1000, dport=53)),
        (EVENT_TRACE, EVF_IPV6, eth / IPv6(src=a6, dst=b6) / ICMPv6EchoRequest(id=1, seq=1)),
        (EVENT_TRACE, EVF_IPV6, eth / IPv6(src=a6, dst=b6) / IPv6ExtHdrHopByHop()
         / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1) / TCP(sport=1, dport=2, flags="R")),
    ]
    return [(kind, flags, bytes(p)) for kind, flags, p in pkts]


def event_record(kind: int, packet: bytes, *, subtype: int = 0, flags: int = 0,
                 endpoint_id: int = 1, ktime_ns: int = 0, **fields) -> bytes:
    """One record as the datapath writes it: the ctypes mirror Event filled in, with the
    packet's first EVENT_CAP bytes in pkt[]."""
    e = Event()
    e.type, e.subtype, e.flags, e.endpoint_id, e.ktime_ns = kind, subtype, flags, endpoint_id, ktime_ns
    e.orig_len = len(packet)
    cap = min(len(packet), EVENT_CAP)
    e.cap_len = cap
    ctypes.memmove(ctypes.addressof(e) + Event.pkt.offset, packet, cap)
    for name, value in fields.items():
        setattr(e, name, value)
    return bytes(e)


def synthetic_records(count: int) -> bytes:
    """*count* records (one buffer) cycling through sample_packets()."""
    samples = [event_record(kind, pkt, flags=flags, ktime_ns=1_000_000 + i)
               for i, (kind, flags, pkt) in enumerate(sample_packets())]
    base = np.frombuffer(b"".join(samples), dtype=EVENT_DTYPE)
    batch = np.resize(base, count).copy()
    batch["ktime_ns"] = np.arange(count, dtype=np.uint64) + 1_000_000_000
    return batch.tobytes()


def bench(count: int = 1_000_000, runs: int = 7, batch: int = 4096,
          as_list: bool = True) -> dict:
    """Records/s decode() reaches on one core over *count* synthetic records, in batches
    of *batch* (as the observer reads the ring buffer), *runs* times; *as_list*: each
    record a bytes object (as the ring buffer hands them) rather than one buffer."""
    buf = synthetic_records(count)
    step = batch * EVENT_SIZE
    inputs = [buf[start:start + step] for start in range(0, len(buf), step)]
    if as_list:
        inputs = [[chunk[i:i + EVENT_SIZE] for i in range(0, len(chunk), EVENT_SIZE)]
                  for chunk in inputs]
    offset = realtime_offset_ns()
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for chunk in inputs:
            decode(chunk, offset)
        rates.append(count / (time.perf_counter() - t0))
    return {"records": count, "batch": batch, "input": "list of bytes" if as_list else "buffer",
            "runs": runs, "median": statistics.median(rates), "min": min(rates),
            "max": max(rates)}


def _main(argv: Sequence[str]) -> int:
    if list(argv) != ["--bench"]:
        print("usage: python -m harness.observe.decode --bench", file=sys.stderr)
        return 2
    for as_list in (True, False):
        r = bench(as_list=as_list)
        print(f"decode: {r['records']:,} records ({r['input']}, batches of {r['batch']}), "
              f"{r['runs']} runs: median {r['median']:,.0f} records/s "
              f"(min {r['min']:,.0f}, max {r['max']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
