"""``chainbench-cni``: the chained CNI plugin, listed after the primary plugin
in a node's conflist as ``cilium-cni`` is in chaining mode.

ADD reads ``prevResult`` (the host-side veth is ``interfaces[0]``, the pod's
addresses are ``ips``), creates the endpoint (an id in the node's registry),
writes the endpoint (id, addresses) into the node's ``cb_endpoint_config`` under
the veth's ifindex and attaches the node's pinned ``from_container`` (tc
ingress) and ``to_container`` (tc egress) to the host veth: the node loads its
lxc object once (``up``, or the first ADD), not once per pod (harness.node.node).
It programs the node's LB, ipcache and policy, and returns ``prevResult``
unchanged.  DEL undoes it; CHECK verifies the programs are attached, the veth's
entry names the endpoint and the endpoint is known.

A pod annotated ``chainbench.io/chaining: skip`` stands for one created
before chaining was enabled: it gets no programs and stays unmanaged (still
reachable and load-balanced to, without policy or LB of its own traffic).

Who an attachment is for comes from what the runtime passes.  Kubernetes
runtimes pass ``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME`` in ``CNI_ARGS``: the
endpoint is that scenario pod.  Runtimes outside Kubernetes pass neither, or
(podman 4's CNI backend) ``IgnoreUnknown=1;K8S_POD_NAME=<container name>``
without a namespace: the endpoint is the container ``container:<name>``
(named by the first 12 characters of ``CNI_CONTAINERID`` when no name is
passed), labelled ``container:name=<name>`` and given Cilium's
``reserved:unmanaged`` identity (3): it is in no scenario, so no label set
and no policy selects it.  It is load-balanced like a pod (the same programs
on its veth) and policed as the ``unmanaged`` entity at its peers (every
node's ipcache maps its addresses to identity 3, see harness/policy/desired.py).
With neither a pod nor a container id ADD fails with one line.

DEL always completes (CNI spec: missing information, a veth or netns already
gone, no prevResult, a second DEL): it finds the endpoint by the attachment
(``CNI_CONTAINERID``, ``CNI_IFNAME``) that made it, else by the names above,
and does nothing when there is none; failing to re-sync the maps afterwards
is reported on stderr, not as an error.

What ADD needs besides ``prevResult`` it reads from the node's own state
directory (harness.node.node.Node): the node's record (harness.node.record,
written by ``chainbench up``: which pods are the scenario's and which are
skipped, whether the node is synced yet, and, to sync, the cluster as the
node knows it), its settings, its endpoint registry.  It parses no scenario
and reads no topology: the pod's addresses are ``prevResult.ips``.

Plugin configuration keys: ``datapath`` (``bpf``; anything else: pass
through), ``node`` (optional: by default the node is the ``cb-node*`` network
namespace the plugin runs in), ``deferSync`` (true while ``chainbench up``
adds many pods: it syncs every node once at the end instead of once per pod;
once the topology is complete, an ADD with the node's conflist, e.g. a
runtime's, syncs at once).  Errors are CNI error objects on stdout with a
non-zero exit.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from harness.bpf import attach_tc
from harness.host import netns
from harness.node.endpoints import CONTAINER_PREFIX, NOT_READY, UNMANAGED, WAITING_FOR_IDENTITY, \
    EndpointConflict, EndpointRecord, EndpointRegistry
from harness.node.node import Node
from harness.node.rodata import endpoint_config

CNI_VERSION = "1.0.0"
#: A container name as runtimes allow it (podman, docker: [a-zA-Z0-9][a-zA-Z0-9_.-]*).
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,252}$")
#: Plugin-specific error codes (the spec leaves 100+ to plugins).
ERR_NOT_ATTACHED, ERR_NAME_TAKEN = 100, 101


class PluginError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


@dataclass(frozen=True)
class Attachment:
    """Who the runtime attaches: a scenario pod (``ns/name``) or a container outside
    Kubernetes (``container:<name>``, with its runtime labels)."""
    ref: str
    container_id: str
    ifname: str
    labels: tuple[str, ...] = ()

    @property
    def external(self) -> bool:
        return self.ref.startswith(CONTAINER_PREFIX)


def _args() -> dict[str, str]:
    out = {}
    for item in os.environ.get("CNI_ARGS", "").split(";"):
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out


def _node(conf: dict) -> str:
    """The node this plugin runs for: configured, or the cb-node namespace it runs in."""
    if conf.get("node"):
        return conf["node"]
    mine = os.stat("/proc/self/ns/net").st_ino
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    for name in sorted(names):
        if name.startswith("cb-node") and os.stat(f"/run/netns/{name}").st_ino == mine:
            return name
    raise PluginError(7, "cannot tell the node: not run in a cb-node* namespace and no 'node' "
                         "in the plugin config")


def _attachment() -> Attachment:
    """The attachment named by CNI_ARGS and CNI_CONTAINERID (see the module docstring)."""
    args = _args()
    cid = os.environ.get("CNI_CONTAINERID", "")
    ifname = os.environ.get("CNI_IFNAME", "")
    ns, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if ns and name:
        return Attachment(f"{ns}/{name}", cid, ifname)
    if ns:
        raise PluginError(4, "CNI_ARGS has K8S_POD_NAMESPACE without K8S_POD_NAME")
    if not cid:
        raise PluginError(4, "CNI_ARGS names no Kubernetes pod and CNI_CONTAINERID is empty: "
                             "nothing to name the endpoint by")
    if name and not _CONTAINER_NAME.match(name):
        raise PluginError(4, f"CNI_ARGS K8S_POD_NAME {name!r} is not a container name")
    return Attachment(CONTAINER_PREFIX + (name or cid[:12]), cid, ifname,
                      (f"container:name={name}",) if name else ())


def _host_veth(prev: dict) -> str:
    interfaces = prev.get("interfaces") or []
    host = next((i for i in interfaces if not i.get("sandbox")), None)
    if host is None:
        raise PluginError(7, "prevResult has no host-side interface (chain after ptp or bridge)")
    return host["name"]


def _pod_addresses(prev: dict) -> tuple[str | None, str | None]:
    """The pod's IPv4 and IPv6 addresses as the primary plugin assigned them (prevResult
    ``ips``, CIDR notation): what the pod's packets must carry as their source."""
    found: dict[int, str] = {}
    for entry in prev.get("ips") or []:
        try:
            addr = ipaddress.ip_interface(entry["address"]).ip
        except (KeyError, TypeError, ValueError):
            raise PluginError(7, f"prevResult has an unreadable address: {entry!r}") from None
        found.setdefault(addr.version, str(addr))
    return found.get(4), found.get(6)


