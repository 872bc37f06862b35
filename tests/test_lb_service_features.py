"""Service features of the BPF load balancer (issue 15), in the real kernel:
externalTrafficPolicy / internalTrafficPolicy Local (two scopes), LoadBalancer
ingress IPs, loadBalancerSourceRanges, at every entry point.

    pod 198.18.0.2 --veth-- [from_container]              node cb-node0 (198.19.128.1)
    world 203.0.113.10 --> [from_netdev] of cb-node0
    backends: LOCAL 198.18.0.20 on cb-node0, REMOTE 198.18.1.20 on cb-node1 (:8080)

Each datapath is programmed as cb-node0's maps hold the scenario
(lb_state(..., node="cb-node0")).  Every translated packet is compared with
the input field by field, with its checksums checked; drops carry the code of
harness.abi.drop_reasons.
"""
from __future__ import annotations

import ipaddress
import os
import shutil

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from harness.abi import drop_reasons
from harness.abi.structs import Lb4Key, Lb6Key, be16, be32, V6Addr
from harness.bpf import Collection
from harness.host import bpffs
from harness.lb import entries as E
from harness.lb.control import LbApplyError
from harness.lb.desired import lb_state
from harness.lb.listing import read_services
from harness.node import datapath

from . import lbkit as K
from .lbkit import CLIENT4, CLIENT6, assert_valid, endpoint, service
from .support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

DROP = drop_reasons.CODES
SVC_F = E.SVC_FLAGS
NODE = "cb-node0"
NODE0, NODE0_6 = "198.19.128.1", "2001:db8:3::1"
WORLD, WORLD6 = "203.0.113.10", "2001:db8:ff::10"
OUTSIDER, OUTSIDER6 = "203.0.113.200", "2001:db8:fe::10"
VIP, VIP6 = "198.19.0.40", "2001:db8:2::40"
LB_IP, LB_IP6 = "203.0.113.80", "2001:db8:4::80"
LOCAL, REMOTE = "198.18.0.20", "198.18.1.20"
LOCAL6, REMOTE6 = "2001:db8:1::20", "2001:db8:1:1::20"

FAMILIES = {
    4: dict(fam="IPv4", vip=VIP, lb=LB_IP, local=LOCAL, remote=REMOTE, world=WORLD,
            outsider=OUTSIDER, pod=CLIENT4, node=NODE0, l3=IP, pkt=K.tcp4,
            ranges=["203.0.113.0/28", "198.18.0.0/24"], world_only=["203.0.113.0/28"]),
    6: dict(fam="IPv6", vip=VIP6, lb=LB_IP6, local=LOCAL6, remote=REMOTE6, world=WORLD6,
            outsider=OUTSIDER6, pod=CLIENT6, node=NODE0_6, l3=IPv6, pkt=K.tcp6,
            ranges=["2001:db8:ff::/64", "2001:db8:1::/64"], world_only=["2001:db8:ff::/64"]),
}


def web(f: dict, backends=("local", "remote"), **kw) -> list[dict]:
    """A LoadBalancer Service (ingress IP f["lb"], node port 31080), port 80 -> 8080."""
    eps = [endpoint(f[b], "cb-node0" if b == "local" else "cb-node1") for b in backends]
    return service("web", f["vip"], [("http", 80, 8080, "TCP")], eps, svc_type="LoadBalancer",
                   node_ports={"http": 31080}, family=f["fam"], lb_ips=[f["lb"]], **kw)


def build(load, *docs) -> K.Datapath:
    return K.build(load, K.scenario(*docs), node=NODE, netdev=True)


def assert_translated(pkt, out, dst: str, dport: int, src: str | None = None,
                      sport: int | None = None) -> None:
    """*out* is *pkt* with the destination (and, given, the source) rewritten, nothing
    else changed, every checksum right."""
    l3 = IP if pkt.haslayer(IP) else IPv6
    assert (out[l3].dst, out[TCP].dport) == (dst, dport)
    assert (out[l3].src, out[TCP].sport) == (src or pkt[l3].src, sport or pkt[TCP].sport)
    same = ("ttl", "id", "proto", "len", "flags", "tos") if l3 is IP else \
        ("hlim", "nh", "plen", "tc", "fl")
    for name in same:
        assert getattr(out[l3], name) == getattr(pkt[l3], name), name
    for name in ("seq", "ack", "flags", "window", "dataofs", "urgptr"):
        assert getattr(out[TCP], name) == getattr(pkt[TCP], name), name
    assert bytes(out[TCP].payload) == bytes(pkt[TCP].payload)
    assert (out.src, out.dst) == (pkt.src, pkt.dst)
    assert_valid(out)


