"""What ``chainbench status`` reports, like ``cilium status``: the kernel's BPF
features, the topology (if one is up), each node's attached programs, pinned
objects and map pressure, and the flow observer's state.

Everything is read from the system as it is now: kernel symbols and sysctls,
bpffs pins, ``bpftool`` inside each node namespace (tc attachments) and on each
node's host cgroup (socket LB).  Map pressure is entries in use over max
entries, as Cilium's ``cilium_bpf_map_pressure`` metric; arrays are always full
and have none.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from harness.bpf import Map
from harness.bpf.errors import BpfError
from harness.host import bpffs
from harness.host.cgroups import cgroup2_mount, host_cgroup
from harness.node import datapath
from harness.node.node import Node
from harness import paths
from harness.topology.state import load_state

#: Map types whose size is fixed (every slot exists): no pressure.
_FIXED_SIZE = {"array", "percpu_array", "prog_array", "perf_event_array", "cgroup_array",
               "array_of_maps", "ringbuf", "devmap", "cpumap", "xskmap"}


@dataclass
class Feature:
    name: str
    available: bool
    detail: str


@dataclass
class MapPressure:
    name: str
    type: str
    entries: int | None          # None: a fixed-size map, not counted
    max_entries: int

    @property
    def pressure(self) -> float | None:
        if self.entries is None or not self.max_entries:
            return None
        return self.entries / self.max_entries

    def to_json(self) -> dict:
        return {**asdict(self), "pressure": self.pressure}


@dataclass
class AttachedProgram:
    program: str
    hook: str                    # tc ingress/egress, xdp, cgroup attach type
    target: str                  # device or cgroup
    id: int | None = None


@dataclass
class NodeStatus:
    name: str
    pinned: bool
    datapath: str | None                     # the topology's datapath for the node
    programs: list[AttachedProgram] = field(default_factory=list)
    maps: list[MapPressure] = field(default_factory=list)
    pinned_links: int = 0
    endpoints: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "pinned": self.pinned, "datapath": self.datapath,
                "programs": [asdict(p) for p in self.programs],
                "maps": [m.to_json() for m in self.maps], "pinned_links": self.pinned_links,
                "endpoints": self.endpoints, "errors": self.errors}


# --- kernel features -------------------------------------------------------------

def _kallsyms_has(*names: str) -> bool:
    return all(paths.kernel_has(n) for n in names)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _module_available(name: str) -> bool:
    base = f"/lib/modules/{platform.release()}"
    for root, _, files in os.walk(os.path.join(base, "kernel", "net", "sched")):
        if any(f.split(".")[0] == name for f in files):
            return True
    return False


def kernel_features() -> list[Feature]:
    """The kernel facilities the datapath uses, and whether this kernel has them."""
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    jit = _read("/proc/sys/net/core/bpf_jit_enable")
    try:
        cgroup2 = cgroup2_mount()
    except (OSError, RuntimeError):
        cgroup2 = None
    clsact = _kallsyms_has("clsact_init") or _module_available("sch_ingress")
    unpriv = _read("/proc/sys/kernel/unprivileged_bpf_disabled")
    return [
        Feature("BTF", btf, "/sys/kernel/btf/vmlinux" + ("" if btf else " missing: no CO-RE")),
        Feature("bpffs", bpffs.is_mounted(), f"{bpffs.MOUNT_POINT} "
                + ("mounted" if bpffs.is_mounted() else "not mounted (mounted on first use)")),
        Feature("JIT", jit not in (None, "0"), f"bpf_jit_enable={jit}" if jit else "unknown"),
        Feature("tc clsact", clsact, "pod veth and uplink programs (tc ingress/egress)"),
        Feature("tcx", _kallsyms_has("tcx_prog_attach"), "tcx links (6.6+); tc clsact is used"),
        Feature("bpf_loop", _kallsyms_has("bpf_loop"),
                "5.17+; without it the netdev-nobpfloop build is loaded"),
        Feature("cgroup BPF", bool(cgroup2) and _kallsyms_has("__cgroup_bpf_run_filter_sock_addr"),
                "socket LB on cgroup v2 connect/sendmsg/recvmsg/getpeername"
                + (f" ({cgroup2})" if cgroup2 else " (no cgroup v2 mount)")),
        Feature("ring buffer", _kallsyms_has("bpf_ringbuf_output"), "BPF ring buffer (5.8+)"),
        Feature("unprivileged BPF", unpriv == "0",
                f"unprivileged_bpf_disabled={unpriv}" if unpriv is not None else "unknown"),
    ]


# --- nodes -------------------------------------------------------------------------

def map_pressure(node: str) -> list[MapPressure]:
    """Every map pinned for *node*: entries in use / max entries."""
    directory = Node(node).pin_dir
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        try:
            m = Map.from_pin(path)
        except BpfError:
            continue                 # a pinned program or link, not a map
        try:
            if not _is_map_fd(m.fd):
                continue             # a pinned program or link: not a map
            entries = None if m.type in _FIXED_SIZE else len(m)
            out.append(MapPressure(name, m.type, entries, m.max_entries))
        finally:
            m.close()
    return out


def _is_map_fd(fd: int) -> bool:
    text = _read(f"/proc/self/fdinfo/{fd}") or ""
    return any(line.startswith("map_type:") for line in text.splitlines())


def _bpftool(*args: str, netns: str | None = None) -> list | dict:
    cmd = ["bpftool", "-j", *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(proc.stderr or proc.stdout).strip()}")
    return json.loads(proc.stdout or "[]")


def _prog_name(raw: str) -> str:
    return raw.split(":[", 1)[0]        # bpftool 7.1 prints "name:[id]"


def attached_programs(netns: str, cgroup: str | None) -> list[AttachedProgram]:
    """Programs attached in the node namespace (tc, xdp) and on its host cgroup."""
    out = []
    for dev in _bpftool("net", "show", netns=netns):
        for t in dev.get("tc", []):
            out.append(AttachedProgram(_prog_name(t.get("name", "?")),
                                       "tc " + t.get("kind", "").removeprefix("clsact/"),
                                       t.get("devname", "?"), t.get("id")))
        for x in dev.get("xdp", []):
            out.append(AttachedProgram(_prog_name(x.get("name", "?")), "xdp",
                                       x.get("devname", "?"), x.get("id")))
    if cgroup and os.path.isdir(cgroup):
        for c in _bpftool("cgroup", "show", cgroup):
            out.append(AttachedProgram(c.get("name", "?"), c.get("attach_type", "?"),
                                       os.path.basename(cgroup), c.get("id")))
    return out


def node_status(name: str, topology=None) -> NodeStatus:
    home = Node(name)
    node = None
    if topology is not None:
        node = next((n for n in topology.nodes if n.name == name), None)
    pinned = home.is_pinned
    kind = (node.datapath or topology.datapath) if node is not None else None
    status = NodeStatus(name, pinned, kind)
    if pinned:
        status.maps = map_pressure(name)
        links = os.path.join(home.pin_dir, "links")
        status.pinned_links = len(os.listdir(links)) if os.path.isdir(links) else 0
    status.endpoints = len(home.endpoints.records)
    if node is not None:
        if shutil.which("bpftool") is None:
            status.errors.append("bpftool is not installed: attached programs unknown")
        else:
            try:
                status.programs = attached_programs(node.netns, host_cgroup(name))
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                status.errors.append(f"attached programs: {exc}")
    return status


def observers(nodes: list[NodeStatus]) -> list[dict]:
    """Each BPF node's flow observer: its supervisor's state (harness.observe.supervise),
    restarts, and whether the node's cb_events ring buffer is pinned for it to read."""
    from harness.observe import supervise, where   # lazy: only status reads them
    out = []
    for n in nodes:
        home = Node(n.name)
        doc = supervise.status(home)
        if doc is None and n.datapath not in ("bpf", None):
            continue
        out.append({"node": n.name, "running": bool(doc and doc["running"]),
                    "observer_running": bool(doc and doc["observer_running"]),
                    "pid": doc.get("pid") if doc else None,
                    "observer_pid": doc.get("observer_pid") if doc else None,
                    "restarts": doc.get("restarts", 0) if doc else 0,
                    "last_exit": doc.get("last_exit") if doc else None,
                    "socket": where.socket_target(home),
                    "events_pinned": os.path.exists(where.events_pin(home))})
    return out


