"""The pull size cap, on the engine's pull events alone (no registry)."""

from __future__ import annotations

from typing import Any

from tarea.execution.pull_size import MIB, PullSize, layer_total


def downloading(layer: str, current: int, total: int) -> dict[str, Any]:
    """A pull event of a layer being downloaded."""
    return {
        "status": "Downloading",
        "progressDetail": {"current": current, "total": total},
        "id": layer,
    }


def test_events_without_a_size_count_nothing() -> None:
    """Status lines, empty progress and malformed totals add nothing."""
    size = PullSize(1)
    events: list[dict[str, Any]] = [
        {"status": "Pulling from x", "id": "1"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "a"},
        {"status": "Downloading", "progressDetail": {"total": "9"}, "id": "a"},
        {"status": "Downloading", "progressDetail": {"total": True}, "id": "a"},
        {"status": "Downloading", "progressDetail": {"total": 9}},
        {"status": "Digest: sha256:00"},
    ]
    for event in events:
        assert not size.add(event)
    assert size.total == 0


def test_each_layer_counts_once_at_its_largest_size() -> None:
    """Many events of one layer count its size once; layers add up."""
    size = PullSize()
    size.add(downloading("a", 10, 100))
    size.add(downloading("a", 50, 100))
    size.add({"status": "Extracting", "progressDetail": {"current": 1, "total": 100}, "id": "a"})
    size.add(downloading("b", 1, 30))
    assert size.total == 130
    assert layer_total(downloading("b", 1, 30)) == ("b", 30)


def test_the_sum_passing_the_cap_is_over() -> None:
    """Layers at the cap pass; one byte more is over, and the refusal names the cap."""
    size = PullSize(2 * MIB)
    assert not size.add(downloading("a", 0, MIB))
    assert not size.add(downloading("b", 0, MIB))
    assert size.add(downloading("c", 0, 1))
    message = size.refusal("127.0.0.1:5000/big:1")
    assert "TAREA_MAX_PULL_MB" in message
    assert "2 MiB" in message
    assert "127.0.0.1:5000/big:1" in message


def test_no_cap_is_never_over() -> None:
    """A cap of 0 lets any size through."""
    size = PullSize(0)
    assert not size.add(downloading("a", 0, 10**12))
