"""Typed errors of the BPF object layer.

Every failure names the step that failed and keeps the errno; a verifier
rejection carries the whole log (``str()`` shows a summary, ``.log`` the rest);
a kernel without a feature raises NotSupportedError so the kernel matrix can
tell "missing" from "broken".
"""
from __future__ import annotations

import errno as _errno
import os
import re


class BpfError(OSError):
    """A libbpf or bpf(2) call failed.  ``errno`` is the positive error code."""

    def __init__(self, step: str, err: int, detail: str = ""):
        err = abs(err)
        message = f"{step}: {os.strerror(err)}"
        if detail:
            message += f" ({detail})"
        super().__init__(err, message)
        self.step = step

    def __str__(self) -> str:
        return self.strerror


class VerifierError(BpfError):
    """The kernel refused to load a program; ``log`` is libbpf's and the verifier's output."""

    def __init__(self, step: str, err: int, log: str):
        self.log = log
        m = re.search(r"prog '([^']+)': BPF program load failed", log)
        self.program = m.group(1) if m else None
        if self.program:
            step = f"{step}: program {self.program}"
        super().__init__(step, err, _summarise(log))

    def full(self) -> str:
        return f"{self}\n{self.log}"


class NotSupportedError(BpfError):
    """The running kernel lacks a feature this call needs."""


class KeyNotFoundError(BpfError, KeyError):
    """A map lookup or delete found no entry for the key."""

    def __init__(self, step: str):
        BpfError.__init__(self, step, _errno.ENOENT)

    def __str__(self) -> str:  # KeyError would quote it otherwise
        return self.strerror


class ConfigError(ValueError):
    """A load option names something the object does not have, or a value that does not fit."""


class StructMismatchError(ValueError):
    """A Python mirror of a C struct does not match the object's BTF."""


def verifier_lines(log: str) -> tuple[list[str], list[str]]:
    """(what the verifier wrote inside libbpf's PROG LOAD LOG markers, without
    its statistics lines; every non-empty line of *log*), both stripped."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    inside: list[str] = []
    capturing = False
    for line in lines:
        if "-- BEGIN PROG LOAD LOG --" in line:
            capturing, inside = True, []
            continue
        if "-- END PROG LOAD LOG --" in line:
            capturing = False
            continue
        if capturing:
            inside.append(line)
    body = [ln for ln in inside
            if not ln.startswith(("processed ", "verification time", "stack depth"))]
    return body, lines


def _summarise(log: str) -> str:
    """The most telling line of a verifier log: the last line the verifier wrote
    before libbpf's own trailer, else the last non-empty line."""
    body, lines = verifier_lines(log)
    # 7.x verifiers follow the error with a structured report ("Verification
    # failed: ...", Reason, Source context, Suggestion): the error is before it.
    for i, line in enumerate(body):
        if line.startswith("Verification failed:") and i > 0:
            body = body[:i]
            break
    if body:
        return body[-1]
    return lines[-1] if lines else "no log"


def check(rc: int, step: str) -> int:
    """Raise BpfError for a negative libbpf return code; return *rc* otherwise."""
    if rc < 0:
        if -rc in (_errno.EOPNOTSUPP, _errno.ENOTSUP):
            raise NotSupportedError(step, -rc)
        raise BpfError(step, -rc)
    return rc
