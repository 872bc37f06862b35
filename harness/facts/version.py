"""What ``chainbench version`` reports: the package's version, the git commit of a
checkout, and the kernel, libbpf and clang the datapath runs with and was built by.

The clang is read from the compiled objects themselves (the DWARF producer
string every ``-g`` object carries), so it names the compiler that built
``build/``, not whichever one is installed now.
"""
from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import tomllib

from harness import paths
from harness.facts import machine

_PRODUCER = re.compile(rb"[ -~]*clang version [ -~]+")


def package_version() -> str:
    try:
        return importlib.metadata.version("chainbench")
    except importlib.metadata.PackageNotFoundError:
        return _pyproject_version() or "unknown"


def _pyproject_version() -> str | None:
    try:
        with open(paths.ROOT / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def git_commit() -> str | None:
    """``<short sha>`` (``-dirty`` with uncommitted changes) of the source checkout, or
    None outside one."""
    if not (paths.ROOT / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty",
                               "--abbrev=12"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def build_clang() -> str | None:
    """The compiler that built the datapath objects in build/ (None: not built)."""
    for obj in paths.datapath_objects():
        try:
            m = _PRODUCER.search(obj.read_bytes())
        except OSError:
            continue
        if m:
            return m.group(0).decode().strip()
    return None


def libbpf_version() -> str | None:
    try:
        return machine.libbpf_version()
    except (OSError, AttributeError):
        return None


def info() -> dict:
    return {"chainbench": package_version(), "git_commit": git_commit(),
            "kernel": platform.release(), "libbpf": libbpf_version(),
            "clang": build_clang(), "build_dir": str(paths.build_dir()),
            "python": platform.python_version()}
