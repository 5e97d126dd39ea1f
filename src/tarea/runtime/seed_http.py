"""The seed's HTTP contract, so one image also serves the original task service.

``GET /status/`` answers ``200 {"status": "ok"}``; ``POST /ejecutarTarea/``
with ``{"calculo": <function>, "parametros": {...}}`` answers
``200 {"resultado": <value>}``, or ``200 {"error": <message>}`` when the
function is unknown ("Operación no soportada"), the parameters do not fit
or the task fails. A body that is not a JSON object answers 400.
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from .errors import ParamError, describe_failure, log_failure
from .jsonrpc import decode, encode
from .registry import Registry

DEFAULT_PORT = 5000
MAX_BODY_BYTES = 16 * 1024 * 1024
UNSUPPORTED = "Operación no soportada"

_STATUS_PATHS = frozenset({"/status/", "/status"})
_RUN_PATHS = frozenset({"/ejecutarTarea/", "/ejecutarTarea"})


class SeedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that runs the tasks of ``registry``."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: Registry) -> None:
        self.registry = registry
        super().__init__(address, _Handler)


def make_server(
    registry: Registry, host: str = "0.0.0.0", port: int = DEFAULT_PORT
) -> SeedHTTPServer:
    """Bind (port 0 picks a free one; see ``server.server_address``) without serving yet."""
    return SeedHTTPServer((host, port), registry)


def run(registry: Registry, host: str = "0.0.0.0", port: int = DEFAULT_PORT) -> None:
    """Serve the seed contract until the process is stopped."""
    with make_server(registry, host, port) as server:
        bound_host, bound_port = server.server_address[:2]
        print(f"tarea.runtime: seed HTTP mode on {bound_host!s}:{bound_port}", file=sys.stderr)
        server.serve_forever()


def execute(registry: Registry, body: dict[str, Any]) -> dict[str, Any]:
    """Answer one ``/ejecutarTarea/`` body: ``{"resultado": ..}`` or ``{"error": ..}``."""
    name = body.get("calculo")
    params = body.get("parametros", {})
    task = registry.get(name) if isinstance(name, str) else None
    if task is None:
        return {"error": UNSUPPORTED}
    if not isinstance(params, dict):
        return {"error": "Invalid params: 'parametros' must be a JSON object"}
    try:
        return {"resultado": task.call(params)}
    except ParamError as exc:
        return {"error": f"Invalid params: {exc.message}"}
    except Exception as exc:
        log_failure(task.name, exc)
        return {"error": describe_failure(exc)[0]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tarea-runtime"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in _STATUS_PATHS:
            self._reply(HTTPStatus.OK, {"status": "ok"})
        elif path in _RUN_PATHS:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use POST"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _RUN_PATHS:
            self._discard_body()
            status = (
                HTTPStatus.METHOD_NOT_ALLOWED if path in _STATUS_PATHS else HTTPStatus.NOT_FOUND
            )
            self._reply(status, {"error": status.phrase.lower()})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "missing, invalid or too large body"})
            return
        try:
            body = decode(self.rfile.read(length))
        except (ValueError, RecursionError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"malformed JSON body: {exc}"})
            return
        if not isinstance(body, dict):
            self._reply(HTTPStatus.BAD_REQUEST, {"error": "the body must be a JSON object"})
            return
        registry = cast(SeedHTTPServer, self.server).registry
        self._reply(HTTPStatus.OK, execute(registry, body))

    def _discard_body(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        try:
            body = encode(payload)
        except (TypeError, ValueError, RecursionError) as exc:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body = encode({"error": f"internal error: the result is not JSON-serialisable: {exc}"})
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log; errors still go to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"tarea.runtime: {format % args}\n")
