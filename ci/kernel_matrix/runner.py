"""One kernel from start to finish: packages, config check, modules,
initramfs, qemu (retried under TCG when KVM cannot boot it), then the
guest's results and logs turned into the kernel's entry."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .console import console_failure, parse_console
from .debs import extract_debs, fetch_deb, find_kernel_files
from .errors import KernelError, log
from .initramfs import build_initramfs, init_conf
from .kconfig import check_kconfig, parse_kconfig
from .kernels import KernelSpec
from .modules import (boot_module_order, module_name, parse_modules_builtin, parse_modules_dep,
                      read_module, run_depmod)
from .paths import INIT_SCRIPT, REPO
from .qemu import DEFAULT_TCG_TIMEOUT, KVM_BOOT_DEADLINE, qemu_command, run_qemu
from .report import kernel_entry, summarize_guest


# Host environment the guest inherits (it starts from an empty environment).
GUEST_ENV = ("CHAINBENCH_BUILD_DIR", "CHAINBENCH_LIBBPF")


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
                                               INIT_SCRIPT.read_text(), conf, modules))
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
