"""Micro-benchmark cases of the service load balancer, at a given service count.

Each scale programs one synthetic LB state (built directly, not parsed from
YAML: the micro suite times the datapath, not the loader) into one set of
maps, sized for N services x 10 backends, which every case of the scale
shares (pinned in the run's bench directory, as a node's lxc and netdev
programs share theirs):

- service i: ClusterIP 198.19.0.0/17 host (i mod 32766) + 1, port 80 + i div 32766,
  and ClusterIP 2001:db8:2::/108 host i + 1, port 80 (dual stack: the IPv6 table
  holds N services too), TCP, 10 backends drawn round-robin from a pool of 480
  pods on port 8080 (shared backends, as in bench/scenarios/services.yaml.j2);
- the measured service is the last one programmed; it is also a NodePort
  (port 30080 on both nodes' addresses) and its backends are all on cb-node1,
  so from cb-node0's device every NodePort packet takes the remote path.

Cases per scale (``case`` names):
  established       lxc from_container, a TCP ACK of an established flow to the
                    ClusterIP (CT hit, DNAT)
  new-flow          a connection's first packet (TCP SYN) to the ClusterIP on a
                    new tuple every call (bench.micro.fresh_flows: source port and
                    address rotated), so every call inserts the two conntrack
                    entries a new flow makes (service and egress): CT misses,
                    backend selection, two inserts, DNAT.  Its maps are its own,
                    the conntrack map sized by the suite so the LRU never evicts,
                    and the suite checks the map grew by two entries per call.
                    The client is no endpoint (endpoint_id 0: no source check),
                    since an endpoint may send from its own address only.
  new-flow-expired  what new-flow was until the fresh tuples: an ACK from one port
                    with conntrack lifetimes set to 2^32-1 (every entry is already
                    expired when read), so every run misses, selects a backend and
                    overwrites the two existing entries in place: an update of
                    entries, not an insert (cheaper by several hundred ns).
  non-service       a packet of an established pod-to-pod flow (service miss, CT hit)
  ipv6-established  the established case over IPv6 (v6 VIP, v6 CT hit, DNAT)
  nodeport          netdev from_netdev on cb-node0, an established flow from the
                    world to cb-node0:30080: service lookup, CT hit, DNAT to the
                    remote backend, SNAT to the node's address (existing mapping)

Every case has an ``expect`` check, run on its first packet and again after
timing, that fails when the packet did not take the path the case names.
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from bench.micro import fresh_flows
from bench.micro.case import Case, CaseCheckFailed, Outcome
from bench.micro.fresh_flows import FreshSpec
from harness import addressing
from harness.node import datapath
from harness.bpf import Collection
from harness.lb.model import ACTIVE, Backend, Backends, Frontend, LbState
from harness.testrun.packets import eth

__all__ = ["CaseCheckFailed", "cases", "packets", "synthetic_state"]

BACKENDS_PER_SERVICE = 10
POD_POOL = 480
EXPIRED = 0xFFFFFFFF     # now + 2^32 - 1 wraps to now - 1: every lookup finds it expired
BACKEND_PORT = 8080
CLIENT = "198.18.0.2"
CLIENT_EP = 1
CLIENT6 = str(addressing.node_pod_cidr_v6(0)[2])
WORLD = "203.0.113.10"
NODE = "cb-node0"                 # the node whose from_netdev is timed
NODE_PORT = 30080


def _vip(i: int) -> tuple[ipaddress.IPv4Address, int]:
    hosts = addressing.SERVICE_CIDR_V4.num_addresses - 2
    return addressing.SERVICE_CIDR_V4[1 + i % hosts], 80 + i // hosts


def _vip6(i: int) -> tuple[ipaddress.IPv6Address, int]:
    hosts = addressing.SERVICE_CIDR_V6.num_addresses - 2
    return addressing.SERVICE_CIDR_V6[1 + i % hosts], 80 + i // hosts


def _pod(k: int) -> ipaddress.IPv4Address:
    node, host = k % 2, 10 + k // 2
    return addressing.node_pod_cidr_v4(node)[host]


def _pod6(k: int) -> ipaddress.IPv6Address:
    node, host = k % 2, 10 + k // 2
    return addressing.node_pod_cidr_v6(node)[host]


def synthetic_state(services: int, backends: int = BACKENDS_PER_SERVICE,
                    ipv6: bool = True, nodeport: bool = True) -> LbState:
    """*services* ClusterIP services (dual stack with *ipv6*); with *nodeport* the
    last one is also a NodePort with every backend on cb-node1."""
    if services < 1:
        raise ValueError("services must be >= 1")
    frontends = []
    for i in range(services):
        last = i == services - 1
        if nodeport and last:       # odd pool indices are cb-node1's pods
            ks = [(2 * j + 1) % POD_POOL for j in range(backends)]
        else:
            ks = [(i * backends + j) % POD_POOL for j in range(backends)]
        name = f"bench/svc-{i}"
        bes = Backends(Backend(_pod(k), BACKEND_PORT, "TCP", ACTIVE) for k in ks)
        vip, port = _vip(i)
        frontends.append(Frontend(name, "http", "ClusterIP", vip, port, "TCP", bes))
        if ipv6:
            bes6 = Backends(Backend(_pod6(k), BACKEND_PORT, "TCP", ACTIVE) for k in ks)
            vip6, port6 = _vip6(i)
            frontends.append(Frontend(name, "http", "ClusterIP", vip6, port6, "TCP", bes6))
        if nodeport and last:
            for node in (0, 1):
                frontends.append(Frontend(name, "http", "NodePort", addressing.node_ip4(node),
                                          NODE_PORT, "TCP", bes))
    return LbState(tuple(frontends))


def packets(services: int) -> dict[str, bytes]:
    """The packet of every case at *services* services, by case name."""

    vip, port = _vip(services - 1)
    vip6, port6 = _vip6(services - 1)
    node_ip = str(addressing.node_ip4(addressing.node_index(NODE)))
    return {
        "established": bytes(eth() / IP(src=CLIENT, dst=str(vip))
                             / TCP(sport=40000, dport=port, flags="A")),
        "new-flow": fresh_packet(str(vip), port),
        "new-flow-expired": bytes(eth() / IP(src=CLIENT, dst=str(vip))
                                  / TCP(sport=40002, dport=port, flags="A")),
        "non-service": bytes(eth() / IP(src=CLIENT, dst=str(_pod(3)))
                             / TCP(sport=40001, dport=BACKEND_PORT, flags="A")),
        "ipv6-established": bytes(eth() / IPv6(src=CLIENT6, dst=str(vip6))
                                  / TCP(sport=40000, dport=port6, flags="A")),
        "nodeport": bytes(eth() / IP(src=WORLD, dst=node_ip)
                          / TCP(sport=50000, dport=NODE_PORT, flags="A")),
    }


def fresh_packet(vip: str, port: int) -> bytes:
    """The template of a fresh case: a SYN to *vip*:*port* from the first tuple of
    bench.micro.fresh_flows' space (each call rewrites its source)."""
    src, sport = fresh_flows.tuple_of(0)
    return bytes(eth() / IP(src=str(src), dst=vip) / TCP(sport=sport, dport=port, flags="S",
                                                            seq=1))


