"""Cgroups the project creates for socket-LB and other cgroup programs.

Cgroup programs attach only to ``cb-*`` cgroups below the cgroup2 mount,
never to the root cgroup, so nothing outside the project's own processes is
ever load-balanced or filtered.
"""
from __future__ import annotations

import os
from harness.errors import ChainbenchError

PREFIX = "cb-"


class CgroupError(ChainbenchError, RuntimeError):
    pass


def cgroup2_mount() -> str:
    """Where cgroup2 is mounted (``/sys/fs/cgroup`` or the hybrid ``/sys/fs/cgroup/unified``)."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            dev, mnt, fstype, *_ = line.split()
            if fstype == "cgroup2":
                return mnt
    raise CgroupError("no cgroup2 filesystem is mounted")


def host_cgroup(node: str) -> str:
    """The cgroup of *node*'s host-network processes, where its socket-LB programs attach."""
    return os.path.join(cgroup2_mount(), f"{PREFIX}{node}-host")


def check_project_cgroup(path: str) -> None:
    """Refuse any cgroup that is not a project cgroup."""
    root = os.path.realpath(cgroup2_mount())
    real = os.path.realpath(path)
    rel = os.path.relpath(real, root)
    if rel.startswith("..") or rel == "." or not os.path.basename(real).startswith(PREFIX):
        raise CgroupError(f"{path}: cgroup programs attach only to {PREFIX}* cgroups under {root}")


def create(name: str) -> str:
    """Create cgroup *name* (must start with cb-) below the cgroup2 root; return its path."""
    if not name.startswith(PREFIX) or "/" in name:
        raise CgroupError(f"cgroup {name!r}: project cgroups are named {PREFIX}*")
    path = os.path.join(cgroup2_mount(), name)
    os.makedirs(path, exist_ok=True)
    return path


def remove(path: str) -> None:
    """Remove a project cgroup, moving any processes left in it to the root first."""
    check_project_cgroup(path)
    if not os.path.isdir(path):
        return
    procs = os.path.join(path, "cgroup.procs")
    root_procs = os.path.join(cgroup2_mount(), "cgroup.procs")
    with open(procs) as f:
        pids = [p for p in f.read().split() if p]
    for pid in pids:
        try:
            with open(root_procs, "w") as f:
                f.write(pid)
        except ProcessLookupError:
            pass
    os.rmdir(path)


def list_project() -> list[str]:
    try:
        root = cgroup2_mount()
    except CgroupError:
        return []
    return sorted(os.path.join(root, n) for n in os.listdir(root)
                  if n.startswith(PREFIX) and os.path.isdir(os.path.join(root, n)))


def enter(path: str, pid: int = 0) -> None:
    """Move process *pid* (0: the caller) into project cgroup *path*."""
    check_project_cgroup(path)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid or os.getpid()))
