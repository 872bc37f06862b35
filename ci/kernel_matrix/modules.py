"""The guest kernel's modules: index the extracted tree with depmod, order
the few modules the initramfs needs to reach the host's root (virtio, 9p,
overlay) dependencies first, and read them decompressed for busybox insmod."""
from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
from pathlib import Path

from .errors import KernelError
from .host import which_tool


# Modules the initramfs loads before it can mount the host's root; each is
# skipped when the kernel has it built in.  virtio_rng only feeds the guest's
# entropy pool (hypothesis and friends read /dev/urandom early).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
OPTIONAL_BOOT_MODULES = ("virtio_rng",)


def module_name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {module name: (path, [paths of its dependencies])}."""
    out = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        path = path.strip()
        out[module_name(path)] = (path, deps.split())
    return out


def parse_modules_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def boot_module_order(deps: dict[str, tuple[str, list[str]]], builtin: set[str],
                      wanted: tuple[str, ...] = BOOT_MODULES,
                      optional: tuple[str, ...] = OPTIONAL_BOOT_MODULES) -> list[str]:
    """Paths of the modules to insmod, dependencies first, for *wanted* and
    (when the kernel has them) *optional*; built-in modules are left out."""
    by_path = {path: dep_paths for path, dep_paths in deps.values()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in seen:
            return
        if path in chain:
            raise KernelError("error", f"module dependency cycle at {path}")
        for dep in by_path.get(path, []):
            visit(dep, chain + (path,))
        seen.add(path)
        order.append(path)

    for name in (*wanted, *optional):
        name = name.replace("-", "_")
        if name in builtin:
            continue
        if name not in deps:
            if name in optional:
                continue
            raise KernelError("error", f"module {name} is neither built in nor in modules.dep")
        visit(deps[name][0], ())
    return order


def read_module(path: Path) -> bytes:
    """A module's bytes, decompressed (busybox insmod takes plain .ko files)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise KernelError("error", f"{path.name} is zstd-compressed: install zstd")
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return data


def run_depmod(root: Path, release: str) -> None:
    depmod = which_tool("depmod")
    proc = subprocess.run([depmod, "-a", "-b", str(root), release], capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError("error", f"depmod failed: {proc.stderr.strip()[-200:]}")
