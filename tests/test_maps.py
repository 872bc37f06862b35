"""Map operations against real kernel maps: CRUD, iteration, batches, per-CPU, LRU, pins."""
from __future__ import annotations

import ctypes
import os

import pytest

from harness.host import bpffs
from harness.bpf import EXIST, NOEXIST, BpfError, KeyNotFoundError, Map
from harness.bpf.errors import NotSupportedError
from harness.abi.structs import TrafficCounter

from .fixture_structs import FixtureKey, FixtureValue

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)


@pytest.fixture
def maps(load):
    return load("loader_fixture").maps


def key(n: int) -> FixtureKey:
    return FixtureKey(addr=0xC6120000 + n, port=80, proto=6)


def test_hash_crud(maps):
    m = maps["hash_map"]
    with pytest.raises(KeyNotFoundError):
        m.lookup(key(1))
    assert m.get(key(1)) is None
    m.update(key(1), FixtureValue(hits=0, backend=7, flags=1))
    assert m.lookup(key(1)).backend == 7
    m.update(key(1), FixtureValue(hits=5, backend=8, flags=1))
    assert (m.lookup(key(1)).hits, m.lookup(key(1)).backend) == (5, 8)
    m.delete(key(1))
    with pytest.raises(KeyNotFoundError):
        m.delete(key(1))
    assert len(m) == 0


def test_update_flags(maps):
    m = maps["hash_map"]
    m.update(key(2), FixtureValue(backend=1), flags=NOEXIST)
    with pytest.raises(BpfError) as info:
        m.update(key(2), FixtureValue(backend=2), flags=NOEXIST)
    assert info.value.errno == 17           # EEXIST
    with pytest.raises(BpfError):
        m.update(key(3), FixtureValue(backend=3), flags=EXIST)
    m.update(key(2), FixtureValue(backend=4), flags=EXIST)
    assert m.lookup(key(2)).backend == 4


def test_bad_key_size_is_refused_before_the_syscall(maps):
    m = maps["hash_map"]
    with pytest.raises(ValueError, match="key is 3 bytes, expected 8"):
        m.lookup(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="value is 4 bytes, expected 16"):
        m.update(key(1), b"\x00" * 4)
    with pytest.raises(ValueError, match="key type c_ushort is 2 bytes, the map's key is 8"):
        m.key_type = ctypes.c_uint16
    with pytest.raises(TypeError, match="cannot use str as key"):
        m.lookup("nope")


def test_raw_bytes_and_ints_are_accepted(maps):
    arr = maps["array_map"]
    arr.update(3, 12345)
    assert arr.lookup(3) == 12345
    assert arr.lookup(b"\x03\x00\x00\x00") == 12345
    h = maps["hash_map"]
    h.update(bytes(key(9)), bytes(FixtureValue(backend=9)))
    assert h.lookup(key(9)).backend == 9


def test_iteration(maps):
    m = maps["hash_map"]
    for i in range(50):
        m.update(key(i), FixtureValue(backend=i))
    items = dict(m.items())
    assert len(items) == 50 == len(m)
    assert {k.addr - 0xC6120000: v.backend for k, v in items.items()} == {i: i for i in range(50)}
    arr = maps["array_map"]
    assert sorted(arr.keys()) == list(range(16))     # arrays always have every index


def test_batch_update_lookup_delete(maps):
    m = maps["hash_map"]
    keys = [key(i) for i in range(500)]
    values = [FixtureValue(hits=i, backend=i * 2) for i in range(500)]
    assert m.update_batch(keys, values) == 500
    got = dict(m.lookup_batch(chunk=64))
    assert len(got) == 500
    assert all(got[k].backend == 2 * (k.addr - 0xC6120000) for k in got)
    assert m.delete_batch(keys[:200]) == 200
    assert len(m) == 300
    with pytest.raises(KeyNotFoundError):
        m.delete_batch([key(0)])
    assert m.clear() == 300 and len(m) == 0


def test_batch_length_mismatch(maps):
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        maps["hash_map"].update_batch([key(1), key(2)], [FixtureValue()])


