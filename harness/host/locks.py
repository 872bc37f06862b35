"""Exclusive, per-directory file locks that a process may take again while it
holds them (a node's state directory: CNI ADDs run concurrently, and writing the
maps takes the node's lock again under callers that already hold it)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

LOCK_NAME = "lock"
_held: dict[str, int] = {}      # directory -> how deep this process holds its lock


@contextlib.contextmanager
def directory_lock(directory: str) -> Iterator[None]:
    """Hold ``<directory>/lock`` exclusively (flock), re-entrant within a process."""
    key = os.path.abspath(directory)
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    os.makedirs(key, exist_ok=True)
    with open(os.path.join(key, LOCK_NAME), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
            fcntl.flock(f, fcntl.LOCK_UN)
