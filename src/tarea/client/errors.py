"""The client's exceptions: one root, :class:`TareaError`.

::

    TareaError
    ├── TareaConnectionError      the server could not be reached (or did not answer)
    │   └── TareaTimeoutError     it answered too slowly (the client's timeout)
    ├── AuthenticationError       the API key was refused
    ├── APIError                  the server answered a problem document (RFC 9457)
    │   └── one class per problem code of tarea.codes, e.g. TaskNotFoundError,
    │       QueueFullError, UnauthorizedError (also an AuthenticationError)
    ├── TaskFailed                the task ended without a result: .code .message .task
    └── WaitTimeout               the task did not end within the time the caller gave

The classes per code live in :mod:`tarea.client.problems`, rendered from the
registry the server uses (``python -m tarea.client.errors > src/tarea/client/problems.py``;
a test keeps them equal). httpx's errors never leave the client: they are
turned into these where they enter.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any, ClassVar

from tarea.codes import CODES

if TYPE_CHECKING:
    from tarea.client.models import Task


class TareaError(Exception):
    """The root of every error the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TareaConnectionError(TareaError):
    """The server could not be reached, or the connection broke before an answer."""


class TareaTimeoutError(TareaConnectionError):
    """The server did not answer within the client's timeout."""


class AuthenticationError(TareaError):
    """The server refused the API key (or none was given where one is required)."""


class APIError(TareaError):
    """The server refused the request with a problem document (RFC 9457).

    Attributes:
        status: the HTTP status.
        code: the stable code (``tarea.codes``), e.g. ``task_not_found``.
        message: the problem's ``detail``, naming what is wrong.
        problem: the whole problem document.
        retry_after: the ``Retry-After`` header in seconds, where there was one.
    """

    #: The code of the class; a class per code sets it (APIError itself: any code).
    code_name: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.problem: dict[str, Any] = problem or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code} ({self.status}): {self.message}"


class TaskFailed(TareaError):
    """The task ended without a result (failed, timed out or cancelled).

    Attributes:
        code: its failure code (``tarea.codes``), e.g. ``task_error``, ``timed_out``.
        message: what went wrong, in words.
        task: the task as it ended.
    """

    def __init__(self, code: str, message: str, task: Task) -> None:
        super().__init__(message)
        self.code = code
        self.task = task

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class WaitTimeout(TareaError):
    """The task had not ended when the time the caller gave to wait ran out."""

    def __init__(self, message: str, task_id: str) -> None:
        super().__init__(message)
        self.task_id = task_id


def class_name(code: str) -> str:
    """The exception class of a problem code: ``task_not_found`` -> ``TaskNotFoundError``."""
    name = "".join(part.capitalize() for part in code.split("_"))
    return name if name.endswith("Error") else name + "Error"


def _docstring(text: str) -> list[str]:
    wrapped = textwrap.wrap(text, 92)
    if len(wrapped) == 1:
        return [f'    """{text}"""']
    return [f'    """{wrapped[0]}', *(f"    {line}" for line in wrapped[1:]), '    """']


def render_problems_module() -> str:
    """``tarea/client/problems.py``: one class per problem code of the registry."""
    lines = [
        '"""One exception class per problem code, rendered from :mod:`tarea.codes`.',
        "",
        "Generated: ``python -m tarea.client.errors > src/tarea/client/problems.py``.",
        "Do not edit by hand; tests/unit/test_client_errors.py keeps it equal to the registry.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from tarea.client.errors import APIError, AuthenticationError",
        "",
    ]
    names = []
    for code in CODES:
        if code.status is None:
            continue
        name = class_name(code.name)
        names.append((code.name, name))
        bases = "APIError, AuthenticationError" if code.name == "unauthorized" else "APIError"
        lines += [
            "",
            f"class {name}({bases}):",
            *_docstring(f"{code.status} ``{code.name}``: {code.meaning}."),
            "",
            f'    code_name = "{code.name}"',
            "",
        ]
    lines += [
        "",
        "#: The class of each problem code.",
        "PROBLEM_CLASSES: dict[str, type[APIError]] = {",
    ]
    lines += [f'    "{code}": {name},' for code, name in names]
    lines += ["}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_problems_module(), end="")
