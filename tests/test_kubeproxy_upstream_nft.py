"""kube-proxy's own nftables unit tests, ported as golden tests of harness.kubeproxy.nftables.

Source: kubernetes pkg/proxy/nftables/proxier_test.go at aroradaman/kubernetes
commit 4177b600d4b97a67b765a18ddeeb295ef757b212 (a kubernetes fork, v1.32 era:
partial sync of PR #126013 with in-memory element storage, filter-prerouting /
filter-output-post-dnat base chains, service- and nodeport-endpoints-check,
a LoadBalancerIPMode test emulating 1.31), and helpers_test.go's tracer at
commit 7c37bd572e0717ed4cae980e3edd816527137696 of the same fork (its regexps
extended, as later upstream versions do, to the "ip daddr { ... } drop" and
affinity rule pieces v1.32 writes).  kube-proxy v1.31 has no partial sync
(PR #126013 merged after the v1.31 code freeze): the renderer follows v1.32.

Our output is an ``nft -f`` transaction.  Each test applies it to
tests/nft_tracer.FakeTable (what knftables.Fake does with a transaction),
dumps the table as Fake.Dump does and compares with upstream's expected text
through sortNFTablesTransaction, as assertNFTablesTransactionEqual does.
Normalised: only the masquerade mark, which NewFakeProxier sets to the string
"0x4000" while kube-proxy itself formats 1<<14 with Go's "%#08x" ("0x00004000").
The cluster settings of NewFakeProxier (pod CIDR 10.0.0.0/8, service CIDR
172.30.0.0/16, node test-hostname 192.168.0.2, --nodeport-addresses
192.168.0.2/32,2001:db8::1/128) are passed as the ProxierConfig.

Ported (data in tests/data/kubeproxy/upstream/nft/), all passing:
- TestOverallNFTablesRules: full expected ruleset (base_rules.nft + overall.nft);
- TestSyncProxyRulesRepeated: every step's expected dump and every
  LastTransaction.NumOperations() check (repeated.yaml), stale chains aged as
  ageStaleChains does;
- packet-flow tests through the tracer (flows.yaml): TestNoEndpointsReject,
  TestClusterIPGeneral, TestLoadBalancer, TestNodePorts (IPv4 and IPv6, with
  and without --nodeport-addresses), TestExternalTrafficPolicyLocal,
  TestExternalTrafficPolicyCluster, TestInternalTrafficPolicy (with the
  "endpoints deleted" partial sync), TestTerminatingEndpointsTrafficPolicyLocal
  and TestTerminatingEndpointsTrafficPolicyCluster (with the deletion syncs),
  TestInternalExternalMasquerade (27 flows x base, no LocalTrafficDetector,
  masqueradeAll, both, with upstream's per-variant overrides);
- helpers_test.go: Test_sortNFTablesTransaction and Test_diffNFTablesTransaction
  (sort_input.nft / sort_expected.nft), checking the comparison itself.
Every transaction rendered here is also loaded with the real ``nft -f`` in a
cb- namespace (both families) by test_transactions_load_in_nft, and
test_apply_nft_dual_stack loads ``ip`` and ``ip6 kube-proxy`` through
harness.kubeproxy.apply (both need root and a cb- netns).

Left out, with the reason:
- TestSyncProxyRulesLargeClusterMode: does not exist in pkg/proxy/nftables
  (large-cluster mode is iptables-only);
- TestNoEndpointsMetric, TestBuildServiceMap*, TestUpdateEndpointsMap,
  TestHealthCheckNodePortWhenTerminating, TestProxierMetricsIptablesTotalRules,
  TestLoadBalancerIngressRouteTypeProxy, Test_servicePortChainNameBase and the
  conntrack-cleanup tests: they test kube-proxy's caches, metrics, conntrack
  calls or the LoadBalancerIPMode feature gate, not the rendered rules (chain
  names are covered by tests/test_kubeproxy.py).
"""
from __future__ import annotations

import pathlib

import pytest
import yaml

