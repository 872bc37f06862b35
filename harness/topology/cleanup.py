"""Removing whatever chainbench left behind: ``chainbench down``.

Processes the project started and recorded (``harness.host.procs``: ended and
waited for first, so none re-creates anything behind the sweep) and their
scratch directories, project namespaces (``cb-*``), project cgroups (``cb-*``
under the cgroup2 mount), pins under the project's bpffs directory, test and
micro benchmark pin directories of processes that are gone (a running one's
are its own), the node state under /run/chainbench, and a global kernel
setting a killed measurement left changed (``harness.host.sysctl``, put back to
its saved value).  Safe to run any time; it touches nothing else.
"""
from __future__ import annotations

import os
import shutil

from harness.host import bpffs, cgroups, netns, procs, sysctl
from harness.node import endpoints

#: Entries of the state directory that are not node state (reported on their own).
_NOT_STATE = {os.path.basename(procs.PROC_ROOT), os.path.basename(procs.SCRATCH_ROOT),
              os.path.basename(sysctl.SAVED_ROOT)}


def leftovers() -> dict[str, list[str]]:
    pins = []
    if os.path.isdir(bpffs.PIN_ROOT):
        for dirpath, _dirs, files in os.walk(bpffs.PIN_ROOT):
            pins.extend(os.path.join(dirpath, f) for f in files)
    pins.extend(bpffs.stale_test_pin_dirs() + bpffs.stale_bench_pin_dirs())
    state = [os.path.join(endpoints.STATE_ROOT, n) for n in os.listdir(endpoints.STATE_ROOT)
             if n not in _NOT_STATE] if os.path.isdir(endpoints.STATE_ROOT) else []
    scratch = [os.path.join(procs.SCRATCH_ROOT, n) for n in os.listdir(procs.SCRATCH_ROOT)] \
        if os.path.isdir(procs.SCRATCH_ROOT) else []
    return {"processes": [desc for _start, desc in procs.live().values()],
            "namespaces": netns.list_project(), "cgroups": cgroups.list_project(), "pins": pins,
            "states": state, "temp dirs": scratch}


def remove_leftovers() -> dict[str, list[str]]:
    """Remove every leftover of the project (processes, namespaces, cgroups, pins,
    state); return what was removed.  ``build.down`` runs it after the orderly
    teardown."""
    ended = procs.end_all()
    found = leftovers()
    found.update(ended)
    for name in found["namespaces"]:
        netns.delete(name)
    for path in found["cgroups"]:
        cgroups.remove(path)
    remove_pins()
    found["sysctls"] = sysctl.restore_saved()
    endpoints.remove_state()
    return found


def remove_pins() -> None:
    """Unlink the pin root and the pin directories of processes that are gone.
    Unlinking a pin drops the kernel's reference; the object goes when unused."""
    if os.path.isdir(bpffs.PIN_ROOT):
        shutil.rmtree(bpffs.PIN_ROOT)
    for path in bpffs.stale_test_pin_dirs() + bpffs.stale_bench_pin_dirs():
        shutil.rmtree(path, ignore_errors=True)
