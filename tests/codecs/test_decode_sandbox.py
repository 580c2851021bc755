"""Compressed pixel data is decoded in a child process (fenji.codecs.image.sandbox).

python-gdcm aborts the whole process on some damaged JPEG streams whose headers
are consistent; one byte changed in a shared file is enough.  The sandbox's
decodes equal pydicom's in-process ones, a crash or a hang is a typed error for
that instance, and the next decode works.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _corrupt import aborting_jpeg
from _data import DICOM_DIR
from pydicom.encaps import encapsulate, generate_frames

from fenji.codecs.errors import DecodeError
from fenji.codecs.image import sandbox

pytestmark = pytest.mark.timeout(300)
OTHER = DICOM_DIR / "other"
COMPRESSED = ["ct_j2k_lossless.dcm", "ct_j2k_lossy.dcm", "ct_jpeg_lossless_sv1.dcm",
              "ct_jpegls_lossless.dcm", "ct_jpegls_near_lossless.dcm", "ct_rle.dcm",
              "us_jpeg_baseline_lossy.dcm", "mr_mosaic_j2k_lossless_gdcm.dcm"]


def test_the_abort_is_real_without_the_sandbox(tmp_path: Path) -> None:
    f = tmp_path / "bad.dcm"
    f.write_bytes(aborting_jpeg())
    code = f"import pydicom; pydicom.dcmread({str(f)!r}).pixel_array"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == -6, (done.returncode, done.stderr[-400:])   # SIGABRT
    assert b"gdcm" in done.stderr and b"Traceback" not in done.stderr


@pytest.mark.parametrize("name", COMPRESSED)
def test_sandbox_decodes_equal_pydicoms_in_process(name: str) -> None:
    ds = pydicom.dcmread(OTHER / name)
    want = pydicom.dcmread(OTHER / name).pixel_array
    got = sandbox.pixel_array(ds)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    first = next(generate_frames(ds.PixelData, number_of_frames=n))
    raw = sandbox.frame_array(ds, first)
    from pydicom.pixels import pixel_array

    assert np.array_equal(raw, pixel_array(pydicom.dcmread(OTHER / name), index=0, raw=True))


def test_sandbox_decompress_is_pydicoms() -> None:
    ours = pydicom.dcmread(OTHER / "us_jpeg_baseline_lossy.dcm")
    theirs = pydicom.dcmread(OTHER / "us_jpeg_baseline_lossy.dcm")
    sandbox.decompress(ours)
    theirs.decompress(generate_instance_uid=False)
    assert ours.PixelData == theirs.PixelData
    for kw in ("PhotometricInterpretation", "PlanarConfiguration", "SOPInstanceUID"):
        assert ours.get(kw) == theirs.get(kw), kw
    assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID
    assert np.array_equal(ours.pixel_array, theirs.pixel_array)


def test_a_decoder_abort_is_a_typed_error_and_the_next_decode_works() -> None:
    bad = pydicom.dcmread(io.BytesIO(aborting_jpeg()))
    for _ in range(2):          # twice: the child is started again after each crash
        with pytest.raises(sandbox.DecoderCrashed, match="SIGABRT"):
            sandbox.pixel_array(bad)
        good = pydicom.dcmread(OTHER / "ct_jpeg_lossless_sv1.dcm")
        assert sandbox.pixel_array(good).shape == (512, 512)
    assert issubclass(sandbox.DecoderCrashed, DecodeError)


def test_a_decoder_that_errs_gives_its_message() -> None:
    ds = pydicom.dcmread(OTHER / "ct_j2k_lossless.dcm")
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    with pytest.raises(ValueError, match="Unable to decode"):
        sandbox.pixel_array(ds)


def test_a_child_that_never_answers_is_stopped() -> None:
    child = sandbox._Child(lambda i, o: [sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(DecodeError, match="longer than 1 s"):
        child.call(("array", None, None, False), timeout_s=1.0)
    assert child.proc is None          # killed and reaped


def test_a_child_that_dies_at_once_is_a_crash() -> None:
    child = sandbox._Child(lambda i, o: [sys.executable, "-c", "import os; os.abort()"])
    with pytest.raises(sandbox.DecoderCrashed, match="SIGABRT"):
        child.call(("array", None, None, False), timeout_s=60.0)


def test_native_pixels_are_decoded_here() -> None:
    ds = pydicom.dcmread(OTHER / "ct_implicit_vr_le.dcm")
    assert np.array_equal(sandbox.pixel_array(ds), pydicom.dcmread(
        OTHER / "ct_implicit_vr_le.dcm").pixel_array)
