"""The chained plugin under a real container runtime (issue 12, finding 9).

Debian's podman (4.3, CNI backend) runs inside the node namespace cb-node0
(``nsenter --net``: the host-side veth ptp makes stays there; the container
gets a namespace of its own) with the node's conflist (ptp + host-local, then
chainbench-cni) and a busybox root filesystem from a local directory
(``--rootfs``: no image, no registry, no network).  Its configuration,
storage and state are private: CONTAINERS_CONF and CONTAINERS_STORAGE_CONF
name files in a temporary directory that also holds --root, --runroot,
tmp_dir, file locks, runc's state (a ``runc`` wrapper adding ``--root``:
podman's ``--runtime-flag`` does not reach the cleanup conmon runs) and the
CNI configuration directory, and is removed afterwards.  The OCI runtime is runc:
crun 1.8 refuses every container on a hybrid cgroup machine whose cgroup2
hierarchy has a controller ("cgroups in hybrid mode not supported"), runc
works on v1, hybrid and v2; the container's cgroups go under a
``cb-podman-*`` parent the test removes (conmon stays in the caller's).
libcni's result cache is /var/lib/cni, which podman does not let one move:
the test removes what it made there.  Container limits are set below the
caller's (``--ulimit``): podman 4.3 asks for RLIMIT_NOFILE 1048576 and
lowers its own RLIMIT_NPROC to 32768, which runc then cannot raise without
CAP_SYS_RESOURCE.

What podman 4.3 passes to the plugins: ``CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container
name>`` (no K8S_POD_NAMESPACE: containers/common sets the name only, for the
dnsname plugin), ``CNI_CONTAINERID`` the container id, ``CNI_IFNAME=eth0``,
``CNI_NETNS=/run/netns/netns-<uuid>``; no ``runtimeConfig`` unless asked (ptp
declares ``ips``).  Before the fix, chainbench-cni refused that ADD ("CNI_ARGS
lacks K8S_POD_NAMESPACE/K8S_POD_NAME") and the DEL alike.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.topology import chaining
from harness.topology import build
from harness.node.node import Node
from harness.host import netns
from harness.topology.cni_runtime import CNIError, CNIRuntime, RuntimeConf, validate_result
from harness.abi.structs import be32 as _be32
from tests.test_chaining import nothing_left

REPO = Path(__file__).resolve().parents[1]
SCENARIO = str(REPO / "tests" / "data" / "scenarios" / "podman.yaml")
NODE = "cb-node0"
LIBCNI_CACHE = "/var/lib/cni"          # libcni's default; podman's CNI backend uses it
WEB_VIP, LOCKED_VIP = "198.19.0.20", "198.19.0.21"
POLICY_DENIED, DIR_INGRESS = 133, 1
#: Paths podman uses by default: with the private configuration it must touch none.
DEFAULT_PATHS = ("/var/lib/containers", "/run/containers", "/run/libpod", "/run/runc", "/var/lib/cni")


def _podman_processes(marker: str) -> list[int]:
    """Processes whose command line names *marker* (conmon names its bundle under it),
    and their descendants (the container's processes)."""
    parents: dict[int, int] = {}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if marker.encode() in cmdline and int(entry) != os.getpid():
            found.append(int(entry))
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.append(pid)
                changed = True
    return found


class Podman:
    """podman with a private configuration, run in a node namespace."""

    def __init__(self, node_netns: str, conflist: str):
        self.netns = node_netns
        self.tmp = tempfile.mkdtemp(prefix="cb-podman-")
        self.cgroup_parent = os.path.basename(self.tmp)
        self.rootfs = os.path.join(self.tmp, "rootfs")
        self.cni_dir = os.path.join(self.tmp, "cni")
        for sub in ("root", "runroot", "libpod-tmp", "cni", "bin", "rootfs/bin", "rootfs/etc",
                    "rootfs/proc", "rootfs/sys", "rootfs/dev", "rootfs/tmp"):
            os.makedirs(os.path.join(self.tmp, sub))
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy(busybox, os.path.join(self.rootfs, "bin", "busybox"))
        for applet in ("sh", "wget", "timeout", "sleep", "cat"):
            os.symlink("busybox", os.path.join(self.rootfs, "bin", applet))
        with open(conflist) as f:
            self.conflist = json.load(f)
        with open(os.path.join(self.cni_dir, "chainbench.conflist"), "w") as f:
            json.dump(self.conflist, f)
        plugin_dirs = [chaining.plugin_dir(), *netns_cni_dirs()]
        t = self.tmp
        runc = os.path.join(t, "bin", "runc")
        with open(runc, "w") as f:
            f.write(f'#!/bin/sh\nexec {shutil.which("runc") or "/usr/sbin/runc"} --root {t}/runc "$@"\n')
        os.chmod(runc, 0o755)
        with open(os.path.join(t, "containers.conf"), "w") as f:
            f.write(f"""[containers]
cgroups = "no-conmon"
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{t}/libpod-tmp/events.log"
lock_type = "file"
tmp_dir = "{t}/libpod-tmp"
static_dir = "{t}/root/libpod"
volume_path = "{t}/root/volumes"
[engine.runtimes]
runc = ["{runc}"]
[network]
network_backend = "cni"
cni_plugin_dirs = {json.dumps(plugin_dirs)}
network_config_dir = "{self.cni_dir}"
""")
        with open(os.path.join(t, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{t}/root"\nrunroot = "{t}/runroot"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": os.path.join(t, "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": os.path.join(t, "storage.conf")}

    def run_detached(self, name: str, *command: str) -> subprocess.CompletedProcess:
        """``podman run -d`` on the node's network, the busybox rootfs, limits below ours."""
        return self("run", "--detach", "--name", name, "--network", "chainbench",
                    "--cgroup-parent", f"/{self.cgroup_parent}",
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    "--rootfs", self.rootfs, *command)

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["nsenter", f"--net=/run/netns/{self.netns}", "--", "podman",
               "--root", os.path.join(self.tmp, "root"),
               "--runroot", os.path.join(self.tmp, "runroot"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)

    def close(self) -> list[str]:
        """Remove every container, end what is left of their processes, remove the
        directory; return what had to be forced (empty when podman cleaned up)."""
        forced = []
        rm = self("rm", "--force", "--all", "--time", "0")
        if rm.returncode != 0:
            forced.append(f"podman rm: {rm.stderr.strip()}")
        left = _podman_processes(self.tmp)
        for pid in left:
            forced.append(f"process {pid} left running")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _podman_processes(self.tmp) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The containers' cgroups: runc's delete may leave them while their exited
        # processes await reaping (cgroup v1 keeps zombies), so retry for a while.
        left = _cgroup_dirs(self.cgroup_parent)
        while left and time.monotonic() < deadline + 10:
            for path in left:
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            left = _cgroup_dirs(self.cgroup_parent)
            time.sleep(0.05)
        forced += [f"cgroup {path} left" for path in left]
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if self.tmp in line.split()[4]]
        for mount in sorted(mounts, reverse=True):
            forced.append(f"mount {mount} left")
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.tmp)
        return forced


def _cgroup_dirs(name: str) -> list[str]:
    """Cgroup *name* and its children in every mounted hierarchy, deepest first."""
    found = []
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[2] in ("cgroup", "cgroup2")]
    for mount in mounts:
        top = os.path.join(mount, name)
        if os.path.isdir(top):
            found += [d for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: -p.count("/"))


def netns_cni_dirs() -> list[str]:
    from harness.topology.cni_runtime import discover_cni_path
    return discover_cni_path()


class EchoServers:
    """The echo server in each backend pod (its namespace), stopped however the test ends."""

    def __init__(self, state, pods: list[str], port: int = 8080):
        self.procs = []
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            for name in pods:
                pod = state.pod(name)
                self.procs.append(subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{pod.netns}", "--", sys.executable, "-m",
                     "harness.topology.servers.echo_http", "--port", str(port), "--name", pod.name],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                    start_new_session=True))
            deadline = time.monotonic() + 10
            for name in pods:
                ns = state.pod(name).netns
                while not subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", "ss", "-Hltn",
                                          f"sport = :{port}"], capture_output=True,
                                         text=True).stdout.strip():
                    assert time.monotonic() < deadline, f"echo server in {ns} did not start"
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _endpoints() -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "harness.cli", "endpoints", "-o", "json"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    return {r["name"]: r for r in json.loads(out)}


