"""The overview's figures: tasks per minute, p50 latency, failures by code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tarea.overview import Ended, summarize

NOW = datetime(2026, 12, 4, 12, 30, 40, tzinfo=UTC)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


def test_ends_are_counted_per_minute_with_their_median_latency() -> None:
    """Each end falls in its minute; p50 is that minute's median; empty minutes are None."""
    ends = [
        Ended(ago(0), 10.0, "succeeded", None),
        Ended(ago(0), 30.0, "failed", "task_error"),
        Ended(ago(0), 20.0, "succeeded", None),
        Ended(ago(2), 5.0, "timed_out", "timed_out"),
        Ended(ago(90), 1.0, "succeeded", None),  # outside the window
    ]
    summary = summarize(ends, now=NOW, minutes=3)
    assert [m["ended"] for m in summary["minutes"]] == [1, 0, 3]
    assert [m["failed"] for m in summary["minutes"]] == [1, 0, 1]
    assert [m["p50_ms"] for m in summary["minutes"]] == [5.0, None, 20.0]
    assert summary["minutes"][-1]["minute"] == "2026-12-04T12:30:00+00:00"


def test_failures_are_grouped_by_code_most_frequent_first() -> None:
    """Failures count by error code (the status when there is none); successes do not."""
    ends = [
        Ended(ago(1), 1.0, "failed", "task_error"),
        Ended(ago(1), 1.0, "cancelled", "cancelled"),
        Ended(ago(1), 1.0, "failed", "task_error"),
        Ended(ago(1), 1.0, "failed", None),
        Ended(ago(1), 1.0, "succeeded", None),
    ]
    assert summarize(ends, now=NOW, minutes=60)["failures"] == [
        {"code": "task_error", "count": 2},
        {"code": "cancelled", "count": 1},
        {"code": "failed", "count": 1},
    ]
