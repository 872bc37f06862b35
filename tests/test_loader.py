"""The libbpf object layer: loading, errors, rodata, struct mirrors vs BTF."""
from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest

from harness.bpf import (BpfError, Collection, StructMismatchError, VerifierError,
                         check_layout)
from harness.bpf.errors import ConfigError
from harness.abi.structs import MetricsKey, TrafficCounter

from .support import object_path
from .fixture_structs import FixtureKey, FixtureValue

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)


def test_missing_object_is_enoent():
    with pytest.raises(BpfError) as info:
        Collection.load("/nonexistent/thing.bpf.o")
    assert info.value.errno == errno.ENOENT
    assert "make build" in str(info.value)


def test_not_an_elf_object(tmp_path):
    bogus = tmp_path / "bogus.bpf.o"
    bogus.write_bytes(b"this is not an ELF file")
    with pytest.raises(BpfError) as info:
        Collection.load(str(bogus))
    assert info.value.step.startswith("open object")


def test_verifier_rejection_carries_the_log():
    with pytest.raises(VerifierError) as info:
        Collection.load(str(object_path("verifier_reject")))
    err = info.value
    assert err.errno == errno.EACCES
    # The summary names the verifier's complaint; the full log has the listing.
    # (wording: "R2 offset is outside of the packet" up to 6.x, "R1 min value is
    # outside of the allowed memory range" on 7.x)
    assert "outside of the" in str(err)
    assert err.program == "unchecked_read" and "program unchecked_read" in str(err)
    assert "BEGIN PROG LOAD LOG" in err.log and "unchecked_read" in err.log
    assert str(err) in err.full()


def test_programs_and_maps_by_name(load):
    coll = load("loader_fixture")
    assert set(coll.programs) == {"fixture_tc", "fixture_cgroup_egress"}
    assert coll.programs["fixture_cgroup_egress"].type == "cgroup_skb"
    assert coll.programs["fixture_tc"].type == "sched_cls"
    assert {"hash_map", "array_map", "percpu_map", "lru_map", "events"} <= set(coll.maps)
    m = coll.maps["hash_map"]
    assert (m.type, m.key_size, m.value_size, m.max_entries) == ("hash", 8, 16, 1024)
    # Mirrors are picked from BTF for map keys and values.
    assert m.key_type is FixtureKey and m.value_type is FixtureValue
    assert coll.maps["percpu_map"].value_type is TrafficCounter
    assert coll.maps["array_map"].key_type is ctypes.c_uint32


def test_rodata_knobs_reach_the_program(load):
    from scapy.layers.inet import IP, UDP

    from harness.testrun.packets import eth
    pkt = bytes(eth() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP())
    default = load("loader_fixture").programs["fixture_tc"].test_run(pkt)
    shot = load("loader_fixture", rodata={"verdict": 2}).programs["fixture_tc"].test_run(pkt)
    assert (default.verdict, shot.verdict) == ("TC_ACT_OK", "TC_ACT_SHOT")


@pytest.mark.parametrize("rodata, message", [
    ({"no_such_knob": 1}, "no const volatile variable no_such_knob"),
    ({"verdict": 300}, "does not fit in 1 bytes"),
    ({"event_tag": b"\x01\x02"}, "2 bytes given, variable is 4"),
    ({"event_tag": 1.5}, "cannot encode float"),
])
def test_bad_rodata_is_a_config_error(rodata, message):
    with pytest.raises(ConfigError, match=message):
        Collection.load(str(object_path("loader_fixture")), rodata=rodata)


def test_max_entries_override(load):
    coll = load("loader_fixture", max_entries={"lru_map": 8})
    assert coll.maps["lru_map"].max_entries == 8
    with pytest.raises(ConfigError, match="unknown map nope"):
        Collection.load(str(object_path("loader_fixture")), max_entries={"nope": 1})


def test_program_selection(load):
    coll = load("parse_stats", programs=["xdp_parse_stats"])
    assert set(coll.programs) == {"xdp_parse_stats"}
    with pytest.raises(BpfError, match="no program nope"):
        Collection.load(str(object_path("parse_stats")), programs=["nope"])


