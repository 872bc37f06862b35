"""The load balancer's desired state (harness.lb.model), derived from a scenario's Kubernetes objects.

What kube-proxy (or Cilium's agent) computes from Services and EndpointSlices:
one Frontend per (address, port, protocol) a service answers on, each with its
backends and their states.

- ClusterIP: every cluster IP (each family) x every service port.
- NodePort / LoadBalancer: every node address x nodePort.  Each node's
  frontends are in every node's maps, so a pod translates a NodePort at its
  own veth wherever the node is; externalTrafficPolicy: Local keeps only the
  backends on the frontend's own node.
- LoadBalancer: every status.loadBalancer.ingress IP x service port, with the
  Service's loadBalancerSourceRanges.
- ExternalIPs: every external IP x service port.
- Traffic policies: a node's own view (``lb_state(..., node=N)``) narrows
  ITP Local ClusterIPs and ETP Local external / load-balancer IPs to N's
  backends; ``Frontend.endpoints`` keeps the full list (kube-proxy's view).
  On NodePort, LoadBalancer and external-IP frontends, ``backends`` is what
  clients outside the node reach (ETP) and ``internal_backends``, when it
  differs, what pods and host processes reach (every backend, or with ITP
  Local and a node, that node's): the datapath's two scopes, as Cilium keeps
  them (bpf_src/lib/lb.h).
- HostPort: a pod's containerPort with hostPort, on its node's address.

Backends come from EndpointSlices of the service's family, matched by port
name and protocol: ready endpoints are active; serving-but-terminating ones
are terminating (kept for established flows, chosen for new ones only when no
endpoint is ready, as kube-proxy falls back since ProxyTerminatingEndpoints);
not-serving ones are left out.  The annotation
``service.cilium.io/lb-algorithm: maglev`` selects Maglev, as in Cilium.
"""
from __future__ import annotations

import ipaddress
from typing import Mapping

from harness.addressing import (POD_CIDR_V4, POD_CIDR_V6, AddressPlanError, node_index, node_ip4,
                                node_ip6)
from harness.errors import InputError
from harness.lb.model import (ACTIVE, LB_ALGORITHM_ANNOTATION, TERMINATING, Backend, Backends,
                              Frontend, LbState)
from harness.scenario import Scenario, Service
from harness.scenario.model import IPAddress


#: Where node_address_sources found a node's addresses.
PLAN, NODE_OBJECT, HOST_IP, NONE = ("the address plan's underlay", "its Node object's status.addresses",
                                    "its pods' status.hostIP(s)", "none")


def node_address_sources(scenario: Scenario) -> dict[str, tuple[tuple[IPAddress, ...], str]]:
    """Every node the scenario places pods on: (its addresses, where they came from).

    ``cb-node<i>``: the underlay plan's (198.19.128.<i + 1>, 2001:db8:3::<i + 1>).  Any
    other name (a real cluster's dump): its Node object's InternalIP (else ExternalIP)
    addresses when the dump has the Node, else the status.hostIP / hostIPs of its pods,
    else none (its NodePorts then have no address on it)."""
    out: dict[str, tuple[tuple[IPAddress, ...], str]] = {}
    host_ips: dict[str, dict[int, IPAddress]] = {}
    for pod in scenario.pods:
        if pod.node_name and pod.host_ip is not None:
            fams = host_ips.setdefault(pod.node_name, {})
            fams.setdefault(pod.host_ip.version, pod.host_ip)
            if pod.host_network:            # a hostNetwork pod's IPs are its node's
                for addr in pod.pod_ips:
                    fams.setdefault(addr.version, addr)
    for n in scenario.nodes:
        try:
            i = node_index(n)
            out[n] = ((node_ip4(i), node_ip6(i)), PLAN)
            continue
        except AddressPlanError:
            pass
        if scenario.node_ips.get(n):
            out[n] = (tuple(scenario.node_ips[n]), NODE_OBJECT)
        elif host_ips.get(n):
            out[n] = (tuple(sorted(host_ips[n].values(), key=lambda a: a.version)), HOST_IP)
        else:
            out[n] = ((), NONE)
    return out


