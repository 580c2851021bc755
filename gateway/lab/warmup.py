"""Compile and cache the Numba kernels once, at install time (``make`` runs this).

Numba compiles a kernel the first time it meets an argument type and keeps
the machine code in its on-disk cache.  Without this step the first case a
freshly installed node releases pays ~8 s of compilation inside `fenji case
send` (measured: the demo's STAT preview at 11.1 s on a fresh clone, 3.7 s
after).  Here a few small synthetic images of the common pixel types go
through the same paths a release takes: the quality gate, the preview and the
lossless codec (encode and decode).  Nothing is written except Numba's cache.
"""

from __future__ import annotations

import io
import sys
import time

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def _image(rows: int, cols: int, dtype: str, samples: int = 1) -> bytes:
    rng = np.random.default_rng(7)
    shape = (rows, cols) if samples == 1 else (rows, cols, samples)
    if dtype == "int16":
        px = (rng.normal(0, 200, shape) + 40 * np.sin(np.arange(cols) / 5)).astype("<i2")
    elif dtype == "uint16":
        px = rng.integers(0, 4096, shape, dtype=np.uint16)
    else:
        px = rng.integers(0, 256, shape, dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if samples == 1 else \
        "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.Modality = "WARMUP", "WARMUP", "CT" if samples == 1 \
        else "US"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    bits = 8 if dtype == "uint8" else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits if bits == 8 else 12, \
        (bits if bits == 8 else 12) - 1
    ds.PixelRepresentation = 1 if dtype == "int16" else 0
    ds.PixelData = px.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def warm() -> float:
    from fenji.codecs.compress.bundle import make_preview
    from fenji.codecs.compress.instance import decode_instance, encode_instance
    from fenji.codecs.compress.warm import warm as codec_warm
    from fenji.gateway.cases import gate as quality_gate

    t0 = time.monotonic()
    blobs = [_image(64, 64, "int16"), _image(64, 64, "uint16"), _image(48, 48, "uint8", 3)]
    for blob in blobs:
        for effort in ("fast", "max"):
            enc = encode_instance(blob, effort=effort)
            if decode_instance(enc) != blob:
                raise RuntimeError("warm-up round trip was not byte-exact")
        make_preview(blob)
    quality_gate.assess(blobs[:2])
    codec_warm()  # what a running node loads at its start (waveforms too)
    return time.monotonic() - t0


if __name__ == "__main__":
    try:
        s = warm()
    except Exception as exc:  # never fail an install over a cache warm-up
        print(f"numba warm-up skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(0)
    print(f"numba kernels compiled and cached ({s:.1f} s)")