def test_mirrors_are_checked_against_btf(load):
    coll = load("parse_stats")
    assert {"metrics_key", "traffic_counter"} <= set(coll.checked_structs)
    check_layout(coll.btf, MetricsKey)
    check_layout(coll.btf, TrafficCounter)


class SwappedValue(ctypes.Structure):
    # fixture_value with two fields swapped: same size, wrong offsets.
    _fields_ = [("backend", ctypes.c_uint32), ("flags", ctypes.c_uint16),
                ("pad", ctypes.c_uint16), ("hits", ctypes.c_uint64)]


class ShortKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8)]


class RenamedKey(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16),
                ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


@pytest.mark.parametrize("name, mirror, problem", [
    ("fixture_value", SwappedValue, "field 'hits' at offset 0 size 8 in BTF, offset 8 size 8"),
    ("fixture_key", ShortKey, "field 'pad' missing from the mirror"),
    ("fixture_key", RenamedKey, "field 'address' is in the mirror but not in the C struct"),
])
def test_mismatched_mirror_refuses_to_load(name, mirror, problem):
    with pytest.raises(StructMismatchError) as info:
        Collection.load(str(object_path("loader_fixture")),
                        mirrors={name: mirror, "fixture_key": FixtureKey} if name != "fixture_key"
                        else {name: mirror})
    assert problem in str(info.value)
    assert f"struct {name}" in str(info.value)


def test_size_mismatch_is_reported(load):
    coll = load("loader_fixture")

    class Longer(ctypes.Structure):
        _fields_ = FixtureKey._fields_ + [("extra", ctypes.c_uint32)]
    with pytest.raises(StructMismatchError, match="size 8 in BTF, 12 in the mirror"):
        check_layout(coll.btf, Longer, "fixture_key")


def test_unknown_struct_is_reported(load):
    coll = load("empty")
    with pytest.raises(StructMismatchError, match="not in the object's BTF"):
        check_layout(coll.btf, FixtureKey)


def test_close_releases_fds(load):
    coll = Collection.load(str(object_path("loader_fixture")))
    fd = coll.maps["hash_map"].fd
    coll.close()
    assert coll.maps["hash_map"].fd == -1
    with pytest.raises(OSError):
        import os
        os.fstat(fd)


def test_a_program_keeps_its_collection_alive():
    import gc
    prog = Collection.load(str(object_path("empty"))).programs["empty_tc"]
    gc.collect()
    assert prog.test_run(bytes(60)).verdict == "TC_ACT_OK"


def test_verifier_summary_names_the_error_on_5_10_and_7_3():
    """Real logs of the same rejection, saved by the kernel matrix: 7.x follows the
    error with a structured report, which the summary must skip."""
    from harness.bpf.errors import _summarise
    data = Path(__file__).resolve().parent.parent / "ci" / "kernel_matrix" / "testdata"
    old = _summarise((data / "verifier-5.10.0-46-unchecked_read.log").read_text())
    new = _summarise((data / "verifier-7.3.4-unchecked_read.log").read_text())
    assert "outside of the packet" in old
    assert new == "R1 min value is outside of the allowed memory range"


def test_a_signal_while_libbpf_prints_is_not_lost(monkeypatch):
    """Ctrl-C while libbpf is inside a load (its print callback running: the verifier
    log of a rejected program) ends the caller once the call returns; an exception a
    handler raises inside a ctypes callback would be dropped and the command would
    go on (the fault suite saw `up` exit 0 after SIGINT)."""
    import signal

    from harness.bpf import _libbpf as L
    real = L._vsnprintf
    sent = []

    def interrupting_vsnprintf(*args):
        if not sent:
            sent.append(True)
            signal.raise_signal(signal.SIGINT)   # handled inside the callback
        return real(*args)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(L, "_vsnprintf", interrupting_vsnprintf)
    try:
        with pytest.raises(KeyboardInterrupt):
            Collection.load(str(object_path("verifier_reject")))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent
