"""Policy resolution: a scenario's pods and policies -> identities, ipcache, per-endpoint rules.

``policy_state(scenario, nodes, local_node)`` compiles every CiliumNetworkPolicy
rule and NetworkPolicy into entries (allow or deny; peers; ports), then, for
each endpoint (a non-hostNetwork pod with an IP), evaluates which policies
select it and expands their entries into model.Rule values over numeric
identities.  The semantics follow Cilium (pkg/policy, pkg/k8s):

Enforcement
    A CNP rule whose endpointSelector matches the endpoint enforces ingress
    when its ``ingress`` or ``ingressDeny`` list is non-empty (Cilium's
    Sanitize: ``len(Ingress) > 0 || len(IngressDeny) > 0``; so ``ingress: []``
    enforces nothing and ``ingress: [{}]`` enforces while allowing nothing);
    likewise egress.  A NetworkPolicy enforces the directions of its
    policyTypes, defaulted as the API server does (Ingress, plus Egress if
    ``egress`` has at least one rule); rules of a direction not in
    policyTypes are ignored, as Kubernetes specifies.

Peers of one CNP entry
    At most one of fromEndpoints / fromCIDR / fromCIDRSet / fromEntities
    (to...) may be non-empty, else error (Cilium rejects the combination).
    No peer field but toPorts or icmps: every peer (wildcard).  No peer field
    and no ports (``{}``): nothing.  A peer field present but empty (``[]``):
    nothing (as Cilium's newer releases).  Endpoint selectors are matched
    against every identity's labels (pods, reserved, CIDR), namespaced as
    selectors.py describes (without a ``reserved:`` key they select pods
    only).  Entities: see
    selectors.ENTITY_SELECTORS; ``world`` selects reserved:world and every
    CIDR identity (they carry reserved:world); ``all`` is the wildcard;
    ``world-ipv4`` / ``world-ipv6`` are treated as CIDRs 0.0.0.0/0 and ::/0.

CIDRs (fromCIDR, fromCIDRSet, ipBlock)
    Every prefix a policy names (cidr and except alike) gets its own CIDR
    identity and ipcache entry; a CIDR peer selects the CIDR identities whose
    prefix lies inside its cidr and inside none of its excepts.  With the
    ipcache's longest-prefix match this selects exactly the addresses in
    cidr minus excepts (Cilium's "carve-out": except prefixes are
    ``DoesNotExist cidr:<except>`` requirements).  CiliumNetworkPolicy CIDR
    peers never select pods or nodes (Cilium's default policy-cidr-match-mode):
    their /32 and /128 entries are longer and carry their own identities.
    A NetworkPolicy ipBlock also selects every pod address inside cidr and
    outside its excepts, as Kubernetes specifies (the upstream e2e tests
    allow egress to a pod's /32, except a pod, ...); with
    ``np_ipblock="cidr"`` it behaves like a Cilium CIDR rule instead (what
    Cilium does, cilium/cilium#19601).  Node addresses are never selected
    by either.  Identities are per label set, but an ipBlock may cover some
    addresses of one label set and not others (some of its pods; a pod's
    IPv4 address and not its IPv6 one): resolution is exact by splitting
    such a set into one identity per coverage (the set of pod-selecting
    ipBlocks containing the address), each carrying the extra label
    ``chainbench:io.chainbench.ipblock-set=<hash of those ipBlocks>``
    (addresses no ipBlock covers keep the plain identity); selectors never
    see that label (no selector may name the ``chainbench`` source), so
    they match every part alike.  A /0 prefix
    also gets a CIDR identity (and an ipcache entry), so ``0.0.0.0/0``
    selects all IPv4 outside the cluster but no IPv6: the model has one
    world identity for both families where Cilium in dual-stack mode has
    world-ipv4 / world-ipv6.  Addresses without an entry are world.

Ports
    No toPorts/icmps (NetworkPolicy: no ports): every protocol and port.
    Protocol ANY expands to TCP, UDP and SCTP (not ICMP), as Cilium does.
    A port without a number is every port of its protocol.  endPort makes a
    range.  Named ports resolve, as in Cilium's NamedPortMultiMap: on
    ingress against the endpoint's own container ports; on egress per
    destination identity (one rule per identity, with its port), skipping an
    identity whose pods give the name different numbers and every non-pod
    identity; a wildcard peer expands to every pod identity with the name.
    An ICMP type T (``icmps``) becomes proto ICMP (family IPv4) or ICMPv6
    with PortRange(T, T): the datapath matches the ICMP type as the port.

Host
    Cilium's default ``allow-localhost`` (auto = always in Kubernetes mode)
    lets the local host reach every endpoint: with ``allow_localhost`` an
    endpoint with ingress enforced gets an allow from ID_HOST for everything
    (an explicit deny still wins).

Workloads outside the scenario
    A container a runtime outside Kubernetes attached (model.Workload) has
    no pod and no labels a policy can select: its addresses are
    ``reserved:unmanaged`` (3) in the ipcache, so peers' rules see it as the
    ``unmanaged`` entity (``cluster`` includes it; ``world`` does not); a
    local one is an endpoint with that identity that no policy selects (a
    CiliumNetworkPolicy's endpointSelector is namespaced, a NetworkPolicy's
    podSelector selects pods): its own traffic is not enforced.  A pod's or
    node's address wins over a workload claiming it.

Unsupported fields (L7 rules, toFQDNs, toServices, from/toRequires,
from/toNodes, nodeSelector, selector keys of other sources, ...) raise a
one-line ScenarioError naming the field.
"""
from __future__ import annotations

