"""Builders mirroring kube-proxy's nftables test helpers (makeTestService,
makeTestEndpointSlice, NewFakeProxier's settings), producing chainbench's
model objects: harness.scenario Service / EndpointSlice, a Scenario, its
LbState through harness.lb.desired.lb_state, and the ProxierConfig of
upstream's fake proxier.

Upstream's conventions (pkg/proxy/nftables/proxier_test.go): pod IPs
10.0.0.0/8, ClusterIPs 172.30.0.0/16, node 192.168.0.2 ("test-hostname"),
NodePort addresses 192.168.0.2/32 and 2001:db8::1/128 unless a test sets
others; IPv6: pods fd00:10::/64, ClusterIPs fd00:10:96::/112, node
2001:db8::1.  These addresses only appear in rendered text (no interface, no
packet), as the project's address plan allows for golden tests.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from harness.kubeproxy.model import ProxierConfig
from harness.lb.desired import lb_state
from harness.lb.model import LbState
from harness.scenario import Scenario
from harness.scenario.model import (Endpoint, EndpointPort, EndpointSlice, ObjectMeta, Service,
                                    ServicePort)

TEST_HOSTNAME = "test-hostname"
TEST_NODE_IP = "192.168.0.2"
TEST_NODE_IP_ALT = "192.168.1.2"
TEST_EXTERNAL_IP = "192.168.99.11"
TEST_NODE_IPV6 = "2001:db8::1"
TEST_NODE_IPV6_ALT = "2001:db8:1::2"
TEST_EXTERNAL_CLIENT = "203.0.113.2"
TEST_EXTERNAL_CLIENT_BLOCKED = "203.0.113.130"
#: testNodeIPs: what the tracer treats as local ("fib ... type local").
TEST_NODE_IPS = (TEST_NODE_IP, TEST_NODE_IP_ALT, TEST_EXTERNAL_IP, TEST_NODE_IPV6,
                 TEST_NODE_IPV6_ALT)
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


def _ip(text: str):
    return ipaddress.ip_address(text.strip())


def port(name: str, port: int, protocol: str = "TCP", node_port: int | None = None,
         target_port: int | str | None = None) -> ServicePort:
    """One v1.ServicePort (NodePort 0 in upstream's objects is None here)."""
    return ServicePort(name, protocol, port, port if target_port is None else target_port,
                       node_port or None)


def make_test_service(namespace: str, name: str, *, cluster_ip: str, ports,
                      type: str = "ClusterIP", external_ips=(), lb_ingress=(),
                      external_traffic_policy: str = "Cluster",
                      internal_traffic_policy: str = "Cluster",
                      health_check_node_port: int | None = None,
                      load_balancer_source_ranges=(), affinity_timeout: int | None = None
                      ) -> Service:
    """makeTestService: fields as the test's svcFunc sets them."""
    ip = _ip(cluster_ip)
    return Service(
        meta=ObjectMeta(name=name, namespace=namespace),
        type=type, cluster_ips=(ip,), headless=False, ports=tuple(ports),
        session_affinity="ClientIP" if affinity_timeout else "None",
        affinity_timeout_seconds=affinity_timeout or 10800,
        external_traffic_policy=external_traffic_policy,
        internal_traffic_policy=internal_traffic_policy,
        ip_families=("IPv4" if ip.version == 4 else "IPv6",),
        external_ips=tuple(_ip(a) for a in external_ips),
        # (upstream's " 203.0.113.0/25": whitespace is ignored, as kube-proxy does)
        load_balancer_source_ranges=tuple(ipaddress.ip_network(r.strip())
                                          for r in load_balancer_source_ranges),
        health_check_node_port=health_check_node_port,
        load_balancer_ips=tuple(_ip(a) for a in lb_ingress))


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
    eps = tuple(Endpoint((_ip(e.address),), ready=e.ready,
                         serving=e.ready if e.serving is None else e.serving,
                         terminating=e.terminating, node_name=e.node_name) for e in endpoints)
    return EndpointSlice(
        meta=ObjectMeta(name=f"{name}-{slice_num}", namespace=namespace,
                        labels={"kubernetes.io/service-name": name}),
        service_name=name, address_type=address_type, endpoints=eps,
        ports=tuple(EndpointPort(n, proto, p) for n, p, proto in ports))


def state_of(services, slices, family: int = 4) -> LbState:
    """The LbState kube-proxy's caches would hold: lb_state over a scenario of the
    objects, the node "test-hostname" with its primary address of each family."""
    scenario = Scenario("upstream-test", services=tuple(services), endpoint_slices=tuple(slices))
    return lb_state(scenario, nodes={TEST_HOSTNAME: (_ip(TEST_NODE_IP), _ip(TEST_NODE_IPV6))})
