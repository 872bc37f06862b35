"""What the kernel charges for LB map writes, by map flavour: the experiment behind
the LB maps' flags.

``python -m bench.map_floor [--entries N] [--rounds R] [--json]`` writes N
services-map entries (struct lb4_key -> struct lb_service, 12 + 16 bytes, keys
as a full sync makes them: 12 per frontend) into a fresh hash map per variant,
and N/10 u32-keyed entries (the backends / reverse-NAT shape, 8-byte values)
into a hash map or an array map, with BPF_MAP_UPDATE_BATCH from one packed
buffer, nothing else timed.  Variants are interleaved, in a different order
each round, and each round's times are divided by that round's preallocated
hash map written in one batch, so the ratios are measured side by side.

Variants:
  services  hash, BPF_F_NO_PREALLOC, batches of 1,024 / 65,536 / all
            hash, preallocated,      batches of 1,024 / 65,536 / all
  by id     hash (preallocated or not) and array, one batch

Maps are created outside any object and closed after each sample; nothing is
attached.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench.stats import summary
from harness.bpf import Map, Packed
from harness.lb import columns as C

NO_PREALLOC = 1
BATCHES = (1024, 65536, 0)          # 0: everything in one call


def _services_entries(n: int) -> tuple[Packed, Packed]:
    keys = np.zeros(n, C.KEY[4])
    frontend = np.arange(n) // 12
    keys["address"] = (0xC6130000 + frontend).astype(np.uint32).byteswap()
    keys["dport"] = C.be16(np.full(n, 80))
    keys["backend_slot"] = np.arange(n) % 12
    keys["proto"] = 6
    values = np.zeros(n, C.SERVICE)
    values["backend_id"] = np.arange(n) % 480 + 1
    return Packed(keys.tobytes(), keys.itemsize), Packed(values.tobytes(), values.itemsize)


def _write(m: Map, keys: Packed, values: Packed, batch: int) -> float:
    batch = batch or len(keys)
    start = time.perf_counter()
    for i in range(0, len(keys), batch):
        m.update_batch(keys[i:i + batch], values[i:i + batch])
    return time.perf_counter() - start


def variants(n: int) -> dict[str, tuple]:
    """name -> (map type, key size, value size, max entries, flags, batch, entries)."""
    svc = _services_entries(n)
    ids = max(n // 10, 1)
    by_id = (Packed(np.arange(1, ids + 1, dtype="<u4").tobytes(), 4),
             Packed(np.zeros(ids, C.BACKEND[4]).tobytes(), C.BACKEND[4].itemsize))
    out = {}
    for flags, label in ((NO_PREALLOC, "hash no-prealloc"), (0, "hash prealloc")):
        for batch in BATCHES:
            name = f"services {label} batch {batch or 'all'}"
            out[name] = ("hash", 12, 16, n, flags, batch, svc)
    out["by-id hash no-prealloc"] = ("hash", 4, 8, ids + 1, NO_PREALLOC, 0, by_id)
    out["by-id hash prealloc"] = ("hash", 4, 8, ids + 1, 0, 0, by_id)
    out["by-id array"] = ("array", 4, 8, ids + 1, 0, 0, by_id)
    return out


REFERENCE = {"services": "services hash prealloc batch all", "by-id": "by-id hash prealloc"}


def run(entries: int, rounds: int) -> dict:
    table = variants(entries)
    names = list(table)
    samples: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        got = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            kind, ks, vs, cap, flags, batch, (keys, values) = table[name]
            m = Map.create(kind, "cb_floor", ks, vs, cap, flags=flags)
            try:
                got[name] = _write(m, keys, values, batch)
            finally:
                m.close()
        for name, seconds in got.items():
            samples[name].append(seconds)
            ratios[name].append(seconds / got[REFERENCE[name.split()[0]]])
    return {"entries": entries, "rounds": rounds,
            "results": [{"variant": name, "entries": len(table[name][6][0]),
                         "seconds": summary(samples[name]),
                         "ns_per_entry": summary([s / len(table[name][6][0]) * 1e9
                                                  for s in samples[name]]),
                         "ratio_to_reference": summary(ratios[name]),
                         "reference": REFERENCE[name.split()[0]]} for name in names]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.map_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.entries < 10 or args.rounds < 1:
        print("map_floor: --entries must be >= 10 and --rounds >= 1", file=sys.stderr)
        return 2
    doc = run(args.entries, args.rounds)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{'VARIANT':40} {'ENTRIES':>9} {'NS/ENTRY':>9} {'MAD%':>6} {'VS REF':>7}")
    for r in doc["results"]:
        ns, ratio = r["ns_per_entry"], r["ratio_to_reference"]
        mad = 100 * ns["mad"] / ns["median"] if ns["median"] else 0
        print(f"{r['variant']:40} {r['entries']:>9} {ns['median']:>9.0f} {mad:>6.1f} "
              f"{ratio['median']:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
