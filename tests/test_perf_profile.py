"""`bench macro --perf` without a topology: folding real `perf script` text, ranking the
kernel functions, the speedscope file, BPF run-time deltas, the result document's
profile (schema, dashboard table) and the CLI's refusal of --perf outside macro.

tests/data/perf holds two real captures of this project's machine (kernel addresses
masked to one value; see its README): ``script-fields.txt`` (``perf script -F
comm,pid,tid,time,period,event,ip,sym,dso`` of one pipeline) and
``script-system-wide.txt`` (default ``perf script`` of a ``perf record -a``, idle CPUs
included).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.macro import bpf_runtime, profiling
from bench.report import flame, results, schema
from harness.bpf import ProgramStats

pytestmark = [pytest.mark.test_run_only,   # files only: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]

DATA = Path(__file__).parent / "data" / "perf"
FIELDS = (DATA / "script-fields.txt").read_text()
SYSTEM_WIDE = (DATA / "script-system-wide.txt").read_text()


def _headers(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and ln[0] not in " \t"]


def test_fold_reads_every_sample_leaf_last_with_kernel_frames_marked():
    f = flame.fold(FIELDS)
    assert f.samples == len(_headers(FIELDS)) == 60
    assert f.idle_samples == 0 and f.busy_samples == 60
    assert sum(f.stacks.values()) == 60
    assert f.period_ns == 1001001 and f.event == "cpu-clock"
    for stack in f.stacks:
        frames = stack.split(";")
        assert frames[0] in ("sha256sum", "head")           # comm first, as flame graphs do
        assert not any("+0x" in fr for fr in frames)
    # The first sample in the file: sha256sum mapping its ELF (exec path), leaf last.
    first = next(s for s in f.stacks if s.endswith("__mmap_region_[k]"))
    assert first.split(";")[-2] == "do_mmap_[k]"
    # A user-space frame without a symbol is named by its object and not marked kernel.
    assert any(s.endswith(";[unknown sha256sum]") for s in f.stacks)
    assert "read" in {fr for s in f.stacks for fr in s.split(";")}


def test_fold_counts_the_idle_loop_apart():
    f = flame.fold(SYSTEM_WIDE)
    assert f.samples == len(_headers(SYSTEM_WIDE)) == 28
    assert f.idle_samples == 12                       # swapper halted: pv_native_safe_halt
    assert f.busy_samples == sum(f.stacks.values()) == 16
    assert not any(s.endswith("pv_native_safe_halt_[k]") for s in f.stacks)
    comms = Counter(s.split(";")[0] for s in f.stacks for _ in range(f.stacks[s]))
    assert comms["kdamond.0"] == 7 and comms["kworker/0:2-vir"] == 6 and comms["perf-exec"] == 2
    by_pid = {p["comm"]: p for p in flame.processes(f)}
    assert by_pid["perf-exec"]["samples"] == 2 and by_pid["perf-exec"]["pid"] > 0
    assert sum(p["samples"] for p in flame.processes(f)) == f.busy_samples


def test_top_ranks_self_and_inclusive_with_fractions_and_us_per_connection():
    f = flame.fold(FIELDS)
    top = flame.top(f, n=5, connections=10)
    assert len(top["self"]) == 5 and len(top["inclusive"]) == 5
    self_counts = [r["samples"] for r in top["self"]]
    assert self_counts == sorted(self_counts, reverse=True)
    incl = {r["function"]: r["samples"] for r in flame.top(f, n=10_000)["inclusive"]}
    for r in top["self"]:
        assert incl[r["function"]] >= r["samples"]        # a leaf is in its own stack
        assert r["fraction"] == pytest.approx(r["samples"] / f.busy_samples)
        assert r["us_per_connection"] == pytest.approx(r["samples"] * 1001001 / 10 / 1e3)
    # Every kernel sample has a syscall entry below it here: entry_SYSCALL_64 is on top
    # of the inclusive ranking, counted once per sample even where a name repeats.
    kernel_leaf = sum(c for s, c in f.stacks.items() if s.endswith(flame.KERNEL_MARK))
    assert top["inclusive"][0]["samples"] <= f.busy_samples
    assert sum(r["samples"] for r in flame.top(f, n=10_000)["self"]) == kernel_leaf
    assert "us_per_connection" not in flame.top(f, n=1)["self"][0]


def test_fold_skips_unreadable_lines_and_refuses_text_without_samples():
    with pytest.raises(flame.FoldError, match="line 1"):
        flame.fold("\tffffffff81000000 foo ([kernel.kallsyms])\n")
    f = flame.fold("wrk 10/10 [000] 1.000000: 1001001 cpu-clock:\n"
                   "\tffffffff81000000 tcp_v4_connect ([kernel.kallsyms])\n"
                   "\tnot a frame\n"
                   "\t   c6a96 [unknown] (/memfd:sealed-91173221a7ea (deleted))\n")
    assert f.samples == 1 and f.unread_lines == 1 and "line 3" in f.first_unread
    assert list(f.stacks) == ["wrk;[unknown memfd:sealed-91173221a7ea (deleted)];"
                              "tcp_v4_connect_[k]"]


def test_speedscope_holds_every_stack_root_first_weighted_in_ns():
    f = flame.fold(SYSTEM_WIDE)
    stacks, _ = flame.kept(f, 1000)
    doc = flame.speedscope({"bpf-tc": (stacks, f.period_ns), "iptables": ({"a;b_[k]": 3}, 1e6)})
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = [fr["name"] for fr in doc["shared"]["frames"]]
    assert len(frames) == len(set(frames))
    first, second = doc["profiles"]
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and p["unit"] == "nanoseconds" and p["startValue"] == 0
        assert len(p["samples"]) == len(p["weights"]) and p["endValue"] == sum(p["weights"])
    rebuilt = {";".join(frames[i] for i in sample): w
               for sample, w in zip(first["samples"], first["weights"])}
    assert rebuilt == {s: round(c * 1001001) for s, c in stacks.items()}
    assert second["samples"] == [[frames.index("a"), frames.index("b_[k]")]]
    json.dumps(doc)                                        # plain JSON


def test_kept_keeps_the_heaviest_stacks_and_counts_the_rest():
    f = flame.Folded(stacks=Counter({"a;x": 5, "a;y": 1, "a;z": 3}), samples=9)
    assert flame.kept(f, 2) == ({"a;x": 5, "a;z": 3}, 1)


def _stats(pid, name, ns, runs):
    return ProgramStats(pid, name, "sched_cls", ns, runs)


def test_bpf_delta_sums_the_copies_that_ran_by_name():
    before = {1: _stats(1, "from_container", 1000, 10), 2: _stats(2, "from_container", 0, 0),
              3: _stats(3, "to_container", 50, 1), 4: _stats(4, "from_netdev", 7, 1)}
    after = {1: _stats(1, "from_container", 5000, 30), 2: _stats(2, "from_container", 3000, 10),
             3: _stats(3, "to_container", 1050, 11), 4: _stats(4, "from_netdev", 7, 1),
             5: _stats(5, "sock4_connect", 400, 2)}            # loaded during the run
    rows = bpf_runtime.delta(before, after, connections=10)
    assert [r["program"] for r in rows] == ["from_container", "to_container", "sock4_connect"]
    fc = rows[0]
    assert (fc["instances"], fc["runs"], fc["run_time_ns"]) == (2, 30, 7000)
    assert fc["ns_per_run"] == pytest.approx(7000 / 30)
    assert fc["runs_per_connection"] == 3 and fc["ns_per_connection"] == 700
    assert bpf_runtime.delta(before, after, connections=0)[0]["ns_per_connection"] is None


def _profile_entry(dp: str = "bpf-tc") -> dict:
    f = flame.fold(FIELDS)
    run = {"requests": 100, "rps": 33.3, "errors": 0, "connections_opened": 100,
           "cpu_us_per_request": {"system": 20.0, "softirq": 10.0}}
    bpf = bpf_runtime.delta({}, {1: _stats(1, "from_container", 40_000, 200)}, 100)
    return profiling.entry(dp, 1, 3.0, run, f, 999, 3.01, bpf)


def test_profile_entry_per_connection_figures():
    e = _profile_entry()
    assert e["cpu_us_per_connection"] == pytest.approx(60 * 1001001 / 100 / 1e3)
    assert e["kernel_samples"] < e["busy_samples"]
    assert e["cpu_us_per_connection_proc_stat"] == pytest.approx(30.0)
    assert e["bpf"]["ns_per_connection"] == 400 and e["bpf"]["run_time_ns"] == 40_000
    assert sum(e["folded"].values()) + e["folded_other_samples"] == e["busy_samples"]
    assert [p["comm"] for p in e["processes"]] == ["sha256sum", "head"]
    assert all(p["pid"] > 0 for p in e["processes"])
    assert sum(p["samples"] for p in e["processes"]) == e["busy_samples"]
    header, rows = profiling.table(profiling.section([e]))
    assert len(header) == len(rows[0]) and rows[0][0] == "bpf-tc" and rows[0][5] == "400"
    # Neither sha256sum nor head is a process of a run, nor in the network stack.
    assert e["run_samples"] == 0 and e["top_run"] == {"self": [], "inclusive": []}


def test_the_runs_own_samples_are_its_processes_and_the_network_path():
    f = flame.Folded(stacks=Counter({
        "wrk;__libc_connect;tcp_v4_connect_[k]": 4,
        "nginx;accept4;do_accept_[k]": 3,
        "python;syscall;__sys_bpf_[k];do_check_common_[k]": 5,            # a verifier
        "python;x;irq_exit_rcu_[k];handle_softirqs_[k];net_rx_action_[k];veth_poll_[k]": 2,
        "ksoftirqd/0;ret_from_fork_[k];net_rx_action_[k]": 1}), samples=15, period_ns=1e6)
    own = flame.select(f, profiling.is_run_sample)
    assert own.samples == 10 and own.busy_samples == 10 and own.period_ns == 1e6
    assert "do_check_common" not in {r["function"] for r in flame.top(own)["self"]}
    assert {r["function"] for r in flame.top(own)["inclusive"]} >= {"net_rx_action", "veth_poll"}


def _doc_with_profile() -> dict:
    doc = results.new_document({"macro": {"config": {"perf": True}, "results": [],
                                          "profile": profiling.section(
                                              [_profile_entry("bpf-tc"),
                                               _profile_entry("iptables")])}})
    return doc


def test_profile_matches_the_schema_and_a_wrong_field_is_named():
    doc = _doc_with_profile()
    assert schema.validate(doc, schema.load()) == []
    doc["suites"]["macro"]["profile"]["datapaths"][0]["top"]["self"][0]["fraction"] = 2
    errors = schema.validate(doc, schema.load())
    assert errors and "profile.datapaths[0].top.self[0].fraction" in errors[0]


def test_result_gets_a_speedscope_file_beside_it_and_the_dashboard_a_table(tmp_path):
    from bench.report import dashboard
    doc = _doc_with_profile()
    path = results.write(doc, tmp_path, latest=False)
    flames = results.write_speedscope(doc, path)
    assert flames == tmp_path / (path.stem + ".speedscope.json") and flames.exists()
    scope = json.loads(flames.read_text())
    assert [p["name"].split()[0] for p in scope["profiles"]] == ["bpf-tc", "iptables"]
    warnings: list[str] = []
    assert len(dashboard.load_documents(tmp_path, warnings)) == 1 and warnings == []
    page = dashboard.render(tmp_path).read_text()
    assert 'id="profile"' in page and 'id="profile-bpf-tc"' in page
    top = doc["suites"]["macro"]["profile"]["datapaths"][0]["top"]["self"][0]["function"]
    assert top in page and "from_container" in page
    # Without a profile nothing is written.
    assert results.write_speedscope(results.new_document({}), path) is None


def test_why_perf_cannot_record_is_one_line_of_its_own_text():
    from bench.macro import perf_record
    text = (DATA / "record-unprivileged.txt").read_text()     # perf record -a as nobody
    assert perf_record.why_not(text, 255) == ("Access to performance monitoring and "
                                              "observability operations is limited.")
    assert perf_record.why_not("", 255) == "exit 255"