from harness.kubeproxy.nftables import NftablesProxier
from tests.kubeproxy_objects_nft import (EP, FAKE_MASQUERADE_MARK, TEST_EXTERNAL_CLIENT,
                                         TEST_HOSTNAME, TEST_NODE_IP, TEST_NODE_IP_ALT,
                                         TEST_NODE_IPS, TEST_NODE_IPV6, TEST_NODE_IPV6_ALT,
                                         fake_proxier_config, make_test_endpoint_slice,
                                         make_test_service, port, state_of)
from tests.nft_tracer import FakeTable, diff_transaction, trace_packet
from tests.support import scratch_netns

DATA = pathlib.Path(__file__).parent / "data" / "kubeproxy" / "upstream" / "nft"
BASE_RULES = (DATA / "base_rules.nft").read_text()
FLOWS = yaml.safe_load((DATA / "flows.yaml").read_text())
P80 = [("p80", 80, "TCP")]


class Harness:
    """NewFakeProxier: our proxier, a FakeTable holding what it wrote, the
    transactions in order (for loading them into the kernel)."""

    def __init__(self, family: int = 4, **config):
        self.config = fake_proxier_config(family, **config)
        self.proxier = NftablesProxier(self.config)
        self.nft = FakeTable("ip" if family == 4 else "ip6")
        self.transactions: list[str] = []
        self.last_operations = 0

    def sync(self, services, slices) -> None:
        state = state_of(services, slices)
        text = self.proxier.sync(state)
        if self.proxier.last_cleanup:
            self.nft.run(self.proxier.last_cleanup)
            self.transactions.append(self.proxier.last_cleanup)
        self.last_operations = self.nft.run(text)
        self.transactions.append(text)

    def dump(self) -> str:
        """The table as upstream's fake dumps it, mark normalised."""
        return self.nft.dump().replace(self.config.masquerade_mark_str, FAKE_MASQUERADE_MARK)

    def assert_equal(self, expected: str) -> None:
        diff = diff_transaction(expected, self.dump())
        assert diff == "", "tables do not match:\n" + diff

    def flows(self, cases) -> None:
        failures = []
        for tc in cases:
            proto = tc.get("protocol", "TCP").lower()
            matches, output, masq = trace_packet(self.nft, tc["sourceIP"], proto, tc["destIP"],
                                                 str(tc["destPort"]), TEST_NODE_IPS)
            want_masq = tc.get("masq", False)
            if output != tc["output"] or masq != want_masq:
                failures.append(f"{tc['name']}: {tc['sourceIP']} -> {tc['destIP']}:"
                                f"{tc['destPort']}/{proto}: got {output!r} masq={masq}, want "
                                f"{tc['output']!r} masq={want_masq}\n  by matching:\n    "
                                + "\n    ".join(matches))
        assert not failures, "\n".join(failures)


#: Every Harness built by the tests: (family, its transactions, in order).
ALL_TRANSACTIONS: list[tuple[int, list[str]]] = []


def _keep(h: Harness) -> Harness:
    ALL_TRANSACTIONS.append((h.config.family, h.transactions))
    return h


# -- TestOverallNFTablesRules -------------------------------------------------

