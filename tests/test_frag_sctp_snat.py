"""Fragments of service flows, SCTP services and NodePort SNAT port allocation
(security issue 11), in the real kernel.

    client pod 198.18.0.2 --veth-- [from_container | to_container]      (node cb-node0)
    backends 198.18.1.20/.21 on cb-node1; ClusterIP 198.19.0.10:53 -> :5353/UDP
    world 203.0.113.10 --> [from_netdev] node cb-node0 198.19.128.1 --> backend (SNAT)

Fragments are cut by scapy from one datagram; every fragment's rewritten
addresses and IP checksum are checked, and the L4 checksum on the datagram
scapy reassembles from what the program let out.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP, defragment, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6, fragment6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck

from harness import addressing, paths
from harness.node import datapath
from harness.abi import drop_reasons
from harness.lb.model import Backend, Frontend, LbState
from harness.lb.desired import LbStateError, lb_state
from harness.policy.model import EndpointPolicy, PolicyState
from harness.policy.control import PolicyControl
from harness.scenario import ScenarioError
from harness.abi.structs import SnatEntry, V6Addr, be16, from_be16, from_be32

from . import lbkit as K
from .lbkit import CLIENT4, CLIENT6, assert_valid, endpoint, service

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

ROOT = Path(__file__).resolve().parent.parent
DROP = drop_reasons.CODES
VIP, VIP6 = "198.19.0.10", "2001:db8:2::10"
BE, BE6 = "198.18.1.20", "2001:db8:1:1::20"
SVIP, SVIP6 = "198.19.0.12", "2001:db8:2::12"
NODE0, NODE0_6 = str(addressing.node_ip4(0)), str(addressing.node_ip6(0))
WORLD, WORLD6 = "203.0.113.10", "2001:db8:ffff::10"
EP = 1                   # the client pod's endpoint id (test-run numbering)


def dns(family: int = 4):
    if family == 4:
        return service("dns", VIP, [("dns", 53, 5353, "UDP")], [endpoint(BE)])
    return service("dns6", VIP6, [("dns", 53, 5353, "UDP")], [endpoint(BE6)], family="IPv6")


def sctp_svc(family: int = 4, target: int = 7777):
    if family == 4:
        return service("sig", SVIP, [("sig", 7777, target, "SCTP")], [endpoint(BE)])
    return service("sig6", SVIP6, [("sig", 7777, target, "SCTP")], [endpoint(BE6)],
                   family="IPv6")


# --- helpers ----------------------------------------------------------------------------

def frags4(src: str, dst: str, sport: int, dport: int, ident: int = 0x4242) -> list[Ether]:
    """A 1,200-byte UDP datagram as three IPv4 fragments, checksums filled in."""
    dgram = IP(src=src, dst=dst, id=ident, ttl=63) / UDP(sport=sport, dport=dport) / PAYLOAD
    parts = fragment(IP(bytes(dgram)), fragsize=416)
    assert len(parts) == 3
    return [K.built(K.eth() / p) for p in parts]


def frags6(src: str, dst: str, sport: int, dport: int, ident: int = 0x42424242) -> list[Ether]:
    dgram = (IPv6(src=src, dst=dst, hlim=63) / IPv6ExtHdrFragment(id=ident)
             / UDP(sport=sport, dport=dport) / PAYLOAD)
    parts = fragment6(IPv6(bytes(dgram)), 480)
    assert len(parts) == 3
    return [K.built(K.eth() / p) for p in parts]


PAYLOAD = bytes(range(256)) * 4 + b"tail-of-the-answer" * 9 + b"!!"     # 1,188 bytes


def ip_checksum_ok(pkt: Ether) -> bool:
    header = IP(bytes(pkt[IP]))
    header.chksum = None
    return IP(bytes(header)).chksum == pkt[IP].chksum


def reassembled4(outs: list[Ether]) -> Ether:
    whole = defragment([IP(bytes(o[IP])) for o in outs])
    assert len(whole) == 1
    pkt = K.built(K.eth() / whole[0])
    assert_valid(pkt)                                   # IP and UDP checksums of the datagram
    return pkt


def reassembled6(outs: list[Ether]) -> Ether:
    whole = defragment6([IPv6(bytes(o[IPv6])) for o in outs])
    pkt = K.built(K.eth() / whole)
    assert_valid(pkt)
    return pkt


def sctp_crc_ok(pkt: Ether) -> bool:
    fresh = Ether(bytes(pkt))
    fresh[SCTP].chksum = None
    return Ether(bytes(fresh))[SCTP].chksum == pkt[SCTP].chksum


def enforce_client_ingress(dp: K.Datapath) -> None:
    """The client pod's ingress is enforced with no rule: only replies may enter."""
    state = PolicyState((), (), (EndpointPolicy("default/client", 1000, True, False),))
    PolicyControl(dp.lxc.maps).apply(state, {"default/client": EP})


