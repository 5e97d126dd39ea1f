"""The lockdown of every task container, as a pure function (DESIGN §4).

:func:`container_config` turns a task's limits and its image's facts into the
exact create-container settings. Nothing a client sends reaches these settings
except the limits, which are numbers already bounded by the API.

Two profiles (:class:`Profile`): the strict one for every image, and a
compatibility one for the seed's label-less HTTP images, which keeps all of
the strict one but two things (see :func:`choose_profile`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from tarea.domain.images import ImageReference, matches_any
from tarea.domain.task import Limits, Protocol
from tarea.execution.channels import MOUNT_TARGET, SOCKET_ENV, SOCKET_NAME
from tarea.runtime.jsonrpc import LOG_MARK_ENV

#: Every container tarea creates carries this label (and removes by it).
MANAGED_LABEL = "io.tarea.managed"
#: The protocol a container speaks, so a restarted server knows what it left.
PROTOCOL_LABEL = "io.tarea.protocol"
#: The server that started a container; a restarted server removes its own.
SERVER_LABEL = "io.tarea.server"
#: The sandbox profile a container runs under (:class:`Profile`).
PROFILE_LABEL = "io.tarea.profile"


class Profile(enum.StrEnum):
    """How far a task container is locked down."""

    #: Everything in DESIGN §4: read-only root, a non-root user, and the rest.
    STRICT = "strict"
    #: For the seed's label-less HTTP images, written before tarea existed: the
    #: image's own user and a writable container filesystem, whose growth the
    #: engine watches (:mod:`tarea.execution.writable`). Everything else is strict.
    SEED_COMPAT = "seed-compat"


def choose_profile(
    protocol: Protocol, names: Iterable[ImageReference], strict: list[str]
) -> Profile:
    """The profile for containers of an image known by ``names``.

    Seed-HTTP images (no tarea label) get :attr:`Profile.SEED_COMPAT`, since
    the seed's services write next to their code as their own user; unless
    the operator forces the strict profile on them (``strict``: glob patterns
    of image references, TAREA_STRICT_IMAGES) under any of their names, so
    that one image gets one profile whatever it is called. Images written
    for tarea are always strict.
    """
    if protocol is Protocol.SEED_HTTP and not any(matches_any(n, strict) for n in names):
        return Profile.SEED_COMPAT
    return Profile.STRICT


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """Server-wide hardening knobs (from settings), the same for every task."""

    default_user: str = "65534:65534"
    nofile: int = 1024
    tmpfs_mb: int = 64
    seed_network: str = "app_network"
    extra_labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """Arguments for creating one task container, engine-agnostic."""

    image: str
    user: str
    labels: dict[str, str]
    stdin_open: bool
    network: str
    read_only: bool
    tmpfs: dict[str, str]
    cap_drop: list[str]
    security_opt: list[str]
    pids_limit: int
    mem_limit_bytes: int
    memswap_limit_bytes: int
    nano_cpus: int
    nofile: int
    environment: dict[str, str]
    #: Docker's log driver: "none". tarea reads (and caps) the output itself over
    #: the attach stream; Docker's default json-file would copy every byte a
    #: task writes to the host's disk, with no cap.
    log_driver: str = "none"
    #: Host directory bind-mounted read-only at MOUNT_TARGET: the direct channel.
    channel_dir: str | None = None
    profile: Profile = Profile.STRICT


def effective_user(image_user: str, default_user: str) -> str:
    """The user a task runs as: the image's own, unless its uid is root's (any group)."""
    uid = image_user.strip().partition(":")[0]
    is_root = uid in ("", "root") or (uid.isdigit() and int(uid) == 0)
    return default_user if is_root else image_user


def tmpfs_mb(policy_mb: int, memory_mb: int) -> int:
    """The size of /tmp: the policy's, but at most half the task's memory.

    tmpfs pages count against the container's memory: a /tmp as large as the
    memory would let a task that fills it be OOM-killed instead of getting
    ENOSPC. At least 1 MiB.
    """
    return max(1, min(policy_mb, memory_mb // 2))


def container_config(
    *,
    image: str,
    protocol: Protocol,
    image_user: str,
    limits: Limits,
    policy: SandboxPolicy,
    channel_dir: str | None = None,
    profile: Profile = Profile.STRICT,
) -> ContainerConfig:
    """The hardened create-container settings for one task container.

    Args:
        image: the image ID or reference to start (already resolved).
        protocol: how the server will talk to it.
        image_user: the ``User`` from the image's config ("" when unset).
        limits: the task's resource limits (already validated).
        policy: the server's hardening settings.
        channel_dir: the host directory of this container's direct channel
            (stdio images only): mounted read-only, its socket named in
            ``TAREA_CHANNEL_SOCKET``. See :mod:`tarea.execution.channels`.
        profile: :attr:`Profile.SEED_COMPAT` keeps the image's own user (root
            included) and a writable root; nothing else changes.

    Containers are not tied to one task: the warm pool reuses them.
    """
    memory = limits.memory_mb * 1024 * 1024
    stdio = protocol is Protocol.JSONRPC_STDIO
    # stdio images are asked to mark stderr before each answer (their logs stay whole).
    environment = {LOG_MARK_ENV: "1"} if stdio else {"TAREA_RUNTIME_MODE": "http"}
    if stdio and channel_dir is not None:
        environment[SOCKET_ENV] = f"{MOUNT_TARGET}/{SOCKET_NAME}"
    compat = profile is Profile.SEED_COMPAT
    tmp_mb = tmpfs_mb(policy.tmpfs_mb, limits.memory_mb)
    return ContainerConfig(
        image=image,
        user=image_user if compat else effective_user(image_user, policy.default_user),
        labels={
            **policy.extra_labels,
            MANAGED_LABEL: "true",
            PROTOCOL_LABEL: protocol.value,
            PROFILE_LABEL: profile.value,
        },
        stdin_open=stdio,
        # stdio images get no network at all; seed-HTTP images get the internal
        # network (no route out) that the server reaches them on.
        network="none" if stdio else policy.seed_network,
        read_only=not compat,
        tmpfs={"/tmp": f"rw,nosuid,nodev,noexec,size={tmp_mb}m,mode=1777"},  # noqa: S108
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=limits.pids,
        mem_limit_bytes=memory,
        memswap_limit_bytes=memory,
        nano_cpus=round(limits.cpus * 1_000_000_000),
        nofile=policy.nofile,
        # Nothing of the server's environment goes in; seed images get the
        # variable that makes tarea's runtime serve HTTP, harmless elsewhere;
        # stdio images get the log-mark request, and may get where their
        # direct channel's socket is.
        environment=environment,
        channel_dir=channel_dir if stdio else None,
        profile=profile,
    )