def node_addresses(scenario: Scenario) -> dict[str, tuple[IPAddress, ...]]:
    """Addresses of every node the scenario places pods on (node_address_sources)."""
    return {n: addrs for n, (addrs, _) in node_address_sources(scenario).items()}


def _endpoint_state(ready: bool, serving: bool, terminating: bool) -> str | None:
    if ready and not terminating:
        return ACTIVE
    if serving and terminating:
        return TERMINATING
    if ready:
        return ACTIVE
    return None


def _backends_for(scenario: Scenario, svc: Service, family: int, port_name: str,
                  protocol: str) -> tuple[Backend, ...]:
    out: dict[tuple, Backend] = {}
    for eps in scenario.endpoint_slices_for(svc):
        if (eps.address_type == "IPv4") != (family == 4):
            continue
        ports = [p for p in eps.ports if p.name == port_name and p.protocol == protocol]
        for ep_port in ports:
            if ep_port.port is None:
                continue
            for ep in eps.endpoints:
                state = _endpoint_state(ep.ready, ep.serving, ep.terminating)
                if state is None:
                    continue
                for addr in ep.addresses:
                    b = Backend(addr, ep_port.port, protocol, state, ep.node_name)
                    # The same endpoint in two slices: the more serving state wins.
                    prev = out.get(b.key)
                    if prev is None or prev.state != ACTIVE:
                        out[b.key] = b
    return Backends(sorted(out.values()))


def _scoped(backends: tuple[Backend, ...], node: str | None) -> tuple[Backend, ...]:
    return Backends(b for b in backends if b.node == node)


def _service_frontends(scenario: Scenario, svc: Service,
                       nodes: Mapping[str, tuple[IPAddress, ...]],
                       node: str | None) -> list[Frontend]:
    """*svc*'s frontends.  Traffic-policy scoping for one node: ETP Local NodePort
    frontends keep the backends of the node owning the address; with *node* given,
    ITP Local ClusterIPs and ETP Local external IPs / load-balancer IPs keep
    *node*'s backends (each node's maps hold its own view)."""
    if svc.headless:
        return []
    timeout = svc.affinity_timeout_seconds if svc.session_affinity == "ClientIP" else 0
    maglev = svc.meta.annotations.get(LB_ALGORITHM_ANNOTATION, "").lower() == "maglev"
    etp_local = svc.external_traffic_policy == "Local"
    itp_local = svc.internal_traffic_policy == "Local"
    hc = svc.health_check_node_port
    out = []

    def fe(kind: str, addr: IPAddress, port: int, sp, backends, chosen, **kw) -> Frontend:
        if kind != "ClusterIP":     # externally reachable: internal clients may differ
            internal = _scoped(backends, node) if itp_local and node is not None else backends
            kw["internal_backends"] = None if internal == chosen else internal
        return Frontend(svc.ref, sp.name, kind, addr, port, sp.protocol, chosen, timeout, maglev,
                        all_backends=None if chosen == backends else backends,
                        health_check_node_port=hc, internal_local=itp_local, **kw)

    for j, sp in enumerate(svc.ports):
        for ip in svc.cluster_ips:
            backends = _backends_for(scenario, svc, ip.version, sp.name, sp.protocol)
            chosen = _scoped(backends, node) if itp_local and node is not None else backends
            out.append(_sctp_checked(fe("ClusterIP", ip, sp.port, sp, backends, chosen),
                                     f"spec.ports[{j}].targetPort"))
            ext_chosen = _scoped(backends, node) if etp_local and node is not None else backends
            for ext in svc.external_ips:
                if ext.version == ip.version:
                    out.append(fe("ExternalIP", ext, sp.port, sp, backends, ext_chosen,
                                  local_scope=etp_local))
            for lb_ip in svc.load_balancer_ips:
                if lb_ip.version == ip.version:
                    out.append(_sctp_checked(fe("LoadBalancer", lb_ip, sp.port, sp, backends,
                                                ext_chosen, local_scope=etp_local,
                                                source_ranges=tuple(
                                                    n for n in svc.load_balancer_source_ranges
                                                    if n.version == ip.version)),
                                             f"spec.ports[{j}].targetPort"))
            if sp.node_port is None or svc.type not in ("NodePort", "LoadBalancer"):
                continue
            for owner, addrs in sorted(nodes.items()):
                for addr in addrs:
                    if addr.version != ip.version:
                        continue
                    chosen = _scoped(backends, owner) if etp_local else backends
                    out.append(_sctp_checked(fe("NodePort", addr, sp.node_port, sp, backends,
                                                chosen, local_scope=etp_local, node=owner),
                                             f"spec.ports[{j}].nodePort"))
    return out


