"""Flows shaped like a connectivity-check run, for the service-map tests and the README's picture.

``connectivity_flows()`` is what ``chainbench observe -o json`` records while
``chainbench connectivity`` runs bench/scenarios/connectivity-check.yaml: the
checks' pods (namespace ``default``), services ``echo-a`` and ``echo-b``, the
host and remote-node peers, and the world (203.0.113.10, standing in for
1.1.1.1); every passing check's connection forwarded (with its replies), every
check that must fail dropped with ``Policy denied`` where the check's flow
validation expects it (the client's egress, or the server's ingress).  Each
flow is Hubble's ``flow.Flow`` in protojson with the proto field names.

    python -m tests.servicemap_flows --out docs/service-map.png [--flows results/flows.json]

renders the service map of *--flows* (default: these flows) and photographs it
in headless Chromium (``make service-map-screenshot``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import uuid
from pathlib import Path

NS = "default"
NODE0, NODE1 = "cb-node0", "cb-node1"
#: pod -> (IP, node, identity), as bench/scenarios/connectivity-check.yaml places them.
PODS = {
    "echo-a": ("198.18.0.10", NODE0, 21001), "echo-b": ("198.18.1.10", NODE1, 21002),
    "echo-ingress-deny": ("198.18.0.11", NODE0, 21003), "pod-to-a": ("198.18.1.20", NODE1, 21004),
    "pod-to-a-allowed-cnp": ("198.18.0.21", NODE0, 21005),
    "pod-to-a-l3-denied-cnp": ("198.18.0.22", NODE0, 21006),
    "pod-to-b-intra-node": ("198.18.1.23", NODE1, 21007),
    "pod-to-b-intra-node-hostport": ("198.18.1.24", NODE1, 21008),
    "pod-to-b-intra-node-nodeport": ("198.18.1.25", NODE1, 21009),
    "pod-to-b-multi-node-clusterip": ("198.18.0.26", NODE0, 21010),
    "pod-to-b-multi-node-headless": ("198.18.0.27", NODE0, 21011),
    "pod-to-b-multi-node-hostport": ("198.18.0.28", NODE0, 21012),
    "pod-to-b-multi-node-nodeport": ("198.18.0.29", NODE0, 21013),
    "pod-to-external-1111": ("198.18.0.30", NODE0, 21014),
    "client-egress-deny": ("198.18.1.32", NODE1, 21015),
    "client-cidr-deny": ("198.18.1.33", NODE1, 21016),
    "client-to-world": ("198.18.1.34", NODE1, 21017),
}
WORLD = ("203.0.113.10", 80)
HOST_NODE0, HOST_NODE1 = "198.19.128.1", "198.19.128.2"
ECHO = 8080

#: (check, client, server, service or None, port, expect, drop direction): the checks of
#: harness/topology/connectivity.py as their flows show them.  Clients "host"/"remote-node"
#: are the node's host network, seen from the server's node.
CHECKS = (
    ("echo-a", "pod-to-a", "echo-a", None, ECHO, "pass", None),
    ("echo-b", "pod-to-b-intra-node", "echo-b", None, ECHO, "pass", None),
    ("echo-b-host", "pod-to-a", "host", None, 41000, "pass", None),
    ("pod-to-a", "pod-to-a", "echo-a", "echo-a", ECHO, "pass", None),
    ("pod-to-a-allowed-cnp", "pod-to-a-allowed-cnp", "echo-a", "echo-a", ECHO, "pass", None),
    ("pod-to-a-l3-denied-cnp", "pod-to-a-l3-denied-cnp", "echo-a", "echo-a", ECHO, "fail", "EGRESS"),
    ("pod-to-b-intra-node", "pod-to-b-intra-node", "echo-b", "echo-b", ECHO, "pass", None),
    ("pod-to-b-intra-node-hostport", "pod-to-b-intra-node-hostport", "echo-b", None, ECHO, "pass", None),
    ("pod-to-b-intra-node-nodeport", "pod-to-b-intra-node-nodeport", "echo-b", "echo-b", ECHO, "pass",
     None),
    ("pod-to-b-multi-node-clusterip", "pod-to-b-multi-node-clusterip", "echo-b", "echo-b", ECHO, "pass",
     None),
    ("pod-to-b-multi-node-headless", "pod-to-b-multi-node-headless", "echo-b", None, ECHO, "pass", None),
    ("pod-to-b-multi-node-hostport", "pod-to-b-multi-node-hostport", "echo-b", None, ECHO, "pass", None),
    ("pod-to-b-multi-node-nodeport", "pod-to-b-multi-node-nodeport", "echo-b", "echo-b", ECHO, "pass",
     None),
    ("host-to-b-multi-node-clusterip", "remote-node", "echo-b", "echo-b", ECHO, "pass", None),
    ("host-to-b-multi-node-headless", "remote-node", "echo-b", None, ECHO, "pass", None),
    ("pod-to-external", "pod-to-external-1111", "world", None, 80, "pass", None),
    ("all-ingress-deny", "pod-to-a", "echo-ingress-deny", None, ECHO, "fail", "INGRESS"),
    ("all-egress-deny", "client-egress-deny", "echo-a", "echo-a", ECHO, "fail", "EGRESS"),
    ("client-egress-to-cidr-deny", "client-cidr-deny", "world", None, 80, "fail", "EGRESS"),
    ("to-entities-world", "client-to-world", "world", None, 80, "pass", None),
    ("to-entities-world-only", "client-to-world", "echo-a", "echo-a", ECHO, "fail", "EGRESS"),
)
RESERVED = {"host": (1, HOST_NODE1), "world": (2, WORLD[0]), "remote-node": (6, HOST_NODE0)}
START = _dt.datetime(2026, 11, 26, 19, 30, 0, tzinfo=_dt.timezone.utc)


def endpoint(name: str) -> tuple[dict, str, str]:
    """(Hubble Endpoint, its IP, the node it is on) of a pod or reserved peer."""
    if name in RESERVED:
        identity, ip = RESERVED[name]
        return {"identity": identity, "labels": [f"reserved:{name}"]}, ip, NODE1
    ip, node, identity = PODS[name]
    return ({"ID": identity - 20000, "identity": identity, "namespace": NS, "pod_name": name,
             "labels": [f"k8s:io.cilium.k8s.policy.cluster=default",
                        f"k8s:io.kubernetes.pod.namespace={NS}", f"k8s:name={name}"]},
            ip, node)


def flow(when: _dt.datetime, src: str, dst: str, port: int, sport: int, flags: dict, *,
         reply: bool, service: str | None, verdict: str = "FORWARDED",
         direction: str = "INGRESS") -> dict:
    (s_ep, s_ip, s_node), (d_ep, d_ip, d_node) = endpoint(src), endpoint(dst)
    node = s_node if direction == "EGRESS" else d_node
    l4 = {"TCP": {"source_port": sport, "destination_port": port, "flags": flags}}
    f = {"time": when.isoformat().replace("+00:00", "Z"),
         "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{when.isoformat()} {src} {dst} {sport}")),
         "verdict": verdict,
         "ethernet": {"source": "02:cb:00:00:00:01", "destination": "02:cb:00:00:00:02"},
         "IP": {"source": s_ip, "destination": d_ip, "ipVersion": "IPv4"}, "l4": l4,
         "source": s_ep, "destination": d_ep, "Type": "L3_L4", "node_name": node,
         "traffic_direction": direction, "is_reply": reply,
         "Summary": "TCP Flags: " + ", ".join(k for k, v in flags.items() if v)}
    if verdict == "DROPPED":
        f.update(drop_reason=133, drop_reason_desc="POLICY_DENIED", event_type={"type": 1, "sub_type": 133})
    else:
        f.update(event_type={"type": 4, "sub_type": 3 if direction == "INGRESS" else 0},
                 trace_observation_point="TO_ENDPOINT" if direction == "INGRESS" else "FROM_ENDPOINT")
    if service:
        f["destination_service" if not reply else "source_service"] = {"name": service, "namespace": NS}
    return f


def connectivity_flows() -> list[dict]:
    """The flows of one connectivity-check run (see the module's docstring), in time order."""
    flows, when, sport = [], START, 40000
    for _, client, server, service, port, expect, direction in CHECKS:
        sport += 1
        if expect == "pass":
            for flags, reply in (({"SYN": True}, False), ({"SYN": True, "ACK": True}, True),
                                 ({"ACK": True}, False), ({"ACK": True, "PSH": True}, False),
                                 ({"ACK": True, "PSH": True}, True), ({"ACK": True, "FIN": True}, False),
                                 ({"ACK": True, "FIN": True}, True)):
                when += _dt.timedelta(milliseconds=3)
                if reply:
                    flows.append(flow(when, server, client, sport, port, flags, reply=True,
                                      service=service, direction="EGRESS"))
                else:
                    flows.append(flow(when, client, server, port, sport, flags, reply=False,
                                      service=service))
        else:
            for _ in range(3):          # the SYN and its retransmits, each dropped
                when += _dt.timedelta(seconds=1)
                flows.append(flow(when, client, server, port, sport, {"SYN": True}, reply=False,
                                  service=service, verdict="DROPPED", direction=direction))
        when += _dt.timedelta(milliseconds=250)
    return flows


def json_lines(flows: list[dict]) -> str:
    """*flows* as ``-o json`` writes them: one ``{"flow", "node_name", "time"}`` object a line."""
    return "".join(json.dumps({"flow": f, "node_name": f.get("node_name", ""),
                               "time": f.get("time", "")}) + "\n" for f in flows)


def screenshot(page: Path, out: Path, width: int = 1400, height: int = 900) -> Path:
    """A PNG of *page* in headless Chromium (bench.report.screenshot drives it)."""
    from bench.report.screenshot import run_chromium
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cb-chromium-") as profile:
        run_chromium([f"--window-size={width},{height}", "--virtual-time-budget=5000",
                      f"--screenshot={out.resolve()}", page.resolve().as_uri()], profile)
    return out


def main(argv: list[str] | None = None) -> int:
    from harness.observe import servicemap
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/service-map.png"))
    parser.add_argument("--flows", type=Path, help="a -o json flows file (default: the fixture)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    flows = servicemap.load_flow_lines(args.flows) if args.flows else connectivity_flows()
    with tempfile.TemporaryDirectory(prefix="cb-smap-") as tmp:
        page = Path(tmp) / "service-map.html"
        page.write_text(servicemap.render(flows, str(args.flows or "connectivity check (fixture)")))
        screenshot(page, args.out, args.width, args.height)
    print(f"wrote {args.out} ({args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
