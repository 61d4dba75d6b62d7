"""Image grids as PNG files, written with zlib alone (no imaging library is a dependency)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F


def write_png(pixels: torch.Tensor, path) -> Path:
    """Write uint8 pixels (H, W) grey or (H, W, 3) RGB as an 8-bit PNG."""
    pixels = pixels.detach().cpu().to(torch.uint8).contiguous()
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.dim() == 2 else 2
    rows = pixels.reshape(height, -1).numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 (none) on every scanline

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return path


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 1, value_range=(-1.0, 1.0), scale: int = 1) -> torch.Tensor:
    """(N, C, H, W) images -> one uint8 picture (H', W') or (H', W', 3), ``nrow`` images per row.

    Values are mapped from ``value_range`` to 0..255 (clamped); each image is enlarged ``scale``
    times (nearest) so that 8x8 digits are visible; cells are separated by ``padding`` white pixels.
    """
    images = images.detach().float().cpu()
    low, high = value_range
    images = ((images - low) / (high - low)).clamp(0.0, 1.0)
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    n, channels, height, width = images.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    canvas = torch.ones(channels, nrows * (height + padding) + padding, ncol * (width + padding) + padding)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        canvas[:, top:top + height, left:left + width] = images[i]
    pixels = (canvas * 255.0).round().to(torch.uint8)
    return pixels[0] if channels == 1 else pixels[:3].permute(1, 2, 0)


def save_grid(images: torch.Tensor, path, nrow: int = 8, *, padding: int = 1, value_range=(-1.0, 1.0), scale: int | None = None) -> Path:
    """Save (N, C, H, W) images in ``value_range`` as a PNG grid with ``nrow`` images per row.

    ``scale`` defaults to enlarging images to at least 32 pixels high.
    """
    if scale is None:
        scale = max(1, -(-32 // images.shape[-2]))
    return write_png(make_grid(images, nrow, padding, value_range, scale), path)


def read_png(path) -> torch.Tensor:
    """Read back a PNG written by :func:`write_png` (8-bit grey or RGB, unfiltered): uint8 (H, W[, 3])."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"'{path}' is not a PNG file")
    return _read_chunks(data)


def _read_chunks(data: bytes) -> torch.Tensor:
    pos, idat = 8, b""
    width = height = color_type = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(tag + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in chunk {tag!r}")
        if tag == b"IHDR":
            width, height, _, color_type = struct.unpack(">IIBB", body[:10])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    channels = 1 if color_type == 0 else 3
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    rows = [raw[i * stride + 1:(i + 1) * stride] for i in range(height)]
    pixels = torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels
