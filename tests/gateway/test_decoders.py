"""The pixel decoders pydicom finds here (python-gdcm, Pillow, its own RLE) agree on
every compressed shared file, and JPEG Lossless / JPEG-LS decode at all: the gate's
pixel checks and WADO-RS transcoding rest on them."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from _data import good_files
from pydicom.pixels import get_decoder, pixel_array

COMPRESSED = [p for p in good_files()
              if pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
              .is_compressed]


def test_jpeg_lossless_and_jpeg_ls_have_a_decoder() -> None:
    for ts in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.80",
               "1.2.840.10008.1.2.4.81"):
        assert get_decoder(ts).is_available, ts


@pytest.mark.parametrize("path", COMPRESSED, ids=lambda p: p.name)
def test_every_available_decoder_gives_the_same_pixels(path) -> None:  # type: ignore[no-untyped-def]
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    out: dict[str, np.ndarray | str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for plugin in get_decoder(ts).available_plugins:
            try:
                out[plugin] = pixel_array(str(path), decoding_plugin=plugin)
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                out[plugin] = f"{type(exc).__name__}: {exc}"
    arrays = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    if not arrays:  # 12-bit JPEG Extended: no plugin here; each says it does not support it
        assert all("support" in str(v) for v in out.values()), out
        return
    first = next(iter(arrays.values()))
    for name, a in arrays.items():
        assert a.dtype == first.dtype and np.array_equal(a, first), (name, out.keys())
