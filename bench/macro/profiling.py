"""Where the CPU goes per connection, per datapath: ``chainbench bench macro --perf``.

After the measured rounds at the largest scale, each datapath gets one more wrk run in
new-connection mode (``Connection: close``: one request per TCP connection), to the
"last" service, on its own (the datapaths one after the other), and only that run
is profiled: its figures are not among the rounds' samples, so profiling never
perturbs the benchmark's numbers.  Around that run and nothing else:

* ``perf record -a -g`` (bench.macro.perf_record): cpu-clock samples of the whole
  machine with call graphs.  ``-a`` sees every CPU, not one namespace: the profile
  is the datapath's because only its run was going on while perf recorded (the
  other datapaths idle; the client, the servers and the kernel's work for them
  are in it too, as they are in every datapath's run).  Folded here
  (bench.report.flame) into the top kernel functions by self and inclusive
  samples, each as a fraction of the busy (non-idle) samples and as CPU µs per
  connection = samples x period / connections: the cpu-clock event's period is
  nanoseconds of CPU time, so samples x period measures CPU time directly, with
  no need to scale a share by /proc/stat (which the run's record also gives,
  ``cpu_us_per_connection_proc_stat``, as a cross-check).  Connections: the
  client namespace's TcpActiveOpens over the run.
* ``kernel.bpf_stats_enabled`` (bench.macro.bpf_runtime): the run count and run time
  of each of our BPF programs, as ns per run and per connection.

Because the whole machine is sampled, whatever else it runs meanwhile (another
process loading BPF programs, a compiler) is in ``top`` too; ``processes`` says
whose samples they are.  ``top_run`` ranks the same functions over the run's own
samples only (``is_run_sample``): those of the processes a run consists of (wrk, the
nginx servers, the kernel's threads and the idle task, which run softirqs) and any
other process's whose stack passes through the network stack (a softirq that
interrupted it was handling the run's packets); the flow observer of bpf-tc-events
is a Python process and falls outside it (its CPU is in the section's ``visibility``).

The folded stacks (the ``KEEP_STACKS`` with most samples; the rest's samples
counted) stay in the result document; ``bench.report.results`` writes them as a
speedscope file beside it.
"""
from __future__ import annotations

from bench.macro import bpf_runtime, perf_record
from bench.report import flame

TOP_N = 20
KEEP_STACKS = 1500
#: perf ends by itself this long after the run's own bound (a SIGKILLed suite).
BOUND_MARGIN_S = 60.0

METHOD = ("one extra new-conn wrk run per datapath at the largest scale (not among the "
          "rounds' samples), datapaths one after the other; perf record -a -g -e cpu-clock "
          "(whole machine) and kernel.bpf_stats_enabled only during that run; µs per "
          "connection = samples x cpu-clock period (ns of CPU) / TcpActiveOpens of the client")


#: Process names (comm, a prefix) of the processes a run consists of.
RUN_PROCESSES = ("wrk", "nginx", "swapper", "ksoftirqd/", "kworker/")
#: Kernel functions only packet handling passes through.
NETWORK_FRAMES = frozenset(f + flame.KERNEL_MARK for f in (
    "net_rx_action", "__netif_receive_skb_core", "__dev_queue_xmit", "ip_rcv", "ip_output",
    "tcp_v4_rcv", "tcp_v4_connect", "__tcp_transmit_skb", "inet_stream_connect"))


def is_run_sample(stack: str) -> bool:
    """A folded stack of the run's own work (see the module doc)."""
    comm, _, rest = stack.partition(";")
    if comm.startswith(RUN_PROCESSES):
        return True
    return any(frame in NETWORK_FRAMES for frame in rest.split(";"))


class Measured:
    """The context Topology.wrk runs wrk in: BPF statistics and perf sampling on."""

    def __init__(self, recorder: perf_record.Recorder, counting: bpf_runtime.Counting):
        self.recorder = recorder
        self.counting = counting

    def __enter__(self) -> "Measured":
        self.counting.start()
        try:
            self.recorder.enable()
        except BaseException:
            self.counting.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.recorder.disable()
        finally:
            self.counting.stop()


