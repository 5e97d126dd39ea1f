"""The engine on the real Docker executor: lockdown, failures, cleanup."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tarea.domain.task import Limits, Outcome, TaskSpec
from tarea.execution.executor import Executor
from tests.integration.conftest import (
    direct_and_result,
    docker,
    fresh_stdio_container,
    managed_containers,
    with_executor,
)

pytestmark = pytest.mark.docker

T = TypeVar("T")
LIMITS = Limits(timeout_s=20, memory_mb=128, cpus=0.5, pids=64, output_kb=64)


def run(image: str, function: str, params: dict[str, Any], limits: Limits = LIMITS) -> Outcome:
    return with_executor(
        lambda executor: executor.run(
            TaskSpec(image=image, function=function, params=params, limits=limits)
        )
    )


async def inspect_while_running(
    executor: Executor, spec: TaskSpec
) -> tuple[dict[str, Any], Outcome]:
    """Start ``spec``, inspect its container while it runs, then wait for it."""
    task = asyncio.create_task(executor.run(spec))
    for _ in range(200):
        ids = managed_containers()
        if ids:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no task container appeared")
    info = json.loads(docker("inspect", ids[0]).stdout)[0]
    return info, await task


def assert_locked_down(info: dict[str, Any], limits: Limits, *, compat: bool = False) -> None:
    """The strict profile, read back; ``compat``: the seed images' profile, which differs
    from it in the writable root and the image's own user only."""
    host = info["HostConfig"]
    config = info["Config"]
    assert config["Labels"]["io.tarea.managed"] == "true"
    assert config["Labels"]["io.tarea.profile"] == ("seed-compat" if compat else "strict")
    assert host["ReadonlyRootfs"] is not compat
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Privileged"] is False
    assert not host.get("Binds")
    # The one mount a stdio container may have is its direct channel: its own
    # directory, read-only, gone from the host once the task connected.
    mounts = info.get("Mounts") or []
    assert len(mounts) <= 1
    for mount in mounts:
        assert (mount["Type"], mount["Destination"], mount["RW"]) == ("bind", "/run/tarea", False)
        assert not Path(mount["Source"]).exists()
    assert "/tmp" in host["Tmpfs"]
    assert "size=" in host["Tmpfs"]["/tmp"]
    assert host["PidsLimit"] == limits.pids
    assert host["Memory"] == limits.memory_mb * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == int(limits.cpus * 1e9)
    assert {u["Name"] for u in host["Ulimits"]} == {"nofile"}
    if not compat:
        assert config["User"] not in ("", "0", "root")
    assert not any(e.startswith(("TAREA_DATABASE", "DOCKER_")) for e in config["Env"] or [])


def test_stdio_task_container_is_locked_down(tasks_image: str) -> None:
    """A JSON-RPC task runs with no network, read-only root, no capabilities, limits, non-root."""
    spec = TaskSpec(image=tasks_image, function="esperar", params={"segundos": 1.5}, limits=LIMITS)
    info, outcome = with_executor(lambda executor: inspect_while_running(executor, spec))
    assert outcome.result == 1.5
    assert_locked_down(info, LIMITS)
    assert info["HostConfig"]["NetworkMode"] == "none"


def test_seed_http_container_is_locked_down_on_internal_network(seed_http_image: str) -> None:
    """A seed-HTTP task runs on the internal network, locked down but for the compatibility
    profile's writable root and own user."""
    spec = TaskSpec(image=seed_http_image, function="suma", params={"a": 1}, limits=LIMITS)
    info, outcome = with_executor(lambda executor: inspect_while_running(executor, spec))
    assert outcome.result == 1
    assert_locked_down(info, LIMITS, compat=True)
    assert info["HostConfig"]["NetworkMode"] == "app_network"
    network = json.loads(docker("network", "inspect", "app_network").stdout)[0]
    assert network["Internal"] is True


def test_timeout_kills_the_task_and_reports_timed_out(tasks_image: str) -> None:
    """A task past its wall-clock limit ends timed_out and its container is gone."""
    limits = Limits(timeout_s=1, memory_mb=128, cpus=0.5, pids=64, output_kb=64)
    outcome = run(tasks_image, "esperar", {"segundos": 30}, limits)
    assert outcome.error is not None
    assert outcome.error.code == "timed_out"
    assert outcome.timings.run_ms < 5000
    assert managed_containers() == []


