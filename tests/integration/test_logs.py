"""A call's logs hold everything it wrote on stderr before answering, on the real engine.

stderr reaches the server by its own pipe, through the engine; the answer by
another (stdout), or by the direct channel's socket, which skips the engine.
The answer can come first. Tasks that mark stderr before answering (tarea's
runtime does, when asked) are waited for until the mark arrives; each call's
logs are then exactly its own lines. Measured before log marks, under load:
the last line was missing from 4-18 % of tasks (docs/protocol.md, log marks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tarea.domain.task import Limits, TaskSpec
from tarea.execution.executor import Executor
from tests.integration.conftest import IMAGES, _build, with_executor

pytestmark = pytest.mark.docker

CHATTY_IMAGE = "tarea-test-chatty:latest"
LIMITS = Limits(timeout_s=20, memory_mb=128, cpus=1.0, pids=64, output_kb=64)
#: Calls per case: each one a race the answer could win.
CALLS = 60


@pytest.fixture(scope="session")
def chatty_image(tasks_image: str) -> str:
    """Functions on tarea.runtime that write a line on stderr and answer at once."""
    return _build(tasks_image, CHATTY_IMAGE, IMAGES / "chatty")


@pytest.fixture(params=[True, False], ids=["direct", "stdio"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Whether the server offers direct channels (the answer skips the engine)."""
    return bool(request.param)


def logs_of_calls(
    image: str, function: str, params: Callable[[int], dict[str, Any]], *, direct: bool = True
) -> list[str]:
    """Run ``function`` CALLS times (the n-th with ``params(n)``) on one warm container;
    each call's logs."""

    async def scenario(executor: Executor) -> list[str]:
        logs = []
        for n in range(CALLS):
            outcome = await executor.run(TaskSpec(image, function, params(n), LIMITS))
            logs.append(outcome.logs)
        return logs

    return with_executor(scenario, stem_cells=0, direct_channels=direct)


@pytest.mark.parametrize("function", ["said", "said_by_a_child"])
def test_each_call_keeps_the_line_it_wrote_just_before_answering(
    chatty_image: str, function: str, direct: bool
) -> None:
    """A function on tarea.runtime that writes "said n" on stderr (print, or a child
    process) and answers at once: every call's logs are exactly its own line, the
    runtime's marks taken out."""
    logs = logs_of_calls(chatty_image, function, lambda n: {"n": n}, direct=direct)

    assert logs == [f"said {n}\n" for n in range(CALLS)]


def test_a_failed_call_keeps_its_line_and_its_traceback(chatty_image: str, direct: bool) -> None:
    """A function that writes a line and raises: its logs hold the line, then the
    traceback the runtime logs before answering, ending with the exception."""
    logs = logs_of_calls(chatty_image, "failed", lambda n: {"n": n}, direct=direct)

    for n, text in enumerate(logs):
        assert text.startswith(f"said {n}\n"), text
        assert text.rstrip().endswith(f"ValueError: failed {n}"), text
        assert "tarea-log-mark" not in text


def test_a_hand_written_image_that_marks_keeps_its_last_line(misbehaving_either: str) -> None:
    """The hand-written misbehaving image marks stderr as docs/protocol.md says:
    stderr_flood with nothing to flood writes only its last line, and every call's
    logs are that line."""
    logs = logs_of_calls(misbehaving_either, "stderr_flood", lambda n: {"mb": 0})

    assert logs == ["stderr flood: the end\n"] * CALLS