def _tc_filters(ifname: str, direction: str) -> str:
    proc = subprocess.run(["tc", "filter", "show", "dev", ifname, direction],
                          capture_output=True, text=True)
    return proc.stdout


def _sync(node: Node) -> None:
    """Program *node*'s maps from the cluster its record holds (what ``up`` synced it from)."""
    # Imported here: the sync's control planes (harness.lb, harness.policy, the scenario
    # model) are most of the plugin's start-up (-X importtime), and an ADD during `up`
    # (deferSync) never syncs.
    from harness.node.sync import sync_node
    scenario = node.record.cluster()
    if scenario is None:
        raise PluginError(7, f"{node.name} has no cluster record to sync from "
                             "(`chainbench up` writes it once the node is synced)")
    sync_node(node.name, scenario)


def _sync_other_nodes(node: Node) -> None:
    """Re-sync every other BPF node of the topology: a container's address is in
    every node's ipcache."""
    # lazy: harness.node.datapath brings the control planes (see _sync)
    from harness.node.datapath import pinned_nodes
    for name in pinned_nodes():
        other = Node(name)
        if other != node and other.record.cluster_exists():
            with other.lock():
                _sync(other)


def _fill(registry: EndpointRegistry, who: Attachment, **fields) -> EndpointRecord:
    """The attachment's endpoint record, filled in with *fields*."""
    try:
        return registry.fill(who.ref, attachment=(who.container_id, who.ifname),
                             labels=who.labels, **fields)
    except EndpointConflict as exc:
        raise PluginError(ERR_NAME_TAKEN, str(exc)) from None


