"""kube-proxy's rules rendered from LB state: names, golden renders, loading
with iptables-restore (nf_tables and legacy backends) and nft -f inside cb-
namespaces, round trips through iptables-save / nft list, partial syncs, and
real TCP traffic through a node namespace holding the rules.

Golden files: tests/data/kubeproxy/<case>.iptables / .nft.  Set
CB_UPDATE_GOLDEN=1 to rewrite them from the renderer (then review the diff).
"""
from __future__ import annotations

import collections
import ipaddress
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from harness.host import netns
from harness.kubeproxy import apply, iptables as ipt, names, nftables as nft
from harness.kubeproxy.model import service_ports
from harness.lb.model import ACTIVE, TERMINATING, Backend, Frontend, LbState
from tests.support import scratch_netns

DATA = pathlib.Path(__file__).parent / "data" / "kubeproxy"
VIP = ipaddress.ip_address("198.19.0.10")
NODE = ipaddress.ip_address("198.19.128.1")


def _be(i: int, state: str = ACTIVE) -> Backend:
    return Backend(ipaddress.ip_address(f"198.18.1.{10 + i}"), 8080, "TCP", state)


def _cip(backends, affinity: int = 0, svc: str = "default/web") -> Frontend:
    return Frontend(svc, "http", "ClusterIP", VIP, 80, "TCP", tuple(backends), affinity)


CASES = {
    "one_endpoint": LbState((_cip([_be(0)]),)),
    "three_endpoints": LbState((_cip([_be(0), _be(1), _be(2)]),)),
    "session_affinity": LbState((_cip([_be(0), _be(1), _be(2)], affinity=10800),)),
    "nodeport": LbState((_cip([_be(0), _be(1)]),
                         Frontend("default/web", "http", "NodePort", NODE, 30080, "TCP",
                                  (_be(0), _be(1))))),
    "no_endpoints": LbState((_cip([]),
                             Frontend("default/web", "http", "NodePort", NODE, 30080, "TCP", ()))),
}


# -- names and model ------------------------------------------------------

