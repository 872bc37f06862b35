"""How the driver reports trouble: MatrixError stops the whole run, KernelError
gives one kernel a status ("error", "unsupported") and the run goes on; log()
writes a progress line on stderr."""
from __future__ import annotations

import sys


class MatrixError(Exception):
    """A problem that stops the whole run (bad kernel list, missing tool, not root)."""


class KernelError(Exception):
    """A problem with one kernel: it gets status *status* and the run goes on."""

    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def log(msg: str) -> None:
    print(f"kernel-matrix: {msg}", file=sys.stderr, flush=True)
