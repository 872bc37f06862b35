"""Backend selection over many new flows: random spread, session affinity."""
from __future__ import annotations

import collections
import ipaddress

from scapy.layers.inet import IP

import pytest

from harness.node import conntrack
from harness.testrun.runner import Runner

from . import lbkit as K
from .lbkit import endpoint, service, tcp4

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

VIP = "198.19.0.40"
BACKENDS = [f"198.18.1.{20 + i}" for i in range(4)]
# Chi-square critical value, 3 degrees of freedom, p = 0.001: a fair spread
# fails this test once in a thousand runs.
CHI2_CRIT_DF3 = 16.27


def build(load, affinity: int = 0, endpoints=None):
    eps = endpoints or [endpoint(b) for b in BACKENDS]
    return K.build(load, K.scenario(service("spread", VIP, [("http", 80, 8080, "TCP")], eps,
                                            affinity=affinity)),
                   max_entries={"cb_ct4": 65536})


def test_random_spread_over_10000_new_flows(load):
    dp = build(load)
    runner = Runner(dp.lxc, "from_container")
    # One packet built by scapy, then patched per flow (source address and port):
    # from_container does not verify checksums, and scapy is ~1 ms a packet.
    template = bytearray(bytes(tcp4(VIP, 80)))
    counts = collections.Counter()
    for i in range(10_000):
        template[26:30] = ipaddress.IPv4Address(f"198.18.0.{2 + i % 200}").packed
        template[34:36] = (10000 + i).to_bytes(2, "big")
        out = runner.run(bytes(template)).packet_out
        counts[str(ipaddress.IPv4Address(out[30:34]))] += 1
    assert set(counts) == set(BACKENDS)
    expected = 10_000 / len(BACKENDS)
    chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
    assert chi2 < CHI2_CRIT_DF3, (chi2, counts)


def test_affinity_pins_a_client(load):
    dp = build(load, affinity=600)
    first = dp.run("from_container", tcp4(VIP, 80, sport=20000))[1][IP].dst
    for sport in range(20001, 20200):
        assert dp.run("from_container", tcp4(VIP, 80, sport=sport))[1][IP].dst == first
    # Other clients are spread as usual.
    others = {dp.run("from_container", tcp4(VIP, 80, src=f"198.18.0.{10 + i}"))[1][IP].dst
              for i in range(100)}
    assert len(others) >= 3


def test_affinity_expires(load):
    dp = build(load, affinity=30)
    first = dp.run("from_container", tcp4(VIP, 80, sport=21000))[1][IP].dst
    aff = dp.lxc.maps["cb_lb_affinity"]
    (key, val), = aff.items()
    assert val.backend_id == dp.control.backend_id((K.ip(first), 8080, "TCP"))
    val.last_used = conntrack.now() - 31
    aff.update(key, val)
    seen = {dp.run("from_container", tcp4(VIP, 80, sport=21001 + i))[1][IP].dst
            for i in range(1)}
    # After expiry the next flow chooses afresh and re-pins: every later flow agrees.
    pinned = seen.pop()
    for sport in range(21100, 21150):
        assert dp.run("from_container", tcp4(VIP, 80, sport=sport))[1][IP].dst == pinned
    assert aff.lookup(key).last_used >= conntrack.now() - 1


def test_affinity_moves_off_a_terminating_backend(load):
    dp = build(load, affinity=600)
    first = dp.run("from_container", tcp4(VIP, 80, sport=22000))[1][IP].dst
    eps = [endpoint(b, ready=b != first, serving=True, terminating=b == first) for b in BACKENDS]
    dp.apply(K.scenario(service("spread", VIP, [("http", 80, 8080, "TCP")], eps, affinity=600)))
    moved = dp.run("from_container", tcp4(VIP, 80, sport=22001))[1][IP].dst
    assert moved != first
    for sport in range(22002, 22030):
        assert dp.run("from_container", tcp4(VIP, 80, sport=sport))[1][IP].dst == moved
