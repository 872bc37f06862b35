"""Running cases through an AdvNode with every invariant and the spec's definite
expectation checked, and sorting failures into the classes of finding issue 11 fixed
("known": a failure there is a regression of that fix) and the rest ("new").

  drive(node, cases) -> Report     every case run once, in order
  Report.known / .new              {bucket: [Failure]}; .count packets run
  classify(failure)                the fixed class of finding a failure belongs to, or "new"
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from . import corpus as C
from . import invariants as I
from . import node as N
from . import wire as W

#: the classes of finding the corpus first showed and issue 11 fixed: a failure in
#: one of these buckets is a regression of that fix
KNOWN = {
    "l4-past-tot-len": "L4 headers past tot_len (-> 134)",
    "icmp-quote-bounded": "ICMP quote writes bounded by tot_len",
    "ipv6-udp-zero-csum": "IPv6 zero UDP checksum kept",
    "icmpv6-quote-ext": "ICMPv6 errors quoting extension headers",
    "sctp-services": "SCTP services",
}
# (fragment reverse NAT and SNAT port allocation have no corpus classifier: SNAT ports
# have a definite test in test_adversarial_state.py, fragments in test_frag_sctp_snat.py
# and the differential stage)


@dataclass
class Failure:
    case: C.Case
    got: str | int
    expected: str | int | None
    violations: list[str]

    def __str__(self) -> str:
        c = self.case
        where = f"{c.program}" + (f"[{c.pod}]" if c.pod else "")
        exp = f" expected {self.expected}" if self.expected is not None else ""
        return (f"{c.family}: {c.label} via {where}: got {self.got}{exp}"
                f"{'; ' + '; '.join(self.violations) if self.violations else ''}\n"
                f"    in : {c.frame.hex()}")


@dataclass
class Report:
    count: int = 0
    known: dict = field(default_factory=lambda: defaultdict(list))
    new: dict = field(default_factory=lambda: defaultdict(list))
    outcomes: dict = field(default_factory=lambda: defaultdict(int))

    def summary(self, limit: int = 3) -> str:
        lines = [f"{self.count} packets; verdicts {dict(self.outcomes)}"]
        for title, groups in (("NEW", self.new), ("regression of a fixed finding", self.known)):
            for bucket, fails in sorted(groups.items()):
                lines.append(f"{title} {bucket}: {len(fails)}")
                lines += [f"  {f}" for f in fails[:limit]]
        return "\n".join(lines)


def classify(f: Failure) -> str:
    c, lay = f.case, W.layout(f.case.frame)
    text = " ".join(f.violations)
    if f.expected == 134 and lay.invalid and ("L4 header past" in lay.invalid
                                              or "TCP options past" in lay.invalid):
        return "l4-past-tot-len"
    if "quote ext" in c.label and lay.version == 6:
        return "icmpv6-quote-ext"
    if "trailer modified" in text and _icmp_error(c.frame, lay):
        return "icmp-quote-bounded"
    if "bytes no NAT may rewrite" in text and W.quote(c.frame, lay) and _quote_past_end(c.frame, lay):
        return "icmp-quote-bounded"
    if "UDP checksum 0 became non-zero" in text and lay.version == 6:
        return "ipv6-udp-zero-csum"
    if lay.proto == W.SCTP and "created state" not in text and f.expected is None:
        return "sctp-services"
    return "new:" + _bucket(f, lay)


def _icmp_error(f: bytes, lay: W.Layout) -> bool:
    p = lay.l4
    return p is not None and ((lay.proto == W.ICMP and f[p] in W.ICMP4_ERRORS) or
                              (lay.proto == W.ICMP6 and f[p] in W.ICMP6_ERRORS))


def _quote_past_end(f: bytes, lay: W.Layout) -> bool:
    q = W.quote(f, lay)
    return bool(q) and q[0] + (20 if q[1] == 4 else 40) + 8 > lay.ip_end


def _bucket(f: Failure, lay: W.Layout) -> str:
    if f.violations:
        v = f.violations[0]
        return v.split(" at ")[0].split(":")[0].split(" (")[0][:60]
    return f"verdict {f.got} where the spec says {f.expected}"


def drive(node: N.AdvNode, cases: Iterable[C.Case], report: Report | None = None,
          check_state: bool = True, reset_every: int = 1000,
          warmups: list[C.Case] = ()) -> Report:
    """Run every case; check the invariants (I.check) and the expectation (C.expectation).

    Every *reset_every* packets conntrack/SNAT are emptied and *warmups* (the bases that
    open flows) run again, so snapshots stay small and later errors still find flows."""
    rep = report or Report()
    snap = node.snapshot() if check_state else frozenset()
    for case in _with_resets(node, cases, reset_every, list(warmups)):
        if case is _RESET:
            snap = node.snapshot() if check_state else frozenset()
            continue
        lay = W.layout(case.frame)
        out = node.run(case.program, case.pod, case.frame)
        rep.count += 1
        created: frozenset = frozenset()
        if check_state:
            if out.verdict == "TC_ACT_SHOT":
                after = node.snapshot()
                created, snap = after - snap, after
            elif out.passed:
                snap = None
        got = out.short
        rep.outcomes[got] += 1
        errs = I.check(case.frame, out, created, lay)
        exp = C.expectation(case, lay)
        if exp is not None and got != exp:
            errs = [f"verdict {got}, spec says {exp}"] + errs
        if errs:
            fail = Failure(case, got, exp, errs)
            bucket = classify(fail)
            (rep.new if bucket.startswith("new:") else rep.known)[bucket].append(fail)
        if check_state and snap is None:
            snap = node.snapshot()
    return rep


_RESET = object()


def _with_resets(node: N.AdvNode, cases: Iterable[C.Case], every: int, warmups: list):
    n = 0
    for case in cases:
        n += 1
        if every and warmups and n % every == 0:
            node.clear_state()
            yield _RESET
            yield from warmups
        yield case