# --- 1. fragments -------------------------------------------------------------------------

@pytest.mark.parametrize("policy", [False, True], ids=["no-policy", "ingress-enforced"])
def test_fragmented_udp_reply_v4_is_reverse_nated(load, policy):
    dp = K.build(load, K.scenario(dns()), **datapath.endpoint_rodata(EP, K.CLIENT4, K.CLIENT6))
    if policy:
        enforce_client_ingress(dp)
    res, out = dp.run("from_container", K.udp4(VIP, 53, sport=40000))
    assert (res.verdict, out[IP].dst, out[UDP].dport) == ("TC_ACT_OK", BE, 5353)
    outs = []
    for i, frag in enumerate(frags4(BE, CLIENT4, 5353, 40000)):
        res, back = dp.run("to_container", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (back[IP].src, back[IP].dst) == (VIP, CLIENT4), f"fragment {i}"
        for f in ("id", "flags", "frag", "ttl", "len", "proto"):
            assert getattr(back[IP], f) == getattr(frag[IP], f), (i, f)
        assert ip_checksum_ok(back), f"fragment {i}"
        outs.append(back)
    whole = reassembled4(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (53, 40000)
    assert bytes(whole[UDP].payload) == PAYLOAD


@pytest.mark.parametrize("policy", [False, True], ids=["no-policy", "ingress-enforced"])
def test_fragmented_udp_reply_v6_is_reverse_nated(load, policy):
    dp = K.build(load, K.scenario(dns(6)), **datapath.endpoint_rodata(EP, K.CLIENT4, K.CLIENT6))
    if policy:
        enforce_client_ingress(dp)
    req = K.built(K.eth() / IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=40000, dport=53) / b"q")
    res, out = dp.run("from_container", req)
    assert (res.verdict, out[IPv6].dst, out[UDP].dport) == ("TC_ACT_OK", BE6, 5353)
    outs = []
    for i, frag in enumerate(frags6(BE6, CLIENT6, 5353, 40000)):
        res, back = dp.run("to_container", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (back[IPv6].src, back[IPv6].dst) == (VIP6, CLIENT6), f"fragment {i}"
        assert back[IPv6ExtHdrFragment].offset == frag[IPv6ExtHdrFragment].offset
        assert back[IPv6ExtHdrFragment].id == 0x42424242
        outs.append(back)
    whole = reassembled6(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (53, 40000)
    assert bytes(whole[UDP].payload) == PAYLOAD


def test_fragmented_request_to_clusterip_v4(load):
    dp = K.build(load, K.scenario(dns()))
    outs = []
    for i, frag in enumerate(frags4(CLIENT4, VIP, 40001, 53, ident=0x1001)):
        res, out = dp.run("from_container", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (out[IP].src, out[IP].dst) == (CLIENT4, BE), f"fragment {i}"
        assert ip_checksum_ok(out)
        outs.append(out)
    whole = reassembled4(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (40001, 5353)
    assert bytes(whole[UDP].payload) == PAYLOAD


def test_fragmented_request_to_clusterip_v6(load):
    dp = K.build(load, K.scenario(dns(6)))
    outs = []
    for i, frag in enumerate(frags6(CLIENT6, VIP6, 40001, 53, ident=0x1001)):
        res, out = dp.run("from_container", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (out[IPv6].src, out[IPv6].dst) == (CLIENT6, BE6), f"fragment {i}"
        outs.append(out)
    whole = reassembled6(outs)
    assert (whole[UDP].sport, whole[UDP].dport) == (40001, 5353)


def test_later_fragment_before_its_first_keeps_todays_behaviour(load):
    dp = K.build(load, K.scenario(dns()), **datapath.endpoint_rodata(EP, K.CLIENT4, K.CLIENT6))
    first, second, _ = frags4(CLIENT4, VIP, 40002, 53, ident=0x2002)
    res, _ = dp.run("from_container", second)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_FRAG_NOSUPPORT"])
    # Towards the pod: checked as protocol/port 0; ingress with no rule denies it.
    enforce_client_ingress(dp)
    _, reply_second, _ = frags4(BE, CLIENT4, 5353, 40002, ident=0x2003)
    res, _ = dp.run("to_container", reply_second)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_POLICY"])
    # Its first fragment then goes through as usual.
    res, out = dp.run("from_container", first)
    assert (res.verdict, out[IP].dst, out[UDP].dport) == ("TC_ACT_OK", BE, 5353)


def test_first_fragment_records_its_ports(load):
    dp = K.build(load, K.scenario(dns()))
    first = frags4(CLIENT4, VIP, 40003, 53, ident=0x3003)[0]
    dp.run("from_container", first)
    entries = list(dp.lxc.maps["cb_frag4"].items())
    assert len(entries) == 1
    key, ports = entries[0]
    assert (str(from_be32(key.saddr)), str(from_be32(key.daddr)), from_be16(key.id),
            key.proto) == (CLIENT4, VIP, 0x3003, 17)
    assert (from_be16(ports.sport), from_be16(ports.dport)) == (40003, 53)


NP_UDP_REMOTE = service("npu", "198.19.0.21", [("dns", 53, 5353, "UDP")],
                        [endpoint(BE, "cb-node1")], svc_type="NodePort",
                        node_ports={"dns": 31053})


def test_fragmented_nodeport_flow_to_remote_backend_and_back(load):
    dp = K.build(load, K.scenario(NP_UDP_REMOTE), netdev=True)
    outs = []
    for i, frag in enumerate(frags4(WORLD, NODE0, 50000, 31053, ident=0x5005)):
        res, out = dp.run("from_netdev", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (out[IP].src, out[IP].dst) == (NODE0, BE), f"fragment {i}"
        assert ip_checksum_ok(out)
        outs.append(out)
    whole = reassembled4(outs)
    snat_port = whole[UDP].sport
    assert 32768 <= snat_port <= 65535 and whole[UDP].dport == 5353
    backs = []
    for i, frag in enumerate(frags4(BE, NODE0, 5353, snat_port, ident=0x5006)):
        res, back = dp.run("from_netdev", frag)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None), f"fragment {i}"
        assert (back[IP].src, back[IP].dst) == (NODE0, WORLD), f"fragment {i}"
        assert ip_checksum_ok(back)
        backs.append(back)
    whole = reassembled4(backs)
    assert (whole[UDP].sport, whole[UDP].dport) == (31053, 50000)


# --- 2. SCTP ------------------------------------------------------------------------------

def sctp_init(l3, src, dst, sport=40000, dport=7777) -> Ether:
    return K.built(K.eth() / l3(src=src, dst=dst) / SCTP(sport=sport, dport=dport, tag=0)
                   / SCTPChunkInit(init_tag=0x1234, a_rwnd=65535, n_out_streams=2,
                                   n_in_streams=2, init_tsn=7))


def sctp_init_ack(l3, src, dst, sport=7777, dport=40000) -> Ether:
    return K.built(K.eth() / l3(src=src, dst=dst) / SCTP(sport=sport, dport=dport, tag=0x1234)
                   / SCTPChunkInitAck(init_tag=0x5678, a_rwnd=65535, n_out_streams=2,
                                      n_in_streams=2, init_tsn=9))


@pytest.mark.parametrize("family", [4, 6])
def test_sctp_clusterip_is_load_balanced(load, family):
    l3, vip, be, client = (IP, SVIP, BE, CLIENT4) if family == 4 else (IPv6, SVIP6, BE6, CLIENT6)
    dp = K.build(load, K.scenario(sctp_svc(family)))
    pkt = sctp_init(l3, client, vip)
    res, out = dp.run("from_container", pkt)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert (out[l3].src, out[l3].dst) == (client, be)
    assert (out[SCTP].sport, out[SCTP].dport, out[SCTP].tag) == (40000, 7777, 0)
    assert bytes(out[SCTP].payload) == bytes(pkt[SCTP].payload)
    assert sctp_crc_ok(out)
    assert_valid(out)                                      # the IPv4 header checksum
    res, back = dp.run("to_container", sctp_init_ack(l3, be, client))
    assert res.verdict == "TC_ACT_OK"
    assert (back[l3].src, back[l3].dst) == (vip, client)
    assert (back[SCTP].sport, back[SCTP].dport) == (7777, 40000)
    assert sctp_crc_ok(back)
    assert_valid(back)
    # An established association keeps its backend and stays valid.
    _, again = dp.run("from_container", sctp_init(l3, client, vip))
    assert again[l3].dst == be and sctp_crc_ok(again)


def test_sctp_target_port_must_equal_port():
    with pytest.raises(ScenarioError) as exc:
        K.scenario(sctp_svc(4, target=8888))
    msg = str(exc.value)
    assert "spec.ports[0].targetPort" in msg and "SCTP" in msg and "\n" not in msg


def test_sctp_named_target_port_resolving_elsewhere_is_refused():
    # A named targetPort resolves through the EndpointSlice: 8888 != 7777.
    svc, eps = sctp_svc(4)
    svc["spec"]["ports"][0]["targetPort"] = "sig"
    eps["ports"][0]["port"] = 8888
    with pytest.raises(LbStateError) as exc:
        lb_state(K.scenario([svc, eps]))
    msg = str(exc.value)
    assert "spec.ports[0].targetPort" in msg and "SCTP" in msg and "\n" not in msg


def test_sctp_target_port_error_is_one_line_and_exit_2(tmp_path):
    import yaml
    path = tmp_path / "sctp.yaml"
    path.write_text(yaml.safe_dump_all(sctp_svc(4, target=8888)))
    result = subprocess.run([sys.executable, "-m", "harness.cli", "scenario", "check", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "spec.ports[0].targetPort" in result.stderr and "Traceback" not in result.stderr


def test_sctp_backend_port_change_is_dropped_in_the_datapath(load):
    """Defence in depth: a frontend programmed past the control plane's check."""
    dp = K.build(load, K.scenario(sctp_svc(4)))
    fe = Frontend("default/sig", "sig", "ClusterIP", K.ip(SVIP), 7777, "SCTP",
                  (Backend(K.ip(BE), 8888, "SCTP"),))
    dp.control.apply(LbState((fe,)))
    res, _ = dp.run("from_container", sctp_init(IP, CLIENT4, SVIP))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_CSUM_L4"])


def sctp_nodeport(node: str, ip4: str, ip6: str | None = None):
    docs = service("signp", "198.19.0.22", [("sig", 31500, 31500, "SCTP")],
                   [endpoint(ip4, node)], svc_type="NodePort", node_ports={"sig": 31500})
    return docs


def test_sctp_nodeport_from_outside_to_local_backend(load):
    dp = K.build(load, K.scenario(sctp_nodeport("cb-node0", "198.18.0.20")), netdev=True)
    res, out = dp.run("from_netdev", sctp_init(IP, WORLD, NODE0, sport=50000, dport=31500))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert (out[IP].src, out[IP].dst, out[SCTP].sport, out[SCTP].dport) == \
        (WORLD, "198.18.0.20", 50000, 31500)
    assert sctp_crc_ok(out)
    assert_valid(out)


def test_sctp_nodeport_from_outside_to_remote_backend_keeps_the_client_port(load):
    dp = K.build(load, K.scenario(sctp_nodeport("cb-node1", BE)), netdev=True)
    res, out = dp.run("from_netdev", sctp_init(IP, WORLD, NODE0, sport=50000, dport=31500))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    # SNAT to the node without a port change: the CRC32c stays valid.
    assert (out[IP].src, out[IP].dst, out[SCTP].sport, out[SCTP].dport) == \
        (NODE0, BE, 50000, 31500)
    assert sctp_crc_ok(out)
    assert_valid(out)
    res, back = dp.run("from_netdev", sctp_init_ack(IP, BE, NODE0, sport=31500, dport=50000))
    assert res.verdict == "TC_ACT_OK"
    assert (back[IP].src, back[IP].dst, back[SCTP].sport, back[SCTP].dport) == \
        (NODE0, WORLD, 31500, 50000)
    assert sctp_crc_ok(back)
    assert_valid(back)


def test_sctp_nodeport_port_must_equal_target_port():
    docs = service("signp", "198.19.0.22", [("sig", 31500, 31500, "SCTP")],
                   [endpoint(BE, "cb-node1")], svc_type="NodePort", node_ports={"sig": 31600})
    with pytest.raises(LbStateError) as exc:
        lb_state(K.scenario(docs))
    assert "spec.ports[0].nodePort" in str(exc.value) and "SCTP" in str(exc.value)


# --- 3. SNAT port allocation ----------------------------------------------------------------

NP_TCP_REMOTE = service("np", "198.19.0.20", [("http", 80, 8080, "TCP")],
                        [endpoint(BE, "cb-node1")], svc_type="NodePort",
                        node_ports={"http": 31313})
SNAT_MIN, SNAT_MAX = 32768, 65535


def now_sec() -> int:
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


def fill_snat_ports(dp: K.Datapath, lifetime: int, free: tuple[int, ...] = (),
                    expired: tuple[int, ...] = ()) -> None:
    """Map every SNAT port of (node, backend:8080, TCP) to some other client, in batches."""
    from harness.node import snat
    rid = dp.netdev_control.frontend_id((K.ip(NODE0), 31313, "TCP"))
    ports = [p for p in range(SNAT_MIN, SNAT_MAX + 1) if p not in free]
    keys = [snat.reverse_key4(NODE0, BE, 8080, "TCP", p) for p in ports]
    values = [SnatEntry(addr=V6Addr.of("203.0.113.99"), port=be16(20000 + i % 30000),
                        rev_nat_index=rid, flags=1, created=now_sec() - 100,
                        lifetime=now_sec() - 5 if p in expired else lifetime)
              for i, p in enumerate(ports)]
    assert dp.netdev.maps["cb_snat4_rev"].update_batch(keys, values) == len(ports)


def snat_stats(dp: K.Datapath):
    from harness.node import snat
    return snat.read_stats(dp.netdev.maps)[4]


@pytest.mark.skipif(not paths.kernel_has("bpf_loop"),
                    reason="the exhaustive port scan needs bpf_loop (5.17+); the build for older "
                           "kernels stops after 33 probes (test_snat_without_bpf_loop_probes)")
def test_snat_finds_the_last_free_port(load):
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    fill_snat_ports(dp, now_sec() + 3600, free=(47123,))
    res, out = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50001))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == \
        (NODE0, 47123, BE, 8080)
    assert_valid(out)
    stats = snat_stats(dp)
    assert (stats.allocated, stats.reused, stats.exhausted) == (1, 0, 0)
    assert stats.collisions >= 1
    # The reply of the new flow is translated back to the client.
    reply = K.eth() / IP(src=BE, dst=NODE0) / TCP(sport=8080, dport=47123, flags="SA")
    _, back = dp.run("from_netdev", reply)
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
        (NODE0, 31313, WORLD, 50001)
    assert_valid(back)


def test_snat_without_bpf_loop_probes(load):
    """The build for kernels before 5.17 (netdev-nobpfloop) has no scan, but tries the
    hashed port and 32 random ones: with every other port held by a live mapping, each
    new flow finds a free one (a miss has probability 2^-33)."""
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    dp.netdev = load("netdev-nobpfloop", rodata=datapath.rodata_for("netdev", "cb-node0"))
    dp.netdev_control = datapath.lb_control(dp.netdev)
    dp.runners.pop("from_netdev", None)
    dp.apply(K.scenario(NP_TCP_REMOTE))
    fill_snat_ports(dp, now_sec() + 3600, free=tuple(range(SNAT_MIN, SNAT_MAX + 1, 2)))
    got = set()
    for i in range(30):
        res, out = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=51000 + i))
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
        assert out[TCP].sport % 2 == 0 and out[TCP].sport not in got
        got.add(out[TCP].sport)
    stats = snat_stats(dp)
    assert (stats.allocated, stats.exhausted) == (30, 0)


def test_snat_exhaustion_drops_and_is_counted(load):
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    fill_snat_ports(dp, now_sec() + 3600)
    res, _ = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50002))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NAT_NO_MAPPING"])
    stats = snat_stats(dp)
    assert (stats.allocated, stats.reused, stats.exhausted) == (0, 0, 1)


def test_snat_reuses_an_expired_mapping(load):
    """Every port is held by a mapping whose lifetime has passed: the first port the
    new flow tries is taken over (on every kernel: no scan needed)."""
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    fill_snat_ports(dp, now_sec() + 3600, expired=tuple(range(SNAT_MIN, SNAT_MAX + 1)))
    res, out = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50003))
    assert res.verdict == "TC_ACT_OK" and SNAT_MIN <= out[TCP].sport <= SNAT_MAX
    assert_valid(out)
    assert_reused(dp, out[TCP].sport, 50003)


