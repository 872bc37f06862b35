"""Executing a CNI network configuration list, as the CNI 1.0.0 spec says.

``CNIRuntime(host_netns)`` runs each plugin executable (found on ``CNI_PATH``)
inside the project namespace *host_netns* (the node: a plugin sets up the host
side of a pod's network in the namespace it runs in), with the ``CNI_*``
environment and the plugin's configuration on stdin:

* ADD runs the plugins in list order; each one after the first gets the
  previous plugin's result as ``prevResult``, and the last result is the
  attachment's result (validated, and cached for DEL and CHECK).
* DEL runs them in reverse order with the cached ADD result as ``prevResult``
  (none when nothing was cached); it is idempotent as the plugins' DEL is.
* CHECK runs them in order with the cached result; ``disableCheck`` skips it.

``runtimeConfig`` carries the capability arguments a plugin declares in its
``capabilities`` (``ips``, ``portMappings``, ...).  Every failure is a
``CNIError`` holding the spec's error object (code, msg, details): the
plugin's own, or one the runtime makes with the spec's well-known codes.
A failed ADD is not undone here: the caller runs DEL, as the spec asks of a
runtime that handles the failure.
"""
from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from harness.errors import ChainbenchError
from harness.host import netns, procs

CNI_VERSION = "1.0.0"
DEFAULT_TIMEOUT = 30.0

# Well-known error codes of the spec (1-99 are reserved for these).
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENVIRONMENT = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11

#: Where plugins are looked for when the package list names no directory.
FALLBACK_CNI_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
#: PATH handed to plugins (portmap and friends call iptables).
PLUGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_TYPE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class CNIError(ChainbenchError):
    """A CNI operation failed; ``to_dict()`` is the spec's error object."""

    def __init__(self, code: int, msg: str, details: str = "", *, plugin: str | None = None,
                 command: str | None = None, stderr: str = ""):
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command
        self.stderr = stderr
        super().__init__(str(self))

    def __str__(self) -> str:
        where = " ".join(p for p in (self.plugin, self.command) if p)
        text = f"{where}: {self.msg}" if where else self.msg
        if self.details:
            text += f" ({self.details})"
        return f"{text} [CNI error {self.code}]"

    def to_dict(self) -> dict[str, Any]:
        """The error as the spec's JSON error object."""
        obj: dict[str, Any] = {"cniVersion": CNI_VERSION, "code": self.code, "msg": self.msg}
        if self.details:
            obj["details"] = self.details
        return obj


# ------------------------------------------------------------------ plugin path