def run_many(dp: K.Datapath, program: str, f: dict, dst: str, dport: int, src: str,
             n: int = 40) -> set[str]:
    """The backends n new flows from *src* to dst:dport went to."""
    seen = set()
    for sport in range(41000, 41000 + n):
        res, out = dp.run(program, f["pkt"](dst, dport, src=src, sport=sport))
        assert res.verdict == "TC_ACT_OK", (res.verdict, res.drop_reason)
        seen.add(out[f["l3"]].dst)
    return seen


def entry(coll: Collection, f: dict, address: str, port: int, scope: int, slot: int = 0):
    fam = 4 if f["fam"] == "IPv4" else 6
    key = (Lb4Key(address=be32(address), dport=be16(port), backend_slot=slot, proto=6,
                  scope=scope) if fam == 4 else
           Lb6Key(address=V6Addr.of(address), dport=be16(port), backend_slot=slot, proto=6,
                  scope=scope))
    return coll.maps[f"cb_lb{fam}_services"].get(key)


# --- externalTrafficPolicy: Local ---------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_etp_local_external_goes_to_local_backend_with_client_source(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, local=True))
    for dst, dport in ((f["lb"], 80), (f["node"], 31080)):
        pkt = f["pkt"](dst, dport, src=f["world"], sport=50000, payload=b"GET /") \
            if family == 4 else f["pkt"](dst, dport, src=f["world"], sport=50000)
        res, out = dp.run("from_netdev", pkt)
        assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
        # Only the node's own backend, and no SNAT: the backend sees the client.
        assert_translated(pkt, out, f["local"], 8080)
        assert run_many(dp, "from_netdev", f, dst, dport, f["world"]) == {f["local"]}


@pytest.mark.parametrize("family", [4, 6])
def test_flow_to_a_remote_backend_stays_snated_when_the_policy_turns_local(load, family):
    """An outside connection SNATed to a remote backend under externalTrafficPolicy
    Cluster keeps its backend when the policy turns Local (an established flow), and
    so keeps its SNAT: without it the remote backend would answer the client directly
    (found by the differential test).  New flows then go to the local backend only."""
    f = FAMILIES[family]
    dp = build(load, web(f, backends=("remote",)))
    syn = f["pkt"](f["node"], 31080, src=f["world"], sport=50000)
    res, out = dp.run("from_netdev", syn)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert out[f["l3"]].dst == f["remote"] and out[f["l3"]].src == f["node"]
    snat_port = out[TCP].sport
    dp.apply(K.scenario(web(f, local=True)))
    ack = f["pkt"](f["node"], 31080, src=f["world"], sport=50000, flags="A")
    res, out = dp.run("from_netdev", ack)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert_translated(ack, out, f["remote"], 8080, src=f["node"], sport=snat_port)
    assert run_many(dp, "from_netdev", f, f["node"], 31080, f["world"]) == {f["local"]}


@pytest.mark.parametrize("family", [4, 6])
def test_etp_local_without_local_backend_drops_no_service(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, backends=("remote",), local=True))
    for dst, dport in ((f["lb"], 80), (f["node"], 31080)):
        res, _ = dp.run("from_netdev", f["pkt"](dst, dport, src=f["world"]))
        assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NO_SERVICE"])
        assert DROP["DROP_NO_SERVICE"] == 158
    # Pods still reach the remote backend (internal clients use every backend).
    _, out = dp.run("from_container", f["pkt"](f["lb"], 80))
    assert out[f["l3"]].dst == f["remote"]


