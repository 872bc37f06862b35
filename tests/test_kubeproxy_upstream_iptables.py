"""kube-proxy's own iptables-mode unit tests, ported as golden and packet-flow tests
of harness.kubeproxy.iptables.

Source: kubernetes pkg/proxy/iptables/proxier_test.go and proxier.go as stored at
commit 4177b600d4b97a67b765a18ddeeb295ef757b212 (v1.31 era: nfacct counters,
KUBE-FIREWALL, LoadBalancerIPMode emulation at 1.31), and
pkg/util/iptables/testing/parse.go.  Services and EndpointSlices are rebuilt with
tests/kubeproxy_objects.py (makeTestService / makeTestEndpointSlice), turned into
the LbState the test node sees (harness.lb.desired.lb_state), rendered by
IptablesProxier with NewFakeProxier's settings (fake_proxier_config: pod CIDR
10.0.0.0/8 or fd00:10::/64, node IPs, mark written "0x4000", nfacct counters
present, no --random-fully).  Expected texts (tests/data/kubeproxy/upstream/iptables)
are upstream's, verbatim; outputs are compared with upstream's
assertIPTablesRulesEqual (tests/iptables_tracer.py: sortIPTablesRules, then
equality, and checkIPTablesRuleJumps on full outputs).  Packet flows run
upstream's iptablesTracer over a fake iptables that receives each restore
(--noflush semantics) after the base-chain jumps.

Ported (all pass): TestCheckIPTablesRuleJumps, TestSortIPTablesRules (all four
cases), TestTracePacket, TestOverallIPTablesRules,
TestNoEndpointsReject, TestClusterIPGeneral, TestLoadBalancer, TestNodePorts (all
7 cases, IPv4 and IPv6), TestHealthCheckNodePort, TestDropInvalidRule,
TestMasqueradeRule, TestExternalTrafficPolicyLocal, TestExternalTrafficPolicyCluster,
TestComputeProbability, TestInternalTrafficPolicy,
TestTerminatingEndpointsTrafficPolicyLocal, TestTerminatingEndpointsTrafficPolicyCluster,
TestInternalExternalMasquerade (4 cases), TestSyncProxyRulesLargeClusterMode,
TestSyncProxyRulesRepeated (every sync, including the failed partial restore
and the full resync after it), TestBadIPs.

Left out, because they test kube-proxy internals the renderer does not have:
TestParseIPTablesData (a test helper), TestDeleteEndpointConnections* (conntrack
cleanup), TestBuildServiceMap* and TestUpdateEndpointsMap (the change trackers),
TestHealthCheckNodePortWhenTerminating (the health-check server's endpoint count),
TestProxierMetricsIPTablesTotalRules and TestNoEndpointsMetric (Prometheus
metrics), TestLoadBalancerIngressRouteTypeProxy (status.loadBalancer.ingress
ipMode, which harness.scenario does not model).  The metric assertions inside
TestOverallIPTablesRules and TestSyncProxyRulesRepeated are left out likewise, and
TestCheckIPTablesRuleJumps' duplicated cases are ported once.

Beyond upstream (root, a cb- namespace: run under the topology lock): the
TestOverallIPTablesRules output loads with iptables-restore and iptables-save
gives back every rule; TestNodePorts' IPv6 rules load with ip6tables-restore;
apply_iptables loads both families of a dual-stack state; the dangling-jump
partial-restore failure of TestSyncProxyRulesRepeated happens with the real
iptables-restore too, and the proxier recovers with a full sync.
"""
from __future__ import annotations

import collections
import pathlib

import pytest

from harness.host import netns
from harness.kubeproxy import apply, iptables as ipt
from tests import iptables_tracer as tr
from tests.iptables_tracer import Flow
from tests.support import scratch_netns
from tests.kubeproxy_objects import (TEST_EXTERNAL_CLIENT, TEST_EXTERNAL_CLIENT_BLOCKED,
                                     TEST_HOSTNAME, TEST_NODE_IP, TEST_NODE_IP_ALT,
                                     TEST_NODE_IPS, TEST_NODE_IPV6, TEST_NODE_IPV6_ALT, Cluster,
                                     ep, eport, fake_proxier_config, make_service, make_slice,
                                     port)

DATA = pathlib.Path(__file__).parent / "data" / "kubeproxy" / "upstream" / "iptables"


def expected(name: str) -> str:
    return (DATA / name).read_text()


class Fake:
    """A NewFakeProxier: an IptablesProxier plus the fake iptables it restores into."""

    def __init__(self, family: int = 4, **config):
        self.cluster = Cluster()
        self.proxier = ipt.IptablesProxier(fake_proxier_config(family, **config))
        self.ipt = tr.FakeIptables(ipv6=family == 6)
        self.data = ""

    def sync(self, full: bool = False) -> str:
        """syncProxyRules (forceSyncProxyRules with *full*)."""
        do_full = full or self.proxier.need_full_sync
        text = self.proxier.sync(self.cluster.state(), full=full)
        self.data = text
        if do_full:
            self.ipt.ensure_jumps()
        try:
            self.ipt.restore(text)
        except tr.RestoreError:
            self.proxier.restore_failed()
            raise
        return text

    def flows(self, flows) -> None:
        failures = tr.flow_failures(self.ipt, TEST_NODE_IPS, flows)
        assert not failures, "\n".join(failures)


def assert_rules_equal(expected_text: str, result: str, check_consistency: bool = True) -> None:
    diff = tr.rules_diff(expected_text, result)
    assert not diff, diff
    if check_consistency:
        assert tr.check_rule_jumps(expected_text.lstrip(" \t\n")) == ""


# -- the test machinery itself ------------------------------------------------------

@pytest.mark.parametrize("rules, error", [
    ("*filter\nCOMMIT\n*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n"
     ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"
     '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
     "-d 10.20.30.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\n"
     '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
     "-d 10.20.30.41 --dport 80 ! -s 10.0.0.0/24 -j KUBE-MARK-MASQ\nCOMMIT\n", ""),
    ("*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n"
     '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
     "-d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\nCOMMIT\n",
     "some chains in nat are used but were not created: ['KUBE-SVC-XPGD46QRK7WJZT7O']"),
    ("*filter\nCOMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n"
     '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
     "-d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O\nCOMMIT\n",
     "some chains in nat are jumped to but have no rules: ['KUBE-SVC-XPGD46QRK7WJZT7O']"),
    ("*filter\nCOMMIT\n*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n"
     '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" ...\n'
     '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp '
     "-d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\nCOMMIT\n",
     "some chains in nat are used but were not created: ['KUBE-SVC-XPGD46QRK7WJZT7O']"),
    ("*filter\nCOMMIT\n*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-SERVICES - [0:0]\n"
     ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]\n"
     '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" ...\nCOMMIT\n',
     "some chains in nat are created but not used: ['KUBE-SVC-XPGD46QRK7WJZT7O']"),
])
def test_check_iptables_rule_jumps(rules, error):
    assert tr.check_rule_jumps(rules) == error


