"""``/ui``: the dashboard, its login and its static files.

The pages are static files (``tarea/ui/``): one HTML shell for every page
and one script, which reads everything from the API (``/v1/...``) with the
session cookie and renders it with ``textContent`` (nothing a task returns
is ever parsed as HTML). No build step, no library, nothing from a CDN.

Every answer here carries a Content-Security-Policy that allows scripts,
styles and connections from this server only, no inline script, and no
framing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from tarea.api.errors import problem
from tarea.api.session import (
    COOKIE,
    CSRF_HEADER,
    SESSION_S,
    Session,
    Sessions,
    cookie_of,
    same_origin,
)

router = APIRouter(prefix="/ui", include_in_schema=False)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: The most a login form may send, in bytes.
_LOGIN_MAX = 4096


@dataclass(frozen=True)
class _File:
    body: bytes
    media_type: str


def _load() -> dict[str, _File]:
    """The dashboard's files, read once."""
    files = {}
    for entry in resources.files("tarea.ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = _File(entry.read_bytes(), _TYPES[suffix])
    return files


_FILES: dict[str, _File] = {}


def _file(name: str, status: int = 200, body: bytes | None = None) -> Response:
    if not _FILES:
        _FILES.update(_load())
    found = _FILES.get(name)
    if found is None:
        return _secure(problem(404, "not_found", f"no file {name!r} in the dashboard"))
    return Response(
        found.body if body is None else body,
        status_code=status,
        media_type=found.media_type,
        headers=SECURITY_HEADERS,
    )


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _sessions(request: Request) -> Sessions:
    """The app's sessions (the same keys as its authentication middleware's)."""
    sessions: Sessions = request.app.state.sessions
    return sessions


def _session(request: Request) -> Session | None:
    """The request's valid session; with no keys configured, everyone's open one."""
    sessions = _sessions(request)
    if not sessions.enabled:
        return Session("default", True, "")
    cookie = cookie_of(request.scope["headers"])
    return sessions.check(cookie) if cookie else None


def _page(request: Request) -> Response:
    if _session(request) is None:
        return _secure(RedirectResponse("/ui/login", status_code=303))
    return _file("index.html")


@router.get("")
async def dashboard(request: Request) -> Response:
    """The tasks page (every page is the same shell; its script draws the page asked for)."""
    return _page(request)


@router.get("/tasks/{task_id}")
async def task_page(request: Request, task_id: Annotated[str, Path(max_length=64)]) -> Response:
    """A task's page."""
    return _page(request)


@router.get("/pools")
async def pools_page(request: Request) -> Response:
    """Warm pools, servers and workers."""
    return _page(request)


@router.get("/overview")
async def overview_page(request: Request) -> Response:
    """Charts of the last hour."""
    return _page(request)


@router.get("/login")
async def login_page(request: Request) -> Response:
    """The login form (or the dashboard, when no keys are configured)."""
    if not _sessions(request).enabled:
        return _secure(RedirectResponse("/ui", status_code=303))
    return _file("login.html")


@router.post("/login")
async def login(request: Request) -> Response:
    """Trade the form's ``api_key`` for a session cookie; back to the form if it is wrong."""
    sessions = _sessions(request)
    if not sessions.enabled:
        return _secure(RedirectResponse("/ui", status_code=303))
    if not same_origin(request.scope["headers"]):
        return _secure(problem(403, "csrf_failed", "the login form must come from this server"))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOGIN_MAX:
            return _secure(problem(413, "request_too_large", "the login form is too large"))
    form = parse_qs(body.decode("utf-8", errors="replace"))
    cookie = sessions.login((form.get("api_key") or [""])[0])
    if cookie is None:
        page = bytes(_file("login.html").body)
        failed = page.replace(b'id="failed" hidden', b'id="failed"')
        return _file("login.html", status=401, body=failed)
    response = _secure(RedirectResponse("/ui", status_code=303))
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session in this browser (its cookie is cleared); needs the CSRF token."""
    current = _session(request)
    token = request.headers.get(CSRF_HEADER, "")
    sessions = _sessions(request)
    if current is not None and sessions.enabled and not sessions.csrf_ok(current, token):
        return _secure(problem(403, "csrf_failed", "logging out needs the X-CSRF-Token"))
    response = _secure(Response(status_code=204))
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.get("/session")
async def session(request: Request) -> Response:
    """Who is logged in, and the CSRF token the page sends with calls that change state."""
    current = _session(request)
    if current is None:
        return _secure(problem(401, "unauthorized", "log in at /ui/login"))
    return _secure(
        JSONResponse(
            {
                "tenant": current.tenant,
                "admin": current.admin,
                "csrf": current.csrf,
                "login": _sessions(request).enabled,
            }
        )
    )


@router.get("/static/{name}")
async def static(
    name: Annotated[str, Path(max_length=64, pattern=r"^[a-z0-9_-]+\.[a-z]+$")],
) -> Response:
    """One of the dashboard's files."""
    return _file(name)
