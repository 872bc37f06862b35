"""nginx as the pods' HTTP server: one instance per pod, answering every
request with ``200`` and the pod's name (the peer's address in an
``X-Client-Address`` header, as harness/topology/servers/echo_http.py), keep-alive on.

Measured against harness/topology/servers/echo_http.py (asyncio), both in a namespace
on this kind of machine, wrk -t1 -c32 -d4s from another namespace over a
veth: keep-alive 113,864 vs 45,873 requests/s, one request per connection
29,635 vs 4,118 requests/s.  The asyncio server would be the bottleneck of any
new-connection benchmark, so pods run nginx; echo_http remains the fallback
where nginx is not installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from harness.host import procs

CONFIG = """worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
{servers}}}
"""
SERVER = """  server {{
    listen {bind4}{port} backlog=4096;
    listen [::]:{port} ipv6only=on backlog=4096;
    location / {{ default_type text/plain; add_header X-Client-Address $remote_addr always;
                 return 200 "{name}\\n"; }}
  }}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


def command(port: int, name: str, bind4: str = "",
            extra_ports: tuple[int, ...] = ()) -> tuple[list[str], str]:
    """The command that runs nginx in the foreground (answering on *port* and any
    *extra_ports*), and its scratch directory (the caller removes it after the
    process ends; ``chainbench down`` removes any left: harness.host.procs)."""
    directory = procs.scratch_dir(f"cb-nginx-{name}-")
    conf = os.path.join(directory, "nginx.conf")
    servers = "".join(SERVER.format(port=p, name=name, bind4=f"{bind4}:" if bind4 else "")
                      for p in (port, *extra_ports))
    with open(conf, "w") as f:
        f.write(CONFIG.format(dir=directory, servers=servers))
    return [shutil.which("nginx") or "nginx", "-c", conf, "-e", os.path.join(directory, "error.log")], directory


def stop_scratch(directory: str) -> None:
    procs.remove_scratch(directory)


def check_config(port: int = 8080) -> str:
    cmd, directory = command(port, "probe")
    try:
        proc = subprocess.run([*cmd, "-t"], capture_output=True, text=True)
        return proc.stderr
    finally:
        stop_scratch(directory)
