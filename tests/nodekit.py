"""One node's datapath in test-run: the lxc programs of several endpoints and the
node's from_netdev, loaded with every map shared as chaining shares them, so a packet
one endpoint's program handles changes what another's sees (conntrack, NAT, metrics).

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
from harness.bpf import Collection
from harness.testrun.runner import PacketResult, Runner

_SEQ = itertools.count()


@dataclass
class Endpoint:
    """One pod's from_container (egress) and to_container (ingress)."""
    coll: Collection
    id: int
    ip4: str | None
    ip6: str | None

    def __post_init__(self):
        self._runners = {p: Runner(self.coll, p) for p in ("from_container", "to_container")}

    def egress(self, pkt) -> tuple[PacketResult, Ether]:
        return _run(self._runners["from_container"], pkt)

    def ingress(self, pkt) -> tuple[PacketResult, Ether]:
        return _run(self._runners["to_container"], pkt)


@dataclass
class Node:
    """A node whose programs share maps; ``close()`` unpins them (the fixture does)."""
    load: Callable[..., Collection]
    name: str = "cb-node0"
    pin: str = field(init=False)
    _first: Collection | None = field(default=None, init=False)
    _netdev: Runner | None = field(default=None, init=False)

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


def _run(runner: Runner, pkt) -> tuple[PacketResult, Ether]:
    result = runner.run(bytes(pkt))
    return result, Ether(result.packet_out)


def verdict(result: PacketResult) -> str | int:
    """"pass" (TC_ACT_OK or a redirect), or the drop reason."""
    if result.verdict in ("TC_ACT_OK", "TC_ACT_REDIRECT"):
        return "pass"
    return result.drop_reason if result.drop_reason is not None else result.verdict