import hashlib
import ipaddress
import marshal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from harness import gcpause
from harness.policy.errors import PolicyFieldError
from harness.policy.identity import (
    RESERVED_LABELS,
    IdentityAllocator,
    allocate_cidr_identities,
    cidr_label,
    node_identities,
    security_labels,
)
from harness.policy.model import (
    ANY_IDENTITY,
    ANY_PORT,
    ANY_PROTO,
    ID_HOST,
    ID_UNMANAGED,
    PROTOCOLS,
    Direction,
    EndpointPolicy,
    Identity,
    IpcacheEntry,
    IPNetwork,
    PolicyState,
    PortRange,
    Rule,
    Workload,
)
from harness.policy.selectors import (
    ENTITY_SELECTORS,
    LabelIndex,
    Selector,
    cnp_peer_selector,
    cnp_subject_selector,
    np_peer_selector,
    np_pod_selector,
)
from harness.scenario.errors import ScenarioError
from harness.scenario.model import CiliumNetworkPolicy, IPAddress, NetworkPolicy, Pod, Scenario

__all__ = ["policy_state", "format_identities", "ICMP_TYPES", "ALLOW_LOCALHOST_SOURCE", "NP_IPBLOCK_MODES",
           "IPBLOCK_SET_LABEL"]

#: What a NetworkPolicy ipBlock selects (resolve's np_ipblock): see the CIDRs section.
NP_IPBLOCK_MODES = ("pods", "cidr")

ALLOW_LOCALHOST_SOURCE = "allow-localhost"
_TCP, _UDP, _SCTP = PROTOCOLS["TCP"], PROTOCOLS["UDP"], PROTOCOLS["SCTP"]
_ANY_L4 = (_TCP, _UDP, _SCTP)

#: ICMP type names Cilium accepts (pkg/policy/api/icmp.go), per family.
ICMP_TYPES: dict[str, dict[str, int]] = {
    "IPv4": {
        "EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
        "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
        "Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42,
        "ExtendedEchoReply": 43,
    },
    "IPv6": {
        "DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
        "EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
        "MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134,
        "NeighborSolicitation": 135, "NeighborAdvertisement": 136, "RedirectMessage": 137,
        "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139, "ICMPNodeInformationResponse": 140,
        "InverseNeighborDiscoverySolicitation": 141, "InverseNeighborDiscoveryAdvertisement": 142,
        "HomeAgentAddressDiscoveryRequest": 144, "HomeAgentAddressDiscoveryReply": 145,
        "MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
        "DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
        "ExtendedEchoRequest": 160, "ExtendedEchoReply": 161,
    },
}

# ================================================================ compiled form


@dataclass(frozen=True)
class _Peer:
    """One peer term: the wildcard, a selector, a CIDR with excepts, or an entity."""
    kind: str                                # "any" | "selector" | "cidr" | "entity"
    selector: Selector | None = None
    cidr: IPNetwork | None = None
    excepts: tuple[IPNetwork, ...] = ()
    entity: str = ""
    pods: bool = False                       # a NetworkPolicy ipBlock that also selects pod addresses

    def covers(self, addr: IPAddress) -> bool:
        """Whether a CIDR peer contains *addr* (inside cidr, outside every except)."""
        return (addr.version == self.cidr.version and addr in self.cidr  # type: ignore[union-attr, operator]
                and not any(addr in e for e in self.excepts))


_ANY_PEER = _Peer("any")


@dataclass(frozen=True)
class _Port:
    proto: int
    lo: int = 0
    hi: int = 65535
    name: str = ""                           # a named port, resolved per endpoint or peer


@dataclass(frozen=True)
class _Entry:
    deny: bool
    peers: tuple[_Peer, ...]                 # () selects nothing
    ports: tuple[_Port, ...] | None          # None: every protocol and port


@dataclass(frozen=True)
class _Policy:
    source: str
    subject: Selector
    enforces: frozenset[str]                 # directions
    entries: tuple[tuple[Direction, _Entry], ...]


# ------------------------------------------------------------- CNP compilation

_CNP_RULE_KEYS = frozenset({"endpointSelector", "ingress", "egress", "ingressDeny", "egressDeny",
                            "description", "labels"})