def _ipcache_identity(node: str, address: str) -> int | None:
    with Node(node).open_pinned() as maps:
        for key, value in maps["cb_ipcache_hosts"].items():
            if key.family == 4 and str(key.addr.ipv4()) == address:
                return value.identity
        return None


def _drops(node: str, endpoint_id: int, reason: int, direction: int) -> int:
    with Node(node).open_pinned() as maps:
        return sum(v.packets for k, per_cpu in maps["cb_metrics"].items()
                   if (k.reason, k.endpoint_id, k.dir) == (reason, endpoint_id, direction)
                   for v in per_cpu)


def _run_plugin(command: str, conf: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    """chainbench-cni as a runtime runs it: in the node namespace, CNI_* in the environment."""
    return subprocess.run(["nsenter", f"--net=/run/netns/{NODE}", "--",
                           os.path.join(chaining.plugin_dir(), chaining.PLUGIN)],
                          input=json.dumps(conf), capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "CNI_COMMAND": command, **env})


@pytest.fixture
def topology():
    if nothing_left():
        pytest.fail(f"leftovers before the test: {nothing_left()}")
    existed = {p for p in DEFAULT_PATHS if os.path.exists(p)}
    try:
        yield chaining.up(SCENARIO, nodes=2)
    finally:
        build.down()
        # libcni's cache: remove the directories podman made there if they are empty.
        if LIBCNI_CACHE not in existed:
            for d in (f"{LIBCNI_CACHE}/results", LIBCNI_CACHE):
                if os.path.isdir(d) and not os.listdir(d):
                    os.rmdir(d)
    assert nothing_left() == []
    assert {p for p in DEFAULT_PATHS if os.path.exists(p)} == existed


@pytest.fixture
def podman(topology):
    node = topology.node(NODE)
    pm = Podman(node.netns, node.conflist)
    try:
        yield pm
    finally:
        forced = pm.close()
    assert forced == []
    assert not [n for n in os.listdir("/run/netns") if n.startswith("netns-")], \
        "podman's container namespace is left"


def test_podman_container_is_an_endpoint_load_balanced_and_policed(topology, podman):
    run = podman.run_detached("box", "sleep", "300")
    assert run.returncode == 0, run.stderr
    cid = run.stdout.strip()
    inspect = podman("inspect", "box")
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)[0]
    address = info["NetworkSettings"]["Networks"]["chainbench"]["IPAddress"]
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network("198.18.0.0/24")

    # An endpoint with the runtime's name and the unmanaged identity, in every node's ipcache.
    rows = _endpoints()
    ep = rows["container:box"]
    assert (ep["node"], ep["identity_id"], ep["state"], ep["ipv4"]) == (NODE, 3, "ready", address)
    assert ep["labels"] == ["container:name=box", "reserved:unmanaged"]
    assert not ep["ingress_enforcement"] and not ep["egress_enforcement"]
    assert _ipcache_identity(NODE, address) == _ipcache_identity("cb-node1", address) == 3

    # What podman got back (libcni's cache holds the chain's last result): a valid
    # CNI 1.0.0 result, the container's address on its sandbox interface.
    with open(f"{LIBCNI_CACHE}/results/chainbench-{cid}-eth0") as f:
        cached = json.load(f)
    result = cached["result"]
    validate_result(result)
    sandbox = [i for i, iface in enumerate(result["interfaces"]) if iface.get("sandbox")]
    assert [ip["address"] for ip in result["ips"] if ip["interface"] in sandbox] == [f"{address}/24"]
    args = dict(cached["cniArgs"])
    assert args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "box"}

    # Load-balanced: the service VIP reaches its backend; policed: locked admits only
    # app=client pods, so the container's request is dropped at locked-0's ingress (133).
    servers = EchoServers(topology, ["default/web-0", "default/locked-0"])
    try:
        # (busybox 1.35's wget crashes with -T: the timeout applet bounds it instead.)
        got = podman("exec", "box", "timeout", "3", "wget", "-q", "-O", "-", f"http://{WEB_VIP}/")
        assert got.returncode == 0 and got.stdout.strip() == "web-0", got.stderr
        locked_id = rows["default/locked-0"]["endpoint_id"]
        before = _drops(NODE, locked_id, POLICY_DENIED, DIR_INGRESS)
        denied = podman("exec", "box", "timeout", "2", "wget", "-q", "-O", "-",
                        f"http://{LOCKED_VIP}/")
        assert denied.returncode == 143, denied.stderr        # the timeout: no answer
        assert _drops(NODE, locked_id, POLICY_DENIED, DIR_INGRESS) > before
    finally:
        servers.stop()

    # The node's shared programs find the container by its veth's entry.
    host_veth = [i["name"] for i in result["interfaces"] if not i.get("sandbox")][0]
    home = Node(NODE)
    entry = home.endpoint_config(netns.ifindex(host_veth, topology.node(NODE).netns))
    assert entry is not None and (entry.id, entry.ip4) == (ep["endpoint_id"],
                                                           _be32(address))

    # CHECK through the chain with podman's own attachment (ptp, then our plugin).
    node = topology.node(NODE)
    runtime = CNIRuntime(node.netns, topology.cni_path, cache_dir=LIBCNI_CACHE)
    rt = RuntimeConf(cid, info["NetworkSettings"]["SandboxKey"], "eth0",
                     (("IgnoreUnknown", "1"), ("K8S_POD_NAME", "box")))
    runtime.check(podman.conflist, rt)
    netns.run(node.netns, "tc", "qdisc", "del", "dev", host_veth, "clsact")
    with pytest.raises(CNIError, match="programs are not attached"):
        runtime.check(podman.conflist, rt)

    # podman rm: DEL succeeds, the endpoint and its ipcache entries are gone everywhere.
    rm = podman("rm", "--force", "--time", "0", "box")
    assert rm.returncode == 0, rm.stderr
    assert "container:box" not in _endpoints()
    assert home.remove_endpoint_config(ep["endpoint_id"]) == 0, "DEL left the veth's entry"
    assert _ipcache_identity(NODE, address) is None and _ipcache_identity("cb-node1", address) is None
    assert not os.path.exists(f"{LIBCNI_CACHE}/results/chainbench-{cid}-eth0")