#: The fresh case's conntrack map at load when no suite run sizes it (the suite
#: does, for its run): room for a run of suite()'s defaults, 7 samples of 100,000.
_DEFAULT_CALLS = fresh_flows.calls_of_run(7, 100_000, 1)


def _fresh_sizes(sizes: dict[str, int], spec: FreshSpec) -> dict[str, int]:
    return {**sizes, spec.ct_map: fresh_flows.ct_max_entries(spec, _DEFAULT_CALLS)}


def _accepted(out: Outcome) -> None:
    if out.verdict != "TC_ACT_OK" or out.drop_reason is not None:
        raise CaseCheckFailed(f"expected TC_ACT_OK, got {out.verdict} "
                              f"(drop reason {out.drop_reason})")


def _expect_translated(vip: ipaddress.IPv4Address | ipaddress.IPv6Address):
    def check(out: Outcome) -> None:
        _accepted(out)
        l3, pods = ((IP, addressing.POD_CIDR_V4) if vip.version == 4
                    else (IPv6, addressing.POD_CIDR_V6))
        pkt = Ether(out.packet)
        if l3 not in pkt or TCP not in pkt:
            raise CaseCheckFailed(f"expected an IPv{vip.version} TCP packet, got {pkt.summary()}")
        dst = ipaddress.ip_address(pkt[l3].dst)
        if dst == vip or dst not in pods or pkt[TCP].dport != BACKEND_PORT:
            shown = f"{dst}:{pkt[TCP].dport}" if vip.version == 4 else f"[{dst}]:{pkt[TCP].dport}"
            raise CaseCheckFailed(f"expected a DNAT of {vip} to a backend pod, got {shown}")
    return check


def _expect_unchanged(packet: bytes):
    def check(out: Outcome) -> None:
        _accepted(out)
        if out.packet != packet:
            raise CaseCheckFailed("a non-service packet was rewritten")
    return check


