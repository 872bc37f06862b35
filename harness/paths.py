"""Where the project's files are: source tree, build outputs, results.

``CHAINBENCH_BUILD_DIR`` overrides the build directory (default ``build/``
at the top of the source tree).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BPF_SRC = ROOT / "bpf_src"
RESULTS = ROOT / "results"
#: Runtime state: the topology record, and per node its settings, endpoints and lock.
STATE_ROOT = "/run/chainbench"
#: The jinja2 and YAML scenarios that ship with the project.
SCENARIO_DIR = ROOT / "bench" / "scenarios"


def build_dir() -> Path:
    return Path(os.environ.get("CHAINBENCH_BUILD_DIR", ROOT / "build"))


def bpf_objects_dir() -> Path:
    return build_dir() / "bpf"


#: Objects the Makefile also builds without a kernel feature: name -> (the kernel
#: function the default build needs, the build that does without it).
KERNEL_VARIANTS = {"netdev": ("bpf_loop", "netdev-nobpfloop")}
#: Objects the Makefile builds from another's source configured otherwise: loaded by
#: name where needed, not datapath objects of their own.  lxc-shared: a node's lxc
#: programs, shared by every pod's veth (bpf_src/lib/endpoint.h).
CONFIG_VARIANTS = {"lxc-shared": "lxc"}


@functools.lru_cache(maxsize=None)
def kernel_has(function: str) -> bool:
    """Does the running kernel have *function* (a helper's implementation, e.g.
    bpf_loop since 5.17)?  Read from /proc/kallsyms; unreadable: assume yes."""
    try:
        with open("/proc/kallsyms") as f:
            return f" {function}\n" in f.read()
    except OSError:
        return True


def bpf_object(name: str) -> Path:
    """Path of the compiled object for ``bpf_src/<name>.bpf.c``: for a name in
    KERNEL_VARIANTS, the build the running kernel can load."""
    feature, fallback = KERNEL_VARIANTS.get(name, (None, None))
    if feature and not kernel_has(feature):
        name = fallback
    return bpf_objects_dir() / f"{name}.bpf.o"


def loadable_objects(directory: Path) -> list[Path]:
    """The objects in *directory*, one build per name: the one bpf_object() picks."""
    fallbacks = {fb for _, fb in KERNEL_VARIANTS.values()} | set(CONFIG_VARIANTS)
    names = {p.name.removesuffix(".bpf.o") for p in directory.glob("*.bpf.o")} - fallbacks
    out = []
    for name in sorted(names):
        feature, fallback = KERNEL_VARIANTS.get(name, (None, None))
        pick = fallback if feature and not kernel_has(feature) else name
        out.append(directory / f"{pick}.bpf.o")
    return out


def datapath_objects() -> list[Path]:
    """Compiled objects of bpf_src/ (test fixtures excluded), sorted by name, one
    build per object (see bpf_object)."""
    return loadable_objects(bpf_objects_dir())
