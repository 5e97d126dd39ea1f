"""The ``tarea`` command line: a thin layer over the client, plus ``tarea serve``.

Each group of commands lives in a module of its own and registers itself on
:data:`app` here. This module imports Typer only: commands import what they
need (the server, the client) when they run, so ``tarea --help`` stays quick
and a client-only install never imports the server.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tarea",
    help="Run remote tasks in containers: name an image, a function and its parameters.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """Run remote tasks in containers: name an image, a function and its parameters."""
    # A callback keeps ``tarea`` a group of commands even while it has only one.


@app.command()
def serve() -> None:
    """Serve the API (settings from TAREA_* environment variables; see docs/operations.md)."""
    from tarea.serve import main as serve_main

    serve_main()


def main() -> None:
    """The ``tarea`` console script."""
    app()


from tarea.cli import authoring  # noqa: E402  (new, build, check-image)

authoring.register(app)
