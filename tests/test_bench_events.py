"""The micro suite's cost of flow events (bench/micro/events_cases.py, events_drain.py):
each case at monitor aggregation off, medium and none in one interleaved run, the
ratios taken against off of the same run, every record drained or counted lost,
and the records each level writes what events.h says (no figure is asserted:
benchmarks report, tests check structure and correctness)."""
from __future__ import annotations

import dataclasses
import math

import pytest

from bench.micro import events_cases, suite as micro
from bench.report import dashboard, results as result_docs, schema
from harness.abi import monitor
from harness.abi.cheaders import defines
from harness.host import bpffs

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

BASES = ("established", "policy-established", "policy-new")
LEVELS = ("off", "medium", "none")
SAMPLES, REPEAT = 3, 2_000
INTERVAL = defines("lib/events.h", "CB_MONITOR_INTERVAL")["CB_MONITOR_INTERVAL"]


def _no_bench_pins() -> bool:
    import os
    return not os.path.exists(bpffs.bench_pin_dir())


@pytest.fixture(scope="module")
def run():
    """One run of only the events cases, short (indicative) samples."""
    suite = micro.suite([], [], samples=SAMPLES, repeat=REPEAT, indicative=True, generic=False,
                        events=True)
    assert _no_bench_pins()
    return suite


def _by(run) -> dict[tuple[str, str], dict]:
    return {(r["events"]["base_case"], r["events"]["level"]): r for r in run["results"]}


def test_cases_are_each_base_at_each_level_on_shared_maps():
    cases = events_cases.cases(100_000)
    by = {(c.events_base, c.events): c for c in cases}
    assert set(by) == {(b, lv) for b in BASES for lv in LEVELS} and len(cases) == 9
    for (base, level), c in by.items():
        assert c.rodata["monitor_aggregation"] == monitor.LEVELS[level]
        assert c.name.endswith(f"/events={level}") and c.variant == f"{base} events={level}"
        assert c.maps == by[(base, "off")].maps            # the levels share conntrack and ring
        assert c.group != by[(base, "off")].group or level == "off"   # one load per level
        ring = c.max_entries["cb_events"]
        assert ring & (ring - 1) == 0                     # a power of two
        # one sample's worth of records: 100,000 runs x 2 records x (224 + 8) bytes
        assert ring >= 100_000 * 2 * 232
    assert len({c.name for c in cases}) == 9
    with pytest.raises(ValueError, match="'off'"):
        events_cases.cases(1000, levels=("medium", "none"))


def test_every_level_of_every_case_in_one_run(run):
    by = _by(run)
    assert set(by) == {(b, lv) for b in BASES for lv in LEVELS}
    cfg = run["config"]["events"]
    assert cfg["levels"] == list(LEVELS) and cfg["cases"] == list(BASES)
    assert cfg["workers"] is False and cfg["baseline"] == "off"
    for (base, level), r in by.items():
        ev = r["events"]
        assert ev["monitor_aggregation"] == monitor.LEVELS[level]
        assert len(r["samples_ns"]) == len(r["ratio_to_off_samples"]) == SAMPLES
        assert r["verdict"] == "TC_ACT_OK"
        assert r["events"]["runs_per_sample"] == REPEAT


