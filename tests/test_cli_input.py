"""What the command line reads: scenarios (one validator for every command, stdin,
templates, several files) and captures (pcap/pcapng read strictly), and what
test-run prints about them.  No topology: `up` is only run on input it refuses
before building anything."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapNgWriter, wrpcap

from harness.testrun.packets import eth

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = ROOT / "bench" / "scenarios" / "minimal.yaml"
TEMPLATE = ROOT / "bench" / "scenarios" / "services.yaml.j2"

WORKER_POD = """apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {nodeName: worker-1, containers: [{name: c}]}
"""
POD_CIDR_EXTERNAL_IP = """apiVersion: v1
kind: Service
metadata: {name: x}
spec:
  clusterIP: 198.19.0.5
  externalIPs: [198.18.0.50]
  ports: [{port: 80}]
"""


def chainbench(*args: str, stdin: bytes | str | None = None) -> subprocess.CompletedProcess:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          input=data, timeout=300, cwd=ROOT)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def bad_input_line(proc: subprocess.CompletedProcess) -> str:
    """The one line of a bad-input error (exit 2, nothing else on stderr)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------- one validator

@pytest.fixture
def worker_pod(tmp_path) -> Path:
    path = tmp_path / "worker.yaml"
    path.write_text(WORKER_POD)
    return path


def test_node_name_outside_the_topology_is_refused_by_up_only(worker_pod):
    """A node name not shaped cb-node<i> is valid (a real cluster's): commands that only
    render or resolve take it; `up` refuses it (pure: before it creates anything) in one
    line naming --renumber."""
    expected = (f"ERROR: {worker_pod}: document 1 (Pod default/p): spec.nodeName: 'worker-1' "
                "is not a node of the topology (nodes are named cb-node0 .. cb-node253); a "
                "foreign cluster's objects: `chainbench up --renumber` maps its nodes and "
                "addresses into the address plan")
    assert bad_input_line(chainbench("up", "-f", str(worker_pod))) == expected
    from_stdin = bad_input_line(chainbench("up", "-f", "-", stdin=WORKER_POD))
    assert from_stdin == expected.replace(str(worker_pod), "<stdin>")
    check = chainbench("scenario", "check", str(worker_pod))
    assert check.returncode == 0 and "1 pods on 1 nodes" in check.stdout, check.stderr
    render = chainbench("kube-proxy", "render", "--mode", "iptables", "-f", str(worker_pod))
    assert render.returncode == 0 and render.stdout.startswith("*filter"), render.stderr


def test_up_keeps_a_scenario_from_stdin_or_a_template_in_a_file(tmp_path):
    """The CNI plugin and `connectivity` read the scenario again later: from a file."""
    from harness import validate
    from harness.scenario import source
    text, name = source.read("-", stdin=io.BytesIO(MINIMAL.read_bytes()))
    assert (text, name) == (MINIMAL.read_text(), "<stdin>")
    kept = Path(source.materialize("-", text, str(tmp_path / "state")))
    assert kept.parent == tmp_path / "state" and kept.read_text() == text
    text, name = source.read(str(TEMPLATE), {"services": 2})
    kept = Path(source.materialize(str(TEMPLATE), text, str(tmp_path / "state")))
    assert kept.suffix == ".yaml" and validate.load(str(kept)).services == validate.load(
        str(TEMPLATE), {"services": 2}).services
    assert source.materialize(str(MINIMAL), MINIMAL.read_text(), str(tmp_path)) == str(MINIMAL)


@pytest.mark.parametrize("text", ["", "\n# nothing but a comment\n", "---\n---\n",
                                  "apiVersion: v1\nkind: List\nitems: []\n"])
