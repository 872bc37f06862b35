"""The Kubernetes NetworkPolicy e2e matrices, through the real lxc programs.

Every upstream test of kubernetes/kubernetes test/e2e/network/netpol/network_policy.go
(48: 42 TCP, 3 UDP, 3 SCTP; transcribed in tests/netpol_e2e_cases.py) runs on one
node in test-run:

    x/a x/b x/c  y/a y/b y/c  z/a z/b z/c     pods, endpoints 1..9 (namespace/name order),
    198.18.0.11 .. 198.18.0.19                labels pod=<name>, one container per
    2001:db8:1::11 .. 2001:db8:1::19          (port, protocol) with port serve-<port>-<proto>
    ClusterIP per pod: 198.19.0.11.. / 2001:db8:2::11..  ports 80, 81 x TCP, UDP, SCTP

Each step's scenario (pods, Namespaces, the policies present then) is resolved with
harness.policy.desired and programmed with one PolicyControl (so updates are
re-applications, as ``chainbench policy apply`` does them).  Every cell (client,
server, port, protocol) of every probe is a new connection (its own client source
port): its first packet leaves the client's from_container (egress policy; DNAT when
sent to the ClusterIP), enters the server's to_container (ingress policy), and the
server's answer goes back through the server's from_container and the client's
to_container; the cell is connected iff all four pass, the DNAT reached the server
and the answer comes back from the address the client used (reverse NAT), with
valid checksums.  Every cell is probed by pod IP and by ClusterIP, over IPv4 and
IPv6, and compared with upstream's expected table; loopback cells are skipped, as
upstream ignores them (ignoreLoopback).

Upstream tests left out: none.  Upstream's probes connect from a pod's single
``cont-<port>-<proto>`` container; here the client's source port is synthetic.
"""
from __future__ import annotations

import ipaddress
import itertools

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkInit, SCTPChunkInitAck

from harness.node import datapath
from harness.bpf import Collection
from harness.lb.desired import lb_state
from harness.policy.control import PolicyControl, endpoint_ids
from harness.policy.desired import policy_state
from harness.scenario import scenario_from_documents
from harness.testrun.packets import checksum_errors, eth

from . import lbkit as K
from .netpol_e2e_cases import CASES, NAMESPACES, PODS, Case, IPBlock, Policy, Probe
from .nodekit import Node, verdict
from .support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

NODE = "cb-node0"
IDS = endpoint_ids(PODS)
IP4 = {p: f"198.18.0.{11 + i}" for i, p in enumerate(PODS)}
IP6 = {p: f"2001:db8:1::{11 + i}" for i, p in enumerate(PODS)}
VIP4 = {p: f"198.19.0.{11 + i}" for i, p in enumerate(PODS)}
VIP6 = {p: f"2001:db8:2::{11 + i}" for i, p in enumerate(PODS)}
SERVICE_PORTS = [(f"{proto.lower()}-{n}", n, n, proto) for n in (80, 81) for proto in ("TCP", "UDP", "SCTP")]


# ------------------------------------------------------------------------ scenario


def pod_doc(ref: str, labels: dict, case: Case) -> dict:
    ns, name = ref.split("/")
    containers = [{"name": f"cont-{n}-{proto.lower()}",
                   "ports": [{"name": f"serve-{n}-{proto.lower()}", "containerPort": n, "protocol": proto}]}
                  for n in case.ports for proto in case.protocols]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": NODE, "containers": containers},
            "status": {"podIP": IP4[ref], "podIPs": [{"ip": IP4[ref]}, {"ip": IP6[ref]}]}}


