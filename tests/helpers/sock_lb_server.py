"""Backend servers for the socket-LB tests: TCP and UDP listeners that answer
every connection/datagram with one JSON line naming the address that
answered (``local``) and the address it saw (``peer``).

    sock_lb_server.py [--tcp ADDR:PORT]... [--udp ADDR:PORT]... [--lifetime S]

IPv6 addresses are written ``[addr]:port``.  Prints ``ready`` once every
socket is bound; exits on SIGTERM or after --lifetime seconds (a stray
server never outlives a crashed test by long).
"""
from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time


def parse(spec: str) -> tuple[int, str, int]:
    host, _, port = spec.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def reply(local, peer) -> bytes:
    return (json.dumps({"local": list(local[:2]), "peer": list(peer[:2])}) + "\n").encode()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tcp", action="append", default=[])
    ap.add_argument("--udp", action="append", default=[])
    ap.add_argument("--lifetime", type=float, default=120)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    sel = selectors.DefaultSelector()
    for spec in args.tcp:
        family, host, port = parse(spec)
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(128)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for spec in args.udp:
        family, host, port = parse(spec)
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, port))
        sel.register(s, selectors.EVENT_READ, "udp")
    print("ready", flush=True)

    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            if key.data == "tcp":
                conn, peer = s.accept()
                with conn:
                    conn.settimeout(2)
                    try:
                        conn.sendall(reply(conn.getsockname(), peer))
                    except OSError:
                        pass
            else:
                _, peer = s.recvfrom(2048)
                s.sendto(reply(s.getsockname(), peer), peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
