"""The images under examples/, built with tarea build and run by a real server and engine."""

from __future__ import annotations

import base64
import filecmp
import json
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import ROOT
from tests.integration.test_authoring import check, tarea

pytestmark = pytest.mark.docker

EXAMPLES = ROOT / "examples"
SAMPLE_CALLS = {
    "sobel": ("bordes", {"imagen": ""}),  # filled in below with a real PNG
    "wordcount": ("contar_palabras", {"texto": "uno dos\ntres dos"}),
    "shell-wordcount": ("contar_palabras", {"texto": "uno dos\ntres"}),
}


@pytest.fixture(scope="session")
def examples(base_image: str, tasks_image: str) -> dict[str, str]:
    """Every example built with ``tarea build`` (tasks_image gives the Python ones the runtime)."""
    built = {}
    for name in SAMPLE_CALLS:
        tag = f"tarea-test-example-{name}:latest"
        run = tarea("build", str(EXAMPLES / name), "-t", tag, "--base", base_image)
        if run.returncode != 0:
            pytest.fail(f"tarea build examples/{name} failed:\n{run.stderr}", pytrace=False)
        built[name] = tag
    return built


def png_rgb(width: int, height: int, pixel: Any) -> bytes:
    """An RGB PNG, its rows filtered None, Sub and Up in turn (so a reader needs all three)."""
    raw = bytearray()
    previous = bytes(width * 3)
    for y in range(height):
        row = bytes(c for x in range(width) for c in pixel(x, y))
        kind = y % 3
        if kind == 1:
            row_out = bytes(
                (row[i] - (row[i - 3] if i >= 3 else 0)) & 0xFF for i in range(len(row))
            )
        elif kind == 2:
            row_out = bytes((row[i] - previous[i]) & 0xFF for i in range(len(row)))
        else:
            row_out = row
        raw += bytes([kind]) + row_out
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def gray_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Rows of an 8-bit grayscale PNG whose rows are unfiltered (what the example writes)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, data, size = 8, b"", (0, 0)
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert (depth, color) == (8, 0)
            size = (width, height)
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    raw = zlib.decompress(data)
    width, height = size
    rows = [raw[y * (width + 1) : (y + 1) * (width + 1)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def square(x: int, y: int) -> tuple[int, int, int]:
    """A white square from 8 to 15 on a black 24x24 image (a red tint outside)."""
    inside = 8 <= x <= 15 and 8 <= y <= 15
    return (255, 255, 255) if inside else (40, 0, 0)


def run(client: httpx.Client, image: str, function: str, params: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        "/v1/tasks?wait=true", json={"image": image, "function": function, "params": params}
    )
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


@pytest.mark.parametrize("name", list(SAMPLE_CALLS))
def test_each_example_passes_check_image(examples: dict[str, str], name: str) -> None:
    """Every example conforms: each check passes, a real call and its progress included."""
    function, params = SAMPLE_CALLS[name]
    if name == "sobel":
        params = {"imagen": base64.b64encode(png_rgb(12, 12, square)).decode()}
    code, checks = check(examples[name], "--call", function, "--params", json.dumps(params))
    assert code == 0, checks
    assert {c["status"] for c in checks.values()} == {"pass"}, checks


def test_sobel_finds_the_edges_of_a_square(client: httpx.Client, examples: dict[str, str]) -> None:
    """The Sobel filter answers a grayscale PNG bright on the square's border, dark elsewhere."""
    image = base64.b64encode(png_rgb(24, 24, square)).decode()
    task = run(client, examples["sobel"], "bordes", {"imagen": image})
    assert task["status"] == "succeeded", task["error"]
    result = task["result"]
    assert (result["ancho"], result["alto"]) == (24, 24)
    width, height, rows = gray_pixels(base64.b64decode(result["imagen"]))
    assert (width, height) == (24, 24)
    assert [rows[12][8], rows[8][12], rows[12][15]] == [255, 255, 255]  # the border
    assert rows[12][12] == 0  # inside the square
    assert rows[3][3] == 0  # the background, uniform
    assert rows[0] == bytes(24)  # the image's own border rows are 0
    thresholded = run(client, examples["sobel"], "bordes", {"imagen": image, "umbral": 128})
    _, _, binary = gray_pixels(base64.b64decode(thresholded["result"]["imagen"]))
    assert {value for row in binary for value in row} == {0, 255}


def test_sobel_refuses_what_is_not_a_png(client: httpx.Client, examples: dict[str, str]) -> None:
    """Not base64, not a PNG: the task fails with a message naming imagen; a number is
    refused before it runs (the image describes itself)."""
    task = run(
        client, examples["sobel"], "bordes", {"imagen": base64.b64encode(b"GIF89a").decode()}
    )
    assert task["status"] == "failed"
    assert task["error"]["code"] == "task_error"
    assert "imagen is not a base64 PNG" in task["error"]["message"]
    refused = client.post(
        "/v1/tasks",
        json={"image": examples["sobel"], "function": "bordes", "params": {"imagen": 5}},
    )
    assert refused.status_code == 422
    assert refused.json()["field"] == "params.imagen"


def test_wordcount_counts_words_lines_and_the_most_frequent(
    client: httpx.Client, examples: dict[str, str]
) -> None:
    """Word count: words in all, distinct ones, lines, and the most frequent first."""
    text = "El perro y el gato.\nEl gato duerme; l'ami d'el-perro.\n\nFin"
    task = run(client, examples["wordcount"], "contar_palabras", {"texto": text, "top": 2})
    assert task["status"] == "succeeded", task["error"]
    assert task["result"] == {
        "palabras": 11,
        "distintas": 8,
        "lineas": 4,
        "frecuentes": [["el", 3], ["gato", 2]],
    }
    negative = run(client, examples["wordcount"], "contar_palabras", {"texto": "a", "top": -1})
    assert negative["error"]["code"] == "task_error"


def test_the_shell_image_describes_itself_and_counts(
    client: httpx.Client, examples: dict[str, str]
) -> None:
    """The POSIX shell image (no tarea code) answers rpc.discover, so the server lists its
    function and refuses bad params before dispatch; its count is right."""
    image = examples["shell-wordcount"]
    listed = client.get(f"/v1/images/{image}/functions").json()
    assert listed["described"] is True
    assert [f["name"] for f in listed["functions"]] == ["contar_palabras"]
    assert listed["functions"][0]["params"] == [
        {"name": "texto", "required": True, "schema": {"type": "string"}}
    ]
    task = run(client, image, "contar_palabras", {"texto": "uno  dos\ttres\ncuatro\n"})
    assert task["status"] == "succeeded", task["error"]
    assert task["result"] == {"palabras": 4, "lineas": 2}
    refused = client.post(
        "/v1/tasks", json={"image": image, "function": "contar_palabras", "params": {}}
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "bad_params"
    assert refused.json()["field"] == "params.texto"


def test_the_shell_example_is_what_the_scaffold_writes(tmp_path: Path) -> None:
    """examples/shell-wordcount is tarea new --lang shell's output, file for file, and its
    own test passes with sh and awk alone."""
    assert (
        tarea("new", "shell-wordcount", "--lang", "shell", "--dir", str(tmp_path)).returncode == 0
    )
    written = tmp_path / "shell-wordcount"
    names = sorted(p.name for p in written.iterdir())
    assert names == sorted(p.name for p in (EXAMPLES / "shell-wordcount").iterdir())
    _, mismatch, errors = filecmp.cmpfiles(
        written, EXAMPLES / "shell-wordcount", names, shallow=False
    )
    assert (mismatch, errors) == ([], [])
    own = subprocess.run(
        ["sh", str(EXAMPLES / "shell-wordcount" / "test.sh")], capture_output=True, text=True
    )
    assert own.returncode == 0, own.stdout
