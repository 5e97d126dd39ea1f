"""Running one task in one container, start to finish, with either protocol."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from tarea.domain.task import ErrorInfo, Outcome, Protocol, TaskSpec, Timings
from tarea.engine import images
from tarea.engine.docker import DockerEngine
from tarea.engine.protocols import seed_http
from tarea.engine.protocols.jsonrpc import JsonRpcChannel, LogCallback, ProgressCallback
from tarea.engine.sandbox import SandboxPolicy, container_config
from tarea.errors import ContainerCrashed, TaskFailure

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 2.0


class Engine:
    """Starts hardened task containers and talks to them.

    Args:
        docker: the Docker engine boundary.
        policy: the server's sandbox settings.
        start_timeout_s: how long a container may take to become ready.
        log_cap: how much of a task's stderr to keep, in bytes.
    """

    def __init__(
        self,
        docker: DockerEngine,
        policy: SandboxPolicy,
        *,
        start_timeout_s: float = 30.0,
        log_cap: int = 1024 * 1024,
    ) -> None:
        self.docker = docker
        self.policy = policy
        self.start_timeout_s = start_timeout_s
        self.log_cap = log_cap
        self._http = httpx.AsyncClient(trust_env=False)
        self._seed_network_ready = False
        self._cleanups: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Finish pending container removals and release connections."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self._http.aclose()

    async def run(
        self,
        spec: TaskSpec,
        *,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a fresh container; never raises for a task's failure.

        Raises:
            InvalidImageReference: the image name is malformed (a client error).
            EngineUnavailable: the Docker engine does not answer.
        """
        try:
            resolved = await images.resolve(self.docker, spec.image, spec.auth)
        except TaskFailure as failure:
            return Outcome(error=_error_info(failure))
        if resolved.protocol is Protocol.JSONRPC_STDIO:
            return await self._run_stdio(spec, resolved, on_progress, on_log)
        return await self._run_seed_http(spec, resolved)

    # -- JSON-RPC over stdio ------------------------------------------------------

    async def _run_stdio(
        self,
        spec: TaskSpec,
        resolved: images.ResolvedImage,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Outcome:
        config = container_config(
            image=resolved.info.id,
            protocol=resolved.protocol,
            image_user=resolved.info.user,
            limits=spec.limits,
            policy=self.policy,
            task_id=spec.task_id,
        )
        t0 = time.perf_counter()
        cid = await self.docker.create(config)
        channel: JsonRpcChannel | None = None
        t_ready = t0
        try:
            stdio = await self.docker.attach_stdio(cid)
            channel = await JsonRpcChannel.open(
                stdio.sock,
                output_cap=spec.limits.output_kb * 1024,
                log_cap=self.log_cap,
                on_log=on_log,
            )
            await self.docker.start(cid)
            await channel.wait_ready(self.start_timeout_s)
            t_ready = time.perf_counter()
            result = await channel.call(
                spec.task_id or cid[:12],
                spec.function,
                spec.params,
                timeout_s=spec.limits.timeout_s,
                on_progress=on_progress,
            )
            t_done = time.perf_counter()
            await channel.close_stdin()
            exit_code = None
            if await channel.wait_eof(_EXIT_GRACE_S):
                exit_code = await self.docker.wait(cid, _EXIT_GRACE_S)
            return Outcome(
                result=result,
                container_id=cid,
                exit_code=exit_code,
                logs=channel.logs.take(),
                timings=_timings(t0, t_ready, t_done),
            )
        except TaskFailure as failure:
            t_done = time.perf_counter()
            error, exit_code = await self._explain(cid, failure, channel)
            return Outcome(
                error=error,
                container_id=cid,
                exit_code=exit_code,
                logs=channel.logs.take() if channel else "",
                timings=_timings(t0, t_ready, t_done),
            )
        finally:
            if channel is not None:
                channel.close()
            self._remove_later(cid)

    async def _explain(
        self, cid: str, failure: TaskFailure, channel: JsonRpcChannel | None
    ) -> tuple[ErrorInfo, int | None]:
        """Complete a failure with what the engine knows: exit code, OOM kill."""
        if not isinstance(failure, ContainerCrashed):
            return _error_info(failure), None
        exit_code = await self.docker.wait(cid, _EXIT_GRACE_S)
        state = await self.docker.state(cid)
        tail = channel.logs.take()[-2000:] if channel else ""
        if state.oom_killed:
            return ErrorInfo(
                "oom_killed",
                "the task ran out of memory and was killed",
                {"exit_code": exit_code},
            ), exit_code
        return ErrorInfo(
            "crashed",
            f"the task process exited with code {exit_code} before answering",
            {"exit_code": exit_code, "stderr_tail": tail},
        ), exit_code

    # -- the seed's HTTP contract -----------------------------------------------

    async def _run_seed_http(self, spec: TaskSpec, resolved: images.ResolvedImage) -> Outcome:
        if not self._seed_network_ready:
            await self.docker.ensure_network(self.policy.seed_network, internal=True)
            self._seed_network_ready = True
        config = container_config(
            image=resolved.info.id,
            protocol=resolved.protocol,
            image_user=resolved.info.user,
            limits=spec.limits,
            policy=self.policy,
            task_id=spec.task_id,
        )
        t0 = time.perf_counter()
        cid = await self.docker.create(config)
        t_ready = t0
        try:
            await self.docker.start(cid)
            address = await self.docker.container_address(cid, self.policy.seed_network)
            base_url = f"http://{address}:{seed_http.SEED_PORT}"
            await seed_http.wait_ready(self._http, base_url, self.start_timeout_s)
            t_ready = time.perf_counter()
            result = await seed_http.execute(
                self._http, base_url, spec.function, spec.params, timeout_s=spec.limits.timeout_s
            )
            return Outcome(
                result=result,
                container_id=cid,
                timings=_timings(t0, t_ready, time.perf_counter()),
            )
        except TaskFailure as failure:
            state = await self.docker.state(cid)
            error = _error_info(failure)
            if state.oom_killed:
                error = ErrorInfo("oom_killed", "the task ran out of memory and was killed")
            elif not state.running and error.code == "timed_out":
                error = ErrorInfo(
                    "crashed",
                    f"the seed task service exited with code {state.exit_code}",
                    {"exit_code": state.exit_code},
                )
            return Outcome(
                error=error,
                container_id=cid,
                exit_code=state.exit_code,
                timings=_timings(t0, t_ready, time.perf_counter()),
            )
        finally:
            self._remove_later(cid)

    # -- housekeeping ---------------------------------------------------------------

    def _remove_later(self, cid: str) -> None:
        """Remove the container off the answer's path; awaited on shutdown."""
        task = asyncio.create_task(self._remove(cid))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _remove(self, cid: str) -> None:
        try:
            await self.docker.remove(cid)
        except Exception:  # a leftover is removed by label at the next start-up
            log.warning("could not remove task container %s", cid[:12], exc_info=True)

    async def settle(self) -> None:
        """Wait until every container removal scheduled so far has finished."""
        while self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)


def _error_info(failure: TaskFailure) -> ErrorInfo:
    return ErrorInfo(failure.code, failure.message, dict(failure.data))


def _timings(t0: float, t_ready: float, t_done: float) -> Timings:
    return Timings(start_ms=(t_ready - t0) * 1000, run_ms=(t_done - t_ready) * 1000)
