"""Writing task images: ``tarea new``, ``tarea build`` and ``tarea check-image``.

These talk to the local Docker engine, not to a tarea server: they are for
the person writing an image. The work is done elsewhere
(:mod:`tarea.authoring` writes and builds, :mod:`tarea.execution.conformance`
checks); this module only parses arguments and prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tarea.cli import common

app = typer.Typer()

_MARK = {"pass": "[green]PASS[/green]", "fail": "[red]FAIL[/red]", "skip": "[yellow]SKIP[/yellow]"}


@app.command("new")
def new(
    name: Annotated[
        str, typer.Argument(help="The image's name: a directory of that name is made.")
    ],
    lang: Annotated[
        str, typer.Option("--lang", help="python (tarea.runtime), shell (POSIX sh) or node.")
    ] = "python",
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to make it (default: here).")
    ] = Path(),
) -> None:
    """Write a task image directory: Dockerfile, code, README and test."""
    from tarea.authoring import scaffold

    try:
        made = scaffold.new(name, lang, directory)
    except scaffold.ScaffoldError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(f"wrote {made}/ ({lang}): next, tarea build {made}")


@app.command("build")
def build(
    path: Annotated[Path, typer.Argument(help="The image directory (with its Dockerfile).")],
    tag: Annotated[
        str | None, typer.Option("--tag", "-t", help="Default: <directory name>:latest.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="The base image (BASE_IMAGE); default: python:3.12-slim or tarea-base:bookworm.",
        ),
    ] = None,
) -> None:
    """Build an image directory, offline (no network in the build), FROM tarea's base."""
    with _server_needed():
        from tarea.authoring import building

    try:
        built = building.build(
            path, tag=tag, base=base, log=lambda line: typer.echo(line, err=True)
        )
    except building.BuildError as exc:
        typer.echo(f"tarea build: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(built)


@app.command("check-image")
def check_image(
    image: Annotated[str, typer.Argument(help="A local image, e.g. my-task:latest.")],
    call: Annotated[
        str | None, typer.Option("--call", help="Also call this function (see its progress).")
    ] = None,
    params: Annotated[str, typer.Option("--params", help="The call's params, JSON.")] = "{}",
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds the image may take to be ready.")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Check that IMAGE speaks tarea's protocol (or the seed's HTTP contract); 1 on a failure."""
    with _server_needed():
        from tarea.execution.conformance import SampleCall

    sample = None
    if call is not None:
        try:
            decoded: Any = json.loads(params)
        except ValueError as exc:
            raise typer.BadParameter(f"--params is not JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise typer.BadParameter("--params must be a JSON object")
        sample = SampleCall(call, decoded)
    results = asyncio.run(_check(image, ready_timeout, sample))
    failed = any(r["status"] == "fail" for r in results)
    if as_json:
        typer.echo(json.dumps({"image": image, "passed": not failed, "checks": results}))
    else:
        from rich.console import Console

        console = Console()
        for result in results:
            console.print(
                f"{_MARK[result['status']]} {result['name']:<17} {result['reason']}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
        console.print("[red]failed[/red]" if failed else "[green]conforms[/green]")
    if failed:
        raise typer.Exit(1)


async def _check(image: str, ready_s: float, call: Any) -> list[dict[str, str]]:
    with _server_needed():
        from tarea.execution.conformance import check_image as run_checks
        from tarea.settings import Settings
        from tarea.wiring import build_executor

    executor = build_executor(Settings(direct_channels=False, start_timeout_s=ready_s))
    try:
        results = await run_checks(executor, image, ready_s=ready_s, call=call)
    finally:
        await executor.aclose()
        executor.docker.close()
    return [{"name": r.name, "status": r.status.value, "reason": r.reason} for r in results]


@contextlib.contextmanager
def _server_needed() -> Iterator[None]:
    """Imports of what talks to the Docker engine: a client-only install says so, exit 3."""
    try:
        yield
    except ModuleNotFoundError as exc:
        message = common.server_missing(exc)
        if message is None:
            raise
        common.fail(message, common.EXIT_SERVER)


def register(root: typer.Typer) -> None:
    """Add these commands to the ``tarea`` command line."""
    root.registered_commands.extend(app.registered_commands)
