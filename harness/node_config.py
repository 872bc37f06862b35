"""A node's datapath settings that every loader on that node must agree on.

Pinned maps are created by the first program loaded on a node and reused by
every later load (the chained plugin per pod, the node programs, the CLI);
libbpf refuses to reuse a pinned map whose max_entries differ.  So the sizes
are a node setting, like Cilium's agent flag ``--bpf-lb-map-max``: written by
``chainbench up`` before the first pod is added, in
``/run/chainbench/<node>/datapath.json``, and read by harness.datapath.load.
"""
from __future__ import annotations

import json
import os

from harness.endpoints import STATE_ROOT

#: Maps sized by lb_map_max (the LB maps; Cilium's --bpf-lb-map-max covers the same).
LB_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
           "cb_lb4_reverse_nat", "cb_lb6_reverse_nat", "cb_lb_stats")
#: The BPF programs' compiled-in size (bpf_src/lib/lb.h CB_LB_SERVICES_MAX).
DEFAULT_LB_MAP_MAX = 65536


def path(node: str) -> str:
    return os.path.join(STATE_ROOT, node, "datapath.json")


def save(node: str, lb_map_max: int) -> None:
    if not 1024 <= lb_map_max <= 1 << 24:
        raise ValueError(f"--bpf-lb-map-max {lb_map_max}: expected 1024..16777216")
    os.makedirs(os.path.dirname(path(node)), exist_ok=True)
    with open(path(node), "w") as f:
        json.dump({"lb_map_max": lb_map_max}, f)


def remove(node: str) -> None:
    """Forget *node*'s settings (its state directory goes when empty)."""
    try:
        os.unlink(path(node))
        os.rmdir(os.path.dirname(path(node)))
    except OSError:
        pass


def max_entries(node: str, obj_path: str | None = None) -> dict[str, int] | None:
    """Map sizes for loads on *node* (None: the compiled-in defaults), for the
    maps the object at *obj_path* has (all LB maps when not given)."""
    try:
        with open(path(node)) as f:
            size = int(json.load(f)["lb_map_max"])
    except FileNotFoundError:
        return None
    names = LB_MAPS
    if obj_path is not None:
        from harness.bpf.collection import list_maps
        names = tuple(n for n in LB_MAPS if n in list_maps(obj_path))
    return {name: size for name in names}
