"""The Kubernetes NetworkPolicy e2e suite as data: every upstream test's policies and
expected reachability, transcribed from kubernetes/kubernetes
test/e2e/network/netpol/network_policy.go (the version whose tests all run on the
full 3 x 3 model; commit 9db638c0807a720aa050ebcef69c32e4d4cce280) and its model
(reachability.go: Peer matching and the Expect* helpers; policies.go:
SetSpecIngressRules / SetSpecEgressRules add the policy type the first time they
are called; model.go / kubemanager.go: pods a, b, c labelled ``pod=<name>`` in
namespaces x, y, z, one container per (port, protocol) whose port is named
``serve-<port>-<protocol>``).

A Case is one upstream ``It``: the model's ports and protocols, then Steps.  A Step
is the cluster state at one point (every policy present then, pod and namespace
label changes made so far) and the ValidateOrFail calls made in that state
(Probes: port, protocol, expected 9 x 9 truth table).  Policies whose ipBlock
names a pod's address hold IPBlock placeholders, rendered per address family by
the test (``IPBlock("y/b")`` is y/b's address as a /32 or /128; ``prefix=4`` is
upstream's ``<ip>/4``).  Upstream ignores loopback cells (ignoreLoopback = true);
so does the test.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NAMESPACES = ("x", "y", "z")
POD_NAMES = ("a", "b", "c")
PODS = tuple(f"{ns}/{p}" for ns in NAMESPACES for p in POD_NAMES)
NS_NAME = "kubernetes.io/metadata.name"


# ------------------------------------------------------------------ reachability.go


@dataclass(frozen=True)
class Peer:
    """Matches pods by namespace and/or name; empty matches everything."""
    namespace: str = ""
    pod: str = ""

    def matches(self, pod: str) -> bool:
        ns, name = pod.split("/")
        return (not self.namespace or self.namespace == ns) and (not self.pod or self.pod == name)


class Reachability:
    """The expected truth table: (from, to) -> connected."""

    def __init__(self, default: bool = True) -> None:
        self.expected = {(f, t): default for f in PODS for t in PODS}

    def expect(self, frm: str, to: str, connected: bool) -> Reachability:
        self.expected[(frm, to)] = connected
        return self

    def expect_all_ingress(self, pod: str, connected: bool) -> Reachability:
        for frm in PODS:
            self.expected[(frm, pod)] = connected
        return self

    def expect_all_egress(self, pod: str, connected: bool) -> Reachability:
        for to in PODS:
            self.expected[(pod, to)] = connected
        return self

    def expect_peer(self, frm: Peer, to: Peer, connected: bool) -> Reachability:
        for f in PODS:
            for t in PODS:
                if frm.matches(f) and to.matches(t):
                    self.expected[(f, t)] = connected
        return self


# ------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class IPBlock:
    """An ipBlock naming pod addresses: cidr = pod's address / prefix (None: host mask)."""
    pod: str
    prefix: int | None = None
    excepts: tuple[str, ...] = ()          # pods, each as a host prefix


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    spec: dict


def gen(ns: str, name: str, pod_selector: dict, ingress: list | None = None, egress: list | None = None,
        policy_types: list | None = None) -> Policy:
    """GenNetworkPolicy with SetSpecIngressRules / SetSpecEgressRules: a rule list given
    (even empty) adds its policy type, ingress first."""
    spec: dict = {"podSelector": pod_selector}
    types = []
    if ingress is not None:
        spec["ingress"] = ingress
        types.append("Ingress")
    if egress is not None:
        spec["egress"] = egress
        types.append("Egress")
    spec["policyTypes"] = policy_types if policy_types is not None else types
    return Policy(ns, name, spec)


def match(**labels: str) -> dict:
    return {"matchLabels": dict(labels)}


def ns_is(ns: str) -> dict:
    return {"matchLabels": {NS_NAME: ns}}


def ns_expr(op: str, *values: str) -> dict:
    return {"matchExpressions": [{"key": NS_NAME, "operator": op, "values": list(values)}]}


def pod_expr(op: str, *values: str) -> dict:
    return {"matchExpressions": [{"key": "pod", "operator": op, "values": list(values)}]}


def port(number: int | str | None = None, protocol: str | None = None) -> dict:
    out: dict = {}
    if number is not None:
        out["port"] = number
    if protocol is not None:
        out["protocol"] = protocol
    return out


