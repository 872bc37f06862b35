"""A real cluster's objects (tests/data/cluster-dump/cluster.yaml: a ``kubectl get -o yaml``
List with the API server's bookkeeping, foreign addresses and node names) loaded as they
are by every command that sends no traffic, refused by ``up`` in one line naming
``--renumber``, and mapped into the address plan by ``--renumber``.  No topology."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from harness import addressing, validate
from harness.lb.desired import HOST_IP, NODE_OBJECT, lb_state, node_address_sources
from harness.scenario import ScenarioError, load_scenario, load_scenario_text
from harness.scenario.renumber import fits_plan, renumber_text
from harness.testrun.packets import eth

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

ROOT = Path(__file__).resolve().parent.parent
DUMP = ROOT / "tests" / "data" / "cluster-dump" / "cluster.yaml"
EC2 = "ip-10-0-1-23.ec2.internal"
CLIENT = "shop/client-5c4f9b8d7-q2w3e"
WEB_VIP = ipaddress.ip_address("10.96.12.34")
WEB_PODS = {ipaddress.ip_address("10.244.1.5"), ipaddress.ip_address("10.244.2.7")}


def chainbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def bad_input_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), proc.stderr
    return lines[0]


# ----------------------------------------------------------------------------- loading

def test_the_dump_loads_as_it_is_with_any_addresses():
    s = validate.load(str(DUMP), plan_checked=False)
    assert (len(s.pods), len(s.services), len(s.endpoint_slices), len(s.network_policies),
            len(s.cilium_network_policies), len(s.namespaces)) == (4, 5, 6, 1, 1, 1)
    assert dict(s.skipped) == {"ConfigMap": 1, "Deployment": 1, "Event": 1, "Node": 1,
                               "ReplicaSet": 1}
    assert s.nodes == (EC2, "node1")
    web = s.service("shop/web")
    assert [str(a) for a in web.cluster_ips] == ["10.96.12.34", "fc00:10:96::1234"]
    assert [str(a) for a in s.service("shop/web-lb").load_balancer_ips] == ["172.30.200.10"]
    assert s.service("shop/db").headless
    ep = s.endpoint_slices_for(web)[0].endpoints[0]
    assert (ep.node_name, ep.zone, ep.target_ref_name) == (EC2, "us-east-1a", "web-7d9f8c6b5d-abcde")
    # the terminating endpoint of web-nodeport is kept for established flows only
    fe = next(f for f in lb_state(s).frontends if f.service == "shop/web-nodeport"
              and f.type == "ClusterIP")
    assert {(str(b.address), b.state) for b in fe.backends} == {("10.244.1.5", "active"),
                                                                ("10.244.2.7", "terminating")}


def test_foreign_node_addresses_come_from_the_node_object_else_the_pods_host_ips():
    s = load_scenario(DUMP, plan_checked=False)
    sources = node_address_sources(s)
    assert sources[EC2] == ((ipaddress.ip_address("10.0.1.23"),), NODE_OBJECT)
    assert sources["node1"] == ((ipaddress.ip_address("172.30.0.11"),), HOST_IP)
    nodeports = {(str(f.address), f.port) for f in lb_state(s).frontends if f.type == "NodePort"}
    assert {("10.0.1.23", 30080), ("172.30.0.11", 30080), ("10.0.1.23", 31443)} <= nodeports


def test_the_plan_checked_load_refuses_the_dump_as_foreign_not_malformed():
    with pytest.raises(ScenarioError) as exc:
        load_scenario(DUMP)
    assert exc.value.plan and "10.96.12.34 is outside the project's address plan" in str(exc.value)
    # a malformed address stays an error with any addresses, and is not "foreign"
    bad = DUMP.read_text().replace("podIP: 10.244.2.9", "podIP: 10.244.2.999", 1)
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text(bad, "d.yaml", plan_checked=False)
    assert not exc.value.plan
    assert str(exc.value) == ("d.yaml: document 1 (Pod shop/client-5c4f9b8d7-q2w3e): "
                              "items[13].status.podIP: '10.244.2.999' is not an IP address")


def test_multi_document_typed_lists_and_unknown_kinds():
    text = yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "9"},
         "items": [{"metadata": {"name": "a", "namespace": "x"},
                    "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}]},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}},
    ])
    s = load_scenario_text(text, "t.yaml", plan_checked=False)
    assert [v.ref for v in s.services] == ["x/a"]
    assert s.skipped == (("ConfigMap", 1), ("ServiceMonitor", 1))


# ------------------------------------------------------------------------ the commands

def test_scenario_check_counts_the_kinds_and_the_skipped_ones():
    proc = chainbench("scenario", "check", str(DUMP))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"{DUMP}: 4 pods on 2 nodes, 5 services, 6 endpointslices, 1 networkpolicies, "
        "1 ciliumnetworkpolicies, 1 namespaces; skipped 5 objects of kinds chainbench does "
        "not use (1 ConfigMap, 1 Deployment, 1 Event, 1 Node, 1 ReplicaSet); outside the "
        "address plan (`chainbench up --renumber` maps it in)")
    assert f"{EC2} 10.0.1.23 (its Node object's status.addresses)" in proc.stdout


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_render_names_the_foreign_cluster_ips(mode):
    proc = chainbench("kube-proxy", "render", "--mode", mode, "--node", "node1", "-f", str(DUMP))
    assert proc.returncode == 0, proc.stderr
    for vip in ("10.96.12.34", "10.96.40.2", "10.100.7.9", "10.96.0.1"):
        assert vip in proc.stdout
    assert "10.244.1.5" in proc.stdout and "10.244.2.7" in proc.stdout
    assert "note: --node node1: addresses 172.30.0.11 (its pods' status.hostIP(s))" in proc.stderr
    assert "skipped 5 objects of kinds chainbench does not use" in proc.stderr
    assert "198.18.0.0/16" not in proc.stdout       # no plan pod range as the cluster CIDR


def test_kube_proxy_render_takes_the_cluster_cidr():
    proc = chainbench("kube-proxy", "render", "--mode", "iptables", "--cluster-cidr",
                      "10.244.0.0/16,fc00:10:244::/56", "-f", str(DUMP))
    assert proc.returncode == 0, proc.stderr
    assert "-d 10.96.12.34 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in proc.stdout


def test_test_run_sends_a_packet_to_a_foreign_cluster_ip_and_dnats_it_to_a_foreign_pod(tmp_path):
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), [Ether(bytes(eth() / IP(src="10.244.2.9", dst=str(WEB_VIP))
                                   / TCP(sport=41000, dport=80, flags="S")))])
    proc = chainbench("test-run", "lxc:from_container", "--pcap", str(pcap), "--scenario", str(DUMP),
                      "--endpoint", CLIENT, "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["verdict"] == "TC_ACT_OK" and row["drop_reason"] is None, row
    out = Ether(bytes.fromhex(row["packet_out"]))
    assert ipaddress.ip_address(out[IP].dst) in WEB_PODS and out[TCP].dport == 8080
    assert out[IP].src == "10.244.2.9"


def test_test_run_for_a_pod_on_a_node_with_no_known_address(tmp_path):
    """No Node object, no hostIP: the node has no address (no host identity address),
    which is no reason to refuse the pod's program (it was: "local node ... has no
    known address")."""
    scenario = tmp_path / "w.yaml"
    scenario.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: a}}\n"
                        "spec: {nodeName: worker-1, containers: [{name: c}]}\n"
                        "status: {podIP: 10.244.0.5}\n")
    pcap = tmp_path / "in.pcap"
    wrpcap(str(pcap), [Ether(bytes(eth() / IP(src="10.244.0.5", dst="10.244.0.6")
                                   / TCP(sport=41000, dport=80, flags="S")))])
    proc = chainbench("test-run", "lxc:from_container", "--pcap", str(pcap), "--scenario",
                      str(scenario), "--endpoint", "default/p", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "TC_ACT_OK"
    check = chainbench("scenario", "check", str(scenario))
    assert "node addresses: worker-1 no address (none)" in check.stdout


def test_identities_of_the_dump():
    proc = chainbench("identities", "-f", str(DUMP), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    labels = [d["labels"] for d in json.loads(proc.stdout)]
    assert any("k8s:app=web" in ls and "k8s:io.kubernetes.pod.namespace=shop" in ls
               for ls in labels)


@pytest.mark.parametrize("command", [("up",), ("lb", "apply"), ("policy", "apply")])
def test_what_touches_the_network_refuses_the_dump_in_one_line_naming_renumber(command):
    """Refused while validating, before any node, namespace or map is touched."""
    line = bad_input_line(chainbench(*command, "-f", str(DUMP)))
    assert line.startswith(f"ERROR: {DUMP}: document 1 (Service shop/web): "
                           "items[0].spec.clusterIPs[0]: 10.96.12.34 is outside")
    assert line.endswith("`chainbench up --renumber` maps its nodes and addresses into the "
                         "address plan")


def test_bench_scenario_is_for_micro_and_control_only():
    line = bad_input_line(chainbench("bench", "macro", "--scenario", str(DUMP), "--no-write"))
    assert "--scenario" in line
    bad = chainbench("bench", "control", "--scenario", str(ROOT / "nope.yaml"), "--no-write")
    assert "cannot read" in bad_input_line(bad)


# ------------------------------------------------------------------------- --renumber

def _renumbered():
    r = renumber_text(DUMP.read_text(), str(DUMP))
    return r, validate.load_text(r.text, "renumbered.yaml")   # plan-checked: it fits


def test_renumber_maps_every_address_into_the_plan():
    r, s = _renumbered()
    assert fits_plan(s) and not fits_plan(load_scenario(DUMP, plan_checked=False))
    assert r.mapping["nodes"] == {EC2: "cb-node0", "node1": "cb-node1"}
    assert s.nodes == ("cb-node0", "cb-node1")
    assert r.mapping["node_addresses"] == {"10.0.1.23": "198.19.128.1", "172.30.0.11": "198.19.128.2"}
    for pod in s.pods:
        i = addressing.node_index(pod.node_name)
        assert pod.ipv4 in addressing.node_pod_cidr_v4(i)
        assert pod.ipv6 is None or pod.ipv6 in addressing.node_pod_cidr_v6(i)
        assert pod.host_ip == addressing.node_ip4(i)
    for svc in s.services:
        for a in svc.cluster_ips:
            assert a in (addressing.SERVICE_CIDR_V4 if a.version == 4 else addressing.SERVICE_CIDR_V6)
        for a in (*svc.external_ips, *svc.load_balancer_ips):
            assert a in addressing.EXTERNAL_VIP_CIDR_V4
    # nothing of the old cluster is left in the text (but policy CIDRs that are not one pod)
    text = r.text.replace("10.0.0.0/16", "").replace("10.0.5.0/24", "")
    for old in ("10.244.", "10.96.", "10.100.", "172.30.", "fc00:", " node1", EC2):
        assert old not in text, old


def test_renumber_is_consistent_in_every_object():
    r, s = _renumbered()
    old = load_scenario(DUMP, plan_checked=False)
    pods = {p.ref: p for p in s.pods}
    for sl in s.endpoint_slices:
        for ep in sl.endpoints:
            if ep.target_ref_name:
                pod = pods[f"{ep.target_ref_namespace}/{ep.target_ref_name}"]
                assert set(ep.addresses) <= set(pod.pod_ips)
                assert ep.node_name == pod.node_name
    # the API server's endpoint (the node's address) follows the node
    (api,) = s.endpoint_slices_for("default/kubernetes")[0].endpoints
    assert [str(a) for a in api.addresses] == ["198.19.128.1"]
    for p in old.pods:
        new = pods[p.ref]
        assert [r.mapping["pod_ips"][str(a)] for a in p.pod_ips] == [str(a) for a in new.pod_ips]
    for v in old.services:
        assert [r.mapping["cluster_ips"][str(a)] for a in v.cluster_ips] == \
            [str(a) for a in s.service(v.ref).cluster_ips]
    # policies: an exact pod /32 follows the pod, any other prefix is kept as written
    peers = s.network_policies[0].spec["ingress"][0]["from"]
    client = pods[CLIENT]
    assert peers[1]["ipBlock"]["cidr"] == f"{client.ipv4}/32"
    assert peers[2]["ipBlock"] == {"cidr": "10.0.0.0/16", "except": ["10.0.5.0/24"]}
    web = pods["shop/web-7d9f8c6b5d-abcde"]
    assert s.cilium_network_policies[0].spec["egress"][0]["toCIDR"] == [f"{web.ipv4}/32"]
    # the same dump renumbers the same way
    assert renumber_text(DUMP.read_text(), str(DUMP)).text == r.text
    assert r.dropped == (("ConfigMap", 1), ("Deployment", 1), ("Event", 1), ("Node", 1),
                         ("ReplicaSet", 1))


# ----------------------------------------------------------------------------- bench

def test_bench_control_times_the_dump_with_bpf():
    from bench import control
    section = control.run([], rounds=1, methods=("bpf",), timeout=30, scenario=str(DUMP))
    assert section["config"]["mix"] == "scenario" and section["config"]["scales"] == [5]
    assert section["config"]["node"] == EC2
    rows = {r["operation"]: r for r in section["results"]}
    assert rows["full"]["status"] == "ok" and rows["change-one"]["status"] == "ok", rows
    assert rows["full"]["entries"] > 0 and rows["full"]["seconds"]["median"] > 0
    from bench.report import results, schema
    doc = results.new_document({"control": section}, profile="custom")
    assert schema.validate(doc, schema.load()) == []


def test_bench_control_kube_proxy_config_names_the_first_node():
    from bench import control
    s = control.load_bench_scenario(str(DUMP))
    cfg = control.scenario_config(s)
    assert (cfg.hostname, cfg.node_ips) == (EC2, ("10.0.1.23",))
    state = control.bench_state(0, scenario=s)
    assert any(f.address == WEB_VIP for f in state.frontends)
    # ETP Local load-balancer IP as EC2's maps hold it: EC2's own backend only
    lb = next(f for f in state.frontends if f.type == "LoadBalancer")
    assert {str(b.address) for b in lb.backends} == {"10.244.1.5"}


def test_bench_micro_times_the_dump():
    from bench.micro import lb_cases, suite
    s = load_scenario(DUMP, plan_checked=False)
    cases = lb_cases.scenario_cases(s)
    assert [c.variant for c in cases] == ["established", "new-flow", "new-flow-expired",
                                          "non-service"]
    section = suite.run(cases, samples=2, repeat=20, workers=False)
    by = {r["case"]: r for r in section["results"]}
    assert by["established"]["verdict"] == "TC_ACT_OK"
    assert by["established"]["name"] == ("lxc:from_container/established@scenario "
                                         f"{CLIENT} -> shop/web 10.96.12.34:80")
    assert by["established"]["scale"] == {"services": 5}
    fresh = by["new-flow"]["fresh"]     # every call a new flow: two inserts each
    assert fresh["entries_after"] - fresh["entries_before"] == 2 * fresh["calls"] > 0
    from bench.report import results, schema
    doc = results.new_document({"micro": section}, profile="custom")
    assert schema.validate(doc, schema.load()) == []
    assert all(r["ns_per_packet"]["median"] > 0 for r in section["results"])


def test_renumber_host_network_pods_and_ipv6_external_ips():
    text = """apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec: {nodeName: worker-7, hostNetwork: true, containers: [{name: a, ports: [{containerPort: 9100}]}]}
status: {podIP: 172.30.9.7, hostIP: 172.30.9.7}
---
apiVersion: v1
kind: Service
metadata: {name: metrics, namespace: kube-system}
spec:
  clusterIP: 10.96.0.99
  clusterIPs: [10.96.0.99, 'fc00:10:96::99']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: ['fc00:aa::1']
  ports: [{port: 9100}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: metrics-1, namespace: kube-system, labels: {kubernetes.io/service-name: metrics}}
addressType: IPv4
endpoints: [{addresses: [172.30.9.7], nodeName: worker-7}]
ports: [{port: 9100}]
"""
    r = renumber_text(text, "h.yaml")
    s = validate.load_text(r.text, "h.yaml")
    agent = s.pod("kube-system/agent")
    assert (agent.node_name, str(agent.pod_ips[0]), str(agent.host_ip)) == \
        ("cb-node0", "198.19.128.1", "198.19.128.1")
    (ep,) = s.endpoint_slices[0].endpoints
    assert [str(a) for a in ep.addresses] == ["198.19.128.1"] and ep.node_name == "cb-node0"
    svc = s.service("kube-system/metrics")
    assert [str(a) for a in svc.cluster_ips] == ["198.19.0.1", "2001:db8:2::1"]
    assert [str(a) for a in svc.external_ips] == ["2001:db8:5::1"]


def test_bench_micro_scenario_through_the_command_line():
    proc = chainbench("bench", "micro", "--scenario", str(DUMP), "--samples", "1", "--repeat",
                      "100", "--no-write")
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()[1:]
    assert [r.split()[0] for r in rows] == ["lxc:from_container/established@scenario",
                                            "lxc:from_container/new-flow@scenario",
                                            "lxc:from_container/new-flow-expired@scenario",
                                            "lxc:from_container/non-service@scenario"]
    to = [f"{CLIENT} -> shop/web 10.96.12.34:80 TC_ACT_OK",
          "fresh clients -> shop/web 10.96.12.34:80 TC_ACT_OK",
          f"{CLIENT} -> shop/web 10.96.12.34:80 TC_ACT_OK",
          f"{CLIENT} -> 10.244.1.8:8080 TC_ACT_OK"]
    assert all(t in " ".join(r.split()) for t, r in zip(to, rows)), rows
