"""tarea new, tarea build and tarea check-image, as a person runs them, on the real engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import IMAGES, _build, docker

pytestmark = pytest.mark.docker

TAREA = Path(sys.executable).parent / "tarea"
NEVER_READY_IMAGE = "tarea-test-never-ready:latest"


def tarea(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the ``tarea`` command line (of this virtualenv)."""
    if not TAREA.exists():
        pytest.fail(f"{TAREA} is missing: run `make venv`", pytrace=False)
    return subprocess.run(
        [str(TAREA), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )


def check(image: str, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """``tarea check-image --json``: its exit code and the checks by name."""
    run = tarea("check-image", image, "--json", *args)
    try:
        report: dict[str, Any] = json.loads(run.stdout)
    except ValueError:
        pytest.fail(f"check-image printed no JSON:\n{run.stdout}\n{run.stderr}", pytrace=False)
    return run.returncode, {c["name"]: c for c in report["checks"]}


def statuses(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def test_a_new_python_image_builds_offline_and_conforms(tmp_path: Path, base_image: str) -> None:
    """tarea new writes a directory whose own test passes; tarea build builds it with no
    network from the base; tarea check-image passes every check on it."""
    made = tarea("new", "demo-authoring", "--dir", str(tmp_path))
    assert made.returncode == 0, made.stderr
    directory = tmp_path / "demo-authoring"
    assert {p.name for p in directory.iterdir()} >= {"Dockerfile", "tasks.py", "README.md"}
    assert "ARG BASE_IMAGE" in (directory / "Dockerfile").read_text()
    assert "# demo-authoring" in (directory / "README.md").read_text()
    own = subprocess.run(
        [sys.executable, "-m", "unittest", "-q"], cwd=directory, capture_output=True, text=True
    )
    assert own.returncode == 0, own.stderr
    tag = "tarea-test-authoring-demo:latest"
    built = tarea("build", str(directory), "-t", tag, "--base", base_image)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == tag
    assert f"BASE_IMAGE={base_image}, no network" in built.stderr
    code, checks = check(tag, "--call", "saludar", "--params", '{"nombre": "Ana", "veces": 3}')
    assert code == 0, checks
    assert set(statuses(checks).values()) == {"pass"}, checks
    assert checks["progress"]["reason"].startswith("3 well-formed")
    assert "saludar without 'nombre'" in checks["bad_params"]["reason"]


def test_the_shell_template_tests_itself(tmp_path: Path) -> None:
    """The shell template's test.sh passes with nothing but sh and awk."""
    assert tarea("new", "wc", "--lang", "shell", "--dir", str(tmp_path)).returncode == 0
    run = subprocess.run(["sh", str(tmp_path / "wc" / "test.sh")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout
    assert run.stdout.count("ok ") == 8


def test_the_node_template_tests_itself(tmp_path: Path) -> None:
    """The Node.js template's test passes under node --test (Debian's nodejs)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: make test_tools (or apt-get install nodejs)", pytrace=False)
    assert tarea("new", "hola-node", "--lang", "node", "--dir", str(tmp_path)).returncode == 0
    directory = tmp_path / "hola-node"
    assert '"hola-node"' in (directory / "tasks.js").read_text()
    run = subprocess.run([node, "--test"], cwd=directory, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# pass 2" in run.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["Not_A-Name!"], "cannot name an image"),
        (["fine", "--lang", "cobol"], "--lang must be one of python, shell, node"),
    ],
)
def test_new_refuses_what_it_cannot_write(tmp_path: Path, args: list[str], says: str) -> None:
    """A bad name or language is a usage error (exit 2) saying what is wrong; nothing is written."""
    run = tarea("new", *args, "--dir", str(tmp_path))
    assert run.returncode == 2
    assert says in " ".join(run.stderr.split()).replace("│", "").replace("  ", " ")
    assert list(tmp_path.iterdir()) == []


def test_build_says_why_it_failed(tmp_path: Path, base_image: str) -> None:
    """No Dockerfile, or a failing step, is exit 1 with the reason; never a traceback."""
    missing = tarea("build", str(tmp_path))
    assert missing.returncode == 1
    assert "has no Dockerfile" in missing.stderr
    (tmp_path / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN exit 7\n")
    failing = tarea(
        "build", str(tmp_path), "-t", "tarea-test-authoring-fails:1", "--base", base_image
    )
    assert failing.returncode == 1
    assert "returned a non-zero code: 7" in failing.stderr
    assert "Traceback" not in failing.stderr


def test_check_image_names_what_a_misbehaving_image_gets_wrong(misbehaving_image: str) -> None:
    """An image answering positional params with a result fails bad_params, with the reason;
    what it does right still passes; exit 1."""
    code, checks = check(misbehaving_image)
    assert code == 1
    assert statuses(checks) == {
        "protocol": "pass",
        "ready": "pass",
        "unknown_method": "pass",
        "discovery": "skip",
        "bad_params": "fail",
        "large_message": "pass",
        "call": "skip",
        "progress": "skip",
        "log_marks": "pass",
        "eof": "pass",
    }
    assert "not error -32602" in checks["bad_params"]["reason"]


def test_check_image_on_an_image_that_dies_or_never_starts(
    dies_at_start_image: str, base_image: str
) -> None:
    """An image that dies, or never says ready within the bound, fails ready with why;
    the checks after it are skipped."""
    code, checks = check(dies_at_start_image)
    assert code == 1
    assert checks["ready"]["status"] == "fail"
    assert "stdout ended before ready" in checks["ready"]["reason"]
    assert checks["eof"]["status"] == "skip"
    never = _build(base_image, NEVER_READY_IMAGE, IMAGES / "never_ready")
    code, checks = check(never, "--ready-timeout", "1.5")
    assert code == 1
    assert checks["ready"]["reason"] == "no ready notification within 1.5 s"
    assert not docker("ps", "-aq", "--filter", "label=io.tarea.check=true").stdout.strip()


def test_check_image_checks_seed_images_against_the_seed_contract(
    seed_http_image: str, course_image: str
) -> None:
    """Label-less seed-HTTP images are checked on /status/ and /ejecutarTarea/."""
    for image in (seed_http_image, course_image):
        code, checks = check(image)
        assert code == 0, checks
        assert statuses(checks) == {
            "protocol": "pass",
            "status": "pass",
            "unknown_operation": "pass",
            "call": "pass",
        }
        assert "seed-http" in checks["protocol"]["reason"]


def test_check_image_of_an_image_that_is_not_here() -> None:
    """An image that is not local fails at once, saying so (check-image never pulls)."""
    code, checks = check("tarea-test-authoring-absent:1")
    assert code == 1
    assert checks["protocol"]["reason"] == (
        "tarea-test-authoring-absent:1 is not a local image: build it first"
    )
