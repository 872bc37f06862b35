"""BPF programs' own run statistics (harness.bpf ProgramStats) and the global setting that
turns them on for one block (harness.host.sysctl): counted only while on, put back after,
also when the block fails; a saved value a killed process left is put back by `down`'s
restore."""
from __future__ import annotations

import json
import os

import pytest

from harness.bpf import loaded_program_stats
from harness.host import sysctl

# BPF_PROG_TEST_RUN only, but it records a saved setting under /run/chainbench while it
# runs: beside the machine-wide tests, not beside the fault suite (pyproject.toml).
pytestmark = pytest.mark.test_run_only

SETTING = "kernel.bpf_stats_enabled"


def test_run_time_is_counted_while_the_setting_is_on_and_it_is_put_back(load):
    prog = load("loader_fixture").programs["fixture_tc"]
    before = sysctl.read(SETTING)
    idle = prog.stats()
    assert idle.name == "fixture_tc" and idle.type == "sched_cls" and idle.id == prog.id
    with sysctl.temporarily(SETTING, "1") as previous:
        assert previous == before and sysctl.read(SETTING) == "1"
        assert os.path.exists(os.path.join(sysctl.SAVED_ROOT, f"{SETTING}.json"))
        prog.test_run(bytes(60), repeat=1000)
        on = prog.stats()
    assert sysctl.read(SETTING) == before
    assert not os.path.exists(os.path.join(sysctl.SAVED_ROOT, f"{SETTING}.json"))
    assert on.run_cnt - idle.run_cnt >= 1000 and on.run_time_ns > idle.run_time_ns
    if before == "0":                     # off again: runs are not counted
        prog.test_run(bytes(60), repeat=100)
        assert prog.stats().run_cnt == on.run_cnt
    # The walk over every loaded program finds it, by name.
    found = [s for s in loaded_program_stats({"fixture_tc"}) if s.id == prog.id]
    assert found and found[0].run_cnt == prog.stats().run_cnt


def test_setting_is_put_back_when_the_block_fails():
    before = sysctl.read(SETTING)
    with pytest.raises(RuntimeError, match="boom"):
        with sysctl.temporarily(SETTING, "1"):
            raise RuntimeError("boom")
    assert sysctl.read(SETTING) == before
    assert sysctl.restore_saved() == []


def test_down_puts_back_what_a_killed_process_left():
    before = sysctl.read(SETTING)
    os.makedirs(sysctl.SAVED_ROOT, exist_ok=True)
    with open(os.path.join(sysctl.SAVED_ROOT, f"{SETTING}.json"), "w") as f:
        json.dump({"name": SETTING, "value": before}, f)
    sysctl.write(SETTING, "1")            # as a SIGKILLed measurement leaves it
    try:
        assert sysctl.restore_saved() == [f"{SETTING} back to {before}"]
        assert sysctl.read(SETTING) == before and not os.path.exists(sysctl.SAVED_ROOT)
    finally:
        sysctl.write(SETTING, before)


def test_bad_names_are_refused():
    for bad in ("", "../etc/passwd", "kernel/x"):
        with pytest.raises(ValueError):
            sysctl.read(bad)
