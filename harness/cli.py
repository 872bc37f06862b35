"""The ``chainbench`` command line: one ``cmd_<name>`` function per subcommand.

Only this module prints and chooses exit codes: 0 success, 1 a failure of the
thing being run (kernel refusal, failed check), 2 bad input (usage, a bad
file or field), 130 interrupted.  Errors are one line, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path

from harness import paths

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


# --- subcommands ----------------------------------------------------------------

def cmd_build(args) -> int:
    cmd = ["make", "-C", str(paths.ROOT), "build"] + (["V=1"] if args.verbose else [])
    if args.clean:
        subprocess.run(["make", "-C", str(paths.ROOT), "clean"], check=False)
    return EXIT_OK if subprocess.run(cmd).returncode == 0 else EXIT_FAIL


def cmd_programs(args) -> int:
    from harness.bpf.collection import list_programs
    objects = paths.datapath_objects()
    if not objects:
        raise UsageError(f"no compiled objects in {paths.bpf_objects_dir()} (run `make build`)")
    rows = [(o.name.removesuffix(".bpf.o"), name, ptype)
            for o in objects for name, ptype in sorted(list_programs(str(o)).items())]
    _print_table(("OBJECT", "PROGRAM", "TYPE"), rows)
    return EXIT_OK


def _parse_rodata(items: list[str]) -> dict:
    values = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--rodata {item!r}: expected NAME=VALUE")
        lowered = raw.lower()
        if lowered in ("true", "false"):
            values[name] = lowered == "true"
        else:
            try:
                values[name] = int(raw, 0)
            except ValueError:
                raise UsageError(f"--rodata {item!r}: VALUE must be an integer or true/false") from None
    return values


def cmd_test_run(args) -> int:
    from harness import datapath, programming, testrun
    from harness.bpf import Collection
    obj, prog = testrun.resolve_program(args.program)
    scenario = endpoint = None
    if args.endpoint and not args.scenario:
        raise UsageError("--endpoint needs --scenario (the endpoint is a pod of the scenario)")
    if args.scenario:
        from harness.scenario import load_scenario
        scenario = load_scenario(args.scenario)
        if args.endpoint:
            endpoint = scenario.pod(args.endpoint)
    if args.repeat < 1:
        raise UsageError("--repeat must be >= 1")
    packets = list(testrun.read_pcap(args.pcap))
    node = endpoint.node_name if endpoint is not None else None
    rodata = datapath.rodata_for(obj.name.removesuffix(".bpf.o"), node)
    if endpoint is not None and obj.name == "lxc.bpf.o":
        rodata.update(datapath.endpoint_rodata(
            datapath.test_run_endpoint_ids(scenario).get(endpoint.ref, 0),
            str(endpoint.ipv4) if endpoint.ipv4 else None,
            str(endpoint.ipv6) if endpoint.ipv6 else None))
    rodata.update(_parse_rodata(args.rodata))
    with Collection.load(str(obj), rodata=rodata or None) as coll:
        if scenario is not None:
            programming.program_maps(coll, scenario, endpoint, {"np_ipblock": args.netpol_ipblock})
        results = []
        for result in testrun.run_packets(testrun.Runner(coll, prog), packets, args.repeat):
            results.append(result)
            if args.json:
                print(json.dumps(result.to_json()), flush=True)
    if not args.json:
        _print_test_run_table(results)
    return EXIT_OK


def _print_test_run_table(results) -> None:
    from scapy.layers.l2 import Ether

    from harness import drop_reasons
    rows = []
    for r in results:
        reason = f"{r.drop_reason} ({drop_reasons.describe(r.drop_reason)})" if r.drop_reason else ""
        rows.append((str(r.index), r.verdict, reason, str(r.duration_ns), str(len(r.packet_out)),
                     Ether(r.packet_out).summary()))
    _print_table(("#", "VERDICT", "DROP REASON", "NS", "LEN", "PACKET OUT"), rows)


def _service_scales(text: str) -> list[int]:
    try:
        scales = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--services {text!r}: expected numbers separated by commas") from None
    if any(n < 1 or n > 1_000_000 for n in scales):
        raise UsageError(f"--services {text!r}: each scale must be 1..1000000")
    return scales


def cmd_bench(args) -> int:
    from dataclasses import replace

    from bench import profiles, results
    profile = profiles.get(args.profile)
    micro_s, control_s, macro_s = profile.micro, profile.control, profile.macro
    if args.services:
        micro_s = replace(micro_s, services=tuple(_service_scales(args.services)))
    if args.identities:
        micro_s = replace(micro_s, identities=tuple(_service_scales(args.identities)))
    if args.samples is not None:
        micro_s = replace(micro_s, samples=args.samples)
    if args.repeat is not None:
        micro_s = replace(micro_s, repeat=args.repeat)
    if args.scales:
        scales = tuple(_service_scales(args.scales))
        control_s = replace(control_s, scales=scales)
        macro_s = replace(macro_s, scales=scales)
    if args.rounds is not None:
        if args.rounds < 1:
            raise UsageError("--rounds must be >= 1")
        micro_s, control_s, macro_s = (replace(micro_s, rounds=args.rounds),
                                       replace(control_s, rounds=args.rounds),
                                       replace(macro_s, rounds=args.rounds))
    if args.seconds is not None:
        macro_s = replace(macro_s, seconds=args.seconds)
    if args.timeout is not None:          # one bound for every method
        control_s = replace(control_s, timeout=args.timeout, method_timeouts=())
    wanted = ("micro", "control", "macro") if args.suite == "all" else (args.suite,)
    indicative = micro_s.samples < 5 or micro_s.repeat < 100_000
    if "micro" in wanted and indicative:
        print("note: fewer than 5 samples or 100000 runs per sample: micro figures are "
              "indicative only", file=sys.stderr)
    if not paths.bpf_object("lxc").exists():
        raise UsageError(f"no compiled programs in {paths.bpf_objects_dir()} (run `make build`)")
    suites: dict = {}
    with _progress_bar() as update:
        if "micro" in wanted:
            from bench import micro
            suites["micro"] = micro.suite(list(micro_s.services), list(micro_s.identities),
                                          samples=micro_s.samples, repeat=micro_s.repeat,
                                          rounds=micro_s.rounds, indicative=indicative,
                                          progress=lambda d, t: update(d, t, "micro"))
        if "control" in wanted:
            from bench import control
            suites["control"] = control.run(list(control_s.scales), control_s.rounds,
                                            timeout=control_s.timeout, progress=update,
                                            method_timeouts=dict(control_s.method_timeouts))
        if "macro" in wanted:
            from bench import macro
            suites["macro"] = macro.run(list(macro_s.scales), macro_s.rounds, macro_s.seconds,
                                        macro_s.connections,
                                        locust_seconds=macro_s.locust_seconds,
                                        locust_users=macro_s.locust_users, progress=update)
    doc = results.new_document(suites, profile=profile.name, notes=profile.notes)
    _print_bench_tables(suites)
    if args.json:
        print(json.dumps(doc, indent=1))
    if not args.no_write:
        path = results.write(doc, args.out, latest=(profile.name == "quick"))
        print(f"results written to {path}", file=sys.stderr)
        if not args.no_dashboard:
            from bench import dashboard
            page = dashboard.render(path.parent)
            print(f"dashboard written to {page}", file=sys.stderr)
    return EXIT_OK


def _print_bench_tables(suites: dict) -> None:
    if "micro" in suites:
        from bench import micro
        _print_table(("CASE", "VERDICT", "NS/PKT", "MAD", "CLOCK", "EMPTY NS", "VS EMPTY"),
                     micro.table(suites["micro"]))
    if "control" in suites:
        from bench import control
        print()
        _print_table(("SERVICES", "OPERATION", "METHOD", "STATUS", "SECONDS", "MAD", "VS BPF",
                      "ENTRIES", "BYTES"), control.table(suites["control"]))
    if "macro" in suites:
        from bench import macro
        print()
        _print_table(("SERVICES", "TARGET", "MODE", "DATAPATH", "REQ/S", "MAD", "P50 US",
                      "P99 US", "CPU US/REQ", "VS IPTABLES", "ERRORS"),
                     macro.table(suites["macro"]))


@contextlib.contextmanager
def _progress_bar():
    """update(done, total, description) for a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("bench", total=None)

        def update(done: int, total: int, description: str) -> None:
            bar.update(task, completed=done, total=total, description=description)
        yield update


