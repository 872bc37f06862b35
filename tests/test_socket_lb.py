"""Socket-level load balancing (bpf_src/sock.bpf.c) on real sockets.

Topology (everything inside namespaces the test creates):

    cb-slb<pid>-c  (client, in cgroup cb-slb<pid>)     cb-slb<pid>-s  (backends)
    [cbc0 198.18.0.10/24      ] <------veth------> [cbs0 198.18.0.20/24, .21/24      ]
    [     2001:db8:1::10/64   ]                    [     2001:db8:1::20/64, ::21/64  ]

The service VIPs (198.19.0.x, 2001:db8:2::x) have no address and no route
anywhere: the cgroup programs rewrite connect()/sendmsg() to a backend
before routing, and getpeername()/recvmsg() back to the VIP.  Clients run
as subprocesses in the client namespace and (unless a test says otherwise)
in the cgroup the programs are attached to; servers answer with the address
they were reached on.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.host import bpffs, cgroups, netns
from harness.bpf import Collection, attach_cgroup, attach_tc
from harness.abi.cheaders import defines
from harness.abi.structs import (Lb4Backend, Lb4Key, Lb4ReverseNat, Lb6Backend, Lb6Key,
                             Lb6ReverseNat, LbAffinityKey, LbService, Sock4RevnatKey,
                             Sock6RevnatKey, V6Addr, be16, be32, from_be16, from_be32)

from .support import object_path

HELPERS = Path(__file__).parent / "helpers"
SERVER = HELPERS / "sock_lb_server.py"
CLIENT = HELPERS / "sock_lb_client.py"

SVC_F = defines("lib/lb.h", "SVC_F_")
CT_SERVICE = defines("lib/ct.h", "CT_SERVICE")["CT_SERVICE"]
TCP, UDP = 6, 17
SOCK_PROGRAMS = ("sock4_connect", "sock4_sendmsg", "sock4_recvmsg", "sock4_getpeername",
                 "sock6_connect", "sock6_sendmsg", "sock6_recvmsg", "sock6_getpeername")

CLIENT4, CLIENT6 = "198.18.0.10", "2001:db8:1::10"
BE4 = ("198.18.0.20", "198.18.0.21")
BE6 = ("2001:db8:1::20", "2001:db8:1::21")
BE_PORT = 8080
VIP4, VIP4_AFFINITY, VIP4_EMPTY = "198.19.0.10", "198.19.0.11", "198.19.0.12"
VIP6 = "2001:db8:2::10"
VIP_PORT = 80

# rev_nat_index of each frontend
REV_TCP4, REV_UDP4, REV_AFF4, REV_EMPTY_TCP4, REV_EMPTY_UDP4 = 1, 2, 3, 4, 5
REV_TCP6, REV_UDP6 = 11, 12


# --- map programming -------------------------------------------------------------------

def program_service(coll: Collection, vip: str, port: int, proto: int,
                    backends: list[tuple[int, str, int]], rev_nat_index: int,
                    flags: int = SVC_F["SVC_F_CLUSTERIP"], affinity_timeout: int = 0) -> None:
    """Write one frontend the way the control plane does: backends, slots 1..n, the
    slot-0 service entry, the reverse-NAT entry, then the address-only VIP entry."""
    v6 = ":" in vip
    Key, Backend, RevNat = (Lb6Key, Lb6Backend, Lb6ReverseNat) if v6 else \
        (Lb4Key, Lb4Backend, Lb4ReverseNat)
    addr = V6Addr.of if v6 else be32
    fam = 6 if v6 else 4
    services = coll.maps[f"cb_lb{fam}_services"]
    for bid, baddr, bport in backends:
        coll.maps[f"cb_lb{fam}_backends"].update(
            bid, Backend(address=addr(baddr), port=be16(bport), proto=proto, state=0))
    for slot, (bid, _, _) in enumerate(backends, start=1):
        services.update(Key(address=addr(vip), dport=be16(port), backend_slot=slot, proto=proto),
                        LbService(backend_id=bid))
    services.update(Key(address=addr(vip), dport=be16(port), backend_slot=0, proto=proto),
                    LbService(count=len(backends), rev_nat_index=rev_nat_index, flags=flags,
                              affinity_timeout=affinity_timeout))
    coll.maps[f"cb_lb{fam}_reverse_nat"].update(rev_nat_index,
                                                RevNat(address=addr(vip), port=be16(port)))
    vip_key = Key(address=addr(vip), dport=0, backend_slot=0, proto=0)
    old = services.get(vip_key)
    count = (old.count if old is not None else 0) + len(backends)
    services.update(vip_key, LbService(count=count, flags=SVC_F["SVC_F_VIP"] |
                                       SVC_F["SVC_F_CLUSTERIP"]))


def program_all(coll: Collection) -> None:
    tcp4 = [(1, BE4[0], BE_PORT), (2, BE4[1], BE_PORT)]
    udp4 = [(3, BE4[0], BE_PORT), (4, BE4[1], BE_PORT)]
    tcp6 = [(11, BE6[0], BE_PORT), (12, BE6[1], BE_PORT)]
    udp6 = [(13, BE6[0], BE_PORT), (14, BE6[1], BE_PORT)]
    program_service(coll, VIP4, VIP_PORT, TCP, tcp4, REV_TCP4)
    program_service(coll, VIP4, VIP_PORT, UDP, udp4, REV_UDP4)
    program_service(coll, VIP4_AFFINITY, VIP_PORT, TCP, tcp4, REV_AFF4,
                    flags=SVC_F["SVC_F_CLUSTERIP"] | SVC_F["SVC_F_AFFINITY"],
                    affinity_timeout=60)
    program_service(coll, VIP4_EMPTY, VIP_PORT, TCP, [], REV_EMPTY_TCP4)
    program_service(coll, VIP4_EMPTY, VIP_PORT, UDP, [], REV_EMPTY_UDP4)
    program_service(coll, VIP6, VIP_PORT, TCP, tcp6, REV_TCP6)
    program_service(coll, VIP6, VIP_PORT, UDP, udp6, REV_UDP6)


def lb_packets(coll: Collection, rev_nat_index: int) -> int:
    return sum(c.packets for c in coll.maps["cb_lb_stats"].lookup(rev_nat_index))


# --- environment ------------------------------------------------------------------------

@dataclass
class Env:
    client_ns: str
    server_ns: str
    cgroup: str
    sock: Collection
    server: subprocess.Popen

    def client(self, proto: str, addr: str, port: int = VIP_PORT, count: int = 1,
               timeout: float = 2.0, in_cgroup: bool = True, v6: bool = False,
               read: bool = True) -> list[dict]:
        """Run the client helper in the client namespace (and the cgroup)."""
        cmd = ["ip", "netns", "exec", self.client_ns, sys.executable, str(CLIENT), proto, addr,
               str(port), "--count", str(count), "--timeout", str(timeout)]
        if v6:
            cmd.append("--v6")
        if not read:
            cmd.append("--no-read")
        cg = self.cgroup
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=10 + count * timeout,
                              preexec_fn=(lambda: cgroups.enter(cg)) if in_cgroup else None)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)


def _mac(ns: str, dev: str) -> str:
    return json.loads(netns.run(ns, "ip", "-j", "link", "show", "dev", dev).stdout)[0]["address"]


def _start_server(ns: str) -> subprocess.Popen:
    args = []
    for a in BE4:
        args += ["--tcp", f"{a}:{BE_PORT}", "--udp", f"{a}:{BE_PORT}"]
    for a in BE6:
        args += ["--tcp", f"[{a}]:{BE_PORT}", "--udp", f"[{a}]:{BE_PORT}"]
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(SERVER),
                             "--lifetime", "60", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 5)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        proc.wait(timeout=5)
        raise RuntimeError(f"backend server did not start: {proc.stderr.read()}")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


@contextlib.contextmanager
def socket_lb_env(sock_rodata: dict | None = None, tag: str = "", pin_dir: str | None = None):
    """Namespaces, veth, backend servers, the sock collection programmed and attached
    to a fresh cb- cgroup.  Everything is undone on exit, also on failure.

    With *pin_dir* the sock collection reuses the maps pinned there and is not
    programmed (whoever pinned them programs them).  Its Map objects are then left
    untyped: libbpf gives a reused map the BTF type ids of the object that pinned
    it, which mean nothing in sock's BTF."""
    base = f"cb-slb{os.getpid()}{tag}"
    c, s = f"{base}-c", f"{base}-s"
    with contextlib.ExitStack() as stack:
        for ns in (c, s):
            stack.callback(netns.delete, ns)
            netns.create(ns)
        netns.run(c, "ip", "link", "add", "cbc0", "type", "veth", "peer", "name", "cbs0",
                  "netns", s)
        netns.run(c, "ip", "addr", "add", f"{CLIENT4}/24", "dev", "cbc0")
        netns.run(c, "ip", "-6", "addr", "add", f"{CLIENT6}/64", "dev", "cbc0", "nodad")
        for a in BE4:
            netns.run(s, "ip", "addr", "add", f"{a}/24", "dev", "cbs0")
        for a in BE6:
            netns.run(s, "ip", "-6", "addr", "add", f"{a}/64", "dev", "cbs0", "nodad")
        netns.run(c, "ip", "link", "set", "cbc0", "up")
        netns.run(s, "ip", "link", "set", "cbs0", "up")
        # Static IPv6 neighbours: the first neighbour solicitation sent right after
        # the link comes up is lost (the carrier is announced late), which would
        # cost the first IPv6 connection a 1 s retransmission.
        mac_c, mac_s = _mac(c, "cbc0"), _mac(s, "cbs0")
        for a in BE6:
            netns.run(c, "ip", "-6", "neigh", "replace", a, "lladdr", mac_s, "dev", "cbc0")
        netns.run(s, "ip", "-6", "neigh", "replace", CLIENT6, "lladdr", mac_c, "dev", "cbs0")

        server = _start_server(s)
        stack.callback(_stop, server)

        cg = cgroups.create(base)
        stack.callback(cgroups.remove, cg)

        sock = Collection.load(str(object_path("sock")), rodata=sock_rodata, pin_dir=pin_dir)
        stack.callback(sock.close)
        if pin_dir is None:
            program_all(sock)
        for name in SOCK_PROGRAMS:
            stack.enter_context(attach_cgroup(sock.programs[name], cg))
        yield Env(c, s, cg, sock, server)


