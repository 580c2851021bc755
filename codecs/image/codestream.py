"""A compressed frame's own header against the data set's.

A JPEG, JPEG-LS or JPEG 2000 codestream declares its size, components and bits per
sample (SOF / SIZ marker).  When the data set's Rows, Columns, Samples per Pixel or
Bits Allocated say otherwise, some decoders abort the whole process (python-gdcm on
a JPEG-LS with more Rows than its stream, or JPEG Lossless with Bits Allocated 32)
and others make a wrong image without a word.  Ingest refuses such an instance
(``gateway/dicom/validate.py``); every decode path checks again first, for instances
stored before the check existed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
}
J2K_FAMILY = {
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
HEAD_BYTES = 1 << 16  # how much of a frame's start the markers must lie within


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF, 0xF7})  # JPEG start-of-frame markers; 0xF7: JPEG-LS (SOF55)


def codestream_dims(head: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, bits per sample) a JPEG, JPEG-LS or raw JPEG 2000
    codestream declares in its SOF / SIZ marker (rows 0: JPEG's "set by a DNL
    marker"); None when ``head`` does not reach it or the stream is a JP2 wrapper."""
    if head[:4] == b"\xff\x4f\xff\x51" and len(head) >= 43:  # SOC, SIZ (PS3.5 A.4.4)
        xsiz, ysiz, xo, yo = struct.unpack_from(">4L", head, 8)
        return (ysiz - yo, xsiz - xo, struct.unpack_from(">H", head, 40)[0],
                (head[42] & 0x7F) + 1)
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            if i + 10 > len(head):
                return None
            rows, cols = struct.unpack_from(">HH", head, i + 5)
            return rows, cols, head[i + 9], head[i + 4]
        if marker == 0xDA:  # scan data before any frame header
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            i += 2
            continue
        i += 2 + struct.unpack_from(">H", head, i + 2)[0]
    return None


def codestream_mismatch(jpeg: bool, rows: Any, cols: Any, spp: int, bits: int,
                        heads: Iterable[bytes]) -> str | None:
    """Why the frames' codestreams (the first bytes of each) are not what the header
    says, or None.  Each one's own size, components and bits per sample (its SOF or
    SIZ marker) must be the header's: a decoder given a header larger than its
    stream (python-gdcm, JPEG-LS) or more Bits Allocated than JPEG holds aborts the
    whole process, and a smaller one makes a wrong image silently.  ``jpeg``: the
    JPEG family (at most 16 bits per sample), else JPEG 2000."""
    for k, head in enumerate(heads):
        dims = codestream_dims(head)
        if dims is None:
            continue
        h, w, c, p = dims
        if (h and h != rows) or w != cols or c != spp:
            return (f"frame {k + 1}: its codestream is {w} x {h or '?'} with {c} components, "
                    f"but (0028,0011) Columns = {cols}, (0028,0010) Rows = {rows}, (0028,0002) "
                    f"Samples per Pixel = {spp}: the header does not describe the pixels")
        if p > bits or (jpeg and bits > 16):
            return (f"frame {k + 1}: its codestream has {p}-bit samples, but (0028,0100) Bits "
                    f"Allocated = {bits}" + (" (a JPEG stream holds at most 16)" if jpeg and
                                             bits > 16 else "")
                    + ": the header does not describe the pixels")
    return None


def dataset_codestream_mismatch(ds: Any) -> str | None:
    """:func:`codestream_mismatch` of a read data set (an instance stored before the
    check existed is decoded only if it passes)."""
    from pydicom.encaps import generate_frames
    from pydicom.errors import BytesLengthException

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if (ts not in JPEG_FAMILY and ts not in J2K_FAMILY) or "PixelData" not in ds:
        return None
    try:
        n = int(ds.get("NumberOfFrames") or 1)
        heads = (f[:HEAD_BYTES] for f in generate_frames(ds.PixelData, number_of_frames=n))
        return codestream_mismatch(ts in JPEG_FAMILY, ds.get("Rows"), ds.get("Columns"),
                                   int(ds.get("SamplesPerPixel") or 1),
                                   int(ds.get("BitsAllocated") or 0), heads)
    except (ValueError, TypeError, StopIteration, BytesLengthException) as exc:
        return f"encapsulated Pixel Data cannot be split into frames: {exc}"
