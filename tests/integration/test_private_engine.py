"""The private engine fixture (tests/integration/engines.py): a second dockerd of a test's own."""

from __future__ import annotations

import pytest

from tests.integration.conftest import docker
from tests.integration.engines import PrivateDockerd

pytestmark = pytest.mark.docker


@pytest.mark.timeout(300)
def test_a_container_runs_on_a_private_engine_and_not_on_the_main_one(
    private_dockerd: PrivateDockerd, base_image: str
) -> None:
    """An image loaded from the main engine runs there; the main engine never sees its
    containers; a restart (SIGTERM) or a crash (SIGKILL) and a start stop them and the
    engine answers again; cleanup leaves no process and no directory."""
    engine = private_dockerd
    assert engine.containerd_socket.is_socket()  # its own containerd, not the main one's
    engine.load_image(base_image)
    label = "io.tarea.test=private-engine"
    run = engine.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--label",
        label,
        base_image,
        "python3",
        "-c",
        "print('ran on the private engine')",
    )
    assert run.stdout.strip() == "ran on the private engine"

    engine.docker(
        "run",
        "-d",
        "--network",
        "none",
        "--stop-timeout",
        "1",
        "--label",
        label,
        base_image,
        "sleep",
        "600",
    )
    [running] = engine.containers(f"label={label}", "status=running")
    assert docker("ps", "-aq", "--filter", f"label={label}").stdout.split() == []

    engine.restart()
    assert engine.starts == 2
    assert engine.answers()
    assert engine.containers(f"label={label}", "status=running") == []
    assert engine.containers(f"label={label}", "status=exited") == [running]

    engine.docker("run", "-d", "--network", "none", "--label", label, base_image, "sleep", "600")
    engine.kill()  # a crash: its containerd dies with it, a zombie that start() sees past
    engine.start()
    assert engine.starts == 3
    assert engine.containers(f"label={label}", "status=running") == []

    engine.cleanup()
    assert not engine.running()
    assert engine.leftover_pids() == []
    assert not engine.root.exists()
