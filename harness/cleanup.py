"""Removing whatever chainbench left behind: ``chainbench down``.

Project namespaces (``cb-*``), project cgroups (``cb-*`` under the cgroup2
mount) and pins under the project's bpffs directory.  Safe to run any time;
it touches nothing else.
"""
from __future__ import annotations

import os
import shutil

from harness import cgroups, netns
from harness.bpffs import PIN_ROOT


def leftovers() -> dict[str, list[str]]:
    pins = []
    if os.path.isdir(PIN_ROOT):
        for dirpath, _dirs, files in os.walk(PIN_ROOT):
            pins.extend(os.path.join(dirpath, f) for f in files)
    return {"namespaces": netns.list_project(), "cgroups": cgroups.list_project(), "pins": pins}


def down() -> dict[str, list[str]]:
    """Remove every leftover; return what was removed."""
    found = leftovers()
    for name in found["namespaces"]:
        netns.delete(name)
    for path in found["cgroups"]:
        cgroups.remove(path)
    if os.path.isdir(PIN_ROOT):
        # Unlinking a pin drops the kernel's reference; the object goes when unused.
        shutil.rmtree(PIN_ROOT)
    return found