def _expect_nodeport_remote(node: str):
    node_ip = addressing.node_ip4(addressing.node_index(node))
    remote = addressing.node_pod_cidr_v4(1)

    def check(out: Outcome) -> None:
        _accepted(out)
        pkt = Ether(out.packet)
        if IP not in pkt or TCP not in pkt:
            raise CaseCheckFailed(f"expected an IPv4 TCP packet, got {pkt.summary()}")
        dst, src = ipaddress.IPv4Address(pkt[IP].dst), ipaddress.IPv4Address(pkt[IP].src)
        if dst not in remote or pkt[TCP].dport != BACKEND_PORT:
            raise CaseCheckFailed(f"expected a DNAT of {node_ip}:{NODE_PORT} to a backend in "
                                  f"{remote}, got {dst}:{pkt[TCP].dport}")
        if src != node_ip or not 32768 <= pkt[TCP].sport <= 65535:
            raise CaseCheckFailed(f"expected an SNAT to {node_ip}:32768-65535, got "
                                  f"{src}:{pkt[TCP].sport}")
    return check


def _program(services: int):
    def setup(coll: Collection) -> None:
        datapath.lb_control(coll).apply(synthetic_state(services))
    return setup


def max_entries(services: int) -> dict[str, int]:
    """Map sizes for *services* dual-stack services x 10 backends."""
    sizes = datapath.scaled_max_entries(services, BACKENDS_PER_SERVICE)
    # scaled_max_entries counts ClusterIPs exactly; the NodePort frontends come on top.
    sizes["cb_lb4_services"] += 2 * (BACKENDS_PER_SERVICE + 1) + 1024
    for v6, v4 in (("cb_lb6_services", "cb_lb4_services"), ("cb_lb6_backends", "cb_lb4_backends"),
                   ("cb_lb6_reverse_nat", "cb_lb4_reverse_nat")):
        sizes[v6] = sizes[v4]
    return sizes


def cases(services: int, floor: str = "empty:empty_tc") -> list[Case]:
    """The LB cases at *services* services; they share one set of maps."""
    pkts = packets(services)
    sizes = max_entries(services)
    # The client is an endpoint as every pod is: its packets pass the source check.
    base = {**datapath.service_rodata(), **datapath.endpoint_rodata(CLIENT_EP, CLIENT, CLIENT6)}
    expired = {**base, "ct_lifetime_tcp": EXPIRED, "ct_lifetime_nontcp": EXPIRED,
               "ct_lifetime_syn": EXPIRED, "ct_lifetime_close": EXPIRED}
    # the source rotates: no endpoint (an endpoint may only send from its own address)
    fresh = {**datapath.service_rodata(), **datapath.endpoint_rodata(0)}
    spec = FreshSpec()
    netdev = datapath.rodata_for("netdev", NODE)
    tag, scale, maps = f"{services}svc", {"services": services}, f"lb@{services}"
    setup = _program(services)
    common = dict(floor=floor, setup=setup, max_entries=sizes, scale=scale, maps=maps)

    def case(short: str, obj: str, prog: str, rodata: dict, group: str, expect, **kw) -> Case:
        return Case(f"{obj}:{prog}/{short}@{tag}", obj, prog, pkts[short], rodata=rodata,
                    group=f"{group}@{services}", expect=expect, variant=short, **{**common, **kw})
    vip = _vip(services - 1)[0]
    return [
        case("established", "lxc", "from_container", base, "lb", _expect_translated(vip)),
        # maps of its own: its conntrack map is sized for the run and counted
        case("new-flow", "lxc", "from_container", fresh, "lb-fresh", _expect_translated(vip),
             fresh=spec, max_entries=_fresh_sizes(sizes, spec), maps=f"lb-fresh@{services}"),
        case("new-flow-expired", "lxc", "from_container", expired, "lb-new",
             _expect_translated(vip)),
        case("non-service", "lxc", "from_container", base, "lb",
             _expect_unchanged(pkts["non-service"])),
        case("ipv6-established", "lxc", "from_container", base, "lb",
             _expect_translated(_vip6(services - 1)[0])),
        case("nodeport", "netdev", "from_netdev", netdev, "nodeport",
             _expect_nodeport_remote(NODE)),
    ]


# -- a user's own cluster (chainbench bench micro --scenario FILE) -------------------------

def _scenario_target(scenario):
    """(frontend, client pod) a user's scenario is timed on: the IPv4 ClusterIP frontend
    with the most active backends (first by service name on a tie), and the first pod
    (namespace/name order) with an IPv4 address that is none of its backends."""
    from harness.lb.desired import lb_state
    state = lb_state(scenario, node=scenario.nodes[0] if scenario.nodes else None)
    frontends = [f for f in state.frontends if f.type == "ClusterIP" and f.family == 4
                 and any(b.state == ACTIVE for b in f.backends)]
    if not frontends:
        raise CaseCheckFailed(f"{scenario.source}: no IPv4 ClusterIP with a ready endpoint to time")
    fe = min(frontends, key=lambda f: (-len(f.backends), f.service, f.port))
    backends = {b.address for b in fe.backends}
    pods = sorted((p for p in scenario.pods if not p.host_network and p.ipv4 is not None),
                  key=lambda p: (p.meta.namespace, p.meta.name))
    client = next((p for p in pods if p.ipv4 not in backends), None) or \
        (pods[0] if pods else None)
    if client is None:
        raise CaseCheckFailed(f"{scenario.source}: no pod with an IPv4 address to send from")
    other = next((p.ipv4 for p in pods if p is not client), None)
    return state, fe, client, other


def _expect_backend(fe: Frontend):
    backends = {(b.address, b.port) for b in fe.backends}

    def check(out: Outcome) -> None:
        _accepted(out)
        pkt = Ether(out.packet)
        if IP not in pkt or TCP not in pkt:
            raise CaseCheckFailed(f"expected an IPv4 TCP packet, got {pkt.summary()}")
        got = (ipaddress.IPv4Address(pkt[IP].dst), pkt[TCP].dport)
        if got not in backends:
            raise CaseCheckFailed(f"expected a DNAT of {fe.address}:{fe.port} to one of its "
                                  f"backends, got {got[0]}:{got[1]}")
    return check


def scenario_cases(scenario, floor: str = "empty:empty_tc") -> list[Case]:
    """A user's scenario (a real cluster's dump loads as it is) programmed as its first
    node's maps hold it; lxc from_container timed from one of its pods to its busiest
    IPv4 ClusterIP (``established``, ``new-flow``, ``new-flow-expired``) and to another
    pod (``non-service``)."""
    state, fe, client, other = _scenario_target(scenario)
    v6 = sum(1 for f in state.frontends if f.family == 6)
    per = max([len(f.backends) for f in state.frontends] + [BACKENDS_PER_SERVICE])
    sizes = datapath.scaled_max_entries(len(state.frontends) - v6, per, v6,
                                        sum(1 for f in state.frontends if f.two_scopes))
    src = str(client.ipv4)
    pkts = {
        "established": bytes(eth() / IP(src=src, dst=str(fe.address))
                             / TCP(sport=40000, dport=fe.port, flags="A")),
        "new-flow": fresh_packet(str(fe.address), fe.port),
        "new-flow-expired": bytes(eth() / IP(src=src, dst=str(fe.address))
                                  / TCP(sport=40002, dport=fe.port, flags="A")),
    }
    if other is not None:
        pkts["non-service"] = bytes(eth() / IP(src=src, dst=str(other))
                                    / TCP(sport=40001, dport=BACKEND_PORT, flags="A"))
    base = {**datapath.service_rodata(),
            **datapath.endpoint_rodata(CLIENT_EP, src, str(client.ipv6) if client.ipv6 else None)}
    expired = {**base, "ct_lifetime_tcp": EXPIRED, "ct_lifetime_nontcp": EXPIRED,
               "ct_lifetime_syn": EXPIRED, "ct_lifetime_close": EXPIRED}
    fresh = {**datapath.service_rodata(), **datapath.endpoint_rodata(0)}
    spec = FreshSpec()
    tag = "scenario"
    scale = {"services": len(scenario.services)}

    def setup(coll: Collection) -> None:
        datapath.lb_control(coll).apply(state)
    common = dict(floor=floor, setup=setup, max_entries=sizes, scale=scale, maps="lb@scenario")

    def case(short: str, rodata: dict, group: str, expect, **kw) -> Case:
        # the name says what is timed: from the client pod to the ClusterIP (its Service),
        # or to the other pod
        to = f"{other}:{BACKEND_PORT}" if short == "non-service" else \
            f"{fe.service} {fe.address}:{fe.port}"
        src = "fresh clients" if short == "new-flow" else client.ref
        return Case(f"lxc:from_container/{short}@{tag} {src} -> {to}", "lxc",
                    "from_container", pkts[short],
                    rodata=rodata, group=f"{group}@scenario", expect=expect, variant=short,
                    **{**common, **kw})
    out = [case("established", base, "lb", _expect_backend(fe)),
           case("new-flow", fresh, "lb-fresh", _expect_backend(fe), fresh=spec,
                max_entries=_fresh_sizes(sizes, spec), maps="lb-fresh@scenario"),
           case("new-flow-expired", expired, "lb-new", _expect_backend(fe))]
    if "non-service" in pkts:
        out.append(case("non-service", base, "lb", _expect_unchanged(pkts["non-service"])))
    return out
