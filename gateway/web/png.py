"""A minimal PNG writer (8-bit grey or RGB) for previews a browser can show."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def encode_png(img: np.ndarray) -> bytes:
    """``img`` is (rows, cols) or (rows, cols, 3) uint8."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"PNG needs (rows, cols) or (rows, cols, 3), got {a.shape}")
    rows, cols = a.shape[:2]
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(rows))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", cols, rows, 8, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
