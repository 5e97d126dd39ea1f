"""The client commands: run, submit, tasks, show, logs, cancel, pools, health.

Each is a thin layer over :mod:`tarea.client` (imported when a command runs:
``tarea --help`` stays quick). Exit codes and error messages:
:mod:`tarea.cli.common`.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tarea.cli import common
from tarea.cli.common import client_of, exit_codes

if TYPE_CHECKING:
    from tarea.client import Client, Task, TaskOptions

ParamsArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[KEY=VALUE]...",
        help='Parameters; values are read as JSON where they parse (a=10 is 10, s=hola is "hola").',
        show_default=False,
    ),
]
ParamsOpt = Annotated[
    str | None,
    typer.Option(
        "--params", help="Parameters as a JSON object, or @FILE holding one.", show_default=False
    ),
]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Run in a container nobody used before.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option("--timeout", min=0.001, metavar="S", help="The task's wall-clock limit, seconds."),
]
MemoryOpt = Annotated[
    int | None, typer.Option("--memory", min=16, metavar="MB", help="The task's memory, MiB.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
TaskIdArg = Annotated[str, typer.Argument(metavar="ID", help="The task's id.")]


def _options(fresh: bool, timeout: float | None, memory: int | None) -> TaskOptions:
    options: TaskOptions = {}
    if fresh:
        options["isolation"] = "fresh"
    if timeout is not None:
        options["timeout_s"] = timeout
    if memory is not None:
        options["memory_mb"] = memory
    return options


def run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="The task image, e.g. tasks_image:latest.")],
    function: Annotated[str, typer.Argument(help="The function to call.")],
    pairs: ParamsArg = None,
    params: ParamsOpt = None,
    fresh: FreshOpt = False,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    as_json: JsonOpt = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Print the task's id and return at once.")
    ] = False,
) -> None:
    """Run a task and print its result (exit 1 if it fails).

    While it runs, a live line on stderr shows its status, progress and elapsed
    time. The result is printed as it is when a string, as JSON otherwise.
    """
    values = common.parse_params(pairs, params)
    options = _options(fresh, timeout, memory)
    with exit_codes(), client_of(ctx) as client:
        live = not (as_json or no_wait) and common.stderr.is_terminal
        task = client.tasks.create(image, function, values, wait=not (live or no_wait), **options)
        if no_wait:
            _print_task_or_id(task, as_json)
            return
        try:
            task = _follow(client, task) if live else _wait(client, task)
        except KeyboardInterrupt:
            common.stderr.print(
                f"task {task.id} goes on running; `tarea show {task.id}`, `tarea cancel {task.id}`"
            )
            raise
        _print_outcome(task, as_json)


def _print_task_or_id(task: Task, as_json: bool) -> None:
    if as_json:
        common.print_json(task.model_dump(mode="json"))
    else:
        print(task.id)


def _wait(client: Client, task: Task) -> Task:
    return task if task.done else client.tasks.wait(task.id)


def _follow(client: Client, task: Task) -> Task:
    """Wait for the task while a live line on stderr shows its progress; the ended task."""
    from tarea.cli.render import run_progress

    label = f"{task.function} {task.status.value}"
    with run_progress(common.stderr) as progress:
        bar = progress.add_task(label, total=None, percent="", message="")
        for event in client.tasks.events(task.id):
            if event.status is not None:
                label = f"{task.function} {event.status.value}"
                progress.update(bar, description=label)
            elif event.event == "progress":
                value = event.data.get("progress")
                fields: dict[str, Any] = {"message": str(event.data.get("message") or "")}
                if isinstance(value, int | float):
                    fields["percent"] = f"{value:.0%}"
                    progress.update(bar, total=1.0, completed=float(value), **fields)
                else:
                    progress.update(bar, **fields)
            if event.terminal:
                ended = event.task or client.tasks.get(task.id)
                done = 1.0 if ended.status.value == "succeeded" else None
                progress.update(bar, total=1.0 if done else None, completed=done or 0, refresh=True)
                return ended
    return client.tasks.wait(task.id)  # the stream ended without the end: ask


def _print_outcome(task: Task, as_json: bool) -> None:
    from tarea.client._core import result_of

    if as_json:
        common.print_json(task.model_dump(mode="json"))
    value = result_of(task)  # TaskFailed: exit 1, its code and message on stderr
    if not as_json:
        common.print_result(value)


def submit(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(help="The task image, e.g. tasks_image:latest.")],
    function: Annotated[str, typer.Argument(help="The function to call.")],
    pairs: ParamsArg = None,
    params: ParamsOpt = None,
    fresh: FreshOpt = False,
    timeout: TimeoutOpt = None,
    memory: MemoryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a task and print its id (without waiting for it)."""
    values = common.parse_params(pairs, params)
    options = _options(fresh, timeout, memory)
    with exit_codes(), client_of(ctx) as client:
        _print_task_or_id(client.tasks.create(image, function, values, **options), as_json)


