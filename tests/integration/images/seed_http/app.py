"""A stand-in for the seed's task service: an HTTP server on port 5000.

Not built on tarea.runtime, and its image carries no tarea label: tarea must
run it through the seed contract. Like the seed's service it takes a moment
to come up (about 1 s), so a client has to poll ``GET /status/``.
"""

import json
import math
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = 5000
STARTUP_DELAY_S = 1.0


def calculate(calculo, parametros):
    """The seed's answer to one task: {"resultado": ..} or {"error": ..}."""
    valores = list(parametros.values())
    try:
        if calculo == "suma":
            return {"resultado": sum(valores)}
        if calculo == "multiplicacion":
            return {"resultado": math.prod(valores)}
        if calculo == "promedio":
            return {"resultado": sum(valores) / len(valores) if valores else 0}
    except TypeError as exc:
        return {"error": f"Parámetros inválidos: {exc}"}
    return {"error": "Operación no soportada"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/status/":
            self.reply(200, {"status": "ok"})
        else:
            self.reply(404, {"detail": "Not Found"})

    def do_POST(self):
        if self.path != "/ejecutarTarea/":
            self.reply(404, {"detail": "Not Found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length))
            calculo = body["calculo"]
            parametros = body["parametros"]
            if not isinstance(parametros, dict):
                raise TypeError("parametros must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            self.reply(422, {"detail": f"invalid body: {exc}"})
            return
        self.reply(200, calculate(calculo, parametros))

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write(f"seed-http: {format % args}\n")


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores it otherwise
    time.sleep(STARTUP_DELAY_S)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    print(f"seed-http: listening on :{PORT}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
