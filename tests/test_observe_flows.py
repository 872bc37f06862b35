"""Flows from datapath events (harness/observe: decode, flows, filters, output).

Records are built with the ctypes mirror of struct cb_event (harness.abi.structs.Event)
around scapy packets: every event type, IPv4 and IPv6, TCP flags, ICMP, IPv6
extension headers.  Their decoded columns, the Hubble flow fields FlowBuilder sets,
each FlowFilter field and hubble observe option (matching and not), and every output
format (every json line parsed back with unknown fields rejected) are checked."""
from __future__ import annotations

import ipaddress
import json
import os

import numpy as np
import pytest
from google.protobuf import json_format
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoReply, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

from harness.abi.structs import Event, V6Addr, be16
from harness.observe import decode as D
from harness.observe import filters as FL
from harness.observe import flows as F
from harness.observe import output as O
from harness.observe.proto import flow_pb2, observer_pb2

pytestmark = pytest.mark.test_run_only

#: Hubble fields the project's schema (proto/) may not carry; checked where it does.
HAS_TRACE_REASON = "trace_reason" in flow_pb2.Flow.DESCRIPTOR.fields_by_name
HAS_SOURCE_XLATED = "source_xlated" in flow_pb2.IP.DESCRIPTOR.fields_by_name
HAS_DROP_REASON_FILTER = "drop_reason_desc" in flow_pb2.FlowFilter.DESCRIPTOR.fields_by_name

CLIENT4, CLIENT6 = "198.18.0.10", "2001:db8::a"
ECHO4, ECHO6 = "198.18.1.20", "2001:db8::1:14"
VIP4 = "198.19.0.10"
WORLD4 = "203.0.113.10"
ID_CLIENT, ID_ECHO = 47652, 62969
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
T0 = 1_700_000_000_000_000_000          # wall ns of ktime 0 in these tests (offset)


def record(kind, packet=b"", **fields) -> bytes:
    return D.event_record(kind, bytes(packet), **fields)


def context() -> F.NodeContext:
    return F.NodeContext(
        endpoints=[F.EndpointInfo(1, ID_CLIENT, "default", "client",
                                  ("k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"),
                                  CLIENT4, CLIENT6)],
        identities={ID_ECHO: ("k8s:io.kubernetes.pod.namespace=default", "k8s:app=echo"),
                    (1 << 24) | 5: ("cidr:203.0.113.0/24", "cidr:203.0.113.0/25",
                                    "reserved:world")},
        ipcache={f"{CLIENT4}/32": ID_CLIENT, f"{ECHO4}/32": ID_ECHO, f"{CLIENT6}/128": ID_CLIENT,
                 f"{ECHO6}/128": ID_ECHO, "203.0.113.0/25": (1 << 24) | 5},
        pods={ECHO4: ("default", "echo"), ECHO6: ("default", "echo")},
        services={(VIP4, 80, "TCP"): ("default", "echo-svc")},
        interfaces={7: "lxc-client"})


def build(*records, node="cb-node0"):
    builder = F.FlowBuilder(node, context())
    return builder.build(D.decode(list(records), T0))


def tcp4(flags="S", src=CLIENT4, dst=ECHO4, sport=40000, dport=8080):
    return ETH / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)


# --------------------------------------------------------------------- decode


def test_the_dtype_is_struct_cb_event():
    import ctypes
    assert D.EVENT_DTYPE.itemsize == ctypes.sizeof(Event) == 224
    for name, _ in Event._fields_:
        assert D.EVENT_DTYPE.fields[name][1] == getattr(Event, name).offset


