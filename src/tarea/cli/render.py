"""How the command line shows tasks and pools: Rich tables, and ``tarea run``'s live progress."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tarea.client import Pools, Task

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "magenta",
}


def _short(value: Any, width: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(task: Task) -> str:
    if task.started_at is None:
        return ""
    end = task.finished_at or datetime.now(UTC)
    seconds = (end - task.started_at).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def status_text(status: str) -> Text:
    """A status, coloured."""
    return Text(status, style=STATUS_STYLE.get(status, ""))


def outcome(task: Task) -> str:
    """A task's result or error, or its progress while it runs, in a few words."""
    if task.error is not None:
        return f"{task.error.code}: {_short(task.error.message, 60)}"
    if task.status.value == "succeeded":
        return _short(task.result)
    if task.progress is not None and task.progress.progress is not None:
        message = f" {task.progress.message}" if task.progress.message else ""
        return f"{task.progress.progress:.0%}{message}"
    return ""


def tasks_table(tasks: Iterable[Task], title: str | None = None) -> Table:
    """Tasks as a table, one row each."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("IMAGE")
    table.add_column("FUNCTION")
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("TOOK", justify="right", no_wrap=True)
    table.add_column("RESULT / ERROR")
    for task in tasks:
        table.add_row(
            task.id,
            status_text(task.status.value),
            task.image,
            task.function,
            _when(task.created_at),
            _duration(task),
            outcome(task),
        )
    return table


def task_table(task: Task) -> Table:
    """One task, field by field."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("id", task.id),
        ("status", status_text(task.status.value)),
        ("image", task.image),
        ("function", task.function),
        ("params", json.dumps(task.params, ensure_ascii=False)),
    ]
    if task.status.value == "succeeded":
        rows.append(("result", json.dumps(task.result, ensure_ascii=False)))
    if task.error is not None:
        rows.append(("error", f"{task.error.code}: {task.error.message}"))
    if task.progress is not None and task.progress.progress is not None:
        rows.append(("progress", outcome(task)))
    rows += [
        ("isolation", task.isolation),
        ("limits", json.dumps(task.limits)),
        ("created", _when(task.created_at)),
        ("started", _when(task.started_at)),
        ("finished", _when(task.finished_at)),
        ("took", _duration(task)),
    ]
    timings = task.timings
    parts = [
        f"{name} {value:.1f} ms"
        for name, value in (
            ("queued", timings.queued_ms),
            ("start", timings.start_ms),
            ("run", timings.run_ms),
        )
        if value is not None
    ]
    if parts:
        rows.append(("timings", ", ".join(parts)))
    if task.container is not None and task.container.id:
        code = task.container.exit_code
        rows.append(("container", task.container.id + ("" if code is None else f" (exit {code})")))
    if task.worker:
        rows.append(("worker", task.worker))
    if task.attempt > 1:
        rows.append(("attempt", str(task.attempt)))
    if task.metadata:
        rows.append(("metadata", json.dumps(task.metadata, ensure_ascii=False)))
    for name, value in rows:
        table.add_row(name, value)
    return table


def pools_view(pools: Pools) -> Group:
    """The warm pool: a table per image and tenant, then the counters."""
    table = Table(title="Warm pool", title_justify="left")
    table.add_column("IMAGE")
    table.add_column("TENANT")
    table.add_column("IDLE", justify="right")
    table.add_column("BUSY", justify="right")
    table.add_column("STEM CELLS", justify="right")
    for entry in pools.pools:
        table.add_row(
            entry.image,
            entry.tenant or "(any)",
            str(entry.idle),
            str(entry.busy),
            str(entry.stem_cells),
        )
    counters = ", ".join(f"{k} {v}" for k, v in pools.counters.items())
    summary = Text(
        f"{pools.total} containers of at most {pools.max_total} "
        f"({pools.max_per_image} per image); {counters}"
    )
    return Group(table, summary)


def run_progress(console: Console) -> Progress:
    """The live line of ``tarea run``: spinner, status, bar, percentage, message, elapsed."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[percent]}"),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
