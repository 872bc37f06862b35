"""Python mirrors of the C structs that BPF maps share with the harness.

Each struct is defined once in ``bpf_src/lib/*.h`` and mirrored once here;
``Collection.load`` compares every mirror with the object's BTF (names,
offsets, sizes) and refuses to load on a difference.  Field names match the
C names exactly; explicit padding fields are named ``pad``.
"""
from __future__ import annotations

import ctypes
import ipaddress
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64

from harness.bpf.layout import CStruct


class TrafficCounter(CStruct):
    """lib/common.h: packets and bytes, the value of every counter map."""
    _c_name_ = "traffic_counter"
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class MetricsKey(CStruct):
    """lib/metrics.h: (reason, direction, endpoint) key of cb_metrics."""
    _c_name_ = "metrics_key"
    _fields_ = [("reason", c_uint8), ("dir", c_uint8), ("endpoint_id", c_uint16)]


# --- lib/common.h -----------------------------------------------------------------

class V6Addr(ctypes.Union):
    """union v6addr: an IPv6 address (IPv4 addresses use the first 4 bytes)."""
    _fields_ = [("addr", c_uint8 * 16), ("p", c_uint32 * 4), ("d", c_uint64 * 2)]

    @classmethod
    def of(cls, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> "V6Addr":
        ip = ipaddress.ip_address(address)
        value = cls()
        ctypes.memmove(ctypes.addressof(value), ip.packed, len(ip.packed))
        return value

    def ipv6(self) -> ipaddress.IPv6Address:
        return ipaddress.IPv6Address(bytes(self.addr))

    def ipv4(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(bytes(self.addr[:4]))


def be32(address: str | ipaddress.IPv4Address) -> int:
    """An IPv4 address as the __be32 a BPF program reads (network-order bytes in a u32)."""
    if not isinstance(address, ipaddress.IPv4Address):      # parsing is the slow part
        address = ipaddress.IPv4Address(address)
    return int.from_bytes(address.packed, "little")


def from_be32(value: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(value.to_bytes(4, "little"))


def be16(port: int) -> int:
    """A port as the __be16 a BPF program reads."""
    return int.from_bytes(port.to_bytes(2, "big"), "little")


def from_be16(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "little"), "big")


# --- lib/lb.h -----------------------------------------------------------------------

class Lb4Key(CStruct):
    _c_name_ = "lb4_key"
    _fields_ = [("address", c_uint32), ("dport", c_uint16), ("backend_slot", c_uint16),
                ("proto", c_uint8), ("scope", c_uint8), ("pad", c_uint8 * 2)]


class Lb6Key(CStruct):
    _c_name_ = "lb6_key"
    _fields_ = [("address", V6Addr), ("dport", c_uint16), ("backend_slot", c_uint16),
                ("proto", c_uint8), ("scope", c_uint8), ("pad", c_uint8 * 2)]


class LbService(CStruct):
    _c_name_ = "lb_service"
    _fields_ = [("backend_id", c_uint32), ("affinity_timeout", c_uint32),
                ("rev_nat_index", c_uint32), ("count", c_uint16), ("flags", c_uint16)]


class Lb4Backend(CStruct):
    _c_name_ = "lb4_backend"
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("proto", c_uint8), ("state", c_uint8)]


class Lb6Backend(CStruct):
    _c_name_ = "lb6_backend"
    _fields_ = [("address", V6Addr), ("port", c_uint16), ("proto", c_uint8), ("state", c_uint8)]


class Lb4ReverseNat(CStruct):
    _c_name_ = "lb4_reverse_nat"
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16)]


class Lb6ReverseNat(CStruct):
    _c_name_ = "lb6_reverse_nat"
    _fields_ = [("address", V6Addr), ("port", c_uint16), ("pad", c_uint16)]


class LbAffinityKey(CStruct):
    _c_name_ = "lb_affinity_key"
    _fields_ = [("client", V6Addr), ("rev_nat_index", c_uint32), ("family", c_uint8),
                ("scope", c_uint8), ("pad", c_uint8 * 2)]


