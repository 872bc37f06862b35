"""Before/after a datapath change: the micro suite in two checkouts, interleaved.

    git worktree add /tmp/before <commit> && make -C /tmp/before build
    python -m bench.compare_builds --baseline /tmp/before [--rounds 3] [micro options]

Each round runs ``chainbench bench micro`` once in each checkout (with that
checkout's harness and objects: struct mirrors are checked against each object's
BTF, so old objects need their own harness), alternating which goes first, so machine
noise lands on both alike.  Every run measures its own floor (the empty program), so
the figure compared is ns above the floor; the ratio after/before is taken within
each round and summarised (median, min, max) over the rounds.  Nothing is written to
results/.

The two checkouts should time the same cases with the same settings: when the cases
changed between them (bench/micro/lb_cases.py, bench/micro/policy_cases.py), bring the baseline's
up to date first, and a baseline object older than a new ``const volatile`` setting
needs that declaration (declaring an unused constant changes no instruction).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from harness import paths


def run_micro(tree: Path, micro_args: list[str]) -> dict[str, float]:
    """One micro run in checkout *tree* (its harness, its build/): case name -> median
    ns above the floor."""
    env = {k: v for k, v in os.environ.items() if k != "CHAINBENCH_BUILD_DIR"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "micro", "--no-write",
                           "--no-dashboard", "--json", *micro_args],
                          capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"micro in {tree} failed ({proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:]}")
    start = proc.stdout.index("\n{") + 1
    doc = json.loads(proc.stdout[start:])
    return {r["name"]: r["above_floor_ns"]["median"] for r in doc["suites"]["micro"]["results"]
            if "above_floor_ns" in r}


def compare(before: Path, after: Path, rounds: int, micro_args: list[str]) -> dict:
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for r in range(rounds):
        order = [("before", before), ("after", after)]
        for label, build in (order if r % 2 == 0 else order[::-1]):
            print(f"round {r + 1}/{rounds}: {label} ({build})", file=sys.stderr, flush=True)
            runs[label].append(run_micro(build, micro_args))
    cases = sorted(set(runs["before"][0]) & set(runs["after"][0]))
    out = {}
    for case in cases:
        b = [run[case] for run in runs["before"]]
        a = [run[case] for run in runs["after"]]
        ratios = [x / y for x, y in zip(a, b) if y > 0]
        out[case] = {"before_ns": statistics.median(b), "after_ns": statistics.median(a),
                     "delta_ns": statistics.median(x - y for x, y in zip(a, b)),
                     "ratio": {"median": statistics.median(ratios), "min": min(ratios),
                               "max": max(ratios)} if ratios else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, required=True, help="checkout of 'before', built")
    ap.add_argument("--tree", type=Path, default=paths.ROOT, help="checkout of 'after' (this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args, micro_args = ap.parse_known_args(argv)
    for d in (args.baseline, args.tree):
        if not (d / "build" / "bpf").is_dir() or not (d / "harness").is_dir():
            print(f"ERROR: {d}: not a built checkout (no harness/ or build/bpf/: make build)",
                  file=sys.stderr)
            return 2
    result = compare(args.baseline.resolve(), args.tree.resolve(), args.rounds, micro_args)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'CASE':44} {'BEFORE':>9} {'AFTER':>9} {'DELTA':>8}  AFTER/BEFORE (median, min-max)")
    for case, r in result.items():
        ratio = r["ratio"]
        print(f"{case:44} {r['before_ns']:9.1f} {r['after_ns']:9.1f} {r['delta_ns']:+8.1f}  "
              f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})")
    print("ns above the empty program, medians over rounds; ratios within each round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