@pytest.fixture
def env():
    with socket_lb_env() as e:
        yield e


def served_by(result: dict) -> tuple[str, int]:
    assert "server" in result, result
    return result["server"]["local"][0], result["server"]["local"][1]


# --- tests ------------------------------------------------------------------------------

def test_programs_load_as_cgroup_sock_addr():
    with Collection.load(str(object_path("sock"))) as coll:
        for name in SOCK_PROGRAMS:
            assert coll.programs[name].type == "cgroup_sock_addr", name
            # sock4_connect -> cgroup/connect4, sock6_getpeername -> cgroup/getpeername6
            assert coll.programs[name].section == f"cgroup/{name.split('_')[1]}{name[4]}"
        assert {"cb_lb4_reverse_sk", "cb_lb6_reverse_sk"} <= coll.maps.keys()
        assert {"sock4_revnat_key", "sock6_revnat_val"} <= set(coll.checked_structs)


def test_tcp_connect_reaches_backend_and_getpeername_is_vip(env):
    [r] = env.client("tcp", VIP4)
    assert r["peer"] == [VIP4, VIP_PORT]                 # getpeername: the VIP
    assert served_by(r) in {(a, BE_PORT) for a in BE4}    # ... but a backend answered
    assert r["server"]["peer"][0] == CLIENT4             # no SNAT, no per-packet NAT
    # The reverse entry, keyed by the socket cookie and the backend.
    key = Sock4RevnatKey(cookie=r["cookie"], address=be32(r["server"]["local"][0]),
                         port=be16(BE_PORT))
    val = env.sock.maps["cb_lb4_reverse_sk"].lookup(key)
    assert (str(from_be32(val.address)), from_be16(val.port), val.rev_nat_index) == \
        (VIP4, VIP_PORT, REV_TCP4)
    assert lb_packets(env.sock, REV_TCP4) == 1


