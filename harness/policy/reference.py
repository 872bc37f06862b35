"""Reference policy verdicts: the policy objects evaluated directly, one connection at a time.

``verdict(scenario, pod, direction, remote_ip, proto, port)`` answers what
the policies say about one connection of one endpoint, without identities,
an ipcache or resolved rules: it classifies the remote address (a pod, a
node, or the world), then walks every CiliumNetworkPolicy rule and
NetworkPolicy, matching selectors against the remote pod's labels, CIDRs by
containment, entities by the remote's kind, and ports against the rule.  It
exists so that tests can compare it with harness.policy.desired: the two
share only the definition of which labels count (identity.security_labels)
and of node addresses (identity.node_addresses); everything else is written
separately here.  The semantics are those documented in resolve.py: with
``np_ipblock="pods"`` (the default) a NetworkPolicy ipBlock matches pod
addresses too, and the pods "sharing the remote's identity" (for named ports)
are those with its labels whose address is covered by the same ipBlocks.

For ICMP, *port* is the ICMP type.  Unsupported policy fields raise
ValueError (resolve reports them properly).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from harness.policy.identity import node_addresses, security_labels
from harness.policy.desired import ICMP_TYPES
from harness.scenario.model import IPAddress, Pod, Scenario

__all__ = ["verdict", "Verdict"]

Verdict = Literal["allow", "deny-default", "deny-rule"]
_PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}
_NS = "io.kubernetes.pod.namespace"
_NS_META = "io.cilium.k8s.namespace.labels."


@dataclass(frozen=True)
class _Remote:
    kind: str                                   # "pod" | "host" | "remote-node" | "world"
    ip: IPAddress
    labels: dict[str, dict[str, str]]           # source -> {key: value}
    pod: Pod | None = None
    np_ipblock: str = "pods"                    # policy_state()'s setting: what an ipBlock matches


def _labels_of(scenario: Scenario, pod: Pod) -> dict[str, dict[str, str]]:
    out: dict[str, str] = {}
    for label in security_labels(pod, scenario.namespace_labels(pod.meta.namespace)):
        rest = label.split(":", 1)[1]
        key, _, value = rest.partition("=")
        out[key] = value
    return {"k8s": out}


def _lookup(labels: Mapping[str, Mapping[str, str]], source: str, key: str) -> str | None:
    if source == "any":
        for src in sorted(labels):
            if key in labels[src]:
                return labels[src][key]
        return None
    return labels.get(source, {}).get(key)


def _requirements(sel: Mapping[str, Any] | None, cilium: bool, prefix: str = "") -> list[tuple[str, str, str, set]]:
    out = []
    for key, value in ((sel or {}).get("matchLabels") or {}).items():
        out.append((*_source_key(key, cilium, prefix), "In", {value}))
    for expr in (sel or {}).get("matchExpressions") or []:
        out.append((*_source_key(expr["key"], cilium, prefix), expr["operator"], set(expr.get("values") or ())))
    return out


def _source_key(key: str, cilium: bool, prefix: str) -> tuple[str, str]:
    if not cilium:
        return "k8s", prefix + key
    if ":" in key:
        source, _, name = key.partition(":")
        if source not in ("k8s", "any", "reserved"):
            raise ValueError(f"selector key source {source!r} not supported")
        return source, prefix + name
    return "any", prefix + key


def _holds(reqs: Iterable[tuple[str, str, str, set]], labels: Mapping[str, Mapping[str, str]]) -> bool:
    for source, key, op, values in reqs:
        value = _lookup(labels, source, key)
        ok = {"In": value is not None and value in values,
              "NotIn": value is None or value not in values,
              "Exists": value is not None,
              "DoesNotExist": value is None}[op]
        if not ok:
            return False
    return True


def _classify(scenario: Scenario, ip: IPAddress, nodes: Mapping[str, Iterable[IPAddress]] | None,
              local_node: str | None, np_ipblock: str) -> _Remote:
    for pod in scenario.pods:
        if not pod.host_network and ip in pod.pod_ips:
            return _Remote("pod", ip, _labels_of(scenario, pod), pod, np_ipblock)
    for name, addrs in node_addresses(scenario, nodes, local_node).items():
        if ip in addrs:
            kind = "host" if name == local_node else "remote-node"
            return _Remote(kind, ip, {"reserved": {kind: ""}}, None, np_ipblock)
    return _Remote("world", ip, {"reserved": {"world": ""}}, None, np_ipblock)


# ------------------------------------------------------------------- ports


def _ports_of(pods: Iterable[Pod], name: str, proto: int) -> set[int]:
    return {cp.container_port for pod in pods for cp in pod.container_ports
            if cp.name.lower() == name and _PROTO_NUMBERS[cp.protocol] == proto}


def _ipblocks(scenario: Scenario) -> set[tuple[str, tuple[str, ...]]]:
    """Every NetworkPolicy ipBlock, as (cidr, excepts) with canonical prefixes."""
    out = set()
    for np in scenario.network_policies:
        for direction, key in (("ingress", "from"), ("egress", "to")):
            for rule in np.spec.get(direction) or []:
                for peer in rule.get(key) or []:
                    block = peer.get("ipBlock")
                    if block is not None:
                        out.add((str(ipaddress.ip_network(block["cidr"], strict=False)),
                                 tuple(sorted(str(ipaddress.ip_network(e, strict=False))
                                              for e in block.get("except") or ()))))
    return out


def _coverage(scenario: Scenario, ip: IPAddress, np_ipblock: str) -> frozenset:
    if np_ipblock != "pods":
        return frozenset()
    return frozenset(b for b in _ipblocks(scenario) if _in_cidr(ip, b[0], b[1]))


def _same_identity(scenario: Scenario, remote: _Remote) -> list[Pod]:
    """Pods with an address of the remote's identity: its labels, its ipBlock coverage."""
    mine = security_labels(remote.pod, scenario.namespace_labels(remote.pod.meta.namespace))
    covered = _coverage(scenario, remote.ip, remote.np_ipblock)
    return [p for p in scenario.pods if not p.host_network and p.pod_ips
            and security_labels(p, scenario.namespace_labels(p.meta.namespace)) == mine
            and any(_coverage(scenario, a, remote.np_ipblock) == covered for a in p.pod_ips)]


