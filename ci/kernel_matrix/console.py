"""The guest's serial console: the result document the guest prints between
markers (the fallback when the results share holds none), and a one-line
reason when the console shows no result at all."""
from __future__ import annotations

import json
import re


RESULT_BEGIN = "@@CBKM-RESULT-BEGIN@@"
RESULT_END = "@@CBKM-RESULT-END@@"


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
