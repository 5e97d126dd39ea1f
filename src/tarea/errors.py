"""tarea's exceptions: one root, converted from foreign errors where they enter.

The tree::

    TareaError                      root of everything tarea raises on purpose
    ├── ConfigurationError          settings that cannot work
    ├── InvalidRequest              a client asked for something malformed (422)
    │   ├── InvalidImageReference   not a valid distribution reference
    │   ├── TooDeep                 too_deep: params or metadata nested past 64 levels
    │   ├── UnknownFunction         unknown_function: the image describes itself without it
    │   ├── BadParams               bad_params: params break the function's described schema
    │   └── CallbackUrlNotAllowed   callback_url_not_allowed: an address the
    │                               outbound policy refuses (TAREA_CALLBACK_ALLOW)
    ├── EngineUnavailable           the Docker engine does not answer (503)
    ├── StoreUnavailable            the database does not answer, or refuses writes (503)
    ├── Refused                     the service said no to a request; ``code``
    │   ├── ImageNotAllowed         image_not_allowed (403)
    │   ├── TaskNotFound            task_not_found (404): none, or another tenant's
    │   ├── NotCancellable          not_cancellable (409): it already ended
    │   ├── IdempotencyKeyReused    idempotency_key_reused (422)
    │   ├── QuotaExceeded           quota_exceeded (429)
    │   ├── QueueFull               queue_full (503)
    │   └── Draining                draining (503): the server is shutting down
    └── TaskFailure                 one task could not produce a result; ``code``
        ├── ImageNotFound           image_not_found: not local and not pullable
        ├── ImagePullFailed         image_pull_failed: the registry refused or failed
        ├── UnsupportedImage        unsupported_image: speaks neither protocol
        ├── TaskTimeout             timed_out: the wall-clock limit passed
        ├── ProtocolViolation       protocol_error: the container spoke garbage
        ├── OutputTooLarge          output_too_large: a message over the cap
        ├── DiskLimitExceeded       disk_limit_exceeded: wrote past TAREA_WRITABLE_MB
        ├── ContainerCrashed        crashed: the process ended mid-call, or while starting
        ├── OomKilled               oom_killed: the kernel's OOM killer ended it
        └── RemoteTaskError         unknown_function | bad_params | task_error:
                                    the task answered with an error of its own

Every ``TaskFailure`` carries a stable ``code`` (the ``error.code`` of the v1
API, DESIGN §3), a human ``message`` and JSON-able ``data``. docker-py and
requests errors never leave :mod:`tarea.execution.docker`; they become one of the
classes above there.

Outside the tree, on purpose: ``ValueRefused``, the store's word that it cannot
hold a value a write carried (the driver's ``DataError``, converted where the
async store hands outcomes back). No client is answered with it; the runner
ends a task whose end it refuses without what the task gave.
"""

from __future__ import annotations

from typing import Any


class TareaError(Exception):
    """Root of every exception tarea raises on purpose."""


class ConfigurationError(TareaError):
    """The server's settings cannot work (bad URL, unknown option)."""


class InvalidRequest(TareaError):
    """A client asked for something malformed; answered with 422."""

    code: str = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class RegistryAuthNotSupported(InvalidRequest):
    """Per-request registry credentials, refused with workers (TAREA_BROKER_URL)."""

    code = "registry_auth_not_supported"


class InvalidImageReference(InvalidRequest):
    """The image name is not a valid distribution reference."""

    code: str = "invalid_image_reference"


class TooDeep(InvalidRequest):
    """Params or metadata nest deeper than tarea keeps (:data:`tarea.domain.nesting.MAX_DEPTH`)."""

    code: str = "too_deep"


class UnknownFunction(InvalidRequest):
    """The image describes its functions (``rpc.discover``) and this is none of them."""

    code: str = "unknown_function"


