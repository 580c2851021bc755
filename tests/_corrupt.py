"""Corrupted input for a decoder (import as ``from _corrupt import assert_flip_and_cut_raise``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import strategies as st

from fenji.codecs.errors import DecodeError


def assert_flip_and_cut_raise(blob: bytes, decode: Callable[[bytes], object],
                              data: st.DataObject) -> None:
    """``decode`` raises DecodeError on ``blob`` with one drawn bit flipped, and on a
    drawn truncation of it (never a crash, never a wrong result)."""
    flipped = bytearray(blob)
    i = data.draw(st.integers(0, len(blob) - 1), label="offset")
    flipped[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    with pytest.raises(DecodeError):
        decode(bytes(flipped))
    cut = data.draw(st.integers(0, len(blob) - 1), label="cut")
    with pytest.raises(DecodeError):
        decode(blob[:cut])


def aborting_jpeg() -> bytes:
    """The shared JPEG Lossless CT with one byte changed: the marker after SOI is no
    marker.  Its header still describes its codestream (ingest's check passes), its
    EOI is in place; Pillow refuses it, and pydicom's fallback, python-gdcm, aborts
    the process (SIGABRT).  Found by fuzzing the shared JPEG files."""
    import io

    import pydicom
    from _data import DICOM_DIR
    from pydicom.encaps import encapsulate, generate_frames

    from fenji.codecs.image.codestream import dataset_codestream_mismatch

    ds = pydicom.dcmread(DICOM_DIR / "other" / "ct_jpeg_lossless_sv1.dcm")
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame[2] = 0xB7
    ds.PixelData = encapsulate([bytes(frame)])
    assert dataset_codestream_mismatch(ds) is None
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
