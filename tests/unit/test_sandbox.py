"""The lockdown of task containers: limits and image facts → create-container settings."""

from __future__ import annotations

import pytest

from tarea.domain.images import parse_reference
from tarea.domain.task import Limits, Protocol
from tarea.execution.sandbox import (
    MANAGED_LABEL,
    PROFILE_LABEL,
    PROTOCOL_LABEL,
    ContainerConfig,
    Profile,
    SandboxPolicy,
    choose_profile,
    container_config,
    effective_user,
    tmpfs_mb,
)

MiB = 1024 * 1024
POLICY = SandboxPolicy(default_user="65534:65534", nofile=512, tmpfs_mb=32, seed_network="seednet")

LIMITS = [
    pytest.param(
        Limits(timeout_s=30, memory_mb=256, cpus=1.0, pids=64, output_kb=1024), id="one-cpu"
    ),
    pytest.param(Limits(timeout_s=5, memory_mb=64, cpus=0.5, pids=16, output_kb=64), id="half-cpu"),
    pytest.param(
        Limits(timeout_s=600, memory_mb=4096, cpus=4.0, pids=1024, output_kb=8192), id="large"
    ),
]
PROTOCOLS = [pytest.param(p, id=p.name) for p in Protocol]


def make_config(
    protocol: Protocol = Protocol.JSONRPC_STDIO,
    *,
    limits: Limits | None = None,
    image_user: str = "",
    policy: SandboxPolicy = POLICY,
    profile: Profile = Profile.STRICT,
) -> ContainerConfig:
    return container_config(
        image="sha256:abc",
        protocol=protocol,
        image_user=image_user,
        limits=limits or Limits(timeout_s=30, memory_mb=256, cpus=1.0, pids=64, output_kb=1024),
        policy=policy,
        profile=profile,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("limits", LIMITS)
def test_every_container_is_locked_down(protocol: Protocol, limits: Limits) -> None:
    """Whatever the protocol and limits, the root is read-only, caps dropped, privileges fixed."""
    config = make_config(protocol, limits=limits)

    assert config.image == "sha256:abc"
    assert config.read_only is True
    assert config.cap_drop == ["ALL"]
    assert config.security_opt == ["no-new-privileges"]
    assert list(config.tmpfs) == ["/tmp"]
    tmp_options = config.tmpfs["/tmp"].split(",")
    assert "noexec" in tmp_options
    assert "nosuid" in tmp_options
    assert "size=32m" in tmp_options
    assert config.nofile == 512
    assert config.user == "65534:65534"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("limits", LIMITS)
def test_limits_become_engine_numbers(protocol: Protocol, limits: Limits) -> None:
    """Memory and memory+swap are equal in bytes (no swap) and pids pass through."""
    config = make_config(protocol, limits=limits)

    assert config.mem_limit_bytes == limits.memory_mb * MiB
    assert config.memswap_limit_bytes == config.mem_limit_bytes
    assert config.pids_limit == limits.pids


@pytest.mark.parametrize(
    ("cpus", "nano_cpus"),
    [
        pytest.param(1.0, 1_000_000_000, id="1"),
        pytest.param(0.5, 500_000_000, id="0.5"),
        pytest.param(0.25, 250_000_000, id="0.25"),
        pytest.param(0.1, 100_000_000, id="0.1"),
        pytest.param(4.0, 4_000_000_000, id="4"),
    ],
)
def test_cpus_become_nano_cpus(cpus: float, nano_cpus: int) -> None:
    """A CPU limit becomes the engine's nano-CPUs: one CPU is 10^9."""
    limits = Limits(timeout_s=30, memory_mb=256, cpus=cpus, pids=64, output_kb=1024)

    assert make_config(limits=limits).nano_cpus == nano_cpus


def test_fractional_cpus_are_not_truncated() -> None:
    """A CPU limit of 2.01 becomes exactly 2 010 000 000 nano-CPUs."""
    limits = Limits(timeout_s=30, memory_mb=256, cpus=2.01, pids=64, output_kb=1024)

    assert make_config(limits=limits).nano_cpus == 2_010_000_000


@pytest.mark.parametrize(
    ("protocol", "network", "stdin_open", "environment"),
    [
        pytest.param(Protocol.JSONRPC_STDIO, "none", True, {"TAREA_LOG_MARK": "1"}, id="stdio"),
        pytest.param(
            Protocol.SEED_HTTP, "seednet", False, {"TAREA_RUNTIME_MODE": "http"}, id="seed-http"
        ),
    ],
)
def test_protocol_decides_network_stdin_and_environment(
    protocol: Protocol, network: str, stdin_open: bool, environment: dict[str, str]
) -> None:
    """Stdio containers get no network and only the log-mark request; seed-HTTP ones the
    seed network and the runtime's HTTP mode."""
    config = make_config(protocol)

    assert config.network == network
    assert config.stdin_open is stdin_open
    assert config.environment == environment


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_labels_name_tarea_and_protocol(protocol: Protocol) -> None:
    """Every container is labelled managed, with its protocol and the policy's extras."""
    policy = SandboxPolicy(extra_labels={"io.tarea.server": "s1"})

    config = make_config(protocol, policy=policy)

    assert config.labels == {
        "io.tarea.managed": "true",
        "io.tarea.protocol": protocol.value,
        "io.tarea.profile": "strict",
        "io.tarea.server": "s1",
    }
    assert {MANAGED_LABEL, PROTOCOL_LABEL, PROFILE_LABEL} <= config.labels.keys()


ROOT_USERS = ["", "0", "root", "0:0", "root:root", "root:0", "0:root", " root "]


@pytest.mark.parametrize("image_user", ROOT_USERS, ids=lambda u: repr(u))
def test_root_image_user_is_replaced(image_user: str) -> None:
    """An image that would run as root (or names no user) runs as the policy's default user."""
    assert effective_user(image_user, "65534:65534") == "65534:65534"
    assert make_config(image_user=image_user).user == POLICY.default_user


@pytest.mark.parametrize("image_user", ["10001:10001", "app", "1000", "app:app"])
def test_non_root_image_user_is_kept(image_user: str) -> None:
    """An image that names a non-root user keeps it."""
    assert effective_user(image_user, "65534:65534") == image_user
    assert make_config(image_user=image_user).user == image_user


@pytest.mark.parametrize("image_user", ["0:1000", "root:staff"])
def test_root_uid_with_other_group_is_replaced(image_user: str) -> None:
    """An image user that is uid 0 with a non-root group still does not run as root."""
    assert effective_user(image_user, "65534:65534") == "65534:65534"


@pytest.mark.parametrize(
    ("policy_mb", "memory_mb", "size_mb"),
    [
        pytest.param(64, 256, 64, id="policy-below-half-memory"),
        pytest.param(64, 64, 32, id="half-of-64"),
        pytest.param(64, 100, 50, id="half-of-100"),
        pytest.param(64, 16, 8, id="half-of-16"),
        pytest.param(64, 1, 1, id="at-least-1"),
    ],
)
def test_tmp_is_at_most_half_the_memory(policy_mb: int, memory_mb: int, size_mb: int) -> None:
    """/tmp (whose pages count as the container's memory) is at most half the task's memory."""
    limits = Limits(timeout_s=30, memory_mb=memory_mb, cpus=1.0, pids=64, output_kb=64)
    policy = SandboxPolicy(tmpfs_mb=policy_mb)

    assert tmpfs_mb(policy_mb, memory_mb) == size_mb
    assert f"size={size_mb}m" in make_config(limits=limits, policy=policy).tmpfs["/tmp"]


@pytest.mark.parametrize(
    ("protocol", "image_names", "strict", "profile"),
    [
        pytest.param(Protocol.SEED_HTTP, ["course:1"], [], Profile.SEED_COMPAT, id="seed"),
        pytest.param(Protocol.JSONRPC_STDIO, ["tasks:1"], [], Profile.STRICT, id="tarea-image"),
        pytest.param(Protocol.SEED_HTTP, ["course:1"], ["*"], Profile.STRICT, id="all-forced"),
        pytest.param(Protocol.SEED_HTTP, ["course:1"], ["course:*"], Profile.STRICT, id="forced"),
        pytest.param(
            Protocol.SEED_HTTP, ["course:1"], ["other:*"], Profile.SEED_COMPAT, id="not-forced"
        ),
        pytest.param(
            Protocol.SEED_HTTP, ["course"], ["course:latest"], Profile.STRICT, id="latest-implied"
        ),
        pytest.param(
            Protocol.SEED_HTTP,
            ["alias:1", "course:1"],
            ["course:*"],
            Profile.STRICT,
            id="forced-under-another-name",
        ),
    ],
)
def test_profile_is_compat_only_for_seed_images_not_forced_strict(
    protocol: Protocol, image_names: list[str], strict: list[str], profile: Profile
) -> None:
    """Only label-less seed-HTTP images get the compatibility profile, unless forced strict
    under any of their names."""
    refs = [parse_reference(n) for n in image_names]

    assert choose_profile(protocol, refs, strict) is profile


@pytest.mark.parametrize("image_user", ["", "root", "0:0", "app", "10001:10001"])
def test_compat_profile_keeps_the_image_user_and_a_writable_root(image_user: str) -> None:
    """The compatibility profile runs the image's own user on a writable root, and labels it."""
    config = make_config(Protocol.SEED_HTTP, image_user=image_user, profile=Profile.SEED_COMPAT)

    assert config.user == image_user
    assert config.read_only is False
    assert config.labels[PROFILE_LABEL] == "seed-compat"


def test_compat_profile_keeps_everything_else_strict() -> None:
    """Apart from user and root, the compatibility profile's settings are the strict ones."""
    strict = make_config(Protocol.SEED_HTTP, image_user="root")
    compat = make_config(Protocol.SEED_HTTP, image_user="root", profile=Profile.SEED_COMPAT)

    differing = {
        name
        for name in ContainerConfig.__dataclass_fields__
        if getattr(strict, name) != getattr(compat, name)
    }
    assert differing == {"user", "read_only", "labels", "profile"}
    assert compat.cap_drop == ["ALL"]
    assert compat.security_opt == ["no-new-privileges"]
    assert compat.network == "seednet"
    assert compat.log_driver == "none"