@pytest.mark.skipif(not paths.kernel_has("bpf_loop"),
                    reason="the exhaustive port scan needs bpf_loop (5.17+); the build for older "
                           "kernels stops after 33 probes (test_snat_without_bpf_loop_probes)")
def test_snat_finds_the_only_expired_mapping(load):
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    fill_snat_ports(dp, now_sec() + 3600, expired=(61001,))
    res, out = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50003))
    assert (res.verdict, out[TCP].sport) == ("TC_ACT_OK", 61001)
    assert_valid(out)
    assert_reused(dp, 61001, 50003)


def assert_reused(dp: K.Datapath, port: int, client_port: int) -> None:
    """One allocation, by taking over an expired mapping, now the client's and live."""
    from harness.node import snat
    stats = snat_stats(dp)
    assert (stats.allocated, stats.reused, stats.exhausted) == (1, 1, 0)
    entry = snat.lookup_reverse4(dp.netdev.maps, NODE0, BE, 8080, "TCP", port)
    assert (str(entry.addr.ipv4()), from_be16(entry.port)) == (WORLD, client_port)
    assert entry.lifetime >= now_sec()


def test_snat_same_flow_keeps_its_port_and_traffic_refreshes_it(load):
    from harness.node import snat
    dp = K.build(load, K.scenario(NP_TCP_REMOTE), netdev=True)
    _, out = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50004))
    port = out[TCP].sport
    entry = snat.lookup_reverse4(dp.netdev.maps, NODE0, BE, 8080, "TCP", port)
    assert entry.lifetime - now_sec() in range(55, 61)               # SYN only
    for sport in range(50100, 50140):                                # other flows in between
        dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=sport))
    _, again = dp.run("from_netdev", K.tcp4(NODE0, 31313, src=WORLD, sport=50004, flags="A"))
    assert again[TCP].sport == port
    entry = snat.lookup_reverse4(dp.netdev.maps, NODE0, BE, 8080, "TCP", port)
    assert entry.lifetime - now_sec() >= 21590                       # established
    reply = K.eth() / IP(src=BE, dst=NODE0) / TCP(sport=8080, dport=port, flags="R")
    dp.run("from_netdev", reply)
    entry = snat.lookup_reverse4(dp.netdev.maps, NODE0, BE, 8080, "TCP", port)
    assert entry.lifetime - now_sec() <= 10                          # closing after RST
    stats = snat_stats(dp)
    assert (stats.allocated, stats.exhausted) == (41, 0)


