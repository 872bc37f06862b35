"""Maglev: the table builder against the paper and its promises (full tables,
even shares, order independence, small disruption), and the flow hash and
installed tables against the kernel (lxc's from_container picks
``table[flow_hash % M]``, the same backend after a reload)."""
from __future__ import annotations

import hashlib
import ipaddress
import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness.bpf import Collection
from harness.abi.cheaders import defines
from harness.abi.drop_reasons import CODES
from harness.lb import maglev
from harness.lb.flowhash import flow_hash4, flow_hash6, jhash_3words
from harness.abi.structs import (Lb4Backend, Lb4Key, Lb6Backend, Lb6Key, LbService, V6Addr, be16,
                             be32)
from harness.testrun.packets import eth
from harness.testrun.runner import Runner

from .support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

M = maglev.DEFAULT_TABLE_SIZE
TCP_P, UDP_P = 6, 17
SVC_F = defines("lib/lb.h", "SVC_F_")
MAGLEV_FLAGS = SVC_F["SVC_F_CLUSTERIP"] | SVC_F["SVC_F_MAGLEV"]


def backends(n: int, base: str = "198.18.0.10", port: int = 8080) -> list[tuple]:
    first = ipaddress.ip_address(base)
    return [(first + i, port, "TCP") for i in range(n)]


def random_backends(rng: random.Random, n: int) -> list[tuple]:
    seen: set[tuple] = set()
    while len(seen) < n:
        seen.add((ipaddress.IPv4Address(f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"),
                  rng.randrange(1, 65536), "TCP"))
    return sorted(seen)


def names_of(table: list[int], keys: list) -> list:
    return [keys[i] for i in table]


# --- the builder ------------------------------------------------------------------------------

def test_paper_table_1():
    """Eisenbud et al., Table 1: B0 (offset 3, skip 4), B1 (0, 2), B2 (3, 1), M = 7;
    removing B1 moves its two slots and one of B0's (slot 6), as the paper shows."""
    assert maglev.populate([(3, 4), (0, 2), (3, 1)], 7) == [1, 0, 1, 0, 2, 2, 0]
    assert maglev.populate([(3, 4), (3, 1)], 7) == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50, 100])
