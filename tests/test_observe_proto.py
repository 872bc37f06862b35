"""Hubble's protobuf API as `make build` generates it (harness/observe/proto.py): a
GetFlowsResponse written with protojson has the field names and enum strings
`hubble observe -o json` prints, parses back unchanged with unknown fields
rejected, and a missing build is one ChainbenchError line naming `make build`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from google.protobuf import json_format

from harness.paths import ROOT
from harness.observe.proto import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2

pytestmark = pytest.mark.test_run_only


def _syn_response() -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(node_name="cb-node0")
    resp.time.FromNanoseconds(1_700_000_000_123_456_789)
    f = resp.flow
    f.time.CopyFrom(resp.time)
    f.uuid = "0b7e3a2c-1d2f-4c5b-9a8e-1234567890ab"
    f.verdict = flow_pb2.FORWARDED
    f.IP.source, f.IP.destination, f.IP.ipVersion = "198.18.0.10", "198.18.1.20", flow_pb2.IPv4
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 40312, 80
    f.l4.TCP.flags.SYN = True
    f.source.ID, f.source.identity, f.source.namespace, f.source.pod_name = 12, 4242, "default", "client-0"
    f.source.labels.extend(["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"])
    f.destination.ID, f.destination.identity = 34, 4343
    f.destination.namespace, f.destination.pod_name = "default", "web-0"
    f.destination.labels.append("k8s:app=web")
    f.Type = flow_pb2.L3_L4
    f.node_name = "cb-node0"
    f.event_type.type = 4
    f.traffic_direction = flow_pb2.EGRESS
    f.trace_observation_point = flow_pb2.TO_ENDPOINT
    f.is_reply.value = False
    f.Summary = "TCP Flags: SYN"
    return resp


def test_a_flow_is_written_with_hubbles_field_names_and_enum_strings():
    line = json_format.MessageToJson(_syn_response(), preserving_proto_field_name=True, indent=None)
    doc = json.loads(line)
    assert set(doc) == {"flow", "node_name", "time"}
    assert doc["node_name"] == "cb-node0" and doc["time"] == "2023-11-14T22:13:20.123456789Z"
    flow = doc["flow"]
    assert flow["verdict"] == "FORWARDED" and flow["Type"] == "L3_L4"
    assert flow["traffic_direction"] == "EGRESS"
    assert flow["trace_observation_point"] == "TO_ENDPOINT"
    assert flow["is_reply"] is False                      # a set BoolValue is written even when false
    assert flow["IP"] == {"source": "198.18.0.10", "destination": "198.18.1.20", "ipVersion": "IPv4"}
    assert flow["l4"] == {"TCP": {"source_port": 40312, "destination_port": 80, "flags": {"SYN": True}}}
    assert flow["source"] == {"ID": 12, "identity": 4242, "namespace": "default", "pod_name": "client-0",
                              "labels": ["k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"]}
    assert flow["destination"]["pod_name"] == "web-0" and flow["node_name"] == "cb-node0"
    assert flow["event_type"] == {"type": 4} and flow["Summary"] == "TCP Flags: SYN"


def test_a_written_line_parses_back_unchanged_with_unknown_fields_rejected():
    sent = _syn_response()
    line = json_format.MessageToJson(sent, preserving_proto_field_name=True, indent=None)
    got = json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)
    assert got == sent and got.WhichOneof("response_types") == "flow"
    # protojson's lowerCamelCase names are accepted too, as Go's protojson does
    camel = json_format.MessageToJson(sent, indent=None)
    assert json_format.Parse(camel, observer_pb2.GetFlowsResponse()) == sent



#: The keys `hubble observe -o json` prints for a flow with all of the issue's fields
#: set (protojson with the proto field names, as Hubble's printer writes them).
HUBBLE_FLOW_KEYS = {
    "time", "uuid", "verdict", "drop_reason_desc", "Type", "ethernet", "IP", "l4", "source",
    "destination", "source_service", "destination_service", "traffic_direction",
    "trace_observation_point", "policy_match_type", "is_reply", "event_type", "node_name",
    "Summary", "interface", "sock_xlate_point", "socket_cookie", "cgroup_id",
}
HUBBLE_ENDPOINT_KEYS = {"ID", "identity", "namespace", "labels", "pod_name"}


def _every_field_flow() -> flow_pb2.Flow:
    f = flow_pb2.Flow()
    f.time.FromNanoseconds(1_700_000_000_000_000_001)
    f.uuid = "5d2c0a6e-9f1b-4e0c-8d3a-0123456789ab"
    f.verdict, f.drop_reason_desc, f.Type = flow_pb2.DROPPED, flow_pb2.POLICY_DENIED, flow_pb2.L3_L4
    f.ethernet.source, f.ethernet.destination = "02:00:00:00:00:0a", "02:00:00:00:01:14"
    f.IP.source, f.IP.destination, f.IP.ipVersion = "198.18.0.10", "198.19.0.1", flow_pb2.IPv4
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 40312, 80
    f.l4.TCP.flags.SYN = f.l4.TCP.flags.ACK = True
    for ep, n in ((f.source, 10), (f.destination, 20)):
        ep.ID, ep.identity, ep.namespace, ep.pod_name = n, 4000 + n, "default", f"pod-{n}"
        ep.labels.append(f"k8s:app=app{n}")
    f.source_service.name, f.source_service.namespace = "client", "default"
    f.destination_service.name, f.destination_service.namespace = "web", "default"
    f.traffic_direction = flow_pb2.INGRESS
    f.trace_observation_point = flow_pb2.TO_ENDPOINT
    f.policy_match_type = 2
    f.is_reply.value = True
    f.event_type.type, f.event_type.sub_type = 1, 133
    f.node_name = "cb-node1"
    f.Summary = "TCP Flags: ACK, SYN"
    f.interface.index, f.interface.name = 7, "lxc1234"
    f.sock_xlate_point = flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_FWD
    f.socket_cookie, f.cgroup_id = 2**40 + 5, 2**33 + 9
    return f


def test_a_flow_with_every_issue_field_has_the_keys_hubble_prints():
    doc = json.loads(json_format.MessageToJson(_every_field_flow(), preserving_proto_field_name=True,
                                               indent=None))
    assert set(doc) == HUBBLE_FLOW_KEYS
    assert set(doc["source"]) == set(doc["destination"]) == HUBBLE_ENDPOINT_KEYS
    assert doc["l4"] == {"TCP": {"source_port": 40312, "destination_port": 80,
                                 "flags": {"SYN": True, "ACK": True}}}
    assert doc["ethernet"] == {"source": "02:00:00:00:00:0a", "destination": "02:00:00:00:01:14"}
    assert doc["source_service"] == {"name": "client", "namespace": "default"}
    assert doc["interface"] == {"index": 7, "name": "lxc1234"}
    assert doc["event_type"] == {"type": 1, "sub_type": 133}
    assert (doc["verdict"], doc["drop_reason_desc"], doc["Type"]) == ("DROPPED", "POLICY_DENIED", "L3_L4")
    assert doc["sock_xlate_point"] == "SOCK_XLATE_POINT_POST_DIRECTION_FWD"
    assert doc["policy_match_type"] == 2 and doc["is_reply"] is True
    # 64-bit integers are JSON strings in protojson, as in Hubble's output
    assert doc["socket_cookie"] == str(2**40 + 5) and doc["cgroup_id"] == str(2**33 + 9)
    assert doc["time"] == "2023-11-14T22:13:20.000000001Z"
    back = json_format.Parse(json.dumps(doc), flow_pb2.Flow(), ignore_unknown_fields=False)
    assert back == _every_field_flow()



def test_a_request_with_every_kind_of_filter_a_hubble_client_sends_decodes():
    sent = {"number": "20", "first": False, "follow": True, "since": "2023-11-14T22:13:20Z",
            "whitelist": [{
                "uuid": ["5d2c0a6e-9f1b-4e0c-8d3a-0123456789ab"], "source_ip": ["198.18.0.10"],
                "source_pod": ["default/pod-10"], "source_fqdn": ["*.example"], "source_label": ["k8s:app=app10"],
                "source_service": ["default/client"], "source_workload": [{"name": "client", "kind": "Deployment"}],
                "destination_ip": ["198.19.0.1"], "destination_pod": ["default/"],
                "destination_fqdn": ["web.example"], "destination_label": ["k8s:app=web"],
                "destination_service": ["default/web"], "destination_workload": [{"name": "web"}],
                "traffic_direction": ["INGRESS"], "verdict": ["DROPPED", "FORWARDED"],
                "event_type": [{"type": 5, "match_sub_type": True, "sub_type": 3}],
                "http_status_code": ["5+"], "protocol": ["tcp"], "source_port": ["40312"],
                "destination_port": ["80"], "reply": [False], "dns_query": ["web"], "source_identity": [4010],
                "destination_identity": [4020], "http_method": ["GET"], "http_path": ["/"],
                "tcp_flags": [{"SYN": True}], "node_name": ["cb-node*"], "ip_version": ["IPv4"],
                "trace_id": ["4bf92f3577b34da6a3ce929d0e0e4736"]}],
            "blacklist": [{"verdict": ["AUDIT"]}]}
    req = json_format.Parse(json.dumps(sent), observer_pb2.GetFlowsRequest(), ignore_unknown_fields=False)
    # every FlowFilter field is set, so none a client may send is missing from the schema
    wl = req.whitelist[0]
    assert {f.name for f, _ in wl.ListFields()} == {f.name for f in flow_pb2.FlowFilter.DESCRIPTOR.fields}
    assert observer_pb2.GetFlowsRequest.FromString(req.SerializeToString()) == req
    written = json.loads(json_format.MessageToJson(req, preserving_proto_field_name=True))
    assert written == {k: v for k, v in sent.items() if k != "first"}   # false is the default, not written


@pytest.mark.parametrize("line", [
    '{"flow": {"verdict": "FORWARDED", "verdikt": "DROPPED"}, "node_name": "cb-node0"}',
    '{"flow": {"verdict": "FORWARDED"}, "node": "cb-node0"}',
    '{"flow": {"verdict": "PASSED"}}',
    '{"flow": {"l4": {"TCP": {"flags": {"SYN": true, "XMAS": true}}}}}',
])
def test_an_unknown_field_or_enum_string_is_rejected(line):
    with pytest.raises(json_format.ParseError):
        json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)


def test_the_observer_service_and_relay_types_are_generated():
    methods = {m.name for m in observer_pb2.DESCRIPTOR.services_by_name["Observer"].methods}
    assert {"GetFlows", "GetNodes", "ServerStatus"} <= methods
    assert hasattr(observer_pb2_grpc, "ObserverStub") and hasattr(observer_pb2_grpc, "add_ObserverServicer_to_server")
    assert relay_pb2.NodeState.Name(relay_pb2.NODE_CONNECTED) == "NODE_CONNECTED"
    assert observer_pb2.GetFlowsResponse.DESCRIPTOR.full_name == "observer.GetFlowsResponse"
    assert flow_pb2.Flow.DESCRIPTOR.full_name == "flow.Flow"


def test_without_a_build_the_import_says_run_make_build(tmp_path):
    code = ("from harness.errors import ChainbenchError\n"
            "try:\n    import harness.observe.proto\nexcept ChainbenchError as e:\n    print('ERR', e)\n")
    env = dict(os.environ, CHAINBENCH_BUILD_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERR ") and lines[0].endswith("run `make build`"), out.stdout
    assert str(tmp_path) in lines[0]
