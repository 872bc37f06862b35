"""Helpers for datapath tests: run a scapy packet, parse what comes out, and
check checksums the way Cilium's bpf/tests check them (recompute, compare).
"""
from __future__ import annotations

from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import IPerror6, _ICMPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from harness.testrun.runner import PacketResult, Runner


#: MAC addresses of test frames.  Always give Ether() both addresses: without
#: them scapy resolves a MAC through the host's routing table and ARP, which
#: would put traffic on the machine's real network.
POD_MAC = "02:cb:00:00:00:01"
HOST_MAC = "02:cb:00:00:00:02"


def eth(src: str = POD_MAC, dst: str = HOST_MAC) -> Ether:
    """An Ethernet header with fixed, locally administered addresses."""
    return Ether(src=src, dst=dst)


@dataclass
class ScapyRun:
    result: PacketResult
    packet: Ether          # data_out parsed by scapy

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def drop_reason(self) -> int | None:
        return self.result.drop_reason


def run_scapy(runner: Runner, pkt: Packet | bytes, repeat: int = 1) -> ScapyRun:
    """Run *pkt* through the runner's program; return the result and the output parsed."""
    result = runner.run(bytes(pkt), repeat=repeat)
    return ScapyRun(result, Ether(result.data_out))


_CHECKSUMMED = (IP, TCP, UDP, ICMP, _ICMPv6)
_QUOTED = (IPerror, TCPerror, UDPerror, ICMPerror, IPerror6)


def checksum_errors(pkt: Packet, quoted: bool = False) -> list[str]:
    """Layers whose checksum differs from what scapy computes for the same bytes.

    Empty list means every IPv4/TCP/UDP/ICMP/ICMPv6 checksum in the packet is
    valid.  The packet an ICMP error quotes is left out unless *quoted* (it is
    usually cut short, so its L4 checksum cannot be recomputed).
    """
    raw = bytes(pkt)
    parsed = Ether(raw)
    fresh = Ether(raw)

    def field(layer) -> str | None:
        """The layer's own checksum field (ICMPv6 calls it cksum).  Looked up in the
        layer's field list: getattr would fall through to a quoted header's."""
        if not isinstance(layer, _CHECKSUMMED) or (isinstance(layer, _QUOTED) and not quoted):
            return None
        name = "cksum" if isinstance(layer, _ICMPv6) else "chksum"
        return name if any(f.name == name for f in layer.fields_desc) else None
    for layer in fresh.iterpayloads():
        if (name := field(layer)):
            layer.setfieldval(name, None)
    recomputed = Ether(bytes(fresh))
    errors = []
    for have, want in zip(parsed.iterpayloads(), recomputed.iterpayloads()):
        name = field(have)
        if name and have.getfieldval(name) != want.getfieldval(name):
            errors.append(f"{have.name} checksum {have.getfieldval(name):#06x}, "
                          f"expected {want.getfieldval(name):#06x}")
    return errors
