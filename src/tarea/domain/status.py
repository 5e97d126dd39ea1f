"""Task statuses and the transitions between them (DESIGN §3)."""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    """Where a task is in its life; the last four are terminal."""

    #: Accepted and recorded; waiting for a container.
    QUEUED = "queued"
    #: Handed to a container; the call is in progress.
    RUNNING = "running"
    #: The function returned a result.
    SUCCEEDED = "succeeded"
    #: The task ended without a result; ``error.code`` says why.
    FAILED = "failed"
    #: The task passed its wall-clock limit and its container was killed.
    TIMED_OUT = "timed_out"
    #: A client cancelled it before it ended.
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for statuses a task never leaves."""
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED})

_ALLOWED: dict[Status, frozenset[Status]] = {
    # A task can fail or time out before it runs: its image is missing, or its
    # container never became ready.
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED, Status.FAILED, Status.TIMED_OUT}),
    Status.RUNNING: frozenset(
        {Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED}
    ),
}


def can_transition(current: Status, new: Status) -> bool:
    """Whether a task in ``current`` may move to ``new``."""
    return new in _ALLOWED.get(current, frozenset())


def status_for_error(code: str) -> Status:
    """The terminal status of a task that failed with ``error.code`` ``code``."""
    return Status.TIMED_OUT if code == "timed_out" else Status.FAILED


#: Failure codes a task may ask to run again after (``retry.on``): its run was cut
#: short by something outside what it computed, so running it again is safe
#: for a task that is itself safe to run twice:
#: its server vanished (``worker_lost``), its process died (``crashed``), the
#: Docker engine did not answer (``engine_unavailable``), or its image could not
#: be pulled (``image_pull_failed``: nothing of it ran). Not ``timed_out`` or
#: ``oom_killed``: the same run would most likely end the same way.
RETRYABLE = frozenset({"worker_lost", "crashed", "engine_unavailable", "image_pull_failed"})


def runs_again(attempt: int, retry: dict[str, object] | None, code: str) -> bool:
    """Whether a task on its ``attempt``-th run, failing with ``code``, runs once more."""
    if retry is None or code not in RETRYABLE:
        return False
    allowed = retry.get("on")
    limit = retry.get("max_attempts")
    return (
        isinstance(allowed, list) and code in allowed and isinstance(limit, int) and attempt < limit
    )
