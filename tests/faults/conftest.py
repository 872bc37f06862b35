"""Settings and the machine's state before the fault-injection runs.

FAULTS_POINTS  points per command and signal (default 3: the sample ``make test``
               runs; ``make faults`` sets 20)
FAULTS_SEED    the seed the points are drawn from (default 12)
FAULTS_REPORT  a file to append one JSON line per point to (optional)
"""
from __future__ import annotations

import os

import pytest

from . import inject
from .leftovers import Baseline, nonempty, project_leftovers, root_snapshot


def faults_points() -> int:
    return int(os.environ.get("FAULTS_POINTS", "3"))


def faults_seed() -> int:
    return int(os.environ.get("FAULTS_SEED", "12"))


@pytest.fixture(scope="session")
def clean_machine():
    """The machine before the first point: nothing of the project on it (an earlier
    run's leftovers are removed first, and must then be gone), and the root
    namespace's snapshot every point is compared with."""
    if nonempty(project_leftovers(Baseline.take().after_down())):
        inject.chainbench("down")
    left = nonempty(project_leftovers(Baseline.take().after_down()))
    if left:
        pytest.fail(f"the machine is not clean before the fault runs: {left}")
    return root_snapshot()
