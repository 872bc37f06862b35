"""Shared fixtures: compiled objects, loaded collections, scapy packet runs,
and a guard that every test leaves the root network namespace as it found it."""
from __future__ import annotations

import os
import subprocess

import pytest

from harness.bpf import Collection
from harness.testrun.packets import run_scapy
from harness.testrun.runner import Runner

from .support import object_path


@pytest.fixture
def load():
    """load(name, **kwargs) -> Collection, closed at the end of the test."""
    opened = []

    def _load(name: str, **kwargs) -> Collection:
        coll = Collection.load(str(object_path(name)), **kwargs)
        opened.append(coll)
        return coll
    yield _load
    for coll in opened:
        coll.close()


@pytest.fixture
def run_packet(load):
    """run_packet("object:program", scapy_packet, rodata=...) -> ScapyRun (result + parsed output)."""
    def _run(spec: str, pkt, repeat: int = 1, **load_kwargs):
        obj, prog = spec.split(":")
        return run_scapy(Runner(load(obj, **load_kwargs), prog), pkt, repeat)
    return _run


def _root_netns_state() -> tuple[str, ...]:
    cmds = (["ip", "-o", "addr"], ["ip", "-o", "route", "show", "table", "all"],
            ["ip", "-o", "-6", "route", "show", "table", "all"], ["ip", "rule"], ["ip", "-6", "rule"],
            ["ip", "-o", "link"])
    return tuple(subprocess.run(c, capture_output=True, text=True).stdout for c in cmds)


@pytest.fixture(autouse=True)
def root_namespace_untouched(request):
    """No test may change the root namespace's addresses, routes, rules or links."""
    before = _root_netns_state()
    yield
    after = _root_netns_state()
    if before != after:
        pytest.fail("the test changed the root network namespace (addresses, routes, "
                    "rules or links)")


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        raise pytest.UsageError("chainbench's tests load BPF programs: run them as root")
