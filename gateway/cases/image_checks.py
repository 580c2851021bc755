"""Adapter: pydicom datasets -> the plain header dicts and arrays that
``fenji.codecs.image.quality`` checks."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

from fenji.codecs.image import quality as iq
from fenji.codecs.image import sandbox
from fenji.codecs.image.codestream import dataset_codestream_mismatch

log = logging.getLogger(__name__)

_KEYS = ("SOPClassUID", "SOPInstanceUID", "Modality", "PatientID", "StudyInstanceUID",
         "SeriesInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
         "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelRepresentation",
         "PhotometricInterpretation")


# What reading one element's value can raise when its bytes do not fit (a VR that
# lies, a value that is no number): that element is invalid, the rest still counts.
_BAD_VALUE = (ValueError, TypeError, OverflowError, BytesLengthException)


def header_of(ds: Dataset) -> dict[str, Any]:
    """The plain header dict of ``ds`` (values as int/str/list of float)."""
    h: dict[str, Any] = {}
    invalid: list[str] = []
    for k in _KEYS:
        try:
            v = ds.get(k)
            if v is None or v == "":
                continue
            h[k] = int(v) if k in _INTS else str(v)
        except _BAD_VALUE:
            invalid.append(f"{k} {_raw(ds, k)}")
    try:
        slope = ds.get("RescaleSlope")
        if slope is not None and slope != "":
            h["RescaleSlope"] = float(slope)
    except _BAD_VALUE:
        invalid.append(f"RescaleSlope {_raw(ds, 'RescaleSlope')}")
    for k in ("ImagePositionPatient", "ImageOrientationPatient"):
        try:
            v = ds.get(k)
            if v is not None:
                nums = [float(x) for x in (v if isinstance(v, (list, tuple, MultiValue))
                                           else [v])]
                if not all(math.isfinite(x) for x in nums):
                    raise ValueError(k)
                h[k] = nums
        except _BAD_VALUE:
            invalid.append(f"{k} {_raw(ds, k)}")
    if invalid:
        h["InvalidValues"] = invalid
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    pd = ds.get("PixelData")
    h["PixelDataLength"] = (len(pd) if pd is not None and ts is not None
                            and not _compressed(ts) else None)
    return h


_INTS = frozenset({"Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored",
                   "SamplesPerPixel", "PixelRepresentation", "InstanceNumber"})


def _raw(ds: Dataset, keyword: str) -> str:
    """The element's bytes as received, for a reason a person reads (short, printable)."""
    try:
        elem = ds.data_element(keyword)
        raw = elem.value if elem is not None else None
    except Exception:  # noqa: BLE001 - only for the message
        raw = None
    text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    return "'" + text.encode("unicode_escape").decode("ascii")[:60] + "'"


def _compressed(ts: pydicom.uid.UID) -> bool:
    """True for encapsulated syntaxes, and for a UID pydicom does not know as a
    transfer syntax (its length cannot be checked, so it is not)."""
    try:
        return bool(ts.is_compressed)
    except ValueError:
        return True


# Words with which pydicom's plugins say a valid stream uses a variant they lack
# (12-bit JPEG Extended under Pillow, say): not checkable here, not damaged.
_UNSUPPORTED = re.compile(r"not (?:been )?(?:implemented|supported)|does not support|"
                          r"unsupported|missing (?:required )?dependenc", re.IGNORECASE)
_ERROR_CHARS = 300
_RLE_EXCESS = re.compile(r"non-conformant padding - (\d+) vs\. (\d+) bytes")
_ALL_PLUGINS = "Unable to decode as exceptions were raised by all available plugins: "


def frames_of(ds: Dataset) -> np.ndarray | iq.Damaged | None:
    """Stored pixel values (no rescale); :class:`~fenji.codecs.image.quality.Damaged`
    when a decoder for the transfer syntax is present here and fails on them (corrupt
    or truncated compressed data: a reader would see a wrong or no image); ``None``
    when there are no pixels or no decoder here (not checked, only a warning)."""
    if "PixelData" not in ds:
        return None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        try:
            if not get_decoder(ts).is_available:
                return None
        except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
            return None
    why = dataset_codestream_mismatch(ds)  # never hand such data to a decoder
    if why:
        return iq.Damaged(why)
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            arr = sandbox.pixel_array(ds)  # compressed: in a child
    except MemoryError:
        return None
    except Exception as exc:  # pydicom raises many types for bad or unsupported data
        msg = " ".join(str(exc).split()).removeprefix(_ALL_PLUGINS) or type(exc).__name__
        log.debug("pixel data of %s not decodable: %s", ds.get("SOPInstanceUID"), msg)
        if ts is None or _UNSUPPORTED.search(msg):
            return None
        return iq.Damaged(msg[:_ERROR_CHARS] + ("..." if len(msg) > _ERROR_CHARS else ""))
    for w in said:  # an RLE segment far longer than Rows x Columns: a header that lies
        m = _RLE_EXCESS.search(str(w.message))
        if m and int(m[1]) > int(m[2]) * 1.01 + 2:
            return iq.Damaged(f"an RLE segment decodes to {m[1]} bytes, (0028,0010) Rows x "
                              f"(0028,0011) Columns needs {m[2]}: the header does not "
                              "describe the pixels")
    return arr


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
