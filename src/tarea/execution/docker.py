"""The Docker Engine boundary: the only module that imports docker.

:class:`DockerEngine` wraps docker-py's low-level ``APIClient`` with async
methods (each blocking call runs in a dedicated thread pool, never on the event
loop) and converts docker-py and requests errors into tarea's own
(:mod:`tarea.errors`): an engine that does not answer is
:class:`~tarea.errors.EngineUnavailable`, a missing image is
:class:`~tarea.errors.ImageNotFound`, and so on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
import urllib3.exceptions

from tarea.domain.images import ImageReference
from tarea.domain.task import RegistryAuth
from tarea.errors import (
    EngineUnavailable,
    ImageNotFound,
    ImagePullFailed,
    TareaError,
    TaskFailure,
)
from tarea.execution.channels import MOUNT_TARGET
from tarea.execution.pull_size import MIB, PullSize
from tarea.execution.sandbox import ContainerConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# Registry answers that mean "there is no such image for you", as opposed to
# "the registry could not be reached or failed".
_NOT_FOUND_HINTS = ("not found", "manifest unknown", "pull access denied", "does not exist")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What tarea needs to know of a local image."""

    id: str
    user: str
    labels: dict[str, str]
    exposed_ports: frozenset[str]
    #: Every name the engine knows the image by (``RepoTags``).
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """A local image as the engine lists it: its names and its size."""

    id: str
    #: Bytes of all its layers, shared ones included (``Size``).
    size: int
    #: Its ``repo:tag`` names (``RepoTags``, ``<none>`` left out).
    tags: frozenset[str]
    #: Its ``repo@digest`` names (``RepoDigests``, ``<none>`` left out).
    digests: frozenset[str]


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The end state of a container, from inspect."""

    exit_code: int | None
    oom_killed: bool
    running: bool


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """A container's kill, die or oom event, as the engine announced it."""

    container_id: str
    #: ``kill``, ``die`` or ``oom``.
    action: str
    #: The signal a ``kill`` sent (None for the others).
    signal: int | None = None


