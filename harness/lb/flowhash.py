"""The flow hash of Maglev backend selection, computed exactly as the datapath does.

Owns the Python twin of ``bpf_src/lib/hash.h``: ``jhash_3words`` (Bob
Jenkins' lookup3 final mix, with the kernel's 0xdeadbeef init value on the
first two words) and ``flow_hash4``/``flow_hash6`` over a flow's addresses,
ports and protocol.  The BPF code hashes the words as the CPU loads them from
the packet: network-order bytes read as a host-order u32 (little-endian on
x86).  These functions take ordinary Python values (addresses as strings or
``ipaddress`` objects, ports as host-order ints) and do that conversion
themselves, so ``table[flow_hash4(...) % M]`` is the backend the kernel picks
for a new flow.

The seed is the object's ``maglev_seed`` (a ``const volatile`` in
``bpf_src/lib/lb.h``); read a loaded collection's value with
``harness.lb.maglev.flow_hash_seed``.
"""
from __future__ import annotations

import ipaddress
import sys

__all__ = ["JHASH_INITVAL", "jhash_3words", "flow_hash4", "flow_hash6"]

#: CB_JHASH_INITVAL in lib/hash.h (the Linux kernel's JHASH_INITVAL).
JHASH_INITVAL = 0xDEADBEEF

_U32 = 0xFFFFFFFF
_HOST = sys.byteorder   # the byte order a BPF program loads words in

#: An address as text, packed bytes (4 or 16) or an ``ipaddress`` object.
Address = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & _U32


def jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """lookup3's final mix of three u32 words, as ``jhash_3words`` in lib/hash.h."""
    a = (a + JHASH_INITVAL) & _U32
    b = (b + JHASH_INITVAL) & _U32
    c = (c + initval) & _U32
    c = ((c ^ b) - _rol32(b, 14)) & _U32
    a = ((a ^ c) - _rol32(c, 11)) & _U32
    b = ((b ^ a) - _rol32(a, 25)) & _U32
    c = ((c ^ b) - _rol32(b, 16)) & _U32
    a = ((a ^ c) - _rol32(c, 4)) & _U32
    b = ((b ^ a) - _rol32(a, 14)) & _U32
    c = ((c ^ b) - _rol32(b, 24)) & _U32
    return c


def _packed(address: Address, version: int) -> bytes:
    ip = ipaddress.ip_address(address)
    if ip.version != version:
        raise ValueError(f"{address} is not an IPv{version} address")
    return ip.packed


def _word(raw: bytes) -> int:
    """Network-order bytes as the u32 (or u16) a BPF load of them yields."""
    return int.from_bytes(raw, _HOST)


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    return _word(port.to_bytes(2, "big"))


def _ports_word(sport: int, dport: int) -> int:
    return ((_port(sport) << 16) | _port(dport)) & _U32


def _initval(proto: int, seed: int) -> int:
    if not 0 <= proto <= 0xFF:
        raise ValueError(f"protocol {proto} is out of range")
    return (seed & _U32) ^ proto


def flow_hash4(saddr: Address, daddr: Address, sport: int, dport: int, proto: int,
               seed: int) -> int:
    """``flow_hash4`` of lib/hash.h for an IPv4 flow; ports in host order."""
    return jhash_3words(_word(_packed(saddr, 4)), _word(_packed(daddr, 4)),
                        _ports_word(sport, dport), _initval(proto, seed))


def _fold_v6(address: Address) -> int:
    raw = _packed(address, 6)
    return _word(raw[0:4]) ^ _word(raw[4:8]) ^ _word(raw[8:12]) ^ _word(raw[12:16])


def flow_hash6(saddr: Address, daddr: Address, sport: int, dport: int, proto: int,
               seed: int) -> int:
    """``flow_hash6`` of lib/hash.h for an IPv6 flow (each address folded to one word
    by XOR of its four words); ports in host order."""
    return jhash_3words(_fold_v6(saddr), _fold_v6(daddr), _ports_word(sport, dport),
                        _initval(proto, seed))