def test_decode_reads_the_header_and_every_layer():
    ev = dict(endpoint_id=3, ifindex=7, remote_identity=ID_ECHO, dir=2, match_type=2,
              rule_proto=6, rule_port=8080, trace_reason=1, rev_nat_index=9,
              orig_addr=V6Addr.of(VIP4), orig_port=be16(80), ktime_ns=123)
    recs = [
        record(D.EVENT_TRACE, tcp4("SA"), subtype=0, flags=D.EVF_XLATED, **ev),
        record(D.EVENT_DROP, ETH / IP(src=CLIENT4, dst=ECHO4) / UDP(sport=5353, dport=53),
               subtype=133),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / SCTP(sport=9, dport=10)),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=3, code=3)),
        record(D.EVENT_POLICY_VERDICT, ETH / IPv6(src=CLIENT6, dst=ECHO6)
               / TCP(sport=1, dport=2, flags="FPU"), flags=D.EVF_IPV6),
        record(D.EVENT_TRACE, ETH / IPv6(src=CLIENT6, dst=ECHO6) / IPv6ExtHdrHopByHop()
               / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / ICMPv6EchoReply()),
        record(D.EVENT_TRACE, ETH / IPv6(src=CLIENT6, dst=ECHO6) / IPv6ExtHdrFragment(offset=8)
               / (b"x" * 40)),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4, flags="MF", frag=0)
               / TCP(sport=5, dport=6, flags="S")),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4, frag=100) / (b"y" * 40)),
        record(D.EVENT_TRACE_SOCK, b"", flags=D.EVF_IPV6, l4_proto=17, cookie=5, cgroup_id=6),
    ]
    d = D.decode(b"".join(recs), offset_ns=1000)
    assert len(d) == len(recs)
    r = d[0]
    assert (r["type"], r["endpoint_id"], r["ifindex"], r["remote_identity"], r["dir"]) == \
        (D.EVENT_TRACE, 3, 7, ID_ECHO, 2)
    assert (r["match_type"], r["rule_proto"], r["rule_port"], r["trace_reason"],
            r["rev_nat_index"], r["orig_port"]) == (2, 6, 8080, 1, 9, 80)
    assert bytes(r["orig_addr"][:4]) == ipaddress.ip_address(VIP4).packed
    assert r["wall_ns"] == 1123
    assert bytes(r["eth_src"]).hex(":") == "02:00:00:00:00:01"
    assert bytes(r["eth_dst"]).hex(":") == "02:00:00:00:00:02"
    assert r["layers"] == D.L_ETH | D.L_IPV4 | D.L_TCP
    assert (r["ip_version"], r["proto"], r["sport"], r["dport"]) == (4, 6, 40000, 8080)
    assert bytes(r["ip_src"][:4]) == ipaddress.ip_address(CLIENT4).packed
    assert r["tcp_flags"] == D.TCP_SYN | D.TCP_ACK
    assert d[1]["layers"] & D.L_UDP and (d[1]["sport"], d[1]["dport"]) == (5353, 53)
    assert d[1]["subtype"] == 133
    assert d[2]["layers"] & D.L_SCTP and (d[2]["sport"], d[2]["dport"]) == (9, 10)
    assert d[3]["layers"] & D.L_ICMPV4 and (d[3]["icmp_type"], d[3]["icmp_code"]) == (3, 3)
    assert d[4]["ip_version"] == 6 and bytes(d[4]["ip_dst"]) == ipaddress.ip_address(ECHO6).packed
    assert d[4]["tcp_flags"] == D.TCP_FIN | D.TCP_PSH | D.TCP_URG
    assert d[5]["layers"] & D.L_ICMPV6 and d[5]["proto"] == 58 and d[5]["icmp_type"] == 129
    assert not d[6]["layers"] & D.L_L4            # a later IPv6 fragment: no L4 header
    assert d[7]["layers"] & D.L_TCP               # the first IPv4 fragment carries it
    assert not d[8]["layers"] & D.L_L4 and d[8]["layers"] & D.L_IPV4
    assert d[9]["layers"] == 0 and d[9]["l4_proto"] == 17 and d[9]["cookie"] == 5


def test_decode_takes_bytes_objects_a_buffer_or_an_array_and_refuses_odd_sizes():
    recs = [record(D.EVENT_TRACE, tcp4()), record(D.EVENT_DROP, tcp4(), subtype=133)]
    a = D.decode(recs, 0)
    b = D.decode(b"".join(recs), 0)
    c = D.decode(np.frombuffer(b"".join(recs), dtype=D.EVENT_DTYPE), 0)
    assert a.tobytes() == b.tobytes() == c.tobytes()
    assert len(D.decode([], 0)) == 0
    with pytest.raises(ValueError, match="record 1 is 223 bytes"):
        D.decode([recs[0], recs[1][:-1]])
    with pytest.raises(ValueError, match="no whole number"):
        D.decode(b"".join(recs)[:-1])


def test_a_truncated_capture_keeps_the_layers_it_has():
    pkt = bytes(ETH / IP(src=CLIENT4, dst=ECHO4) / TCP(sport=1, dport=2, flags="S"))
    rec = bytearray(record(D.EVENT_TRACE, pkt))
    rec[Event.cap_len.offset:Event.cap_len.offset + 2] = (14 + 20 + 10).to_bytes(2, "little")
    d = D.decode([bytes(rec)], 0)[0]
    assert d["layers"] == D.L_ETH | D.L_IPV4 and d["sport"] == 0


def test_decode_bench_reaches_200k_records_per_second():
    r = D.bench(count=100_000, runs=3)
    assert r["median"] >= 200_000, r


# ---------------------------------------------------------------------- flows


def test_trace_fields_as_hubble_sets_them():
    (resp,) = build(record(D.EVENT_TRACE, tcp4("S"), subtype=0, endpoint_id=1, dir=2,
                           remote_identity=ID_ECHO, trace_reason=0, ifindex=7, ktime_ns=5_000))
    f = resp.flow
    assert resp.node_name == f.node_name == "cb-node0"
    assert resp.time.ToNanoseconds() == f.time.ToNanoseconds() == T0 + 5_000
    assert len(f.uuid) == 36 and f.uuid[14] == "4"
    assert f.verdict == flow_pb2.FORWARDED and f.Type == flow_pb2.L3_L4
    assert (f.event_type.type, f.event_type.sub_type) == (4, 0)
    assert f.trace_observation_point == flow_pb2.TO_ENDPOINT
    if HAS_TRACE_REASON:
        assert f.trace_reason == flow_pb2.NEW
    assert f.HasField("is_reply") and f.is_reply.value is False
    assert f.traffic_direction == flow_pb2.EGRESS
    assert (f.ethernet.source, f.ethernet.destination) == ("02:00:00:00:00:01",
                                                           "02:00:00:00:00:02")
    assert (f.IP.source, f.IP.destination, f.IP.ipVersion) == (CLIENT4, ECHO4, flow_pb2.IPv4)
    assert (f.l4.TCP.source_port, f.l4.TCP.destination_port) == (40000, 8080)
    assert f.l4.TCP.flags.SYN and not f.l4.TCP.flags.ACK
    assert (f.source.ID, f.source.identity, f.source.namespace, f.source.pod_name) == \
        (1, ID_CLIENT, "default", "client")
    assert list(f.source.labels) == ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"]
    assert (f.destination.ID, f.destination.identity, f.destination.pod_name) == (0, ID_ECHO, "echo")
    assert list(f.destination.labels) == ["k8s:app=echo", "k8s:io.kubernetes.pod.namespace=default"]
    assert (f.interface.index, f.interface.name) == (7, "lxc-client")
    assert f.Summary == "TCP Flags: SYN"


