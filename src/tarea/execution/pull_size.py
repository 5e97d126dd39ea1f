"""How much an image pull brings, read from the engine's pull events, against a cap.

While it pulls, the engine streams one event per layer step; a layer being
downloaded says its size (``progressDetail.total``, bytes, as the registry
announced it). :class:`PullSize` adds those sizes up, each layer once, and
says when the sum passes the operator's cap (``TAREA_MAX_PULL_MB``), so the
pull can be stopped before the rest arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024


def layer_total(event: dict[str, Any]) -> tuple[str, int] | None:
    """The layer id and size an event announces, or None when it announces none."""
    detail = event.get("progressDetail")
    layer = event.get("id")
    if not isinstance(detail, dict) or not isinstance(layer, str):
        return None
    total = detail.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or total <= 0:
        return None
    return layer, total


@dataclass
class PullSize:
    """The sum of the layer sizes one pull's events announced, and its cap (0: none)."""

    cap_bytes: int = 0
    layers: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Bytes announced so far, each layer counted once (its largest announced size)."""
        return sum(self.layers.values())

    def add(self, event: dict[str, Any]) -> bool:
        """Count ``event``; whether the sum is now over the cap."""
        found = layer_total(event)
        if found is not None:
            layer, size = found
            self.layers[layer] = max(size, self.layers.get(layer, 0))
        return self.over()

    def over(self) -> bool:
        """Whether the layers announced so far come to more than the cap."""
        return self.cap_bytes > 0 and self.total > self.cap_bytes

    def refusal(self, image: str) -> str:
        """Why the pull of ``image`` was stopped, naming the cap."""
        return (
            f"image {image!r} is not present locally and its pull was stopped: its layers "
            f"come to more than {self.total / MIB:.1f} MiB, over the server's cap of "
            f"{self.cap_bytes / MIB:g} MiB (TAREA_MAX_PULL_MB)"
        )
