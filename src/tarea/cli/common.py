"""What every client command shares: the global options, the client, exit codes, parsing.

Exit codes (the same for every command):

- 0: done (``tarea run``: the task succeeded);
- 1: the task failed (its code and message on stderr);
- 2: usage error: bad arguments, or a request the server refused as malformed
  (422, 404 no such task, 409 already ended...);
- 3: the server is unreachable, refused the key (401, 403), or failed (5xx, 429).

No command ends with a traceback: every error of the client is turned into a
line on stderr and one of these codes here.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from tarea.client import Client, TareaError

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_SERVER = 3

#: The server's dependencies: a client-only install lacks them.
SERVER_MODULES = frozenset(
    {"fastapi", "starlette", "uvicorn", "docker", "sqlalchemy", "alembic", "prometheus_client",
     "pydantic_settings", "celery", "kombu"}
)  # fmt: skip

stderr = Console(stderr=True)


@dataclass(frozen=True)
class Connection:
    """The global options: where the server is and which key to send."""

    url: str | None = None
    api_key: str | None = None


def root(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="TAREA_URL",
            help="The tarea server (default: http://127.0.0.1:8000).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="TAREA_API_KEY",
            help="The API key (sent as a bearer token).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run remote tasks in containers: name an image, a function and its parameters.

    Exit codes: 0 done, 1 the task failed, 2 usage error, 3 the server is
    unreachable, refused the key, or failed.
    """
    ctx.obj = Connection(url, api_key)


def client_of(ctx: typer.Context) -> Client:
    """A client for the server the global options name."""
    from tarea.client import Client

    conn = ctx.find_object(Connection) or Connection()
    return Client(base_url=conn.url, api_key=conn.api_key)


def exit_code_of(exc: TareaError) -> int:
    """The exit code for an error of the client (see the module's docstring)."""
    from tarea.client import APIError, AuthenticationError, ForbiddenError, TaskFailed

    if isinstance(exc, TaskFailed):
        return EXIT_TASK_FAILED
    if isinstance(exc, AuthenticationError | ForbiddenError):
        return EXIT_SERVER
    if isinstance(exc, APIError) and 400 <= exc.status < 500 and exc.status not in (408, 429):
        return EXIT_USAGE
    return EXIT_SERVER


def fail(message: str, code: int) -> NoReturn:
    """Say ``message`` on stderr and exit with ``code``."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Turn the client's errors (and Ctrl-C) into a message on stderr and an exit code."""
    from tarea.client import APIError, AuthenticationError, TareaError, TaskFailed

    try:
        yield
    except TaskFailed as exc:
        fail(f"task {exc.task.id} {exc.task.status.value}: {exc.code}: {exc.message}", 1)
    except AuthenticationError as exc:
        fail(f"the server refused the API key: {exc.message} (--api-key, TAREA_API_KEY)", 3)
    except APIError as exc:
        fail(f"{exc.code}: {exc.message}", exit_code_of(exc))
    except TareaError as exc:
        fail(exc.message, exit_code_of(exc))
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(130) from None


def parse_params(pairs: list[str] | None, params: str | None) -> dict[str, Any]:
    """The task's params: ``--params`` (JSON, or ``@file`` holding JSON), then KEY=VALUE pairs.

    A value is read as JSON where it parses (``a=10`` gives 10, ``ok=true``
    gives True) and kept as a string where it does not (``s=hola``).
    """
    result: dict[str, Any] = {}
    if params is not None:
        text = params
        if params.startswith("@"):
            path = Path(params[1:])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise typer.BadParameter(
                    f"cannot read {path}: {exc.strerror}", param_hint="--params"
                ) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--params") from None
        if not isinstance(value, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--params")
        result.update(value)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="PARAMS")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


def stdout() -> Console:
    """A console for stdout; as wide as a table needs when stdout is not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def print_result(value: Any) -> None:
    """A task's result on stdout: a string as it is, anything else as JSON."""
    if isinstance(value, str):
        sys.stdout.write(value if value.endswith("\n") else value + "\n")
    else:
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def server_missing(exc: ModuleNotFoundError) -> str | None:
    """What to tell a user whose install lacks the server's dependencies (None: ``exc``
    is about another module, not the server's)."""
    name = (exc.name or "").split(".")[0]
    if name not in SERVER_MODULES:
        return None
    return (
        f"the server is not installed here (no module {name!r}): this is the client-only "
        "install. Install the server with: pip install 'tarea[server]' "
        "(from a checkout: pip install '.[server]')"
    )
