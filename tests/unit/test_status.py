"""Which failures run a task again: its retry policy, and the codes safe to repeat."""

from __future__ import annotations

import pytest

from tarea.domain.status import RETRYABLE, runs_again

POLICY = {"max_attempts": 3, "on": ["crashed", "worker_lost"]}


@pytest.mark.parametrize(
    ("attempt", "retry", "code", "again"),
    [
        pytest.param(1, POLICY, "crashed", True, id="first-run-crashed"),
        pytest.param(2, POLICY, "worker_lost", True, id="second-run-lost"),
        pytest.param(3, POLICY, "crashed", False, id="last-run"),
        pytest.param(4, POLICY, "crashed", False, id="past-the-last"),
        pytest.param(1, POLICY, "engine_unavailable", False, id="code-not-asked"),
        pytest.param(1, None, "crashed", False, id="no-policy"),
        pytest.param(1, {"max_attempts": 3, "on": ["timed_out"]}, "timed_out", False, id="unsafe"),
        pytest.param(1, {"max_attempts": 1, "on": ["crashed"]}, "crashed", False, id="one-run"),
        pytest.param(1, {"on": ["crashed"]}, "crashed", False, id="malformed"),
    ],
)
def test_a_task_runs_again_only_as_its_policy_says(
    attempt: int, retry: dict[str, object] | None, code: str, again: bool
) -> None:
    """A failure runs the task again only if its code is asked for, safe, and runs remain."""
    assert runs_again(attempt, retry, code) is again


def test_only_failures_from_outside_the_task_are_retryable() -> None:
    """The codes safe to retry are those where the run was cut short from outside."""
    assert {"worker_lost", "crashed", "engine_unavailable", "image_pull_failed"} == RETRYABLE
