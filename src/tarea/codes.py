"""Every stable error code tarea answers, in one registry.

Two kinds, and some codes are both:

- a **task failure**: the ``error.code`` of a task that ended without a
  result (in its record, its callback, its events, and as the seed's
  ``{"error": ...}``);
- an **API error**: the ``code`` of a problem document (RFC 9457), with its
  HTTP status.

The API's statuses (:data:`STATUS_OF_CODE`), the docs (``docs/errors.md`` is
rendered from here: ``python -m tarea.codes``) and clients read this table;
a test checks that every code tarea's exceptions carry is in it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    """One stable code: what it means, and how it is answered."""

    name: str
    meaning: str
    #: The HTTP status of a problem document with this code; None: never one.
    status: int | None = None
    #: Whether a task can end with it (its ``error.code``).
    task: bool = False


CODES: tuple[Code, ...] = (
    # -- how a task fails -------------------------------------------------------------
    Code(
        "unknown_function",
        "the image has no such function (refused at submit when the image describes itself)",
        422,
        task=True,
    ),
    Code(
        "bad_params",
        "the function refused its parameters (refused at submit, naming the field, when "
        "the image describes itself)",
        422,
        task=True,
    ),
    Code("task_error", "the function raised an error of its own", task=True),
    Code("timed_out", "the task passed its timeout_s; its container was killed", task=True),
    Code("crashed", "the task's process exited before answering (or while starting)", task=True),
    Code("oom_killed", "the task ran out of memory and the kernel killed it", task=True),
    Code(
        "protocol_error",
        "the container wrote something that is not the protocol, or answered what no store "
        "holds (NaN or an infinity, a lone surrogate, U+0000)",
        task=True,
    ),
    Code("output_too_large", "a message of the task was over its output_kb", task=True),
    Code(
        "disk_limit_exceeded",
        "a seed-HTTP container wrote more than TAREA_WRITABLE_MB to its filesystem",
        task=True,
    ),
    Code("worker_lost", "the server running the task stopped or fell silent", task=True),
    Code("cancelled", "a client cancelled the task", task=True),
    Code("image_not_found", "the image is not local and no registry has it", 404, task=True),
    Code("image_pull_failed", "the image's registry could not be reached or failed", 424, True),
    Code("unsupported_image", "the image speaks no protocol tarea knows", 422, task=True),
    Code("engine_unavailable", "the Docker engine does not answer", 503, task=True),
    # -- how the API refuses a request ----------------------------------------------
    Code("validation_error", "the request does not match its schema", 422),
    Code(
        "invalid_request",
        "the request asks for something malformed (a limit past the server's maximum; "
        "NaN or an infinity, numbers JSON has not; a string that is not Unicode; U+0000, "
        "which PostgreSQL's text refuses)",
        422,
    ),
    Code("invalid_image_reference", "the image name is not a valid reference", 422),
    Code("too_deep", "params or metadata nest deeper than 64 levels", 422),
    Code("callback_url_not_allowed", "the callback URL is an address not allowed", 422),
    Code("idempotency_key_reused", "the Idempotency-Key came before with another body", 422),
    Code(
        "registry_auth_not_supported",
        "per-request registry credentials with workers (TAREA_BROKER_URL): they are never put "
        "on the broker; set TAREA_REGISTRY_AUTH on the workers",
        422,
    ),
    Code(
        "image_not_allowed",
        "the image matches none of TAREA_IMAGE_ALLOW, or its registry host is not public",
        403,
    ),
    Code("unauthorized", "no valid API key", 401),
    Code("forbidden", "the route is the operator's: it needs a TAREA_ADMIN_KEYS key", 403),
    Code(
        "csrf_failed",
        "a dashboard call that changes state lacks its X-CSRF-Token or comes from another site",
        403,
    ),
    Code("not_found", "no such route", 404),
    Code("task_not_found", "no such task for this tenant", 404),
    Code("not_cancellable", "the task already ended", 409),
    Code("request_timeout", "the request's headers or body came too slowly", 408),
    Code("request_too_large", "the request body is over TAREA_MAX_BODY_KB", 413),
    Code("headers_too_large", "the request's headers are over 64 KiB", 431),
    Code("quota_exceeded", "the tenant has TAREA_TENANT_MAX_ACTIVE tasks unfinished", 429),
    Code("too_many_connections", "this address has too many connections open", 429),
    Code("queue_full", "TAREA_MAX_QUEUED tasks wait already", 503),
    Code("draining", "the server is shutting down", 503),
    Code("store_unavailable", "the task store does not answer or refuses writes", 503),
    Code("internal_error", "a bug: logged, never with a traceback to the client", 500),
)

BY_NAME: dict[str, Code] = {code.name: code for code in CODES}
#: HTTP status of each code when it is answered as an API error.
STATUS_OF_CODE: dict[str, int] = {c.name: c.status for c in CODES if c.status is not None}
#: The codes a task can end with.
TASK_FAILURES: frozenset[str] = frozenset(c.name for c in CODES if c.task)


def render_markdown() -> str:
    """``docs/errors.md``: the registry as a page."""
    lines = [
        "# Error codes",
        "",
        "Every stable code tarea answers, rendered from `src/tarea/codes.py`",
        "(`python -m tarea.codes > docs/errors.md`). A task that fails carries one",
        "as `error.code`; an API error is a problem document (RFC 9457) whose `code`",
        "is one, with the HTTP status shown.",
        "",
        "| code | task failure | API status | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for code in CODES:
        status = "" if code.status is None else str(code.status)
        lines.append(
            f"| `{code.name}` | {'yes' if code.task else ''} | {status} | {code.meaning} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