def test_empty_scenario_is_bad_input(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    for args in (("scenario", "check", str(path)), ("identities", "-f", str(path)),
                 ("kube-proxy", "render", "--mode", "nftables", "-f", str(path))):
        line = bad_input_line(chainbench(*args))
        assert line == f"ERROR: {path}: no objects: an empty scenario (expected Kubernetes " \
                       "objects: Pods, Services, ...)"


def test_check_applies_the_lb_validation_the_programming_commands_apply(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(POD_CIDR_EXTERNAL_IP)
    check = bad_input_line(chainbench("scenario", "check", str(path)))
    render = bad_input_line(chainbench("kube-proxy", "render", "--mode", "iptables", "-f", str(path)))
    assert check == render
    assert check.startswith(f"ERROR: {path}: ExternalIP 198.18.0.50:80/TCP of default/x lies in the "
                            "pod CIDR")


def test_check_reports_every_bad_file_then_exits_2(tmp_path):
    bad_pod = tmp_path / "bad-pod.yaml"
    bad_pod.write_text(WORKER_POD.replace("worker-1", "Worker_1"))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    missing = tmp_path / "missing.yaml"
    proc = chainbench("scenario", "check", str(bad_pod), str(MINIMAL), str(empty), str(missing))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = proc.stderr.splitlines()
    assert [e.split(": ")[1] for e in errors] == [str(bad_pod), str(empty), str(missing)]
    assert all(e.startswith("ERROR: ") for e in errors)
    assert proc.stdout.splitlines() == [
        f"{MINIMAL}: 3 pods on 2 nodes, 1 services, 1 endpointslices, 1 networkpolicies, "
        "1 ciliumnetworkpolicies"]
    ok = chainbench("scenario", "check", str(MINIMAL), str(MINIMAL))
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2 and ok.stderr == ""


def test_dash_reads_the_scenario_from_stdin():
    text = MINIMAL.read_text()
    proc = chainbench("scenario", "check", "-", stdin=text)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("<stdin>: 3 pods on 2 nodes")
    from_file = chainbench("kube-proxy", "render", "--mode", "nftables", "-f", str(MINIMAL))
    from_stdin = chainbench("kube-proxy", "render", "--mode", "nftables", "-f", "-", stdin=text)
    assert from_stdin.returncode == 0 and from_stdin.stdout == from_file.stdout != ""
    ids = chainbench("identities", "-f", "-", "-o", "json", stdin=text)
    assert ids.returncode == 0 and json.loads(ids.stdout)[0]["labels"] == "reserved:host"
    line = bad_input_line(chainbench("scenario", "check", "-", stdin=WORKER_POD.replace("worker-1", "Worker_1")))
    assert line.startswith("ERROR: <stdin>: document 1 (Pod default/p): spec.nodeName:")
    line = bad_input_line(chainbench("identities", "-f", "-", stdin=b"kind: Pod\n\xff\n"))
    assert line.startswith("ERROR: <stdin>: not UTF-8 text")


def test_templates_are_read_by_check_and_every_loader(tmp_path):
    params = ("-p", "services=3", "-p", "endpoints=1")
    proc = chainbench("scenario", "check", str(TEMPLATE), *params)
    assert proc.returncode == 0, proc.stderr
    assert "4 pods on 2 nodes, 3 services, 3 endpointslices" in proc.stdout
    rendered = chainbench("kube-proxy", "render", "--mode", "iptables", "-f", str(TEMPLATE), *params)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.count("-A KUBE-SERVICES -m comment --comment \"default/svc-") == 3
    # a template of one's own, outside bench/scenarios
    own = tmp_path / "mine.yaml.j2"
    own.write_text("{% for i in range(n) %}---\napiVersion: v1\nkind: Pod\nmetadata: {name: p{{ i }}}\n"
                   "spec: {nodeName: cb-node{{ i }}}\n{% endfor %}")
    proc = chainbench("scenario", "check", str(own), "-p", "n=3")
    assert proc.returncode == 0 and proc.stdout.startswith(f"{own}[n=3]: 3 pods on 3 nodes"), proc.stderr
    line = bad_input_line(chainbench("scenario", "check", str(own), "-p", "m=3"))
    assert "unknown template parameter 'm'" in line
    line = bad_input_line(chainbench("scenario", "check", str(MINIMAL), "-p", "n=3"))
    assert line == f"ERROR: {MINIMAL}: -p parameters only apply to .j2 templates"


def test_the_second_scenario_cli_is_gone():
    proc = subprocess.run([sys.executable, "-m", "harness.scenario.check", str(MINIMAL)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode != 0 and "No module named harness.scenario.check" in proc.stderr


# ------------------------------------------------------------------------- captures

PACKETS = [eth() / IP(src="198.18.0.10", dst="198.19.0.1") / TCP(sport=1234, dport=80, flags="S"),
           eth() / IPv6(src="2001:db8:1::a", dst="2001:db8:2::1") / UDP(sport=5353, dport=53)]


@pytest.fixture
def pcap(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "in.pcap"
    wrpcap(str(path), [eth().__class__(bytes(p)) for p in PACKETS])
    return path, path.read_bytes()


@pytest.fixture
def pcapng(tmp_path) -> Path:
    path = tmp_path / "in.pcapng"
    with PcapNgWriter(str(path)) as w:
        for p in PACKETS:
            w.write(eth().__class__(bytes(p)))
    return path


def test_table_decodes_l3_and_l4_and_names_the_duration_column(pcap):
    proc = chainbench("test-run", "tc_parse_stats", "--pcap", str(pcap[0]))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["#", "VERDICT", "DROP", "REASON", "NS/RUN", "LEN", "PACKET", "OUT"]
    assert lines[1].endswith("Ether / IP / TCP 198.18.0.10:1234 > 198.19.0.1:80 S")
    assert lines[2].endswith("Ether / IPv6 / UDP 2001:db8:1::a:5353 > 2001:db8:2::1:53")
    assert "Raw" not in proc.stdout


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_pcap_and_pcapng_from_a_file_and_from_stdin(kind, pcap, pcapng):
    path = pcap[0] if kind == "pcap" else pcapng
    by_file = chainbench("test-run", "tc_parse_stats", "--pcap", str(path), "--json")
    by_stdin = chainbench("test-run", "tc_parse_stats", "--pcap", "-", "--json",
                          stdin=path.read_bytes())
    for proc in (by_file, by_stdin):
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [bytes.fromhex(r["packet_out"]) for r in rows] == [bytes(p) for p in PACKETS]


def _record(caplen: int, data: bytes) -> bytes:
    return struct.pack("<IIII", 0, 0, caplen, caplen) + data


@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:24], "no packets"),
    (lambda d: d[:-10], "packet 1 (byte 94): record truncated (52 of caplen 62 bytes)"),
    (lambda d: d[:94 + 8], "packet 1 (byte 94): record header truncated (8 of 16 bytes)"),
    (lambda d: d[:24] + _record(0x7FFFFFFF, b"\0" * 64),
     "packet 0 (byte 24): caplen 2147483647 exceeds the snaplen (65535; at most 262144)"),
    (lambda d: d + _record(0, b""), "packet 2: no data (caplen 0)"),
    (lambda d: d + _record(6, b"\0" * 6), "packet 2: 6 bytes, shorter than an Ethernet header (14)"),
    (lambda d: d[:10], "pcap file header truncated (10 of 24 bytes)"),
    (lambda d: b"hello world", "not a pcap/pcapng file (magic 0x68656c6c)"),
])
def test_damaged_pcap_is_one_line_exit_2(tmp_path, pcap, mangle, message):
    path = tmp_path / "bad.pcap"
    path.write_bytes(mangle(pcap[1]))
    line = bad_input_line(chainbench("test-run", "tc_parse_stats", "--pcap", str(path)))
    assert line == f"ERROR: {path}: {message}"


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


# Blocks of the fixture: 0 SHB (byte 0), 1 IDB (28), 2 EPB (48, 88 bytes), 3 EPB (136, 96 bytes).
@pytest.mark.parametrize("mangle, message", [
    (lambda d: d[:-10], "block 3 (byte 136): block truncated (86 of block total length 96 bytes)"),
    (lambda d: d[:-4] + b"\0" * 4, "block 3 (byte 136): trailing block total length 0 differs "
                                    "from 96"),
    (lambda d: _set_u32(d, 48 + 8 + 12, 0x7FFFFFFF),
     "packet 0 (block 2, byte 48): captured length 2147483647 exceeds the block (56 bytes of "
     "packet data)"),
    (lambda d: _set_u32(d, 48 + 8, 1), "packet 0 (block 2, byte 48): interface id 1 is not "
                                       "described (the section has 1 interfaces)"),
])
def test_damaged_pcapng_is_one_line_exit_2(tmp_path, pcapng, mangle, message):
    path = tmp_path / "bad.pcapng"
    path.write_bytes(mangle(pcapng.read_bytes()))
    line = bad_input_line(chainbench("test-run", "tc_parse_stats", "--pcap", str(path)))
    assert line == f"ERROR: {path}: {message}"


def test_header_only_pcapng_has_no_packets(tmp_path, pcapng):
    data = pcapng.read_bytes()
    shb_len = struct.unpack("<I", data[4:8])[0]
    idb_len = struct.unpack("<I", data[shb_len + 4:shb_len + 8])[0]
    path = tmp_path / "empty.pcapng"
    path.write_bytes(data[:shb_len + idb_len])
    assert bad_input_line(chainbench("test-run", "tc_parse_stats", "--pcap", str(path))) == \
        f"ERROR: {path}: no packets"


def test_pcap_and_scenario_cannot_both_read_stdin(pcap):
    line = bad_input_line(chainbench("test-run", "lxc:from_container", "--pcap", "-",
                                     "--scenario", "-", stdin=pcap[1]))
    assert "only one of them can read standard input" in line


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_command_started_as_a_background_job_still_ends_on_a_signal(sig, code):
    """A background job of a non-interactive shell (CI, `cmd &`) starts with SIGINT
    and SIGQUIT ignored; the CLI installs its own handlers, so Ctrl-C (and SIGTERM)
    still end a command (here one waiting for its scenario on standard input) with
    128 + signal, one line, no traceback."""
    import signal
    import time

    def like_a_background_job():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "scenario", "check", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=like_a_background_job)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:       # its handlers are in once it reads stdin
            with open(f"/proc/{proc.pid}/status") as f:
                caught = int(next(l for l in f if l.startswith("SigCgt:")).split()[1], 16)
            if caught & (1 << (signal.SIGINT - 1)) and caught & (1 << (signal.SIGTERM - 1)):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert b"Traceback" not in err and len(err.decode().strip().splitlines()) <= 1


