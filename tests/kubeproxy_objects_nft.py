"""Builders mirroring kube-proxy's nftables test helpers (makeTestService,
makeTestEndpointSlice, NewFakeProxier's settings), producing chainbench's
model objects: harness.scenario Service / EndpointSlice, a Scenario, its
LbState through harness.lb.desired.lb_state, and the ProxierConfig of
upstream's fake proxier.

The objects are built by tests/kubeproxy_objects.py (the iptables tests'
builders); this module adds NewFakeProxier's nftables settings and the
upstream helper signatures the nft tests use.  Upstream's conventions
(pkg/proxy/nftables/proxier_test.go): pod IPs
10.0.0.0/8, ClusterIPs 172.30.0.0/16, node 192.168.0.2 ("test-hostname"),
NodePort addresses 192.168.0.2/32 and 2001:db8::1/128 unless a test sets
others; IPv6: pods fd00:10::/64, ClusterIPs fd00:10:96::/112, node
2001:db8::1.  These addresses only appear in rendered text (no interface, no
packet), as the project's address plan allows for golden tests.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness.kubeproxy.model import ProxierConfig
from harness.lb.model import LbState
from harness.scenario.model import EndpointSlice, Service

from tests.kubeproxy_objects import (TEST_EXTERNAL_CLIENT, TEST_EXTERNAL_CLIENT_BLOCKED,  # noqa: F401
                                     TEST_EXTERNAL_IP, TEST_HOSTNAME, TEST_NODE_IP,
                                     TEST_NODE_IP_ALT, TEST_NODE_IPS, TEST_NODE_IPV6,
                                     TEST_NODE_IPV6_ALT, Cluster, ep, eport, make_service,
                                     make_slice, port)

#: The fake network interfaces' addresses (lo, eth0) NodePortAddresses looks at.
INTERFACE_IPS = ("127.0.0.1", "::1", *TEST_NODE_IPS)
#: NewFakeProxier's masqueradeMark (set as a string, not computed with %#08x).
FAKE_MASQUERADE_MARK = "0x4000"


def fake_proxier_config(family: int = 4, nodeport_addresses: tuple[str, ...] | None = None,
                        masquerade_all: bool = False, local_detector: bool = True) -> ProxierConfig:
    """NewFakeProxier(ipFamily)'s settings as a ProxierConfig."""
    v4 = family == 4
    primary = TEST_NODE_IP if v4 else TEST_NODE_IPV6
    if nodeport_addresses is None:
        nodeport_addresses = (f"{TEST_NODE_IP}/32", f"{TEST_NODE_IPV6}/128")
    return ProxierConfig(
        family=family, hostname=TEST_HOSTNAME,
        node_ips=(primary, *[ip for ip in INTERFACE_IPS if ip != primary]),
        cluster_cidr=("10.0.0.0/8" if v4 else "fd00:10::/64") if local_detector else "",
        masquerade_all=masquerade_all, nodeport_addresses=tuple(nodeport_addresses),
        service_cidrs=("172.30.0.0/16",) if v4 else ("fd00:10:96::/112",))


def make_test_service(namespace: str, name: str, *, cluster_ip: str, ports,
                      type: str = "ClusterIP", external_ips=(), lb_ingress=(),
                      external_traffic_policy: str = "Cluster",
                      internal_traffic_policy: str = "Cluster",
                      health_check_node_port: int | None = None,
                      load_balancer_source_ranges=(), affinity_timeout: int | None = None
                      ) -> Service:
    """makeTestService: fields as the test's svcFunc sets them (upstream's
    " 203.0.113.0/25": whitespace is ignored, as kube-proxy does)."""
    return make_service(namespace, name, cluster_ip=cluster_ip, ports=list(ports), type=type,
                        external_traffic_policy=external_traffic_policy,
                        internal_traffic_policy=internal_traffic_policy,
                        external_ips=tuple(external_ips), lb_ingress=tuple(lb_ingress),
                        source_ranges=tuple(load_balancer_source_ranges),
                        health_check_node_port=health_check_node_port,
                        affinity_timeout=affinity_timeout)


@dataclass(frozen=True)
class EP:
    """One discovery.Endpoint: conditions unset mean ready/serving, not terminating."""
    address: str
    node_name: str | None = None
    ready: bool = True
    serving: bool | None = None
    terminating: bool = False


def make_test_endpoint_slice(namespace: str, name: str, slice_num: int, endpoints, ports,
                             address_type: str = "IPv4") -> EndpointSlice:
    """makeTestEndpointSlice; *ports* as (name, port, protocol) tuples."""
    return make_slice(namespace, name, slice_num,
                      [ep(e.address, e.node_name, e.ready, e.serving, e.terminating)
                       for e in endpoints],
                      [eport(n, p, proto) for n, p, proto in ports], address_type)


def state_of(services, slices, family: int = 4) -> LbState:
    """The LbState kube-proxy's caches would hold (Cluster.state: the node
    "test-hostname" with its primary address of each family)."""
    return Cluster().add(*services, *slices).state()