def test_connections_spread_over_both_backends(env):
    results = env.client("tcp", VIP4, count=60)
    seen = [served_by(r) for r in results]
    assert all(r["peer"] == [VIP4, VIP_PORT] for r in results)
    assert set(seen) == {(a, BE_PORT) for a in BE4}
    assert lb_packets(env.sock, REV_TCP4) == 60


def test_udp_reply_source_is_vip(env):
    results = env.client("udp", VIP4, count=4)
    for r in results:
        assert r["from"] == [VIP4, VIP_PORT]             # recvmsg4 restored the VIP
        assert served_by(r) in {(a, BE_PORT) for a in BE4}
    assert lb_packets(env.sock, REV_UDP4) == 4            # one per sendto


def test_ipv6_tcp_and_udp(env):
    results = env.client("tcp", VIP6, count=20)
    for r in results:
        assert r["peer"] == [VIP6, VIP_PORT]
        assert r["server"]["peer"][0] == CLIENT6
    assert {served_by(r) for r in results} == {(a, BE_PORT) for a in BE6}
    r = results[0]
    key = Sock6RevnatKey(cookie=r["cookie"], address=V6Addr.of(r["server"]["local"][0]),
                         port=be16(BE_PORT))
    val = env.sock.maps["cb_lb6_reverse_sk"].lookup(key)
    assert (str(val.address.ipv6()), from_be16(val.port), val.rev_nat_index) == \
        (VIP6, VIP_PORT, REV_TCP6)
    [u] = env.client("udp", VIP6)
    assert u["from"] == [VIP6, VIP_PORT]
    assert served_by(u) in {(a, BE_PORT) for a in BE6}
    assert lb_packets(env.sock, REV_TCP6) == 20 and lb_packets(env.sock, REV_UDP6) == 1


def test_ipv4_mapped_destination_uses_ipv4_service(env):
    """A dual-stack AF_INET6 socket to ::ffff:VIP is balanced through the IPv4 maps."""
    mapped = f"::ffff:{VIP4}"
    [r] = env.client("tcp", mapped, v6=True)
    assert r["peer"] == [mapped, VIP_PORT]
    assert served_by(r) in {(a, BE_PORT) for a in BE4}
    [u] = env.client("udp", mapped, v6=True)
    assert u["from"] == [mapped, VIP_PORT]
    assert served_by(u) in {(a, BE_PORT) for a in BE4}
    assert lb_packets(env.sock, REV_TCP4) == 1 and lb_packets(env.sock, REV_UDP4) == 1
    # Reverse entries of mapped destinations live in the IPv4 map.
    assert len(env.sock.maps["cb_lb6_reverse_sk"]) == 0
    assert len(env.sock.maps["cb_lb4_reverse_sk"]) == 2


def test_service_without_backends_refuses(env):
    [r] = env.client("tcp", VIP4_EMPTY)
    assert r.get("errno") == errno.ECONNREFUSED, r
    [u] = env.client("udp", VIP4_EMPTY)                   # sendto fails the same way
    assert u.get("errno") == errno.ECONNREFUSED, u
    assert lb_packets(env.sock, REV_EMPTY_TCP4) == 0


