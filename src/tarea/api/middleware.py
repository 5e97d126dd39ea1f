"""Pure ASGI middlewares in front of every route: authentication and the body cap.

**Bearer keys.**

With ``TAREA_API_KEYS="tenant:key,..."`` set, a request must carry
``Authorization: Bearer <key>``; the key names the request's tenant, which the
routes read from ``request.state.tenant``. Only ``/healthz`` and ``/readyz``
are open (probes carry no key). A middleware rather than a per-route
dependency, so a route added later is protected without anyone remembering.
Keys are compared in constant time.

**Operator keys.** ``TAREA_ADMIN_KEYS="name:key,..."`` are accepted too: such a
request's tenant is ``admin:<name>`` and ``request.state.admin`` is true; the
operator routes (``/metrics``, ``/v1/servers``, every tenant's pools) need it.
With no key configured at all, every request is the operator's, as it always was.

**Dashboard sessions.** A request without a bearer key may carry the
dashboard's session cookie instead (:mod:`tarea.api.session`); one that
changes state must then carry its CSRF token too (403 ``csrf_failed``
otherwise). ``/ui`` itself is open: its routes ask for a login.

**Body cap.** A request body over ``TAREA_MAX_BODY_KB`` is refused with 413
before it is buffered: at once when its Content-Length says so, else as soon
as the bytes read pass the cap.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tarea.api.errors import PROBLEM_JSON
from tarea.api.session import CSRF_HEADER, SAFE_METHODS, Sessions, cookie_of, header, same_origin

#: The tenant of every request while authentication is off.
DEFAULT_TENANT = "default"
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class BearerAuth:
    """Resolve each request's tenant from its bearer key, or answer 401."""

    def __init__(
        self, app: ASGIApp, keys: dict[str, str], admins: dict[str, str] | None = None
    ) -> None:
        self.app = app
        self._keys = [(key.encode(), tenant, False) for key, tenant in keys.items()]
        self._keys += [(key.encode(), name, True) for key, name in (admins or {}).items()]
        self.sessions = Sessions(list(self._keys))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self._keys or scope["path"] in OPEN_PATHS:
            state["tenant"] = DEFAULT_TENANT
            state["admin"] = not self._keys
            await self.app(scope, receive, send)
            return
        found = self._tenant(scope)
        if found is None:
            # Off the hot path: only requests without a valid bearer key get here.
            if scope["path"] == "/ui" or scope["path"].startswith("/ui/"):
                await self.app(scope, receive, send)  # the dashboard's routes ask for a login
                return
            refusal, found = self._session(scope)
            if found is None:
                await refusal(send)
                return
        state["tenant"], state["admin"] = found
        await self.app(scope, receive, send)

    def _session(self, scope: Scope) -> tuple[_Refusal, tuple[str, bool] | None]:
        """The tenant of the request's dashboard session, or how to refuse it."""
        headers = scope["headers"]
        cookie = cookie_of(headers)
        session = self.sessions.check(cookie) if cookie else None
        if session is None:
            return _unauthorized, None
        if scope["method"] not in SAFE_METHODS and not (
            same_origin(headers)
            and self.sessions.csrf_ok(session, header(headers, CSRF_HEADER.encode()) or "")
        ):
            return _csrf_failed, None
        return _unauthorized, (session.tenant, session.admin)

    def _tenant(self, scope: Scope) -> tuple[str, bool] | None:
        """The tenant the request's key names, and whether it is an operator key."""
        header = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return None
        found = None
        for key, tenant, admin in self._keys:  # every key compared: no timing hint
            if hmac.compare_digest(key, token.strip()):
                found = (tenant, admin)
        return found


_Refusal = Callable[[Send], Awaitable[None]]


async def _unauthorized(send: Send) -> None:
    await _refuse(
        send,
        401,
        "unauthorized",
        "a valid API key is required: Authorization: Bearer <key>",
        [(b"www-authenticate", b'Bearer realm="tarea"')],
    )


async def _csrf_failed(send: Send) -> None:
    await _refuse(
        send,
        403,
        "csrf_failed",
        "a call from the dashboard that changes state needs its X-CSRF-Token "
        "(from GET /ui/session) and must come from this server's own pages",
    )


async def _refuse(
    send: Send,
    status: int,
    code: str,
    detail: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {
            "type": f"urn:tarea:problem:{code}",
            "title": code.replace("_", " ").capitalize(),
            "status": status,
            "detail": detail,
            "code": code,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, without buffering them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next(
            (value for name, value in scope["headers"] if name == b"content-length"), None
        )
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()  # answered by the app's handlers as problem+json
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413, f"the request body is over the server's cap of {self.max_bytes // 1024} KiB"
        )
