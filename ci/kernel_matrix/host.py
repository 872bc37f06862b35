"""The host side's prerequisites: the tools it needs (apt-get installing
busybox-static and kmod when missing), one run per work directory (a lock),
and paths the guest could not see because it mounts over them."""
from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
from pathlib import Path

from .errors import MatrixError, log


# Tools the host needs: (command, Debian package, installed automatically when missing).
HOST_TOOLS = (
    ("busybox", "busybox-static", True),
    ("depmod", "kmod", True),
    ("dpkg-deb", "dpkg", False),
    ("qemu-system-x86_64", "qemu-system-x86", False),
)


# Guest paths the guest mounts its own filesystems over: host files there are invisible to it.
GUEST_SHADOWED = ("/run", "/tmp", "/proc", "/sys", "/dev")


def which_tool(cmd: str) -> str:
    found = shutil.which(cmd) or next((p for p in (f"/usr/sbin/{cmd}", f"/sbin/{cmd}", f"/usr/bin/{cmd}")
                                       if os.access(p, os.X_OK)), None)
    if not found:
        raise MatrixError(f"{cmd} not found")
    return found


def is_static_elf(path: Path) -> bool:
    """True when the ELF has no program interpreter (PT_INTERP), i.e. is static."""
    with open(path, "rb") as fh:
        ident = fh.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2:      # 64-bit only (x86_64 host)
            return False
        endian = "<" if ident[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def ensure_host_tools(install: bool) -> dict[str, str]:
    """Paths of the host tools; installs busybox-static and kmod with apt-get when missing."""
    def find(cmd: str) -> str | None:
        try:
            path = which_tool(cmd)
        except MatrixError:
            return None
        if cmd == "busybox" and not is_static_elf(Path(path)):
            return None
        return path

    missing = [(cmd, pkg, auto) for cmd, pkg, auto in HOST_TOOLS if find(cmd) is None]
    auto_pkgs = sorted({pkg for _, pkg, auto in missing if auto})
    manual = sorted({pkg for _, pkg, auto in missing if not auto})
    if manual:
        raise MatrixError(f"missing {', '.join(c for c, p, a in missing if not a)}: "
                          f"apt-get install {' '.join(manual)}")
    if auto_pkgs:
        if not install:
            raise MatrixError(f"missing {', '.join(c for c, p, a in missing)}: "
                              f"apt-get install {' '.join(auto_pkgs)} (or drop --no-install)")
        log(f"installing {' '.join(auto_pkgs)} with apt-get (a static busybox builds the guest "
            "initramfs, depmod indexes the guest kernel's modules)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *auto_pkgs],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise MatrixError(f"apt-get install {' '.join(auto_pkgs)} failed: "
                              f"{proc.stderr.strip().splitlines()[-1:] or ['?']}")
    tools = {}
    for cmd, pkg, _ in HOST_TOOLS:
        path = find(cmd)
        if path is None:
            raise MatrixError(f"{cmd} still missing after installing {pkg}")
        tools[cmd] = path
    return tools


def lock_work_dir(work: Path):
    """An exclusive lock on *work*: two runs would share logs and scratch space."""
    fh = open(work / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise MatrixError(f"another kernel-matrix run is using {work} "
                          "(wait for it, or pass another --work-dir)") from None
    return fh


def check_visible_in_guest(path: Path, what: str) -> None:
    p = str(path.resolve())
    for shadow in GUEST_SHADOWED:
        if p == shadow or p.startswith(shadow + "/"):
            raise MatrixError(f"{what} {p} lies under {shadow}, which the guest mounts its own "
                              "filesystem over: choose another directory")