def _named_port(scenario: Scenario, local: Pod, remote: _Remote, direction: str, name: str, proto: int) -> int | None:
    """The number a named port stands for here (None: unresolved)."""
    if direction == "ingress":
        found = _ports_of([local], name, proto)
    elif remote.pod is not None:
        found = _ports_of(_same_identity(scenario, remote), name, proto)
    else:
        return None
    return next(iter(found)) if len(found) == 1 else None


def _port_matches(scenario: Scenario, local: Pod, remote: _Remote, direction: str,
                  spec_proto: int, raw_port: Any, end: Any, proto: int, port: int) -> bool:
    if spec_proto != proto:
        return False
    if raw_port is None:
        return True
    if isinstance(raw_port, str) and not raw_port.isdigit():
        return _named_port(scenario, local, remote, direction, raw_port.lower(), proto) == port
    lo = int(raw_port)
    return lo <= port <= (int(end) if end else lo)


# --------------------------------------------------------------------- CNP


def _cnp_ports_match(scenario: Scenario, local: Pod, remote: _Remote, direction: str, item: Mapping[str, Any],
                     proto: int, port: int) -> bool:
    to_ports = item.get("toPorts") or []
    icmps = item.get("icmps") or []
    if not to_ports and not icmps:
        return True
    for port_rule in to_ports:
        if set(port_rule) - {"ports"}:
            raise ValueError("L7 port rules not supported")
        for p in port_rule.get("ports") or []:
            protocol = p.get("protocol") or "ANY"
            protos = ("TCP", "UDP", "SCTP") if protocol == "ANY" else (protocol,)
            if any(_port_matches(scenario, local, remote, direction, _PROTO_NUMBERS[pr], p.get("port"),
                                 p.get("endPort"), proto, port) for pr in protos):
                return True
    for icmp in icmps:
        for fld in icmp.get("fields") or []:
            family = fld.get("family") or "IPv4"
            code = fld["type"] if isinstance(fld["type"], int) else ICMP_TYPES[family][fld["type"]]
            if proto == _PROTO_NUMBERS["ICMP" if family == "IPv4" else "ICMPv6"] and port == code:
                return True
    return False


