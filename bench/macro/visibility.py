"""The cost of flow visibility in the macro suite (issue 14: aggregation ``medium`` vs off).

Two BPF tc datapaths run in the same interleaved rounds as the others, each on its
own node with its own client pod (bench/macro/suite.py):

  bpf-tc         monitor aggregation ``off``: the programs send no event, no observer
  bpf-tc-events  monitor aggregation ``medium`` with the node's flow observer running
                 (harness.observe), which reads and decodes every event on the same
                 shared cores as the load: its CPU is part of the cost measured.

This module owns what is specific to that comparison: the per-node settings given to
``chaining.up``, the ratio events/off taken within each round (``ratios``), and the
observer's account over the run (``ObserverProbe``): its CPU time (utime + stime of
the observer process, from /proc/<pid>/stat; the pid from its supervisor's state,
harness.observe.supervise.status), restarts, the flows it saw (ServerStatus), the
flows of the events datapath's client it holds (GetFlows, filtered on the client's
address, as ``chainbench observe --ip`` asks) and the records the datapath's ring
buffer had no room for (the per-CPU ``cb_events_lost``).
"""
from __future__ import annotations

import ctypes
import os
import time

from bench.stats import summary

EVENTS = "bpf-tc-events"
OFF = "bpf-tc"
#: Monitor aggregation of each of the two datapaths (harness.abi.monitor.LEVELS).
LEVELS = {OFF: "off", EVENTS: "medium"}
#: The issue's target for the macro cost of aggregated events.
TARGET_COST_PCT = 5.0


def _cpu_ticks(pid: int) -> tuple[str, int, int] | None:
    """(start time, utime, stime) of *pid* in clock ticks, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19], int(fields[11]), int(fields[12])


class ObserverProbe:
    """The flow observer of *node* (started by ``chaining.up``), watched over a run."""

    def __init__(self, node: str):
        self.node = node
        self.hz = os.sysconf("SC_CLK_TCK")
        self._first: tuple[int, str, int, int] | None = None     # pid, start, utime, stime
        self._began = 0.0
        self._restarts0 = 0

    def _status(self) -> dict:
        from harness.node.node import Node
        from harness.observe import supervise
        return supervise.status(Node(self.node)) or {}

    def sample(self) -> tuple[int, str, int, int] | None:
        """(pid, start time, utime, stime) of the observer now, None if none runs."""
        pid = self._status().get("observer_pid")
        got = _cpu_ticks(pid) if pid else None
        return (pid, *got) if got else None

    def start(self) -> None:
        """Begin the run's account."""
        self._first = self.sample()
        self._began = time.monotonic()
        self._restarts0 = int(self._status().get("restarts") or 0)

    def cpu_seconds(self, before, after) -> float | None:
        """Observer CPU seconds between two samples; None if it restarted in between."""
        if before is None or after is None or before[:2] != after[:2]:
            return None
        return (after[2] + after[3] - before[2] - before[3]) / self.hz

    def drain(self, quiet_s: float = 0.2, limit_s: float = 15.0) -> tuple[float, float | None]:
        """Wait until the observer is idle (no CPU tick over *quiet_s*; at most *limit_s*):
        the events a run left in the ring buffer read.  (seconds waited, its CPU seconds)."""
        began, first = time.monotonic(), self.sample()
        last = first
        while time.monotonic() - began < limit_s:
            time.sleep(quiet_s)
            now = self.sample()
            spent = self.cpu_seconds(last, now)
            last = now
            if spent is None or spent == 0:
                break
        return round(time.monotonic() - began, 3), self.cpu_seconds(first, last)

    def report(self, client_ip: str) -> dict:
        """The observer's account since ``start``."""
        now = self.sample()
        wall = time.monotonic() - self._began
        status = self._status()
        same = self._first is not None and now is not None and self._first[:2] == now[:2]
        user = (now[2] - self._first[2]) / self.hz if same else None
        system = (now[3] - self._first[3]) / self.hz if same else None
        cpu = user + system if same else None
        return {"node": self.node, "pid": now[0] if now else None,
                "restarts": int(status.get("restarts") or 0) - self._restarts0,
                "wall_seconds": round(wall, 3),
                "cpu_seconds": cpu, "user_seconds": user, "system_seconds": system,
                "cpu_share": round(cpu / wall, 4) if cpu is not None and wall > 0 else None,
                "seen_flows": self.seen_flows(),
                "flows_of_client": self.flows_of(client_ip),
                "lost_events": self.lost_events()}

    def _target(self):
        from harness.observe import client
        return client.targets(self.node)

    def seen_flows(self) -> int:
        """Flows the observer decoded since it started (Hubble's ServerStatus.seen_flows)."""
        import grpc
        from harness.observe.proto import observer_pb2, observer_pb2_grpc
        (target,) = self._target()
        with grpc.insecure_channel(target.address) as channel:
            got = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=10.0)
        return int(got.seen_flows)

    def flows_of(self, ip: str) -> int:
        """Flows from *ip* in the observer's ring (GetFlows, source_ip filter)."""
        from harness.observe import client
        from harness.observe.proto import flow_pb2
        req = client.request(all_flows=True,
                             whitelist=[flow_pb2.FlowFilter(source_ip=[ip])])
        return sum(1 for resp in client.stream(req, self._target()) if resp.HasField("flow"))

    def lost_events(self) -> int:
        """Records the node's ring buffer had no room for (cb_events_lost, all CPUs)."""
        from harness.bpf import Map
        from harness.node.node import Node
        from harness.observe import where
        path = where.lost_pin(Node(self.node))
        if not os.path.exists(path):
            return 0
        with Map.from_pin(path, ctypes.c_uint32, ctypes.c_uint64) as m:
            per_cpu = m.get(0) or []
        return int(sum(per_cpu)) if isinstance(per_cpu, list) else int(per_cpu)


