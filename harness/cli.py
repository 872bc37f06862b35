# PYTHON_ARGCOMPLETE_OK
"""The ``chainbench`` command line: one ``cmd_<name>`` function per subcommand.

Only this module prints and chooses exit codes: 0 success, 1 a failure of the
thing being run (kernel refusal, failed check), 2 bad input (usage, a bad
file or field), 128 + the signal's number when interrupted, as a shell reports
a command a signal ended: 130 for SIGINT (Ctrl-C), 143 for SIGTERM (``timeout``,
CI cancellation).  Both signals unwind the command through its clean-ups first.
Errors are one line, never a traceback.

Read commands take ``-o table|wide|json|yaml`` (wide adds NODE and LABELS
columns where they apply) and cover every node unless ``--node`` names one,
as ``kubectl get -A`` covers every namespace (a NODE column then says whose
row it is).  Shell completion comes from argcomplete (``chainbench completion
bash``); an unknown command gets one line with the closest one.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import paths
from harness.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE, ChainbenchError, InputError, UsageError
from harness.host import signals

EXIT_INTERRUPTED = 128 + signal.SIGINT

# Every other import is made in the function that needs it, each with its cost: the
# project's modules together take ~300 ms to import (libbpf, the scenario parser, the
# control planes; measured with python -X importtime), scapy ~170 ms, rich ~30 ms,
# argcomplete ~8 ms, which `--help` and every command would pay (~30 ms of imports now).


# --- subcommands ----------------------------------------------------------------

def cmd_build(args) -> int:
    cmd = ["make", "-C", str(paths.ROOT), "build"] + (["V=1"] if args.verbose else [])
    if args.clean:
        subprocess.run(["make", "-C", str(paths.ROOT), "clean"], check=False)
    return EXIT_OK if subprocess.run(cmd).returncode == 0 else EXIT_FAIL


def cmd_programs(args) -> int:
    from harness.testrun import runner   # lazy: libbpf and the object reader (~45 ms)
    docs = runner.compiled_programs()
    if not docs:
        raise UsageError(f"no compiled objects in {paths.bpf_objects_dir()} (run `make build`)")
    wide = args.output == "wide"
    _emit(args, docs, ("OBJECT", "PROGRAM", "TYPE") + (("PATH",) if wide else ()),
          [(d["object"], d["program"], d["type"]) + ((d["path"],) if wide else ()) for d in docs])
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
    # lazy: the node's datapath and the test-run engine: libbpf, the control planes and
    # the scenario parser (~150 ms)
    from harness.testrun import load, runner
    obj, prog = runner.resolve_program(args.program)
    scenario = endpoint = None
    if args.endpoint and not args.scenario:
        raise UsageError("--endpoint needs --scenario (the endpoint is a pod of the scenario)")
    if args.scenario == "-" and args.pcap == "-":
        raise UsageError("--pcap - and --scenario -: only one of them can read standard input")
    if args.scenario:
        scenario = _load_scenario(args, args.scenario, plan_checked=False)   # maps not attached
        if args.endpoint:
            endpoint = scenario.pod(args.endpoint)
    if args.repeat < 1:
        raise UsageError("--repeat must be >= 1")
    packets = list(runner.read_pcap(args.pcap))
    rodata = _parse_rodata(args.rodata)
    with load.collection(obj, scenario, endpoint, rodata, args.netpol_ipblock) as coll:
        results = []
        for result in runner.run_packets(runner.Runner(coll, prog), packets, args.repeat):
            results.append(result)
            if args.json:
                print(json.dumps(result.to_json()), flush=True)
    if not args.json:
        _print_test_run_table(results)
    return EXIT_OK


def _print_test_run_table(results) -> None:
    from harness.abi import drop_reasons    # lazy: ~8 ms, only test-run needs it
    from harness.testrun import summary     # lazy: scapy (~170 ms)
    rows = []
    for r in results:
        reason = f"{r.drop_reason} ({drop_reasons.describe(r.drop_reason)})" if r.drop_reason else ""
        rows.append((str(r.index), r.verdict, reason, str(r.duration_ns), str(len(r.packet_out)),
                     summary.frame(r.packet_out)))
    # NS/RUN: the kernel's average duration of one run of the program, in ns.
    _print_table(("#", "VERDICT", "DROP REASON", "NS/RUN", "LEN", "PACKET OUT"), rows)


def cmd_bench(args) -> int:
    from bench import profiles          # lazy: ~9 ms, only bench needs it
    from bench.report import results    # lazy: ~8 ms, only bench needs it
    if args.rounds is not None and args.rounds < 1:
        raise UsageError("--rounds must be >= 1")
    only = args.events_only
    if only and args.suite != "micro":
        raise UsageError("--events-only: a micro option (`chainbench bench micro --events-only`)")
    if only and (args.services or args.identities):
        raise UsageError("--events-only times 1 service and 1 identity: no --services or "
                         "--identities with it")
    if args.perf and args.suite not in ("macro", "all"):
        raise UsageError("--perf: a macro option (`chainbench bench macro --perf`)")
    mine = args.scenario is not None        # a user's own cluster instead of the templates
    if mine:
        if args.suite not in ("micro", "control"):
            raise UsageError("--scenario: `chainbench bench micro --scenario FILE` or "
                             "`bench control --scenario FILE`")
        if only or args.mix or args.scales:
            raise UsageError("--scenario times the scenario's own Services: no --events-only, "
                             "--mix or --scales with it")
        _load_scenario(args, args.scenario, plan_checked=False)   # bad input: exit 2 now
    profile = profiles.get(
        args.profile, services=() if only else _scales_arg("--services", args.services)
        or (() if mine else None),
        identities=() if only else _scales_arg("--identities", args.identities)
        or (() if mine else None),
        scales=_scales_arg("--scales", args.scales), samples=args.samples, repeat=args.repeat,
        rounds=args.rounds, seconds=args.seconds, timeout=args.timeout, mix=args.mix,
        generic=False if only or mine else None, events=True if only else (False if mine else None),
        scenario=args.scenario, perf=True if args.perf else None)
    if args.perf:
        from bench.macro import perf_record     # lazy, as the suites
        perf_record.check_available()           # cannot record here: one line, exit 2
    suites = _suites()
    wanted = profiles.SUITES if args.suite == "all" else (args.suite,)
    if "micro" in wanted and suites["micro"].indicative(profile.micro):
        print("note: fewer than 5 samples or 100000 runs per sample: micro figures are "
              "indicative only", file=sys.stderr)
    if not paths.bpf_object("lxc").exists():
        raise UsageError(f"no compiled programs in {paths.bpf_objects_dir()} (run `make build`)")
    sections: dict = {}
    with _progress_bar() as update:
        for name in wanted:
            sections[name] = suites[name].run_suite(getattr(profile, name), update)
    doc = results.new_document(sections, profile=profile.name, notes=profile.notes)
    _print_bench_tables(sections)
    if args.json:
        print(json.dumps(doc, indent=1))
    if not args.no_write:
        path = results.write(doc, args.out, latest=(profile.name == "quick"))
        print(f"results written to {path}", file=sys.stderr)
        flames = results.write_speedscope(doc, path)
        if flames:
            print(f"profiles written to {flames} (open it in https://www.speedscope.app)",
                  file=sys.stderr)
        if not args.no_dashboard:
            from bench.report import dashboard   # lazy: jinja2 and the templates (~45 ms)
            page = dashboard.render(path.parent)
            print(f"dashboard written to {page}", file=sys.stderr)
    return EXIT_OK


def _scales_arg(flag: str, text: str | None) -> tuple[int, ...] | None:
    """Scales given as ``1,1000,10000`` (None: the profile's)."""
    if not text:
        return None
    try:
        scales = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected numbers separated by commas") from None
    if any(n < 1 or n > 1_000_000 for n in scales):
        raise UsageError(f"{flag} {text!r}: each scale must be 1..1000000")
    return scales


def _suites() -> dict:
    """The benchmark suites by name, each with one interface: ``run_suite(settings,
    progress) -> section`` and ``table(section) -> (header, rows)``."""
    # lazy: the suites import the datapath, kube-proxy and topology modules (~300 ms)
    from bench import control
    from bench.macro import suite as macro
    from bench.micro import suite as micro
    return {"micro": micro, "control": control, "macro": macro}


def _print_bench_tables(sections: dict) -> None:
    """Each suite's table (its own header and rows), a blank line between tables."""
    suites = _suites()
    for i, (name, section) in enumerate(sections.items()):
        if i:
            print()
        _print_table(*suites[name].table(section))
        if name == "control" and section.get("policy"):
            from bench import policy_control    # lazy, as the suites
            print()
            _print_table(*policy_control.table(section["policy"]))
        if name == "macro" and section.get("profile"):
            from bench.macro import profiling   # lazy, as the suites
            print()
            _print_table(*profiling.table(section["profile"]))


@contextlib.contextmanager
def _progress_bar():
    """update(done, total, description) for a rich progress bar on stderr."""
    # lazy: rich (~30 ms)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, console=_stderr_console()) as bar:
        task = bar.add_task("bench", total=None)

        def update(done: int, total: int, description: str) -> None:
            bar.update(task, completed=done, total=total, description=description)
        yield update


def cmd_dashboard(args) -> int:
    from bench.report import dashboard      # lazy: jinja2 and the templates (~45 ms)
    page = dashboard.render(Path(args.results or paths.RESULTS),
                            Path(args.out) if args.out else None)
    print(f"dashboard written to {page}")
    return EXIT_OK


def cmd_service_map(args) -> int:
    from harness.observe import servicemap  # lazy: jinja2 and the template (~45 ms)
    if args.flows == "-":
        g = servicemap.write_flows(servicemap.read_flow_stream(sys.stdin), args.output, "<stdin>")
    else:
        g = servicemap.write_page(Path(args.flows), Path(args.output))
    print(f"service map written to {args.output}: {len(g.edges)} edge(s) from {g.flows} flow(s), "
          f"{g.replies} repl{'y' if g.replies == 1 else 'ies'} left out")
    return EXIT_OK


def _stderr_console():
    from rich.console import Console        # lazy: rich (~30 ms)
    return Console(stderr=True)


def cmd_lb_apply(args) -> int:
    # lazy: the node's datapath, the control planes and the scenario parser (~160 ms)
    from harness.scenario import source
    from harness.topology import apply
    text, origin = source.read(args.file, dict(args.param))
    print(apply.lb_apply(args.node, text, origin))
    return EXIT_OK


def cmd_identities(args) -> int:
    # lazy: the policy resolver and the scenario parser (~90 ms)
    from harness.policy.desired import format_identities, identity_holders, policy_state
    scenario = _load_scenario(args, plan_checked=False)       # resolves only
    state = policy_state(scenario, np_ipblock=args.netpol_ipblock)
    docs = identity_holders(scenario, state)
    if args.output == "wide":
        _emit(args, docs, ("ID", "LABELS", "ENDPOINTS", "NODE"),
              [(str(d["id"]), d["labels"], ",".join(d["endpoints"]), ",".join(d["nodes"]))
               for d in docs])
    else:
        _emit(args, docs, ("ID", "LABELS"), format_identities(state))
    return EXIT_OK


def cmd_policy_apply(args) -> int:
    from harness.topology import apply      # lazy: the node's datapath (~160 ms)
    scenario = _load_scenario(args)
    print(apply.policy_apply(args.node, scenario, args.netpol_ipblock))
    return EXIT_OK


def cmd_policy_get(args) -> int:
    # lazy: the node's pinned maps (~150 ms), the policy entries
    from harness.policy import entries as PE
    from harness.topology import views
    doc = views.policy_entries(args.endpoint, args.node)
    if args.output in ("json", "yaml"):
        _emit(args, doc, (), [])
        return EXIT_OK
    wide = args.output == "wide"

    def who(d: dict) -> str:
        if d["identity"] is None:
            return "ANY"
        text = ",".join(d["labels"]) if wide else PE.short_labels(d["labels"])
        return f"{d['identity']} {text}".strip()
    print(f"endpoint {doc['endpoint']} on {doc['node']} (id {doc['id']}, identity "
          f"{doc['identity']}, policy revision {doc['revision']}); ingress {doc['ingress']}, "
          f"egress {doc['egress']}")
    _print_table(("POLICY", "DIRECTION", "IDENTITY (LABELS)", "PORT/PROTO", "BYTES", "PACKETS"),
                 [(d["verdict"], d["direction"], who(d), d["port_proto"], str(d["bytes"]),
                   str(d["packets"])) for d in doc["rules"]])
    return EXIT_OK


def cmd_services(args) -> int:
    # lazy: the node's pinned maps (~150 ms), the LB listing
    from harness.lb import listing
    from harness.topology import views
    rows = views.services(args.node)
    node_column = args.node is None or args.output == "wide"
    wide = args.output == "wide"
    _emit(args, [r.to_json() for r in rows], listing.header(node_column, wide),
          listing.format_table(rows, node_column, wide))
    return EXIT_OK


def cmd_ct(args) -> int:
    from harness.topology import views      # lazy: the node's pinned maps (~150 ms)
    if args.ct_command != "list":
        removed = views.conntrack_clean(args.node, expired_only=args.ct_command == "gc")
        what = "expired entries" if args.ct_command == "gc" else "entries"
        print(", ".join(f"{name}: {n} {what} removed" for name, n in removed.items()))
        return EXIT_OK
    records = views.conntrack_records(args.node)
    node_column = args.node is None or args.output == "wide"
    wide = args.output == "wide"
    rows = [((node,) if node_column else ())
            + (f"{r.protocol}", r.direction,
               f"{_hostport(r.saddr, r.sport)} -> {_hostport(r.daddr, r.dport)}",
               f"{r.expires_in}s", f"{r.tx_packets}/{r.rx_packets}",
               str(r.rev_nat_index or ""), ",".join(r.flags), r.tcp_flags_seen)
            + ((f"{r.tx_bytes}/{r.rx_bytes}", str(r.backend_id or "")) if wide else ())
            for node, r in records]
    _emit(args, [{"node": node, **r.to_json()} for node, r in records],
          (("NODE",) if node_column else ())
          + ("PROTO", "DIR", "TUPLE", "EXPIRES", "PKTS TX/RX", "REVNAT", "FLAGS", "TCP FLAGS")
          + (("BYTES TX/RX", "BACKEND") if wide else ()), rows)
    return EXIT_OK


def cmd_snat(args) -> int:
    from harness.topology import views      # lazy: the node's pinned maps (~150 ms)
    per_node = views.snat_stats(args.node)
    node_column = args.node is None or args.output == "wide"
    docs = [{"node": node, **{f"ipv{f}": vars(s) for f, s in stats.items()}}
            for node, stats in per_node.items()]
    _emit(args, docs,
          (("NODE",) if node_column else ())
          + ("FAMILY", "ALLOCATED", "COLLISIONS", "REUSED", "EXHAUSTED"),
          [((node,) if node_column else ())
           + (f"IPv{f}", str(s.allocated), str(s.collisions), str(s.reused), str(s.exhausted))
           for node, stats in per_node.items() for f, s in stats.items()])
    return EXIT_OK


def _hostport(addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def cmd_scenario_check(args) -> int:
    """Every file is checked; each bad one gets its one line; exit 2 if any was bad."""
    if args.files.count("-") > 1:
        raise UsageError("- (standard input) can be named only once")
    bad = 0
    for spec in args.files:
        try:
            s = _load_scenario(args, spec, plan_checked=False, note=False)
            line = (f"{s.source}: {len(s.pods)} pods on {len(s.nodes)} nodes, "
                    f"{len(s.services)} services, {len(s.endpoint_slices)} endpointslices, "
                    f"{len(s.network_policies)} networkpolicies, "
                    f"{len(s.cilium_network_policies)} ciliumnetworkpolicies")
            if s.namespaces:
                line += f", {len(s.namespaces)} namespaces"
            if s.skipped:
                line += f"; skipped {sum(n for _, n in s.skipped)} objects of kinds chainbench " \
                        f"does not use ({s.skipped_text()})"
            foreign = _foreign_plan_note(s)
            if foreign:
                line += f"; {foreign}"
            if args.endpoint:
                pod = s.pod(args.endpoint)
                line += f"; endpoint {pod.ref} on {pod.node_name or 'no node'}"
        except InputError as exc:
            print(f"ERROR: {exc}", file=sys.stderr, flush=True)
            bad += 1
            continue
        print(line, flush=True)
    return EXIT_USAGE if bad else EXIT_OK


def _load_scenario(args, spec: str | None = None, *, plan_checked: bool = True,
                   note: bool = True):
    """The scenario *spec* (default: ``-f``) names, validated as every command validates it
    (harness.validate): a file, ``-`` for standard input, or a ``.j2`` template
    rendered with the ``-p`` parameters.  *plan_checked*: addresses and node names must
    fit the address plan (commands that touch the network); False: any valid ones
    (commands that only render, resolve or program unattached maps).  With *note*, the
    objects of kinds chainbench does not use are counted in one line on stderr."""
    from harness import validate            # lazy: the scenario parser (~100 ms)
    scenario = validate.load(args.file if spec is None else spec, dict(args.param),
                             plan_checked=plan_checked)
    if note and scenario.skipped:
        print(f"note: {scenario.source}: skipped {sum(n for _, n in scenario.skipped)} objects "
              f"of kinds chainbench does not use ({scenario.skipped_text()})", file=sys.stderr)
    return scenario


def _foreign_plan_note(scenario) -> str:
    """For a scenario outside the address plan (a real cluster's dump): its nodes and where
    their addresses come from, and that ``up`` needs ``--renumber``; "" inside the plan."""
    from harness.lb.desired import PLAN, node_address_sources
    from harness.scenario.renumber import fits_plan
    if fits_plan(scenario):
        return ""
    nodes = [f"{n} {'/'.join(map(str, addrs)) or 'no address'} ({source})"
             for n, (addrs, source) in node_address_sources(scenario).items() if source != PLAN]
    return ("outside the address plan (`chainbench up --renumber` maps it in)"
            + (f"; node addresses: {', '.join(nodes)}" if nodes else ""))


def _scenario_param(text: str) -> tuple[str, object]:
    from harness.scenario.source import parse_param   # lazy: the scenario package (~75 ms)
    try:
        return parse_param(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_scenario_file(p, flags=("-f", "--file"), required: bool = True) -> None:
    """``-f FILE`` (or *flags*) and ``-p KEY=VALUE`` for a command that reads a scenario."""
    p.add_argument(*flags, required=required,
                   help="scenario YAML; - reads standard input; *.j2: a template (see -p)")
    _add_scenario_params(p)


def _add_scenario_params(p) -> None:
    p.add_argument("-p", "--param", action="append", type=_scenario_param, default=[],
                   metavar="KEY=VALUE", help="parameter of a .j2 scenario template (repeatable; "
                                             "values are YAML scalars: 1000, true, UDP)")


def cmd_up(args) -> int:
    from harness.topology import chaining   # lazy: the topology, CNI and datapath (~190 ms)
    start = time.monotonic()
    if args.bpf_lb_map_max is not None and not 1024 <= args.bpf_lb_map_max <= 1 << 24:
        raise UsageError(f"--bpf-lb-map-max {args.bpf_lb_map_max}: expected 1024..16777216")
    from harness.node.config import NodeSettings, check_hubble_buffer_size
    try:
        if args.hubble_buffer_size is not None:
            check_hubble_buffer_size(args.hubble_buffer_size)
        NodeSettings.check_events_ring_size(args.events_ring_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    renumbered = None
    if args.renumber:
        renumbered = chaining.renumber_scenario(args.file, dict(args.param))
        print(f"renumbered {renumbered.source} into the address plan (saved in "
              f"{chaining.RENUMBER_MAP}):")
        for line in renumbered.lines():
            print(f"  {line}")
        if renumbered.dropped:
            print(f"  left out: {', '.join(f'{n} {k}' for k, n in renumbered.dropped)} "
                  "(kinds chainbench does not use)")
        sys.stdout.flush()
    state = chaining.up_scenario(
        args.file, dict(args.param), args.nodes, args.routing, args.datapath,
        renumbered=renumbered,
        progress=(lambda msg: print(msg, file=sys.stderr)) if args.verbose else None,
        lb_map_max=args.bpf_lb_map_max, np_ipblock=args.netpol_ipblock,
        hubble_buffer_size=args.hubble_buffer_size, monitor_aggregation=args.monitor_aggregation,
        events_ring_size=args.events_ring_size,
        kube_proxy_masquerade_all=args.kube_proxy_masquerade_all,
        nodeport_addresses=_nodeport_addresses(args.nodeport_addresses))
    pods = [p for p in state.pods if not p.host_network]
    print(f"up: {len(state.nodes)} nodes, {len(pods)} pods, routing {state.routing}, datapath "
          f"{state.datapath} in {time.monotonic() - start:.1f} s")
    return EXIT_OK


def _nodeport_addresses(value: str | None) -> tuple[str, ...]:
    """--nodeport-addresses CIDR,...: each a network of the project's address plan, or
    kube-proxy's keyword "primary" (the node's own addresses)."""
    import ipaddress
    from harness import addressing
    if not value:
        return ()
    out = []
    for item in (v.strip() for v in value.split(",")):
        if item == "primary":
            out.append(item)
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise UsageError(f"--nodeport-addresses {item!r}: not a CIDR") from None
        if not any(net.subnet_of(a) for a in addressing.ALLOWED if a.version == net.version):
            raise UsageError(f"--nodeport-addresses {item}: outside the project's address plan "
                             f"({', '.join(str(a) for a in addressing.ALLOWED)})")
        out.append(str(net))
    return tuple(out)


def cmd_down(args) -> int:
    from harness.topology import build      # lazy: the topology, CNI and datapath (~190 ms)
    removed = build.down()
    errors = removed.pop("errors", [])
    total = sum(len(v) for v in removed.values())
    for kind, items in removed.items():
        for item in items:
            print(f"removed {'process' if kind == 'processes' else kind.rstrip('s')} {item}")
    for err in errors:
        print(f"warning: {err}", file=sys.stderr)
    if not total:
        print("nothing to remove")
    return EXIT_OK


def cmd_connectivity(args) -> int:
    from harness.topology import check_suites   # lazy: the topology and datapath (~115 ms)
    if args.flows is not None:
        try:                # a file that cannot be written is refused before the suite runs
            with open(args.flows, "a"):
                pass
        except OSError as exc:
            raise InputError(f"--flows {args.flows}: {exc.strerror}") from None
    results = check_suites.run_selected(args.test, args.datapath, args.flow_validation, args.flows)
    if args.output == "json":
        print(json.dumps([r.to_dict(args.flow_validation) for r in results], indent=1))
    else:
        _print_table(("CHECK", "EXPECT", "RESULT", "TIME", "DETAIL"),
                     [(r.check.name, r.check.expect, r.status, f"{r.seconds:.2f}s", r.detail)
                      for r in results])
        for r in results:
            if r.warning:
                print(f"warning: {r.check.name}: {r.warning}", file=sys.stderr)
        count = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "N/A")}
        warned = sum(bool(r.warning) for r in results)
        print(f"{count['PASS']} passed" + (f" ({warned} with warnings)" if warned else "")
              + f", {count['FAIL']} failed, {count['N/A']} not applicable"
              + ("  [flow validation disabled: expected failures were not attributed]"
                 if args.flow_validation == "disabled" else ""))
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_observe(args) -> int:
    # lazy: grpc and the protobuf modules (~150 ms)
    from harness.observe import client, filters, output
    try:
        # --node picks the observers to ask; --node-name is the flow filter
        whitelist, blacklist = filters.filters_from_cli(
            {k: v for k, v in vars(args).items() if k != "node"})
        filters.FlowSelector(whitelist, blacklist)      # refused here, before any observer
    except filters.FilterError as exc:
        raise UsageError(str(exc)) from None
    req = client.request(last=args.last, first=args.first, all_flows=args.all,
                         follow=args.follow, since=args.since, until=args.until,
                         whitelist=whitelist, blacklist=blacklist)
    found = client.targets(args.node)
    result = client.Result()
    if args.service_map:
        from google.protobuf import json_format
        from harness.observe import servicemap
        with contextlib.closing(client.stream(req, found, result)) as responses:
            flows = [json_format.MessageToDict(r.flow, preserving_proto_field_name=True)
                     for r in responses if r.HasField("flow")]
        g = servicemap.write_flows(flows, args.service_map, "chainbench observe")
        print(f"service map written to {args.service_map}: {len(g.edges)} edge(s) from "
              f"{g.flows} flow(s)")
        return EXIT_OK
    printer = output.Printer(args.output)
    with contextlib.closing(client.stream(req, found, result)) as responses:
        for resp in responses:
            sys.stdout.write(printer.format(resp))
            if args.follow:
                sys.stdout.flush()
    sys.stdout.write(printer.flush())
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_kube_proxy_render(args) -> int:
    # lazy: the control plane and the scenario parser (~85 ms)
    from harness.kubeproxy import iptables, nftables
    from harness.lb.desired import PLAN, lb_state, node_address_sources
    from harness.kubeproxy.model import ProxierConfig
    renderer = iptables if args.mode == "iptables" else nftables
    from harness.scenario.renumber import fits_plan
    scenario = _load_scenario(args, plan_checked=False)      # prints text only
    # A real cluster's dump: its pod and service ranges are not the plan's.  As kube-proxy
    # without --cluster-cidr (no local-traffic detection) and without ServiceCIDRs (no
    # drop of unallocated ClusterIPs), unless given.
    foreign = not fits_plan(scenario)
    cidrs = {"cluster_cidr": _family_cidr("--cluster-cidr", args.cluster_cidr, args.family,
                                          "" if foreign else None),
             "service_cidrs": (lambda c: None if c is None else ((c,) if c else ()))(
                 _family_cidr("--service-cidr", args.service_cidr, args.family,
                              "" if foreign else None))}
    config = ProxierConfig(family=args.family, **cidrs)
    if args.node is not None:
        if args.node not in scenario.nodes:
            raise InputError(f"--node {args.node}: not a node of the scenario "
                             f"({', '.join(scenario.nodes) or 'none'})")
        addrs, origin = node_address_sources(scenario)[args.node]
        if origin != PLAN:
            print(f"note: --node {args.node}: addresses "
                  f"{', '.join(map(str, addrs)) or 'none'} ({origin})", file=sys.stderr)
        config = ProxierConfig(family=args.family, hostname=args.node,
                               node_ips=tuple(str(a) for a in addrs), **cidrs)
    sys.stdout.write(renderer.render(lb_state(scenario), config))
    return EXIT_OK


def _family_cidr(flag: str, value: str | None, family: int, default: str | None) -> str | None:
    """The CIDR of *family* among the comma-separated *value* ("" when it names none of that
    family); *default* when not given."""
    import ipaddress
    if value is None:
        return default
    found = ""
    for item in (v.strip() for v in value.split(",") if v.strip()):
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise UsageError(f"{flag} {item!r}: not a CIDR") from None
        if net.version == family and not found:
            found = str(net)
    return found


def cmd_endpoints(args) -> int:
    from harness.topology import views      # lazy: the node's pinned maps (~150 ms)
    rows = views.endpoints(args.node)
    wide = args.output == "wide"
    _emit(args, rows,
          ("NODE", "ENDPOINT ID", "NAME", "IDENTITY ID", "INGRESS ENFORCEMENT",
           "EGRESS ENFORCEMENT", "ENDPOINT STATE", "IPV4", "IPV6")
          + (("INTERFACE", "LABELS") if wide else ()),
          [(r["node"], str(r["endpoint_id"]), r["name"], str(r["identity_id"] or "<none>"),
            str(r["ingress_enforcement"]).lower(), str(r["egress_enforcement"]).lower(),
            r["state"], r["ipv4"] or "", r["ipv6"] or "")
           + ((r["interface"] or "", ",".join(r["labels"])) if wide else ()) for r in rows])
    return EXIT_OK


def cmd_version(args) -> int:
    from harness.facts import version       # lazy: importlib.metadata (~20 ms)
    info = version.info()
    if args.output in ("json", "yaml"):
        _emit(args, info, (), [])
        return EXIT_OK
    commit = f" (git {info['git_commit']})" if info["git_commit"] else ""
    print(f"chainbench {info['chainbench']}{commit}")
    for key, label in (("kernel", "kernel"), ("libbpf", "libbpf"), ("clang", "clang (build/)"),
                       ("python", "python")):
        print(f"{label + ':':<16}{info[key] or 'unknown'}")
    if args.output == "wide":
        print(f"{'build dir:':<16}{info['build_dir']}")
    return EXIT_OK


def cmd_status(args) -> int:
    from harness.topology import status     # lazy: the node's pinned maps (~150 ms)
    doc = status.collect()
    if args.output in ("json", "yaml"):
        _emit(args, doc, (), [])
        return EXIT_OK
    wide = args.output == "wide"
    features = doc["kernel"]["features"]
    print(f"{'Kernel:':<14}{doc['kernel']['release']}")
    for f in features:
        print(f"  {f['name'] + ':':<18}{'yes' if f['available'] else 'no':<5}{f['detail']}")
    topo = doc["topology"]
    if topo is None:
        print(f"{'Topology:':<14}none (run `chainbench up -f SCENARIO`)")
    else:
        print(f"{'Topology:':<14}{topo['nodes']} nodes, {topo['pods_ready']}/{topo['pods']} pods "
              f"ready, routing {topo['routing']}, datapath {topo['datapath']}"
              f"{'' if topo['complete'] else ', incomplete (up did not finish)'}; "
              f"scenario {topo['scenario']}")
    pinned = [n["name"] for n in doc["nodes"] if n["pinned"]]
    print(f"{'Pinned:':<14}" + (f"{len(pinned)} node(s) under {doc['pin_root']}: "
                                f"{', '.join(pinned)}" if pinned else "nothing pinned"))
    print(f"{'Observer:':<14}{doc['observer']}")
    if doc["nodes"]:
        print("Nodes:")
    for n in doc["nodes"]:
        progs = n["programs"]
        kinds: dict[str, int] = {}
        for p in progs:
            kinds[p["program"]] = kinds.get(p["program"], 0) + 1
        attached = ", ".join(f"{name} x{c}" if c > 1 else name for name, c in kinds.items())
        print(f"  {n['name'] + ':':<12}datapath {n['datapath'] or 'unknown'}, "
              f"{n['endpoints']} endpoints, {len(n['maps'])} maps and {n['pinned_links']} links "
              f"pinned, {len(progs)} programs attached" + (f" ({attached})" if attached else ""))
        for err in n["errors"]:
            print(f"    warning: {err}")
    rows = []
    for n in doc["nodes"]:
        for m in n["maps"]:
            if not wide and m["entries"] is None:
                continue
            pressure = f"{100 * m['pressure']:.1f}%" if m["pressure"] is not None else "-"
            rows.append((n["name"], m["name"], m["type"],
                         "-" if m["entries"] is None else str(m["entries"]), str(m["max_entries"]),
                         pressure))
    if rows:
        print("BPF map pressure (entries in use / max entries):")
        _print_table(("NODE", "MAP", "TYPE", "ENTRIES", "MAX", "PRESSURE"), rows)
    if wide:
        prog_rows = [(n["name"], p["program"], p["hook"], p["target"], str(p["id"] or ""))
                     for n in doc["nodes"] for p in n["programs"]]
        if prog_rows:
            print("Attached programs:")
            _print_table(("NODE", "PROGRAM", "HOOK", "TARGET", "ID"), prog_rows)
    return EXIT_OK


def cmd_metrics(args) -> int:
    # lazy: the node's pinned maps and prometheus-client (~160 ms)
    from harness.observe import metrics
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 1..65535")
    node, netns_name = _node_netns(args.node)
    if args.metrics_command == "scrape":
        sys.stdout.write(metrics.scrape(netns_name, args.port))
        return EXIT_OK
    from prometheus_client import CollectorRegistry
    from harness.host import netns
    from harness.observe.datapath_metrics import DatapathCollector
    from harness.topology import lookup
    registry = CollectorRegistry()
    registry.register(DatapathCollector(node, service_names=lambda: lookup.service_names(node)))
    with netns.entered(netns_name):     # the listening socket lives in the node's namespace
        server = metrics.serve(registry, "127.0.0.1", args.port)
    with server:
        print(f"serving {node}'s datapath metrics on http://127.0.0.1:{server.port}/metrics "
              f"in namespace {netns_name} (Ctrl-C ends)", flush=True)
        while True:
            signal.pause()


def _node_netns(node: str | None) -> tuple[str, str]:
    """(node, its network namespace) of a node of the running topology."""
    from harness.node import datapath       # lazy: the node's datapath (~140 ms)
    from harness.topology.state import load_state
    name = datapath.resolve_node(node)
    topology = load_state()
    found = next((n for n in (topology.nodes if topology else []) if n.name == name), None)
    if found is None:
        raise UsageError(f"node {name} has no network namespace (its metrics are served "
                         "inside it: run `chainbench up`)")
    return name, found.netns


COMPLETION_SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def cmd_completion(args) -> int:
    import argcomplete                      # lazy: ~8 ms, only completion needs it
    sys.stdout.write(argcomplete.shellcode(["chainbench"], shell=args.shell))
    return EXIT_OK


# --- plumbing ----------------------------------------------------------------------

OUTPUT_FORMATS = ("table", "wide", "json", "yaml")


def _add_output(p) -> None:
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="table",
                   help="table (default), wide (adds NODE, LABELS and other columns where they "
                        "apply), json or yaml")


def _emit(args, doc, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print *doc* as JSON or YAML (-o json|yaml), else the table of *header* and *rows*."""
    if args.output == "json":
        print(json.dumps(doc, indent=1))
    elif args.output == "yaml":
        import yaml                         # lazy: ~12 ms, only -o yaml needs it
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))
    else:
        _print_table(header, rows)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _unknown_command(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The one-line error for a command word argparse would refuse, with the closest
    known one (``unknown command 'endpoint'; did you mean 'endpoints'?``), or None."""
    words: list[str] = []
    for token in argv:
        if token.startswith("-"):
            if token in ("-h", "--help"):
                return None
            continue
        choices = _subcommands(parser)
        if choices is None:
            return None
        if token not in choices:
            said = " ".join(words + [token])
            close = difflib.get_close_matches(token, list(choices), n=1)
            if close:
                return f"unknown command '{said}'; did you mean '{' '.join(words + close)}'?"
            return (f"unknown command '{said}' (commands: "
                    f"{', '.join(' '.join(words + [c]) for c in choices)})")
        words.append(token)
        parser = choices[token]
    return None


def _complete_nodes(**_kwargs) -> list[str]:
    from harness.node import datapath       # lazy: the node's datapath (~140 ms)
    return datapath.pinned_nodes()


def _complete_endpoints(**_kwargs) -> list[str]:
    from harness.topology import views      # lazy: the node's pinned maps (~150 ms)
    return views.endpoint_names()


def _add_node(p, help_text: str) -> None:
    p.add_argument("--node", help=help_text).completer = _complete_nodes


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


#: hubble observe's filter flags (each repeatable; harness.observe.filters.filters_from_cli
#: turns them into FlowFilters): (flags, metavar, help).
FLOW_FILTER_FLAGS = (
    (("--verdict",), "VERDICT", "FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED"),
    (("-t", "--type"), "TYPE", "event type: drop, trace, policy-verdict, trace-sock, or "
                               "TYPE:SUBTYPE (trace:to-endpoint)"),
    (("--pod",), "[NS/]POD", "flows from or to the pod (prefix match)"),
    (("--from-pod",), "[NS/]POD", "flows from the pod"),
    (("--to-pod",), "[NS/]POD", "flows to the pod"),
    (("-n", "--namespace"), "NS", "flows from or to pods of the namespace"),
    (("--from-namespace",), "NS", "flows from pods of the namespace"),
    (("--to-namespace",), "NS", "flows to pods of the namespace"),
    (("-l", "--label"), "SELECTOR", "flows from or to endpoints with the labels"),
    (("--from-label",), "SELECTOR", "flows from endpoints with the labels"),
    (("--to-label",), "SELECTOR", "flows to endpoints with the labels"),
    (("--ip",), "IP|CIDR", "flows from or to the address"),
    (("--from-ip",), "IP|CIDR", "flows from the address"),
    (("--to-ip",), "IP|CIDR", "flows to the address"),
    (("--port",), "PORT", "flows from or to the L4 port"),
    (("--from-port",), "PORT", "flows from the L4 port"),
    (("--to-port",), "PORT", "flows to the L4 port"),
    (("--protocol",), "PROTO", "tcp, udp, sctp, icmp, icmpv6"),
    (("--identity",), "ID", "flows from or to the security identity"),
    (("--from-identity",), "ID", "flows from the identity"),
    (("--to-identity",), "ID", "flows to the identity"),
    (("--service",), "[NS/]SVC", "flows from or to the service"),
    (("--from-service",), "[NS/]SVC", "flows from the service"),
    (("--to-service",), "[NS/]SVC", "flows to the service"),
    (("--tcp-flags",), "FLAGS", "TCP flags set (SYN,ACK; repeat for alternatives)"),
    (("--traffic-direction",), "DIR", "ingress or egress"),
    (("--node-name",), "NAME", "flows observed on the node"),
    (("--uuid",), "UUID", "the flow with this UUID"),
)


def _add_flow_filters(p) -> None:
    g = p.add_argument_group("filters (as hubble observe's; a flow passes if it matches every "
                             "kind given, any value of a repeated one)")
    for flags, metavar, text in FLOW_FILTER_FLAGS:
        g.add_argument(*flags, action="append", default=[], metavar=metavar, help=text)


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
    _add_output(p)
    p.set_defaults(func=cmd_programs)

    p = sub.add_parser("test-run", help="run every packet of a pcap through a program "
                                        "(BPF_PROG_TEST_RUN)")
    p.add_argument("program", help="PROGRAM, or OBJECT:PROGRAM (OBJECT: bpf_src/OBJECT.bpf.c "
                                   "or a path to a .bpf.o)")
    p.add_argument("--pcap", required=True, help="input packets (pcap or pcapng; Ethernet or raw "
                                                 "IP; - reads standard input)")
    p.add_argument("--scenario", help="Kubernetes-style YAML whose objects program the maps "
                                      "(- reads standard input; *.j2: a template, see -p)")
    _add_scenario_params(p)
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
    p.add_argument("--events-only", action="store_true",
                   help="micro: only the cost of flow events (monitor aggregation off, medium, "
                        "none)")
    p.add_argument("--samples", type=int, help="micro: interleaved samples per case (>= 5)")
    p.add_argument("--repeat", type=int, help="micro: runs per sample (>= 100000)")
    p.add_argument("--scales", help="control and macro: service counts, e.g. 1,1000,10000")
    p.add_argument("--rounds", type=int, help="interleaved rounds of every suite")
    p.add_argument("--seconds", type=float, help="macro: seconds per wrk run")
    p.add_argument("--perf", action="store_true",
                   help="macro: also profile one new-connection run per datapath: perf record "
                        "-a -g (whole machine, during that run only), top kernel functions per "
                        "connection, BPF run time per program (kernel.bpf_stats_enabled); "
                        "writes a speedscope file beside the result")
    p.add_argument("--timeout", type=float, help="control: seconds a load may take")
    p.add_argument("--mix", choices=["realistic", "clusterip"],
                   help="control: the services programmed (default realistic: "
                        "bench/scenarios/services.yaml.j2 mix=realistic)")
    p.add_argument("--scenario", metavar="FILE",
                   help="micro and control: time your own cluster: a scenario file (`kubectl get "
                        "svc,endpointslices,pods -A -o yaml` output loads as it is, any "
                        "addresses), programmed as its first node holds it, instead of the "
                        "synthetic services (micro: its busiest IPv4 ClusterIP from one of its "
                        "pods; control: all its Services, kube-proxy as that node)")
    p.set_defaults(param=[])
    p.add_argument("--out", help=f"results directory (default {paths.RESULTS})")
    p.add_argument("--no-write", action="store_true", help="print only, write no result file")
    p.add_argument("--no-dashboard", action="store_true", help="do not re-render the dashboard")
    p.add_argument("--json", action="store_true", help="also print the result document")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("dashboard", help="render results/index.html from the result files")
    p.add_argument("--results", help=f"results directory (default {paths.RESULTS})")
    p.add_argument("--out", help="output file (default RESULTS/index.html)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("service-map", help="draw recorded flows as a service map, like the Hubble "
                                           "UI's: one self-contained HTML page")
    p.add_argument("--flows", required=True, metavar="FILE",
                   help="flows as `chainbench observe -o json` (or `hubble observe -o json`) "
                        "writes them; - reads standard input")
    p.add_argument("-o", "--output", required=True, metavar="HTML", help="the page to write")
    p.set_defaults(func=cmd_service_map)

    p = sub.add_parser("scenario", help="work with scenario files")
    ssub = p.add_subparsers(dest="scenario_command", required=True, metavar="COMMAND")
    c = ssub.add_parser("check", help="validate scenario files as every command does (each bad "
                                      "file: one line; exit 2 if any)")
    c.add_argument("files", nargs="+", metavar="FILE",
                   help="scenario YAML; - reads standard input; *.j2: a template (see -p)")
    _add_scenario_params(c)
    c.add_argument("--endpoint", metavar="NS/POD", help="also check that this pod exists")
    c.set_defaults(func=cmd_scenario_check)

    p = sub.add_parser("lb", help="program the service load balancer of a node")
    lsub = p.add_subparsers(dest="lb_command", required=True, metavar="COMMAND")
    c = lsub.add_parser("apply", help="program a node's pinned LB maps from a scenario "
                                      "(only the differences are written)")
    _add_scenario_file(c)
    c.add_argument("--node", default="cb-node0", help="node whose maps to program (cb-node0)")
    c.set_defaults(func=cmd_lb_apply)

    p = sub.add_parser("identities", help="security identities of a scenario's pods, reserved "
                                          "and CIDR identities")
    _add_scenario_file(p)
    _add_output(p)
    _add_netpol_ipblock(p)
    p.set_defaults(func=cmd_identities)

    p = sub.add_parser("policy", help="L3/L4 policy of a node's endpoints")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    c = psub.add_parser("apply", help="resolve a scenario's policies and program a node's "
                                      "pinned maps (each endpoint switches atomically)")
    _add_scenario_file(c)
    c.add_argument("--node", default="cb-node0")
    _add_netpol_ipblock(c)
    c.set_defaults(func=cmd_policy_apply)
    c = psub.add_parser("get", help="an endpoint's live policy entries with hit counters "
                                    "(like `cilium bpf policy get`)")
    c.add_argument("endpoint", metavar="NS/POD").completer = _complete_endpoints
    _add_node(c, "node (default: the node the pod runs on)")
    _add_output(c)
    c.set_defaults(func=cmd_policy_get)

    p = sub.add_parser("services", help="list services as the LB maps hold them "
                                        "(like `cilium service list`)")
    _add_node(p, "only this node (default: every node with pinned maps)")
    _add_output(p)
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("ct", help="conntrack entries of a node")
    p.add_argument("ct_command", choices=["list", "flush", "gc"],
                   help="list entries, delete all, or delete expired ones")
    _add_node(p, "only this node (list: default every node with pinned maps; flush and gc: "
                 "default the only one)")
    _add_output(p)
    p.set_defaults(func=cmd_ct)

    p = sub.add_parser("snat", help="NodePort SNAT port allocation counters of a node: new "
                                    "mappings, collisions, reused expired ports, exhaustion drops")
    p.add_argument("snat_command", choices=["stats"])
    _add_node(p, "only this node (default: every node with pinned maps)")
    _add_output(p)
    p.set_defaults(func=cmd_snat)

    p = sub.add_parser("up", help="build the topology: nodes, pods through the real primary CNI, "
                                  "the datapath chained after it")
    _add_scenario_file(p)
    p.add_argument("--nodes", type=int, help="number of nodes (default: the scenario's)")
    p.add_argument("--routing", choices=["native", "vxlan"], default="native")
    p.add_argument("--datapath", choices=["bpf", "iptables", "nftables"], default="bpf")
    p.add_argument("--bpf-lb-map-max", type=int, metavar="N",
                   help="entries of each LB map on BPF nodes (as Cilium's flag; default 65536: "
                        "about 5,000 services x 10 backends)")
    p.add_argument("--hubble-buffer-size", type=int, metavar="N",
                   help="flows each BPF node's observer keeps (one less than a power of two, "
                        "as Hubble's --hubble-event-buffer-capacity; default 4095)")
    _add_netpol_ipblock(p, None)
    from harness.abi import monitor     # the levels, read from bpf_src/lib/events.h
    p.add_argument("--monitor-aggregation", choices=list(monitor.LEVELS),
                   help="how many trace events a connection sends (Cilium's levels; default "
                        "medium: its first packet, new TCP flags, at most every 5 s; none: "
                        "every packet; off: no events at all)")
    p.add_argument("--events-ring-size", type=int, metavar="BYTES",
                   help="size of each BPF node's events ring buffer (a power of two; default "
                        "4194304)")
    p.add_argument("--kube-proxy-masquerade-all", action="store_true",
                   help="kube-proxy's --masquerade-all on iptables / nftables nodes: SNAT all "
                        "traffic sent to a ClusterIP (Cilium has no such setting)")
    p.add_argument("--nodeport-addresses", metavar="CIDR,...",
                   help="kube-proxy's --nodeport-addresses: NodePorts and health-check ports "
                        "answer only on node addresses inside these ranges ('primary': the "
                        "node's own addresses; default: every address for iptables, "
                        "'primary' for nftables)")
    p.add_argument("--renumber", action="store_true",
                   help="map a real cluster's objects (kubectl get -o yaml) into the address "
                        "plan: nodes to cb-node<i>, pod, service, node and external addresses "
                        "renumbered consistently; the mapping is printed and saved in "
                        "/run/chainbench/renumber.json")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("kube-proxy", help="kube-proxy's rule sets, the baselines")
    ksub = p.add_subparsers(dest="kp_command", required=True, metavar="COMMAND")
    c = ksub.add_parser("render", help="print the iptables-restore input or nft script kube-proxy "
                                       "would program for a scenario")
    c.add_argument("--mode", choices=["iptables", "nftables"], required=True)
    c.add_argument("--family", type=int, choices=[4, 6], default=4,
                   help="the proxier's IP family: iptables-restore or ip6tables-restore input, "
                        "table ip or ip6 kube-proxy (default 4)")
    c.add_argument("--node", help="the node whose kube-proxy renders (its name and addresses: "
                                  "the endpoints Local traffic policies use); default none")
    c.add_argument("--cluster-cidr", metavar="CIDR[,CIDR]",
                   help="kube-proxy's --cluster-cidr (traffic from outside it to a ClusterIP is "
                        "masqueraded); default: the plan's pod range, or none for a scenario "
                        "outside the plan (a real cluster's dump), as kube-proxy without it")
    c.add_argument("--service-cidr", metavar="CIDR[,CIDR]",
                   help="the cluster's service CIDRs (nftables drops traffic to unallocated "
                        "ClusterIPs in them); default: the plan's, or none for a scenario "
                        "outside the plan")
    _add_scenario_file(c)
    c.set_defaults(func=cmd_kube_proxy_render)

    p = sub.add_parser("connectivity", help="run the connectivity-check suite on the topology")
    p.add_argument("--datapath", choices=["bpf", "iptables", "nftables"],
                   help="the datapath to judge against (default: the topology's)")
    p.add_argument("--test", action="append", default=[], metavar="REGEX",
                   help="run only checks whose name matches; '!' excludes; repeat it or "
                        "separate with commas (like `cilium connectivity test --test`)")
    p.add_argument("--flow-validation", choices=["strict", "warning", "disabled"],
                   default="strict",
                   help="a check that must fail passes only when the datapath counted the "
                        "expected drop on the expected endpoint and direction (strict, the "
                        "default); warning: without it, pass with a warning; disabled: any "
                        "failure passes")
    p.add_argument("--flows", metavar="FILE",
                   help="write the flows the nodes' observers recorded during the checks to FILE "
                        "(`hubble observe -o json` lines), and require each check to show in "
                        "them: a pass FORWARDED both ways, an expected failure DROPPED for its "
                        "policy reason")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_connectivity)

    p = sub.add_parser("observe", help="flows the nodes' observers recorded (like `hubble "
                                       "observe`)")
    _add_node(p, "only this node's observer (default: every node's, merged by time)")
    p.add_argument("-f", "--follow", action="store_true", help="follow new flows (Ctrl-C ends)")
    p.add_argument("--last", type=int, metavar="N", help="the last N flows (default 20 when "
                                                         "no other range is given)")
    p.add_argument("--first", type=int, metavar="N", help="the first N flows")
    p.add_argument("--all", action="store_true", help="every flow the observers keep")
    p.add_argument("--since", metavar="TIME", help="flows since TIME: RFC 3339 "
                                                   "(2024-05-01T10:00:00Z) or a duration ago (5m)")
    p.add_argument("--until", metavar="TIME", help="flows until TIME (as --since)")
    p.add_argument("-o", "--output", choices=["compact", "dict", "json", "jsonpb", "table"],
                   default="compact", help="compact (default), dict, json (one flow per line, "
                                           "as `hubble observe -o json`), jsonpb, table")
    p.add_argument("--service-map", metavar="OUT.html",
                   help="instead of printing them, draw the selected flows as a service map "
                        "(pods by namespace, services, edges by port and verdict) in OUT.html")
    _add_flow_filters(p)
    p.set_defaults(func=cmd_observe)

    p = sub.add_parser("endpoints", help="endpoints of every node (like `kubectl get cep`)")
    _add_node(p, "only this node (default: every node with pinned maps)")
    _add_output(p)
    p.set_defaults(func=cmd_endpoints)

    p = sub.add_parser("down", help="tear the topology down and remove every namespace, cgroup, "
                                    "pin and state chainbench left behind")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("version", help="chainbench's version, git commit, kernel, libbpf and the "
                                       "clang that built build/")
    _add_output(p)
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("status", help="kernel features, topology, attached programs, pins and map "
                                      "pressure per node, observer (like `cilium status`)")
    _add_output(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("metrics", help="Prometheus metrics of a node, served and scraped "
                                       "inside the node's namespace")
    msub = p.add_subparsers(dest="metrics_command", required=True, metavar="COMMAND")
    c = msub.add_parser("serve", help="serve the node's datapath counters (drops, services, map "
                                      "pressure, conntrack, lost events) on 127.0.0.1:PORT of "
                                      "its namespace, in the foreground")
    _add_node(c, "the node (default: the only one)")
    c.add_argument("--port", type=int, default=9962,
                   help="port (default 9962, the Cilium agent's: the node's observer holds "
                        "Hubble's 9965, where it serves these counters with Hubble's metrics)")
    c.set_defaults(func=cmd_metrics)
    c = msub.add_parser("scrape", help="GET http://127.0.0.1:PORT/metrics inside the node's "
                                       "namespace and print it")
    _add_node(c, "the node (default: the only one)")
    c.add_argument("--port", type=int, default=9965, help="port (default 9965: the node's "
                                                          "observer)")
    c.set_defaults(func=cmd_metrics)

    p = sub.add_parser("completion", help="print the shell completion script (bash: "
                                          "`source <(chainbench completion bash)`)")
    p.add_argument("shell", choices=COMPLETION_SHELLS)
    p.set_defaults(func=cmd_completion)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A process started as a background job of a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it so: Ctrl-C (or CI's SIGINT) would be lost and
    # nothing cleaned up; SIGTERM would end the process at once, leaving everything.
    # Both raise Interrupted instead, so every command unwinds (the children we start
    # get the default dispositions).
    signals.install()
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:          # before the command started (imports)
        return _interrupted(exc)
    finally:
        if argv is None:
            # The command is over (its own signals were handled, or held and handled):
            # a SIGINT/SIGTERM arriving now, while Python shuts down, would only turn
            # its exit code into a signal death (-2, -15) after the work was done.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _interrupted(exc: KeyboardInterrupt) -> int:
    signum = getattr(exc, "signum", signal.SIGINT)
    print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:         # a shell asks for completions: answer and exit
        import argcomplete                  # lazy: ~8 ms, only completion needs it
        argcomplete.autocomplete(parser)
    unknown = _unknown_command(parser, sys.argv[1:] if argv is None else argv)
    if unknown:
        print(f"ERROR: {unknown}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except ChainbenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        code = _binding_error(exc, args.verbose)
        if code is None:
            raise
        return code


def _binding_error(exc: Exception, verbose: bool) -> int | None:
    """The exit code for an error of the libbpf binding, printed in one line (its
    errors stay generic: they do not derive from ChainbenchError); None for another."""
    # lazy: harness.bpf loads libbpf (50 ms); a command whose error came from the
    # binding has loaded it already, any other error pays it once, on the way out.
    from harness.bpf.errors import BpfError, ConfigError, StructMismatchError, VerifierError
    if not isinstance(exc, (BpfError, ConfigError, StructMismatchError)):
        return None
    print(f"ERROR: {exc}", file=sys.stderr)
    if isinstance(exc, VerifierError):
        if verbose:
            print(exc.log, file=sys.stderr)
        else:
            print("       (run with -v for the verifier log)", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
