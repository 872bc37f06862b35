"""One node's datapath in test-run: the lxc programs of several endpoints and the
node's from_netdev, loaded with every map shared as chaining shares them, so a packet
one endpoint's program handles changes what another's sees (conntrack, NAT, metrics).
Endpoints are loaded each with its own id and addresses (``endpoint``), or, as a node
of a topology runs them, share one lxc object that finds its endpoint by the packet's
interface (``shared_endpoint``: its cb_endpoint_config entry; test-run packets arrive
on the interface ``__sk_buff.ifindex`` names).

The maps are pinned in a private bpffs directory (``/sys/fs/bpf/cb-test-<pid>-<n>``,
outside the project's pin root so no topology command takes it for a node), removed
when the test ends (``chainbench down`` removes those of killed processes); nothing is
attached to any device.
"""
from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field
from typing import Callable

from scapy.layers.l2 import Ether

from harness.host import bpffs
from harness.node import datapath
from harness.bpf import Collection, SkBuffCtx
from harness.node.rodata import endpoint_config
from harness.testrun.runner import PacketResult, Runner

_SEQ = itertools.count()


@dataclass
class Endpoint:
    """One pod's from_container (egress) and to_container (ingress)."""
    coll: Collection
    id: int
    ip4: str | None
    ip6: str | None
    ctx: SkBuffCtx | None = None     # the __sk_buff test-run gives (the interface)

    def __post_init__(self):
        self._runners = {p: Runner(self.coll, p) for p in ("from_container", "to_container")}

    def egress(self, pkt) -> tuple[PacketResult, Ether]:
        return _run(self._runners["from_container"], pkt, self.ctx)

    def ingress(self, pkt) -> tuple[PacketResult, Ether]:
        return _run(self._runners["to_container"], pkt, self.ctx)


@dataclass
class Node:
    """A node whose programs share maps; ``close()`` unpins them (the fixture does)."""
    load: Callable[..., Collection]
    name: str = "cb-node0"
    pin: str = field(init=False)
    _first: Collection | None = field(default=None, init=False)
    _netdev: Runner | None = field(default=None, init=False)
    _shared: Collection | None = field(default=None, init=False)

    def __post_init__(self):
        self.pin = bpffs.test_pin_dir(next(_SEQ))

    def _load(self, obj: str, rodata: dict) -> Collection:
        coll = self.load(obj, rodata=rodata, pin_dir=self.pin)
        self._first = self._first or coll
        return coll

    def endpoint(self, ep_id: int, ip4: str | None = None, ip6: str | None = None) -> Endpoint:
        """The lxc programs of endpoint *ep_id*, whose pod has addresses ip4/ip6."""
        rodata = {**datapath.rodata_for("lxc"), **datapath.endpoint_rodata(ep_id, ip4, ip6)}
        return Endpoint(self._load("lxc", rodata), ep_id, ip4, ip6)

    def shared_endpoint(self, ifindex: int, ep_id: int | None = None, ip4: str | None = None,
                        ip6: str | None = None) -> Endpoint:
        """The node's shared lxc programs (loaded once) run on interface *ifindex*; with
        *ep_id*, the interface's cb_endpoint_config entry names that endpoint."""
        if self._shared is None:
            self._shared = self._load("lxc-shared", datapath.rodata_for("lxc-shared"))
        if ep_id is not None:
            self._shared.maps["cb_endpoint_config"].update(
                ifindex, endpoint_config(ep_id, ip4, ip6))
        return Endpoint(self._shared, ep_id or 0, ip4, ip6, SkBuffCtx(ifindex=ifindex))

    def from_netdev(self, pkt) -> tuple[PacketResult, Ether]:
        if self._netdev is None:
            self._netdev = Runner(self._load("netdev", datapath.rodata_for("netdev", self.name)),
                                  "from_netdev")
        return _run(self._netdev, pkt)

    @property
    def coll(self) -> Collection:
        """A collection holding the node's maps (for programming and reading them)."""
        if self._first is None:
            raise RuntimeError("load an endpoint or from_netdev first")
        return self._first

    def close(self) -> None:
        shutil.rmtree(self.pin, ignore_errors=True)


def _run(runner: Runner, pkt, ctx=None) -> tuple[PacketResult, Ether]:
    result = runner.run(bytes(pkt), ctx=ctx)
    return result, Ether(result.packet_out)


def verdict(result: PacketResult) -> str | int:
    """"pass" (TC_ACT_OK or a redirect), or the drop reason."""
    if result.verdict in ("TC_ACT_OK", "TC_ACT_REDIRECT"):
        return "pass"
    return result.drop_reason if result.drop_reason is not None else result.verdict