_PEER_KEYS: dict[str, tuple[str, ...]] = {
    "ingress": ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities"),
    "egress": ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"),
}
_UNSUPPORTED: dict[str, str] = {
    "nodeSelector": "host policies (nodeSelector) are not supported by chainbench",
    "enableDefaultDeny": "not supported by chainbench",
    "fromRequires": "not supported by chainbench (deprecated in Cilium)",
    "toRequires": "not supported by chainbench (deprecated in Cilium)",
    "fromNodes": "not supported by chainbench (needs Cilium's node selector labels)",
    "toNodes": "not supported by chainbench (needs Cilium's node selector labels)",
    "toServices": "not supported by chainbench",
    "toFQDNs": "DNS-based policy is not supported by chainbench (no DNS proxy)",
    "fromGroups": "not supported by chainbench",
    "toGroups": "not supported by chainbench",
    "authentication": "not supported by chainbench",
    "rules": "L7 rules are not supported by chainbench (no L7 proxy)",
    "serverNames": "TLS SNI rules are not supported by chainbench (no L7 proxy)",
    "listener": "not supported by chainbench (no L7 proxy)",
    "originatingTLS": "not supported by chainbench (no L7 proxy)",
    "terminatingTLS": "not supported by chainbench (no L7 proxy)",
    "cidrGroupRef": "not supported by chainbench",
    "cidrGroupSelector": "not supported by chainbench",
}


