"""One exception class per problem code, rendered from :mod:`tarea.codes`.

Generated: ``python -m tarea.client.errors > src/tarea/client/problems.py``.
Do not edit by hand; tests/unit/test_client_errors.py keeps it equal to the registry.
"""

from __future__ import annotations

from tarea.client.errors import APIError, AuthenticationError


class UnknownFunctionError(APIError):
    """422 ``unknown_function``: the image has no such function (refused at submit when the image
    describes itself).
    """

    code_name = "unknown_function"


class BadParamsError(APIError):
    """422 ``bad_params``: the function refused its parameters (refused at submit, naming the
    field, when the image describes itself).
    """

    code_name = "bad_params"


class ImageNotFoundError(APIError):
    """404 ``image_not_found``: the image is not local and no registry has it."""

    code_name = "image_not_found"


class ImagePullFailedError(APIError):
    """424 ``image_pull_failed``: the image's registry could not be reached or failed."""

    code_name = "image_pull_failed"


class UnsupportedImageError(APIError):
    """422 ``unsupported_image``: the image speaks no protocol tarea knows."""

    code_name = "unsupported_image"


class EngineUnavailableError(APIError):
    """503 ``engine_unavailable``: the Docker engine does not answer."""

    code_name = "engine_unavailable"


class ValidationError(APIError):
    """422 ``validation_error``: the request does not match its schema."""

    code_name = "validation_error"


class InvalidRequestError(APIError):
    """422 ``invalid_request``: the request asks for something malformed (a limit past the server's
    maximum; NaN or an infinity, numbers JSON has not; a string that is not Unicode; U+0000,
    which PostgreSQL's text refuses).
    """

    code_name = "invalid_request"


class InvalidImageReferenceError(APIError):
    """422 ``invalid_image_reference``: the image name is not a valid reference."""

    code_name = "invalid_image_reference"


class TooDeepError(APIError):
    """422 ``too_deep``: params or metadata nest deeper than 64 levels."""

    code_name = "too_deep"


class CallbackUrlNotAllowedError(APIError):
    """422 ``callback_url_not_allowed``: the callback URL is an address not allowed."""

    code_name = "callback_url_not_allowed"


class IdempotencyKeyReusedError(APIError):
    """422 ``idempotency_key_reused``: the Idempotency-Key came before with another body."""

    code_name = "idempotency_key_reused"


class RegistryAuthNotSupportedError(APIError):
    """422 ``registry_auth_not_supported``: per-request registry credentials with workers
    (TAREA_BROKER_URL): they are never put on the broker; set TAREA_REGISTRY_AUTH on the
    workers.
    """

    code_name = "registry_auth_not_supported"


class ImageNotAllowedError(APIError):
    """403 ``image_not_allowed``: the image matches none of TAREA_IMAGE_ALLOW, or its registry host
    is not public.
    """

    code_name = "image_not_allowed"


class UnauthorizedError(APIError, AuthenticationError):
    """401 ``unauthorized``: no valid API key."""

    code_name = "unauthorized"


class ForbiddenError(APIError):
    """403 ``forbidden``: the route is the operator's: it needs a TAREA_ADMIN_KEYS key."""

    code_name = "forbidden"


class CsrfFailedError(APIError):
    """403 ``csrf_failed``: a dashboard call that changes state lacks its X-CSRF-Token or comes
    from another site.
    """

    code_name = "csrf_failed"


class NotFoundError(APIError):
    """404 ``not_found``: no such route."""

    code_name = "not_found"


class TaskNotFoundError(APIError):
    """404 ``task_not_found``: no such task for this tenant."""

    code_name = "task_not_found"


class NotCancellableError(APIError):
    """409 ``not_cancellable``: the task already ended."""

    code_name = "not_cancellable"


class RequestTimeoutError(APIError):
    """408 ``request_timeout``: the request's headers or body came too slowly."""

    code_name = "request_timeout"


class RequestTooLargeError(APIError):
    """413 ``request_too_large``: the request body is over TAREA_MAX_BODY_KB."""

    code_name = "request_too_large"


class HeadersTooLargeError(APIError):
    """431 ``headers_too_large``: the request's headers are over 64 KiB."""

    code_name = "headers_too_large"


class QuotaExceededError(APIError):
    """429 ``quota_exceeded``: the tenant has TAREA_TENANT_MAX_ACTIVE tasks unfinished."""

    code_name = "quota_exceeded"


class TooManyConnectionsError(APIError):
    """429 ``too_many_connections``: this address has too many connections open."""

    code_name = "too_many_connections"


class QueueFullError(APIError):
    """503 ``queue_full``: TAREA_MAX_QUEUED tasks wait already."""

    code_name = "queue_full"


class DrainingError(APIError):
    """503 ``draining``: the server is shutting down."""

    code_name = "draining"


class StoreUnavailableError(APIError):
    """503 ``store_unavailable``: the task store does not answer or refuses writes."""

    code_name = "store_unavailable"


class InternalError(APIError):
    """500 ``internal_error``: a bug: logged, never with a traceback to the client."""

    code_name = "internal_error"


#: The class of each problem code.
PROBLEM_CLASSES: dict[str, type[APIError]] = {
    "unknown_function": UnknownFunctionError,
    "bad_params": BadParamsError,
    "image_not_found": ImageNotFoundError,
    "image_pull_failed": ImagePullFailedError,
    "unsupported_image": UnsupportedImageError,
    "engine_unavailable": EngineUnavailableError,
    "validation_error": ValidationError,
    "invalid_request": InvalidRequestError,
    "invalid_image_reference": InvalidImageReferenceError,
    "too_deep": TooDeepError,
    "callback_url_not_allowed": CallbackUrlNotAllowedError,
    "idempotency_key_reused": IdempotencyKeyReusedError,
    "registry_auth_not_supported": RegistryAuthNotSupportedError,
    "image_not_allowed": ImageNotAllowedError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "csrf_failed": CsrfFailedError,
    "not_found": NotFoundError,
    "task_not_found": TaskNotFoundError,
    "not_cancellable": NotCancellableError,
    "request_timeout": RequestTimeoutError,
    "request_too_large": RequestTooLargeError,
    "headers_too_large": HeadersTooLargeError,
    "quota_exceeded": QuotaExceededError,
    "too_many_connections": TooManyConnectionsError,
    "queue_full": QueueFullError,
    "draining": DrainingError,
    "store_unavailable": StoreUnavailableError,
    "internal_error": InternalError,
}
