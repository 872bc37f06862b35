"""Creating and removing a topology: ``up`` and ``down``.

``up`` plans the topology (``plan.py``), refuses to run over leftovers,
records the state in /run/chainbench/topology.json before it creates
anything, then builds inside project namespaces only: the namespaces and
their sysctls, the underlay bridge and the node/world veths (``ip -batch``
per namespace), node routes or the VXLAN overlay, the world, the node
conflists, and finally each pod (namespace + CNI ADD, run by the CNI runtime
inside the node namespace; nodes in parallel, a node's pods in order so
addresses are deterministic).  Any failure, Ctrl-C or SIGTERM while building
undoes everything it made (``teardown``) before the exception propagates.

``teardown`` is the orderly undo: CNI DEL for every pod that reached ADD
(reverse order, per node in parallel), then the topology's namespaces, the
node CNI directories and the state file; it tolerates partial states.
``down`` is ``remove_topology`` followed by ``harness.topology.cleanup.remove_leftovers`` (every other
project leftover).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from harness.errors import ChainbenchError
from harness.topology import cleanup
from harness.host import netns, procs
from harness.topology.conflist import Primary, node_conflist
from harness.topology.cni_runtime import DEFAULT_TIMEOUT, CNIError, CNIRuntime, RuntimeConf, discover_cni_path, \
    host_interfaces, sandbox_addresses
from harness.paths import STATE_ROOT
from harness.scenario import Scenario, load_scenario
from harness.topology.plan import NodePlan, TopologyPlan, plan_topology
from harness.host.signals import undo_on_failure
from harness.topology.state import STATE_PATH, NodeState, PodState, TopologyState, load_state, \
    save_state

Progress = Callable[[str], None]


class TopologyError(ChainbenchError, RuntimeError):
    """Building or removing the topology failed (one line)."""


# --------------------------------------------------------------------- helpers


def _batch(ns: str, lines: Sequence[str], tool: str = "ip") -> None:
    """Run *lines* as ``<tool> -n ns -batch -``; the error names the failing line."""
    if not lines:
        return
    proc = subprocess.run([tool, "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        m = re.search(r"Command failed -:(\d+)", proc.stderr)
        where = f" `{tool} {lines[int(m.group(1)) - 1]}`" if m and int(m.group(1)) <= len(lines) else ""
        first = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else f"exit {proc.returncode}"
        raise TopologyError(f"[{ns}]{where}: {first}")


def _sysctl(ns: str, values: Mapping[str, str]) -> None:
    """Write sysctls inside project namespace *ns* (this thread enters it; checked)."""
    with netns.entered(ns):
        if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(f"/run/netns/{ns}").st_ino:
            raise TopologyError(f"could not enter namespace {ns} to set sysctls")
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)


def _node_dir(node: str) -> str:
    return os.path.join(STATE_ROOT, node)


def _runtime_conf(pod: PodState) -> RuntimeConf:
    """The attachment as kubelet would describe it (same for ADD, CHECK and DEL)."""
    assert pod.container_id and pod.ifname
    return RuntimeConf(
        container_id=pod.container_id, netns=f"/run/netns/{pod.netns}", ifname=pod.ifname,
        args=(("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod.namespace), ("K8S_POD_NAME", pod.name),
              ("K8S_POD_INFRA_CONTAINER_ID", pod.container_id)),
        capability_args=_capability_args(pod))


def _capability_args(pod: PodState) -> dict:
    """runtimeConfig as kubelet passes it: requested IPs, hostPort mappings (portmap);
    each plugin receives only the capabilities it declares."""
    args: dict = {}
    if pod.requested_ips:
        args["ips"] = list(pod.requested_ips)
    if pod.port_mappings:
        args["portMappings"] = [{"hostPort": h, "containerPort": c, "protocol": proto}
                                for h, c, proto in pod.port_mappings]
    return args


def node_runtime(state: TopologyState, node: NodeState, timeout: float = DEFAULT_TIMEOUT) -> CNIRuntime:
    """The CNI runtime that adds/checks/deletes *node*'s pods."""
    return CNIRuntime(node.netns, state.cni_path, cache_dir=node.cni_cache, timeout=timeout)