def _in_cidr(ip: IPAddress, cidr: str, excepts: Iterable[str]) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    if ip.version != net.version or ip not in net:
        return False
    return not any(ip in ipaddress.ip_network(e, strict=False) for e in excepts)


def _entity_matches(entity: str, remote: _Remote) -> bool:
    if entity == "all":
        return True
    if remote.kind == "world":
        return entity == "world" or entity == f"world-ipv{remote.ip.version}"
    if entity == "cluster":
        return True
    return entity == remote.kind                # host, remote-node; pods are only "cluster"/"all"


def _cnp_endpoint_selector_matches(sel: Mapping[str, Any], namespace: str, remote: _Remote) -> bool:
    reqs = _requirements(sel, cilium=True)
    reserved = any(source == "reserved" for source, _, _, _ in reqs)
    named_namespace = any(source in ("k8s", "any") and (key == _NS or key.startswith(_NS_META))
                          for source, key, _, _ in reqs)
    if reserved:
        return _holds(reqs, remote.labels)
    if named_namespace:
        return remote.kind == "pod" and _holds(reqs, remote.labels)
    return remote.kind == "pod" and remote.pod.meta.namespace == namespace and _holds(reqs, remote.labels)


def _cnp_peer_matches(item: Mapping[str, Any], direction: str, namespace: str, remote: _Remote) -> bool:
    prefix = "from" if direction == "ingress" else "to"
    fields = {k: item.get(prefix + k) for k in ("Endpoints", "CIDR", "CIDRSet", "Entities")}
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        return bool(item.get("toPorts") or item.get("icmps"))
    if not all(given.values()):
        return False
    if len(given) > 1:
        raise ValueError("combined peer fields")
    ((kind, values),) = given.items()
    if kind == "Endpoints":
        return any(_cnp_endpoint_selector_matches(sel, namespace, remote) for sel in values)
    if kind == "Entities":
        return any(_entity_matches(e, remote) for e in values)
    if remote.kind != "world":
        return False
    if kind == "CIDR":
        return any(_in_cidr(remote.ip, c, ()) for c in values)
    return any(_in_cidr(remote.ip, r["cidr"], r.get("except") or ()) for r in values)


def _cnp_verdicts(scenario: Scenario, local: Pod, direction: str, remote: _Remote,
                  proto: int, port: int) -> tuple[bool, bool, bool]:
    """(enforced, some allow matches, some deny matches) over every CNP rule."""
    enforced = allow = deny = False
    local_labels = _labels_of(scenario, local)
    for cnp in scenario.cilium_network_policies:
        ns = cnp.meta.namespace
        for rule in cnp.rules:
            if rule.get("nodeSelector") is not None:
                raise ValueError("nodeSelector not supported")
            if cnp.meta.namespace != local.meta.namespace:
                continue
            subject = dict(rule["endpointSelector"])
            subject["matchLabels"] = {k: v for k, v in (subject.get("matchLabels") or {}).items()
                                      if k != "k8s:" + _NS}     # Cilium overrides it with the policy's
            if not _holds(_requirements(subject, cilium=True), local_labels):
                continue
            for section, is_deny in ((direction, False), (direction + "Deny", True)):
                items = rule.get(section) or []
                enforced = enforced or bool(items)
                for item in items:
                    if (_cnp_peer_matches(item, direction, ns, remote)
                            and _cnp_ports_match(scenario, local, remote, direction, item, proto, port)):
                        if is_deny:
                            deny = True
                        else:
                            allow = True
    return enforced, allow, deny


