"""The kernel list (kernels.toml): its entries as KernelSpec/Deb, validated
with one-line errors naming the entry and key, and --only selection."""
from __future__ import annotations

import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MatrixError


@dataclass(frozen=True)
class Deb:
    url: str
    sha256: str
    size: int | None = None

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1])


@dataclass(frozen=True)
class KernelSpec:
    name: str            # short label, e.g. "bookworm-6.1"
    package: str         # Debian binary package, e.g. linux-image-6.1.0-56-amd64
    version: str         # Debian package version, e.g. 6.1.192-2
    debs: tuple[Deb, ...]
    suite: str = ""
    kernel: str = ""     # expected `uname -r`; read from the .deb when empty
    note: str = ""


@dataclass
class MatrixConfig:
    kernels: list[KernelSpec]
    tests: list[str] = field(default_factory=list)
    pytest_args: list[str] = field(default_factory=lambda: ["-q", "-x"])


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def parse_kernels(text: str, source: str = "kernels.toml") -> MatrixConfig:
    """Parse the kernel list; every problem is a MatrixError naming the entry and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(f"{source}: {exc}") from None
    unknown_top = set(data) - {"matrix", "kernel"}
    if unknown_top:
        raise MatrixError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown_top))}")
    matrix = data.get("matrix", {})
    if not isinstance(matrix, dict):
        raise MatrixError(f"{source}: [matrix] must be a table")
    unknown = set(matrix) - {"tests", "pytest_args"}
    if unknown:
        raise MatrixError(f"{source}: [matrix]: unknown key(s) {', '.join(sorted(unknown))}")
    tests = matrix.get("tests", [])
    pytest_args = matrix.get("pytest_args", ["-q", "-x"])
    for key, value in (("tests", tests), ("pytest_args", pytest_args)):
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise MatrixError(f"{source}: [matrix].{key} must be a list of strings")

    entries = data.get("kernel", [])
    if not isinstance(entries, list) or not entries:
        raise MatrixError(f"{source}: no [[kernel]] entries")
    specs: list[KernelSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: kernel[{i}]"
        if not isinstance(entry, dict):
            raise MatrixError(f"{where}: must be a table")
        if isinstance(entry.get("name"), str):
            where = f"{source}: kernel {entry['name']!r}"
        allowed = {"name", "package", "version", "debs", "suite", "kernel", "note"}
        extra = set(entry) - allowed
        if extra:
            raise MatrixError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        for key in ("name", "package", "version"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise MatrixError(f"{where}: {key} must be a non-empty string")
        for key in ("suite", "kernel", "note"):
            if not isinstance(entry.get(key, ""), str):
                raise MatrixError(f"{where}: {key} must be a string")
        name = entry["name"]
        if not _NAME.match(name):
            raise MatrixError(f"{where}: name may hold only letters, digits and ._+-")
        if name in seen:
            raise MatrixError(f"{where}: duplicate name")
        seen.add(name)
        debs_raw = entry.get("debs")
        if not isinstance(debs_raw, list) or not debs_raw:
            raise MatrixError(f"{where}: debs must be a non-empty list of {{url, sha256}} tables")
        debs = []
        for j, d in enumerate(debs_raw):
            dwhere = f"{where}: debs[{j}]"
            if not isinstance(d, dict):
                raise MatrixError(f"{dwhere}: must be a table with url and sha256")
            extra = set(d) - {"url", "sha256", "size"}
            if extra:
                raise MatrixError(f"{dwhere}: unknown key(s) {', '.join(sorted(extra))}")
            url, sha = d.get("url"), d.get("sha256")
            if not isinstance(url, str) or not url.startswith(("http://", "https://")) \
                    or not url.endswith(".deb"):
                raise MatrixError(f"{dwhere}: url must be an http(s) URL of a .deb")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise MatrixError(f"{dwhere}: sha256 must be 64 lowercase hex digits")
            size = d.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
                raise MatrixError(f"{dwhere}: size must be a positive integer")
            debs.append(Deb(url, sha, size))
        specs.append(KernelSpec(name=name, package=entry["package"], version=entry["version"],
                                debs=tuple(debs), suite=entry.get("suite", ""),
                                kernel=entry.get("kernel", ""), note=entry.get("note", "")))
    return MatrixConfig(kernels=specs, tests=list(tests), pytest_args=list(pytest_args))


def load_kernels(path: Path) -> MatrixConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise MatrixError(f"{path}: {exc.strerror}") from None
    return parse_kernels(text, str(path))


def select_kernels(specs: list[KernelSpec], wanted: list[str]) -> list[KernelSpec]:
    """Kernels whose name, package or kernel release equals one of *wanted* (all when empty)."""
    if not wanted:
        return list(specs)
    out = [s for s in specs if {s.name, s.package, s.kernel} & set(wanted)]
    missing = [w for w in wanted if not any(w in (s.name, s.package, s.kernel) for s in specs)]
    if missing:
        known = ", ".join(s.name for s in specs)
        raise MatrixError(f"no kernel named {', '.join(missing)} in the list (known: {known})")
    return out