def test_no_backend_errno_is_a_knob():
    """sock_no_backend_errno=EHOSTUNREACH gives Cilium's exact behaviour."""
    with socket_lb_env(sock_rodata={"sock_no_backend_errno": errno.EHOSTUNREACH}) as e:
        [r] = e.client("tcp", VIP4_EMPTY)
        assert r.get("errno") == errno.EHOSTUNREACH, r


def test_process_outside_cgroup_is_not_translated(env):
    before = lb_packets(env.sock, REV_TCP4)
    t0 = time.monotonic()
    [r] = env.client("tcp", VIP4, timeout=1.0, in_cgroup=False)
    # The VIP has no route in the client namespace: untranslated, connect fails at once.
    assert "server" not in r and r["errno"] in (errno.ENETUNREACH, errno.ETIMEDOUT), r
    assert time.monotonic() - t0 < 5
    assert lb_packets(env.sock, REV_TCP4) == before
    [ok] = env.client("tcp", VIP4)                        # the same client in the cgroup
    assert ok["peer"] == [VIP4, VIP_PORT]


def test_session_affinity_per_netns(env):
    results = env.client("tcp", VIP4_AFFINITY, count=10) + \
        env.client("tcp", VIP4_AFFINITY, count=10)        # two processes, same netns
    assert len({served_by(r) for r in results}) == 1
    netns_cookie = results[0]["netns_cookie"]
    chosen = served_by(results[0])[0]
    entries = list(env.sock.maps["cb_lb_affinity"].items())
    assert len(entries) == 1
    key, val = entries[0]
    assert isinstance(key, LbAffinityKey)
    assert (key.family, key.client.d[0], key.rev_nat_index) == (0, netns_cookie, REV_AFF4)
    assert BE4[val.backend_id - 1] == chosen


def test_per_packet_lb_does_not_translate_twice(env):
    """from_container (tc) on the path, with the same services, leaves socket-LB'd
    flows alone: their packets already carry the backend address."""
    with Collection.load(str(object_path("lxc"))) as lxc:
        program_all(lxc)
        # Packets leaving the client (the "pod") enter the server side's veth end:
        # that ingress is where from_container sees them.
        with attach_tc(lxc.programs["from_container"], "cbs0", "ingress", env.server_ns):
            results = env.client("tcp", VIP4, count=5)
            for r in results:
                assert r["peer"] == [VIP4, VIP_PORT]
                assert served_by(r) in {(a, BE_PORT) for a in BE4}
            assert lb_packets(env.sock, REV_TCP4) == 5
            assert lb_packets(lxc, REV_TCP4) == 0                 # tc did not translate
            ct = [t for t, _ in lxc.maps["cb_ct4"].items()]
            assert ct, "from_container saw no packets"
            assert not [t for t in ct if t.flags & CT_SERVICE]    # no service CT entry
            assert {str(from_be32(t.daddr)) for t in ct} <= set(BE4)   # only backends seen

            # Control: the same frontend reached from outside the cgroup, routed to
            # the server side, IS translated per packet (to_container reverse-NATs
            # the replies).  Only the handshake is checked, so the control does not
            # depend on to_container handling payload-carrying (non-linear) skbs.
            with attach_tc(lxc.programs["to_container"], "cbs0", "egress", env.server_ns):
                netns.run(env.client_ns, "ip", "route", "add", "198.19.0.0/17", "via", BE4[0])
                [r] = env.client("tcp", VIP4, in_cgroup=False, read=False)
                assert r["peer"] == [VIP4, VIP_PORT] and "errno" not in r, r
                assert lb_packets(lxc, REV_TCP4) > 0
                assert [t for t, _ in lxc.maps["cb_ct4"].items() if t.flags & CT_SERVICE]
                assert lb_packets(env.sock, REV_TCP4) == 5