class Lb4SrcRangeKey(CStruct):
    """LPM key of cb_lb4_source_range: prefixlen = 32 (rev_nat_index) + the range's."""
    _c_name_ = "lb4_src_range_key"
    _fields_ = [("prefixlen", c_uint32), ("rev_nat_index", c_uint32), ("address", c_uint32)]


class Lb6SrcRangeKey(CStruct):
    """LPM key of cb_lb6_source_range: prefixlen = 32 (rev_nat_index) + the range's."""
    _c_name_ = "lb6_src_range_key"
    _fields_ = [("prefixlen", c_uint32), ("rev_nat_index", c_uint32), ("address", V6Addr)]


class LbAffinityVal(CStruct):
    _c_name_ = "lb_affinity_val"
    _fields_ = [("last_used", c_uint64), ("backend_id", c_uint32), ("pad", c_uint32)]


# --- lib/ct.h -------------------------------------------------------------------------

class Ct4Tuple(CStruct):
    _c_name_ = "ct4_tuple"
    _fields_ = [("daddr", c_uint32), ("saddr", c_uint32), ("dport", c_uint16),
                ("sport", c_uint16), ("nexthdr", c_uint8), ("flags", c_uint8), ("pad", c_uint16)]


class Ct6Tuple(CStruct):
    _c_name_ = "ct6_tuple"
    _fields_ = [("daddr", V6Addr), ("saddr", V6Addr), ("dport", c_uint16), ("sport", c_uint16),
                ("nexthdr", c_uint8), ("flags", c_uint8), ("pad", c_uint16)]


class CtEntry(CStruct):
    _c_name_ = "ct_entry"
    _fields_ = [("tx_packets", c_uint64), ("tx_bytes", c_uint64), ("rx_packets", c_uint64),
                ("rx_bytes", c_uint64), ("lifetime", c_uint32), ("created", c_uint32),
                ("backend_id", c_uint32), ("rev_nat_index", c_uint32), ("src_sec_id", c_uint32),
                ("flags", c_uint16), ("tx_flags_seen", c_uint8), ("rx_flags_seen", c_uint8),
                ("policy_rev", c_uint32), ("last_report", c_uint32)]


# --- lib/sock_lb.h (socket LB: reverse-socket maps) ---------------------------------
# Appended by the socket-LB work; keys: (socket cookie, backend, backend port),
# values: (frontend, frontend port, rev_nat_index).

class Sock4RevnatKey(CStruct):
    _c_name_ = "sock4_revnat_key"
    _fields_ = [("cookie", c_uint64), ("address", c_uint32), ("port", c_uint16), ("pad", c_uint16)]


class Sock4RevnatVal(CStruct):
    _c_name_ = "sock4_revnat_val"
    _fields_ = [("address", c_uint32), ("port", c_uint16), ("pad", c_uint16),
                ("rev_nat_index", c_uint32)]


class Sock6RevnatKey(CStruct):
    _c_name_ = "sock6_revnat_key"
    _fields_ = [("cookie", c_uint64), ("address", V6Addr), ("port", c_uint16),
                ("pad", c_uint8 * 6)]


class Sock6RevnatVal(CStruct):
    _c_name_ = "sock6_revnat_val"
    _fields_ = [("address", V6Addr), ("port", c_uint16), ("pad", c_uint16),
                ("rev_nat_index", c_uint32)]

# --- end lib/sock_lb.h ----------------------------------------------------------------


# --- lib/ipcache.h, lib/policy.h ----------------------------------------------------------

class IpcacheKey(CStruct):
    _c_name_ = "ipcache_key"
    _fields_ = [("prefixlen", c_uint32), ("family", c_uint8), ("pad", c_uint8 * 3),
                ("addr", V6Addr)]


class IpcacheEntry(CStruct):
    _c_name_ = "ipcache_entry"
    _fields_ = [("identity", c_uint32), ("tunnel_endpoint", c_uint32)]


