"""Workers on many hosts, with real processes: one API server and two ``tarea worker``s.

A real PostgreSQL (a fresh schema), a real RabbitMQ (a fresh virtual host)
and the real Docker engine. Tasks are submitted and waited for through the
API (``?wait=true``, the seed's ``POST /getRemoteTask/``); a worker killed
with SIGKILL mid-task has its task run again on the other (or end
``worker_lost``) with exactly one terminal status; a cancel through the API
kills the container within 2 s, and the task is called back once, by that
API server, whether a worker had it or not; tasks accepted while
RabbitMQ is down run when it returns; SIGTERM drains a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from tarea.dispatch.callbacks import verify
from tests.integration.conftest import (
    broker_vhost,
    docker,
    postgres_schema,
    restart_postgres,
    start_server,
)
from tests.integration.engines import PrivateDockerd
from tests.integration.test_callbacks import HOLD, SECRET, Receiver

pytestmark = pytest.mark.docker

LEASE_S = 3
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled"}


def esperar(seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "image": "tasks_image:latest",
        "function": "esperar",
        "params": {"segundos": seconds},
        **extra,
    }


SUMA = {"image": "tasks_image:latest", "function": "suma", "params": {"a": 2, "b": 3}}
#: Callbacks to this machine's test receivers, signed with a known secret.
CALLBACKS = {
    "TAREA_CALLBACK_ALLOW": "127.0.0.1",
    "TAREA_CALLBACK_SECRET": SECRET,
    "TAREA_CALLBACK_BACKOFF_S": "0.1",
}


@dataclass
class WorkerProc:
    """One ``tarea worker`` process."""

    server_id: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Cluster:
    """An API server and its workers, on one schema and one virtual host."""

    tmp: Path
    env: dict[str, str]
    api_proc: subprocess.Popen[bytes]
    api: httpx.Client
    db: Engine
    workers: dict[str, WorkerProc] = field(default_factory=dict)

    def start_worker(self, server_id: str, **env: str) -> WorkerProc:
        """Start worker ``server_id`` and wait until it consumes and is listed alive."""
        return self.launch_worker(server_id, env, via_api=True)

    def launch_worker(self, server_id: str, env: dict[str, str], *, via_api: bool) -> WorkerProc:
        """Start worker ``server_id`` and wait until it consumes and (``via_api``) is
        listed alive by the API server."""
        log = self.tmp / f"{server_id}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from tarea.cli import main; main()", "worker"],
                env={**os.environ, **self.env, "TAREA_SERVER_ID": server_id, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(server_id, proc, log)
        self.workers[server_id] = worker
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"worker {server_id} exited:\n{log.read_text()}", pytrace=False)
            ready = " ready." in log.read_text(errors="replace")
            if ready and (not via_api or self.listed(server_id)):
                return worker
            assert time.monotonic() < deadline, f"worker {server_id} not ready:\n{log.read_text()}"
            time.sleep(0.2)

    def listed(self, server_id: str) -> dict[str, Any] | None:
        """The worker as ``GET /v1/workers`` lists it, if alive."""
        for item in self.api.get("/v1/workers").json()["items"]:
            if item["id"] == server_id and item["alive"]:
                return dict(item)
        return None

    def stop_worker(self, server_id: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal worker ``server_id`` and wait for it to exit; its exit code."""
        worker = self.workers[server_id]
        if worker.proc.poll() is None:
            worker.proc.send_signal(sig)
        try:
            return worker.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            return worker.proc.wait(timeout=10)

    def submit(self, body: dict[str, Any], **params: str) -> dict[str, Any]:
        response = self.api.post("/v1/tasks", json=body, params=params)
        assert response.status_code in (200, 201, 202), response.text
        task: dict[str, Any] = response.json()
        return task

    def get(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.api.get(f"/v1/tasks/{task_id}").json()
        return task

    def until(
        self, task_id: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 60
    ) -> dict[str, Any]:
        """GET the task until ``check(task)``; the last answer (asserts it held in time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = self.get(task_id)
            if check(task):
                return task
            assert time.monotonic() < deadline, f"never reached: {task}"
            time.sleep(0.05)

    def terminal_events(self, task_id: str) -> list[str]:
        """The terminal statuses ``task_events`` recorded for the task (each status change)."""
        with self.db.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT data->>'status' FROM task_events WHERE task_id = :id "
                    "AND kind = 'status' ORDER BY seq"
                ),
                {"id": task_id},
            ).scalars()
            return [status for status in rows if status in TERMINAL]


def labelled(server_id: str) -> list[str]:
    """The ids of the containers worker ``server_id`` started (any state)."""
    return docker(
        "ps", "-aq", "--filter", f"label=io.tarea.server={server_id}", check=False
    ).stdout.split()


@contextlib.contextmanager
def running_cluster(
    tmp: Path, url: str, amqp: str, workers: dict[str, dict[str, str]], **env: str
) -> Iterator[Cluster]:
    """An API server and ``workers`` (id: their own settings) on the store ``url`` and the
    broker ``amqp``; stopped (and their containers removed) after."""
    base = os.environ["TAREA_SERVER_ID"]
    shared = {
        "TAREA_DATABASE_URL": url,
        "TAREA_BROKER_URL": amqp,
        "TAREA_LEASE_S": str(LEASE_S),
        "TAREA_CONCURRENCY": "4",
        "TAREA_DRAIN_TIMEOUT_S": "20",
        "TAREA_PUBLISH_INTERVAL_S": "0.5",
        "TAREA_WAIT_MAX_S": "15",
        **env,
    }
    api_proc, address = start_server({**shared, "TAREA_SERVER_ID": f"{base}-api"}, tmp / "api.log")
    db = create_engine(url, pool_pre_ping=True)  # survives a PostgreSQL restart
    cluster = Cluster(tmp, shared, api_proc, httpx.Client(base_url=address, timeout=120), db)
    try:
        for name, own in workers.items():
            cluster.start_worker(name, **own)
        yield cluster
    finally:
        cluster.api.close()
        for worker in cluster.workers.values():
            if worker.proc.poll() is None:
                worker.proc.terminate()
        for worker in cluster.workers.values():
            try:
                worker.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
            ids = labelled(worker.server_id)
            if ids:
                docker("rm", "-f", *ids, check=False)
        api_proc.terminate()
        try:
            api_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api_proc.kill()
        db.dispose()


@pytest.fixture(scope="module")
def cluster(
    tasks_image: str,
    postgres_url: str,
    postgres_admin: Engine,
    broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """One API server and workers w1, w2 on a fresh schema and virtual host."""
    tmp = tmp_path_factory.mktemp("workers")
    base = os.environ["TAREA_SERVER_ID"]
    with (
        postgres_schema(postgres_url, postgres_admin) as url,
        broker_vhost(broker_url) as amqp,
        running_cluster(
            tmp, url, amqp, {f"{base}-w1": {}, f"{base}-w2": {}}, **CALLBACKS
        ) as running,
    ):
        yield running


def worker_ids(cluster: Cluster) -> set[str]:
    return {w.server_id for w in cluster.workers.values() if w.proc.poll() is None}


def test_tasks_submitted_through_the_api_run_on_the_workers(cluster: Cluster) -> None:
    """Twelve tasks waited for at once through the API all succeed, run by the workers
    (the API server runs none: it has no executor)."""
    results: list[dict[str, Any]] = []

    def one(i: int) -> None:
        body = {**SUMA, "params": {"a": i, "b": 100}}
        results.append(cluster.submit(body, wait="true"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 12
    assert sorted(task["result"] for task in results) == [i + 100 for i in range(12)]
    assert {task["status"] for task in results} == {"succeeded"}
    assert {task["worker"] for task in results} <= worker_ids(cluster)
    # Celery's INFO line per message and per task is the workers' access log: off.
    for task in results:
        log = cluster.workers[task["worker"]].log.read_text(errors="replace")
        assert " ready." in log
        assert "Task tarea.run[" not in log  # "... received", "... succeeded in"


def test_the_seeds_get_remote_task_runs_on_a_worker(cluster: Cluster) -> None:
    """The seed's contract, unchanged: POST /getRemoteTask/ answers {"resultado": 35}."""
    body = {
        "imagen_docker": "tasks_image:latest",
        "calculo": "suma",
        "parametros": {"a": 10, "b": 20, "c": 5},
    }
    response = cluster.api.post("/getRemoteTask/", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"resultado": 35}


def test_get_workers_lists_both_with_their_engine_and_warm_containers(cluster: Cluster) -> None:
    """GET /v1/workers: both workers alive, their engine's version, their queue, and (after a
    task ran) the warm container each holds for tasks_image."""
    engine = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    for worker_id in worker_ids(cluster):
        cluster.submit(SUMA, wait="true")  # at least one of them warms up
        item = cluster.listed(worker_id)
        assert item is not None, f"{worker_id} not listed alive"
        assert item["engine"] == engine
        assert item["queue"] == f"tarea.worker.{worker_id}"
        assert item["concurrency"] == 4
        assert item["consuming"] is True
    deadline = time.monotonic() + 20
    while True:
        warm = {
            w["id"]: w["warm_containers"].get("tasks_image:latest", 0)
            for w in cluster.api.get("/v1/workers").json()["items"]
        }
        if any(count > 0 for count in warm.values()):
            break
        assert time.monotonic() < deadline, f"no worker reported a warm container: {warm}"
        time.sleep(0.2)
    assert cluster.api.get("/v1/servers").json()["items"], "servers and workers share the table"


def test_the_workers_declare_tareas_queues_and_none_of_celerys_delayed_delivery(
    cluster: Cluster,
) -> None:
    """In the workers' virtual host, every queue is tarea's (the shared one, each worker's
    own) and no exchange is Celery's native delayed delivery: with quorum queues Celery
    declared 28 queues and their exchanges for ETA tasks, which tarea never publishes, and
    warned at every worker start that tarea's direct exchange cannot carry them."""
    vhost = urlsplit(cluster.env["TAREA_BROKER_URL"]).path.lstrip("/")

    def listed(what: str) -> list[str]:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "--no-table-headers", what, "-p", vhost, "name"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return done.stdout.split()

    queues = listed("list_queues")
    assert "tarea.tasks" in queues
    assert {f"tarea.worker.{server_id}" for server_id in worker_ids(cluster)} <= set(queues)
    assert [name for name in queues if not name.startswith("tarea.")] == []
    assert [name for name in listed("list_exchanges") if "delayed" in name] == []
    for worker in cluster.workers.values():
        assert "native delayed delivery" not in worker.log.read_text(errors="replace")


def test_per_request_registry_credentials_are_refused_naming_the_alternative(
    cluster: Cluster,
) -> None:
    """Credentials would have to travel to a worker: refused 422 with a stable code, the
    message naming TAREA_REGISTRY_AUTH; nothing is recorded."""
    body = {**SUMA, "registry_auth": {"username": "u", "password": "p"}}
    response = cluster.api.post("/v1/tasks", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "registry_auth_not_supported"
    assert "TAREA_REGISTRY_AUTH" in problem["detail"]


def test_a_cancel_through_the_api_kills_the_workers_container_within_two_seconds(
    cluster: Cluster,
) -> None:
    """The API records the cancel; the worker running the task hears it through
    PostgreSQL and kills its container within 2 s."""
    receiver = Receiver([200])
    task = cluster.submit({**esperar(60), "callback_url": receiver.url})
    # A task claimed running has its container's id written a moment after it started.
    running = cluster.until(task["id"], lambda t: t["status"] == "running" and t["container"])
    container = running["container"]["id"]
    assert container
    assert running["worker"] in worker_ids(cluster)

    cancelled = cluster.api.post(f"/v1/tasks/{task['id']}/cancel")
    asked = time.monotonic()
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    while docker("inspect", container, check=False).returncode == 0:
        assert time.monotonic() - asked < 2.0, "the worker's container outlived the cancel by 2 s"
        time.sleep(0.05)
    assert cluster.get(task["id"])["status"] == "cancelled"
    assert cluster.terminal_events(task["id"]) == ["cancelled"]
    # Called back once: by the API server, which recorded the cancel (the worker
    # that ran the task only tells its own waiters).
    assert_called_back_once(receiver, task["id"])


def assert_called_back_once(receiver: Receiver, task_id: str) -> None:
    """One signed callback of the task, cancelled, came to ``receiver``, and no second."""
    receiver.wait_for(1)
    time.sleep(1.0)  # a second one, from anyone, would come within this
    assert len(receiver.calls) == 1
    headers, body, _ = receiver.calls[0]
    assert verify(SECRET.encode(), body, headers["X-Tarea-Signature"])
    called = json.loads(body)
    assert called["id"] == task_id
    assert called["status"] == "cancelled"


def test_a_task_cancelled_before_any_worker_had_it_is_called_back_by_the_api_server(
    tmp_path: Path, postgres_url: str, postgres_admin: Engine, broker_url: str
) -> None:
    """No worker: the task waits in the broker. Its cancel, recorded by the API server,
    is called back from there, once, and the delivery is recorded on the task."""
    receiver = Receiver([200])
    with (
        postgres_schema(postgres_url, postgres_admin) as url,
        broker_vhost(broker_url) as amqp,
        running_cluster(tmp_path, url, amqp, {}, **CALLBACKS) as lone,
    ):
        task = lone.submit({**SUMA, "callback_url": receiver.url})
        assert task["status"] == "queued"
        cancelled = lone.api.post(f"/v1/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert_called_back_once(receiver, task["id"])
        delivered = lone.until(
            task["id"], lambda t: (t["callback"] or {}).get("status") == "delivered"
        )
        assert delivered["callback"]["attempts"] == 1


def test_a_cancels_callback_left_by_a_killed_api_server_is_delivered_by_a_worker(
    tmp_path: Path, postgres_url: str, postgres_admin: Engine, broker_url: str
) -> None:
    """The API server that recorded a cancel is killed during its first attempt at the
    callback (held unanswered): a worker, taking the dead API server over, delivers it."""
    receiver = Receiver([HOLD, 200])
    with (
        postgres_schema(postgres_url, postgres_admin) as url,
        broker_vhost(broker_url) as amqp,
        running_cluster(tmp_path, url, amqp, {}, **CALLBACKS) as lone,
    ):
        task = lone.submit({**SUMA, "callback_url": receiver.url})
        cancelled = lone.api.post(f"/v1/tasks/{task['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        receiver.wait_for(1)
        lone.api_proc.kill()
        lone.api_proc.wait(timeout=10)
        receiver.released.set()

        lone.launch_worker(f"{os.environ['TAREA_SERVER_ID']}-late", {}, via_api=False)
        receiver.wait_for(2, timeout_s=LEASE_S * 2 + 30)
        headers, body, _ = receiver.calls[1]
        assert verify(SECRET.encode(), body, headers["X-Tarea-Signature"])
        called = json.loads(body)
        assert (called["id"], called["status"]) == (task["id"], "cancelled")
        deadline = time.monotonic() + 10
        while True:
            with lone.db.connect() as connection:
                state = connection.execute(
                    text("SELECT callback FROM tasks WHERE id = :id"), {"id": task["id"]}
                ).scalar_one()
            if state["status"] == "delivered" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert (state["status"], state["attempts"]) == ("delivered", 1)
        time.sleep(1.0)  # a third one, from anyone, would come within this
        assert len(receiver.calls) == 2


def _kill_mid_task(cluster: Cluster, body: dict[str, Any]) -> tuple[dict[str, Any], str, float]:
    """Submit ``body``; SIGKILL the worker running it; the task, that worker, the kill's time."""
    task = cluster.submit(body)
    # Its container started (a task claimed running has its id written a moment after).
    running = cluster.until(task["id"], lambda t: t["status"] == "running" and t["container"])
    victim = running["worker"]
    assert victim in worker_ids(cluster)
    time.sleep(0.5)  # well inside the call
    cluster.workers[victim].proc.kill()
    killed = time.monotonic()
    cluster.workers[victim].proc.wait(timeout=10)
    return running, victim, killed


def test_a_worker_killed_mid_task_has_it_run_again_on_the_other_within_five_seconds(
    cluster: Cluster,
) -> None:
    """SIGKILL the worker running an esperar whose policy retries worker_lost: the other
    worker runs its second attempt within 5 s; it succeeds; the first attempt is kept
    (worker_lost, on the dead worker); exactly one terminal status. Restarted with its id,
    the dead worker removes the container it left."""
    retry = {"retry": {"max_attempts": 2, "on": ["worker_lost"]}}
    running, victim, killed = _kill_mid_task(cluster, esperar(3, **retry))
    left_behind = running["container"]["id"]
    again = cluster.until(
        running["id"], lambda t: t["attempt"] == 2 and t["status"] != "queued", timeout_s=30
    )
    assert time.monotonic() - killed < 5.0, "the second attempt did not start within 5 s"
    assert again["worker"] != victim
    done = cluster.until(running["id"], lambda t: t["status"] in TERMINAL)
    assert done["status"] == "succeeded"
    assert done["attempt"] == 2
    assert [(a["attempt"], a["worker"], a["error"]["code"]) for a in done["attempts"]] == [
        (1, victim, "worker_lost")
    ]
    assert cluster.terminal_events(running["id"]) == ["succeeded"]

    # Its container may have ended by itself (its stdin closed with the process); if not,
    # the worker started again with its id removes it before it takes a task.
    cluster.start_worker(victim)
    assert left_behind not in labelled(victim)


def test_a_worker_killed_mid_task_without_a_retry_policy_ends_it_worker_lost(
    cluster: Cluster,
) -> None:
    """Without a retry policy the task ends failed, worker_lost, within 5 s of the kill,
    once: a single terminal status."""
    running, victim, killed = _kill_mid_task(cluster, esperar(30))
    done = cluster.until(running["id"], lambda t: t["status"] in TERMINAL, timeout_s=30)
    assert time.monotonic() - killed < 5.0, "the task was not settled within 5 s"
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    assert done["error"]["data"]["worker"] == victim
    assert done["attempt"] == 1
    assert cluster.terminal_events(running["id"]) == ["failed"]
    cluster.start_worker(victim)


def test_a_callback_under_way_on_a_killed_worker_is_delivered_by_whoever_takes_it_over(
    cluster: Cluster,
) -> None:
    """SIGKILL the worker during its first attempt at a callback (held unanswered by the
    receiver): the server that takes the worker over delivers it, once more, and
    records it delivered."""
    receiver = Receiver([HOLD, 200])
    task = cluster.submit({**SUMA, "callback_url": receiver.url}, wait="true")
    assert task["status"] == "succeeded"
    receiver.wait_for(1)
    victim = task["worker"]
    cluster.stop_worker(victim, signal.SIGKILL)
    receiver.released.set()
    try:
        receiver.wait_for(2, timeout_s=LEASE_S + 20)
        headers, body, _ = receiver.calls[1]
        assert verify(SECRET.encode(), body, headers["X-Tarea-Signature"])
        called = json.loads(body)
        assert (called["id"], called["status"]) == (task["id"], "succeeded")
        delivered = cluster.until(
            task["id"], lambda t: (t["callback"] or {}).get("status") == "delivered"
        )
        assert delivered["callback"]["attempts"] == 1
        time.sleep(1.0)  # a third one, from anyone, would come within this
        assert len(receiver.calls) == 2
    finally:
        cluster.start_worker(victim)


def test_tasks_accepted_while_rabbitmq_is_down_run_when_it_returns(cluster: Cluster) -> None:
    """RabbitMQ stopped: the API still accepts (202; ?wait=true times out as usual,
    answering the task queued). Once RabbitMQ is back, the workers reconnect by themselves
    and every task accepted meanwhile succeeds, each attempt published once."""
    subprocess.run(["service", "rabbitmq-server", "stop"], capture_output=True, check=True)
    try:
        accepted = [cluster.submit({**SUMA, "params": {"a": i, "b": 1}}) for i in range(5)]
        assert {task["status"] for task in accepted} == {"queued"}
        waited = cluster.api.post("/v1/tasks", json=SUMA, params={"wait": "true"})
        assert waited.status_code == 202, waited.text  # ?wait=true times out as usual
        accepted.append(waited.json())
        # The workers' heartbeats tell they stopped consuming (their processes live on).
        _until_workers(cluster, lambda w: w["consuming"] is False and w["alive"])
        assert {cluster.get(t["id"])["status"] for t in accepted} == {"queued"}
    finally:
        subprocess.run(["service", "rabbitmq-server", "start"], capture_output=True, check=True)
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, check=True)
    for task in accepted:
        done = cluster.until(task["id"], lambda t: t["status"] in TERMINAL, timeout_s=120)
        assert done["status"] == "succeeded", done
        assert done["result"] == task["params"]["a"] + task["params"]["b"]
    _until_workers(cluster, lambda w: w["consuming"] is True)
    with cluster.db.connect() as connection:
        published = connection.execute(
            text("SELECT task_id, count(*) FROM publications GROUP BY task_id")
        ).all()
    counts = dict((task_id, n) for task_id, n in published)
    assert all(counts.get(t["id"]) == 1 for t in accepted), counts
    # The workers consume again: a new task runs at once.
    assert cluster.submit(SUMA, wait="true")["status"] == "succeeded"


def test_rabbitmq_restarted_under_load_every_task_ends_once(cluster: Cluster) -> None:
    """RabbitMQ restarted while the workers run tasks (their messages unacknowledged):
    every task succeeds on its first attempt with one terminal status, though RabbitMQ
    hands the running tasks' messages out again (a live worker has them: no second run)."""
    accepted = [cluster.submit(esperar(3)) for _ in range(6)]
    cluster.until(accepted[0]["id"], lambda t: t["status"] == "running")
    subprocess.run(["service", "rabbitmq-server", "restart"], capture_output=True, check=True)
    subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True, check=True)
    for task in accepted:
        done = cluster.until(task["id"], lambda t: t["status"] in TERMINAL, timeout_s=60)
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 1
        assert cluster.terminal_events(task["id"]) == ["succeeded"]
    _until_workers(cluster, lambda w: w["consuming"] is True)
    assert cluster.submit(SUMA, wait="true")["status"] == "succeeded"


def test_postgresql_restarted_under_load_every_task_ends_once(cluster: Cluster) -> None:
    """PostgreSQL restarted while the workers run tasks: every accepted task succeeds on
    its first attempt with one terminal status, and no worker is taken over for the outage
    (they reconnect by themselves)."""
    accepted = [cluster.submit(esperar(1.5)) for _ in range(8)]
    restart_postgres()
    ends = []
    for task in accepted:
        deadline = time.monotonic() + 90
        while True:
            try:
                response = cluster.api.get(f"/v1/tasks/{task['id']}")
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 200:
                if response.json()["status"] in TERMINAL:
                    ends.append(response.json())
                    break
            else:
                assert response is None or response.status_code == 503, response.text
            assert time.monotonic() < deadline, f"task {task['id']} never ended"
            time.sleep(0.1)
    assert [t["status"] for t in ends] == ["succeeded"] * len(accepted)
    assert {t["attempt"] for t in ends} == {1}
    for task in accepted:
        assert cluster.terminal_events(task["id"]) == ["succeeded"]
    servers = cluster.api.get("/v1/servers").json()["items"]
    assert all(s["taken_over_by"] is None for s in servers if s["id"] in worker_ids(cluster))
    assert cluster.submit(SUMA, wait="true")["status"] == "succeeded"


def test_an_api_server_killed_loses_nothing_and_the_workers_go_on(cluster: Cluster) -> None:
    """A second API server accepts tasks and is killed with SIGKILL while they run: every
    one of them ends succeeded (read through the first API server), and the workers go on."""
    base = os.environ["TAREA_SERVER_ID"]
    proc, address = start_server(
        {**cluster.env, "TAREA_SERVER_ID": f"{base}-api-2"}, cluster.tmp / "api-2.log"
    )
    try:
        with httpx.Client(base_url=address, timeout=60) as second:
            accepted = []
            for _ in range(6):
                response = second.post("/v1/tasks", json=esperar(1))
                assert response.status_code == 202, response.text
                accepted.append(response.json())
        proc.kill()
        proc.wait(timeout=10)
        for task in accepted:
            done = cluster.until(task["id"], lambda t: t["status"] in TERMINAL, timeout_s=60)
            assert done["status"] == "succeeded", done
        assert cluster.submit(SUMA, wait="true")["status"] == "succeeded"
    finally:
        if proc.poll() is None:
            proc.kill()


def _until_workers(
    cluster: Cluster, check: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> None:
    """Poll GET /v1/workers until ``check`` holds for every running worker."""
    deadline = time.monotonic() + timeout_s
    while True:
        items = [
            w
            for w in cluster.api.get("/v1/workers").json()["items"]
            if w["id"] in worker_ids(cluster)
        ]
        if items and all(check(w) for w in items):
            return
        assert time.monotonic() < deadline, f"never held: {items}"
        time.sleep(0.2)


def test_sigterm_drains_a_worker_its_running_task_finishes(cluster: Cluster) -> None:
    """SIGTERM on the worker running an esperar: it takes nothing new, the task finishes
    (succeeded), and the worker exits; the other worker goes on."""
    task = cluster.submit(esperar(3))
    running = cluster.until(task["id"], lambda t: t["status"] == "running" and t["container"])
    victim = running["worker"]
    cluster.workers[victim].proc.send_signal(signal.SIGTERM)
    code = cluster.stop_worker(victim, timeout=60)
    assert code == 0, cluster.workers[victim].log.read_text()
    done = cluster.get(task["id"])
    assert done["status"] == "succeeded", done
    assert done["worker"] == victim
    after = cluster.submit(SUMA, wait="true")
    assert after["status"] == "succeeded"
    assert after["worker"] != victim
    cluster.start_worker(victim)


#: Four images with distinct ids (tasks_image plus a label): four warm pools per worker.
ROUTE_IMAGES = [f"tarea-test-route-{n}:latest" for n in range(4)]


@pytest.fixture(scope="module")
def route_images(tasks_image: str) -> list[str]:
    """The four images, built from tasks_image here (a label apart: each its own id)."""
    for n, reference in enumerate(ROUTE_IMAGES):
        built = subprocess.run(
            ["docker", "build", "-q", "-t", reference, "-"],
            input=f"FROM {tasks_image}\nLABEL io.tarea.test.route={n}\n",
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stderr
    return ROUTE_IMAGES


def pool_counters(cluster: Cluster) -> dict[str, int]:
    """The workers' pool counters summed (GET /v1/pools), once their reports are fresh."""
    time.sleep(2.5)  # a worker reports with every beat (at most 2 s apart)
    counters: dict[str, int] = cluster.api.get("/v1/pools").json()["counters"]
    return counters


def test_tasks_go_where_a_warm_container_waits_over_ninety_percent_of_them(
    cluster: Cluster, route_images: list[str]
) -> None:
    """Two workers, four images, a mixed load (four clients, a random image each call):
    at least 90% of the tasks find a warm container, because the API routes each task to a
    worker that reported one for its (tenant, image, limits)."""
    before = pool_counters(cluster)
    rng = random.Random(11)
    plan = [[rng.choice(route_images) for _ in range(40)] for _ in range(4)]
    failures: list[str] = []

    def client(images: list[str]) -> None:
        for image in images:
            task = cluster.submit({**SUMA, "image": image}, wait="true")
            if task["status"] != "succeeded":
                failures.append(str(task))

    threads = [threading.Thread(target=client, args=(images,)) for images in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:3]
    after = pool_counters(cluster)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "stem_hits", "misses")}
    taken = sum(delta.values())
    assert taken == 160, delta
    ratio = delta["hits"] / taken
    routing = cluster.api.get("/v1/pools").json().get("routing", {})
    print(f"\nwarm hits: {delta['hits']}/{taken} = {ratio:.1%}; routing {routing}")
    assert ratio >= 0.9, f"only {ratio:.1%} warm hits: {delta}"


def test_a_worker_on_a_second_docker_engine_pulls_the_image_from_a_local_registry(
    tasks_image: str,
    postgres_url: str,
    postgres_admin: Engine,
    broker_url: str,
    local_registry: str,
    private_dockerd: PrivateDockerd,
    tmp_path: Path,
) -> None:
    """Two hosts for real on one machine: worker A on the main engine, worker B on a second
    dockerd (its own data root, exec root and socket). The task image is pushed to a local
    registry and named by its registry reference; B's engine pulls it, and tasks run on both."""
    reference = f"{local_registry}/tarea-workers/tasks:{os.getpid()}"
    docker("tag", tasks_image, reference)
    pushed = docker("push", "-q", reference, check=False)
    assert pushed.returncode == 0, pushed.stderr
    assert private_dockerd.docker("image", "inspect", reference, check=False).returncode != 0
    base = os.environ["TAREA_SERVER_ID"]
    a, b = f"{base}-main", f"{base}-second"
    workers = {
        a: {"TAREA_CONCURRENCY": "1"},
        b: {"TAREA_CONCURRENCY": "1", "TAREA_DOCKER_HOST": private_dockerd.host},
    }
    try:
        with (
            postgres_schema(postgres_url, postgres_admin) as url,
            broker_vhost(broker_url) as amqp,
            running_cluster(tmp_path, url, amqp, workers) as two,
        ):
            engines = {w["id"]: w["engine"] for w in two.api.get("/v1/workers").json()["items"]}
            assert set(engines) == {a, b}
            results: list[dict[str, Any]] = []

            def one() -> None:
                body = esperar(1)
                results.append(two.submit({**body, "image": reference}, wait="true"))

            threads = [threading.Thread(target=one) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
            assert [t["status"] for t in results] == ["succeeded"] * 6, results
            assert {t["worker"] for t in results} == {a, b}
            # B's engine pulled the image from the registry, and B's containers are there.
            assert private_dockerd.docker("image", "inspect", reference).returncode == 0
            assert private_dockerd.containers(f"label=io.tarea.server={b}")
            assert not labelled(b), "B's containers are on the second engine only"
    finally:
        docker("rmi", reference, check=False)
