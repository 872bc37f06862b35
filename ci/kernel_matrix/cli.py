"""The command line (ci/kernel_matrix/run.sh, python -m ci.kernel_matrix):
options, host checks, the run over the selected kernels, the result file and
markdown on stdout, and the exit status: 0 every kernel passed (or is
unsupported), 1 one failed or errored, 2 bad input or an unusable host, 130
interrupted."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from .errors import MatrixError, log
from .host import check_visible_in_guest, ensure_host_tools, lock_work_dir
from .kernels import load_kernels, select_kernels
from .paths import DEFAULT_CACHE, DEFAULT_KERNELS, DEFAULT_OUT, DEFAULT_WORK, REPO
from .qemu import DEFAULT_TCG_TIMEOUT, DEFAULT_TIMEOUT, choose_accel, qemu_version
from .report import assemble, markdown, merge_entries, write_json
from .runner import RunOptions, run_kernel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="ci/kernel_matrix/run.sh",
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
