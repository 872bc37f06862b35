"""Pod traffic on a BPF node creates no netfilter conntrack entries.

The BPF datapath keeps its own connection table (cb_ct maps); the kernel's
netfilter conntrack must stay out of the path, or every connection is tracked
twice.  minimal.yaml with cb-node0 on the BPF datapath and cb-node1 on kube-proxy's
iptables mode: the client on cb-node0 opens TCP connections to the ClusterIP
(backends on both nodes) and straight to each backend pod, while
``net.netfilter.nf_conntrack_count`` (per network namespace) is read in cb-node0's
namespace and in the namespace of each of its pods.  It stays 0 there throughout.
cb-node1, whose kube-proxy rules NAT with conntrack, is the control: the same
traffic leaves entries in its namespace, so the counter is read where it counts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from harness import paths
from harness.host import netns, procs
from harness.scenario import SCENARIO_DIR, load_scenario
from harness.topology import build, chaining

SCENARIO = str(SCENARIO_DIR / "minimal.yaml")
NODES = {"cb-node0": "bpf", "cb-node1": "iptables"}
PORT = 8080
CONNECTIONS = 40

_CLIENT = """
import sys, urllib.request
ok = 0
for url in sys.argv[2:]:
    for _ in range(int(sys.argv[1])):
        with urllib.request.urlopen(url, timeout=5) as r:
            ok += r.status == 200
print(ok)
"""


def _count(ns: str) -> int:
    return int(netns.run(ns, "cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout)


@pytest.fixture
def mixed():
    if build.leftovers():
        pytest.fail(f"leftovers before the test: {build.leftovers()}")
    started: list[subprocess.Popen] = []
    try:
        state = chaining.up(SCENARIO, routing="native", node_datapaths=NODES)
        env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
        for ref in ("default/backend-0", "default/backend-1"):
            procs.spawn("echo-server", ["nsenter", f"--net=/run/netns/{state.pod(ref).netns}",
                                        "--", sys.executable, "-m",
                                        "harness.topology.servers.echo_http", "--port",
                                        str(PORT), "--name", ref.split("/")[1]],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                        new_session=True, on_started=started.append)
        deadline = time.monotonic() + 15
        for ref in ("default/backend-0", "default/backend-1"):
            while not netns.run(state.pod(ref).netns, "ss", "-Hltn",
                                f"sport = :{PORT}").stdout.strip():
                assert time.monotonic() < deadline, f"the server in {ref} did not start"
                time.sleep(0.05)
        yield state
    finally:
        for p in started:
            procs.stop(p)
        build.down()


def test_pod_traffic_on_a_bpf_node_leaves_no_netfilter_conntrack_entry(mixed):
    state = mixed
    vip = next(s for s in load_scenario(SCENARIO).services if s.meta.name == "web").cluster_ips[0]
    urls = [f"http://{vip}:80/"] + [f"http://{state.pod(ref).ipv4}:{PORT}/"
                                    for ref in ("default/backend-0", "default/backend-1")]
    bpf_namespaces = [state.node("cb-node0").netns] + [p.netns for p in state.pods
                                                       if p.node == "cb-node0"]
    assert len(bpf_namespaces) == 3                 # the node, client and backend-0
    control = state.node("cb-node1").netns
    assert all(_count(ns) == 0 for ns in bpf_namespaces + [control])

    client = subprocess.Popen(["nsenter", f"--net=/run/netns/{state.pod('default/client').netns}",
                               "--", sys.executable, "-c", _CLIENT, str(CONNECTIONS), *urls],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = {ns: 0 for ns in bpf_namespaces}
    try:
        while client.poll() is None:                # while the pods talk
            for ns in bpf_namespaces:
                seen[ns] = max(seen[ns], _count(ns))
            time.sleep(0.05)
    finally:
        if client.poll() is None:
            client.kill()
        out, err = client.communicate()
    assert client.returncode == 0, err
    assert int(out) == CONNECTIONS * len(urls)      # every request answered
    for ns in bpf_namespaces:
        seen[ns] = max(seen[ns], _count(ns))        # entries outlive their connection
    assert seen == {ns: 0 for ns in bpf_namespaces}
    # The control: the iptables node tracked the connections to its backend.
    assert _count(control) >= CONNECTIONS
