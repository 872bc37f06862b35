"""Writing benchmark results: ``results/<timestamp>-<git-sha>.json`` plus
``results/latest.json`` (quick profile), each a document of schema_version 3,
described by ``results/schema/results.schema.json``.  Version 1 documents
(micro only, no profile) and version 2 (a control result's map memory and rules
text size both in ``bytes``) are still read by the dashboard."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

from harness.facts import machine
from harness import paths
from bench.report import flame, schema

SCHEMA_VERSION = 3


def git_state() -> dict:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(paths.ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""
    sha = git("rev-parse", "--short=12", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": sha, "dirty": dirty}


def new_document(suites: dict, profile: str = "custom", notes: list[str] | None = None) -> dict:
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": now.isoformat(timespec="seconds"),
        "git": git_state(),
        "profile": profile,
        "notes": list(notes or []),
        "machine": machine.info(),
        "suites": suites,
    }


class InvalidDocument(ValueError):
    """A result document does not match results/schema/results.schema.json."""


def write(doc: dict, out_dir: Path | None = None, latest: bool = True) -> Path:
    errors = schema.validate(doc, schema.load())
    if errors:
        raise InvalidDocument(f"result document does not match {schema.SCHEMA_PATH.name}: "
                              f"{errors[0]}" + (f" (and {len(errors) - 1} more)"
                                                if len(errors) > 1 else ""))
    out_dir = Path(out_dir or paths.RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = doc["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out_dir / f"{stamp}-{doc['git']['sha']}.json"
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    path.write_text(text)
    if latest:
        (out_dir / "latest.json").write_text(text)
    return path


def speedscope_path(result_path: Path) -> Path:
    """Where the speedscope file of the result at *result_path* goes: beside it."""
    return result_path.with_name(result_path.stem + ".speedscope.json")


def write_speedscope(doc: dict, result_path: Path) -> Path | None:
    """The macro profile's folded stacks (``chainbench bench macro --perf``) as one
    speedscope file beside the result, one profile per datapath; None without a profile."""
    prof = ((doc.get("suites") or {}).get("macro") or {}).get("profile")
    if not prof:
        return None
    profiles = {}
    for e in prof["datapaths"]:
        stacks = dict(e["folded"])
        if e.get("folded_other_samples"):
            stacks["[other stacks]"] = e["folded_other_samples"]
        profiles[f"{e['datapath']} ({e['services']} services, new-conn, "
                 f"{e['connections']} connections)"] = (stacks, e["period_ns"])
    out = speedscope_path(Path(result_path))
    doc_name = f"chainbench macro {doc['created']}"
    out.write_text(json.dumps(flame.speedscope(profiles, name=doc_name)) + "\n")
    return out
