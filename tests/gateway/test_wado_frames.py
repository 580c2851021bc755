"""WADO-RS frames located in the stored file agree with frames read the plain way.

``_map_frames`` finds each frame's byte ranges from the header and item tags
(nothing of the pixel data is read); ``_load_frames`` reads the whole instance
with pydicom.  Every shared file and generated multi-frame layouts must give
the same frames, byte for byte, or fall back (``None``) to the plain way.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from _data import good_files
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from fenji.gateway.dicom.validate import DEFLATED_LE, EXPLICIT_BE, check_part10
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb import frames as dicomweb


def _row(store: Store, data: bytes) -> dict[str, Any]:
    checked = check_part10(data)
    store.put(checked.part10, checked.info)
    row = store.query_one("SELECT sop_instance_uid, transfer_syntax_uid, sha256 FROM instances "
                          "WHERE sop_instance_uid = ?", (checked.info.sop_instance_uid,))
    assert row is not None
    return row


def _same(store: Store, row: dict[str, Any]) -> bool:
    """Mapped frames equal the loaded ones; returns whether the map applied."""
    fmap = dicomweb._map_frames(store, row)
    if fmap is None:
        return False
    loaded = dicomweb._load_frames(store, row)
    assert len(fmap.frames) == len(loaded.frames)
    for i, ranges in enumerate(fmap.frames):
        assert dicomweb._read_ranges(store, fmap.sha256, ranges) == loaded.frames[i], i
    return True


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_every_shared_file_maps_like_it_loads(store: Store) -> None:
    mapped = skipped = 0
    for p in good_files():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if "PixelData" not in pydicom.dcmread(p, specific_tags=["PixelData"]):
            continue
        row = _row(store, p.read_bytes())
        if _same(store, row):
            mapped += 1
        else:
            # Only the layouts that need the whole value fall back.
            assert str(ds.file_meta.TransferSyntaxUID) in (DEFLATED_LE, EXPLICIT_BE), p
            skipped += 1
    assert mapped >= 40, (mapped, skipped)


def _multiframe(frames: list[bytes], *, fragments: int, bot: bool, rows: int = 16,
                cols: int = 16) -> bytes:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2"  # multi-frame grayscale byte SC
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "OT", "P"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments, has_bot=bot)
    ds["PixelData"].VR = "OB"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("fragments", "bot", "maps"), [
    (1, True, True), (1, False, True), (3, True, True), (3, False, False)])
def test_generated_multiframe_layouts(store: Store, fragments: int, bot: bool,
                                      maps: bool) -> None:
    rng = np.random.default_rng(fragments * 10 + bot)
    # Codestream-shaped frames (SOI ... EOI) of lengths that split into even
    # fragments; only the item layout matters here, nothing decodes them.
    frames = [b"\xff\xd8" + rng.integers(0, 255, 6 * (i + 5) - 4, dtype=np.uint8).tobytes()
              + b"\xff\xd9" for i in range(7)]
    row = _row(store, _multiframe(frames, fragments=fragments, bot=bot))
    assert _same(store, row) is maps
    if maps:
        fmap = dicomweb._map_frames(store, row)
        assert fmap is not None
        assert [dicomweb._read_ranges(store, fmap.sha256, f) for f in fmap.frames] == frames


def test_native_frames_are_contiguous_runs(store: Store) -> None:
    ds = pydicom.dcmread(next(p for p in good_files() if "ct" in p.parts))
    arr = ds.pixel_array
    stack = np.stack([arr, arr[::-1], arr[:, ::-1]])
    ds.NumberOfFrames = 3
    ds.PixelData = stack.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    row = _row(store, buf.getvalue())
    fmap = dicomweb._map_frames(store, row)
    assert fmap is not None and all(len(f) == 1 for f in fmap.frames)
    got = [dicomweb._read_ranges(store, fmap.sha256, f) for f in fmap.frames]
    assert got == [a.tobytes() for a in stack]
