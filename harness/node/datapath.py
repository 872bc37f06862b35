"""Loading the datapath objects the way a node runs them.

A node's programs (``lxc`` on every pod veth, ``netdev`` on the external
device) share one set of maps: services, backends, conntrack, NAT.  Loaded
with a node name, every map is pinned by name under
``/sys/fs/bpf/chainbench/<node>/`` and every further object of that node
reuses it; loaded without one (tests, test-run), each collection has maps of
its own.  The ``const volatile`` configuration (service CIDRs, the node's
address and pod CIDR) comes from the address plan.
"""
from __future__ import annotations

import os
from typing import Any

from harness.errors import InputError
from harness import addressing, paths
from harness.bpf import Collection
from harness.host import bpffs
from harness.journal import Journal
from harness.lb.desired import lb_state
from harness.node import node as node_home
from harness.node.node import Node
from harness.node.rodata import endpoint_rodata, node_rodata, rodata_for, service_rodata  # noqa: F401 - this module's API
from harness.policy.control import PolicyControl, endpoint_ids
from harness.policy.desired import policy_state

#: Map sizes for large scales (bench): frontends + slots, backends, ...
SCALE_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
              "cb_lb4_reverse_nat", "cb_lb6_reverse_nat", "cb_lb_stats")


def load(obj: str, node: str | None = None, pinned: bool = False,
         max_entries: dict[str, int] | None = None, **rodata: Any) -> Collection:
    """Load bpf_src/<obj>.bpf.c configured for *node*; with *pinned*, share the
    node's maps through bpffs (harness.node.node.Node.load)."""
    if pinned and node:
        return Node(node).load(obj, max_entries, **rodata)
    values = {**rodata_for(obj, node), **rodata}
    return Collection.load(str(paths.bpf_object(obj)), rodata=values or None,
                           max_entries=max_entries)


def journal(node: str | None) -> Journal | None:
    """The write-ahead journal of *node*'s maps (None: no node, maps of our own)."""
    return Node(node).journal if node else None


def scaled_max_entries(frontends: int, backends_per_frontend: int,
                       frontends6: int = 0, two_scopes: int = 0) -> dict[str, int]:
    """Map sizes that hold *frontends* IPv4 frontends (and *frontends6* IPv6 ones) x
    *backends_per_frontend*, *two_scopes* of them (either family) with a second,
    internal, service entry and slots, with headroom."""
    per = backends_per_frontend + 1
    scoped = two_scopes * per

    def slots(n: int) -> int:                   # slots + masters + VIPs (+ INT scopes)
        return n * per + n + (scoped if n else 0)
    sizes = {"cb_lb4_services": slots(frontends), "cb_lb6_services": slots(frontends6),
             "cb_lb4_backends": max(65536, frontends * backends_per_frontend),
             "cb_lb6_backends": frontends6 * backends_per_frontend,
             "cb_lb4_reverse_nat": frontends + 1024, "cb_lb6_reverse_nat": frontends6 + 1024,
             "cb_lb_stats": frontends + frontends6 + 1024}
    return {k: max(v, 1024) for k, v in sizes.items()}


def lb_control(coll: Collection, node: str | None = None):
    """An LbControl for a loaded lxc/netdev collection, Maglev tables included; with
    *node* (its pinned maps), writes go through the node's journal."""
    return node_home.lb_control(coll, journal(node))


def _program_lb(coll: Collection, scenario, endpoint, settings) -> None:
    # The endpoint's node's view: traffic policies Local keep that node's backends.
    node = endpoint.node_name if endpoint is not None else None
    lb_control(coll).apply(lb_state(scenario, node=node))


def test_run_endpoint_ids(scenario) -> dict[str, int]:
    """Endpoint ids when a scenario runs without a topology (test-run): every
    non-hostNetwork pod, numbered in namespace/name order from 1."""
    return endpoint_ids(p.ref for p in scenario.pods if not p.host_network)


def _program_policy(coll: Collection, scenario, endpoint, settings) -> None:
    node = endpoint.node_name if endpoint is not None else None
    PolicyControl(coll.maps).apply(policy_state(scenario, local_node=node,
                                           np_ipblock=settings.get("np_ipblock", "pods")),
                                   test_run_endpoint_ids(scenario))


#: What programs a collection's maps from a scenario, by concern: (name, the maps a
#: collection must have for it to run, the programmer).  A collection none of
#: them applies to (the parser, the empty floor) needs nothing.
PROGRAMMERS = (
    ("service load balancing", frozenset({"cb_lb4_services", "cb_lb6_services"}), _program_lb),
    ("policy", frozenset({"cb_policy", "cb_endpoints", "cb_ipcache"}), _program_policy),
)


def program_maps(coll: Collection, scenario, endpoint=None, settings: dict | None = None) -> list[str]:
    """Program *coll*'s maps from *scenario* for *endpoint* (the pod whose program
    runs, test-run); returns the concerns programmed, in order.  *settings* are
    node settings (``np_ipblock``: what a NetworkPolicy ipBlock selects, see
    harness.policy.desired)."""
    ran = []
    for name, maps, program in PROGRAMMERS:
        if maps <= coll.maps.keys():
            program(coll, scenario, endpoint, settings or {})
            ran.append(name)
    return ran


def pinned_nodes() -> list[str]:
    """Nodes (``cb-node<i>``) whose datapath maps are pinned; other directories under
    the pin root (a micro benchmark's ``bench-<pid>``) are not nodes."""
    if not os.path.isdir(bpffs.PIN_ROOT):
        return []
    return sorted((n for n in os.listdir(bpffs.PIN_ROOT) if _is_node_name(n) and Node(n).is_pinned),
                  key=addressing.node_index)


def _is_node_name(name: str) -> bool:
    try:
        addressing.node_index(name)
    except addressing.AddressPlanError:
        return False
    return True


def node_is_pinned_dir(node: str) -> bool:
    return Node(node).is_pinned


class NodeNotFound(InputError, LookupError):
    pass


def resolve_node(node: str | None) -> str:
    """The node named, or the only node with pinned maps."""
    nodes = pinned_nodes()
    if node is not None:
        if node not in nodes:
            raise NodeNotFound(f"no datapath is pinned for node {node} "
                               f"(pinned: {', '.join(nodes) or 'none'})")
        return node
    if len(nodes) != 1:
        raise NodeNotFound("no datapath is pinned (run `chainbench lb apply` or `chainbench up`)"
                           if not nodes else f"several nodes are pinned ({', '.join(nodes)}): "
                           "name one with --node")
    return nodes[0]