def overall_objects():
    services = [
        make_test_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("p80", 80)]),
        make_test_service("ns2", "svc2", type="LoadBalancer", cluster_ip="172.30.0.42",
                          external_traffic_policy="Local",
                          ports=[port("p80", 80, node_port=3001)], lb_ingress=["1.2.3.4"],
                          external_ips=["192.168.99.22"], health_check_node_port=30000),
        make_test_service("ns3", "svc3", type="NodePort", cluster_ip="172.30.0.43",
                          ports=[port("p80", 80, node_port=3003)]),
        make_test_service("ns4", "svc4", type="NodePort", cluster_ip="172.30.0.44",
                          external_ips=["192.168.99.33"], ports=[port("p80", 80, target_port=80)]),
        make_test_service("ns5", "svc5", type="LoadBalancer", cluster_ip="172.30.0.45",
                          ports=[port("p80", 80, node_port=3002)], lb_ingress=["5.6.7.8"],
                          health_check_node_port=30000,
                          load_balancer_source_ranges=[" 203.0.113.0/25"],
                          affinity_timeout=10800),
        make_test_service("ns6", "svc6", cluster_ip="172.30.0.46",
                          ports=[port("p80", 80, target_port=80)]),
    ]
    slices = [
        make_test_endpoint_slice("ns1", "svc1", 1, [EP("10.180.0.1")], P80),
        make_test_endpoint_slice("ns2", "svc2", 1, [EP("10.180.0.2")], P80),
        make_test_endpoint_slice("ns3", "svc3", 1, [EP("10.180.0.3")], P80),
        make_test_endpoint_slice("ns4", "svc4", 1,
                                 [EP("10.180.0.4"), EP("10.180.0.5", TEST_HOSTNAME)], P80),
        make_test_endpoint_slice("ns5", "svc5", 1, [EP("10.180.0.3")], P80),
    ]
    return services, slices


def test_overall_nftables_rules():
    h = _keep(Harness())
    h.sync(*overall_objects())
    h.assert_equal(BASE_RULES + (DATA / "overall.nft").read_text())


def test_overall_vmap_separator_and_mark_as_kube_proxy_writes_them():
    """The two differences the issue found, on the raw transaction (before the
    fake's mark normalisation): " , " between vmap entries, and Go's %#08x."""
    h = Harness()
    h.sync(*overall_objects())
    text = h.transactions[-1]
    assert ("vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , "
            "1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }") in text
    assert "mark set mark or 0x00004000" in text and "0x004000" not in text


# -- TestSyncProxyRulesRepeated -----------------------------------------------

def _svc(ns, name, ip, pname, pnum):
    return make_test_service(ns, name, cluster_ip=ip, ports=[port(pname, pnum)])


def _slice(ns, name, ips, pname, pnum):
    return make_test_endpoint_slice(ns, name, 1, [EP(ip) for ip in ips], [(pname, pnum, "TCP")])


def test_sync_proxy_rules_repeated():
    steps = yaml.safe_load((DATA / "repeated.yaml").read_text())
    h = _keep(Harness())
    svcs = {"svc1": _svc("ns1", "svc1", "172.30.0.41", "p80", 80),
            "svc2": _svc("ns2", "svc2", "172.30.0.42", "p8080", 8080)}
    eps = {"svc1": _slice("ns1", "svc1", ["10.0.1.1"], "p80", 80),
           "svc2": _slice("ns2", "svc2", ["10.0.2.1"], "p8080", 8080)}

    def sync():
        h.sync(svcs.values(), eps.values())

    def check(i: int):
        step = steps[i]
        h.assert_equal(BASE_RULES + step["expected"])
        if "ops" in step:
            assert h.last_operations == step["ops"], (step["name"], h.transactions[-1])
        if "stale" in step:
            assert h.proxier.stale_chains == set(step["stale"]), step["name"]

    sync()
    check(0)
    svcs["svc3"] = _svc("ns3", "svc3", "172.30.0.43", "p80", 80)
    eps["svc3"] = _slice("ns3", "svc3", ["10.0.3.1"], "p80", 80)
    sync()
    check(1)
    del svcs["svc2"]
    sync()
    check(2)
    h.proxier.age_stale_chains()
    sync()
    check(3)
    svcs["svc4"] = _svc("ns4", "svc4", "172.30.0.44", "p80", 80)
    sync()
    check(4)
    eps["svc4"] = _slice("ns4", "svc4", ["10.0.4.1"], "p80", 80)
    sync()
    check(5)
    eps["svc3"] = _slice("ns3", "svc3", ["10.0.3.2"], "p80", 80)
    sync()
    check(6)
    h.proxier.age_stale_chains()
    eps["svc3"] = _slice("ns3", "svc3", ["10.0.3.2", "10.0.3.3"], "p80", 80)
    sync()
    check(7)
    full3 = eps["svc3"]
    eps["svc3"] = _slice("ns3", "svc3", [], "p80", 80)
    sync()
    check(8)
    eps["svc3"] = full3
    sync()
    check(9)
    # Empty, sync, age, restore, sync: the same rules as the last step.
    eps["svc3"] = _slice("ns3", "svc3", [], "p80", 80)
    sync()
    h.proxier.age_stale_chains()
    eps["svc3"] = full3
    sync()
    h.assert_equal(BASE_RULES + steps[9]["expected"])
    # A sync with no change: same rules, an empty transaction.
    sync()
    h.assert_equal(BASE_RULES + steps[9]["expected"])
    assert h.last_operations == 0


