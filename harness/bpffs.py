"""The BPF filesystem where chainbench pins maps, programs and links.

Pins live under ``/sys/fs/bpf/chainbench``.  If no bpffs is mounted at
``/sys/fs/bpf`` (some VMs boot without one) it is mounted there, as Cilium
and systemd do.
"""
from __future__ import annotations

import os
import subprocess

MOUNT_POINT = "/sys/fs/bpf"
PIN_ROOT = f"{MOUNT_POINT}/chainbench"


class BpffsError(RuntimeError):
    pass


def is_mounted(path: str = MOUNT_POINT) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in mounts)


def ensure_mounted() -> str:
    """Make sure bpffs is mounted at /sys/fs/bpf; return the project's pin root."""
    if not is_mounted():
        os.makedirs(MOUNT_POINT, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", MOUNT_POINT],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BpffsError(f"cannot mount bpffs at {MOUNT_POINT}: {proc.stderr.strip()}")
    os.makedirs(PIN_ROOT, exist_ok=True)
    return PIN_ROOT


def pin_path(*parts: str) -> str:
    """A path below the project's pin root (mounting bpffs if needed)."""
    root = ensure_mounted()
    path = os.path.join(root, *parts)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise BpffsError(f"pin path {path} escapes {root}")
    return path


def prune() -> None:
    """Remove the project's pin root if nothing is pinned below it any more."""
    if os.path.isdir(PIN_ROOT) and not os.listdir(PIN_ROOT):
        os.rmdir(PIN_ROOT)
