"""iptables-restore input as kube-proxy's iptables mode writes it (v1.31).

A port of pkg/proxy/iptables/proxier.go syncProxyRules: tables filter and nat;
the top-level chains always rewritten (``:CHAIN - [0:0]`` lines flush them
under ``--noflush``); per service port KUBE-SVC (Cluster policy endpoints),
KUBE-SVL (Local policy endpoints), KUBE-EXT (external destinations, with the
short-circuit rules of externalTrafficPolicy: Local), KUBE-FW
(loadBalancerSourceRanges) and KUBE-SEP per endpoint; REJECT / DROP rules in
filter for service ports without (local) endpoints; health-check node ports
accepted in filter KUBE-NODEPORTS; KUBE-PROXY-FIREWALL dropping load-balancer
traffic the KUBE-FW chain did not accept; KUBE-FIREWALL (the anti-martian rule
for NodePorts on 127.0.0.0/8) when localhost NodePorts are on (IPv4 only);
``-X`` for stale chains.  IPv6 renders the same way for ip6tables-restore.

:class:`IptablesProxier` keeps what the last sync wrote, as kube-proxy does:
a partial sync rewrites the service chains only of services whose ports or
endpoints changed; stale chains are deleted at once, except in large-cluster
mode (over 1000 endpoints, where comments are also left out of KUBE-SVC /
KUBE-SEP rules) where deletion waits until a sync period has passed since the
last cleanup.  :func:`render` and :func:`render_incremental` are thin wrappers.

The settings that shape the output come from
:class:`harness.kubeproxy.model.ProxierConfig`; the defaults match this
project's nodes (cluster CIDR 198.18.0.0/16, masquerade bit 14 written as
kube-proxy's ``%#08x``: 0x00004000, ``--random-fully``, NodePorts on every
local address including 127.0.0.0/8, no nfacct counters).

The jumps from the built-in chains are not restore input (kube-proxy ensures
them with ``iptables -C`` / ``-I``): :data:`JUMPS` lists them.
"""
from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from harness.lb.model import LbState

from . import names
from .model import Endpoint, ProxierConfig, ServicePort, service_ports

LARGE_CLUSTER_ENDPOINTS = 1000          # largeClusterEndpointsThreshold
DEFAULT_SYNC_PERIOD = 30.0              # --iptables-sync-period default, seconds

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"          # kubeletFirewallChain

INVALID_NFACCT = "ct_state_invalid_dropped_pkts"
LOCALHOST_NFACCT = "localhost_nps_accepted_pkts"

# (table, chain to jump to, built-in chain, comment, extra match args) in
# kube-proxy's iptablesJumpChains + iptablesKubeletJumpChains order.
JUMPS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ()),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ()),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ()),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ()),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ()),
    ("filter", KUBE_FIREWALL, "INPUT", "", ()),
    ("filter", KUBE_FIREWALL, "OUTPUT", "", ()),
)

SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")


def jump_rule(jump: tuple[str, str, str, str, tuple[str, ...]]) -> list[str]:
    """iptables arguments (after ``-t TABLE -I/-C CHAIN``) of one base-chain jump."""
    _, dst, _, comment, extra = jump
    return [*extra, *(("-m", "comment", "--comment", comment) if comment else ()), "-j", dst]


def probability(n: int) -> str:
    """kube-proxy's computeProbability(n): 1/n printed with %0.10f."""
    return "%0.10f" % (1.0 / n)


def is_service_chain(chain: str) -> bool:
    return chain.startswith(SERVICE_CHAIN_PREFIXES)


def _zero_cidr(cidr: str) -> bool:
    return cidr.strip() in ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class NodePortAddresses:
    """proxyutil.NodePortAddresses for one family: --nodeport-addresses filtered
    to the family; none left means every address (MatchAll)."""
    cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    match_all: bool
    contains_ipv4_loopback: bool

    @classmethod
    def of(cls, family: int, cidr_strings: Iterable[str]) -> "NodePortAddresses":
        strs = [s for s in cidr_strings if (ipaddress.ip_network(s.strip(), strict=False).version == 4)
                == (family == 4)]
        if not strs:
            strs = ["0.0.0.0/0" if family == 4 else "::/0"]
        cidrs, match_all, loop4 = [], False, False
        for s in strs:
            net = ipaddress.ip_network(s.strip(), strict=False)
            if net.version == 4 and (net.network_address.is_loopback
                                     or ipaddress.ip_address("127.0.0.1") in net):
                loop4 = True
            if _zero_cidr(s):
                match_all = True
                break
            cidrs.append(net)
        return cls(tuple(cidrs), match_all, loop4)

    def node_ips(self, addresses: Iterable[str]) -> list[str]:
        """GetNodeIPs: the local addresses inside the CIDRs (deduplicated, sorted)."""
        out = set()
        for a in addresses:
            ip = ipaddress.ip_address(a)
            if any(ip.version == c.version and ip in c for c in self.cidrs):
                out.add(ip)
        return [str(ip) for ip in sorted(out)]