# ---------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Probe:
    port: int
    protocol: str
    reachability: Reachability


@dataclass(frozen=True)
class Step:
    policies: tuple[Policy, ...]
    probes: tuple[Probe, ...]
    pod_labels: dict = field(default_factory=dict)        # "x/b" -> full label set
    namespace_labels: dict = field(default_factory=dict)  # "y" -> extra labels


@dataclass(frozen=True)
class Case:
    name: str
    ports: tuple[int, ...]
    protocols: tuple[str, ...]
    steps: tuple[Step, ...]


def R() -> Reachability:
    return Reachability(True)


ANY, X, Y, Z = Peer(), Peer("x"), Peer("y"), Peer("z")
XA = Peer("x", "a")


def one(name: str, policies: list[Policy], reach: Reachability, port_: int = 80, protocol: str = "TCP",
        ports: tuple[int, ...] | None = None) -> Case:
    """A case with one step and one probe."""
    return Case(name, ports or (port_,), (protocol,), (Step(tuple(policies), (Probe(port_, protocol, reach),)),))


def _cases() -> list[Case]:
    c: list[Case] = []
    T = "TCP"
    c.append(one("should support a 'default-deny-ingress' policy",
                 [gen("x", "deny-ingress", {}, ingress=[])],
                 R().expect_peer(ANY, X, False)))
    c.append(one("should support a 'default-deny-all' policy",
                 [gen("x", "deny-all", {}, ingress=[], egress=[])],
                 R().expect_peer(ANY, X, False).expect_peer(X, ANY, False)))
    c.append(one("should enforce policy to allow traffic from pods within server namespace based on PodSelector",
                 [gen("x", "x-a-allows-x-b", match(pod="a"), ingress=[{"from": [{"podSelector": match(pod="b")}]}])],
                 R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)))
    c.append(one("should enforce policy to allow ingress traffic for a target",
                 [gen("x", "deny-all", {}, ingress=[]),
                  gen("x", "allow-all-to-a", match(pod="a"),
                      ingress=[{"from": [{"podSelector": {}, "namespaceSelector": {}}]}])],
                 R().expect_all_ingress("x/a", True).expect_all_ingress("x/b", False)
                 .expect_all_ingress("x/c", False)))
    c.append(one("should enforce policy to allow ingress traffic from pods in all namespaces",
                 [gen("x", "allow-from-another-ns", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": {"matchLabels": {}}}]}])],
                 R()))
    c.append(one("should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
                 [gen("x", "allow-client-a-via-ns-selector", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_is("y")}]}])],
                 R().expect_peer(X, XA, False).expect_peer(Z, XA, False)))
    c.append(one("should enforce policy based on PodSelector with MatchExpressions",
                 [gen("x", "x-a-allows-x-b", match(pod="a"), ingress=[{"from": [{"podSelector": pod_expr("In", "b")}]}])],
                 R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)))
    c.append(one("should enforce policy based on NamespaceSelector with MatchExpressions",
                 [gen("x", "allow-ns-y-match-selector", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_expr("In", "y")}]}])],
                 R().expect_peer(X, XA, False).expect_peer(Z, XA, False)))
    c.append(one("should enforce policy based on PodSelector or NamespaceSelector",
                 [gen("x", "allow-ns-y-match-selector", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x")},
                                         {"podSelector": match(pod="b")}]}])],
                 R().expect("x/a", "x/a", False).expect("x/c", "x/a", False)))
    c.append(one("should enforce policy based on PodSelector and NamespaceSelector",
                 [gen("x", "allow-ns-y-podselector-and-nsselector", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x"),
                                          "podSelector": match(pod="b")}]}])],
                 R().expect_all_ingress("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)))
    c.append(one("should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
                 [gen("x", "allow-ns-y-z-pod-b-c", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_expr("NotIn", "x"),
                                          "podSelector": pod_expr("In", "b", "c")}]}])],
                 R().expect_peer(X, XA, False).expect("y/a", "x/a", False).expect("z/a", "x/a", False)))
    c.append(one("should enforce policy based on any PodSelectors",
                 [gen("x", "allow-ns-x-pod-b-c", match(pod="a"),
                      ingress=[{"from": [{"podSelector": match(pod="b")}, {"podSelector": match(pod="c")}]}])],
                 R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True).expect("x/c", "x/a", True)))
    c.append(one("should enforce policy to allow traffic only from a pod in a different namespace based on "
                 "PodSelector and NamespaceSelector",
                 [gen("x", "allow-ns-y-pod-a-via-namespace-pod-selector", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_is("y"), "podSelector": match(pod="a")}]}])],
                 R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True)))
    port81 = gen("x", "allow-client-a-via-ns-selector", match(pod="a"),
                 ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [port(81, T)]}])
    allow_y = lambda: R().expect_peer(X, XA, False).expect_peer(Y, XA, True).expect_peer(Z, XA, False)  # noqa: E731
    c.append(one("should enforce policy based on Ports", [port81], allow_y(), 81))
    port80 = gen("x", "allow-client-a-via-ns-selector-80", match(pod="a"),
                 ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [port(80, T)]}])
    c.append(Case("should enforce multiple, stacked policies with overlapping podSelectors", (80, 81), (T,), (
        Step((port81,), (Probe(81, T, allow_y()), Probe(80, T, R().expect_all_ingress("x/a", False)))),
        Step((port81, port80), (Probe(80, T, allow_y()),)),
    )))
    allow_all = gen("x", "allow-all", match(), ingress=[{}])
    c.append(Case("should support allow-all policy", (80, 81), (T,), (
        Step((allow_all,), (Probe(80, T, R()), Probe(81, T, R()))),)))
    c.append(Case("should allow ingress access on one named port", (80, 81), (T,), (
        Step((gen("x", "allow-all", match(), ingress=[{"ports": [port("serve-81-tcp")]}]),),
             (Probe(81, T, R()), Probe(80, T, R().expect_peer(ANY, X, False)))),)))
    c.append(Case("should allow ingress access from namespace on one named port", (80, 81), (T,), (
        Step((gen("x", "allow-client-a-via-ns-selector-80", match(pod="a"),
                  ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [port("serve-80-tcp", T)]}]),),
             (Probe(80, T, R().expect_peer(X, XA, False).expect_peer(Z, XA, False)),
              Probe(81, T, R().expect_all_ingress("x/a", False)))),)))
    c.append(Case("should allow egress access on one named port", (80, 81), (T,), (
        Step((gen("x", "allow-egress", match(), egress=[{"ports": [port("serve-80-tcp")]}]),),
             (Probe(80, T, R()), Probe(81, T, R().expect_peer(X, ANY, False)))),)))
    c.append(Case("should enforce updated policy", (81,), (T,), (
        Step((gen("x", "allow-all-mutate-to-deny-all", match(), ingress=[{}]),), (Probe(81, T, R()),)),
        Step((gen("x", "allow-all-mutate-to-deny-all", match(), ingress=[]),),
             (Probe(81, T, R().expect_peer(ANY, X, False)),)),
    )))
    ns2 = gen("x", "allow-client-a-via-ns-selector", match(pod="a"),
              ingress=[{"from": [{"namespaceSelector": match(ns2="updated")}]}])
    c.append(Case("should allow ingress access from updated namespace", (80,), (T,), (
        Step((ns2,), (Probe(80, T, R().expect_all_ingress("x/a", False)),)),
        Step((ns2,), (Probe(80, T, R().expect_all_ingress("x/a", False).expect_peer(Y, ANY, True)),),
             namespace_labels={"y": {"ns2": "updated"}}),
    )))
    pod2 = gen("x", "allow-client-a-via-pod-selector", match(pod="a"),
               ingress=[{"from": [{"podSelector": match(pod="b", pod2="updated")}]}])
    c.append(Case("should allow ingress access from updated pod", (80,), (T,), (
        Step((pod2,), (Probe(80, T, R().expect_all_ingress("x/a", False)),)),
        Step((pod2,), (Probe(80, T, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),),
             pod_labels={"x/b": {"pod": "b", "pod2": "updated"}}),
    )))
    c.append(one("should deny ingress from pods on other namespaces",
                 [gen("x", "deny-empty-policy", {}, ingress=[{"from": [{"podSelector": {"matchLabels": {}}}]}])],
                 R().expect_peer(Y, X, False).expect_peer(Z, X, False)))
    isolated = gen("x", "deny-ingress-via-label-selector", match(target="isolated"), ingress=[])
    c.append(Case("should deny ingress access to updated pod", (80,), (T,), (
        Step((isolated,), (Probe(80, T, R()),)),
        Step((isolated,), (Probe(80, T, R().expect_all_ingress("x/a", False)),),
             pod_labels={"x/a": {"pod": "a", "target": "isolated"}}),
    )))
    c.append(one("should deny egress from pods based on PodSelector",
                 [gen("x", "deny-egress-pod-a", match(pod="a"), egress=[])],
                 R().expect_all_egress("x/a", False)))
    c.append(one("should deny egress from all pods in a namespace",
                 [gen("x", "deny-egress-ns-x", {}, egress=[])],
                 R().expect_peer(X, ANY, False)))
    together = gen("x", "allow-client-a-via-pod-selector", match(pod="a"),
                   ingress=[{"from": [{"podSelector": match(pod="b")}]}], egress=[{"ports": [port(80)]}],
                   policy_types=["Egress", "Ingress"])
    c.append(Case("should work with Ingress, Egress specified together", (80, 81), (T,), (
        Step((together,), (
            Probe(80, T, R().expect_all_ingress("x/a", False).expect("x/b", "x/a", True)),
            Probe(81, T, R().expect_all_ingress("x/a", False).expect_all_egress("x/a", False)
                  .expect("x/b", "x/a", True)))),)))
    from_xa = [{"from": [{"namespaceSelector": ns_is("x"), "podSelector": match(pod="a")}]}]
    c.append(one("should support denying of egress traffic on the client side (even if the server explicitly "
                 "allows this traffic)",
                 [gen("x", "allow-to-ns-y-pod-a", match(pod="a"),
                      egress=[{"to": [{"namespaceSelector": ns_is("y"), "podSelector": match(pod="a")}]}]),
                  gen("y", "allow-from-xa-on-ya-match-selector", match(pod="a"), ingress=from_xa),
                  gen("y", "allow-from-xa-on-yb-match-selector", match(pod="b"), ingress=from_xa)],
                 R().expect_peer(XA, ANY, False).expect_peer(ANY, Peer("y", "a"), False)
                 .expect_peer(XA, Peer("y", "a"), True).expect_peer(ANY, Peer("y", "b"), False)))
    c.append(one("should enforce egress policy allowing traffic to a server in a different namespace based on "
                 "PodSelector and NamespaceSelector",
                 [gen("x", "allow-to-ns-y-pod-a", match(pod="a"),
                      egress=[{"to": [{"namespaceSelector": ns_is("y"), "podSelector": match(pod="a")}]}])],
                 R().expect_all_egress("x/a", False).expect("x/a", "y/a", True)))
    c.append(Case("should enforce ingress policy allowing any port traffic to a server on a specific protocol",
                  (80,), (T, "UDP"), (
                      Step((gen("x", "allow-ingress-by-proto", match(pod="a"), ingress=[{"ports": [port(None, T)]}]),),
                           (Probe(80, T, R()), Probe(80, "UDP", R().expect_peer(ANY, XA, False)))),)))
    only80_in = gen("x", "allow-ingress-port-80", match(), ingress=[{"ports": [port(80)]}])
    c.append(Case("should enforce multiple ingress policies with ingress allow-all policy taking precedence",
                  (81,), (T,), (
                      Step((only80_in,), (Probe(81, T, R().expect_peer(ANY, X, False)),)),
                      Step((only80_in, gen("x", "allow-ingress", match(), ingress=[{}])), (Probe(81, T, R()),)),
                  )))
    only80_out = gen("x", "allow-egress-port-80", match(), egress=[{"ports": [port(80)]}])
    c.append(Case("should enforce multiple egress policies with egress allow-all policy taking precedence",
                  (81,), (T,), (
                      Step((only80_out,), (Probe(81, T, R().expect_peer(X, ANY, False)),)),
                      Step((only80_out, gen("x", "allow-egress", match(), egress=[{}])), (Probe(81, T, R()),)),
                  )))
    c.append(Case("should stop enforcing policies after they are deleted", (80,), (T,), (
        Step((gen("x", "deny-all", {}, ingress=[], egress=[]),),
             (Probe(80, T, R().expect_peer(X, ANY, False).expect_peer(ANY, X, False)),)),
        Step((), (Probe(80, T, R()),)),
    )))
    c.append(one("should allow egress access to server in CIDR block",
                 [gen("x", "allow-client-a-via-cidr-egress-rule", match(pod="a"),
                      egress=[{"to": [{"ipBlock": IPBlock("y/b")}]}])],
                 R().expect_all_egress("x/a", False).expect("x/a", "y/b", True)))
    except_b = gen("x", "allow-client-a-via-cidr-egress-rule", match(pod="a"),
                   egress=[{"to": [{"ipBlock": IPBlock("x/a", 4, ("x/b",))}]}])
    c.append(one("should enforce except clause while egress access to server in CIDR block",
                 [except_b], R().expect("x/a", "x/b", False)))
    c.append(Case("should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", (80,), (T,), (
        Step((except_b,), (Probe(80, T, R().expect("x/a", "x/b", False)),)),
        Step((gen("x", "allow-client-a-via-cidr-egress-rule", match(pod="a"),
                  egress=[{"to": [{"ipBlock": IPBlock("x/b")}]}]),),
             (Probe(80, T, R().expect_all_egress("x/a", False).expect("x/a", "x/b", True)),)),
    )))
    egress_a = gen("x", "allow-egress-for-target", match(pod="a"), egress=[{}])
    c.append(Case("should enforce policies to check ingress and egress policies can be controlled independently "
                  "based on PodSelector", (80,), (T,), (
                      Step((egress_a,), (Probe(80, T, R()),)),
                      Step((egress_a, gen("x", "deny-ingress-via-label-selector", match(pod="a"), ingress=[])),
                           (Probe(80, T, R().expect_all_ingress("x/a", False)),)),
                  )))
    c.append(one("should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't "
                 "support SCTP",
                 [gen("x", "deny-ingress", {}, ingress=[]),
                  gen("x", "allow-only-sctp-ingress-on-port-81", match(pod="a"),
                      ingress=[{"ports": [port(81, "SCTP")]}])],
                 R().expect_peer(ANY, X, False), 81))
    c.append(one("should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin "
                 "doesn't support SCTP",
                 [gen("x", "allow-only-sctp-ingress-on-port-80", match(pod="a"),
                      ingress=[{"ports": [port(80, "SCTP")]}])],
                 R().expect_all_ingress("x/a", False), 81))
    c.append(one("should not allow access by TCP when a policy specifies only UDP",
                 [gen("x", "allow-only-udp-ingress-on-port-81", match(pod="a"),
                      ingress=[{"ports": [port(81, "UDP")]}])],
                 R().expect_all_ingress("x/a", False), 81))
    c.append(one("should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using "
                 "default ns label",
                 [gen("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", match(pod="a"),
                      ingress=[{"from": [{"namespaceSelector": ns_is("y")}]}])],
                 R().expect_peer(X, XA, False).expect_peer(Z, XA, False)))
    c.append(one("should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
                 [gen("x", "allow-ns-y-match-selector-for-immutable-ns-label", match(pod="a"),
                      egress=[{"to": [{"namespaceSelector": ns_expr("NotIn", "y")}]}])],
                 R().expect_peer(XA, Y, False)))
    for proto in ("UDP", "SCTP"):
        c.append(one(f"[{proto}] should support a 'default-deny-ingress' policy",
                     [gen("x", "deny-all", {}, ingress=[])], R().expect_peer(ANY, X, False), 80, proto))
        c.append(one(f"[{proto}] should enforce policy based on Ports",
                     [gen("x", "allow-ingress-on-port-81-ns-x", match(pod="a"),
                          ingress=[{"from": [{"namespaceSelector": ns_is("y")}], "ports": [port(81, proto)]}])],
                     R().expect_peer(X, XA, False).expect_peer(Z, XA, False), 81, proto))
        c.append(one(f"[{proto}] should enforce policy to allow traffic only from a pod in a different namespace "
                     "based on PodSelector and NamespaceSelector",
                     [gen("x", "allow-ns-y-pod-a-via-namespace-pod-selector", match(pod="a"),
                          ingress=[{"from": [{"namespaceSelector": ns_is("y"), "podSelector": match(pod="a")}]}])],
                     R().expect_all_ingress("x/a", False).expect("y/a", "x/a", True), 80, proto))
    return c


CASES: tuple[Case, ...] = tuple(_cases())
assert len(CASES) == 48, len(CASES)
