"""A small HTTP proxy on 127.0.0.1 that loses answers on purpose, for the client's tests.

It relays each request to a tarea server and records it; a rule decides which
answers it drops (the server did the work, the client hears nothing: the
connection closes without a response) and which event streams it cuts after
their first event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive", "host"}


@dataclass
class Seen:
    """A request the proxy relayed (or dropped the answer of)."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None
    dropped: bool = False


@dataclass
class Proxy:
    """Where the proxy listens, and what went through it."""

    url: str
    seen: list[Seen] = field(default_factory=list)

    def requests(self, method: str, path_prefix: str) -> list[Seen]:
        """The requests with this method whose path starts with ``path_prefix``."""
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]


@contextmanager
def lossy_proxy(
    upstream: str,
    drop: Callable[[Seen, int], bool] = lambda seen, n: False,
    cut_stream: Callable[[Seen, int], bool] = lambda seen, n: False,
) -> Iterator[Proxy]:
    """A proxy to ``upstream`` on a free port of 127.0.0.1.

    ``drop(request, n)``: lose the answer of the n-th request (from 1) after the
    server gave it. ``cut_stream(request, n)``: close an event stream after its
    first event.
    """
    lock = threading.Lock()
    http = httpx.Client(base_url=upstream, timeout=httpx.Timeout(60, read=None))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in headers.items()})
            with lock:
                proxy.seen.append(seen)
                n = len(proxy.seen)
            request = http.build_request(self.command, self.path, headers=headers, content=body)
            response = http.send(request, stream=True)
            try:
                seen.status = response.status_code
                if "text/event-stream" in response.headers.get("content-type", ""):
                    self._stream(response, cut=cut_stream(seen, n))
                    return
                content = response.read()
                if drop(seen, n):
                    seen.dropped = True
                    self.close_connection = True
                    return  # nothing written: the client sees the connection close
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in _HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)
            finally:
                response.close()

        def _stream(self, response: httpx.Response, cut: bool) -> None:
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers["content-type"])
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            buffer = b""
            for chunk in response.iter_raw():
                self.wfile.write(chunk)
                self.wfile.flush()
                buffer += chunk
                if cut and b"\n\n" in buffer.replace(b"\r\n", b"\n"):
                    self.close_connection = True
                    return

        do_GET = _relay
        do_POST = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy = Proxy(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        http.close()