def tasks(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            help="Only tasks in this status (queued, running, succeeded, failed, "
            "timed_out, cancelled)."
        ),
    ] = None,
    image: Annotated[str | None, typer.Option(help="Only tasks of this image.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 20,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep the table live (Ctrl-C to stop).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List tasks, newest first."""
    from tarea.cli.render import tasks_table

    with exit_codes(), client_of(ctx) as client:
        if watch:
            _watch(client, status, image, limit)
            return
        found = list(client.tasks.list(status=status, image=image, limit=limit))
        if as_json:
            common.print_json([t.model_dump(mode="json") for t in found])
        else:
            common.stdout().print(tasks_table(found))


#: How often --watch reads the table again when no change was heard (a safety net).
WATCH_QUIET_S = 60.0
#: Changes that come together are shown together: at most this often.
WATCH_COALESCE_S = 0.2
#: How often --watch reads the table when the event stream cannot be followed.
WATCH_POLL_S = 1.0


def _watch(client: Client, status: str | None, image: str | None, limit: int) -> None:
    """The task table, kept live until Ctrl-C.

    A thread follows the tenant's status changes (``GET /v1/events``); the
    table is read again after each burst of them, and every
    :data:`WATCH_QUIET_S` besides (changes made while the stream was being
    opened are caught by then). When the stream cannot be followed, the
    table is read every second instead, and its title says so.
    """
    import threading

    from rich.console import Console
    from rich.live import Live

    from tarea.cli.render import tasks_table

    changed = threading.Event()
    failed: list[str] = []

    def follow() -> None:
        try:
            for _ in client.tasks.changes():
                changed.set()
        except Exception as exc:  # shown in the title; the table falls back to polling
            failed.append(str(exc) or type(exc).__name__)
            changed.set()

    def table() -> Any:
        found = list(client.tasks.list(status=status, image=image, limit=limit))
        how = f"every {WATCH_POLL_S:g} s: {failed[0]}" if failed else "live"
        title = f"tarea tasks at {client.base_url} ({how}; Ctrl-C to stop)"
        return tasks_table(found, title=title)

    threading.Thread(target=follow, name="tarea-watch", daemon=True).start()
    try:
        with Live(table(), console=Console(), auto_refresh=False) as live:
            while True:
                if changed.wait(WATCH_POLL_S if failed else WATCH_QUIET_S):
                    time.sleep(WATCH_COALESCE_S)
                    changed.clear()
                live.update(table(), refresh=True)
    except KeyboardInterrupt:
        return


def show(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """Show a task: status, result or error, timings, container."""
    with exit_codes(), client_of(ctx) as client:
        task = client.tasks.get(task_id)
        if as_json:
            common.print_json(task.model_dump(mode="json"))
            return
        from tarea.cli.render import task_table

        common.stdout().print(task_table(task))


def logs(
    ctx: typer.Context,
    task_id: TaskIdArg,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Print lines as the task writes them, until it ends."),
    ] = False,
) -> None:
    """Print what a task wrote on stderr.

    Without --follow, its stored logs (complete once it ended). With --follow,
    a running task's lines as they come, from when the command started.
    """
    with exit_codes(), client_of(ctx) as client:
        if not follow:
            _write(client.tasks.logs(task_id))
            return
        for index, event in enumerate(client.tasks.events(task_id)):
            if index == 0 and event.terminal:
                # It had ended already: its stored logs are the whole of them.
                _write(client.tasks.logs(task_id))
                return
            if event.event == "log":
                _write(str(event.data.get("text", "")))


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()


def cancel(ctx: typer.Context, task_id: TaskIdArg, as_json: JsonOpt = False) -> None:
    """Cancel a queued or running task (exit 2 if it already ended)."""
    with exit_codes(), client_of(ctx) as client:
        task = client.tasks.cancel(task_id)
        if as_json:
            common.print_json(task.model_dump(mode="json"))
        else:
            print(f"{task.id} {task.status.value}")


def pools(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the warm pool: containers per image, caps and counters."""
    with exit_codes(), client_of(ctx) as client:
        found = client.pools.get()
        if as_json:
            common.print_json(found.model_dump(mode="json"))
            return
        from tarea.cli.render import pools_view

        common.stdout().print(pools_view(found))


def health(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Check the server: live (it answers) and ready (its Docker engine answers); exit 3 if not."""
    with exit_codes(), client_of(ctx) as client:
        state = client.health()
        if as_json:
            common.print_json({"url": client.base_url, **state.model_dump(mode="json")})
        else:
            ready = "yes" if state.ready else f"no ({state.code}: {state.detail})"
            print(f"{client.base_url}: live yes, ready {ready}")
        if not state.ready:
            raise typer.Exit(common.EXIT_SERVER)


def register(app: typer.Typer) -> None:
    """Add the client commands (and the global --url/--api-key) to ``app``."""
    app.callback()(common.root)
    for command in (run, submit, tasks, show, logs, cancel, pools, health):
        app.command()(command)
