"""Tests for the scenario loader (harness.scenario): model, validation, allocation, templates, CLI."""
from __future__ import annotations

import dataclasses
import collections
import ipaddress
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.addressing import SERVICE_CIDR_V4, SERVICE_CIDR_V6, WORLD_V4, WORLD_V6
from harness.scenario import (
    ContainerPort,
    Endpoint,
    EndpointPort,
    ObjectMeta,
    ScenarioError,
    Service,
    ServicePort,
    load_scenario,
    load_scenario_text,
    load_template_scenario,
    render_template,
)
from harness.scenario import load

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data" / "scenarios"
MINIMAL = ROOT / "bench" / "scenarios" / "minimal.yaml"
ip = ipaddress.ip_address


# ------------------------------------------------------------------ minimal example


def test_minimal_example_parses_with_expected_values() -> None:
    s = load_scenario(MINIMAL)
    assert s.source == str(MINIMAL)
    assert [p.ref for p in s.pods] == ["default/client", "default/backend-0", "default/backend-1"]
    assert s.nodes == ("cb-node0", "cb-node1")

    client = s.pod("default/client")
    assert client is s.pod("client")
    assert client.node_name == "cb-node0"
    assert client.pod_ips == (ip("198.18.0.2"),)
    assert client.ipv4 == ip("198.18.0.2") and client.ipv6 is None
    assert client.host_ip == ip("198.19.128.1")
    assert client.meta.labels == {"app": "client"}
    assert s.pod("backend-0").container_ports == (ContainerPort("http", 8080, "TCP", None),)

    (web,) = s.services
    assert web.meta == ObjectMeta("web", "default", {}, {})
    assert web.type == "ClusterIP" and not web.headless
    assert web.cluster_ips == (ip("198.19.0.10"),) and web.cluster_ip == ip("198.19.0.10")
    assert web.ports == (ServicePort("http", "TCP", 80, "http", None),)
    assert web.selector == {"app": "backend"}
    assert web.session_affinity == "None" and web.affinity_timeout_seconds == 10800
    assert web.external_traffic_policy == "Cluster" and web.internal_traffic_policy == "Cluster"
    assert web.ip_families == ("IPv4",) and web.ip_family_policy == "SingleStack"
    assert web.frontends() == ((ip("198.19.0.10"), 80, "TCP"),)

    (es,) = s.endpoint_slices_for(web)
    assert s.endpoint_slices_for("default/web") == (es,) == s.endpoint_slices
    assert es.service_name == "web" and es.address_type == "IPv4"
    assert es.ports == (EndpointPort("http", "TCP", 8080),)
    assert es.endpoints == (
        Endpoint((ip("198.18.0.10"),), True, True, False, "cb-node0", "default", "backend-0", None),
        Endpoint((ip("198.18.1.10"),), True, True, False, "cb-node1", "default", "backend-1", None),
    )

    (np,) = s.network_policies
    assert np.meta.ref == "default/client-egress"
    assert np.spec["podSelector"] == {"matchLabels": {"app": "client"}}
    assert np.spec["policyTypes"] == ["Egress"]
    (cnp,) = s.cilium_network_policies
    assert cnp.meta.name == "backend-from-client" and cnp.specs == ()
    assert cnp.rules == (cnp.spec,)
    assert cnp.spec["endpointSelector"] == {"matchLabels": {"app": "backend"}}
    assert cnp.spec["ingress"][0]["toPorts"][0]["ports"][0] == {"port": "8080", "protocol": "TCP"}


