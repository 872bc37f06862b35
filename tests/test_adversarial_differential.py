"""Random differential stage of the adversarial suite: seeded flows and packet
sequences through the real programs of one node, each compared byte for byte with
an oracle written from the RFCs and SPEC.md (tests/adversarial/oracle.py).

Knobs: CHAINBENCH_FUZZ_PACKETS (packets to compare, default 60,000; `make fuzz` runs
>= 1,000,000), CHAINBENCH_FUZZ_SEED (first episode seed, default 1).  A mismatch is
printed with its seed, step, program, packet hex and expected vs got; the tags name
the features the prediction depends on.
"""
from __future__ import annotations

import collections
import os
import re

import pytest

from harness.bpf import Collection
from tests.adversarial import gen, rfc
from tests.support import object_path

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

TARGET = int(os.environ.get("CHAINBENCH_FUZZ_PACKETS", "60000"))
SEED = int(os.environ.get("CHAINBENCH_FUZZ_SEED", "1"))
STEPS = 1500                    # per episode: one node load (~1 s) per ~2,500 packets
MAX_REPORTED = 40


def test_rfc1071_checksum_example():
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; checksum 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert rfc.ones_sum(data) == 0xDDF2 and rfc.checksum(data) == 0x220D


def test_rfc1624_incremental_matches_recomputation():
    # RFC 1624 section 4's case: a checksum updated incrementally equals the recomputed
    # one, also when the new sum is -0.
    hdr = bytearray(rfc.ipv4("198.18.0.20", "198.19.0.10", 6, b""))
    new = bytearray(hdr)
    new[16:20] = rfc.addr("198.18.1.20")
    new[10:12] = b"\0\0"
    full = rfc.checksum(bytes(new))
    inc = rfc.incremental(int.from_bytes(hdr[10:12], "big"), bytes(hdr[16:20]), bytes(new[16:20]))
    assert inc == full


def run_episode(seed: int) -> tuple[int, list[str]]:
    """One episode, its collections closed at its end (conftest's `load` would keep
    every episode's programs and maps open until the test ends, slowing the kernel)."""
    opened: list[Collection] = []

    def load(name: str, **kwargs) -> Collection:
        coll = Collection.load(str(object_path(name)), **kwargs)
        opened.append(coll)
        return coll
    try:
        return gen.run_episode(seed, load, STEPS)
    finally:
        for coll in opened:
            coll.close()


def test_random_differential():
    packets, episodes, mismatches = 0, 0, []
    seed = SEED
    # An episode ends on its first mismatch; past MAX_REPORTED of them, stop (a broken
    # datapath would otherwise pay a node load every few packets).
    while packets < TARGET and len(mismatches) < MAX_REPORTED:
        n, bad = run_episode(seed)
        packets += n
        episodes += 1
        mismatches += bad
        seed += 1
    tags = collections.Counter(t for m in mismatches
                               for t in (re.findall(r"\[tags: ([^\]]*)\]", m) or ["none"]))
    print(f"\nrandom differential: {packets} packets compared in {episodes} episodes "
          f"(seeds {SEED}..{seed - 1}), {len(mismatches)} episodes ended on a mismatch; "
          f"tags: {dict(tags)}")
    for m in mismatches[:MAX_REPORTED]:
        print(m, "\n")
    assert not mismatches, (f"{len(mismatches)} mismatches (first shown):\n" + mismatches[0])
    assert packets >= TARGET, f"only {packets} packets compared (target {TARGET})"
    print(f"random differential: target {TARGET} packets reached")