def pod_runtime_conf(pod: PodState) -> RuntimeConf:
    """The RuntimeConf the topology used for *pod* (for CHECK or a re-run of the chain)."""
    if pod.host_network:
        raise TopologyError(f"pod {pod.ref} uses the host network: it has no CNI attachment")
    return _runtime_conf(pod)


# ---------------------------------------------------------------- leftovers


def leftovers(state_path: str = STATE_PATH) -> list[str]:
    """What stands in the way of ``up``: project namespaces and a topology state file."""
    found = netns.list_project()
    if os.path.exists(state_path):
        found.append(state_path)
    return found


def check_no_leftovers(state_path: str = STATE_PATH) -> None:
    found = leftovers(state_path)
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise TopologyError(f"leftovers of an earlier run ({shown}): run `chainbench down` first")


# ---------------------------------------------------------------------- build


def _initial_state(plan: TopologyPlan, cni_path: list[str]) -> TopologyState:
    nodes = [NodeState(
        name=n.name, index=n.index, netns=n.netns, ipv4=n.ipv4.split("/")[0],
        ipv6=n.ipv6.split("/")[0] if n.ipv6 else None, pod_cidr_v4=n.pod_cidr_v4,
        pod_cidr_v6=n.pod_cidr_v6, uplink=n.uplink,
        conflist=os.path.join(_node_dir(n.name), "cni", "conflist.json"),
        cni_cache=os.path.join(_node_dir(n.name), "cni"),
        vxlan=n.vxlan.dev if n.vxlan else None) for n in plan.nodes]
    by_name = {n.name: n for n in nodes}
    pods = []
    for p in plan.pods:
        if p.host_network:
            node = by_name[p.node]
            pods.append(PodState(p.namespace, p.name, p.node, node.netns, True, ipv4=node.ipv4,
                                 ipv6=node.ipv6, status="ready"))
        else:
            pods.append(PodState(p.namespace, p.name, p.node, p.netns, False, container_id=p.container_id,
                                 ifname=p.ifname, requested_ips=list(p.requested_ips),
                                 port_mappings=[list(m) for m in p.port_mappings]))
    return TopologyState(
        routing=plan.routing, datapath=plan.datapath, ipv6=plan.ipv6, scenario=plan.scenario,
        cni_path=cni_path, underlay_netns=plan.underlay_netns,
        world={"netns": plan.world.netns, "ipv4": plan.world.ipv4.split("/")[0],
               "ipv6": plan.world.ipv6.split("/")[0] if plan.world.ipv6 else None},
        nodes=nodes, pods=pods)


def _node_lines(node: NodePlan, ipv6: bool) -> tuple[list[str], list[str]]:
    """(ip lines, bridge lines) that configure a node's uplink, tunnel and routes."""
    ip = [f"link set {node.uplink} up", f"addr add {node.ipv4} dev {node.uplink}"]
    if ipv6 and node.ipv6:
        ip.append(f"addr add {node.ipv6} dev {node.uplink} nodad")
    fdb = []
    if node.vxlan:
        vx = node.vxlan
        ip += [f"link add {vx.dev} type vxlan id {vx.vni} dstport {vx.port} local {vx.local} "
               f"dev {node.uplink} nolearning",
               f"link set dev {vx.dev} address {vx.mac} mtu {vx.mtu} up",
               f"addr add {vx.address} dev {vx.dev}"]
        ip += [f"neigh replace {n.ip} lladdr {n.lladdr} dev {n.dev} nud permanent" for n in vx.neighbors]
        fdb = [f"fdb append {e.lladdr} dev {e.dev} dst {e.dst} self permanent" for e in vx.fdb]
    ip += [" ".join(r.args()) for r in node.routes]
    return ip, fdb


