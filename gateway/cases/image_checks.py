"""Adapter: pydicom datasets -> the plain header dicts and arrays that
``fenji.codecs.image.quality`` checks."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from fenji.codecs.image import quality as iq

log = logging.getLogger(__name__)

_KEYS = ("SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID",
         "SeriesInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
         "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation",
         "PhotometricInterpretation")


def header_of(ds: Dataset) -> dict[str, Any]:
    """The plain header dict of ``ds`` (values as int/str/list of float)."""
    h: dict[str, Any] = {}
    for k in _KEYS:
        v = ds.get(k)
        if v is None or v == "":
            continue
        h[k] = int(v) if k in ("Rows", "Columns", "NumberOfFrames", "BitsAllocated",
                               "BitsStored", "SamplesPerPixel", "PixelRepresentation",
                               "InstanceNumber") else str(v)
    for k in ("ImagePositionPatient", "ImageOrientationPatient"):
        if ds.get(k) is not None:
            h[k] = [float(x) for x in ds.get(k)]
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    pd = ds.get("PixelData")
    h["PixelDataLength"] = (len(pd) if pd is not None and ts is not None
                            and not ts.is_compressed else None)
    return h


def frames_of(ds: Dataset) -> np.ndarray | None:
    """Stored pixel values (no rescale), or ``None`` if they cannot be decoded."""
    if "PixelData" not in ds:
        return None
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for bad or unsupported data
        log.debug("pixel data of %s not decodable: %s", ds.get("SOPInstanceUID"), exc)
        return None


def check_series(datasets: Sequence[Dataset],
                 thresholds: iq.ImageQualityThresholds | None = None,
                 excluded: Sequence[Dataset] = ()) -> dict[str, Any]:
    """Quality report of datasets that belong together (one series); ``excluded``
    are instances of it the technician left out (their positions still count)."""
    return iq.series_report([header_of(d) for d in datasets], [frames_of(d) for d in datasets],
                            thresholds, excluded=[header_of(d) for d in excluded])


def check_files(paths: Iterable[str | Path],
                thresholds: iq.ImageQualityThresholds | None = None) -> dict[str, dict[str, Any]]:
    """Read files, group them by Series Instance UID, one report per series.

    A file that cannot be read as DICOM gets its own unacceptable report, keyed by
    its path, instead of stopping the others."""
    groups: dict[str, list[Dataset]] = defaultdict(list)
    out: dict[str, dict[str, Any]] = {}
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p))
        except (OSError, ValueError, MemoryError, pydicom.errors.InvalidDicomError) as exc:
            reason = f"{p}: not readable as DICOM ({type(exc).__name__}: {exc}): resend it"
            out[str(p)] = {"verdict": iq.UNACCEPTABLE, "reasons": [reason], "instances": {},
                           "series": {"n_instances": 0, "checks": []}}
            continue
        groups[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    out.update({uid: check_series(dss, thresholds) for uid, dss in groups.items()})
    return out