def test_model_is_frozen_and_uses_tuples() -> None:
    s = load_scenario(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.services[0].type = "NodePort"  # type: ignore[misc]
    assert isinstance(s.pods, tuple) and isinstance(s.services[0].ports, tuple)
    assert isinstance(s.endpoint_slices[0].endpoints[0].addresses, tuple)


def test_list_kind_empty_documents_dual_stack_and_condition_defaults() -> None:
    s = load_scenario(DATA / "list.yaml")
    (pod,) = s.pods
    assert pod.ref == "team/a" and pod.pod_ips == (ip("198.18.1.20"), ip("2001:db8:1:1::20"))
    assert pod.ipv6 == ip("2001:db8:1:1::20")
    (svc,) = s.services
    assert svc.cluster_ips == (ip("198.19.0.1"),)  # allocated
    (es,) = s.endpoint_slices_for("team/a")
    first, second = es.endpoints
    assert (first.ready, first.serving, first.terminating) == (False, False, False)  # serving follows ready
    assert (first.target_ref_namespace, first.target_ref_name) == ("team", "a")  # namespace defaults to the slice's
    assert (second.ready, second.serving, second.terminating) == (True, False, True)
    assert es.ports == (EndpointPort("", "UDP", 53),)


def test_pod_lookup_errors_are_one_line() -> None:
    s = load_scenario(MINIMAL)
    with pytest.raises(ScenarioError) as exc:
        s.pod("default/nope")
    assert str(exc.value) == f"{MINIMAL}: pod default/nope is not in the scenario"
    with pytest.raises(ScenarioError, match="invalid reference 'a/b/c'"):
        s.pod("a/b/c")


def test_scenario_error_is_always_one_line() -> None:
    err = ScenarioError("two\nlines", source="f.yaml", document=3, kind="Pod", ref="default/p", field="spec.x")
    assert str(err) == "f.yaml: document 3 (Pod default/p): spec.x: two lines"
    s = load_scenario(MINIMAL)
    assert str(s.error(s.services[0], "spec.ports[0]", "bad")) == \
        f"{MINIMAL}: document 4 (Service default/web): spec.ports[0]: bad"


# ---------------------------------------------------------------- validation errors

_SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: %s\n"
_POD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n%s"
_NP = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec:\n%s"
_NS = "apiVersion: v1\nkind: Namespace\nmetadata: %s\n"
_CNP = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: cnp}\nspec:\n%s"
_SLICE = ("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, labels: %s}\n"
          "addressType: %s\nendpoints: [{addresses: [%s]}]\n")
_WEB = _SVC % "{ports: [{port: 80}]}" + "---\n"

