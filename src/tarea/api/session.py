"""Dashboard sessions: an API key traded for a cookie, and CSRF tokens bound to it.

The dashboard (``/ui``) asks for a key once, in a form, and gets back an
HttpOnly, SameSite=Strict cookie (Secure under https); the key itself never
travels again, and never in a URL. The cookie is signed with the key it was
traded for (HMAC-SHA256), so that:

- any server sharing ``TAREA_API_KEYS`` accepts it (nothing is stored);
- removing a key from the configuration ends its sessions;
- it names its tenant and when it expires, and cannot be forged without the key.

Calls that change state (any method but GET, HEAD, OPTIONS) made with the
cookie must also carry ``X-CSRF-Token``: a second HMAC of the cookie, which the
page reads from ``GET /ui/session`` (same origin only) and a page of another
site cannot. Their ``Origin``, when sent, must be the server's own.

Logging out clears the cookie in the browser. A copy of the cookie taken
before stays valid until it expires (``SESSION_S``): the price of keeping no
session state on the servers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The session cookie's name.
COOKIE = "tarea_session"
#: The header carrying the CSRF token on calls that change state.
CSRF_HEADER = "x-csrf-token"
#: How long a session lasts, in seconds.
SESSION_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Session:
    """Who a valid cookie names, and the CSRF token that goes with it."""

    tenant: str
    admin: bool
    csrf: str


def _mac(key: bytes, purpose: str, message: str) -> str:
    digest = hmac.new(key, f"tarea-{purpose}|{message}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


class Sessions:
    """Issue and check session cookies for the keys a server accepts.

    Args:
        keys: (key, tenant, admin) for every API key and operator key.
        now: the clock (seconds since the epoch); tests pass their own.
    """

    def __init__(
        self, keys: list[tuple[bytes, str, bool]], now: Callable[[], float] | None = None
    ) -> None:
        self._keys = keys
        self._now = now or time.time

    @classmethod
    def of(
        cls, keys: dict[str, str], admins: dict[str, str], now: Callable[[], float] | None = None
    ) -> Sessions:
        """Sessions for tenants' ``keys`` and operators' ``admins`` (key: name)."""
        entries = [(key.encode(), tenant, False) for key, tenant in keys.items()]
        entries += [(key.encode(), name, True) for key, name in admins.items()]
        return cls(entries, now)

    @property
    def enabled(self) -> bool:
        """Whether keys are configured at all (else the dashboard is open, as the API is)."""
        return bool(self._keys)

    def login(self, api_key: str) -> str | None:
        """The cookie value for ``api_key``, or None if no such key is configured."""
        given = api_key.strip().encode()
        found = None
        for key, tenant, admin in self._keys:  # every key compared: no timing hint
            if hmac.compare_digest(key, given):
                found = (key, tenant, admin)
        if found is None or not given:
            return None
        key, tenant, admin = found
        body = ".".join(
            (
                _b64(tenant),
                "a" if admin else "t",
                str(int(self._now()) + SESSION_S),
                secrets.token_urlsafe(12),
            )
        )
        return f"{body}.{_mac(key, 'session', body)}"

    def check(self, cookie: str) -> Session | None:
        """The session ``cookie`` holds, if it is genuine, current and its key still configured."""
        body, _, mac = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or not parts[2].isdigit() or int(parts[2]) < self._now():
            return None
        tenant = _unb64(parts[0])
        admin = parts[1] == "a"
        if tenant is None:
            return None
        found = None
        for key, name, is_admin in self._keys:
            genuine = hmac.compare_digest(_mac(key, "session", body), mac)
            if name == tenant and is_admin == admin and genuine:
                found = Session(tenant, admin, _mac(key, "csrf", cookie))
        return found

    def csrf_ok(self, session: Session, token: str) -> bool:
        """Whether ``token`` is ``session``'s CSRF token."""
        return bool(token) and hmac.compare_digest(session.csrf, token)


def cookie_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The session cookie among raw ASGI ``headers``, if there is one."""
    for name, value in headers:
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, cookie = part.strip().partition("=")
            if key == COOKIE and cookie:
                return cookie
    return None


def header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    """One header's value among raw ASGI ``headers`` (latin-1), if present."""
    for name, value in headers:
        if name == wanted:
            return value.decode("latin-1")
    return None


def same_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's ``Origin``, if it sent one, is this server (its Host)."""
    origin = header(headers, b"origin")
    if origin is None:
        return True
    host = header(headers, b"host")
    return host is not None and origin in (f"http://{host}", f"https://{host}")
