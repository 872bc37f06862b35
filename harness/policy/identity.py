"""Security identities: which labels count, the numbers they get, and who owns an address.

Labels
    A pod's identity labels are Cilium's (``source:key=value``, or
    ``source:key`` when the value is empty):

    - every pod label as ``k8s:key=value``;
    - ``k8s:io.kubernetes.pod.namespace=<ns>``;
    - ``k8s:io.cilium.k8s.namespace.labels.<key>=<value>`` for every label of
      the pod's namespace, as Cilium copies them: the scenario's Namespace
      object's labels plus the automatic ``kubernetes.io/metadata.name``
      (a namespace without an object has only that one); this is what a
      NetworkPolicy namespaceSelector matches, so relabelling a Namespace
      changes its pods' identities;
    - ``k8s:io.cilium.k8s.policy.cluster=default`` (what the ``cluster``
      entity selects).

    Cilium also adds ``io.cilium.k8s.policy.serviceaccount``; the scenario
    model keeps no service account, so chainbench does not.

    The labels then pass Cilium's default identity-relevant label filter
    (pkg/labelsfilter, ``defaultLabelPrefixCfg``), reproduced exactly: keys
    matching ``io.kubernetes``, ``kubernetes.io``, ``.*beta.kubernetes.io``,
    ``k8s.io``, ``statefulset.kubernetes.io/pod-name``,
    ``apps.kubernetes.io/pod-index``, ``batch.kubernetes.io/job-completion-index``,
    ``pod-template-generation``, ``pod-template-hash``,
    ``controller-revision-hash``, ``annotation.*`` or ``etcd_node`` at the
    start of the key are dropped, unless a longer include pattern
    (``io.kubernetes.pod.namespace``, ``io.cilium.k8s.namespace.labels``,
    ``app.kubernetes.io``, ``io.cilium.k8s.policy.cluster``) matches.  A
    dropped label is invisible to policy selectors too, as in Cilium.

Numeric identities
    Reserved identities 1-8 are Cilium's (model.RESERVED); kube-apiserver
    also carries ``reserved:remote-node`` as in Cilium, so the remote-node
    entity selects it.  Label sets get identities in [256, 65535] and CIDR
    prefixes get ``LOCAL_IDENTITY_SCOPE | n`` with n in [1, 2^24 - 1], both
    from the same scheme:

    - each key's *home* is SHA-256 of its canonical text (sorted labels
      joined by newlines; ``cidr:<prefix>``) reduced into the range;
    - keys are visited in sorted order; a key whose home is free takes it;
    - keys that lost their home to a key sorting before them then probe
      linearly (wrapping) for the next slot that is neither a home taken in
      the first pass nor already probed into.

    So the id of a set depends only on its labels as long as no other set in
    the scenario has the same home and sorts before it.  Limits: only sets
    that lost a home collision can move when sets are added or removed
    (adding a set that takes a loser's probed slot as its home, or one that
    wins the loser's home, moves the loser); with n label sets the chance
    that any collision exists is about n^2 / 130,560 (7 % at 100 sets).
"""
from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

from harness.addressing import AddressPlanError, node_index, node_ip4, node_ip6
from harness.policy.model import (
    ID_HEALTH,
    ID_HOST,
    ID_INGRESS,
    ID_INIT,
    ID_KUBE_APISERVER,
    ID_REMOTE_NODE,
    ID_UNMANAGED,
    ID_WORLD,
    LOCAL_IDENTITY_SCOPE,
    MAX_LABEL_IDENTITY,
    MIN_LABEL_IDENTITY,
    IPNetwork,
)
from harness.scenario.model import IPAddress, Pod, Scenario

__all__ = [
    "CLUSTER_NAME",
    "CLUSTER_LABEL",
    "NAMESPACE_LABEL",
    "NAMESPACE_META_PREFIX",
    "RESERVED_LABELS",
    "IdentityAllocator",
    "IdentityExhausted",
    "allocate_cidr_identities",
    "cidr_label",
    "format_label",
    "is_identity_label",
    "node_addresses",
    "node_identities",
    "security_labels",
]

#: Cilium's default cluster name (the ``cluster`` entity selects pods carrying it).
CLUSTER_NAME = "default"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
#: Prefix Cilium puts in front of namespace labels copied onto pods.
NAMESPACE_META_PREFIX = "io.cilium.k8s.namespace.labels."
CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
#: The label Kubernetes puts on every namespace.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