ERRORS = [
    ("bad port", _SVC % "{ports: [{port: 70000}]}",
     "document 1 (Service default/web): spec.ports[0].port: must be between 1 and 65535, got 70000"),
    ("port is a string", _SVC % "{ports: [{port: '80'}]}",
     "document 1 (Service default/web): spec.ports[0].port: must be an integer, got a string ('80')"),
    ("bad nodePort", _SVC % "{type: NodePort, ports: [{port: 80, nodePort: 80}]}",
     "document 1 (Service default/web): spec.ports[0].nodePort: "
     "must be between 30000 and 32767 (the NodePort range), got 80"),
    ("nodePort on ClusterIP", _SVC % "{ports: [{port: 80, nodePort: 30080}]}",
     "document 1 (Service default/web): spec.ports[0].nodePort: may only be set when type is NodePort or LoadBalancer"),
    ("unnamed ports", _SVC % "{ports: [{port: 80}, {port: 81}]}",
     "document 1 (Service default/web): spec.ports[0].name: required when the Service has more than one port"),
    ("affinity timeout", _SVC % "{sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}},"
                                " ports: [{port: 80}]}",
     "document 1 (Service default/web): spec.sessionAffinityConfig.clientIP.timeoutSeconds: "
     "must be between 1 and 86400, got 0"),
    ("clusterIP outside service CIDR", _SVC % "{clusterIP: 198.18.0.1, ports: [{port: 80}]}",
     "document 1 (Service default/web): spec.clusterIP: 198.18.0.1 is outside the service CIDR 198.19.0.0/17"),
    ("only kinds chainbench does not use", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
     "no objects: an empty scenario (expected Kubernetes objects: Pods, Services, ...) (skipped 1 Deployment)"),
    ("known kind, wrong apiVersion", "apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: np}\n",
     "document 1 (NetworkPolicy default/np): apiVersion: NetworkPolicy must be networking.k8s.io/v1, got 'v1'"),
    ("unknown field in a CNP", _CNP % "  endpointSelector: {}\n  ingress:\n  - fromEndpoint: [{}]\n",
     "document 1 (CiliumNetworkPolicy default/cnp): spec.ingress[0].fromEndpoint: "
     "unknown field (did you mean 'fromEndpoints'?)"),
    ("unknown field in a NetworkPolicy", _NP % "  podSelector: {}\n  ingres: []\n",
     "document 1 (NetworkPolicy default/np): spec.ingres: unknown field (did you mean 'ingress'?)"),
    ("unsupported CNP feature", _CNP % "  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: x.com}]\n",
     "document 1 (CiliumNetworkPolicy default/cnp): spec.egress[0].toFQDNs: not supported by chainbench"),
    ("bad CIDR in a CNP", _CNP % "  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/33]\n",
     "document 1 (CiliumNetworkPolicy default/cnp): spec.egress[0].toCIDR[0]: '10.0.0.0/33' is not a valid CIDR"),
    ("bad CNP port", _CNP % "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: '0'}]}]\n",
     "document 1 (CiliumNetworkPolicy default/cnp): spec.ingress[0].toPorts[0].ports[0].port: "
     "must be between 1 and 65535, got 0"),
    ("bad label", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: 'not valid'}}\n",
     "document 1 (Pod default/p): metadata.labels[app]: 'not valid' is not a valid label value "
     "(at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"),
    ("bad selector operator",
     _NP % "  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [x]}]\n",
     "document 1 (NetworkPolicy default/np): spec.podSelector.matchExpressions[0].operator: "
     "'Equals' is not a valid operator (In, NotIn, Exists, DoesNotExist)"),
    ("Exists with values", _NP % "  podSelector:\n    matchExpressions: [{key: app, operator: Exists, values: [x]}]\n",
     "document 1 (NetworkPolicy default/np): spec.podSelector.matchExpressions[0].values: "
     "must be empty when operator is Exists"),
    ("address outside the plan", _POD % "status: {podIP: 10.0.0.1}\n",
     "document 1 (Pod default/p): status.podIP: 10.0.0.1 is outside the project's address plan "
     "(198.18.0.0/15, 203.0.113.0/24, 2001:db8::/32)"),
    ("address in 192.0.2.0/24", _POD % "status: {hostIP: 192.0.2.7}\n",
     "document 1 (Pod default/p): status.hostIP: 192.0.2.7 is in a range reserved for the machine's uplink"),
    ("externalIP in the uplink range", _SVC % "{externalIPs: [192.0.2.1], ports: [{port: 80}]}",
     "document 1 (Service default/web): spec.externalIPs[0]: 192.0.2.1 is in a range reserved for the machine's uplink"),
    ("duplicate object", _POD % "---\n" + _POD % "",
     "document 2 (Pod default/p): metadata.name: duplicate Pod default/p (already defined in document 1)"),
    ("YAML syntax error", "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n",
     "line 4, column 1: invalid YAML: did not find expected ',' or '}'"),
    ("duplicate YAML key", "apiVersion: v1\nkind: Pod\nkind: Pod\n",
     "line 3, column 1: invalid YAML: duplicate key 'kind'"),
    ("podIP and podIPs disagree", _POD % "status: {podIP: 198.18.0.5, podIPs: [{ip: 198.18.0.6}]}\n",
     "document 1 (Pod default/p): status.podIP: 198.18.0.5 does not match status.podIPs[0] (198.18.0.6)"),
    ("two podIPs of one family", _POD % "status: {podIPs: [{ip: 198.18.0.5}, {ip: 198.18.0.6}]}\n",
     "document 1 (Pod default/p): status.podIPs[1].ip: 198.18.0.6: at most one address per IP family"),
    ("EndpointSlice address family mismatch",
     _WEB + _SLICE % ("{kubernetes.io/service-name: web}", "IPv4", "'2001:db8:1::5'"),
     "document 2 (EndpointSlice default/web-1): endpoints[0].addresses[0]: "
     "2001:db8:1::5 is not an IPv4 address (addressType is IPv4)"),
    ("missing service-name label", _WEB + _SLICE % ("{}", "IPv4", "198.18.0.5"),
     "document 2 (EndpointSlice default/web-1): metadata.labels: "
     "missing label kubernetes.io/service-name naming the Service"),
    ("EndpointSlice of an unknown Service", _SLICE % ("{kubernetes.io/service-name: nope}", "IPv4", "198.18.0.5"),
     "document 1 (EndpointSlice default/web-1): metadata.labels[kubernetes.io/service-name]: "
     "Service default/nope is not in the scenario"),
    ("duplicate frontend",
     _SVC % "{clusterIP: 198.19.0.5, ports: [{port: 80}]}" + "---\n"
     + (_SVC % "{clusterIP: 198.19.0.5, ports: [{port: 80}]}").replace("name: web", "name: web2"),
     "document 2 (Service default/web2): spec.ports[0]: frontend 198.19.0.5:80/TCP is already used by "
     "Service default/web (document 1)"),
    ("item of a List", "apiVersion: v1\nkind: List\nitems:\n- " + (_POD % "spec: {nodeName: Node_1}\n").replace("\n", "\n  "),
     "document 1 (Pod default/p): items[0].spec.nodeName: 'Node_1' is not a valid DNS-1123 subdomain "
     "(lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)"),
    ("empty documents still count", "---\n---\n" + _POD % "spec: {hostNetwork: 1}\n",
     "document 2 (Pod default/p): spec.hostNetwork: must be a boolean, got an integer (1)"),
    ("document is not a mapping", "- a\n- b\n",
     "document 1: a document must be a mapping (a Kubernetes object), got a list"),
    ("Namespace is cluster-scoped", _NS % "{name: y, namespace: z}",
     "document 1 (Namespace y): metadata.namespace: a Namespace is cluster-scoped: remove metadata.namespace"),
    ("Namespace name label is its name", _NS % "{name: y, labels: {kubernetes.io/metadata.name: z}}",
     "document 1 (Namespace y): metadata.labels[kubernetes.io/metadata.name]: must be the namespace's name 'y' "
     "(the API server sets it), got 'z'"),
    ("Namespace label value", _NS % "{name: y, labels: {team: 'a b'}}",
     "document 1 (Namespace y): metadata.labels[team]: 'a b' is not a valid label value (at most 63 "
     "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric)"),
    ("Namespace spec", _NS % "{name: y}" + "spec: {owner: me}\n", "document 1 (Namespace y): spec.owner: unknown field"),
    ("duplicate Namespace", _NS % "{name: y}" + "---\n" + _NS % "{name: y}",
     "document 2 (Namespace y): metadata.name: duplicate Namespace y (already defined in document 1)"),
    ("source ranges on a ClusterIP", _SVC % "{ports: [{port: 80}], loadBalancerSourceRanges: [203.0.113.0/25]}",
     "document 1 (Service default/web): spec.loadBalancerSourceRanges: may only be set when type is LoadBalancer"),
    ("source range not a CIDR", _SVC % "{type: LoadBalancer, ports: [{port: 80}], loadBalancerSourceRanges: [nope]}",
     "document 1 (Service default/web): spec.loadBalancerSourceRanges[0]: 'nope' is not a valid CIDR"),
    ("health check port without ETP Local", _SVC % "{type: LoadBalancer, ports: [{port: 80}], healthCheckNodePort: 30100}",
     "document 1 (Service default/web): spec.healthCheckNodePort: may only be set when type is LoadBalancer "
     "and externalTrafficPolicy is Local"),
    ("health check port clashes with a nodePort",
     _SVC % "{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 30100, "
            "ports: [{port: 80, nodePort: 30100}]}",
     "document 1 (Service default/web): spec.healthCheckNodePort: port 30100/TCP is already used by "
     "Service default/web (document 1)"),
    ("ingress on a ClusterIP", _SVC % "{ports: [{port: 80}]}" + "status: {loadBalancer: {ingress: [{ip: 198.19.160.1}]}}\n",
     "document 1 (Service default/web): status.loadBalancer.ingress[0]: only a Service of type LoadBalancer "
     "has load-balancer ingress"),
    ("ingress IP outside the plan", _SVC % "{type: LoadBalancer, ports: [{port: 80}]}"
     + "status: {loadBalancer: {ingress: [{ip: 1.2.3.4}]}}\n",
     "document 1 (Service default/web): status.loadBalancer.ingress[0].ip: 1.2.3.4 is outside the project's "
     "address plan (198.18.0.0/15, 203.0.113.0/24, 2001:db8::/32)"),
    ("hostname-only ingress", _SVC % "{type: LoadBalancer, ports: [{port: 80}]}"
     + "status: {loadBalancer: {ingress: [{hostname: lb.example}]}}\n",
     "document 1 (Service default/web): status.loadBalancer.ingress[0].ip: required (a hostname-only ingress "
     "is not supported by chainbench)"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for _, t, e in ERRORS], ids=[n for n, _, _ in ERRORS])
