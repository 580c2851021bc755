"""The quality gate the sending hospital signs (DESIGN.md §3 step 3, §9).

Before a case leaves, every instance and ECG lead is checked with the kernels
in :mod:`fenji.codecs.image.quality` and :mod:`fenji.codecs.ecg.quality`.
The report says, per series / ECG and per lead, each check's value, threshold
and verdict, and overall ``acceptable``, ``acceptable_with_warnings`` or
``unacceptable`` with reasons in words a technician can act on.

An unacceptable case is **held**.  A named operator either fixes it (acquires
again and releases again) or overrides with a reason.  Either way the
attestation — report hash, verdict, operator, time, override reason — is
signed with the node's key and travels in the bundle manifest: the sending
hospital is liable for the quality of the data, and this is its signature.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pydicom
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fenji.gateway.errors import PeerError
from fenji.gateway.keys import canonical_json, sign, verify

ACCEPTABLE = "acceptable"
WARNINGS = "acceptable_with_warnings"
UNACCEPTABLE = "unacceptable"
_RANK = {ACCEPTABLE: 0, WARNINGS: 1, UNACCEPTABLE: 2}
ECG_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.9."


def assess(blobs: list[bytes], ecg_thresholds: Any = None,
           image_thresholds: Any = None, excluded: Sequence[bytes] = ()) -> dict[str, Any]:
    """Quality report of a case's instances (Part-10 bytes), with the config's
    thresholds (``None``: the documented defaults).  ``excluded``: instances of the
    study the technician left out (``fenji case exclude``), named as a warning."""
    from fenji.codecs.ecg.quality import check_ecg
    from fenji.gateway.cases.image_checks import check_series
    from fenji.gateway.ecg.io import read_dicom_ecg

    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    ecg_reports: dict[str, Any] = {}
    reasons: list[str] = []
    verdict = ACCEPTABLE
    for blob in blobs:
        ds = pydicom.dcmread(io.BytesIO(blob))
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class.startswith(ECG_SOP_PREFIX) and "WaveformSequence" in ds:
            try:
                rec = read_dicom_ecg(ds)
                report, qrs = check_ecg(rec.physical_mv(), rec.fs_hz, rec.leads,
                                        ecg_thresholds)
                report["n_beats"] = int(len(qrs))
            except PeerError as exc:  # held, not a failed release: the data stays
                report = unusable_ecg(str(exc))
            uid = str(ds.SOPInstanceUID)
            ecg_reports[uid] = report
            reasons += [f"ECG {uid[-12:]}: {r}" for r in report["reasons"]]
            verdict = max(verdict, report["verdict"], key=_RANK.__getitem__)
        elif "PixelData" in ds:
            series[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    left_out: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for blob in excluded:
        ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        left_out[str(ds.get("SeriesInstanceUID", ""))].append(ds)
    series_reports = {}
    for uid, dss in series.items():
        rep = check_series(dss, image_thresholds, excluded=left_out.get(uid, ()))
        series_reports[uid] = rep
        label = f"{dss[0].get('Modality', '')} series {dss[0].get('SeriesNumber', '')}".strip()
        reasons += [f"{label}: {r}" for r in rep["reasons"]]
        verdict = max(verdict, rep["verdict"], key=_RANK.__getitem__)
    return {"verdict": verdict, "reasons": reasons, "series": series_reports,
            "ecg": ecg_reports, "n_instances": len(blobs)}


def unusable_ecg(why: str) -> dict[str, Any]:
    """The report of an ECG whose waveform cannot be read or checked at all (a
    sampling frequency of 0, channels that do not fit the data): unacceptable."""
    return {"verdict": UNACCEPTABLE, "leads": {}, "n_beats": 0,
            "reasons": [f"waveform not usable: {why}: resend it from the cart, or override"],
            "record": {"heart_rate_bpm": None, "n_beats": 0, "checks": []}}


def report_sha256(report: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(report)).hexdigest()


def attest(report: dict[str, Any], *, case_id: str, study_instance_uid: str, node: str,
           operator: str, key: Ed25519PrivateKey, override_reason: str | None = None,
           now: float | None = None) -> dict[str, Any]:
    """The signed statement of the sending hospital about this case's data quality."""
    if report["verdict"] == UNACCEPTABLE and not override_reason:
        raise ValueError("an unacceptable case can only be attested with an override reason")
    body = {
        "type": "fenji-quality-attestation", "version": 1, "case_id": case_id,
        "study_instance_uid": study_instance_uid, "node": node, "operator": operator,
        "at": time.time() if now is None else now, "verdict": report["verdict"],
        "reasons": report["reasons"], "report_sha256": report_sha256(report),
        "override": {"reason": override_reason} if override_reason else None,
    }
    return {**body, "signature": sign(key, canonical_json(body))}


def verify_attestation(att: dict[str, Any], pub: Ed25519PublicKey) -> bool:
    body = {k: v for k, v in att.items() if k != "signature"}
    return verify(pub, canonical_json(body), str(att.get("signature", "")))