# ------------------------------------------------------------------- kube-proxy render

FEATURES = ROOT / "bench" / "scenarios" / "service-features.yaml"


def test_kube_proxy_render_as_a_node_and_per_family():
    # Without a node no endpoint is local: an externalTrafficPolicy Local service's
    # KUBE-SVL chain has nothing to jump to; as cb-node0 it has cb-node0's endpoint.
    anon = chainbench("kube-proxy", "render", "--mode", "iptables", "-f", str(FEATURES))
    node = chainbench("kube-proxy", "render", "--mode", "iptables", "--node", "cb-node0",
                      "-f", str(FEATURES))
    assert anon.returncode == node.returncode == 0, (anon.stderr, node.stderr)
    assert "-A KUBE-SVL-" in node.stdout and "has no local endpoints" in anon.stdout
    v6 = chainbench("kube-proxy", "render", "--mode", "nftables", "--family", "6",
                    "--node", "cb-node0", "-f", str(FEATURES))
    assert v6.returncode == 0 and "add table ip6 kube-proxy" in v6.stdout
    assert "ip6 daddr" in v6.stdout and " ip daddr " not in v6.stdout


def test_kube_proxy_render_refuses_an_unknown_node():
    line = bad_input_line(chainbench("kube-proxy", "render", "--mode", "nftables", "--node",
                                     "cb-node9", "-f", str(FEATURES)))
    assert line == "ERROR: --node cb-node9: not a node of the scenario (cb-node0, cb-node1)"


def test_a_command_runs_on_one_thread_so_its_exit_code_survives_a_late_signal():
    """numpy (the LB planner's arrays) starts a BLAS worker thread unless told not to;
    a SIGINT arriving as a finished command exits could then be taken by that thread,
    which has not blocked it, and kill the process (exit -2) after the work was done
    (the fault suite's lb apply caught it).  Importing harness keeps the process to
    one thread."""
    code = ("import os, harness.lb.control, harness.cli; "
            "print(len(os.listdir('/proc/self/task')))")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "1"