@pytest.mark.parametrize("family", [4, 6])
def test_etp_local_frontend_from_a_pod_uses_every_backend(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, local=True))
    for dst, dport in ((f["lb"], 80), (f["node"], 31080)):
        pkt = f["pkt"](dst, dport, sport=42000)
        res, out = dp.run("from_container", pkt)
        assert res.verdict == "TC_ACT_OK"
        assert_translated(pkt, out, out[f["l3"]].dst, 8080)
        assert run_many(dp, "from_container", f, dst, dport, f["pod"]) == \
            {f["local"], f["remote"]}
    # The two scopes in the map: EXT (flagged) with the local backend, INT with both.
    ext = entry(dp.lxc, f, f["lb"], 80, E.SCOPE_EXT)
    int_ = entry(dp.lxc, f, f["lb"], 80, E.SCOPE_INT)
    assert ext.count == 1 and int_.count == 2 and ext.rev_nat_index == int_.rev_nat_index
    assert ext.flags == SVC_F["SVC_F_LOADBALANCER"] | SVC_F["SVC_F_LOCAL_SCOPE"] | \
        SVC_F["SVC_F_TWO_SCOPES"]
    assert int_.flags == SVC_F["SVC_F_LOADBALANCER"] | SVC_F["SVC_F_INT_SCOPE"]


def test_etp_local_reply_is_reverse_translated_by_the_backend(load):
    """The local backend's reply leaves through its from_container, which restores the
    LoadBalancer IP (the entry from_netdev made, handed over as the node's pins would)."""
    f = FAMILIES[4]
    dp = build(load, web(f, local=True))
    _, out = dp.run("from_netdev", K.tcp4(LB_IP, 80, src=WORLD, sport=50100))
    for k, v in dp.netdev.maps["cb_ct4"].items():
        dp.lxc.maps["cb_ct4"].update(k, v)
    assert dp.run("to_container", out)[0].verdict == "TC_ACT_OK"
    reply = K.built(K.eth() / IP(src=LOCAL, dst=WORLD) / TCP(sport=8080, dport=50100,
                                                            flags="SA", seq=9, ack=1001))
    _, back = dp.run("from_container", reply)
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == \
        (LB_IP, 80, WORLD, 50100)
    assert (back[TCP].seq, back[TCP].ack) == (9, 1001)
    assert_valid(back)


def test_etp_local_falls_back_to_terminating_local_backends(load):
    """kube-proxy's fallback is per scope: with only a serving-terminating backend on
    the node, clients outside the node get it (not the ready remote one); pods, whose
    scope has a ready backend, get only that."""
    f = FAMILIES[4]
    eps = [endpoint(LOCAL, "cb-node0", ready=False, serving=True, terminating=True),
           endpoint(REMOTE, "cb-node1")]
    dp = build(load, service("web", VIP, [("http", 80, 8080, "TCP")], eps,
                             svc_type="LoadBalancer", node_ports={"http": 31080},
                             lb_ips=[LB_IP], local=True))
    assert run_many(dp, "from_netdev", f, LB_IP, 80, WORLD, 20) == {LOCAL}
    assert run_many(dp, "from_container", f, LB_IP, 80, CLIENT4, 20) == {REMOTE}


# --- internalTrafficPolicy: Local -----------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_itp_local_clusterip_from_a_pod_reaches_local_backends_only(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, internal_local=True))
    pkt = f["pkt"](f["vip"], 80, sport=43000)
    res, out = dp.run("from_container", pkt)
    assert res.verdict == "TC_ACT_OK"
    assert_translated(pkt, out, f["local"], 8080)
    assert run_many(dp, "from_container", f, f["vip"], 80, f["pod"]) == {f["local"]}


@pytest.mark.parametrize("family", [4, 6])
def test_itp_local_without_local_backend_drops_no_service(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, backends=("remote",), internal_local=True))
    for dst, dport in ((f["vip"], 80), (f["lb"], 80), (f["node"], 31080)):
        res, _ = dp.run("from_container", f["pkt"](dst, dport))
        assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NO_SERVICE"]), dst
    # From outside (ETP Cluster) the remote backend serves, SNATed to the node.
    res, out = dp.run("from_netdev", f["pkt"](f["lb"], 80, src=f["world"]))
    assert res.verdict == "TC_ACT_OK"
    assert (out[f["l3"]].dst, out[f["l3"]].src) == (f["remote"], f["node"])
    assert_valid(out)


