"""The kernel matrix's guest side: runs inside the qemu guest booted by runner.py
(init.sh starts it as ``python -m ci.kernel_matrix.guest`` from the repository).

The guest sees the host's root filesystem (read-only 9p under a tmpfs
overlay), so this is the repository's own venv python and harness, talking to
the guest's kernel.  It

1. loads every compiled object (``build/bpf/*.bpf.o``) with
   ``harness.bpf.Collection.load``: once whole, then each program alone, so a
   rejection names every program the kernel refuses, with the verifier's last
   lines;
2. runs pytest on the BPF_PROG_TEST_RUN test files named in config.json;
3. writes ``result.json`` into the results share (after step 1 and again
   after step 2, so a hung pytest still leaves the load results), and prints
   the same document between ``@@CBKM-RESULT-BEGIN@@`` / ``@@CBKM-RESULT-END@@``
   on the console as a fallback channel.

The pure helpers (junit parsing, verifier-log tails) are imported by
tests/test_kernel_matrix.py.

harness is imported inside the functions that use it, not at the top: main()
first applies the host's CHAINBENCH_LIBBPF / CHAINBENCH_BUILD_DIR from
config.json, and harness.bpf opens libbpf when it is imported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

from .console import RESULT_BEGIN, RESULT_END

REPO = Path(__file__).resolve().parent.parent.parent

TAIL_LINES = 6


REPORT_TITLE = "Verification failed:"


def verifier_report_title(log: str) -> str:
    """Newer verifiers (Debian's 7.3) follow the classic message with a structured
    report ("Verification failed: <class>", Reason, Source context, Suggestion):
    its title, or ""."""
    from harness.bpf.errors import verifier_lines
    body, _ = verifier_lines(log)
    return next((ln for ln in body if ln.startswith(REPORT_TITLE)), "")


def verifier_tail(log: str, n: int = TAIL_LINES) -> list[str]:
    """The last *n* lines of the verifier's classic output (inside libbpf's PROG
    LOAD LOG markers, before any structured report, without the 'processed N
    insns' statistics), else the log's last lines."""
    from harness.bpf.errors import verifier_lines
    body, lines = verifier_lines(log)
    cut = next((i for i, ln in enumerate(body) if ln.startswith(REPORT_TITLE)), None)
    if cut is not None:
        body = body[:cut]
    return body[-n:] if body else lines[-n:]


def describe_error(exc: BaseException) -> tuple[str, str, list[str]]:
    """(kind, one-line message, verifier tail) of a load failure."""
    from harness.bpf import BpfError, StructMismatchError, VerifierError
    from harness.bpf.errors import NotSupportedError
    if isinstance(exc, VerifierError):
        tail = verifier_tail(exc.log)
        last = tail[-1] if tail else str(exc)
        prog = f"{exc.program}: " if exc.program else ""
        title = verifier_report_title(exc.log)
        report = f" [{title}]" if title else ""
        return "verifier", f"{prog}{last}{report} (errno {exc.errno})", tail
    if isinstance(exc, StructMismatchError):
        return "mismatch", str(exc), []
    if isinstance(exc, NotSupportedError):
        return "unsupported", str(exc), []
    if isinstance(exc, BpfError):
        return "error", str(exc), []
    return "error", f"{type(exc).__name__}: {exc}", []


def load_objects(obj_dir: Path, out: Path) -> tuple[dict, dict]:
    """Load each object whole and each program alone.

    Returns ({object: {"status", "detail", "tail"}}, {object: {program: "ok" | "kind: msg"}}).
    Whole-object verifier logs are kept in out/verifier/<object>.<program>.log."""
    from harness.bpf import Collection
    from harness.bpf.collection import list_programs

    objects: dict[str, dict] = {}
    programs: dict[str, dict[str, str]] = {}
    logdir = out / "verifier"
    from harness.paths import loadable_objects
    for path in loadable_objects(obj_dir):
        name = path.name
        t0 = time.monotonic()
        try:
            with Collection.load(str(path)):
                pass
            objects[name] = {"status": "ok", "detail": "", "tail": []}
        except Exception as exc:  # noqa: BLE001 - every failure is a result here
            kind, msg, tail = describe_error(exc)
            objects[name] = {"status": kind, "detail": msg, "tail": tail}
            if getattr(exc, "log", None):
                logdir.mkdir(exist_ok=True)
                prog = getattr(exc, "program", None) or "object"
                (logdir / f"{name}.{prog}.log").write_text(exc.log)
        per_prog: dict[str, str] = {}
        try:
            names = sorted(list_programs(str(path)))
        except Exception as exc:  # noqa: BLE001
            names = []
            per_prog["*"] = "error: " + describe_error(exc)[1]
        for prog in names:
            try:
                with Collection.load(str(path), programs=[prog]):
                    pass
                per_prog[prog] = "ok"
            except Exception as exc:  # noqa: BLE001
                kind, msg, _ = describe_error(exc)
                per_prog[prog] = f"{kind}: {msg}"
                if getattr(exc, "log", None):
                    logdir.mkdir(exist_ok=True)
                    (logdir / f"{name}.{prog}.log").write_text(exc.log)
        programs[name] = per_prog
        status = objects[name]["status"]
        line = "ok" if status == "ok" else f"{status}: {objects[name]['detail']}"
        print(f"cbkm-guest: {name}: {line} ({time.monotonic() - t0:.1f}s)", flush=True)
        for prog, res in per_prog.items():
            if res != "ok":
                print(f"cbkm-guest:   {prog}: {res}", flush=True)
    return objects, programs


def parse_junit(text: str) -> dict:
    """Counts and failures from pytest's --junitxml output.

    Returns {"tests", "passed", "failed", "errors", "skipped", "failures": [str]}.
    """
    root = ET.fromstring(text)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[str] = []
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
        for case in suite.iter("testcase"):
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is None:
                    continue
                ident = "::".join(x for x in (case.get("classname", ""), case.get("name", "")) if x)
                message = node.get("message") or ""
                if not message:
                    text_lines = (node.text or "").strip().splitlines()
                    message = text_lines[-1] if text_lines else ""
                message = " ".join(message.split())[:300]
                failures.append(f"{ident}: {tag}: {message}" if message else f"{ident}: {tag}")
    counts["passed"] = max(0, counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"])
    return {**counts, "failures": failures}


def pytest_summary_line(output: str) -> str:
    """pytest's final '== N passed, M failed in Xs ==' line (or the last line)."""
    lines = [ln.strip(" =") for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if (" passed" in line or " failed" in line or " error" in line or "no tests ran" in line) \
                and " in " in line:
            return line
    return lines[-1] if lines else ""


_PROGRESS = re.compile(r"^([.FEsxX]+)\s*(\[\s*\d+%\])?$")


def parse_progress(output: str) -> dict:
    """Counts from pytest -q's progress characters: what a killed run still tells."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    names = {".": "passed", "F": "failed", "E": "errors", "s": "skipped", "x": "skipped",
             "X": "passed"}
    for line in output.splitlines():
        m = _PROGRESS.match(line.strip())
        if not m:
            continue
        for ch in m.group(1):
            counts[names[ch]] += 1
    counts["tests"] = sum(counts.values())
    return counts


def run_pytest(tests: list[str], args: list[str], out: Path, timeout: float) -> dict:
    junit = out / "junit.xml"
    log = out / "pytest.log"
    cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider",
           f"--junitxml={junit}", *tests]
    print(f"cbkm-guest: {' '.join(cmd[2:])}", flush=True)
    t0 = time.monotonic()
    timed_out = False
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            timed_out = True
    output = log.read_text(errors="replace")
    result = {"exit": rc, "timed_out": timed_out, "duration_s": round(time.monotonic() - t0, 1),
              "summary": pytest_summary_line(output),
              "tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    if timed_out:
        result.update(parse_progress(output))
        result["summary"] = (f"pytest timed out after {timeout:.0f}s "
                             f"({result['passed']} passed, {result['failed']} failed by then)")
    if junit.is_file():
        try:
            result.update(parse_junit(junit.read_text()))
        except ET.ParseError as exc:
            result["summary"] += f" (junit unreadable: {exc})"
    print(f"cbkm-guest: pytest exit {rc}: {result['summary']}", flush=True)
    for line in result["failures"][:5]:
        print(f"cbkm-guest:   {line}", flush=True)
    return result


def write_result(out: Path, doc: dict) -> None:
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out / "result.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="results share (holds config.json)")
    opts = ap.parse_args(argv)
    out: Path = opts.out
    config = json.loads((out / "config.json").read_text())
    sys.path.insert(0, str(REPO))
    os.environ.update(config.get("env") or {})
    started = time.monotonic()

    doc: dict = {"kernel": platform.release(), "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
                 "objects": {}, "programs": {}, "pytest": None, "phase": "objects"}
    print(f"cbkm-guest: kernel {doc['kernel']}, BTF {'yes' if doc['btf'] else 'NO'}", flush=True)
    try:
        from harness import paths
        obj_dir = Path(config.get("objects_dir") or paths.bpf_objects_dir())
        doc["objects"], doc["programs"] = load_objects(obj_dir, out)
        doc["phase"] = "pytest"
        write_result(out, doc)
        tests = config.get("tests") or []
        if tests:
            budget = float(config.get("pytest_timeout", 480))
            doc["pytest"] = run_pytest(tests, list(config.get("pytest_args", ["-q", "-x"])), out,
                                       budget)
        doc["phase"] = "done"
    except Exception:  # noqa: BLE001 - report, never die silently
        doc["guest_error"] = traceback.format_exc(limit=5).strip().splitlines()[-1]
        traceback.print_exc()
    doc["duration_s"] = round(time.monotonic() - started, 1)
    write_result(out, doc)
    print(RESULT_BEGIN, flush=True)
    print(json.dumps(doc, separators=(",", ":")), flush=True)
    print(RESULT_END, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
