"""Delivering a finished task to its ``callback_url``, signed, with retries.

The body is the task as ``GET /v1/tasks/{id}`` shows it; the header
``X-Tarea-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes
under the server's callback secret, so a receiver can check that tarea sent
it (:func:`verify`). Any 2xx is delivered; anything else, or no answer, is
retried with exponential backoff up to a bound.

Each attempt goes only where :mod:`tarea.dispatch.outbound` allows: the host
is resolved and vetted, and the request is sent to the vetted address (a
refusal is final, never retried). One deadline bounds the whole attempt,
resolution and connection included, and only the answer's status is read:
its body is never, so a receiver cannot grow the server's memory or hold an
attempt open by answering slowly.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.cookiejar
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from tarea.dispatch import outbound
from tarea.domain.records import CallbackState, TaskRecord, utcnow
from tarea.errors import CallbackUrlNotAllowed

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Tarea-Signature"
#: How many adopted deliveries (:meth:`Caller.resume`) one server runs at once.
RESUMED_AT_ONCE = 16


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
    #: Bound on one whole attempt: resolution, connection, sending, the status.
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.first_delay_s * 2.0 ** (attempt - 1), self.max_delay_s)


def new_client() -> httpx.AsyncClient:
    """The HTTP client callbacks go out on.

    No proxy from the environment and no redirects (a receiver cannot send the
    server elsewhere); no kept connections, since each attempt is pinned to an
    address and, for https, a server name of its own (a pooled connection is
    matched by address only); no cookies kept from one receiver for the next.
    """
    return httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        cookies=http.cookiejar.CookieJar(
            policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
        ),
    )


def pinned_request(
    client: httpx.AsyncClient,
    url: httpx.URL,
    address: outbound.IPAddress,
    body: bytes,
    headers: Mapping[str, str],
) -> httpx.Request:
    """The POST of ``body`` to ``url``, sent to ``address`` instead of a fresh resolution.

    The ``Host`` header and, for https, the TLS server name (SNI, and the name
    the certificate is checked against) stay ``url``'s host. It carries no
    timeout of its own: the attempt's one deadline bounds it (:func:`attempt`).
    """
    extensions = {"sni_hostname": outbound.host_of(url)} if url.scheme == "https" else {}
    return client.build_request(
        "POST",
        url.copy_with(host=str(address)),
        content=body,
        headers={**headers, "Host": url.netloc.decode("ascii")},
        timeout=None,
        extensions=extensions,
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt did not deliver; ``final`` when trying again cannot help."""

    reason: str
    final: bool = False


