"""``nft -f`` transactions as kube-proxy's nftables mode writes them (v1.31+).

Follows pkg/proxy/nftables/proxier.go: table ``ip kube-proxy``; base chains
filter-{prerouting,input,forward,output}, filter-output-post-dnat,
nat-{prerouting,output,postrouting} at kube-proxy's priorities (written as
numbers: dstnat-10 = -110, dstnat+10 = -90, dstnat = -100, srcnat = 100);
dispatch ``ip daddr . meta l4proto . th dport vmap @service-ips`` and the
``service-nodeports`` map; sets ``cluster-ips`` and the ``no-endpoint-*`` maps;
per service port ``service-<HASH8>-ns/svc/proto/port`` (Cluster policy),
``external-…`` for external destinations, per endpoint ``endpoint-…``;
selection ``numgen random mod N vmap { 0 : goto endpoint-…, … }``; session
affinity with per-endpoint ``affinity-…`` timeout sets; masquerading through
``mark-for-masquerade`` / ``masquerading``.

Defaults fixed as on this node: masquerade mark 0x004000 (kube-proxy prints
``%#08x``), cluster CIDR 198.18.0.0/16 as local-traffic detector, service
CIDR 198.19.0.0/17, NodePorts on every local address (nodePortAddresses
matching all, so the ``nodeport-ips`` set is added and deleted).
"""
from __future__ import annotations

from typing import Iterable

from harness.addressing import POD_CIDR_V4, SERVICE_CIDR_V4
from harness.lb.model import LbState

from . import names
from .model import ServicePort, service_ports

TABLE = "ip kube-proxy"
MASQ_MARK = "0x004000"

BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)

# (chain, base chain jumping to it, extra match) in nftablesJumpChains order.
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)

_VERDICT_MAP = "ipv4_addr . inet_proto . inet_service : verdict"


def _setup(out: list[str]) -> None:
    """setupNFTables on the first sync of a kube-proxy process."""
    t = TABLE
    out.append(f'add table {t} {{ comment "rules for kube-proxy" ; }}')
    for name, *_ in BASE_CHAINS:
        out += [f"add chain {t} {name}", f"delete chain {t} {name}"]
    for name, typ, hook, prio in BASE_CHAINS:
        out += [f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}",
                f"flush chain {t} {name}"]
    created: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in created:
            created.add(chain)
            out.extend([f"add chain {t} {chain}", f"flush chain {t} {chain}"])
    for dst, src, extra in JUMP_CHAINS:
        ensure(dst)
        out.append(f"add rule {t} {src} {extra + ' ' if extra else ''}jump {dst}")
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        ensure(chain)
    out += [
        f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule {t} masquerading mark set mark xor {MASQ_MARK}",
        f"add rule {t} masquerading masquerade fully-random",
        f'add set {t} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f"add rule {t} cluster-ips-check ip daddr @cluster-ips reject "
        'comment "Reject traffic to invalid ports of ClusterIPs"',
        f"add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR_V4} }} drop "
        'comment "Drop traffic to unallocated ClusterIPs"',
        f'add set {t} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}',
        f"delete set {t} nodeport-ips",
        f"add map {t} no-endpoint-services {{ type {_VERDICT_MAP} ; "
        'comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
        'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / '
        '@no-endpoint-nodeports" ; }',
        f"flush chain {t} reject-chain",
        f"add rule {t} reject-chain reject",
        f"add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport "
        "vmap @no-endpoint-services",
        f"add rule {t} nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport "
        "vmap @no-endpoint-nodeports",
        f"add map {t} firewall-ips {{ type {_VERDICT_MAP} ; "
        'comment "destinations that are subject to LoadBalancerSourceRanges" ; }',
    ]
    ensure("firewall-check")
    out += [
        f"add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"add map {t} service-ips {{ type {_VERDICT_MAP} ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; '
        'comment "NodePort traffic" ; }',
        f"add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services fib daddr type local ip daddr != 127.0.0.0/8 "
        "meta l4proto . th dport vmap @service-nodeports",
    ]
    for container in ("set cluster-ips", "map service-ips", "map firewall-ips",
                      "map no-endpoint-services", "map no-endpoint-nodeports",
                      "map service-nodeports"):
        kind, name = container.split()
        out.append(f"flush {kind} {t} {name}")


def _chains(sp: ServicePort) -> tuple[str, str]:
    return (names.nft_service_chain(sp.service, sp.port_name, sp.proto),
            names.nft_external_chain(sp.service, sp.port_name, sp.proto))


def _ep_names(sp: ServicePort) -> list[tuple[str, str, str]]:
    """(endpoint "ip:port", endpoint chain, affinity set) of each endpoint."""
    return [(str(ep), names.nft_endpoint_chain(sp.service, sp.port_name, sp.proto, ep.ip, ep.port),
             names.nft_affinity_set(sp.service, sp.port_name, sp.proto, ep.ip, ep.port))
            for ep in sp.cluster_endpoints]


def elements(sp: ServicePort) -> dict[tuple[str, str], str]:
    """Map and set elements of *sp*: (container, key) -> value (\"\" for sets)."""
    svc, ext = _chains(sp)
    out: dict[tuple[str, str], str] = {}
    p = sp.proto
    if sp.cluster_ip:
        out[("cluster-ips", sp.cluster_ip)] = ""
    reject = f' comment "{sp.name}" : goto reject-chain'
    for ip, target in ([(sp.cluster_ip, svc)] if sp.cluster_ip else []) + \
            [(ip, ext) for ip in (*sp.external_ips, *sp.lb_ips)]:
        key = f"{ip} . {p} . {sp.port}"
        if sp.cluster_endpoints:
            out[("service-ips", key)] = f" : goto {target}"
        else:
            out[("no-endpoint-services", key)] = reject
    if sp.node_port:
        key = f"{p} . {sp.node_port}"
        if sp.cluster_endpoints:
            out[("service-nodeports", key)] = f" : goto {ext}"
        else:
            out[("no-endpoint-nodeports", key)] = reject
    return out


def chain_names(sp: ServicePort) -> set[str]:
    """Service chains (names with a "/") kube-proxy keeps for *sp*."""
    if not sp.cluster_endpoints:
        return set()
    svc, ext = _chains(sp)
    return {svc, *([ext] if sp.external else []), *(c for _, c, _ in _ep_names(sp))}


def affinity_sets(sp: ServicePort) -> set[str]:
    return {s for _, _, s in _ep_names(sp)} if sp.cluster_endpoints and sp.affinity_timeout else set()


def _service_rules(sp: ServicePort, out: list[str]) -> None:
    """Chains and rules of one service port (kube-proxy's per-service part)."""
    if not sp.cluster_endpoints:
        return
    t, p = TABLE, sp.proto
    svc, ext = _chains(sp)
    eps = _ep_names(sp)
    for _, chain, _ in eps:
        out += [f"add chain {t} {chain}", f"flush chain {t} {chain}"]
    out += [f"add chain {t} {svc}", f"flush chain {t} {svc}"]
    if sp.external:
        out += [f"add chain {t} {ext}", f"flush chain {t} {ext}"]
    if sp.cluster_ip:
        out.append(f"add rule {t} {svc} ip daddr {sp.cluster_ip} {p} dport {sp.port} "
                   f"ip saddr != {POD_CIDR_V4} jump mark-for-masquerade")
    if sp.external:
        out += [f"add rule {t} {ext} jump mark-for-masquerade", f"add rule {t} {ext} goto {svc}"]
    if sp.affinity_timeout:
        for _, _, aset in eps:
            out.append(f"add set {t} {aset} {{ type ipv4_addr ; flags dynamic,timeout ; "
                       f"timeout {sp.affinity_timeout}s ; }}")
        for _, chain, aset in eps:
            out.append(f"add rule {t} {svc} ip saddr @{aset} goto {chain}")
    vmap = ", ".join(f"{i} : goto {chain}" for i, (_, chain, _) in enumerate(eps))
    out.append(f"add rule {t} {svc} numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for ep, chain, aset in eps:
        out.append(f"add rule {t} {chain} ip saddr {ep.rsplit(':', 1)[0]} "
                   "jump mark-for-masquerade")
        if sp.affinity_timeout:
            out.append(f"add rule {t} {chain} update @{aset} {{ ip saddr }}")
        out.append(f"add rule {t} {chain} meta l4proto {p} dnat to {ep}")


def _element_lines(elems: dict[tuple[str, str], str], verb: str = "add") -> list[str]:
    if verb == "delete":
        return [f"delete element {TABLE} {c} {{ {k} }}" for (c, k) in elems]
    return [f"add element {TABLE} {c} {{ {k}{v} }}" for (c, k), v in elems.items()]


def render_ports(sps: Iterable[ServicePort]) -> str:
    """A full sync, as a fresh kube-proxy process writes it."""
    out: list[str] = []
    _setup(out)
    for sp in sps:
        _service_rules(sp, out)
        out += _element_lines(elements(sp))
    return "\n".join(out) + "\n"


def render(state: LbState) -> str:
    """Full-sync ``nft -f`` transaction for *state* (IPv4)."""
    return render_ports(service_ports(state))


def render_incremental(old: LbState, new: LbState) -> str:
    """A partial sync from *old* to *new*: element deltas, service chains of
    changed service ports re-created, stale chains flushed, stale affinity sets
    deleted.  kube-proxy deletes flushed stale chains in a later transaction
    (see :func:`stale_chain_cleanup`), after the kernel has dropped the
    references from the removed map elements."""
    old_sps, new_sps = service_ports(old), service_ports(new)
    old_set = set(old_sps)
    out: list[str] = []
    for sp in new_sps:
        if sp not in old_set:
            _service_rules(sp, out)
    old_el: dict[tuple[str, str], str] = {}
    for sp in old_sps:
        old_el.update(elements(sp))
    new_el: dict[tuple[str, str], str] = {}
    for sp in new_sps:
        new_el.update(elements(sp))
    added = {k: v for k, v in new_el.items() if k not in old_el}
    replaced = {k: v for k, v in new_el.items() if k in old_el and old_el[k] != v}
    removed = {k: v for k, v in old_el.items() if k not in new_el}
    out += _element_lines(replaced, "delete") + _element_lines(replaced)
    out += _element_lines(added)
    for chain in sorted(stale_chains(old, new)):
        out.append(f"flush chain {TABLE} {chain}")
    keep_sets = set().union(*(affinity_sets(sp) for sp in new_sps))
    for aset in sorted(set().union(*(affinity_sets(sp) for sp in old_sps)) - keep_sets):
        out.append(f"delete set {TABLE} {aset}")
    out += _element_lines(removed, "delete")
    return "\n".join(out) + "\n"


def stale_chains(old: LbState, new: LbState) -> set[str]:
    """Service chains *old* had that *new* no longer uses."""
    keep = set().union(*(chain_names(sp) for sp in service_ports(new)))
    return set().union(*(chain_names(sp) for sp in service_ports(old))) - keep


def stale_chain_cleanup(old: LbState, new: LbState) -> str:
    """The later transaction deleting the chains :func:`render_incremental` flushed."""
    return "".join(f"delete chain {TABLE} {c}\n" for c in sorted(stale_chains(old, new)))
