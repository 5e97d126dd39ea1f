"""An edge filter (Sobel) on an image: a tarea task image, standard library only."""

from __future__ import annotations

import base64
import binascii
import math

from png import read_gray, write_gray

from tarea.runtime import TaskError, progress, serve, task

#: The largest image taken, in pixels (pure Python: about a second per megapixel).
MAX_PIXELS = 4_000_000


@task
def bordes(imagen: str, umbral: int | None = None) -> dict[str, object]:
    """Find the edges of an image with the Sobel operator.

    ``imagen`` is a PNG (8-bit: gray, RGB, RGBA or palette) in base64. The
    answer's ``imagen`` is a grayscale PNG in base64, each pixel the gradient's
    magnitude (capped at 255), or 255/0 when ``umbral`` is given (at or above
    it: an edge). Progress is reported as rows are done.
    """
    if umbral is not None and not 0 <= umbral <= 255:
        raise TaskError("umbral must be from 0 to 255", {"param": "umbral"})
    try:
        data = base64.b64decode(imagen, validate=True)
        width, height, gray = read_gray(data, MAX_PIXELS)
    except (binascii.Error, ValueError) as exc:
        raise TaskError(
            f"imagen is not a base64 PNG this task reads: {exc}", {"param": "imagen"}
        ) from None
    edges = sobel(width, height, gray, umbral)
    return {
        "imagen": base64.b64encode(write_gray(width, height, edges)).decode("ascii"),
        "ancho": width,
        "alto": height,
    }


def sobel(
    width: int, height: int, gray: list[bytearray], umbral: int | None = None
) -> list[bytearray]:
    """The Sobel gradient magnitude of each pixel (the image's border rows and columns: 0)."""
    out = [bytearray(width) for _ in range(height)]
    step = max(1, height // 10)
    for y in range(1, height - 1):
        above, row, below = gray[y - 1], gray[y], gray[y + 1]
        line = out[y]
        for x in range(1, width - 1):
            gx = (above[x + 1] + 2 * row[x + 1] + below[x + 1]) - (
                above[x - 1] + 2 * row[x - 1] + below[x - 1]
            )
            gy = (below[x - 1] + 2 * below[x] + below[x + 1]) - (
                above[x - 1] + 2 * above[x] + above[x + 1]
            )
            magnitude = min(255, int(math.hypot(gx, gy)))
            line[x] = magnitude if umbral is None else (255 if magnitude >= umbral else 0)
        if y % step == 0:
            progress(y / height, f"{y} of {height} rows")
    return out


if __name__ == "__main__":
    serve()
