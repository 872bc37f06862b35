"""Maglev lookup tables: building them, and installing them in a loaded datapath.

Owns the per-service Maglev table of ``bpf_src/lib/lb.h``: an array of M
backend ids (M a prime, ``CB_MAGLEV_TABLE_SIZE``, 16381 by default as in
Cilium) that ``lb_maglev_pick`` indexes with ``flow_hash % M``
(``harness.lb.flowhash`` computes that hash).

Building (``build_table``) is the algorithm of Eisenbud et al., "Maglev: A
Fast and Reliable Software Network Load Balancer" (NSDI 2016), section 3.4,
"Populate Maglev hashing lookup table":

- every backend has a *name*, a byte string that is stable across runs and
  does not depend on the order backends are given in (``backend_name``: for
  an address/port/protocol it is ``198.18.0.10:8080/TCP`` or
  ``[2001:db8::a]:8080/TCP``, as Cilium names a backend by its L3n4 address);
- ``offset = h1(name) mod M`` and ``skip = h2(name) mod (M - 1) + 1``, where
  h1 and h2 are BLAKE2b with an 8-byte digest read as a little-endian u64,
  personalised ``b"cb-maglev-h1"`` and ``b"cb-maglev-h2"`` (so two
  independent hashes), keyed with the optional ``seed`` (Cilium's
  ``--maglev-hash-seed``; empty by default);
- backend i prefers slots ``(offset + j * skip) mod M`` for j = 0, 1, ...
  (a permutation of all slots because M is prime and 0 < skip < M);
- the table is filled in turns over the backends, sorted by name, each turn
  giving a backend its next preferred slot that is still empty, until every
  slot is filled.  Each backend therefore gets floor(M/N) or ceil(M/N) slots.

Disruption: removing one of N backends moves its own floor/ceil(M/N) slots
and, typically, well under 2% of the table more (measured in
tests/test_maglev.py: mean excess 0.15% at N=3, 0.5% at N=10, 1.0% at N=50
for M=16381); two backends that draw the same skip (probability about
N^2 / 2M) can move several percent more, as in the paper's scheme.

Weights follow Cilium (pkg/maglev): a backend takes a turn only while its
slot count stays within its share ``M * weight / sum(weights)``; otherwise the
turn passes to the next backend.  Equal weights give exactly the unweighted
table.

``populate`` is the fill step alone, over given (offset, skip) pairs (the
paper's Table 1 is its test); ``build_table`` names, hashes and orders
backends and returns, for every slot, an index into the backends given;
``install_table`` turns indices into backend ids and writes the table.

Installing: the outer map ``cb_lb_maglev`` (rev_nat_index -> inner map) has
an inner map definition in the object's BTF; ``inner_map_def`` reads it (type,
key size, value size, entries, flags), so M is the inner value size / 4 of
the object actually loaded, whatever ``-DCB_MAGLEV_TABLE_SIZE`` it was built
with.  Each install creates a new inner map, fills it, and swaps it into the
outer map in one update, as Cilium does: the datapath never sees a
half-written table.
"""
from __future__ import annotations

import array
import hashlib
import ipaddress
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from harness.bpf import Collection, KeyNotFoundError, Map
from harness.bpf.btf import KIND_VAR, Btf
from harness.bpf.maps import MAP_TYPES
from harness.abi.structs import Lb4Backend, Lb6Backend, from_be16, from_be32

__all__ = [
    "DEFAULT_TABLE_SIZE", "MAGLEV_MAP", "BackendKey", "InnerMapDef",
    "backend_name", "is_prime", "permutation", "populate", "build_table",
    "inner_map_def", "table_size", "flow_hash_seed",
    "write_table", "install_table", "remove_table",
]

#: CB_MAGLEV_TABLE_SIZE's default in lib/lb.h (Cilium's default M).
DEFAULT_TABLE_SIZE = 16381
#: The outer map: rev_nat_index -> one-entry array holding the table.
MAGLEV_MAP = "cb_lb_maglev"

_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}
_U32_MAX = 0xFFFFFFFF

#: What names a backend: ``(address, port)`` or ``(address, port, protocol)``
#: (protocol a number or "TCP"/"UDP"/"SCTP"; ``harness.lb.model.Backend.key``
#: is one), an ``Lb4Backend``/``Lb6Backend`` map value, or a str/bytes/int
#: taken as the name itself (an int, e.g. a backend id, by its decimal text).
BackendKey = str | bytes | int | tuple | Lb4Backend | Lb6Backend