def _no_ipv6(ifname: str) -> None:
    """A pod without an IPv6 address may send no IPv6 (the source check drops it, 132),
    yet its kernel gives the interface a link-local address and sends MLD reports from
    it: turn IPv6 off on the pod's interface (only there: ``::1`` on lo stays), as
    CNIs do for IPv4-only pods, so the endpoint's drop counters carry no such noise."""
    path = os.environ.get("CNI_NETNS", "")
    if not path or not ifname:
        return
    try:
        with netns.entered_path(path), \
                open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError as exc:
        _warn(f"{ifname}: IPv6 left on ({exc.strerror or exc})")


def cmd_add(conf: dict, prev: dict) -> dict:
    who = _attachment()
    if conf.get("datapath", "bpf") != "bpf":
        return prev
    node = Node(_node(conf))
    veth = _host_veth(prev)
    ipv4, ipv6 = _pod_addresses(prev)
    pods, complete = node.record.read()
    if not who.external and who.ref not in pods:
        raise PluginError(7, f"pod {who.ref} is not in the scenario",
                          f"{node.record.pods_path} does not list it")
    if not who.external and pods[who.ref]:        # annotated chainbench.io/chaining: skip
        with node.lock():
            registry = node.endpoints
            _fill(registry, who, state=UNMANAGED, interface=veth, ipv4=ipv4, ipv6=ipv6)
            registry.save()
        return prev
    # deferSync: `chainbench up` syncs every node once its pods are in; after that
    # (a runtime using the node's conflist) nobody would, so sync now.
    sync = not conf.get("deferSync") or complete
    with node.lock():
        registry = node.endpoints
        # Recorded (its id reserved) before anything is attached; ready only once the
        # programs are attached and the node's sync has set its identity (endpoints.py).
        rec = _fill(registry, who, state=NOT_READY, interface=veth, ipv4=ipv4, ipv6=ipv6)
        registry.save()
        if ipv6 is None:
            _no_ipv6(who.ifname)
        node.recover()              # a map change a killed writer left, first
        node.ensure_lxc_programs()  # loaded by `up`; here only for a node it did not set up
        # The entry before the programs: a shared program on a veth without one drops.
        node.set_endpoint_config(netns.ifindex(veth), rec.id, rec.ipv4, rec.ipv6)
        with node.lxc_programs() as programs:
            for program, direction in programs:
                attach_tc(program, veth, direction)
        registry.fill(who.ref, state=WAITING_FOR_IDENTITY)
        registry.save()
        if sync:
            _sync(node)
    if sync and who.external:
        _sync_other_nodes(node)
    return prev


def _find(registry: EndpointRegistry) -> EndpointRecord | None:
    """The endpoint this DEL/CHECK is about: by attachment, else by name (a record made
    by another attachment of the same name is not this one)."""
    cid = os.environ.get("CNI_CONTAINERID", "")
    ifname = os.environ.get("CNI_IFNAME", "") or None
    rec = registry.attachment(cid, ifname) if cid else None
    if rec is not None:
        return rec
    try:
        who = _attachment()
    except PluginError:
        return None
    rec = registry.records.get(who.ref)
    if rec is not None and rec.container_id and cid and rec.container_id != cid:
        return None
    return rec


