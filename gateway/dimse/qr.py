"""C-FIND, C-MOVE and C-GET SCP handlers (patient root and study root) for the node's SCP.

Queries are answered by :func:`fenji.gateway.dicom.query.find` (the same model as
QIDO-RS); retrieves resolve their unique keys with :func:`fenji.gateway.dicom.query.retrieve`.

Retrieval sends the stored data sets.  C-MOVE opens an association to the move
destination, which must be a configured ``[[remote_aes]]`` entry (else 0xA801
with an Error Comment naming it); C-GET sends over the requesting association
on the storage contexts the requestor proposed (SCP/SCU role selection).  The
C-MOVE sub-association proposes, for every SOP class to be sent, one context
per stored transfer syntax, so that each instance travels in its own syntax
where the destination accepts it, and one Explicit/Implicit VR Little Endian
context: an instance goes as its stored data set bytes where its syntax was
accepted, and pynetdicom re-encodes an uncompressed data set between those two
(and inflates a deflated one) when the stored syntax was refused.  Compressed
pixel data is never decoded: refused, it is a failed sub-operation, and the
final response is 0xB000 with the Failed SOP Instance UID List (pynetdicom
keeps the counts).

Every query that returns matches and every retrieve is an ``opened`` event in
the audit ledger (calling AE, peer address, level, studies, instance count):
one event per study, or one event listing the studies when a request touches
more than :data:`MAX_STUDY_EVENTS`.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from fenji.gateway.access import scope as access
from fenji.gateway.audit import ledger
from fenji.gateway.config import (
    AUDIT_STUDIES_LISTED_MAX,
    AUDIT_STUDY_EVENTS_MAX,
    DIMSE_MAX_CONTEXTS,
)
from fenji.gateway.dicom import charset
from fenji.gateway.dicom import query as qr
from fenji.gateway.dicom.validate import split_part10

if TYPE_CHECKING:
    from fenji.gateway.config import Config
    from fenji.gateway.store.db import Store

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

# Query/Retrieve statuses, PS3.4 C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE), C.4.3.1.4 (C-GET).
PENDING = 0xFF00
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000
MOVE_DESTINATION_UNKNOWN = 0xA801
# PS3.4 C.4.2.1.5 / C.4.3.1.4: Refused, Out of Resources - unable to perform sub-operations.
OUT_OF_RESOURCES_SUBOPS = 0xA702
BUDGET_WINDOW_S = 3600.0
VERIFICATION = "1.2.840.10008.1.1"
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Attribute of a retrieved Dataset: (stored transfer syntax UID, stored data set bytes).
_STORED = "_fenji_stored"
CANCELLED = 0xFE00
# Bounds defined with every other limit in gateway/config.py.
MAX_CONTEXTS = DIMSE_MAX_CONTEXTS
MAX_STUDY_EVENTS = AUDIT_STUDY_EVENTS_MAX
MAX_STUDIES_LISTED = AUDIT_STUDIES_LISTED_MAX
# Uncompressed syntaxes pynetdicom converts between on the sub-association
# (same endianness only: Big Endian data goes as itself or not at all).
_CONVERTIBLE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_FALLBACK: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _root(event: Any) -> str:
    sop = str(getattr(event.request, "AffectedSOPClassUID", "") or "")
    return "patient" if sop in _PATIENT_ROOT else "study"


def _keys(identifier: Dataset, default_charset: str = ""
          ) -> tuple[str, dict[str, str], list[str]]:
    """(level, keyword -> matching value, sequence keywords returned empty).

    Text values are decoded with the identifier's own (0008,0005), a query in
    GB18030 as GB18030, or ``default_charset`` when it declares none
    (gateway/dicom/charset.py; pydicom's decoder has gaps).
    """
    charset.decode_dataset(identifier, default_charset or None)
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    keys: dict[str, str] = {}
    sequences: list[str] = []
    for elem in identifier:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", ""):
            continue
        if elem.VR == "SQ":
            sequences.append(elem.keyword)  # sequence matching is not supported
            continue
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        keys[elem.keyword] = text
    return level, keys, sequences


def _failure(status: int, comment: str) -> Dataset:
    """A status data set: pynetdicom copies Status and (0000,0902) Error Comment (LO, 64
    characters at most) into the response."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def _audit(store: Store, cfg: Config, calling: str, peer: str, via: str,
           studies: list[str], detail: dict[str, Any]) -> None:
    """``opened`` events for one request, appended in one transaction."""
    uids = sorted(set(studies))
    if not uids:
        return
    base = {"via": via, "from": peer, **detail}
    try:
        with store.atomic() as con:
            if len(uids) <= MAX_STUDY_EVENTS:
                for study in uids:
                    ledger.record(store, "opened", node=cfg.node.name, actor=calling or "?",
                                  role="dicom-ae", obj=study,
                                  case_id=qr.case_for_study(store, study), detail=base, con=con)
            else:
                ledger.record(store, "opened", node=cfg.node.name, actor=calling or "?",
                              role="dicom-ae", obj=f"{len(uids)} studies",
                              detail={**base, "n_studies": len(uids),
                                      "studies": uids[:MAX_STUDIES_LISTED]}, con=con)
    except Exception:  # the answer must not depend on the audit; the failure is logged
        log.exception("audit of %s by %s failed", via, calling)