def cmd_dashboard(args) -> int:
    from bench import dashboard
    try:
        page = dashboard.render(Path(args.results or paths.RESULTS),
                                Path(args.out) if args.out else None)
    except dashboard.DashboardError as exc:
        raise UsageError(str(exc)) from None
    print(f"dashboard written to {page}")
    return EXIT_OK


def _stderr_console():
    from rich.console import Console
    return Console(stderr=True)


def cmd_lb_apply(args) -> int:
    from harness import datapath
    from harness.lb.state import desired_state
    from harness.scenario import load_scenario
    scenario = load_scenario(args.file)
    state = desired_state(scenario)
    node = args.node
    with datapath.load("lxc", node, pinned=True) as coll:
        control = datapath.lb_control(coll)
        restored = control.restore()
        stats = control.apply(state)
    print(f"{node}: {len(state.frontends)} frontends from {args.file}"
          f"{f' ({restored} restored from the maps)' if restored else ''}; {stats}")
    return EXIT_OK


def cmd_identities(args) -> int:
    from harness.policy.resolve import format_identities, resolve
    from harness.scenario import load_scenario
    state = resolve(load_scenario(args.file), np_ipblock=args.netpol_ipblock)
    rows = format_identities(state)
    if args.output == "json":
        print(json.dumps([{"id": int(i), "labels": labels} for i, labels in rows], indent=1))
    else:
        _print_table(("ID", "LABELS"), rows)
    return EXIT_OK


def cmd_policy_apply(args) -> int:
    from harness import datapath
    from harness.endpoints import EndpointRegistry, workloads
    from harness.policy.program import PolicyControl
    from harness.policy.resolve import resolve
    from harness.scenario import load_scenario
    scenario = load_scenario(args.file)
    state = resolve(scenario, local_node=args.node, np_ipblock=args.netpol_ipblock,
                    workloads=workloads())
    registry = EndpointRegistry(args.node)
    local = {p.ref for p in scenario.pods if p.node_name == args.node and not p.host_network}
    for ep in state.endpoints:
        if ep.pod in local:
            rec = registry.ensure(ep.pod)
            rec.identity = ep.identity
            pod = scenario.pod(ep.pod)
            rec.ipv4 = str(pod.ipv4) if pod.ipv4 else None
            rec.ipv6 = str(pod.ipv6) if pod.ipv6 else None
    for pod in [p for p, r in registry.records.items() if p not in local and not r.external]:
        registry.remove(pod)
    with datapath.load("lxc", args.node, pinned=True) as coll:
        control = PolicyControl(coll.maps)
        control.restore(range(1, 4096))
        stats = control.apply(state, registry.ids())
    registry.save()
    registry.save_identities({i.id: ",".join(i.labels) for i in state.identities})
    print(f"{args.node}: {len(registry.records)} endpoints, {len(state.identities)} identities, "
          f"{len(state.ipcache)} ipcache entries; {stats}")
    return EXIT_OK


def cmd_policy_get(args) -> int:
    from harness import datapath
    from harness.endpoints import EndpointRegistry
    from harness.policy.program import read_rules
    node = datapath.resolve_node(args.node)
    registry = EndpointRegistry(node)
    ref = args.endpoint if "/" in args.endpoint else f"default/{args.endpoint}"
    if ref not in registry.records:
        raise UsageError(f"no endpoint {ref} on {node} (known: "
                         f"{', '.join(sorted(registry.records)) or 'none'})")
    rec = registry.records[ref]
    maps = datapath.open_pinned(node)
    try:
        info = maps["cb_endpoints"].lookup(rec.id)
        rules = read_rules(maps, rec.id)
    finally:
        for m in maps.values():
            m.close()
    from harness.policy import entries as PE
    flags = PE.EP_FLAGS
    header = (f"endpoint {ref} (id {rec.id}, identity {info.identity}, policy revision "
              f"{info.policy_revision}); ingress "
              f"{'enforced' if info.flags & flags['EP_F_INGRESS_ENFORCED'] else 'allow-all'}, "
              f"egress {'enforced' if info.flags & flags['EP_F_EGRESS_ENFORCED'] else 'allow-all'}")
    labels = registry.identity_labels()
    rows = [("Deny" if k.deny else "Allow", "Egress" if k.egress else "Ingress",
             "ANY" if k.identity == 0 else f"{k.identity} {labels.get(k.identity, '')}".strip(),
             k.ports_text(), str(b), str(p))
            for k, p, b in rules]
    if args.output == "json":
        print(json.dumps({"endpoint": ref, "id": rec.id, "identity": info.identity,
                          "revision": info.policy_revision,
                          "rules": [dict(zip(("verdict", "direction", "identity", "port_proto",
                                              "bytes", "packets"), r)) for r in rows]}, indent=1))
    else:
        print(header)
        _print_table(("POLICY", "DIRECTION", "IDENTITY (LABELS)", "PROTO/PORT", "BYTES", "PACKETS"),
                     rows)
    return EXIT_OK


