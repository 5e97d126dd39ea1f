"""The heartbeat's loop: what it says when the store fails it (the store is a fake here;
the takeover itself, on real stores, is in tests/integration/test_takeover.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tarea.errors import StoreUnavailable
from tarea.leases import Membership


class Store:
    """Takes every beat; ``silent`` fails as a store that is away would."""

    def __init__(self) -> None:
        self.beats = 0
        self.looked = 0
        #: Set once it was asked for silent servers three times.
        self.looked_thrice = asyncio.Event()

    async def beat(self, server_id: str, **_: Any) -> None:
        self.beats += 1

    async def silent(self, lease_s: float, *, besides: str) -> list[str]:
        self.looked += 1
        if self.looked == 3:
            self.looked_thrice.set()
        raise StoreUnavailable("the task store does not answer: locked")


def test_a_failed_look_for_silent_servers_is_not_called_a_failed_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server whose beats land, and whose look for silent servers fails, says so,
    and not that its heartbeat failed (it did not: it is still listed alive)."""

    async def on_silent(_: str) -> None:
        raise AssertionError("no server is silent here")

    async def scenario() -> Store:
        store = Store()
        membership = Membership(
            store,  # type: ignore[arg-type]  # the two methods the loop uses
            server_id="s",
            lease_s=0.03,
            on_silent=on_silent,
        )
        await membership.start()
        await store.looked_thrice.wait()
        await membership.aclose()
        return store

    with caplog.at_level(logging.WARNING, logger="tarea.leases"):
        store = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    messages = [record.getMessage() for record in caplog.records]
    assert store.beats > store.looked >= 3
    assert "could not look for silent servers to take over: " in messages[0], messages
    assert not [m for m in messages if "heartbeat failed" in m], messages