def _build_network(plan: TopologyPlan, progress: Progress) -> None:
    progress("namespaces")
    for ns in [plan.underlay_netns, plan.world.netns, *(n.netns for n in plan.nodes)]:
        netns.create(ns)
    v6 = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"} if plan.ipv6 else {}
    for node in plan.nodes:
        forwarding = {"net.ipv4.ip_forward": "1"}
        if plan.ipv6:
            forwarding["net.ipv6.conf.all.forwarding"] = "1"
        _sysctl(node.netns, {**v6, **forwarding})
    if v6:
        _sysctl(plan.world.netns, v6)

    progress("underlay")
    lines = [f"link add {plan.bridge} type bridge", f"link set {plan.bridge} up"]
    for port, peer_ns in [*((n.underlay_port, n.netns) for n in plan.nodes),
                          (plan.world.underlay_port, plan.world.netns)]:
        lines += [f"link add {port} type veth peer name {plan.world.uplink} netns {peer_ns}",
                  f"link set {port} master {plan.bridge}", f"link set {port} up"]
    _batch(plan.underlay_netns, lines)

    progress("routes")
    for node in plan.nodes:
        ip_lines, fdb_lines = _node_lines(node, plan.ipv6)
        _batch(node.netns, ip_lines)
        _batch(node.netns, fdb_lines, tool="bridge")

    progress("world")
    world = plan.world
    lines = [f"link set {world.uplink} up", f"addr add {world.ipv4} dev {world.uplink}"]
    if world.ipv6:
        lines.append(f"addr add {world.ipv6} dev {world.uplink} nodad")
    lines += [" ".join(r.args()) for r in world.routes]
    _batch(world.netns, lines)


def _node_plugins(node: str, portmap: bool, chained: Sequence[Mapping[str, Any]],
                  per_node: Mapping[str, NodePlugins] | None) -> tuple[bool, Sequence]:
    if per_node and node in per_node:
        return per_node[node].portmap, per_node[node].chained
    return portmap, chained


def _write_conflists(plan: TopologyPlan, state: TopologyState, primary: Primary, portmap: bool,
                     chained: Sequence[Mapping[str, Any]],
                     per_node: Mapping[str, NodePlugins] | None = None) -> dict[str, dict]:
    out = {}
    for node, ns in zip(plan.nodes, state.nodes):
        node_portmap, node_chained = _node_plugins(node.name, portmap, chained, per_node)
        if per_node and node.name in per_node:
            ns.datapath = per_node[node.name].datapath
        conf = node_conflist(node.index, ipv6=plan.ipv6, mtu=node.pod_mtu, primary=primary,
                             portmap=node_portmap, chained=node_chained)
        os.makedirs(os.path.dirname(ns.conflist), exist_ok=True)
        with open(ns.conflist, "w") as f:
            json.dump(conf, f, indent=1)
        out[node.name] = conf
    return out


def _record_result(pod: PodState, result: dict) -> None:
    hosts = host_interfaces(result)     # ptp: [veth]; bridge: [bridge, veth]
    pod.host_ifname = hosts[-1]["name"] if hosts else None
    sandbox = next((i for i in result.get("interfaces", [])
                    if i.get("sandbox") and i["name"] == pod.ifname), None)
    pod.mac = sandbox.get("mac") if sandbox else None
    for addr in sandbox_addresses(result, pod.ifname):
        if addr.version == 4 and pod.ipv4 is None:
            pod.ipv4 = str(addr.ip)
        elif addr.version == 6 and pod.ipv6 is None:
            pod.ipv6 = str(addr.ip)


