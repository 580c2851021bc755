"""What every fenji stream checks before it decodes: magic, version and the
trailing CRC-32 (pixel, waveform and instance streams share the layout)."""

from __future__ import annotations

import struct
import zlib

from fenji.codecs.errors import DecodeError


def check_head(what: str, magic: bytes, want: bytes, version: int, supported: int) -> None:
    """``what``'s magic and format version, as read from its header."""
    if magic != want:
        raise DecodeError(f"{what} magic {magic!r} != {want!r}")
    if version != supported:
        raise DecodeError(f"{what} version {version} is not supported (max {supported})")


def check_crc(what: str, buf: bytes | memoryview) -> None:
    """The CRC-32 of everything but the last 4 bytes equals those bytes (little-endian)."""
    if zlib.crc32(buf[:-4]) != struct.unpack_from("<I", buf, len(buf) - 4)[0]:
        raise DecodeError(f"{what} CRC-32 mismatch (corrupt or truncated)")