# -- packet-flow tests --------------------------------------------------------

def test_no_endpoints_reject():
    h = _keep(Harness())
    h.sync([make_test_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                              external_ips=["192.168.99.11"],
                              ports=[port("p80", 80, node_port=3001)], lb_ingress=["1.2.3.4"])],
           [])
    h.flows(FLOWS["TestNoEndpointsReject"])


def test_cluster_ip_general():
    h = _keep(Harness())
    svc2_ports = [port("http", 80), port("https", 443, target_port=8443),
                  port("dns-udp", 53, "UDP"), port("dns-tcp", 53, "TCP", target_port=5353),
                  port("dns-sctp", 53, "SCTP")]
    h.sync([make_test_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("http", 80)]),
            make_test_service("ns2", "svc2", cluster_ip="172.30.0.42", ports=svc2_ports)],
           [make_test_endpoint_slice("ns1", "svc1", 1, [EP("10.180.0.1", TEST_HOSTNAME)],
                                     [("http", 80, "TCP")]),
            make_test_endpoint_slice("ns2", "svc2", 1,
                                     [EP("10.180.0.1", TEST_HOSTNAME), EP("10.180.2.1", "host2")],
                                     [("http", 80, "TCP"), ("https", 8443, "TCP"),
                                      ("dns-udp", 53, "UDP"), ("dns-tcp", 5353, "TCP"),
                                      ("dns-sctp", 53, "SCTP")])])
    h.flows(FLOWS["TestClusterIPGeneral"])


def test_load_balancer():
    h = _keep(Harness())
    h.sync([make_test_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                              ports=[port("p80", 80, node_port=3001)],
                              lb_ingress=["1.2.3.4", "5.6.7.8"],
                              load_balancer_source_ranges=["192.168.0.0/24", " 203.0.113.0/25"])],
           [make_test_endpoint_slice("ns1", "svc1", 1, [EP("10.180.0.1")], P80)])
    h.flows(FLOWS["TestLoadBalancer"])


@pytest.mark.parametrize("case", sorted(FLOWS["TestNodePorts"]))
def test_node_ports(case):
    tc = FLOWS["TestNodePorts"][case]
    v4 = tc["family"] == 4
    npa = tuple(tc["nodePortAddresses"]) if tc["nodePortAddresses"] else None
    h = _keep(Harness(tc["family"], nodeport_addresses=npa))
    svc_ip, ep1, ep2 = (("172.30.0.41", "10.180.0.1", "10.180.2.1") if v4 else
                        ("fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1"))
    h.sync([make_test_service("ns1", "svc1", type="NodePort", cluster_ip=svc_ip,
                              ports=[port("p80", 80, node_port=3001)])],
           [make_test_endpoint_slice("ns1", "svc1", 1, [EP(ep1), EP(ep2, TEST_HOSTNAME)], P80,
                                     "IPv4" if v4 else "IPv6")])
    pod, client, node, alt = (("10.0.0.2", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, TEST_NODE_IP_ALT)
                              if v4 else
                              ("fd00:10::2", "2600:5200::1", TEST_NODE_IPV6, TEST_NODE_IPV6_ALT))
    hp = (lambda ip: f"{ip}:80") if v4 else (lambda ip: f"[{ip}]:80")
    output = f"{hp(ep1)}, {hp(ep2)}"
    flows = [
        {"name": "pod to cluster IP", "sourceIP": pod, "destIP": svc_ip, "destPort": 80,
         "output": output, "masq": False},
        {"name": "external to nodePort", "sourceIP": client, "destIP": node, "destPort": 3001,
         "output": output, "masq": True},
        {"name": "node to nodePort", "sourceIP": node, "destIP": node, "destPort": 3001,
         "output": output, "masq": True},
    ]
    if tc["allowAltNodeIP"]:
        flows.append({"name": "external to nodePort on secondary IP", "sourceIP": client,
                      "destIP": alt, "destPort": 3001, "output": output, "masq": True})
    else:
        flows.append({"name": "secondary nodeIP ignores NodePorts", "sourceIP": client,
                      "destIP": alt, "destPort": 3001, "output": ""})
    h.flows(flows)