def _check_keys(m: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    allowed = set(allowed)
    for key, value in m.items():
        if key not in allowed and value is not None:
            raise PolicyFieldError(f"{path}.{key}", _UNSUPPORTED.get(key, "not supported by chainbench"))


def _net(value: str) -> IPNetwork:
    return ipaddress.ip_network(value, strict=False)


def _cnp_ports(item: Mapping[str, Any], path: str) -> tuple[_Port, ...] | None:
    to_ports = item.get("toPorts") or []
    icmps = item.get("icmps") or []
    if to_ports and icmps:
        raise PolicyFieldError(f"{path}.icmps", "icmps may only be used without toPorts (Cilium rejects the "
                                                "combination); write a separate rule")
    if not to_ports and not icmps:
        return None
    ports: list[_Port] = []
    for j, port_rule in enumerate(to_ports):
        ppath = f"{path}.toPorts[{j}]"
        _check_keys(port_rule, ppath, ("ports",))
        for k, p in enumerate(port_rule.get("ports") or []):
            _check_keys(p, f"{ppath}.ports[{k}]", ("port", "endPort", "protocol"))
            proto = p.get("protocol") or "ANY"
            protos = _ANY_L4 if proto == "ANY" else (PROTOCOLS[proto],)
            raw, end = p.get("port"), p.get("endPort")
            for num in protos:
                if raw is None:
                    ports.append(_Port(num))
                elif isinstance(raw, str) and not raw.isdigit():
                    ports.append(_Port(num, name=raw.lower()))
                else:
                    ports.append(_Port(num, int(raw), int(end) if end else int(raw)))
    for j, icmp in enumerate(icmps):
        ipath = f"{path}.icmps[{j}]"
        _check_keys(icmp, ipath, ("fields",))
        for k, fld in enumerate(icmp.get("fields") or []):
            family = fld.get("family") or "IPv4"
            raw = fld.get("type")
            if isinstance(raw, str):
                if raw.isdigit():
                    code = int(raw)
                elif raw in ICMP_TYPES[family]:
                    code = ICMP_TYPES[family][raw]
                else:
                    raise PolicyFieldError(f"{ipath}.fields[{k}].type", f"{raw!r} is not an {family} ICMP type name "
                                           f"(known: {', '.join(ICMP_TYPES[family])})")
            else:
                code = int(raw)
            ports.append(_Port(PROTOCOLS["ICMP" if family == "IPv4" else "ICMPv6"], code, code))
    return tuple(ports)


def _cnp_peers(item: Mapping[str, Any], path: str, direction: str, namespace: str,
               has_ports: bool) -> tuple[_Peer, ...]:
    keys = _PEER_KEYS[direction]
    present = [k for k in keys if item.get(k) is not None]
    filled = [k for k in present if item[k]]
    if len(filled) > 1:
        raise PolicyFieldError(path, f"combining {filled[0]} and {filled[1]} in one rule is not supported "
                                     "(Cilium rejects it); write separate rules")
    if not present:
        return (_ANY_PEER,) if has_ports else ()
    if len(filled) < len(present):
        return ()
    key = filled[0]
    values = item[key]
    if key.endswith("Endpoints"):
        return tuple(_Peer("selector", selector=cnp_peer_selector(sel, namespace, f"{path}.{key}[{i}]"))
                     for i, sel in enumerate(values))
    if key.endswith("CIDR"):
        return tuple(_Peer("cidr", cidr=_net(c)) for c in values)
    if key.endswith("CIDRSet"):
        out = []
        for i, rule in enumerate(values):
            _check_keys(rule, f"{path}.{key}[{i}]", ("cidr", "except"))
            out.append(_Peer("cidr", cidr=_net(rule["cidr"]),
                             excepts=tuple(_net(e) for e in rule.get("except") or ())))
        return tuple(out)
    out = []
    for i, entity in enumerate(values):
        if entity == "world-ipv4":
            out.append(_Peer("cidr", cidr=_net("0.0.0.0/0")))
        elif entity == "world-ipv6":
            out.append(_Peer("cidr", cidr=_net("::/0")))
        elif entity in ENTITY_SELECTORS:
            out.append(_Peer("entity", entity=entity))
        else:
            raise PolicyFieldError(f"{path}.{key}[{i}]", f"unknown entity {entity!r}")
    return tuple(out)


def _cnp_entry(item: Mapping[str, Any], path: str, direction: str, deny: bool, namespace: str) -> _Entry:
    _check_keys(item, path, _PEER_KEYS[direction] + ("toPorts", "icmps"))
    ports = _cnp_ports(item, path)
    return _Entry(deny, _cnp_peers(item, path, direction, namespace, ports is not None), ports)


def _compile_cnp(cnp: CiliumNetworkPolicy) -> list[_Policy]:
    source = f"{cnp.KIND} {cnp.ref}"
    ns = cnp.meta.namespace
    rules = ([("spec", cnp.spec)] if cnp.spec is not None else []) + \
        [(f"specs[{i}]", r) for i, r in enumerate(cnp.specs)]
    out = []
    for path, rule in rules:
        _check_keys(rule, path, _CNP_RULE_KEYS)
        if rule.get("endpointSelector") is None:
            raise PolicyFieldError(f"{path}.endpointSelector", "required")
        subject = cnp_subject_selector(rule["endpointSelector"], ns, f"{path}.endpointSelector")
        entries: list[tuple[Direction, _Entry]] = []
        enforces = set()
        for direction in ("ingress", "egress"):
            for section, deny in ((direction, False), (direction + "Deny", True)):
                items = rule.get(section) or []
                if items:
                    enforces.add(direction)
                for i, item in enumerate(items):
                    entries.append((direction, _cnp_entry(item, f"{path}.{section}[{i}]", direction, deny, ns)))
        out.append(_Policy(source, subject, frozenset(enforces), tuple(entries)))
    return out


# -------------------------------------------------------------- NP compilation


def _np_ports(rule: Mapping[str, Any]) -> tuple[_Port, ...] | None:
    raw_ports = rule.get("ports") or []
    if not raw_ports:
        return None
    out = []
    for p in raw_ports:
        proto = PROTOCOLS[p.get("protocol") or "TCP"]
        raw, end = p.get("port"), p.get("endPort")
        if raw is None:
            out.append(_Port(proto))
        elif isinstance(raw, str):
            out.append(_Port(proto, name=raw.lower()))
        else:
            out.append(_Port(proto, raw, end if end else raw))
    return tuple(out)


def _text(value: Any) -> bytes | str:
    """A cache key for a decoded scenario value: equal keys only for equal values (marshal,
    3x cheaper than repr; repr for what marshal cannot write, e.g. YAML dates)."""
    try:
        return marshal.dumps(value)
    except ValueError:
        return repr(value)


def _compile_np(np: NetworkPolicy, ipblock_pods: bool, cache: dict | None = None) -> _Policy:
    """*np* compiled; *cache* (one per scenario) shares what many policies repeat: selectors
    and port lists with the same text in the same namespace are compiled once."""
    cache = {} if cache is None else cache
    spec = np.spec
    ns = np.meta.namespace
    types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else []))
    pod_sel = spec.get("podSelector") or {}
    key = ("subject", ns, _text(pod_sel))
    subject = cache.get(key)
    if subject is None:
        subject = cache[key] = np_pod_selector(pod_sel, ns, "spec.podSelector")
    entries: list[tuple[Direction, _Entry]] = []
    enforces = set()
    for direction, ptype, peers_key in (("ingress", "Ingress", "from"), ("egress", "Egress", "to")):
        if ptype not in types:
            continue
        enforces.add(direction)
        for i, rule in enumerate(spec.get(direction) or []):
            rule_key = ("rule", ns, ipblock_pods, direction, _text(rule))
            entry = cache.get(rule_key)
            if entry is not None:           # the same rule text in the same namespace
                entries.append((direction, entry))
                continue
            path = f"spec.{direction}[{i}]"
            peers: list[_Peer] = []
            for j, peer in enumerate(rule.get(peers_key) or []):
                key = ("peer", ns, ipblock_pods, _text(peer))
                compiled = cache.get(key)
                if compiled is None:
                    block = peer.get("ipBlock")
                    if block is not None:
                        compiled = _Peer("cidr", cidr=_net(block["cidr"]),
                                         excepts=tuple(_net(e) for e in block.get("except") or ()),
                                         pods=ipblock_pods)
                    else:
                        compiled = _Peer("selector",
                                         selector=np_peer_selector(peer, ns, f"{path}.{peers_key}[{j}]"))
                    cache[key] = compiled
                peers.append(compiled)
            key = ("ports", _text(rule.get("ports")))
            if key not in cache:
                cache[key] = _np_ports(rule)
            entry = cache[rule_key] = _Entry(False, tuple(peers) or (_ANY_PEER,), cache[key])  # type: ignore[arg-type]
            entries.append((direction, entry))
    return _Policy(f"{np.KIND} {np.ref}", subject, frozenset(enforces), tuple(entries))