SORT_CASES = {
    "correctly match same service name in different styles of comments": (
        """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2
-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3
-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2
-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1
-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2
-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3
COMMIT
""", """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" svc1 line 1
-A KUBE-SERVICES -m comment --comment ns1/svc1 svc1 line 2
-A KUBE-SERVICES -m comment --comment "ns1/svc1 blah" svc1 line 3
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" svc3 line 1
-A KUBE-SERVICES -m comment --comment "ns3/svc3 blah" svc3 line 2
-A KUBE-SERVICES -m comment --comment ns3/svc3 svc3 line 3
-A KUBE-SERVICES -m comment --comment ns4/svc4 svc4 line 1
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" svc4 line 2
-A KUBE-SERVICES -m comment --comment "ns4/svc4 blah" svc4 line 3
COMMIT
"""),
    "unexpected junk lines are preserved": (
        """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-AAAAA - [0:0]
:KUBE-ZZZZZ - [0:0]
:WHY-IS-THIS-CHAIN-HERE - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-AAAAA -m comment --comment "mystery chain number 2"
COMMIT
""", """*filter
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-AAAAA - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-ZZZZZ - [0:0]
:WHY-IS-THIS-CHAIN-HERE - [0:0]
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" svc2 line 1
-A KUBE-SERVICES -m comment --comment ns2/svc2 svc2 line 2
-A KUBE-SERVICES -m comment --comment "ns2/svc2 blah" svc2 line 3
-A KUBE-AAAAA -m comment --comment "mystery chain number 2"
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-ZZZZZ -m comment --comment "mystery chain number 1"
-A WHY-IS-THIS-CHAIN-HERE -j ACCEPT
COMMIT
"""),
}


SORT_FILES = {"basic test using each match type": "sort_basic",
              "extra tables": "sort_extra_tables"}


@pytest.mark.parametrize("case", sorted(SORT_CASES) + sorted(SORT_FILES))
def test_sort_iptables_rules(case):
    if case in SORT_FILES:
        given, want = (expected(f"{SORT_FILES[case]}_{part}.txt") for part in ("input", "output"))
    else:
        given, want = SORT_CASES[case]
    assert tr.sort_rules(given) == want


def test_trace_packet():
    fake = tr.FakeIptables()
    fake.restore(expected("trace_packet_rules.txt"))
    failures = tr.flow_failures(fake, TEST_NODE_IPS, [
        Flow("no match", "10.0.0.2", "10.0.0.3", 80, ""),
        Flow("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80"),
        Flow("LOCAL, KUBE-MARK-MASQ", TEST_NODE_IP, "192.168.99.22", 80, "10.180.0.2:80", True),
        Flow("DROP", TEST_EXTERNAL_CLIENT, "192.168.99.22", 80, "DROP"),
        Flow("ACCEPT (NodePortHealthCheck)", TEST_NODE_IP, TEST_NODE_IP, 30000, "ACCEPT"),
        Flow("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT"),
    ])
    assert not failures, "\n".join(failures)


def test_compute_probability():
    cases = {1: "1.0000000000", 2: "0.5000000000", 10: "0.1000000000", 100: "0.0100000000",
             1000: "0.0010000000", 10000: "0.0001000000", 100000: "0.0000100000",
             100001: "0.0000099999"}
    for n, want in cases.items():
        assert ipt.probability(n) == want
    prev = 0.0
    for n in range(100000, 1, -1):
        cur = float(ipt.probability(n))
        assert cur > prev, n
        prev = cur


# -- golden outputs -------------------------------------------------------------------

def p80(name: str = "p80", number: int = 80, protocol: str = "TCP"):
    return [eport(name, number, protocol)]


def overall_cluster() -> Cluster:
    c = Cluster()
    c.add(
        make_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("p80", 80)]),
        make_service("ns2", "svc2", type="LoadBalancer", external_traffic_policy="Local",
                     cluster_ip="172.30.0.42", ports=[port("p80", 80, node_port=3001)],
                     lb_ingress=("1.2.3.4",), external_ips=("192.168.99.22",),
                     health_check_node_port=30000),
        make_service("ns3", "svc3", type="NodePort", cluster_ip="172.30.0.43",
                     ports=[port("p80", 80, node_port=3003)]),
        make_service("ns4", "svc4", type="NodePort", cluster_ip="172.30.0.44",
                     external_ips=("192.168.99.33",), ports=[port("p80", 80, target_port=80)]),
        make_service("ns5", "svc5", type="LoadBalancer", external_traffic_policy="Cluster",
                     cluster_ip="172.30.0.45", ports=[port("p80", 80, node_port=3002)],
                     lb_ingress=("5.6.7.8",), health_check_node_port=30000,
                     source_ranges=(" 203.0.113.0/25",), affinity_timeout=10800),
        make_service("ns6", "svc6", type="ClusterIP", cluster_ip="172.30.0.46",
                     ports=[port("p80", 80, target_port=80)]),
    )
    c.add(
        make_slice("ns1", "svc1", 1, [ep("10.180.0.1")], p80()),
        make_slice("ns2", "svc2", 1, [ep("10.180.0.2")], p80()),
        make_slice("ns3", "svc3", 1, [ep("10.180.0.3")], p80()),
        make_slice("ns4", "svc4", 1, [ep("10.180.0.4"), ep("10.180.0.5", TEST_HOSTNAME)], p80()),
        make_slice("ns5", "svc5", 1, [ep("10.180.0.3")], p80()),
    )
    return c


def test_overall_iptables_rules():
    fake = Fake()
    fake.cluster = overall_cluster()
    assert_rules_equal(expected("overall.txt"), fake.sync())


def test_bad_ips():
    fake = Fake()
    fake.cluster.add(
        make_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.041",
                     ports=[port("p80", 80, node_port=3001)], lb_ingress=("1.2.3.004",),
                     external_ips=("192.168.099.022",), source_ranges=("203.0.113.000/025",)),
        make_slice("ns1", "svc1", 1, [ep("10.180.00.001")], p80()))
    assert_rules_equal(expected("bad_ips.txt"), fake.sync())


