"""Helpers shared by test modules (fixtures live in conftest.py)."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def scratch_netns(name: str):
    """A fresh ``cb-`` network namespace *name* (a leftover of that name is removed
    first), deleted afterwards."""
    from harness.host import netns
    netns.delete(name)
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)