#: Labels of the reserved identities, in Cilium's string form.
RESERVED_LABELS: dict[int, tuple[str, ...]] = {
    ID_HOST: ("reserved:host",),
    ID_WORLD: ("reserved:world",),
    ID_UNMANAGED: ("reserved:unmanaged",),
    ID_HEALTH: ("reserved:health",),
    ID_INIT: ("reserved:init",),
    ID_REMOTE_NODE: ("reserved:remote-node",),
    ID_KUBE_APISERVER: ("reserved:kube-apiserver", "reserved:remote-node"),
    ID_INGRESS: ("reserved:ingress",),
}

# (ignore, source or "" for any, pattern): Cilium's defaultLabelPrefixCfg.
_FILTER: tuple[tuple[bool, str, re.Pattern[str]], ...] = tuple(
    (ignore, source, re.compile(pattern)) for ignore, source, pattern in (
        (False, "reserved", r".*"),
        (False, "", re.escape(NAMESPACE_LABEL)),
        (False, "", re.escape(NAMESPACE_META_PREFIX.rstrip("."))),
        (False, "", re.escape("app.kubernetes.io")),
        (False, "", re.escape(CLUSTER_LABEL)),
        (True, "", r"io\.kubernetes"),
        (True, "", r"kubernetes\.io"),
        (True, "", re.escape("statefulset.kubernetes.io/pod-name")),
        (True, "", re.escape("apps.kubernetes.io/pod-index")),
        (True, "", re.escape("batch.kubernetes.io/job-completion-index")),
        (True, "", r".*beta\.kubernetes\.io"),
        (True, "", r"k8s\.io"),
        (True, "", r"pod-template-generation"),
        (True, "", r"pod-template-hash"),
        (True, "", r"controller-revision-hash"),
        (True, "", r"annotation.*"),
        (True, "", r"etcd_node"),
    )
)


@functools.lru_cache(maxsize=65536)
def is_identity_label(source: str, key: str) -> bool:
    """Whether Cilium's default filter keeps label *key* of *source* for identities
    (cached: a cluster has few distinct label keys).

    A pattern matches when it matches at the start of the key; the label is
    kept unless an ignore pattern matches and no include pattern matches a
    longer section than the shortest matching ignore pattern.
    """
    included = ignored = 0
    for ignore, src, pattern in _FILTER:
        if src and src != source:
            continue
        m = pattern.match(key)
        if m is None:
            continue
        length = m.end()
        if ignore:
            if ignored == 0 or length < ignored:
                ignored = length
        elif length > included:
            included = length
    return ignored == 0 or included > ignored


def format_label(source: str, key: str, value: str) -> str:
    """Cilium's string form: ``source:key=value`` (``source:key`` for an empty value)."""
    return f"{source}:{key}={value}" if value else f"{source}:{key}"