@pytest.mark.skipif(not paths.kernel_has("bpf_loop"),
                    reason="the exhaustive port scan needs bpf_loop (5.17+); the build for older "
                           "kernels stops after 33 probes (test_snat_without_bpf_loop_probes)")
def test_snat_v6_finds_the_last_free_port_and_translates_the_reply(load):
    from harness.node import snat
    from harness.abi.structs import Ct6Tuple
    docs = service("np6", "2001:db8:2::20", [("http", 80, 8080, "TCP")],
                   [endpoint(BE6, "cb-node1")], svc_type="NodePort",
                   node_ports={"http": 31314}, family="IPv6")
    dp = K.build(load, K.scenario(docs), netdev=True)
    rid = dp.netdev_control.frontend_id((K.ip(NODE0_6), 31314, "TCP"))
    ports = [p for p in range(SNAT_MIN, SNAT_MAX + 1) if p != 33333]
    keys = [Ct6Tuple(daddr=V6Addr.of(NODE0_6), saddr=V6Addr.of(BE6), dport=be16(p),
                     sport=be16(8080), nexthdr=6) for p in ports]
    values = [SnatEntry(addr=V6Addr.of(WORLD6), port=be16(1000 + i % 60000), rev_nat_index=rid,
                        lifetime=now_sec() + 3600) for i, p in enumerate(ports)]
    assert dp.netdev.maps["cb_snat6_rev"].update_batch(keys, values) == len(ports)
    res, out = dp.run("from_netdev", K.tcp6(NODE0_6, 31314, src=WORLD6, sport=50005))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert (out[IPv6].src, out[TCP].sport, out[IPv6].dst, out[TCP].dport) == \
        (NODE0_6, 33333, BE6, 8080)
    assert_valid(out)
    stats = snat.read_stats(dp.netdev.maps)
    assert (stats[6].allocated, stats[6].exhausted, stats[4].allocated) == (1, 0, 0)
    reply = K.eth() / IPv6(src=BE6, dst=NODE0_6) / TCP(sport=8080, dport=33333, flags="SA")
    _, back = dp.run("from_netdev", reply)
    assert (back[IPv6].src, back[TCP].sport, back[IPv6].dst, back[TCP].dport) == \
        (NODE0_6, 31314, WORLD6, 50005)
    assert_valid(back)
    # With that port taken too, the next flow is refused and counted.
    res, _ = dp.run("from_netdev", K.tcp6(NODE0_6, 31314, src=WORLD6, sport=50006))
    assert res.drop_reason == DROP["DROP_NAT_NO_MAPPING"]
    assert snat.read_stats(dp.netdev.maps)[6].exhausted == 1