def test_itp_local_external_frontends_two_scopes(load):
    """ITP Local, ETP Cluster: pods reach the node's backend at every frontend (INT
    scope), clients outside every backend (EXT scope)."""
    f = FAMILIES[4]
    dp = build(load, web(f, internal_local=True))
    for dst, dport in ((LB_IP, 80), (NODE0, 31080)):
        assert run_many(dp, "from_container", f, dst, dport, CLIENT4) == {LOCAL}
        assert run_many(dp, "from_netdev", f, dst, dport, WORLD) == {LOCAL, REMOTE}
    ext, int_ = entry(dp.lxc, f, LB_IP, 80, E.SCOPE_EXT), entry(dp.lxc, f, LB_IP, 80, E.SCOPE_INT)
    assert (ext.count, int_.count) == (2, 1)
    assert ext.flags & SVC_F["SVC_F_TWO_SCOPES"] and ext.flags & SVC_F["SVC_F_INT_LOCAL"]
    assert not ext.flags & SVC_F["SVC_F_LOCAL_SCOPE"]


def test_both_policies_local_is_one_scope(load):
    """ETP and ITP Local on a load-balancer IP: the same (local) backends for everyone,
    one entry, no second lookup."""
    f = FAMILIES[4]
    dp = build(load, web(f, local=True, internal_local=True))
    ext = entry(dp.lxc, f, LB_IP, 80, E.SCOPE_EXT)
    assert ext.count == 1 and not ext.flags & SVC_F["SVC_F_TWO_SCOPES"]
    assert entry(dp.lxc, f, LB_IP, 80, E.SCOPE_INT) is None
    assert run_many(dp, "from_container", f, LB_IP, 80, CLIENT4, 10) == {LOCAL}
    assert run_many(dp, "from_netdev", f, LB_IP, 80, WORLD, 10) == {LOCAL}


def test_maglev_two_scopes_have_their_own_tables(load):
    f = FAMILIES[4]
    docs = web(f, local=True)
    docs[0]["metadata"]["annotations"] = {"service.cilium.io/lb-algorithm": "maglev"}
    dp = build(load, docs)
    rid = dp.control.frontend_id((ipaddress.ip_address(LB_IP), 80, "TCP"))
    assert {rid, rid | E.MAGLEV_INT_KEY} <= set(dp.lxc.maps["cb_lb_maglev"].keys())
    assert run_many(dp, "from_netdev", f, LB_IP, 80, WORLD) == {LOCAL}
    assert run_many(dp, "from_container", f, LB_IP, 80, CLIENT4, 60) == {LOCAL, REMOTE}
    # Back to ETP Cluster: one scope, the INT table goes.
    dp.apply(K.scenario(web(f)))
    assert rid | E.MAGLEV_INT_KEY not in set(dp.lxc.maps["cb_lb_maglev"].keys())


# --- LoadBalancer IPs -----------------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_loadbalancer_ip_from_a_pod_and_from_outside(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, backends=("remote",)))
    pkt = f["pkt"](f["lb"], 80, sport=44000)
    res, out = dp.run("from_container", pkt)
    assert res.verdict == "TC_ACT_OK"
    assert_translated(pkt, out, f["remote"], 8080)
    reply = K.built(K.eth() / f["l3"](src=f["remote"], dst=f["pod"]) /
                    TCP(sport=8080, dport=44000, flags="SA"))
    _, back = dp.run("to_container", reply)
    assert (back[f["l3"]].src, back[TCP].sport) == (f["lb"], 80)
    assert_valid(back)
    # From outside: to the remote backend, SNATed to the node (ETP Cluster).
    pkt = f["pkt"](f["lb"], 80, src=f["world"], sport=50200)
    res, out = dp.run("from_netdev", pkt)
    assert res.verdict == "TC_ACT_OK"
    assert_translated(pkt, out, f["remote"], 8080, src=f["node"], sport=out[TCP].sport)
    assert 32768 <= out[TCP].sport <= 65535
    rid = dp.control.frontend_id((ipaddress.ip_address(f["lb"]), 80, "TCP"))
    assert entry(dp.lxc, f, f["lb"], 80, E.SCOPE_EXT).flags == SVC_F["SVC_F_LOADBALANCER"]
    assert rid > 0