def _add_pods(plan: TopologyPlan, state: TopologyState, conflists: dict[str, dict], progress: Progress,
              save: Callable[[], None], timeout: float) -> None:
    work: dict[str, list[PodState]] = {}
    for pod in state.pods:
        if not pod.host_network:
            work.setdefault(pod.node, []).append(pod)
    for pods in work.values():     # requested addresses first, so dynamic ones never take them
        pods.sort(key=lambda p: not p.requested_ips)
    cancel = threading.Event()
    dad_off = {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}

    def add_node_pods(node: NodeState, pods: list[PodState]) -> None:
        runtime = node_runtime(state, node, timeout)
        for pod in pods:
            if cancel.is_set():
                return
            progress(f"pod {pod.ref}")
            pod.status = "adding"
            save()
            netns.create(pod.netns)
            if plan.ipv6:
                _sysctl(pod.netns, dad_off)
            result = runtime.add(conflists[node.name], _runtime_conf(pod))
            _record_result(pod, result)
            pod.status = "ready"
            save()

    if not work:
        return
    pool = ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="cb-cni")
    try:
        futures = [pool.submit(add_node_pods, state.node(name), pods) for name, pods in work.items()]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)   # all of them, unless one failed
        for f in done:
            f.result()
    finally:
        cancel.set()
        _join(pool)


def _join(pool: ThreadPoolExecutor) -> None:
    """Wait for the workers even through further Ctrl-C: the undo must not race a running ADD."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            continue


@dataclass(frozen=True)
class NodePlugins:
    """One node's own chain (a topology whose nodes run different datapaths)."""
    datapath: str
    portmap: bool = False
    chained: tuple[Mapping[str, Any], ...] = ()


def build(plan: TopologyPlan, *, primary: Primary = "ptp", portmap: bool = False,
          chained: Sequence[Mapping[str, Any]] = (), cni_path: Sequence[str] | None = None,
          progress: Progress | None = None, timeout: float = DEFAULT_TIMEOUT,
          state_path: str = STATE_PATH,
          per_node: Mapping[str, NodePlugins] | None = None) -> TopologyState:
    """Create *plan*; return its recorded state.  Undone entirely on any failure or interrupt.

    *chained* plugin entries follow the primary CNI in every node's conflist;
    *cni_path* directories are searched before the system's plugins (where a
    chained plugin's executable lives).  *progress* is called with each step
    ("namespaces", "underlay", "routes", "world", "pod NS/NAME", "done"),
    from worker threads for pods.
    """
    check_no_leftovers(state_path)
    report = progress or (lambda _step: None)
    cni_dirs = [*(cni_path or ()), *discover_cni_path()]
    # Every plugin must be there before anything is made.
    probe = CNIRuntime(plan.nodes[0].netns, cni_dirs)
    for node in plan.nodes:
        node_portmap, node_chained = _node_plugins(node.name, portmap, chained, per_node)
        for plugin in node_conflist(node.index, primary=primary, portmap=node_portmap,
                                    chained=node_chained)["plugins"]:
            probe.find_plugin(plugin["type"])
            if "ipam" in plugin:
                probe.find_plugin(plugin["ipam"]["type"])
    state = _initial_state(plan, cni_dirs)
    lock = threading.Lock()

    def save() -> None:
        with lock:
            save_state(state, state_path)

    save()
    with undo_on_failure(lambda: remove_topology(state, state_path=state_path)):
        _build_network(plan, report)
        conflists = _write_conflists(plan, state, primary, portmap, chained, per_node)
        _add_pods(plan, state, conflists, report, save, timeout)
        state.complete = True
        save()
        report("done")
    return state


def up(scenario_path: str | os.PathLike[str] | Scenario, nodes: int | None = None,
       routing: str = "native", datapath: str = "bpf", *, ipv6: bool | None = None,
       primary: Primary = "ptp", portmap: bool = False, chained: Sequence[Mapping[str, Any]] = (),
       cni_path: Sequence[str] | None = None, progress: Progress | None = None,
       timeout: float = DEFAULT_TIMEOUT,
       per_node: Mapping[str, NodePlugins] | None = None) -> TopologyState:
    """``chainbench up -f SCENARIO [--nodes N] [--routing native|vxlan] [--datapath ...]``.

    Raises ScenarioError (bad file), PlanError (options that make no
    topology), TopologyError (leftovers, or a build step failed), CNIError (a
    plugin failed).  *datapath* is recorded only; the chained plugin attaches it.
    """
    scenario = scenario_path if isinstance(scenario_path, Scenario) else load_scenario(scenario_path)
    plan = plan_topology(scenario, nodes, routing, datapath, ipv6)
    return build(plan, primary=primary, portmap=portmap, chained=chained, cni_path=cni_path,
                 progress=progress, timeout=timeout, per_node=per_node)


