"""Debian kernel packages: download each pinned .deb once into the cache
(sha256-checked), extract it with dpkg-deb, and find the kernel's release,
vmlinuz, config and modules directory in the extracted tree (old and new
Debian layouts)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import KernelError, log
from .kernels import Deb


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_deb(deb: Deb, cache: Path) -> Path:
    """The cached .deb, downloaded (and sha256-checked) when absent."""
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / deb.filename
    if dest.is_file():
        if sha256_file(dest) == deb.sha256:
            return dest
        log(f"{dest.name}: cached copy has the wrong sha256, downloading again")
        dest.unlink()
    size = f" ({deb.size / 1e6:.0f} MB)" if deb.size else ""
    log(f"downloading {deb.url}{size}")
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(deb.url, timeout=60) as resp, open(part, "wb") as fh:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                h.update(chunk)
                fh.write(chunk)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise KernelError("error", f"download {deb.filename} failed: {exc}") from None
    if h.hexdigest() != deb.sha256:
        part.unlink(missing_ok=True)
        raise KernelError("error", f"{deb.filename}: sha256 {h.hexdigest()} does not match the pinned "
                                   f"{deb.sha256} (Debian replaced the file? update kernels.toml)")
    os.replace(part, dest)
    return dest


def extract_debs(debs: list[Path], dest: Path) -> None:
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelError("error", f"dpkg-deb -x {deb.name}: {proc.stderr.strip()[-200:]}")
    normalize_module_layout(dest)


def normalize_module_layout(dest: Path) -> None:
    """Newer Debian kernels ship under usr/lib/modules; depmod -b wants lib/modules."""
    usr_mods = dest / "usr" / "lib" / "modules"
    if usr_mods.is_dir() and not (dest / "lib").is_symlink():
        for child in usr_mods.iterdir():
            target = dest / "lib" / "modules" / child.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                for item in child.iterdir():
                    os.replace(item, target / item.name)
            else:
                os.replace(child, target)


@dataclass
class KernelFiles:
    release: str
    vmlinuz: Path
    config: Path
    modules: Path


def find_kernel_files(root: Path, expected: str = "") -> KernelFiles:
    """vmlinuz, config and modules directory of the extracted tree (old and new Debian layouts)."""
    mods = root / "lib" / "modules"
    releases = sorted(p.name for p in mods.iterdir() if p.is_dir()) if mods.is_dir() else []
    if expected and expected not in releases and releases:
        raise KernelError("error", f"package holds kernel {', '.join(releases)}, not {expected}")
    if not releases:
        raise KernelError("error", "no lib/modules/<release> in the package(s)")
    if len(releases) > 1 and not expected:
        raise KernelError("error", f"several kernels in the package(s): {', '.join(releases)}")
    rel = expected or releases[0]
    moddir = mods / rel

    def first(*cands: Path) -> Path | None:
        return next((c for c in cands if c.is_file()), None)
    vmlinuz = first(root / "boot" / f"vmlinuz-{rel}", moddir / "vmlinuz")
    config = first(root / "boot" / f"config-{rel}", moddir / "config")
    if vmlinuz is None:
        raise KernelError("error", f"no vmlinuz for {rel} in the package(s) (add the linux-binary .deb?)")
    if config is None:
        raise KernelError("error", f"no kernel config for {rel} in the package(s) (add the linux-base .deb?)")
    return KernelFiles(rel, vmlinuz, config, moddir)