def _pinned_maps(args):
    from harness import datapath
    return datapath.open_pinned(datapath.resolve_node(args.node))


def cmd_services(args) -> int:
    from harness.lb import listing
    maps = _pinned_maps(args)
    try:
        rows = listing.read_services(maps)
    finally:
        for m in maps.values():
            m.close()
    if args.output == "json":
        print(json.dumps([r.to_json() for r in rows], indent=1))
    else:
        _print_table(("ID", "FRONTEND", "SERVICE TYPE", "BACKEND", "PACKETS", "BYTES"),
                     listing.format_table(rows))
    return EXIT_OK


def cmd_ct(args) -> int:
    from harness import conntrack
    maps = _pinned_maps(args)
    try:
        if args.ct_command == "list":
            records = list(conntrack.records(maps))
            if args.output == "json":
                print(json.dumps([r.to_json() for r in records], indent=1))
                return EXIT_OK
            rows = [(f"{r.protocol}", r.direction,
                     f"{_hostport(r.saddr, r.sport)} -> {_hostport(r.daddr, r.dport)}",
                     f"{r.expires_in}s", f"{r.tx_packets}/{r.rx_packets}",
                     str(r.rev_nat_index or ""), ",".join(r.flags), r.tcp_flags_seen)
                    for r in records]
            _print_table(("PROTO", "DIR", "TUPLE", "EXPIRES", "PKTS TX/RX", "REVNAT", "FLAGS",
                          "TCP FLAGS"), rows)
        elif args.ct_command == "gc":
            removed = conntrack.gc(maps)
            print(", ".join(f"{name}: {n} expired entries removed" for name, n in removed.items()))
        else:
            removed = conntrack.flush(maps)
            print(", ".join(f"{name}: {n} entries removed" for name, n in removed.items()))
    finally:
        for m in maps.values():
            m.close()
    return EXIT_OK


def cmd_snat(args) -> int:
    from harness import snat
    maps = _pinned_maps(args)
    try:
        if snat.STATS_MAP not in maps:
            raise UsageError(f"node has no {snat.STATS_MAP} map (its from_netdev predates it)")
        stats = snat.read_stats(maps)
    finally:
        for m in maps.values():
            m.close()
    if args.output == "json":
        print(json.dumps({f"ipv{f}": vars(s) for f, s in stats.items()}, indent=1))
        return EXIT_OK
    _print_table(("FAMILY", "ALLOCATED", "COLLISIONS", "REUSED", "EXHAUSTED"),
                 [(f"IPv{f}", str(s.allocated), str(s.collisions), str(s.reused),
                   str(s.exhausted)) for f, s in stats.items()])
    return EXIT_OK