def test_names_match_kube_proxy_fixtures():
    # Values from kubernetes pkg/proxy/{iptables,nftables}/proxier_test.go.
    assert names.svc_chain("ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert names.sep_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert names.nft_service_chain("ns1/svc1", "p80", "TCP") == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert (names.nft_endpoint_chain("ns1/svc1", "p80", "tcp", "10.180.0.1", 80)
            == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80")
    assert names.service_port_name("ns/a", "") == "ns/a"


def test_model_skips_hostport_and_ipv6_and_prefers_ready():
    v6 = Frontend("default/web", "http", "ClusterIP", ipaddress.ip_address("2001:db8:2::a"), 80,
                  "TCP", (Backend(ipaddress.ip_address("2001:db8:1:1::a"), 8080, "TCP"),))
    hp = Frontend("default/pod", "hp", "HostPort", NODE, 40000, "TCP", (_be(5),))
    st = LbState((_cip([_be(0), _be(1, TERMINATING)]), v6, hp))
    (sp,) = service_ports(st)
    assert sp.name == "default/web:http" and [str(e) for e in sp.cluster_endpoints] == ["198.18.1.10:8080"]
    only_term = service_ports(LbState((_cip([_be(1, TERMINATING)]),)))[0]
    assert [str(e) for e in only_term.cluster_endpoints] == ["198.18.1.11:8080"]


def test_probabilities_and_large_cluster_mode():
    assert [ipt.probability(n) for n in (3, 2)] == ["0.3333333333", "0.5000000000"]
    text = ipt.render(CASES["three_endpoints"])
    svc = names.svc_chain("default/web:http", "tcp")
    jumps = [l for l in text.splitlines() if l.startswith(f"-A {svc}") and "KUBE-SEP-" in l]
    assert "--probability 0.3333333333" in jumps[0] and "--probability 0.5000000000" in jumps[1]
    assert "statistic" not in jumps[2]
    big = LbState(tuple(Frontend(f"b/s{i}", "", "ClusterIP", ipaddress.ip_address(f"198.19.1.{i}"),
                                 80, "TCP", tuple(_be(j) for j in range(11))) for i in range(100)))
    sep_rules = [l for l in ipt.render(big).splitlines() if l.startswith("-A KUBE-SEP-")]
    assert sep_rules and not any("comment" in l for l in sep_rules)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind", ["iptables", "nft"])
def test_golden(case, kind):
    text = (ipt if kind == "iptables" else nft).render(CASES[case])
    path = DATA / f"{case}.{kind}"
    if os.environ.get("CB_UPDATE_GOLDEN"):
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


# -- loading in namespaces ------------------------------------------------

@pytest.fixture
def ns():
    with scratch_netns("cb-kp-load") as name:
        yield name


BACKENDS = apply.available_backends()

IPT_EXPECT = {
    "one_endpoint": ["-A KUBE-SEP-", "-j DNAT --to-destination 198.18.1.10:8080",
                     '--comment "default/web:http cluster IP"', "! -s 198.18.0.0/16"],
    "three_endpoints": ["--probability 0.33333333349", "--probability 0.50000000000"],
    "session_affinity": ["--rcheck --seconds 10800 --reap", "--set --name KUBE-SEP-"],
    "nodeport": ["--dport 30080 -j KUBE-EXT-", "-A KUBE-EXT-", "--dst-type LOCAL -j KUBE-NODEPORTS"],
    "no_endpoints": ['"default/web:http has no endpoints"', "--dport 30080 -j REJECT",
                     "-d 198.19.0.10/32 -p tcp"],
}
NFT_EXPECT = {
    "one_endpoint": ["numgen random mod 1 vmap", "dnat to 198.18.1.10:8080",
                     "198.19.0.10 . tcp . 80 : goto service-"],
    "three_endpoints": ["numgen random mod 3 vmap", "2 : goto endpoint-"],
    "session_affinity": ["timeout 3h", "update @affinity-", "ip saddr @affinity-"],
    "nodeport": ["tcp . 30080 : goto external-", "jump mark-for-masquerade"],
    "no_endpoints": ['198.19.0.10 . tcp . 80 comment "default/web:http" : goto reject-chain',
                     "tcp . 30080 comment"],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_iptables_loads_and_round_trips(ns, case, backend):
    seconds = apply.apply_iptables(ns, CASES[case], backend)
    assert seconds > 0
    save = "iptables-save" if backend == "nft" else "iptables-legacy-save"
    dump = netns.run(ns, save).stdout
    for needle in IPT_EXPECT[case]:
        assert needle in dump, needle
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in dump
    for sp in service_ports(CASES[case]):
        for chain in ipt.service_chain_names(sp):
            assert f":{chain} - " in dump
    # Applying again (a resync) is accepted and does not duplicate the jumps.
    apply.apply_iptables(ns, CASES[case], backend)
    assert netns.run(ns, save).stdout.count("-j KUBE-POSTROUTING") == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_nft_loads_and_round_trips(ns, case):
    assert apply.apply_nft(ns, CASES[case]) > 0
    dump = netns.run(ns, "nft", "list", "table", "ip", "kube-proxy").stdout
    for needle in NFT_EXPECT[case]:
        assert needle in dump, needle
    for sp in service_ports(CASES[case]):
        for chain in nft.chain_names(sp):
            assert f"chain {chain} {{" in dump


def test_incremental_iptables(ns):
    old, new = CASES["three_endpoints"], CASES["nodeport"]
    backend = BACKENDS[0]
    apply.apply_iptables(ns, old, backend)
    text = ipt.render_incremental(old, new)
    gone = names.sep_chain("default/web:http", "tcp", "198.18.1.12:8080")
    assert f"-X {gone}" in text
    apply.incremental_iptables(ns, old, new, backend)
    dump = netns.run(ns, "iptables-save" if backend == "nft" else "iptables-legacy-save",
                     "-t", "nat").stdout
    assert gone not in dump and "--dport 30080" in dump
    # Nothing changed: only the top-level chains are rewritten.
    same = ipt.render_incremental(new, new)
    assert "KUBE-SEP" not in same.split("*nat", 1)[1].split("-A KUBE-SERVICES")[0]
    apply.incremental_iptables(ns, new, new, backend)


def test_incremental_nft(ns):
    old, new = CASES["session_affinity"], CASES["nodeport"]
    apply.apply_nft(ns, old)
    apply.incremental_nft(ns, old, new)
    dump = netns.run(ns, "nft", "list", "table", "ip", "kube-proxy").stdout
    assert "198.18.1.12" not in dump and "affinity-" not in dump
    assert "tcp . 30080 : goto external-" in dump
    removed = LbState(())
    apply.incremental_nft(ns, new, removed)
    dump = netns.run(ns, "nft", "list", "table", "ip", "kube-proxy").stdout
    assert not [l for l in dump.splitlines() if l.strip().startswith("chain ") and "/" in l]
    assert "map service-ips" in dump


# -- real traffic ---------------------------------------------------------

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(256); print("ready", flush=True)
name = sys.argv[1].encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    finally:
        c.close()
"""

CLIENT = """
import json, socket, sys
counts = {}
for _ in range(int(sys.argv[2])):
    with socket.create_connection((sys.argv[1], 80), timeout=3) as c:
        data = b""
        while True:
            chunk = c.recv(64)
            if not chunk:
                break
            data += chunk
    counts[data.decode()] = counts.get(data.decode(), 0) + 1
print(json.dumps(counts))
"""


def _ip(ns: str, *args: str) -> None:
    netns.run(ns, "ip", *args)


@pytest.fixture
def topology():
    """cb-kp-client -- cb-kp-node -- cb-kp-be{0,1,2}, routed, ptp-style /32s."""
    client, node = "cb-kp-client", "cb-kp-node"
    bes = [f"cb-kp-be{i}" for i in range(3)]
    spaces = [client, node, *bes]
    procs: list[subprocess.Popen] = []
    for n in spaces:
        netns.delete(n)
    try:
        for n in spaces:
            netns.create(n)
        _ip(node, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", client)
        _ip(node, "addr", "add", "198.18.0.1/24", "dev", "c0")
        _ip(node, "link", "set", "c0", "up")
        _ip(client, "addr", "add", "198.18.0.2/24", "dev", "eth0")
        _ip(client, "link", "set", "eth0", "up")
        _ip(client, "route", "add", "default", "via", "198.18.0.1")
        for i, be in enumerate(bes):
            addr = f"198.18.1.{10 + i}"
            _ip(node, "link", "add", f"b{i}", "type", "veth", "peer", "name", "eth0", "netns", be)
            _ip(node, "addr", "add", "198.18.1.1/32", "dev", f"b{i}")
            _ip(node, "link", "set", f"b{i}", "up")
            _ip(node, "route", "add", f"{addr}/32", "dev", f"b{i}")
            _ip(be, "addr", "add", f"{addr}/32", "dev", "eth0")
            _ip(be, "link", "set", "eth0", "up")
            _ip(be, "route", "add", "198.18.1.1/32", "dev", "eth0")
            _ip(be, "route", "add", "default", "via", "198.18.1.1")
        netns.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i, be in enumerate(bes):
            p = subprocess.Popen(["ip", "netns", "exec", be, sys.executable, "-c", SERVER,
                                  f"be{i}"], stdout=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout.readline().strip() == "ready"
        yield client, node
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)
        for n in spaces:
            netns.delete(n)


@pytest.mark.parametrize("method", [*(f"iptables-{b}" for b in BACKENDS), "nft"])
def test_traffic_spreads_over_three_backends(topology, method):
    client, node = topology
    state = CASES["three_endpoints"]
    if method == "nft":
        apply.apply_nft(node, state)
    else:
        apply.apply_iptables(node, state, method.split("-", 1)[1])
    start = time.monotonic()
    out = netns.run(client, sys.executable, "-c", CLIENT, str(VIP), "3000", timeout=300).stdout
    counts = collections.Counter(json.loads(out))
    assert time.monotonic() - start < 120
    assert sum(counts.values()) == 3000 and set(counts) == {"be0", "be1", "be2"}
    # Chi-square, 2 degrees of freedom: 13.82 is the p = 0.001 critical value.
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < 13.82, counts
