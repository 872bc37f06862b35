"""Policy resolution: identities, selectors, entities, CIDRs, ports, enforcement, errors.

The last test is differential: hypothesis draws small scenarios (pods with
labels from a small alphabet, CiliumNetworkPolicies and NetworkPolicies of
every supported kind) and connections; policy_state()'s output, read by a tiny
matcher (longest-prefix ipcache lookup, then deny > allow > default), must
agree with harness.policy.reference.verdict, which evaluates the policy
objects directly.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.policy import format_identities, policy_state
from harness.policy.identity import IdentityAllocator, allocate_cidr_identities, cidr_label, security_labels
from harness.policy.model import (
    ANY_IDENTITY,
    ANY_PORT,
    ANY_PROTO,
    ID_HOST,
    ID_KUBE_APISERVER,
    ID_REMOTE_NODE,
    ID_WORLD,
    LOCAL_IDENTITY_SCOPE,
    RESERVED,
    PolicyState,
    PortRange,
    Rule,
)
from harness.policy.reference import verdict
from harness.policy.desired import IPBLOCK_SET_LABEL
from harness.scenario import CiliumNetworkPolicy, ObjectMeta, Scenario, ScenarioError, scenario_from_documents

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

REPO = Path(__file__).resolve().parents[1]
TCP, UDP, SCTP, ICMP, ICMP6 = 6, 17, 132, 1, 58

# ------------------------------------------------------------------ builders


def pod(name: str, labels: dict | None = None, ns: str = "default", ip: str = "198.18.0.10",
        ip6: str | None = None, node: str = "cb-node0", ports: tuple = (), host_network: bool = False) -> dict:
    status: dict = {"podIP": ip, "hostIP": f"198.19.128.{int(node[7:]) + 1}"}
    if ip6:
        status["podIPs"] = [{"ip": ip}, {"ip": ip6}]
    spec: dict = {"nodeName": node, "containers": [{"name": "c", "ports": [
        {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]}
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": spec, "status": status}


def cnp(name: str, spec: dict | None = None, ns: str = "default", specs: list | None = None) -> dict:
    doc: dict = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                 "metadata": {"name": name, "namespace": ns}}
    if spec is not None:
        doc["spec"] = spec
    if specs is not None:
        doc["specs"] = specs
    return doc


def np(name: str, spec: dict, ns: str = "default") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def scen(*docs: dict) -> Scenario:
    return scenario_from_documents(list(docs), "t.yaml")


def ep_id(state: PolicyState, ref: str) -> int:
    return state.endpoint(ref).identity


def cidr_id(state: PolicyState, prefix: str) -> int:
    (ident,) = [i.id for i in state.identities if i.kind == "cidr" and i.labels[0] == cidr_label(ipaddress.ip_network(prefix))]
    return ident


def ids(rules: tuple[Rule, ...], deny: bool = False) -> set[int]:
    return {r.identity for r in rules if r.deny == deny}


def lpm(state: PolicyState, ip: str) -> int:
    addr = ipaddress.ip_address(ip)
    best = None
    for e in state.ipcache:
        if e.prefix.version == addr.version and addr in e.prefix and (best is None or e.prefix.prefixlen > best.prefix.prefixlen):
            best = e
    return best.identity if best else ID_WORLD


def matched(state: PolicyState, ref: str, direction: str, ip: str, proto: int, port: int) -> str:
    """The datapath's decision, from policy_state()'s output only."""
    ep = state.endpoint(ref)
    ident = lpm(state, ip)
    rules = ep.ingress if direction == "ingress" else ep.egress

    def hit(r: Rule) -> bool:
        return r.identity in (ANY_IDENTITY, ident) and r.proto in (ANY_PROTO, proto) and r.ports.lo <= port <= r.ports.hi

    if any(r.deny and hit(r) for r in rules):
        return "deny-rule"
    if any(not r.deny and hit(r) for r in rules):
        return "allow"
    enforced = ep.ingress_enforced if direction == "ingress" else ep.egress_enforced
    return "deny-default" if enforced else "allow"


WEB = pod("web", {"app": "web"}, ip="198.18.0.10", ports=(("http", 8080, "TCP"),))
CLIENT = pod("client", {"app": "client"}, ip="198.18.0.11")
OTHER_NS = pod("client", {"app": "client"}, ns="other", ip="198.18.1.12", node="cb-node1")

# ---------------------------------------------------------------- identities


def test_reserved_identities_are_cilium_s() -> None:
    state = policy_state(scen(WEB))
    reserved = {i.id: i.labels for i in state.identities if i.kind == "reserved"}
    assert set(reserved) == set(RESERVED)
    for i, label in RESERVED.items():
        assert label in reserved[i]
    assert reserved[ID_KUBE_APISERVER] == ("reserved:kube-apiserver", "reserved:remote-node")


def test_security_labels_follow_cilium_default_filter() -> None:
    s = scen(pod("a", {"app": "web", "pod-template-hash": "abc", "controller-revision-hash": "1",
                       "statefulset.kubernetes.io/pod-name": "a-0", "kubernetes.io/os": "linux",
                       "app.kubernetes.io/name": "web", "annotation.x": "y"}))
    assert security_labels(s.pods[0]) == (
        "k8s:app.kubernetes.io/name=web",
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.kubernetes.pod.namespace=default",
    )


def test_pods_differing_only_in_filtered_labels_share_an_identity() -> None:
    state = policy_state(scen(pod("a", {"app": "web", "pod-template-hash": "1"}, ip="198.18.0.10"),
                         pod("b", {"app": "web", "pod-template-hash": "2"}, ip="198.18.0.11"),
                         pod("c", {"app": "web"}, ns="other", ip="198.18.0.12")))
    assert ep_id(state, "default/a") == ep_id(state, "default/b") != ep_id(state, "other/c")
    assert all(256 <= ep.identity <= 65535 for ep in state.endpoints)


def _id_map(state: PolicyState) -> dict[tuple[str, ...], int]:
    return {i.labels: i.id for i in state.identities}


def test_identities_stable_across_order_and_unrelated_pods() -> None:
    base = [pod(f"p{i}", {"app": f"a{i}"}, ip=f"198.18.0.{10 + i}") for i in range(6)]
    first = _id_map(policy_state(scen(*base)))
    assert _id_map(policy_state(scen(*reversed(base)))) == first
    more = base + [pod(f"q{i}", {"tier": f"t{i}"}, ip=f"198.18.0.{50 + i}") for i in range(20)]
    bigger = _id_map(policy_state(scen(*more)))
    assert {k: bigger[k] for k in first} == first


def test_identities_stable_across_runs() -> None:
    code = ("from harness.policy.identity import IdentityAllocator, allocate_cidr_identities;"
            "import ipaddress, json;"
            "a = IdentityAllocator().allocate([('k8s:app=web',), ('k8s:app=db', 'k8s:x=y')]);"
            "c = allocate_cidr_identities([ipaddress.ip_network('203.0.113.0/24')]);"
            "print(json.dumps([sorted(a.values()), sorted(c.values())]))")
    outs = set()
    for seed in ("1", "2", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             check=True).stdout
        outs.add(out)
    assert len(outs) == 1
    here = IdentityAllocator().allocate([("k8s:app=web",), ("k8s:app=db", "k8s:x=y")])
    assert json.loads(outs.pop())[0] == sorted(here.values())


def test_allocator_collisions_are_deterministic_and_winners_keep_their_home() -> None:
    sets = [(f"k8s:app=s{i}",) for i in range(5)]
    alloc = IdentityAllocator(256, 260)       # 5 slots: collisions are certain
    a = alloc.allocate(sets)
    assert sorted(a.values()) == [256, 257, 258, 259, 260]
    assert alloc.allocate(list(reversed(sets))) == a
    # The first set in sorted order always gets its home slot, whatever else exists.
    alone = alloc.allocate(sets[:1])
    assert a[sets[0]] == alone[sets[0]]
    with pytest.raises(ValueError):
        alloc.allocate(sets + [("k8s:app=s9",)])


def test_cidr_identities_are_local_scope_and_per_prefix() -> None:
    nets = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "2001:db8:4::/64", "10.0.0.0/8")]
    a = allocate_cidr_identities(nets)
    b = allocate_cidr_identities(nets[:1])
    assert a[nets[0]] == b[nets[0]]
    assert all(v & LOCAL_IDENTITY_SCOPE and 0 < v - LOCAL_IDENTITY_SCOPE < LOCAL_IDENTITY_SCOPE for v in a.values())
    assert cidr_label(nets[1]) == "cidr:2001-db8-4--0/64"
    assert cidr_label(ipaddress.ip_network("::/0")) == "cidr:0--0/0"


def test_format_identities_sorted_by_id() -> None:
    state = policy_state(scen(WEB, CLIENT, cnp("p", {"endpointSelector": {}, "egress": [{"toCIDR": ["203.0.113.0/24"]}]})))
    rows = format_identities(state)
    assert [int(r[0]) for r in rows] == sorted(int(r[0]) for r in rows)
    assert rows[0] == ("1", "reserved:host")
    assert (str(cidr_id(state, "203.0.113.0/24")), "cidr:203.0.113.0/24,reserved:world") in rows


# ------------------------------------------------------------------- ipcache


def test_ipcache_pods_nodes_and_no_default_route() -> None:
    s = scen(pod("web", {"app": "web"}, ip="198.18.0.10", ip6="2001:db8:1::10"),
             pod("db", {"app": "db"}, ip="198.18.1.10", node="cb-node1"))
    state = policy_state(s, local_node="cb-node0")
    cache = {str(e.prefix): e.identity for e in state.ipcache}
    assert cache["198.18.0.10/32"] == cache["2001:db8:1::10/128"] == ep_id(state, "default/web")
    assert cache["198.19.128.1/32"] == cache["2001:db8:3::1/128"] == ID_HOST
    assert cache["198.19.128.2/32"] == ID_REMOTE_NODE
    assert "0.0.0.0/0" not in cache and "::/0" not in cache
    nobody = {str(e.prefix): e.identity for e in policy_state(s).ipcache}
    assert nobody["198.19.128.1/32"] == ID_REMOTE_NODE
    explicit = {str(e.prefix): e.identity
                for e in policy_state(s, nodes={"cb-node0": (ipaddress.ip_address("198.19.128.77"),)},
                                 local_node="cb-node0").ipcache}
    assert explicit["198.19.128.77/32"] == ID_HOST


def test_cidr_except_entries_and_selection() -> None:
    s = scen(WEB, cnp("p", {"endpointSelector": {}, "egress": [
        {"toCIDRSet": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}]},
        {"toCIDR": ["203.0.113.192/26"]}]}))
    state = policy_state(s)
    cache = {str(e.prefix): e.identity for e in state.ipcache}
    for prefix in ("203.0.113.0/24", "203.0.113.128/25", "203.0.113.192/26"):
        assert cache[prefix] == cidr_id(state, prefix)
    egress = state.endpoint("default/web").egress
    assert ids(egress) == {cidr_id(state, "203.0.113.0/24"), cidr_id(state, "203.0.113.192/26")}
    assert matched(state, "default/web", "egress", "203.0.113.5", TCP, 80) == "allow"
    assert matched(state, "default/web", "egress", "203.0.113.130", TCP, 80) == "deny-default"
    assert matched(state, "default/web", "egress", "203.0.113.200", TCP, 80) == "allow"


def test_cidr_never_selects_pods_or_nodes_and_slash_zero_is_per_family() -> None:
    s = scen(WEB, CLIENT, cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                    "egress": [{"toCIDR": ["198.18.0.0/15", "0.0.0.0/0"]}]}))
    state = policy_state(s, local_node="cb-node0")
    for ip in ("198.18.0.11", "198.19.128.1", "2001:db8:4::1"):
        assert matched(state, "default/web", "egress", ip, TCP, 80) == "deny-default"
    assert matched(state, "default/web", "egress", "198.18.7.7", TCP, 80) == "allow"
    assert matched(state, "default/web", "egress", "203.0.113.9", TCP, 80) == "allow"


# ----------------------------------------------------------------- selectors


def _ingress_peers(spec_ingress: list, *docs: dict, ns: str = "default") -> tuple[PolicyState, set[int]]:
    state = policy_state(scen(WEB, *docs, cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                               "ingress": spec_ingress}, ns=ns)))
    return state, ids(state.endpoint("default/web").ingress) - {ID_HOST}


@pytest.mark.parametrize("expr, selected", [
    ({"key": "app", "operator": "In", "values": ["client"]}, {"default/client"}),
    ({"key": "app", "operator": "NotIn", "values": ["client"]}, {"default/web", "default/db", "default/bare"}),
    ({"key": "tier", "operator": "Exists"}, {"default/db"}),
    ({"key": "tier", "operator": "DoesNotExist"}, {"default/web", "default/client", "default/bare"}),
])
def test_match_expressions_operators(expr: dict, selected: set[str]) -> None:
    db = pod("db", {"app": "db", "tier": "back"}, ip="198.18.0.12")
    bare = pod("bare", ip="198.18.0.13")
    state, got = _ingress_peers([{"fromEndpoints": [{"matchExpressions": [expr]}]}], CLIENT, db, bare, OTHER_NS)
    assert got == {ep_id(state, ref) for ref in selected}


def test_match_labels_and_source_prefixes() -> None:
    for key in ("app", "k8s:app", "any:app"):
        state, got = _ingress_peers([{"fromEndpoints": [{"matchLabels": {key: "client"}}]}], CLIENT, OTHER_NS)
        assert got == {ep_id(state, "default/client")}


def test_empty_endpoint_selector_is_the_policy_namespace() -> None:
    state, got = _ingress_peers([{"fromEndpoints": [{}]}], CLIENT, OTHER_NS)
    assert got == {ep_id(state, "default/client"), ep_id(state, "default/web")}


def test_namespace_crossing_selectors() -> None:
    state, got = _ingress_peers([{"fromEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "other"}}]}],
                                CLIENT, OTHER_NS)
    assert got == {ep_id(state, "other/client")}
    key = "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"
    state, got = _ingress_peers([{"fromEndpoints": [{"matchExpressions": [{"key": key, "operator": "Exists"}]}]}],
                                CLIENT, OTHER_NS)
    assert got == {ep_id(state, r) for r in ("default/web", "default/client", "other/client")}


def test_negative_namespace_selectors_select_only_pods() -> None:
    not_other = {"key": "io.kubernetes.pod.namespace", "operator": "NotIn", "values": ["other"]}
    state, got = _ingress_peers([{"fromEndpoints": [{"matchExpressions": [not_other]}]}], CLIENT, OTHER_NS)
    assert got == {ep_id(state, "default/client"), ep_id(state, "default/web")}
    ns_not_other = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                          "values": ["other"]}]}
    state = policy_state(scen(WEB, CLIENT, OTHER_NS, np("p", {"podSelector": {}, "ingress": [
        {"from": [{"namespaceSelector": ns_not_other}]}]})), allow_localhost=False)
    assert ids(state.endpoint("default/web").ingress) == {ep_id(state, "default/client"), ep_id(state, "default/web")}


def test_present_but_empty_peer_list_selects_nothing() -> None:
    _, got = _ingress_peers([{"fromEndpoints": [], "toPorts": [{"ports": [{"port": "80"}]}]}], CLIENT)
    assert got == set()


def test_reserved_selector_selects_reserved_identities() -> None:
    _, got = _ingress_peers([{"fromEndpoints": [{"matchLabels": {"reserved:host": ""}}]}], CLIENT)
    assert got == set()   # host only (the allow-localhost rule is subtracted)
    state = policy_state(scen(WEB, cnp("p", {"endpointSelector": {}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"reserved:remote-node": ""}}]}]})), allow_localhost=False)
    assert ids(state.endpoint("default/web").ingress) == {ID_REMOTE_NODE, ID_KUBE_APISERVER}


def test_endpoint_selector_cannot_leave_the_policy_namespace() -> None:
    s = scen(WEB, OTHER_NS, cnp("p", {"endpointSelector": {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "other"}},
                                      "ingress": [{}]}))
    state = policy_state(s)
    assert state.endpoint("default/web").ingress_enforced
    assert not state.endpoint("other/client").ingress_enforced


def test_network_policy_peers_pod_namespace_and_both() -> None:
    db_other = pod("db", {"app": "db"}, ns="other", ip="198.18.1.13", node="cb-node1")
    docs = (CLIENT, OTHER_NS, db_other)

    def peers(peer: dict) -> set[int]:
        state = policy_state(scen(WEB, *docs, np("p", {"podSelector": {"matchLabels": {"app": "web"}},
                                                  "ingress": [{"from": [peer]}]})), allow_localhost=False)
        return ids(state.endpoint("default/web").ingress)

    state = policy_state(scen(WEB, *docs))
    c, oc, od, w = (ep_id(state, r) for r in ("default/client", "other/client", "other/db", "default/web"))
    assert peers({"podSelector": {"matchLabels": {"app": "client"}}}) == {c}
    other = {"matchLabels": {"kubernetes.io/metadata.name": "other"}}
    assert peers({"namespaceSelector": other}) == {oc, od}
    assert peers({"namespaceSelector": other, "podSelector": {"matchLabels": {"app": "client"}}}) == {oc}
    assert peers({"namespaceSelector": {}}) == {c, oc, od, w}
    assert peers({"ipBlock": {"cidr": "203.0.113.0/24"}}) == {cidr_id(policy_state(scen(
        WEB, np("x", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}]}))),
        "203.0.113.0/24")}


# ------------------------------------------------------------------ entities


def test_entities() -> None:
    base = (CLIENT, OTHER_NS)

    def entity(name: str) -> tuple[PolicyState, set[int]]:
        state = policy_state(scen(WEB, *base, cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [
            {"toEntities": [name]}, {"toCIDR": ["203.0.113.0/24"], "toPorts": [{"ports": [{"port": "1"}]}]}]})))
        return state, {r.identity for r in state.endpoint("default/web").egress if r.proto == ANY_PROTO}

    state, got = entity("world")
    assert got == {ID_WORLD, cidr_id(state, "203.0.113.0/24")}
    assert entity("host")[1] == {ID_HOST}
    assert entity("remote-node")[1] == {ID_REMOTE_NODE, ID_KUBE_APISERVER}
    assert entity("all")[1] == {ANY_IDENTITY}
    assert entity("none")[1] == set()
    state, got = entity("cluster")
    assert got == {1, 3, 4, 5, 6, 7, 8} | {ep.identity for ep in state.endpoints}
    state, got = entity("world-ipv4")
    assert got == {cidr_id(state, "0.0.0.0/0"), cidr_id(state, "203.0.113.0/24")}
    assert matched(state, "default/web", "egress", "2001:db8:4::1", UDP, 53) == "deny-default"
    assert matched(state, "default/web", "egress", "203.0.113.1", UDP, 53) == "allow"


# --------------------------------------------------------------------- ports


def test_port_ranges_any_protocol_and_icmp() -> None:
    state = policy_state(scen(WEB, CLIENT, cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"toPorts": [{"ports": [{"port": "8000", "endPort": 8100, "protocol": "TCP"}, {"port": "53"}]}]},
        {"fromEndpoints": [{}], "icmps": [{"fields": [{"type": 8}, {"type": "EchoRequest", "family": "IPv6"}]}]},
    ]})), allow_localhost=False)
    rules = set(state.endpoint("default/web").ingress)
    assert Rule(False, ANY_IDENTITY, TCP, PortRange(8000, 8100)) in rules
    assert {r.proto for r in rules if r.ports == PortRange(53, 53)} == {TCP, UDP, SCTP}
    assert Rule(False, ep_id(state, "default/client"), ICMP, PortRange(8, 8)) in rules
    assert Rule(False, ep_id(state, "default/client"), ICMP6, PortRange(128, 128)) in rules
    assert matched(state, "default/web", "ingress", "198.18.0.11", ICMP, 0) == "deny-default"
    assert matched(state, "default/web", "ingress", "203.0.113.1", TCP, 8050) == "allow"


def test_named_ports_ingress_and_egress() -> None:
    web2 = pod("web2", {"app": "web"}, ip="198.18.0.20", ports=(("http", 9090, "TCP"),))   # same identity, other number
    api = pod("api", {"app": "api"}, ip="198.18.0.21", ports=(("http", 80, "TCP"),))
    s = scen(WEB, web2, api, CLIENT,
             np("in", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]}),
             cnp("out", {"endpointSelector": {"matchLabels": {"app": "client"}},
                         "egress": [{"toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]}]}))
    state = policy_state(s, allow_localhost=False)
    assert state.endpoint("default/web").ingress == (Rule(False, ANY_IDENTITY, TCP, PortRange(8080, 8080)),)
    assert state.endpoint("default/web2").ingress == (Rule(False, ANY_IDENTITY, TCP, PortRange(9090, 9090)),)
    # Egress: per destination identity; app=web's pods disagree (8080/9090), so only api's rule exists.
    assert state.endpoint("default/client").egress == (Rule(False, ep_id(state, "default/api"), TCP, PortRange(80, 80)),)


# -------------------------------------------------------------- enforcement


def test_enforcement_flags_and_defaults() -> None:
    def flags(*policies: dict) -> tuple[bool, bool]:
        ep = policy_state(scen(WEB, *policies)).endpoint("default/web")
        return ep.ingress_enforced, ep.egress_enforced

    sel = {"matchLabels": {"app": "web"}}
    assert flags() == (False, False)
    assert flags(cnp("p", {"endpointSelector": sel, "ingress": []})) == (False, False)
    assert flags(cnp("p", {"endpointSelector": sel, "ingress": [{}]})) == (True, False)
    assert flags(cnp("p", {"endpointSelector": sel, "egressDeny": [{"toEntities": ["world"]}]})) == (False, True)
    assert flags(cnp("p", {"endpointSelector": {"matchLabels": {"app": "x"}}, "ingress": [{}]})) == (False, False)
    assert flags(np("p", {"podSelector": {}})) == (True, False)
    assert flags(np("p", {"podSelector": {}, "egress": [{}]})) == (True, True)
    assert flags(np("p", {"podSelector": {}, "egress": []})) == (True, False)
    assert flags(np("p", {"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})) == (False, True)
    state = policy_state(scen(WEB, cnp("p", {"endpointSelector": sel, "ingress": [{}]})), allow_localhost=False)
    assert state.endpoint("default/web").ingress == ()
    assert matched(state, "default/web", "ingress", "198.18.0.11", TCP, 80) == "deny-default"
    assert matched(state, "default/web", "egress", "198.18.0.11", TCP, 80) == "allow"


def test_allow_localhost() -> None:
    s = scen(WEB, np("p", {"podSelector": {}}))
    state = policy_state(s, local_node="cb-node0")
    assert state.endpoint("default/web").ingress == (Rule(False, ID_HOST, ANY_PROTO, ANY_PORT),)
    assert matched(state, "default/web", "ingress", "198.19.128.1", TCP, 80) == "allow"
    assert matched(state, "default/web", "ingress", "198.19.128.2", TCP, 80) == "deny-default"


def test_deny_wins_over_allow() -> None:
    s = scen(WEB, CLIENT, cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                    "ingress": [{"fromEntities": ["all"]}],
                                    "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                                                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}))
    state = policy_state(s)
    assert Rule(True, ep_id(state, "default/client"), TCP, PortRange(80, 80)) in state.endpoint("default/web").ingress
    assert matched(state, "default/web", "ingress", "198.18.0.11", TCP, 80) == "deny-rule"
    assert matched(state, "default/web", "ingress", "198.18.0.11", TCP, 81) == "allow"
    assert verdict(s, "default/web", "ingress", "198.18.0.11", "TCP", 80) == "deny-rule"


# -------------------------------------------------------------------- errors


def _error(*docs: dict) -> str:
    with pytest.raises(ScenarioError) as info:
        policy_state(scen(WEB, *docs))
    text = str(info.value)
    assert "\n" not in text and text.startswith("t.yaml: document 2 (CiliumNetworkPolicy default/p)")
    return text


@pytest.mark.parametrize("ingress, field", [
    ([{"fromRequires": [{}]}], "spec.ingress[0].fromRequires"),
    ([{"fromNodes": [{}]}], "spec.ingress[0].fromNodes"),
    ([{"fromEndpoints": [{}], "fromCIDR": ["203.0.113.0/24"]}], "spec.ingress[0]"),
    ([{"toPorts": [{"ports": [{"port": "80"}]}], "icmps": [{"fields": [{"type": 8}]}]}], "spec.ingress[0].icmps"),
    ([{"fromEndpoints": [{"matchLabels": {"cidr:10.0.0.0/8": ""}}]}], "spec.ingress[0].fromEndpoints[0].matchLabels"),
])
def test_unsupported_fields_name_the_field(ingress: list, field: str) -> None:
    assert f": {field}" in _error(cnp("p", {"endpointSelector": {}, "ingress": ingress}))


def test_egress_unsupported_fields() -> None:
    text = _error(cnp("p", {"endpointSelector": {}, "egress": [{"toServices": [{"k8sService": {"serviceName": "x"}}]}]}))
    assert ": spec.egress[0].toServices: " in text
    text = _error(cnp("p", specs=[{"nodeSelector": {}, "ingress": [{}]}]))
    assert ": specs[0].nodeSelector: host policies" in text


def test_l7_and_fqdn_rules_are_rejected_naming_the_field() -> None:
    for egress, field in (([{"toFQDNs": [{"matchName": "x.com"}]}], "spec.egress[0].toFQDNs"),
                          ([{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}]}],
                           "spec.egress[0].toPorts[0].rules")):
        with pytest.raises(ScenarioError, match=f": {re.escape(field)}: .*not supported"):
            scen(cnp("p", {"endpointSelector": {}, "egress": egress}))     # the loader already refuses
        built = Scenario("code", cilium_network_policies=(
            CiliumNetworkPolicy(ObjectMeta("p"), {"endpointSelector": {}, "egress": egress}),))
        with pytest.raises(ScenarioError, match=f"code: {re.escape(field)}: .*not supported"):
            policy_state(built)                                                # and so does the resolver


# ---------------------------------------------------------- differential


NAMESPACES = ["default", "other"]
NAMED = [(), (("http", 80, "TCP"),), (("http", 8080, "TCP"),), (("dns", 53, "UDP"), ("http", 80, "TCP"))]
V4_CIDRS = ["203.0.113.0/24", "203.0.113.0/25", "203.0.113.128/25", "203.0.113.64/26", "0.0.0.0/0",
            "198.18.0.0/16", "198.19.128.0/24"]
V6_CIDRS = ["2001:db8:4::/64", "::/0", "2001:db8::/32"]
EXCEPTS = ["203.0.113.0/25", "203.0.113.128/25", "203.0.113.64/26", "203.0.113.200/29", "198.18.0.0/24",
           "2001:db8:4::/80", "203.0.113.0/24"]
ENTITIES = ["all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node", "health", "none",
            "kube-apiserver"]
REMOTES_WORLD = ["203.0.113.1", "203.0.113.70", "203.0.113.130", "203.0.113.201", "198.18.5.5", "2001:db8:4::1",
                 "2001:db8:4:0:1::1", "2001:db8:9::1"]
NODE_IPS = ["198.19.128.1", "198.19.128.2", "2001:db8:3::1"]


@st.composite
def label_sets(draw) -> dict:
    return draw(st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2))


@st.composite
def selectors(draw, cilium: bool) -> dict:
    if draw(st.integers(0, 3)) == 0:
        return {}
    if cilium and draw(st.integers(0, 6)) == 0:
        return draw(st.sampled_from([
            {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "other"}},
            {"matchLabels": {"reserved:host": ""}},
            {"matchExpressions": [{"key": "reserved:world", "operator": "Exists"}]},
            {"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]},
            {"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": "default"}},
        ]))
    prefix = draw(st.sampled_from(["", "k8s:", "any:"])) if cilium else ""
    sel: dict = {}
    labels = draw(label_sets())
    if labels:
        sel["matchLabels"] = {prefix + k: v for k, v in labels.items()}
    exprs = []
    for _ in range(draw(st.integers(0, 1))):
        key = prefix + draw(st.sampled_from(["app", "tier"]))
        op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
        expr: dict = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2, unique=True))
        exprs.append(expr)
    if exprs:
        sel["matchExpressions"] = exprs
    return sel


@st.composite
def cidr_rules(draw) -> dict:
    cidr = draw(st.sampled_from(V4_CIDRS + V6_CIDRS))
    net = ipaddress.ip_network(cidr)
    fitting = [e for e in EXCEPTS if ipaddress.ip_network(e).version == net.version
               and ipaddress.ip_network(e).subnet_of(net) and ipaddress.ip_network(e).prefixlen > net.prefixlen]
    rule: dict = {"cidr": cidr}
    if fitting and draw(st.integers(0, 3)):
        rule["except"] = draw(st.lists(st.sampled_from(fitting), min_size=1, max_size=2, unique=True))
    return rule


@st.composite
def port_specs(draw, named_ok: bool, protocols: list[str]) -> dict:
    spec: dict = {}
    proto = draw(st.sampled_from(protocols + [None]))
    if proto:
        spec["protocol"] = proto
    kind = draw(st.sampled_from(["num", "range", "name", "none"] if named_ok else ["num", "range", "none"]))
    if kind == "num":
        spec["port"] = draw(st.sampled_from([53, 80, 443, 8080]))
    elif kind == "range":
        lo = draw(st.sampled_from([53, 80, 1000]))
        spec["port"], spec["endPort"] = lo, lo + draw(st.sampled_from([0, 27, 1000]))
    elif kind == "name":
        spec["port"] = draw(st.sampled_from(["http", "dns"]))
    return spec


@st.composite
def cnp_entries(draw, direction: str) -> dict:
    p = "from" if direction == "ingress" else "to"
    entry: dict = {}
    peer = draw(st.sampled_from(["none", "endpoints", "cidr", "cidrset", "entities"]))
    if peer == "endpoints":
        entry[p + "Endpoints"] = draw(st.lists(selectors(True), max_size=2))
    elif peer == "cidr":
        entry[p + "CIDR"] = draw(st.lists(st.sampled_from(V4_CIDRS + V6_CIDRS), min_size=1, max_size=2, unique=True))
    elif peer == "cidrset":
        entry[p + "CIDRSet"] = draw(st.lists(cidr_rules(), min_size=1, max_size=2))
    elif peer == "entities":
        entry[p + "Entities"] = draw(st.lists(st.sampled_from(ENTITIES), min_size=1, max_size=2, unique=True))
    ports = draw(st.sampled_from(["none", "toPorts", "icmps"]))
    if ports == "toPorts":
        specs = draw(st.lists(port_specs(True, ["TCP", "UDP", "SCTP", "ANY"]), min_size=1, max_size=2))
        for s in specs:
            if isinstance(s.get("port"), int):
                s["port"] = str(s["port"])
        entry["toPorts"] = [{"ports": specs}]
    elif ports == "icmps":
        entry["icmps"] = [{"fields": draw(st.lists(st.sampled_from(
            [{"type": 8}, {"type": "EchoRequest"}, {"type": 128, "family": "IPv6"}, {"type": 0}]),
            min_size=1, max_size=2))}]
    return entry


@st.composite
def cnps(draw, i: int) -> dict:
    spec: dict = {"endpointSelector": draw(selectors(True))}
    for section in ("ingress", "egress", "ingressDeny", "egressDeny"):
        choice = draw(st.sampled_from(["absent", "empty", "rules", "rules"]))
        if choice == "empty":
            spec[section] = []
        elif choice == "rules":
            spec[section] = draw(st.lists(cnp_entries(section.removesuffix("Deny")), min_size=1, max_size=2))
    return cnp(f"c{i}", spec, ns=draw(st.sampled_from(NAMESPACES[:1] * 3 + NAMESPACES[1:])))


@st.composite
def np_peers(draw) -> dict:
    kind = draw(st.sampled_from(["pod", "ns", "both", "ip"]))
    if kind == "ip":
        return {"ipBlock": draw(cidr_rules())}
    peer: dict = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selectors(False))
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(st.sampled_from([
            {}, {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
            {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["other"]}]},
        ]))
    return peer


@st.composite
def nps(draw, i: int) -> dict:
    spec: dict = {"podSelector": draw(selectors(False))}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    if types:
        spec["policyTypes"] = types
    for direction, key in (("ingress", "from"), ("egress", "to")):
        choice = draw(st.sampled_from(["absent", "empty", "rules", "rules"]))
        if choice == "empty":
            spec[direction] = []
        elif choice == "rules":
            rules = []
            for _ in range(draw(st.integers(1, 2))):
                rule: dict = {}
                if draw(st.booleans()):
                    rule[key] = draw(st.lists(np_peers(), min_size=1, max_size=2))
                if draw(st.booleans()):
                    rule["ports"] = draw(st.lists(port_specs(True, ["TCP", "UDP", "SCTP"]), min_size=1, max_size=2))
                rules.append(rule)
            spec[direction] = rules
    return np(f"n{i}", spec, ns=draw(st.sampled_from(NAMESPACES[:1] * 3 + NAMESPACES[1:])))


@st.composite
def scenarios(draw) -> tuple[Scenario, list[str], str | None]:
    docs = []
    refs = []
    for i in range(draw(st.integers(1, 5))):
        node = draw(st.integers(0, 1))
        ns = draw(st.sampled_from(NAMESPACES[:1] * 3 + NAMESPACES[1:]))
        docs.append(pod(f"p{i}", draw(label_sets()), ns=ns, ip=f"198.18.{node}.{10 + i}",
                        ip6=f"2001:db8:1:{node}::{10 + i}" if draw(st.booleans()) else None,
                        node=f"cb-node{node}", ports=draw(st.sampled_from(NAMED))))
        refs.append(f"{ns}/p{i}")
    docs.append(pod("hostnet", {"app": "a"}, ip="198.19.128.2", node="cb-node1", host_network=True))
    docs += [draw(cnps(i)) for i in range(draw(st.integers(1, 3)))]
    docs += [draw(nps(i)) for i in range(draw(st.integers(0, 2)))]
    return scen(*docs), refs, draw(st.sampled_from([None, "cb-node0", "cb-node1"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(), st.data())
def test_resolve_agrees_with_reference(drawn: tuple, data: st.DataObject) -> None:
    scenario, refs, local_node = drawn
    state = policy_state(scenario, local_node=local_node)
    pod_ips = [str(ip) for p in scenario.pods if not p.host_network for ip in p.pod_ips]
    queries = data.draw(st.lists(st.tuples(
        st.sampled_from(refs), st.sampled_from(["ingress", "egress"]),
        st.one_of(st.sampled_from(pod_ips + NODE_IPS), st.sampled_from(REMOTES_WORLD)),
        st.sampled_from([TCP, UDP, SCTP, ICMP, ICMP6]),
        st.sampled_from([0, 8, 53, 80, 128, 443, 1000, 1027, 8080]),
    ), min_size=1, max_size=30))
    for ref, direction, ip, proto, port in queries:
        want = verdict(scenario, ref, direction, ip, proto, port, local_node=local_node)
        got = matched(state, ref, direction, ip, proto, port)
        assert got == want, (ref, direction, ip, proto, port)


# ------------------------------------------------ NetworkPolicy ipBlock, Namespaces


def _two_clients(*docs: dict) -> Scenario:
    """web, and two pods of one label set (one identity until an ipBlock tells them apart)."""
    return scen(pod("web", {"app": "web"}, ip="198.18.0.10", ip6="2001:db8:1::10"),
                pod("c1", {"app": "client"}, ip="198.18.0.11", ip6="2001:db8:1::11"),
                pod("c2", {"app": "client"}, ip="198.18.0.12", ip6="2001:db8:1::12"), *docs)


_TO_C1 = np("p", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"ipBlock": {"cidr": "198.18.0.0/24", "except": ["198.18.0.12/32"]}}]}]})


def test_np_ipblock_selects_exactly_the_pod_addresses_it_covers() -> None:
    """Issue 11: an ipBlock never matched pod IPs; it must, and exactly: c1's IPv4
    address (covered) but not c2's (excepted) nor c1's IPv6 one, though all three
    carry the same labels."""
    s = _two_clients(_TO_C1, np("q", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}))
    state = policy_state(s)
    want = {"198.18.0.11": "allow", "198.18.0.12": "deny-default", "2001:db8:1::11": "deny-default",
            "198.18.0.13": "allow", "203.0.113.9": "deny-default"}
    for ip, expected in want.items():
        assert matched(state, "default/web", "egress", ip, TCP, 80) == expected, ip
        assert verdict(s, "default/web", "egress", ip, TCP, 80) == expected, ip
    assert len({lpm(state, ip) for ip in ("198.18.0.11", "198.18.0.12", "2001:db8:1::11")}) == 2
    split = [i for i in state.identities if any(lbl.startswith(IPBLOCK_SET_LABEL) for lbl in i.labels)]
    assert lpm(state, "198.18.0.11") in {i.id for i in split}     # (web's own IPv4 address is covered too)
    assert lpm(state, "198.18.0.12") not in {i.id for i in split}
    for ip in ("198.18.0.11", "198.18.0.12", "2001:db8:1::11"):   # selectors see one label set
        assert matched(state, "default/web", "ingress", ip, TCP, 80) == "allow", ip


def test_np_ipblock_cidr_mode_and_cnp_cidr_keep_ciliums_semantics() -> None:
    s = _two_clients(_TO_C1)
    state = policy_state(s, np_ipblock="cidr")
    assert matched(state, "default/web", "egress", "198.18.0.11", TCP, 80) == "deny-default"
    assert verdict(s, "default/web", "egress", "198.18.0.11", TCP, 80, np_ipblock="cidr") == "deny-default"
    assert matched(state, "default/web", "egress", "198.18.0.13", TCP, 80) == "allow"
    cnp_s = _two_clients(cnp("c", {"endpointSelector": {"matchLabels": {"app": "web"}},
                                   "egress": [{"toCIDR": ["198.18.0.11/32"]}]}))
    assert matched(policy_state(cnp_s), "default/web", "egress", "198.18.0.11", TCP, 80) == "deny-default"
    with pytest.raises(ValueError, match="np_ipblock"):
        policy_state(s, np_ipblock="nodes")


def _team_policy(team: str | None) -> Scenario:
    labels = {"team": team} if team else {}
    return scen(WEB, OTHER_NS,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other", "labels": labels}},
                np("p", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
                    "matchLabels": {"team": "blue"}}}]}]}))


def test_namespace_labels_select_and_relabelling_changes_the_verdict() -> None:
    """Issue 11: namespace labels other than kubernetes.io/metadata.name could not be
    expressed; a Namespace's labels become its pods' namespace labels."""
    for team, expected in (("blue", "allow"), (None, "deny-default"), ("red", "deny-default")):
        s = _team_policy(team)
        state = policy_state(s, allow_localhost=False)
        assert matched(state, "default/web", "ingress", "198.18.1.12", TCP, 80) == expected, team
        assert verdict(s, "default/web", "ingress", "198.18.1.12", TCP, 80, allow_localhost=False) == expected
    labels = [i.labels for i in policy_state(_team_policy("blue")).identities if i.kind == "endpoint"]
    assert any("k8s:io.cilium.k8s.namespace.labels.team=blue" in lbls for lbls in labels)


def test_workloads_outside_the_scenario_are_the_unmanaged_entity() -> None:
    """Issue 12: a container a runtime outside Kubernetes attached (no pod, no labels)
    is reserved:unmanaged (3) in every node's ipcache, selected by the unmanaged and
    cluster entities (not world, not a label selector); on its own node it is an
    endpoint with identity 3 that no policy selects.  A pod's address wins."""
    from harness.policy.model import ID_UNMANAGED, Workload
    s = scen(WEB, CLIENT,
             cnp("web", {"endpointSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"fromEntities": ["unmanaged"]}]}),
             cnp("client", {"endpointSelector": {"matchLabels": {"app": "client"}},
                            "ingress": [{"fromEntities": ["world"]}],
                            "egress": [{"toEntities": ["cluster"]}]}),
             cnp("every-pod", {"endpointSelector": {}, "egress": [{"toEndpoints": [{}]}]}))
    box = Workload("container:box", "cb-node0", ("198.18.0.50",))
    far = Workload("container:far", "cb-node1", ("198.18.1.50",))
    clash = Workload("container:clash", "cb-node1", ("198.18.0.10",))   # claims web's address
    state = policy_state(s, local_node="cb-node0", workloads=[box, far, clash])
    assert lpm(state, "198.18.0.50") == lpm(state, "198.18.1.50") == ID_UNMANAGED
    assert lpm(state, "198.18.0.10") == state.endpoint("default/web").identity != ID_UNMANAGED
    assert matched(state, "default/web", "ingress", "198.18.0.50", TCP, 8080) == "allow"
    assert matched(state, "default/web", "ingress", "198.18.0.11", TCP, 8080) == "deny-default"
    assert matched(state, "default/client", "ingress", "198.18.1.50", TCP, 80) == "deny-default"
    assert matched(state, "default/client", "egress", "198.18.1.50", TCP, 80) == "allow"
    assert matched(state, "default/web", "egress", "198.18.1.50", TCP, 80) == "deny-default"
    ep = state.endpoint("container:box")
    assert (ep.identity, ep.ingress_enforced, ep.egress_enforced, ep.ingress, ep.egress) == \
        (ID_UNMANAGED, False, False, (), ())
    assert {e.pod for e in state.endpoints} == {"default/web", "default/client", "container:box"}
    assert RESERVED[ID_UNMANAGED] in {lbl for i in state.identities if i.id == ID_UNMANAGED
                                      for lbl in i.labels}
    # Without workloads nothing of theirs is left.
    assert lpm(policy_state(s, local_node="cb-node0"), "198.18.0.50") == ID_WORLD
