"""The result document (results/kernel-matrix.json): one entry per kernel
from the guest's own report, merging a partial run into earlier results,
and the markdown tables printed at the end."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

from .kernels import KernelSpec


STATUSES = ("pass", "fail", "unsupported", "error")


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
