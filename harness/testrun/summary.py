"""One line per frame, as ``tcpdump -n`` would show it (scapy's summary): what
``chainbench test-run`` prints for the packet a program put out.
"""
from __future__ import annotations

# Ether only dissects what scapy's imported layers bind: without inet/inet6/sctp
# every frame would read "... (IPv4) / Raw".
import scapy.layers.inet6  # noqa: F401
from scapy.config import conf
from scapy.layers.inet import TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

_PORTS = (TCP.sport, TCP.dport, UDP.sport, UDP.dport, SCTP.sport, SCTP.dport)


def frame(data: bytes) -> str:
    """*data* (an Ethernet frame) in one line, ports as numbers (tcpdump -n)."""
    conf.noenum.add(*_PORTS)
    return Ether(data).summary()
