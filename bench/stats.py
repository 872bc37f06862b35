"""Summary statistics for benchmark samples: medians and robust spread.

Benchmarks report the median, the median absolute deviation (MAD) and the
min/max of their samples, never a single run.
"""
from __future__ import annotations

import statistics


def summary(samples: list[float]) -> dict:
    if not samples:
        raise ValueError("no samples")
    med = statistics.median(samples)
    mad = statistics.median(abs(s - med) for s in samples)
    return {
        "n": len(samples),
        "median": med,
        "mad": mad,
        "mad_pct": (100.0 * mad / med) if med else 0.0,
        "min": min(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }
