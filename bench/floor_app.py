"""The floor: FastAPI and uvicorn answering a task submission while doing no work.

``POST /v1/tasks`` takes the same JSON as tarea's (validated by a pydantic
model, as tarea's is) and answers 200 with a finished task of the same shape,
without running anything. It is served the way ``python -m tarea`` serves
tarea: one uvicorn process, the default loop and HTTP implementations as
installed, ``log_level="info"``, uvicorn's access log off (as tarea's by
default: ``TAREA_ACCESS_LOG``). Whatever tarea adds on
top of this is the cost of tarea itself.

Run: ``python -m bench.floor_app --port 8100`` (binds 127.0.0.1).
"""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class TaskIn(BaseModel):
    """The body of a task submission, as tarea's ``TaskCreate`` has it."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(max_length=512)
    function: str = Field(min_length=1, max_length=200)
    params: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] | None = None
    isolation: Literal["warm", "fresh"] = "warm"
    callback_url: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def finished_task(
    task_id: str, body: TaskIn, result: Any, times: tuple[str, str, str], worker: str
) -> dict[str, Any]:
    """A succeeded task of tarea's shape; ``times`` are created, started and finished."""
    created, started, finished = times
    return {
        "id": task_id,
        "status": "succeeded",
        "image": body.image,
        "function": body.function,
        "params": body.params,
        "metadata": body.metadata,
        "result": result,
        "error": None,
        "limits": body.limits or {},
        "isolation": body.isolation,
        "created_at": created,
        "started_at": started,
        "finished_at": finished,
        "timings": {"queued_ms": 0.0, "start_ms": 0.0, "run_ms": 0.0},
        "container": None,
        "worker": worker,
        "progress": None,
        "callback": None,
    }


def create_app() -> FastAPI:
    """The floor application: a task submission answered without doing the task."""
    app = FastAPI(title="tarea bench floor")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Always 200 while the process serves requests."""
        return {"status": "ok"}

    @app.post("/v1/tasks")
    async def submit(body: TaskIn) -> JSONResponse:
        """A finished task of tarea's shape, with nothing run."""
        now = _now()
        values = [v for v in body.params.values() if isinstance(v, int | float)]
        return JSONResponse(
            finished_task(uuid.uuid4().hex, body, sum(values), (now, now, now), "floor")
        )

    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the floor on 127.0.0.1 with tarea's uvicorn settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=args.port, log_level="info", access_log=False
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