async def attempt(
    client: httpx.AsyncClient,
    url: httpx.URL,
    body: bytes,
    headers: Mapping[str, str],
    policy: RetryPolicy,
    allow: outbound.Allowlist,
    resolver: outbound.Resolver = outbound.resolve,
) -> Failure | None:
    """POST ``body`` to ``url`` once; None when a 2xx answered.

    ``policy.timeout_s`` bounds the whole attempt. The answer's body is never
    read: the response is closed as soon as its status is in.
    """
    try:
        async with asyncio.timeout(policy.timeout_s):
            address = await outbound.vet(url, allow, resolver)
            request = pinned_request(client, url, address, body, headers)
            response = await client.send(request, stream=True)
            await response.aclose()
    except CallbackUrlNotAllowed as exc:
        return Failure(f"{exc.code}: {exc.message}", final=True)
    except httpx.InvalidURL as exc:  # e.g. a scoped IPv6 address, allowed but not sendable
        return Failure(f"invalid callback URL: {exc}"[:500], final=True)
    except TimeoutError:  # before OSError, of which it is a subclass
        return Failure(f"no answer within {policy.timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Failure(f"{type(exc).__name__}: {exc}"[:500])
    except OSError as exc:  # the name does not resolve
        return Failure(f"cannot resolve the callback host: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return None
    return Failure(f"HTTP {response.status_code}")


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: bytes,
    policy: RetryPolicy,
    record: Callable[[CallbackState], Awaitable[bool | None]],
    *,
    allow: outbound.Allowlist = outbound.NOTHING_ALLOWED,
    resolver: outbound.Resolver = outbound.resolve,
    state: CallbackState | None = None,
) -> CallbackState:
    """POST ``body`` to ``url`` until a 2xx, a refusal by ``allow``, or the attempts run out.

    ``record`` is awaited after every attempt with the state so far, so the
    outcome is durable even if the server stops mid-way; when it answers
    False (another server adopted the delivery), no more attempts are made.
    ``state``: how far an earlier delivery of it got (its attempts count
    towards the policy's).
    """
    state = CallbackState() if state is None else state
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    target = httpx.URL(url)
    if state.attempts >= policy.attempts:  # an earlier delivery used them all up
        state.status = "failed"
        await record(state)
        return state
    if state.attempts:  # an earlier delivery's attempt failed: its backoff first
        await asyncio.sleep(policy.delay(state.attempts))
    for number in range(state.attempts + 1, policy.attempts + 1):
        state.attempts = number
        failure = await attempt(client, target, body, headers, policy, allow, resolver)
        if failure is None:
            state.status, state.last_error, state.delivered_at = "delivered", None, utcnow()
            await record(state)
            return state
        state.last_error = failure.reason
        last = failure.final or number == policy.attempts
        state.status = "failed" if last else "retrying"
        if await record(state) is False:
            log.info("callback to %s: another server took the delivery over", url)
            return state
        if last:
            log.warning(
                "callback to %s failed after %d attempts: %s", url, number, state.last_error
            )
            return state
        await asyncio.sleep(policy.delay(number))
    return state


def delivered_by(record: TaskRecord, server_id: str) -> dict[str, Any]:
    """The field that records, with an end ``server_id`` records for ``record``, that
    ``server_id`` calls it back (none without a callback URL): if it dies before it
    has, the server that takes it over does (``TaskService.resume_callbacks``)."""
    return {"callback": CallbackState(by=server_id)} if record.callback_url else {}


class CallbackStore(Protocol):
    """Where each delivery attempt is written (:class:`~tarea.store.aio.AsyncStore`)."""

    def save_callback(self, task_id: str, state: CallbackState) -> Awaitable[bool]:
        """Record ``state`` unless another server adopted the delivery; whether written."""
        ...


class Caller:
    """Delivers ended tasks to their callback URLs (:func:`deliver`), recording each attempt.

    Whoever records a task's end calls it back: a server or worker that ran
    it, or an API server that cancelled it before any worker had it.

    A delivery is owned: before its first attempt the task's callback is
    recorded ``pending`` by ``owner``, and every attempt keeps that. A server
    that stops or dies mid-way has its deliveries resumed when it starts
    again, or by the server that takes it over
    (:meth:`tarea.service.TaskService.recover`, ``take_over``): at least once.

    Args:
        store: where each attempt's :class:`CallbackState` is written.
        render: the task as ``GET /v1/tasks/{id}`` shows it (the body).
        secret: the HMAC key of the signature header.
        policy: how many attempts, and how far apart.
        owner: this server's id (``TAREA_SERVER_ID``), recorded with each delivery.
        allow: the private addresses a callback may reach.
    """

    def __init__(
        self,
        store: CallbackStore,
        render: Callable[[TaskRecord], dict[str, Any]],
        secret: bytes,
        policy: RetryPolicy,
        owner: str,
        allow: outbound.Allowlist = outbound.NOTHING_ALLOWED,
    ) -> None:
        self._store = store
        self.owner = owner
        self._render = render
        self._secret = secret
        self._policy = policy
        self._allow = allow
        self._client = new_client()
        #: Deliveries started and not done yet, by task id.
        self._under_way: dict[str, asyncio.Task[CallbackState]] = {}
        #: Bounds the deliveries :meth:`resume` runs at once.
        self._resuming = asyncio.Semaphore(RESUMED_AT_ONCE)
        self._closed = False

    def start(self, record: TaskRecord) -> None:
        """Deliver ``record`` in the background (kept until done; a failure is logged).

        A task whose delivery is under way here is not delivered twice.
        """
        self._spawn(record, self.call_back(record))

    def resume(self, records: list[TaskRecord]) -> None:
        """Deliver ``records`` (adopted deliveries) in the background, a few at once."""
        for record in records:
            self._spawn(record, self._resume(record))

    async def _resume(self, record: TaskRecord) -> CallbackState:
        async with self._resuming:
            return await self.call_back(record)

    def _spawn(self, record: TaskRecord, delivery: Coroutine[Any, Any, CallbackState]) -> None:
        if self._closed or record.id in self._under_way:
            delivery.close()
            if self._closed:
                log.warning(
                    "task %s is not called back now: this server stops (it is when a server "
                    "with its id starts again, or takes it over)",
                    record.id,
                )
            return
        task = asyncio.create_task(delivery)
        self._under_way[record.id] = task
        task.add_done_callback(lambda done: self._delivered(record.id, done))

    def _delivered(self, task_id: str, delivery: asyncio.Task[CallbackState]) -> None:
        if self._under_way.get(task_id) is delivery:
            del self._under_way[task_id]
        if not delivery.cancelled() and delivery.exception() is not None:
            log.error("a callback failed", exc_info=delivery.exception())

    async def call_back(self, record: TaskRecord) -> CallbackState:
        """Deliver the ended ``record`` to its ``callback_url``; how it went.

        A delivery ``record.callback`` shows begun (resumed) goes on from its
        attempts; otherwise it is first recorded ``pending`` by this server.
        """
        assert record.callback_url is not None
        body = json.dumps(self._render(record), separators=(",", ":")).encode()
        prior = record.callback
        state = CallbackState(by=self.owner) if prior is None else replace(prior, by=self.owner)

        async def save(state: CallbackState) -> bool:
            return await self._store.save_callback(record.id, state)

        if (prior is None or prior.by != self.owner) and not await save(state):
            return state  # another server delivers it
        return await deliver(
            self._client,
            record.callback_url,
            body,
            self._secret,
            self._policy,
            save,
            allow=self._allow,
            state=state,
        )

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Start no more; give deliveries under way ``timeout_s``, stop the rest, close."""
        self._closed = True
        if self._under_way:
            _, pending = await asyncio.wait(set(self._under_way.values()), timeout=timeout_s)
            for delivery in pending:
                delivery.cancel()
        await self._client.aclose()
