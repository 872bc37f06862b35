"""`bench macro --perf` refused with one line: outside the macro suite, and where perf is
missing.  Through the CLI in this process (so not beside the fault suite: see
tests/test_ci_stages.py); nothing is measured."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.test_run_only


def test_cli_refuses_perf_outside_macro(capsys):
    from harness.cli import main
    assert main(["bench", "control", "--perf", "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--perf" in err[0] and "macro" in err[0]


def test_cli_perf_without_perf_is_one_line_and_exit_2(monkeypatch, capsys):
    from harness.cli import main
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["bench", "macro", "--perf", "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "perf is not installed" in err[0]
