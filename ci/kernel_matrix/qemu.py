"""qemu: the command line (no network device, host / read-only and a results
directory over 9p), KVM or TCG, and running it with a hard timeout, a boot
deadline under KVM and the serial console captured."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MatrixError


DEFAULT_TIMEOUT = 600.0          # per kernel under KVM
DEFAULT_TCG_TIMEOUT = 3600.0     # per kernel under TCG: Python runs 10-50x slower there
# Under KVM a kernel prints its banner within a second or two; one that has
# not after this long is stuck (nested KVM that cannot run it) -> TCG.
KVM_BOOT_DEADLINE = 45.0


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


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.splitlines()[0] if out else ""
