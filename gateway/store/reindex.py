"""Re-decode the text of instances indexed before character sets were read (store migration 8).

Before migration 8 the validator decoded every text value as UTF-8, else
Latin-1, so a GB18030, GBK or ISO 2022 name in an existing index is mojibake.
Migration 8 cannot fix that in SQL (the bytes are in the blobs), so a node
re-reads, once, the header of every instance whose ``charset_source`` is NULL
and rewrites the index's text from it: the patient's name, the study and
series descriptions, the referring physician, and the name groups used for
matching.  Like ingest, the first instance indexed for a study, series or
patient gives its values.  The blobs are only read.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom import dcmread
from pydicom.errors import BytesLengthException, InvalidDicomError

from fenji.gateway.dicom import charset
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

BATCH = 200  # instances per transaction: short write locks beside live ingest


def pending(store: Store) -> int:
    """Instances indexed before migration 8 (their text not yet re-decoded)."""
    row = store.query_one("SELECT count(*) AS n FROM instances WHERE charset_source IS NULL")
    return int(row["n"]) if row else 0


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) or \
        type(value).__name__ == "MultiValue" else str(value)
    return text or None


def _header(store: Store, sha256: str, default_charset: str | None) -> tuple[Any, Any]:
    with store.open_blob(sha256) as fh:
        ds = dcmread(fh, stop_before_pixels=True, force=True)
    cs = charset.dataset_charset(ds, default_charset)
    charset.decode_dataset(ds, default_charset)
    return ds, cs


def reindex_text(store: Store, default_charset: str | None = None) -> dict[str, int]:
    """Re-decode every pending instance's text; returns counts (done, unreadable)."""
    rows = store.query("SELECT sop_instance_uid, sha256, study_instance_uid, "
                       "series_instance_uid FROM instances WHERE charset_source IS NULL "
                       "ORDER BY received_at, sop_instance_uid")
    seen_study: set[str] = set()
    seen_series: set[str] = set()
    seen_patient: set[str] = set()
    done = unreadable = 0
    for start in range(0, len(rows), BATCH):
        with store.atomic() as con:
            for r in rows[start:start + BATCH]:
                try:
                    ds, cs = _header(store, r["sha256"], default_charset)
                    if str(ds.get("SOPInstanceUID", "")) != r["sop_instance_uid"]:
                        raise ValueError("not the indexed instance")
                except (OSError, InvalidDicomError, ValueError, TypeError,
                        BytesLengthException, charset.CharsetError) as exc:
                    # Keep the row's values; never retried (charset_source 'unread').
                    log.warning("reindex sop=%s header unreadable: %s", r["sop_instance_uid"],
                                exc)
                    con.execute("UPDATE instances SET charset_source = 'unread' "
                                "WHERE sop_instance_uid = ?", (r["sop_instance_uid"],))
                    unreadable += 1
                    continue
                con.execute("UPDATE instances SET specific_character_set = ?, "
                            "charset_source = ? WHERE sop_instance_uid = ?",
                            (cs.value if cs.source != "none" else None, cs.source,
                             r["sop_instance_uid"]))
                name = _text(ds, "PatientName")
                study, series = r["study_instance_uid"], r["series_instance_uid"]
                if study not in seen_study:
                    seen_study.add(study)
                    ref = _text(ds, "ReferringPhysicianName")
                    con.execute("UPDATE studies SET patient_name = ?, study_description = ?, "
                                "referring_physician = ? WHERE study_instance_uid = ?",
                                (name, _text(ds, "StudyDescription"), ref, study))
                    con.execute("DELETE FROM name_groups WHERE owner = ? AND kind IN "
                                "('study_patient', 'study_referring')", (study,))
                    Store.index_name_groups(con, "study_patient", study, name)
                    Store.index_name_groups(con, "study_referring", study, ref)
                if series not in seen_series:
                    seen_series.add(series)
                    con.execute("UPDATE series SET series_description = ? "
                                "WHERE series_instance_uid = ?",
                                (_text(ds, "SeriesDescription"), series))
                pid = _text(ds, "PatientID")
                if pid and pid not in seen_patient:
                    seen_patient.add(pid)
                    con.execute("UPDATE patients SET patient_name = ? WHERE patient_id = ?",
                                (name, pid))
                    con.execute("DELETE FROM name_groups WHERE owner = ? AND kind = 'patient'",
                                (pid,))
                    Store.index_name_groups(con, "patient", pid, name)
                done += 1
    if rows:
        log.info("reindex store=%s text re-decoded instances=%d unreadable=%d", store.root,
                 done, unreadable)
    return {"done": done, "unreadable": unreadable}