def test_validation_error_is_one_exact_line(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text(text, source="t.yaml")
    message = str(exc.value)
    assert message == f"t.yaml: {expected}"
    assert "\n" not in message


def test_errors_from_a_file_name_the_file() -> None:
    with pytest.raises(ScenarioError) as exc:
        load_scenario(DATA / "bad-port.yaml")
    assert str(exc.value) == (f"{DATA / 'bad-port.yaml'}: document 1 (Service default/web): spec.ports[0].port: "
                              "must be between 1 and 65535, got 70000")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(DATA / "does-not-exist.yaml")


@pytest.mark.parametrize("snippet", [
    "podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}\n"
    "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}\n      podSelector: {}\n"
    "    ports: [{protocol: UDP, port: 53}, {port: http}, {port: 30000, endPort: 32767}]\n  egress: [{}]\n",
])
def test_valid_network_policy_shapes(snippet: str) -> None:
    s = load_scenario_text(_NP % f"  {snippet}")
    assert s.network_policies[0].spec["policyTypes"] == ["Ingress", "Egress"]


def test_valid_cilium_policy_shapes() -> None:
    text = _CNP % """  endpointSelector: {matchLabels: {"k8s:app": web}}
  ingress:
  - fromEntities: [world, cluster]
    fromCIDRSet: [{cidr: "::/0", except: ["2001:db8::/32"]}]
    icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  ingressDeny:
  - fromEndpoints: [{matchExpressions: [{key: "reserved:host", operator: Exists}]}]
    toPorts: [{ports: [{port: "22", protocol: ANY}]}]
  egress:
  - toServices: [{k8sService: {serviceName: web, namespace: default}}]
  - toPorts: [{ports: [{port: http}, {port: "8000", endPort: 8100}]}]
specs:
- nodeSelector: {}
  egressDeny: [{toCIDR: [0.0.0.0/0]}]
  labels: [{key: owner, value: bench, source: user}]
"""
    (cnp,) = load_scenario_text(text).cilium_network_policies
    assert len(cnp.rules) == 2 and cnp.specs[0]["nodeSelector"] == {}


# ------------------------------------------------------------------------- allocation

_ALLOC_SERVICES = [
    ("default", "zeta", "{type: NodePort, ports: [{port: 80}]}"),
    ("other", "alpha", "{ports: [{port: 80}]}"),
    ("default", "beta", "{clusterIP: 198.19.0.1, ports: [{port: 80}]}"),
    ("default", "alpha", "{ipFamilyPolicy: RequireDualStack, type: LoadBalancer, "
                         "ports: [{name: a, port: 80, nodePort: 30000}, {name: b, port: 81}]}"),
    ("default", "gamma", "{clusterIP: 198.19.0.3, ports: [{port: 80}]}"),
    ("default", "headless", "{clusterIP: None}"),
    ("default", "v6", "{ipFamilies: [IPv6], ports: [{port: 53, protocol: UDP}]}"),
]


def _alloc_text(order: list[int]) -> str:
    docs = []
    for i in order:
        ns, name, spec = _ALLOC_SERVICES[i]
        docs.append(f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    return "---\n".join(docs)


def test_cluster_ip_and_node_port_allocation_is_deterministic() -> None:
    expected = {
        "default/alpha": ((ip("198.19.0.2"), ip("2001:db8:2::1")), (30000, 30001)),
        "default/beta": ((ip("198.19.0.1"),), (None,)),
        "default/gamma": ((ip("198.19.0.3"),), (None,)),
        "default/headless": ((), ()),
        "default/v6": ((ip("2001:db8:2::2"),), (None,)),
        "default/zeta": ((ip("198.19.0.4"),), (30002,)),
        "other/alpha": ((ip("198.19.0.5"),), (None,)),
    }
    rng = random.Random(1234)
    for _ in range(20):
        order = list(range(len(_ALLOC_SERVICES)))
        rng.shuffle(order)
        s = load_scenario_text(_alloc_text(order))
        got = {svc.ref: (svc.cluster_ips, tuple(p.node_port for p in svc.ports)) for svc in s.services}
        assert got == expected, order


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["default", "a", "b"]), st.integers(0, 60),
                          st.one_of(st.none(), st.integers(1, 40))),
                min_size=1, max_size=25, unique_by=lambda t: (t[0], t[1])),
       st.randoms())
