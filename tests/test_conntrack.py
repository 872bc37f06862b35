"""Conntrack lifecycle: lifetimes per protocol and TCP state, expiry, GC, flush."""
from __future__ import annotations

from scapy.layers.inet import IP

import pytest

from harness.node import conntrack

from . import lbkit as K
from .lbkit import endpoint, service, tcp4, udp4

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

VIP = "198.19.0.10"


def setup(load, **rodata):
    scen = K.scenario(service("web", VIP, [("http", 80, 8080, "TCP"), ("dns", 53, 53, "UDP")],
                              [endpoint("198.18.1.20"), endpoint("198.18.1.21")]))
    return K.build(load, scen, **rodata)


def by_dir(dp) -> dict[str, conntrack.CtRecord]:
    return {r.direction: r for r in conntrack.records(dp.lxc.maps)}


def test_lifetimes_follow_tcp_state(load):
    dp = setup(load, ct_lifetime_syn=30, ct_lifetime_tcp=3000, ct_lifetime_close=5)
    dp.run("from_container", tcp4(VIP, 80, sport=40001, flags="S"))
    rec = by_dir(dp)["egress"]
    assert 28 <= rec.expires_in <= 30 and rec.tcp_flags_seen == "tx=SYN rx=-"
    backend = str(rec.daddr)
    reply = K.built(K.eth() / IP(src=backend, dst=K.CLIENT4) / K.TCP(sport=8080, dport=40001,
                                                                      flags="SA"))
    dp.run("to_container", reply)
    dp.run("from_container", tcp4(VIP, 80, sport=40001, flags="A"))
    rec = by_dir(dp)["egress"]
    assert 2998 <= rec.expires_in <= 3000
    assert rec.tcp_flags_seen == "tx=SYN|ACK rx=SYN|ACK" and "seen_non_syn" in rec.flags
    assert (rec.tx_packets, rec.rx_packets) == (2, 1)
    dp.run("from_container", tcp4(VIP, 80, sport=40001, flags="FA"))
    assert "tx_closing" in by_dir(dp)["egress"].flags
    assert by_dir(dp)["egress"].expires_in > 5        # one side closing only
    dp.run("to_container", K.built(K.eth() / IP(src=backend, dst=K.CLIENT4)
                                    / K.TCP(sport=8080, dport=40001, flags="FA")))
    rec = by_dir(dp)["egress"]
    assert {"tx_closing", "rx_closing"} <= set(rec.flags) and rec.expires_in <= 5


def test_udp_lifetime(load):
    dp = setup(load, ct_lifetime_nontcp=42)
    dp.run("from_container", udp4(VIP, 53))
    recs = by_dir(dp)
    assert 40 <= recs["egress"].expires_in <= 42 and recs["egress"].protocol == "UDP"
    assert recs["service"].daddr == K.ip(VIP) and recs["service"].dport == 53


def test_gc_removes_only_expired(load):
    dp = setup(load, ct_lifetime_nontcp=10)
    dp.run("from_container", udp4(VIP, 53, sport=1000))
    dp.run("from_container", tcp4(VIP, 80, sport=1001, flags="A"))   # established lifetime
    assert len(list(conntrack.records(dp.lxc.maps))) == 4
    assert conntrack.gc(dp.lxc.maps) == {"cb_ct4": 0, "cb_ct6": 0}
    removed = conntrack.gc(dp.lxc.maps, at=conntrack.now() + 60)
    assert removed["cb_ct4"] == 2                                     # the UDP pair
    left = list(conntrack.records(dp.lxc.maps))
    assert len(left) == 2 and all(r.protocol == "TCP" for r in left)


def test_expired_entry_counts_as_absent(load):
    dp = setup(load)
    dp.run("from_container", tcp4(VIP, 80, sport=1002))
    m = dp.lxc.maps["cb_ct4"]
    for k, v in list(m.items()):
        v.lifetime = conntrack.now() - 5
        m.update(k, v)
    dp.run("from_container", tcp4(VIP, 80, sport=1002))
    recs = list(conntrack.records(dp.lxc.maps))
    # Both entries are created afresh (the backend may differ: the flow chose again).
    fresh = [r for r in recs if r.expires_in > 0]
    assert sorted(r.direction for r in fresh) == ["egress", "service"]
    assert all(r.tx_packets == 1 for r in fresh)


def test_flush(load):
    dp = setup(load)
    for sport in range(5):
        dp.run("from_container", tcp4(VIP, 80, sport=2000 + sport))
    assert conntrack.flush(dp.lxc.maps) == {"cb_ct4": 10, "cb_ct6": 0}
    assert not list(conntrack.records(dp.lxc.maps))


def test_ingress_connection_and_its_reply(load):
    dp = setup(load)
    syn = tcp4("198.18.0.2", 8080, src="198.18.1.50", sport=3000)
    dp.run("to_container", syn)                      # a connection into the pod
    reply = tcp4("198.18.1.50", 3000, src="198.18.0.2", sport=8080, flags="SA")
    dp.run("from_container", reply)
    recs = list(conntrack.records(dp.lxc.maps))
    assert len(recs) == 1 and recs[0].direction == "ingress"
    assert (recs[0].tx_packets, recs[0].rx_packets) == (1, 1)