# --- loadBalancerSourceRanges ---------------------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
def test_source_ranges_at_from_netdev(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, backends=("local",), source_ranges=f["ranges"]))
    pkt = f["pkt"](f["lb"], 80, src=f["world"], sport=50300)
    res, out = dp.run("from_netdev", pkt)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert_translated(pkt, out, f["local"], 8080)
    res, _ = dp.run("from_netdev", f["pkt"](f["lb"], 80, src=f["outsider"]))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NOT_IN_SRC_RANGE"])
    assert DROP["DROP_NOT_IN_SRC_RANGE"] == 177
    assert drop_reasons.describe(177) == "Denied by LB src range check"
    # The node port and the cluster IP of the same Service have no ranges (kube-proxy).
    for dst, dport, prog, src in ((f["node"], 31080, "from_netdev", f["outsider"]),
                                  (f["vip"], 80, "from_container", f["pod"])):
        res, out = dp.run(prog, f["pkt"](dst, dport, src=src))
        assert res.verdict == "TC_ACT_OK" and out[f["l3"]].dst == f["local"]


@pytest.mark.parametrize("family", [4, 6])
def test_source_ranges_at_from_container(load, family):
    f = FAMILIES[family]
    dp = build(load, web(f, source_ranges=f["ranges"]))
    pkt = f["pkt"](f["lb"], 80, sport=45000)
    res, out = dp.run("from_container", pkt)
    assert (res.verdict, res.drop_reason) == ("TC_ACT_OK", None)
    assert_translated(pkt, out, out[f["l3"]].dst, 8080)
    assert out[f["l3"]].dst in (f["local"], f["remote"])
    # Ranges without the pod network: the pod is refused like any client (KUBE-FW).
    dp = build(load, web(f, source_ranges=f["world_only"]))
    res, _ = dp.run("from_container", f["pkt"](f["lb"], 80, sport=45001))
    assert (res.verdict, res.drop_reason) == ("TC_ACT_SHOT", DROP["DROP_NOT_IN_SRC_RANGE"])


def test_source_range_drop_leaves_no_state(load):
    f = FAMILIES[4]
    dp = build(load, web(f, source_ranges=f["world_only"]))
    rid = dp.control.frontend_id((ipaddress.ip_address(LB_IP), 80, "TCP"))
    for prog, src in (("from_container", CLIENT4), ("from_netdev", OUTSIDER)):
        res, _ = dp.run(prog, K.tcp4(LB_IP, 80, src=src))
        assert res.drop_reason == DROP["DROP_NOT_IN_SRC_RANGE"]
    for coll in (dp.lxc, dp.netdev):
        assert len(coll.maps["cb_ct4"]) == 0
        assert sum(c.packets for c in coll.maps["cb_lb_stats"].lookup(rid)) == 0


def test_source_ranges_with_etp_local_two_scopes(load):
    """Both scopes of a frontend share its ranges (by rev_nat_index)."""
    f = FAMILIES[4]
    dp = build(load, web(f, local=True, source_ranges=f["world_only"]))
    assert run_many(dp, "from_netdev", f, LB_IP, 80, WORLD, 10) == {LOCAL}
    res, _ = dp.run("from_container", K.tcp4(LB_IP, 80))
    assert res.drop_reason == DROP["DROP_NOT_IN_SRC_RANGE"]
    int_ = entry(dp.lxc, f, LB_IP, 80, E.SCOPE_INT)
    assert int_.flags & SVC_F["SVC_F_SOURCE_RANGE"]


# --- control plane --------------------------------------------------------------------------

def lb_maps(coll) -> dict[str, dict[bytes, bytes]]:
    names = [E.services_map(4), E.backends_map(4), E.reverse_nat_map(4), E.source_range_map(4)]
    return {n: {bytes(k): bytes(v) for k, v in coll.maps[n].items()} for n in names}


def scopes_of(coll, address: str) -> dict[int, tuple[int, int]]:
    """scope -> (count, flags) of the service entries of address:80/TCP."""
    out = {}
    for k, v in coll.maps["cb_lb4_services"].items():
        if k.address == be32(address) and k.backend_slot == 0 and k.dport == be16(80):
            out[k.scope] = (v.count, v.flags)
    return out