# --- names and permutations ---------------------------------------------------------------

def _protocol(proto: int | str) -> str:
    if isinstance(proto, int):
        return _PROTOCOL_NAMES.get(proto, str(proto))
    return proto.upper()


def _l3n4(address, port: int, proto: int | str | None) -> bytes:
    ip = ipaddress.ip_address(address)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    text = f"{host}:{int(port)}"
    if proto is not None:
        text += f"/{_protocol(proto)}"
    return text.encode()


def backend_name(key: BackendKey) -> bytes:
    """The stable name a backend's permutation is derived from (see BackendKey)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bool):
        raise TypeError("a bool does not name a backend")
    if isinstance(key, int):
        return str(key).encode()
    if isinstance(key, Lb4Backend):
        return _l3n4(from_be32(key.address), from_be16(key.port), key.proto)
    if isinstance(key, Lb6Backend):
        return _l3n4(key.address.ipv6(), from_be16(key.port), key.proto)
    if isinstance(key, tuple) and len(key) in (2, 3):
        return _l3n4(key[0], key[1], key[2] if len(key) == 3 else None)
    raise TypeError(f"cannot name a backend by {type(key).__name__} {key!r}")


def is_prime(n: int) -> bool:
    """Trial division: table sizes are at most a few million."""
    if n < 2:
        return False
    if n % 2 == 0 or n % 3 == 0:
        return n in (2, 3)
    f = 5
    while f * f <= n:
        if n % f == 0 or n % (f + 2) == 0:
            return False
        f += 6
    return True


def _hash64(name: bytes, person: bytes, seed: bytes) -> int:
    digest = hashlib.blake2b(name, digest_size=8, key=seed, person=person).digest()
    return int.from_bytes(digest, "little")


def permutation(name: bytes, m: int, seed: bytes = b"") -> tuple[int, int]:
    """(offset, skip) of a backend: its preference list is (offset + j*skip) mod m."""
    offset = _hash64(name, b"cb-maglev-h1", seed) % m
    skip = _hash64(name, b"cb-maglev-h2", seed) % (m - 1) + 1
    return offset, skip


def _check_size(m: int, count: int) -> None:
    if not isinstance(m, int) or isinstance(m, bool):
        raise TypeError(f"table size must be an int, not {type(m).__name__}")
    if not is_prime(m):
        raise ValueError(f"Maglev table size {m} is not prime")
    if count == 0:
        raise ValueError("a Maglev table needs at least one backend")
    if m <= count:
        raise ValueError(f"Maglev table size {m} must exceed the number of backends ({count})")


def _check_weights(weights: Sequence[int] | None, count: int) -> list[int] | None:
    if weights is None:
        return None
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} backends")
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in weights):
        raise ValueError("weights must be positive integers (leave weight-0 backends out)")
    return list(weights)


# --- building -------------------------------------------------------------------------------

def populate(permutations: Sequence[tuple[int, int]], m: int, *,
             weights: Sequence[int] | None = None) -> list[int]:
    """The paper's "Populate Maglev hashing lookup table" over backends given as
    (offset, skip) pairs, in turn order; returns, for every slot, the index of
    the backend (into *permutations*) that owns it.

    Raises ValueError if m is not prime, m <= len(permutations), an offset or
    skip is out of range, or weights are not positive integers.
    """
    count = len(permutations)
    _check_size(m, count)
    weight_of = _check_weights(weights, count)
    if any(not (0 <= off < m and 0 < skip < m) for off, skip in permutations):
        raise ValueError(f"offsets must be in 0..{m - 1} and skips in 1..{m - 1}")
    position = [offset for offset, _ in permutations]       # each backend's next preference
    skips = [skip for _, skip in permutations]
    total_weight = sum(weight_of) if weight_of else 0
    taken_weight = [0] * count

    entry = [-1] * m
    for turn in range(m):
        i = turn % count
        if weight_of is not None:
            # Cilium's rule: pass the turn on while a backend is ahead of its share.
            while (turn + 1) * weight_of[i] < taken_weight[i]:
                i = (i + 1) % count
            taken_weight[i] += total_weight
        slot, skip = position[i], skips[i]
        while entry[slot] >= 0:
            slot += skip
            if slot >= m:
                slot -= m
        entry[slot] = i
        slot += skip
        position[i] = slot - m if slot >= m else slot
    return entry


def build_table(backends: Sequence[BackendKey], m: int = DEFAULT_TABLE_SIZE, *,
                weights: Sequence[int] | None = None, seed: bytes = b"") -> list[int]:
    """The Maglev lookup table of *backends*: m entries, each an index into *backends*.

    The table depends only on the set of backend names (with their weights),
    the seed and m, not on the order *backends* are listed in; the indices
    refer to the order given.  Raises ValueError if m is not prime,
    m <= len(backends), two backends have the same name, or weights are not
    positive integers.
    """
    _check_size(m, len(backends))
    weight_list = _check_weights(weights, len(backends))
    names = [backend_name(b) for b in backends]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError("backends with the same name: "
                         + ", ".join(d.decode(errors="replace") for d in dup))
    order = sorted(range(len(names)), key=names.__getitem__)     # turns go by name
    slots = populate([permutation(names[i], m, seed) for i in order], m,
                     weights=[weight_list[i] for i in order] if weight_list else None)
    return [order[i] for i in slots]


# --- the kernel side ------------------------------------------------------------------------

@dataclass(frozen=True)
class InnerMapDef:
    """An outer map's inner map definition, as the object's BTF declares it."""
    map_type: str          # "array", ...
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0


class _MapDefReader:
    """Reads libbpf's BTF map definition syntax: ``__uint(x, N)`` is ``int (*x)[N]``,
    ``__type(x, T)`` is ``T *x``, ``__array(values, struct s)`` is ``struct s *values[]``."""

    def __init__(self, btf: Btf):
        self.btf = btf

    def members(self, type_id: int) -> dict[str, int]:
        """Member name -> member type id of a map definition struct."""
        try:
            return self.btf.member_types(type_id)
        except TypeError as exc:
            raise LookupError(str(exc)) from None

    def pointee(self, type_id: int) -> int:
        try:
            return self.btf.pointee(type_id)
        except TypeError as exc:
            raise LookupError(str(exc)) from None

    def array(self, type_id: int) -> tuple[int, int]:
        try:
            return self.btf.array(type_id)
        except TypeError as exc:
            raise LookupError(str(exc)) from None

    def uint(self, type_id: int) -> int:
        """The N of ``__uint(x, N)``."""
        return self.array(self.pointee(type_id))[1]

    def sized(self, members: dict[str, int], name: str) -> int:
        """A key or value size: ``__type(name, T)`` or ``__uint(name_size, N)``."""
        if name in members:
            return self.btf.size(self.pointee(members[name]))
        if f"{name}_size" in members:
            return self.uint(members[f"{name}_size"])
        raise LookupError(f"map definition has no {name} or {name}_size")


def inner_map_def(collection: Collection, outer: str = MAGLEV_MAP) -> InnerMapDef:
    """The inner map definition of map-in-map *outer*, read from the object's BTF."""
    if outer not in collection.maps:
        raise LookupError(f"{collection.path} has no map {outer}")
    reader = _MapDefReader(collection.btf)
    var_id = collection.btf.find(outer, KIND_VAR)
    if var_id is None:
        raise LookupError(f"{collection.path}: map {outer} is not defined in BTF")
    outer_members = reader.members(collection.btf.var_type(var_id))
    if "values" not in outer_members:
        raise LookupError(f"{collection.path}: map {outer} declares no inner map (__array)")
    inner_def = reader.pointee(reader.array(outer_members["values"])[0])
    members = reader.members(inner_def)
    type_code = reader.uint(members["type"])
    return InnerMapDef(
        map_type=MAP_TYPES.get(type_code, str(type_code)),
        key_size=reader.sized(members, "key"),
        value_size=reader.sized(members, "value"),
        max_entries=reader.uint(members["max_entries"]),
        map_flags=reader.uint(members["map_flags"]) if "map_flags" in members else 0,
    )


