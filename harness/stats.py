"""Latency figures, computed one way for every verb and benchmark.

The JSON contract says latencies are {"p50": s, "p95": s}: p50 is the median,
p95 the nearest-rank percentile (a value that was really measured).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency(values: Sequence[float], ndigits: int = 4) -> dict[str, float | None]:
    """{"p50": median, "p95": nearest rank}, rounded; None for no values."""
    if not values:
        return {"p50": None, "p95": None}
    p95 = percentile(values, 95)
    assert p95 is not None
    return {"p50": round(statistics.median(values), ndigits), "p95": round(p95, ndigits)}