@dataclass
class _Buffers:
    filter_chains: list[str] = field(default_factory=list)
    filter_rules: list[str] = field(default_factory=list)
    nat_chains: list[str] = field(default_factory=list)
    nat_rules: list[str] = field(default_factory=list)


def _q(text: str) -> str:
    return f'"{text}"'


def _chain_line(chain: str) -> str:
    return f":{chain} - [0:0]"


class IptablesProxier:
    """One iptables-mode kube-proxy (one family) across syncs.

    :meth:`sync` returns the restore input for a state and remembers what it
    wrote; when loading that input fails, call :meth:`restore_failed` (kube-proxy
    then forgets the failed sync and does a full one next).  ``last_cleanup``
    and ``clock`` (monotonic seconds) govern the large-cluster deferred deletion.
    """

    def __init__(self, config: ProxierConfig | None = None,
                 sync_period: float = DEFAULT_SYNC_PERIOD,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config or ProxierConfig()
        self.sync_period = sync_period
        self.clock = clock
        self.need_full_sync = True
        self.last_cleanup = -math.inf
        self.large_cluster_mode = False
        #: service (ns/name) -> its service ports at the last successful sync
        self._services: dict[str, tuple[ServicePort, ...]] = {}
        #: nat service chains believed to exist (written and not deleted)
        self._existing: set[str] = set()
        self._undo: tuple | None = None
        cfg = self.config
        self.nodeport_addresses = NodePortAddresses.of(cfg.family, cfg.nodeport_addresses)
        # NewProxier: localhost NodePorts need 127.0.0.0/8 among --nodeport-addresses.
        self.localhost_nodeports = (cfg.localhost_nodeports
                                    and self.nodeport_addresses.contains_ipv4_loopback)

    # -- configuration views ------------------------------------------------

    @property
    def ipv6(self) -> bool:
        return self.config.family == 6

    @property
    def node_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        for a in self.config.node_ips:
            ip = ipaddress.ip_address(a)
            if ip.version == self.config.family:
                return ip
        return None

    def _local_addresses(self) -> list[str]:
        loop = "::1" if self.ipv6 else "127.0.0.1"
        return [loop, *(a for a in self.config.node_ips
                        if ipaddress.ip_address(a).version == self.config.family)]

    def _if_not_local(self) -> str:
        return f"! -s {self.config.cluster_cidr}"

    def _if_local(self) -> str:
        return f"-s {self.config.cluster_cidr}"

    # -- syncing ------------------------------------------------------------

    def sync(self, state: LbState | Iterable[ServicePort], full: bool = False) -> str:
        """Restore input for one syncProxyRules run on *state* (an LbState or the
        service ports of this proxier's family)."""
        sps = (service_ports(state, self.config) if isinstance(state, LbState)
               else tuple(state))
        do_full = self.need_full_sync or full
        grouped: dict[str, tuple[ServicePort, ...]] = {}
        for sp in sps:
            grouped[sp.service] = grouped.get(sp.service, ()) + (sp,)
        updated = {s for s in set(grouped) | set(self._services)
                   if grouped.get(s) != self._services.get(s)}
        cfg, mark = self.config, self.config.masquerade_mark_str
        b = _Buffers()
        b.filter_chains += [_chain_line(c) for c in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES,
                                                      KUBE_FORWARD, KUBE_NODEPORTS,
                                                      KUBE_PROXY_FIREWALL)]
        b.nat_chains += [_chain_line(c) for c in (KUBE_SERVICES, KUBE_NODEPORTS,
                                                  KUBE_POSTROUTING, KUBE_MARK_MASQ)]
        b.nat_rules += [
            f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring '
            f'SNAT" -j MASQUERADE' + (" --random-fully" if cfg.random_fully else ""),
            f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
        ]
        if not self.ipv6 and self.localhost_nodeports:
            b.filter_chains.append(_chain_line(KUBE_FIREWALL))
            b.filter_rules.append(
                f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate "
                "RELATED,ESTABLISHED,DNAT -j DROP")
        active: set[str] = set()
        total = sum(len(sp.endpoints) for sp in sps)
        self.large_cluster_mode = total > LARGE_CLUSTER_ENDPOINTS
        written: set[str] = set()
        for sp in sps:
            skip = not do_full and sp.service not in updated
            self._service_port(b, sp, active, None if skip else written)
        deleted: list[str] = []
        now = self.clock()
        if not self.large_cluster_mode or now - self.last_cleanup > self.sync_period:
            for chain in sorted(self._existing - active):
                if is_service_chain(chain):
                    b.nat_chains.append(_chain_line(chain))
                    b.nat_rules.append(f"-X {chain}")
                    deleted.append(chain)
            self.last_cleanup = now
        self._nodeports_jump(b)
        if not cfg.conntrack_tcp_liberal:
            b.filter_rules.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID"
                                  + (f" -m nfacct --nfacct-name {INVALID_NFACCT}"
                                     if cfg.nfacct else "") + " -j DROP")
        b.filter_rules += [
            f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
            f"-m mark --mark {mark}/{mark} -j ACCEPT",
            f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]
        self._undo = (self.need_full_sync, dict(self._services), set(self._existing))
        self.need_full_sync = False
        self._services = grouped
        self._existing = (self._existing | written) - set(deleted)
        lines = ["*filter", *b.filter_chains, *b.filter_rules, "COMMIT",
                 "*nat", *b.nat_chains, *b.nat_rules, "COMMIT"]
        return "\n".join(lines) + "\n"

    def restore_failed(self) -> None:
        """The last sync's input was rejected: forget it; the next sync is full."""
        if self._undo is not None:
            _, self._services, self._existing = self._undo
            self._undo = None
        self.need_full_sync = True

    # -- one service port -----------------------------------------------------

    def _comment(self, text: str) -> str:
        return "" if self.large_cluster_mode else f"-m comment --comment {text} "

    def _service_port(self, b: _Buffers, sp: ServicePort, active: set[str],
                      written: set[str] | None) -> None:
        """syncProxyRules' loop body; *written* None: the service is unchanged
        (a partial sync computes its chains but leaves them out)."""
        cfg = self.config
        p, n = sp.proto, sp.name
        m = f"-m {p} -p {p}"
        cluster_eps, local_eps, reachable, has_endpoints = sp.categorized
        cluster_chain = names.svc_chain(n, p)
        local_chain = names.svl_chain(n, p)
        ext_chain = names.ext_chain(n, p)
        fw_chain = names.fw_chain(n, p)
        uses_cluster_chain = bool(cluster_eps) and sp.uses_cluster_endpoints()
        uses_local_chain = bool(local_eps) and sp.uses_local_endpoints()
        internal_chain, has_internal = cluster_chain, has_endpoints
        if sp.internal_local:
            internal_chain = local_chain
            if not local_eps:
                has_internal = False
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if sp.external_policy_local:
            external_policy_chain = local_chain
            if not local_eps:
                has_external = False
        uses_ext_chain = has_endpoints and sp.external
        lb_chain = ext_chain
        uses_fw = has_endpoints and bool(sp.lb_ips) and bool(sp.source_ranges)
        if uses_fw:
            lb_chain = fw_chain
        int_target = int_comment = ext_target = ext_comment = ""
        if not has_endpoints:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = _q(f"{n} has no endpoints")
        else:
            if not has_internal:
                int_target, int_comment = "DROP", _q(f"{n} has no local endpoints")
            if not has_external:
                ext_target, ext_comment = "DROP", _q(f"{n} has no local endpoints")

        # Capture the clusterIP.
        if sp.cluster_ip:
            if has_internal:
                b.nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{n} cluster IP" '
                                   f"{m} -d {sp.cluster_ip} --dport {sp.port} -j {internal_chain}")
            else:
                b.filter_rules.append(f"-A {KUBE_SERVICES} -m comment --comment {int_comment} "
                                      f"{m} -d {sp.cluster_ip} --dport {sp.port} -j {int_target}")
        # Capture externalIPs.
        for ip in sp.external_ips:
            if has_endpoints:
                b.nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{n} external IP" '
                                   f"{m} -d {ip} --dport {sp.port} -j {ext_chain}")
            if not has_external:
                b.filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment "
                                      f"{ext_comment} {m} -d {ip} --dport {sp.port} -j {ext_target}")
        # Capture load-balancer ingress.
        for ip in sp.lb_ips:
            if has_endpoints:
                b.nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{n} loadbalancer IP" '
                                   f"{m} -d {ip} --dport {sp.port} -j {lb_chain}")
            if uses_fw:
                b.filter_rules.append(f"-A {KUBE_PROXY_FIREWALL} -m comment --comment "
                                      f'"{n} traffic not accepted by {fw_chain}" {m} -d {ip} '
                                      f"--dport {sp.port} -j DROP")
        if not has_external:
            for ip in sp.lb_ips:
                b.filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment "
                                      f"{ext_comment} {m} -d {ip} --dport {sp.port} -j {ext_target}")
        # Capture nodeports.
        if sp.node_port:
            if has_endpoints:
                if self.localhost_nodeports and not self.ipv6 and cfg.nfacct:
                    b.nat_rules.append(f"-A {KUBE_NODEPORTS} -m comment --comment {n} {m} "
                                       f"-d 127.0.0.0/8 --dport {sp.node_port} -m nfacct "
                                       f"--nfacct-name {LOCALHOST_NFACCT} -j {ext_chain}")
                b.nat_rules.append(f"-A {KUBE_NODEPORTS} -m comment --comment {n} {m} "
                                   f"--dport {sp.node_port} -j {ext_chain}")
            if not has_external:
                b.filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment "
                                      f"{ext_comment} -m addrtype --dst-type LOCAL {m} "
                                      f"--dport {sp.node_port} -j {ext_target}")
        # Capture healthCheckNodePorts.
        if sp.health_check_node_port:
            b.filter_rules.append(f"-A {KUBE_NODEPORTS} -m comment --comment "
                                  f'"{n} health check node port" -m tcp -p tcp '
                                  f"--dport {sp.health_check_node_port} -j ACCEPT")

        chains: list[str] = []
        rules: list[str] = []
        # Internal traffic handling.
        if has_internal and sp.cluster_ip:
            args = (f'-m comment --comment "{n} cluster IP" {m} -d {sp.cluster_ip} '
                    f"--dport {sp.port}")
            if cfg.masquerade_all:
                rules.append(f"-A {internal_chain} {args} -j {KUBE_MARK_MASQ}")
            elif cfg.local_detector:
                rules.append(f"-A {internal_chain} {args} {self._if_not_local()} "
                             f"-j {KUBE_MARK_MASQ}")
        # External traffic handling.
        if uses_ext_chain:
            chains.append(ext_chain)
            if not sp.external_policy_local:
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade traffic for {n} '
                             f'external destinations" -j {KUBE_MARK_MASQ}')
            else:
                if cfg.local_detector:
                    rules.append(f'-A {ext_chain} -m comment --comment "pod traffic for {n} '
                                 f'external destinations" {self._if_local()} -j {cluster_chain}')
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for '
                             f'{n} external destinations" -m addrtype --src-type LOCAL '
                             f"-j {KUBE_MARK_MASQ}")
                rules.append(f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {n} '
                             f'external destinations" -m addrtype --src-type LOCAL '
                             f"-j {cluster_chain}")
            if has_external:
                rules.append(f"-A {ext_chain} -j {external_policy_chain}")
        # Firewall chain.
        if uses_fw:
            chains.append(fw_chain)
            head = f'-A {fw_chain} -m comment --comment "{n} loadbalancer IP"'
            allow_from_node = False
            node_ip = self.node_ip
            for cidr in sp.source_ranges:
                rules.append(f"{head} -s {cidr} -j {ext_chain}")
                net = ipaddress.ip_network(cidr, strict=False)
                if node_ip is not None and node_ip.version == net.version and node_ip in net:
                    allow_from_node = True
            if allow_from_node:
                for ip in sp.lb_ips:
                    rules.append(f"{head} -s {ip} -j {ext_chain}")
            rules.append(f'-A {fw_chain} -m comment --comment "other traffic to {n} will be '
                         'dropped by KUBE-PROXY-FIREWALL"')
        if uses_cluster_chain:
            chains.append(cluster_chain)
            rules += self._service_to_endpoints(sp, cluster_chain, cluster_eps)
        if uses_local_chain:
            chains.append(local_chain)
            rules += self._service_to_endpoints(sp, local_chain, local_eps)
        for ep in reachable:
            sep = names.sep_chain(n, p, str(ep))
            chains.append(sep)
            c = self._comment(n)
            rules.append(f"-A {sep} {c}-s {ep.ip} -j {KUBE_MARK_MASQ}")
            recent = f"-m recent --name {sep} --set " if sp.affinity_timeout else ""
            rules.append(f"-A {sep} {c}{recent}{m} -j DNAT --to-destination {ep}")
        active.update(chains)
        if written is not None:
            written.update(chains)
            b.nat_chains += [_chain_line(c) for c in chains]
            b.nat_rules += rules

    def _service_to_endpoints(self, sp: ServicePort, chain: str,
                              eps: tuple[Endpoint, ...]) -> list[str]:
        """writeServiceToEndpointRules: affinity checks, then the random spread."""
        p, n = sp.proto, sp.name
        out = []
        seps = [(ep, names.sep_chain(n, p, str(ep))) for ep in eps]
        if sp.affinity_timeout:
            for ep, sep in seps:
                out.append(f"-A {chain} {self._comment(_q(f'{n} -> {ep}'))}-m recent --name {sep} "
                           f"--rcheck --seconds {sp.affinity_timeout} --reap -j {sep}")
        count = len(seps)
        for i, (ep, sep) in enumerate(seps):
            stat = (f"-m statistic --mode random --probability {probability(count - i)} "
                    if i < count - 1 else "")
            out.append(f"-A {chain} {self._comment(_q(f'{n} -> {ep}'))}{stat}-j {sep}")
        return out

    def _nodeports_jump(self, b: _Buffers) -> None:
        """The last KUBE-SERVICES rule: on to KUBE-NODEPORTS for local destinations."""
        comment = ('-m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                   'last rule in this chain"')
        if self.nodeport_addresses.match_all:
            dest = "-m addrtype --dst-type LOCAL"
            if self.ipv6:
                dest += " ! -d ::1/128"
            elif not self.localhost_nodeports:
                dest += " ! -d 127.0.0.0/8"
            b.nat_rules.append(f"-A {KUBE_SERVICES} {comment} {dest} -j {KUBE_NODEPORTS}")
            return
        for ip in self.nodeport_addresses.node_ips(self._local_addresses()):
            if ipaddress.ip_address(ip).is_loopback and (self.ipv6 or not self.localhost_nodeports):
                continue
            b.nat_rules.append(f"-A {KUBE_SERVICES} {comment} -d {ip} -j {KUBE_NODEPORTS}")


def service_chain_names(sp: ServicePort, config: ProxierConfig | None = None) -> set[str]:
    """The nat chains kube-proxy keeps for *sp* (its activeNATChains)."""
    proxier = IptablesProxier(config)
    active: set[str] = set()
    proxier._service_port(_Buffers(), sp, active, None)
    return active


def families(state: LbState) -> tuple[int, ...]:
    """The IP families *state* has (non-HostPort) frontends in; always 4 at least."""
    v6 = any(f.type != "HostPort" and f.address.version == 6 for f in state.frontends)
    return (4, 6) if v6 else (4,)


def render(state: LbState, config: ProxierConfig | None = None) -> str:
    """Full-sync restore input (tables filter and nat) for *state* in *config*'s
    family (IPv4 by default; render IPv6 with ``ProxierConfig(family=6)``)."""
    return IptablesProxier(config).sync(state)


def render_incremental(old: LbState, new: LbState, config: ProxierConfig | None = None) -> str:
    """The partial sync kube-proxy runs after a full sync of *old*, when the state
    becomes *new*: top-level chains, the chains of services that changed, ``-X``
    for chains no longer used."""
    proxier = IptablesProxier(config)
    proxier.sync(old)
    return proxier.sync(new)
