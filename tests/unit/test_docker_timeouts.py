"""Which failed requests to the engine are timeouts (it answered slowly) and which mean
it does not answer: docker-py over a Unix socket raises both as ConnectionError."""

from __future__ import annotations

import pytest
import requests.exceptions
import urllib3.exceptions

from tarea.execution.docker import _timed_out


@pytest.mark.parametrize(
    ("error", "timed_out"),
    [
        pytest.param(
            # what docker-py's wait(timeout=1) raised here on a running container
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ReadTimeoutError(None, "/wait", "Read timed out.")  # type: ignore[arg-type]
            ),
            True,
            id="read-timeout-as-connection-error",
        ),
        pytest.param(requests.exceptions.ReadTimeout(), True, id="read-timeout"),
        pytest.param(
            # what it raised with dockerd gone (no socket)
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError(
                    "Connection aborted.", FileNotFoundError(2, "No such file or directory")
                )
            ),
            False,
            id="no-socket",
        ),
        pytest.param(
            requests.exceptions.ConnectionError(ConnectionResetError(104, "reset")),
            False,
            id="reset",
        ),
        pytest.param(None, False, id="no-cause"),
    ],
)
def test_only_a_read_timeout_is_a_timeout(error: BaseException | None, timed_out: bool) -> None:
    """A wait that timed out is a container still running (None); an engine that does
    not answer is EngineUnavailable, never taken for a running container."""
    assert _timed_out(error) is timed_out
