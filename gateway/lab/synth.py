"""Derived test instances, made at run time from the real shared data.

Load and stress runs need many distinct instances; the shared data has a few
dozen.  :func:`derive` writes copies of real files with fresh UIDs (and,
optionally, the image cut down to ``size`` x ``size`` pixels, e.g. the 39 kB
CT slices of the ingest benchmark).  Nothing generated is kept in git.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

# fenji's UID root for derived test objects (never used for patient data).
TEST_UID_PREFIX = "1.2.826.0.1.3680043.10.1419.9."


def derive(sources: Iterable[Path], out_dir: Path, n: int, *, size: int | None = None,
           prefix: str = "inst", studies: int = 1) -> list[Path]:
    """Write ``n`` instances cycling over ``sources`` with new SOP/Series/Study UIDs.

    ``studies`` splits the output into that many studies (one series each).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    srcs = [pydicom.dcmread(p) for p in sources]
    if not srcs:
        raise ValueError("derive: no source files")
    study_uids = [generate_uid(prefix=TEST_UID_PREFIX) for _ in range(studies)]
    series_uids = [generate_uid(prefix=TEST_UID_PREFIX) for _ in range(studies)]
    paths = []
    per_study = max(1, -(-n // studies))
    for i in range(n):
        ds = srcs[i % len(srcs)].copy()
        k = min(i // per_study, studies - 1)
        uid = generate_uid(prefix=TEST_UID_PREFIX)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = study_uids[k]
        ds.SeriesInstanceUID = series_uids[k]
        ds.InstanceNumber = i + 1
        if size is not None and "PixelData" in ds and not ds.file_meta.TransferSyntaxUID \
                .is_compressed:
            arr = ds.pixel_array
            if arr.ndim == 2:
                r0 = max(0, (arr.shape[0] - size) // 2)
                c0 = max(0, (arr.shape[1] - size) // 2)
                cut = np.ascontiguousarray(arr[r0:r0 + size, c0:c0 + size])
                ds.Rows, ds.Columns = cut.shape
                ds.PixelData = cut.tobytes()
        path = out_dir / f"{prefix}_{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def iter_sizes(paths: Iterable[Path]) -> Iterator[int]:
    for p in paths:
        yield p.stat().st_size
