"""Pausing Python's cyclic garbage collector around bulk building.

Resolving and planning policy, or planning LB maps, for a large cluster creates
hundreds of thousands of small objects that all stay alive and no reference
cycles; each collection the allocator triggers meanwhile walks every object the
process holds, the whole desired state included (at 16,000 identities that was
a third of policy's time).  ``paused()`` turns the collector off for the block and
back on after it (if it was on): nothing is leaked, cycles are collected at the
next collection after the block.
"""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