def test_plugin_del_and_add_without_kubernetes_arguments(topology):
    """DEL completes with information missing (no CNI_ARGS, no container id, no netns, no
    prevResult; an unknown container; twice); ADD without a pod or a container id is one
    line."""
    chained = topology_conf(topology)
    for env in ({}, {"CNI_CONTAINERID": "0123456789abcdef", "CNI_IFNAME": "eth0",
                     "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=nobody"},
                {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=not-in-the-scenario"}):
        for _ in range(2):
            proc = _run_plugin("DEL", chained, env)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), env
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "v"}]}
    proc = _run_plugin("ADD", {**chained, "prevResult": prev}, {"CNI_ARGS": "IgnoreUnknown=1"})
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == 4 and "CNI_CONTAINERID is empty" in err["msg"]
    assert len(proc.stdout.strip().splitlines()) == 1
    # The scenario's endpoints are untouched by all of it.
    assert set(_endpoints()) == {"default/web-0", "default/locked-0"}


def topology_conf(state) -> dict:
    """The chained plugin's configuration from the node's conflist, as a runtime hands it."""
    with open(state.node(NODE).conflist) as f:
        conflist = json.load(f)
    plugin = next(p for p in conflist["plugins"] if p["type"] == chaining.PLUGIN)
    return {**plugin, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
