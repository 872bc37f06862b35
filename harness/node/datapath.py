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

import ctypes
import ipaddress
import os
from typing import Any

from harness.errors import InputError
from harness import addressing, paths
from harness.abi import structs as S
from harness.abi.structs import V6Addr, be32
from harness.bpf import Collection, Map
from harness.host import bpffs
from harness.journal import Journal, Writer
from harness.lb import maglev
from harness.lb.control import LbControl
from harness.lb.state import desired_state
from harness.node import config as node_config
from harness.node import recovery
from harness.policy.program import PolicyControl, endpoint_ids
from harness.policy.resolve import resolve

#: Map sizes for large scales (bench): frontends + slots, backends, ...
SCALE_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
              "cb_lb4_reverse_nat", "cb_lb6_reverse_nat", "cb_lb_stats")


def _hi64(net: ipaddress.IPv6Network) -> int:
    return int.from_bytes(net.network_address.packed[:8], "little")


def _mask_hi64(net: ipaddress.IPv6Network) -> int:
    return int.from_bytes(net.netmask.packed[:8], "little")


def service_rodata() -> dict[str, Any]:
    """Service CIDRs (a miss inside them is a ClusterIP's unknown port) and pod CIDRs
    (destinations there are pods, never frontends: no service lookup)."""
    v4, v6 = addressing.SERVICE_CIDR_V4, addressing.SERVICE_CIDR_V6
    if v6.prefixlen < 64:
        raise ValueError(f"IPv6 service CIDR {v6} must be /64 or longer")
    pods4, pods6 = addressing.POD_CIDR_V4, addressing.POD_CIDR_V6
    return {
        "service_net4": be32(v4.network_address), "service_mask4": be32(v4.netmask),
        "service_net6_hi": _hi64(v6), "service_mask6_hi": _mask_hi64(v6),
        "pod_net4": be32(pods4.network_address), "pod_mask4": be32(pods4.netmask),
        "pod_net6_hi": _hi64(pods6), "pod_mask6_hi": _mask_hi64(pods6),
    }


def node_rodata(node: str) -> dict[str, Any]:
    """The node's own addresses and pod CIDR, for from_netdev."""
    i = addressing.node_index(node)
    pods4, pods6 = addressing.node_pod_cidr_v4(i), addressing.node_pod_cidr_v6(i)
    return {
        "node_ip4": be32(addressing.node_ip4(i)),
        "node_ip6": bytes(V6Addr.of(addressing.node_ip6(i))),
        "node_pod_net4": be32(pods4.network_address), "node_pod_mask4": be32(pods4.netmask),
        "node_pod_net6_hi": _hi64(pods6),
    }


def endpoint_rodata(endpoint_id: int, ipv4: str | None = None,
                    ipv6: str | None = None) -> dict[str, Any]:
    """An lxc program's endpoint: its id and its own addresses.  From_container
    drops (132) a packet whose source is not one of them; a family without an
    address may send nothing."""
    return {
        "endpoint_id": endpoint_id,
        "endpoint_ip4": be32(ipaddress.IPv4Address(ipv4)) if ipv4 else 0,
        "endpoint_ip6": bytes(V6Addr.of(ipaddress.IPv6Address(ipv6))) if ipv6 else bytes(16),
    }


def rodata_for(obj: str, node: str | None = None) -> dict[str, Any]:
    if obj == "lxc":
        return service_rodata()
    if obj == "netdev":
        return {**service_rodata(), **(node_rodata(node) if node else {})}
    return {}


def pin_dir(node: str) -> str:
    return bpffs.pin_path(node)


def load(obj: str, node: str | None = None, pinned: bool = False,
         max_entries: dict[str, int] | None = None, **rodata: Any) -> Collection:
    """Load bpf_src/<obj>.bpf.c configured for *node*; with *pinned*, share the
    node's maps through bpffs."""
    values = {**rodata_for(obj, node), **rodata}
    directory = pin_dir(node) if (pinned and node) else None
    if directory and max_entries is None:
        max_entries = node_config.max_entries(node, str(paths.bpf_object(obj)))
    coll = Collection.load(str(paths.bpf_object(obj)), rodata=values or None,
                           max_entries=max_entries, pin_dir=directory)
    if directory:
        _recover(node, coll.maps)
    return coll


def _recover(node: str, maps) -> None:
    """Finish a map change a killed `lb apply` / `policy apply` left (harness.journal)."""
    recovery.recover(node, maps, lb_writer=lambda stack: _lb_writer(stack, node))


def _lb_writer(stack, node: str) -> Writer:
    coll = stack.enter_context(load("lxc", node, pinned=True))
    lb = lb_control(coll)
    return Writer(coll.maps, lb._maglev_install, lb._maglev_remove)


