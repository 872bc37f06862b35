"""Ring buffer delivery from a program run with test_run to a Python callback."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP

from harness.bpf import RingBuffer
from harness.testrun.packets import eth

from .fixture_structs import FixtureEvent

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

PKT = bytes(eth() / IP(src="198.18.0.1", dst="198.18.0.2") / UDP() / (b"x" * 10))


def test_events_arrive_in_order(load):
    coll = load("loader_fixture", rodata={"event_tag": 0xC0FFEE})
    got = []
    with RingBuffer(coll.maps["events"], got.append, FixtureEvent) as rb:
        for _ in range(5):
            coll.programs["fixture_tc"].test_run(PKT)
        assert rb.poll(timeout_ms=1000) == 5
    assert [e.seq for e in got] == [0, 1, 2, 3, 4]
    assert all(e.tag == 0xC0FFEE and e.len == len(PKT) for e in got)


def test_raw_bytes_without_event_type(load):
    coll = load("loader_fixture")
    got = []
    with RingBuffer(coll.maps["events"], got.append) as rb:
        coll.programs["fixture_tc"].test_run(PKT)
        assert rb.consume() == 1
    assert isinstance(got[0], bytes) and len(got[0]) == 24


def test_callback_exception_is_raised_by_poll(load):
    coll = load("loader_fixture")

    def boom(_event):
        raise RuntimeError("callback failed")
    with RingBuffer(coll.maps["events"], boom, FixtureEvent) as rb:
        coll.programs["fixture_tc"].test_run(PKT)
        with pytest.raises(RuntimeError, match="callback failed"):
            rb.poll(timeout_ms=1000)


def test_not_a_ringbuf(load):
    with pytest.raises(ValueError, match="not a ringbuf"):
        RingBuffer(load("loader_fixture").maps["hash_map"], print)


def test_poll_timeout_returns_zero(load):
    with RingBuffer(load("loader_fixture").maps["events"], print) as rb:
        assert rb.poll(timeout_ms=10) == 0
