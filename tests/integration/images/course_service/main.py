"""A stand-in for the course's task service: the seed's HTTP contract on :5000.

``GET /status/`` and ``POST /ejecutarTarea/`` with ``{"calculo", "parametros"}``;
every request writes a line to logs/task_service.log. ``escribir`` (``{"mb": N}``)
writes N MiB next to the code (``pausa`` seconds between MiBs), to fill the
container's writable layer.
"""

import json
import math
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.environ.get("COURSE_CRASH_AT_START") == "1":
    raise RuntimeError("task_service: cannot load its configuration (on purpose)")

from logger import logger  # at import, like the course's

PORT = 5000
MB = 1024 * 1024


def calcular(calculo, parametros):
    valores = list(parametros.values())
    if calculo == "suma":
        return {"resultado": sum(valores)}
    if calculo == "multiplicacion":
        return {"resultado": math.prod(valores)}
    if calculo == "promedio":
        return {"resultado": sum(valores) / len(valores) if valores else 0}
    if calculo == "escribir":
        chunk = b"x" * MB
        with open(os.path.join("logs", "relleno.bin"), "ab") as out:
            for _ in range(int(parametros.get("mb", 1))):
                out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                time.sleep(float(parametros.get("pausa", 0)))
        return {"resultado": os.path.getsize(os.path.join("logs", "relleno.bin")) // MB}
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
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        logger.info("tarea %s %s", body.get("calculo"), body.get("parametros"))
        self.reply(200, calcular(body.get("calculo"), body.get("parametros") or {}))

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write(f"task_service: {format % args}\n")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 ignores it otherwise
    logger.info("task_service listening on :%d", PORT)
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
