"""Where the project's files are: source tree, build outputs, results.

``CHAINBENCH_BUILD_DIR`` overrides the build directory (default ``build/``
at the top of the source tree).
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BPF_SRC = ROOT / "bpf_src"
RESULTS = ROOT / "results"


def build_dir() -> Path:
    return Path(os.environ.get("CHAINBENCH_BUILD_DIR", ROOT / "build"))


def bpf_objects_dir() -> Path:
    return build_dir() / "bpf"


def bpf_object(name: str) -> Path:
    """Path of the compiled object for ``bpf_src/<name>.bpf.c``."""
    return bpf_objects_dir() / f"{name}.bpf.o"


def datapath_objects() -> list[Path]:
    """Compiled objects of bpf_src/ (test fixtures excluded), sorted by name."""
    return sorted(bpf_objects_dir().glob("*.bpf.o"))
