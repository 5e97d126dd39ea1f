"""The seed's contract: an HTTP service on port 5000 (DESIGN §1).

Readiness is polled on ``GET /status/`` (never a fixed sleep), then the task
is ``POST /ejecutarTarea/`` with ``{"parametros": .., "calculo": ..}`` and the
service answers the JSON to return.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tarea.domain import nesting
from tarea.errors import ProtocolViolation, RemoteTaskError, TaskTimeout

SEED_PORT = 5000
#: The seed's words for an unsupported operation; mapped to ``unknown_function``.
UNSUPPORTED = "no soportada"


async def wait_ready(client: httpx.AsyncClient, base_url: str, timeout_s: float) -> None:
    """Poll ``GET /status/`` until it answers 200.

    Raises:
        TaskTimeout: it did not within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = await client.get(
                f"{base_url}/status/", timeout=max(0.05, min(1.0, remaining))
            )
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() + delay > deadline:
            raise TaskTimeout(
                f"the seed task service was not ready within {timeout_s:g} s",
                data={"phase": "start"},
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def execute(
    client: httpx.AsyncClient,
    base_url: str,
    function: str,
    params: dict[str, Any],
    *,
    timeout_s: float,
) -> Any:
    """Run one task; the value of ``resultado``, or the whole answer if it has none.

    Raises:
        RemoteTaskError: the service answered ``{"error": ..}``.
        TaskTimeout: no answer within ``timeout_s``.
        ProtocolViolation: the answer is not JSON, or holds what no store holds.
    """
    try:
        response = await client.post(
            f"{base_url}/ejecutarTarea/",
            json={"parametros": params, "calculo": function},
            timeout=timeout_s,
        )
    except httpx.TimeoutException:
        raise TaskTimeout(f"the task did not finish within {timeout_s:g} s") from None
    except httpx.TransportError as exc:
        raise ProtocolViolation(f"the seed task service dropped the request: {exc}") from None
    try:
        body = response.json()
    except RecursionError:  # nested past what json.loads takes (~1,000 levels)
        raise _too_deep() from None
    except ValueError:
        if response.status_code >= 500:
            raise RemoteTaskError(
                "task_error",
                f"the seed task service failed with HTTP {response.status_code}",
                data={
                    "status": response.status_code,
                    "body": nesting.clean_text(response.text[:200]),
                },
            ) from None
        raise ProtocolViolation(
            f"the seed task service answered HTTP {response.status_code} with a body "
            "that is not JSON",
            data={"status": response.status_code, "body": nesting.clean_text(response.text[:200])},
        ) from None
    # {"resultado": ..} holds the result one level down: the result gets MAX_DEPTH.
    if nesting.too_deep(body, nesting.MAX_DEPTH + 1):
        raise _too_deep()
    if (fault := nesting.storable(body)) is not None:
        raise ProtocolViolation(
            f"the seed task service's answer holds {fault}; it cannot be stored"
        )
    if isinstance(body, dict) and "error" in body and "resultado" not in body:
        message = str(body["error"])
        code = "unknown_function" if UNSUPPORTED in message.lower() else "task_error"
        raise RemoteTaskError(code, message, data={"function": function})
    if response.status_code >= 400:
        raise RemoteTaskError(
            "task_error",
            f"the seed task service answered HTTP {response.status_code}",
            data={"status": response.status_code, "body": body},
        )
    if isinstance(body, dict) and "resultado" in body:
        return body["resultado"]
    if nesting.too_deep(body):
        raise _too_deep()
    return body


def _too_deep() -> ProtocolViolation:
    """An answer nested deeper than a result may be (its record could never be shown)."""
    return ProtocolViolation(
        f"the seed task service answered JSON nested deeper than {nesting.MAX_DEPTH} levels",
        data={"max_depth": nesting.MAX_DEPTH},
    )
