"""C-FIND, C-MOVE and C-GET SCP handlers (patient root and study root) for the node's SCP.

Queries are answered by :func:`fenji.gateway.qr.find` (the same model as
QIDO-RS).  Retrieval sends the stored data sets: C-MOVE opens an association
to the move destination, which must be a configured ``[[remote_aes]]`` entry
(else 0xA801, naming it); C-GET sends over the requesting association.  Every
query that returns matches and every retrieve is an ``opened`` event in the
audit ledger (calling AE, peer address, studies, instance count).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from fenji.gateway import ledger, qr

if TYPE_CHECKING:
    from fenji.gateway.config import Config
    from fenji.gateway.store import Store

log = logging.getLogger(__name__)

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
QR_CLASSES = (PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET, STUDY_ROOT_FIND,
              STUDY_ROOT_MOVE, STUDY_ROOT_GET)
_PATIENT_ROOT = {PATIENT_ROOT_FIND, PATIENT_ROOT_MOVE, PATIENT_ROOT_GET}

# PS3.4 C.4.1.1.4 / C.4.2.1.5 statuses.
PENDING = 0xFF00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
CANCELLED = 0xFE00
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _root(event: Any) -> str:
    sop = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
    return "patient" if sop in _PATIENT_ROOT else "study"


def _keys(identifier: Dataset) -> tuple[str, dict[str, str]]:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", ""):
            continue
        if elem.VR == "SQ":
            continue  # sequence matching is not supported: returned empty
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        keys[elem.keyword] = text
    return level, keys


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def _audit(store: Store, cfg: Config, calling: str, peer: str, via: str,
           studies: list[str], detail: dict[str, Any]) -> None:
    for study in sorted(set(studies))[:50]:
        try:
            ledger.record(store, "opened", node=cfg.node.name, actor=calling or "?",
                          role="dicom-ae", obj=study, case_id=qr.case_for_study(store, study),
                          detail={"via": via, "from": peer, **detail})
        except Exception:  # an audit failure is logged, the answer already went
            log.exception("audit of %s by %s failed", via, calling)


def handle_find(store: Store, cfg: Config, event: Any, calling: str,
                peer: str) -> Iterator[tuple[int, Dataset | None]]:
    try:
        level, keys = _keys(event.identifier)
        rows = qr.find(store, level, keys, root=_root(event))
    except qr.QueryError as exc:
        yield IDENTIFIER_DOES_NOT_MATCH, _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        return
    except Exception as exc:  # never crash the association
        log.exception("C-FIND from %s failed", calling)
        yield UNABLE_TO_PROCESS, _failure(UNABLE_TO_PROCESS, f"query failed: {exc}")
        return
    log.info("c-find calling=%s level=%s keys=%s matches=%d", calling, level,
             sorted(k for k, v in keys.items() if v), len(rows))
    if rows:
        _audit(store, cfg, calling, peer, "c-find",
               [str(r["StudyInstanceUID"]) for r in rows if r.get("StudyInstanceUID")],
               {"level": level, "matches": len(rows)})
    charset = event.identifier.get("SpecificCharacterSet")
    for row in rows:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = level
        for keyword in keys:
            setattr(ds, keyword, row.get(keyword, ""))
        unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                  "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
        if unique not in keys:
            setattr(ds, unique, row.get(unique, ""))
        if charset and "SpecificCharacterSet" not in ds:
            ds.SpecificCharacterSet = charset
        yield PENDING, ds


def _to_retrieve(store: Store, event: Any) -> tuple[str, list[dict[str, Any]]]:
    level, keys = _keys(event.identifier)
    if level not in qr.LEVELS:
        raise qr.QueryError(f"QueryRetrieveLevel {level!r} is not one of "
                            f"{', '.join(qr.LEVELS)}")
    rows = qr.find(store, "STUDY" if level == "PATIENT" else level,
                   keys if level != "PATIENT" else {"PatientID": keys.get("PatientID", "")},
                   root="study")
    studies = sorted({str(r["StudyInstanceUID"]) for r in rows})
    if level == "IMAGE":
        sops = [str(r["SOPInstanceUID"]) for r in rows]
        return level, qr.instances(store, sop=sops) if sops else []
    if level == "SERIES":
        out: list[dict[str, Any]] = []
        for r in rows:
            out += qr.instances(store, series=str(r["SeriesInstanceUID"]))
        return level, out
    out = []
    for s in studies:
        out += qr.instances(store, study=s)
    return level, out


def _dataset(store: Store, row: dict[str, Any]) -> Dataset:
    return dcmread(io.BytesIO(store.read_blob(str(row["sha256"]))))


def _contexts(rows: list[dict[str, Any]]) -> list[Any]:
    from pynetdicom.presentation import build_context

    by_class: dict[str, set[str]] = {}
    for r in rows:
        by_class.setdefault(str(r["sop_class_uid"]), set()).add(str(r["transfer_syntax_uid"]))
    out = []
    for sop, tss in sorted(by_class.items()):
        out.append(build_context(sop, sorted(tss | set(_UNCOMPRESSED))))
    return out[:128]


def handle_move(store: Store, cfg: Config, event: Any, calling: str, peer: str) -> Iterator[Any]:
    dest = str(event.move_destination.decode("ascii", "replace")
               if isinstance(event.move_destination, bytes) else event.move_destination).strip()
    remote = cfg.remote_ae(dest)
    if remote is None:
        log.warning("c-move calling=%s destination=%s refused: not in [[remote_aes]]",
                    calling, dest)
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    try:
        level, rows = _to_retrieve(store, event)
    except qr.QueryError as exc:
        yield remote.host, remote.port
        yield IDENTIFIER_DOES_NOT_MATCH, _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        return
    yield remote.host, remote.port, {"contexts": _contexts(rows) or None}
    yield len(rows)
    _audit(store, cfg, calling, peer, "c-move", [str(r["study_instance_uid"]) for r in rows],
           {"level": level, "move_destination": dest, "instances": len(rows)})
    log.info("c-move calling=%s level=%s destination=%s instances=%d", calling, level, dest,
             len(rows))
    for row in rows:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, _dataset(store, row)


def handle_get(store: Store, cfg: Config, event: Any, calling: str, peer: str) -> Iterator[Any]:
    try:
        level, rows = _to_retrieve(store, event)
    except qr.QueryError as exc:
        yield 0
        yield IDENTIFIER_DOES_NOT_MATCH, _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc))
        return
    yield len(rows)
    _audit(store, cfg, calling, peer, "c-get", [str(r["study_instance_uid"]) for r in rows],
           {"level": level, "instances": len(rows)})
    log.info("c-get calling=%s level=%s instances=%d", calling, level, len(rows))
    for row in rows:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, _dataset(store, row)