def test_allocation_is_collision_free_and_order_independent(services: list, rnd: random.Random) -> None:
    explicit = {}
    docs = []
    for ns, n, fixed in services:
        spec = {"ports": [{"port": 80}], "type": "NodePort"}
        if fixed is not None and fixed not in explicit.values():
            explicit[(ns, n)] = fixed
            spec["clusterIP"] = str(SERVICE_CIDR_V4[fixed])
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{n}", "namespace": ns},
                     "spec": spec})
    first = load_scenario_text(yaml.safe_dump_all(docs))
    rnd.shuffle(docs)
    second = load_scenario_text(yaml.safe_dump_all(docs))
    ips = {s.ref: s.cluster_ips for s in first.services}
    assert ips == {s.ref: s.cluster_ips for s in second.services}
    flat = [a for v in ips.values() for a in v]
    assert len(flat) == len(set(flat)) and all(a in SERVICE_CIDR_V4 for a in flat)
    for (ns, n), fixed in explicit.items():
        assert ips[f"{ns}/s{n}"] == (SERVICE_CIDR_V4[fixed],)
    node_ports = [p.node_port for s in first.services for p in s.ports]
    assert len(set(node_ports)) == len(node_ports) and all(30000 <= p <= 32767 for p in node_ports)


# -------------------------------------------------------------------------- templates


def _check_template_scenario(s, services: int, endpoints: int) -> None:
    assert len(s.services) == services and len(s.endpoint_slices) == services
    frontends = [f for svc in s.services for f in svc.frontends()]
    assert len(frontends) == len(set(frontends)) == services
    pods_by_ip = {p.pod_ips[0]: p for p in s.pods}
    for svc in s.services:
        (es,) = s.endpoint_slices_for(svc)
        addrs = [e.addresses[0] for e in es.endpoints]
        assert len(addrs) == len(set(addrs)) == endpoints
        for e in es.endpoints:
            pod = pods_by_ip[e.addresses[0]]
            assert (pod.meta.name, pod.node_name) == (e.target_ref_name, e.node_name)


