"""iptables-restore input as kube-proxy's iptables mode writes it (v1.31+).

Follows pkg/proxy/iptables/proxier.go syncProxyRules: tables filter and nat,
the top-level chains always rewritten (``:CHAIN - [0:0]`` lines flush them
under ``--noflush``), one KUBE-SVC chain per service port with endpoints,
KUBE-SEP per endpoint, KUBE-EXT for externally reachable ones, REJECT rules in
filter for service ports without endpoints, and ``-X`` for chains to delete.

Choices fixed here as kube-proxy's defaults on this node: masquerade bit 14
(mark 0x4000), local traffic detected by cluster CIDR 198.18.0.0/16,
``--random-fully`` on MASQUERADE, NodePorts on every local address.  Above
1000 endpoints kube-proxy enters "large cluster mode" and leaves the
per-service comments out of KUBE-SVC/KUBE-SEP rules; so does this renderer.

The jumps from the built-in chains are not restore input (kube-proxy inserts
them with ``iptables -I`` when missing): :data:`JUMPS` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from harness.lb.model import LbState

from . import names
from .model import ServicePort, service_ports

MASQ_MARK = "0x4000"
CLUSTER_CIDR = "198.18.0.0/16"
LARGE_CLUSTER_ENDPOINTS = 1000          # largeClusterEndpointsThreshold

# (table, chain to jump to, built-in chain, comment, extra match args) in
# kube-proxy's iptablesJumpChains order.
JUMPS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ()),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ()),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ()),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ()),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ()),
)

FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                 "KUBE-PROXY-FIREWALL")
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")


def jump_rule(jump: tuple[str, str, str, str, tuple[str, ...]]) -> list[str]:
    """iptables arguments (after ``-t TABLE -I/-C CHAIN``) of one base-chain jump."""
    _, dst, _, comment, extra = jump
    return [*extra, "-m", "comment", "--comment", comment, "-j", dst]


def probability(n: int) -> str:
    """kube-proxy's probability(n): 1/n printed with %0.10f."""
    return "%0.10f" % (1.0 / n)


@dataclass
class _Out:
    filter_rules: list[str]
    nat_chains: list[str]
    nat_rules: list[str]


def _q(text: str) -> str:
    return f'"{text}"'


