"""Network namespaces the project creates: names, creation, removal, entering.

Every namespace chainbench makes is named ``cb-*`` so that ``chainbench down``
(and the before-stop checks) can find leftovers.  ``entered(name)`` switches
only the calling thread, which is what netlink-based calls such as libbpf's
tc attach need: they act on the namespace their socket was opened in.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
import subprocess
from typing import Iterator
from harness.errors import ChainbenchError

PREFIX = "cb-"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NetnsError(ChainbenchError, RuntimeError):
    pass


def _check_name(name: str) -> None:
    if not name.startswith(PREFIX):
        raise NetnsError(f"namespace {name!r}: project namespaces are named {PREFIX}*")


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def create(name: str) -> None:
    """Create namespace *name* (must start with cb-) with its loopback up."""
    _check_name(name)
    if exists(name):
        raise NetnsError(f"namespace {name} already exists: run `chainbench down` first")
    _ip("netns", "add", name)
    _ip("link", "set", "lo", "up", netns=name)


def delete(name: str) -> None:
    """Delete namespace *name* if it exists (its interfaces go with it)."""
    _check_name(name)
    if exists(name):
        _ip("netns", "del", name)


def list_project() -> list[str]:
    """Project namespaces that exist now."""
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def run(name: str, *cmd: str, check: bool = True, timeout: float = 30,
        **kwargs) -> subprocess.CompletedProcess:
    """Run *cmd* inside namespace *name*; stdout/stderr are captured as text."""
    _check_name(name)
    proc = subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise NetnsError(f"[{name}] {' '.join(cmd)}: exit {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the body with this thread inside namespace *name* (None: stay put)."""
    if name is None:
        yield
        return
    _check_name(name)
    with entered_path(f"/run/netns/{name}"):
        yield


@contextlib.contextmanager
def entered_path(path: str) -> Iterator[None]:
    """Run the body with this thread inside the network namespace at *path* (a
    container runtime's CNI_NETNS: the CNI plugin works in the namespace it is given)."""
    origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(origin)
    finally:
        os.close(origin)


def ifindex(ifname: str, netns: str | None = None) -> int:
    """Interface index of *ifname* as seen inside *netns*."""
    with entered(netns):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            where = f" in {netns}" if netns else ""
            raise NetnsError(f"no interface {ifname}{where}") from None