def _hostport_frontends(scenario: Scenario,
                        nodes: Mapping[str, tuple[IPAddress, ...]]) -> list[Frontend]:
    out = []
    for pod in scenario.pods:
        if pod.host_network or not pod.node_name:
            continue
        for cp in pod.container_ports:
            if not cp.host_port:
                continue
            for pod_ip in pod.pod_ips:
                host = next((a for a in ([pod.host_ip] if pod.host_ip else [])
                             + list(nodes.get(pod.node_name, ())) if a.version == pod_ip.version),
                            None)
                if host is None:
                    continue
                be = Backend(pod_ip, cp.container_port, cp.protocol, ACTIVE, pod.node_name)
                out.append(_sctp_checked(Frontend(pod.ref, cp.name, "HostPort", host,
                                                  cp.host_port, cp.protocol, Backends((be,)),
                                                  node=pod.node_name),
                                         "hostPort"))
    return out


class LbStateError(InputError, ValueError):
    """Two objects claim the same frontend, or a frontend cannot be served."""


def _sctp_checked(f: Frontend, field: str) -> Frontend:
    """*f*, if the datapath can serve it: SCTP's CRC32c covers the ports but not the
    addresses, so SCTP is translated by address only and every backend must listen on
    the frontend's port.  *field* names what to change (the port field of the object)."""
    if f.protocol == "SCTP":
        for b in f.backends:
            if b.port != f.port:
                raise LbStateError(f"{f.service}: {field}: {f.type} {_fmt(f.key)} has a backend "
                                   f"on port {b.port}; for SCTP the two must be equal (its CRC32c "
                                   "covers the ports, chainbench translates addresses only)")
    return f


def lb_state(scenario: Scenario,
             nodes: Mapping[str, tuple[IPAddress, ...]] | None = None,
             node: str | None = None) -> LbState:
    """Every frontend the scenario's objects ask for; with *node*, as that node's
    maps hold them (traffic policies Local scoped to its backends)."""
    nodes = node_addresses(scenario) if nodes is None else nodes
    frontends: dict[tuple, Frontend] = {}
    for f in [fe for svc in scenario.services for fe in _service_frontends(scenario, svc, nodes, node)] \
            + _hostport_frontends(scenario, nodes):
        if any(f.address in net for net in (POD_CIDR_V4, POD_CIDR_V6)):
            # The datapath skips the service lookup for pod destinations.
            raise LbStateError(f"{f.type} {_fmt(f.key)} of {f.service} lies in the pod CIDR "
                               f"({POD_CIDR_V4}, {POD_CIDR_V6}): not a valid frontend")
        prev = frontends.get(f.key)
        if prev is not None:
            raise LbStateError(f"{f.type} {_fmt(f.key)} of {f.service} is already "
                               f"{prev.type} of {prev.service}")
        frontends[f.key] = f
    return LbState(tuple(frontends.values()))


def _fmt(key: tuple) -> str:
    addr, port, proto = key
    host = f"[{addr}]" if isinstance(addr, ipaddress.IPv6Address) else str(addr)
    return f"{host}:{port}/{proto}"