# -- packet flows -------------------------------------------------------------------

def test_no_endpoints_reject():
    fake = Fake()
    fake.cluster.add(make_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                                  external_ips=("192.168.99.11",),
                                  ports=[port("p80", 80, node_port=3001)],
                                  lb_ingress=("1.2.3.4",)))
    fake.sync()
    fake.flows([
        Flow("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT"),
        Flow("external to external IP with no endpoints", TEST_EXTERNAL_CLIENT, "192.168.99.11",
             80, "REJECT"),
        Flow("pod to NodePort with no endpoints", "10.0.0.2", TEST_NODE_IP, 3001, "REJECT"),
        Flow("external to NodePort with no endpoints", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, 3001,
             "REJECT"),
        Flow("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT"),
        Flow("external to LoadBalancer IP with no endpoints", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80,
             "REJECT"),
    ])


def test_cluster_ip_general():
    fake = Fake()
    fake.cluster.add(
        make_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("http", 80)]),
        make_service("ns2", "svc2", cluster_ip="172.30.0.42", ports=[
            port("http", 80), port("https", 443, target_port=8443),
            port("dns-udp", 53, "UDP"), port("dns-tcp", 53, target_port=5353),
            port("dns-sctp", 53, "SCTP")]),
        make_slice("ns1", "svc1", 1, [ep("10.180.0.1", TEST_HOSTNAME)], [eport("http", 80)]),
        make_slice("ns2", "svc2", 1, [ep("10.180.0.1", TEST_HOSTNAME), ep("10.180.2.1", "host2")],
                   [eport("http", 80), eport("https", 8443), eport("dns-udp", 53, "UDP"),
                    eport("dns-tcp", 5353), eport("dns-sctp", 53, "SCTP")]))
    fake.sync()
    fake.flows([
        Flow("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80"),
        Flow("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
        Flow("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80,
             "10.180.0.1:80, 10.180.2.1:80"),
        Flow("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443,
             "10.180.0.1:8443, 10.180.2.1:8443"),
        Flow("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42",
             53, "10.180.0.1:5353, 10.180.2.1:5353", protocol="TCP"),
        Flow("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42",
             53, "10.180.0.1:53, 10.180.2.1:53", protocol="UDP"),
        Flow("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42",
             53, "10.180.0.1:53, 10.180.2.1:53", protocol="SCTP"),
        Flow("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "",
             protocol="UDP"),
        Flow("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, ""),
    ])


def test_load_balancer():
    fake = Fake()
    fake.cluster.add(
        make_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.41",
                     ports=[port("p80", 80, node_port=3001)], lb_ingress=("1.2.3.4", "5.6.7.8"),
                     source_ranges=("192.168.0.0/24", " 203.0.113.0/25")),
        make_slice("ns1", "svc1", 1, [ep("10.180.0.1")], p80()))
    fake.sync()
    out = "10.180.0.1:80"
    fake.flows([
        Flow("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, out),
        Flow("external to nodePort", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, 3001, out, True),
        Flow("nodePort bypasses LoadBalancerSourceRanges", TEST_EXTERNAL_CLIENT_BLOCKED,
             TEST_NODE_IP, 3001, out, True),
        Flow("accepted external to LB1", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, out, True),
        Flow("accepted external to LB2", TEST_EXTERNAL_CLIENT, "5.6.7.8", 80, out, True),
        Flow("blocked external to LB1", TEST_EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP"),
        Flow("blocked external to LB2", TEST_EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP"),
        Flow("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP"),
        Flow("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP"),
        Flow("node to LB1 (allowed by LoadBalancerSourceRanges)", TEST_NODE_IP, "1.2.3.4", 80, out,
             True),
        Flow("node to LB2 (allowed by LoadBalancerSourceRanges)", TEST_NODE_IP, "5.6.7.8", 80, out,
             True),
        Flow("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, out,
             True),
        Flow("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, out,
             True),
    ])


NODE_PORT_CASES = [
    # name, family, localhostNodePorts, nodePortAddresses, allowAltNodeIP, expectFirewall
    ("ipv4, localhost-nodeports enabled", 4, True, (), True, True),
    ("ipv4, localhost-nodeports disabled", 4, False, (), True, False),
    ("ipv4, localhost-nodeports disabled, localhost in nodeport-addresses", 4, False,
     ("192.168.0.0/24", "127.0.0.1/32"), False, False),
    ("ipv4, localhost-nodeports enabled, multiple nodeport-addresses", 4, False,
     ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), True, False),
    ("ipv6, localhost-nodeports enabled", 6, True, (), True, False),
    ("ipv6, localhost-nodeports disabled", 6, False, (), True, False),
    ("ipv6, localhost-nodeports disabled, multiple nodeport-addresses", 6, False,
     ("192.168.0.0/24", "192.168.1.0/24", "2001:db8::/64"), False, False),
]


@pytest.mark.parametrize("name, family, localhost, addresses, allow_alt, firewall",
                         NODE_PORT_CASES, ids=[c[0] for c in NODE_PORT_CASES])
def test_node_ports(name, family, localhost, addresses, allow_alt, firewall):
    fake = Fake(family, localhost_nodeports=localhost, nodeport_addresses=addresses)
    if family == 4:
        svc_ip, ep1, ep2 = "172.30.0.41", "10.180.0.1", "10.180.2.1"
        pod, client, node, alt, lo = "10.0.0.2", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, \
            TEST_NODE_IP_ALT, "127.0.0.1"
        output = f"{ep1}:80, {ep2}:80"
    else:
        svc_ip, ep1, ep2 = "fd00:172:30::41", "fd00:10:180::1", "fd00:10:180::2:1"
        pod, client, node, alt, lo = "fd00:10::2", "2600:5200::1", TEST_NODE_IPV6, \
            TEST_NODE_IPV6_ALT, "::1"
        output = f"[{ep1}]:80, [{ep2}]:80"
    fake.cluster.add(
        make_service("ns1", "svc1", type="NodePort", cluster_ip=svc_ip,
                     ports=[port("p80", 80, node_port=3001)]),
        make_slice("ns1", "svc1", 1, [ep(ep1), ep(ep2, TEST_HOSTNAME)], p80(),
                   address_type=f"IPv{family}"))
    fake.sync()
    flows = [Flow("pod to cluster IP", pod, svc_ip, 80, output),
             Flow("external to nodePort", client, node, 3001, output, True),
             Flow("node to nodePort", node, node, 3001, output, True)]
    if family == 4 and localhost:
        flows.append(Flow("localhost to nodePort gets masqueraded", lo, lo, 3001, output, True))
    else:
        flows.append(Flow("localhost to nodePort is ignored", lo, lo, 3001, ""))
    if allow_alt:
        flows.append(Flow("external to nodePort on secondary IP", client, alt, 3001, output, True))
    else:
        flows.append(Flow("secondary nodeIP ignores NodePorts", client, alt, 3001, ""))
    fake.flows(flows)
    want = ('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
            "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT "
            "-j DROP\n") if firewall else ""
    assert tr.chain_rules("filter", "KUBE-FIREWALL", fake.data) == want


def test_health_check_node_port():
    fake = Fake(nodeport_addresses=("127.0.0.0/8",))
    svc = make_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.0.42",
                       ports=[port("p80", 80, node_port=3001)], health_check_node_port=30000,
                       external_traffic_policy="Local")
    fake.cluster.add(svc)
    fake.sync()
    fake.flows([Flow("firewall accepts HealthCheckNodePort", "1.2.3.4", TEST_NODE_IP, 30000,
                     "ACCEPT")])
    fake.cluster.delete(svc)
    fake.sync()
    fake.flows([Flow("HealthCheckNodePort no longer has any rule", "1.2.3.4", TEST_NODE_IP, 30000,
                     "")])


FORWARD_RULES = ('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark '
                 "--mark 0x4000/0x4000 -j ACCEPT\n"
                 '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
                 "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")


@pytest.mark.parametrize("nfacct, tcp_liberal, drop_rule", [
    (False, False, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n"),
    (True, False, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name "
                  "ct_state_invalid_dropped_pkts -j DROP\n"),
    (False, True, ""),
])
def test_drop_invalid_rule(nfacct, tcp_liberal, drop_rule):
    fake = Fake(nfacct=nfacct, conntrack_tcp_liberal=tcp_liberal)
    fake.sync()
    assert tr.chain_rules("filter", "KUBE-FORWARD", fake.data) == drop_rule + FORWARD_RULES


@pytest.mark.parametrize("random_fully", [False, True])
def test_masquerade_rule(random_fully):
    fake = Fake(random_fully=random_fully)
    fake.sync()
    assert tr.chain_rules("nat", "KUBE-POSTROUTING", fake.data) == (
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n"
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n"
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE" + (" --random-fully" if random_fully else "") + "\n")


def _lb_service(policy: str) -> Cluster:
    c = Cluster()
    return c.add(
        make_service("ns1", "svc1", type="LoadBalancer", external_traffic_policy=policy,
                     cluster_ip="172.30.0.41", external_ips=("192.168.99.11",),
                     ports=[port("p80", 80, node_port=3001, target_port=80)],
                     health_check_node_port=30000, lb_ingress=("1.2.3.4",)),
        make_slice("ns1", "svc1", 1, [ep("10.180.0.1"), ep("10.180.2.1", TEST_HOSTNAME)], p80()))


def test_external_traffic_policy_local():
    fake = Fake()
    fake.cluster = _lb_service("Local")
    fake.sync()
    both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
    fake.flows([
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80,
             both),
        Flow("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11",
             80, both),
        Flow("external to external IP hits only local endpoint, unmasqueraded",
             TEST_EXTERNAL_CLIENT, "192.168.99.11", 80, local),
        Flow("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80,
             both),
        Flow("external to LB IP hits only local endpoint, unmasqueraded", TEST_EXTERNAL_CLIENT,
             "1.2.3.4", 80, local),
        Flow("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", TEST_NODE_IP, 3001,
             both),
        Flow("external to NodePort hits only local endpoint, unmasqueraded", TEST_EXTERNAL_CLIENT,
             TEST_NODE_IP, 3001, local),
    ])


def test_external_traffic_policy_cluster():
    fake = Fake()
    fake.cluster = _lb_service("Cluster")
    fake.sync()
    both = "10.180.0.1:80, 10.180.2.1:80"
    fake.flows([
        Flow("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80,
             both),
        Flow("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11",
             80, both, True),
        Flow("external to external IP hits both endpoints, masqueraded", TEST_EXTERNAL_CLIENT,
             "192.168.99.11", 80, both, True),
        Flow("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both,
             True),
        Flow("external to LB IP hits both endpoints, masqueraded", TEST_EXTERNAL_CLIENT,
             "1.2.3.4", 80, both, True),
        Flow("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", TEST_NODE_IP, 3001,
             both, True),
        Flow("external to NodePort hits both endpoints, masqueraded", TEST_EXTERNAL_CLIENT,
             TEST_NODE_IP, 3001, both, True),
    ])


ITP_CASES = [
    ("internalTrafficPolicy is cluster", "Cluster",
     [("10.0.1.1", TEST_HOSTNAME), ("10.0.1.2", "host1"), ("10.0.1.3", "host2")],
     Flow("pod to ClusterIP hits all endpoints", "10.0.0.2", "172.30.1.1", 80,
          "10.0.1.1:80, 10.0.1.2:80, 10.0.1.3:80")),
    ("internalTrafficPolicy is local and there is one local endpoint", "Local",
     [("10.0.1.1", TEST_HOSTNAME), ("10.0.1.2", "host1"), ("10.0.1.3", "host2")],
     Flow("pod to ClusterIP hits only local endpoint", "10.0.0.2", "172.30.1.1", 80,
          "10.0.1.1:80")),
    ("internalTrafficPolicy is local and there are multiple local endpoints", "Local",
     [("10.0.1.1", TEST_HOSTNAME), ("10.0.1.2", TEST_HOSTNAME), ("10.0.1.3", "host2")],
     Flow("pod to ClusterIP hits all local endpoints", "10.0.0.2", "172.30.1.1", 80,
          "10.0.1.1:80, 10.0.1.2:80")),
    ("internalTrafficPolicy is local and there are no local endpoints", "Local",
     [("10.0.1.1", "host0"), ("10.0.1.2", "host1"), ("10.0.1.3", "host2")],
     Flow("no endpoints", "10.0.0.2", "172.30.1.1", 80, "DROP")),
]


@pytest.mark.parametrize("name, policy, endpoints, flow", ITP_CASES,
                         ids=[c[0] for c in ITP_CASES])
def test_internal_traffic_policy(name, policy, endpoints, flow):
    fake = Fake()
    eps = make_slice("ns1", "svc1", 1, [ep(ip, host) for ip, host in endpoints], [eport("", 80)])
    fake.cluster.add(make_service("ns1", "svc1", cluster_ip="172.30.1.1", ports=[port("", 80)],
                                  internal_traffic_policy=policy), eps)
    fake.sync()
    fake.flows([flow])
    fake.cluster.delete(eps)
    fake.sync()
    fake.flows([Flow("endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT")])


def _terminating(policy: str, endpoints) -> Cluster:
    c = Cluster()
    return c.add(
        make_service("ns1", "svc1", type="LoadBalancer", cluster_ip="172.30.1.1",
                     external_traffic_policy=policy, ports=[port("", 80, target_port=80)],
                     health_check_node_port=30000, lb_ingress=("1.2.3.4",)),
        make_slice("ns1", "svc1", 1, endpoints, [eport("", 80)]))


def _cond(ip, node, ready, serving, terminating):
    return ep(ip, node, ready=ready, serving=serving, terminating=terminating)


TERMINATING_LOCAL = [
    ("ready endpoints exist", [
        _cond("10.0.1.1", TEST_HOSTNAME, True, True, False),
        _cond("10.0.1.2", TEST_HOSTNAME, True, True, False),
        _cond("10.0.1.3", TEST_HOSTNAME, False, True, True),
        _cond("10.0.1.4", TEST_HOSTNAME, False, False, True),
        _cond("10.0.1.5", "host-1", True, True, False)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80,
           "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.1:80, 10.0.1.2:80")]),
    ("only terminating endpoints exist", [
        _cond("10.0.1.2", TEST_HOSTNAME, False, True, True),
        _cond("10.0.1.3", TEST_HOSTNAME, False, True, True),
        _cond("10.0.1.4", TEST_HOSTNAME, False, False, True),
        _cond("10.0.1.5", "host-1", True, True, False)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.2:80, 10.0.1.3:80")]),
    ("terminating endpoints on remote node", [
        _cond("10.0.1.5", "host-1", False, True, True)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80"),
      Flow("external to LB, no locally-usable endpoints", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80,
           "DROP")]),
    ("no usable endpoints on any node", [
        _cond("10.0.1.5", TEST_HOSTNAME, False, False, True),
        _cond("10.0.1.5", "host-1", False, False, True)],
     [Flow("pod to clusterIP, no usable endpoints", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
      Flow("external to LB, no usable endpoints", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80,
           "REJECT")]),
]

TERMINATING_CLUSTER = [
    ("ready endpoints exist", [
        _cond("10.0.1.1", TEST_HOSTNAME, True, True, False),
        _cond("10.0.1.2", TEST_HOSTNAME, True, True, False),
        _cond("10.0.1.3", "another-host", False, True, True),
        _cond("10.0.1.4", "another-host", False, False, True),
        _cond("10.0.1.5", "another-host", True, True, False)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80,
           "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80,
           "10.0.1.1:80, 10.0.1.2:80, 10.0.1.5:80", True)]),
    ("only terminating endpoints exist", [
        _cond("10.0.1.2", TEST_HOSTNAME, False, True, True),
        _cond("10.0.1.3", TEST_HOSTNAME, False, True, True),
        _cond("10.0.1.4", "another-host", False, False, True),
        _cond("10.0.1.5", "another-host", False, True, True)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80,
           "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80,
           "10.0.1.2:80, 10.0.1.3:80, 10.0.1.5:80", True)]),
    ("terminating endpoints on remote node", [
        _cond("10.0.1.5", "host-1", False, True, True)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "10.0.1.5:80"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "10.0.1.5:80", True)]),
    ("no usable endpoints on any node", [
        _cond("10.0.1.5", TEST_HOSTNAME, False, False, True),
        _cond("10.0.1.5", "host-1", False, False, True)],
     [Flow("pod to clusterIP", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
      Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT")]),
]

AFTER_DELETE = [
    Flow("pod to clusterIP after endpoints deleted", "10.0.0.2", "172.30.1.1", 80, "REJECT"),
    Flow("external to LB after endpoints deleted", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT"),
]


@pytest.mark.parametrize("policy, name, endpoints, flows",
                         [("Local", *c) for c in TERMINATING_LOCAL]
                         + [("Cluster", *c) for c in TERMINATING_CLUSTER],
                         ids=[f"Local-{c[0]}" for c in TERMINATING_LOCAL]
                         + [f"Cluster-{c[0]}" for c in TERMINATING_CLUSTER])
def test_terminating_endpoints(policy, name, endpoints, flows):
    """TestTerminatingEndpointsTrafficPolicyLocal / ...Cluster."""
    fake = Fake()
    fake.cluster = _terminating(policy, endpoints)
    fake.sync()
    fake.flows(flows)
    fake.cluster.delete(fake.cluster.slices["ns1/svc1-1"])
    fake.sync()
    fake.flows(AFTER_DELETE)


MASQ_FLOWS = [
    Flow("pod to ClusterIP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80, 10.180.1.1:80"),
    Flow("pod to NodePort", "10.0.0.2", TEST_NODE_IP, 3001, "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("pod to LB", "10.0.0.2", "1.2.3.4", 80, "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("node to ClusterIP", TEST_NODE_IP, "172.30.0.41", 80, "10.180.0.1:80, 10.180.1.1:80",
         True),
    Flow("node to NodePort", TEST_NODE_IP, TEST_NODE_IP, 3001, "10.180.0.1:80, 10.180.1.1:80",
         True),
    Flow("localhost to NodePort", "127.0.0.1", "127.0.0.1", 3001, "10.180.0.1:80, 10.180.1.1:80",
         True),
    Flow("node to LB", TEST_NODE_IP, "1.2.3.4", 80, "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("external to ClusterIP", TEST_EXTERNAL_CLIENT, "172.30.0.41", 80,
         "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("external to NodePort", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, 3001,
         "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("external to LB", TEST_EXTERNAL_CLIENT, "1.2.3.4", 80, "10.180.0.1:80, 10.180.1.1:80",
         True),
    Flow("pod to ClusterIP with eTP:Local", "10.0.0.2", "172.30.0.42", 80,
         "10.180.0.2:80, 10.180.1.2:80"),
    Flow("pod to NodePort with eTP:Local", "10.0.0.2", TEST_NODE_IP, 3002,
         "10.180.0.2:80, 10.180.1.2:80"),
    Flow("pod to LB with eTP:Local", "10.0.0.2", "5.6.7.8", 80, "10.180.0.2:80, 10.180.1.2:80"),
    Flow("node to ClusterIP with eTP:Local", TEST_NODE_IP, "172.30.0.42", 80,
         "10.180.0.2:80, 10.180.1.2:80", True),
    Flow("node to NodePort with eTP:Local", TEST_NODE_IP, TEST_NODE_IP, 3001,
         "10.180.0.1:80, 10.180.1.1:80", True),
    Flow("localhost to NodePort with eTP:Local", "127.0.0.1", "127.0.0.1", 3002,
         "10.180.0.2:80, 10.180.1.2:80", True),
    Flow("node to LB with eTP:Local", TEST_NODE_IP, "5.6.7.8", 80, "10.180.0.2:80, 10.180.1.2:80",
         True),
    Flow("external to ClusterIP with eTP:Local", TEST_EXTERNAL_CLIENT, "172.30.0.42", 80,
         "10.180.0.2:80, 10.180.1.2:80", True),
    Flow("external to NodePort with eTP:Local", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, 3002,
         "10.180.0.2:80"),
    Flow("external to LB with eTP:Local", TEST_EXTERNAL_CLIENT, "5.6.7.8", 80, "10.180.0.2:80"),
    Flow("pod to ClusterIP with iTP:Local", "10.0.0.2", "172.30.0.43", 80, "10.180.0.3:80"),
    Flow("pod to NodePort with iTP:Local", "10.0.0.2", TEST_NODE_IP, 3003,
         "10.180.0.3:80, 10.180.1.3:80", True),
    Flow("pod to LB with iTP:Local", "10.0.0.2", "9.10.11.12", 80, "10.180.0.3:80, 10.180.1.3:80",
         True),
    Flow("node to ClusterIP with iTP:Local", TEST_NODE_IP, "172.30.0.43", 80, "10.180.0.3:80",
         True),
    Flow("node to NodePort with iTP:Local", TEST_NODE_IP, TEST_NODE_IP, 3003,
         "10.180.0.3:80, 10.180.1.3:80", True),
    Flow("localhost to NodePort with iTP:Local", "127.0.0.1", "127.0.0.1", 3003,
         "10.180.0.3:80, 10.180.1.3:80", True),
    Flow("node to LB with iTP:Local", TEST_NODE_IP, "9.10.11.12", 80,
         "10.180.0.3:80, 10.180.1.3:80", True),
    Flow("external to ClusterIP with iTP:Local", TEST_EXTERNAL_CLIENT, "172.30.0.43", 80,
         "10.180.0.3:80", True),
    Flow("external to NodePort with iTP:Local", TEST_EXTERNAL_CLIENT, TEST_NODE_IP, 3003,
         "10.180.0.3:80, 10.180.1.3:80", True),
    Flow("external to LB with iTP:Local", TEST_EXTERNAL_CLIENT, "9.10.11.12", 80,
         "10.180.0.3:80, 10.180.1.3:80", True),
]

NO_DETECTOR = {"node to ClusterIP": {"masq": False},
               "node to ClusterIP with eTP:Local": {"masq": False},
               "node to ClusterIP with iTP:Local": {"masq": False},
               "external to ClusterIP": {"masq": False},
               "external to ClusterIP with eTP:Local": {"masq": False},
               "external to ClusterIP with iTP:Local": {"masq": False},
               "pod to NodePort with eTP:Local": {"output": "10.180.0.2:80"},
               "pod to LB with eTP:Local": {"output": "10.180.0.2:80"}}
MASQ_ALL = {"pod to ClusterIP": {"masq": True},
            "pod to ClusterIP with eTP:Local": {"masq": True},
            "pod to ClusterIP with iTP:Local": {"masq": True}}
MASQ_CASES = [
    ("base", False, True, {}),
    ("no LocalTrafficDetector", False, False, NO_DETECTOR),
    ("masqueradeAll", True, True, MASQ_ALL),
    ("masqueradeAll, no LocalTrafficDetector", True, False,
     {**MASQ_ALL, "pod to NodePort with eTP:Local": {"output": "10.180.0.2:80"},
      "pod to LB with eTP:Local": {"output": "10.180.0.2:80"}}),
]


@pytest.mark.parametrize("name, masquerade_all, detect_local, overrides", MASQ_CASES,
                         ids=[c[0] for c in MASQ_CASES])
def test_internal_external_masquerade(name, masquerade_all, detect_local, overrides):
    fake = Fake(masquerade_all=masquerade_all, detect_local=detect_local)
    lb = dict(type="LoadBalancer")
    fake.cluster.add(
        make_service("ns1", "svc1", cluster_ip="172.30.0.41",
                     ports=[port("p80", 80, node_port=3001)], health_check_node_port=30001,
                     lb_ingress=("1.2.3.4",), **lb),
        make_service("ns2", "svc2", cluster_ip="172.30.0.42",
                     ports=[port("p80", 80, node_port=3002)], health_check_node_port=30002,
                     external_traffic_policy="Local", lb_ingress=("5.6.7.8",), **lb),
        make_service("ns3", "svc3", cluster_ip="172.30.0.43",
                     ports=[port("p80", 80, node_port=3003)], health_check_node_port=30003,
                     internal_traffic_policy="Local", lb_ingress=("9.10.11.12",), **lb))
    for i in (1, 2, 3):
        fake.cluster.add(make_slice(f"ns{i}", f"svc{i}", 1,
                                    [ep(f"10.180.0.{i}", TEST_HOSTNAME),
                                     ep(f"10.180.1.{i}", "remote")], p80()))
    fake.sync()
    flows, applied = [], 0
    for f in MASQ_FLOWS:
        o = overrides.get(f.name)
        if o:
            applied += 1
            assert all(getattr(f, k) != v for k, v in o.items()), f.name
            f = Flow(f.name, f.source, f.dest, f.port, o.get("output", f.output),
                     o.get("masq", f.masq), f.protocol)
        flows.append(f)
    assert applied == len(overrides)
    fake.flows(flows)


# -- syncing across changes ---------------------------------------------------------

def _count_endpoints(data: str, match: str) -> tuple[str, int, int]:
    """countEndpointsAndComments."""
    matched, n, comments = "", 0, 0
    for line in data.split("\n"):
        if line.startswith("-A KUBE-SEP-") and "-j DNAT" in line:
            n += 1
            comments += "--comment" in line
            if match in line:
                matched = line
    return matched, n, comments


def test_sync_proxy_rules_large_cluster_mode():
    now = [1000.0]
    fake = Fake(masquerade_all=True)
    fake.proxier = ipt.IptablesProxier(fake.proxier.config, sync_period=30.0, clock=lambda: now[0])
    threshold = ipt.LARGE_CLUSTER_ENDPOINTS
    fake.cluster.add(
        make_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("p80", 80)]),
        make_service("ns2", "svc2", cluster_ip="172.30.0.42", ports=[port("p8080", 8080)]),
        make_service("ns3", "svc3", cluster_ip="172.30.0.43", ports=[port("p8081", 8081)]),
        make_slice("ns1", "svc1", 1, [ep(f"10.0.{i % 256}.{i // 256}")
                                      for i in range(threshold // 2 - 1)], p80()),
        make_slice("ns2", "svc2", 1, [ep(f"10.1.{i % 256}.{i // 256}")
                                      for i in range(threshold // 2 - 1)], p80("p8080", 8080)))
    fake.sync()
    want = 2 * (threshold // 2 - 1)
    first, n, comments = _count_endpoints(fake.data, "10.0.0.0")
    assert first == ("-A KUBE-SEP-DKGQUZGBKLTPAR56 -m comment --comment ns1/svc1:p80 -m tcp "
                     "-p tcp -j DNAT --to-destination 10.0.0.0:80")
    assert n == want and comments == n

    fake.cluster.add(make_slice("ns3", "svc3", 1, [ep("203.0.113.4"), ep("203.0.113.8"),
                                                   ep("203.0.113.12")], p80("p8081", 8081)))
    fake.sync()
    first, n, comments = _count_endpoints(fake.data, "203.0.113.4")
    assert first == ("-A KUBE-SEP-RUVVH7YV3PHQBDOS -m tcp -p tcp -j DNAT "
                     "--to-destination 203.0.113.4:8081")
    assert n == 3 and comments == 0

    fake.sync(full=True)
    want += 3
    first, n, comments = _count_endpoints(fake.data, "10.0.0.0")
    assert first == "-A KUBE-SEP-DKGQUZGBKLTPAR56 -m tcp -p tcp -j DNAT --to-destination 10.0.0.0:80"
    assert n == want and comments == 0

    svc4 = make_service("ns4", "svc4", cluster_ip="172.30.0.44", ports=[port("p8082", 8082)])
    fake.cluster.add(svc4, make_slice("ns4", "svc4", 1, [ep("10.4.0.1")], p80("p8082", 8082)))
    fake.sync()
    svc4_ep, n, _ = _count_endpoints(fake.data, "10.4.0.1")
    assert svc4_ep == "-A KUBE-SEP-SU5STNODRYEWJAUF -m tcp -p tcp -j DNAT --to-destination 10.4.0.1:8082"
    assert n == 1

    # In large-cluster mode a deleted service's chains stay until a sync period
    # has passed since the last cleanup.
    fake.proxier.last_cleanup = now[0]
    fake.cluster.delete(svc4)
    fake.sync()
    svc4_ep, n, _ = _count_endpoints(fake.data, "10.4.0.1")
    assert svc4_ep == "" and n == 0
    assert "-X " not in fake.data

    fake.proxier.last_cleanup = now[0] - fake.proxier.sync_period - 1e-9
    fake.sync()
    svc4_ep, n, _ = _count_endpoints(fake.data, "10.4.0.1")
    assert svc4_ep == "" and n == 0
    assert "-X KUBE-SVC-EBDQOQU5SJFXRIL3" in fake.data
    assert "-X KUBE-SEP-SU5STNODRYEWJAUF" in fake.data

    fake.sync(full=True)
    assert _count_endpoints(fake.data, "10.0.0.0")[1] == want


def test_sync_proxy_rules_repeated():
    fake = Fake()
    svc2 = make_service("ns2", "svc2", cluster_ip="172.30.0.42", ports=[port("p8080", 8080)])
    fake.cluster.add(
        make_service("ns1", "svc1", cluster_ip="172.30.0.41", ports=[port("p80", 80)]), svc2,
        make_slice("ns1", "svc1", 1, [ep("10.0.1.1")], p80()),
        make_slice("ns2", "svc2", 1, [ep("10.0.2.1")], p80("p8080", 8080)))
    assert_rules_equal(expected("repeated_1.txt"), fake.sync())

    # A new service and its endpoints: only its SVC and SEP chains are written.
    eps3 = make_slice("ns3", "svc3", 1, [ep("10.0.3.1")], p80())
    fake.cluster.add(make_service("ns3", "svc3", cluster_ip="172.30.0.43",
                                  ports=[port("p80", 80)]), eps3)
    assert_rules_equal(expected("repeated_2.txt"), fake.sync(), False)

    # Deleting a service does not rewrite the others.
    fake.cluster.delete(svc2)
    assert_rules_equal(expected("repeated_3.txt"), fake.sync(), False)

    # A service without endpoints (a REJECT rule only), then its endpoints.
    svc4 = make_service("ns4", "svc4", cluster_ip="172.30.0.44", ports=[port("p80", 80)])
    fake.cluster.add(svc4)
    assert_rules_equal(expected("repeated_4.txt"), fake.sync(), False)
    fake.cluster.add(make_slice("ns4", "svc4", 1, [ep("10.0.4.1")], p80()))
    assert_rules_equal(expected("repeated_5.txt"), fake.sync(), False)

    # Changing an endpoint rewrites the service's SVC and SEP chains.
    fake.cluster.add(make_slice("ns3", "svc3", 1, [ep("10.0.3.2")], p80()))
    assert_rules_equal(expected("repeated_6.txt"), fake.sync(), False)

    # Adding an endpoint likewise.
    fake.cluster.add(make_slice("ns3", "svc3", 1, [ep("10.0.3.2"), ep("10.0.3.3")], p80()))
    assert_rules_equal(expected("repeated_7.txt"), fake.sync(), False)

    # No change: no SVC or SEP chain is written.
    assert_rules_equal(expected("repeated_8.txt"), fake.sync(), False)

    # A jump from svc3's chain to svc4's endpoint makes the partial restore that
    # deletes svc4 fail (its chains are still referenced); the next sync is full.
    assert not fake.proxier.need_full_sync
    assert fake.ipt.dump.chain("nat", "KUBE-SEP-AYCN5HPXMIRJNJXU") is not None
    fake.ipt.ensure_rule("append", "nat", "KUBE-SVC-X27LE4BHSL4DOUIK", "-j",
                         "KUBE-SEP-AYCN5HPXMIRJNJXU")
    fake.cluster.delete(svc4)
    with pytest.raises(tr.RestoreError):
        fake.sync()
    assert fake.ipt.dump.chain("nat", "KUBE-SEP-AYCN5HPXMIRJNJXU") is not None
    assert fake.proxier.need_full_sync
    assert_rules_equal(expected("repeated_9.txt"), fake.sync(), False)
    assert fake.ipt.dump.chain("nat", "KUBE-SEP-AYCN5HPXMIRJNJXU") is None


# -- the same outputs loaded by the real iptables-restore / ip6tables-restore ---------
# (root; a cb- namespace, so run under the topology lock)

@pytest.fixture
def ns():
    with scratch_netns("cb-kp-upstream") as name:
        yield name


BACKENDS = apply.available_backends()


def _save(ns: str, backend: str, family: int = 4) -> str:
    cli = apply._binaries(backend, family)[0]
    return netns.run(ns, f"{cli}-save").stdout


def _rule_counts(text: str) -> collections.Counter:
    """Rules per (table, chain) of restore input or iptables-save output."""
    counts: collections.Counter = collections.Counter()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            counts[table, line.split()[1]] += 1
    return counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_overall_rules_load_and_round_trip(ns, backend):
    """TestOverallIPTablesRules' output (without the nfacct matches: no counters exist
    in a fresh namespace) is accepted by iptables-restore; iptables-save gives back
    every rule, and the base-chain jumps include KUBE-FIREWALL from INPUT and OUTPUT."""
    proxier = ipt.IptablesProxier(fake_proxier_config(nfacct=False, random_fully=True))
    text = proxier.sync(overall_cluster().state())
    apply.ensure_jumps(ns, backend)
    apply.restore(ns, text, backend)
    save = _save(ns, backend)
    want = _rule_counts(text)
    got = _rule_counts(save)
    assert {k: got[k] for k in want} == dict(want)
    assert "-A INPUT -j KUBE-FIREWALL" in save and "-A OUTPUT -j KUBE-FIREWALL" in save
    assert "--mark 0x4000/0x4000" in save
    assert "-m recent --set --name KUBE-SEP-I77PXRDZVX7PMWMN" in save


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_node_port_rules_load_with_ip6tables_restore(ns, backend):
    """TestNodePorts' IPv6 service, rendered for ip6tables-restore, loads; NodePorts
    skip ::1 and there is no KUBE-FIREWALL rule (IPv6 has no localhost NodePorts)."""
    c = Cluster().add(
        make_service("ns1", "svc1", type="NodePort", cluster_ip="fd00:172:30::41",
                     ports=[port("p80", 80, node_port=3001)]),
        make_slice("ns1", "svc1", 1, [ep("fd00:10:180::1"), ep("fd00:10:180::2:1", TEST_HOSTNAME)],
                   p80(), address_type="IPv6"))
    text = ipt.IptablesProxier(fake_proxier_config(6, nfacct=False)).sync(c.state())
    apply.ensure_jumps(ns, backend, 6)
    apply.restore(ns, text, backend, family=6)
    save = _save(ns, backend, 6)
    assert "! -d ::1/128" in save and "-j KUBE-NODEPORTS" in save
    assert "--to-destination [fd00:10:180::2:1]:80" in save
    assert "-A INPUT -j KUBE-FIREWALL" in save
    assert "-A KUBE-FIREWALL " not in save


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_dual_stack_loads_both_families(ns, backend):
    """apply_iptables loads IPv4 with iptables-restore and IPv6 with
    ip6tables-restore when the state has IPv6 frontends."""
    c = Cluster().add(
        make_service("ns1", "svc1", cluster_ip=("172.30.0.41", "fd00:172:30::41"),
                     ports=[port("p80", 80)]),
        make_slice("ns1", "svc1", 1, [ep("10.180.0.1")], p80()),
        make_slice("ns1", "svc1", 2, [ep("fd00:10:180::1")], p80(), address_type="IPv6"))
    assert ipt.families(c.state()) == (4, 6)
    assert apply.apply_iptables(ns, c.state(), backend) > 0
    v4 = _save(ns, backend, 4)
    assert "--to-destination 10.180.0.1:80" in v4
    # kube-proxy writes the mark 0x00004000 (Go's %#08x); the kernel keeps the value.
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in v4
    # Localhost NodePorts are on by default: kube-proxy sets route_localnet.
    assert netns.run(ns, "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip() == "1"
    v6 = _save(ns, backend, 6)
    assert "-d fd00:172:30::41/128" in v6 and "--to-destination [fd00:10:180::1]:80" in v6


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_partial_restore_fails_on_dangling_jump(ns, backend):
    """The partial-restore failure TestSyncProxyRulesRepeated provokes in its fake
    happens with the real iptables-restore too: the restore is rejected whole,
    the chain stays, and the proxier's next (full) sync loads."""
    proxier = ipt.IptablesProxier(fake_proxier_config(nfacct=False))
    c = Cluster()
    svc4 = make_service("ns4", "svc4", cluster_ip="172.30.0.44", ports=[port("p80", 80)])
    c.add(make_service("ns3", "svc3", cluster_ip="172.30.0.43", ports=[port("p80", 80)]), svc4,
          make_slice("ns3", "svc3", 1, [ep("10.0.3.2")], p80()),
          make_slice("ns4", "svc4", 1, [ep("10.0.4.1")], p80()))
    apply.ensure_jumps(ns, backend)
    apply.restore(ns, proxier.sync(c.state()), backend)
    cli = apply.BACKENDS[backend][0]
    netns.run(ns, cli, "-t", "nat", "-A", "KUBE-SVC-X27LE4BHSL4DOUIK", "-j",
              "KUBE-SEP-AYCN5HPXMIRJNJXU")
    c.delete(svc4)
    with pytest.raises(apply.ApplyError):
        apply.restore(ns, proxier.sync(c.state()), backend)
    proxier.restore_failed()
    assert ":KUBE-SEP-AYCN5HPXMIRJNJXU" in _save(ns, backend)
    apply.restore(ns, proxier.sync(c.state()), backend)
    assert "KUBE-SEP-AYCN5HPXMIRJNJXU" not in _save(ns, backend)


def test_masquerade_mark_is_written_as_go_percent_08x():
    """NewProxier formats the mark with fmt.Sprintf("%#08x", 1<<bit): Go pads the
    digits (not the whole string) to eight, so bit 14 is written 0x00004000."""
    from harness.kubeproxy.model import ProxierConfig
    assert ProxierConfig().masquerade_mark_str == "0x00004000"
    assert ProxierConfig(masquerade_bit=0).masquerade_mark_str == "0x00000001"
    text = ipt.render(overall_cluster().state())
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000" in text
    assert "--mark 0x00004000/0x00004000" in text
