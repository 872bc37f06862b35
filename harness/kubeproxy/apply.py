"""Loading kube-proxy's rules into a project namespace, timed.

Everything runs inside a ``cb-*`` namespace through ``ip netns exec``; the
root namespace is never touched.  iptables input goes through
``iptables-restore --noflush --counters`` as kube-proxy runs it (``-w`` for
the xtables lock), with either the nf_tables backend (``iptables-restore``
on this machine; :func:`iptables_backend` reads ``iptables --version``) or the
legacy one (``iptables-legacy-restore``) when installed.  nftables input goes
through ``nft -f -`` in one transaction.  Every apply function returns the
elapsed wall-clock seconds of the load alone (rendering excluded).
"""
from __future__ import annotations

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
            noflush: bool = True) -> float:
    """Feed iptables-restore input to *backend* in *ns*; seconds taken.

    kube-proxy always passes --noflush.  Without it the tables are replaced
    whole, which on iptables-nft 1.8.x avoids a per-chain name list that makes
    --noflush restores of large inputs super-quadratic (README, kube-proxy
    baselines)."""
    _, binary = BACKENDS[backend]
    flags = ["-w", "--noflush", "--counters"] if noflush else ["-w", "--counters"]
    return _run(ns, [binary, *flags], text, timeout)


def ensure_jumps(ns: str, backend: str = "nft") -> None:
    """Insert the built-in-chain jumps kube-proxy ensures, when missing."""
    cli, _ = BACKENDS[backend]
    for jump in ipt.JUMPS:
        table, _, chain, _, _ = jump
        args = ipt.jump_rule(jump)
        check = netns.run(ns, cli, "-w", "-t", table, "-C", chain, *args, check=False)
        if check.returncode != 0:
            netns.run(ns, cli, "-w", "-t", table, "-I", chain, *args)


def apply_iptables(ns: str, state: LbState, backend: str = "nft", timeout: float = 900) -> float:
    """A full kube-proxy iptables sync of *state* in *ns* (chains, then base jumps)."""
    seconds = restore(ns, ipt.render(state), backend, timeout)
    ensure_jumps(ns, backend)
    return seconds


def incremental_iptables(ns: str, old: LbState, new: LbState, backend: str = "nft",
                         timeout: float = 900) -> float:
    """A partial sync from *old* (already loaded) to *new*."""
    return restore(ns, ipt.render_incremental(old, new), backend, timeout)


def nft_load(ns: str, text: str, timeout: float = 900) -> float:
    """Run one ``nft -f -`` transaction in *ns*; seconds taken."""
    return _run(ns, ["nft", "-f", "-"], text, timeout)


def _nft_config(family: int, node: str | None, node_ips: tuple[str, ...]) -> ProxierConfig:
    return ProxierConfig(family=family, hostname=node, node_ips=tuple(node_ips))


def apply_nft(ns: str, state: LbState, timeout: float = 900, node: str | None = None,
              node_ips: tuple[str, ...] = ()) -> float:
    """A full kube-proxy nftables sync of *state* in *ns*: ``ip kube-proxy``, and
    ``ip6 kube-proxy`` too when *state* has IPv6 frontends (a dual-stack kube-proxy
    runs one proxier per family).  *node* is the kube-proxy's node name (its
    endpoints are the local ones externalTrafficPolicy / internalTrafficPolicy Local
    use) and *node_ips* its addresses (the first of each family is the node IP)."""
    return sum(nft_load(ns, nft.render(state, _nft_config(f, node, node_ips)), timeout)
               for f in nft.families(state))


def incremental_nft(ns: str, old: LbState, new: LbState, timeout: float = 900,
                    node: str | None = None, node_ips: tuple[str, ...] = ()) -> float:
    """The partial sync kube-proxy v1.32 sends from *old* (already loaded) to *new*
    (element deltas, changed Services' chains, stale chains flushed), then the
    stale-chain deletion it runs in a later transaction; both timed together."""
    seconds = 0.0
    loaded = set(nft.families(old))
    for fam in sorted(loaded | set(nft.families(new))):
        cfg = _nft_config(fam, node, node_ips)
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