def ratios(runs: list[dict]) -> dict[tuple, list[float]]:
    """(services, target, mode) -> rps(events) / rps(off), one per round both ran."""
    rps = {(r["datapath"], r["services"], r["target"], r["mode"], r["round"]): r["rps"]
           for r in runs if r["datapath"] in (OFF, EVENTS)}
    out: dict[tuple, list[float]] = {}
    for (dp, n, target, mode, rnd), value in sorted(rps.items(), key=lambda kv: kv[0][1:]):
        off = rps.get((OFF, n, target, mode, rnd))
        if dp == EVENTS and off:
            out.setdefault((n, target, mode), []).append(value / off)
    return out


def cost(runs: list[dict], observer: dict | None) -> dict:
    """The macro section's ``visibility``: per scale, target and mode, both datapaths'
    req/s and the ratio events/off (within rounds) with its cost in percent, the
    observer's CPU per request in the events datapath's runs (while wrk ran, and with
    the events it read after the run: ``observer_total_cpu_us_per_request``), and its
    account."""
    rows = []
    for (n, target, mode), values in ratios(runs).items():
        pick = [r for r in runs if (r["services"], r["target"], r["mode"]) == (n, target, mode)]
        per_dp = {dp: [r for r in pick if r["datapath"] == dp] for dp in (OFF, EVENTS)}
        obs = [r["observer_cpu_s"] * 1e6 / max(r["requests"], 1) for r in per_dp[EVENTS]
               if r.get("observer_cpu_s") is not None]
        total = [(r["observer_cpu_s"] + r["observer_drain_cpu_s"]) * 1e6 / max(r["requests"], 1)
                 for r in per_dp[EVENTS] if r.get("observer_cpu_s") is not None
                 and r.get("observer_drain_cpu_s") is not None]
        ratio = summary(values)
        rows.append({"services": n, "target": target, "mode": mode,
                     "off_rps": summary([r["rps"] for r in per_dp[OFF]]),
                     "events_rps": summary([r["rps"] for r in per_dp[EVENTS]]),
                     "ratio": ratio, "ratios": values,
                     "cost_pct": round(100.0 * (1.0 - ratio["median"]), 3),
                     "observer_cpu_us_per_request": summary(obs) if obs else None,
                     "observer_total_cpu_us_per_request": summary(total) if total else None})
    return {"off": OFF, "events": EVENTS, "monitor_aggregation": dict(LEVELS),
            "target_cost_pct": TARGET_COST_PCT, "results": rows, "observer": observer}
