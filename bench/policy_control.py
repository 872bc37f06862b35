"""Policy control-plane benchmark: resolving and programming policy at N identities.

What is programmed: bench/scenarios/policies.yaml.j2 at ``identities=N`` (a multi-tenant
cluster: N distinct identity label sets on 1.25 N pods spread over as many nodes as
110 pods each need, ~1 NetworkPolicy per app, some CiliumNetworkPolicies; the
template's docstring has the shape), programmed as node cb-node0 programs it: the
whole cluster's identities and ipcache, the rules of cb-node0's endpoints.

Per scale and round, on a freshly loaded lxc collection (the load is not timed):

  resolve  policy_state(scenario, local_node=cb-node0, local_only=True): identities,
           ipcache and the node's endpoints' rules (scenario -> PolicyState; reading the
           scenario file is not included)
  plan     PolicyControl.apply's planning: the map entries as packed bytes, diffed
           against what the control holds (nothing: a fresh node), journal steps
  write    PolicyControl.apply's writes: the journal's steps, one batch per map and phase
  total    resolve + plan + write
  cpu      the process's CPU time (user + system) of resolve, plan and write: on a
           shared machine, what the total would be without waiting for a core
  floor    the raw batch-write floor: the very same packed key/value buffers the plan
           made, written into another fresh collection with one BPF_MAP_UPDATE_BATCH
           per map and nothing else (no planning, no journal): the kernel's cost of
           the entries, what no control plane can beat

PolicyControl runs without a node's journal here (no write-ahead file: ``policy apply``
on a node adds its pickle and fsync).  Rounds alternate which of apply and floor goes first, so the shared machine's noise
hits both alike.  ``entries`` counts what was written per map.

Entry point: ``run(scales, rounds, progress)`` gives the ``policy`` list of the control
suite's section (bench.control.run_suite); ``table(rows)`` its header and rows.
"""
from __future__ import annotations

import time
from typing import Callable

from bench.stats import mad_pct_text, summary
from harness import paths
from harness.bpf import Collection
from harness.node import datapath
from harness.policy.control import PolicyControl, PolicyStats, endpoint_ids
from harness.policy.desired import policy_state
from harness.scenario.model import Scenario
from harness.scenario.templates import load_template_scenario

#: The node whose view is programmed.
NODE = "cb-node0"
#: Pods per node (kubelet's default maximum); more when the address plan's 254 nodes need it.
PER_NODE = 110
MAX_NODES = 254
#: The maps policy programming writes.
POLICY_MAPS = ("cb_ipcache", "cb_ipcache_hosts", "cb_endpoints", "cb_policy", "cb_policy_exact")


