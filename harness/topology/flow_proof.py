"""Flow evidence for the connectivity checks (``chainbench connectivity --flows``).

The nodes' observers (harness.observe) record a flow for every event the
datapath sends.  After the checks, the flows recorded since the suite started
are fetched from every node and each check is matched with the flows of its own
connection, by addresses, ports and time:

* a check that must pass shows its connection FORWARDED both ways: the request
  from the client to the target (or the backend it was translated to), and a
  reply to the client's port from it;
* a check that must fail shows a DROPPED flow from the client to the target
  with the drop reason the check expects (policy denied, 133, or a deny
  rule's, 181).

A client is known by its pod's address (a host-network client by its node's),
a target by the address the check dials and the address of the pod serving it.
"""
from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from harness.observe import client
from harness.observe.output import to_json
from harness.observe.proto import flow_pb2, observer_pb2

#: Seconds a flow's time may lie outside its check's window (clocks, batching).
SLACK = 1.0
#: How long to wait for the observers to have read the last check's events.
SETTLE_SECONDS = 5.0

FORWARDED, DROPPED = flow_pb2.Verdict.Value("FORWARDED"), flow_pb2.Verdict.Value("DROPPED")


@dataclass(frozen=True)
class Ends:
    """The two ends of a check's connection, as flows name them."""
    client_ip: str
    target_ips: frozenset[str]


@dataclass(frozen=True)
class FlowProof:
    """What a check's flows show: *ok*, in words, and the flows' uuids."""
    ok: bool
    text: str
    uuids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"ok": self.ok, "text": self.text, "uuids": list(self.uuids)}


def fetch(since: float) -> list:
    """Every flow the nodes' observers recorded since *since* (wall seconds), oldest first."""
    req = observer_pb2.GetFlowsRequest()
    req.since.FromNanoseconds(int(since * 1e9))
    return [r for r in client.stream(req, client.targets(None)) if r.HasField("flow")]


def write(path: str, responses: list) -> None:
    """The flows as ``hubble observe -o json`` writes them, one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for r in responses:
            f.write(to_json(r) + "\n")


def _ports(f) -> tuple[int, int]:
    for proto in ("TCP", "UDP", "SCTP"):
        if f.l4.HasField(proto):
            layer = getattr(f.l4, proto)
            return layer.source_port, layer.destination_port
    return 0, 0


def _is_reply(f) -> bool | None:
    return f.is_reply.value if f.HasField("is_reply") else None


def _in(f, window: tuple[float, float]) -> bool:
    t = f.time.ToNanoseconds() / 1e9
    return window[0] - SLACK <= t <= window[1] + SLACK


def prove(expect: str, drop_reason: int, ends: Ends, window: tuple[float, float],
          responses: list, claimed: set[str] = frozenset()) -> FlowProof:
    """The evidence of a check expecting *expect* ("pass"/"fail") among *responses*,
    leaving out the flows another check *claimed* (two checks of one client to one
    backend at once each need a connection of their own)."""
    flows = [r.flow for r in responses if _in(r.flow, window) and r.flow.uuid not in claimed]
    if expect == "fail":
        for f in flows:
            if (f.verdict == DROPPED and f.drop_reason_desc == drop_reason
                    and f.IP.source == ends.client_ip and f.IP.destination in ends.target_ips):
                name = flow_pb2.DropReason.Name(drop_reason)
                return FlowProof(True, f"DROPPED {name}: {f.IP.source} -> {f.IP.destination}",
                                 (f.uuid,))
        return FlowProof(False, f"no DROPPED {flow_pb2.DropReason.Name(drop_reason)} flow from "
                         f"{ends.client_ip} to {'/'.join(sorted(ends.target_ips))}")
    forwards = [f for f in flows if f.verdict == FORWARDED and _is_reply(f) is False
                and f.IP.source == ends.client_ip and f.IP.destination in ends.target_ips]
    if not forwards:
        return FlowProof(False, f"no FORWARDED flow from {ends.client_ip} to "
                         f"{'/'.join(sorted(ends.target_ips))}")
    client_ports = {_ports(f)[0] for f in forwards}
    for r in flows:
        if (r.verdict == FORWARDED and _is_reply(r) is True and r.IP.destination == ends.client_ip
                and r.IP.source in ends.target_ips and _ports(r)[1] in client_ports):
            fwd = next(f for f in forwards if _ports(f)[0] == _ports(r)[1])
            return FlowProof(True, f"FORWARDED {fwd.IP.source}:{_ports(fwd)[0]} -> "
                             f"{fwd.IP.destination}:{_ports(fwd)[1]} and its reply",
                             (fwd.uuid, r.uuid))
    return FlowProof(False, f"FORWARDED {ends.client_ip} -> {'/'.join(sorted(ends.target_ips))}"
                     " but no FORWARDED reply")


def settle(wanted, since: float, deadline: float = SETTLE_SECONDS) -> list:
    """Flows since *since*, fetched again (the observers read the ring in batches) until
    ``wanted(responses)`` holds or *deadline* seconds passed."""
    end = time.monotonic() + deadline
    while True:
        responses = fetch(since)
        if wanted(responses) or time.monotonic() >= end:
            return responses
        time.sleep(0.25)


def host_of(url: str) -> str:
    """The address of an http://host:port/ URL."""
    host = url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
    return str(ipaddress.ip_address(host))
