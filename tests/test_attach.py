"""Attaching programs to real interfaces in namespaces the test creates.

Topology (both ends inside project namespaces, nothing in the root one):

    cb-t<pid>-a                     cb-t<pid>-b
    [cbv0 198.18.250.1/24] <--veth--> [cbv1 198.18.250.2/24]
                                       ^ tc ingress / egress, xdp
"""
from __future__ import annotations

import os
import subprocess

import pytest

from harness.host import cgroups, netns
from harness.bpf import attach_cgroup, attach_tc, attach_xdp
from harness.abi.cheaders import enum_members

STAT = {m.name: m.value for m in enum_members("lib/parse_stats.h", "stat_class")}


@pytest.fixture
def veth_pair():
    a, b = f"cb-t{os.getpid()}-a", f"cb-t{os.getpid()}-b"
    try:
        netns.create(a)
        netns.create(b)
        netns.run(a, "ip", "link", "add", "cbv0", "type", "veth", "peer", "name", "cbv1",
                  "netns", b)
        netns.run(a, "ip", "addr", "add", "198.18.250.1/24", "dev", "cbv0")
        netns.run(b, "ip", "addr", "add", "198.18.250.2/24", "dev", "cbv1")
        netns.run(a, "ip", "link", "set", "cbv0", "up")
        netns.run(b, "ip", "link", "set", "cbv1", "up")
        yield a, b
    finally:
        netns.delete(a)
        netns.delete(b)
    assert not netns.exists(a) and not netns.exists(b)


def ping(ns: str, dst: str, count: int = 3) -> None:
    netns.run(ns, "ping", "-c", str(count), "-i", "0.05", "-W", "1", dst)


def icmp_packets(coll) -> int:
    return sum(c.packets for c in coll.maps["cb_parse_stats"].lookup(STAT["STAT_ICMP"]))


def test_tc_ingress_and_egress_see_real_traffic(load, veth_pair):
    a, b = veth_pair
    ingress, egress = load("parse_stats"), load("parse_stats")
    with attach_tc(ingress.programs["tc_parse_stats"], "cbv1", "ingress", b), \
         attach_tc(egress.programs["tc_parse_stats"], "cbv1", "egress", b):
        ping(a, "198.18.250.2", 3)
        # Echo requests arrive on ingress, replies leave on egress.
        assert icmp_packets(ingress) == 3
        assert icmp_packets(egress) == 3
        shown = netns.run(b, "tc", "filter", "show", "dev", "cbv1", "ingress").stdout
        assert "tc_parse_stats" in shown and "direct-action" in shown
    # Detached: traffic flows and is no longer counted.
    ping(a, "198.18.250.2", 2)
    assert icmp_packets(ingress) == 3
    assert "tc_parse_stats" not in netns.run(b, "tc", "filter", "show", "dev", "cbv1",
                                             "ingress").stdout


def test_tc_drop_at_ingress_stops_traffic(load, veth_pair):
    a, b = veth_pair
    coll = load("loader_fixture", rodata={"verdict": 2})     # TC_ACT_SHOT for everything
    with attach_tc(coll.programs["fixture_tc"], "cbv1", "ingress", b):
        proc = netns.run(a, "ping", "-c", "2", "-i", "0.05", "-W", "1", "198.18.250.2", check=False)
        assert proc.returncode != 0
    ping(a, "198.18.250.2", 1)


def test_reattach_replaces_in_place(load, veth_pair):
    _, b = veth_pair
    first, second = load("parse_stats"), load("parse_stats")
    att1 = attach_tc(first.programs["tc_parse_stats"], "cbv1", "ingress", b)
    att2 = attach_tc(second.programs["tc_parse_stats"], "cbv1", "ingress", b)
    shown = netns.run(b, "tc", "filter", "show", "dev", "cbv1", "ingress").stdout
    assert shown.count("direct-action") == 1     # one filter, running the second program
    assert f" id {second.programs['tc_parse_stats'].id} " in shown
    att2.detach()
    att1.detach()          # already replaced and gone: detaching again is harmless


def test_xdp_attach(load, veth_pair):
    a, b = veth_pair
    coll = load("parse_stats")
    with attach_xdp(coll.programs["xdp_parse_stats"], "cbv1", b, mode="skb"):
        ping(a, "198.18.250.2", 3)
        assert icmp_packets(coll) == 3
        assert "xdp" in netns.run(b, "ip", "link", "show", "cbv1").stdout
    assert "prog/xdp" not in netns.run(b, "ip", "link", "show", "cbv1").stdout


def test_attach_to_missing_interface(load, veth_pair):
    _, b = veth_pair
    with pytest.raises(netns.NetnsError, match="no interface nope0 in"):
        attach_tc(load("parse_stats").programs["tc_parse_stats"], "nope0", "ingress", b)


def test_namespace_names_are_guarded():
    with pytest.raises(netns.NetnsError, match="named cb-"):
        netns.create("not-ours")
    with pytest.raises(netns.NetnsError, match="named cb-"):
        netns.delete("default")


def test_cgroup_attach_only_to_project_cgroups(load):
    coll = load("loader_fixture")
    prog = coll.programs["fixture_tc"]
    with pytest.raises(cgroups.CgroupError, match="only to cb-"):
        attach_cgroup(prog, cgroups.cgroup2_mount())
    with pytest.raises(cgroups.CgroupError, match="named cb-"):
        cgroups.create("elsewhere")


def test_cgroup_skb_counts_only_its_cgroup(load, veth_pair):
    a, _ = veth_pair
    coll = load("loader_fixture")
    counter = coll.maps["array_map"]
    path = cgroups.create(f"cb-test-{os.getpid()}")
    try:
        with attach_cgroup(coll.programs["fixture_cgroup_egress"], path):
            ping(a, "198.18.250.2", 2)                   # outside the cgroup: not counted
            assert counter.lookup(1) == 0
            proc = subprocess.run(
                ["ip", "netns", "exec", a, "ping", "-c", "3", "-i", "0.05", "-W", "1",
                 "198.18.250.2"],
                preexec_fn=lambda: cgroups.enter(path), capture_output=True, timeout=30)
            assert proc.returncode == 0, proc.stderr
            assert counter.lookup(1) == 3                # three echo requests
        ping(a, "198.18.250.2", 1)
    finally:
        cgroups.remove(path)
    assert counter.lookup(1) == 3


def test_project_cgroup_lifecycle():
    path = cgroups.create(f"cb-test-{os.getpid()}")
    try:
        assert path in cgroups.list_project()
        cgroups.check_project_cgroup(path)
    finally:
        cgroups.remove(path)
    assert not os.path.exists(path)
