"""ECG carts that export WFDB (or DICOM) files instead of sending C-STORE.

Two ways in, one path to the store:

* ``POST /api/ecg`` (multipart: the record's ``.hea`` and ``.dat`` files, and
  optionally ``patient_id`` / ``patient_name`` fields);
* a watched folder (``[ingest] watch_dir``): every complete WFDB record
  (``.hea`` + the files it names) or ``.dcm`` file dropped there is ingested,
  then moved to ``done/`` — or to ``failed/`` with a ``.reason.txt`` beside it.

WFDB records are wrapped as standard DICOM 12-lead / General ECG objects
(:func:`fenji.gateway.ecg_io.to_dicom`) and then pass the same strict check
and durable store as anything received by C-STORE.  The SOP Instance UID is
derived from the record's bytes, so uploading the same record twice is
idempotent (``duplicate``), never a second copy.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fenji.gateway import dimse_status as st
from fenji.gateway import ingest
from fenji.gateway.errors import PeerError
from fenji.gateway.store import Store
from fenji.gateway.validate import Rejected

log = logging.getLogger(__name__)

def content_uid(parts: list[bytes]) -> str:
    """A UID under 2.25 (PS3.5 B.2) derived from the record's bytes."""
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return "2.25." + str(int.from_bytes(h.digest()[:16], "big"))


def _wfdb_files_named(hea_text: str, record: str) -> list[str]:
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


def wrap_wfdb(files: dict[str, bytes], *, patient_id: str = "", patient_name: str = "",
              ) -> tuple[bytes, dict[str, Any]]:
    """WFDB files (name -> bytes) -> (Part-10 DICOM ECG bytes, summary)."""
    from fenji.codecs.ecg_quality import check_ecg
    from fenji.gateway.ecg_io import read_wfdb, to_dicom

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
    needed = _wfdb_files_named(hea_text, record)
    missing = [n for n in needed if n not in files]
    if missing:
        raise PeerError(f"{hea} names {missing} but they were not provided")
    with tempfile.TemporaryDirectory(prefix="fenji-ecg-") as tmp:
        for name in [hea, *needed]:
            Path(tmp, Path(name).name).write_bytes(files[name])
        rec = read_wfdb(Path(tmp) / record)
    uid = content_uid([files[hea], *(files[n] for n in needed)])
    when = _base_datetime(hea_text)
    ds = to_dicom(rec, patient_id=patient_id, patient_name=patient_name, sop_instance_uid=uid,
                  study_instance_uid=uid + ".1", series_instance_uid=uid + ".2", when=when)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    summary: dict[str, Any] = {"record": record, "fs": rec.fs_hz, "leads": list(rec.leads),
                               "n_samples": rec.n_samples}
    report, _ = check_ecg(rec.physical_mv(), rec.fs_hz, rec.leads)
    summary["quality"] = {"verdict": report["verdict"], "reasons": report["reasons"]}
    return buf.getvalue(), summary


def _base_datetime(hea_text: str) -> _dt.datetime:
    """The record's base date/time from its header line, or the Unix epoch if absent
    (a fixed value keeps re-ingestion byte-identical; the date reads as unknown)."""
    fields = hea_text.splitlines()[0].split() if hea_text else []
    # record nsig fs nsamp [base_time [base_date]]
    if len(fields) >= 6:
        with contextlib.suppress(ValueError):
            return _dt.datetime.strptime(f"{fields[5]} {fields[4].split('.')[0]}",
                                         "%d/%m/%Y %H:%M:%S").replace(tzinfo=_dt.UTC)
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def ingest_files(store: Store, files: dict[str, bytes], *, source: str, patient_id: str = "",
                 patient_name: str = "", limits: ingest.Limits | None = None,
                 peer: str | None = None) -> dict[str, Any]:
    """Store one ECG record (WFDB, a cart's file) or one DICOM file through the one
    ingest path; return what happened.  Never raises for bad input: the result says
    ``rejected`` with the reason, and the bytes are quarantined."""
    limits = limits or ingest.Limits()
    src = ingest.Source("ecg", source, peer)
    summary: dict[str, Any] = {"source": source}
    total = sum(len(b) for b in files.values())
    try:
        if total > limits.max_record_bytes:
            raise PeerError(f"record of {total} bytes exceeds ingest.max_record_bytes = "
                            f"{limits.max_record_bytes}")
        if any(n.endswith(".hea") for n in files):
            part10, info = wrap_wfdb(files, patient_id=patient_id, patient_name=patient_name)
            summary.update(info)
        elif len(files) == 1:
            part10 = next(iter(files.values()))
        else:
            raise PeerError(f"expected a WFDB record or one DICOM file, got {sorted(files)}")
    except PeerError as exc:
        res = ingest.reject(store, b"".join(files.values()), src,
                            Rejected(st.CANNOT_UNDERSTAND, str(exc)))
    else:
        res = ingest.ingest(store, part10, src, limits)
    summary.update(res.as_dict())
    log.info("ecg ingest source=%s outcome=%s sop=%s", source, res.outcome.value,
             res.sop_instance_uid)
    return summary


class FolderWatcher:
    """Polls ``watch_dir``; ingests complete records; moves them to done/ or failed/."""

    def __init__(self, store: Store, watch_dir: Path, *, interval_s: float = 2.0,
                 settle_s: float = 2.0, limits: ingest.Limits | None = None) -> None:
        self.store = store
        self.limits = limits or ingest.Limits()
        self.dir = watch_dir
        self.interval_s = interval_s
        self.settle_s = settle_s  # a file younger than this may still be being written
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for sub in ("done", "failed"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ecg-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scan()
            except OSError as exc:
                log.warning("ecg watch dir=%s scan failed: %s", self.dir, exc)

    def scan(self, now: float | None = None) -> list[dict[str, Any]]:
        import time

        now = time.time() if now is None else now
        results = []
        for path in sorted(self.dir.iterdir()):
            if not path.is_file() or now - path.stat().st_mtime < self.settle_s:
                continue
            group: list[Path]
            if path.suffix == ".hea":
                named = _wfdb_files_named(path.read_text(errors="replace"), path.stem)
                group = [path] + [self.dir / n for n in named]
                if not all(p.exists() for p in group):
                    continue  # the rest of the record has not arrived yet
            elif path.suffix.lower() == ".dcm":
                group = [path]
            else:
                continue
            files = {p.name: p.read_bytes() for p in group}
            res = self.ingest_group(files, group)
            results.append(res)
        return results

    def ingest_group(self, files: dict[str, bytes], group: list[Path]) -> dict[str, Any]:
        res = ingest_files(self.store, files, source=f"folder:{group[0].name}",
                           limits=self.limits)
        outcome = ingest.Outcome(res["outcome"])
        if outcome in (ingest.Outcome.FULL, ingest.Outcome.FAILED):
            return res  # a local fault: the files stay where they are and are tried again
        target = self.dir / ("done" if outcome.ok else "failed")
        for p in group:
            with contextlib.suppress(OSError):
                shutil.move(str(p), target / p.name)
        if not outcome.ok:
            (target / f"{group[0].name}.reason.txt").write_text(
                f"{res['outcome']}: {res.get('reason')}\n", encoding="utf-8")
        return res
