"""The dashboard's overview: tasks per minute, median latency and failures by code.

:func:`summarize` is a pure function of the tasks that ended in the window
(their end, latency, status and error code), read from the store by
:meth:`tarea.store.cluster.Cluster.ends_since`; the store reads at most
``OVERVIEW_MAX_TASKS`` of the latest, so on a busy tenant the figures come
from a sample of the newest ends (the answer says how many it counted).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: The most ended tasks one overview reads.
OVERVIEW_MAX_TASKS = 5000


@dataclass(frozen=True, slots=True)
class Ended:
    """One ended task, as the overview counts it."""

    finished_at: datetime
    latency_ms: float
    status: str
    code: str | None


def summarize(ends: list[Ended], *, now: datetime, minutes: int) -> dict[str, Any]:
    """Per minute of the last ``minutes`` (oldest first): tasks ended, failed, p50 latency;
    and failures by error code, most frequent first."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    buckets: list[list[Ended]] = [[] for _ in range(minutes)]
    for end in ends:
        index = int((end.finished_at - start).total_seconds() // 60)
        if 0 <= index < minutes:
            buckets[index].append(end)
    codes = Counter(end.code or end.status for end in ends if end.status != "succeeded")
    return {
        "minutes": [
            {
                "minute": (start + timedelta(minutes=i)).isoformat(),
                "ended": len(bucket),
                "failed": sum(1 for end in bucket if end.status != "succeeded"),
                "p50_ms": statistics.median(e.latency_ms for e in bucket) if bucket else None,
            }
            for i, bucket in enumerate(buckets)
        ],
        "failures": [{"code": code, "count": n} for code, n in codes.most_common()],
        "counted": len(ends),
        "sampled": len(ends) >= OVERVIEW_MAX_TASKS,
    }