class BadParams(InvalidRequest):
    """The params break the schema the image describes for the function.

    ``field`` names the parameter (``params.width``, ``params.xs.2``),
    ``reason`` says why ("missing required parameter", "expected integer, got string").
    """

    code: str = "bad_params"

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message, field=field)
        self.reason = reason


class CallbackUrlNotAllowed(InvalidRequest):
    """The callback URL names, or resolves to, an address callbacks may not go to.

    Raised at submit for a literal address or ``localhost``, and on every
    delivery attempt for what the host name resolves to then (a final failure).
    """

    code: str = "callback_url_not_allowed"


class EngineUnavailable(TareaError):
    """The Docker engine does not answer; answered with 503."""

    code: str = "engine_unavailable"

    def __init__(self, message: str = "the Docker engine does not answer") -> None:
        super().__init__(message)
        self.message = message


class StoreUnavailable(TareaError):
    """The task store cannot be reached or written (down, restarting, full); answered 503."""

    code: str = "store_unavailable"

    def __init__(self, message: str = "the task store does not answer") -> None:
        super().__init__(message)
        self.message = message


class ValueRefused(Exception):
    """The store cannot hold a value a write carried: PEP 249's ``DataError``, whichever
    driver's (text holding U+0000 on PostgreSQL, say), as the async store hands it on.

    The write is refused for what it carries, not for the store's state: the
    same write would be refused again. Not a :class:`TareaError`: no client
    is answered with it (the checks at the door let nothing known through).
    """


class Refused(TareaError):
    """The service refused a request; ``code`` says why (its HTTP status: api.errors)."""

    code: str = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImageNotAllowed(Refused):
    """The image matches none of the server's allowed patterns (TAREA_IMAGE_ALLOW)."""

    code = "image_not_allowed"


class TaskNotFound(Refused):
    """No such task, or it is another tenant's."""

    code = "task_not_found"


class NotCancellable(Refused):
    """The task already ended."""

    code = "not_cancellable"


class IdempotencyKeyReused(Refused):
    """The Idempotency-Key was used before with another request body."""

    code = "idempotency_key_reused"


class QuotaExceeded(Refused):
    """The tenant has as many tasks queued and running as it may."""

    code = "quota_exceeded"


class QueueFull(Refused):
    """As many tasks wait as the server allows; try again later."""

    code = "queue_full"


class Draining(Refused):
    """The server is shutting down and takes no new tasks."""

    code = "draining"


class TaskFailure(TareaError):
    """A task ended without a result; ``code`` names why, stably."""

    code: str = "task_error"

    def __init__(self, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = data or {}


class ImageNotFound(TaskFailure):
    """The image is neither present locally nor pullable."""

    code: str = "image_not_found"


class ImagePullFailed(TaskFailure):
    """A pull was attempted and the registry refused or failed."""

    code: str = "image_pull_failed"


class UnsupportedImage(TaskFailure):
    """The image carries no tarea protocol label and exposes no seed port."""

    code: str = "unsupported_image"


class TaskTimeout(TaskFailure):
    """The task passed its wall-clock limit and its container was killed."""

    code: str = "timed_out"


class ProtocolViolation(TaskFailure):
    """The container wrote something that is not the protocol."""

    code: str = "protocol_error"


class OutputTooLarge(TaskFailure):
    """The container sent a message larger than the output cap."""

    code: str = "output_too_large"


class DiskLimitExceeded(TaskFailure):
    """The container wrote more to its own filesystem than allowed, and was stopped."""

    code: str = "disk_limit_exceeded"


class ContainerCrashed(TaskFailure):
    """The task's process ended before answering."""

    code: str = "crashed"


class OomKilled(TaskFailure):
    """The task's container ran out of memory and the kernel killed it."""

    code: str = "oom_killed"


class RemoteTaskError(TaskFailure):
    """The task answered with an error of its own (a JSON-RPC error object).

    ``code`` is per instance here: ``unknown_function``, ``bad_params`` or
    ``task_error``, from the JSON-RPC error code.
    """

    def __init__(self, code: str, message: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(message, data=data)
        self.code = code
