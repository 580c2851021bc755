"""Files an ECG cart exported -> one Part-10 DICOM ECG object plus a summary.

`ecg_to_part10` is the one conversion behind ``POST /api/ecg`` and the watched
folder: a WFDB record (``.hea`` + the files it names), or one cart file in any
format of :mod:`fenji.gateway.ecg.formats` (an ISHNE ``.ecg`` may bring its
``.ann``).  The record is wrapped by :func:`fenji.gateway.ecg.io.to_dicom` with
the patient and acquisition data the file carries, and scored by the quality
gate.  The SOP Instance UID is derived from the files' bytes, so uploading the
same recording twice is idempotent.

Long recordings (Holter: ISHNE, MFER) are stored whole as an Ambulatory ECG; the
quality gate reads the first `GATE_MAX_S` seconds only, which bounds its time
and memory whatever the recording's length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import tempfile
from pathlib import Path
from typing import Any

from fenji.codecs.ecg.quality import check_ecg
from fenji.codecs.ecg.record import EcgRecord
from fenji.gateway.config import DEFAULT_MAX_RECORD_BYTES
from fenji.gateway.ecg.formats import EcgMeta, read_ecg_files
from fenji.gateway.ecg.io import read_wfdb, to_dicom
from fenji.gateway.errors import PeerError

MAX_RECORD_BYTES = DEFAULT_MAX_RECORD_BYTES  # the [ingest] default (gateway/config.py)
#: The quality gate reads at most this much of a recording (a 24-h Holter would
#: otherwise cost minutes of CPU; the first minutes show electrode problems).
GATE_MAX_S = 300.0


def content_uid(parts: list[bytes]) -> str:
    """A UID under 2.25 (PS3.5 B.2) derived from the record's bytes."""
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return "2.25." + str(int.from_bytes(h.digest()[:16], "big"))


def wfdb_files_named(hea_text: str, record: str) -> list[str]:
    """The signal files a WFDB header refers to (line 2 onward, first field)."""
    names = []
    for line in hea_text.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first = line.split()[0]
        if first not in names and first != "~":
            names.append(first)
    return names


def base_datetime(hea_text: str) -> _dt.datetime:
    """The record's base date/time from its header line, or the Unix epoch if absent
    (a fixed value keeps re-ingestion byte-identical; the date reads as unknown)."""
    fields = hea_text.splitlines()[0].split() if hea_text else []
    # record nsig fs nsamp [base_time [base_date]]
    if len(fields) >= 6:
        with contextlib.suppress(ValueError):
            return _dt.datetime.strptime(f"{fields[5]} {fields[4].split('.')[0]}",
                                         "%d/%m/%Y %H:%M:%S").replace(tzinfo=_dt.UTC)
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _read_wfdb_files(files: dict[str, bytes]) -> tuple[EcgRecord, list[bytes], EcgMeta,
                                                       _dt.datetime]:
    heas = [n for n in files if n.endswith(".hea")]
    if len(heas) != 1:
        raise PeerError(f"expected exactly one .hea file, got {len(heas)}: {sorted(files)}")
    hea = heas[0]
    record = Path(hea).stem
    if "/" in hea or "\\" in hea or record.startswith("."):
        raise PeerError(f"record name {hea!r} must be a plain file name")
    try:
        hea_text = files[hea].decode("ascii")
    except UnicodeDecodeError as exc:
        raise PeerError(f"{hea} is not an ASCII WFDB header") from exc
    needed = wfdb_files_named(hea_text, record)
    missing = [n for n in needed if n not in files]
    if missing:
        raise PeerError(f"{hea} names {missing} but they were not provided")
    with tempfile.TemporaryDirectory(prefix="fenji-ecg-") as tmp:
        for name in [hea, *needed]:
            Path(tmp, Path(name).name).write_bytes(files[name])
        rec = read_wfdb(Path(tmp) / record)
    return (rec, [files[hea], *(files[n] for n in needed)], EcgMeta(format="WFDB"),
            base_datetime(hea_text))


def ecg_to_part10(files: dict[str, bytes], *, patient_id: str = "", patient_name: str = "",
                  ) -> tuple[bytes, dict[str, Any]]:
    """An ECG recording's files (name -> bytes) -> (Part-10 DICOM ECG bytes, summary).

    ``patient_id`` / ``patient_name``, when given, override what the file says.
    Raises `PeerError` (`EcgFileError` for cart files) naming the file and field.
    """
    total = sum(len(b) for b in files.values())
    if total > MAX_RECORD_BYTES:
        raise PeerError(f"record of {total} bytes exceeds {MAX_RECORD_BYTES}")
    if not files:
        raise PeerError("no file given")
    if any(n.endswith(".hea") for n in files):
        rec, parts, meta, when = _read_wfdb_files(files)
        label = Path(next(n for n in files if n.endswith(".hea"))).stem
    else:
        got = read_ecg_files(files)
        rec, meta = got.record, got.meta
        parts = [files[n] for n in sorted(files)]
        when = (meta.acquired or _dt.datetime(1970, 1, 1))
        label = next(n for n in files if not files[n].startswith(b"ANN  1.0"))
    uid = content_uid(parts)
    ds = to_dicom(rec, patient_id=patient_id or meta.patient_id,
                  patient_name=patient_name or meta.patient_name, sop_instance_uid=uid,
                  study_instance_uid=uid + ".1", series_instance_uid=uid + ".2", when=when,
                  manufacturer=meta.manufacturer or "fenji", institution=meta.institution,
                  patient_birth_date=meta.birth_date, patient_sex=meta.sex,
                  model_name=meta.model, device_serial=meta.serial,
                  software_versions=meta.software, statements=meta.statements)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    summary: dict[str, Any] = {"record": label, "format": meta.format, "fs": rec.fs_hz,
                               "leads": list(rec.leads), "n_samples": rec.n_samples,
                               "sop_class_uid": str(ds.SOPClassUID)}
    del ds  # its WaveformData is a second copy of the samples
    if meta.notes:
        summary["notes"] = list(meta.notes)
    n_gate = min(rec.n_samples, int(GATE_MAX_S * rec.fs_hz))
    head = dataclasses.replace(rec, signal=rec.signal[:n_gate])  # a view: no whole copy
    try:
        report, _ = check_ecg(head.physical_mv(), rec.fs_hz, rec.leads)
    except PeerError as exc:  # stored all the same; the gate holds it at release
        report = {"verdict": "unacceptable", "reasons": [f"waveform not usable: {exc}"]}
    summary["quality"] = {"verdict": report["verdict"], "reasons": report["reasons"]}
    if n_gate < rec.n_samples:
        summary["quality"]["seconds_checked"] = round(n_gate / rec.fs_hz, 3)
    return buf.getvalue(), summary