def observer(nodes: list[NodeStatus], found: list[dict] | None = None) -> str:
    """The flow observers' state in one line."""
    found = observers(nodes) if found is None else found
    if not found:
        return "none (no BPF node)"
    parts = []
    for o in found:
        if not o["running"]:
            state = "not running"
        else:
            state = (f"running (supervisor {o['pid']}, observer "
                     f"{o['observer_pid'] if o['observer_running'] else 'restarting'}, "
                     f"{o['restarts']} restart{'s' if o['restarts'] != 1 else ''}"
                     + (f", last exit {o['last_exit']}" if o["last_exit"] is not None else "")
                     + ")")
            if not o["events_pinned"]:
                state += ", no cb_events ring buffer pinned: the datapath emits no flow events"
        parts.append(f"{o['node']} {state}")
    return "; ".join(parts)


def collect() -> dict:
    """The whole status as one document (the CLI renders it)."""
    topology = load_state()
    names = sorted(set(datapath.pinned_nodes())
                   | {n.name for n in (topology.nodes if topology else [])})
    nodes = [node_status(n, topology) for n in names]
    found = observers(nodes)
    topo = None
    if topology is not None:
        pods = [p for p in topology.pods if not p.host_network]
        topo = {"scenario": topology.scenario, "routing": topology.routing,
                "datapath": topology.datapath, "nodes": len(topology.nodes), "pods": len(pods),
                "pods_ready": sum(p.status == "ready" for p in pods),
                "complete": topology.complete}
    return {"kernel": {"release": platform.release(),
                       "features": [asdict(f) for f in kernel_features()]},
            "topology": topo, "pin_root": bpffs.PIN_ROOT,
            "pinned": os.path.isdir(bpffs.PIN_ROOT) and bool(datapath.pinned_nodes()),
            "observer": observer(nodes, found), "observers": found,
            "nodes": [n.to_json() for n in nodes]}
