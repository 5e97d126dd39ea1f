"""A 50 MB result built whole in memory: refused as too large, or killed for want of memory."""

from __future__ import annotations

import pytest

from tarea.domain.task import Limits, Outcome, TaskSpec
from tarea.execution.executor import Executor
from tests.integration.conftest import IMAGES, _build, managed_containers, with_executor

pytestmark = pytest.mark.docker

#: The misbehaving image under a tag of this module's own: test sessions of other
#: checkouts on the same machine build theirs under the shared tag, maybe without
#: ``big_result_in_memory``.
BIG_RESULTS_IMAGE = "tarea-test-misbehaving-big-results:latest"
RESULT_MB = 50


@pytest.fixture(scope="session")
def big_results_image(base_image: str) -> str:
    """The misbehaving image, with ``big_result_in_memory``."""
    return _build(base_image, BIG_RESULTS_IMAGE, IMAGES / "misbehaving")


def run_big_result(image: str, memory_mb: int) -> tuple[Outcome, list[str]]:
    """One ``big_result_in_memory`` task of 50 MB with ``memory_mb`` and a 1 MiB output cap;
    its outcome, and the containers left once the engine removed what it threw away."""
    limits = Limits(timeout_s=60, memory_mb=memory_mb, cpus=1.0, pids=64, output_kb=1024)
    spec = TaskSpec(image, "big_result_in_memory", {"mb": RESULT_MB}, limits)

    async def scenario(executor: Executor) -> tuple[Outcome, list[str]]:
        outcome = await executor.run(spec)
        await executor.join_background()
        return outcome, managed_containers()

    return with_executor(scenario, stem_cells=0)


def test_a_big_result_with_enough_memory_is_output_too_large(big_results_image: str) -> None:
    """With memory to build it (512 MB), a 50 MB result over output_kb (1024) ends
    output_too_large, and its container is removed."""
    outcome, left = run_big_result(big_results_image, memory_mb=512)
    assert outcome.error is not None, outcome
    assert outcome.error.code == "output_too_large", outcome.error
    assert outcome.error.data["cap_bytes"] == 1024 * 1024
    assert outcome.error.data["bytes"] > 1024 * 1024
    assert left == []


def test_a_big_result_without_the_memory_to_build_it_is_oom_killed(
    big_results_image: str,
) -> None:
    """With too little memory to build it (64 MB), the task building a 50 MB result is
    killed by the kernel and ends oom_killed (exit code 137), its container removed."""
    outcome, left = run_big_result(big_results_image, memory_mb=64)
    assert outcome.error is not None, outcome
    assert outcome.error.code == "oom_killed", outcome.error
    assert outcome.exit_code == 137
    assert left == []
