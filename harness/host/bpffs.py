"""The BPF filesystem where chainbench pins maps, programs and links.

Pins live under ``/sys/fs/bpf/chainbench``.  If no bpffs is mounted at
``/sys/fs/bpf`` (some VMs boot without one) it is mounted there, as Cilium
and systemd do.  Tests that share maps between programs pin them in
``/sys/fs/bpf/cb-test-<pid>-<n>`` instead (outside the pin root, so no topology
command takes them for a node); a process killed before its clean-up leaves
its directories behind, and ``stale_test_pin_dirs`` names them.  A micro
benchmark run pins its programs and the maps its cases share in
``/sys/fs/bpf/cb-bench-<pid>`` for as long as it runs, outside the pin root for
the same reasons: ``chainbench down`` (another user's, a topology test's
teardown) sweeps the pin root, and would pull a running benchmark's maps from
under it; ``stale_bench_pin_dirs`` names a killed run's.
"""
from __future__ import annotations

import os
import subprocess
from harness.errors import ChainbenchError

MOUNT_POINT = "/sys/fs/bpf"
PIN_ROOT = f"{MOUNT_POINT}/chainbench"
TEST_PIN_PREFIX = "cb-test-"
BENCH_PIN_PREFIX = "cb-bench-"


class BpffsError(ChainbenchError, RuntimeError):
    pass


def is_mounted(path: str = MOUNT_POINT) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == path and line.split()[2] == "bpf" for line in mounts)


def ensure_mounted() -> str:
    """Make sure bpffs is mounted at /sys/fs/bpf; return the project's pin root."""
    _mount()
    os.makedirs(PIN_ROOT, exist_ok=True)
    return PIN_ROOT


def _mount() -> None:
    if not is_mounted():
        os.makedirs(MOUNT_POINT, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "bpf", "bpf", MOUNT_POINT],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise BpffsError(f"cannot mount bpffs at {MOUNT_POINT}: {proc.stderr.strip()}")


def pin_path(*parts: str) -> str:
    """A path below the project's pin root (mounting bpffs if needed).  Nothing is
    created: whatever pins there makes its directories (a path computed only to look
    or to remove must not leave an empty pin root behind)."""
    _mount()
    root = PIN_ROOT
    path = os.path.join(root, *parts)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise BpffsError(f"pin path {path} escapes {root}")
    return path


def prune() -> None:
    """Remove the project's pin root if nothing is pinned below it any more."""
    if os.path.isdir(PIN_ROOT) and not os.listdir(PIN_ROOT):
        os.rmdir(PIN_ROOT)


def test_pin_dir(seq: int) -> str:
    """A private pin directory for this process's test number *seq* (not created)."""
    _mount()
    return os.path.join(MOUNT_POINT, f"{TEST_PIN_PREFIX}{os.getpid()}-{seq}")


def stale_test_pin_dirs(prefix: str = TEST_PIN_PREFIX) -> list[str]:
    """Test pin directories (or others named *prefix*<pid>...) whose process is gone."""
    if not os.path.isdir(MOUNT_POINT):
        return []
    out = []
    for name in sorted(os.listdir(MOUNT_POINT)):
        pid = name[len(prefix):].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            out.append(os.path.join(MOUNT_POINT, name))
    return out


def bench_pin_dir() -> str:
    """This process's micro benchmark pin directory (not created)."""
    _mount()
    return os.path.join(MOUNT_POINT, f"{BENCH_PIN_PREFIX}{os.getpid()}")


def stale_bench_pin_dirs() -> list[str]:
    """Micro benchmark pin directories whose run is gone (killed before its clean-up)."""
    return stale_test_pin_dirs(BENCH_PIN_PREFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
