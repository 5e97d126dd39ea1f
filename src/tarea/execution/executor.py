"""Running tasks in containers: image, container from the pool, call, outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tarea.domain.images import parse_reference
from tarea.domain.task import (
    ErrorInfo,
    Limits,
    Outcome,
    Protocol,
    RegistryAuth,
    TaskSpec,
    Timings,
)
from tarea.errors import (
    ContainerCrashed,
    EngineUnavailable,
    ImageNotFound,
    InvalidRequest,
    OomKilled,
    TareaError,
    TaskFailure,
    TaskTimeout,
)
from tarea.execution import images
from tarea.execution.channels import ChannelDir, ChannelListener
from tarea.execution.containers import (
    PoolKey,
    SeedHttpContainer,
    StdioContainer,
    StemKey,
    TaskContainer,
)
from tarea.execution.docker import DockerEngine
from tarea.execution.imagegc import ImageCache
from tarea.execution.pool import PoolLimits, WarmPool
from tarea.execution.protocols import seed_http
from tarea.execution.protocols.attach import AttachedOutput
from tarea.execution.protocols.jsonrpc import JsonRpcChannel, LogCallback, ProgressCallback
from tarea.execution.sandbox import (
    MANAGED_LABEL,
    SERVER_LABEL,
    ContainerConfig,
    Profile,
    SandboxPolicy,
    choose_profile,
    container_config,
)
from tarea.execution.watch import EngineWatch
from tarea.execution.writable import WritableWatch

log = logging.getLogger(__name__)

_EXIT_GRACE_S = 2.0
#: How long past its ``timeout_s`` a task may take in all, its container's start
#: included: a start within this grace leaves the call its whole ``timeout_s``.
START_GRACE_S = 2.0
#: How much of a crashed task's output its error carries.
_TAIL_CHARS = 2000
#: Failures after which the container is still sound (the task said no, cleanly).
_REUSABLE_AFTER = frozenset({"unknown_function", "bad_params", "task_error"})

#: Called once the task has a container; False means "abandon the task".
StartCallback = Callable[[str], Awaitable[bool]]


class Executor:
    """Runs tasks in hardened containers, reusing them through a :class:`WarmPool`.

    Args:
        docker: the Docker engine boundary.
        policy: the server's sandbox settings.
        start_timeout_s: the longest a container may take to become ready: the
            bound of starts no task waits for (stem cells, prewarmed ones), and
            a cap on a task's own, which its ``timeout_s`` bounds first (see
            :meth:`run`).
        start_grace_s: how far past its ``timeout_s`` a task's start and call
            may go together (see :meth:`run`).
        log_cap: how much of a task's stderr to keep, in bytes.
        pool_limits: caps and idle time of the warm pool.
        image_cache_s: how long a resolved image is trusted without asking Docker.
        registry_logins: the server's credentials per registry host, for pulls.
        pull_timeout_s: the longest one image pull may take.
        channels: where direct channels are made (None: every call goes over
            the attach stream). See :mod:`tarea.execution.channels`.
        strict_images: glob patterns of seed-HTTP images forced into the
            strict profile (see :func:`~tarea.execution.sandbox.choose_profile`).
        writable_mb: the most a container with a writable root may write to
            it before it is stopped (see :mod:`tarea.execution.writable`).
        writable_check_s: how often those containers are measured.
        image_cache_mb: the most the images tarea pulled may take, MiB (0:
            no bound); see :mod:`tarea.execution.imagegc`.
        image_gc_interval_s: how often they are measured, besides after pulls.
        image_state: the file that records them across restarts (None: in
            memory only).
        keep_images: references whose images are never removed (prewarmed).
        engine_wait_s: how long a task waits for a Docker engine that went
            away to answer again before it ends ``engine_unavailable`` (at
            most its ``timeout_s``); see :mod:`tarea.execution.watch`.
    """

    def __init__(
        self,
        docker: DockerEngine,
        policy: SandboxPolicy,
        *,
        start_timeout_s: float = 30.0,
        start_grace_s: float = START_GRACE_S,
        log_cap: int = 1024 * 1024,
        pool_limits: PoolLimits | None = None,
        image_cache_s: float = 10.0,
        registry_logins: dict[str, RegistryAuth] | None = None,
        pull_timeout_s: float = 300.0,
        channels: ChannelDir | None = None,
        strict_images: list[str] | None = None,
        writable_mb: int = 256,
        writable_check_s: float = 1.0,
        image_cache_mb: int = 0,
        image_gc_interval_s: float = 300.0,
        image_state: Path | None = None,
        keep_images: Iterable[str] = (),
        engine_wait_s: float = 30.0,
    ) -> None:
        self.docker = docker
        self.policy = policy
        self.start_timeout_s = start_timeout_s
        self.start_grace_s = start_grace_s
        self.log_cap = log_cap
        self.pool = WarmPool(self._remove, pool_limits or PoolLimits())
        self._image_cache_s = image_cache_s
        self._logins = registry_logins or {}
        self._pull_timeout_s = pull_timeout_s
        self.channels = channels
        self.strict_images = strict_images or []
        self.writable = WritableWatch(docker, writable_mb, writable_check_s)
        self._images: dict[str, tuple[float, images.ResolvedImage]] = {}
        self.image_cache = ImageCache(
            docker,
            cap_mb=image_cache_mb,
            interval_s=image_gc_interval_s,
            state_path=image_state,
            keep=keep_images,
            forget=self._forget_image,
        )
        self._http = httpx.AsyncClient(trust_env=False)
        self._seed_network_ready = False
        #: Removals of containers whose creation was abandoned (see :meth:`_create`).
        self._orphans: set[asyncio.Task[None]] = set()
        self.engine_wait_s = engine_wait_s
        #: The engine's ups and downs, and the containers its shutdown stopped.
        self.watch = EngineWatch(
            docker, {MANAGED_LABEL: "true", **policy.extra_labels}, self._engine_back
        )
        #: Containers whose removal failed because the engine did not answer:
        #: removed when it is back (:meth:`_engine_back`).
        self._unremoved: set[str] = set()

    def start(self) -> None:
        """Start the pool's housekeeping, the writable layers' watch, the image cache's
        and the engine's watch."""
        self.watch.start()
        self.pool.start()
        self.writable.start()
        self.image_cache.start()

    async def aclose(self) -> None:
        """Remove every pooled container and release connections."""
        await self.watch.aclose()
        await self.image_cache.aclose()
        await self.writable.aclose()
        await self.pool.aclose()
        await self.join_background()
        await self._http.aclose()

    async def join_background(self) -> None:
        """Wait until every container removal scheduled so far has finished."""
        await self.pool.join_background()
        while self._orphans:
            await asyncio.gather(*list(self._orphans), return_exceptions=True)

    async def ping(self) -> None:
        """Check that the Docker engine answers (raises EngineUnavailable)."""
        await self.docker.ping()

    def stats(self) -> dict[str, Any]:
        """The warm pool's sizes and counters."""
        return self.pool.stats()

    async def remove_containers(self, server_id: str) -> int:
        """Remove every task container the server ``server_id`` started here; how many."""
        removed = await self.docker.remove_labelled(
            {MANAGED_LABEL: "true", SERVER_LABEL: server_id}
        )
        return len(removed)

    # -- images ------------------------------------------------------------------------

    async def resolve(self, reference: str, spec: TaskSpec | None = None) -> images.ResolvedImage:
        """The image, pulled if needed; cached for a few seconds (no Docker call on a hit).

        Each resolve counts as a use of the image (in memory); a pull is
        recorded for the image cache, which then collects in the background.
        """
        now = time.monotonic()
        cached = self._images.get(reference)
        if cached is not None and cached[0] > now:
            self.image_cache.touch(cached[1].info.id)
            return cached[1]
        resolved = await images.resolve(
            self.docker,
            reference,
            spec.auth if spec else None,
            self._logins,
            pull_timeout_s=self._pull_timeout_s,
        )
        self._images[reference] = (now + self._image_cache_s, resolved)
        if resolved.pulled:
            await self.image_cache.record(resolved)
        else:
            self.image_cache.touch(resolved.info.id)
        return resolved

    async def resolve_local(self, reference: str) -> images.ResolvedImage | None:
        """The image if it is local (cached like :meth:`resolve`), else None: never pulls."""
        now = time.monotonic()
        cached = self._images.get(reference)
        if cached is not None and cached[0] > now:
            return cached[1]
        resolved = await images.inspect_local(self.docker, reference)
        if resolved is not None:
            self._images[reference] = (now + self._image_cache_s, resolved)
        return resolved

    def ready_now(
        self, reference: str, tenant: str, limits: Mapping[str, Any], *, fresh: bool
    ) -> bool:
        """Whether a task of ``tenant`` on ``reference`` would have a container at once.

        Asks no one (no Docker call): the image was resolved within the last
        few seconds, the engine is up, and the pool holds a container for it
        (an idle one of that key, unless ``fresh``, or a never-used one).
        Another task may still take it first.
        """
        cached = self._images.get(reference)
        if cached is None or cached[0] <= time.monotonic() or not self.watch.up:
            return False
        key = PoolKey(tenant, cached[1].info.id, Limits(**limits))
        return self.pool.has_ready(key, fresh=fresh)

    def _forget_image(self, image_id: str) -> None:
        """Drop the resolved images cached for ``image_id`` (it is being removed)."""
        for reference, (_, resolved) in list(self._images.items()):
            if resolved.info.id == image_id:
                del self._images[reference]

    async def prewarm(self, reference: str, count: int, limits: Limits) -> None:
        """Keep ``count`` never-used containers of ``reference`` ready from now on."""
        resolved = await self.resolve(reference)
        self.image_cache.keep_image(reference, resolved.info.id)
        stem = StemKey(resolved.info.id, limits)
        self.pool.prewarm(stem, count, lambda: self.launch(resolved, limits))

    # -- running -----------------------------------------------------------------------

    async def run(
        self,
        spec: TaskSpec,
        *,
        on_start: StartCallback | None = None,
        on_progress: ProgressCallback | None = None,
        on_log: LogCallback | None = None,
    ) -> Outcome:
        """Run ``spec`` in a pooled (or, if ``isolation`` says so, fresh) container.

        The task's ``timeout_s`` bounds the whole call, its container's start
        included, plus :attr:`start_grace_s`: a container not ready by then
        ends the task ``timed_out`` (``phase: "start"``), and a start longer
        than the grace shortens the call. The image's resolution (a pull)
        comes first and is bounded apart, by ``pull_timeout_s``.

        Never raises for a task's failure: the outcome carries it. Raises
        InvalidImageReference for a malformed name and EngineUnavailable when
        Docker does not answer. While an engine that answered before is away
        (restarting, say), the task first waits up to ``engine_wait_s`` (and
        its ``timeout_s``) for it to answer again.
        """
        if not self.watch.up and self.watch.was_up:
            wait_s = min(self.engine_wait_s, spec.limits.timeout_s)
            if not await self.watch.wait_up(wait_s):
                raise EngineUnavailable(
                    f"the Docker engine went away and did not answer again within {wait_s:g} s"
                )
        try:
            return await self._run(spec, on_start, on_progress, on_log)
        except EngineUnavailable:
            self.watch.suspect()
            raise

    async def _run(
        self,
        spec: TaskSpec,
        on_start: StartCallback | None,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Outcome:
        """:meth:`run`, the engine known to answer."""
        t0 = time.perf_counter()
        try:
            resolved = await self.resolve(spec.image, spec)
        except TaskFailure as failure:
            return Outcome(error=_error_info(failure))
        fresh = spec.isolation == "fresh"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.limits.timeout_s + self.start_grace_s
        try:
            container = await self._acquire(spec, resolved, fresh=fresh, deadline=deadline)
        except TaskFailure as failure:
            return Outcome(error=_error_info(failure), timings=_timings(t0, time.perf_counter()))
        t_ready = time.perf_counter()
        reusable = False
        budget = spec.limits.timeout_s
        try:
            if on_start is not None and not await on_start(container.id):
                reusable = not fresh
                return Outcome(container_id=container.id, error=ErrorInfo("cancelled", "abandoned"))
            budget = min(budget, deadline - loop.time())
            if budget <= 0:  # the time ran out before the call: the container is untouched
                reusable = not fresh
                return Outcome(
                    container_id=container.id,
                    error=_error_info(self._start_timeout(spec.limits)),
                    timings=_timings(t0, t_ready),
                )
            result = await container.call(
                spec.task_id or container.id[:12],
                spec.function,
                spec.params,
                timeout_s=budget,
                on_progress=on_progress,
                on_log=on_log,
            )
            reusable = not fresh
            await container.flush_logs()
            return Outcome(
                result=result,
                container_id=container.id,
                logs=container.take_logs(),
                timings=_timings(t0, t_ready),
            )
        except TaskFailure as failure:
            t_done = time.perf_counter()
            reusable = not fresh and failure.code in _REUSABLE_AFTER and not container.broken
            if not isinstance(failure, ContainerCrashed):  # a crash's stream already ended
                await container.flush_logs(failed=True)
            try:
                error, exit_code = await self._explain(container, failure)
            except EngineUnavailable as exc:  # the engine went with the container
                self.watch.suspect()
                error, exit_code = ErrorInfo(exc.code, exc.message, {}), None
            if error.code == "timed_out" and budget < spec.limits.timeout_s:
                error = self._shortened_timeout(error, spec.limits, budget)
            return Outcome(
                error=error,
                container_id=container.id,
                exit_code=exit_code,
                logs=container.take_logs(),
                timings=_timings(t0, t_ready, t_done),
            )
        finally:
            if reusable and container.profile is Profile.SEED_COMPAT:
                # Measured (about 2 ms) before it can serve anyone else. Measuring
                # off the answer's path would leave it out of the pool meanwhile,
                # and a client's next call would pay a container start.
                reusable = await self.writable.check(container)
            await self.pool.release(container, reusable=reusable)

    async def _acquire(
        self,
        spec: TaskSpec,
        resolved: images.ResolvedImage,
        *,
        fresh: bool,
        deadline: float,
    ) -> TaskContainer:
        """A container of ``resolved`` for ``spec`` from the pool, ready by ``deadline``.

        An image removed after it was resolved (by another server's image
        cache, or by hand) is resolved, so pulled, once more.

        Raises:
            TaskTimeout: no container was ready by ``deadline`` (``phase: "start"``).
            TaskFailure: the container's start failed.
        """
        try:
            return await self._acquire_pinned(spec, resolved, fresh=fresh, deadline=deadline)
        except ImageNotFound:
            log.info("image %s went before its container started: pulling it again", spec.image)
            self._forget_image(resolved.info.id)
            resolved = await self.resolve(spec.image, spec)
            return await self._acquire_pinned(spec, resolved, fresh=fresh, deadline=deadline)

    async def _acquire_pinned(
        self,
        spec: TaskSpec,
        resolved: images.ResolvedImage,
        *,
        fresh: bool,
        deadline: float,
    ) -> TaskContainer:
        """A container for ``spec``, ready by ``deadline`` (loop time).

        A warm container comes at once, with no timer armed and nothing pinned
        (the hottest path: its container keeps its image in use). A start (or a
        wait for room in the pool) still under way at the deadline is
        abandoned, and its container removed; meanwhile the image cache leaves
        the image alone.
        """
        key = PoolKey(spec.tenant, resolved.info.id, spec.limits)
        if not fresh:
            container = self.pool.take_warm(key)
            if container is not None:
                return container
        self.image_cache.pin(resolved.info.id)
        bound = asyncio.timeout_at(deadline)  # a timer, no task
        try:
            async with bound:
                return await self.pool.acquire(
                    key, lambda: self.launch(resolved, key.limits), fresh=fresh
                )
        except TimeoutError:
            if not bound.expired():
                raise
            raise self._start_timeout(key.limits) from None
        finally:
            self.image_cache.unpin(resolved.info.id)

    def _start_timeout(self, limits: Limits) -> TaskTimeout:
        """The failure of a task whose container was not ready within the task's time."""
        return TaskTimeout(
            "the task container was not ready within the task's timeout "
            f"({limits.timeout_s:g} s, plus {self.start_grace_s:g} s of start grace)",
            data={
                "phase": "start",
                "timeout_s": limits.timeout_s,
                "start_grace_s": self.start_grace_s,
            },
        )

    def _shortened_timeout(self, error: ErrorInfo, limits: Limits, budget: float) -> ErrorInfo:
        """A call's timeout, told against the task's whole time, which its start shortened
        (the call had ``budget`` seconds of it)."""
        start_s = limits.timeout_s + self.start_grace_s - budget
        return ErrorInfo(
            error.code,
            f"the task did not finish within its timeout ({limits.timeout_s:g} s, plus "
            f"{self.start_grace_s:g} s of start grace): its container took {start_s:.2f} s "
            "to start",
            {
                **error.data,
                "timeout_s": limits.timeout_s,
                "start_grace_s": self.start_grace_s,
                "start_s": round(start_s, 3),
            },
        )

    async def _explain(
        self, container: TaskContainer, failure: TaskFailure
    ) -> tuple[ErrorInfo, int | None]:
        """Complete a failure with what the engine knows: exit code, OOM kill."""
        if container.stopped is not None:  # the engine stopped it: that is the cause
            return _error_info(container.stopped), await self.docker.wait(
                container.id, _EXIT_GRACE_S
            )
        if not isinstance(failure, ContainerCrashed) and not (
            container.protocol is Protocol.SEED_HTTP and failure.code == "protocol_error"
        ):
            return _error_info(failure), None
        container.failed = True
        exit_code = await self.docker.wait(container.id, _EXIT_GRACE_S)
        state = await self.docker.state(container.id)
        if state.oom_killed:
            oom = OomKilled(
                "the task ran out of memory and was killed", data={"exit_code": exit_code}
            )
            return _error_info(oom), exit_code
        ended_with = exit_code if exit_code is not None else state.exit_code
        stop_signal = await self.watch.outside_stop(container.id, ended_with)
        if stop_signal is not None and await self.watch.stopped_by_shutdown(container.id):
            exit_code = ended_with
            return _engine_stopped(exit_code, stop_signal, "mid-call"), exit_code
        if exit_code is None:  # still running: it was the protocol, not a crash
            return _error_info(failure), None
        tail = container.take_logs()[-_TAIL_CHARS:]
        return ErrorInfo(
            "crashed",
            f"the task process exited with code {exit_code} before answering",
            {"exit_code": exit_code, "stderr_tail": tail},
        ), exit_code

    # -- containers --------------------------------------------------------------------

    async def launch(self, resolved: images.ResolvedImage, limits: Limits) -> TaskContainer:
        """Create, start and wait for a new container until it is ready for calls.

        Raises:
            ContainerCrashed: it exited (or was killed) before it was ready; its
                exit code and the tail of its output are in the data.
            TaskTimeout: it was not ready within the start timeout.
        """
        if resolved.protocol is Protocol.SEED_HTTP and not self._seed_network_ready:
            await self.docker.ensure_network(self.policy.seed_network, internal=True)
            self._seed_network_ready = True
        stdio = resolved.protocol is Protocol.JSONRPC_STDIO
        profile = self._profile(resolved)
        listener = self._listen() if stdio else None
        config = container_config(
            image=resolved.info.id,
            protocol=resolved.protocol,
            image_user=resolved.info.user,
            limits=limits,
            policy=self.policy,
            channel_dir=listener.mount_source if listener is not None else None,
            profile=profile,
        )
        stem = StemKey(resolved.info.id, limits)
        try:
            cid = await self._create(config)
        except BaseException as exc:
            if listener is None:
                raise
            listener.close()
            if not (isinstance(exc, TaskFailure) and _mount_refused(exc)):
                raise
            # The engine does not see our directory (a server in a container
            # of its own, say): no direct channels from now on.
            log.warning("direct channels are off, calls use the attach stream: %s", exc.message)
            self.channels = None
            return await self.launch(resolved, limits)
        channel: JsonRpcChannel | None = None
        output: AttachedOutput | None = None
        try:
            if stdio:
                attached = await self.docker.attach_stdio(cid)
                channel = await JsonRpcChannel.open(
                    attached.sock, output_cap=limits.output_kb * 1024, log_cap=self.log_cap
                )
                await self.docker.start(cid)
                await self._ready(channel, listener, cid)
                return StdioContainer(cid, resolved.reference, stem, channel)
            attached = await self.docker.attach_stdio(cid, stdin=False)
            output = await AttachedOutput.open(attached.sock, cap=self.log_cap)
            await self.docker.start(cid)
            base_url = await self._seed_ready(cid, output)
            container = SeedHttpContainer(
                cid, resolved.reference, stem, self._http, base_url, output, profile
            )
            if profile is Profile.SEED_COMPAT:
                self.writable.watch(container)
            return container
        except BaseException as exc:
            logs = channel.logs.take() if channel is not None else ""
            logs = output.logs.take() if output is not None else logs
            if channel is not None:
                channel.close()
            if output is not None:
                output.close()
            if isinstance(exc, ContainerCrashed):
                try:
                    crash: TareaError = await self._start_crash(cid, logs[-_TAIL_CHARS:])
                except EngineUnavailable as unavailable:
                    crash = unavailable
                await self._discard(cid)
                raise crash from exc
            await self._discard(cid)
            raise
        finally:
            if listener is not None:
                listener.close()

    async def _create(self, config: ContainerConfig) -> str:
        """Create a container; its ID. Cancel-safe: one the engine goes on to
        create after its start was abandoned (a task's time ran out) is removed."""
        creating = asyncio.ensure_future(self.docker.create(config))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            removal = asyncio.ensure_future(self._remove_when_created(creating))
            self._orphans.add(removal)
            removal.add_done_callback(self._orphans.discard)
            raise

    async def _remove_when_created(self, creating: asyncio.Future[str]) -> None:
        """Remove the container ``creating`` makes, if it makes one; a failure is logged."""
        try:
            container_id = await creating
        except Exception:  # nothing was created
            return
        try:
            await self._discard(container_id)
        except Exception:
            log.warning("could not remove container %s", container_id[:12], exc_info=True)

    def _profile(self, resolved: images.ResolvedImage) -> Profile:
        """The sandbox profile of ``resolved``'s containers, judged by all its names."""
        names = [resolved.reference, *resolved.info.tags]
        refs = []
        for name in names:
            try:
                refs.append(parse_reference(name))
            except InvalidRequest:  # a tag the engine knows but the grammar refuses
                continue
        return choose_profile(resolved.protocol, refs, self.strict_images)

    async def _seed_ready(self, container_id: str, output: AttachedOutput) -> str:
        """Wait until a seed-HTTP container answers ``/status/``; its base URL.

        Raises:
            ContainerCrashed: its process ended first (its output stream ended).
            TaskTimeout: not ready within the start timeout.
        """
        ended = asyncio.ensure_future(output.ended.wait())
        try:
            try:
                address = await self.docker.container_address(
                    container_id, self.policy.seed_network
                )
            except TaskFailure:  # no address: it may have died already
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ended), _EXIT_GRACE_S)
                if ended.done():
                    raise ContainerCrashed("the task container exited while starting") from None
                raise
            base_url = f"http://{address}:{seed_http.SEED_PORT}"
            ready = asyncio.ensure_future(
                seed_http.wait_ready(self._http, base_url, self.start_timeout_s)
            )
            try:
                await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not ready.done():
                    raise ContainerCrashed("the task container exited while starting")
                ready.result()
            finally:
                ready.cancel()
            return base_url
        finally:
            ended.cancel()

    async def _start_crash(self, container_id: str, tail: str) -> TaskFailure:
        """The failure of a container that ended before it was ready: why, and its output."""
        exit_code = await self.docker.wait(container_id, _EXIT_GRACE_S)
        state = await self.docker.state(container_id)
        data = {"exit_code": exit_code, "stderr_tail": tail, "phase": "start"}
        if state.oom_killed:
            return OomKilled("the task ran out of memory while starting and was killed", data=data)
        stop_signal = await self.watch.outside_stop(container_id, exit_code)
        if stop_signal is not None and await self.watch.stopped_by_shutdown(container_id):
            error = _engine_stopped(exit_code, stop_signal, "while it started")
            raise EngineUnavailable(error.message)
        cause = _last_line(tail)
        return ContainerCrashed(
            f"the task container exited with code {exit_code} before it was ready"
            + (f": {cause}" if cause else ""),
            data=data,
        )

    def _listen(self) -> ChannelListener | None:
        """A direct channel for the next container, or None (then stdio)."""
        if self.channels is None:
            return None
        try:
            return self.channels.listen()
        except OSError as exc:
            log.warning("no direct channel for this container, it uses stdio: %s", exc)
            return None

    async def _ready(
        self, channel: JsonRpcChannel, listener: ChannelListener | None, container_id: str
    ) -> None:
        """Wait for ``ready``, on the direct channel if the task connects to it first."""
        ready = asyncio.ensure_future(channel.wait_ready(self.start_timeout_s))
        if listener is None:
            await ready
            return
        accept = asyncio.ensure_future(listener.accept(container_id))
        try:
            await asyncio.wait({ready, accept}, return_when=asyncio.FIRST_COMPLETED)
            conn = _accepted(accept)
            if conn is not None and not ready.done():
                await channel.adopt(conn)
            await ready
        finally:
            ready.cancel()
            accept.cancel()
            # Let the accept end before the listener closes (its file number
            # is registered with the loop until then).
            await asyncio.gather(accept, return_exceptions=True)
            listener.close()
            conn = _accepted(accept)
            if conn is not None and not channel.direct:
                conn.close()  # ready came on stdout first: stdio it is

    async def _remove(self, container: TaskContainer) -> None:
        self.writable.forget(container)
        container.close()
        await self._discard(container.id)

    async def _discard(self, container_id: str) -> None:
        """Remove a container; if the engine does not answer, remove it once it is back."""
        try:
            await self.docker.remove(container_id)
        except EngineUnavailable:
            self._unremoved.add(container_id)
            self.watch.suspect()
            log.info("container %s is removed once the engine answers", container_id[:12])

    async def _engine_back(self) -> None:
        """The engine answers again after it went away: rebuild the pool.

        Every container the pool held is dead or unreachable (a restarted engine
        stops them, and the attach streams went with the old engine): they are
        removed, as are those whose removal failed meanwhile, and the stem cells
        and prewarmed containers are started again.
        """
        dropped = self.pool.drop_broken()
        removed = 0
        for container_id in list(self._unremoved):
            try:
                await self.docker.remove(container_id)
            except EngineUnavailable:
                return  # gone again: the next time it is back
            except TareaError as exc:
                log.warning("could not remove container %s: %s", container_id[:12], exc)
            self._unremoved.discard(container_id)
            removed += 1
        self.pool.replenish_all()
        log.warning(
            "the Docker engine is back: %d pooled containers dropped, %d left-over removed",
            dropped,
            removed,
        )


