"""`make fuzz`: the corpus, then a seeded random mutation loop over it, every packet
checked with the same invariants and expectations as tests/test_adversarial_corpus.py.

    python -m tests.adversarial.fuzz [--packets 1000000] [--seed 1] [--minutes 28]

Stops at --packets or after --minutes (whichever first), prints the packet count and
the report (new findings, then regressions of fixed findings), and exits 1 if there
is a new finding or fewer packets ran than asked.  The node's maps are unpinned on
exit (AdvNode.close), also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

from harness.bpf import Collection

from ..support import object_path
from . import corpus as C
from . import drive as D
from . import node as N


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make fuzz")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=28.0)
    args = ap.parse_args(argv)

    opened: list[Collection] = []

    def load(name: str, **kw) -> Collection:
        coll = Collection.load(str(object_path(name)), **kw)
        opened.append(coll)
        return coll

    deadline = time.monotonic() + args.minutes * 60
    rep = D.Report()
    node = N.AdvNode(load)
    try:
        cases = C.corpus()
        warm = [c for c in cases if c.warmup]
        D.drive(node, cases, rep, warmups=warm)
        print(f"corpus: {rep.count} packets", flush=True)
        stream = C.fuzz(cases, args.seed)
        while rep.count < args.packets and time.monotonic() < deadline:
            batch = list(itertools.islice(stream, min(20_000, args.packets - rep.count)))
            D.drive(node, batch, rep, warmups=warm)
            print(f"fuzz seed {args.seed}: {rep.count} packets, "
                  f"{sum(map(len, rep.new.values()))} new findings", flush=True)
    finally:
        node.close()
        for coll in opened:
            coll.close()
    print(rep.summary(limit=5))
    print(f"adversarial fuzz: {rep.count} packets (seed {args.seed})")
    if rep.count < args.packets:
        print(f"ERROR: time bound reached after {rep.count} of {args.packets} packets")
        return 1
    return 1 if rep.new else 0


if __name__ == "__main__":
    sys.exit(main())
