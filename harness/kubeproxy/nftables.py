"""``nft -f`` transactions as kube-proxy's nftables mode writes them.

Version followed: kube-proxy v1.32 (pkg/proxy/nftables/proxier.go after PR
#126013, "Implement partial sync", merged July 2024 after the v1.31 code freeze,
so first released in v1.32).  The golden tests port that era's
proxier_test.go (tests/test_kubeproxy_upstream_nft.py names the commit).

Syncs, as :class:`NftablesProxier` does them:

- a full sync (the first one of a proxier): ``setupNFTables`` (table, base
  chains after one add+delete, jump chains, masquerading, ``cluster-ips``,
  ``nodeport-ips`` filled or add+deleted, the no-endpoint / firewall /
  dispatch maps), every map and set flushed once, then every service port's
  chains, rules and elements;
- a partial sync (every later one), what v1.32 sends: only the element
  changes (``add element`` for new keys, ``delete element`` + ``add element``
  for a changed value, ``delete element`` for gone keys: the in-memory element
  storage of PR #126013), the chains of changed Services re-created (add +
  flush + rules), stale service chains flushed and recorded, stale affinity
  sets deleted.  Stale chains are deleted by a separate transaction at the
  first sync at least one second later (:meth:`NftablesProxier.age_stale_chains`
  stands for the second passing); with kernels before 6.2 a chain a map
  element pointed to stays busy for a moment after the element goes.
  kube-proxy v1.31 and earlier re-run the whole full sync every time instead.

Per service port (Cluster policy ``service-<HASH>-ns/svc/proto/port``, Local
policy ``local-…``, ``external-…`` for NodePort / external / LoadBalancer
destinations, ``firewall-…`` for loadBalancerSourceRanges, per endpoint
``endpoint-…__ip/port`` and, with ClientIP affinity, ``affinity-…`` sets),
following syncProxyRules line by line: CategorizeEndpoints, the ETP Local
short-circuits for pod and node traffic, ``drop`` for no local endpoints,
``goto reject-chain`` for no endpoints at all, masqueradeAll, the
LocalTrafficDetector, and terminating endpoints when nothing is ready.
Endpoint selection is ``numgen random mod N vmap { 0 : goto A , 1 : goto B }``
(knftables.Concat joins the tokens with single spaces, so the separator is
" , ").  The masquerade mark is ``fmt.Sprintf("%#08x", 1<<bit)``: Go pads the
digits, "0x00004000" for the default bit 14.

:class:`~harness.kubeproxy.model.ProxierConfig` gives the family (IPv6:
``ip6 kube-proxy``, ``ip6 daddr``, ``ipv6_addr``), the node IPs, the cluster
CIDR (local-traffic detector), the service CIDRs, masqueradeAll and
--nodeport-addresses.  Defaults match this project's topology: cluster CIDR
198.18.0.0/16, service CIDR 198.19.0.0/17 (2001:db8:1::/48, 2001:db8:2::/108
for IPv6), NodePorts on every local address (MatchAll: ``nodeport-ips`` is
added and deleted, dispatch through ``fib daddr type local``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from harness.lb.model import LbState

from . import names
from .model import ProxierConfig, ServicePort, service_ports

TABLE = "ip kube-proxy"

# (name, type, hook, priority) in nftablesBaseChains order; dstnat = -100, srcnat = 100.
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

# The element containers kube-proxy keeps in memory (nftElementStorage): name -> kind.
CONTAINERS = {
    "cluster-ips": "set",
    "service-ips": "map",
    "firewall-ips": "map",
    "no-endpoint-services": "map",
    "no-endpoint-nodeports": "map",
    "service-nodeports": "map",
}


def table(family: int) -> str:
    """``ip kube-proxy`` or ``ip6 kube-proxy``."""
    return "ip kube-proxy" if family == 4 else "ip6 kube-proxy"


def _q(text: str) -> str:
    return '"' + text + '"'


@dataclass(frozen=True)
class Element:
    """One set or map element: value "" for set elements."""
    container: str
    key: str
    value: str = ""
    comment: str | None = None


@dataclass
class _Tx:
    """One transaction being built, as knftables writes it."""
    table: str
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def chain(self, name: str, verb: str = "add") -> None:
        self.lines.append(f"{verb} chain {self.table} {name}")

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        self.lines.append(f"add rule {self.table} {chain} {rule}"
                          + (f" comment {_q(comment)}" if comment else ""))

    def element(self, e: Element, verb: str = "add") -> None:
        if verb == "delete":
            self.lines.append(f"delete element {self.table} {e.container} {{ {e.key} }}")
            return
        body = e.key + (f" comment {_q(e.comment)}" if e.comment else "") \
            + (f" : {e.value}" if e.value else "")
        self.lines.append(f"add element {self.table} {e.container} {{ {body} }}")

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


class NftablesProxier:
    """One kube-proxy nftables proxier (one family), holding what its syncs wrote.

    :meth:`sync` returns the transaction kube-proxy v1.32 runs for the new state:
    a full sync the first time, partial syncs after.  :attr:`last_cleanup` is the
    stale-chain deletion transaction run just before it ("" when none)."""

    def __init__(self, config: ProxierConfig | None = None):
        self.config = config or ProxierConfig()
        self.table = table(self.config.family)
        self.need_full_sync = True
        self._elements: dict[tuple[str, str], Element] = {}
        self._chains: set[str] = set()          # service chains existing in the table
        self._affinity_sets: set[str] = set()
        self._stale: dict[str, bool] = {}       # stale chain -> aged (>= 1 s)
        self._ports: dict[str, tuple] = {}      # Service -> signature of its ports
        self.last_cleanup = ""
        self.last_operations = 0

    # -- public ----------------------------------------------------------

    @property
    def stale_chains(self) -> set[str]:
        return set(self._stale)

    def age_stale_chains(self) -> None:
        """Let the stale-chain delay pass: the next sync deletes them first."""
        for chain in self._stale:
            self._stale[chain] = True

    def stale_cleanup_text(self) -> str:
        """The transaction deleting the aged stale chains (what the next sync runs first)."""
        tx = _Tx(self.table)
        for chain in sorted(c for c, aged in self._stale.items() if aged):
            tx.chain(chain, "delete")
        return tx.text()

    def sync(self, state: LbState, full: bool | None = None) -> str:
        """The transaction for *state* (a full sync when *full* or on the first sync)."""
        self.last_cleanup = self.stale_cleanup_text()
        for chain in [c for c, aged in self._stale.items() if aged]:
            del self._stale[chain]
            self._chains.discard(chain)
        sps = service_ports(state, self.config)
        full = self.need_full_sync if full is None else full
        tx = _Tx(self.table)
        if full:
            self._setup(tx)
        by_service: dict[str, list[ServicePort]] = {}
        for sp in sps:
            by_service.setdefault(sp.service, []).append(sp)
        sigs = {svc: tuple(_signature(sp) for sp in v) for svc, v in by_service.items()}
        changed = {svc for svc in set(sigs) | set(self._ports)
                   if sigs.get(svc) != self._ports.get(svc)}
        wanted: dict[tuple[str, str], Element] = {}
        active_chains: set[str] = set()
        active_sets: set[str] = set()
        for sp in sps:
            skip = not full and sp.service not in changed
            _ServicePortWriter(self, sp, tx, wanted, active_chains, active_sets, skip).write()
        # Elements: ensureElem / cleanupLeftoverKeys against what the table holds.
        if full:
            self._elements = {}
        for key, e in wanted.items():
            old = self._elements.get(key)
            if old is None:
                tx.element(e)
            elif (old.value, old.comment) != (e.value, e.comment):
                tx.element(e, "delete")
                tx.element(e)
        for key, e in self._elements.items():
            if key not in wanted:
                tx.element(e, "delete")
        self._elements = wanted
        # Stale service chains are flushed now and deleted by a later transaction.
        for chain in sorted(self._chains):
            if chain in active_chains:
                self._stale.pop(chain, None)
            else:
                tx.chain(chain, "flush")
                self._stale.setdefault(chain, False)
        self._chains |= active_chains
        for aset in sorted(self._affinity_sets - active_sets):
            tx.add(f"delete set {self.table} {aset}")
        self._affinity_sets = set(active_sets)
        self._ports = sigs
        self.need_full_sync = False
        self.last_operations = len(tx.lines)
        return tx.text()

    # -- setupNFTables ---------------------------------------------------

    def _setup(self, tx: _Tx) -> None:
        cfg = self.config
        t = self.table
        ipx = "ip" if cfg.family == 4 else "ip6"
        addr_type = "ipv4_addr" if cfg.family == 4 else "ipv6_addr"
        no_localhost = "ip daddr != 127.0.0.0/8" if cfg.family == 4 else "ip6 daddr != ::1"
        mark = cfg.masquerade_mark_str
        vmap_type = f"{addr_type} . inet_proto . inet_service : verdict"
        tx.add(f'add table {t} {{ comment "rules for kube-proxy" ; }}')
        # Done once per process: re-create the base chains whatever their old properties.
        for name, *_ in BASE_CHAINS:
            tx.chain(name)
            tx.chain(name, "delete")
        for name, typ, hook, prio in BASE_CHAINS:
            tx.add(f"add chain {t} {name} {{ type {typ} hook {hook} priority {prio} ; }}")
            tx.chain(name, "flush")
        created: set[str] = set()

        def ensure(chain: str) -> None:
            if chain not in created:
                created.add(chain)
                tx.chain(chain)
                tx.chain(chain, "flush")
        for dst, src, extra in JUMP_CHAINS:
            ensure(dst)
            tx.rule(src, f"{extra + ' ' if extra else ''}jump {dst}")
        for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
            ensure(chain)
        tx.rule("mark-for-masquerade", f"mark set mark or {mark}")
        tx.rule("masquerading", f"mark and {mark} == 0 return")
        tx.rule("masquerading", f"mark set mark xor {mark}")
        tx.rule("masquerading", "masquerade fully-random")
        tx.add(f'add set {t} cluster-ips {{ type {addr_type} ; comment "Active ClusterIPs" ; }}')
        tx.rule("cluster-ips-check", f"{ipx} daddr @cluster-ips reject",
                "Reject traffic to invalid ports of ClusterIPs")
        if cfg.service_cidrs:
            tx.rule("cluster-ips-check", f"{ipx} daddr {{ {','.join(cfg.service_cidrs)} }} drop",
                    "Drop traffic to unallocated ClusterIPs")
        tx.add(f'add set {t} nodeport-ips {{ type {addr_type} ; '
               'comment "IPs that accept NodePort traffic" ; }')
        nodeport_ips = cfg.nodeport_ips()
        if nodeport_ips is None:
            tx.add(f"delete set {t} nodeport-ips")
        else:
            tx.add(f"flush set {t} nodeport-ips")
            for ip in nodeport_ips:
                tx.element(Element("nodeport-ips", ip))
        tx.add(f"add map {t} no-endpoint-services {{ type {vmap_type} ; "
               'comment "vmap to drop or reject packets to services with no endpoints" ; }')
        tx.add(f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; "
               'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }')
        tx.add(f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / '
               '@no-endpoint-nodeports" ; }')
        tx.chain("reject-chain", "flush")
        tx.rule("reject-chain", "reject")
        tx.rule("service-endpoints-check",
                f"{ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services")
        if nodeport_ips is None:
            tx.rule("nodeport-endpoints-check",
                    f"{no_localhost} meta l4proto . th dport vmap @no-endpoint-nodeports")
        else:
            tx.rule("nodeport-endpoints-check",
                    f"{ipx} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
        tx.add(f"add map {t} firewall-ips {{ type {vmap_type} ; "
               'comment "destinations that are subject to LoadBalancerSourceRanges" ; }')
        ensure("firewall-check")
        tx.rule("firewall-check", f"{ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
        tx.add(f"add map {t} service-ips {{ type {vmap_type} ; "
               'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }')
        tx.add(f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; "
               'comment "NodePort traffic" ; }')
        tx.rule("services", f"{ipx} daddr . meta l4proto . th dport vmap @service-ips")
        if nodeport_ips is None:
            tx.rule("services", f"fib daddr type local {no_localhost} "
                                "meta l4proto . th dport vmap @service-nodeports")
        else:
            tx.rule("services", f"{ipx} daddr @nodeport-ips "
                                "meta l4proto . th dport vmap @service-nodeports")
        # A fresh process finds no elements it knows: the containers are reset.
        for name, kind in CONTAINERS.items():
            tx.add(f"flush {kind} {t} {name}")


def _signature(sp: ServicePort) -> tuple:
    """Everything of *sp* its rules depend on (Endpoint equality ignores conditions)."""
    return (sp, tuple((e.ip, e.port, e.ready, e.serving, e.terminating, e.local)
                      for e in sp.endpoints))


class _ServicePortWriter:
    """syncProxyRules' loop body for one service port."""

    def __init__(self, proxier: NftablesProxier, sp: ServicePort, tx: _Tx,
                 wanted: dict, active_chains: set[str], active_sets: set[str], skip: bool):
        self.p, self.sp, self.tx, self.skip = proxier, sp, tx, skip
        self.wanted, self.active_chains, self.active_sets = wanted, active_chains, active_sets
        cfg = proxier.config
        self.ipx = "ip" if cfg.family == 4 else "ip6"
        self.cfg = cfg

    def ensure_chain(self, chain: str) -> None:
        if chain in self.active_chains:
            return
        self.active_chains.add(chain)
        if not self.skip:
            self.tx.chain(chain)
            self.tx.chain(chain, "flush")

    def elem(self, container: str, key: str, value: str = "", comment: str | None = None) -> None:
        self.wanted[(container, key)] = Element(container, key, value, comment)

    def write(self) -> None:
        sp, tx, ipx, cfg = self.sp, self.tx, self.ipx, self.cfg
        proto = sp.proto
        svc_args = (sp.service, sp.port_name, sp.protocol)
        cluster_chain, local_chain = names.nft_service_chain(*svc_args), names.nft_local_chain(*svc_args)
        ext_chain, fw_chain = names.nft_external_chain(*svc_args), names.nft_firewall_chain(*svc_args)
        cluster_eps, local_eps, reachable, has_endpoints = sp.categorized

        bases: dict = {}

        def ep_base(ep) -> str:
            if ep not in bases:
                bases[ep] = names.nft_endpoint_base(sp.service, sp.port_name, sp.protocol,
                                                    ep.ip, ep.port)
            return bases[ep]
        for ep in reachable:
            self.ensure_chain("endpoint-" + ep_base(ep))
            if sp.affinity_timeout:
                self.active_sets.add("affinity-" + ep_base(ep))
        uses_cluster_chain = bool(cluster_eps) and sp.uses_cluster_endpoints()
        if uses_cluster_chain:
            self.ensure_chain(cluster_chain)
        uses_local_chain = bool(local_eps) and sp.uses_local_endpoints()
        if uses_local_chain:
            self.ensure_chain(local_chain)
        internal_chain, has_internal = cluster_chain, has_endpoints
        if sp.internal_local:
            internal_chain = local_chain
            has_internal = has_internal and bool(local_eps)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if sp.external_policy_local:
            external_policy_chain = local_chain
            has_external = has_external and bool(local_eps)
        uses_ext_chain = has_endpoints and sp.external
        if uses_ext_chain:
            self.ensure_chain(ext_chain)
        if not has_endpoints:
            internal_verdict = external_verdict = "goto reject-chain"
        else:
            internal_verdict = "" if has_internal else "drop"
            external_verdict = "" if has_external else "drop"

        port = sp.port
        if sp.cluster_ip:
            self.elem("cluster-ips", sp.cluster_ip)
            key = f"{sp.cluster_ip} . {proto} . {port}"
            if has_internal:
                self.elem("service-ips", key, f"goto {internal_chain}")
            else:
                self.elem("no-endpoint-services", key, internal_verdict, sp.name)
        for ext in sp.external_ips:
            key = f"{ext} . {proto} . {port}"
            if has_endpoints:
                self.elem("service-ips", key, f"goto {ext_chain}")
            if not has_external:
                self.elem("no-endpoint-services", key, external_verdict, sp.name)
        uses_fw = bool(sp.lb_ips) and bool(sp.source_ranges)
        if uses_fw:
            self.ensure_chain(fw_chain)
            sources = list(sp.source_ranges)
            node_ip = cfg.node_ip
            if node_ip and any(ipaddress.ip_address(node_ip) in ipaddress.ip_network(c, strict=False)
                               for c in sp.source_ranges):
                sources += list(sp.lb_ips)
            if not self.skip:
                tx.rule(fw_chain, f"{ipx} saddr != {{ {' , '.join(sources)} }} drop")
        for lb in sp.lb_ips:
            key = f"{lb} . {proto} . {port}"
            if has_endpoints:
                self.elem("service-ips", key, f"goto {ext_chain}")
            if uses_fw:
                self.elem("firewall-ips", key, f"goto {fw_chain}")
        if not has_external:
            for lb in sp.lb_ips:
                self.elem("no-endpoint-services", f"{lb} . {proto} . {port}", external_verdict,
                          sp.name)
        if sp.node_port:
            key = f"{proto} . {sp.node_port}"
            if has_endpoints:
                self.elem("service-nodeports", key, f"goto {ext_chain}")
            if not has_external:
                self.elem("no-endpoint-nodeports", key, external_verdict, sp.name)
        if self.skip:
            return

        # Affinity sets of the endpoints, created before the rules using them.
        if sp.affinity_timeout:
            addr_type = "ipv4_addr" if cfg.family == 4 else "ipv6_addr"
            for ep in reachable:
                tx.add(f"add set {self.p.table} affinity-{ep_base(ep)} {{ type {addr_type} ; "
                       f"flags dynamic,timeout ; timeout {sp.affinity_timeout}s ; }}")
        # Internal traffic.
        if has_internal and sp.cluster_ip:
            match = f"{ipx} daddr {sp.cluster_ip} {proto} dport {port}"
            if cfg.masquerade_all:
                tx.rule(internal_chain, f"{match} jump mark-for-masquerade")
            elif cfg.local_detector:
                tx.rule(internal_chain, f"{match} {ipx} saddr != {cfg.cluster_cidr} "
                                        "jump mark-for-masquerade")
        # External traffic.
        if uses_ext_chain:
            if not sp.external_policy_local:
                tx.rule(ext_chain, "jump mark-for-masquerade")
            else:
                if cfg.local_detector:
                    tx.rule(ext_chain, f"{ipx} saddr {cfg.cluster_cidr} goto {cluster_chain}",
                            "short-circuit pod traffic")
                tx.rule(ext_chain, "fib saddr type local jump mark-for-masquerade",
                        "masquerade local traffic")
                tx.rule(ext_chain, f"fib saddr type local goto {cluster_chain}",
                        "short-circuit local traffic")
            if has_external:
                tx.rule(ext_chain, f"goto {external_policy_chain}")
        if uses_cluster_chain:
            self.service_to_endpoints(cluster_chain, cluster_eps, ep_base)
        if uses_local_chain:
            self.service_to_endpoints(local_chain, local_eps, ep_base)
        for ep in reachable:
            chain = "endpoint-" + ep_base(ep)
            tx.rule(chain, f"{ipx} saddr {ep.ip} jump mark-for-masquerade")
            if sp.affinity_timeout:
                tx.rule(chain, f"update @affinity-{ep_base(ep)} {{ {ipx} saddr }}")
            tx.rule(chain, f"meta l4proto {proto} dnat to {ep}")

    def service_to_endpoints(self, chain: str, eps, ep_base) -> None:
        """writeServiceToEndpointRules."""
        if self.sp.affinity_timeout:
            for ep in eps:
                self.tx.rule(chain, f"{self.ipx} saddr @affinity-{ep_base(ep)} "
                                    f"goto endpoint-{ep_base(ep)}")
        vmap = " , ".join(f"{i} : goto endpoint-{ep_base(ep)}" for i, ep in enumerate(eps))
        self.tx.rule(chain, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")


# -- thin wrappers (what the harness and benchmarks call) ---------------------

def families(state: LbState) -> tuple[int, ...]:
    """The IP families *state* has kube-proxy frontends in (4 first)."""
    fams = {f.address.version for f in state.frontends if f.type != "HostPort"}
    return tuple(sorted(fams)) or (4,)


def render(state: LbState, config: ProxierConfig | None = None) -> str:
    """Full-sync ``nft -f`` transaction for *state* (one family: *config*'s, IPv4 by default)."""
    return NftablesProxier(config).sync(state)


def render_incremental(old: LbState, new: LbState, config: ProxierConfig | None = None) -> str:
    """The partial sync a v1.32 proxier that last synced *old* sends for *new*."""
    p = NftablesProxier(config)
    p.sync(old)
    return p.sync(new)


def stale_chain_cleanup(old: LbState, new: LbState, config: ProxierConfig | None = None) -> str:
    """The later transaction deleting the chains :func:`render_incremental` flushed
    (what the first sync at least one second later runs before its own)."""
    p = NftablesProxier(config)
    p.sync(old)
    p.sync(new)
    p.age_stale_chains()
    return p.stale_cleanup_text()


def stale_chains(old: LbState, new: LbState, config: ProxierConfig | None = None) -> set[str]:
    """Service chains *old* had that *new* no longer uses."""
    p = NftablesProxier(config)
    p.sync(old)
    p.sync(new)
    return p.stale_chains


def chain_names(sp: ServicePort, config: ProxierConfig | None = None) -> set[str]:
    """Service chains (names with a "/") kube-proxy keeps for *sp*."""
    p = NftablesProxier(config or ProxierConfig(family=sp.family))
    active: set[str] = set()
    _ServicePortWriter(p, sp, _Tx(p.table), {}, active, set(), True).write()
    return active


def elements(sp: ServicePort, config: ProxierConfig | None = None) -> dict[tuple[str, str], Element]:
    """Map and set elements of *sp*: (container, key) -> Element."""
    p = NftablesProxier(config or ProxierConfig(family=sp.family))
    wanted: dict = {}
    _ServicePortWriter(p, sp, _Tx(p.table), wanted, set(), set(), True).write()
    return wanted


def affinity_sets(sp: ServicePort, config: ProxierConfig | None = None) -> set[str]:
    p = NftablesProxier(config or ProxierConfig(family=sp.family))
    sets: set[str] = set()
    _ServicePortWriter(p, sp, _Tx(p.table), {}, set(), sets, True).write()
    return sets