def _hostport(addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def cmd_scenario_check(args) -> int:
    from harness.scenario import load_scenario
    for path in args.files:
        s = load_scenario(path)
        print(f"{path}: {len(s.pods)} pods, {len(s.services)} services, "
              f"{len(s.endpoint_slices)} endpoint slices, {len(s.network_policies)} "
              f"network policies, {len(s.cilium_network_policies)} cilium network policies")
    return EXIT_OK


def cmd_up(args) -> int:
    import time

    from harness import chaining
    start = time.monotonic()
    if args.bpf_lb_map_max is not None and not 1024 <= args.bpf_lb_map_max <= 1 << 24:
        raise UsageError(f"--bpf-lb-map-max {args.bpf_lb_map_max}: expected 1024..16777216")
    state = chaining.up(args.file, args.nodes, args.routing, args.datapath,
                        progress=(lambda msg: print(msg, file=sys.stderr)) if args.verbose else None,
                        lb_map_max=args.bpf_lb_map_max, np_ipblock=args.netpol_ipblock)
    pods = [p for p in state.pods if not p.host_network]
    print(f"up: {len(state.nodes)} nodes, {len(pods)} pods, routing {state.routing}, datapath "
          f"{state.datapath} in {time.monotonic() - start:.1f} s")
    return EXIT_OK


def cmd_down(args) -> int:
    from harness import chaining
    removed = chaining.down()
    errors = removed.pop("errors", [])
    total = sum(len(v) for v in removed.values())
    for kind, items in removed.items():
        for item in items:
            print(f"removed {kind.rstrip('s')} {item}")
    for err in errors:
        print(f"warning: {err}", file=sys.stderr)
    if not total:
        print("nothing to remove")
    return EXIT_OK


def cmd_connectivity(args) -> int:
    from harness import connectivity
    from harness.scenario import load_scenario
    from harness.topology.state import load_state, scenario_with_real_addresses
    state = load_state()
    if state is None:
        raise UsageError("no topology is up: run `chainbench up -f "
                         "bench/scenarios/connectivity-check.yaml` first")
    scenario = scenario_with_real_addresses(load_scenario(state.scenario), state)
    results = connectivity.run(state, scenario, args.datapath)
    if args.output == "json":
        print(json.dumps([{"check": r.check.name, "status": r.status, "expect": r.check.expect,
                           "detail": r.detail, "seconds": round(r.seconds, 3)} for r in results],
                         indent=1))
    else:
        _print_table(("CHECK", "EXPECT", "RESULT", "TIME", "DETAIL"),
                     [(r.check.name, r.check.expect, r.status, f"{r.seconds:.2f}s", r.detail)
                      for r in results])
        failed = [r for r in results if not r.ok]
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_kube_proxy_render(args) -> int:
    from harness.lb.state import desired_state
    from harness.scenario import load_scenario
    state = desired_state(load_scenario(args.file))
    if args.mode == "iptables":
        from harness.kubeproxy import iptables as renderer
    else:
        from harness.kubeproxy import nftables as renderer
    sys.stdout.write(renderer.render(state))
    return EXIT_OK


def cmd_endpoints(args) -> int:
    from harness import datapath
    from harness.endpoints import EndpointRegistry
    from harness.policy import entries as PE
    rows = []
    for node in datapath.pinned_nodes():
        registry = EndpointRegistry(node)
        identity_labels = registry.identity_labels()
        maps = datapath.open_pinned(node)
        try:
            for rec in sorted(registry.records.values(), key=lambda r: r.id):
                info = maps["cb_endpoints"].get(rec.id) if rec.state == "ready" else None
                flags = info.flags if info is not None else 0
                identity = info.identity if info is not None else None
                labels = identity_labels.get(identity, "").split(",") if identity else []
                rows.append({
                    "name": rec.pod, "node": node, "endpoint_id": rec.id,
                    "identity_id": identity,
                    "labels": sorted({*(rec.labels or []), *filter(None, labels)}),
                    "ingress_enforcement": bool(flags & PE.EP_FLAGS["EP_F_INGRESS_ENFORCED"]),
                    "egress_enforcement": bool(flags & PE.EP_FLAGS["EP_F_EGRESS_ENFORCED"]),
                    "state": rec.state, "ipv4": rec.ipv4, "ipv6": rec.ipv6,
                    "interface": rec.interface})
        finally:
            for m in maps.values():
                m.close()
    if args.output == "json":
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    _print_table(("NAME", "ENDPOINT ID", "IDENTITY ID", "INGRESS ENFORCEMENT", "EGRESS ENFORCEMENT",
                  "ENDPOINT STATE", "IPV4", "IPV6"),
                 [(r["name"], str(r["endpoint_id"]), str(r["identity_id"] or "<none>"),
                   str(r["ingress_enforcement"]).lower(), str(r["egress_enforcement"]).lower(),
                   r["state"], r["ipv4"] or "", r["ipv6"] or "") for r in rows])
    return EXIT_OK


# --- plumbing ----------------------------------------------------------------------

def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else \
        [len(h) for h in header]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def _add_netpol_ipblock(p, default: str | None = "pods") -> None:
    p.add_argument("--netpol-ipblock", choices=("pods", "cidr"), default=default,
                   help="what a NetworkPolicy ipBlock selects: pods = pod addresses too, as Kubernetes "
                        "specifies (default); cidr = only addresses outside the cluster, as Cilium "
                        "does (CiliumNetworkPolicy CIDR rules always do)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainbench",
        description="A chained eBPF datapath and its kernel-side benchmark harness.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show full logs (the verifier's, make's) on failure")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="compile bpf_src/ (CO-RE, clang-19) into build/bpf/")
    p.add_argument("--clean", action="store_true", help="remove build/ first")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("programs", help="list the compiled programs and their types")
    p.set_defaults(func=cmd_programs)

    p = sub.add_parser("test-run", help="run every packet of a pcap through a program "
                                        "(BPF_PROG_TEST_RUN)")
    p.add_argument("program", help="PROGRAM, or OBJECT:PROGRAM (OBJECT: bpf_src/OBJECT.bpf.c "
                                   "or a path to a .bpf.o)")
    p.add_argument("--pcap", required=True, help="input packets (pcap or pcapng; Ethernet or raw IP)")
    p.add_argument("--scenario", help="Kubernetes-style YAML whose objects program the maps")
    p.add_argument("--endpoint", metavar="NS/POD",
                   help="the pod whose program runs (sender for from_container, "
                        "receiver for to_container)")
    p.add_argument("--repeat", type=int, default=1, help="runs per packet (duration is the average)")
    p.add_argument("--rodata", action="append", default=[], metavar="NAME=VALUE",
                   help="set a const volatile knob before load (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    _add_netpol_ipblock(p)
    p.set_defaults(func=cmd_test_run)

    p = sub.add_parser("bench", help="run benchmark suites, write results/ and the dashboard")
    p.add_argument("suite", nargs="?", default="all", choices=["micro", "control", "macro", "all"])
    p.add_argument("--profile", choices=["quick", "full", "smoke"], default="quick",
                   help="quick: 1 and 10k services, one round (make bench); full: every scale, "
                        "3 rounds; smoke: tiny, for make test (default quick)")
    p.add_argument("--services", help="micro: service counts (x 10 backends) of the LB cases")
    p.add_argument("--identities", help="micro: identity x rule counts of the policy cases")
    p.add_argument("--samples", type=int, help="micro: interleaved samples per case (>= 5)")
    p.add_argument("--repeat", type=int, help="micro: runs per sample (>= 100000)")
    p.add_argument("--scales", help="control and macro: service counts, e.g. 1,1000,10000")
    p.add_argument("--rounds", type=int, help="interleaved rounds of every suite")
    p.add_argument("--seconds", type=float, help="macro: seconds per wrk run")
    p.add_argument("--timeout", type=float, help="control: seconds a load may take")
    p.add_argument("--out", help=f"results directory (default {paths.RESULTS})")
    p.add_argument("--no-write", action="store_true", help="print only, write no result file")
    p.add_argument("--no-dashboard", action="store_true", help="do not re-render the dashboard")
    p.add_argument("--json", action="store_true", help="also print the result document")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("dashboard", help="render results/index.html from the result files")
    p.add_argument("--results", help=f"results directory (default {paths.RESULTS})")
    p.add_argument("--out", help="output file (default RESULTS/index.html)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("scenario", help="work with scenario files")
    ssub = p.add_subparsers(dest="scenario_command", required=True, metavar="COMMAND")
    c = ssub.add_parser("check", help="validate scenario files")
    c.add_argument("files", nargs="+")
    c.set_defaults(func=cmd_scenario_check)

    p = sub.add_parser("lb", help="program the service load balancer of a node")
    lsub = p.add_subparsers(dest="lb_command", required=True, metavar="COMMAND")
    c = lsub.add_parser("apply", help="program a node's pinned LB maps from a scenario "
                                      "(only the differences are written)")
    c.add_argument("-f", "--file", required=True, help="scenario YAML")
    c.add_argument("--node", default="cb-node0", help="node whose maps to program (cb-node0)")
    c.set_defaults(func=cmd_lb_apply)

    p = sub.add_parser("identities", help="security identities of a scenario's pods, reserved "
                                          "and CIDR identities")
    p.add_argument("-f", "--file", required=True, help="scenario YAML")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _add_netpol_ipblock(p)
    p.set_defaults(func=cmd_identities)

    p = sub.add_parser("policy", help="L3/L4 policy of a node's endpoints")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    c = psub.add_parser("apply", help="resolve a scenario's policies and program a node's "
                                      "pinned maps (each endpoint switches atomically)")
    c.add_argument("-f", "--file", required=True, help="scenario YAML")
    c.add_argument("--node", default="cb-node0")
    _add_netpol_ipblock(c)
    c.set_defaults(func=cmd_policy_apply)
    c = psub.add_parser("get", help="an endpoint's live policy entries with hit counters "
                                    "(like `cilium bpf policy get`)")
    c.add_argument("endpoint", metavar="NS/POD")
    c.add_argument("--node", help="node (default: the only node with pinned maps)")
    c.add_argument("-o", "--output", choices=["table", "json"], default="table")
    c.set_defaults(func=cmd_policy_get)

    p = sub.add_parser("services", help="list services as the LB maps hold them "
                                        "(like `cilium service list`)")
    p.add_argument("--node", help="node (default: the only node with pinned maps)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("ct", help="conntrack entries of a node")
    p.add_argument("ct_command", choices=["list", "flush", "gc"],
                   help="list entries, delete all, or delete expired ones")
    p.add_argument("--node", help="node (default: the only node with pinned maps)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_ct)

    p = sub.add_parser("snat", help="NodePort SNAT port allocation counters of a node: new "
                                    "mappings, collisions, reused expired ports, exhaustion drops")
    p.add_argument("snat_command", choices=["stats"])
    p.add_argument("--node", help="node (default: the only node with pinned maps)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_snat)

    p = sub.add_parser("up", help="build the topology: nodes, pods through the real primary CNI, "
                                  "the datapath chained after it")
    p.add_argument("-f", "--file", required=True, help="scenario YAML")
    p.add_argument("--nodes", type=int, help="number of nodes (default: the scenario's)")
    p.add_argument("--routing", choices=["native", "vxlan"], default="native")
    p.add_argument("--datapath", choices=["bpf", "iptables", "nftables"], default="bpf")
    p.add_argument("--bpf-lb-map-max", type=int, metavar="N",
                   help="entries of each LB map on BPF nodes (as Cilium's flag; default 65536: "
                        "about 5,000 services x 10 backends)")
    _add_netpol_ipblock(p, None)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("kube-proxy", help="kube-proxy's rule sets, the baselines")
    ksub = p.add_subparsers(dest="kp_command", required=True, metavar="COMMAND")
    c = ksub.add_parser("render", help="print the iptables-restore input or nft script kube-proxy "
                                       "would program for a scenario")
    c.add_argument("--mode", choices=["iptables", "nftables"], required=True)
    c.add_argument("-f", "--file", required=True, help="scenario YAML")
    c.set_defaults(func=cmd_kube_proxy_render)

    p = sub.add_parser("connectivity", help="run the connectivity-check suite on the topology")
    p.add_argument("--datapath", choices=["bpf", "iptables", "nftables"],
                   help="the datapath to judge against (default: the topology's)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_connectivity)

    p = sub.add_parser("endpoints", help="endpoints of every node (like `kubectl get cep`)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_endpoints)

    p = sub.add_parser("down", help="tear the topology down and remove every namespace, cgroup, "
                                    "pin and state chainbench left behind")
    p.set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A process started as a background job of a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it so: Ctrl-C (or CI's SIGINT) would be lost and
    # nothing cleaned up.  Take it back (the children we start then get the default).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    from harness.bpf.errors import BpfError, ConfigError, StructMismatchError, VerifierError
    from harness.cni.runtime import CNIError
    from harness.datapath import NodeNotFound
    from harness.topology.build import TopologyError
    from harness.topology.plan import PlanError
    from harness.lb.control import LbApplyError
    from harness.policy.program import PolicyApplyError
    from harness.lb.state import LbStateError
    from harness.testrun import PcapError, ProgramNotFound
    from harness.addressing import AddressPlanError
    from harness.scenario import ScenarioError
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ScenarioError, ProgramNotFound, PcapError, ConfigError, NodeNotFound,
            LbStateError, AddressPlanError, PlanError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VerifierError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        if args.verbose:
            print(exc.log, file=sys.stderr)
        else:
            print("       (run with -v for the verifier log)", file=sys.stderr)
        return EXIT_FAIL
    except (BpfError, StructMismatchError, LbApplyError, PolicyApplyError, TopologyError,
            CNIError, _bench_errors()) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_OK


def _bench_errors() -> type[Exception]:
    from bench.macro import MacroError
    return MacroError


if __name__ == "__main__":
    sys.exit(main())