def security_labels(pod: Pod, namespace_labels: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The sorted identity labels of *pod* (see the module docstring); *namespace_labels*
    are its namespace's labels (Scenario.namespace_labels; default: only the name)."""
    ns = pod.meta.namespace
    labels = dict(pod.meta.labels)
    labels[NAMESPACE_LABEL] = ns
    for key, value in (namespace_labels or {NAMESPACE_NAME_LABEL: ns}).items():
        labels[NAMESPACE_META_PREFIX + key] = value
    labels[NAMESPACE_META_PREFIX + NAMESPACE_NAME_LABEL] = ns
    labels[CLUSTER_LABEL] = CLUSTER_NAME
    return tuple(sorted(filter(None, [_k8s_label(k, v) for k, v in labels.items()])))


@functools.lru_cache(maxsize=1 << 17)
def _k8s_label(key: str, value: str) -> str | None:
    """``k8s:key=value`` if Cilium's filter keeps *key*, else None (cached: pods share labels)."""
    return format_label("k8s", key, value) if is_identity_label("k8s", key) else None


def cidr_label(prefix: IPNetwork) -> str:
    """Cilium's CIDR label: ``cidr:10.0.0.0/8``; IPv6 with ':' written as '-' (``cidr:2001-db8--0/32``)."""
    text = str(prefix.network_address)
    if prefix.version == 6:
        if text.startswith(":"):
            text = "0" + text
        if text.endswith(":"):
            text += "0"
        text = text.replace(":", "-")
    return f"cidr:{text}/{prefix.prefixlen}"


# ------------------------------------------------------------------ allocation


class IdentityExhausted(ValueError):
    """More keys than numbers in the identity range."""


K = TypeVar("K", bound=Hashable)


def _home(text: str, lo: int, size: int) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return lo + int.from_bytes(digest[:8], "big") % size


def _assign(keys: Iterable[K], text: Callable[[K], str], lo: int, hi: int, what: str) -> dict[K, int]:
    """Stable hashed assignment of *keys* to [lo, hi] (two passes; see the module docstring)."""
    ordered = sorted(set(keys), key=text)
    size = hi - lo + 1
    if len(ordered) > size:
        raise IdentityExhausted(f"{len(ordered)} {what} do not fit in the {size} identities {lo}-{hi}")
    taken: set[int] = set()
    result: dict[K, int] = {}
    losers: list[K] = []
    for key in ordered:
        home = _home(text(key), lo, size)
        if home in taken:
            losers.append(key)
        else:
            taken.add(home)
            result[key] = home
    for key in losers:
        slot = _home(text(key), lo, size)
        while slot in taken:
            slot = lo + (slot - lo + 1) % size
        taken.add(slot)
        result[key] = slot
    return result


class IdentityAllocator:
    """Numeric identities for label sets, in [MIN_LABEL_IDENTITY, MAX_LABEL_IDENTITY]."""

    def __init__(self, lo: int = MIN_LABEL_IDENTITY, hi: int = MAX_LABEL_IDENTITY) -> None:
        if not 0 < lo <= hi:
            raise ValueError(f"invalid identity range {lo}-{hi}")
        self.lo = lo
        self.hi = hi

    def allocate(self, label_sets: Iterable[Iterable[str]]) -> dict[tuple[str, ...], int]:
        """Map each distinct label set (as a sorted tuple) to its identity.

        The same set gets the same number whatever the order of *label_sets*
        and, barring hash collisions, whatever the other sets are.
        """
        keys = {tuple(sorted(set(labels))) for labels in label_sets}
        return _assign(keys, "\n".join, self.lo, self.hi, "label sets")


def allocate_cidr_identities(prefixes: Iterable[IPNetwork]) -> dict[IPNetwork, int]:
    """CIDR identity (``LOCAL_IDENTITY_SCOPE | n``) of every distinct prefix, stable per prefix."""
    nets = {ipaddress.ip_network(p, strict=False) for p in prefixes}
    numbers = _assign(nets, cidr_label, 1, LOCAL_IDENTITY_SCOPE - 1, "CIDR prefixes")
    return {net: LOCAL_IDENTITY_SCOPE | n for net, n in numbers.items()}


# --------------------------------------------------------------------- nodes


def _plan_addresses(node: str) -> tuple[IPAddress, ...]:
    try:
        i = node_index(node)
        return (node_ip4(i), node_ip6(i))
    except AddressPlanError:
        return ()


def node_addresses(
    scenario: Scenario,
    nodes: Mapping[str, Iterable[IPAddress]] | None = None,
    local_node: str | None = None,
) -> dict[str, tuple[IPAddress, ...]]:
    """Every node's addresses.

    *nodes* if given, else the address plan's underlay addresses of every
    ``cb-node<i>`` the pods name (and of *local_node*; another name: its Node
    object's addresses when the scenario has one); in both cases plus
    each pod's hostIP and each hostNetwork pod's IPs, under the pod's node.
    Raises ValueError for an address claimed by two nodes, or a *local_node*
    without addresses in the given *nodes*.
    """
    result: dict[str, list[IPAddress]] = {}
    if nodes is None:
        for name in sorted(set(scenario.nodes) | ({local_node} if local_node else set())):
            # a foreign node (a real cluster's dump): its Node object's addresses, if any
            result[name] = list(_plan_addresses(name) or scenario.node_ips.get(name, ()))
    else:
        for name, addrs in nodes.items():
            result[name] = list(addrs)
    for pod in scenario.pods:
        if not pod.node_name:
            continue
        extra = ([pod.host_ip] if pod.host_ip is not None else []) + (list(pod.pod_ips) if pod.host_network else [])
        addrs = result.setdefault(pod.node_name, [])
        addrs.extend(a for a in extra if a not in addrs)
    owner: dict[IPAddress, str] = {}
    for name, addrs in result.items():
        for addr in addrs:
            other = owner.setdefault(addr, name)
            if other != name:
                raise ValueError(f"address {addr} belongs to both node {other} and node {name}")
    if local_node is not None and not result.get(local_node) and nodes is not None:
        # (without *nodes*, a real cluster's node may have no known address: no Node
        # object, no hostIP; it then simply has no host identity address)
        raise ValueError(f"local node {local_node} has no known address")
    return {name: tuple(addrs) for name, addrs in sorted(result.items())}


def node_identities(
    scenario: Scenario,
    nodes: Mapping[str, Iterable[IPAddress]] | None = None,
    local_node: str | None = None,
) -> dict[IPAddress, int]:
    """Address -> ID_HOST for *local_node*'s addresses, ID_REMOTE_NODE for every other node's.

    Without a local node every node is a remote node (the view of a machine
    that is none of the scenario's nodes).
    """
    return {
        addr: ID_HOST if name == local_node else ID_REMOTE_NODE
        for name, addrs in node_addresses(scenario, nodes, local_node).items()
        for addr in addrs
    }