def _compile(scenario: Scenario, ipblock_pods: bool) -> list[_Policy]:
    out: list[_Policy] = []
    cache: dict = {}
    for np in scenario.network_policies:
        try:
            out.append(_compile_np(np, ipblock_pods, cache))
        except PolicyFieldError as err:
            raise scenario.error(np, err.field, err.message) from None
    for cnp in scenario.cilium_network_policies:
        try:
            out.extend(_compile_cnp(cnp))
        except PolicyFieldError as err:
            raise scenario.error(cnp, err.field, err.message) from None
    return out


# ================================================================== resolution


IPBLOCK_SET_LABEL = "chainbench:io.chainbench.ipblock-set"


def _block_span(peer: _Peer) -> tuple[int, int, int, tuple[tuple[int, int], ...]]:
    """A CIDR peer as integers: (version, first, last, excepts' (first, last))."""
    def span(net: IPNetwork) -> tuple[int, int]:
        return int(net.network_address), int(net.broadcast_address)
    return (peer.cidr.version, *span(peer.cidr),  # type: ignore[union-attr, arg-type]
            tuple(span(e) for e in peer.excepts if e.version == peer.cidr.version))  # type: ignore[union-attr]


def _covered(peer: _Peer, addresses: Iterable[tuple[IPAddress, int, int]]) -> list[IPAddress]:
    """The addresses (address, version, integer) a CIDR peer covers: _Peer.covers, on integers."""
    version, lo, hi, excepts = _block_span(peer)
    return [a for a, v, x in addresses
            if v == version and lo <= x <= hi and not any(elo <= x <= ehi for elo, ehi in excepts)]


def _split_by_ipblocks(endpoints: list[Pod], labels: list[tuple[str, ...]],
                       policies: list[_Policy]) -> list[tuple[IPAddress, tuple[str, ...]]]:
    """Each pod address with its identity labels: its pod's (*labels*, in the order of
    *endpoints*), plus IPBLOCK_SET_LABEL when the pod-selecting ipBlocks containing it
    differ between addresses of that label set."""
    blocks = sorted({peer for policy in policies for _, entry in policy.entries for peer in entry.peers
                     if peer.kind == "cidr" and peer.pods}, key=_block_text)
    owned = [(addr, lbls) for pod, lbls in zip(endpoints, labels) for addr in pod.pod_ips]
    addresses = [(addr, addr.version, int(addr)) for addr, _ in owned]
    coverage: dict[IPAddress, tuple[str, ...]] = {}
    for block in blocks:
        text = _block_text(block)
        for addr in _covered(block, addresses):
            coverage[addr] = coverage.get(addr, ()) + (text,)
    if not coverage:                    # no ipBlock covers a pod: nothing to split
        return owned
    seen: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for addr, lbls in owned:
        seen.setdefault(lbls, set()).add(coverage.get(addr, ()))
    out: list[tuple[IPAddress, tuple[str, ...]]] = []
    for addr, lbls in owned:
        covered = coverage.get(addr, ())
        if len(seen[lbls]) > 1 and covered:
            digest = hashlib.sha256("\n".join(covered).encode()).hexdigest()[:12]
            lbls = tuple(sorted(lbls + (f"{IPBLOCK_SET_LABEL}={digest}",)))
        out.append((addr, lbls))
    return out


def _block_text(peer: _Peer) -> str:
    return " except ".join([str(peer.cidr)] + [str(e) for e in sorted(peer.excepts, key=str)])


def _host_net(addr: IPAddress) -> IPNetwork:
    # From the integer: ip_network((address object, n)) parses the address's text again.
    if addr.version == 4:
        return ipaddress.IPv4Network((int(addr), 32))
    return ipaddress.IPv6Network((int(addr), 128))


def _policy_prefixes(policies: Iterable[_Policy]) -> set[IPNetwork]:
    out: set[IPNetwork] = set()
    for policy in policies:
        for _, entry in policy.entries:
            for peer in entry.peers:
                if peer.kind == "cidr":
                    out.add(peer.cidr)  # type: ignore[arg-type]
                    out.update(peer.excepts)
    return out


#: A resolved rule before it becomes a model.Rule: (deny, identity, proto, port lo, port hi).
_RuleKey = tuple[bool, int, int, int, int]
_ANY_RULE_PORTS = (ANY_PORT.lo, ANY_PORT.hi)