# ------------------------------------------------------------ remove_topology


def remove_topology(state: TopologyState | None = None, *, state_path: str = STATE_PATH,
             timeout: float = DEFAULT_TIMEOUT) -> dict[str, list[str]]:
    """Undo a topology (the recorded one by default): CNI DEL, namespaces, files.

    Returns {"pods": refs deleted through CNI, "errors": one line each,
    "namespaces": namespaces removed}.  Never raises for a partial state.
    """
    if state is None:
        try:
            state = load_state(state_path)
        except (ValueError, TypeError, KeyError) as exc:
            _remove(state_path)
            return {"pods": [], "errors": [f"{state_path}: unreadable ({exc})"], "namespaces": []}
        if state is None:
            return {"pods": [], "errors": [], "namespaces": []}
    deleted: list[str] = []
    errors: list[str] = []

    def del_node_pods(node: NodeState) -> None:
        pods = [p for p in state.pods if p.node == node.name and not p.host_network
                and p.status != "pending"]
        if not pods or not netns.exists(node.netns) or not os.path.exists(node.conflist):
            return
        try:
            runtime = node_runtime(state, node, timeout)
            with open(node.conflist) as f:
                conf = f.read()
        except (OSError, CNIError, ValueError) as exc:
            errors.append(f"{node.name}: {exc}")
            return
        for pod in reversed(pods):
            try:
                runtime.delete(conf, _runtime_conf(pod))
                deleted.append(pod.ref)
            except CNIError as exc:
                errors.append(f"{pod.ref}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, len(state.nodes)), thread_name_prefix="cb-cni-del") as pool:
        for f in [pool.submit(del_node_pods, n) for n in state.nodes]:
            f.result()

    removed = []
    for ns in state.namespaces():
        try:
            if netns.exists(ns):
                netns.delete(ns)
                removed.append(ns)
        except netns.NetnsError as exc:
            errors.append(str(exc))
    for node in state.nodes:
        shutil.rmtree(node.cni_cache, ignore_errors=True)
        shutil.rmtree(os.path.join(_node_dir(node.name), "ipam"), ignore_errors=True)
        try:
            os.rmdir(_node_dir(node.name))
        except OSError:
            pass                   # other state (endpoints.json) lives there too
    _remove(state_path)
    try:
        os.rmdir(os.path.dirname(state_path))
    except OSError:
        pass                       # not empty: other commands' state
    return {"pods": deleted, "errors": errors, "namespaces": removed}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def down() -> dict[str, list[str]]:
    """``chainbench down``: the recorded processes first (a CNI plugin orphaned by a
    killed ``up`` would otherwise race the teardown), the orderly teardown, then every
    other project leftover.

    Returns {"processes", "pods", "errors", "namespaces", "cgroups", "pins", "states",
    "temp dirs", "sysctls"}.
    """
    ended = procs.end_all()
    summary = remove_topology()
    rest = cleanup.remove_leftovers()
    return {"processes": ended["processes"] + rest.get("processes", []),
            "pods": summary["pods"], "errors": summary["errors"],
            "namespaces": summary["namespaces"] + rest["namespaces"], "cgroups": rest["cgroups"],
            "pins": rest["pins"], "states": rest["states"],
            "temp dirs": ended["temp dirs"] + rest.get("temp dirs", []),
            "sysctls": rest.get("sysctls", [])}
