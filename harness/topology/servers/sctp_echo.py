"""An SCTP association's first exchange (INIT, INIT-ACK) over raw sockets, for
the SCTP Service check: a responder in a backend pod, and a client.

The kernels this project runs on may be built without SCTP (CONFIG_IP_SCTP
unset: ``socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`` fails with "Protocol not
supported" and there is no module to load), while netfilter's SCTP conntrack
and the BPF datapath still translate SCTP.  So both ends speak the first
exchange of RFC 9260 themselves on raw IPPROTO_SCTP sockets (a packet delivered
to a raw socket draws no "protocol unreachable"): the client sends an INIT to
the Service address; the responder answers each INIT for its port with an
INIT-ACK whose verification tag is the INIT's initiate tag and whose State
Cookie carries the responder's name; the client accepts only an INIT-ACK from
the address and port it dialled (the datapath's reverse translation) with its
tag, and prints the name.

    python -m harness.topology.servers.sctp_echo serve --port 7777 --name echo-1
    python -m harness.topology.servers.sctp_echo connect 198.19.0.60 7777 --timeout 2
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import select
import signal
import socket
import struct
import sys
import time

IPPROTO_SCTP = 132
INIT, INIT_ACK = 1, 2
STATE_COOKIE = 7


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def packet(sport: int, dport: int, vtag: int, chunk: bytes) -> bytes:
    """An SCTP packet (common header + *chunk*) with its CRC32c (little-endian on the wire)."""
    head = struct.pack("!HHII", sport, dport, vtag, 0)
    crc = crc32c(head + chunk)
    return struct.pack("!HHI", sport, dport, vtag) + struct.pack("<I", crc) + chunk


def init_chunk(kind: int, tag: int, params: bytes = b"") -> bytes:
    """INIT or INIT-ACK: initiate tag, a_rwnd, 1 stream each way, initial TSN = tag."""
    body = struct.pack("!IIHHI", tag, 65535, 1, 1, tag) + params
    return struct.pack("!BBH", kind, 0, 4 + len(body)) + body


def parse(data: bytes) -> tuple[int, int, int, int, bytes] | None:
    """(sport, dport, vtag, first chunk type, first chunk body), or None if malformed."""
    if len(data) < 16:
        return None
    sport, dport, vtag, crc = struct.unpack("!HHII", data[:12])
    if struct.unpack("<I", data[8:12])[0] != crc32c(data[:8] + b"\0\0\0\0" + data[12:]):
        return None
    kind, _flags, length = struct.unpack("!BBH", data[12:16])
    return sport, dport, vtag, kind, data[16:12 + length]


def _strip_ip(data: bytes, family: int) -> bytes:
    """A raw IPv4 socket delivers the IP header too; IPv6 does not."""
    return data[(data[0] & 0x0F) * 4:] if family == socket.AF_INET else data


def serve(port: int, name: str) -> None:
    socks = [socket.socket(f, socket.SOCK_RAW, IPPROTO_SCTP)
             for f in (socket.AF_INET, socket.AF_INET6)]
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    cookie = name.encode()
    cookie_param = struct.pack("!HH", STATE_COOKIE, 4 + len(cookie)) + cookie
    cookie_param += b"\0" * (-len(cookie_param) % 4)
    while not stop:
        try:
            ready, _, _ = select.select(socks, [], [], 0.5)
        except InterruptedError:
            continue
        for s in ready:
            data, addr = s.recvfrom(65535)
            got = parse(_strip_ip(data, s.family))
            if got is None:
                continue
            sport, dport, _vtag, kind, body = got
            if kind != INIT or dport != port or len(body) < 16:
                continue
            their_tag = struct.unpack("!I", body[:4])[0]
            reply = packet(port, sport, their_tag,
                           init_chunk(INIT_ACK, int.from_bytes(os.urandom(4), "big") or 1,
                                      cookie_param))
            s.sendto(reply, (addr[0], 0))


def connect(host: str, port: int, timeout: float) -> str:
    """Send an INIT to host:port; the name in the INIT-ACK's cookie (TimeoutError if none)."""
    addr = ipaddress.ip_address(host)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    s = socket.socket(family, socket.SOCK_RAW, IPPROTO_SCTP)
    sport = 32768 + int.from_bytes(os.urandom(2), "big") % 28000
    tag = int.from_bytes(os.urandom(4), "big") or 1
    init = packet(sport, port, 0, init_chunk(INIT, tag))
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise TimeoutError(f"no INIT-ACK from {host}:{port} in {timeout:g} s")
        if now >= next_send:
            s.sendto(init, (host, 0))
            next_send = now + 0.5
        ready, _, _ = select.select([s], [], [], min(deadline, next_send) - now)
        if not ready:
            continue
        data, src = s.recvfrom(65535)
        got = parse(_strip_ip(data, family))
        if got is None or ipaddress.ip_address(src[0]) != addr:
            continue
        rsport, rdport, vtag, kind, body = got
        if (rsport, rdport, vtag, kind) != (port, sport, tag, INIT_ACK):
            continue
        params = body[16:]
        while len(params) >= 4:
            ptype, plen = struct.unpack("!HH", params[:4])
            if ptype == STATE_COOKIE:
                return params[4:plen].decode(errors="replace")
            params = params[(plen + 3) & ~3:] if plen >= 4 else b""
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p = sub.add_parser("connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port, args.name)
        return 0
    try:
        print(connect(args.host, args.port, args.timeout))
        return 0
    except (OSError, TimeoutError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
