"""Maglev tables built in bulk (harness.lb.maglev_bulk) against the per-table
reference (harness.lb.maglev.build_table / install_table): the same tables on
random inputs, the same errors, and the same inner maps in a loaded lxc object."""
from __future__ import annotations

import ctypes
import ipaddress
import os
import random

import numpy as np
import pytest

from harness.bpf import Map, _libbpf as L
from harness.lb import maglev, maglev_bulk

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # and beside the fault suite: it leaves nothing behind


def random_keys(rng: random.Random, n: int) -> list:
    """n distinct backends, IPv4 and IPv6, TCP and UDP, in random order; some named by id."""
    seen: set = set()
    while len(seen) < n:
        r = rng.random()
        if r < 0.45:
            seen.add((ipaddress.IPv4Address(0xC6120000 | rng.getrandbits(16)),
                      rng.randrange(1, 65536), rng.choice(["TCP", "UDP", 132])))
        elif r < 0.9:
            seen.add((ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(96)),
                      rng.randrange(1, 65536), rng.choice([6, 17])))
        else:
            seen.add(rng.randrange(1, 1 << 20))
    keys = list(seen)
    rng.shuffle(keys)
    return keys


@pytest.fixture(params=["bulk", "default"])
def min_tables(request, monkeypatch):
    """Run with every group of tables filled in bulk, and with the module's own
    choice (bulk or table by table)."""
    if request.param == "bulk":
        monkeypatch.setattr(maglev_bulk, "BULK_MIN_TABLES", 1)
        monkeypatch.setattr(maglev_bulk, "BULK_MIN_WALKS", 0)
        monkeypatch.setattr(maglev_bulk, "BULK_MAX_BACKENDS", 1 << 20)
    return request.param


@pytest.mark.parametrize("m", [13, 251, 16381])
@pytest.mark.parametrize("seed", [b"", b"cluster-7"])
def test_bulk_equals_per_table(m, seed, min_tables):
    """Random backend lists (1..50 backends, fewer than m), some sharing backends, and
    a group of equal-sized lists: row k is build_table(lists[k]) exactly."""
    rng = random.Random(m * 31 + len(seed))
    lists = [random_keys(rng, rng.randint(1, min(50, m - 1))) for _ in range(30)]
    lists += [random_keys(rng, min(10, m - 1)) for _ in range(12)]
    shared = random_keys(rng, min(8, m - 1))
    lists += [rng.sample(shared, len(shared)) for _ in range(3)]          # same set, other orders
    lists += [shared[:3] + random_keys(rng, 2) for _ in range(2)]
    rng.shuffle(lists)
    got = maglev_bulk.build_tables(lists, m, seed=seed)
    assert got.shape == (len(lists), m)
    for keys, row in zip(lists, got):
        assert row.tolist() == maglev.build_table(keys, m, seed=seed)


def test_bulk_large_backend_counts(min_tables):
    """A few tables of 100..1000 backends at the default M."""
    rng = random.Random(5)
    lists = [random_keys(rng, n) for n in (100, 100, 300, 1000)]
    got = maglev_bulk.build_tables(lists)
    for keys, row in zip(lists, got):
        assert row.tolist() == maglev.build_table(keys)


def test_bulk_errors_and_empty():
    assert maglev_bulk.build_tables([]).shape == (0, maglev.DEFAULT_TABLE_SIZE)
    assert maglev_bulk.build_tables([]).tolist() == []
    good = [("198.18.0.1", 80, 6)]
    with pytest.raises(ValueError, match="same name: 198.18.0.1:80/TCP"):
        maglev_bulk.build_tables([good, [("198.18.0.1", 80, 6), ("198.18.0.1", 80, "TCP")]])
    with pytest.raises(ValueError, match="at least one backend"):
        maglev_bulk.build_tables([good, []])
    with pytest.raises(ValueError, match="must exceed"):
        maglev_bulk.build_tables([good, [f"b{i}" for i in range(7)]], 7)
    with pytest.raises(ValueError, match="not prime"):
        maglev_bulk.build_tables([good], 16380)
    with pytest.raises(ValueError, match="not prime"):
        maglev_bulk.build_tables([], 16380)


def installed(coll, rev_nat_index: int) -> list[int]:
    """Read a frontend's table back: outer map value (inner map id) -> inner map[0]."""
    inner_id = int(coll.maps[maglev.MAGLEV_MAP].lookup(rev_nat_index))
    get_fd = L.lib.bpf_map_get_fd_by_id
    get_fd.restype, get_fd.argtypes = ctypes.c_int, [ctypes.c_uint32]
    fd = get_fd(inner_id)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    size = maglev.table_size(coll)
    inner = Map("inner", fd, 2, 4, size * 4, 1, owns_fd=True)        # 2: BPF_MAP_TYPE_ARRAY
    try:
        return np.frombuffer(bytes(inner.lookup(0)), dtype=np.uint32).tolist()
    finally:
        inner.close()


def test_install_tables_writes_what_install_table_writes(load, min_tables):
    """Twelve frontends installed in bulk on one object and one by one on another:
    the inner tables read back from the maps are the same, and re-installing in bulk
    replaces a frontend's table."""
    rng = random.Random(3)
    items = []
    for rev_nat in range(1, 13):
        keys = random_keys(rng, rng.choice([1, 5, 10, 10, 10, 40]))
        ids = rng.sample(range(1, 1 << 20), len(keys))
        items.append((rev_nat, ids, keys))
    bulk, single = load("lxc"), load("lxc")
    maglev_bulk.install_tables(bulk, items)
    for rev_nat, ids, keys in items:
        want = maglev.install_table(single, rev_nat, ids, keys=keys)
        assert installed(single, rev_nat) == want
        assert installed(bulk, rev_nat) == want
    rev_nat, ids, keys = items[0]
    maglev_bulk.install_tables(bulk, [(rev_nat, ids[:-1] or [7], keys[:-1] or ["x"])])
    assert installed(bulk, rev_nat) == maglev.install_table(single, rev_nat, ids[:-1] or [7],
                                                            keys=keys[:-1] or ["x"])


def test_install_tables_checks_before_writing(load):
    coll = load("lxc")
    good = (1, [1, 2], [("198.18.0.1", 80, 6), ("198.18.0.2", 80, 6)])
    with pytest.raises(ValueError, match="keys for"):
        maglev_bulk.install_tables(coll, [good, (2, [1, 2], [("198.18.0.1", 80, 6)])])
    with pytest.raises(ValueError, match="backend ids repeat"):
        maglev_bulk.install_tables(coll, [good, (2, [3, 3], ["a", "b"])])
    with pytest.raises(ValueError, match="0 means"):
        maglev_bulk.install_tables(coll, [good, (2, [0], ["a"])])
    assert maglev.remove_table(coll, 1) is False       # nothing was written
    maglev_bulk.install_tables(coll, [])
