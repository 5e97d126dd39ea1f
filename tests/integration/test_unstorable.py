"""Text and numbers no store holds, from a client or from a task, on SQLite and PostgreSQL.

JSON's syntax allows ``\\u0000`` and a lone surrogate (``\\ud800``), and Python's
parser also takes ``NaN`` and ``Infinity``. PostgreSQL's text and JSON refuse the
first, no UTF-8 text holds the second, JSON has none of the last. Before, on
PostgreSQL, such params were a 500, and such a result left its task ``running``
for ever (its end write refused at each retry). Now, on every store:

- a request holding one is refused 422 ``invalid_request``, naming the field;
- a task's result holding one ends the task ``failed`` with ``protocol_error``;
- a task's words (logs, a progress message, an error's message) are kept, with
  U+0000 and lone surrogates made U+FFFD; an error's data that holds one is
  dropped, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import MISBEHAVING_IMAGE, server_on_store

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    misbehaving_image: str,
) -> Iterator[httpx.Client]:
    """A server on an empty store of each kind, and a client for it."""
    with server_on_store(request, tmp_path_factory.mktemp(f"unstorable-{request.param}")) as api:
        yield api


def run(api: httpx.Client, what: str, method: str = "unstorable") -> dict[str, Any]:
    """Run the misbehaving image's ``method`` with ``what``, waiting; the task as it ended."""
    response = api.post(
        "/v1/tasks?wait=true&timeout_s=30",
        json={"image": MISBEHAVING_IMAGE, "function": method, "params": {"what": what}},
    )
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] != "running", f"the task's end was not recorded: {task}"
    again = api.get(f"/v1/tasks/{task['id']}")
    assert again.status_code == 200, again.text
    assert again.json()["status"] == task["status"]
    return task


def post_raw(api: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return api.post(path, content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b'"function": "echo", "params": {"s": "a\\u0000b"}', "params", id="params"),
        pytest.param(b'"function": "echo", "params": {"k\\u0000": 1}', "params", id="params-key"),
        pytest.param(
            b'"function": "echo", "params": {}, "metadata": {"m": ["\\u0000"]}',
            "metadata",
            id="metadata",
        ),
        pytest.param(b'"function": "ec\\u0000ho", "params": {}', "function", id="function"),
    ],
)
def test_a_request_holding_u0000_is_refused_422_naming_the_field(
    api: httpx.Client, body: bytes, field: str
) -> None:
    """U+0000 is refused on every store (it was a 500 on PostgreSQL), and nothing is recorded."""
    before = api.get("/v1/tasks?limit=100").json()["items"]
    response = post_raw(
        api, "/v1/tasks?wait=true", b'{"image": "%s", %s}' % (MISBEHAVING_IMAGE.encode(), body)
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert (problem["code"], problem["field"]) == ("invalid_request", field)
    assert "NUL" in problem["detail"]
    assert api.get("/v1/tasks?limit=100").json()["items"] == before


def test_the_seed_endpoint_refuses_u0000_in_its_parameters_422(api: httpx.Client) -> None:
    response = post_raw(
        api,
        "/getRemoteTask/",
        b'{"imagen_docker": "%s", "calculo": "echo", "parametros": {"a": "\\u0000"}}'
        % MISBEHAVING_IMAGE.encode(),
    )
    assert response.status_code == 422, response.text
    assert (response.json()["code"], response.json()["field"]) == ("invalid_request", "params")


@pytest.mark.parametrize(
    ("what", "named"),
    [
        ("nan", "NaN or an infinity"),
        ("infinity", "NaN or an infinity"),
        ("nul", "NUL character"),
        ("nul_key", "NUL character"),
        ("raw_surrogate", "not Unicode"),
    ],
)
def test_a_result_no_store_holds_ends_the_task_failed_protocol_error(
    api: httpx.Client, what: str, named: str
) -> None:
    task = run(api, what)
    assert task["status"] == "failed", task
    assert task["error"]["code"] == "protocol_error"
    assert named in task["error"]["message"]
    assert task["result"] is None


def test_a_result_holding_a_lone_surrogate_escape_ends_the_task_failed(api: httpx.Client) -> None:
    """``"\\ud800"`` in the result (the test_hostile attack) fails the task on every store."""
    task = run(api, "", method="lone_surrogate")
    assert (task["status"], task["error"]["code"]) == ("failed", "protocol_error")
    assert "not Unicode" in task["error"]["message"]


def test_an_error_holding_u0000_keeps_its_code_its_words_made_storable(api: httpx.Client) -> None:
    task = run(api, "error")
    assert task["status"] == "failed", task
    error = task["error"]
    assert error["code"] == "task_error"
    assert error["message"] == "bad\ufffdnews"
    assert error["data"]["rpc_code"] == -32000
    assert "not Unicode" in error["data"]["data_dropped"]
    assert "s" not in error["data"]


def test_u0000_in_the_logs_is_kept_as_u_fffd(api: httpx.Client) -> None:
    task = run(api, "log_nul")
    assert (task["status"], task["result"]) == ("succeeded", {"ok": True}), task
    logs = api.get(f"/v1/tasks/{task['id']}/logs")
    assert logs.status_code == 200, logs.text
    assert "before\ufffdafter" in logs.text


def test_a_nan_progress_and_a_message_holding_u0000_are_kept_storable(api: httpx.Client) -> None:
    task = run(api, "progress")
    assert task["status"] == "succeeded", task
    assert task["progress"] == {"progress": None, "message": "half\ufffdway"}


def test_a_line_that_is_not_json_and_holds_nul_fails_the_task_with_its_text_storable(
    api: httpx.Client,
) -> None:
    task = run(api, "garbage_nul")
    assert (task["status"], task["error"]["code"]) == ("failed", "protocol_error"), task
    assert task["error"]["data"]["line"] == "\ufffdnot json"


def test_the_server_still_runs_tasks_after_all_this(api: httpx.Client) -> None:
    response = api.post(
        "/v1/tasks?wait=true",
        json={"image": MISBEHAVING_IMAGE, "function": "echo", "params": {"still": "here"}},
    )
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["result"]) == (
        "succeeded",
        {"still": "here"},
    )
