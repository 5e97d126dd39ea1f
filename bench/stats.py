"""Percentiles and summaries of latency samples (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([5.0], 90)
    5.0
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Latencies of one series of successful calls, in seconds."""

    n: int
    p50: float
    p90: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary | None:
        """The summary of ``seconds``, or None if there are none."""
        if not seconds:
            return None
        return cls(
            n=len(seconds),
            p50=percentile(seconds, 50),
            p90=percentile(seconds, 90),
            minimum=min(seconds),
            maximum=max(seconds),
        )