def test_a_reply_trace_to_the_endpoint_is_an_egress_connection_seen_backwards():
    (resp,) = build(record(D.EVENT_TRACE, tcp4("SA", src=ECHO4, dst=CLIENT4, sport=8080,
                                               dport=40000),
                           subtype=0, endpoint_id=1, dir=1, flags=D.EVF_REPLY,
                           remote_identity=ID_ECHO, trace_reason=2))
    f = resp.flow
    assert f.is_reply.value is True and f.reply is True
    if HAS_TRACE_REASON:
        assert f.trace_reason == flow_pb2.REPLY
    assert f.traffic_direction == flow_pb2.EGRESS
    assert f.source.identity == ID_ECHO and f.destination.ID == 1
    assert f.Summary == "TCP Flags: SYN, ACK"
    (resp,) = build(record(D.EVENT_TRACE, tcp4("S", src=ECHO4, dst=CLIENT4), subtype=0,
                           endpoint_id=1, dir=1, remote_identity=ID_ECHO, trace_reason=0))
    assert resp.flow.traffic_direction == flow_pb2.INGRESS


def test_drop_fields_and_world_identity():
    (resp,) = build(record(D.EVENT_DROP, tcp4("S", dst=WORLD4, dport=80), subtype=133,
                           endpoint_id=1, dir=2, remote_identity=0))
    f = resp.flow
    assert f.verdict == flow_pb2.DROPPED
    assert f.drop_reason == 133 and f.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert (f.event_type.type, f.event_type.sub_type) == (1, 133)
    assert not f.HasField("is_reply") and f.traffic_direction == flow_pb2.EGRESS
    assert not f.HasField("interface") and f.trace_observation_point == 0
    # 203.0.113.10 is in the /25 CIDR identity: only the longest cidr label is kept
    assert f.destination.identity == (1 << 24) | 5
    assert list(f.destination.labels) == ["cidr:203.0.113.0/25", "reserved:world"]
    (resp,) = build(record(D.EVENT_DROP, tcp4("S", dst="203.0.113.200"), subtype=181,
                           endpoint_id=1, dir=2))
    f = resp.flow
    assert f.drop_reason_desc == flow_pb2.POLICY_DENY
    assert f.destination.identity == 2 and list(f.destination.labels) == ["reserved:world"]


def test_policy_verdict_allowed_and_denied():
    allowed, denied = build(
        record(D.EVENT_POLICY_VERDICT, ETH / IPv6(src=ECHO6, dst=CLIENT6) / TCP(dport=80),
               flags=D.EVF_IPV6 | D.EVF_ALLOWED, endpoint_id=1, dir=1, match_type=2,
               remote_identity=ID_ECHO, rule_proto=6, rule_port=80),
        record(D.EVENT_POLICY_VERDICT, tcp4("S"), endpoint_id=1, dir=2, match_type=0,
               remote_identity=ID_ECHO))
    a, d = allowed.flow, denied.flow
    assert (a.event_type.type, a.verdict, a.policy_match_type) == (5, flow_pb2.FORWARDED, 2)
    assert a.traffic_direction == flow_pb2.INGRESS and a.is_reply.value is False
    assert a.IP.ipVersion == flow_pb2.IPv6 and a.source.identity == ID_ECHO
    assert a.destination.ID == 1 and a.drop_reason == 0
    assert d.verdict == flow_pb2.DROPPED and d.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert d.traffic_direction == flow_pb2.EGRESS and not d.HasField("is_reply")


def test_translated_traces_name_the_service_and_the_address_before_translation():
    fwd, rev = build(
        record(D.EVENT_TRACE, tcp4("S", dport=8080), subtype=5, endpoint_id=1, dir=2,
               flags=D.EVF_XLATED, orig_addr=V6Addr.of(VIP4), orig_port=be16(80),
               remote_identity=ID_ECHO),
        record(D.EVENT_TRACE, tcp4("SA", src=VIP4, dst=CLIENT4, sport=80, dport=40000),
               subtype=0, endpoint_id=1, dir=1, flags=D.EVF_REPLY | D.EVF_REV_XLATED,
               orig_addr=V6Addr.of(ECHO4), orig_port=be16(8080), trace_reason=2))
    f = fwd.flow
    assert f.trace_observation_point == flow_pb2.FROM_ENDPOINT
    assert (f.destination_service.namespace, f.destination_service.name) == ("default",
                                                                             "echo-svc")
    assert f.IP.destination == ECHO4
    r = rev.flow
    assert r.IP.source == ECHO4
    if HAS_SOURCE_XLATED:
        assert not f.IP.source_xlated and r.IP.source_xlated == VIP4
    assert r.source.pod_name == "echo" and r.source.identity == ID_ECHO
    assert r.source_service.name == "echo-svc"


def test_icmp_and_udp_and_sctp_summaries():
    flows = build(
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=8), endpoint_id=1,
               dir=2),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=3, code=3),
               endpoint_id=1, dir=2),
        record(D.EVENT_TRACE, ETH / IPv6(src=CLIENT6, dst=ECHO6) / ICMPv6DestUnreach(code=4),
               endpoint_id=1, dir=2, flags=D.EVF_IPV6),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / UDP(sport=1, dport=53)),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / SCTP(sport=1, dport=2)))
    f = [r.flow for r in flows]
    assert f[0].Summary == "ICMPv4 EchoRequest" and f[0].l4.ICMPv4.type == 8
    assert f[1].Summary == "ICMPv4 DestinationUnreachable(Port)"
    assert (f[1].l4.ICMPv4.type, f[1].l4.ICMPv4.code) == (3, 3)
    assert f[2].Summary == "ICMPv6 DestinationUnreachable(PortUnreachable)"
    assert f[2].l4.ICMPv6.code == 4
    assert f[3].Summary == "UDP" and f[3].l4.UDP.destination_port == 53
    assert f[4].Summary == "SCTP" and f[4].l4.SCTP.destination_port == 2
    # no endpoint id: no direction (Hubble: the source endpoint is unknown)
    assert f[3].traffic_direction == flow_pb2.TRAFFIC_DIRECTION_UNKNOWN


def test_trace_sock_translation():
    pre, post, rev = build(
        record(D.EVENT_TRACE_SOCK, subtype=1, endpoint_id=1, l4_proto=6,
               orig_addr=V6Addr.of(VIP4), orig_port=be16(80), cookie=11, cgroup_id=22),
        record(D.EVENT_TRACE_SOCK, subtype=2, endpoint_id=1, l4_proto=6,
               orig_addr=V6Addr.of(VIP4), orig_port=be16(80), xlate_addr=V6Addr.of(ECHO4),
               xlate_port=be16(8080), cookie=11, cgroup_id=22),
        record(D.EVENT_TRACE_SOCK, subtype=4, endpoint_id=1, l4_proto=17, flags=D.EVF_IPV6,
               orig_addr=V6Addr.of(ECHO6), orig_port=be16(53), xlate_addr=V6Addr.of(ECHO6),
               xlate_port=be16(53)))
    p = pre.flow
    assert (p.Type, p.verdict, p.event_type.type, p.event_type.sub_type) == \
        (flow_pb2.SOCK, flow_pb2.TRACED, 7, 1)
    assert (p.IP.source, p.IP.destination, p.l4.TCP.destination_port) == (CLIENT4, VIP4, 80)
    assert p.destination_service.name == "echo-svc" and p.source.pod_name == "client"
    assert (p.socket_cookie, p.cgroup_id, p.Summary) == (11, 22, "TCP")
    q = post.flow
    assert q.verdict == flow_pb2.TRANSLATED and q.IP.destination == ECHO4
    assert q.sock_xlate_point == flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_FWD
    assert q.destination.pod_name == "echo" and q.l4.TCP.destination_port == 8080
    r = rev.flow
    assert (r.IP.source, r.IP.destination, r.IP.ipVersion) == (ECHO6, CLIENT6, flow_pb2.IPv6)
    assert r.l4.UDP.source_port == 53 and r.Summary == "UDP" and r.verdict == flow_pb2.TRANSLATED


def test_a_socket_without_an_endpoint_is_the_hosts():
    """The sock programs sit on the nodes' host cgroups, and the datapath sends them with
    endpoint 0: the source is the host (reserved:host), as Hubble names a host socket."""
    (post,) = build(record(D.EVENT_TRACE_SOCK, subtype=2, endpoint_id=0, l4_proto=6,
                           orig_addr=V6Addr.of(VIP4), orig_port=be16(80),
                           xlate_addr=V6Addr.of(ECHO4), xlate_port=be16(8080)))
    f = post.flow
    assert (f.source.identity, list(f.source.labels)) == (1, ["reserved:host"])
    assert f.destination.pod_name == "echo" and f.verdict == flow_pb2.TRANSLATED


def mixed_records() -> list[bytes]:
    """Records of every kind the tests above build (traces forward, reply, translated and
    reverse-translated; drops; allowed and denied policy verdicts; ICMP, UDP, SCTP;
    socket translations), the bench's samples, and repeats of some with other ports."""
    recs = [
        record(D.EVENT_TRACE, tcp4("S"), subtype=0, endpoint_id=1, dir=2,
               remote_identity=ID_ECHO, ifindex=7, ktime_ns=5_000),
        record(D.EVENT_TRACE, tcp4("SA", src=ECHO4, dst=CLIENT4, sport=8080, dport=40000),
               endpoint_id=1, dir=1, flags=D.EVF_REPLY, remote_identity=ID_ECHO, trace_reason=2),
        record(D.EVENT_TRACE, tcp4("FA", src=ECHO4, dst=CLIENT4), endpoint_id=1, dir=1,
               remote_identity=ID_ECHO),
        record(D.EVENT_TRACE, tcp4("R"), endpoint_id=1, dir=2, subtype=3),
        record(D.EVENT_DROP, tcp4("S", dst=WORLD4, dport=80), subtype=133, endpoint_id=1, dir=2),
        record(D.EVENT_DROP, tcp4("S", dst="203.0.113.200"), subtype=181, endpoint_id=1, dir=2),
        record(D.EVENT_POLICY_VERDICT, ETH / IPv6(src=ECHO6, dst=CLIENT6) / TCP(dport=80),
               flags=D.EVF_IPV6 | D.EVF_ALLOWED, endpoint_id=1, dir=1, match_type=2,
               remote_identity=ID_ECHO),
        record(D.EVENT_POLICY_VERDICT, tcp4("S"), endpoint_id=1, dir=2, remote_identity=ID_ECHO),
        record(D.EVENT_TRACE, tcp4("S", dport=8080), subtype=5, endpoint_id=1, dir=2,
               flags=D.EVF_XLATED, orig_addr=V6Addr.of(VIP4), orig_port=be16(80),
               remote_identity=ID_ECHO),
        record(D.EVENT_TRACE, tcp4("SA", src=VIP4, dst=CLIENT4, sport=80, dport=40000),
               endpoint_id=1, dir=1, flags=D.EVF_REPLY | D.EVF_REV_XLATED,
               orig_addr=V6Addr.of(ECHO4), orig_port=be16(8080), trace_reason=2),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=8), endpoint_id=1,
               dir=2),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=3, code=3),
               endpoint_id=1, dir=2),
        record(D.EVENT_TRACE, ETH / IPv6(src=CLIENT6, dst=ECHO6) / ICMPv6DestUnreach(code=4),
               endpoint_id=1, dir=2, flags=D.EVF_IPV6),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / UDP(sport=1, dport=53)),
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / SCTP(sport=1, dport=2)),
        record(D.EVENT_TRACE_SOCK, subtype=1, endpoint_id=1, l4_proto=6,
               orig_addr=V6Addr.of(VIP4), orig_port=be16(80), cookie=11, cgroup_id=22),
        record(D.EVENT_TRACE_SOCK, subtype=2, endpoint_id=1, l4_proto=6,
               orig_addr=V6Addr.of(VIP4), orig_port=be16(80), xlate_addr=V6Addr.of(ECHO4),
               xlate_port=be16(8080), cookie=11, cgroup_id=22),
        record(D.EVENT_TRACE_SOCK, subtype=4, endpoint_id=1, l4_proto=17, flags=D.EVF_IPV6,
               orig_addr=V6Addr.of(ECHO6), orig_port=be16(53), xlate_addr=V6Addr.of(ECHO6),
               xlate_port=be16(53)),
    ]
    recs += [D.event_record(kind, pkt, flags=flags, endpoint_id=1, dir=1 + i % 2)
             for i, (kind, flags, pkt) in enumerate(D.sample_packets())]
    # alike but for their addresses: other endpoints, other context labels
    for dst in (ECHO4, WORLD4, "203.0.113.200", CLIENT4):
        recs.append(record(D.EVENT_TRACE, tcp4("S", dst=dst, dport=443), endpoint_id=1, dir=2))
        recs.append(record(D.EVENT_DROP, tcp4("S", src=dst, dst=CLIENT4), subtype=133,
                           endpoint_id=1, dir=1))
    for port in (8080, 8081, 9090):
        recs.append(record(D.EVENT_TRACE, tcp4("S", dport=port), endpoint_id=1, dir=2,
                           remote_identity=ID_ECHO))
        recs.append(record(D.EVENT_TRACE, tcp4("SA", src=ECHO4, dst=CLIENT4, sport=port,
                                               dport=40000 + port), endpoint_id=1, dir=1,
                           flags=D.EVF_REPLY, remote_identity=ID_ECHO, trace_reason=2))
    return [r for r in recs for _ in range(2)]          # twice: groups of more than one


def flow_batch(records, node="cb-node0", start=4096, first=0) -> F.FlowBatch:
    ctx = context()
    blob = ctx.to_json()
    return F.FlowBatch(F.FlowBuilder(node, ctx), b"".join(records), offset_ns=T0,
                       context_id=F.context_id(blob), context_blob=blob, map_id=9,
                       start=start, first=first)


def without_uuid(resp):
    resp = observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())
    resp.flow.uuid = ""
    return resp.SerializeToString()


def test_a_flow_batch_builds_the_flows_build_does_with_uuids_from_where_they_were_read():
    recs = mixed_records()
    batch = flow_batch(recs)
    eager = build(*recs)
    assert len(batch) == len(eager)
    lazy = [batch.entry(i) for i in range(len(batch))]
    assert [without_uuid(r) for r in lazy] == [without_uuid(r) for r in eager]
    assert batch.entry(3) is lazy[3]                                # built once
    uuids = [r.flow.uuid for r in lazy]
    assert len(set(uuids)) == len(uuids) and all(len(u) == 36 for u in uuids)
    # The same records read at the same place: the same uuids; elsewhere: others.
    assert [flow_batch(recs).entry(i).flow.uuid for i in range(len(recs))] == uuids
    assert flow_batch(recs, start=8192).entry(0).flow.uuid != uuids[0]
    assert flow_batch(recs, node="cb-node1").entry(0).flow.uuid != uuids[0]
    # What the log keeps of it rebuilds it: same flows, same uuids, a cut one too.
    item = batch.log_item()
    ctx = F.NodeContext.from_json(item.context)
    again = F.FlowBatch.from_log(item, F.FlowBuilder("cb-node0", ctx))
    assert [again.entry(i).SerializeToString() for i in range(len(again))] == \
        [r.SerializeToString() for r in lazy]
    tail = F.FlowBatch.from_log(item.tail(5), F.FlowBuilder("cb-node0", ctx))
    assert [tail.entry(i).SerializeToString() for i in range(5)] == \
        [r.SerializeToString() for r in lazy[-5:]]


def test_node_context_json_round_trip():
    ctx = context()
    blob = ctx.to_json()
    again = F.NodeContext.from_json(blob)
    assert again.to_json() == blob and F.context_id(blob) == F.context_id(again.to_json())
    assert again.endpoint_by_ip(CLIENT6) == ctx.endpoint_by_ip(CLIENT6)
    assert again.identity_of("203.0.113.9") == (1 << 24) | 5
    assert again.service_at(VIP4, 80, "TCP") == ("default", "echo-svc")
    assert again.pod_of(ECHO4) == ("default", "echo") and again.ifname(7) == "lxc-client"
    assert F.context_id(blob) != F.context_id(F.NodeContext().to_json())


