"""Which protocol an image speaks: tarea's label first, then the seed's port."""

from __future__ import annotations

import pytest

from tarea.domain.task import Protocol
from tarea.errors import UnsupportedImage
from tarea.execution.docker import ImageInfo
from tarea.execution.images import detect_protocol

LABEL = "io.tarea.protocol"


def image(labels: dict[str, str] | None = None, ports: set[str] | None = None) -> ImageInfo:
    return ImageInfo(
        id="sha256:abc", user="", labels=labels or {}, exposed_ports=frozenset(ports or ())
    )


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        pytest.param(
            image({LABEL: "jsonrpc-stdio/1"}), Protocol.JSONRPC_STDIO, id="label-no-ports"
        ),
        pytest.param(
            image({LABEL: "jsonrpc-stdio/1"}, {"5000/tcp"}),
            Protocol.JSONRPC_STDIO,
            id="label-wins-over-port",
        ),
        pytest.param(image(ports={"5000/tcp"}), Protocol.SEED_HTTP, id="seed-port"),
        pytest.param(
            image({"maintainer": "someone"}, {"5000/tcp", "8080/tcp"}),
            Protocol.SEED_HTTP,
            id="seed-port-among-others",
        ),
    ],
)
def test_protocol_is_detected(info: ImageInfo, expected: Protocol) -> None:
    """The tarea label means JSON-RPC over stdio; no label and 5000/tcp means the seed's HTTP."""
    assert detect_protocol("tasks_image:latest", info) is expected


@pytest.mark.parametrize(
    "info",
    [
        pytest.param(image(), id="nothing"),
        pytest.param(image(ports={"8080/tcp"}), id="other-port"),
        pytest.param(image(ports={"5000/udp"}), id="udp-5000"),
        pytest.param(image({LABEL: "jsonrpc-stdio/2"}), id="unknown-label"),
        pytest.param(image({LABEL: "jsonrpc-stdio/2"}, {"5000/tcp"}), id="unknown-label-port"),
        pytest.param(image({LABEL: ""}, {"5000/tcp"}), id="empty-label-port"),
    ],
)
def test_unsupported_image_is_named(info: ImageInfo) -> None:
    """An image with neither a known label nor the seed port raises unsupported_image naming it."""
    with pytest.raises(UnsupportedImage) as caught:
        detect_protocol("registry.example.com/team/job:1.0", info)

    assert caught.value.code == "unsupported_image"
    assert "'registry.example.com/team/job:1.0'" in caught.value.message
    assert caught.value.data["image"] == "registry.example.com/team/job:1.0"
    assert caught.value.data["label"] == info.labels.get(LABEL)
