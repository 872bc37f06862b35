"""The project's address plan, and the guard that keeps every address inside it.

Every address chainbench puts on an interface, a route, a map or a rule comes
from these ranges, and every such address lives inside a network namespace
the project created (named ``cb-*``).  ``check_project_address`` is the single
gate that scenario validation and topology code pass addresses through.
"""
from __future__ import annotations

import ipaddress

from harness.errors import InputError

# RFC 2544 benchmarking range, split as the design fixes it.
POD_CIDR_V4 = ipaddress.ip_network("198.18.0.0/16")        # node i: 198.18.i.0/24
SERVICE_CIDR_V4 = ipaddress.ip_network("198.19.0.0/17")    # ClusterIP VIPs
NODE_UNDERLAY_V4 = ipaddress.ip_network("198.19.128.0/24")  # node underlay addresses
EXTERNAL_VIP_CIDR_V4 = ipaddress.ip_network("198.19.160.0/19")  # externalIPs, load-balancer ingress IPs
WORLD_V4 = ipaddress.ip_network("203.0.113.0/24")          # TEST-NET-3: the stand-in "world"

# RFC 3849 documentation range for everything IPv6.
POD_CIDR_V6 = ipaddress.ip_network("2001:db8:1::/48")      # node i: 2001:db8:1:i::/64
SERVICE_CIDR_V6 = ipaddress.ip_network("2001:db8:2::/108")
NODE_UNDERLAY_V6 = ipaddress.ip_network("2001:db8:3::/64")
WORLD_V6 = ipaddress.ip_network("2001:db8:4::/64")
EXTERNAL_VIP_CIDR_V6 = ipaddress.ip_network("2001:db8:5::/112")  # IPv6 externalIPs, load-balancer IPs

#: Ranges an address used by the project may come from.
ALLOWED = (
    ipaddress.ip_network("198.18.0.0/15"),
    WORLD_V4,
    ipaddress.ip_network("2001:db8::/32"),
)

#: Ranges the machine's own uplink uses: never touched, even inside a namespace.
FORBIDDEN = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("fd00::/8"),
)


class AddressPlanError(InputError, ValueError):
    """An address lies outside the project's address plan."""


def check_project_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse *value* and return it if it lies inside the project's ranges.

    Raises AddressPlanError (a ValueError) with a one-line reason otherwise.
    """
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise AddressPlanError(f"{value!r} is not an IP address") from None
    if any(addr in net for net in FORBIDDEN):
        raise AddressPlanError(f"{addr} is in a range reserved for the machine's uplink")
    if not any(addr in net for net in ALLOWED):
        allowed = ", ".join(str(n) for n in ALLOWED)
        raise AddressPlanError(f"{addr} is outside the project's address plan ({allowed})")
    return addr


def node_pod_cidr_v4(node: int) -> ipaddress.IPv4Network:
    """Pod CIDR of node *node* (0-based): 198.18.<node>.0/24."""
    if not 0 <= node <= 255:
        raise AddressPlanError(f"node index {node} out of range 0-255")
    return ipaddress.ip_network(f"198.18.{node}.0/24")


def node_pod_cidr_v6(node: int) -> ipaddress.IPv6Network:
    """Pod CIDR of node *node* (0-based): 2001:db8:1:<node>::/64."""
    if not 0 <= node <= 0xFFFF:
        raise AddressPlanError(f"node index {node} out of range")
    return ipaddress.ip_network(f"2001:db8:1:{node:x}::/64")


def node_index(name: str) -> int:
    """Index of node ``cb-node<i>`` (the naming every scenario and topology uses)."""
    prefix = "cb-node"
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
        raise AddressPlanError(f"node name {name!r}: nodes are named {prefix}<index>")
    return int(name[len(prefix):])


def node_ip4(node: int) -> ipaddress.IPv4Address:
    """Underlay address of node *node*: 198.19.128.<node + 1>."""
    if not 0 <= node <= 253:
        raise AddressPlanError(f"node index {node} out of range 0-253")
    return NODE_UNDERLAY_V4[node + 1]


def node_ip6(node: int) -> ipaddress.IPv6Address:
    """Underlay address of node *node*: 2001:db8:3::<node + 1>."""
    return NODE_UNDERLAY_V6[node + 1]
