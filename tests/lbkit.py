"""Building LB test setups: scenarios as Python data, a loaded datapath programmed
from them, and packet helpers for the pod and node sides."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness.node import datapath
from harness.bpf import Collection
from harness.lb.control import LbControl
from harness.lb.desired import lb_state
from harness.scenario import Scenario, scenario_from_documents
from harness.testrun.packets import checksum_errors, eth  # noqa: F401 (re-exported)
from harness.testrun.runner import PacketResult, Runner

CLIENT4, CLIENT6 = "198.18.0.2", "2001:db8:1::2"


def endpoint(ip: str, node: str = "cb-node1", ready: bool = True, serving: bool | None = None,
             terminating: bool = False) -> dict:
    conditions = {"ready": ready, "terminating": terminating}
    if serving is not None:
        conditions["serving"] = serving
    return {"addresses": [ip], "conditions": conditions, "nodeName": node}


def service(name: str, vip: str | None, ports: list[tuple[str, int, int, str]],
            endpoints: list[dict], *, svc_type: str = "ClusterIP", affinity: int = 0,
            maglev: bool = False, node_ports: dict[str, int] | None = None,
            family: str = "IPv4", local: bool = False, external_ips: list[str] = (),
            internal_local: bool = False, lb_ips: list[str] = (),
            source_ranges: list[str] = ()) -> list[dict]:
    """A Service and its EndpointSlice.  ports: (name, port, targetPort, protocol).
    local / internal_local: externalTrafficPolicy / internalTrafficPolicy Local;
    lb_ips: status.loadBalancer.ingress IPs; source_ranges: loadBalancerSourceRanges."""
    spec: dict = {
        "type": svc_type,
        "ports": [{"name": n, "port": p, "targetPort": t, "protocol": proto,
                   **({"nodePort": node_ports[n]} if node_ports and n in node_ports else {})}
                  for n, p, t, proto in ports],
        "ipFamilies": [family],
    }
    if vip:
        spec["clusterIP"] = vip
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    if local:
        spec["externalTrafficPolicy"] = "Local"
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if internal_local:
        spec["internalTrafficPolicy"] = "Local"
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    meta = {"name": name, "namespace": "default"}
    if maglev:
        meta["annotations"] = {"service.cilium.io/lb-algorithm": "maglev"}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}
    if lb_ips:
        svc["status"] = {"loadBalancer": {"ingress": [{"ip": a} for a in lb_ips]}}
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-1", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": name}},
           "addressType": family, "endpoints": endpoints,
           "ports": [{"name": n, "port": t, "protocol": proto} for n, _, t, proto in ports]}
    return [svc, eps]


def pod(name: str, ip: str, node: str = "cb-node0", host_ports: list[tuple[int, int, str]] = (),
        ip6: str | None = None) -> dict:
    ports = [{"containerPort": c, "hostPort": h, "protocol": proto} for c, h, proto in host_ports]
    status: dict = {"podIP": ip}
    if ip6:
        status["podIPs"] = [{"ip": ip}, {"ip": ip6}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
            "status": status}


def scenario(*docs: dict | list[dict]) -> Scenario:
    flat: list[dict] = []
    for d in docs:
        flat.extend(d if isinstance(d, list) else [d])
    # The client pod, so the scenario has node cb-node0 (node addresses come from nodes).
    if not any(d["kind"] == "Pod" and d["metadata"]["name"] == "client" for d in flat):
        flat.append(pod("client", CLIENT4, "cb-node0", ip6=CLIENT6))
    if not any(d["kind"] == "Pod" and d["spec"].get("nodeName") == "cb-node1" for d in flat
               if d["kind"] == "Pod"):
        flat.append(pod("placeholder-node1", "198.18.1.250", "cb-node1"))
    return scenario_from_documents(flat, "<test>")


@dataclass
class Datapath:
    """An lxc (and netdev) collection pair sharing nothing, programmed from a scenario
    as node *node*'s maps hold it (traffic policies Local scoped to its backends)."""
    lxc: Collection
    control: LbControl
    netdev: Collection | None = None
    netdev_control: LbControl | None = None
    runners: dict[str, Runner] = field(default_factory=dict)
    node: str | None = None

    def run(self, program: str, pkt, repeat: int = 1) -> tuple[PacketResult, Ether]:
        coll = self.netdev if program == "from_netdev" else self.lxc
        runner = self.runners.setdefault(program, Runner(coll, program))
        result = runner.run(bytes(pkt), repeat=repeat)
        return result, Ether(result.packet_out)

    def apply(self, scen: Scenario, services=None) -> None:
        state = lb_state(scen, node=self.node)
        self.control.apply(state, services)
        if self.netdev_control:
            self.netdev_control.apply(state, services)


def build(load, scen: Scenario, node: str = "cb-node0", netdev: bool = False,
          max_entries: dict | None = None, **rodata) -> Datapath:
    lxc = load_datapath(load, "lxc", node, max_entries, **rodata)
    dp = Datapath(lxc, datapath.lb_control(lxc), node=node)
    if netdev:
        nd = load_datapath(load, "netdev", node, max_entries, **rodata)
        dp.netdev, dp.netdev_control = nd, datapath.lb_control(nd)
    dp.apply(scen)
    return dp


def load_datapath(load, obj: str, node: str, max_entries, **rodata) -> Collection:
    values = {**datapath.rodata_for(obj, node), **rodata}
    return load(obj, rodata=values, max_entries=max_entries)


def tcp4(dst: str, dport: int, src: str = CLIENT4, sport: int = 40000, flags: str = "S",
         payload: bytes = b"") -> Ether:
    return built(eth() / IP(src=src, dst=dst, ttl=63, id=4242) / TCP(
        sport=sport, dport=dport, flags=flags, seq=1000, ack=7 if "A" in flags else 0) / payload)


def udp4(dst: str, dport: int, src: str = CLIENT4, sport: int = 40000, payload: bytes = b"q" * 8,
         chksum: int | None = None) -> Ether:
    u = UDP(sport=sport, dport=dport)
    if chksum is not None:
        u.chksum = chksum
    return built(eth() / IP(src=src, dst=dst, ttl=63) / u / payload)


def tcp6(dst: str, dport: int, src: str = CLIENT6, sport: int = 40000, flags: str = "S") -> Ether:
    return built(eth() / IPv6(src=src, dst=dst, hlim=63) / TCP(sport=sport, dport=dport,
                                                                flags=flags, seq=1000))


def built(pkt) -> Ether:
    """The packet as bytes would parse: every length and checksum filled in."""
    return Ether(bytes(pkt))


def assert_valid(pkt: Ether) -> None:
    errors = checksum_errors(pkt)
    assert not errors, errors


def ip(addr: str):
    return ipaddress.ip_address(addr)