class _Resolver:
    """Everything per-scenario the per-endpoint expansion needs.

    Selectors are evaluated over every identity at once through a LabelIndex
    (selectors.py), each distinct peer once; a policy entry's rules are the same
    for every endpoint the policy selects (except ingress named ports, which are
    the endpoint's own), so they are computed once per entry (and named-port
    numbers) and shared."""

    def __init__(self, scenario: Scenario, endpoints: list[Pod], policies: list[_Policy],
                 refs: list[str] | None = None) -> None:
        """*endpoints* (with their refs, *refs*, in the same order, if already known)."""
        self.endpoints = endpoints
        refs = [p.ref for p in endpoints] if refs is None else refs
        ns_labels: dict[str, Mapping[str, str]] = {}
        for pod in endpoints:
            ns = pod.meta.namespace
            if ns not in ns_labels:
                ns_labels[ns] = scenario.namespace_labels(ns)
        self.labels = {ref: security_labels(p, ns_labels[p.meta.namespace])
                       for ref, p in zip(refs, endpoints)}
        addr_labels = _split_by_ipblocks(endpoints, [self.labels[ref] for ref in refs], policies)
        self.ids = IdentityAllocator().allocate({lbls for _, lbls in addr_labels})
        self.cidr_ids = allocate_cidr_identities(_policy_prefixes(policies))
        labels: dict[int, tuple[str, ...]] = dict(RESERVED_LABELS)
        self.endpoint_ids = set()
        for lbls, i in self.ids.items():
            labels[i] = lbls
            self.endpoint_ids.add(i)
        for prefix, i in self.cidr_ids.items():
            labels[i] = (cidr_label(prefix), "reserved:world")
        self.index = LabelIndex.of_labels(labels)
        self._addresses = [(a, a.version, int(a)) for a, _ in addr_labels]
        # (version, address as an integer) -> identity: cheaper to hash than the address
        self._addr_ids = {(a.version, int(a)): self.ids[lbls] for a, lbls in addr_labels}
        self._pod_ports: dict[str, dict[tuple[str, int], set[int]]] = {}
        self._id_ports: dict[int, dict[tuple[str, int], set[int]]] | None = None
        self._selected: dict[_Peer, frozenset[int]] = {}
        self._entry_rules: dict[tuple, list[_RuleKey]] = {}

    def pod_ports(self, pod: Pod) -> dict[tuple[str, int], set[int]]:
        """(name, proto) -> the numbers *pod*'s containers give the name."""
        mine = self._pod_ports.get(pod.ref)
        if mine is None:
            mine = self._pod_ports[pod.ref] = {}
            for cp in pod.container_ports:
                if cp.name:
                    mine.setdefault((cp.name.lower(), PROTOCOLS[cp.protocol]), set()).add(cp.container_port)
        return mine

    @property
    def id_ports(self) -> dict[int, dict[tuple[str, int], set[int]]]:
        """Per identity, (name, proto) -> the numbers its pods give the name (egress named
        ports; made at the first need)."""
        if self._id_ports is None:
            self._id_ports = {}
            for pod in self.endpoints:
                theirs = [self._id_ports.setdefault(i, {})
                          for i in sorted({self.address_identity(a) for a in pod.pod_ips})]
                for key, numbers in self.pod_ports(pod).items():
                    for ports in theirs:
                        ports.setdefault(key, set()).update(numbers)
        return self._id_ports

    def address_identity(self, addr: IPAddress) -> int:
        return self._addr_ids[(addr.version, int(addr))]

    def identity(self, pod: Pod) -> int:
        """The endpoint's own identity: its primary address's."""
        return self.address_identity(pod.pod_ips[0])

    def select(self, peer: _Peer) -> frozenset[int]:
        """Identities one peer term selects ({ANY_IDENTITY} for the wildcard)."""
        cached = self._selected.get(peer)
        if cached is not None:
            return cached
        if peer.kind == "any" or (peer.kind == "entity" and ENTITY_SELECTORS[peer.entity] is None):
            result = frozenset({ANY_IDENTITY})
        elif peer.kind == "cidr":
            cidr = peer.cidr
            result = frozenset(
                i for prefix, i in self.cidr_ids.items()
                if prefix.version == cidr.version and prefix.subnet_of(cidr)  # type: ignore[union-attr, arg-type]
                and not any(prefix.subnet_of(e) for e in peer.excepts)  # type: ignore[arg-type]
            )
            if peer.pods:        # exact: every address of a split identity is covered alike
                result |= {self.address_identity(a) for a in _covered(peer, self._addresses)}
        else:
            selectors = (peer.selector,) if peer.kind == "selector" else ENTITY_SELECTORS[peer.entity]
            result = frozenset().union(*(self.index.select(s) for s in selectors))  # type: ignore[union-attr]
        self._selected[peer] = result
        return result

    @staticmethod
    def _single(ports: set[int] | None) -> int | None:
        return next(iter(ports)) if ports is not None and len(ports) == 1 else None

    def entry_rules(self, pod: Pod, direction: Direction, entry: _Entry, key: tuple) -> list[_RuleKey]:
        """The rules of one policy entry (*key* names it) for endpoint *pod*: shared by every
        endpoint with the same numbers for the entry's named ports (ingress)."""
        named = direction == "ingress" and entry.ports is not None and any(p.name for p in entry.ports)
        if named:
            mine = self.pod_ports(pod)
            key = key + tuple(self._single(mine.get((p.name, p.proto))) for p in entry.ports if p.name)
        cached = self._entry_rules.get(key)
        if cached is None:
            cached = self._rules(pod, direction, entry)
            self._entry_rules[key] = cached
        return cached

    def _rules(self, pod: Pod, direction: Direction, entry: _Entry) -> list[_RuleKey]:
        ids: set[int] = set()
        for peer in entry.peers:
            ids |= self.select(peer)
        if not ids:
            return []
        deny = entry.deny
        if entry.ports is None:
            return [(deny, i, ANY_PROTO, *_ANY_RULE_PORTS) for i in ids]
        out: list[_RuleKey] = []
        for port in entry.ports:
            if not port.name:
                out += [(deny, i, port.proto, port.lo, port.hi) for i in ids]
            elif direction == "ingress":
                number = self._single(self.pod_ports(pod).get((port.name, port.proto)))
                if number is not None:
                    out += [(deny, i, port.proto, number, number) for i in ids]
            else:
                targets = self.endpoint_ids if ANY_IDENTITY in ids else ids & self.endpoint_ids
                for i in targets:
                    number = self._single(self.id_ports[i].get((port.name, port.proto)))
                    if number is not None:
                        out.append((deny, i, port.proto, number, number))
        return out


