"""ECG carts that export files instead of sending C-STORE.

Two ways in, one path to the store:

* ``POST /api/ecg`` (multipart: a WFDB record's ``.hea`` and ``.dat`` files, or
  one cart file -- HL7 aECG, SCP-ECG, GE MUSE XML, Philips XML, MFER, ISHNE
  (+ its ``.ann``), Contec ECG90A -- or one DICOM file, and optionally
  ``patient_id`` / ``patient_name`` fields);
* a watched folder (``[ingest] watch_dir``): every complete WFDB record
  (``.hea`` + the files it names), cart file or ``.dcm`` file dropped there is
  ingested, then moved to ``done/`` — or to ``failed/`` with a ``.reason.txt``.

Records are wrapped as standard DICOM ECG objects by
:func:`fenji.gateway.ecg.convert.ecg_to_part10` and then pass the same strict
check and durable store as anything received by C-STORE.  The SOP Instance UID
is derived from the files' bytes, so uploading the same record twice is
idempotent (``duplicate``), never a second copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from fenji.gateway import ingest
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import Rejected
from fenji.gateway.ecg.convert import ecg_to_part10, wfdb_files_named
from fenji.gateway.ecg.formats import EcgFileError, detect_format
from fenji.gateway.errors import PeerError
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

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
        only = next(iter(files)) if len(files) == 1 else ""
        if only and (_is_part10(files[only]) or only.lower().endswith(".dcm")):
            part10 = files[only]
        else:
            part10, info = ecg_to_part10(files, patient_id=patient_id, patient_name=patient_name)
            summary.update(info)
    except PeerError as exc:
        res = ingest.reject(store, b"".join(files.values()), src,
                            Rejected(st.CANNOT_UNDERSTAND, str(exc)))
    else:
        res = ingest.ingest(store, part10, src, limits)
    summary.update(res.as_dict())
    log.info("ecg ingest source=%s outcome=%s sop=%s", source, res.outcome.value,
             res.sop_instance_uid)
    return summary


def _is_part10(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


#: Extensions carts give their exports; such a file is ingested (or refused with a
#: reason) even if its content is not recognised.  Others are ingested only if
#: their content is (a WFDB .dat waiting for its .hea is left alone).
CART_SUFFIXES = frozenset({".xml", ".scp", ".mwf", ".mfer", ".ecg", ".ishne"})


def _is_cart_file(path: Path) -> bool:
    if path.suffix.lower() in CART_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    try:
        detect_format(path.name, head)
    except EcgFileError:
        return False
    return True


#: The watched folder's lock: the process holding it is the one that scans it.
WATCH_LOCK = ".fenji-watch.lock"


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
        # One scanner per folder: the processes of a center ([node] shared_store)
        # each run a watcher, and two ingesting one record would make two ECG
        # instances of it.  Whoever holds the folder's lock scans; the kernel
        # gives the lock up when that process ends, and another takes over.
        lock_fd = os.open(self.dir / WATCH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        held = False
        try:
            while not self._stop.wait(self.interval_s):
                if not held:
                    try:
                        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another process of the center scans this folder
                    held = True
                    log.info("ecg watch dir=%s: this process scans it", self.dir)
                try:
                    self.scan()
                except OSError as exc:
                    log.warning("ecg watch dir=%s scan failed: %s", self.dir, exc)
        finally:
            os.close(lock_fd)

    def scan(self, now: float | None = None) -> list[dict[str, Any]]:
        import time

        now = time.time() if now is None else now
        results = []
        for path in sorted(self.dir.iterdir()):
            if not path.is_file() or path.name == WATCH_LOCK or \
                    now - path.stat().st_mtime < self.settle_s:
                continue
            group: list[Path]
            if path.suffix == ".hea":
                named = wfdb_files_named(path.read_text(errors="replace"), path.stem)
                group = [path] + [self.dir / n for n in named]
                if not all(p.exists() for p in group):
                    continue  # the rest of the record has not arrived yet
            elif path.suffix.lower() == ".dcm":
                group = [path]
            elif path.suffix.lower() == ".ann" or path.name.endswith(".reason.txt"):
                continue  # an ISHNE annotation goes with its .ecg
            elif _is_cart_file(path):
                group = [path]
                ann = path.with_suffix(".ann")
                if path.suffix.lower() == ".ecg" and ann.is_file():
                    group.append(ann)
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
