"""Where the driver finds its files and puts its output (all relative to the
repository, which the guest also sees at the same path over 9p)."""
from __future__ import annotations

from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_KERNELS = HERE / "kernels.toml"
INIT_SCRIPT = HERE / "init.sh"           # the guest's PID 1, copied into each initramfs
DEFAULT_WORK = REPO / "build" / "kernel-matrix"
DEFAULT_CACHE = DEFAULT_WORK / "cache"
DEFAULT_OUT = REPO / "results" / "kernel-matrix.json"