def journal(node: str | None) -> Journal | None:
    """The write-ahead journal of *node*'s maps (None: no node, maps of our own)."""
    return recovery.node_journal(node) if node else None


def scaled_max_entries(frontends: int, backends_per_frontend: int) -> dict[str, int]:
    """Map sizes that hold *frontends* x *backends_per_frontend* (with headroom)."""
    slots = frontends * (backends_per_frontend + 1) + frontends  # slots + masters + VIPs
    sizes = {"cb_lb4_services": slots, "cb_lb6_services": 1024,
             "cb_lb4_backends": max(65536, frontends * backends_per_frontend),
             "cb_lb6_backends": 1024,
             "cb_lb4_reverse_nat": frontends + 1024, "cb_lb6_reverse_nat": 1024,
             "cb_lb_stats": frontends + 1024}
    return {k: max(v, 1024) for k, v in sizes.items()}


def lb_control(coll: Collection, node: str | None = None):
    """An LbControl for a loaded lxc/netdev collection, Maglev tables included; with
    *node* (its pinned maps), writes go through the node's journal."""
    return LbControl(coll.maps,
                     maglev_install=lambda rid, ids, keys: maglev.install_table(
                         coll, rid, ids, keys=keys),
                     maglev_remove=lambda rid: maglev.remove_table(coll, rid),
                     journal=journal(node))


def _program_lb(coll: Collection, scenario, endpoint, settings) -> None:
    lb_control(coll).apply(desired_state(scenario))


def test_run_endpoint_ids(scenario) -> dict[str, int]:
    """Endpoint ids when a scenario runs without a topology (test-run): every
    non-hostNetwork pod, numbered in namespace/name order from 1."""
    return endpoint_ids(p.ref for p in scenario.pods if not p.host_network)


def _program_policy(coll: Collection, scenario, endpoint, settings) -> None:
    node = endpoint.node_name if endpoint is not None else None
    PolicyControl(coll.maps).apply(resolve(scenario, local_node=node,
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
    harness.policy.resolve)."""
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
    return sorted((n for n in os.listdir(bpffs.PIN_ROOT)
                   if _is_node_name(n) and os.path.isdir(os.path.join(bpffs.PIN_ROOT, n))),
                  key=addressing.node_index)


def _is_node_name(name: str) -> bool:
    try:
        addressing.node_index(name)
    except addressing.AddressPlanError:
        return False
    return True


def _pinned_types() -> dict[str, tuple[type, type]]:

    u32 = ctypes.c_uint32
    return {
        "cb_lb4_services": (S.Lb4Key, S.LbService), "cb_lb6_services": (S.Lb6Key, S.LbService),
        "cb_lb4_backends": (u32, S.Lb4Backend), "cb_lb6_backends": (u32, S.Lb6Backend),
        "cb_lb4_reverse_nat": (u32, S.Lb4ReverseNat), "cb_lb6_reverse_nat": (u32, S.Lb6ReverseNat),
        "cb_lb_stats": (u32, S.TrafficCounter), "cb_ct4": (S.Ct4Tuple, S.CtEntry),
        "cb_ct6": (S.Ct6Tuple, S.CtEntry), "cb_metrics": (S.MetricsKey, S.TrafficCounter),
        "cb_lb_affinity": (S.LbAffinityKey, S.LbAffinityVal),
        "cb_endpoints": (u32, S.EndpointInfo), "cb_policy": (S.PolicyKey, S.PolicyEntry),
        "cb_policy_exact": (S.PolicyKey, S.PolicyEntry),
        "cb_ipcache": (S.IpcacheKey, S.IpcacheEntry), "cb_ipcache_hosts": (S.IpcacheKey, S.IpcacheEntry),
        "cb_snat4_fwd": (S.Ct4Tuple, S.SnatEntry), "cb_snat4_rev": (S.Ct4Tuple, S.SnatEntry),
        "cb_snat6_fwd": (S.Ct6Tuple, S.SnatEntry), "cb_snat6_rev": (S.Ct6Tuple, S.SnatEntry),
        "cb_snat_stats": (u32, S.SnatStats),
    }


def node_is_pinned_dir(node: str) -> bool:
    return os.path.isdir(os.path.join(bpffs.PIN_ROOT, node))


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


def open_pinned(node: str) -> dict:
    """The node's pinned maps, typed with the struct mirrors; close() each when done."""
    directory = os.path.join(bpffs.PIN_ROOT, node)
    maps = {}
    for name, (key_type, value_type) in _pinned_types().items():
        path = os.path.join(directory, name)
        if os.path.exists(path):
            maps[name] = Map.from_pin(path, key_type, value_type)
    try:
        _recover(node, maps)
    except BaseException:
        for m in maps.values():
            m.close()
        raise
    return maps
