"""Helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness import paths

TEST_OBJECTS = paths.bpf_objects_dir() / "tests"


def object_path(name: str) -> Path:
    """Compiled object of bpf_src/<name>.bpf.c, or of tests/bpf/<name>.bpf.c."""
    for candidate in (paths.bpf_object(name), TEST_OBJECTS / f"{name}.bpf.o"):
        if candidate.is_file():
            return candidate
    pytest.fail(f"{name}.bpf.o is not built: run `make build` (make test does)")