def handle_find(store: Store, cfg: Config, event: Any, calling: str,
                peer: str) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    root = _root(event)
    try:
        level, keys, sequences = _keys(event.identifier, cfg.dicom.default_character_set)
        rows = qr.find(store, level, keys, root=root)
        if level != "PATIENT":  # a reader's workstation: their services only
            rows = access.filter_rows(store, cfg, calling, rows, "StudyInstanceUID")
    except qr.QueryError as exc:
        log.info("c-find calling=%s refused status=0x%04X reason=%s", calling,
                 IDENTIFIER_DOES_NOT_MATCH, exc)
        yield _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc)), None
        return
    except Exception as exc:  # never crash the association
        log.exception("C-FIND from %s failed", calling)
        yield _failure(UNABLE_TO_PROCESS, f"query failed: {type(exc).__name__}"), None
        return
    log.info("c-find calling=%s root=%s level=%s keys=%s matches=%d", calling, root, level,
             sorted(k for k, v in keys.items() if v), len(rows))
    if rows:
        if level == "PATIENT":
            studies = qr.studies_of_patients(store, [str(r["PatientID"]) for r in rows
                                                     if r.get("PatientID") is not None])
        else:
            studies = [str(r["StudyInstanceUID"]) for r in rows if r.get("StudyInstanceUID")]
        _audit(store, cfg, calling, peer, "c-find", studies,
               {"level": level, "root": root, "matches": len(rows)})
    unique = qr.UNIQUE_KEYS[level]
    for row in rows:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        ds = Dataset()
        # The index holds Unicode; answer in UTF-8 (PS3.5 6.1.2.5.3), person names
        # with their component groups ("Wang^XiaoDong=王^小东").
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = level
        for keyword in keys:
            value = row.get(keyword)
            # A key the index does not hold is returned zero-length (PS3.4 C.2.2.1.2).
            setattr(ds, keyword, None if value in (None, "") else value)
        for keyword in sequences:
            setattr(ds, keyword, [])
        if unique not in keys:
            setattr(ds, unique, row.get(unique))
        yield PENDING, ds


def _to_retrieve(store: Store, event: Any) -> tuple[str, list[dict[str, Any]]]:
    level, keys, _ = _keys(event.identifier)
    return level, qr.retrieve(store, level, keys, root=_root(event))


def charge_retrieve(store: Store, cfg: Config, calling: str, rows: list[dict[str, Any]],
                    now: float | None = None) -> str | None:
    """Charge a retrieve to the calling AE's hourly budget; the refusal text, or ``None``.

    The whole request is charged when it is accepted (a cancelled one still
    counted): the budget bounds what one allow-listed AE can take out of the
    store, whatever its UID lists look like.
    """
    now = time.time() if now is None else now
    want = sum(int(r.get("size") or 0) for r in rows)
    limit = cfg.dicom.max_retrieve_bytes_per_hour
    with store.atomic() as con:
        con.execute("DELETE FROM retrieve_usage WHERE at < ?", (now - BUDGET_WINDOW_S,))
        used = con.execute("SELECT coalesce(sum(bytes), 0) FROM retrieve_usage WHERE "
                           "calling_ae = ? AND at >= ?",
                           (calling, now - BUDGET_WINDOW_S)).fetchone()[0]
        if used + want > limit:
            return (f"{want / 1e6:.1f} MB would exceed dicom.max_retrieve_bytes_per_hour = "
                    f"{limit} for {calling} ({used / 1e6:.1f} MB in the last hour)")
        con.execute("INSERT INTO retrieve_usage(calling_ae, at, bytes) VALUES (?, ?, ?)",
                    (calling, now, want))
    return None


