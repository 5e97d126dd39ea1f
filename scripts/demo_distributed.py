"""``make demo_distributed``: tarea on "many hosts", on this machine.

Starts (or reuses) RabbitMQ and PostgreSQL, a local registry (Debian's
docker-registry on 127.0.0.1) holding the task image, a second Docker engine
of its own (its own data root, exec root and socket: a second "host"), one
API server and two workers (the second on the second engine, which pulls the
image from the registry), prints how to try it, and stops everything on
Ctrl-C. Everything listens on loopback only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.engines import PrivateDockerd  # noqa: E402 - after the path

TASKS_IMAGE = "tasks_image:latest"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure(script: str) -> str:
    done = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo: {script} failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: a process exited early; its log:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"demo: {url} did not answer; see {log}")


def _drop_schema(admin: Engine, schema: str) -> None:
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="tarea-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    cleanups: list[Callable[[], None]] = []
    engine: PrivateDockerd | None = None

    def start(argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = work / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    try:
        say("RabbitMQ and PostgreSQL (installed and started where missing)...")
        broker = ensure("ensure-rabbitmq.sh")
        database = ensure("ensure-postgres.sh")

        say("a local registry on 127.0.0.1, holding the task image...")
        port = free_port()
        config = work / "registry.yml"
        config.write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {work / 'registry'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
        )
        registry_bin = shutil.which("docker-registry")
        if registry_bin is None:
            sys.exit("demo: docker-registry is missing: apt-get install -y docker-registry")
        registry = start([registry_bin, "serve", str(config)], {}, "registry")
        wait_http(f"http://127.0.0.1:{port}/v2/", registry, work / "registry.log")
        image = f"127.0.0.1:{port}/tarea/tasks:latest"
        subprocess.run(["docker", "tag", TASKS_IMAGE, image], check=True)
        subprocess.run(["docker", "push", "-q", image], check=True, capture_output=True)

        say("a second Docker engine (a second 'host')...")
        engine = PrivateDockerd("demo")
        engine.start()

        # A schema of the demo's own (dropped at the end), in the database the script gave.
        admin = create_engine(make_url(database))
        schema = f"tarea_demo_{secrets.token_hex(4)}"
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        cleanups.append(lambda: _drop_schema(admin, schema))
        store_url = (
            make_url(database)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        common = {"TAREA_DATABASE_URL": store_url, "TAREA_BROKER_URL": broker}
        api_port = int(os.environ.get("TAREA_PORT", "8000"))
        say(f"the API server on 127.0.0.1:{api_port} and two workers...")
        api = start(
            [sys.executable, "-m", "tarea"],
            {**common, "TAREA_SERVER_ID": "demo-api", "TAREA_PORT": str(api_port)},
            "api",
        )
        wait_http(f"http://127.0.0.1:{api_port}/healthz", api, work / "api.log")
        worker = [sys.executable, "-c", "from tarea.cli import main; main()", "worker"]
        start(worker, {**common, "TAREA_SERVER_ID": "demo-worker-1"}, "worker-1")
        start(
            worker,
            {**common, "TAREA_SERVER_ID": "demo-worker-2", "TAREA_DOCKER_HOST": engine.host},
            "worker-2",
        )
        deadline = time.monotonic() + 90
        while True:
            items = httpx.get(f"http://127.0.0.1:{api_port}/v1/workers", timeout=5).json()
            if sum(1 for w in items["items"] if w["alive"]) >= 2:
                break
            if time.monotonic() > deadline:
                sys.exit(f"demo: the workers did not start; see {work}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{api_port}"
        print(
            f"""
tarea on two "hosts" is up (logs in {work}):
  API server   {url}   (tarea serve, TAREA_BROKER_URL={broker})
  worker 1     the main Docker engine
  worker 2     a second Docker engine ({engine.host}), pulling from {image}

Try it:
  curl -s -X POST '{url}/v1/tasks?wait=true' -H 'Content-Type: application/json' \\
       -d '{{"image": "{image}", "function": "suma", "params": {{"a": 2, "b": 3}}}}'
  curl -s -X POST {url}/getRemoteTask/ -H 'Content-Type: application/json' \\
       -d '{{"imagen_docker": "{image}", "calculo": "suma", "parametros": {{"a": 10, "b": 25}}}}'
  curl -s {url}/v1/workers        # who runs what, warm containers per image
Ctrl-C stops everything.
""",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping...")
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        if engine is not None:
            engine.cleanup()
        for cleanup in cleanups:
            cleanup()
        shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
