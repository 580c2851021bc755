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
