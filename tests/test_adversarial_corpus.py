"""The malformed corpus (tests/adversarial/corpus.py) through one node's programs:
every base packet cut at every length, every header field at its edges, forged ICMP
quotes, frame trailers; each outcome checked against the spec's invariants
(tests/adversarial/invariants.py) and, where the spec is definite, its verdict.

The corpus runs once per module (about 87,000 packets), with the node's flow events
at level `none` (every event path taken: a trace at entry and exit, a verdict, a drop,
into a ring large enough for all of them): events are a side effect, so every
outcome must still be the spec's; the tests below read its report.  Failures are sorted into the classes of finding issue 11 fixed (one test each:
a failure there is a regression of that fix) and new findings
(test_corpus_has_no_new_findings), and the finding first found here has its own
reproducer test.
"""
from __future__ import annotations

import pytest
from harness.abi import monitor
from harness.bpf import Collection, RingBuffer

from .adversarial import corpus as C
from .adversarial import drive as D
from .adversarial import node as N
from .support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

#: packets this module must run (the suite's share of `make test`'s 100,000 with the
#: differential stage)
TARGET = 80_000
#: the corpus runs with every event sent, into a ring that holds them all (bytes)
EVERY_PACKET = monitor.LEVELS["none"]
EVENTS_RING = 1 << 27


@pytest.fixture(scope="module")
def report():
    opened: list[Collection] = []

    def load(name: str, **kw) -> Collection:
        kw["rodata"] = {**(kw.get("rodata") or {}), "monitor_aggregation": EVERY_PACKET}
        kw["max_entries"] = {**(kw.get("max_entries") or {}), "cb_events": EVENTS_RING}
        coll = Collection.load(str(object_path(name)), **kw)
        opened.append(coll)
        return coll
    node = N.AdvNode(load)
    try:
        cases = C.corpus()
        rep = D.drive(node, cases, warmups=[c for c in cases if c.warmup])
        sent = []
        with RingBuffer(node.maps["cb_events"], sent.append) as ring:
            ring.consume()
        rep.events_sent = len(sent)
        rep.events_lost = sum(node.maps["cb_events_lost"].lookup(0))
    finally:
        node.close()
        for coll in opened:
            coll.close()
    print(f"\nadversarial corpus: {rep.summary(limit=2)}")
    return rep


def test_corpus_runs_the_target_packet_count(report):
    print(f"\nadversarial corpus: {report.count} packets")
    assert report.count >= TARGET
    # every kind of outcome the spec names shows up: the corpus is not all one verdict
    for v in ("pass", 132, 133, 134, 174, 181, "REFUSED"):
        assert report.outcomes.get(v, 0) > 0, v


def test_the_corpus_ran_with_every_event_sent(report):
    """Every packet went through the event paths (a trace at least: `none`), none lost."""
    assert report.events_sent >= report.count and report.events_lost == 0


def test_corpus_has_no_new_findings(report):
    assert not report.new, "\n" + "\n".join(
        f"{bucket}: {len(fails)}\n" + "\n".join(f"  {f}" for f in fails[:3])
        for bucket, fails in report.new.items())


@pytest.mark.parametrize("fix", sorted(D.KNOWN))
def test_corpus_shows_no_regression_of(report, fix):
    """One test per class of finding issue 11 fixed (each failed before its fix)."""
    fails = report.known.get(fix, [])
    assert not fails, f"{D.KNOWN[fix]}: {len(fails)} failures, e.g.\n" + "\n".join(
        f"  {f}" for f in fails[:3])


def test_truncation_inside_the_ip_packet_is_invalid_everywhere(report):
    """Spot check of the definite class: cuts before the IP packet's end are 134
    (or refused by the kernel); the expectations hold for every truncation."""
    bad = [f for fails in report.new.values() for f in fails if f.case.family == "truncate"]
    assert not bad, "\n".join(map(str, bad[:5]))


# -- a finding of the corpus, as its own reproducer ---------------------------------------

@pytest.mark.parametrize("v6", [False, True])
def test_a_service_packet_the_policy_drops_leaves_no_service_entry(load, v6):
    """client's egress allows TCP 80 to the world only: its SYN to the ClusterIP is
    DNATed to a backend and dropped (133).  The drop must not leave the CT_SERVICE
    entry the service lookup wrote (semantics: a dropped packet leaves no state)."""
    node = N.AdvNode(load)
    try:
        case = [b for b in C.bases() if b.label == f"tcp{6 if v6 else 4}-client-world"][0]
        lay = C.W.layout(case.frame)
        f = bytearray(case.frame)
        off, size = lay.dst
        f[off:off + size] = C.ipaddress.ip_address(N.VIP6 if v6 else N.VIP4).packed
        frame = C.W.fix_checksums(bytes(f))
        before = node.snapshot()
        out = node.egress("client", frame)
        assert out.short == 133
        created = node.snapshot() - before
        assert not created, [N.describe_ct_key(k) for _, k in created]
    finally:
        node.close()