def test_node_context_from_dicts_lookups():
    ctx = context()
    assert ctx.identity_of(ECHO4) == ID_ECHO
    assert ctx.identity_of("203.0.113.5") == (1 << 24) | 5
    assert ctx.identity_of("203.0.113.200") is None
    assert ctx.endpoint_by_id(1).pod_name == "client" and ctx.endpoint_by_ip(CLIENT6).id == 1
    assert ctx.labels_of(2) == ("reserved:world",)
    assert ctx.service_at(VIP4, 80, "TCP") == ("default", "echo-svc")
    assert ctx.service_at(VIP4, 81, "TCP") is None
    assert ctx.ifname(7) == "lxc-client" and ctx.ifname(99) == ""


def test_node_context_from_a_node_state_directory(tmp_path, monkeypatch):
    from harness.node import node as node_mod
    from harness.node.endpoints import EndpointRegistry
    monkeypatch.setattr(node_mod, "STATE_ROOT", str(tmp_path))
    n = node_mod.Node("cb-test-flows")
    reg = EndpointRegistry(n.name, directory=n.state_dir)
    reg.fill("default/client", ipv4=CLIENT4, ipv6=CLIENT6, identity=ID_CLIENT, state="ready")
    reg.save()
    reg.save_identities({ID_CLIENT: "k8s:app=client,k8s:io.kubernetes.pod.namespace=default"})
    ctx = F.NodeContext.from_node(n, resolve_ifnames=False)
    ep = ctx.endpoint_by_ip(CLIENT4)
    assert (ep.id, ep.identity, ep.namespace, ep.pod_name) == (1, ID_CLIENT, "default", "client")
    assert ep.labels == ("k8s:app=client", "k8s:io.kubernetes.pod.namespace=default")
    assert not ctx.is_stale()
    reg.save_identities({})
    os.utime(reg.identities_path, ns=(1, 1))
    assert ctx.is_stale()


def test_build_bench_reports_a_rate():
    r = F.bench(count=2000, runs=2)
    assert r["flows"] == 2000 and r["median"] > 0 and r["min"] <= r["median"] <= r["max"]


# -------------------------------------------------------------------- filters


@pytest.fixture(scope="module")
def sample_flows():
    return build(
        record(D.EVENT_TRACE, tcp4("S"), subtype=0, endpoint_id=1, dir=2,
               remote_identity=ID_ECHO),                                           # 0
        record(D.EVENT_DROP, tcp4("S", dst=WORLD4, dport=443), subtype=133, endpoint_id=1,
               dir=2),                                                              # 1
        record(D.EVENT_TRACE, ETH / IPv6(src=ECHO6, dst=CLIENT6) / UDP(sport=53, dport=999),
               flags=D.EVF_IPV6 | D.EVF_REPLY, endpoint_id=1, dir=1, trace_reason=2,
               subtype=0),                                                          # 2
        record(D.EVENT_POLICY_VERDICT, tcp4("SA", src=ECHO4, dst=CLIENT4, sport=8080,
                                            dport=40000),
               flags=D.EVF_ALLOWED, endpoint_id=1, dir=1, match_type=1),            # 3
        record(D.EVENT_TRACE, ETH / IP(src=CLIENT4, dst=ECHO4) / ICMP(type=8),
               subtype=5, endpoint_id=1, dir=2),                                    # 4
        record(D.EVENT_TRACE, tcp4("S", dport=80, dst=VIP4), subtype=5, endpoint_id=1, dir=2),  # 5
    )


def _matching(flows, **fields):
    flt = flow_pb2.FlowFilter(**fields)
    return [i for i, r in enumerate(flows) if FL.flow_matches(r, flt)]


@pytest.mark.parametrize("fields, expected", [
    ({"source_ip": [CLIENT4]}, [0, 1, 4, 5]),
    ({"source_ip": ["198.18.1.0/24"]}, [3]),
    ({"destination_ip": ["203.0.113.0/24", ECHO6]}, [1]),
    ({"destination_ip": [CLIENT6]}, [2]),
    ({"source_pod": ["default/cli"]}, [0, 1, 4, 5]),
    ({"source_pod": ["client"]}, [0, 1, 4, 5]),
    ({"source_pod": ["kube-system/"]}, []),
    ({"destination_pod": ["default/echo"]}, [0, 4]),
    ({"source_label": ["k8s:app=echo"]}, [2, 3]),
    ({"destination_label": ["app in (echo, other),!debug"]}, [0, 4]),
    ({"destination_label": ["reserved:world"]}, [1, 5]),   # 5: a VIP no prefix covers
    ({"destination_label": ["k8s:app!=echo"]}, [1, 2, 3, 5]),
    ({"destination_service": ["default/echo-svc"]}, [5]),
    ({"destination_service": ["other/"]}, []),
    ({"verdict": [flow_pb2.DROPPED]}, [1]),
    ({"verdict": [flow_pb2.FORWARDED]}, [0, 2, 3, 4, 5]),
    *([({"drop_reason_desc": [flow_pb2.POLICY_DENIED]}, [1]),
       ({"drop_reason_desc": [flow_pb2.POLICY_DENY]}, [])] if HAS_DROP_REASON_FILTER else []),
    ({"event_type": [flow_pb2.EventTypeFilter(type=5)]}, [3]),
    ({"event_type": [flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=5)]}, [4, 5]),
    ({"source_port": ["53"]}, [2]),
    ({"destination_port": ["8080", "443"]}, [0, 1]),
    ({"protocol": ["udp"]}, [2]),
    ({"protocol": ["ICMP"]}, [4]),
    ({"tcp_flags": [flow_pb2.TCPFlags(SYN=True, ACK=True)]}, [3]),
    ({"tcp_flags": [flow_pb2.TCPFlags(SYN=True)]}, [0, 1, 3, 5]),
    ({"traffic_direction": [flow_pb2.INGRESS]}, [3]),
    ({"traffic_direction": [flow_pb2.EGRESS]}, [0, 1, 2, 4, 5]),
    ({"node_name": ["cb-node*"]}, [0, 1, 2, 3, 4, 5]),
    ({"node_name": ["default/cb-node1"]}, []),
    ({"ip_version": [flow_pb2.IPv6]}, [2]),
    ({"reply": [True]}, [2]),
    ({"reply": [False]}, [0, 3, 4, 5]),
    ({"source_identity": [ID_ECHO]}, [2, 3]),
    ({"verdict": [flow_pb2.FORWARDED], "protocol": ["tcp"], "destination_port": ["8080"]}, [0]),
])
def test_each_filter_field(sample_flows, fields, expected):
    assert _matching(sample_flows, **fields) == expected