def test_template_renders_one_service() -> None:
    s = load_template_scenario("services")
    _check_template_scenario(s, 1, 2)
    assert s.nodes == ("cb-node0", "cb-node1")
    assert s.pod("default/client").pod_ips == (ip("198.18.0.2"),)
    assert s.services[0].cluster_ips == (ip("198.19.0.1"),)
    assert s.services[0].ports == (ServicePort("p", "TCP", 80, 8080, None),)
    assert s.source == "bench/scenarios/services.yaml.j2"


def test_template_renders_a_thousand_services_with_shared_backends() -> None:
    s = load_template_scenario("services.yaml.j2", services=1000, endpoints=10, protocol="UDP",
                               session_affinity=True, affinity_timeout=60)
    _check_template_scenario(s, 1000, 10)
    assert len(s.pods) == 1 + 480  # client + 240 backends per node
    svc = s.services[999]
    assert svc.session_affinity == "ClientIP" and svc.affinity_timeout_seconds == 60
    assert svc.ports[0].protocol == "UDP"
    # interned: services sharing a backend share the Endpoint object
    assert s.endpoint_slices[0].endpoints[0] is s.endpoint_slices[48].endpoints[0]


def test_health_check_node_port_is_allocated_beside_the_node_ports() -> None:
    s = load_scenario_text(_SVC % "{type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}")
    (svc,) = s.services
    assert svc.ports[0].node_port == 30000 and svc.health_check_node_port == 30001


def test_template_realistic_mix_holds_every_feature_in_its_share() -> None:
    s = load_template_scenario("services", services=200, endpoints=4, mix="realistic", client=False)
    by_kind = collections.Counter()
    for svc in s.services:
        by_kind["dual"] += len(svc.cluster_ips) == 2
        by_kind["affinity"] += svc.session_affinity == "ClientIP"
        by_kind["itp-local"] += svc.internal_traffic_policy == "Local"
        by_kind["external-ip"] += bool(svc.external_ips)
        by_kind["etp-local"] += svc.external_traffic_policy == "Local"
        by_kind["ranges"] += bool(svc.load_balancer_source_ranges)
        by_kind["hc"] += svc.health_check_node_port is not None
        by_kind[svc.type] += 1
    assert by_kind == {"ClusterIP": 150, "NodePort": 30, "LoadBalancer": 20, "dual": 40, "affinity": 20,
                       "itp-local": 10, "external-ip": 10, "etp-local": 20, "ranges": 10, "hc": 10}
    terminating = [ep for es in s.endpoint_slices for ep in es.endpoints if ep.terminating]
    # i % 25 == 11: eight Services, none dual-stack (i % 5 == 1), one IPv4 slice each
    assert len(terminating) == 8 and all(ep.serving and not ep.ready for ep in terminating)
    lb = [svc for svc in s.services if svc.type == "LoadBalancer"]
    assert all(len(svc.load_balancer_ips) == 1 for svc in lb)
    assert all(svc.ports[0].node_port is None for svc in lb if svc.load_balancer_source_ranges)


def test_template_nodeport_mode() -> None:
    s = load_template_scenario("services", services=5, nodeport=True, nodes=3, client=False)
    assert [svc.ports[0].node_port for svc in s.services] == [30000, 30001, 30002, 30003, 30004]
    assert all(svc.type == "NodePort" for svc in s.services)
    assert s.nodes == ("cb-node0", "cb-node1", "cb-node2")


def test_template_reuses_vips_on_the_next_port_beyond_32766_services() -> None:
    s = load_template_scenario("services", services=32768, endpoints=1, client=False)
    first, wrapped, last = s.services[0], s.services[32766], s.services[32767]
    assert first.cluster_ips == wrapped.cluster_ips == (ip("198.19.0.1"),)
    assert (first.ports[0].port, wrapped.ports[0].port) == (80, 81)
    assert last.cluster_ips == (ip("198.19.0.2"),) and last.ports[0].port == 81
    frontends = [f for svc in s.services for f in svc.frontends()]
    assert len(frontends) == len(set(frontends))


def test_template_output_is_json_documents_equivalent_to_yaml() -> None:
    text = render_template("services", services=20, endpoints=3, nodeport=True)
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert all(json.loads(line) for line in text.splitlines() if line.startswith("{"))
    via_json = load_scenario_text(text, source="x")
    via_yaml = load_scenario_text(yaml.safe_dump_all(docs), source="x")
    assert via_json == via_yaml


_BAD_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"hostNetwork": 1}}


