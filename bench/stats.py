"""Summary statistics for benchmark samples: medians and robust spread.

Benchmarks report the median, the median absolute deviation (MAD) and the
min/max of their samples, never a single run.  Timings are pyperf
benchmarks, summarised by pyperf itself (``from_pyperf``); figures pyperf
cannot hold (ratios: its units are seconds, bytes and integers) use
``summary``, which computes the same quantities with the same definitions
(MAD = median of |x - median|, stdev = sample standard deviation).
"""
from __future__ import annotations

import statistics

#: Fewer samples than this have no spread to speak of: a MAD of 0 from one round
#: says nothing about the noise, so tables show ``mad_pct_text`` instead of "0.0%".
MIN_SPREAD_SAMPLES = 2


def summary(samples: list[float]) -> dict:
    if not samples:
        raise ValueError("no samples")
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples)
    return _shape(len(samples), med, mad, min(samples), max(samples), statistics.fmean(samples),
                  statistics.stdev(samples) if len(samples) > 1 else 0.0)


def mad_pct_text(s: dict | None, unit: str = "round") -> str:
    """The MAD of a summary as a table cell: ``4.2%``; ``n/a (1 round)`` when *s* has
    fewer than MIN_SPREAD_SAMPLES samples (*unit* names what a sample is); ``-`` for none."""
    if not s:
        return "-"
    if s["n"] < MIN_SPREAD_SAMPLES:
        return f"n/a ({s['n']} {unit}{'' if s['n'] == 1 else 's'})"
    return f"{s['mad_pct']:.1f}%"


def from_pyperf(bench, scale: float = 1.0) -> dict:
    """The summary of a pyperf.Benchmark's values (all runs), from pyperf's own
    statistics, multiplied by *scale* (1e9: seconds to ns)."""
    values = bench.get_values()
    if not values:
        raise ValueError(f"pyperf benchmark {bench.get_name()} has no values")
    stdev = bench.stdev() if len(values) > 1 else 0.0
    return _shape(len(values), bench.median() * scale, bench.median_abs_dev() * scale,
                  min(values) * scale, max(values) * scale, bench.mean() * scale, stdev * scale)


def _shape(n: int, med: float, mad: float, lo: float, hi: float, mean: float,
           stdev: float) -> dict:
    # Rounded to 1e-6 (of a ns, for timings): far below any resolution, and it
    # drops the float noise of unit conversions (12.000000000000002).
    return {
        "n": n,
        "median": round(med, 6),
        "mad": round(mad, 6),
        "mad_pct": round(100.0 * mad / med, 6) if med else 0.0,
        "min": round(lo, 6),
        "max": round(hi, 6),
        "mean": round(mean, 6),
        "stdev": round(stdev, 6),
    }