def test_every_slot_filled_and_shares_within_one_slot(n):
    """Turns alternate over backends and each fills exactly one slot, so every
    backend owns floor(M/N) or ceil(M/N) slots: at N = 100 that is within 1 of
    163.81, a 0.6% deviation (the paper: "each backend gets roughly M/N")."""
    keys = backends(n)
    table = maglev.build_table(keys)
    assert len(table) == M
    assert all(0 <= i < n for i in table)
    counts = Counter(table)
    assert set(counts) == set(range(n))
    assert all(M // n <= c <= -(-M // n) for c in counts.values())
    assert max(abs(c - M / n) for c in counts.values()) / (M / n) <= 0.01


@pytest.mark.parametrize("n", [3, 10, 50])
def test_weights_give_proportional_shares(n):
    """Cilium's rule lets backend i take a turn only while slots_i <= turn * w_i / W,
    so it ends with at most share_i + 1 slots, and (the others being at most 1
    over) at least share_i - (N - 1).  Measured over 20 random weight sets (1..100)
    per N: the worst deficit is 1.5 slots at N=3, 2.6 at N=10, 4.7 at N=50."""
    rng = random.Random(n)
    for _ in range(20):
        keys = random_backends(rng, n)
        weights = [rng.randrange(1, 101) for _ in range(n)]
        counts = Counter(maglev.build_table(keys, weights=weights))
        for i, w in enumerate(weights):
            share = M * w / sum(weights)
            assert share - (n - 1) <= counts[i] <= share + 1


def test_equal_weights_are_the_unweighted_table():
    keys = backends(10)
    assert maglev.build_table(keys, weights=[7] * 10) == maglev.build_table(keys)


def test_order_does_not_matter():
    keys = random_backends(random.Random(3), 40)
    reference = names_of(maglev.build_table(keys), keys)
    for seed in range(3):
        shuffled = keys[:]
        random.Random(seed).shuffle(shuffled)
        assert names_of(maglev.build_table(shuffled), shuffled) == reference


def test_table_is_fixed_across_runs():
    """The hashes are BLAKE2b, not Python's per-process hash(): the same backends
    give this exact table in every process, on every machine."""
    assert maglev.backend_name(("198.18.0.10", 8080, "TCP")) == b"198.18.0.10:8080/TCP"
    assert maglev.permutation(b"198.18.0.10:8080/TCP", M) == (15512, 2281)
    table = maglev.build_table(backends(5))
    assert hashlib.sha256(bytes(table)).hexdigest()[:16] == "354fd5c336d5560f"


def test_backend_names():
    v4 = ipaddress.ip_address("198.18.0.10")
    v6 = ipaddress.ip_address("2001:db8:1::a")
    assert maglev.backend_name((v4, 80, 6)) == maglev.backend_name(("198.18.0.10", 80, "tcp"))
    assert maglev.backend_name((v6, 80, 17)) == b"[2001:db8:1::a]:80/UDP"
    assert maglev.backend_name((v4, 80)) == b"198.18.0.10:80"
    assert maglev.backend_name(Lb4Backend(address=be32(v4), port=be16(80), proto=6)) == \
        b"198.18.0.10:80/TCP"
    assert maglev.backend_name(Lb6Backend(address=V6Addr.of(v6), port=be16(443), proto=6)) == \
        b"[2001:db8:1::a]:443/TCP"
    assert maglev.backend_name(42) == b"42"
    with pytest.raises(TypeError):
        maglev.backend_name(3.5)


@pytest.mark.parametrize("m", [16380, 16383, 1, 0, 65535])
def test_non_prime_size_is_rejected(m):
    with pytest.raises(ValueError, match="not prime"):
        maglev.build_table(backends(3), m)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="must exceed"):
        maglev.build_table(backends(7), 7)
    with pytest.raises(ValueError, match="at least one backend"):
        maglev.build_table([])
    with pytest.raises(ValueError, match="same name"):
        maglev.build_table([("198.18.0.1", 80, 6), ("198.18.0.1", 80, "TCP")])
    with pytest.raises(ValueError, match="weights"):
        maglev.build_table(backends(3), weights=[1, 0, 1])
    with pytest.raises(ValueError, match="2 weights for 3"):
        maglev.build_table(backends(3), weights=[1, 1])
    with pytest.raises(ValueError, match="skips"):
        maglev.populate([(0, 0)], 7)


def test_build_time():
    """16381 slots x 100 backends, plain Python: measured about 15 ms."""
    keys = backends(100)
    best = min(_timed(maglev.build_table, keys) for _ in range(3))
    assert best < 0.5


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# --- disruption -------------------------------------------------------------------------------
#
# A removed backend's slots must move (1/N of the table, the minimum); Maglev
# also moves some slots between surviving backends, because a survivor's
# preference list now meets different filled slots.  The paper promises
# near-minimal, not minimal, disruption.  Changed slots / M, measured on the
# 20 random backend sets each test below draws (M = 16381):
#
#   remove 1 of N:  N=3  mean 0.3348 max 0.3499 (1/N 0.3333)
#                   N=10 mean 0.1049 max 0.1067 (1/N 0.1000)
#                   N=50 mean 0.0300 max 0.0314 (1/N 0.0200)
#   add 1 to N:     N=3  mean 0.2515 max 0.2540 (1/(N+1) 0.2500)
#                   N=10 mean 0.0960 max 0.0982 (1/(N+1) 0.0909)
#                   N=50 mean 0.0299 max 0.0310 (1/(N+1) 0.0196)
#
# The excess grows with N/M (the paper asks for M >> N, at least 100x).  Over
# 200 further sets the excess (beyond the removed backend's own slots) had
# p99 0.5% (N=3), 1.2% (N=5), 1.1% (N=10), and 1.7% at N=50 (60 sets), with
# one outlier of 7.9% at N=10: two backends had drawn the same skip, so they
# walk the same cycle and push each other around when the turn order changes.
# That happens with probability about N^2 / 2M (0.3% at N=10, 7% at N=50) and
# is inherent in the paper's permutations (Cilium's tables share it).  The
# bounds asserted: every set here within minimum + 2% of the table, and the
# mean excess at most 1.5%.

EXCESS = 0.02
MEAN_EXCESS = 0.015


def changed_fraction(before: list[int], before_keys: list, after: list[int],
                     after_keys: list) -> float:
    return sum(before_keys[a] != after_keys[b] for a, b in zip(before, after)) / len(before)


@pytest.mark.parametrize("n", [3, 10, 50])
def test_removing_a_backend_moves_about_one_nth(n):
    rng = random.Random(n)
    excess = []
    for _ in range(20):
        keys = random_backends(rng, n)
        table = maglev.build_table(keys)
        gone = rng.randrange(n)
        rest = keys[:gone] + keys[gone + 1:]
        changed = changed_fraction(table, keys, maglev.build_table(rest), rest)
        owned = table.count(gone) / M
        assert changed >= owned                       # the removed backend's slots all move
        assert changed <= 1 / n + EXCESS, (n, changed)
        excess.append(changed - owned)
    assert sum(excess) / len(excess) <= MEAN_EXCESS


@pytest.mark.parametrize("n", [3, 10, 50])
def test_adding_a_backend_moves_about_one_in_n_plus_one(n):
    rng = random.Random(100 + n)
    excess = []
    for _ in range(20):
        keys = random_backends(rng, n + 1)
        added = keys.pop(rng.randrange(n + 1))
        table = maglev.build_table(keys)
        grown = keys + [added]
        after = maglev.build_table(grown)
        changed = changed_fraction(table, keys, after, grown)
        gained = after.count(n) / M
        assert changed >= gained                      # the new backend's slots all changed
        assert changed <= 1 / (n + 1) + EXCESS, (n, changed)
        excess.append(changed - gained)
    assert sum(excess) / len(excess) <= MEAN_EXCESS


# --- the flow hash ----------------------------------------------------------------------------

def test_flow_hash_known_values():
    """Frozen values (the kernel tests below prove them against lib/hash.h), and the
    byte-order conversion done inside: words are the __be32/__be16 a BPF load yields."""
    seed = 0x63686E62
    assert jhash_3words(1, 2, 3, 0) == 0xE16988D7
    assert flow_hash4("198.18.0.2", "198.19.0.10", 40000, 80, TCP_P, seed) == 0xEB961603
    assert flow_hash6("2001:db8:1::2", "2001:db8:2::10", 40000, 80, TCP_P, seed) == 0x157577A6
    assert flow_hash4("198.18.0.2", "198.19.0.10", 40000, 80, TCP_P, seed) == jhash_3words(
        be32("198.18.0.2"), be32("198.19.0.10"), (be16(40000) << 16) | be16(80), seed ^ TCP_P)
    with pytest.raises(ValueError):
        flow_hash4("2001:db8::1", "198.19.0.10", 1, 2, TCP_P, seed)
    with pytest.raises(ValueError):
        flow_hash6("2001:db8::1", "2001:db8::2", 70000, 2, TCP_P, seed)


# --- against the kernel -----------------------------------------------------------------------

@dataclass(frozen=True)
class Svc:
    vip: str
    port: int
    proto: int
    rev_nat: int
    backends: tuple[tuple[int, str, int], ...]      # (backend id, address, port)

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.vip).version

    def keys(self) -> list[tuple]:
        return [(addr, port, self.proto) for _, addr, port in self.backends]

    def ids(self) -> list[int]:
        return [bid for bid, _, _ in self.backends]


def _svc(vip: str, port: int, proto: int, rev_nat: int, first_id: int, count: int,
         base: str, be_port: int) -> Svc:
    first = ipaddress.ip_address(base)
    return Svc(vip, port, proto, rev_nat,
               tuple((first_id + i, str(first + i), be_port) for i in range(count)))


SERVICES4 = (
    _svc("198.19.0.10", 80, TCP_P, 1, 1, 7, "198.18.0.10", 8080),
    _svc("198.19.0.11", 53, UDP_P, 2, 20, 5, "198.18.1.10", 5353),
    _svc("198.19.0.12", 443, TCP_P, 3, 40, 50, "198.18.2.10", 8443),
)
SERVICES6 = (
    _svc("2001:db8:2::10", 80, TCP_P, 11, 101, 7, "2001:db8:1::10", 8080),
    _svc("2001:db8:2::11", 53, UDP_P, 12, 120, 5, "2001:db8:1:1::10", 5353),
    _svc("2001:db8:2::12", 443, TCP_P, 13, 140, 50, "2001:db8:1:2::10", 8443),
)