def _table_def(collection: Collection, outer: str) -> tuple[InnerMapDef, int]:
    d = inner_map_def(collection, outer)
    if d.map_type != "array" or d.key_size != 4 or d.max_entries != 1 or d.value_size % 4:
        raise LookupError(f"{collection.path}: {outer}'s inner map is not a one-entry array "
                          f"of u32[M] ({d})")
    return d, d.value_size // 4


def table_size(collection: Collection, outer: str = MAGLEV_MAP) -> int:
    """M of the loaded object: its inner map holds one u32[M] value."""
    return _table_def(collection, outer)[1]


def flow_hash_seed(collection: Collection) -> int:
    """The ``maglev_seed`` the loaded programs hash flows with (from .rodata)."""
    variables = collection.btf.datasec_variables(".rodata")
    var = variables.get("maglev_seed")
    rodata = next((m for n, m in collection.maps.items() if n.endswith(".rodata")), None)
    if var is None or rodata is None:
        raise LookupError(f"{collection.path} has no maglev_seed")
    raw = bytes(rodata.lookup(0))
    return int.from_bytes(raw[var.offset:var.offset + var.size], sys.byteorder)


def check_table(table: Sequence[int], rev_nat_index: int, m: int,
                outer: str = MAGLEV_MAP) -> None:
    """ValueError unless *table* is M valid backend ids for a valid rev_nat_index."""
    if len(table) != m:
        raise ValueError(f"table has {len(table)} entries, {outer} holds tables of {m}")
    if isinstance(table, np.ndarray):          # harness.lb.maglev_bulk's rows
        bad = table.size and (table.min() <= 0 or table.max() > _U32_MAX)
    else:
        bad = any(not 0 < b <= _U32_MAX for b in table)
    if bad:
        raise ValueError("backend ids in a Maglev table must be in 1..2^32-1 "
                         "(0 means 'no backend' to the datapath)")
    if not 0 <= rev_nat_index <= _U32_MAX:
        raise ValueError(f"rev_nat_index {rev_nat_index} is out of range")


