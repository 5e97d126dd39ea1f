"""FunctionCatalog's logic with a fake executor: asked once per image id, kept, shared."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tarea.domain.task import ErrorInfo, Outcome, Protocol, TaskSpec
from tarea.execution.catalog import FunctionCatalog
from tarea.execution.docker import ImageInfo
from tarea.execution.images import ResolvedImage

LIMITS = {"timeout_s": 5.0, "memory_mb": 256, "cpus": 1.0, "pids": 64, "output_kb": 1024}
DOC = {
    "openrpc": "1.3.2",
    "methods": [{"name": "f", "params": [{"name": "x", "required": True, "schema": {}}]}],
}


class FakeExecutor:
    """Images by name (an id and a protocol); what each id answers to rpc.discover."""

    def __init__(self, images: dict[str, tuple[str, Protocol]], answers: dict[str, Outcome]):
        self.images = images
        self.answers = answers
        self.calls: list[TaskSpec] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def _resolved(self, reference: str) -> ResolvedImage:
        image_id, protocol = self.images[reference]
        return ResolvedImage(reference, ImageInfo(image_id, "", {}, frozenset()), protocol)

    async def resolve(self, reference: str, spec: TaskSpec | None = None) -> ResolvedImage:
        return self._resolved(reference)

    async def resolve_local(self, reference: str) -> ResolvedImage | None:
        return self._resolved(reference) if reference in self.images else None

    async def run(self, spec: TaskSpec) -> Outcome:
        self.calls.append(spec)
        await self.gate.wait()
        return self.answers[self.images[spec.image][0]]


def describe(catalog: FunctionCatalog, image: str, **kwargs: Any) -> Any:
    return catalog.describe(image, tenant="acme", limits=LIMITS, **kwargs)


def test_an_image_is_asked_once_per_id_in_the_tasks_own_tenant_and_limits() -> None:
    """Two names of one image id: one rpc.discover, with the task's tenant and limits;
    lookup then answers both names without I/O."""
    fake = FakeExecutor(
        {"a:1": ("sha256:1", Protocol.JSONRPC_STDIO), "b:1": ("sha256:1", Protocol.JSONRPC_STDIO)},
        {"sha256:1": Outcome(result=DOC)},
    )
    catalog = FunctionCatalog(fake)

    async def body() -> None:
        first = await describe(catalog, "a:1")
        second = await describe(catalog, "b:1")
        assert first is second
        assert first.described
        assert first.names == ("f",)

    asyncio.run(body())
    assert [(c.function, c.tenant, c.limits.memory_mb) for c in fake.calls] == [
        ("rpc.discover", "acme", 256)
    ]
    found = catalog.lookup("b:1")
    assert found is not None
    assert found.described
    assert catalog.lookup("c:1") is None


def test_concurrent_first_calls_share_one_question() -> None:
    """Many tasks of a new image at once: one rpc.discover, every one gets its answer."""
    fake = FakeExecutor(
        {"a:1": ("sha256:1", Protocol.JSONRPC_STDIO)}, {"sha256:1": Outcome(result=DOC)}
    )
    fake.gate.clear()
    catalog = FunctionCatalog(fake)

    async def body() -> list[Any]:
        waiting = [asyncio.ensure_future(describe(catalog, "a:1")) for _ in range(5)]
        await asyncio.sleep(0.01)
        fake.gate.set()
        return await asyncio.gather(*waiting)

    answers = asyncio.run(body())
    assert len(fake.calls) == 1
    assert all(a is answers[0] for a in answers)


@pytest.mark.parametrize(
    ("outcome", "asked_again"),
    [
        (Outcome(error=ErrorInfo("unknown_function", "no")), False),
        (Outcome(result={"not": "openrpc"}), False),
        (Outcome(error=ErrorInfo("timed_out", "slow")), True),
    ],
    ids=["answers-32601", "unreadable-document", "failed"],
)
def test_images_that_do_not_describe_themselves(outcome: Outcome, asked_again: bool) -> None:
    """-32601 or an unreadable document: not described, for good; a failure (a time-out,
    a crash): not described for now, asked again after RETRY_FAILED_S."""
    fake = FakeExecutor({"a:1": ("sha256:1", Protocol.JSONRPC_STDIO)}, {"sha256:1": outcome})
    catalog = FunctionCatalog(fake, name_cache_s=0.0)

    async def body() -> None:
        found = await describe(catalog, "a:1")
        assert not found.described
        found.check("anything", {"x": object()})  # nothing is checked
        await describe(catalog, "a:1")

    asyncio.run(body())
    assert len(fake.calls) == 1  # within RETRY_FAILED_S nobody asks again
    image_id_entry = catalog._by_id["sha256:1"]
    assert (image_id_entry[0] != float("inf")) is asked_again


def test_seed_images_are_never_asked_and_absent_ones_not_pulled() -> None:
    """A seed-HTTP image is not described without a call; an image not local is None."""
    fake = FakeExecutor({"seed:1": ("sha256:2", Protocol.SEED_HTTP)}, {})
    catalog = FunctionCatalog(fake)

    async def body() -> None:
        seed = await describe(catalog, "seed:1")
        assert (seed.protocol, seed.described) == ("seed-http", False)
        assert await describe(catalog, "absent:1") is None

    asyncio.run(body())
    assert fake.calls == []


def test_a_slow_answer_leaves_the_call_unchecked_and_is_kept_for_the_next() -> None:
    """Past wait_s the first call goes on unchecked (None); the question goes on, and
    its answer is there for the next call without asking again."""
    fake = FakeExecutor(
        {"a:1": ("sha256:1", Protocol.JSONRPC_STDIO)}, {"sha256:1": Outcome(result=DOC)}
    )
    fake.gate.clear()
    catalog = FunctionCatalog(fake)

    async def body() -> None:
        assert await describe(catalog, "a:1", wait_s=0.01) is None
        fake.gate.set()
        await asyncio.sleep(0.01)
        later = await describe(catalog, "a:1", wait_s=0.01)
        assert later is not None
        assert later.described
        await catalog.aclose()

    asyncio.run(body())
    assert len(fake.calls) == 1