def program(coll: Collection, svc: Svc, active: list[int] | None = None) -> list[int]:
    """Write a Maglev frontend (services, backends, table); return the table."""
    fam = svc.family
    chosen = [b for b in svc.backends if active is None or b[0] in active]
    services, backends_map = coll.maps[f"cb_lb{fam}_services"], coll.maps[f"cb_lb{fam}_backends"]

    def key(slot: int):
        if fam == 4:
            return Lb4Key(address=be32(svc.vip), dport=be16(svc.port), backend_slot=slot,
                          proto=svc.proto)
        return Lb6Key(address=V6Addr.of(svc.vip), dport=be16(svc.port), backend_slot=slot,
                      proto=svc.proto)

    for bid, addr, port in svc.backends:
        if fam == 4:
            backends_map.update(bid, Lb4Backend(address=be32(addr), port=be16(port),
                                                proto=svc.proto))
        else:
            backends_map.update(bid, Lb6Backend(address=V6Addr.of(addr), port=be16(port),
                                                proto=svc.proto))
    for slot, (bid, _, _) in enumerate(chosen, start=1):
        services.update(key(slot), LbService(backend_id=bid))
    services.update(key(0), LbService(count=len(chosen), rev_nat_index=svc.rev_nat,
                                      flags=MAGLEV_FLAGS))
    return maglev.install_table(coll, svc.rev_nat, [b[0] for b in chosen],
                                keys=[(a, p, svc.proto) for _, a, p in chosen])


def frame(svc: Svc, saddr: str, sport: int) -> bytes:
    l3 = IP(src=saddr, dst=svc.vip) if svc.family == 4 else IPv6(src=saddr, dst=svc.vip)
    l4 = TCP(sport=sport, dport=svc.port, flags="S") if svc.proto == TCP_P else \
        UDP(sport=sport, dport=svc.port)
    return bytes(eth() / l3 / l4)


def kernel_pick(runner: Runner, svc: Svc, saddr: str, sport: int) -> int:
    """The backend id from_container DNATs this flow's first packet to."""
    result = runner.run(frame(svc, saddr, sport))
    assert result.verdict == "TC_ACT_OK", (result.verdict, result.drop_reason)
    out = Ether(result.packet_out)
    l3 = out[IP] if svc.family == 4 else out[IPv6]
    l4 = out[TCP] if svc.proto == TCP_P else out[UDP]
    by_addr = {(ipaddress.ip_address(a), p): bid for bid, a, p in svc.backends}
    return by_addr[(ipaddress.ip_address(l3.dst), l4.dport)]


def predicted(table: list[int], svc: Svc, saddr: str, sport: int, seed: int) -> int:
    hash_fn = flow_hash4 if svc.family == 4 else flow_hash6
    return table[hash_fn(saddr, svc.vip, sport, svc.port, svc.proto, seed) % len(table)]


def test_table_size_and_seed_come_from_the_object(load):
    coll = load("lxc")
    inner = maglev.inner_map_def(coll)
    assert inner == maglev.InnerMapDef("array", 4, 4 * M, 1, 0)
    assert maglev.table_size(coll) == M
    assert maglev.flow_hash_seed(coll) == 0x63686E62
    assert maglev.flow_hash_seed(load("lxc", rodata={"maglev_seed": 12345})) == 12345


def test_install_checks_sizes(load):
    coll = load("lxc")
    with pytest.raises(ValueError, match="CB_MAGLEV_TABLE_SIZE=16381"):
        maglev.install_table(coll, 1, [1, 2, 3], m=16369)
    with pytest.raises(ValueError, match="holds tables of 16381"):
        maglev.write_table(coll, 1, [1] * 7)
    with pytest.raises(ValueError, match="0 means"):
        maglev.write_table(coll, 1, [0] * M)
    with pytest.raises(ValueError, match="keys for"):
        maglev.install_table(coll, 1, [1, 2], keys=[("198.18.0.1", 80, 6)])
    assert maglev.remove_table(coll, 1) is False