class _Writer:
    def __init__(self, large: bool):
        self.large = large
        self.out = _Out([], [], [])

    def _comment(self, text: str) -> str:
        return "" if self.large else f"-m comment --comment {text} "

    def top_rules(self) -> None:
        o = self.out
        o.filter_rules += [
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
            f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
            '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]
        o.nat_rules += [
            f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        ]

    def dispatch(self, sp: ServicePort) -> None:
        """The service port's rules in the top-level chains (always rewritten)."""
        o, p, n = self.out, sp.proto, sp.name
        svc, ext = names.svc_chain(n, p), names.ext_chain(n, p)
        m = f"-m {p} -p {p}"
        if sp.cluster_endpoints:
            if sp.cluster_ip:
                o.nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{n} cluster IP" '
                                   f"{m} -d {sp.cluster_ip} --dport {sp.port} -j {svc}")
            for ip in sp.external_ips:
                o.nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{n} external IP" '
                                   f"{m} -d {ip} --dport {sp.port} -j {ext}")
            for ip in sp.lb_ips:
                o.nat_rules.append(f'-A KUBE-SERVICES -m comment --comment "{n} loadbalancer IP" '
                                   f"{m} -d {ip} --dport {sp.port} -j {ext}")
            if sp.node_port:
                o.nat_rules.append(f"-A KUBE-NODEPORTS -m comment --comment {n} "
                                   f"{m} --dport {sp.node_port} -j {ext}")
            return
        reject = f'-m comment --comment "{n} has no endpoints"'
        if sp.cluster_ip:
            o.filter_rules.append(f"-A KUBE-SERVICES {reject} {m} -d {sp.cluster_ip} "
                                  f"--dport {sp.port} -j REJECT")
        for ip in (*sp.external_ips, *sp.lb_ips):
            o.filter_rules.append(f"-A KUBE-EXTERNAL-SERVICES {reject} {m} -d {ip} "
                                  f"--dport {sp.port} -j REJECT")
        if sp.node_port:
            o.filter_rules.append(f"-A KUBE-EXTERNAL-SERVICES {reject} -m addrtype --dst-type "
                                  f"LOCAL {m} --dport {sp.node_port} -j REJECT")

    def service_chains(self, sp: ServicePort) -> None:
        """KUBE-SVC / KUBE-EXT / KUBE-SEP chains of one service port."""
        if not sp.cluster_endpoints:
            return
        o, p, n = self.out, sp.proto, sp.name
        svc, ext = names.svc_chain(n, p), names.ext_chain(n, p)
        seps = [(ep, names.sep_chain(n, p, str(ep))) for ep in sp.cluster_endpoints]
        o.nat_chains.append(f":{svc} - [0:0]")
        if sp.external:
            o.nat_chains.append(f":{ext} - [0:0]")
        o.nat_chains += [f":{sep} - [0:0]" for _, sep in seps]
        if sp.cluster_ip:
            o.nat_rules.append(f'-A {svc} -m comment --comment "{n} cluster IP" -m {p} -p {p} '
                               f"-d {sp.cluster_ip} --dport {sp.port} ! -s {CLUSTER_CIDR} "
                               "-j KUBE-MARK-MASQ")
        if sp.external:
            o.nat_rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {n} '
                               'external destinations" -j KUBE-MARK-MASQ')
            o.nat_rules.append(f"-A {ext} -j {svc}")
        if sp.affinity_timeout:
            for ep, sep in seps:
                o.nat_rules.append(f"-A {svc} {self._comment(_q(f'{n} -> {ep}'))}-m recent "
                                   f"--name {sep} --rcheck --seconds {sp.affinity_timeout} "
                                   f"--reap -j {sep}")
        count = len(seps)
        for i, (ep, sep) in enumerate(seps):
            stat = (f"-m statistic --mode random --probability {probability(count - i)} "
                    if i < count - 1 else "")
            o.nat_rules.append(f"-A {svc} {self._comment(_q(f'{n} -> {ep}'))}{stat}-j {sep}")
        for ep, sep in seps:
            c = self._comment(n)
            o.nat_rules.append(f"-A {sep} {c}-s {ep.ip} -j KUBE-MARK-MASQ")
            recent = f"-m recent --set --name {sep} " if sp.affinity_timeout else ""
            o.nat_rules.append(f"-A {sep} {c}{recent}-m {p} -p {p} -j DNAT "
                               f"--to-destination {ep}")

    def text(self, delete: Iterable[str] = ()) -> str:
        o = self.out
        lines = ["*filter", *(f":{c} - [0:0]" for c in FILTER_CHAINS), *o.filter_rules, "COMMIT",
                 "*nat", *(f":{c} - [0:0]" for c in NAT_CHAINS), *o.nat_chains]
        stale = sorted(set(delete))
        lines += [f":{c} - [0:0]" for c in stale]
        lines += o.nat_rules
        lines.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: '
                     'this must be the last rule in this chain" -m addrtype --dst-type LOCAL '
                     "-j KUBE-NODEPORTS")
        lines += [f"-X {c}" for c in stale]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _large(sps: Iterable[ServicePort]) -> bool:
    return sum(len(sp.cluster_endpoints) for sp in sps) > LARGE_CLUSTER_ENDPOINTS


def service_chain_names(sp: ServicePort) -> set[str]:
    """The nat chains kube-proxy keeps for *sp*."""
    if not sp.cluster_endpoints:
        return set()
    p, n = sp.proto, sp.name
    out = {names.svc_chain(n, p)} | {names.sep_chain(n, p, str(ep)) for ep in sp.cluster_endpoints}
    if sp.external:
        out.add(names.ext_chain(n, p))
    return out


def render_ports(sps: Iterable[ServicePort], changed: set[ServicePort] | None = None,
                 delete: Iterable[str] = ()) -> str:
    """Restore input for *sps*; with *changed*, service chains only of those."""
    sps = tuple(sps)
    w = _Writer(_large(sps))
    w.top_rules()
    for sp in sps:
        w.dispatch(sp)
        if changed is None or sp in changed:
            w.service_chains(sp)
    return w.text(delete)


def render(state: LbState) -> str:
    """Full-sync iptables-restore input (tables filter and nat) for *state*."""
    return render_ports(service_ports(state))


def render_incremental(old: LbState, new: LbState) -> str:
    """Partial-sync input: every top-level chain, the service chains of service
    ports that changed, and ``-X`` for chains no longer used."""
    old_sps, new_sps = set(service_ports(old)), service_ports(new)
    changed = {sp for sp in new_sps if sp not in old_sps}
    keep = set().union(*(service_chain_names(sp) for sp in new_sps))
    gone = set().union(*(service_chain_names(sp) for sp in old_sps)) - keep
    return render_ports(new_sps, changed, gone)