def test_ratios_are_against_off_of_the_same_run(run):
    by = _by(run)
    for (base, level), r in by.items():
        off = by[(base, "off")]
        assert r["events"]["baseline"] == off["name"]
        mine = [a - b for a, b in zip(r["samples_ns"], r["floor_samples_ns"])]
        ref = [a - b for a, b in zip(off["samples_ns"], off["floor_samples_ns"])]
        assert r["ratio_to_off_samples"] == pytest.approx([a / b for a, b in zip(mine, ref)])
        assert r["ratio_to_off"]["n"] == SAMPLES
        assert r["above_off_ns"]["median"] == pytest.approx(
            sorted(a - b for a, b in zip(mine, ref))[SAMPLES // 2], abs=1e-5)
        if level == "off":
            assert r["ratio_to_off_samples"] == [1.0] * SAMPLES


def test_no_record_lost_and_each_level_writes_what_events_h_says(run):
    by = _by(run)
    runs = SAMPLES * REPEAT
    for r in run["results"]:
        assert r["events"]["lost"] == 0 and r["events"]["lost_per_sample"] == [0] * SAMPLES, \
            r["name"]
    for base in BASES:          # off: nothing at all, not even in the warmups
        ev = by[(base, "off")]["events"]
        assert ev["records"] == ev["warmup_records"] == 0 and ev["by_type"] == {}
    # none: every packet of an established connection is traced where it enters
    # (from-endpoint) and where it leaves (to-stack)
    for base in ("established", "policy-established"):
        ev = by[(base, "none")]["events"]
        assert ev["records_per_sample"] == [2 * REPEAT] * SAMPLES
        assert ev["by_type"] == {"trace": 2 * runs} and ev["records_per_packet"] == 2
    # medium: an established connection is reported only when its CT entry asks (new
    # TCP flags, or CB_MONITOR_INTERVAL seconds since its last report)
    bound = math.ceil(run["config"]["seconds"]["measure"] / INTERVAL) + 1
    for base in ("established", "policy-established"):
        ev = by[(base, "medium")]["events"]
        assert ev["records"] <= bound, (base, ev)
        assert set(ev["by_type"]) <= {"trace"}
    # a new connection: its policy verdict (never aggregated) and its first trace,
    # at medium as at none
    for level in ("medium", "none"):
        ev = by[("policy-new", level)]["events"]
        assert ev["by_type"] == {"policy-verdict": runs, "trace": runs}, (level, ev)


def test_result_matches_the_schema_and_the_tables_show_the_levels(run, tmp_path):
    doc_schema = schema.load()
    assert schema.validate(run, doc_schema["$defs"]["micro"], doc_schema) == []
    bad = {**run["results"][1]}
    del bad["ratio_to_off"]
    assert any("ratio_to_off" in e for e in
               schema.validate(bad, doc_schema["$defs"]["micro_result"], doc_schema))
    header, rows = micro.table(run)
    assert header[-3:] == ("ABOVE EMPTY", "VS OFF", "EVENTS/PKT")
    names = [row[0] for row in rows]
    for base in ("established@1svc", "policy-established@1id", "policy-new@1id"):
        assert [n.rsplit("/", 1)[1] for n in names if f"/{base}/" in n] == \
            [f"events={lv}" for lv in LEVELS]
    assert all(row[8].startswith("1.00x") for row in rows if row[0].endswith("events=off"))
    # The dashboard: the levels of each case side by side in their own table.
    doc = result_docs.new_document({"micro": run}, profile="custom")
    result_docs.write(doc, tmp_path)
    page = dashboard.render(tmp_path).read_text()
    assert "Cost of flow events" in page
    for lv in LEVELS:
        assert page.count(f"<td>events={lv}</td>") == len(BASES)


def test_a_ring_too_small_for_a_sample_counts_what_it_lost():
    """Every record is either drained or counted in cb_events_lost, and the result
    says so: a ring of 4 MiB holds ~9,000 packets' records; a sample of 20,000
    packets at level none writes 40,000."""
    small = [dataclasses.replace(c, max_entries={**c.max_entries, "cb_events": 1 << 22})
             for c in events_cases.cases(0) if c.events_base == "established"
             and c.events in ("off", "none")]
    suite = micro.run(small, samples=1, repeat=20_000, workers=False)
    assert _no_bench_pins()
    none = next(r for r in suite["results"] if r["events"]["level"] == "none")
    ev = none["events"]
    assert ev["lost"] > 0 and ev["lost_per_sample"][0] > 0
    assert ev["records"] + ev["lost_per_sample"][0] == 2 * 20_000
    assert ev["records"] <= (1 << 22) // 232
    _, rows = micro.table(suite)
    assert next(row for row in rows if row[0] == none["name"])[-1].endswith(
        f"({ev['lost']} LOST)")


def test_cli_events_only(capsys, tmp_path):
    from harness.cli import main
    assert main(["bench", "micro", "--events-only", "--samples", "2", "--repeat", "1000",
                 "--no-write"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["CASE", "VERDICT", "NS/PKT"] and "VS OFF" in out[0]
    cases = [line.split()[0] for line in out[1:] if line.strip()]
    assert len(cases) == 9 and all("/events=" in c for c in cases)
    for argv, field in ((["bench", "all", "--events-only"], "--events-only"),
                        (["bench", "micro", "--events-only", "--services", "1"], "--services")):
        assert main(argv + ["--out", str(tmp_path)]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and field in err[0], err
    assert not any(tmp_path.iterdir())
