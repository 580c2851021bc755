"""Image quality checks over pixel arrays and plain header dicts.

Headers are plain mappings keyed by DICOM keywords (``Rows``, ``Columns``,
``NumberOfFrames``, ``BitsAllocated``, ``BitsStored``, ``SamplesPerPixel``,
``SOPClassUID``, ``SOPInstanceUID``, ``Modality``, ``PatientID``,
``StudyInstanceUID``, ``SeriesInstanceUID``, ``InstanceNumber``,
``ImagePositionPatient``, ``ImageOrientationPatient``, plus ``PixelDataLength``
(bytes of native Pixel Data; ``None`` if encapsulated)); no pydicom objects here.
``fenji.gateway.cases.image_checks`` builds them from datasets.

Checks and reasons:

* blank frame (every pixel the same value) -- "frame 3 of instance 12 is blank";
* saturated frame (>= ``saturated_fraction`` of pixels at the stored maximum);
* Pixel Data length vs Rows x Columns x Frames x BitsAllocated x SamplesPerPixel;
* dimensions / bit depth outside what the SOP class allows (PS3.3 IOD modules);
* missing slices (gap > ``gap_factor`` x the series' usual spacing) --
  "slice 17 missing between z=-120.0 and z=-110.0"; duplicated slices (same
  position); inconsistent Patient ID / Study UID / Modality / Frame of
  orientation within the series.

The report has the same shape as the ECG one: ``{"verdict", "reasons",
"instances": {uid: {"verdict", "checks"}}, "series": {"checks"}, "thresholds"}``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit

from fenji.codecs.image.thresholds import ImageQualityThresholds

ACCEPTABLE = "acceptable"
WARNINGS = "acceptable_with_warnings"
UNACCEPTABLE = "unacceptable"
_RANK = {ACCEPTABLE: 0, WARNINGS: 1, UNACCEPTABLE: 2}


@dataclass(frozen=True)
class Damaged:
    """Pixel data that a decoder present here failed on, and what it said.

    Distinct from ``None`` (no decoder here for the transfer syntax, so the pixels
    were not checked): damaged pixels hold the case, unchecked ones only warn."""

    error: str


# SOP class -> (allowed BitsAllocated, allowed SamplesPerPixel, max rows/cols) per the
# IODs' Image Pixel constraints (PS3.3 C.8.2.1 CT, C.8.3.1 MR, C.8.11.3 DX, C.8.5.6 US, ...)
SOP_CLASS_PIXEL_RULES: dict[str, tuple[str, frozenset[int], frozenset[int], int]] = {
    "1.2.840.10008.5.1.4.1.1.2": ("CT Image", frozenset({16}), frozenset({1}), 65535),
    "1.2.840.10008.5.1.4.1.1.4": ("MR Image", frozenset({16}), frozenset({1}), 65535),
    "1.2.840.10008.5.1.4.1.1.1": ("CR Image", frozenset({8, 16}), frozenset({1}), 65535),
    "1.2.840.10008.5.1.4.1.1.1.1": ("DX Image", frozenset({8, 16}), frozenset({1}), 65535),
    "1.2.840.10008.5.1.4.1.1.1.2": ("MG Image", frozenset({8, 16}), frozenset({1}), 65535),
    "1.2.840.10008.5.1.4.1.1.6.1": ("US Image", frozenset({8, 16}), frozenset({1, 3}), 65535),
    "1.2.840.10008.5.1.4.1.1.3.1": ("US Multi-frame Image", frozenset({8, 16}),
                                    frozenset({1, 3}), 65535),
    "1.2.840.10008.5.1.4.1.1.7": ("Secondary Capture Image", frozenset({1, 8, 16}),
                                  frozenset({1, 3}), 65535),
    "1.2.840.10008.5.1.4.1.1.2.1": ("Enhanced CT Image", frozenset({16}), frozenset({1}), 65535),
}
# Photometric Interpretation: the samples per pixel each one means (PS3.3 C.7.6.3.1.2),
# and the grey-scale-only SOP classes (CT, MR, CR, DX, MG: MONOCHROME1 or 2).
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3,
                       "YBR_FULL": 3, "YBR_FULL_422": 3, "YBR_PARTIAL_420": 3,
                       "YBR_ICT": 3, "YBR_RCT": 3, "YBR_PARTIAL_422": 3, "HSV": 3,
                       "ARGB": 4, "CMYK": 4}
GREYSCALE_ONLY = frozenset({"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4",
                            "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
                            "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"})


# --- kernels ---------------------------------------------------------------------

def _frame_stats_py(a: np.ndarray) -> tuple[float, float, float, int, int]:
    """min, max, standard deviation, count at min, count at max of a flat array."""
    n = a.shape[0]
    if n == 0:
        return 0.0, 0.0, 0.0, 0, 0
    lo = float(a[0])
    hi = float(a[0])
    s = 0.0
    for i in range(n):
        v = float(a[i])
        s += v
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    mean = s / n
    ss = 0.0
    nlo = 0
    nhi = 0
    for i in range(n):
        v = float(a[i])
        ss += (v - mean) * (v - mean)
        if v == lo:
            nlo += 1
        if v == hi:
            nhi += 1
    return lo, hi, float(np.sqrt(ss / n)), nlo, nhi


_frame_stats_nb = njit(_frame_stats_py, nogil=True, cache=True)


def frame_stats(frame: np.ndarray) -> tuple[float, float, float, int, int]:
    """(min, max, std, n_at_min, n_at_max) of one frame (any shape, any integer/float)."""
    a = np.ascontiguousarray(frame).reshape(-1)
    if not a.dtype.isnative:                 # big-endian transfer syntax
        a = a.astype(a.dtype.newbyteorder("="))
    return _frame_stats_nb(a)


# --- per-instance checks ---------------------------------------------------------

def _check(name: str, value: Any, threshold: Any, verdict: str, reason: str | None
           ) -> dict[str, Any]:
    return {"check": name, "value": value, "threshold": threshold, "verdict": verdict,
            "reason": reason}


def _label(h: Mapping[str, Any]) -> str:
    n = h.get("InstanceNumber")
    return f"instance {n}" if n is not None else f"instance {h.get('SOPInstanceUID', '?')}"


def expected_pixel_bytes(h: Mapping[str, Any]) -> int:
    """Rows x Columns x Frames x SamplesPerPixel x BitsAllocated / 8, padded to even.

    >>> expected_pixel_bytes({"Rows": 512, "Columns": 512, "BitsAllocated": 16})
    524288
    >>> expected_pixel_bytes({"Rows": 3, "Columns": 3, "BitsAllocated": 1, "NumberOfFrames": 2})
    4
    """
    bits = (int(h.get("Rows") or 0) * int(h.get("Columns") or 0)
            * int(h.get("NumberOfFrames") or 1) * int(h.get("SamplesPerPixel") or 1)
            * int(h.get("BitsAllocated") or 0))
    n = (bits + 7) // 8
    return n + (n & 1)


def instance_checks(h: Mapping[str, Any], frames: np.ndarray | Damaged | None,
                    thr: ImageQualityThresholds | None = None) -> list[dict[str, Any]]:
    """Checks of one instance.  ``frames`` is (frames, rows, cols[, samples]) or one
    frame (rows, cols[, samples]) of stored values, :class:`Damaged` if the decoder
    failed on them, or ``None`` if there is no decoder here for them."""
    t = thr or ImageQualityThresholds()
    U, W, A = UNACCEPTABLE, WARNINGS, ACCEPTABLE
    who = _label(h)
    out: list[dict[str, Any]] = []
    rows, cols = int(h.get("Rows") or 0), int(h.get("Columns") or 0)
    ba, spp = int(h.get("BitsAllocated") or 0), int(h.get("SamplesPerPixel") or 1)
    bs = int(h.get("BitsStored") or ba)
    # values the header holds but that are not what their VR says (numbers)
    bad = h.get("InvalidValues")
    if bad:
        out.append(_check("header_values", len(bad), 0, U,
                          f"{who}: {'; '.join(bad)} not valid numbers: a viewer cannot "
                          "place or size this image; resend it"))
    # pixel data length
    have = h.get("PixelDataLength")
    if have is not None:
        want = expected_pixel_bytes(h)
        ok = int(have) == want or int(have) == want - 1  # odd raw length, pad byte missing
        out.append(_check("pixel_data_length", int(have), want, A if ok else U, None if ok else
                          f"{who}: Pixel Data is {have} bytes, {rows}x{cols}x"
                          f"{int(h.get('NumberOfFrames') or 1)} frames x {spp} samples x "
                          f"{ba} bits needs {want}: file truncated or corrupt, resend it"))
    # SOP class pixel rules
    rule = SOP_CLASS_PIXEL_RULES.get(str(h.get("SOPClassUID", "")))
    problems = []
    if not (0 < rows <= 65535 and 0 < cols <= 65535):
        problems.append(f"size {rows}x{cols}")
    if bs > ba or bs <= 0:
        problems.append(f"BitsStored {bs} with BitsAllocated {ba}")
    if rule is not None:
        name, bas, spps, mx = rule
        if ba not in bas:
            problems.append(f"BitsAllocated {ba} (allowed {sorted(bas)})")
        if spp not in spps:
            problems.append(f"SamplesPerPixel {spp} (allowed {sorted(spps)})")
        if rows > mx or cols > mx:
            problems.append(f"size {rows}x{cols} above {mx}")
    else:
        name = str(h.get("SOPClassUID", "unknown SOP class"))
    photo = h.get("PhotometricInterpretation")
    if photo is not None:
        means = PHOTOMETRIC_SAMPLES.get(str(photo))
        if means is None:
            problems.append(f"Photometric Interpretation {str(photo)[:20]!r} (not a defined "
                            "term)")
        elif means != spp:
            problems.append(f"Photometric Interpretation {photo} with {spp} samples per pixel "
                            f"(it means {means})")
        elif str(h.get("SOPClassUID", "")) in GREYSCALE_ONLY and not photo.startswith("MONO"):
            problems.append(f"Photometric Interpretation {photo} (grey scale only)")
    if h.get("RescaleSlope") == 0.0:
        problems.append("Rescale Slope 0 (every pixel would show the intercept)")
    out.append(_check("pixel_format", f"{rows}x{cols} {ba}/{bs} bit x{spp}", name,
                      U if problems else A,
                      f"{who}: {', '.join(problems)} not allowed for {name}" if problems else None))
    # blank / saturated frames
    if isinstance(frames, Damaged):
        out.append(_check("decodable", False, True, U,
                          f"{who}: pixel data damaged, the decoder failed on it "
                          f"({frames.error}): resend it, or exclude it (fenji case "
                          "exclude), or override"))
    elif frames is not None:
        f = np.asarray(frames)
        nf = int(h.get("NumberOfFrames") or 1)
        if nf == 1 or f.ndim == (3 if spp > 1 else 2):
            f = f[None]
        full = float((1 << bs) - 1) if bs > 0 else float("inf")
        signed = int(h.get("PixelRepresentation") or 0) == 1
        blank, sat = [], []
        for i in range(f.shape[0]):
            lo, hi, sd, _nlo, nhi = frame_stats(f[i])
            if hi == lo:
                blank.append(i + 1)
            elif not signed and hi >= full and nhi >= t.saturated_fraction * f[i].size:
                sat.append(i + 1)
        out.append(_check("blank_frames", len(blank), 0, U if blank else A, None if not blank
                          else f"{who}: {_frames(blank, f.shape[0])} blank "
                          "(every pixel the same value): re-acquire it (new instance UIDs), "
                          "or exclude it (fenji case exclude), or override"))
        out.append(_check("saturated_frames", len(sat), t.saturated_fraction,
                          U if sat else A, None if not sat else
                          f"{who}: {_frames(sat, f.shape[0])} saturated (over "
                          f"{100 * t.saturated_fraction:.0f} % of pixels at full scale): "
                          "check exposure"))
    else:
        out.append(_check("decodable", False, True, W,
                          f"{who}: pixel data could not be decoded here; not checked"))
    return out


def _frames(idx: list[int], n: int) -> str:
    if n == 1:
        return "image"
    s = ", ".join(str(i) for i in idx[:8]) + (" ..." if len(idx) > 8 else "")
    return f"frame{'s' if len(idx) > 1 else ''} {s} of {n}"


# --- series geometry -------------------------------------------------------------

def slice_positions(headers: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """Position of each instance along the slice normal (mm), or ``None`` when any
    instance lacks Image Position/Orientation (Patient)."""
    z = []
    for h in headers:
        ipp, iop = h.get("ImagePositionPatient"), h.get("ImageOrientationPatient")
        if ipp is None or iop is None or len(ipp) != 3 or len(iop) != 6:
            return None
        r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        z.append(float(np.dot(np.cross(r, c), np.asarray(ipp, float))))
    return np.asarray(z)


def geometry_checks(headers: Sequence[Mapping[str, Any]], thr: ImageQualityThresholds
                    ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    z = slice_positions(headers)
    if z is None or len(z) < 3:
        return out
    orients = {tuple(round(float(v), 4) for v in h["ImageOrientationPatient"]) for h in headers}
    if len(orients) > 1:
        out.append(_check("orientation", len(orients), 1, UNACCEPTABLE,
                          f"series mixes {len(orients)} slice orientations: not one stack"))
        return out
    order = np.argsort(z, kind="stable")
    zs = z[order]
    d = np.diff(zs)
    dup = np.where(d <= thr.duplicate_tol_mm)[0]
    dup_reasons = []
    k = 0
    while k < len(dup):
        j = k
        while j + 1 < len(dup) and dup[j + 1] == dup[j] + 1:
            j += 1
        same = [_label(headers[order[i]]) for i in range(dup[k], dup[j] + 2)]
        times = "twice" if len(same) == 2 else f"{len(same)} times"
        who = ", ".join(sorted(set(same)))
        dup_reasons.append(f"slice at z={zs[dup[k]]:.1f} appears {times} ({who})")
        k = j + 1
    out.append(_check("duplicate_slices", len(dup), thr.duplicate_tol_mm,
                      UNACCEPTABLE if len(dup) else ACCEPTABLE,
                      "; ".join(dup_reasons) + ": remove the duplicate" if len(dup) else None))
    steps = d[d > thr.duplicate_tol_mm]
    if steps.size == 0:
        return out
    nominal = float(np.median(steps))
    missing = []
    slice_no = 1
    for k in range(len(d)):
        if d[k] <= thr.duplicate_tol_mm:
            continue
        n_miss = int(round(d[k] / nominal)) - 1 if d[k] > thr.gap_factor * nominal else 0
        if n_miss > 0:
            which = (f"slice {slice_no + 1}" if n_miss == 1
                     else f"slices {slice_no + 1}-{slice_no + n_miss}")
            missing.append(f"{which} missing between z={zs[k]:.1f} and z={zs[k + 1]:.1f}")
        slice_no += 1 + n_miss
    n_missing = sum(max(0, int(round(g / nominal)) - 1) for g in d
                    if g > thr.gap_factor * nominal)
    out.append(_check("missing_slices", n_missing, f"{thr.gap_factor} x {nominal:.2f} mm",
                      UNACCEPTABLE if missing else ACCEPTABLE,
                      "; ".join(missing) + ": resend the series" if missing else None))
    ok = steps[steps <= thr.gap_factor * nominal]
    irregular = bool(ok.size and (np.abs(ok - nominal) > thr.irregular_tol * nominal).any())
    out.append(_check("spacing", round(nominal, 4), thr.irregular_tol,
                      WARNINGS if irregular else ACCEPTABLE,
                      f"slice spacing varies around {nominal:.2f} mm by more than "
                      f"{100 * thr.irregular_tol:.0f} %" if irregular else None))
    return out


def consistency_checks(headers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key, words in (("PatientID", "Patient ID"), ("StudyInstanceUID", "Study Instance UID"),
                       ("Modality", "Modality"), ("SeriesInstanceUID", "Series Instance UID")):
        vals = Counter(str(h.get(key, "")) for h in headers)
        if len(vals) <= 1:
            out.append(_check(f"consistent_{key}", 1, 1, ACCEPTABLE, None))
            continue
        common = vals.most_common(1)[0][0]
        odd = [h for h in headers if str(h.get(key, "")) != common]
        names = ", ".join(_label(h) for h in odd[:5]) + (" ..." if len(odd) > 5 else "")
        out.append(_check(f"consistent_{key}", len(vals), 1, UNACCEPTABLE,
                          f"{words} differs: {names} has {str(odd[0].get(key, ''))!r}, "
                          f"the other {vals[common]} have {common!r}: wrong patient or study "
                          "mixed in"))
    uids = Counter(str(h.get("SOPInstanceUID", "")) for h in headers)
    dups = [u for u, c in uids.items() if c > 1]
    out.append(_check("unique_sop_instance_uid", len(dups), 0,
                      UNACCEPTABLE if dups else ACCEPTABLE,
                      f"SOP Instance UID {dups[0]} used by {uids[dups[0]]} instances"
                      if dups else None))
    return out


def series_report(headers: Sequence[Mapping[str, Any]],
                  frames: Sequence[np.ndarray | Damaged | None] | None = None,
                  thresholds: ImageQualityThresholds | None = None,
                  excluded: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Quality report of one series (or a study's instances checked together).

    ``frames[i]`` are the stored pixel values of ``headers[i]`` (:class:`Damaged`
    if the decoder failed on them, ``None`` if there is none here); omit ``frames``
    to check headers only.  ``excluded``: headers of instances a technician
    deliberately left out; the geometry counts them, so their gap is a warning that
    names them, not a missing slice.
    """
    t = thresholds or ImageQualityThresholds()
    inst: dict[str, Any] = {}
    reasons: list[str] = []
    warnings: list[str] = []
    for i, h in enumerate(headers):
        fr = frames[i] if frames is not None else None
        checks = instance_checks(h, fr, t) if frames is not None else [
            c for c in instance_checks(h, np.zeros((1, 1)), t)
            if c["check"] not in ("blank_frames", "saturated_frames")]
        v = max((c["verdict"] for c in checks), key=_RANK.__getitem__)
        key = str(h.get("SOPInstanceUID", i))
        while key in inst:
            key += "'"
        inst[key] = {"verdict": v, "checks": checks}
        for c in checks:
            if c["reason"]:
                (reasons if c["verdict"] == UNACCEPTABLE else warnings).append(c["reason"])
    series_checks = consistency_checks(headers) + geometry_checks([*headers, *excluded], t)
    if excluded:
        names = ", ".join(_label(h) for h in excluded)
        series_checks.append(_check("excluded", len(excluded), 0, WARNINGS,
                                    f"{names} excluded by the sending technician: the reader "
                                    "sees a gap there"))
    for c in series_checks:
        if c["reason"]:
            (reasons if c["verdict"] == UNACCEPTABLE else warnings).append(c["reason"])
    verdict = UNACCEPTABLE if reasons else WARNINGS if warnings else ACCEPTABLE
    return {"verdict": verdict, "reasons": reasons + warnings, "instances": inst,
            "series": {"n_instances": len(headers), "checks": series_checks},
            "thresholds": asdict(t)}
