"""The seed's endpoint, ``POST /getRemoteTask/``, with its contract unchanged.

Its users already have scripts for it (DESIGN §1): Spanish field names,
``200 {"resultado": ..}`` on success, ``200 {"error": "Operación no soportada"}``
for an unknown operation, 422 for a missing field. tarea adds what the seed did
not have: a clear 4xx for a bad or missing image and 503 when the engine is down.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from tarea.api.deps import ServiceDep, SettingsDep, TenantDep
from tarea.api.errors import ProblemError, problem_responses
from tarea.codes import STATUS_OF_CODE
from tarea.domain.status import Status
from tarea.domain.task import RegistryAuth
from tarea.service import NewTask

router = APIRouter(tags=["seed"])

#: The seed's answer for an operation the image does not offer (exact text).
UNSUPPORTED = "Operación no soportada"
#: Failures that are the task's own answer: the seed answers them 200 {"error": ..},
#: though /v1/tasks may refuse them before dispatch (an image that describes itself).
_THE_TASKS_ANSWER = frozenset({"unknown_function", "bad_params", "task_error"})


class SeedCredentials(BaseModel):
    """Registry credentials for pulling the image; never logged or stored."""

    usuario: str = Field(description="Registry user name.")
    password: str = Field(description="Registry password, base64-encoded.")


class SeedTaskRequest(BaseModel):
    """The seed's request body, field for field."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "imagen_docker": "tasks_image:latest",
                    "calculo": "suma",
                    "parametros": {"a": 10, "b": 20, "c": 5},
                    "datos_adicionales": None,
                    "credenciales": None,
                }
            ]
        }
    )

    imagen_docker: str = Field(description="The task image, e.g. tasks_image:latest.")
    calculo: str = Field(description="The operation (function) to run, e.g. suma.")
    parametros: dict[str, Any] = Field(description="The operation's parameters.")
    datos_adicionales: dict[str, Any] | None = Field(
        None, description="Extra data, accepted and kept with the task's record."
    )
    credenciales: SeedCredentials | None = Field(
        None, description="Registry credentials for the pull."
    )


class SeedTaskResult(BaseModel):
    """``{"resultado": ..}`` on success, or ``{"error": ..}`` when the task failed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"resultado": 35}, {"error": UNSUPPORTED}]}
    )

    resultado: Any = None
    error: str | None = None


def _auth(credentials: SeedCredentials | None) -> RegistryAuth | None:
    if credentials is None:
        return None
    try:
        password = base64.b64decode(credentials.password, validate=True).decode()
    except ValueError:  # not ASCII, not base64 (binascii.Error), or not UTF-8 inside
        raise ProblemError(
            "validation_error",
            "credenciales.password must be base64-encoded",
            status=422,
            field="credenciales.password",
        ) from None
    return RegistryAuth(username=credentials.usuario, password=password)


@router.post(
    "/getRemoteTask/",
    response_model=SeedTaskResult,
    response_model_exclude_none=True,
    summary="Run one task and answer its result (the seed's endpoint)",
    responses=problem_responses(401, 403, 404, 413, 422, 424, 429, 503),
)
async def get_remote_task(
    body: SeedTaskRequest, service: ServiceDep, settings: SettingsDep, tenant: TenantDep
) -> dict[str, Any]:
    """Run ``calculo`` with ``parametros`` in a container of ``imagen_docker``.

    The call is recorded like any v1 task (metadata ``source: getRemoteTask``),
    so it can be looked up later under ``/v1/tasks``.
    """
    new = NewTask(
        image=body.imagen_docker,
        function=body.calculo,
        params=body.parametros,
        metadata={"source": "getRemoteTask", "datos_adicionales": body.datos_adicionales},
    )
    bound = settings.pull_timeout_s + settings.start_timeout_s + settings.max_timeout_s + 5
    record, _ = await service.submit(
        new, tenant=tenant, auth=_auth(body.credenciales), wait_s=bound, check_params=False
    )
    if record.status is Status.SUCCEEDED:
        return {"resultado": record.result}
    error = record.error or {"code": "task_error", "message": f"the task is {record.status}"}
    if error["code"] == "unknown_function":
        return {"error": UNSUPPORTED}
    if error["code"] in STATUS_OF_CODE and error["code"] not in _THE_TASKS_ANSWER:
        # the image or the engine is at fault, not the task
        raise ProblemError(error["code"], error["message"], image=body.imagen_docker)
    return {"error": str(error["message"])}
