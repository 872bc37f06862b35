"""The ``const volatile`` configuration of a node's BPF objects: the service and
pod CIDRs (from the address plan), a node's own addresses (from_netdev), an
endpoint's id and addresses (the lxc programs on its veth)."""
from __future__ import annotations

import ipaddress
from typing import Any

from harness import addressing
from harness.abi.structs import EndpointConfig, V6Addr, be32


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


def endpoint_config(endpoint_id: int, ipv4: str | None = None, ipv6: str | None = None):
    """The cb_endpoint_config value (lib/endpoint.h) of an endpoint: what
    ``endpoint_rodata`` gives a per-endpoint load."""
    ro = endpoint_rodata(endpoint_id, ipv4, ipv6)
    return EndpointConfig(id=endpoint_id, ip4=ro["endpoint_ip4"],
                          ip6=V6Addr.from_buffer_copy(ro["endpoint_ip6"]))


def rodata_for(obj: str, node: str | None = None) -> dict[str, Any]:
    if obj in ("lxc", "lxc-shared"):
        return service_rodata()
    if obj == "netdev":
        return {**service_rodata(), **(node_rodata(node) if node else {})}
    return {}