@functools.lru_cache(maxsize=1)
def _packaged_dirs() -> tuple[str, ...]:
    try:
        proc = subprocess.run(["dpkg", "-L", "containernetworking-plugins"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    if proc.returncode != 0:
        return ()
    dirs = []
    for line in proc.stdout.splitlines():
        if os.path.basename(line) == "ptp" and os.access(line, os.X_OK):
            dirs.append(os.path.dirname(line))
    return tuple(dict.fromkeys(dirs))


def discover_cni_path() -> list[str]:
    """Directories holding the CNI plugins: ``CHAINBENCH_CNI_PATH`` (colon list) when set,
    else where Debian's containernetworking-plugins put them (``dpkg -L``), else
    the usual directories that exist."""
    override = os.environ.get("CHAINBENCH_CNI_PATH")
    if override:
        return [d for d in override.split(":") if d]
    found = list(_packaged_dirs()) or [d for d in FALLBACK_CNI_DIRS if os.path.isdir(d)]
    if not found:
        raise CNIError(ERR_INVALID_CONFIG, "no CNI plugins found: install containernetworking-plugins "
                                           "(ci/install-deps.sh does)")
    return found


# ---------------------------------------------------------------- configuration


def load_conflist(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Parse and check a network configuration list; return a private copy.

    Undecodable JSON is error 6, a structural problem error 7, a cniVersion
    other than 1.0.0 error 1.
    """
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CNIError(ERR_DECODE, "failed to decode network configuration list", str(exc)) from None
    if not isinstance(data, Mapping):
        raise CNIError(ERR_INVALID_CONFIG, "network configuration list must be a JSON object")
    conf = copy.deepcopy(dict(data))
    version = conf.get("cniVersion")
    if not isinstance(version, str):
        raise CNIError(ERR_INVALID_CONFIG, "network configuration list: cniVersion must be a string")
    if version != CNI_VERSION:
        raise CNIError(ERR_INCOMPATIBLE_VERSION,
                       f"network configuration list: cniVersion {version!r} is not supported",
                       f"this runtime speaks {CNI_VERSION}")
    name = conf.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CNIError(ERR_INVALID_CONFIG, f"network configuration list: invalid name {name!r}",
                       "letters, digits, '_', '.', '-', starting with a letter or digit")
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(ERR_INVALID_CONFIG, "network configuration list: plugins must be a non-empty list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CNIError(ERR_INVALID_CONFIG, f"network configuration list: plugins[{i}] must be an object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not _TYPE_RE.match(ptype):
            raise CNIError(ERR_INVALID_CONFIG, f"network configuration list: plugins[{i}].type "
                                               f"{ptype!r} is not a plugin name")
        caps = plugin.get("capabilities", {})
        if not isinstance(caps, dict):
            raise CNIError(ERR_INVALID_CONFIG,
                           f"network configuration list: plugins[{i}].capabilities must be an object")
    if not isinstance(conf.get("disableCheck", False), bool):
        raise CNIError(ERR_INVALID_CONFIG, "network configuration list: disableCheck must be a boolean")
    return conf


@dataclass(frozen=True)
class RuntimeConf:
    """What the runtime knows of one attachment: the ``CNI_*`` values and capability arguments."""

    container_id: str
    netns: str                                   # path of the container's network namespace file
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()       # CNI_ARGS, in order
    capability_args: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not _NAME_RE.match(self.container_id):
            raise CNIError(ERR_INVALID_ENVIRONMENT, f"invalid CNI_CONTAINERID {self.container_id!r}")
        if (not 0 < len(self.ifname) <= 15 or self.ifname in (".", "..")
                or any(c in self.ifname for c in "/: \t\n")):
            raise CNIError(ERR_INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {self.ifname!r}")
        if not self.netns.startswith("/"):
            raise CNIError(ERR_INVALID_ENVIRONMENT, f"CNI_NETNS {self.netns!r} is not a path")
        for key, value in self.args:
            if not key or any(c in key + value for c in ";="):
                raise CNIError(ERR_INVALID_ENVIRONMENT, f"invalid CNI_ARGS entry {key!r}={value!r}")

    def cni_args(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.args)


# --------------------------------------------------------------------- results


def _check_ip(value: Any, what: str, *, prefix: bool) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    try:
        if prefix:
            if "/" not in value:
                raise ValueError
            ipaddress.ip_interface(value)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an {'address/prefix' if prefix else 'address'}") from None


def validate_result(result: Any, version: str = CNI_VERSION) -> None:
    """Check *result* against the CNI 1.0.0 result schema; ValueError names the field."""
    if not isinstance(result, dict):
        raise ValueError("result must be a JSON object")
    if result.get("cniVersion") != version:
        raise ValueError(f"cniVersion {result.get('cniVersion')!r} is not {version!r}")
    interfaces = result.get("interfaces", [])
    if not isinstance(interfaces, list):
        raise ValueError("interfaces must be a list")
    for i, iface in enumerate(interfaces):
        if not isinstance(iface, dict) or not isinstance(iface.get("name"), str) or not iface["name"]:
            raise ValueError(f"interfaces[{i}] must be an object with a name")
        for key in ("mac", "sandbox"):
            if key in iface and not isinstance(iface[key], str):
                raise ValueError(f"interfaces[{i}].{key} must be a string")
    ips = result.get("ips", [])
    if not isinstance(ips, list):
        raise ValueError("ips must be a list")
    for i, ip in enumerate(ips):
        if not isinstance(ip, dict):
            raise ValueError(f"ips[{i}] must be an object")
        _check_ip(ip.get("address"), f"ips[{i}].address", prefix=True)
        if "gateway" in ip:
            _check_ip(ip["gateway"], f"ips[{i}].gateway", prefix=False)
        if "interface" in ip:
            index = ip["interface"]
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(interfaces):
                raise ValueError(f"ips[{i}].interface {index!r} does not index interfaces "
                                 f"(0-{len(interfaces) - 1})")
    routes = result.get("routes", [])
    if not isinstance(routes, list):
        raise ValueError("routes must be a list")
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            raise ValueError(f"routes[{i}] must be an object")
        dst = route.get("dst")
        try:
            ipaddress.ip_network(dst, strict=False)
        except (TypeError, ValueError):
            raise ValueError(f"routes[{i}].dst {dst!r} is not a prefix") from None
        if "gw" in route:
            _check_ip(route["gw"], f"routes[{i}].gw", prefix=False)
    if "dns" in result and not isinstance(result["dns"], dict):
        raise ValueError("dns must be an object")


def host_interfaces(result: Mapping[str, Any]) -> list[dict]:
    """Interfaces of a result that live on the host side (no ``sandbox``)."""
    return [i for i in result.get("interfaces", []) if not i.get("sandbox")]


def sandbox_addresses(result: Mapping[str, Any], ifname: str | None = None
                      ) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Addresses the result puts inside the sandbox (on *ifname* when given)."""
    interfaces = result.get("interfaces", [])
    out = []
    for ip in result.get("ips", []):
        index = ip.get("interface")
        if index is None:
            continue
        iface = interfaces[index]
        if iface.get("sandbox") and (ifname is None or iface["name"] == ifname):
            out.append(ipaddress.ip_interface(ip["address"]))
    return out


# --------------------------------------------------------------------- runtime


class CNIRuntime:
    """Runs conflists for attachments whose host side is project namespace *host_netns*."""

    def __init__(self, host_netns: str, cni_path: Sequence[str] | None = None, *,
                 cache_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        if not host_netns.startswith(netns.PREFIX):
            raise ValueError(f"host namespace {host_netns!r}: plugins run only in project "
                             f"namespaces ({netns.PREFIX}*)")
        self.host_netns = host_netns
        self.cni_path = list(cni_path) if cni_path is not None else discover_cni_path()
        self.cache_dir = cache_dir
        self.timeout = timeout
        self._memory_cache: dict[str, dict] = {}
        self._ip = shutil.which("ip", path=PLUGIN_PATH) or "ip"
        self._nsenter = shutil.which("nsenter", path=PLUGIN_PATH) or "nsenter"

    # -- plugins

    def find_plugin(self, plugin_type: str) -> str:
        """Path of the executable for plugin *plugin_type* on the CNI path."""
        if _TYPE_RE.match(plugin_type):
            for directory in self.cni_path:
                path = os.path.join(directory, plugin_type)
                if os.path.isfile(path) and os.access(path, os.X_OK):
                    return path
        raise CNIError(ERR_INVALID_CONFIG,
                       f"failed to find plugin {plugin_type!r} in path {':'.join(self.cni_path)}",
                       plugin=plugin_type)

    def version(self, plugin_type: str) -> dict[str, Any]:
        """The plugin's answer to VERSION (``supportedVersions``), asked inside the host namespace."""
        path = self.find_plugin(plugin_type)
        self._require_host_netns(plugin_type, "VERSION")
        env = {"PATH": PLUGIN_PATH, "CNI_COMMAND": "VERSION"}
        out = self._run(self._in_host_netns(path), env,
                        {"cniVersion": CNI_VERSION}, plugin_type, "VERSION")
        try:
            info = json.loads(out)
        except ValueError as exc:
            raise CNIError(ERR_DECODE, "undecodable VERSION answer", str(exc), plugin=plugin_type,
                           command="VERSION") from None
        if not isinstance(info, dict) or not isinstance(info.get("supportedVersions"), list):
            raise CNIError(ERR_DECODE, "VERSION answer lacks supportedVersions", plugin=plugin_type,
                           command="VERSION")
        return info

    def validate(self, conflist: str | bytes | Mapping[str, Any]) -> None:
        """Every plugin of the list exists and supports the list's cniVersion."""
        conf = load_conflist(conflist)
        for plugin in conf["plugins"]:
            supported = self.version(plugin["type"])["supportedVersions"]
            if conf["cniVersion"] not in supported:
                raise CNIError(ERR_INCOMPATIBLE_VERSION,
                               f"plugin does not support cniVersion {conf['cniVersion']}",
                               f"supported: {', '.join(supported)}", plugin=plugin["type"])

    # -- the three commands

    def add(self, conflist: str | bytes | Mapping[str, Any], rt: RuntimeConf) -> dict[str, Any]:
        """ADD every plugin in order; return (and cache) the final result."""
        conf = load_conflist(conflist)
        rt.validate()
        result: dict[str, Any] | None = None
        for plugin in conf["plugins"]:
            out = self._exec("ADD", conf, plugin, rt, result)
            result = self._parse_result(out, plugin["type"], conf["cniVersion"])
        assert result is not None
        self._store(conf, rt, result)
        return result

    def check(self, conflist: str | bytes | Mapping[str, Any], rt: RuntimeConf) -> None:
        """CHECK every plugin in order against the cached ADD result."""
        conf = load_conflist(conflist)
        rt.validate()
        if conf.get("disableCheck"):
            return
        prev = self.cached_result(conf, rt)
        if prev is None:
            raise CNIError(ERR_UNKNOWN_CONTAINER,
                           f"no cached result for {rt.container_id}/{rt.ifname} on network "
                           f"{conf['name']}: CHECK needs a previous ADD", command="CHECK")
        for plugin in conf["plugins"]:
            self._exec("CHECK", conf, plugin, rt, prev)

    def delete(self, conflist: str | bytes | Mapping[str, Any], rt: RuntimeConf,
               prev_result: Mapping[str, Any] | None = None) -> None:
        """DEL every plugin in reverse order; *prev_result* defaults to the cached ADD result."""
        conf = load_conflist(conflist)
        rt.validate()
        prev = dict(prev_result) if prev_result is not None else self.cached_result(conf, rt)
        for plugin in reversed(conf["plugins"]):
            self._exec("DEL", conf, plugin, rt, prev)
        self._forget(conf, rt)

    # -- result cache

    def _cache_key(self, conf: Mapping[str, Any], rt: RuntimeConf) -> str:
        return f"{conf['name']}-{rt.container_id}-{rt.ifname}"

    def _cache_file(self, key: str) -> str | None:
        return os.path.join(self.cache_dir, "results", key) if self.cache_dir else None

    def cached_result(self, conflist: str | bytes | Mapping[str, Any], rt: RuntimeConf
                      ) -> dict[str, Any] | None:
        """The result the last successful ADD of this attachment returned, if cached."""
        conf = load_conflist(conflist)
        key = self._cache_key(conf, rt)
        path = self._cache_file(key)
        if path is None:
            cached = self._memory_cache.get(key)
            return copy.deepcopy(cached) if cached is not None else None
        try:
            with open(path) as f:
                return json.load(f)["result"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def _store(self, conf: Mapping[str, Any], rt: RuntimeConf, result: dict[str, Any]) -> None:
        key = self._cache_key(conf, rt)
        path = self._cache_file(key)
        if path is None:
            self._memory_cache[key] = copy.deepcopy(result)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entry = {"kind": "cniCacheV1", "containerId": rt.container_id, "ifName": rt.ifname,
                 "networkName": conf["name"], "cniArgs": [list(a) for a in rt.args],
                 "capabilityArgs": dict(rt.capability_args), "result": result}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)

    def _forget(self, conf: Mapping[str, Any], rt: RuntimeConf) -> None:
        key = self._cache_key(conf, rt)
        self._memory_cache.pop(key, None)
        path = self._cache_file(key)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- execution

    def _require_host_netns(self, ptype: str, command: str) -> None:
        if not netns.exists(self.host_netns):
            raise CNIError(ERR_IO, f"host namespace {self.host_netns} does not exist", plugin=ptype,
                           command=command)

    def _plugin_config(self, conf: Mapping[str, Any], plugin: Mapping[str, Any], rt: RuntimeConf,
                       prev: Mapping[str, Any] | None) -> dict[str, Any]:
        pconf = copy.deepcopy(dict(plugin))
        pconf["cniVersion"] = conf["cniVersion"]
        pconf["name"] = conf["name"]
        if prev is not None:
            pconf["prevResult"] = copy.deepcopy(dict(prev))
        caps = plugin.get("capabilities", {})
        runtime_config = {k: v for k, v in rt.capability_args.items() if caps.get(k)}
        if runtime_config:
            pconf["runtimeConfig"] = copy.deepcopy(runtime_config)
        return pconf

    def _exec(self, command: str, conf: Mapping[str, Any], plugin: Mapping[str, Any],
              rt: RuntimeConf, prev: Mapping[str, Any] | None) -> bytes:
        ptype = plugin["type"]
        path = self.find_plugin(ptype)
        self._require_host_netns(ptype, command)
        env = {"PATH": PLUGIN_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": rt.container_id,
               "CNI_NETNS": rt.netns, "CNI_IFNAME": rt.ifname, "CNI_ARGS": rt.cni_args(),
               "CNI_PATH": ":".join(self.cni_path)}
        return self._run(self._in_host_netns(path), env,
                         self._plugin_config(conf, plugin, rt, prev), ptype, command)

    def _in_host_netns(self, path: str) -> list[str]:
        """Run a plugin in the host (node) network namespace, as a kubelet's runtime runs
        it in the host's: only the network namespace changes.  (`ip netns exec` would
        also remount /sys, hiding the bpffs the chained plugin pins maps in.)"""
        return [self._nsenter, f"--net=/run/netns/{self.host_netns}", "--", path]

    def _run(self, cmd: list[str], env: dict[str, str], stdin: Mapping[str, Any], ptype: str,
             command: str) -> bytes:
        try:
            # Recorded: a plugin outlives a runtime killed mid-ADD; `chainbench down`
            # ends it before tearing down (harness.host.procs).
            proc = procs.run(f"cni-{ptype}", cmd, input=json.dumps(stdin).encode(),
                             capture_output=True, env=env, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CNIError(ERR_IO, f"timed out after {self.timeout:g} s", plugin=ptype,
                           command=command) from None
        except OSError as exc:
            raise CNIError(ERR_IO, f"cannot execute {cmd[-1]}: {exc.strerror}", plugin=ptype,
                           command=command) from None
        if proc.returncode != 0:
            raise self._plugin_error(proc, ptype, command)
        return proc.stdout

    @staticmethod
    def _plugin_error(proc: subprocess.CompletedProcess, ptype: str, command: str) -> CNIError:
        stderr = proc.stderr.decode(errors="replace").strip()
        try:
            obj = json.loads(proc.stdout)
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("code"), int) and isinstance(obj.get("msg"), str):
            details = obj.get("details")
            return CNIError(obj["code"], obj["msg"], details if isinstance(details, str) else "",
                            plugin=ptype, command=command, stderr=stderr)
        text = stderr or proc.stdout.decode(errors="replace").strip() or "no output"
        return CNIError(ERR_IO, f"exited with status {proc.returncode} without an error object",
                        text.splitlines()[-1][:500], plugin=ptype, command=command, stderr=stderr)

    @staticmethod
    def _parse_result(out: bytes, ptype: str, version: str) -> dict[str, Any]:
        try:
            result = json.loads(out)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CNIError(ERR_DECODE, "ADD returned an undecodable result", str(exc), plugin=ptype,
                           command="ADD") from None
        try:
            validate_result(result, version)
        except ValueError as exc:
            raise CNIError(ERR_DECODE, "ADD returned an invalid result", str(exc), plugin=ptype,
                           command="ADD") from None
        return result
