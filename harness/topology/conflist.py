"""The network configuration list a node runs its pods with.

The primary CNI is Debian's ``ptp`` plugin with ``host-local`` IPAM (the
aws-cni model: a routed veth per pod, the host side holding the gateway
address as a /32 and a host route to the pod), or ``bridge`` (the
generic-veth model: every pod on one Linux bridge that holds the gateway).
IPAM hands out addresses from the node's pod CIDR (198.18.<i>.0/24, plus
2001:db8:1:<i>::/64 when dual-stack), ``.1`` being the gateway, and keeps its
allocations under ``/run/chainbench/<node>/ipam``.  ``portmap`` can follow.

Chained plugins come last, in the order the caller gives them, as CNI
chaining puts Cilium after the primary CNI: ``node_conflist(...,
chained=[{"type": "chainbench-cni", ...}])``.  Each entry is a plugin
configuration object; the runtime adds ``name``, ``cniVersion`` and
``prevResult`` when it runs it.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Literal, Mapping, Sequence

from harness import addressing
from harness.topology.cni_runtime import CNI_VERSION, CNIError, load_conflist
from harness.paths import STATE_ROOT

NETWORK_NAME = "chainbench"
DEFAULT_MTU = 1500
#: Bridge the ``bridge`` primary plugin creates in each node namespace.
BRIDGE_NAME = "cbr0"

Primary = Literal["ptp", "bridge"]


def node_name(node: int | str) -> str:
    """``cb-node<i>`` for an index, the name itself for a name."""
    if isinstance(node, int):
        return f"cb-node{node}"
    addressing.node_index(node)
    return node


def ipam_dir(node: int | str) -> str:
    """host-local's dataDir for *node*: under /run/chainbench, so `chainbench down` clears it."""
    return os.path.join(STATE_ROOT, node_name(node), "ipam")


def ipam_config(node: int | str, *, ipv6: bool = False, data_dir: str | None = None) -> dict[str, Any]:
    """host-local IPAM over the node's pod CIDR(s); one range set per family (dual-stack)."""
    index = node if isinstance(node, int) else addressing.node_index(node)
    v4 = addressing.node_pod_cidr_v4(index)
    ranges = [[{"subnet": str(v4), "gateway": str(v4[1])}]]
    routes = [{"dst": "0.0.0.0/0"}]
    if ipv6:
        v6 = addressing.node_pod_cidr_v6(index)
        ranges.append([{"subnet": str(v6), "gateway": str(v6[1])}])
        routes.append({"dst": "::/0"})
    return {"type": "host-local", "ranges": ranges, "routes": routes,
            "dataDir": data_dir or ipam_dir(node)}


def primary_plugin(node: int | str, *, kind: Primary = "ptp", ipv6: bool = False,
                   mtu: int = DEFAULT_MTU, data_dir: str | None = None) -> dict[str, Any]:
    """The primary CNI's entry: ``ptp`` or ``bridge``, no masquerade, with host-local IPAM.

    It declares the ``ips`` capability so a runtime can ask host-local for a
    given address (``runtimeConfig.ips``), as kubelet does for static pod IPs.
    """
    ipam = ipam_config(node, ipv6=ipv6, data_dir=data_dir)
    if kind == "ptp":
        return {"type": "ptp", "ipMasq": False, "mtu": mtu, "capabilities": {"ips": True}, "ipam": ipam}
    if kind == "bridge":
        return {"type": "bridge", "bridge": BRIDGE_NAME, "isGateway": True, "ipMasq": False,
                "hairpinMode": True, "mtu": mtu, "capabilities": {"ips": True}, "ipam": ipam}
    raise ValueError(f"primary CNI {kind!r}: expected ptp or bridge")


def portmap_plugin(*, snat: bool = True) -> dict[str, Any]:
    """``portmap``: hostPort DNAT in the node namespace (capability ``portMappings``)."""
    return {"type": "portmap", "capabilities": {"portMappings": True}, "snat": snat}


def node_conflist(node: int | str, *, ipv6: bool = False, mtu: int = DEFAULT_MTU,
                  primary: Primary = "ptp", portmap: bool = False,
                  chained: Sequence[Mapping[str, Any]] = (), data_dir: str | None = None,
                  name: str = NETWORK_NAME) -> dict[str, Any]:
    """The node's conflist: primary plugin, optional portmap, then the *chained* entries.

    Raises ValueError on a chained entry that is not a plugin object (a
    ``type`` naming an executable); the result passes ``load_conflist``.
    """
    plugins = [primary_plugin(node, kind=primary, ipv6=ipv6, mtu=mtu, data_dir=data_dir)]
    if portmap:
        plugins.append(portmap_plugin())
    for i, entry in enumerate(chained):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
            raise ValueError(f"chained plugin {i}: expected an object with a string 'type'")
        if "name" in entry or "cniVersion" in entry or "prevResult" in entry:
            raise ValueError(f"chained plugin {i} ({entry['type']}): name, cniVersion and prevResult "
                             "come from the list and the runtime")
        plugins.append(copy.deepcopy(dict(entry)))
    conf = {"cniVersion": CNI_VERSION, "name": name, "plugins": plugins}
    try:
        return load_conflist(conf)
    except CNIError as exc:  # the caller's bad argument
        raise ValueError(str(exc)) from None