def _engine_stopped(exit_code: int | None, stop_signal: int, when: str) -> ErrorInfo:
    """The failure of a task whose container the engine's shutdown stopped."""
    return ErrorInfo(
        "engine_unavailable",
        f"the Docker engine shut down (or restarted) and stopped the task's container {when} "
        f"(signal {stop_signal})",
        {"exit_code": exit_code, "signal": stop_signal},
    )


def _last_line(text: str) -> str:
    """The last line of ``text`` with something on it (a traceback's: the exception)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _mount_refused(failure: TaskFailure) -> bool:
    """Whether the engine refused to create a container for its channel's bind mount."""
    message = failure.message.lower()
    return "bind source path" in message or "invalid mount config" in message


def _accepted(accept: asyncio.Future[socket.socket]) -> socket.socket | None:
    """The connection ``accept`` brought, if it finished with one."""
    if not accept.done() or accept.cancelled() or accept.exception() is not None:
        return None
    return accept.result()


def _error_info(failure: TaskFailure) -> ErrorInfo:
    return ErrorInfo(failure.code, failure.message, dict(failure.data))


def _timings(t0: float, t_ready: float, t_done: float | None = None) -> Timings:
    end = time.perf_counter() if t_done is None else t_done
    return Timings(start_ms=(t_ready - t0) * 1000, run_ms=(end - t_ready) * 1000)
