"""``chainbench-cni``: the chained CNI plugin, listed after the primary plugin
in a node's conflist as ``cilium-cni`` is in chaining mode.

ADD reads ``prevResult`` (the host-side veth is ``interfaces[0]``, the pod's
addresses are ``ips``), creates the endpoint (an id in the node's registry),
attaches ``from_container`` (tc ingress) and ``to_container`` (tc egress) to
the host veth with the node's shared, pinned maps, programs the node's LB,
ipcache and policy, and returns ``prevResult`` unchanged.  DEL undoes it;
CHECK verifies the programs are attached and the endpoint is known.

A pod annotated ``chainbench.io/chaining: skip`` stands for one created
before chaining was enabled: it gets no programs and stays unmanaged (still
reachable and load-balanced to, without policy or LB of its own traffic).

Plugin configuration keys: ``scenario`` (path), ``datapath`` (``bpf``;
anything else: pass through), ``node`` (optional: by default the node is the
``cb-node*`` network namespace the plugin runs in), ``deferSync`` (true while
``chainbench up`` adds many pods: it syncs every node once at the end instead
of once per pod).  Errors are CNI error
objects on stdout with a non-zero exit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from harness import datapath
from harness.bpf import attach_tc
from harness.endpoints import NOT_READY, UNMANAGED, WAITING_FOR_IDENTITY, EndpointRegistry
from harness.node_sync import node_lock, sync_node

SKIP_ANNOTATION = "chainbench.io/chaining"
CNI_VERSION = "1.0.0"


class PluginError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


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
    for name in sorted(os.listdir("/run/netns")):
        if name.startswith("cb-node") and os.stat(f"/run/netns/{name}").st_ino == mine:
            return name
    raise PluginError(7, "cannot tell the node: not run in a cb-node* namespace and no 'node' "
                         "in the plugin config")


def _pod_ref() -> str:
    args = _args()
    ns, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    if not ns or not name:
        raise PluginError(4, "CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME")
    return f"{ns}/{name}"


def _scenario(conf: dict):
    from harness.scenario import load_scenario
    from harness.topology.state import load_state, scenario_with_real_addresses
    path = conf.get("scenario")
    if not path:
        raise PluginError(7, "plugin config lacks 'scenario'")
    scenario = load_scenario(path)
    state = load_state()
    return scenario_with_real_addresses(scenario, state) if state else scenario


def _host_veth(prev: dict) -> str:
    interfaces = prev.get("interfaces") or []
    host = next((i for i in interfaces if not i.get("sandbox")), None)
    if host is None:
        raise PluginError(7, "prevResult has no host-side interface (chain after ptp or bridge)")
    return host["name"]


def _pod_addresses(prev: dict) -> tuple[str | None, str | None]:
    """The pod's IPv4 and IPv6 addresses as the primary plugin assigned them (prevResult
    ``ips``, CIDR notation): what the pod's packets must carry as their source."""
    import ipaddress
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


def cmd_add(conf: dict, prev: dict) -> dict:
    ref = _pod_ref()
    if conf.get("datapath", "bpf") != "bpf":
        return prev
    node = _node(conf)
    scenario = _scenario(conf)
    try:
        pod = scenario.pod(ref)
    except Exception as exc:   # ScenarioError: the pod is not in the scenario
        raise PluginError(7, f"pod {ref} is not in the scenario", str(exc)) from None
    if pod.meta.annotations.get(SKIP_ANNOTATION) == "skip":
        with node_lock(node):
            registry = EndpointRegistry(node)
            rec = registry.ensure(ref)
            rec.state = UNMANAGED
            rec.interface = _host_veth(prev)
            rec.ipv4 = str(pod.ipv4) if pod.ipv4 else None
            rec.ipv6 = str(pod.ipv6) if pod.ipv6 else None
            registry.save()
        return prev
    veth = _host_veth(prev)
    with node_lock(node):
        registry = EndpointRegistry(node)
        rec = registry.ensure(ref)
        # Recorded (its id reserved) before anything is attached; ready only once the
        # programs are attached and the node's sync has set its identity (endpoints.py).
        rec.interface, rec.state = veth, NOT_READY
        rec.ipv4, rec.ipv6 = _pod_addresses(prev)
        registry.save()
        with datapath.load("lxc", node, pinned=True,
                           **datapath.endpoint_rodata(rec.id, rec.ipv4, rec.ipv6)) as coll:
            # The filters keep the programs alive after this process exits.
            attach_tc(coll.programs["from_container"], veth, "ingress")
            attach_tc(coll.programs["to_container"], veth, "egress")
        rec.state = WAITING_FOR_IDENTITY
        registry.save()
        if not conf.get("deferSync"):
            sync_node(node, scenario)
    return prev


def cmd_del(conf: dict, prev: dict | None) -> None:
    ref = _pod_ref()
    if conf.get("datapath", "bpf") != "bpf":
        return
    node = _node(conf)
    with node_lock(node):
        registry = EndpointRegistry(node)
        rec = registry.remove(ref)
        registry.save()
        if rec is not None and rec.interface:
            # The veth may be gone already (DEL must succeed regardless).
            subprocess.run(["tc", "qdisc", "del", "dev", rec.interface, "clsact"],
                           capture_output=True)
        if rec is not None and conf.get("scenario") and datapath.node_is_pinned_dir(node):
            sync_node(node, _scenario(conf))


def cmd_check(conf: dict, prev: dict) -> None:
    ref = _pod_ref()
    if conf.get("datapath", "bpf") != "bpf":
        return
    node = _node(conf)
    rec = EndpointRegistry(node).records.get(ref)
    if rec is None:
        raise PluginError(3, f"endpoint {ref} is not known on {node}")
    if rec.state == UNMANAGED:
        return
    veth = _host_veth(prev)
    if "from_container" not in _tc_filters(veth, "ingress") or \
            "to_container" not in _tc_filters(veth, "egress"):
        raise PluginError(100, f"endpoint {ref}: programs are not attached to {veth}")


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
