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