@dataclass(slots=True)
class AttachedStdio:
    """A hijacked connection to a container's stdin, stdout and stderr.

    ``sock`` is the raw socket (Docker's multiplexed stream when no TTY), the
    connection's only owner: closing it closes the connection. ``keepalive``
    holds docker-py's wrapper, detached from it.
    """

    sock: socket.socket
    keepalive: Any


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Convert transport failures into :class:`EngineUnavailable`."""
    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise EngineUnavailable(f"the Docker engine does not answer: {exc}") from exc
    except docker.errors.DockerException as exc:
        if isinstance(exc, docker.errors.APIError):
            raise
        raise EngineUnavailable(f"the Docker engine does not answer: {exc}") from exc


class DockerEngine:
    """Async access to one Docker engine.

    Args:
        base_url: the engine's URL; None reads ``DOCKER_HOST`` or uses the
            local socket.
        max_workers: threads for blocking docker-py calls (and HTTP
            connections kept to the engine).
        max_pull_bytes: the most one pull may bring, as its layers' announced
            sizes add up (0: no cap); see :class:`~tarea.execution.pull_size.PullSize`.
    """

    def __init__(
        self, base_url: str | None = None, *, max_workers: int = 32, max_pull_bytes: int = 0
    ) -> None:
        self._base_url = base_url
        self._max_workers = max_workers
        self._max_pull_bytes = max_pull_bytes
        self._client: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="docker")
        #: The event stream :meth:`follow_events` reads, and the request to end it.
        self._events: Any = None
        self._events_stop = threading.Event()

    # -- plumbing -------------------------------------------------------------

    def _api(self) -> docker.APIClient:
        """The API client, made on first use so a server starts without an engine."""
        with self._lock:
            if self._client is None:
                kwargs: dict[str, Any] = dict(docker.utils.kwargs_from_env())
                if self._base_url:
                    kwargs["base_url"] = self._base_url
                with _engine_errors():
                    self._client = docker.APIClient(
                        version="auto", max_pool_size=self._max_workers, **kwargs
                    )
            return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Release the thread pool and HTTP connections."""
        self.stop_events()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()

    # -- engine ---------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the engine answers.

        Raises:
            EngineUnavailable: it does not.
        """

        def ping() -> None:
            with _engine_errors():
                self._api().ping()

        await self._call(ping)

    async def follow_events(
        self,
        labels: dict[str, str],
        on_event: Callable[[ContainerEvent], None],
        since: int | None = None,
    ) -> None:
        """Hand ``on_event`` (on the event loop) every kill, die and oom event of the
        containers carrying all ``labels``, until the stream ends; with ``since`` (a
        Unix time), first those since then that the engine still keeps.

        The stream ends when the engine goes away (its API closes, or it dies),
        or on :meth:`stop_events`. It is read on a daemon thread of its own (not
        one of the calls' threads, and never one that holds up the process's exit).

        Raises:
            EngineUnavailable: the engine did not answer the request.
        """
        loop = asyncio.get_running_loop()
        filters = {
            "type": "container",
            "event": ["kill", "die", "oom"],
            "label": [f"{k}={v}" for k, v in labels.items()],
        }

        ended: asyncio.Future[None] = loop.create_future()
        self._events_stop.clear()

        def finish(error: BaseException | None) -> None:
            if ended.done():
                return
            if error is None:
                ended.set_result(None)
            else:
                ended.set_exception(error)

        def follow() -> None:
            try:
                with _engine_errors():
                    stream = self._api().events(filters=filters, decode=True, since=since)
            except BaseException as exc:
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    loop.call_soon_threadsafe(finish, exc)
                return
            self._events = stream
            try:
                if self._events_stop.is_set():  # stopped while it was being opened
                    return
                with _engine_errors():
                    for raw in stream:
                        event = _container_event(raw)
                        if event is not None:
                            loop.call_soon_threadsafe(on_event, event)
            except Exception:  # noqa: S110 - the engine went away mid-stream: it ended
                pass
            finally:
                self._events = None
                with contextlib.suppress(Exception):
                    stream.close()
                with contextlib.suppress(RuntimeError):  # the loop may be closed by now
                    loop.call_soon_threadsafe(finish, None)

        threading.Thread(target=follow, name="docker-events", daemon=True).start()
        await ended

    def stop_events(self) -> None:
        """End the event stream :meth:`follow_events` follows, if any (thread-safe)."""
        self._events_stop.set()
        stream = self._events
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    async def version(self) -> str:
        """The engine's version (``20.10.24``, say).

        Raises:
            EngineUnavailable: it does not answer.
        """

        def version() -> str:
            with _engine_errors():
                return str(self._api().version().get("Version", "unknown"))

        return await self._call(version)

    # -- images ---------------------------------------------------------------

    async def inspect_image(self, ref: str) -> ImageInfo | None:
        """The local image ``ref``, or None when the engine does not have it."""

        def inspect() -> ImageInfo | None:
            with _engine_errors():
                try:
                    data = self._api().inspect_image(ref)  # type: ignore[no-untyped-call]
                except docker.errors.ImageNotFound:
                    return None
                except docker.errors.NotFound:
                    return None
            config = data.get("Config") or {}
            return ImageInfo(
                id=data["Id"],
                user=config.get("User") or "",
                labels=dict(config.get("Labels") or {}),
                exposed_ports=frozenset((config.get("ExposedPorts") or {}).keys()),
                tags=tuple(data.get("RepoTags") or ()),
            )

        return await self._call(inspect)

    async def pull(self, ref: ImageReference, auth: RegistryAuth | None) -> None:
        """Pull ``ref`` from its registry, with per-request credentials if given.

        Past ``max_pull_bytes`` the event stream is closed, which makes the
        engine cancel the pull.

        Raises:
            ImageNotFound: the registry says there is no such image (or denies it).
            ImagePullFailed: the registry could not be reached or failed, or the
                image's layers come to more than ``max_pull_bytes``.
        """
        auth_config = (
            None if auth is None else {"username": auth.username, "password": auth.password}
        )
        size = PullSize(self._max_pull_bytes)

        def pull() -> None:
            with _engine_errors():
                try:
                    events = self._api().pull(
                        ref.name,
                        tag=ref.pull_tag,
                        auth_config=auth_config,
                        stream=True,
                        decode=True,
                    )
                    with contextlib.closing(events):  # closed: its response goes with it
                        for event in events:
                            if "error" in event:
                                raise _pull_error(ref, str(event["error"]))
                            if size.add(event):
                                raise ImagePullFailed(
                                    size.refusal(str(ref)),
                                    data={"image": str(ref), "max_pull_mb": size.cap_bytes // MIB},
                                )
                except docker.errors.APIError as exc:
                    raise _pull_error(ref, str(exc.explanation or exc)) from None

        await self._call(pull)

    async def images(self) -> list[ImageSummary]:
        """Every local image (intermediate build layers aside) with its names and size."""

        def images() -> list[ImageSummary]:
            with _engine_errors():
                found = self._api().images()
            return [
                ImageSummary(
                    id=str(data["Id"]),
                    size=int(data.get("Size") or 0),
                    tags=_names(data.get("RepoTags")),
                    digests=_names(data.get("RepoDigests")),
                )
                for data in found
            ]

        return await self._call(images)

    async def remove_image(self, reference: str) -> bool:
        """Remove the name ``reference``, and the image with it if it was its last name.

        Never forced: the engine refuses to remove the last name of an image
        that a container (running or not) uses. A name already gone is fine.

        Returns:
            False when the engine refused because a container uses the image.
        """

        def remove() -> bool:
            with _engine_errors():
                try:
                    self._api().remove_image(reference, force=False, noprune=False)
                except docker.errors.NotFound:
                    return True
                except docker.errors.APIError as exc:
                    if exc.status_code == 409:
                        return False
                    raise TareaError(
                        f"cannot remove image {reference!r}: {exc.explanation or exc}"
                    ) from exc
            return True

        return await self._call(remove)

    async def build(
        self,
        context: str,
        tag: str,
        build_args: dict[str, str],
        on_line: Callable[[str], None] | None = None,
    ) -> str:
        """Build the Dockerfile in ``context`` as ``tag`` with no network; the image id.

        The classic builder (no BuildKit here), intermediate containers
        removed, every ``RUN`` without a network: a build that needs one fails
        instead of reaching out. ``on_line`` gets each line of the build's output.

        Raises:
            TaskFailure: the build failed (its message is the engine's, or the step's).
        """

        def build() -> str:
            with _engine_errors():
                try:
                    stream = self._api().build(
                        path=context,
                        tag=tag,
                        buildargs=build_args,
                        network_mode="none",
                        rm=True,
                        forcerm=True,
                        decode=True,
                    )
                    for chunk in stream:
                        if "error" in chunk:
                            raise TaskFailure(str(chunk["error"]).strip())
                        text = str(chunk.get("stream", "")).rstrip()
                        if text and on_line is not None:
                            on_line(text)
                except docker.errors.APIError as exc:
                    raise TaskFailure(
                        f"the engine refused the build: {exc.explanation or exc}"
                    ) from exc
                return str(self._api().inspect_image(tag)["Id"])  # type: ignore[no-untyped-call]

        return await self._call(build)

    # -- containers -----------------------------------------------------------

    async def container_images(self) -> set[str]:
        """The image IDs of every container on the engine, running or not, anyone's."""

        def images() -> set[str]:
            with _engine_errors():
                found = self._api().containers(all=True)
            return {str(c["ImageID"]) for c in found if c.get("ImageID")}

        return await self._call(images)

    async def create(self, config: ContainerConfig) -> str:
        """Create (not start) a container; returns its ID."""

        def create() -> str:
            api = self._api()
            host_config = api.create_host_config(
                network_mode=config.network,
                read_only=config.read_only,
                tmpfs=config.tmpfs,
                cap_drop=config.cap_drop,
                security_opt=config.security_opt,
                pids_limit=config.pids_limit,
                mem_limit=config.mem_limit_bytes,
                memswap_limit=config.memswap_limit_bytes,
                nano_cpus=config.nano_cpus,
                ulimits=[
                    docker.types.Ulimit(name="nofile", soft=config.nofile, hard=config.nofile)
                ],
                privileged=False,
                log_config=docker.types.LogConfig(type=config.log_driver),
                mounts=[
                    docker.types.Mount(
                        MOUNT_TARGET, config.channel_dir, type="bind", read_only=True
                    )
                ]
                if config.channel_dir is not None
                else None,
            )
            with _engine_errors():
                try:
                    created = api.create_container(
                        image=config.image,
                        user=config.user,
                        labels=config.labels,
                        stdin_open=config.stdin_open,
                        tty=False,
                        environment=config.environment,
                        host_config=host_config,
                    )
                except docker.errors.ImageNotFound as exc:
                    raise ImageNotFound(
                        f"image {config.image!r} disappeared before its container started",
                        data={"image": config.image},
                    ) from exc
                except docker.errors.APIError as exc:
                    raise TaskFailure(
                        f"the engine refused to create a container of {config.image!r}: "
                        f"{exc.explanation or exc}"
                    ) from exc
            return str(created["Id"])

        return await self._call(create)

    async def attach_stdio(self, container_id: str, *, stdin: bool = True) -> AttachedStdio:
        """Hijack the container's stdio (stdout and stderr only unless ``stdin``).

        Call before ``start`` so no output is lost.
        """

        def attach() -> AttachedStdio:
            params = {"stdin": int(stdin), "stdout": 1, "stderr": 1, "stream": 1}
            with _engine_errors():
                wrapper = self._api().attach_socket(container_id, params=params)
            raw = wrapper if isinstance(wrapper, socket.socket) else wrapper._sock
            # A socket of our own, holding the descriptor alone: docker-py's
            # wrapper and HTTP response still count as users of ``raw``, in a
            # reference cycle, so closing ``raw`` would not close the connection
            # until the garbage collector ran; meanwhile the engine, unable to
            # hand over the rest of a big output, would not remove the container.
            own = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
            return AttachedStdio(sock=own, keepalive=wrapper)

        return await self._call(attach)

    async def start(self, container_id: str) -> None:
        """Start a created container."""

        def start() -> None:
            with _engine_errors():
                try:
                    self._api().start(container_id)
                except docker.errors.APIError as exc:
                    raise TaskFailure(
                        f"the engine could not start the task container: {exc.explanation or exc}"
                    ) from exc

        await self._call(start)

    async def container_address(self, container_id: str, network: str) -> str:
        """The container's IP address on ``network``."""

        def address() -> str:
            with _engine_errors():
                data = self._api().inspect_container(container_id)
            networks = data.get("NetworkSettings", {}).get("Networks") or {}
            ip = (networks.get(network) or {}).get("IPAddress")
            if not ip:
                raise TaskFailure(f"the task container has no address on network {network!r}")
            return str(ip)

        return await self._call(address)

    async def state(self, container_id: str) -> ContainerState:
        """The container's exit code (None while running) and whether it was OOM-killed."""

        def state() -> ContainerState:
            with _engine_errors():
                data = self._api().inspect_container(container_id)
            st = data.get("State") or {}
            running = bool(st.get("Running"))
            return ContainerState(
                exit_code=None if running else st.get("ExitCode"),
                oom_killed=bool(st.get("OOMKilled")),
                running=running,
            )

        return await self._call(state)

    async def init_pid(self, container_id: str) -> int | None:
        """The host pid of the container's first process; None unless it runs.

        What the direct channel checks its peer against (:mod:`tarea.execution.channels`).
        """

        def pid() -> int | None:
            try:
                with _engine_errors():
                    data = self._api().inspect_container(container_id)
            except docker.errors.NotFound:
                return None
            st = data.get("State") or {}
            found = st.get("Pid")
            if not st.get("Running") or not isinstance(found, int) or found <= 0:
                return None
            return found

        return await self._call(pid)

    async def size_rw(self, container_id: str) -> int | None:
        """Bytes the container wrote to its own filesystem layer; None once it is gone."""

        def size() -> int | None:
            with _engine_errors():
                # The list call is docker-py's public way to ask for sizes;
                # filtered by id, the engine sizes this container alone.
                found = self._api().containers(all=True, size=True, filters={"id": container_id})
            return int(found[0].get("SizeRw") or 0) if found else None

        return await self._call(size)

    async def kill(self, container_id: str) -> None:
        """Kill the container's processes (it stays, to be inspected and removed)."""

        def kill() -> None:
            with _engine_errors():
                try:
                    self._api().kill(container_id)
                except docker.errors.APIError as exc:
                    if exc.status_code not in (404, 409):  # gone, or not running
                        raise TareaError(
                            f"cannot kill container {container_id[:12]}: {exc.explanation or exc}"
                        ) from exc

        await self._call(kill)

    async def wait(self, container_id: str, timeout_s: float) -> int | None:
        """Wait for the container to exit; its exit code, or None on timeout.

        Raises:
            EngineUnavailable: the engine does not answer (a timeout is no such
                thing: the container still runs).
        """

        def wait() -> int | None:
            try:
                with _engine_errors():
                    result = self._api().wait(container_id, timeout=math.ceil(timeout_s))
            except EngineUnavailable as exc:
                if _timed_out(exc.__cause__):
                    return None
                raise
            return int(result.get("StatusCode", -1))

        return await self._call(wait)

    def _remove_now(self, container_id: str) -> None:
        """Kill and remove; gone already, or being removed by another call, is fine."""
        with _engine_errors():
            try:
                self._api().remove_container(container_id, force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise TareaError(
                        f"cannot remove container {container_id[:12]}: {exc.explanation or exc}"
                    ) from exc

    async def remove(self, container_id: str) -> None:
        """Kill and remove the container; a container already gone is fine."""
        await self._call(self._remove_now, container_id)

    async def remove_labelled(self, labels: dict[str, str]) -> list[str]:
        """Kill and remove every container carrying all ``labels``; their IDs."""

        def remove_all() -> list[str]:
            filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
            with _engine_errors():
                found = self._api().containers(all=True, quiet=True, filters=filters)
            ids = [str(c["Id"]) for c in found]
            for cid in ids:
                self._remove_now(cid)
            return ids

        return await self._call(remove_all)

    # -- networks ---------------------------------------------------------------

    async def ensure_network(self, name: str, *, internal: bool) -> None:
        """Create the bridge network ``name`` unless it exists (as it is, if so)."""

        def ensure() -> None:
            with _engine_errors():
                api = self._api()
                if api.networks(names=[name]):
                    return
                try:
                    api.create_network(
                        name,
                        driver="bridge",
                        internal=internal,
                        labels={"io.tarea.managed": "true"},
                        check_duplicate=True,
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise TareaError(f"cannot create network {name!r}: {exc}") from exc

        await self._call(ensure)


def _container_event(raw: Any) -> ContainerEvent | None:
    """A container event from the engine's JSON, or None when it is not one of ours."""
    if not isinstance(raw, dict):
        return None
    actor = raw.get("Actor") or {}
    container_id = actor.get("ID") or raw.get("id")
    action = raw.get("Action") or raw.get("status")
    if not isinstance(container_id, str) or action not in ("kill", "die", "oom"):
        return None
    signal = (actor.get("Attributes") or {}).get("signal")
    try:
        number = int(signal) if signal is not None else None
    except ValueError:
        number = None
    return ContainerEvent(container_id, str(action), number)


def _names(names: list[str] | None) -> frozenset[str]:
    """An image's names from a listing, the engine's ``<none>`` placeholders left out."""
    return frozenset(n for n in names or () if not n.startswith("<none>"))


def _pull_error(ref: ImageReference, reason: str) -> TaskFailure:
    """Classify a failed pull: no such image, or a registry that failed."""
    image = str(ref)
    data = {"image": image, "reason": reason}
    if any(hint in reason.lower() for hint in _NOT_FOUND_HINTS):
        return ImageNotFound(
            f"image {image!r} is not present locally and the registry has no such image",
            data=data,
        )
    return ImagePullFailed(
        f"image {image!r} is not present locally and could not be pulled: {reason}",
        data=data,
    )


def _timed_out(error: BaseException | None) -> bool:
    """Whether a request to the engine failed by timing out (it answered, slowly).

    docker-py's requests over a Unix socket raise a read timeout as a
    ``ConnectionError`` around urllib3's ``ReadTimeoutError``: that one is a
    timeout, while a ``ConnectionError`` around anything else (refused,
    aborted, no socket) is an engine that does not answer.
    """
    if isinstance(error, requests.exceptions.Timeout):
        return True
    return isinstance(error, requests.exceptions.ConnectionError) and any(
        isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in error.args
    )