@pytest.mark.parametrize("family", [4, 6])
def test_kernel_picks_table_at_flow_hash(load, family):
    """Random flows (v4 and v6, TCP and UDP, three frontends): the kernel's backend
    is table[flow_hash % M] for every one."""
    coll = load("lxc")
    runner = Runner(coll, "from_container")
    seed = maglev.flow_hash_seed(coll)
    services = SERVICES4 if family == 4 else SERVICES6
    tables = {svc.rev_nat: program(coll, svc) for svc in services}
    addresses = st.ip_addresses(v=family).map(str)

    @settings(max_examples=250, deadline=None, database=None)
    @given(svc=st.sampled_from(services), saddr=addresses, sport=st.integers(1, 65535))
    def check(svc: Svc, saddr: str, sport: int) -> None:
        want = predicted(tables[svc.rev_nat], svc, saddr, sport, seed)
        assert kernel_pick(runner, svc, saddr, sport) == want
        seen.add((svc.rev_nat, saddr, sport))

    seen: set[tuple] = set()
    check()
    assert len(seen) >= 200


def test_same_flow_same_backend_across_reloads():
    """Load lxc, program Maglev frontends, note each flow's backend; close it, load
    it again, program the same: every flow gets the same backend."""
    rng = random.Random(11)
    flows = [(svc, str(ipaddress.IPv4Address(rng.getrandbits(32))) if svc.family == 4
              else str(ipaddress.IPv6Address(rng.getrandbits(128))), rng.randrange(1, 65536))
             for svc in rng.choices(SERVICES4 + SERVICES6, k=300)]
    runs, tables = [], []
    for _ in range(2):
        coll = Collection.load(str(object_path("lxc")))   # a fresh object each round
        try:
            tables.append({s.rev_nat: program(coll, s) for s in SERVICES4 + SERVICES6})
            runner = Runner(coll, "from_container")
            runs.append([kernel_pick(runner, svc, saddr, sport) for svc, saddr, sport in flows])
        finally:
            coll.close()
    assert tables[0] == tables[1]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 20      # the flows do spread over the backends


def test_removing_a_backend_in_the_kernel(load):
    """1000 flows over 10 backends; remove one and re-install the table (conntrack
    cleared so every flow is selected afresh): the flows that move are exactly the
    table's prediction, and about 1/10 of them."""
    coll = load("lxc")
    runner = Runner(coll, "from_container")
    seed = maglev.flow_hash_seed(coll)
    svc = _svc("198.19.0.20", 80, TCP_P, 5, 200, 10, "198.18.3.10", 8080)
    rng = random.Random(5)
    flows = [(str(ipaddress.IPv4Address(rng.getrandbits(32))), rng.randrange(1, 65536))
             for _ in range(1000)]
    table = program(coll, svc)
    before = [kernel_pick(runner, svc, s, p) for s, p in flows]
    gone = svc.ids()[4]
    new_table = program(coll, svc, active=[b for b in svc.ids() if b != gone])
    coll.maps["cb_lb4_backends"].delete(gone)
    coll.maps["cb_ct4"].clear()
    after = [kernel_pick(runner, svc, s, p) for s, p in flows]
    assert before == [predicted(table, svc, s, p, seed) for s, p in flows]
    assert after == [predicted(new_table, svc, s, p, seed) for s, p in flows]
    assert gone not in after
    moved = sum(a != b for a, b in zip(before, after)) / len(flows)
    assert moved >= before.count(gone) / len(flows)
    assert moved <= 1 / 10 + EXCESS + 0.04      # + sampling error of 1000 flows (~4 sigma)


def test_remove_table_drops_new_flows(load):
    coll = load("lxc")
    runner = Runner(coll, "from_container")
    svc = SERVICES4[0]
    program(coll, svc)
    assert kernel_pick(runner, svc, "198.18.0.2", 40000) in svc.ids()
    assert maglev.remove_table(coll, svc.rev_nat) is True
    result = runner.run(frame(svc, "198.18.0.3", 40001))
    assert result.verdict == "TC_ACT_SHOT"
    assert result.drop_reason == CODES["DROP_NO_SERVICE"]