def _subjects(r: _Resolver, label_sets: list[tuple[str, ...]],
              policies: list[_Policy]) -> dict[tuple[str, ...], list[int]]:
    """Per distinct one of *label_sets* (endpoints' labels): the indices of the policies whose
    subject selects it, in policy order."""
    sets = sorted(set(label_sets))
    index = LabelIndex.of_labels(dict(enumerate(sets)))
    selected: list[list[int]] = [[] for _ in sets]
    by_subject: dict[Selector, frozenset[int]] = {}
    for n, policy in enumerate(policies):
        keys = by_subject.get(policy.subject)
        if keys is None:
            keys = by_subject[policy.subject] = index.select(policy.subject)
        for k in keys:
            selected[k].append(n)
    return {lbls: selected[k] for k, lbls in enumerate(sets)}


_PORT_RANGES: dict[tuple[int, int], PortRange] = {}


def _port_range(lo: int, hi: int) -> PortRange:
    found = _PORT_RANGES.get((lo, hi))
    if found is None:
        found = _PORT_RANGES[(lo, hi)] = PortRange(lo, hi)
    return found


def _endpoint_policy(r: _Resolver, pod: Pod, ref: str, policies: list[_Policy], selecting: list[int],
                     allow_localhost: bool) -> EndpointPolicy:
    """*pod*'s rules from the policies *selecting* it (indices into *policies*)."""
    enforced: set[str] = set()
    rules: dict[str, dict[_RuleKey, str]] = {"ingress": {}, "egress": {}}
    for n in selecting:
        policy = policies[n]
        enforced |= policy.enforces
        for e, (direction, entry) in enumerate(policy.entries):
            found = rules[direction]
            for rule in r.entry_rules(pod, direction, entry, (n, e)):
                if rule not in found:
                    found[rule] = policy.source
    if allow_localhost and "ingress" in enforced:
        rules["ingress"].setdefault((False, ID_HOST, ANY_PROTO, *_ANY_RULE_PORTS), ALLOW_LOCALHOST_SOURCE)

    def build(found: dict[_RuleKey, str]) -> tuple[Rule, ...]:
        return tuple(Rule(d, i, p, _port_range(lo, hi), found[(d, i, p, lo, hi)])
                     for d, i, p, lo, hi in sorted(found))
    return EndpointPolicy(
        pod=ref,
        identity=r.identity(pod),
        ingress_enforced="ingress" in enforced,
        egress_enforced="egress" in enforced,
        ingress=build(rules["ingress"]),
        egress=build(rules["egress"]),
    )


def _ipcache(scenario: Scenario, r: _Resolver, nodes: Mapping[str, Iterable[IPAddress]] | None,
             local_node: str | None, workloads: Iterable[Workload] = ()) -> tuple[IpcacheEntry, ...]:
    # Keyed by (version, address as an integer, prefix length): the order of the result,
    # and cheaper to hash than network objects, which are made once, at the end.
    entries: dict[tuple[int, int, int], int] = {
        (n.version, int(n.network_address), n.prefixlen): i for n, i in r.cidr_ids.items()}
    nets: dict[tuple[int, int, int], IPNetwork] = {
        (n.version, int(n.network_address), n.prefixlen): n for n in r.cidr_ids}
    try:
        owners = node_identities(scenario, nodes, local_node)
    except ValueError as err:
        raise ScenarioError(str(err), source=scenario.source) from None

    def host(addr: IPAddress) -> tuple[int, int, int]:
        return addr.version, int(addr), addr.max_prefixlen
    for workload in workloads:          # before pods and nodes: theirs win
        for text in workload.addresses:
            entries[host(ipaddress.ip_address(text))] = ID_UNMANAGED
    for addr, ident in owners.items():
        entries[host(addr)] = ident
    owned = {host(addr) for addr in owners}
    for pod in r.endpoints:
        for addr in pod.pod_ips:
            key = host(addr)
            if key in owned:
                raise scenario.error(pod, "status.podIPs", f"{addr} is also an address of a node")
            entries[key] = r._addr_ids[key[:2]]
    net4, net6 = ipaddress.IPv4Network, ipaddress.IPv6Network
    return tuple(IpcacheEntry(nets.get(k) or (net4 if k[0] == 4 else net6)((k[1], k[2])), entries[k])
                 for k in sorted(entries))