def test_array_batch_update(maps):
    arr = maps["array_map"]
    assert arr.update_batch(list(range(16)), [i * 10 for i in range(16)]) == 16
    assert [arr.lookup(i) for i in range(16)] == [i * 10 for i in range(16)]


def test_array_lookup_batch_not_supported_is_typed(maps):
    # BPF_MAP_LOOKUP_BATCH works on arrays since 5.6; either way the answer is typed.
    arr = maps["array_map"]
    try:
        assert len(arr.lookup_batch()) == 16
    except NotSupportedError:
        pass


def test_per_cpu_values(maps, load):
    m = maps["percpu_map"]
    assert m.per_cpu and m.ncpus >= os.cpu_count()
    values = [TrafficCounter(packets=i, bytes=100 * i) for i in range(m.ncpus)]
    m.update(0, values)
    got = m.lookup(0)
    assert [(v.packets, v.bytes) for v in got] == [(i, 100 * i) for i in range(m.ncpus)]
    m.update(0, TrafficCounter(packets=1, bytes=2))     # one value: every CPU gets it
    assert all((v.packets, v.bytes) == (1, 2) for v in m.lookup(0))
    with pytest.raises(ValueError, match="per-CPU value needs"):
        m.update(0, [TrafficCounter()] * (m.ncpus + 1))


def test_lru_evicts_instead_of_failing(maps):
    m = maps["lru_map"]
    for i in range(1000):
        m.update(i, i)                       # 1000 inserts into a 64-entry LRU: no error
    assert 0 < len(m) <= 64
    assert m.lookup(999) == 999              # the newest entry survives


def test_count_reads_every_entry(maps):
    m = maps["hash_map"]
    assert m.count() == 0
    m.update_batch([key(i) for i in range(300)], [FixtureValue()] * 300)
    assert m.count(chunk=64) == m.count() == len(m) == 300


def test_map_flags_make_the_lru_per_cpu(load):
    """With NO_COMMON_LRU each CPU has its own share of max_entries: inserts from
    one CPU evict once that share (not the whole map) is full."""
    from harness.bpf import _libbpf as L
    from harness.bpf.maps import NO_COMMON_LRU
    m = load("loader_fixture", map_flags={"lru_map": NO_COMMON_LRU}).maps["lru_map"]
    ncpus = L.libbpf_num_possible_cpus()
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {max(saved)})
        for i in range(1000):
            m.update(i, i)
    finally:
        os.sched_setaffinity(0, saved)
    assert 0 < len(m) <= -(-64 // ncpus)
    assert m.lookup(999) == 999


def test_full_hash_map_says_so(load):
    m = load("loader_fixture", max_entries={"hash_map": 4}).maps["hash_map"]
    for i in range(4):
        m.update(key(i), FixtureValue())
    with pytest.raises(BpfError, match="full: max_entries=4"):
        m.update(key(4), FixtureValue())


def test_pin_and_reopen(maps):
    path = bpffs.pin_path(f"test-{os.getpid()}", "hash_map")
    m = maps["hash_map"]
    m.update(key(1), FixtureValue(backend=42))
    m.pin(path)
    try:
        with Map.from_pin(path, FixtureKey, FixtureValue) as pinned:
            assert pinned.name == "hash_map" and pinned.max_entries == 1024
            assert pinned.lookup(key(1)).backend == 42
            pinned.update(key(2), FixtureValue(backend=43))
        assert m.lookup(key(2)).backend == 43      # same kernel map
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
        bpffs.prune()


def test_from_pin_missing():
    with pytest.raises(BpfError) as info:
        Map.from_pin(bpffs.pin_path("does-not-exist"))
    bpffs.prune()
    assert info.value.errno == 2


def test_pin_path_creates_nothing(monkeypatch):
    # A path computed to look or to remove (chainbench down, a test's clean-up) must
    # not leave an empty pin root behind, as it did after `make test`.
    root = os.path.join(bpffs.MOUNT_POINT, f"{bpffs.TEST_PIN_PREFIX}{os.getpid()}-root")
    monkeypatch.setattr(bpffs, "PIN_ROOT", root)
    path = bpffs.pin_path("node", "maps")
    assert path == os.path.join(root, "node", "maps")
    assert not os.path.exists(root)
