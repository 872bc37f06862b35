"""SIGINT, SIGTERM and SIGKILL at seeded random points of `chainbench up`,
`chainbench connectivity` and `chainbench bench macro --profile smoke`.

Per command, a first run without a signal measures its duration (and proves a
clean run plus `down` leaves nothing); each point's delay is then its seeded
fraction of FAULTS_WINDOW (default 0.5: the sample draws in the first half, where
the topology is built; ``make faults`` draws over the whole run) times that
duration.  In the sample (FAULTS_WINDOW < 1) the macro suite is not measured:
its points draw within its first SAMPLE_SPAN_S seconds (its topology, servers
and first wrk runs are made then; a whole smoke run takes about a minute here,
and `make test` runs one uninterrupted in tests/test_bench_suites.py).  After
each point:

* SIGINT/SIGTERM: the command exits 128 + signal, having unwound: no process or
  temp directory of it is left, and `up` and the macro suite (which own their
  topology) leave nothing at all;
* then `chainbench down` runs (exit 0), and nothing of the project is left
  (``leftovers.project_leftovers``) and the root namespace is byte-identical to
  the snapshot before (``leftovers.root_snapshot``).

`connectivity` needs a topology: `chainbench up -f connectivity-check.yaml` before
each of its points (not interrupted).  `up` builds FAULTS_UP_SCENARIO (default
bench/scenarios/minimal.yaml: 2 nodes, 3 pods, services and policies).
"""
from __future__ import annotations

import os

import pytest

from harness.scenario import SCENARIO_DIR

from . import inject
from .conftest import faults_points, faults_seed
from .leftovers import Baseline, nonempty, project_leftovers, root_diff, root_snapshot

UP_SCENARIO = os.environ.get("FAULTS_UP_SCENARIO", str(SCENARIO_DIR / "minimal.yaml"))
CONNECTIVITY_SCENARIO = str(SCENARIO_DIR / "connectivity-check.yaml")
COMMANDS = {
    "up": ["up", "-f", UP_SCENARIO],
    "connectivity": ["connectivity"],
    "macro": ["bench", "macro", "--profile", "smoke", "--no-write"],
}
#: Commands that own their whole topology: interrupted, they leave nothing at all.
OWNS_TOPOLOGY = {"up", "macro"}
WINDOW = float(os.environ.get("FAULTS_WINDOW", "0.5"))
#: The sample's span of a command it does not measure first, in seconds.
SAMPLE_SPAN_S = {"macro": 20.0}

_durations: dict[str, float] = {}


def _prepare(command: str) -> None:
    if command == "connectivity":
        up = inject.chainbench("up", "-f", CONNECTIVITY_SCENARIO)
        assert up.returncode == 0, f"up for connectivity failed: {up.stderr[-500:]}"


def _after(command: str, sig: str | None, outcome: inject.Outcome, baseline: Baseline,
           before: dict[str, str], record: dict) -> list[str]:
    """Down, the checks; the problems found (also put in *record*)."""
    problems = []
    left_by_command = nonempty(project_leftovers(baseline, outcome.marker))
    record["left_by_command"] = left_by_command
    if sig in ("SIGINT", "SIGTERM") and outcome.signalled:
        own = left_by_command if command in OWNS_TOPOLOGY else {
            k: v for k, v in left_by_command.items()
            if k in ("processes", "recorded processes", "temp dirs")}
        if own:
            problems.append(f"the interrupted command left {own}")
    down = inject.chainbench("down")
    record["down_exit"] = down.returncode
    record["down_removed"] = sorted({line.split()[1] for line in down.stdout.splitlines()
                                     if line.startswith("removed ")})
    if down.returncode != 0:
        problems.append(f"down exited {down.returncode}: {down.stderr[-300:]}")
    left = nonempty(project_leftovers(baseline.after_down(), outcome.marker))
    diff = root_diff(before, root_snapshot())
    record["left_after_down"] = left
    record["root_namespace_changed"] = sorted(diff)
    if left:
        problems.append(f"left after down: {left}")
    if diff:
        problems.append("root namespace changed: " + "; ".join(f"{k}:\n{v}" for k, v in diff.items()))
    return problems


def _span(command: str, before: dict[str, str]) -> float:
    """Seconds over which *command*'s points draw their delays."""
    if WINDOW < 1 and command in SAMPLE_SPAN_S:
        return SAMPLE_SPAN_S[command]
    return WINDOW * _measure(command, before)


def _measure(command: str, before: dict[str, str]) -> float:
    if command not in _durations:
        _prepare(command)
        baseline = Baseline.take()
        outcome = inject.run_until(COMMANDS[command], None, None)
        record = {"command": command, "signal": None, "point": "measure",
                  "seconds": round(outcome.seconds, 2), "exit": outcome.returncode}
        problems = _after(command, None, outcome, baseline, before, record)
        record["ok"] = not problems and outcome.returncode in (0, 1)
        inject.report(record)
        assert outcome.returncode in (0, 1), outcome.stderr[-500:]
        assert not problems, problems
        _durations[command] = outcome.seconds
    return _durations[command]


def _cases():
    for command in COMMANDS:
        for sig in inject.SIGNALS:
            for point in inject.points(command, sig, faults_points(), faults_seed()):
                yield pytest.param(point, id=point.id)


@pytest.mark.parametrize("point", list(_cases()))
def test_signal_then_down_leaves_nothing(point, clean_machine):
    before = clean_machine
    span = _span(point.command, before)
    delay = point.fraction * span
    _prepare(point.command)
    baseline = Baseline.take()
    outcome = inject.run_until(COMMANDS[point.command], delay, point.signal)
    record = {"command": point.command, "signal": point.signal, "point": point.index,
              "seed": faults_seed(), "fraction": round(point.fraction, 4),
              "delay_s": round(delay, 3), "span_s": round(span, 2),
              "signalled": outcome.signalled, "exit": outcome.returncode,
              "seconds": round(outcome.seconds, 2)}
    problems = []
    if outcome.returncode not in inject.expected_exit(point.signal, outcome.signalled):
        problems.append(f"exit {outcome.returncode}, expected "
                        f"{sorted(inject.expected_exit(point.signal, outcome.signalled))}: "
                        f"{outcome.stderr[-400:]}")
    if outcome.returncode > 128 and "Traceback" in outcome.stderr:
        problems.append(f"a traceback: {outcome.stderr[-400:]}")
    problems += _after(point.command, point.signal, outcome, baseline, before, record)
    record["ok"] = not problems
    inject.report(record)
    assert not problems, "\n".join(problems)
