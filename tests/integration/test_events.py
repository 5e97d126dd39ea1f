"""``GET /v1/events`` on one server (SQLite): every status change of the tenant's tasks,
resumable with Last-Event-ID; and the dashboard's guards seen from outside a browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Events, TenantServer, read_events, tenant_server

KEYS = {"acme": "events-acme-key", "other": "events-other-key"}


@pytest.fixture(scope="module")
def server(tasks_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantServer]:
    """A server with tenants acme and other on a fresh SQLite store."""
    with tenant_server(tmp_path_factory.mktemp("events"), KEYS) as started:
        yield started


def suma(a: float) -> dict[str, Any]:
    return {"image": "tasks_image:latest", "function": "suma", "params": {"a": a, "b": 1}}


def ended(task_id: str) -> Any:
    return lambda events: any(
        kind == "status" and d["id"] == task_id and d["status"] == "succeeded"
        for _, kind, d in events
    )


def test_the_tenant_stream_carries_every_change_of_its_tasks_only(server: TenantServer) -> None:
    """A task's queued, running and succeeded come in order with ids; another tenant's
    task submitted meanwhile does not come at all."""
    ids: dict[str, str] = {}

    def cause() -> None:
        with server.client("other") as other:
            ids["other"] = other.post("/v1/tasks", json=suma(1)).json()["id"]
        with server.client("acme") as acme:
            ids["acme"] = acme.post("/v1/tasks", json=suma(2)).json()["id"]

    with server.client("acme") as acme:
        events = read_events(acme, "/v1/events", lambda e: "acme" in ids and ended(ids["acme"])(e),
                             started=cause)  # fmt: skip
    mine = [(i, d) for i, kind, d in events if kind == "status" and d["id"] == ids["acme"]]
    assert [d["status"] for _, d in mine] == ["queued", "running", "succeeded"]
    assert mine[0][1]["image"] == "tasks_image:latest"
    assert mine[0][1]["function"] == "suma"
    seqs = [int(i or 0) for i, _ in mine]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert all(d["id"] != ids["other"] for _, _, d in events)


def test_a_task_that_started_at_once_still_begins_with_queued(server: TenantServer) -> None:
    """A warm container of acme idle (a first task ran): the next task is recorded running
    by the write that accepts it (queued 0 ms), and its events are still queued, running,
    succeeded, in order."""
    ids: dict[str, str] = {}
    with server.client("acme") as acme:
        assert acme.post("/v1/tasks?wait=true", json=suma(4)).json()["status"] == "succeeded"

        def cause() -> None:
            ids["t"] = acme.post("/v1/tasks", json=suma(5)).json()["id"]

        events = read_events(acme, "/v1/events", lambda e: ended(ids.get("t", ""))(e),
                             started=cause)  # fmt: skip
        task = acme.get(f"/v1/tasks/{ids['t']}").json()
    assert task["timings"]["queued_ms"] == 0
    mine = [d["status"] for _, kind, d in events if kind == "status" and d["id"] == ids["t"]]
    assert mine == ["queued", "running", "succeeded"]


def test_a_reader_resuming_with_last_event_id_gets_what_it_missed(server: TenantServer) -> None:
    """Reconnecting with the id of the task's queued event replays its running and succeeded."""
    ids: dict[str, str] = {}

    def cause() -> None:
        with server.client("acme") as acme:
            ids["t"] = acme.post("/v1/tasks", json=suma(3)).json()["id"]

    with server.client("acme") as acme:
        first = read_events(
            acme, "/v1/events", lambda e: any(d.get("id") == ids.get("t") for _, _, d in e),
            started=cause,
        )  # fmt: skip
        queued_id = first[-1][0]
        assert first[-1][2]["status"] == "queued"
        acme.get(f"/v1/tasks/{ids['t']}", params={"wait": "true"})
        again: Events = read_events(acme, "/v1/events", ended(ids["t"]), last_event_id=queued_id)
    assert [d["status"] for _, kind, d in again if d.get("id") == ids["t"]] == [
        "running",
        "succeeded",
    ]


def test_a_last_event_id_no_longer_kept_is_answered_reset(server: TenantServer) -> None:
    """An id older than what the server keeps (an earlier process's) gets a reset event first."""
    with server.client("acme") as acme:
        events = read_events(acme, "/v1/events", lambda e: bool(e), last_event_id="5")
    assert events[0][1] == "reset"


def test_a_malformed_last_event_id_is_a_422(server: TenantServer) -> None:
    """Last-Event-ID must be a number: anything else is refused with validation_error."""
    with server.client("acme") as acme:
        response = acme.get("/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


def test_the_stream_needs_a_key(server: TenantServer) -> None:
    """No key, no cookie: 401."""
    assert httpx.get(f"{server.url}/v1/events").json()["code"] == "unauthorized"


def login(server: TenantServer) -> tuple[httpx.Client, str]:
    """A client holding acme's session cookie, and its CSRF token."""
    http = httpx.Client(base_url=server.url, timeout=60)
    response = http.post("/ui/login", data={"api_key": KEYS["acme"]})
    assert response.status_code == 303
    session = http.get("/ui/session").json()
    assert session["tenant"] == "acme"
    return http, str(session["csrf"])


def test_cookie_calls_that_change_state_need_the_csrf_token(server: TenantServer) -> None:
    """With the session cookie, reads pass; a submit without the token, with a wrong one, or
    from another origin is refused 403 csrf_failed; with the token it is accepted."""
    http, csrf = login(server)
    try:
        assert http.get("/v1/tasks").status_code == 200
        refused = http.post("/v1/tasks", json=suma(1))
        assert refused.status_code == 403
        assert refused.json()["code"] == "csrf_failed"
        wrong = http.post("/v1/tasks", json=suma(1), headers={"X-CSRF-Token": csrf[:-2] + "xx"})
        assert wrong.status_code == 403
        elsewhere = http.post(
            "/v1/tasks",
            json=suma(1),
            headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
        )
        assert elsewhere.status_code == 403
        accepted = http.post("/v1/tasks", json=suma(1), headers={"X-CSRF-Token": csrf})
        assert accepted.status_code == 202
    finally:
        http.close()


def test_a_forged_or_foreign_cookie_is_refused(server: TenantServer) -> None:
    """A cookie whose tenant was changed, or a made-up one, is not a session."""
    http, _ = login(server)
    cookie = http.cookies["tarea_session"]
    http.close()
    _tenant, rest = cookie.split(".", 1)
    forged = "b3RoZXI." + rest  # base64url("other")
    for value in (forged, "garbage", cookie + "x"):
        response = httpx.get(f"{server.url}/v1/tasks", cookies={"tarea_session": value})
        assert response.status_code == 401, value


def test_the_pages_carry_a_strict_csp_and_no_inline_script(server: TenantServer) -> None:
    """/ui answers with default-src 'self', frame-ancestors 'none'; its HTML has no inline
    script or handler, and the login form posts the key in the body."""
    http, _ = login(server)
    page = http.get("/ui")
    http.close()
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    html = page.text
    assert "<script src=" in html
    assert html.count("<script") == html.count("<script src=")
    assert " on" not in html.replace(" one", "")  # no onclick= and the like
    form = httpx.get(f"{server.url}/ui/login").text
    assert 'method="post"' in form
    assert 'name="api_key"' in form