def _render(value, family: int):
    """The policy spec with IPBlock placeholders turned into this family's CIDRs."""
    if isinstance(value, IPBlock):
        addrs = IP4 if family == 4 else IP6
        host = 32 if family == 4 else 128
        cidr = ipaddress.ip_network(f"{addrs[value.pod]}/{value.prefix or host}", strict=False)
        block: dict = {"cidr": str(cidr)}
        if value.excepts:
            block["except"] = [f"{addrs[p]}/{host}" for p in value.excepts]
        return block
    if isinstance(value, dict):
        return {k: _render(v, family) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, family) for v in value]
    return value


def policy_doc(p: Policy, family: int) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": p.name, "namespace": p.namespace}, "spec": _render(p.spec, family)}


def namespace_doc(ns: str, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}


def scenario(case: Case, step_index: int, family: int):
    """The cluster as it is at *step_index*: label changes of earlier steps persist."""
    pod_labels = {ref: {"pod": ref.split("/")[1]} for ref in PODS}
    ns_labels: dict[str, dict] = {ns: {} for ns in NAMESPACES}
    for step in case.steps[:step_index + 1]:
        pod_labels.update(step.pod_labels)
        for ns, extra in step.namespace_labels.items():
            ns_labels[ns] = {**ns_labels[ns], **extra}
    docs = [pod_doc(ref, pod_labels[ref], case) for ref in PODS]
    if any(s.namespace_labels for s in case.steps):
        docs += [namespace_doc(ns, ns_labels[ns]) for ns in NAMESPACES]
    docs += [policy_doc(p, family) for p in case.steps[step_index].policies]
    return scenario_from_documents(docs, f"<netpol e2e: {case.name}>")


def services_scenario():
    docs: list[dict] = [pod_doc(ref, {"pod": ref.split("/")[1]}, CASES[0]) for ref in PODS]
    for i, ref in enumerate(PODS):
        for family, vips, ips in (("IPv4", VIP4, IP4), ("IPv6", VIP6, IP6)):
            docs += K.service(f"s{i}-{family[-1]}", vips[ref], SERVICE_PORTS,
                              [K.endpoint(ips[ref], node=NODE)], family=family)
    return scenario_from_documents(docs, "<netpol e2e services>")


# ------------------------------------------------------------------------- packets


def l4(proto: str, sport: int, dport: int, reply: bool = False):
    if proto == "TCP":
        return TCP(sport=sport, dport=dport, flags="SA" if reply else "S", seq=1000, ack=1001 if reply else 0)
    if proto == "UDP":
        return UDP(sport=sport, dport=dport) / b"probe"
    return SCTP(sport=sport, dport=dport, tag=7 if reply else 0) / (SCTPChunkInitAck() if reply else SCTPChunkInit())


def packet(src: str, dst: str, proto: str, sport: int, dport: int, reply: bool = False) -> Ether:
    l3 = IP(src=src, dst=dst, ttl=64) if ":" not in src else IPv6(src=src, dst=dst, hlim=64)
    return Ether(bytes(eth() / l3 / l4(proto, sport, dport, reply)))


def _ends(pkt: Ether) -> tuple[str, int, str, int]:
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    l4_ = l3.payload
    return l3.src, l4_.sport, l3.dst, l4_.dport


def connect(node: Node, eps: dict, client: str, server: str, proto: str, dport: int, sport: int,
            family: int, via_service: bool) -> str:
    """"ok", or why the connection failed (the leg and its verdict)."""
    ips = IP4 if family == 4 else IP6
    target = (VIP4 if family == 4 else VIP6)[server] if via_service else ips[server]
    first = packet(ips[client], target, proto, sport, dport)
    res, out = eps[client].egress(first)
    if verdict(res) != "pass":
        return f"egress {verdict(res)}"
    if _ends(out) != (ips[client], sport, ips[server], dport):
        return f"egress sent {_ends(out)}"
    if via_service and checksum_errors(out):
        return f"egress checksums {checksum_errors(out)}"
    res, _ = eps[server].ingress(out)
    if verdict(res) != "pass":
        return f"ingress {verdict(res)}"
    answer = packet(ips[server], ips[client], proto, dport, sport, reply=True)
    res, out = eps[server].egress(answer)
    if verdict(res) != "pass":
        return f"reply egress {verdict(res)}"
    res, out = eps[client].ingress(out)
    if verdict(res) != "pass":
        return f"reply ingress {verdict(res)}"
    if _ends(out) != (target, dport, ips[client], sport):
        return f"reply came from {_ends(out)[:2]}"
    if via_service and checksum_errors(out):
        return f"reply checksums {checksum_errors(out)}"
    return "ok"