def profile(topo, dp: str, url: str, services: int, seconds: float, connections: int) -> dict:
    """One profiled new-connection run of datapath *dp* (see the module doc)."""
    recorder = perf_record.Recorder(seconds + BOUND_MARGIN_S)
    counting = bpf_runtime.Counting(bpf_runtime.topology_program_ids(topo.state,
                                                                     topo.sock_program_ids))
    with recorder, counting:
        got = topo.wrk(dp, url, "new-conn", seconds, connections,
                       during=Measured(recorder, counting))
    out = entry(dp, services, seconds, got, recorder.folded, recorder.frequency,
                recorder.enabled_s, bpf_runtime.delta(counting.before, counting.after,
                                                      got["connections_opened"]))
    seen = topo.observer.sample() if topo.observer else None
    out["observer_pid"] = seen[0] if seen else None   # to find it among ``processes``
    return out


def entry(dp: str, services: int, seconds: float, run: dict, folded: flame.Folded,
          frequency: int, recorded_s: float, bpf: list[dict]) -> dict:
    """The result document's record of one datapath's profiled run."""
    conns = run["connections_opened"]
    kernel = sum(c for s, c in folded.stacks.items() if s.endswith(flame.KERNEL_MARK))
    own = flame.select(folded, is_run_sample)
    stacks, other = flame.kept(folded, KEEP_STACKS)
    per_conn = (lambda samples: samples * folded.period_ns / conns / 1e3) if conns > 0 \
        else (lambda _s: None)
    cpu = run["cpu_us_per_request"]
    proc_stat = ((cpu["system"] + cpu["softirq"]) * run["requests"] / conns) if conns > 0 \
        else None
    bpf_ns = sum(r["run_time_ns"] for r in bpf)
    return {
        "datapath": dp, "services": services, "target": "last", "mode": "new-conn",
        "seconds": seconds, "requests": run["requests"], "rps": run["rps"],
        "errors": run["errors"], "connections": conns, "recorded_s": recorded_s,
        "event": folded.event or perf_record.EVENT, "frequency_hz": frequency,
        "period_ns": folded.period_ns, "samples": folded.samples,
        "idle_samples": folded.idle_samples, "busy_samples": folded.busy_samples,
        "kernel_samples": kernel,
        "cpu_us_per_connection": per_conn(folded.busy_samples),
        "kernel_us_per_connection": per_conn(kernel),
        "cpu_us_per_connection_proc_stat": proc_stat,
        "top": flame.top(folded, TOP_N, conns if conns > 0 else None),
        "processes": flame.processes(folded),
        "run_samples": own.samples,
        "run_us_per_connection": per_conn(own.samples),
        "top_run": flame.top(own, TOP_N, conns if conns > 0 else None),
        "bpf": {"programs": bpf, "run_time_ns": bpf_ns,
                "ns_per_connection": bpf_ns / conns if conns > 0 else None},
        "stacks": len(folded.stacks), "folded": stacks, "folded_other_samples": other,
        "unread_lines": folded.unread_lines,
    }


def section(entries: list[dict]) -> dict:
    return {"method": METHOD, "top_n": TOP_N, "datapaths": entries}


HEADER = ("DATAPATH", "CONNS", "CPU US/CONN", "RUN'S US/CONN", "KERNEL US/CONN", "BPF NS/CONN",
          "RUN'S TOP SELF (US/CONN)")


def table(prof: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Per datapath: connections, CPU (whole machine, the run's own) and kernel µs per
    connection, BPF ns per connection, and the three top kernel functions of the run's
    own samples by self samples."""
    rows = []
    for e in prof["datapaths"]:
        top = ", ".join(f"{r['function']} {r.get('us_per_connection') or 0:.2f}"
                        for r in e["top_run"]["self"][:3])
        rows.append((e["datapath"], str(e["connections"]), _num(e["cpu_us_per_connection"]),
                     _num(e["run_us_per_connection"]),
                     _num(e["kernel_us_per_connection"]),
                     _num(e["bpf"]["ns_per_connection"], 0), top or "-"))
    return HEADER, rows


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