def _policy_objects(etp: str):
    svc = make_test_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                            external_traffic_policy=etp, external_ips=["192.168.99.11"],
                            ports=[port("p80", 80, node_port=3001, target_port=80)],
                            health_check_node_port=30000 if etp == "Local" else None,
                            lb_ingress=["1.2.3.4"])
    eps = make_test_endpoint_slice("ns1", "svc1", 1,
                                   [EP("10.180.0.1"), EP("10.180.2.1", TEST_HOSTNAME)], P80)
    return [svc], [eps]


@pytest.mark.parametrize("etp", ["Local", "Cluster"])
def test_external_traffic_policy(etp):
    h = _keep(Harness())
    h.sync(*_policy_objects(etp))
    h.flows(FLOWS[f"TestExternalTrafficPolicy{etp}"])


DELETED_REJECT = {"name": "endpoints deleted", "sourceIP": "10.0.0.2", "destIP": "172.30.1.1",
                  "destPort": 80, "output": "REJECT"}


@pytest.mark.parametrize("case", FLOWS["TestInternalTrafficPolicy"], ids=lambda c: c["name"])
def test_internal_traffic_policy(case):
    h = _keep(Harness())
    svc = make_test_service("ns1", "svc1", cluster_ip="172.30.1.1", ports=[port("", 80)],
                            internal_traffic_policy=case["internalTrafficPolicy"])
    eps = make_test_endpoint_slice("ns1", "svc1", 1, [EP(ip, node) for ip, node in case["endpoints"]],
                                   [("", 80, "TCP")])
    h.sync([svc], [eps])
    h.flows(case["flows"])
    h.sync([svc], [])
    h.flows([DELETED_REJECT])


@pytest.mark.parametrize("policy", ["Local", "Cluster"])
def test_terminating_endpoints_traffic_policy(policy):
    svc = make_test_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.1.1",
                            external_traffic_policy=policy, ports=[port("", 80, target_port=80)],
                            health_check_node_port=30000, lb_ingress=["1.2.3.4"])
    for case in FLOWS[f"TestTerminatingEndpointsTrafficPolicy{policy}"]:
        h = _keep(Harness())
        eps = make_test_endpoint_slice(
            "ns1", "svc1", 1, [EP(ip, node, ready, serving, term)
                               for ip, ready, serving, term, node in case["endpoints"]],
            [("", 80, "TCP")])
        h.sync([svc], [eps])
        h.flows(case["flows"])
        h.sync([svc], [])
        h.flows([{"name": "pod to clusterIP after endpoints deleted", "sourceIP": "10.0.0.2",
                  "destIP": "172.30.1.1", "destPort": 80, "output": "REJECT"},
                 {"name": "external to LB after endpoints deleted", "sourceIP": TEST_EXTERNAL_CLIENT,
                  "destIP": "1.2.3.4", "destPort": 80, "output": "REJECT"}])


@pytest.mark.parametrize("case", FLOWS["TestInternalExternalMasquerade"]["cases"],
                         ids=lambda c: c["name"])
