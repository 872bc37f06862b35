"""Loading kube-proxy's rules into a project namespace, timed.

Everything runs inside a ``cb-*`` namespace through ``ip netns exec``; the
root namespace is never touched.  iptables input goes through
``iptables-restore --noflush --counters`` (``ip6tables-restore`` for IPv6) as
kube-proxy runs it (``-w`` for
the xtables lock), with either the nf_tables backend (``iptables-restore``
on this machine; :func:`iptables_backend` reads ``iptables --version``) or the
legacy one (``iptables-legacy-restore``) when installed.  nftables input goes
through ``nft -f -`` in one transaction.  Every apply function returns the
elapsed wall-clock seconds of the load alone (rendering excluded).
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time

from harness.host import netns
from harness.lb.model import LbState
from harness.errors import ChainbenchError

from . import iptables as ipt
from . import nftables as nft
from .model import ProxierConfig

BACKENDS = {"nft": ("iptables", "iptables-restore"),
            "legacy": ("iptables-legacy", "iptables-legacy-restore")}
#: the IPv6 binaries of each backend (ip6tables-restore for kube-proxy's IPv6 proxier)
BACKENDS6 = {"nft": ("ip6tables", "ip6tables-restore"),
             "legacy": ("ip6tables-legacy", "ip6tables-legacy-restore")}


def _binaries(backend: str, family: int) -> tuple[str, str]:
    return (BACKENDS if family == 4 else BACKENDS6)[backend]


class ApplyError(ChainbenchError, RuntimeError):
    """A restore or nft transaction was rejected."""


def available_backends() -> tuple[str, ...]:
    """iptables backends whose restore binary is installed ("nft", "legacy")."""
    out = []
    for name, (cli, restore) in BACKENDS.items():
        if shutil.which(restore) and shutil.which(cli):
            if name == "nft" and iptables_backend() != "nf_tables":
                continue
            out.append(name)
    return tuple(out)


def iptables_backend(cli: str = "iptables") -> str:
    """"nf_tables" or "legacy", from ``iptables --version``."""
    proc = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True)
    m = re.search(r"\((nf_tables|legacy)\)", proc.stdout)
    return m.group(1) if m else "legacy"


def _run(ns: str, cmd: list[str], data: str, timeout: float) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=data, capture_output=True,
                          text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise ApplyError(f"[{ns}] {' '.join(cmd)}: exit {proc.returncode}: "
                         f"{proc.stderr.strip()[:2000]}")
    return elapsed


def restore(ns: str, text: str, backend: str = "nft", timeout: float = 900,
            noflush: bool = True, family: int = 4) -> float:
    """Feed iptables-restore input (ip6tables-restore with *family* 6) to
    *backend* in *ns*; seconds taken.

    kube-proxy always passes --noflush.  Without it the tables are replaced
    whole, which on iptables-nft 1.8.x avoids a per-chain name list that makes
    --noflush restores of large inputs super-quadratic (README, kube-proxy
    baselines)."""
    _, binary = _binaries(backend, family)
    flags = ["-w", "--noflush", "--counters"] if noflush else ["-w", "--counters"]
    return _run(ns, [binary, *flags], text, timeout)


def ensure_jumps(ns: str, backend: str = "nft", family: int = 4) -> None:
    """kube-proxy's EnsureChain + EnsureRule(Prepend) for every built-in-chain
    jump (iptablesJumpChains and iptablesKubeletJumpChains), when missing."""
    cli, _ = _binaries(backend, family)
    for jump in ipt.JUMPS:
        table, dst, chain, _, _ = jump
        if netns.run(ns, cli, "-w", "-t", table, "-S", dst, check=False).returncode != 0:
            netns.run(ns, cli, "-w", "-t", table, "-N", dst)
        args = ipt.jump_rule(jump)
        check = netns.run(ns, cli, "-w", "-t", table, "-C", chain, *args, check=False)
        if check.returncode != 0:
            netns.run(ns, cli, "-w", "-t", table, "-I", chain, *args)


def family_config(config: ProxierConfig | None, family: int) -> ProxierConfig:
    """*config* for the proxier of *family* (the family's default CIDRs when the
    family changes)."""
    if config is None:
        return ProxierConfig(family=family)
    if config.family == family:
        return config
    return dataclasses.replace(config, family=family, cluster_cidr=None, service_cidrs=None)


def apply_iptables(ns: str, state: LbState, backend: str = "nft", timeout: float = 900,
                   config: ProxierConfig | None = None) -> float:
    """A full kube-proxy iptables sync of *state* in *ns*: the base-chain jumps,
    then the rules, with iptables-restore for IPv4 and, when *state* has IPv6
    frontends, ip6tables-restore for IPv6 (kube-proxy's dual-stack proxier).
    Seconds the restores took."""
    seconds = 0.0
    for family in ipt.families(state):
        cfg = family_config(config, family)
        if family == 4 and ipt.IptablesProxier(cfg).localhost_nodeports:
            # NewProxier: NodePorts on 127.0.0.0/8 need route_localnet (issue 90259).
            netns.run(ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
        ensure_jumps(ns, backend, family)
        seconds += restore(ns, ipt.render(state, cfg), backend, timeout, family=family)
    return seconds


def incremental_iptables(ns: str, old: LbState, new: LbState, backend: str = "nft",
                         timeout: float = 900, config: ProxierConfig | None = None) -> float:
    """A partial sync from *old* (already loaded) to *new*, per family."""
    seconds = 0.0
    for family in sorted(set(ipt.families(old)) | set(ipt.families(new))):
        seconds += restore(ns, ipt.render_incremental(old, new, family_config(config, family)),
                           backend, timeout, family=family)
    return seconds


def nft_load(ns: str, text: str, timeout: float = 900) -> float:
    """Run one ``nft -f -`` transaction in *ns*; seconds taken."""
    return _run(ns, ["nft", "-f", "-"], text, timeout)


def apply_nft(ns: str, state: LbState, timeout: float = 900,
              config: ProxierConfig | None = None) -> float:
    """A full kube-proxy nftables sync of *state* in *ns*: ``ip kube-proxy``, and
    ``ip6 kube-proxy`` too when *state* has IPv6 frontends (a dual-stack kube-proxy
    runs one proxier per family), each with *config* in its family (node name, node
    IPs, masqueradeAll, --nodeport-addresses...)."""
    return sum(nft_load(ns, nft.render(state, family_config(config, f)), timeout)
               for f in nft.families(state))


def incremental_nft(ns: str, old: LbState, new: LbState, timeout: float = 900,
                    config: ProxierConfig | None = None) -> float:
    """The partial sync kube-proxy v1.32 sends from *old* (already loaded) to *new*
    (element deltas, changed Services' chains, stale chains flushed), then the
    stale-chain deletion it runs in a later transaction; both timed together."""
    seconds = 0.0
    loaded = set(nft.families(old))
    for fam in sorted(loaded | set(nft.families(new))):
        cfg = family_config(config, fam)
        if fam not in loaded:       # this family's proxier syncs for the first time
            seconds += nft_load(ns, nft.render(new, cfg), timeout)
            continue
        seconds += nft_load(ns, nft.render_incremental(old, new, cfg), timeout)
        cleanup = nft.stale_chain_cleanup(old, new, cfg)
        if cleanup:
            seconds += nft_load(ns, cleanup, timeout)
    return seconds


METHODS = ("iptables-nft", "iptables-legacy", "nft")


def measure_full_sync(state: LbState, method: str, ns: str = "cb-kp-measure",
                      timeout: float = 1800) -> float:
    """Seconds one full sync of *state* takes with *method* (one of
    :data:`METHODS`) in a fresh namespace *ns*, removed afterwards."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    netns.create(ns)
    try:
        if method == "nft":
            return apply_nft(ns, state, timeout)
        return restore(ns, ipt.render(state), method.split("-", 1)[1], timeout)
    finally:
        netns.delete(ns)
