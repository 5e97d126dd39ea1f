"""A started, ready task container, and the calls made into it.

:class:`TaskContainer` hides the protocol: a JSON-RPC channel over attached
stdio, or the seed's HTTP service. A container serves one call at a time and
may serve many (the warm pool); once ``broken`` it is never called again.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import httpx

from tarea.domain.task import Limits, Protocol
from tarea.errors import TaskFailure
from tarea.execution.protocols import seed_http
from tarea.execution.protocols.attach import AttachedOutput, until_quiet
from tarea.execution.protocols.jsonrpc import JsonRpcChannel, LogCallback, ProgressCallback
from tarea.execution.sandbox import Profile


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two tasks able to share a container: tenant, image and limits."""

    tenant: str
    image_id: str
    limits: Limits

    @property
    def stem(self) -> StemKey:
        """The tenant-neutral part: which never-used containers fit this key."""
        return StemKey(self.image_id, self.limits)


@dataclass(frozen=True, slots=True)
class StemKey:
    """Which never-used ("stem cell") containers can serve a task: image and limits."""

    image_id: str
    limits: Limits


class TaskContainer(ABC):
    """One running task container, ready for calls."""

    protocol: Protocol

    def __init__(
        self,
        container_id: str,
        image: str,
        stem: StemKey,
        profile: Profile = Profile.STRICT,
    ) -> None:
        self.id = container_id
        self.image = image
        self.stem = stem
        self.profile = profile
        self.uses = 0
        self.last_used = time.monotonic()
        self.failed = False
        #: Why the engine stopped it, if it did (a call under way ends with this).
        self.stopped: TaskFailure | None = None
        #: Whether the pool still counts it toward its caps.
        self.counted = True

    @property
    def broken(self) -> bool:
        """True once the container must not be called again."""
        return self.failed or self.stopped is not None

    @abstractmethod
    async def call(
        self,
        request_id: str,
        function: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Any:
        """Run one function call; its result.

        Raises:
            TaskFailure: the call failed (see :mod:`tarea.errors`).
        """

    def take_logs(self) -> str:
        """The logs written since the last call to this: a JSON-RPC container's stderr,
        a seed-HTTP container's stdout and stderr."""
        return ""

    async def flush_logs(self, *, failed: bool = False) -> None:  # noqa: B027 - may be no-op
        """Let stderr that is still arriving for the last call land first.

        A task that marks its answers (``log_mark``) is waited for until the
        mark it wrote before answering arrives. Otherwise, after a failure
        (whose message is usually on stderr) this waits for a short silence;
        after a success, only if the call wrote to stderr.
        """

    def close(self) -> None:  # noqa: B027 - most containers hold nothing to release
        """Release local resources (the container itself is removed separately)."""


class StdioContainer(TaskContainer):
    """A container speaking JSON-RPC over its attached stdio."""

    protocol = Protocol.JSONRPC_STDIO

    def __init__(
        self,
        container_id: str,
        image: str,
        stem: StemKey,
        channel: JsonRpcChannel,
    ) -> None:
        super().__init__(container_id, image, stem)
        self.channel = channel
        self.call_started = 0.0
        self.answered_before = 0

    @property
    def broken(self) -> bool:
        return super().broken or self.channel.broken

    async def call(
        self,
        request_id: str,
        function: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Any:
        self.uses += 1
        self.call_started = time.monotonic()
        self.answered_before = self.channel.answered
        self.channel.on_log = on_log
        try:
            return await self.channel.call(
                request_id, function, params, timeout_s=timeout_s, on_progress=on_progress
            )
        finally:
            self.channel.on_log = None
            self.last_used = time.monotonic()

    def take_logs(self) -> str:
        return self.channel.logs.take()

    async def flush_logs(self, *, failed: bool = False) -> None:
        if self.channel.answered > self.answered_before and await self.channel.settle_logs():
            return  # it answered, and the mark it wrote before came: its stderr is all here
        if failed:
            await self.channel.quiet_stderr(0.02, 0.1, since=time.monotonic())
        elif self.channel.last_stderr >= self.call_started:
            await self.channel.quiet_stderr()

    def close(self) -> None:
        self.channel.close()


class SeedHttpContainer(TaskContainer):
    """A container running the seed's HTTP task service on port 5000."""

    protocol = Protocol.SEED_HTTP

    def __init__(
        self,
        container_id: str,
        image: str,
        stem: StemKey,
        client: httpx.AsyncClient,
        base_url: str,
        output: AttachedOutput,
        profile: Profile,
    ) -> None:
        super().__init__(container_id, image, stem, profile)
        self.client = client
        self.base_url = base_url
        #: Its stdout and stderr, kept as the calls' logs.
        self.output = output
        self.call_started = 0.0

    @property
    def broken(self) -> bool:
        return super().broken or self.output.ended.is_set()

    async def call(
        self,
        request_id: str,
        function: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        on_progress: ProgressCallback | None,
        on_log: LogCallback | None,
    ) -> Any:
        self.uses += 1
        self.call_started = time.monotonic()
        self.output.on_log = on_log
        try:
            return await seed_http.execute(
                self.client, self.base_url, function, params, timeout_s=timeout_s
            )
        finally:
            self.output.on_log = None
            self.last_used = time.monotonic()

    def take_logs(self) -> str:
        return self.output.logs.take()

    async def flush_logs(self, *, failed: bool = False) -> None:
        # The output travels apart from the HTTP answer, and may trail it: a
        # container that prints at all (or might: its first call) gets a short
        # silence to let it land.
        last = lambda: self.output.last_output  # noqa: E731
        if failed:
            await until_quiet(last, 0.02, 0.1, since=time.monotonic())
        elif self.output.last_output or self.uses == 1:
            await until_quiet(last, 0.005, 0.1, since=time.monotonic())

    def close(self) -> None:
        self.output.close()