def cmd_del(conf: dict, prev: dict | None) -> None:
    """Best effort, always succeeding (see the module docstring)."""
    if conf.get("datapath", "bpf") != "bpf":
        return
    try:
        node = Node(_node(conf))
    except PluginError:
        return                 # not run for a node: nothing of ours to undo
    if not node.has_state:
        return                 # the node's state is gone (chainbench down): nothing left
    with node.lock():
        registry = node.endpoints
        rec = _find(registry)
        if rec is None:
            return
        registry.remove(rec.pod)
        registry.save()
        if rec.interface:
            # The veth may be gone already (DEL must succeed regardless).
            subprocess.run(["tc", "qdisc", "del", "dev", rec.interface, "clsact"],
                           capture_output=True)
        if node.is_pinned:
            node.remove_endpoint_config(rec.id)
        if not (node.is_pinned and node.record.cluster_exists()):
            return             # not synced by `up` yet: its sync will leave the pod out
        try:
            _sync(node)
        except Exception as exc:   # noqa: BLE001 - DEL completes; the next sync catches up
            _warn(f"DEL {rec.pod}: {node.name} not re-synced: {exc}")
            return
    if rec.external:
        try:
            _sync_other_nodes(node)
        except Exception as exc:   # noqa: BLE001
            _warn(f"DEL {rec.pod}: other nodes not re-synced: {exc}")


def _warn(text: str) -> None:
    print(f"chainbench-cni: {text.splitlines()[0] if text else text}", file=sys.stderr)


def cmd_check(conf: dict, prev: dict) -> None:
    if conf.get("datapath", "bpf") != "bpf":
        return
    node = Node(_node(conf))
    rec = _find(node.endpoints)
    if rec is None:
        who = _attachment()
        raise PluginError(3, f"endpoint {who.ref} is not known on {node.name}")
    if rec.state == UNMANAGED:
        return
    veth = _host_veth(prev)
    if rec.interface and veth != rec.interface:
        raise PluginError(ERR_NOT_ATTACHED, f"endpoint {rec.pod}: prevResult names {veth}, "
                                            f"the endpoint is on {rec.interface}")
    if "from_container" not in _tc_filters(veth, "ingress") or \
            "to_container" not in _tc_filters(veth, "egress"):
        raise PluginError(ERR_NOT_ATTACHED, f"endpoint {rec.pod}: programs are not attached "
                                            f"to {veth}")
    try:
        config = node.endpoint_config(netns.ifindex(veth))
    except netns.NetnsError:
        config = None
    if config is None or bytes(config) != bytes(endpoint_config(rec.id, rec.ipv4, rec.ipv6)):
        raise PluginError(ERR_NOT_ATTACHED, f"endpoint {rec.pod}: the datapath has no entry "
                                            f"for {veth} naming endpoint {rec.id} and its "
                                            "addresses")
    with node.open_pinned() as maps:
        info = maps["cb_endpoints"].get(rec.id) if "cb_endpoints" in maps else None
    if info is None or not info.identity or info.identity != rec.identity:
        raise PluginError(ERR_NOT_ATTACHED, f"endpoint {rec.pod}: the datapath does not hold "
                                            f"endpoint {rec.id} with identity {rec.identity}")


def main() -> int:
    command = os.environ.get("CNI_COMMAND", "")
    try:
        raw = sys.stdin.read()
        if command == "VERSION":
            print(json.dumps({"cniVersion": CNI_VERSION, "supportedVersions": [CNI_VERSION]}))
            return 0
        try:
            conf: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PluginError(6, "cannot decode the network configuration", str(exc)) from None
        prev = conf.get("prevResult")
        if command == "ADD":
            if not prev:
                raise PluginError(7, "chainbench-cni is a chained plugin: ADD needs prevResult")
            print(json.dumps(cmd_add(conf, prev)))
        elif command == "DEL":
            cmd_del(conf, prev)
        elif command == "CHECK":
            if not prev:
                raise PluginError(7, "CHECK needs prevResult")
            cmd_check(conf, prev)
        else:
            raise PluginError(4, f"unknown CNI_COMMAND {command!r}")
        return 0
    except PluginError as exc:
        print(json.dumps({"cniVersion": CNI_VERSION, "code": exc.code, "msg": exc.msg,
                          "details": exc.details}))
        return 1
    except Exception as exc:   # noqa: BLE001 - a plugin must answer with an error object
        print(json.dumps({"cniVersion": CNI_VERSION, "code": 999, "msg": str(exc).splitlines()[0]
                          if str(exc) else type(exc).__name__, "details": type(exc).__name__}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
