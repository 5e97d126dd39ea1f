"""Delivering a finished task to its ``callback_url``, signed, with retries.

The body is the task as ``GET /v1/tasks/{id}`` shows it; the header
``X-Tarea-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes
under the server's callback secret, so a receiver can check that tarea sent
it (:func:`verify`). Any 2xx is delivered; anything else, or no answer, is
retried with exponential backoff up to a bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from tarea.domain.records import CallbackState, utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tarea-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """Whether ``header`` is a valid signature of ``body`` (constant time)."""
    return hmac.compare_digest(sign(secret, body), header)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to try a callback."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.first_delay_s * 2.0 ** (attempt - 1), self.max_delay_s)


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: bytes,
    policy: RetryPolicy,
    record: Callable[[CallbackState], Awaitable[None]],
) -> CallbackState:
    """POST ``body`` to ``url`` until a 2xx or the attempts run out.

    ``record`` is awaited after every attempt with the state so far, so the
    outcome is durable even if the server stops mid-way.
    """
    state = CallbackState()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    for attempt in range(1, policy.attempts + 1):
        state.attempts = attempt
        try:
            response = await client.post(
                url, content=body, headers=headers, timeout=policy.timeout_s
            )
            if 200 <= response.status_code < 300:
                state.status, state.last_error, state.delivered_at = "delivered", None, utcnow()
                await record(state)
                return state
            state.last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"[:500]
        last = attempt == policy.attempts
        state.status = "failed" if last else "retrying"
        await record(state)
        if last:
            log.warning(
                "callback to %s failed after %d attempts: %s", url, attempt, state.last_error
            )
            return state
        await asyncio.sleep(policy.delay(attempt))
    return state