def test_node_maps_shared_with_lxc_count_socket_lb():
    """Loaded with a node's pin directory (harness.node.datapath.load(..., pinned=True)),
    sock shares the service maps and cb_lb_stats with lxc: the node's counters, and
    so `chainbench services`, include socket-LB translations."""
    pins = bpffs.test_pin_dir(986)   # outside the pin root: no topology command sweeps it
    try:
        with Collection.load(str(object_path("lxc")), pin_dir=pins) as lxc:
            program_all(lxc)                                  # programmed through lxc ...
            with socket_lb_env(pin_dir=pins) as e:
                results = e.client("tcp", VIP4, count=3)     # ... balanced by sock ...
                assert all(r["peer"] == [VIP4, VIP_PORT] and "server" in r for r in results)
                assert lb_packets(lxc, REV_TCP4) == 3        # ... counted in the node's map
    finally:
        shutil.rmtree(pins, ignore_errors=True)
    assert not os.path.exists(pins)


def test_cleanup_leaves_nothing_behind():
    tag = "x"
    base = f"cb-slb{os.getpid()}{tag}"
    with pytest.raises(RuntimeError, match="boom"):
        with socket_lb_env(tag=tag) as e:
            [r] = e.client("tcp", VIP4)
            assert r["peer"] == [VIP4, VIP_PORT]
            server, cg = e.server, e.cgroup
            raise RuntimeError("boom")
    assert server.poll() is not None
    assert not os.path.exists(cg)
    assert not netns.exists(f"{base}-c") and not netns.exists(f"{base}-s")
    assert not [n for n in netns.list_project() if n.startswith(f"cb-slb{os.getpid()}")]
    assert not [p for p in cgroups.list_project()
                if os.path.basename(p).startswith(f"cb-slb{os.getpid()}")]


# --- the service features of issue 15 at the socket (the packet-path half of them:
# tests/test_lb_service_features.py) --------------------------------------------------------

def test_socket_lb_uses_the_internal_scope_and_leaves_source_ranges_to_packets():
    """connect() from a pod: an ITP Local load-balancer IP reaches the node's own backend
    only (INT scope); a frontend with source ranges is not translated at the socket (the
    source is unknown at connect()): the packet path checks and translates it."""
    import ipaddress

    from harness.lb.desired import lb_state
    from harness.node import datapath

    from .lbkit import endpoint, scenario, service
    pins = bpffs.test_pin_dir(985)   # outside the pin root: no topology command sweeps it
    eps = [endpoint(BE4[0], "cb-node0"), endpoint(BE4[1], "cb-node1")]
    itp = service("itp", "198.19.0.41", [("http", 80, BE_PORT, "TCP")], eps,
                  svc_type="LoadBalancer", node_ports={"http": 31081}, lb_ips=["203.0.113.81"],
                  internal_local=True)
    ranged = service("ranged", "198.19.0.42", [("http", 80, BE_PORT, "TCP")], eps,
                     svc_type="LoadBalancer", node_ports={"http": 31082},
                     lb_ips=["203.0.113.82"], source_ranges=["198.18.0.0/24"])
    try:
        with Collection.load(str(object_path("lxc")), pin_dir=pins) as lxc:
            ctl = datapath.lb_control(lxc)
            ctl.apply(lb_state(scenario(itp, ranged), node="cb-node0"))
            rid_itp = ctl.frontend_id((ipaddress.ip_address("203.0.113.81"), 80, "TCP"))
            rid_ranged = ctl.frontend_id((ipaddress.ip_address("203.0.113.82"), 80, "TCP"))
            with socket_lb_env(pin_dir=pins) as e:
                results = e.client("tcp", "203.0.113.81", port=80, count=20)
                assert all(r["peer"] == ["203.0.113.81", 80] for r in results)
                assert {served_by(r) for r in results} == {(BE4[0], BE_PORT)}
                assert lb_packets(lxc, rid_itp) == 20
                [r] = e.client("tcp", "203.0.113.82", port=80, timeout=1.0)
                assert "server" not in r and r.get("errno"), r     # no route: untranslated
                assert lb_packets(lxc, rid_ranged) == 0
    finally:
        shutil.rmtree(pins, ignore_errors=True)
    assert not os.path.exists(pins)
