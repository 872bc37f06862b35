"""Facts about the machine a measurement ran on, recorded with every result."""
from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess

from harness.bpf import _libbpf as L


def _first_line(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def libbpf_version() -> str:
    fn = L.lib.libbpf_version_string
    fn.restype = ctypes.c_char_p
    return fn().decode()


def iptables_backend() -> str | None:
    """'nf_tables' or 'legacy', as `iptables --version` reports it."""
    line = _first_line(["iptables", "--version"])
    if not line:
        return None
    m = re.search(r"\((\w+)\)", line)
    return m.group(1) if m else "legacy"


def info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "clang": _first_line(["clang-19", "--version"]),
        "libbpf": libbpf_version(),
        "iptables_backend": iptables_backend(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
