"""What the benchmark needs before it measures: wrk, the base image, the seed image."""

from __future__ import annotations

import subprocess

from bench.config import ROOT, SEED_IMAGE, SEED_IMAGE_DIR
from bench.procs import BenchError


def _run(argv: list[str], what: str) -> str:
    """Run ``argv`` from the repository root; its stdout, stripped (stderr passes through)."""
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}")
    return done.stdout.strip()


def ensure_wrk() -> None:
    """Make sure wrk is installed (``bench/ensure-wrk.sh`` installs it when root on Debian)."""
    _run([str(ROOT / "bench" / "ensure-wrk.sh")], "ensuring wrk")


def base_image(wanted: str | None) -> str:
    """The base image to build FROM: ``wanted``, else what ``scripts/ensure-base-image.sh`` says."""
    if wanted:
        return wanted
    return _run([str(ROOT / "scripts" / "ensure-base-image.sh")], "finding the base image")


def build_seed_image(base: str) -> None:
    """Build the seed-style HTTP test image from its sources, FROM ``base``."""
    _run(
        [
            "docker",
            "build",
            "-q",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            SEED_IMAGE,
            str(SEED_IMAGE_DIR),
        ],
        f"building {SEED_IMAGE}",
    )
    print(f"bench: built {SEED_IMAGE} (FROM {base})", flush=True)