def test_exit_mid_call_reports_crashed_with_exit_code_and_stderr(misbehaving_either: str) -> None:
    """A process that exits before answering is 'crashed', with its exit code and stderr tail."""
    outcome = run(misbehaving_either, "exit", {"code": 3})
    assert outcome.error is not None
    assert outcome.error.code == "crashed"
    assert outcome.exit_code == 3
    assert "about to die on purpose" in outcome.error.data["stderr_tail"]


def test_non_json_stdout_reports_protocol_error(misbehaving_either: str) -> None:
    """A line on stdout that is not JSON ends the task with protocol_error."""
    outcome = run(misbehaving_either, "garbage", {})
    assert outcome.error is not None
    assert outcome.error.code == "protocol_error"
    assert "not JSON" in outcome.error.message


def test_result_over_output_cap_reports_output_too_large(misbehaving_either: str) -> None:
    """A response larger than output_kb ends the task with output_too_large."""
    outcome = run(misbehaving_either, "echo", {"blob": "x" * 100_000})
    assert outcome.error is not None
    assert outcome.error.code == "output_too_large"


def test_standard_image_takes_calls_on_its_direct_channel(tasks_image: str) -> None:
    """tarea's runtime connects to the socket it is offered; calls then skip the engine."""
    direct, result = with_executor(
        lambda executor: direct_and_result(executor, tasks_image, "suma", {"a": 1, "b": 2}, LIMITS)
    )
    assert (direct, result) == (True, 3)


def test_direct_channels_can_be_turned_off(tasks_image: str) -> None:
    """With TAREA_DIRECT_CHANNELS=false the same image speaks over the attach stream."""
    direct, result = with_executor(
        lambda executor: direct_and_result(executor, tasks_image, "suma", {"a": 1, "b": 2}, LIMITS),
        direct_channels=False,
    )
    assert (direct, result) == (False, 3)


def test_image_that_ignores_the_direct_channel_speaks_stdio(misbehaving_image: str) -> None:
    """An image written against stdio alone still works: ready on stdout decides."""
    direct, result = with_executor(
        lambda executor: direct_and_result(executor, misbehaving_image, "echo", {"x": 1}, LIMITS)
    )
    assert (direct, result) == (False, {"x": 1})


def test_direct_channel_cannot_be_dialled_again(misbehaving_direct_image: str) -> None:
    """Once the task connected, its socket is gone: nothing in it can connect a second time."""

    async def redial(executor: Executor) -> Any:
        container = await fresh_stdio_container(executor, misbehaving_direct_image, LIMITS)
        try:
            assert container.channel.direct
            return await container.call(
                "r1", "redial", {}, timeout_s=10, on_progress=None, on_log=None
            )
        finally:
            await executor.pool.release(container, reusable=False)

    assert with_executor(redial) == "ENOENT"


def test_progress_notifications_reach_the_caller(tasks_image: str) -> None:
    """Progress a task sends while it works reaches the on_progress callback."""
    seen: list[tuple[float | None, str | None]] = []
    spec = TaskSpec(image=tasks_image, function="esperar", params={"segundos": 2.2}, limits=LIMITS)
    outcome = with_executor(
        lambda executor: executor.run(spec, on_progress=lambda p, m: seen.append((p, m)))
    )
    assert outcome.result == 2.2
    assert seen, "no progress notification arrived"
    assert all(p is None or 0 <= p <= 1 for p, _ in seen)


def test_task_stderr_is_kept_as_logs(tasks_image: str) -> None:
    """What a failing task writes on stderr comes back as its logs."""
    outcome = run(tasks_image, "division", {"a": 1, "b": 0})
    assert outcome.error is not None
    assert outcome.error.code == "task_error"
    assert "division" in outcome.logs


def test_bad_params_report_bad_params(tasks_image: str) -> None:
    """Parameters of the wrong type end the task with bad_params naming the parameter."""
    outcome = run(tasks_image, "resta", {"a": "ten", "b": 1})
    assert outcome.error is not None
    assert outcome.error.code == "bad_params"
    assert "a" in json.dumps(outcome.error.data)


def test_unlabelled_image_without_port_is_unsupported(base_image: str) -> None:
    """An image with neither the tarea label nor port 5000 is refused as unsupported_image."""
    outcome = run(base_image, "suma", {})
    assert outcome.error is not None
    assert outcome.error.code == "unsupported_image"
    assert base_image in outcome.error.message
