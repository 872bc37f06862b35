"""A node's datapath settings that every loader on that node must agree on.

Pinned maps are created by the first program loaded on a node and reused by
every later load (the chained plugin per pod, the node programs, the CLI);
libbpf refuses to reuse a pinned map whose max_entries differ.  So the sizes
are a node setting, like Cilium's agent flag ``--bpf-lb-map-max``: written by
``chainbench up`` before the first pod is added, in
``/run/chainbench/<node>/datapath.json``, and read by harness.node.datapath.load.
The same file keeps the node's policy settings (``np_ipblock``: what a
NetworkPolicy ipBlock selects, like Cilium's policy-cidr-match-mode), read
by harness.node.sync whenever the node's policy is resolved, and the scenario
``lb apply`` last programmed the node from (``lb_scenario``), so read commands
can name the maps' frontends by their Service.
"""
from __future__ import annotations

import json
import os

from harness.paths import STATE_ROOT

#: Maps sized by lb_map_max (the LB maps; Cilium's --bpf-lb-map-max covers the same).
LB_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
           "cb_lb4_reverse_nat", "cb_lb6_reverse_nat", "cb_lb_stats")
#: The BPF programs' compiled-in size (bpf_src/lib/lb.h CB_LB_SERVICES_MAX).
DEFAULT_LB_MAP_MAX = 65536


def path(node: str) -> str:
    return os.path.join(STATE_ROOT, node, "datapath.json")


def _read(node: str) -> dict:
    try:
        with open(path(node)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _write(node: str, values: dict) -> None:
    os.makedirs(os.path.dirname(path(node)), exist_ok=True)
    with open(path(node), "w") as f:
        json.dump(values, f)


def save(node: str, lb_map_max: int) -> None:
    if not 1024 <= lb_map_max <= 1 << 24:
        raise ValueError(f"--bpf-lb-map-max {lb_map_max}: expected 1024..16777216")
    _write(node, {**_read(node), "lb_map_max": lb_map_max})


def save_np_ipblock(node: str, mode: str) -> None:
    """What a NetworkPolicy ipBlock selects on *node* (harness.policy.resolve NP_IPBLOCK_MODES)."""
    from harness.policy.resolve import NP_IPBLOCK_MODES
    if mode not in NP_IPBLOCK_MODES:
        raise ValueError(f"--netpol-ipblock {mode!r}: expected one of {', '.join(NP_IPBLOCK_MODES)}")
    _write(node, {**_read(node), "np_ipblock": mode})


def np_ipblock(node: str) -> str:
    """*node*'s ipBlock setting ("pods", Kubernetes' semantics, unless set)."""
    return str(_read(node).get("np_ipblock", "pods"))


def save_lb_scenario(node: str, text: str) -> None:
    """Keep the scenario *node*'s LB maps were last programmed from (``lb apply``; its
    text, as the file may be stdin, a template or gone by the time it is read)."""
    kept = os.path.join(STATE_ROOT, node, "lb-scenario.yaml")
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    with open(kept + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(kept + ".tmp", kept)
    _write(node, {**_read(node), "lb_scenario": kept})


def lb_scenario(node: str) -> str | None:
    value = _read(node).get("lb_scenario")
    return str(value) if value else None


def remove(node: str) -> None:
    """Forget *node*'s settings (its state directory goes when empty)."""
    for name in (path(node), os.path.join(STATE_ROOT, node, "lb-scenario.yaml")):
        try:
            os.unlink(name)
        except OSError:
            pass
    try:
        os.rmdir(os.path.dirname(path(node)))
    except OSError:
        pass


def max_entries(node: str, obj_path: str | None = None) -> dict[str, int] | None:
    """Map sizes for loads on *node* (None: the compiled-in defaults), for the
    maps the object at *obj_path* has (all LB maps when not given)."""
    raw = _read(node).get("lb_map_max")
    if raw is None:
        return None
    size = int(raw)
    names = LB_MAPS
    if obj_path is not None:
        from harness.bpf.collection import list_maps
        names = tuple(n for n in LB_MAPS if n in list_maps(obj_path))
    return {name: size for name in names}
