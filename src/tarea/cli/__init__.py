"""The ``tarea`` command line: a thin layer over the client, plus ``tarea serve``.

Each group of commands lives in a module of its own and registers itself on
:data:`app` here. This module imports Typer only: commands import what they
need (the server, the client) when they run, so ``tarea --help`` stays quick
and a client-only install never imports the server.
"""

from __future__ import annotations

import typer

from tarea.cli import authoring, common, tasks

app = typer.Typer(
    name="tarea",
    help="Run remote tasks in containers: name an image, a function and its parameters.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.command()
def serve() -> None:
    """Serve the API (settings from TAREA_* environment variables; see docs/operations.md)."""
    try:
        from tarea.serve import main as serve_main
    except ModuleNotFoundError as exc:  # a client-only install: say so, exit 3
        message = common.server_missing(exc)
        if message is None:
            raise
        common.fail(message, common.EXIT_SERVER)
    serve_main()


@app.command()
def worker() -> None:
    """Run tasks for API servers with a broker (TAREA_BROKER_URL): one Docker engine's worker."""
    from tarea.distributed.worker import main as worker_main

    worker_main()


# run, submit, tasks, show, logs, cancel, pools, health; the global --url and --api-key.
tasks.register(app)
# new, build, check-image: writing task images, on the local Docker engine.
authoring.register(app)


def main() -> None:
    """The ``tarea`` console script."""
    app()
