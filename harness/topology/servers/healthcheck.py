"""kube-proxy's service health server, one per node: for every Service with a
healthCheckNodePort (type LoadBalancer, externalTrafficPolicy: Local) it answers
HTTP on that port with the node's count of local ready endpoints, as
kubernetes/kubernetes pkg/proxy/healthcheck/service_health.go (hcHandler) does:

* ``200`` when the node has local ready endpoints, ``503`` when it has none
  (terminating endpoints do not count: the load balancer should stop sending);
* headers ``Content-Type: application/json`` and ``X-Content-Type-Options: nosniff``;
* the body, for any path::

    {
    	"service": {
    		"namespace": "default",
    		"name": "etp-local"
    	},
    	"localEndpoints": 1,
    	"serviceProxyHealthy": true
    }

  (tab-indented, no trailing newline), localEndpoints counting distinct local ready
  endpoint IPs (EndpointsMap.LocalReadyEndpoints).

Cilium's agent serves the same in kube-proxy-replacement mode, so ``chainbench up``
starts one in every node's namespace whatever the datapath (``start``), listening
on every address, or only the node's addresses inside ``--nodeport-addresses``
(as kube-proxy).  It reads the node's view of the scenario: the recorded
scenario with the topology's pod addresses and nodes.  The processes are recorded
(harness.host.procs, kind ``healthcheck:<node>``): ``chainbench down`` ends them,
``stop(node)`` ends one node's.

    python -m harness.topology.servers.healthcheck --node cb-node0 [--address IP ...]
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import os
import select
import signal
import subprocess
import sys
import time

from harness.errors import ChainbenchError
from harness.host import procs

STATUS = {200: "OK", 503: "Service Unavailable"}


class HealthServerError(ChainbenchError, RuntimeError):
    """A node's health-check server did not come up (one line)."""
KIND = "healthcheck"


def local_endpoints(scenario, node: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(namespace, name) -> (healthCheckNodePort, local ready endpoints on *node*)."""
    out = {}
    for svc in scenario.services:
        if svc.health_check_node_port is None:
            continue
        # The primary family's proxier owns the port (its EndpointsMap is counted).
        primary = "IPv6" if svc.ip_families[0] == "IPv6" else "IPv4"
        ips = {str(a) for sl in scenario.endpoint_slices_for(svc) if sl.address_type == primary
               for ep in sl.endpoints if ep.node_name == node and ep.ready and not ep.terminating
               for a in ep.addresses}
        out[(svc.meta.namespace, svc.meta.name)] = (svc.health_check_node_port, len(ips))
    return out


def body(namespace: str, name: str, count: int, healthy: bool = True) -> bytes:
    """The handler's body, byte for byte (Go's dedent + Trim of the template)."""
    return (f'{{\n\t"service": {{\n\t\t"namespace": {json.dumps(namespace)},\n'
            f'\t\t"name": {json.dumps(name)}\n\t}},\n\t"localEndpoints": {count},\n'
            f'\t"serviceProxyHealthy": {"true" if healthy else "false"}\n}}').encode()


def response(namespace: str, name: str, count: int) -> bytes:
    code = 200 if count else 503
    payload = body(namespace, name, count)
    return (f"HTTP/1.1 {code} {STATUS[code]}\r\nContent-Type: application/json\r\n"
            f"X-Content-Type-Options: nosniff\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def _serve(reader, writer, namespace: str, name: str, count: int) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(h.split(":", 1)[1]) for h in lines[1:]
                           if h.lower().startswith("content-length:")), 0)
            if length:
                await reader.readexactly(length)
            writer.write(response(namespace, name, count))
            await writer.drain()
            if any(h.lower().replace(" ", "") == "connection:close" for h in lines[1:]):
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main_async(node: str, addresses: list[str]) -> None:
    from harness.scenario import load_scenario
    from harness.topology.state import load_state, scenario_with_real_addresses
    state = load_state()
    if state is None:
        raise SystemExit("no topology is up")
    scenario = scenario_with_real_addresses(load_scenario(state.scenario), state)
    servers = []
    for (namespace, name), (port, count) in sorted(local_endpoints(scenario, node).items()):
        def handler(r, w, ns=namespace, n=name, c=count):
            return _serve(r, w, ns, n, c)
        # host None: every address, one socket per family.
        for host in addresses or [None]:
            servers.append(await asyncio.start_server(handler, host, port, reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("serving", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def _pythonpath() -> str:
    from harness import paths
    return os.pathsep.join([str(paths.ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def start(node: str, netns: str, addresses: list[str] = (), timeout: float = 15.0) -> None:
    """Start *node*'s health server in *netns* (recorded) and wait until it serves."""
    cmd = ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m",
           "harness.topology.servers.healthcheck", "--node", node,
           *(a for addr in addresses for a in ("--address", addr))]
    scratch = procs.scratch_dir(f"cb-healthcheck-{node}-")
    log = os.path.join(scratch, "log")
    with open(log, "w") as err_file:
        proc = procs.spawn(f"{KIND}:{node}", cmd, new_session=True, stdout=subprocess.PIPE,
                           stderr=err_file, text=True, scratch=[scratch],
                           env={**os.environ, "PYTHONPATH": _pythonpath()})
    line = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().strip()
            break
    proc.stdout.close()
    if line != "serving":
        procs.stop(proc)
        with open(log) as f:
            err = f.read().strip().splitlines()[-1:]
        procs.remove_scratch(scratch)
        raise HealthServerError(f"health-check server of {node} did not start"
                                + (f": {err[0]}" if err else ""))


def stop(node: str, grace: float = 5.0) -> None:
    """End *node*'s health server, if one is recorded."""
    for rec in procs.records():
        if rec.kind != f"{KIND}:{node}" or not rec.pid:
            continue
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not procs.alive(rec.pid, rec.start):
                break
            try:
                os.killpg(rec.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while procs.alive(rec.pid, rec.start) and time.monotonic() < deadline:
                time.sleep(0.02)
        try:
            os.unlink(rec.path)
        except FileNotFoundError:
            pass
        for directory in rec.scratch:
            procs.remove_scratch(directory)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--address", action="append", default=[],
                        help="listen on this address only (repeatable; default: every address)")
    args = parser.parse_args()
    asyncio.run(main_async(args.node, args.address))
    return 0


if __name__ == "__main__":
    sys.exit(main())
