"""The guest's initramfs: a gzip'd newc cpio written directly in Python (no
root needed for device nodes) holding busybox, init.sh as /init, its
settings (/cbkm.conf) and the boot modules in load order."""
from __future__ import annotations

import gzip
import io
import shlex
from pathlib import Path


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
