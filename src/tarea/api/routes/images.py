"""``GET /v1/images/{image}/functions``: what an image offers, as it describes itself."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from tarea.api.deps import ServiceDep, TenantDep
from tarea.api.errors import problem_responses
from tarea.api.responses import FastJSONResponse
from tarea.domain.functions import ImageFunctions

router = APIRouter(prefix="/v1", tags=["images"], responses=problem_responses(401, 422))


class ParamOut(BaseModel):
    """One parameter, by name, with the JSON Schema of its values."""

    name: str
    required: bool
    schema_: Any = Field(alias="schema", description="JSON Schema of the values accepted.")


class FunctionOut(BaseModel):
    """One function of the image."""

    name: str
    summary: str = ""
    description: str = ""
    params: list[ParamOut]
    additional_params: Any = Field(
        None,
        description="JSON Schema of parameters not listed (a Python task's **kwargs); "
        "null: those are refused.",
    )
    result: Any = Field(True, description="JSON Schema of the result.")


class ImageFunctionsOut(BaseModel):
    """The functions of an image, from its own ``rpc.discover`` (docs/protocol.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "image": "tasks_image:latest",
                    "image_id": "sha256:206749f0b7ec...",
                    "protocol": "jsonrpc-stdio/1",
                    "described": True,
                    "functions": [
                        {
                            "name": "resta",
                            "summary": "a - b.",
                            "description": "a - b.",
                            "params": [
                                {"name": "a", "required": True, "schema": {"type": "number"}},
                                {"name": "b", "required": True, "schema": {"type": "number"}},
                            ],
                            "additional_params": None,
                            "result": {"type": "number"},
                        }
                    ],
                    "openrpc": {"openrpc": "1.3.2", "info": {}, "methods": []},
                }
            ]
        }
    )

    image: str
    image_id: str = Field(
        description="The image's id (its config digest): answers are kept per id."
    )
    protocol: str = Field(description="jsonrpc-stdio/1 or seed-http.")
    described: bool = Field(
        description="Whether the image answers rpc.discover. Only then are calls checked "
        "before they run (422 bad_params / unknown_function)."
    )
    functions: list[FunctionOut]
    openrpc: dict[str, Any] | None = Field(
        None, description="The image's OpenRPC document, as it sent it."
    )


def render(image: str, functions: ImageFunctions) -> dict[str, Any]:
    """The JSON of :class:`ImageFunctionsOut`."""
    return {
        "image": image,
        "image_id": functions.image_id,
        "protocol": functions.protocol,
        "described": functions.described,
        "functions": [
            {
                "name": m.name,
                "summary": m.summary,
                "description": m.description,
                "params": [
                    {"name": p.name, "required": p.required, "schema": p.schema} for p in m.params
                ],
                "additional_params": m.additional,
                "result": m.result,
            }
            for m in (functions.methods[name] for name in sorted(functions.methods))
        ],
        "openrpc": dict(functions.document) if functions.document is not None else None,
    }


ImageName = Annotated[
    str,
    Path(
        description="The image reference, slashes and tag included "
        "(e.g. registry.example/team/img:1).",
        max_length=512,
    ),
]


@router.get(
    "/images/{image:path}/functions",
    response_model=ImageFunctionsOut,
    summary="The functions an image offers",
    responses=problem_responses(403, 404, 424, 503),
)
async def image_functions(
    image: ImageName, service: ServiceDep, tenant: TenantDep
) -> FastJSONResponse:
    """Ask the image (once per image id; pulled if it is not local) which functions it
    offers, with their parameters as JSON Schema, their results and docstrings.

    An image that does not answer ``rpc.discover`` (or a seed-HTTP image) is answered
    with ``described: false`` and no functions: its calls are not checked.
    """
    functions = await service.image_functions(image, tenant)
    return FastJSONResponse(render(image, functions))