def test_internal_external_masquerade(case):
    h = _keep(Harness(masquerade_all=case["masqueradeAll"], local_detector=case["localDetector"]))
    svcs, slices = [], []
    for n, (np, hc, lb, extra) in enumerate([(3001, 30001, "1.2.3.4", {}),
                                             (3002, 30002, "5.6.7.8",
                                              {"external_traffic_policy": "Local"}),
                                             (3003, 30003, "9.10.11.12",
                                              {"internal_traffic_policy": "Local"})], start=1):
        svcs.append(make_test_service(f"ns{n}", f"svc{n}", type="LoadBalancer",
                                      cluster_ip=f"172.30.0.{40 + n}",
                                      ports=[port("p80", 80, node_port=np)],
                                      health_check_node_port=hc, lb_ingress=[lb], **extra))
        slices.append(make_test_endpoint_slice(
            f"ns{n}", f"svc{n}", 1, [EP(f"10.180.0.{n}", TEST_HOSTNAME), EP(f"10.180.1.{n}", "remote")],
            P80))
    h.sync(svcs, slices)
    flows = []
    for tc in FLOWS["TestInternalExternalMasquerade"]["flows"]:
        tc = dict(tc, **case["overrides"].get(tc["name"], {}))
        flows.append(tc)
    assert all(any(f["name"] == n for f in flows) for n in case["overrides"])
    h.flows(flows)


# -- the real nft ------------------------------------------------------------

UPSTREAM_TESTS = [
    lambda: test_overall_nftables_rules(),
    lambda: test_sync_proxy_rules_repeated(),
    lambda: test_no_endpoints_reject(),
    lambda: test_cluster_ip_general(),
    lambda: test_load_balancer(),
    *[(lambda c=c: test_node_ports(c)) for c in sorted(FLOWS["TestNodePorts"])],
    *[(lambda e=e: test_external_traffic_policy(e)) for e in ("Local", "Cluster")],
    *[(lambda c=c: test_internal_traffic_policy(c)) for c in FLOWS["TestInternalTrafficPolicy"]],
    *[(lambda p=p: test_terminating_endpoints_traffic_policy(p)) for p in ("Local", "Cluster")],
    *[(lambda c=c: test_internal_external_masquerade(c))
      for c in FLOWS["TestInternalExternalMasquerade"]["cases"]],
]


@pytest.fixture
def nft_ns():
    with scratch_netns("cb-kp-upnft") as name:
        yield name


def test_transactions_load_in_nft(nft_ns):
    """Every transaction the ported tests render (IPv4 and IPv6, full and partial
    syncs, stale-chain deletions) is accepted by the real ``nft -f``, in order, and
    the kernel's table then holds what the fake holds (same chains and elements)."""
    import json
    from harness.host import netns
    from harness.kubeproxy import apply
    ALL_TRANSACTIONS.clear()
    for run in UPSTREAM_TESTS:
        run()
    assert len(ALL_TRANSACTIONS) >= 20
    for family, txs in ALL_TRANSACTIONS:
        fam = "ip" if family == 4 else "ip6"
        for tx in txs:
            apply.nft_load(nft_ns, tx)
        listing = json.loads(netns.run(nft_ns, "nft", "-j", "list", "table", fam,
                                       "kube-proxy").stdout)["nftables"]
        fake = FakeTable(fam)
        for tx in txs:
            fake.run(tx)
        chains = {o["chain"]["name"] for o in listing if "chain" in o}
        assert chains == set(fake.chains)
        rules = sum(1 for o in listing if "rule" in o)
        assert rules == sum(len(c.rules) for c in fake.chains.values())
        for o in listing:
            for kind in ("set", "map"):
                if kind in o and not o[kind]["name"].startswith("affinity-"):
                    assert len(o[kind].get("elem", [])) == \
                        len(fake.containers[o[kind]["name"]].elements), o[kind]["name"]
        netns.run(nft_ns, "nft", "delete", "table", fam, "kube-proxy")