def write_table(collection: Collection, rev_nat_index: int, table: Sequence[int],
                outer: str = MAGLEV_MAP) -> None:
    """Install a ready table of backend ids (length M) for frontend *rev_nat_index*,
    replacing any table it had in one map update."""
    d, m = _table_def(collection, outer)
    check_table(table, rev_nat_index, m, outer)
    if isinstance(table, np.ndarray):
        data = table.astype(np.uint32)
    else:
        data = array.array("I", table)
        if data.itemsize != 4:
            raise RuntimeError("array('I') is not 32 bits on this platform")
    inner = Map.create(d.map_type, f"cb_maglev_{rev_nat_index}", d.key_size, d.value_size,
                       d.max_entries, flags=d.map_flags)
    try:
        inner.update(0, data.tobytes())
        collection.maps[outer].update(rev_nat_index, inner.fd)
    finally:
        inner.close()


def install_table(collection: Collection, rev_nat_index: int, backend_ids: Sequence[int],
                  m: int | None = None, *, keys: Sequence[BackendKey] | None = None,
                  weights: Sequence[int] | None = None, seed: bytes = b"",
                  outer: str = MAGLEV_MAP) -> list[int]:
    """Build the Maglev table of a frontend's backends and install it; return it
    (M backend ids).

    backend_ids: the ids of the frontend's backends in the backends maps.
    keys: what names each backend (same order), normally its address, port and
        protocol; without it a backend is named by its id, which keeps tables
        stable only as long as ids are.
    m: the table size; default (and the only size the kernel accepts) is the
        object's own M, so a different m raises ValueError.
    """
    size = table_size(collection, outer)
    if m is not None and m != size:
        raise ValueError(f"table size {m} given, but {collection.path} was built "
                         f"with CB_MAGLEV_TABLE_SIZE={size}")
    if keys is not None and len(keys) != len(backend_ids):
        raise ValueError(f"{len(keys)} keys for {len(backend_ids)} backend ids")
    if len(set(backend_ids)) != len(backend_ids):
        raise ValueError("backend ids repeat")
    slots = build_table(list(keys) if keys is not None else list(backend_ids), size,
                        weights=weights, seed=seed)
    table = [backend_ids[i] for i in slots]
    write_table(collection, rev_nat_index, table, outer)
    return table


def remove_table(collection: Collection, rev_nat_index: int, outer: str = MAGLEV_MAP) -> bool:
    """Remove a frontend's table; False if it had none.  New flows of a Maglev
    frontend without a table are dropped (DROP_NO_SERVICE)."""
    try:
        collection.maps[outer].delete(rev_nat_index)
    except KeyNotFoundError:
        return False
    return True