@pytest.mark.parametrize("layout", [
    "{doc}\n", "---\n{doc}\n", "# header\n---\n{doc}\n", "---\n---\n{doc}\n", "---\n# only a comment\n---\n{doc}\n",
    "{ok}\n---\n\n---\n{doc}\n---\n",
])
def test_json_fast_path_counts_documents_like_yaml(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ok"}}
    as_json = layout.format(doc=json.dumps(_BAD_POD), ok=json.dumps(ok))
    # flow-style YAML that is not JSON, so it takes the PyYAML path
    as_yaml = layout.format(doc=yaml.safe_dump(_BAD_POD, default_flow_style=True).strip(),
                            ok=yaml.safe_dump(ok, default_flow_style=True).strip())
    expected = list(yaml.safe_load_all(as_json)).index(_BAD_POD) + 1
    line = f"t: document {expected} (Pod default/p): spec.hostNetwork: must be a boolean, got an integer (1)"
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text(as_yaml, source="t")
    assert str(exc.value) == line
    monkeypatch.setattr(load, "yaml_documents", lambda *a: pytest.fail("JSON stream went through PyYAML"))
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text(as_json, source="t")
    assert str(exc.value) == line


@pytest.mark.parametrize(("params", "message"), [
    ({"service": 3}, "unknown template parameter 'service' (accepted: "),
    ({"protocol": "ICMP"}, "protocol must be TCP, UDP or SCTP, got ICMP"),
    ({"services": 3000, "nodeport": True}, "nodeport allows at most 2768 services"),
    ({"endpoints": 5, "backends": 4}, "endpoints (5) exceeds the backend pool (4)"),
    ({"services": "many"}, "services must be a non-negative integer, got many"),
])
def test_template_parameter_errors_are_one_line(params: dict, message: str) -> None:
    with pytest.raises(ScenarioError) as exc:
        render_template("services", **params)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("bench/scenarios/services.yaml.j2[")


def test_unknown_template() -> None:
    with pytest.raises(ScenarioError, match="no template 'nope'"):
        render_template("nope")


# ------------------------------------------------------------- hypothesis round trip

_dns_labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_label_keys = st.one_of(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?", fullmatch=True),
                        st.from_regex(r"example\.com/[a-z]{1,8}", fullmatch=True))
_label_values = st.from_regex(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?)?", fullmatch=True)
_labels = st.dictionaries(_label_keys, _label_values, max_size=3)


def _address_in(net, offset_lo: int = 1):
    hi = min(net.num_addresses - 2, 10_000)
    return st.integers(offset_lo, hi).map(lambda i: net[i])


@st.composite
def services(draw) -> Service:
    stype = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    external = stype != "ClusterIP"
    headless = not external and draw(st.integers(0, 4)) == 0
    policy, families = draw(st.sampled_from([
        ("SingleStack", ("IPv4",)), ("SingleStack", ("IPv6",)),
        ("RequireDualStack", ("IPv4", "IPv6")), ("PreferDualStack", ("IPv6", "IPv4")),
    ]))
    cluster_ips = () if headless else tuple(
        draw(_address_in(SERVICE_CIDR_V4 if f == "IPv4" else SERVICE_CIDR_V6)) for f in families)
    n_ports = draw(st.integers(0 if headless else 1, 4))
    keys = draw(st.lists(st.tuples(st.integers(1, 65535), st.sampled_from(["TCP", "UDP", "SCTP"])),
                         min_size=n_ports, max_size=n_ports, unique=True))
    names = draw(st.lists(_dns_labels, min_size=n_ports, max_size=n_ports, unique=True))
    node_ports = draw(st.lists(st.integers(30000, 32767), min_size=n_ports, max_size=n_ports, unique=True))
    ports = []
    for i, (port, proto) in enumerate(keys):
        target = draw(st.one_of(st.integers(1, 65535), st.from_regex(r"[a-z]{1,15}", fullmatch=True)))
        if proto == "SCTP" and isinstance(target, int):
            target = port                   # SCTP ports are not translated: must be equal
        name = names[i] if n_ports > 1 or draw(st.booleans()) else ""
        ports.append(ServicePort(name, proto, port, target, node_ports[i] if external else None))
    affinity = draw(st.sampled_from(["None", "ClientIP"]))
    timeout = draw(st.integers(1, 86400)) if affinity == "ClientIP" else 10800
    external_ips = tuple(draw(st.lists(st.one_of(_address_in(WORLD_V4), _address_in(WORLD_V6)),
                                       max_size=2, unique=True)))
    etp = draw(st.sampled_from(["Cluster", "Local"])) if external or external_ips else "Cluster"
    meta = ObjectMeta(draw(_dns_labels), draw(st.sampled_from(["default", "bench-1"])), draw(_labels),
                      draw(st.dictionaries(_label_keys, st.text(max_size=20), max_size=2)))
    lb = stype == "LoadBalancer"
    hc_port = (draw(st.integers(30000, 32767).filter(lambda p: p not in node_ports))
               if lb and etp == "Local" else None)
    ranges = tuple(draw(st.lists(st.sampled_from([ipaddress.ip_network("203.0.113.0/25"),
                                                  ipaddress.ip_network("10.0.0.0/8"),
                                                  ipaddress.ip_network("2001:db8::/48")]),
                                 max_size=2, unique=True))) if lb else ()
    lb_ips = tuple(draw(st.lists(_address_in(WORLD_V4), max_size=2, unique=True))) if lb else ()
    return Service(meta=meta, type=stype, cluster_ips=cluster_ips, headless=headless, ports=tuple(ports),
                   selector=draw(_labels), session_affinity=affinity, affinity_timeout_seconds=timeout,
                   external_traffic_policy=etp, internal_traffic_policy=draw(st.sampled_from(["Cluster", "Local"])),
                   ip_families=families, external_ips=external_ips, ip_family_policy=policy,
                   load_balancer_source_ranges=ranges, health_check_node_port=hc_port, load_balancer_ips=lb_ips)


def _manifest(svc: Service) -> dict:
    spec: dict = {"type": svc.type, "ipFamilies": list(svc.ip_families), "ipFamilyPolicy": svc.ip_family_policy,
                  "internalTrafficPolicy": svc.internal_traffic_policy, "sessionAffinity": svc.session_affinity}
    spec["clusterIPs"] = ["None"] if svc.headless else [str(a) for a in svc.cluster_ips]
    ports = []
    for p in svc.ports:
        port: dict = {"protocol": p.protocol, "port": p.port, "targetPort": p.target_port}
        if p.name:
            port["name"] = p.name
        if p.node_port is not None:
            port["nodePort"] = p.node_port
        ports.append(port)
    if ports:
        spec["ports"] = ports
    if svc.selector:
        spec["selector"] = svc.selector
    if svc.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout_seconds}}
    if svc.external_ips:
        spec["externalIPs"] = [str(a) for a in svc.external_ips]
    if svc.type != "ClusterIP" or svc.external_ips:
        spec["externalTrafficPolicy"] = svc.external_traffic_policy
    if svc.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = [str(n) for n in svc.load_balancer_source_ranges]
    if svc.health_check_node_port is not None:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    meta = {"name": svc.meta.name, "namespace": svc.meta.namespace, "labels": svc.meta.labels,
            "annotations": svc.meta.annotations}
    out = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if svc.load_balancer_ips:
        out["status"] = {"loadBalancer": {"ingress": [{"ip": str(a)} for a in svc.load_balancer_ips]}}
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services())
def test_random_valid_services_round_trip(svc: Service) -> None:
    manifest = _manifest(svc)
    via_yaml = load_scenario_text(yaml.safe_dump(manifest))
    assert via_yaml.services == (svc,)
    via_json = load_scenario_text(json.dumps(manifest))
    assert via_json.services == (svc,)


