"""ci/hubble_schema.py, the check of proto/ against Cilium's api/v1, on small
inline schemas (no Cilium file needed): a matching subset passes, a wrong number,
label, streaming or enum value is one line each, a left-out message-typed field is
allowed but a left-out scalar is not, and the command's exit codes and lines."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci import hubble_schema
from harness.paths import ROOT

pytestmark = pytest.mark.test_run_only

FILES = ("flow/flow.proto",)

#: Stands in for Cilium's file: a field of a message type ours leaves out (l7),
#: a oneof, an enum, a service.
THEIRS = """syntax = "proto3";
package flow;
message Flow {
    uint32 id = 1;
    repeated string labels = 2;
    Layer7 l7 = 3;
    oneof protocol { TCP TCP = 4; UDP UDP = 5; }
    Verdict verdict = 6;
}
message Layer7 { string query = 1; }
message TCP { uint32 source_port = 1; }
message UDP { uint32 source_port = 1; }
enum Verdict { VERDICT_UNKNOWN = 0; FORWARDED = 1; DROPPED = 2; }
message Req { uint32 n = 1; }
service Observer { rpc GetFlows(Req) returns (stream Flow) {} }
"""

#: chainbench's side: the same without Layer7 and l7.
OURS = """syntax = "proto3";
package flow;
message Flow {
    uint32 id = 1;
    repeated string labels = 2;
    oneof protocol { TCP TCP = 4; UDP UDP = 5; }
    Verdict verdict = 6;
}
message TCP { uint32 source_port = 1; }
message UDP { uint32 source_port = 1; }
enum Verdict { VERDICT_UNKNOWN = 0; FORWARDED = 1; DROPPED = 2; }
message Req { uint32 n = 1; }
service Observer { rpc GetFlows(Req) returns (stream Flow) {} }
"""


def _compare(tmp_path: Path, ours: str, theirs: str = THEIRS) -> hubble_schema.Report:
    sets = []
    for side, text in (("ours", ours), ("theirs", theirs)):
        (tmp_path / side / "flow").mkdir(parents=True)
        (tmp_path / side / "flow" / "flow.proto").write_text(text)
        sets.append(hubble_schema.compile_set(tmp_path / side, FILES))
    return hubble_schema.compare(*sets, files=FILES)


def test_a_subset_that_leaves_out_only_message_typed_fields_matches(tmp_path):
    rep = _compare(tmp_path, OURS)
    assert rep.mismatches == []
    assert (rep.messages, rep.fields, rep.enum_values, rep.methods) == (4, 8, 3, 1)
    assert rep.summary("X") == "4 messages, 8 fields, 3 enum values, 1 methods checked against X"


@pytest.mark.parametrize("change, expected", [
    (("uint32 id = 1;", "uint32 id = 7;"), "flow.Flow.id: number 7, Cilium's 1"),
    (("repeated string labels", "string labels"), "flow.Flow.labels: label 'LABEL_OPTIONAL', Cilium's 'LABEL_REPEATED'"),
    (("uint32 id = 1;", "uint64 id = 1;"), "flow.Flow.id: type 'TYPE_UINT64', Cilium's 'TYPE_UINT32'"),
    (("oneof protocol { TCP TCP = 4; UDP UDP = 5; }", "TCP TCP = 4; oneof protocol { UDP UDP = 5; }"),
     "flow.Flow.TCP: oneof None, Cilium's 'protocol'"),
    (("    Verdict verdict = 6;\n", ""), "flow.Flow.verdict: missing (Cilium's field 6, TYPE_ENUM)"),
    (("DROPPED = 2;", "DROPPED = 3;"), "flow.Verdict.DROPPED: number 3, Cilium's 2"),
    ((" DROPPED = 2;", ""), "flow.Verdict.DROPPED: missing (Cilium's value 2)"),
    (("returns (stream Flow)", "returns (Flow)"), "flow.Observer.GetFlows: server_streaming False, Cilium's True"),
    (("message Req {", "message Extra { }\nmessage Req {"), "flow.Extra: message not in Cilium's schema"),
])
def test_each_difference_is_one_line(tmp_path, change, expected):
    old, new = change
    assert old in OURS
    assert _compare(tmp_path, OURS.replace(old, new, 1)).mismatches == [expected]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ci.hubble_schema", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_command_passes_proto_against_itself_and_fails_on_a_wrong_number(tmp_path):
    copy = tmp_path / "api"
    shutil.copytree(ROOT / "proto", copy)
    ok = _run(str(copy))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"checked against {copy}"), ok.stdout

    flow = copy / "flow" / "flow.proto"
    text = flow.read_text()
    assert "uint64 cgroup_id = 33;" in text
    flow.write_text(text.replace("uint64 cgroup_id = 33;", "uint64 cgroup_id = 36;"))
    bad = _run(str(copy))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == ["flow.Flow.cgroup_id: number 33, Cilium's 36"]


def test_a_missing_directory_is_one_line_and_exit_2(tmp_path):
    out = _run(str(tmp_path / "nope"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [f"hubble-schema: {tmp_path / 'nope' / 'flow' / 'flow.proto'}: no such file"]
