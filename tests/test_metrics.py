"""Prometheus metrics: Hubble's flow metrics fed with hand-built ``flow.Flow`` messages
(exact counters and labels per metric and per context option, read back from the
exposition text with prometheus-client's parser), and the datapath collector on a node
loaded by the test fixtures with known map contents.  The HTTP serving, ``chainbench
metrics serve|scrape`` and the real Prometheus run in a topology: tests/test_metrics_topology.py.
"""
from __future__ import annotations

import ctypes
import ipaddress
import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP

from harness.abi import drop_reasons
from harness.abi.structs import CtEntry, MetricsKey, TrafficCounter
from harness.bpf import Map
from harness.lb.desired import lb_state
from harness.node import datapath
from harness.observe import icmp_names
from harness.observe.datapath_metrics import DatapathCollector
from harness.observe.metrics import (DEFAULT_METRICS, FlowMetrics, MetricsConfigError,
                                     parse_metrics)
from harness.observe.proto import flow_pb2
from harness.policy.control import PolicyControl
from harness.policy.model import EndpointPolicy, IpcacheEntry, PolicyState, PortRange, Rule
from harness.testrun.packets import eth

from . import lbkit as K
from .nodekit import Node, verdict

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

DROP, TRACE, POLICY_VERDICT, TRACE_SOCK, ACCESS_LOG = 1, 4, 5, 7, 129
FORWARDED, DROPPED, REDIRECTED, TRANSLATED = 1, 2, 5, 7


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple, float]:
    """{sorted (label, value) pairs: value} of *metric*'s samples, parsed from the text."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def lbl(**labels) -> tuple:
    return tuple(sorted(labels.items()))


def flow(verdict=FORWARDED, type_=TRACE, sub_type=0, l4=None, ip_version=1, is_reply=None,
         drop_reason=0, src=None, dst=None, direction=0, **kw) -> flow_pb2.Flow:
    f = flow_pb2.Flow(verdict=verdict, drop_reason_desc=drop_reason,
                      event_type=flow_pb2.CiliumEventType(type=type_, sub_type=sub_type),
                      traffic_direction=direction, **kw)
    if ip_version:
        f.IP.CopyFrom(flow_pb2.IP(source="198.18.0.2", destination="198.18.0.3",
                                  ipVersion=ip_version))
    if l4 is not None:
        f.l4.CopyFrom(l4)
    if is_reply is not None:
        f.is_reply.value = is_reply
    if src is not None:
        f.source.CopyFrom(src)
    if dst is not None:
        f.destination.CopyFrom(dst)
    return f


def tcp(dport=80, sport=40000, **flags) -> flow_pb2.Layer4:
    return flow_pb2.Layer4(TCP=flow_pb2.TCP(source_port=sport, destination_port=dport,
                                            flags=flow_pb2.TCPFlags(**flags)))


def udp(dport=53) -> flow_pb2.Layer4:
    return flow_pb2.Layer4(UDP=flow_pb2.UDP(source_port=40000, destination_port=dport))


def icmp4(t=8, c=0) -> flow_pb2.Layer4:
    return flow_pb2.Layer4(ICMPv4=flow_pb2.ICMPv4(type=t, code=c))


def icmp6(t=128, c=0) -> flow_pb2.Layer4:
    return flow_pb2.Layer4(ICMPv6=flow_pb2.ICMPv6(type=t, code=c))


def metrics(*config) -> tuple[CollectorRegistry, FlowMetrics]:
    reg = CollectorRegistry()
    return reg, FlowMetrics(reg, list(config) or None)


# -- hubble_flows_processed_total ------------------------------------------------------------

def test_flows_processed_counts_every_flow_by_protocol_type_subtype_and_verdict():
    reg, m = metrics("flow")
    for f in (flow(sub_type=0, l4=tcp(SYN=True)),                       # to-endpoint
              flow(sub_type=0, l4=tcp(ACK=True)),
              flow(sub_type=3, l4=udp()),                                 # to-stack
              flow(sub_type=5, l4=icmp4()),                               # from-endpoint
              flow(sub_type=11, l4=icmp6(), ip_version=2),                # to-network
              flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133),
              flow(DROPPED, POLICY_VERDICT, l4=tcp(SYN=True)),
              flow(FORWARDED, POLICY_VERDICT, l4=udp()),
              flow(TRANSLATED, TRACE_SOCK, 2, l4=None, ip_version=0),    # sock-LB: Hubble's Unknown
              flow(FORWARDED, ACCESS_LOG, ip_version=0)):                 # L7 without a record
        m.observe(f)
    expected_l7 = {lbl(protocol="Unknown L7", type="L7", subtype="", verdict="FORWARDED"): 1}
    if hasattr(flow_pb2, "Layer7"):       # a flow.proto compiled with the L7 messages
        m.observe(flow(FORWARDED, ACCESS_LOG, l7=flow_pb2.Layer7(http=flow_pb2.HTTP(code=200))))
        expected_l7[lbl(protocol="HTTP", type="L7", subtype="HTTP", verdict="FORWARDED")] = 1
    assert samples(reg, "hubble_flows_processed_total") == expected_l7 | {
        lbl(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED"): 2,
        lbl(protocol="UDP", type="Trace", subtype="to-stack", verdict="FORWARDED"): 1,
        lbl(protocol="ICMPv4", type="Trace", subtype="from-endpoint", verdict="FORWARDED"): 1,
        lbl(protocol="ICMPv6", type="Trace", subtype="to-network", verdict="FORWARDED"): 1,
        lbl(protocol="TCP", type="Drop", subtype="", verdict="DROPPED"): 1,
        lbl(protocol="TCP", type="PolicyVerdict", subtype="", verdict="DROPPED"): 1,
        lbl(protocol="UDP", type="PolicyVerdict", subtype="", verdict="FORWARDED"): 1,
        lbl(protocol="Unknown flow", type="Unknown", subtype="7", verdict="TRANSLATED"): 1,
    }


def test_no_created_series_are_exposed():
    """Hubble (client_golang) exposes no *_created samples; a scraper sees the same families."""
    reg, m = metrics("flow")
    m.observe(flow(l4=tcp(SYN=True)))
    text = generate_latest(reg).decode()
    assert "hubble_flows_processed_total{" in text and "_created" not in text


# -- hubble_drop_total -----------------------------------------------------------------------

def test_drop_counts_dropped_flows_by_reason_name_and_protocol():
    reg, m = metrics("drop")
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133))
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133))
    m.observe(flow(DROPPED, POLICY_VERDICT, l4=udp(), drop_reason=133))
    m.observe(flow(DROPPED, DROP, 132, l4=icmp4(), drop_reason=132))
    m.observe(flow(DROPPED, DROP, 250, l4=tcp(), drop_reason=250))     # not in the enum: its number
    m.observe(flow(FORWARDED, TRACE, l4=tcp(SYN=True)))                # not a drop
    assert samples(reg, "hubble_drop_total") == {
        lbl(reason="POLICY_DENIED", protocol="TCP"): 2,
        lbl(reason="POLICY_DENIED", protocol="UDP"): 1,
        lbl(reason="INVALID_SOURCE_IP", protocol="ICMPv4"): 1,
        lbl(reason="250", protocol="TCP"): 1,
    }


# -- hubble_tcp_flags_total ------------------------------------------------------------------

def test_tcp_flags_counts_forwarded_tcp_flags_by_family():
    reg, m = metrics("tcp")
    m.observe(flow(l4=tcp(SYN=True)))
    m.observe(flow(l4=tcp(SYN=True, ACK=True)))
    m.observe(flow(REDIRECTED, l4=tcp(FIN=True, ACK=True)))
    m.observe(flow(l4=tcp(RST=True, FIN=True)))                 # one flow, two flags
    m.observe(flow(l4=tcp(SYN=True), ip_version=2))
    m.observe(flow(l4=tcp(ACK=True, PSH=True)))                 # no flag Hubble counts
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133))   # not forwarded
    m.observe(flow(l4=tcp(SYN=True), ip_version=0))             # no IP: left out
    no_flags = flow()
    no_flags.l4.TCP.destination_port = 80                       # TCP without flags: left out
    m.observe(no_flags)
    m.observe(flow(l4=udp()))
    assert samples(reg, "hubble_tcp_flags_total") == {
        lbl(flag="SYN", family="IPv4"): 1, lbl(flag="SYN-ACK", family="IPv4"): 1,
        lbl(flag="FIN", family="IPv4"): 2, lbl(flag="RST", family="IPv4"): 1,
        lbl(flag="SYN", family="IPv6"): 1,
    }


# -- hubble_port_distribution_total ----------------------------------------------------------

def test_port_distribution_counts_forwarded_requests_by_destination_port():
    reg, m = metrics("port-distribution")
    m.observe(flow(l4=tcp(80, SYN=True), is_reply=False))
    m.observe(flow(REDIRECTED, l4=tcp(80), is_reply=False))
    m.observe(flow(l4=udp(53), is_reply=False))
    m.observe(flow(l4=icmp4(), is_reply=False))
    m.observe(flow(l4=icmp6(), is_reply=False, ip_version=2))
    m.observe(flow(l4=tcp(40000, 80), is_reply=True))           # a reply: left out
    m.observe(flow(l4=tcp(81)))                                  # reply unknown: left out
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(82), is_reply=False, drop_reason=133))
    assert samples(reg, "hubble_port_distribution_total") == {
        lbl(protocol="TCP", port="80"): 2, lbl(protocol="UDP", port="53"): 1,
        lbl(protocol="ICMPv4", port="0"): 1, lbl(protocol="ICMPv6", port="0"): 1,
    }


# -- hubble_icmp_total -----------------------------------------------------------------------

def test_icmp_counts_every_icmp_flow_by_family_and_gopacket_type_name():
    reg, m = metrics("icmp")
    m.observe(flow(l4=icmp4(8)))
    m.observe(flow(l4=icmp4(0)))
    m.observe(flow(DROPPED, DROP, 133, l4=icmp4(3, 3), drop_reason=133))   # dropped: counted too
    m.observe(flow(l4=icmp6(129), ip_version=2))
    m.observe(flow(l4=icmp6(1, 4), ip_version=2))
    m.observe(flow(l4=tcp(SYN=True)))
    assert samples(reg, "hubble_icmp_total") == {
        lbl(family="IPv4", type="EchoRequest"): 1, lbl(family="IPv4", type="EchoReply"): 1,
        lbl(family="IPv4", type="DestinationUnreachable(Port)"): 1,
        lbl(family="IPv6", type="EchoReply"): 1,
        lbl(family="IPv6", type="DestinationUnreachable(PortUnreachable)"): 1,
    }


@pytest.mark.parametrize("family,t,c,name", [
    (4, 11, 0, "TimeExceeded(TTLExceeded)"), (4, 0, 3, "EchoReply(Code: 3)"),
    (4, 3, 99, "DestinationUnreachable(Code: 99)"), (4, 42, 1, "42(1)"),
    (4, 5, 2, "Redirect(TOS+Net)"), (6, 135, 0, "NeighborSolicitation"),
    (6, 2, 0, "PacketTooBig"), (6, 200, 0, "200(0)")])
def test_icmp_type_names_are_gopackets(family, t, c, name):
    assert icmp_names.type_code(family, t, c) == name


# -- context options -------------------------------------------------------------------------

WEB = flow_pb2.Endpoint(ID=2, identity=1001, namespace="x", pod_name="web-7d4f9c-abcde",
                        labels=["k8s:app=web", "k8s:io.kubernetes.pod.namespace=x"],
                        workloads=[flow_pb2.Workload(name="web", kind="Deployment")])
WORLD = flow_pb2.Endpoint(identity=2, labels=["reserved:world"])
APISERVER = flow_pb2.Endpoint(identity=7, labels=["reserved:world", "reserved:kube-apiserver"])


@pytest.mark.parametrize("context,source,destination", [
    ("pod", "x/web-7d4f9c-abcde", ""),
    ("namespace", "x", ""),
    ("identity", "k8s:app=web,k8s:io.kubernetes.pod.namespace=x", "reserved:world"),
    ("reserved-identity", "", "reserved:world"),
    ("workload-name", "web", ""),
    ("app", "web", ""),
    ("pod-short", "x/web", ""),
    ("pod-name", "web-7d4f9c-abcde", ""),
    ("ip", "198.18.0.2", "198.18.0.3"),
    ("dns", "", "example.org,www.example.org"),
    ("pod|ip", "x/web-7d4f9c-abcde", "198.18.0.3"),      # the first non-empty one
    ("reserved-identity|namespace", "x", "reserved:world"),
])
def test_source_and_destination_context_labels(context, source, destination):
    reg, m = metrics(f"drop:sourceContext={context};destinationContext={context}")
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133, src=WEB, dst=WORLD,
                   destination_names=["example.org", "www.example.org"]))
    assert samples(reg, "hubble_drop_total") == {
        lbl(source=source, destination=destination, reason="POLICY_DENIED", protocol="TCP"): 1}


def test_the_kube_apiserver_label_wins_the_reserved_identity():
    reg, m = metrics("flow:destinationContext=reserved-identity")
    m.observe(flow(l4=tcp(SYN=True), dst=APISERVER))
    assert samples(reg, "hubble_flows_processed_total") == {
        lbl(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED",
            destination="reserved:kube-apiserver"): 1}


def test_a_context_only_on_one_side_adds_only_that_label():
    reg, m = metrics("tcp:sourceContext=namespace", "icmp:destinationContext=ip")
    m.observe(flow(l4=tcp(SYN=True), src=WEB))
    m.observe(flow(l4=icmp4(), src=WEB))
    assert samples(reg, "hubble_tcp_flags_total") == {
        lbl(flag="SYN", family="IPv4", source="x"): 1}
    assert samples(reg, "hubble_icmp_total") == {
        lbl(family="IPv4", type="EchoRequest", destination="198.18.0.3"): 1}


def test_direction_specific_contexts_override_the_plain_one():
    reg, m = metrics("port-distribution:sourceContext=namespace;sourceIngressContext=pod;"
                     "destinationContext=namespace;destinationEgressContext=ip")
    m.observe(flow(l4=tcp(80), is_reply=False, src=WEB, dst=WEB, direction=1))    # ingress
    m.observe(flow(l4=tcp(81), is_reply=False, src=WEB, dst=WEB, direction=2))    # egress
    m.observe(flow(l4=tcp(82), is_reply=False, src=WEB, dst=WEB))                 # unknown
    assert samples(reg, "hubble_port_distribution_total") == {
        lbl(protocol="TCP", port="80", source="x/web-7d4f9c-abcde", destination="x"): 1,
        lbl(protocol="TCP", port="81", source="x", destination="198.18.0.3"): 1,
        lbl(protocol="TCP", port="82", source="x", destination="x"): 1,
    }


def test_labels_context_adds_each_listed_label():
    reg, m = metrics("drop:labelsContext=traffic_direction,source_namespace,source_app,"
                     "destination_pod,destination_ip,source_workload")
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133, src=WEB, dst=WORLD,
                   direction=1))
    m.observe(flow(DROPPED, DROP, 133, l4=tcp(SYN=True), drop_reason=133, src=WORLD, dst=WEB))
    assert samples(reg, "hubble_drop_total") == {
        lbl(source_namespace="x", source_workload="web", source_app="web", destination_ip="198.18.0.3",
            destination_pod="", traffic_direction="ingress", reason="POLICY_DENIED",
            protocol="TCP"): 1,
        lbl(source_namespace="", source_workload="", source_app="", destination_ip="198.18.0.3",
            destination_pod="web-7d4f9c-abcde", traffic_direction="unknown",
            reason="POLICY_DENIED", protocol="TCP"): 1,
    }


# -- configuration ---------------------------------------------------------------------------

def test_no_metrics_named_enables_hubbles_default_set():
    reg, m = metrics()
    assert m.enabled == list(DEFAULT_METRICS) == ["drop", "tcp", "flow", "port-distribution",
                                                  "icmp"]
    m.observe(flow(DROPPED, DROP, 133, l4=icmp4(), drop_reason=133))
    names = {f.name for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert names == {"hubble_drop", "hubble_tcp_flags", "hubble_flows_processed",
                     "hubble_port_distribution", "hubble_icmp", "hubble_lost_events"}


def test_hubbles_option_syntax_is_parsed():
    assert parse_metrics(["drop:sourceContext=namespace;destinationContext=pod", "tcp",
                          "flow port-distribution icmp:labelsContext=source_pod"]) == {
        "drop": {"sourceContext": "namespace", "destinationContext": "pod"}, "tcp": {},
        "flow": {}, "port-distribution": {}, "icmp": {"labelsContext": "source_pod"}}
    assert parse_metrics(["drop:SOURCECONTEXT=Namespace"])       # keys and values: any case


@pytest.mark.parametrize("spec,named", [
    ("dns:query", "metric 'dns' does not exist"),
    ("drop:sourceContext=namespace;colour=red", "unknown option 'colour'"),
    ("tcp:destinationContext=pod|cluster", "unknown context 'cluster'"),
    ("flow:labelsContext=source_pod,source_colour", "invalid labelsContext value 'source_colour'"),
])
def test_a_bad_metric_or_option_is_one_line_naming_it(spec, named):
    with pytest.raises(MetricsConfigError) as exc:
        FlowMetrics(CollectorRegistry(), [spec])
    assert named in str(exc.value) and spec in str(exc.value) and "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


def test_lost_events_are_counted_by_source():
    reg, m = metrics("flow")
    m.observe_lost(flow_pb2.LostEvent(source=1, num_events_lost=5))
    m.observe_lost(flow_pb2.LostEvent(source=1, num_events_lost=2))
    m.observe_lost(flow_pb2.LostEvent(source=3, num_events_lost=1))
    assert samples(reg, "hubble_lost_events_total") == {
        lbl(source="perf_event_ring_buffer"): 7, lbl(source="hubble_ring_buffer"): 1}


def all_samples(registry: CollectorRegistry) -> dict[tuple, float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("config", [
    (),
    ("flow:sourceContext=pod|identity;destinationContext=namespace;"
     "labelsContext=source_ip,destination_pod,traffic_direction",
     "drop:sourceContext=identity;destinationEgressContext=pod;destinationIngressContext=ip",
     "tcp:destinationContext=ip|pod", "port-distribution:sourceContext=reserved-identity",
     "icmp:sourceContext=app;destinationContext=pod-short")])
def test_a_batch_is_counted_as_its_flows_one_by_one(config):
    """observe_batch (grouped rows, one flow's labels per group) gives exactly the counters
    and labels observe gives fed every flow of the batch, with Hubble's default metrics
    and with every kind of context label."""
    from .test_observe_flows import flow_batch, mixed_records
    recs = mixed_records()
    one_by_one, m1 = metrics(*config)
    for i in range(len(recs)):
        m1.observe(flow_batch(recs).entry(i).flow)
    batched, m2 = metrics(*config)
    batch = flow_batch(recs)
    m2.observe_batch(batch)
    expected = all_samples(one_by_one)
    assert all_samples(batched) == expected
    assert sum(v for (name, _), v in expected.items()
               if name == "hubble_flows_processed_total") == len(recs)
    # far fewer flows built than counted
    assert sum(b is not None for b in batch._built) < len(recs) // 2


def test_registries_are_separate():
    a, ma = metrics("flow")
    b, _ = metrics("flow")
    ma.observe(flow(l4=tcp(SYN=True)))
    assert sum(samples(a, "hubble_flows_processed_total").values()) == 1
    assert samples(b, "hubble_flows_processed_total") == {}


# -- the datapath collector on a node loaded by the fixtures ---------------------------------

TCP_ = 6
WEB4, CLIENT4, X4 = "198.18.0.20", "198.18.0.40", "198.18.0.30"
WEB_ID, CLIENT_ID, X_ID = 1001, 1003, 1002
IDS = {"default/web": 2, "default/x": 3, "default/client": 4}
VIP = "198.19.0.20"


@pytest.fixture
def node(load):
    """web (2) admits TCP 80 from client (4) only; x (3) has no policy; one service."""
    n = Node(load)
    n.web, n.x, n.client = n.endpoint(2, WEB4), n.endpoint(3, X4), n.endpoint(4, CLIENT4)
    net = ipaddress.ip_network
    ipc = tuple(IpcacheEntry(net(f"{ip}/32"), i) for ip, i in
                ((WEB4, WEB_ID), (X4, X_ID), (CLIENT4, CLIENT_ID)))
    eps = (EndpointPolicy("default/web", WEB_ID, True, False,
                          (Rule(False, CLIENT_ID, TCP_, PortRange(80, 80)),)),
           EndpointPolicy("default/x", X_ID, False, False),
           EndpointPolicy("default/client", CLIENT_ID, False, False))
    PolicyControl(n.coll.maps).apply(PolicyState((), ipc, eps), IDS)
    datapath.lb_control(n.coll).apply(lb_state(K.scenario(K.service(
        "svc", VIP, [("http", 80, 8080, "TCP")], [K.endpoint("198.18.1.20")]))))
    yield n
    n.close()


def syn(src, dst, sport, dport=80):
    return eth() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S")


def collector(n: Node) -> tuple[CollectorRegistry, DatapathCollector]:
    reg = CollectorRegistry()
    c = DatapathCollector(n.name, pin_dir=n.pin,
                          service_names=lambda: {(VIP, 80, "TCP"): ("default/svc", {})},
                          endpoint_names=lambda: {v: k for k, v in IDS.items()})
    reg.register(c)
    return reg, c


def test_datapath_collector_reports_drops_forwards_and_services(node):
    policy, sip = drop_reasons.CODES["DROP_POLICY"], drop_reasons.CODES["DROP_INVALID_SIP"]
    sizes = {}
    for sport in (41000, 41001):                                   # x -> web: denied twice
        pkt = syn(X4, WEB4, sport)
        sizes["denied"] = len(pkt)
        assert verdict(node.web.ingress(pkt)[0]) == policy
    allowed = syn(CLIENT4, WEB4, 42000)
    assert verdict(node.web.ingress(allowed)[0]) == "pass"
    spoofed = syn(WEB4, "203.0.113.9", 43000)
    assert verdict(node.x.egress(spoofed)[0]) == sip
    hit = syn(CLIENT4, VIP, 44000)
    res, out = node.client.egress(hit)
    assert verdict(res) == "pass" and out[IP].dst == "198.18.1.20"

    reg, _ = collector(node)
    denied_bytes = 2 * sizes["denied"]
    assert samples(reg, "cilium_drop_count_total") == {
        lbl(reason="Policy denied", direction="INGRESS"): 2,
        lbl(reason="Invalid source ip", direction="EGRESS"): 1}
    assert samples(reg, "cilium_drop_bytes_total")[
        lbl(reason="Policy denied", direction="INGRESS")] == denied_bytes
    assert samples(reg, "chainbench_endpoint_drop_count_total") == {
        lbl(endpoint="default/web", endpoint_id="2", reason="Policy denied",
            direction="INGRESS"): 2,
        lbl(endpoint="default/x", endpoint_id="3", reason="Invalid source ip",
            direction="EGRESS"): 1}
    # The datapath counts drops only: no forward series until a program counts them.
    assert samples(reg, "cilium_forward_count_total") == {}
    assert samples(reg, "chainbench_endpoint_forward_count_total") == {}
    assert samples(reg, "chainbench_service_packets_total") == {
        lbl(service="default/svc", frontend=f"{VIP}:80/TCP", type="ClusterIP",
            service_id="1"): 1}
    assert samples(reg, "chainbench_service_bytes_total") == {
        lbl(service="default/svc", frontend=f"{VIP}:80/TCP", type="ClusterIP",
            service_id="1"): len(hit)}


def test_forwarded_packets_counted_in_cb_metrics_are_reported_per_endpoint_and_node(node):
    """cb_metrics's reason 0 is "forwarded" (lib/metrics.h): entries written as a program
    counting forwards would write them."""
    m = node.coll.maps["cb_metrics"]
    ncpus = m.ncpus
    for ep_id, direction, packets in ((2, 1, 5), (4, 2, 3), (0, 1, 1)):
        per_cpu = [TrafficCounter(packets, 100 * packets)] + [TrafficCounter(0, 0)] * (ncpus - 1)
        m.update(MetricsKey(0, direction, ep_id), per_cpu)
    reg, _ = collector(node)
    assert samples(reg, "chainbench_endpoint_forward_count_total") == {
        lbl(endpoint="default/web", endpoint_id="2", direction="INGRESS"): 5,
        lbl(endpoint="default/client", endpoint_id="4", direction="EGRESS"): 3,
        lbl(endpoint="", endpoint_id="0", direction="INGRESS"): 1}
    assert samples(reg, "cilium_forward_count_total") == {
        lbl(direction="INGRESS"): 6, lbl(direction="EGRESS"): 3}
    assert samples(reg, "cilium_forward_bytes_total") == {
        lbl(direction="INGRESS"): 600, lbl(direction="EGRESS"): 300}
    assert samples(reg, "cilium_drop_count_total") == {}


def test_datapath_collector_reports_map_pressure_and_conntrack(node):
    for sport in (45000, 45001, 45002):
        assert verdict(node.web.ingress(syn(CLIENT4, WEB4, sport))[0]) == "pass"
    ct = node.coll.maps["cb_ct4"]
    entries = list(ct.items())
    assert entries
    expired_key, value = entries[0]
    ct.update(expired_key, _with_lifetime(value, 0))              # expired, not yet collected

    reg, _ = collector(node)
    pressure = samples(reg, "cilium_bpf_map_pressure")
    counted = samples(reg, "chainbench_bpf_map_entries")
    sizes = samples(reg, "chainbench_bpf_map_max_entries")
    assert counted[lbl(map_name="cb_ct4")] == len(entries)
    assert pressure[lbl(map_name="cb_ct4")] == len(entries) / ct.max_entries
    assert sizes[lbl(map_name="cb_ct4")] == ct.max_entries
    services = node.coll.maps["cb_lb4_services"]
    assert counted[lbl(map_name="cb_lb4_services")] == len(services)
    # Arrays have every slot: a size, never a pressure.
    assert sizes[lbl(map_name="cb_lb_stats")] == node.coll.maps["cb_lb_stats"].max_entries
    assert lbl(map_name="cb_lb_stats") not in pressure
    pinned = {name for name in os.listdir(node.pin)}
    assert {dict(k)["map_name"] for k in sizes} == pinned
    assert samples(reg, "chainbench_conntrack_entries") == {
        lbl(family="ipv4", status="alive"): len(entries) - 1,
        lbl(family="ipv4", status="expired"): 1,
        lbl(family="ipv6", status="alive"): 0, lbl(family="ipv6", status="expired"): 0}


def _with_lifetime(value: CtEntry, lifetime: int) -> CtEntry:
    copy = CtEntry.from_buffer_copy(bytes(value))
    copy.lifetime = lifetime
    return copy


def test_events_lost_is_absent_without_the_map_and_summed_over_cpus_with_it(node):
    reg, _ = collector(node)
    path = os.path.join(node.pin, "cb_events_lost")
    if not os.path.exists(path):
        assert samples(reg, "chainbench_events_lost_total") == {}
        lost = Map.create("percpu_array", "cb_events_lost", 4, 8, 1, ctypes.c_uint32,
                          ctypes.c_uint64)
        try:
            lost.pin(path)
        finally:
            lost.close()
    with Map.from_pin(path, ctypes.c_uint32, ctypes.c_uint64) as lost:
        per_cpu = list(range(1, lost.ncpus + 1))
        lost.update(0, per_cpu)
    assert samples(reg, "chainbench_events_lost_total") == {(): sum(per_cpu)}


def test_datapath_collector_of_a_node_not_pinned_reports_nothing(tmp_path):
    reg = CollectorRegistry()
    reg.register(DatapathCollector("cb-node0", pin_dir=str(tmp_path / "gone")))
    assert generate_latest(reg) == b""



# -- the command line (no topology needed for what it refuses first) --------------------------

@pytest.mark.parametrize("command", ["serve", "scrape"])
def test_a_port_out_of_range_is_one_line_and_exit_2(command):
    done = subprocess.run([sys.executable, "-m", "harness.cli", "metrics", command, "--port",
                           "70000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "ERROR: --port 70000: expected 1..65535\n"