class EndpointInfo(CStruct):
    _c_name_ = "endpoint_info"
    _fields_ = [("identity", c_uint32), ("policy_revision", c_uint32), ("flags", c_uint16),
                ("pad", c_uint16)]


class EndpointConfig(CStruct):
    """lib/endpoint.h: an endpoint as its node's shared lxc programs find it, by the
    ifindex of its host-side veth (cb_endpoint_config): id and own addresses."""
    _c_name_ = "endpoint_config"
    _fields_ = [("id", c_uint32), ("ip4", c_uint32), ("ip6", V6Addr)]


class PolicyKey(CStruct):
    """lib/policy.h: fields after prefixlen are big-endian (an LPM key); use the
    helpers in harness.policy.entries rather than setting them by hand."""
    _c_name_ = "policy_key"
    _fields_ = [("prefixlen", c_uint32), ("ep_gen", c_uint16), ("deny", c_uint8),
                ("egress", c_uint8), ("identity", c_uint32), ("pad", c_uint8), ("proto", c_uint8),
                ("dport", c_uint16)]


class PolicyEntry(CStruct):
    _c_name_ = "policy_entry"
    _fields_ = [("packets", c_uint64), ("bytes", c_uint64), ("match_type", c_uint8),
                ("proto", c_uint8), ("port", c_uint16), ("pad", c_uint32)]


# --- lib/frag.h ---------------------------------------------------------------------------

class Frag4Key(CStruct):
    _c_name_ = "frag4_key"
    _fields_ = [("saddr", c_uint32), ("daddr", c_uint32), ("id", c_uint16), ("proto", c_uint8),
                ("pad", c_uint8)]


class Frag6Key(CStruct):
    _c_name_ = "frag6_key"
    _fields_ = [("saddr", V6Addr), ("daddr", V6Addr), ("id", c_uint32), ("proto", c_uint8),
                ("pad", c_uint8 * 3)]


class FragPorts(CStruct):
    _c_name_ = "frag_ports"
    _fields_ = [("sport", c_uint16), ("dport", c_uint16)]


# --- lib/snat.h ---------------------------------------------------------------------------

class SnatEntry(CStruct):
    """Forward map: node address and port given; reverse map: the client, its port, and
    the mapping's lifetime (monotonic seconds)."""
    _c_name_ = "snat_entry"
    _fields_ = [("addr", V6Addr), ("port", c_uint16), ("flags", c_uint8), ("pad", c_uint8),
                ("rev_nat_index", c_uint32), ("lifetime", c_uint32), ("created", c_uint32)]


class SnatStats(CStruct):
    _c_name_ = "snat_stats"
    _fields_ = [("allocated", c_uint64), ("collisions", c_uint64), ("reused", c_uint64),
                ("exhausted", c_uint64)]


# --- lib/events.h (datapath events for flow visibility) ------------------------------

class Event(CStruct):
    """lib/events.h: struct cb_event, one record of a node's cb_events ring buffer."""
    _c_name_ = "cb_event"
    _fields_ = [("ktime_ns", c_uint64), ("type", c_uint8), ("subtype", c_uint8),
                ("endpoint_id", c_uint16), ("ifindex", c_uint32), ("orig_len", c_uint32),
                ("cap_len", c_uint16), ("flags", c_uint8), ("dir", c_uint8),
                ("remote_identity", c_uint32), ("match_type", c_uint8), ("rule_proto", c_uint8),
                ("rule_port", c_uint16), ("trace_reason", c_uint8), ("l4_proto", c_uint8),
                ("orig_port", c_uint16), ("rev_nat_index", c_uint32), ("orig_addr", V6Addr),
                ("xlate_addr", V6Addr), ("xlate_port", c_uint16), ("pad1", c_uint16),
                ("pad2", c_uint32), ("cookie", c_uint64), ("cgroup_id", c_uint64),
                ("pkt", c_uint8 * 128)]