def test_apply_nft_dual_stack(nft_ns):
    """apply_nft loads ``ip6 kube-proxy`` beside ``ip kube-proxy`` when the state has
    IPv6 frontends, and incremental_nft syncs both (project addresses)."""
    import ipaddress as ipa
    from harness.host import netns
    from harness.kubeproxy import apply
    from harness.lb.model import Backend, Frontend, LbState

    def state(v6_backend: str) -> LbState:
        be4 = Backend(ipa.ip_address("198.18.1.10"), 8080, "TCP")
        be6 = Backend(ipa.ip_address(v6_backend), 8080, "TCP")
        return LbState((
            Frontend("default/web", "http", "ClusterIP", ipa.ip_address("198.19.0.10"), 80, "TCP",
                     (be4,)),
            Frontend("default/web", "http", "ClusterIP", ipa.ip_address("2001:db8:2::a"), 80,
                     "TCP", (be6,))))
    old, new = state("2001:db8:1:1::a"), state("2001:db8:1:1::b")
    apply.apply_nft(nft_ns, old)
    tables = netns.run(nft_ns, "nft", "list", "tables").stdout
    assert "table ip kube-proxy" in tables and "table ip6 kube-proxy" in tables
    v6 = netns.run(nft_ns, "nft", "list", "table", "ip6", "kube-proxy").stdout
    assert "dnat to [2001:db8:1:1::a]:8080" in v6 and "ip6 daddr @cluster-ips reject" in v6
    apply.incremental_nft(nft_ns, old, new)
    v6 = netns.run(nft_ns, "nft", "list", "table", "ip6", "kube-proxy").stdout
    assert "dnat to [2001:db8:1:1::b]:8080" in v6 and "2001:db8:1:1::a" not in v6
    assert "dnat to 198.18.1.10:8080" in netns.run(nft_ns, "nft", "list", "table", "ip",
                                                   "kube-proxy").stdout


# -- helpers_test.go's own tests of the comparison ----------------------------

def test_sort_nftables_transaction():
    """Test_sortNFTablesTransaction and Test_diffNFTablesTransaction (helpers_test.go)."""
    from tests.nft_tracer import sort_transaction
    given = (DATA / "sort_input.nft").read_text()
    expected = (DATA / "sort_expected.nft").read_text()
    assert sort_transaction(given) == expected.strip()
    assert diff_transaction(given, expected) == ""
    not_expected = "\n".join(expected.split("\n")[2:])
    assert diff_transaction(given, not_expected) != ""


def test_both_traffic_policies_local_keep_the_short_circuit():
    """ITP Local and ETP Local on a LoadBalancer: kube-proxy's UsesClusterEndpoints is
    ``!InternalPolicyLocal() || ExternallyAccessible()`` ("we need Cluster endpoints to
    implement short circuiting", pkg/proxy/serviceport.go), so pod and node traffic
    to the LB IP is short-circuited to the cluster chain (all endpoints) while
    external traffic gets the local endpoint only."""
    h = _keep(Harness())
    h.sync([make_test_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                              ports=[port("p80", 80, node_port=3001)], lb_ingress=["1.2.3.4"],
                              external_traffic_policy="Local", internal_traffic_policy="Local",
                              health_check_node_port=30000)],
           [make_test_endpoint_slice("ns1", "svc1", 1,
                                     [EP("10.180.0.1", TEST_HOSTNAME), EP("10.180.1.1", "remote")],
                                     P80)])
    both = "10.180.0.1:80, 10.180.1.1:80"
    h.flows([
        {"name": "pod to ClusterIP", "sourceIP": "10.0.0.2", "destIP": "172.30.0.41",
         "destPort": 80, "output": "10.180.0.1:80"},
        {"name": "pod to LB", "sourceIP": "10.0.0.2", "destIP": "1.2.3.4", "destPort": 80,
         "output": both},
        {"name": "node to LB", "sourceIP": TEST_NODE_IP, "destIP": "1.2.3.4", "destPort": 80,
         "output": both, "masq": True},
        {"name": "external to LB", "sourceIP": TEST_EXTERNAL_CLIENT, "destIP": "1.2.3.4",
         "destPort": 80, "output": "10.180.0.1:80"},
    ])