def policy_state(
    scenario: Scenario,
    nodes: Mapping[str, tuple[IPAddress, ...]] | None = None,
    local_node: str | None = None,
    *,
    allow_localhost: bool = True,
    np_ipblock: str = "pods",
    workloads: Iterable[Workload] = (),
    local_only: bool = False,
    held: Iterable[str] = (),
) -> PolicyState:
    """Resolve *scenario*'s policies for the datapath.

    *np_ipblock* says what a NetworkPolicy ipBlock selects: "pods" (as
    Kubernetes specifies: addresses outside the cluster and pod addresses;
    the default) or "cidr" (as Cilium's default policy-cidr-match-mode:
    only addresses outside the cluster, like CNP toCIDR/fromCIDR, which
    always behave so).
    *nodes* maps node names to addresses (default: the address plan's for
    the nodes the pods name, see identity.node_addresses); *local_node*'s
    addresses get ID_HOST, every other node's ID_REMOTE_NODE (all of them
    when *local_node* is None).  *workloads* are endpoints outside the
    scenario (see "Workloads outside the scenario"): those on *local_node*
    are endpoints of the result too.  With *local_only* (and a *local_node*)
    the result's endpoints are only *local_node*'s (its pods and workloads), as
    a node's agent resolves them: identities and the ipcache stay the whole
    cluster's; *held* names pods ("namespace/name") the node holds endpoints for
    whatever their nodeName says (its endpoint registry: a pod without a nodeName,
    or one the scenario places elsewhere), resolved too.  Raises ScenarioError for
    policies using unsupported fields.
    """
    if np_ipblock not in NP_IPBLOCK_MODES:
        raise ValueError(f"np_ipblock {np_ipblock!r}: expected one of {', '.join(NP_IPBLOCK_MODES)}")
    with gcpause.paused():
        return _policy_state(scenario, nodes, local_node, allow_localhost, np_ipblock, workloads,
                             local_only, frozenset(held))


def _policy_state(scenario: Scenario, nodes: Mapping[str, tuple[IPAddress, ...]] | None,
                  local_node: str | None, allow_localhost: bool, np_ipblock: str,
                  workloads: Iterable[Workload], local_only: bool,
                  held: frozenset[str]) -> PolicyState:
    policies = _compile(scenario, np_ipblock == "pods")
    by_ref = sorted(((p.ref, p) for p in scenario.pods if not p.host_network and p.pod_ips),
                    key=lambda rp: rp[0])
    endpoints = [p for _, p in by_ref]
    r = _Resolver(scenario, endpoints, policies, [ref for ref, _ in by_ref])
    identities = [Identity(i, lbls, "reserved") for i, lbls in RESERVED_LABELS.items()]
    identities += [Identity(i, lbls, "endpoint") for lbls, i in r.ids.items()]
    identities += [Identity(i, (cidr_label(p), "reserved:world"), "cidr") for p, i in r.cidr_ids.items()]
    workloads = tuple(workloads)
    pods = {ref for ref, _ in by_ref}
    unmanaged = tuple(EndpointPolicy(pod=w.name, identity=ID_UNMANAGED, ingress_enforced=False,
                                     egress_enforced=False)
                      for w in sorted(workloads, key=lambda w: w.name)
                      if w.node == local_node and w.name not in pods)
    resolved = [(ref, p) for ref, p in by_ref if p.node_name == local_node or ref in held] \
        if local_only and local_node else by_ref
    subjects = _subjects(r, [r.labels[ref] for ref, _ in resolved], policies)
    return PolicyState(
        identities=tuple(sorted(identities, key=lambda i: (i.id, i.labels, i.kind))),
        ipcache=_ipcache(scenario, r, nodes, local_node, workloads),
        endpoints=tuple(_endpoint_policy(r, pod, ref, policies, subjects[r.labels[ref]], allow_localhost)
                        for ref, pod in resolved) + unmanaged,
    )


def identity_holders(scenario: Scenario, state: PolicyState) -> list[dict]:
    """Per identity (``format_identities``' order): its id, labels (comma-separated), the
    endpoints holding it and their nodes, as ``chainbench identities -o wide|json`` shows."""
    holders: dict[int, list[str]] = {}
    for ep in state.endpoints:
        holders.setdefault(ep.identity, []).append(ep.pod)
    node_of = {p.ref: p.node_name or "" for p in scenario.pods}
    return [{"id": int(i), "labels": labels, "endpoints": sorted(holders.get(int(i), [])),
             "nodes": sorted({node_of.get(p, "") for p in holders.get(int(i), [])} - {""})}
            for i, labels in format_identities(state)]


def format_identities(state: PolicyState) -> list[tuple[str, str]]:
    """``(ID, LABELS)`` rows for ``chainbench identities``, sorted by id; labels comma-separated."""
    return [(str(ident.id), ",".join(ident.labels)) for ident in sorted(state.identities, key=lambda i: i.id)]
