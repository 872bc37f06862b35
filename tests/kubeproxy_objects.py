"""Builders mirroring kube-proxy's test helpers (pkg/proxy/iptables/proxier_test.go:
makeTestService, makeTestEndpointSlice, makeServiceMap / populateEndpointSlices,
NewFakeProxier's settings), producing this project's objects: harness.scenario
Services and EndpointSlices, a Scenario, and the LbState kube-proxy's node sees
(:func:`harness.lb.desired.lb_state` with the test node).

Conversions done here are the API-object -> kube-proxy ServicePort ones
kube-proxy itself does: IPs are parsed "sloppily" (leading zeros allowed, as
netutils.ParseIPSloppy), loadBalancerSourceRanges are trimmed of whitespace,
and the healthCheckNodePort is kept only for type LoadBalancer with
externalTrafficPolicy Local (apiservice.NeedsHealthCheck).  Endpoint conditions
default as the API does: ready unset means ready, serving unset means ready.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from harness.kubeproxy.model import ProxierConfig
from harness.lb.desired import lb_state
from harness.lb.model import LbState
from harness.scenario import Scenario
from harness.scenario.model import (Endpoint, EndpointPort, EndpointSlice, ObjectMeta, Service,
                                    ServicePort)

# NewFakeProxier's conventions (proxier_test.go).
TEST_HOSTNAME = "test-hostname"
TEST_NODE_IP = "192.168.0.2"
TEST_NODE_IP_ALT = "192.168.1.2"
TEST_EXTERNAL_IP = "192.168.99.11"
TEST_NODE_IPV6 = "2001:db8::1"
TEST_NODE_IPV6_ALT = "2001:db8:1::2"
TEST_EXTERNAL_CLIENT = "203.0.113.2"
TEST_EXTERNAL_CLIENT_BLOCKED = "203.0.113.130"
TEST_NODE_IPS = (TEST_NODE_IP, TEST_NODE_IP_ALT, TEST_EXTERNAL_IP, TEST_NODE_IPV6,
                 TEST_NODE_IPV6_ALT)
POD_CIDR = {4: "10.0.0.0/8", 6: "fd00:10::/64"}


def fake_proxier_config(family: int = 4, **overrides) -> ProxierConfig:
    """The settings NewFakeProxier gives kube-proxy: mark "0x4000" written as is,
    nfacct counters present, no --random-fully (the fake iptables lacks it),
    local traffic detected by the pod CIDR, NodePorts on localhost."""
    kw = dict(family=family, hostname=TEST_HOSTNAME, node_ips=TEST_NODE_IPS,
              cluster_cidr=POD_CIDR[family], localhost_nodeports=True,
              masquerade_mark_text="0x4000", nfacct=True, random_fully=False)
    kw.update(overrides)
    return ProxierConfig(**kw)


def parse_ip_sloppy(text: str):
    """netutils.ParseIPSloppy: IPv4 octets may carry leading zeros."""
    text = text.strip()
    if ":" not in text:
        text = ".".join(str(int(o)) for o in text.split("."))
    return ipaddress.ip_address(text)


def parse_cidr_sloppy(text: str):
    addr, _, bits = text.strip().partition("/")
    return ipaddress.ip_network(f"{parse_ip_sloppy(addr)}/{int(bits)}", strict=False)


def port(name: str, number: int, protocol: str = "TCP", node_port: int | None = None,
         target_port: int | str | None = None) -> ServicePort:
    """One spec.ports entry (v1.ServicePort)."""
    return ServicePort(name, protocol, number, number if target_port is None else target_port,
                       node_port or None)


def make_service(namespace: str, name: str, *, cluster_ip: str | tuple[str, ...],
                 ports: list[ServicePort], type: str = "ClusterIP",
                 external_traffic_policy: str = "Cluster",
                 internal_traffic_policy: str = "Cluster",
                 external_ips: tuple[str, ...] = (), lb_ingress: tuple[str, ...] = (),
                 source_ranges: tuple[str, ...] = (), health_check_node_port: int | None = None,
                 affinity_timeout: int | None = None) -> Service:
    """makeTestService: a v1.Service as kube-proxy would receive it."""
    ips = (cluster_ip,) if isinstance(cluster_ip, str) else tuple(cluster_ip)
    cips = tuple(parse_ip_sloppy(ip) for ip in ips)
    families = tuple("IPv4" if ip.version == 4 else "IPv6" for ip in cips)
    needs_hc = type == "LoadBalancer" and external_traffic_policy == "Local"
    return Service(
        ObjectMeta(name, namespace), type, cips, False, tuple(ports),
        session_affinity="ClientIP" if affinity_timeout else "None",
        affinity_timeout_seconds=affinity_timeout or 10800,
        external_traffic_policy=external_traffic_policy,
        internal_traffic_policy=internal_traffic_policy,
        ip_families=families,
        ip_family_policy="RequireDualStack" if len(cips) > 1 else "SingleStack",
        external_ips=tuple(parse_ip_sloppy(ip) for ip in external_ips),
        load_balancer_source_ranges=tuple(parse_cidr_sloppy(c) for c in source_ranges),
        health_check_node_port=health_check_node_port if needs_hc else None,
        load_balancer_ips=tuple(parse_ip_sloppy(ip) for ip in lb_ingress))


def ep(address: str, node: str | None = None, ready: bool = True, serving: bool | None = None,
       terminating: bool = False) -> Endpoint:
    """One discovery.Endpoint (conditions defaulted as the API does)."""
    return Endpoint((parse_ip_sloppy(address),), ready,
                    ready if serving is None else serving, terminating, node)


def eport(name: str, number: int, protocol: str = "TCP") -> EndpointPort:
    return EndpointPort(name, protocol, number)


def make_slice(namespace: str, service: str, num: int, endpoints: list[Endpoint],
               ports: list[EndpointPort], address_type: str = "IPv4") -> EndpointSlice:
    """makeTestEndpointSlice."""
    return EndpointSlice(ObjectMeta(f"{service}-{num}", namespace,
                                    {"kubernetes.io/service-name": service}),
                         service, address_type, tuple(endpoints), tuple(ports))


@dataclass
class Cluster:
    """The API objects a fake proxier has seen (OnServiceAdd / OnEndpointSliceAdd ...)."""
    services: dict[str, Service] = field(default_factory=dict)
    slices: dict[str, EndpointSlice] = field(default_factory=dict)

    def add(self, *objs) -> "Cluster":
        for o in objs:
            key = f"{o.meta.namespace}/{o.meta.name}"
            (self.services if isinstance(o, Service) else self.slices)[key] = o
        return self

    def delete(self, *objs) -> "Cluster":
        for o in objs:
            key = f"{o.meta.namespace}/{o.meta.name}"
            (self.services if isinstance(o, Service) else self.slices).pop(key)
        return self

    def scenario(self) -> Scenario:
        return Scenario("kube-proxy-upstream", services=tuple(self.services.values()),
                        endpoint_slices=tuple(self.slices.values()))

    def state(self) -> LbState:
        """What the test node's kube-proxy sees.  NodePort frontends need a node
        address per family; the primary node IPs serve (the alternates are not
        passed: 2001:db8:1::2 lies in this project's pod CIDR, which lb_state
        refuses as a frontend address, a rule of this project's datapath)."""
        return lb_state(self.scenario(),
                        nodes={TEST_HOSTNAME: (ipaddress.ip_address(TEST_NODE_IP),
                                               ipaddress.ip_address(TEST_NODE_IPV6))})
