"""Global kernel settings (``/proc/sys``) changed for the length of one measurement.

``temporarily(name, value)`` sets a sysctl of the whole machine (not a network
namespace's: the project never changes the root namespace's network settings) and
puts the previous value back however the block ends: normally, on an exception, on
Ctrl-C or SIGTERM (the restore runs shielded).  While the value is changed, the
previous one is saved under ``SAVED_ROOT``, so ``chainbench down`` puts it back
after a process that was SIGKILLed (``restore_saved``).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator

from harness.errors import ChainbenchError
from harness.host.signals import shielded
from harness.paths import STATE_ROOT

SAVED_ROOT = os.path.join(STATE_ROOT, "sysctl")


class SysctlError(ChainbenchError, OSError):
    """A kernel setting cannot be read or written (one line)."""


def _path(name: str) -> str:
    if not name or "/" in name or ".." in name:
        raise ValueError(f"sysctl name {name!r}")
    return os.path.join("/proc/sys", *name.split("."))


def read(name: str) -> str:
    try:
        with open(_path(name)) as f:
            return f.read().strip()
    except OSError as exc:
        raise SysctlError(f"sysctl {name}: cannot read ({exc.strerror})") from None


def write(name: str, value: str) -> None:
    try:
        with open(_path(name), "w") as f:
            f.write(f"{value}\n")
    except OSError as exc:
        raise SysctlError(f"sysctl {name}: cannot set {value} ({exc.strerror})") from None


def _saved_path(name: str) -> str:
    return os.path.join(SAVED_ROOT, f"{name}.json")


@contextlib.contextmanager
def temporarily(name: str, value: str) -> Iterator[str]:
    """Set sysctl *name* to *value* for the block; yields the previous value."""
    before = read(name)
    os.makedirs(SAVED_ROOT, exist_ok=True)
    with open(_saved_path(name), "w") as f:
        json.dump({"name": name, "value": before}, f)
    try:
        write(name, value)
        yield before
    finally:
        with shielded():
            try:
                write(name, before)
            finally:
                _forget(name)


def _forget(name: str) -> None:
    try:
        os.unlink(_saved_path(name))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(SAVED_ROOT)
    except OSError:
        pass


def restore_saved() -> list[str]:
    """Put back every setting a killed process left changed; ``NAME back to VALUE`` each."""
    try:
        names = sorted(os.listdir(SAVED_ROOT))
    except FileNotFoundError:
        return []
    restored = []
    for entry in names:
        try:
            with open(os.path.join(SAVED_ROOT, entry)) as f:
                saved = json.load(f)
            write(saved["name"], saved["value"])
        except (OSError, ValueError, KeyError):
            continue
        restored.append(f"{saved['name']} back to {saved['value']}")
        _forget(saved["name"])
    return restored