def test_control_plane_scopes_and_ranges_follow_the_service(load):
    f = FAMILIES[4]
    lxc = load("lxc", rodata=datapath.rodata_for("lxc", NODE))
    ctl = datapath.lb_control(lxc)
    LBF, LOC, TWO, INT, SR = (SVC_F[n] for n in ("SVC_F_LOADBALANCER", "SVC_F_LOCAL_SCOPE",
                                                  "SVC_F_TWO_SCOPES", "SVC_F_INT_SCOPE",
                                                  "SVC_F_SOURCE_RANGE"))

    def apply(**kw):
        return ctl.apply(lb_state(K.scenario(web(f, **kw)), node=NODE))

    apply(local=True, source_ranges=["203.0.113.0/28", "198.51.100.0/24"])
    rid = ctl.frontend_id((ipaddress.ip_address(LB_IP), 80, "TCP"))
    assert scopes_of(lxc, LB_IP) == {0: (1, LBF | LOC | TWO | SR), 1: (2, LBF | INT | SR)}
    [row] = [r for r in read_services(lxc.maps) if r.address == LB_IP]
    assert row.source_ranges == ["198.51.100.0/24", "203.0.113.0/28"]
    assert [b.address for b in row.backends] == [LOCAL]
    assert sorted(b.address for b in row.internal_backends) == [LOCAL, REMOTE]
    assert {"local", "two-scopes", "source-ranges"} <= set(row.flags)
    ranges = lxc.maps["cb_lb4_source_range"]
    assert len(ranges) == 2

    # Applied again: nothing to write.
    again = apply(local=True, source_ranges=["203.0.113.0/28", "198.51.100.0/24"])
    assert (again.writes, again.deletes) == (0, 0)
    # A fresh control plane adopts it all from the maps: again nothing to write.
    adopted = datapath.lb_control(lxc)
    assert adopted.restore() == len(lb_state(K.scenario(web(f)), node=NODE).frontends)
    stats = adopted.apply(lb_state(K.scenario(web(f, local=True, source_ranges=[
        "203.0.113.0/28", "198.51.100.0/24"])), node=NODE))
    assert (stats.writes, stats.deletes) == (0, 0)

    # One range replaced: one write, one delete, in the range map only.
    before = lb_maps(lxc)
    stats = apply(local=True, source_ranges=["203.0.113.0/28", "198.51.100.128/25"])
    assert (stats.writes, stats.deletes) == (1, 1)
    after = lb_maps(lxc)
    assert all(before[n] == after[n] for n in before if n != E.source_range_map(4))
    [row] = [r for r in read_services(lxc.maps) if r.address == LB_IP]
    assert row.source_ranges == ["198.51.100.128/25", "203.0.113.0/28"]

    # ETP back to Cluster and no ranges: one scope, no flag, the INT scope and ranges go.
    apply()
    assert scopes_of(lxc, LB_IP) == {0: (2, LBF)}
    assert len(lxc.maps["cb_lb4_source_range"]) == 0
    assert not [k for k in lxc.maps["cb_lb4_services"].keys() if k.scope == E.SCOPE_INT]

    # Back to two scopes with ranges, then the Service removed: every entry goes.
    apply(local=True, source_ranges=["203.0.113.0/28"])
    assert len(lxc.maps["cb_lb4_source_range"]) == 1
    stats = ctl.apply(lb_state(K.scenario(), node=NODE))
    assert stats.frontends_removed > 0
    for name in ("cb_lb4_services", "cb_lb4_backends", "cb_lb4_reverse_nat",
                 "cb_lb4_source_range"):
        assert list(lxc.maps[name].keys()) == [], name


def test_control_plane_rolls_back_a_failed_range_write(load):
    f = FAMILIES[4]
    lxc = load("lxc", rodata=datapath.rodata_for("lxc", NODE),
               max_entries={"cb_lb4_source_range": 2})
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(web(f, source_ranges=["203.0.113.0/28"])), node=NODE))
    before, state = lb_maps(lxc), ctl.state
    too_many = ["203.0.113.0/28", "198.51.100.0/24", "198.51.101.0/24"]
    with pytest.raises(LbApplyError, match="rolled back"):
        ctl.apply(lb_state(K.scenario(web(f, local=True, source_ranges=too_many)), node=NODE))
    assert lb_maps(lxc) == before and ctl.state == state
    dp = K.Datapath(lxc, ctl, node=NODE)
    res, _ = dp.run("from_container", K.tcp4(LB_IP, 80))
    assert res.drop_reason == DROP["DROP_NOT_IN_SRC_RANGE"]      # the old ranges hold