# ------------------------------------------------------------------------- check CLI


def _check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", "scenario", "check", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, input=stdin)


def test_check_cli_bad_file_prints_one_line_and_exits_2() -> None:
    result = _check(str(DATA / "bad-port.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.strip().endswith("spec.ports[0].port: must be between 1 and 65535, got 70000")


def test_check_cli_yaml_syntax_error_and_missing_file_have_no_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [\n")
    for path in (broken, tmp_path / "missing.yaml"):
        result = _check(str(path))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"ERROR: {path}")


def test_check_cli_summary() -> None:
    result = _check(str(MINIMAL), "--endpoint", "default/client")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{MINIMAL}: 3 pods on 2 nodes, 1 services, 1 endpointslices, 1 networkpolicies, "
                             "1 ciliumnetworkpolicies; endpoint default/client on cb-node0\n")
    result = _check("bench/scenarios/services.yaml.j2", "-p", "services=3", "-p", "endpoints=1")
    assert result.returncode == 0, result.stderr
    assert "3 services, 3 endpointslices" in result.stdout
    result = _check(str(MINIMAL), "--endpoint", "default/ghost")
    assert result.returncode == 2 and result.stderr == f"ERROR: {MINIMAL}: pod default/ghost is not in the scenario\n"


def test_namespace_objects_give_namespaces_their_labels() -> None:
    s = load_scenario_text(_NS % "{name: y, labels: {team: blue}}" + "---\n" + _POD % "", source="t.yaml")
    assert [n.ref for n in s.namespaces] == ["y"]
    assert s.namespace_labels("y") == {"team": "blue", "kubernetes.io/metadata.name": "y"}
    assert s.namespace_labels("default") == {"kubernetes.io/metadata.name": "default"}
