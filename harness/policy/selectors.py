"""Label selectors as Cilium evaluates them: compiled once, matched against identity labels.

A selector is a conjunction of requirements on ``(source, key)`` labels.
``matchLabels`` entries become ``In`` requirements; ``matchExpressions``
keep their operator (In, NotIn, Exists, DoesNotExist with Kubernetes'
meaning: NotIn and DoesNotExist hold when the label is absent).  An empty
selector matches everything.

Sources
    A Cilium selector key may carry a source prefix: ``k8s:app`` matches
    only labels from Kubernetes, ``reserved:host`` only reserved labels,
    ``any:app`` or a bare ``app`` a label of any source.  Other sources
    (``cidr``, ``fqdn``, ``container``, ...) raise PolicyFieldError: chainbench
    has no such labels to select.  NetworkPolicy selectors are Kubernetes
    selectors: their keys are ``k8s`` labels.

Namespaces (pkg/k8s/apis/cilium.io/utils, pkg/k8s/network_policy.go)
    - CNP endpointSelector: always restricted to the policy's namespace
      (Cilium overrides any namespace the selector names).
    - CNP fromEndpoints/toEndpoints: restricted to the policy's namespace
      unless the selector has a ``reserved:`` key (then it is used as is),
      a ``io.kubernetes.pod.namespace`` key (k8s or any source) or a key
      under ``io.cilium.k8s.namespace.labels.``; so ``{}`` means every pod of
      the policy's namespace.  A selector naming namespaces still requires
      the namespace label to exist, so ``NotIn`` a namespace selects pods of
      the other namespaces, never host or world (cilium/cilium#46996 fixed
      this over-selection; chainbench follows the fix).
    - NetworkPolicy podSelector (spec and peers): the policy's namespace.
    - NetworkPolicy namespaceSelector: its keys are namespace labels, i.e.
      ``io.cilium.k8s.namespace.labels.<key>`` pod labels, and it always
      requires the namespace label to exist: it selects pods only, never host
      or world (``{}``: every pod; as Kubernetes specifies, and Cilium since
      cilium/cilium#46996); with a podSelector the two are ANDed.  A namespace's
      labels are its Namespace object's (if the scenario has one) plus
      ``kubernetes.io/metadata.name`` (identity.security_labels).

Entities (pkg/policy/api/entity.go) are selectors too: see ENTITY_SELECTORS.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.policy.errors import PolicyFieldError
from harness.policy.identity import CLUSTER_LABEL, CLUSTER_NAME, NAMESPACE_LABEL, NAMESPACE_META_PREFIX

__all__ = [
    "ENTITY_SELECTORS",
    "LabelIndex",
    "LabelView",
    "Requirement",
    "Selector",
    "cnp_peer_selector",
    "cnp_subject_selector",
    "np_peer_selector",
    "np_pod_selector",
    "parse_selector",
]

#: Sources a selector key may name.
SELECTABLE_SOURCES = frozenset({"k8s", "reserved", "any"})


class LabelView:
    """Labels of one identity, indexed for matching: ``(source, key) -> value``."""

    def __init__(self, labels: Iterable[str]) -> None:
        self.exact: dict[tuple[str, str], str] = {}
        self.by_key: dict[str, str] = {}
        for label in sorted(labels):
            source, _, rest = label.partition(":")
            key, _, value = rest.partition("=")
            self.exact[(source, key)] = value
            self.by_key.setdefault(key, value)

    def get(self, source: str, key: str) -> str | None:
        """The value of *key* from *source* (``any``: from whichever source has it), or None."""
        if source == "any":
            return self.by_key.get(key)
        return self.exact.get((source, key))


@dataclass(frozen=True)
class Requirement:
    source: str
    key: str
    op: str                       # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: LabelView) -> bool:
        value = labels.get(self.source, self.key)
        if self.op == "In":
            return value is not None and value in self.values
        if self.op == "NotIn":
            return value is None or value not in self.values
        if self.op == "Exists":
            return value is not None
        return value is None


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: LabelView) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def has_key(self, key: str, sources: Iterable[str]) -> bool:
        wanted = set(sources)
        return any(r.key == key and r.source in wanted for r in self.requirements)

    def has_key_prefix(self, prefix: str, sources: Iterable[str]) -> bool:
        wanted = set(sources)
        return any(r.key.startswith(prefix) and r.source in wanted for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def __and__(self, other: Selector) -> Selector:
        return Selector(self.requirements + other.requirements)


class LabelIndex:
    """Many identities' labels indexed by label, so that a selector is evaluated against
    all of them at once with set operations (Cilium's selector cache does the same):
    ``select(selector)`` is exactly ``{i for i, view in views.items() if
    selector.matches(view)}``, at the cost of the smallest set a requirement names
    rather than of the number of identities."""

    def __init__(self, views: Mapping[int, LabelView]) -> None:
        self.all: frozenset[int] = frozenset(views)
        self._exact: dict[tuple[str, str], dict[str, set[int]]] = {}
        self._any: dict[str, dict[str, set[int]]] = {}
        self._present: dict[tuple[str, str], frozenset[int]] = {}
        for i, view in views.items():
            for source_key, value in view.exact.items():
                self._exact.setdefault(source_key, {}).setdefault(value, set()).add(i)
            for key, value in view.by_key.items():
                self._any.setdefault(key, {}).setdefault(value, set()).add(i)

    @classmethod
    def of_labels(cls, labels: Mapping[int, Iterable[str]]) -> LabelIndex:
        """The index of identities given by their labels (``source:key=value``): the same
        as of their LabelViews, without making one per identity."""
        holders: dict[str, list[int]] = {}
        for i, lbls in labels.items():
            for label in lbls:
                holders.setdefault(label, []).append(i)
        index = cls({})
        index.all = frozenset(labels)
        sources: dict[str, set[str]] = {}
        for label, ids in holders.items():
            source, _, rest = label.partition(":")
            key, _, value = rest.partition("=")
            index._exact.setdefault((source, key), {}).setdefault(value, set()).update(ids)
            sources.setdefault(key, set()).add(source)
        for key, srcs in sources.items():
            if len(srcs) == 1:              # by_key is the one source's value
                (source,) = srcs
                for value, ids in index._exact[(source, key)].items():
                    index._any.setdefault(key, {}).setdefault(value, set()).update(ids)
        multi = {key for key, srcs in sources.items() if len(srcs) > 1}
        if multi:                           # LabelView.by_key: the first label in sorted order
            for i, lbls in labels.items():
                seen: set[str] = set()
                for label in sorted(lbls):
                    source, _, rest = label.partition(":")
                    key, _, value = rest.partition("=")
                    if key in multi and key not in seen:
                        index._any.setdefault(key, {}).setdefault(value, set()).add(i)
                    seen.add(key)
        return index

    def _values(self, source: str, key: str) -> dict[str, set[int]]:
        return self._any.get(key, {}) if source == "any" else self._exact.get((source, key), {})

    def _has(self, source: str, key: str) -> frozenset[int]:
        cached = self._present.get((source, key))
        if cached is None:
            cached = frozenset().union(*self._values(source, key).values())
            self._present[(source, key)] = cached
        return cached

    def _holding(self, req: Requirement) -> frozenset[int] | set[int]:
        """The identities whose value of the requirement's label is one of its values."""
        values = self._values(req.source, req.key)
        found = [values[v] for v in req.values if v in values]
        if len(found) == 1:
            return found[0]
        return frozenset().union(*found)

    def select(self, selector: Selector) -> frozenset[int]:
        """The identities *selector* matches (Selector.matches, for all at once)."""
        positive: list[frozenset[int] | set[int]] = []
        negative: list[frozenset[int] | set[int]] = []
        for req in selector.requirements:
            if req.op == "In":
                positive.append(self._holding(req))
            elif req.op == "Exists":
                positive.append(self._has(req.source, req.key))
            elif req.op == "NotIn":
                negative.append(self._holding(req))
            else:                                   # DoesNotExist (Requirement.matches)
                negative.append(self._has(req.source, req.key))
        if not positive:
            result = set(self.all)
        else:
            positive.sort(key=len)
            result = set(positive[0])
            for other in positive[1:]:
                if not result:
                    break
                result &= other
        for other in negative:
            if not result:
                break
            result -= other
        return frozenset(result)


def _split_key(key: str, where: str, cilium: bool) -> tuple[str, str]:
    if cilium and ":" in key:
        source, _, name = key.partition(":")
        if source not in SELECTABLE_SOURCES:
            raise PolicyFieldError(where, f"label source {source!r} in a selector is not supported by chainbench "
                                          f"(only k8s, reserved and any)")
        return source, name
    return ("any" if cilium else "k8s"), key


def parse_selector(sel: Mapping[str, Any] | None, where: str, *, cilium: bool, key_prefix: str = "") -> Selector:
    """Compile a LabelSelector; *key_prefix* is put before every key (namespace selectors)."""
    reqs: list[Requirement] = []
    if not sel:
        return Selector()
    for key, value in (sel.get("matchLabels") or {}).items():
        source, name = _split_key(key, f"{where}.matchLabels[{key}]", cilium)
        reqs.append(Requirement(source, key_prefix + name, "In", frozenset({value})))
    for i, expr in enumerate(sel.get("matchExpressions") or []):
        source, name = _split_key(expr["key"], f"{where}.matchExpressions[{i}].key", cilium)
        reqs.append(Requirement(source, key_prefix + name, expr["operator"], frozenset(expr.get("values") or ())))
    return Selector(tuple(reqs))


@functools.lru_cache(maxsize=4096)
def _in_namespace(namespace: str) -> Selector:
    return Selector((Requirement("k8s", NAMESPACE_LABEL, "In", frozenset({namespace})),))


@functools.lru_cache(maxsize=1)
def _some_namespace() -> Selector:
    return Selector((Requirement("k8s", NAMESPACE_LABEL, "Exists"),))


def cnp_subject_selector(sel: Mapping[str, Any], namespace: str, where: str) -> Selector:
    """A CNP endpointSelector, always confined to the policy's namespace.

    As in Cilium, a ``k8s:io.kubernetes.pod.namespace`` matchLabels entry is
    overwritten with the policy's namespace; other requirements are ANDed.
    """
    if sel and sel.get("matchLabels"):
        sel = {**sel, "matchLabels": {k: v for k, v in sel["matchLabels"].items() if k != "k8s:" + NAMESPACE_LABEL}}
    return parse_selector(sel, where, cilium=True) & _in_namespace(namespace)


def cnp_peer_selector(sel: Mapping[str, Any], namespace: str, where: str) -> Selector:
    """A CNP fromEndpoints/toEndpoints selector, namespaced as Cilium's getEndpointSelector does."""
    selector = parse_selector(sel, where, cilium=True)
    if selector.has_source("reserved"):
        return selector
    if selector.has_key(NAMESPACE_LABEL, ("k8s", "any")) or selector.has_key_prefix(NAMESPACE_META_PREFIX,
                                                                                     ("k8s", "any")):
        return selector & _some_namespace()
    return selector & _in_namespace(namespace)


def np_pod_selector(sel: Mapping[str, Any], namespace: str, where: str) -> Selector:
    """A NetworkPolicy podSelector (spec or peer without namespaceSelector): the policy's namespace."""
    return parse_selector(sel, where, cilium=False) & _in_namespace(namespace)


def np_peer_selector(peer: Mapping[str, Any], namespace: str, where: str) -> Selector:
    """A NetworkPolicy peer with podSelector and/or namespaceSelector (not ipBlock)."""
    ns_sel = peer.get("namespaceSelector")
    pod_sel = peer.get("podSelector")
    if ns_sel is None:
        return np_pod_selector(pod_sel or {}, namespace, f"{where}.podSelector")
    namespaces = parse_selector(ns_sel, f"{where}.namespaceSelector", cilium=False, key_prefix=NAMESPACE_META_PREFIX)
    return namespaces & _some_namespace() & parse_selector(pod_sel, f"{where}.podSelector", cilium=False)


def _reserved(name: str) -> Selector:
    return Selector((Requirement("reserved", name, "Exists"),))


#: Entity -> selectors (any one matching selects); None for ``all`` (every identity, wildcard).
#: world-ipv4 / world-ipv6 are not here: the resolver treats them as 0.0.0.0/0 and ::/0.
ENTITY_SELECTORS: dict[str, tuple[Selector, ...] | None] = {
    "all": None,
    "world": (_reserved("world"),),
    "host": (_reserved("host"),),
    "remote-node": (_reserved("remote-node"),),
    "kube-apiserver": (_reserved("kube-apiserver"),),
    "init": (_reserved("init"),),
    "health": (_reserved("health"),),
    "unmanaged": (_reserved("unmanaged"),),
    "ingress": (_reserved("ingress"),),
    "none": (_reserved("none"),),
    "cluster": tuple(_reserved(n) for n in ("host", "remote-node", "init", "ingress", "health", "unmanaged",
                                            "kube-apiserver"))
               + (Selector((Requirement("k8s", CLUSTER_LABEL, "In", frozenset({CLUSTER_NAME})),)),),
}
