"""A small asyncio HTTP/1.1 echo server: every request gets ``200`` and a body
naming the server (``--name``), with the peer's address in an ``X-Client-Address``
header (what a Service check reads to tell whether the client's source was
preserved or masqueraded), keep-alive honoured.  Runs inside a pod's
namespace for the connectivity checks and the HTTP benchmarks.

    python -m harness.topology.servers.echo_http --port 8080 --name echo-a [--bind ADDR]
"""
from __future__ import annotations

import argparse
import asyncio
import signal


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    peer = writer.get_extra_info("peername")
    client = (peer[0] if peer else "").removeprefix("::ffff:").encode()
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            close = any(h.lower().replace(" ", "") == "connection:close" for h in lines[1:])
            length = next((int(h.split(":", 1)[1]) for h in lines[1:]
                           if h.lower().startswith("content-length:")), 0)
            if length:
                await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Client-Address: "
                         + client + b"\r\nContent-Length: "
                         + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"")
                         + b"\r\n\r\n" + body)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main_async(bind: str, port: int, name: str) -> None:
    body = f"{name}\n".encode()
    # host None: one socket per family (asyncio makes an IPv6 socket IPv6-only).
    server = await asyncio.start_server(lambda r, w: _serve(r, w, body), bind or None, port,
                                        reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="", help="address to listen on (default: all, both families)")
    args = parser.parse_args()
    asyncio.run(main_async(args.bind, args.port, args.name))


if __name__ == "__main__":
    main()
