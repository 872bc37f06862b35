"""Client for the socket-LB tests: makes COUNT TCP connections (or UDP
exchanges) to ADDR:PORT and prints one JSON list, an object per attempt:

  tcp: {"peer": getpeername(), "server": <server's JSON line>, "cookie": SO_COOKIE}
  udp: {"from": recvfrom()'s source, "server": ..., "cookie": ...}
  on failure: {"errno": N, "error": "..."}

Every object also carries the socket's network namespace cookie
(SO_NETNS_COOKIE) as "netns_cookie".

    sock_lb_client.py tcp|udp ADDR PORT [--count N] [--timeout S] [--v6] [--no-read]

--no-read (tcp): connect and getpeername only, without waiting for the
server's line (no "server" key then).

--v6 uses an AF_INET6 socket (for IPv4-mapped addresses on a dual-stack
socket); an address containing ':' implies it.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

SO_COOKIE = 57
SO_NETNS_COOKIE = 71


def cookie(s: socket.socket, opt: int) -> int | None:
    try:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, opt, 8))[0]
    except OSError:
        return None


def attempt(proto: str, family: int, addr: str, port: int, timeout: float,
            read: bool = True) -> dict:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout)
        out: dict = {"cookie": cookie(s, SO_COOKIE), "netns_cookie": cookie(s, SO_NETNS_COOKIE)}
        try:
            if proto == "tcp":
                s.connect((addr, port))
                out["peer"] = list(s.getpeername()[:2])
                if not read:
                    return out
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            else:
                s.sendto(b"hello", (addr, port))
                data, src = s.recvfrom(4096)
                out["from"] = list(src[:2])
            out["server"] = json.loads(data)
        except OSError as e:
            out["errno"] = e.errno if e.errno is not None else 110   # socket.timeout: ETIMEDOUT
            out["error"] = str(e)
        return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("proto", choices=("tcp", "udp"))
    ap.add_argument("addr")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--v6", action="store_true")
    ap.add_argument("--no-read", action="store_true")
    args = ap.parse_args()
    family = socket.AF_INET6 if args.v6 or ":" in args.addr else socket.AF_INET
    results = [attempt(args.proto, family, args.addr, args.port, args.timeout,
                       read=not args.no_read)
               for _ in range(args.count)]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