# -------------------------------------------------------------------------- checks


def table(cells: dict, title: str) -> str:
    """Upstream's truth-table layout: rows = from, columns = to; '.' connected, 'X' not,
    '*' a mismatch (followed by the list of mismatches)."""
    short = [p.replace("/", "") for p in PODS]
    lines = [title, "\t" + "\t".join(short)]
    for f, fs in zip(PODS, short):
        lines.append(fs + "\t" + "\t".join(cells.get((f, t), "-") for t in PODS))
    return "\n".join(lines)


def run_probe(node: Node, eps: dict, probe: Probe, family: int, via_service: bool, sports) -> list[str]:
    expected = probe.reachability.expected
    marks: dict = {}
    wrong = []
    for frm in PODS:
        for to in PODS:
            if frm == to:
                continue            # upstream: ignoreLoopback
            sport = next(sports)
            assert sport <= 65535, "out of client source ports: give the cells fewer ports each"
            why = connect(node, eps, frm, to, probe.protocol, probe.port, sport, family, via_service)
            got = why == "ok"
            marks[(frm, to)] = ("." if got else "X") if got == expected[(frm, to)] else "*"
            if got != expected[(frm, to)]:
                wrong.append(f"{frm} -> {to}: expected {'connected' if expected[(frm, to)] else 'blocked'}, "
                             f"got {why}")
    if not wrong:
        return []
    how = f"{probe.protocol}/{probe.port} IPv{family} via {'ClusterIP' if via_service else 'pod IP'}"
    return [table(marks, how)] + wrong


class _Cluster:
    """The node, its nine endpoints, one PolicyControl and the client source ports."""

    def __init__(self, load) -> None:
        self.node = Node(load)
        self.eps = {ref: self.node.endpoint(IDS[ref], IP4[ref], IP6[ref]) for ref in PODS}
        datapath.lb_control(self.node.coll).apply(lb_state(services_scenario()))
        self.control = PolicyControl(self.node.coll.maps)
        self.sports = itertools.count(1024)


@pytest.fixture(scope="module")
def cluster():
    """One node for every case: loading nine lxc programs takes about 4 s, so a node
    per case would make this file take minutes.  Cases stay independent: each step's
    apply() programs the complete policy state (ipcache and every endpoint), and every
    cell of the module is a connection with a source port of its own, so no conntrack
    entry of one cell (or case) is ever looked up by another."""
    opened: list[Collection] = []

    def load(name: str, **kwargs) -> Collection:
        opened.append(Collection.load(str(object_path(name)), **kwargs))
        return opened[-1]
    c = _Cluster(load)
    yield c
    c.node.close()
    for coll in opened:
        coll.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_netpol_e2e(cluster, case: Case):
    failures: list[str] = []
    cells = 0
    for i, step in enumerate(case.steps):
        for family in (4, 6):
            cluster.control.apply(policy_state(scenario(case, i, family), local_node=NODE), IDS)
            for probe in step.probes:
                for via_service in (False, True):
                    cells += len(PODS) * (len(PODS) - 1)
                    failures += run_probe(cluster.node, cluster.eps, probe, family, via_service, cluster.sports)
    mismatched = sum(1 for f in failures if " -> " in f)
    print(f"{case.name}: {cells - mismatched}/{cells} cells match")
    assert not failures, f"{mismatched}/{cells} cells differ from upstream\n" + "\n".join(failures)