def _private_as_un(ds: Dataset) -> None:
    """Private elements of an Implicit VR data set as UN, so that re-encoding it as
    Explicit VR carries their bytes unchanged (PS3.5 6.2.2 note 4).

    pydicom would otherwise take their VR from its private dictionary, which can
    be wrong for the device (a Philips CT's DS string under an FD entry), and the
    instance could not be sent at all.  Written back as Implicit VR, the bytes
    are the same as before.
    """
    for tag in list(ds._dict):
        elem: Any = ds._dict[tag]
        if isinstance(elem, RawDataElement):
            if (tag.is_private and not tag.is_private_creator
                    and elem.length != _UNDEFINED_LENGTH and isinstance(elem.value, bytes)):
                ds._dict[tag] = DataElement(tag, "UN", elem.value)
            continue
        if elem.VR == "SQ":
            for item in elem.value:
                _private_as_un(item)


def _dataset(store: Store, row: dict[str, Any]) -> Dataset:
    """The stored instance, parsed but not decoded (pixel data stays as stored), carrying
    its stored data set bytes for :func:`install_stored_bytes_send`."""
    blob = store.read_blob(str(row["sha256"]))
    ds = dcmread(io.BytesIO(blob))
    ts = str(row["transfer_syntax_uid"])
    if ts == ImplicitVRLittleEndian:
        _private_as_un(ds)
    _, offset = split_part10(blob)
    setattr(ds, _STORED, (ts, blob[offset:]))
    return ds


def install_stored_bytes_send() -> None:
    """Let pynetdicom send a retrieved instance's stored data set bytes unchanged.

    pynetdicom encodes every data set it sends with pydicom, which leaves out
    the retired group lengths (gggg,0000) among others: a C-MOVE or C-GET would
    deliver a data set whose SHA-256 is not the one fenji stored and attested.
    A data set made by :func:`_dataset` is sent as its stored bytes when the
    accepted context has the stored encoding (pynetdicom picks that context
    first and never converts compressed data); when it has to convert, and for
    every other caller, pynetdicom encodes as before.
    """
    import pynetdicom.association as association

    if getattr(association.encode, "_fenji_stored_bytes", False):
        return
    original = association.encode

    def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool,
               deflated: bool = False) -> bytes | None:
        stored = getattr(ds, _STORED, None)
        if stored is not None:
            ts = UID(stored[0])
            if (ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated) == \
                    (is_implicit_vr, is_little_endian, deflated):
                return bytes(stored[1])
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    encode._fenji_stored_bytes = True  # type: ignore[attr-defined]
    association.encode = encode