def test_desired_state_scopes():
    f = FAMILIES[4]
    scen = K.scenario(web(f, local=True, internal_local=True))
    by_type = {fe.type: fe for fe in lb_state(scen, node=NODE).frontends if fe.port in (80,)
               and str(fe.address) in (VIP, LB_IP)}
    assert all(fe.internal_local for fe in lb_state(scen, node=NODE).frontends)
    # Node cb-node1's NodePort in cb-node0's maps: EXT its own backend, INT cb-node0's.
    np1 = next(fe for fe in lb_state(scen, node=NODE).frontends
               if fe.type == "NodePort" and fe.node == "cb-node1" and fe.family == 4)
    assert [str(b.address) for b in np1.backends] == [REMOTE]
    assert [str(b.address) for b in np1.internal] == [LOCAL]
    assert not by_type["LoadBalancer"].two_scopes
    assert [str(b.address) for b in by_type["ClusterIP"].backends] == [LOCAL]
    # Every backend stays in .endpoints (kube-proxy's view).
    assert sorted(str(b.address) for b in by_type["LoadBalancer"].endpoints) == [LOCAL, REMOTE]


def test_services_listing_from_pinned_maps_shows_scopes_and_ranges(load):
    """`chainbench services` reads a node's pins (harness.node.node._pinned_types):
    the source-range maps are among them, typed."""
    from harness.bpf import Map
    from harness.node.node import _pinned_types
    f = FAMILIES[6]
    pins = bpffs.test_pin_dir(984)   # outside the pin root: no topology command sweeps it
    try:
        with Collection.load(str(object_path("lxc")), pin_dir=pins) as lxc:
            datapath.lb_control(lxc).apply(lb_state(K.scenario(
                web(f, local=True, source_ranges=f["ranges"])), node=NODE))
            maps = {}
            try:
                for name, (kt, vt) in _pinned_types().items():
                    if os.path.exists(os.path.join(pins, name)):
                        maps[name] = Map.from_pin(os.path.join(pins, name), kt, vt)
                [row] = [r for r in read_services(maps) if r.address == LB_IP6]
            finally:
                for m in maps.values():
                    m.close()
        assert row.source_ranges == sorted(f["ranges"], key=ipaddress.ip_network)
        assert [b.address for b in row.backends] == [LOCAL6]
        assert sorted(b.address for b in row.internal_backends) == sorted([LOCAL6, REMOTE6])
        doc = row.to_json()
        assert doc["source_ranges"] == row.source_ranges and len(doc["internal_backends"]) == 2
    finally:
        shutil.rmtree(pins, ignore_errors=True)
    assert not os.path.exists(pins)


def test_dual_stack_loadbalancer_each_family_its_ranges(load):
    """A dual-stack LoadBalancer with an ingress IP and a range per family: each family's
    frontend checks its own family's ranges, at from_netdev and from_container."""
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "ds", "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
                    "ipFamilies": ["IPv4", "IPv6"], "clusterIPs": [VIP, VIP6],
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                               "protocol": "TCP", "nodePort": 31080}],
                    "loadBalancerSourceRanges": ["203.0.113.0/28", "2001:db8:ff::/64"]},
           "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}, {"ip": LB_IP6}]}}}
    slices = [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": f"ds-{fam.lower()}", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "ds"}},
               "addressType": fam, "endpoints": [endpoint(addr, "cb-node0")],
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}
              for fam, addr in (("IPv4", LOCAL), ("IPv6", LOCAL6))]
    dp = build(load, [svc, *slices])
    for family in (4, 6):
        f = FAMILIES[family]
        pkt = f["pkt"](f["lb"], 80, src=f["world"], sport=50400)
        res, out = dp.run("from_netdev", pkt)
        assert res.verdict == "TC_ACT_OK"
        assert_translated(pkt, out, f["local"], 8080)
        for prog, src in (("from_netdev", f["outsider"]), ("from_container", f["pod"])):
            res, _ = dp.run(prog, f["pkt"](f["lb"], 80, src=src))
            assert res.drop_reason == DROP["DROP_NOT_IN_SRC_RANGE"], (family, prog)
    ranges = {fam: len(dp.lxc.maps[E.source_range_map(fam)]) for fam in (4, 6)}
    assert ranges == {4: 1, 6: 1}