def test_uuid_filter_and_whitelist_blacklist(sample_flows):
    uuid = sample_flows[2].flow.uuid
    assert _matching(sample_flows, uuid=[uuid]) == [2]
    white = [flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED]),
             flow_pb2.FlowFilter(protocol=["udp"])]
    black = [flow_pb2.FlowFilter(ip_version=[flow_pb2.IPv6])]
    assert FL.select(sample_flows, white, black) == [sample_flows[1]]
    assert FL.select(sample_flows, [], black) == [sample_flows[i] for i in (0, 1, 3, 4, 5)]
    assert FL.select(sample_flows) == list(sample_flows)


def test_bad_and_unsupported_filters_are_refused(sample_flows):
    with pytest.raises(FL.FilterError, match="invalid CIDR"):
        FL.flow_matches(sample_flows[0], flow_pb2.FlowFilter(source_ip=["1.2.3.0/99"]))
    with pytest.raises(FL.FilterError, match="invalid port"):
        FL.flow_matches(sample_flows[0], flow_pb2.FlowFilter(source_port=["http"]))
    with pytest.raises(FL.FilterError, match="unknown protocol"):
        FL.flow_matches(sample_flows[0], flow_pb2.FlowFilter(protocol=["gre"]))
    with pytest.raises(FL.FilterError, match="not supported"):
        FL.flow_matches(sample_flows[0], flow_pb2.FlowFilter(http_method=["GET"]))


def _cli(**kw):
    from types import SimpleNamespace
    return FL.filters_from_cli(SimpleNamespace(**kw))


def test_cli_pod_matches_either_side(sample_flows):
    white, black = _cli(pod=["echo"])
    assert [list(f.source_pod) for f in white] == [["echo"], []]
    assert [list(f.destination_pod) for f in white] == [[], ["echo"]]
    assert black == []
    assert [i for i, r in enumerate(sample_flows) if FL.select([r], white)] == [0, 2, 3, 4]
    white, _ = _cli(from_pod=["echo"])
    assert len(white) == 1 and [i for i, r in enumerate(sample_flows)
                                if FL.select([r], white)] == [2, 3]


def test_cli_namespace_and_the_rest(sample_flows):
    white, _ = _cli(namespace=["default"])
    assert [list(f.source_pod) for f in white] == [["default/"], []]
    assert len(FL.select(sample_flows, white)) == 6
    white, _ = _cli(to_namespace=["kube-system"])
    assert FL.select(sample_flows, white) == []
    white, _ = _cli(verdict=["DROPPED"], type=["drop"])
    assert FL.select(sample_flows, white) == [sample_flows[1]]
    white, _ = _cli(type=["trace:from-endpoint"])
    assert FL.select(sample_flows, white) == [sample_flows[4], sample_flows[5]]
    white, _ = _cli(type=["policy-verdict"])
    assert FL.select(sample_flows, white) == [sample_flows[3]]
    white, _ = _cli(label=["k8s:app=echo"])
    assert FL.select(sample_flows, white) == [sample_flows[i] for i in (0, 2, 3, 4)]
    white, _ = _cli(ip=[ECHO6])
    assert FL.select(sample_flows, white) == [sample_flows[2]]
    white, _ = _cli(to_ip=["203.0.113.0/24"], protocol=["tcp"])
    assert FL.select(sample_flows, white) == [sample_flows[1]]
    white, _ = _cli(port=["53"])
    assert FL.select(sample_flows, white) == [sample_flows[2]]
    white, _ = _cli(to_port=["80"], node=["cb-node0"])
    assert FL.select(sample_flows, white) == [sample_flows[5]]
    white, _ = _cli(node=["cb-node9"])
    assert FL.select(sample_flows, white) == []
    white, _ = _cli(to_service=["default/echo-svc"])
    assert FL.select(sample_flows, white) == [sample_flows[5]]
    white, _ = _cli(tcp_flags=["SYN,ACK"])
    assert FL.select(sample_flows, white) == [sample_flows[3]]
    white, _ = _cli(traffic_direction=["ingress"])
    assert FL.select(sample_flows, white) == [sample_flows[3]]
    white, black = FL.filters_from_cli(None, options=[("verdict", "FORWARDED"), ("not", None),
                                                      ("protocol", "tcp")])
    assert FL.select(sample_flows, white, black) == [sample_flows[2], sample_flows[4]]


