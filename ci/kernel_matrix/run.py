#!/usr/bin/env python3
"""Kernel compatibility matrix: boot Debian kernels under qemu and check that
chainbench's BPF objects load, pass the verifier and behave on each.

For every kernel in kernels.toml: download its .deb(s) once into a cache
(sha256-checked), extract them with ``dpkg-deb -x``, read the kernel config
(no CONFIG_DEBUG_INFO_BTF -> "unsupported: no BTF", nothing booted), run
``depmod`` on the extracted tree, build a tiny busybox initramfs holding
the virtio/9p/overlay modules, and boot the kernel with qemu-system-x86_64
(KVM, else TCG with a warning), 2 GiB, 2 vCPUs, no network device at all.
The guest mounts the host's root read-only over 9p under a tmpfs overlay and
runs guest.py with the repository's own venv: every ``build/bpf/*.bpf.o`` is
loaded with ``harness.bpf.Collection.load`` (whole, then program by program),
then pytest runs the BPF_PROG_TEST_RUN test files.  Results come back through
a second, writable 9p share; a hard timeout per kernel kills qemu.

Writes ``results/kernel-matrix.json`` and prints a markdown table on stdout
(progress goes to stderr).  Must run as root.  Usage:

    .venv/bin/python ci/kernel_matrix/run.py [--only NAME ...] [--cache DIR] [--timeout S]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DEFAULT_KERNELS = HERE / "kernels.toml"
DEFAULT_WORK = REPO / "build" / "kernel-matrix"
DEFAULT_CACHE = DEFAULT_WORK / "cache"
DEFAULT_OUT = REPO / "results" / "kernel-matrix.json"
DEFAULT_TIMEOUT = 600.0          # per kernel under KVM
DEFAULT_TCG_TIMEOUT = 3600.0     # per kernel under TCG: Python runs 10-50x slower there
# Under KVM a kernel prints its banner within a second or two; one that has
# not after this long is stuck (nested KVM that cannot run it) -> TCG.
KVM_BOOT_DEADLINE = 45.0

# Modules the initramfs loads before it can mount the host's root; each is
# skipped when the kernel has it built in.  virtio_rng only feeds the guest's
# entropy pool (hypothesis and friends read /dev/urandom early).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
OPTIONAL_BOOT_MODULES = ("virtio_rng",)

# Kernel options the guest cannot do without: (option, accepted values, status, detail).
REQUIRED_KCONFIG = (
    ("CONFIG_BPF_SYSCALL", ("y",), "unsupported", "no bpf() syscall (CONFIG_BPF_SYSCALL is not set)"),
    ("CONFIG_DEBUG_INFO_BTF", ("y",), "unsupported", "no BTF (CONFIG_DEBUG_INFO_BTF is not set)"),
    ("CONFIG_NET_9P_VIRTIO", ("y", "m"), "error",
     "kernel has no 9p over virtio (CONFIG_NET_9P_VIRTIO): use the amd64 flavour, cloud-amd64 lacks 9p"),
    ("CONFIG_9P_FS", ("y", "m"), "error", "kernel has no 9p filesystem (CONFIG_9P_FS)"),
    ("CONFIG_OVERLAY_FS", ("y", "m"), "error", "kernel has no overlayfs (CONFIG_OVERLAY_FS)"),
    ("CONFIG_VIRTIO_PCI", ("y", "m"), "error", "kernel has no virtio-pci (CONFIG_VIRTIO_PCI)"),
    ("CONFIG_BLK_DEV_INITRD", ("y",), "error", "kernel cannot boot an initramfs (CONFIG_BLK_DEV_INITRD)"),
)

# Tools the host needs: (command, Debian package, installed automatically when missing).
HOST_TOOLS = (
    ("busybox", "busybox-static", True),
    ("depmod", "kmod", True),
    ("dpkg-deb", "dpkg", False),
    ("qemu-system-x86_64", "qemu-system-x86", False),
)

# Host environment the guest inherits (it starts from an empty environment).
GUEST_ENV = ("CHAINBENCH_BUILD_DIR", "CHAINBENCH_LIBBPF")
STATUSES = ("pass", "fail", "unsupported", "error")
RESULT_BEGIN = "@@CBKM-RESULT-BEGIN@@"
RESULT_END = "@@CBKM-RESULT-END@@"
# Guest paths the guest mounts its own filesystems over: host files there are invisible to it.
GUEST_SHADOWED = ("/run", "/tmp", "/proc", "/sys", "/dev")


class MatrixError(Exception):
    """A problem that stops the whole run (bad kernel list, missing tool, not root)."""


class KernelError(Exception):
    """A problem with one kernel: it gets status *status* and the run goes on."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def log(msg: str) -> None:
    print(f"kernel-matrix: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# kernel list

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


# --------------------------------------------------------------------------
# kernel packages

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


def parse_kconfig(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value.strip('"')
    return out


def check_kconfig(cfg: dict[str, str]) -> tuple[str, str] | None:
    """(status, detail) when the kernel cannot be tested, else None."""
    for option, accepted, status, detail in REQUIRED_KCONFIG:
        if cfg.get(option) not in accepted:
            return status, detail
    return None


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


# --------------------------------------------------------------------------
# initramfs

def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive of (name, mode, data, (rdev major, minor)) entries,
    in order; device nodes need no privileges this way."""
    buf = io.BytesIO()

    def pad(n: int) -> None:
        buf.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data, (rmaj, rmin)) in enumerate(
            [*entries, ("TRAILER!!!", 0, b"", (0, 0))], start=1):
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(raw), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        buf.write(header + raw)
        pad(len(header) + len(raw))
        buf.write(data)
        pad(len(data))
    return buf.getvalue()


S_IFDIR, S_IFREG, S_IFCHR, S_IFLNK = 0o040000, 0o100000, 0o020000, 0o120000


def init_conf(values: dict[str, str]) -> str:
    return "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items())


def build_initramfs(busybox: Path, init_script: str, conf: str,
                    modules: list[tuple[str, bytes]]) -> bytes:
    """gzip'd cpio: /init, /cbkm.conf, /bin/busybox, /dev/console and the boot
    modules as /modules/NN-name.ko with their load order in /modules/order."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "proc", "sys", "modules", "lower", "upper", "newroot"):
        entries.append((d, S_IFDIR | 0o755, b"", (0, 0)))
    entries.append(("dev/console", S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("dev/null", S_IFCHR | 0o666, b"", (1, 3)))
    entries.append(("bin/busybox", S_IFREG | 0o755, busybox.read_bytes(), (0, 0)))
    entries.append(("bin/sh", S_IFLNK | 0o777, b"busybox", (0, 0)))
    entries.append(("init", S_IFREG | 0o755, init_script.encode(), (0, 0)))
    entries.append(("cbkm.conf", S_IFREG | 0o644, conf.encode(), (0, 0)))
    names = []
    for i, (name, data) in enumerate(modules):
        fname = f"{i:02d}-{name}.ko"
        names.append(fname)
        entries.append((f"modules/{fname}", S_IFREG | 0o644, data, (0, 0)))
    entries.append(("modules/order", S_IFREG | 0o644, "".join(n + "\n" for n in names).encode(),
                    (0, 0)))
    return gzip.compress(cpio_newc(entries), compresslevel=6)


# --------------------------------------------------------------------------
# qemu

def qemu_escape(path: str | Path) -> str:
    return str(path).replace(",", ",,")


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_accel(requested: str, sysmodule: Path = Path("/sys/module")) -> tuple[str, str]:
    """(accel, warning or "") for --accel auto|kvm|tcg."""
    if requested == "tcg":
        return "tcg", ""
    if not kvm_usable():
        if requested == "kvm":
            raise MatrixError("--accel kvm: /dev/kvm is not usable")
        return "tcg", "/dev/kvm is not usable: falling back to TCG emulation (much slower)"
    pvm_only = (sysmodule / "kvm_pvm").is_dir() and not any(
        (sysmodule / m).is_dir() for m in ("kvm_intel", "kvm_amd"))
    if pvm_only and requested == "auto":
        return "tcg", ("this host's KVM is PVM (kvm_pvm), which does not boot unmodified "
                       "distribution kernels: falling back to TCG emulation (much slower)")
    return "kvm", ""


def qemu_command(qemu: str, vmlinuz: Path, initrd: Path, outdir: Path, *, kvm: bool,
                 memory: str = "2G", smp: int = 2, name: str = "cbkm") -> list[str]:
    """qemu-system-x86_64 argv: serial console on stdout, no network device,
    host / exported read-only (tag cbkmroot), *outdir* writable (tag cbkmout)."""
    cmdline = ("console=ttyS0,115200 panic=-1 loglevel=4 random.trust_cpu=on "
               "8250.nr_uarts=1 rdinit=/init")
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg", "-cpu", "max"]
    return [qemu, "-name", name, "-machine", "q35", *accel, "-m", memory, "-smp", str(smp),
            "-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
            "-serial", "stdio", "-monitor", "none",
            "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", cmdline,
            "-virtfs", "local,path=/,mount_tag=cbkmroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={qemu_escape(outdir)},mount_tag=cbkmout,security_model=none,"
                       "multidevs=remap",
            "-device", "virtio-rng-pci"]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


@dataclass
class QemuRun:
    returncode: int | None
    timed_out: bool
    console: str
    duration_s: float
    boot_stalled: bool = False     # no "Linux version" banner before boot_deadline


def run_qemu(cmd: list[str], timeout: float, console_log: Path, echo: bool = True,
             boot_deadline: float | None = None) -> QemuRun:
    """Run qemu with a hard timeout; the console goes to *console_log* (and
    guest progress lines to stderr).  With *boot_deadline*, a kernel that has
    not printed its banner by then counts as stalled and is stopped.  qemu is
    always gone when this returns."""
    t0 = time.monotonic()
    chunks: list[str] = []
    booted = threading.Event()
    boot_stalled = False
    with open(console_log, "w", errors="replace") as logfh:
        # Own session: a terminal's Ctrl-C reaches only us, and we stop qemu.
        # PDEATHSIG: qemu dies with us even if we are SIGKILLed.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode(errors="replace").replace("\r", "")
                chunks.append(line)
                if "Linux version" in line:
                    booted.set()
                logfh.write(line)
                logfh.flush()
                if echo and (line.startswith(("cbkm-", "@@CBKM-FATAL")) or "Kernel panic" in line):
                    print("    " + line.rstrip(), file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            if boot_deadline is not None and not booted.wait(timeout=min(boot_deadline, timeout)) \
                    and proc.poll() is None:
                boot_stalled = True
            else:
                proc.wait(timeout=max(0.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
    return QemuRun(proc.returncode, timed_out, "".join(chunks), round(time.monotonic() - t0, 1),
                   boot_stalled)


# --------------------------------------------------------------------------
# results

def parse_console(text: str) -> dict | None:
    """The guest's result document from the console (between the markers), or None.
    Kernel messages may interleave: only a line that parses as JSON counts."""
    text = text.replace("\r", "")
    start = text.rfind(RESULT_BEGIN)
    if start < 0:
        return None
    end = text.find(RESULT_END, start)
    body = text[start + len(RESULT_BEGIN): end if end >= 0 else len(text)]
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_c])")


def console_failure(text: str) -> str:
    """A one-line reason from a console that produced no result."""
    text = _ANSI.sub("", text.replace("\r", ""))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "@@CBKM-FATAL@@" in ln:
            return "guest init: " + ln.split("@@CBKM-FATAL@@", 1)[1].strip()
    for i, ln in enumerate(lines):
        if "Kernel panic" in ln:
            return re.sub(r"^\[\s*[\d.]+\]\s*", "", ln)
    return ("last console line: " + re.sub(r"^\[\s*[\d.]+\]\s*", "", lines[-1])[:200]) if lines \
        else "no console output"


def _object_cell(res: dict) -> str:
    status = res.get("status", "error")
    return "ok" if status == "ok" else f"{status}: {res.get('detail', '')}".strip()


def one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summarize_guest(guest: dict) -> dict:
    """status, detail, objects, programs, passed, failed, skipped from the guest's document."""
    objects = {name: _object_cell(res) for name, res in sorted(guest.get("objects", {}).items())}
    programs = guest.get("programs", {})
    py = guest.get("pytest") or {}
    passed = int(py.get("passed", 0))
    failed = int(py.get("failed", 0)) + int(py.get("errors", 0))
    skipped = int(py.get("skipped", 0))
    out = {"objects": objects, "programs": programs, "passed": passed, "failed": failed,
           "skipped": skipped}
    bad_objects = {n: c for n, c in objects.items() if c != "ok"}

    problems = []
    for name, cell in bad_objects.items():
        problems.append(f"{name}: {cell}")
    if py and (failed or py.get("exit") not in (0, None)):
        first = (py.get("failures") or [py.get("summary", "")])[0]
        problems.append(f"pytest: {first}")

    if not guest.get("btf", True):
        out.update(status="unsupported", detail="no BTF (/sys/kernel/btf/vmlinux missing)")
    elif guest.get("guest_error"):
        out.update(status="error", detail=one_line(f"guest.py: {guest['guest_error']}"))
    elif guest.get("phase") != "done":
        out.update(status="error", detail=one_line(
            f"guest stopped during {guest.get('phase', '?')}" + (f"; {problems[0]}" if problems else "")))
    elif py.get("timed_out"):
        out.update(status="error", detail=one_line(py.get("summary", "pytest timed out")))
    elif py and py.get("exit") not in (0, 1):
        out.update(status="error", detail=one_line(
            f"pytest exit {py.get('exit')}: {py.get('summary', '')}"))
    elif problems:
        out.update(status="fail", detail=one_line(
            f"{len(objects) - len(bad_objects)}/{len(objects)} objects load; " + "; ".join(problems)))
    else:
        tests = (f"{passed} tests passed" + (f", {skipped} skipped" if skipped else "")) if py \
            else "no tests run"
        out.update(status="pass", detail=one_line(
            f"{len(objects)}/{len(objects)} objects load; {tests}"))
    return out


def kernel_entry(spec: KernelSpec, *, kernel: str = "", status: str, detail: str,
                 duration_s: float, objects: dict | None = None, programs: dict | None = None,
                 passed: int = 0, failed: int = 0, skipped: int = 0, accel: str = "",
                 log_dir: str = "", tests: list[str] | None = None,
                 pytest_args: list[str] | None = None, tested_at: str | None = None) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    return {"kernel": kernel or spec.kernel or spec.name, "name": spec.name, "suite": spec.suite,
            "package": f"{spec.package} {spec.version}", "status": status,
            "detail": one_line(detail), "objects": objects or {}, "programs": programs or {},
            "passed": passed, "failed": failed, "skipped": skipped,
            "duration_s": round(float(duration_s), 1), "accel": accel,
            "tests": list(tests or []), "pytest_args": list(pytest_args or []),
            "tested_at": tested_at or now_iso(),
            "log_dir": log_dir}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def merge_entries(previous: list[dict], new: list[dict], order: list[str]) -> list[dict]:
    """Entries of this run plus earlier ones for the other kernels of the list,
    in the list's order; earlier entries for kernels no longer listed are dropped."""
    by_name = {e.get("name"): e for e in previous if isinstance(e, dict)}
    by_name.update({e["name"]: e for e in new})
    return [by_name[name] for name in order if name in by_name]


def assemble(entries: list[dict], *, host_kernel: str | None = None,
             created: str | None = None, extra: dict | None = None) -> dict:
    doc = {"created": created or now_iso(),
           "host_kernel": host_kernel or platform.release()}
    doc.update(extra or {})
    doc["kernels"] = entries
    return doc


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict) -> str:
    """The results as markdown: one row per kernel, then objects x kernels."""
    rows = ["| kernel | suite | package | status | passed | failed | time | detail |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | --- |"]
    for k in doc["kernels"]:
        rows.append("| " + " | ".join(_md_cell(x) for x in (
            k["kernel"], k.get("suite", ""), k.get("package", ""), k["status"], k["passed"],
            k["failed"], f"{k['duration_s']:.0f} s", k.get("detail", ""))) + " |")
    objects = sorted({o for k in doc["kernels"] for o in k.get("objects", {})})
    if objects:
        rows += ["", "| object | " + " | ".join(_md_cell(k["kernel"]) for k in doc["kernels"]) + " |",
                 "| --- |" + " --- |" * len(doc["kernels"])]
        for o in objects:
            cells = []
            for k in doc["kernels"]:
                cell = k.get("objects", {}).get(o)
                cells.append("-" if cell is None else ("ok" if cell == "ok" else cell.split(":", 1)[0]))
            rows.append(f"| {o} | " + " | ".join(cells) + " |")
        failures = [(k["kernel"], o, c) for k in doc["kernels"]
                    for o, c in sorted(k.get("objects", {}).items()) if c != "ok"]
        if failures:
            rows.append("")
            for kern, o, c in failures:
                rows.append(f"- {kern} {o}: {_md_cell(c)}")
    return "\n".join(rows)


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# host checks

def which_tool(cmd: str) -> str:
    found = shutil.which(cmd) or next((p for p in (f"/usr/sbin/{cmd}", f"/sbin/{cmd}", f"/usr/bin/{cmd}")
                                       if os.access(p, os.X_OK)), None)
    if not found:
        raise MatrixError(f"{cmd} not found")
    return found


def is_static_elf(path: Path) -> bool:
    """True when the ELF has no program interpreter (PT_INTERP), i.e. is static."""
    import struct
    with open(path, "rb") as fh:
        ident = fh.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2:      # 64-bit only (x86_64 host)
            return False
        endian = "<" if ident[5] == 1 else ">"
        phoff, = struct.unpack_from(endian + "Q", ident, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def ensure_host_tools(install: bool) -> dict[str, str]:
    """Paths of the host tools; installs busybox-static and kmod with apt-get when missing."""
    def find(cmd: str) -> str | None:
        try:
            path = which_tool(cmd)
        except MatrixError:
            return None
        if cmd == "busybox" and not is_static_elf(Path(path)):
            return None
        return path

    missing = [(cmd, pkg, auto) for cmd, pkg, auto in HOST_TOOLS if find(cmd) is None]
    auto_pkgs = sorted({pkg for _, pkg, auto in missing if auto})
    manual = sorted({pkg for _, pkg, auto in missing if not auto})
    if manual:
        raise MatrixError(f"missing {', '.join(c for c, p, a in missing if not a)}: "
                          f"apt-get install {' '.join(manual)}")
    if auto_pkgs:
        if not install:
            raise MatrixError(f"missing {', '.join(c for c, p, a in missing)}: "
                              f"apt-get install {' '.join(auto_pkgs)} (or drop --no-install)")
        log(f"installing {' '.join(auto_pkgs)} with apt-get (a static busybox builds the guest "
            "initramfs, depmod indexes the guest kernel's modules)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *auto_pkgs],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise MatrixError(f"apt-get install {' '.join(auto_pkgs)} failed: "
                              f"{proc.stderr.strip().splitlines()[-1:] or ['?']}")
    tools = {}
    for cmd, pkg, _ in HOST_TOOLS:
        path = find(cmd)
        if path is None:
            raise MatrixError(f"{cmd} still missing after installing {pkg}")
        tools[cmd] = path
    return tools


def lock_work_dir(work: Path):
    """An exclusive lock on *work*: two runs would share logs and scratch space."""
    import fcntl
    fh = open(work / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise MatrixError(f"another kernel-matrix run is using {work} "
                          "(wait for it, or pass another --work-dir)") from None
    return fh


def check_visible_in_guest(path: Path, what: str) -> None:
    p = str(path.resolve())
    for shadow in GUEST_SHADOWED:
        if p == shadow or p.startswith(shadow + "/"):
            raise MatrixError(f"{what} {p} lies under {shadow}, which the guest mounts its own "
                              "filesystem over: choose another directory")


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""


# --------------------------------------------------------------------------
# one kernel

@dataclass
class RunOptions:
    cache: Path
    work: Path
    timeout: float
    tools: dict[str, str]
    kvm: bool
    tests: list[str]
    pytest_args: list[str]
    guest_python: str
    objects_dir: Path
    keep: bool = False
    echo: bool = True
    timeout_given: bool = False


def run_kernel(spec: KernelSpec, opts: RunOptions, run_dir: Path) -> dict:
    t0 = time.monotonic()
    accel = "kvm" if opts.kvm else "tcg"
    log_dir = opts.work / "logs" / spec.name
    kernel = spec.kernel

    def entry(status: str, detail: str, **kw) -> dict:
        return kernel_entry(spec, kernel=kernel, status=status, detail=detail,
                            duration_s=time.monotonic() - t0, accel=accel,
                            log_dir=os.path.relpath(log_dir, REPO),
                            tests=opts.tests, pytest_args=opts.pytest_args if opts.tests else [],
                            **kw)

    kdir = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=run_dir))
    try:
        if log_dir.exists():
            shutil.rmtree(log_dir)
        log_dir.mkdir(parents=True)
        debs = [fetch_deb(d, opts.cache) for d in spec.debs]
        root = kdir / "root"
        root.mkdir()
        log(f"{spec.name}: extracting {', '.join(d.name for d in debs)}")
        extract_debs(debs, root)
        files = find_kernel_files(root, spec.kernel)
        kernel = files.release
        blocked = check_kconfig(parse_kconfig(files.config.read_text(errors="replace")))
        if blocked:
            return entry(*blocked)
        run_depmod(root, files.release)
        deps = parse_modules_dep((files.modules / "modules.dep").read_text())
        builtin_path = files.modules / "modules.builtin"
        builtin = parse_modules_builtin(builtin_path.read_text()) if builtin_path.is_file() else set()
        order = boot_module_order(deps, builtin)
        modules = [(module_name(p), read_module(files.modules / p)) for p in order]

        outdir = kdir / "out"
        outdir.mkdir()
        initrd = kdir / "initramfs.cpio.gz"
        while True:
            accel = "kvm" if opts.kvm else "tcg"
            # The hard limit covers the qemu run (boot + guest); the guest stops
            # itself a little earlier so that its partial results still arrive.
            guest_timeout = max(60, int(opts.timeout) - 30)
            (outdir / "config.json").write_text(json.dumps({
                "tests": opts.tests, "pytest_args": opts.pytest_args,
                "pytest_timeout": max(30, guest_timeout - 150),
                "objects_dir": str(opts.objects_dir),
                "env": {k: v for k, v in os.environ.items() if k in GUEST_ENV}}))
            conf = init_conf({"CBKM_REPO": REPO, "CBKM_PYTHON": opts.guest_python,
                              "CBKM_MODULES": files.modules.resolve(),
                              "CBKM_TIMEOUT": guest_timeout})
            initrd.write_bytes(build_initramfs(Path(opts.tools["busybox"]),
                                               (HERE / "init.sh").read_text(), conf, modules))
            cmd = qemu_command(opts.tools["qemu-system-x86_64"], files.vmlinuz, initrd, outdir,
                               kvm=opts.kvm, name=f"cbkm-{spec.name}")
            (log_dir / "qemu-cmd.txt").write_text(shlex.join(cmd) + "\n")
            log(f"{spec.name}: booting {kernel} ({accel}, timeout {opts.timeout:.0f}s, "
                f"{len(modules)} boot modules)")
            run = run_qemu(cmd, opts.timeout, log_dir / "console.log", echo=opts.echo,
                           boot_deadline=KVM_BOOT_DEADLINE if opts.kvm else None)
            if not run.boot_stalled:
                break
            log(f"WARNING: {kernel} printed nothing in {KVM_BOOT_DEADLINE:.0f}s under KVM: "
                "this host's KVM cannot run it; using TCG emulation from now on")
            opts.kvm = False
            if not opts.timeout_given:
                opts.timeout = DEFAULT_TCG_TIMEOUT

        for item in outdir.iterdir():
            if item.name != "config.json":
                dest = log_dir / item.name
                if item.is_dir():
                    shutil.copytree(item, dest, dirs_exist_ok=True)
                else:
                    shutil.copy2(item, dest)
        guest = None
        result_file = outdir / "result.json"
        if result_file.is_file():
            try:
                guest = json.loads(result_file.read_text())
            except json.JSONDecodeError:
                guest = None
        if guest is None:
            guest = parse_console(run.console)
        if run.timed_out:
            detail = f"timed out after {opts.timeout:.0f}s (qemu killed)"
            if guest:
                detail += f" during {guest.get('phase', '?')}"
            else:
                detail += "; " + console_failure(run.console)
            base = summarize_guest(guest) if guest else {}
            base.pop("status", None)
            base.pop("detail", None)
            return entry("error", detail, **base)
        if guest is None:
            return entry("error", f"no result from the guest (qemu exit {run.returncode}); "
                                  + console_failure(run.console))
        summary = summarize_guest(guest)
        kernel = guest.get("kernel") or kernel
        return entry(summary.pop("status"), summary.pop("detail"), **summary)
    except KernelError as exc:
        return entry(exc.status, exc.detail)
    finally:
        if not opts.keep:
            shutil.rmtree(kdir, ignore_errors=True)


# --------------------------------------------------------------------------
# main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ci/kernel_matrix/run.py",
        description="Boot Debian kernels under qemu; load chainbench's BPF objects and run the "
                    "BPF_PROG_TEST_RUN tests on each; write results/kernel-matrix.json.")
    ap.add_argument("--kernels", type=Path, default=DEFAULT_KERNELS, help="kernel list (TOML)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this kernel (name, package or release); repeatable")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("CHAINBENCH_KERNEL_CACHE",
                                                                      DEFAULT_CACHE)),
                    help="where downloaded .debs are kept (default build/kernel-matrix/cache, "
                         "or $CHAINBENCH_KERNEL_CACHE)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                    help="scratch space and logs (default build/kernel-matrix)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result document")
    ap.add_argument("--timeout", type=float, default=None,
                    help=f"hard limit per kernel in seconds, boot included (default "
                         f"{DEFAULT_TIMEOUT:.0f} under KVM, {DEFAULT_TCG_TIMEOUT:.0f} under TCG)")
    ap.add_argument("--tests", nargs="+", metavar="FILE",
                    help="pytest files to run in the guest (default: [matrix].tests)")
    ap.add_argument("--pytest-args", default=None,
                    help="pytest options in the guest (default: [matrix].pytest_args, '-q -x')")
    ap.add_argument("--no-tests", action="store_true", help="only load the objects")
    ap.add_argument("--objects", type=Path, default=None, metavar="DIR",
                    help="load the *.bpf.o of DIR instead of build/bpf")
    ap.add_argument("--no-merge", action="store_true",
                    help="with --only: write only this run's kernels instead of replacing "
                         "them in the existing --out file")
    ap.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                    help="qemu accelerator (auto: KVM when it can boot the kernels, else TCG)")
    ap.add_argument("--no-install", action="store_true",
                    help="fail instead of apt-get installing busybox-static/kmod")
    ap.add_argument("--keep", action="store_true", help="keep the extracted kernels and initramfs")
    ap.add_argument("--list", action="store_true", help="print the kernel list and exit")
    ap.add_argument("--quiet", action="store_true", help="do not echo guest progress")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_kernels(args.kernels)
        specs = select_kernels(config.kernels, args.only)
        if args.list:
            for s in specs:
                print(f"{s.name:22} {s.suite:20} {s.package} {s.version}")
            return 0
        if os.geteuid() != 0:
            raise MatrixError("must run as root (qemu needs /dev/kvm, the guest reads the whole "
                              "host filesystem over 9p)")
        if platform.machine() != "x86_64":
            raise MatrixError(f"needs an x86_64 host (this is {platform.machine()})")
        tools = ensure_host_tools(install=not args.no_install)
        from_env = os.environ.get("CHAINBENCH_BUILD_DIR")
        objects_dir = args.objects or (Path(from_env) if from_env else REPO / "build") / "bpf"
        if not sorted(objects_dir.glob("*.bpf.o")):
            raise MatrixError(f"no compiled objects in {objects_dir}: run `make build` first")
        work = args.work_dir.resolve()
        for path, what in ((REPO, "the repository"), (work, "--work-dir"),
                           (objects_dir, "the objects directory")):
            check_visible_in_guest(path, what)
        guest_python = str(REPO / ".venv" / "bin" / "python")
        if not os.access(guest_python, os.X_OK):
            guest_python = sys.executable
        accel, warning = choose_accel(args.accel)
        if warning:
            log(f"WARNING: {warning}")
        kvm = accel == "kvm"
        tests = [] if args.no_tests else (args.tests or config.tests)
        for t in tests:
            if not (REPO / t.split("::")[0]).exists():
                raise MatrixError(f"test file {t} does not exist")
        pytest_args = shlex.split(args.pytest_args) if args.pytest_args is not None \
            else config.pytest_args
        work.mkdir(parents=True, exist_ok=True)
        lock = lock_work_dir(work)  # noqa: F841 - held until exit; the kernel drops it if we die
    except MatrixError as exc:
        print(f"kernel-matrix: ERROR: {exc}", file=sys.stderr)
        return 2

    for stale in work.glob("run-*"):
        log(f"removing {stale.name}, left behind by a run that was killed")
        shutil.rmtree(stale, ignore_errors=True)
    timeout = args.timeout or (DEFAULT_TIMEOUT if kvm else DEFAULT_TCG_TIMEOUT)
    opts = RunOptions(cache=args.cache.resolve(), work=work, timeout=timeout, tools=tools,
                      kvm=kvm, tests=tests, pytest_args=pytest_args, guest_python=guest_python,
                      objects_dir=objects_dir.resolve(), keep=args.keep, echo=not args.quiet,
                      timeout_given=args.timeout is not None)

    def on_term(signum, frame):  # noqa: ARG001 - turn SIGTERM into the Ctrl-C path
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    entries: list[dict] = []
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    interrupted = False
    try:
        for spec in specs:
            log(f"=== {spec.name}: {spec.package} {spec.version}")
            e = run_kernel(spec, opts, run_dir)
            log(f"{spec.name}: {e['status']} ({e['duration_s']:.0f}s): {e['detail']}")
            entries.append(e)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: qemu stopped, partial results follow")
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    ran = entries
    if args.only and not args.no_merge and entries and args.out.is_file():
        try:
            previous = json.loads(args.out.read_text()).get("kernels", [])
        except (OSError, ValueError, AttributeError):
            previous = []
        entries = merge_entries(previous, entries, [s.name for s in config.kernels])
        if len(entries) > len(ran):
            log(f"kept {len(entries) - len(ran)} earlier result(s) from {args.out}")
    listed = {s.name for s in config.kernels}
    doc = assemble(entries, extra={"qemu": qemu_version(tools["qemu-system-x86_64"]),
                                   "accel": "kvm" if opts.kvm else "tcg",
                                   "tests": tests,
                                   "complete": not interrupted
                                   and {e["name"] for e in entries} == listed})
    if entries:
        write_json(args.out, doc)
        log(f"wrote {args.out}")
    print(markdown(doc))
    if interrupted:
        return 130
    return 0 if all(e["status"] in ("pass", "unsupported") for e in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