def per_node(identities: int) -> int:
    """Pods per node at *identities*: PER_NODE, or as many as 254 nodes need."""
    pods = 5 + (identities - 3) + (identities - 3 + 3) // 4
    return max(PER_NODE, -(-pods // MAX_NODES))


def bench_scenario(identities: int) -> Scenario:
    """The scenario the suite programs at *identities*."""
    return load_template_scenario("policies", identities=identities, per_node=per_node(identities))


def _collection(sizes: dict[str, int]) -> Collection:
    return Collection.load(str(paths.bpf_object("lxc")), rodata=datapath.rodata_for("lxc"),
                           max_entries=sizes)


def _sizes(entries: dict[str, int]) -> dict[str, int]:
    """Map sizes that hold *entries* twice over (a second generation), at least 1024
    (cb_endpoints keeps its size: it is indexed by endpoint id)."""
    return {name: max(1024, 2 * count) for name, count in entries.items() if name != "cb_endpoints"}


def _entries(steps: list[tuple], coll: Collection) -> dict[str, int]:
    out = {name: 0 for name in POLICY_MAPS}
    for step in steps:
        if step[0] == "put":
            out[step[1]] += len(step[2])
    return out


def _floor(steps: list[tuple], coll: Collection) -> float:
    """Seconds to write *steps*' entries into *coll* with one batch per step, nothing else."""
    start = time.perf_counter()
    for step in steps:
        m = coll.maps[step[1]]
        if step[0] == "put":
            m.update_batch(step[2], step[3])
    return time.perf_counter() - start


def sample(scenario: Scenario, ids: dict[str, int], floor_first: bool,
           sizes: dict[str, int] | None = None) -> dict:
    """One round at one scale: resolve, plan, write and the floor, in seconds, and the
    entries written per map."""
    start, cpu = time.perf_counter(), time.process_time()
    state = policy_state(scenario, local_node=NODE, local_only=True)
    out: dict = {"resolve": time.perf_counter() - start, "cpu": time.process_time() - cpu}

    def apply() -> None:
        with _collection(sizes or {}) as coll:
            cpu = time.process_time()
            stats: PolicyStats = PolicyControl(coll.maps).apply(state, ids)
            out["cpu"] += time.process_time() - cpu
            out["plan"], out["write"] = stats.plan_seconds, stats.write_seconds

    def floor() -> None:
        with _collection(sizes or {}) as coll:
            steps, _ = PolicyControl(coll.maps).plan(state, ids)     # not timed
            out["floor"] = _floor(steps, coll)
            out["entries"] = _entries(steps, coll)
    for step in ((floor, apply) if floor_first else (apply, floor)):
        step()
    out["total"] = out["resolve"] + out["plan"] + out["write"]
    return out


def run(scales: list[int], rounds: int = 1,
        progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Every scale (identities) in *rounds* rounds; one result per scale."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    results = []
    total, done = len(scales) * rounds, 0
    for n in scales:
        rec: dict = {"identities": n, "node": NODE, "status": "ok", "detail": None}
        try:
            scenario = bench_scenario(n)
        except Exception as exc:    # a scale the template refuses: reported, the others run
            rec.update(status="error", detail=str(exc).splitlines()[0][:300])
            results.append(rec)
            done += rounds
            continue
        local = [p for p in scenario.pods if p.node_name == NODE and not p.host_network]
        ids = endpoint_ids(p.ref for p in local)
        rec.update(pods=len(scenario.pods), nodes=len({p.node_name for p in scenario.pods}),
                   endpoints=len(local), network_policies=len(scenario.network_policies),
                   cilium_network_policies=len(scenario.cilium_network_policies))
        samples: dict[str, list[float]] = {k: [] for k in
                                           ("resolve", "plan", "write", "total", "floor", "cpu")}
        with _collection({}) as coll:       # sized from what the scale writes (not timed)
            steps, _ = PolicyControl(coll.maps).plan(
                policy_state(scenario, local_node=NODE, local_only=True), ids)
            sizes = _sizes(_entries(steps, coll))
        for r in range(rounds):
            if progress:
                progress(done, total, f"control: policy @ {n} identities, round {r + 1}")
            got = sample(scenario, ids, floor_first=bool(r % 2), sizes=sizes)
            for key in samples:
                samples[key].append(got[key])
            rec["entries"] = got["entries"]
            done += 1
        for key, values in samples.items():
            rec[f"{key}_seconds"] = summary(values)
        rec["samples_s"] = samples
        rec["floor_ratio"] = summary([t / f for t, f in zip(samples["total"], samples["floor"])])
        results.append(rec)
    if progress:
        progress(done, total, "control: policy done")
    return results


HEADER = ("IDENTITIES", "ENDPOINTS", "POLICIES", "ENTRIES", "RESOLVE S", "PLAN S", "WRITE S",
          "TOTAL S", "MAD", "CPU S", "FLOOR S", "X FLOOR")


def table(rows: list[dict]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and rows: per scale, the medians of resolve, plan, write, total, its CPU time
    and the raw batch-write floor, the total's MAD and total / floor."""
    out = []
    for r in rows:
        if r["status"] != "ok":
            out.append((str(r["identities"]), "-", "-", "-", f"{r['status']}: {r['detail']}",
                        "-", "-", "-", "-", "-", "-", "-"))
            continue

        def med(key: str) -> str:
            return f"{r[key]['median']:.3f}"
        out.append((str(r["identities"]), str(r["endpoints"]),
                    str(r["network_policies"] + r["cilium_network_policies"]),
                    str(sum(r["entries"].values())), med("resolve_seconds"), med("plan_seconds"),
                    med("write_seconds"), med("total_seconds"), mad_pct_text(r["total_seconds"]),
                    med("cpu_seconds"), med("floor_seconds"), f"{r['floor_ratio']['median']:.1f}x"))
    return HEADER, out