def sub_association_contexts(rows: list[dict[str, Any]]) -> list[Any]:
    """Presentation contexts to propose to a move destination for ``rows``.

    One per (SOP class, stored transfer syntax), so each instance can travel in
    its own syntax, plus one Explicit/Implicit VR LE context per class holding
    uncompressed data, which pynetdicom converts to when the stored syntax is
    refused.  Classes with the most instances come first if 128 do not suffice.
    """
    from pynetdicom.presentation import build_context

    by_class: dict[str, dict[str, int]] = {}
    for r in rows:
        tss = by_class.setdefault(str(r["sop_class_uid"]), {})
        ts = str(r["transfer_syntax_uid"])
        tss[ts] = tss.get(ts, 0) + 1
    ranked = sorted(by_class.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    out = []
    for sop, tss in ranked:
        for ts in sorted(tss, key=lambda t: (-tss[t], t)):
            out.append(build_context(sop, ts))
        if any(ts in _CONVERTIBLE for ts in tss):
            out.append(build_context(sop, _FALLBACK))
    if len(out) > MAX_CONTEXTS:
        log.warning("c-move: %d presentation contexts needed, %d proposed; instances of "
                    "the rest will fail", len(out), MAX_CONTEXTS)
    return out[:MAX_CONTEXTS]


def _comment_on(assoc: Any, status: int, comment: str) -> None:
    """Add (0000,0902) Error Comment to the next response with ``status`` on ``assoc``.

    pynetdicom answers an unknown move destination (0xA801) itself, with no way
    for the handler to say which destination it did not know; this puts the
    comment on that one response on its way out.
    """
    dimse = assoc.dimse
    send = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if getattr(primitive, "Status", None) == status:
            primitive.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
            dimse.send_msg = send
        send(primitive, context_id)

    dimse.send_msg = send_msg


def _retrieval(store: Store, cfg: Config, event: Any, calling: str,
               op: str) -> tuple[str, list[dict[str, Any]], Any]:
    """What a C-MOVE or C-GET asks for and ``calling`` may have: (level, rows, None),
    or (level, [], failure status dataset) when it is refused."""
    try:
        level, rows = _to_retrieve(store, event)
        rows = access.filter_rows(store, cfg, calling, rows, "study_instance_uid")
    except qr.QueryError as exc:
        log.info("%s calling=%s refused status=0x%04X reason=%s", op, calling,
                 IDENTIFIER_DOES_NOT_MATCH, exc)
        return "", [], _failure(IDENTIFIER_DOES_NOT_MATCH, str(exc))
    refused = charge_retrieve(store, cfg, calling, rows)
    if refused is not None:
        log.warning("%s calling=%s refused status=0x%04X reason=%s", op, calling,
                    OUT_OF_RESOURCES_SUBOPS, refused)
        return level, [], _failure(OUT_OF_RESOURCES_SUBOPS, refused)
    return level, rows, None


def _sub_operations(store: Store, event: Any, rows: list[dict[str, Any]]) -> Iterator[Any]:
    """One pending status and dataset per instance, until the SCU cancels."""
    for row in rows:
        if event.is_cancelled:
            yield CANCELLED, None
            return
        yield PENDING, _dataset(store, row)


def handle_move(store: Store, cfg: Config, event: Any, calling: str, peer: str) -> Iterator[Any]:
    install_stored_bytes_send()
    raw = event.move_destination
    dest = str(raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw).strip()
    remote = cfg.remote_ae(dest)
    if remote is None:
        log.warning("c-move calling=%s destination=%s refused status=0x%04X: not in "
                    "[[remote_aes]]", calling, dest, MOVE_DESTINATION_UNKNOWN)
        _comment_on(event.assoc, MOVE_DESTINATION_UNKNOWN,
                    f"move destination {dest!r} unknown")
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    level, rows, refusal = _retrieval(store, cfg, event, calling, "c-move")
    if refusal is not None:
        # pynetdicom takes a destination (and associates with it) and a count
        # before it takes a status.
        from pynetdicom.presentation import build_context

        yield remote.host, remote.port, {"contexts": [build_context(VERIFICATION)]}
        yield 1
        yield refusal, None
        return
    yield remote.host, remote.port, {"contexts": sub_association_contexts(rows) or None}
    yield len(rows)
    _audit(store, cfg, calling, peer, "c-move", [str(r["study_instance_uid"]) for r in rows],
           {"level": level, "move_destination": dest, "instances": len(rows)})
    log.info("c-move calling=%s level=%s destination=%s instances=%d", calling, level, dest,
             len(rows))
    yield from _sub_operations(store, event, rows)


def handle_get(store: Store, cfg: Config, event: Any, calling: str, peer: str) -> Iterator[Any]:
    install_stored_bytes_send()
    level, rows, refusal = _retrieval(store, cfg, event, calling, "c-get")
    if refusal is not None:
        yield 1  # pynetdicom takes a count before any status
        yield refusal, None
        return
    yield len(rows)
    _audit(store, cfg, calling, peer, "c-get", [str(r["study_instance_uid"]) for r in rows],
           {"level": level, "instances": len(rows)})
    log.info("c-get calling=%s level=%s instances=%d", calling, level, len(rows))
    yield from _sub_operations(store, event, rows)
