"""Read and write PNG images with the standard library alone (zlib, struct).

Reads 8-bit, non-interlaced PNGs: grayscale, RGB, grayscale with alpha, RGBA
and palette images, with all five row filters. Writes 8-bit grayscale.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Samples per pixel of each color type (3: palette indices).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PngError(ValueError):
    """The bytes are not a PNG this module reads; the message says why."""


def read_gray(data: bytes, max_pixels: int = 16_000_000) -> tuple[int, int, list[bytearray]]:
    """Decode a PNG into 8-bit luminance rows: ``(width, height, rows)``."""
    if not data.startswith(SIGNATURE):
        raise PngError("not a PNG (no PNG signature)")
    pos, header, palette, idat = len(SIGNATURE), None, b"", []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise PngError(f"the {kind.decode('latin-1')} chunk is cut short")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise PngError("no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in _CHANNELS:
        raise PngError(f"only 8-bit PNGs are read (this one: depth {depth}, color type {color})")
    if interlace:
        raise PngError("interlaced PNGs are not read")
    if width == 0 or height == 0 or width * height > max_pixels:
        raise PngError(f"{width}x{height} is not within 1..{max_pixels} pixels")
    channels = _CHANNELS[color]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PngError(f"the image data does not decompress: {exc}") from None
    stride = width * channels
    if len(raw) < height * (stride + 1):
        raise PngError("the image data is shorter than its size says")
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        row = _unfilter(
            raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
        )
        rows.append(_luminance(row, color, channels, palette))
        previous = row
    return width, height, rows


def _unfilter(kind: int, row: bytearray, prev: bytearray, bpp: int) -> bytearray:
    if kind == 0:
        return row
    for i in range(len(row)):
        left = row[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            row[i] = (row[i] + left) & 0xFF
        elif kind == 2:
            row[i] = (row[i] + up) & 0xFF
        elif kind == 3:
            row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            corner = prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
            row[i] = (row[i] + pred) & 0xFF
        else:
            raise PngError(f"unknown row filter {kind}")
    return row


def _luminance(row: bytearray, color: int, channels: int, palette: bytes) -> bytearray:
    if color == 0:
        return row
    if color == 4:
        return row[0::2]
    if color == 3:
        if len(palette) < 3:
            raise PngError("a palette image without a palette")
        rgb = bytearray()
        for index in row:
            rgb += palette[index * 3 : index * 3 + 3] or b"\0\0\0"
        row, channels = rgb, 3
    r, g, b = row[0::channels], row[1::channels], row[2::channels]
    return bytearray((299 * x + 587 * y + 114 * z) // 1000 for x, y, z in zip(r, g, b, strict=True))


def write_gray(width: int, height: int, rows: list[bytearray]) -> bytes:
    """Encode 8-bit luminance rows as a grayscale PNG."""
    raw = b"".join(b"\0" + bytes(row) for row in rows)
    return (
        SIGNATURE
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
