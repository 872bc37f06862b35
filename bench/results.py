"""Writing benchmark results: ``results/<timestamp>-<git-sha>.json`` plus
``results/latest.json``, each a document of schema_version 1 (described in
``results/schema/results.schema.json``)."""
from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path

from harness import machine, paths

SCHEMA_VERSION = 1


def git_state() -> dict:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(paths.ROOT), *args], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 else ""
    sha = git("rev-parse", "--short=12", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": sha, "dirty": dirty}


def new_document(suites: dict) -> dict:
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": now.isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": machine.info(),
        "suites": suites,
    }


def write(doc: dict, out_dir: Path | None = None, latest: bool = True) -> Path:
    out_dir = Path(out_dir or paths.RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = doc["created"].replace(":", "").replace("-", "").replace("+0000", "Z")
    path = out_dir / f"{stamp}-{doc['git']['sha']}.json"
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n"
    path.write_text(text)
    if latest:
        (out_dir / "latest.json").write_text(text)
    return path