# ---------------------------------------------------------------------- NP


def _np_peer_matches(scenario: Scenario, peer: Mapping[str, Any], namespace: str, remote: _Remote) -> bool:
    block = peer.get("ipBlock")
    if block is not None:
        kinds = ("world", "pod") if remote.np_ipblock == "pods" else ("world",)
        return remote.kind in kinds and _in_cidr(remote.ip, block["cidr"], block.get("except") or ())
    if remote.kind != "pod":
        return False
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None:
        return remote.pod.meta.namespace == namespace and _holds(_requirements(pod_sel, False), remote.labels)
    ns_labels = {"k8s": scenario.namespace_labels(remote.pod.meta.namespace)}
    return _holds(_requirements(ns_sel, False), ns_labels) and _holds(_requirements(pod_sel, False), remote.labels)


def _np_verdicts(scenario: Scenario, local: Pod, direction: str, remote: _Remote,
                 proto: int, port: int) -> tuple[bool, bool]:
    """(enforced, some allow matches) over every NetworkPolicy."""
    enforced = allow = False
    ptype, peers_key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    for np in scenario.network_policies:
        spec = np.spec
        if np.meta.namespace != local.meta.namespace:
            continue
        if not _holds(_requirements(spec.get("podSelector"), False), _labels_of(scenario, local)):
            continue
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if spec.get("egress") else []))
        if ptype not in types:
            continue
        enforced = True
        for rule in spec.get(direction) or []:
            peers = rule.get(peers_key) or []
            if peers and not any(_np_peer_matches(scenario, p, np.meta.namespace, remote) for p in peers):
                continue
            ports = rule.get("ports") or []
            if not ports or any(_port_matches(scenario, local, remote, direction, _PROTO_NUMBERS[p.get("protocol") or "TCP"],
                                              p.get("port"), p.get("endPort"), proto, port) for p in ports):
                allow = True
    return enforced, allow


# -------------------------------------------------------------------- verdict


def verdict(
    scenario: Scenario,
    pod_ref: str,
    direction: Literal["ingress", "egress"],
    remote_ip: str | IPAddress,
    proto: int | str,
    port: int,
    *,
    nodes: Mapping[str, Iterable[IPAddress]] | None = None,
    local_node: str | None = None,
    allow_localhost: bool = True,
    np_ipblock: str = "pods",
) -> Verdict:
    """What the policies decide for a connection of endpoint *pod_ref* with *remote_ip*.

    *direction* is the endpoint's (ingress: the remote connects to it);
    *proto* an IP protocol number or name (TCP, UDP, SCTP, ICMP, ICMPv6);
    *port* the endpoint's port on ingress, the remote's on egress, or the
    ICMP type.  "deny-rule": an explicit deny matches; "allow": an allow
    matches or no policy enforces this direction; "deny-default" otherwise.
    """
    local = scenario.pod(pod_ref)
    if local.host_network or not local.pod_ips:
        raise ValueError(f"pod {local.ref} is not an endpoint (hostNetwork or no IP)")
    ip = ipaddress.ip_address(remote_ip) if isinstance(remote_ip, str) else remote_ip
    number = _PROTO_NUMBERS[proto] if isinstance(proto, str) else proto
    remote = _classify(scenario, ip, nodes, local_node, np_ipblock)
    cnp_enforced, cnp_allow, deny = _cnp_verdicts(scenario, local, direction, remote, number, port)
    np_enforced, np_allow = _np_verdicts(scenario, local, direction, remote, number, port)
    enforced = cnp_enforced or np_enforced
    if deny:
        return "deny-rule"
    if not enforced or cnp_allow or np_allow:
        return "allow"
    if allow_localhost and direction == "ingress" and remote.kind == "host":
        return "allow"
    return "deny-default"