def test_cli_refuses_what_hubble_refuses():
    with pytest.raises(FL.FilterError, match="cannot be combined"):
        _cli(pod=["a"], from_pod=["b"])
    with pytest.raises(FL.FilterError, match="invalid --verdict"):
        _cli(verdict=["LOST"])
    with pytest.raises(FL.FilterError, match="unable to parse type"):
        _cli(type=["bogus"])
    with pytest.raises(FL.FilterError, match="unknown tcp flag"):
        _cli(tcp_flags=["SYN,BOGUS"])
    with pytest.raises(FL.FilterError, match="consecutive --not"):
        FL.filters_from_cli(None, options=[("not", None), ("not", None), ("pod", "a")])


# --------------------------------------------------------------------- output


def test_json_lines_parse_back_with_unknown_fields_rejected(sample_flows):
    text = O.format_flows(sample_flows, "json")
    lines = text.splitlines()
    assert len(lines) == len(sample_flows) and O.format_flows(sample_flows, "jsonpb") == text
    for line, resp in zip(lines, sample_flows):
        assert line == json.dumps(json.loads(line), separators=(",", ":"), ensure_ascii=False)
        parsed = json_format.Parse(line, observer_pb2.GetFlowsResponse(),
                                   ignore_unknown_fields=False)
        assert parsed == resp
        d = json.loads(line)
        assert list(d) == ["flow", "node_name", "time"]
        assert list(d["flow"])[:3] == ["time", "uuid", "verdict"]     # declaration order
    first = json.loads(lines[0])["flow"]
    assert first["event_type"] == {"type": 4} and first["trace_observation_point"] == "TO_ENDPOINT"
    assert first["l4"]["TCP"]["flags"] == {"SYN": True} and first["is_reply"] is False
    assert json.loads(lines[1])["flow"]["drop_reason_desc"] == "POLICY_DENIED"


def test_json_escapes_html_as_go_does():
    resp = observer_pb2.GetFlowsResponse(node_name="a<b>&c")
    assert O.to_json(resp) == '{"node_name":"a\\u003cb\\u003e\\u0026c"}'


def test_compact_output(sample_flows):
    lines = O.format_flows(sample_flows, "compact").splitlines()
    assert lines[0] == ("Nov 14 22:13:20.000: default/client:40000 (ID:47652) -> "
                        "default/echo:8080 (ID:62969) to-endpoint FORWARDED (TCP Flags: SYN)")
    assert lines[1] == ("Nov 14 22:13:20.000: default/client:40000 (ID:47652) <> "
                        "203.0.113.10:443 (ID:16777221) Policy denied DROPPED (TCP Flags: SYN)")
    assert lines[2] == ("Nov 14 22:13:20.000: default/client:999 (ID:47652) <- "
                        "default/echo:53 (ID:62969) to-endpoint FORWARDED (UDP)")
    assert "policy-verdict:L3-Only INGRESS ALLOWED (TCP Flags: SYN, ACK)" in lines[3]
    assert lines[4].endswith("from-endpoint FORWARDED (ICMPv4 EchoRequest)")
    assert " -> default/echo-svc:80 (world) from-endpoint" in lines[5]
    node = O.format_flows(sample_flows[:1], "compact", node_name=True)
    assert node.startswith("Nov 14 22:13:20.000 [cb-node0]: ")
    numeric = O.format_flows(sample_flows[:1], "compact", ip_translation=False)
    assert f"{CLIENT4}:40000 (ID:47652) -> {ECHO4}:8080" in numeric


def test_dict_and_table_output(sample_flows):
    text = O.format_flows(sample_flows[:2], "dict")
    assert text == ("  TIMESTAMP: Nov 14 22:13:20.000\n"
                    "     SOURCE: default/client:40000\n"
                    "DESTINATION: default/echo:8080\n"
                    "       TYPE: to-endpoint\n"
                    "    VERDICT: FORWARDED\n"
                    "    SUMMARY: TCP Flags: SYN\n"
                    "------------\n"
                    "  TIMESTAMP: Nov 14 22:13:20.000\n"
                    "     SOURCE: default/client:40000\n"
                    "DESTINATION: 203.0.113.10:443\n"
                    "       TYPE: Policy denied\n"
                    "    VERDICT: DROPPED\n"
                    "    SUMMARY: TCP Flags: SYN\n")
    table = O.format_flows(sample_flows[:2], "table").splitlines()
    # Go's tabwriter: each column but the last as wide as its widest cell + 3
    assert table[0] == ("TIMESTAMP             SOURCE                 DESTINATION         "
                        "TYPE            VERDICT     SUMMARY")
    assert table[1] == ("Nov 14 22:13:20.000   default/client:40000   default/echo:8080   "
                        "to-endpoint     FORWARDED   TCP Flags: SYN")
    assert table[2] == ("Nov 14 22:13:20.000   default/client:40000   203.0.113.10:443    "
                        "Policy denied   DROPPED     TCP Flags: SYN")
    printer = O.Printer("table")
    assert printer.format(sample_flows[0]) == "" and printer.flush().count("\n") == 2
    with pytest.raises(ValueError, match="invalid output format"):
        O.Printer("yaml")
