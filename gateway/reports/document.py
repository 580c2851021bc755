"""The reader's signed report as a Basic Text SR and an encapsulated PDF (DESIGN.md §3.9, §10).

The center is liable for report content, the sending hospital for data
quality.  So a report is a plain JSON document (:func:`build_report`) that
names the case, the exact instances read, the SHA-256 of the bundle manifest
the center received and the SHA-256 of the hospital's signed quality
attestation; the reader signs its canonical JSON with their Ed25519 key
(:func:`sign_report`).  The signature therefore binds the report to exactly the
data the reader saw.

An edge does not know every reader; it trusts the center's node key.  The
center *endorses* each reader key (:func:`endorse_reader`): a statement, signed
by the center's node key, that this key belongs to this reader of this center.

The report travels as DICOM in the case's study: a Basic Text SR
(:func:`build_sr`) and an Encapsulated PDF (:func:`build_pdf_dicom`, rendered
by :func:`render_pdf`).  Both carry the signed JSON, the signature and the
endorsement in a private block (creator ``FENJI REPORT 1``, group 0099), so
each file verifies on its own (:func:`verify_dataset`,
``fenji report verify FILE``): the signatures, and that what a person sees (the
SR's content tree, the PDF) is what was signed.

A report from the reader's own viewer (any SR, or an encapsulated PDF) is read
with :func:`parse_viewer_report` and then signed like a typed one.

Everything here is pure: no store, no network; keys come in as objects.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from fenji.gateway import __version__
from fenji.gateway.dicom.charset import pn_display
from fenji.gateway.errors import LocalError, PeerError
from fenji.gateway.keys import canonical_json, fingerprint, sign, verify

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

REPORT_TYPE = "fenji-report"
ENDORSEMENT_TYPE = "fenji-reader-endorsement"
RENDITION_TYPE = "fenji-report-rendition"
REPORT_FORMAT = 1

# The private block that makes an SR or PDF self-verifying (PS3.5 7.8.1).
PRIVATE_GROUP = 0x0099
PRIVATE_CREATOR = "FENJI REPORT 1"
EL_REPORT = 0x01       # UT: canonical JSON of the signed report
EL_SIGNATURE = 0x02    # UT: the reader's Ed25519 signature over it, hex
EL_ENDORSEMENT = 0x03  # UT: the center's endorsement of the reader key, JSON
EL_RENDITION = 0x04    # UT: the reader's signature over the PDF's SHA-256 (PDF only)

# Codes.  DCM and LN are the standard's; 99FENJI is ours (PS3.16 8.2: a
# coding scheme designator starting "99" is private) for the two concepts that
# have no standard code we could rely on.
CODE_IMAGING_REPORT = ("11528-7", "LN", "Radiology Report")
CODE_ECG_REPORT = ("11524-6", "LN", "EKG study report")
CODE_FINDING = ("121071", "DCM", "Finding")
CODE_IMPRESSION = ("121073", "DCM", "Impression")
CODE_OBSERVER_TYPE = ("121005", "DCM", "Observer Type")
CODE_PERSON = ("121006", "DCM", "Person")
CODE_PERSON_NAME = ("121008", "DCM", "Person Observer Name")
CODE_CRITICAL = ("CRITICAL", "99FENJI", "Critical finding")
CODE_AMENDMENT = ("AMENDREASON", "99FENJI", "Reason for amendment")
CODE_YES = ("373066001", "SCT", "Yes")
CODE_NO = ("373067005", "SCT", "No")

# Concept codes that a viewer's SR uses for findings and impressions (by code
# value; CodeMeaning is matched by words as well, see parse_viewer_report).
_FINDING_CODES = {"121070", "121071", "59776-5", "18782-3", "121065"}
_IMPRESSION_CODES = {"121072", "121073", "121076", "121077", "19005-8", "55110-1"}

# Derived UIDs: SR, PDF and their series follow from the report id, so an
# amendment can reference its predecessor's SR without a lookup and a verifier
# can check that the SR *is* the signed report (SOP Instance UID = report_id).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "fenji.gateway.reports.document")


def _register_private_dictionary() -> None:
    """So a file read with implicit VR (e.g. after a PACS) still gives UT, not UN."""
    from pydicom.datadict import add_private_dict_entries

    names = {EL_REPORT: "fenji Signed Report JSON", EL_SIGNATURE: "fenji Report Signature",
             EL_ENDORSEMENT: "fenji Reader Endorsement", EL_RENDITION: "fenji Rendition Signature"}
    add_private_dict_entries(PRIVATE_CREATOR, {
        (PRIVATE_GROUP << 16) | 0x1000 | el: ("UT", "1", name, "") for el, name in names.items()})


_register_private_dictionary()


class ReportError(PeerError, ValueError):
    """A report, endorsement or report object is malformed (the message names the field)."""

    http_status = 422


class FontMissing(LocalError):
    """No font that can render Chinese is installed on this node."""


# ---------------------------------------------------------------------------
# The report document and its signatures
# ---------------------------------------------------------------------------

def new_uid() -> str:
    """A fresh DICOM UID from a random UUID (PS3.5 B.2: the 2.25 root)."""
    return f"2.25.{uuid.uuid4().int}"


def derived_uid(report_id: str, what: str) -> str:
    """The UID of ``what`` ("sr-series", "pdf", "pdf-series") of report ``report_id``."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{report_id}/{what}').int}"


def attestation_sha256(att: Mapping[str, Any] | None) -> str | None:
    """SHA-256 (hex) of the canonical JSON of a quality attestation, ``None`` for none."""
    if att is None:
        return None
    return hashlib.sha256(canonical_json(dict(att))).hexdigest()


def _is_hex(value: object, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and all(
        c in "0123456789abcdef" for c in value)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="milliseconds")


def _instance_list(instances: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for i, inst in enumerate(instances):
        ref = {}
        for k in ("sop_class_uid", "sop_instance_uid", "series_instance_uid"):
            v = inst.get(k)
            if not isinstance(v, str) or not v.strip():
                raise ReportError(f"instances[{i}].{k} = {v!r}: every instance needs its "
                                  "SOP class, SOP instance and series UIDs")
            ref[k] = v.strip()
        out[ref["sop_instance_uid"]] = ref
    return sorted(out.values(), key=lambda r: (r["series_instance_uid"],
                                               r["sop_instance_uid"]))


def build_report(*, case: Mapping[str, Any], manifest_sha256: str,
                 attestation: Mapping[str, Any] | None, instances: list[dict[str, Any]],
                 reader: str, reader_display: str, center: str, findings: str,
                 impression: str, critical: bool, version: int = 1,
                 supersedes: str | None = None, amendment_reason: str | None = None,
                 signed_at: float | None = None,
                 patient: Mapping[str, Any] | None = None,
                 examination: Mapping[str, Any] | None = None,
                 timezone: str | None = None) -> dict[str, Any]:
    """The report document (JSON-able) that the reader signs; ``reader_key`` is set by signing.

    ``case`` holds ``case_id``, ``study_instance_uid``, ``service``, ``priority``,
    ``requesting_physician``, ``clinical_question`` and ``sender`` (the sending
    node).  An amendment (``version`` > 1) names the ``report_id`` it
    ``supersedes`` and a non-empty ``amendment_reason``.

    >>> doc = build_report(case={"case_id": "c1", "study_instance_uid": "1.2.3"},
    ...     manifest_sha256="0" * 64, attestation=None, instances=[{"sop_class_uid":
    ...     "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.4",
    ...     "series_instance_uid": "1.2.3.5"}], reader="dr.wang", reader_display="王医生",
    ...     center="center", findings="右肺下叶结节", impression="", critical=False)
    >>> doc["report_id"].startswith("2.25."), doc["attestation_sha256"], doc["version"]
    (True, None, 1)
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReportError(f"version = {version!r}: a report version is an integer >= 1")
    reason = (amendment_reason or "").strip()
    if version > 1:
        if not supersedes:
            raise ReportError(f"version = {version} is an amendment, but supersedes is "
                              f"{supersedes!r}: name the report_id it replaces")
        if not reason:
            raise ReportError(f"version = {version} is an amendment, but amendment_reason is "
                              f"{amendment_reason!r}: an amendment needs a reason")
    elif supersedes or reason:
        raise ReportError(f"version = 1 is a first report; supersedes = {supersedes!r} and "
                          f"amendment_reason = {amendment_reason!r} belong to an amendment "
                          "(version > 1)")
    if not _is_hex(manifest_sha256, 64):
        raise ReportError(f"manifest_sha256 = {manifest_sha256!r} is not 64 lower-case "
                          "hex digits")
    study = case.get("study_instance_uid")
    if not isinstance(study, str) or not study:
        raise ReportError(f"case study_instance_uid = {study!r}: a report is about one study")
    case_id = case.get("case_id")
    if not isinstance(case_id, str) or not case_id:
        raise ReportError(f"case case_id = {case_id!r}: a report belongs to a case")
    refs = _instance_list(instances)
    if not refs:
        raise ReportError(f"case {case_id} lists no instances: a report binds to the "
                          "instances read")
    if not reader:
        raise ReportError("reader is empty: a report is signed by a named reader")
    p = dict(patient or {})
    return {
        "type": REPORT_TYPE, "format": REPORT_FORMAT,
        "report_id": new_uid(), "version": version,
        "supersedes": supersedes if version > 1 else None,
        "amendment_reason": reason if version > 1 else None,
        "case_id": case_id, "study_instance_uid": study,
        "service": case.get("service"), "priority": case.get("priority"),
        "requesting_physician": case.get("requesting_physician"),
        "clinical_question": case.get("clinical_question"),
        "sending_node": case.get("sender"),
        "center": center, "reader": reader, "reader_display": reader_display or reader,
        "reader_key": None,
        "signed_at": _iso(time.time() if signed_at is None else signed_at),
        "findings": findings or "", "impression": impression or "",
        "critical": bool(critical),
        "manifest_sha256": manifest_sha256,
        "attestation_sha256": attestation_sha256(attestation),
        "instances": refs,
        "patient": {k: str(p.get(k) or "") for k in ("id", "name", "birth_date", "sex",
                                                     "age")},
        # What a doctor needs to accept the report as about this examination; all
        # signed with it, so the PDF re-renders from the report alone.
        **({"study": {k: str(st.get(k) or "") for k in STUDY_FIELDS}}
           if (st := dict(examination or {})) else {}),
        **({"timezone": timezone} if timezone else {}),
    }


# The examination as the report names it (from the study's own header).
STUDY_FIELDS = ("date", "time", "modality", "description", "accession_number",
                "sending_institution", "reading_institution")


def local_time(report: Mapping[str, Any]) -> str:
    """``signed_at`` in the report's time zone, e.g. ``2026-12-03 23:16 (Asia/Shanghai)``."""
    when = _dt_of(report)
    tz = str(report.get("timezone") or "")
    if tz:
        try:
            from zoneinfo import ZoneInfo

            return when.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S") + f" ({tz})"
        except (KeyError, ValueError, OSError):
            pass
    return when.strftime("%Y-%m-%d %H:%M:%S") + " (UTC)"


def sign_report(doc: Mapping[str, Any], reader_private_key: Ed25519PrivateKey
                ) -> dict[str, Any]:
    """``{"report": doc with reader_key, "signature": hex}``: Ed25519 over ``canonical_json``."""
    if doc.get("type") != REPORT_TYPE:
        raise ReportError(f"type = {doc.get('type')!r}: only a {REPORT_TYPE!r} document "
                          "(build_report) is signed as a report")
    report = {**doc, "reader_key": fingerprint(reader_private_key.public_key())}
    return {"report": report, "signature": sign(reader_private_key, canonical_json(report))}


def endorse_reader(center_key: Ed25519PrivateKey, center_name: str, reader: str,
                   reader_display: str, reader_pub: Ed25519PublicKey) -> dict[str, Any]:
    """The center's statement, signed with its node key, that ``reader_pub`` is its reader."""
    body = {"type": ENDORSEMENT_TYPE, "center": center_name,
            "center_key": fingerprint(center_key.public_key()), "reader": reader,
            "reader_display": reader_display or reader, "reader_key": fingerprint(reader_pub),
            "role": "reader"}
    return {**body, "signature": sign(center_key, canonical_json(body))}


def verify_endorsement(end: Mapping[str, Any], center_pub: Ed25519PublicKey) -> bool:
    """Whether ``end`` is an endorsement signed by ``center_pub``."""
    if not isinstance(end, Mapping) or end.get("type") != ENDORSEMENT_TYPE:
        return False
    body = {k: v for k, v in end.items() if k != "signature"}
    return verify(center_pub, canonical_json(body), str(end.get("signature", "")))


def sign_rendition(signed: Mapping[str, Any], pdf_bytes: bytes,
                   reader_private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The reader's second signature: this PDF (by SHA-256) renders that signed report.

    Needed for a PDF that cannot be re-rendered from the report, such as one a
    reader's viewer made; see :func:`verify_dataset`.
    """
    report = signed["report"]
    if fingerprint(reader_private_key.public_key()) != report.get("reader_key"):
        raise ReportError(f"the rendition key {fingerprint(reader_private_key.public_key())} "
                          f"is not the report's reader_key {report.get('reader_key')}")
    body = {"type": RENDITION_TYPE, "report_id": report["report_id"],
            "report_signature": signed["signature"], "media_type": "application/pdf",
            "sha256": hashlib.sha256(pdf_bytes).hexdigest(), "length": len(pdf_bytes)}
    return {**body, "signature": sign(reader_private_key, canonical_json(body))}


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------

@dataclass
class VerifyResult:
    """What :func:`verify_signed` / :func:`verify_dataset` found.

    ``ok`` only when ``problems`` is empty: every signature verified against a
    trusted center and every visible field matched the signed report.
    ``notes`` say what was checked in a way worth knowing but not wrong.
    """

    ok: bool
    problems: list[str]
    report: dict[str, Any]
    signature: str = ""
    endorsement: dict[str, Any] = field(default_factory=dict)
    kind: str = "json"  # json | sr | pdf
    notes: list[str] = field(default_factory=list)
    endorsed_by: str | None = None  # the trusted center whose key verified the endorsement

    @property
    def reader(self) -> str | None:
        return self.report.get("reader")

    @property
    def center(self) -> str | None:
        return self.report.get("center")

    @property
    def version(self) -> int | None:
        return self.report.get("version")

    def summary(self) -> dict[str, Any]:
        """A flat JSON-able view (the ``fenji report verify --json`` object)."""
        r = self.report
        return {"ok": self.ok, "kind": self.kind, "report_id": r.get("report_id"),
                "version": r.get("version"), "supersedes": r.get("supersedes"),
                "amendment_reason": r.get("amendment_reason"), "reader": r.get("reader"),
                "reader_display": r.get("reader_display"), "reader_key": r.get("reader_key"),
                "center": r.get("center"), "endorsed_by": self.endorsed_by,
                "signed_at": r.get("signed_at"), "case_id": r.get("case_id"),
                "study_instance_uid": r.get("study_instance_uid"),
                "n_instances": len(r.get("instances") or []),
                "manifest_sha256": r.get("manifest_sha256"),
                "attestation_sha256": r.get("attestation_sha256"),
                "critical": r.get("critical"), "problems": list(self.problems),
                "notes": list(self.notes)}


def _short(h: object, n: int = 16) -> str:
    s = str(h)
    return s[:n] + "…" if len(s) > n else s


def verify_signed(signed: Mapping[str, Any], endorsement: Mapping[str, Any] | None,
                  trusted_centers: Mapping[str, Ed25519PublicKey] | None, *,
                  manifest_sha256: str | None = None,
                  attestation: Mapping[str, Any] | None = None) -> VerifyResult:
    """Check a report in its JSON form ``{"report", "signature"}`` with its endorsement.

    * the reader's signature over ``canonical_json(report)`` verifies with
      ``report["reader_key"]``;
    * the endorsement names the same reader, center and key, and verifies with
      the key of a trusted center (``trusted_centers`` maps node name to key;
      ``None``: not checked, which is itself a problem — without it any key
      could have signed);
    * ``manifest_sha256`` / ``attestation``, when given, equal the signed hashes.
    """
    problems: list[str] = []
    notes: list[str] = []
    report = signed.get("report") if isinstance(signed, Mapping) else None
    sig = signed.get("signature") if isinstance(signed, Mapping) else None
    if not isinstance(report, dict):
        return VerifyResult(False, [f"signed report has no 'report' object (got "
                                    f"{type(report).__name__})"], {}, kind="json")
    end = dict(endorsement) if isinstance(endorsement, Mapping) else {}
    if report.get("type") != REPORT_TYPE:
        problems.append(f"report type = {report.get('type')!r}, expected {REPORT_TYPE!r}")
    rkey_hex = report.get("reader_key")
    if not isinstance(sig, str) or not _is_hex(sig, 128):
        problems.append(f"signature = {_short(sig, 24)!r} is not 128 hex digits (Ed25519)")
    if not _is_hex(rkey_hex, 64):
        problems.append(f"reader_key = {rkey_hex!r} is not 64 hex digits (Ed25519)")
    elif isinstance(sig, str):
        rpub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(rkey_hex)))
        if not verify(rpub, canonical_json(report), sig):
            problems.append(f"reader signature {_short(sig)} does not verify over the report "
                            f"with reader_key {_short(rkey_hex)} (reader "
                            f"{report.get('reader')!r}): the report or the signature was "
                            "changed")
    version = report.get("version")
    if isinstance(version, int) and version > 1 and (
            not report.get("supersedes") or not str(report.get("amendment_reason") or "")
            .strip()):
        problems.append(f"version = {version} is an amendment but supersedes = "
                        f"{report.get('supersedes')!r}, amendment_reason = "
                        f"{report.get('amendment_reason')!r}")
    endorsed_by = _check_endorsement(report, end, trusted_centers, problems)
    if manifest_sha256 is not None and report.get("manifest_sha256") != manifest_sha256:
        problems.append(f"manifest_sha256: the report was signed over manifest "
                        f"{report.get('manifest_sha256')}, but the case's manifest is "
                        f"{manifest_sha256}")
    if attestation is not None:
        got = attestation_sha256(attestation)
        if report.get("attestation_sha256") != got:
            problems.append(f"attestation_sha256: the report was signed over attestation "
                            f"{report.get('attestation_sha256')}, but the given attestation "
                            f"(verdict {attestation.get('verdict')!r}) hashes to {got}")
    return VerifyResult(not problems, problems, report, sig if isinstance(sig, str) else "",
                        end, "json", notes, endorsed_by)


def _check_endorsement(report: Mapping[str, Any], end: Mapping[str, Any],
                       trusted: Mapping[str, Ed25519PublicKey] | None,
                       problems: list[str]) -> str | None:
    if not end:
        problems.append("endorsement missing: nothing binds reader_key "
                        f"{_short(report.get('reader_key'))} to a center")
        return None
    for k in ("reader", "reader_key", "center"):
        if end.get(k) != report.get(k):
            problems.append(f"endorsement {k} = {end.get(k)!r} but the report's {k} = "
                            f"{report.get(k)!r}")
    if end.get("role") != "reader":
        problems.append(f"endorsement role = {end.get('role')!r}, expected 'reader'")
    if trusted is None:
        problems.append("endorsement not checked: no trusted center key (give "
                        "--trust-center NAME=KEY or --config)")
        return None
    name = str(end.get("center"))
    pub = trusted.get(name)
    if pub is None:
        problems.append(f"endorsement is by center {name!r}, which is not a trusted center "
                        f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
        return None
    if not verify_endorsement(end, pub):
        problems.append(f"endorsement signature does not verify with trusted center "
                        f"{name!r}'s key {_short(fingerprint(pub))} (endorsement claims key "
                        f"{_short(end.get('center_key'))})")
        return None
    return name


# ---------------------------------------------------------------------------
# DICOM: helpers
# ---------------------------------------------------------------------------

def _code(c: tuple[str, str, str]) -> Dataset:
    d = Dataset()
    d.CodeValue, d.CodingSchemeDesignator, d.CodeMeaning = c
    return d


def _item(rel: str, vt: str, concept: tuple[str, str, str], **values: Any) -> Dataset:
    it = Dataset()
    it.RelationshipType = rel
    it.ValueType = vt
    it.ConceptNameCodeSequence = Sequence([_code(concept)])
    for k, v in values.items():
        setattr(it, k, v)
    return it


def _dt_of(report: Mapping[str, Any]) -> _dt.datetime:
    try:
        d = _dt.datetime.fromisoformat(str(report.get("signed_at")))
    except ValueError as exc:
        raise ReportError(f"signed_at = {report.get('signed_at')!r} is not ISO 8601") from exc
    return (d if d.tzinfo else d.replace(tzinfo=_dt.UTC)).astimezone(_dt.UTC)


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _pn(display: Any) -> PersonName:
    """A reader's display name as PN: all of it the family-name component.

    The trailing ``^`` makes it the component form rather than the retired
    free form dciodvfy warns about (PS3.5 6.2.1.1); we do not split a display
    name such as "王医生 (Dr. Wang)" into family and given names by guessing.
    """
    s = _text(display)
    return PersonName(s if not s or "^" in s else s + "^")


def _patient_study(ds: Dataset, attrs: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    """Patient and General Study modules from the study's own instance (type 2: may be empty)."""
    pat = report.get("patient") or {}
    # Re-made as plain str: a PersonName read from a GB18030 instance would
    # otherwise be written back with its original bytes under ISO_IR 192.
    ds.PatientName = PersonName(_text(attrs.get("PatientName")) or _text(pat.get("name")))
    ds.PatientID = _text(attrs.get("PatientID")) or _text(pat.get("id"))
    ds.PatientBirthDate = _text(attrs.get("PatientBirthDate")) or _text(pat.get("birth_date"))
    ds.PatientSex = _text(attrs.get("PatientSex")) or _text(pat.get("sex"))
    ds.StudyInstanceUID = report["study_instance_uid"]
    ds.StudyDate = _text(attrs.get("StudyDate"))
    ds.StudyTime = _text(attrs.get("StudyTime"))
    ds.AccessionNumber = _text(attrs.get("AccessionNumber"))
    ds.ReferringPhysicianName = PersonName(_text(attrs.get("ReferringPhysicianName")))
    ds.StudyID = _text(attrs.get("StudyID"))
    if attrs.get("StudyDescription"):
        ds.StudyDescription = _text(attrs.get("StudyDescription"))


def _sop_common(ds: Dataset, sop_class: str, sop_uid: str, when: _dt.datetime) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese findings and names (PS3.3 C.12.1.1.2)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"  # ContentDate/Time are UTC
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(sop_class)
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.TransferSyntaxUID = ExplicitVRLittleEndian  # private UT elements keep their VR
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = fm


def _put_private(ds: Dataset, signed: Mapping[str, Any], endorsement: Mapping[str, Any],
                 rendition: Mapping[str, Any] | None = None) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(EL_REPORT, "UT", canonical_json(signed["report"]).decode())
    block.add_new(EL_SIGNATURE, "UT", str(signed["signature"]))
    block.add_new(EL_ENDORSEMENT, "UT", canonical_json(dict(endorsement)).decode())
    if rendition is not None:
        block.add_new(EL_RENDITION, "UT", canonical_json(dict(rendition)).decode())


def _private_text(ds: Dataset, el: int) -> str | None:
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    if block.get_tag(el) not in ds:
        return None
    v = block[el].value
    if isinstance(v, bytes):  # read as UN (implicit VR, unknown private tag)
        v = v.decode("utf-8", errors="replace")
    return str(v).rstrip(" \x00")


def has_signed_block(ds: Dataset) -> bool:
    """Whether ``ds`` carries fenji's signed report block (it is one of fenji's reports)."""
    return _private_text(ds, EL_REPORT) is not None


def read_private_block(ds: Dataset) -> tuple[dict[str, Any], dict[str, Any],
                                             dict[str, Any] | None]:
    """``(signed, endorsement, rendition)`` from a report object's private block.

    Raises :class:`ReportError` naming the element when the block is missing
    or unreadable.
    """
    raw = _private_text(ds, EL_REPORT)
    if raw is None:
        raise ReportError(f"no fenji report block: private creator {PRIVATE_CREATOR!r} with "
                          f"(0099,xx{EL_REPORT:02X}) not found in "
                          f"{ds.get('SOPInstanceUID', '?')}")
    out: list[Any] = []
    for el, name in ((EL_REPORT, "report JSON"), (EL_ENDORSEMENT, "endorsement JSON"),
                     (EL_RENDITION, "rendition JSON")):
        text = _private_text(ds, el)
        if text is None:
            out.append(None)
            continue
        try:
            val = json.loads(text)
        except ValueError as exc:
            raise ReportError(f"(0099,xx{el:02X}) {name} is not JSON: {exc}") from exc
        if not isinstance(val, dict):
            raise ReportError(f"(0099,xx{el:02X}) {name} is a {type(val).__name__}, "
                              "not an object")
        out.append(val)
    signed = {"report": out[0], "signature": _private_text(ds, EL_SIGNATURE) or ""}
    return signed, out[1] or {}, out[2]


def _evidence(study: str, refs: Iterable[Mapping[str, str]]) -> Sequence:
    by_series: dict[str, list[Mapping[str, str]]] = {}
    for r in refs:
        by_series.setdefault(r["series_instance_uid"], []).append(r)
    st = Dataset()
    st.StudyInstanceUID = study
    series = []
    for suid in sorted(by_series):
        se = Dataset()
        se.SeriesInstanceUID = suid
        sops = []
        for r in by_series[suid]:
            s = Dataset()
            s.ReferencedSOPClassUID = r["sop_class_uid"]
            s.ReferencedSOPInstanceUID = r["sop_instance_uid"]
            sops.append(s)
        se.ReferencedSOPSequence = Sequence(sops)
        series.append(se)
    st.ReferencedSeriesSequence = Sequence(series)
    return Sequence([st])


def _evidence_refs(seq: Iterable[Dataset]) -> set[tuple[str, str, str, str]]:
    """``(study, series, sop class, sop instance)`` of a Hierarchical SOP Instance Reference."""
    out = set()
    for st in seq or []:
        for se in st.get("ReferencedSeriesSequence") or []:
            for s in se.get("ReferencedSOPSequence") or []:
                out.add((str(st.get("StudyInstanceUID", "")), str(se.get("SeriesInstanceUID",
                                                                          "")),
                         str(s.get("ReferencedSOPClassUID", "")),
                         str(s.get("ReferencedSOPInstanceUID", ""))))
    return out


def _root_concept(report: Mapping[str, Any]) -> tuple[str, str, str]:
    return CODE_ECG_REPORT if report.get("service") == "ecg" else CODE_IMAGING_REPORT


# ---------------------------------------------------------------------------
# DICOM: the Basic Text SR
# ---------------------------------------------------------------------------

def build_sr(signed: Mapping[str, Any], endorsement: Mapping[str, Any],
             study_ds_attrs: Mapping[str, Any]) -> Dataset:
    """The signed report as a Basic Text SR (PS3.3 A.35.1) in the case's study.

    SOP Instance UID = ``report_id``; a new SR series; VERIFIED by the reader
    (organisation = center); content: Finding, Impression, the critical flag
    and, for an amendment, its reason; Current Requested Procedure Evidence =
    every instance the report is signed over; an amendment lists the SR it
    supersedes in Predecessor Documents.  ``study_ds_attrs`` are the Patient and
    Study attributes read from one of the study's instances.
    """
    report = signed["report"]
    rid = str(report["report_id"])
    when = _dt_of(report)
    ds = Dataset()
    _sop_common(ds, BASIC_TEXT_SR, rid, when)
    _patient_study(ds, study_ds_attrs, report)
    # SR Document Series (PS3.3 C.17.1)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = derived_uid(rid, "sr-series")
    ds.SeriesNumber = 9900 + int(report["version"])
    ds.SeriesDescription = "fenji report" if report["version"] == 1 else \
        f"fenji report (amended, v{report['version']})"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    # General Equipment
    ds.Manufacturer = "fenji"
    ds.InstitutionName = _text(report.get("center"))
    ds.SoftwareVersions = __version__
    # SR Document General (PS3.3 C.17.2)
    ds.InstanceNumber = int(report["version"])
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S.%f")[:13]
    ds.PreliminaryFlag = "FINAL"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    obs = Dataset()
    obs.VerifyingObserverName = _pn(report.get("reader_display"))
    obs.VerifyingObserverIdentificationCodeSequence = Sequence()
    obs.VerifyingOrganization = _text(report.get("center"))
    obs.VerificationDateTime = when.strftime("%Y%m%d%H%M%S") + "+0000"
    ds.VerifyingObserverSequence = Sequence([obs])
    if report.get("supersedes"):
        prev = str(report["supersedes"])
        ds.PredecessorDocumentsSequence = _evidence(report["study_instance_uid"], [{
            "series_instance_uid": derived_uid(prev, "sr-series"),
            "sop_class_uid": BASIC_TEXT_SR, "sop_instance_uid": prev}])
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(report["study_instance_uid"],
                                                             report["instances"])
    ds.CodingSchemeIdentificationSequence = Sequence([_coding_scheme()])
    # SR Document Content (PS3.3 C.17.3): root CONTAINER
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(_root_concept(report))])
    ds.ContinuityOfContent = "SEPARATE"
    items = [
        _item("HAS OBS CONTEXT", "CODE", CODE_OBSERVER_TYPE,
              ConceptCodeSequence=Sequence([_code(CODE_PERSON)])),
        _item("HAS OBS CONTEXT", "PNAME", CODE_PERSON_NAME,
              PersonName=_pn(report.get("reader_display"))),
    ]
    # Empty text is left out: TextValue is type 1 in a TEXT item.
    if report.get("findings"):
        items.append(_item("CONTAINS", "TEXT", CODE_FINDING, TextValue=report["findings"]))
    if report.get("impression"):
        items.append(_item("CONTAINS", "TEXT", CODE_IMPRESSION,
                           TextValue=report["impression"]))
    items.append(_item("CONTAINS", "CODE", CODE_CRITICAL, ConceptCodeSequence=Sequence([
        _code(CODE_YES if report.get("critical") else CODE_NO)])))
    if report.get("amendment_reason"):
        items.append(_item("CONTAINS", "TEXT", CODE_AMENDMENT,
                           TextValue=f"{report['amendment_reason']} (supersedes report "
                                     f"{report.get('supersedes')})"))
    ds.ContentSequence = Sequence(items)
    _put_private(ds, signed, endorsement)
    return ds


def _coding_scheme() -> Dataset:
    d = Dataset()
    d.CodingSchemeDesignator = "99FENJI"
    d.CodingSchemeName = "fenji report concepts"
    d.CodingSchemeResponsibleOrganization = "fenji"
    return d


def _concept(item: Dataset) -> tuple[str, str, str]:
    seq = item.get("ConceptNameCodeSequence") or []
    if not seq:
        return ("", "", "")
    c = seq[0]
    return (str(c.get("CodeValue", "") or c.get("LongCodeValue", "")),
            str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeMeaning", "")))


def _sr_items(ds: Dataset) -> list[Dataset]:
    return list(ds.get("ContentSequence") or [])


def _sr_text_of(ds: Dataset, code: tuple[str, str, str]) -> list[str]:
    return [str(it.get("TextValue", "")) for it in _sr_items(ds)
            if it.get("ValueType") == "TEXT" and _concept(it)[:2] == code[:2]]


def _check_sr(ds: Dataset, report: Mapping[str, Any], problems: list[str]) -> None:
    """The SR's visible content equals the signed report."""
    rid = report.get("report_id")
    if ds.get("SOPInstanceUID") != rid:
        problems.append(f"SR SOPInstanceUID = {ds.get('SOPInstanceUID')} but the signed "
                        f"report_id = {rid}")
    for label, code, key in (("Finding", CODE_FINDING, "findings"),
                             ("Impression", CODE_IMPRESSION, "impression")):
        shown = _sr_text_of(ds, code)
        want = _text(report.get(key))
        got = "\n".join(shown)
        if len(shown) > 1 or got != want:
            problems.append(f"SR content {label} ({code[0]}, {code[1]}) text {got!r} differs "
                            f"from the signed {key} {want!r}")
    crit = [it for it in _sr_items(ds) if _concept(it)[:2] == CODE_CRITICAL[:2]]
    vals = [str((it.get("ConceptCodeSequence") or [Dataset()])[0].get("CodeValue", ""))
            for it in crit]
    want_crit = CODE_YES[0] if report.get("critical") else CODE_NO[0]
    if vals != [want_crit]:
        problems.append(f"SR content critical finding = {vals or 'absent'} but the signed "
                        f"critical = {bool(report.get('critical'))} (code {want_crit})")
    if report.get("amendment_reason"):
        texts = _sr_text_of(ds, CODE_AMENDMENT)
        if not texts or not texts[0].startswith(str(report["amendment_reason"])):
            problems.append(f"SR content amendment reason {texts[0] if texts else 'absent'!r}"
                            f" differs from the signed {report['amendment_reason']!r}")
        prev = {r[3] for r in _evidence_refs(ds.get("PredecessorDocumentsSequence") or [])}
        if prev != {report.get("supersedes")}:
            problems.append(f"SR PredecessorDocumentsSequence references {sorted(prev)} but "
                            f"the signed report supersedes {report.get('supersedes')}")
    if str(ds.get("VerificationFlag", "")) != "VERIFIED":
        problems.append(f"SR VerificationFlag = {ds.get('VerificationFlag')!r}, expected "
                        "'VERIFIED'")
    orgs = [str(o.get("VerifyingOrganization", "")) for o in
            ds.get("VerifyingObserverSequence") or []]
    if orgs != [_text(report.get("center"))]:
        problems.append(f"SR VerifyingOrganization = {orgs} but the signed center = "
                        f"{report.get('center')!r}")
    study = str(report.get("study_instance_uid"))
    signed_refs = {(study, r["series_instance_uid"], r["sop_class_uid"], r["sop_instance_uid"])
                   for r in report.get("instances") or []}
    got_refs = _evidence_refs(ds.get("CurrentRequestedProcedureEvidenceSequence") or [])
    for s in sorted(signed_refs - got_refs):
        problems.append(f"SR CurrentRequestedProcedureEvidenceSequence lacks signed instance "
                        f"{s[3]} (series {s[1]})")
    for s in sorted(got_refs - signed_refs):
        problems.append(f"SR CurrentRequestedProcedureEvidenceSequence references instance "
                        f"{s[3]} (study {s[0]}, series {s[1]}) that the report is not "
                        "signed over")


# ---------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------

# (path, index in a font collection), best first.  Noto CJK ships as a .ttc
# whose face 2 is Simplified Chinese; fpdf2 embeds its CFF outlines.
_CJK_FONTS = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2,
     "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc"),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0, None),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0, None),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0, None),
)
FONT_PACKAGE = "fonts-noto-cjk"


@functools.cache
def find_cjk_font() -> tuple[str, int, str | None]:
    """``(regular path, collection index, bold path or None)`` of a font with Chinese glyphs.

    Known Debian paths first, then fontconfig (``fc-list :lang=zh-cn``); raises
    :class:`FontMissing` naming the package to install.
    """
    for path, index, bold in _CJK_FONTS:
        if Path(path).is_file():
            return path, index, bold if bold and Path(bold).is_file() else None
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":lang=zh-cn", "file", "index"],
                                 capture_output=True, text=True, timeout=30,
                                 check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in sorted(out.splitlines()):
            path, _, rest = line.partition(":")
            idx = rest.strip().removeprefix("index=")
            if path.lower().endswith((".ttf", ".otf", ".ttc")) and Path(path).is_file():
                return path, int(idx) if idx.isdigit() else 0, None
    raise FontMissing(f"no font with Chinese glyphs for report PDFs: install {FONT_PACKAGE} "
                      "(apt-get install fonts-noto-cjk) or fonts-wqy-microhei")


def _pdf_labels(report: Mapping[str, Any]) -> tuple[str, str]:
    if report.get("service") == "ecg":
        return "ECG Report", "心电图报告"
    return "Report", "报告"


def render_pdf(signed: Mapping[str, Any], endorsement: Mapping[str, Any]) -> bytes:
    """A PDF of the signed report for people to read (Chinese included).

    Deterministic: the same signed report, endorsement, fpdf2 version and font
    give the same bytes (the creation date is ``signed_at``), which is what lets
    :func:`verify_dataset` check a PDF without a rendition signature by
    rendering it again.
    """
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    report = signed["report"]
    regular, index, bold = find_cjk_font()
    when = _dt_of(report)
    pdf = FPDF(format="A4")
    pdf.set_creation_date(when)
    pdf.set_title(f"{report.get('center')} report {report.get('report_id')}")
    pdf.set_author(_text(report.get("reader_display")))
    pdf.set_creator(f"fenji {__version__}")
    pdf.set_producer("fenji")
    pdf.add_font("cjk", "", regular, collection_font_number=index)
    pdf.add_font("cjk", "B", bold or regular, collection_font_number=index)
    pdf.set_auto_page_break(True, margin=18)
    pdf.add_page()
    pdf.set_margins(18, 16, 18)
    pdf.set_xy(18, 16)
    width = pdf.w - 36

    def line(text: str, size: float = 10, style: str = "", h: float = 5.5,
             fill: tuple[int, int, int] | None = None,
             color: tuple[int, int, int] = (0, 0, 0)) -> None:
        pdf.set_font("cjk", style, size)
        pdf.set_text_color(*color)
        if fill is not None:
            pdf.set_fill_color(*fill)
        pdf.multi_cell(width, h, text, fill=fill is not None, new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)

    en, zh = _pdf_labels(report)
    line(_text(report.get("center")), 16, "B", 8)
    line(f"{en} / {zh}", 13, "B", 7)
    pdf.ln(2)
    if report.get("critical"):
        line("  CRITICAL FINDING / 危急值 — notify the requesting physician now", 12, "B", 8,
             fill=(200, 0, 0), color=(255, 255, 255))
        pdf.ln(2)
    if report.get("supersedes"):
        line(f"AMENDED REPORT (version {report.get('version')}) / 修订报告\n"
             f"Reason / 修订原因: {report.get('amendment_reason')}\n"
             f"Supersedes report / 取代报告: {report.get('supersedes')}", 10, "B", 5.5,
             fill=(255, 235, 160))
        pdf.ln(2)
    pat = report.get("patient") or {}
    study = report.get("study") or {}
    sending = _text(study.get("sending_institution")) or _text(report.get("sending_node"))
    reading_at = _text(study.get("reading_institution")) or _text(report.get("center"))
    sdate = _text(study.get("date"))
    sdate = f"{sdate[:4]}-{sdate[4:6]}-{sdate[6:8]}" if len(sdate) == 8 else sdate or "-"
    rows = [
        ("Requesting hospital / 申请医院", f"{sending}    Reading center / 诊断中心: "
                                          f"{reading_at}"),
        # The name's groups for people: "Wang XiaoDong / 王 小东" (gateway/dicom/charset.py).
        ("Patient / 患者", f"{pn_display(_text(pat.get('name'))) or '-'}   "
                         f"ID {pat.get('id') or '-'}   sex {pat.get('sex') or '-'}   "
                         f"age {pat.get('age') or '-'}   born {pat.get('birth_date') or '-'}"),
        ("Examination / 检查", f"{_text(study.get('modality')) or '-'}  "
                              f"{_text(study.get('description')) or '-'}   date {sdate}   "
                              f"accession {_text(study.get('accession_number')) or '-'}   "
                              f"({report.get('priority') or '-'}, "
                              f"{len(report.get('instances') or [])} instances)"),
        ("Study UID", _text(report.get("study_instance_uid"))),
        ("Case / 病例", f"{report.get('case_id')}   from {report.get('sending_node') or '-'}"),
        ("Requesting physician / 申请医生", _text(report.get("requesting_physician")) or "-"),
        ("Clinical question / 临床问题", _text(report.get("clinical_question")) or "-"),
    ]
    for label, value in rows:
        line(label, 8.5, "B", 4.5, color=(90, 90, 90))
        line(value, 10, "", 5.5)
    for label, key in (("Findings / 检查所见", "findings"),
                       ("Impression / 诊断意见", "impression")):
        pdf.ln(3)
        line(label, 12, "B", 7)
        line(_text(report.get(key)) or "-", 11, "", 6.5)
    pdf.ln(6)
    sig = _text(signed.get("signature"))
    line(f"Signed by / 报告医生: {report.get('reader_display')} ({report.get('reader')}), "
         f"{report.get('center')}", 10, "B", 5.5)
    line(f"Signed at / 签名时间: {local_time(report)}   version {report.get('version')}"
         f"   report {report.get('report_id')}", 8.5, "", 4.5)
    line(f"Reader key / 签名密钥: {report.get('reader_key')}\n"
         f"Signature fingerprint / 签名指纹: {hashlib.sha256(sig.encode()).hexdigest()[:32]}"
         f"\nEndorsed by center key / 中心密钥: {endorsement.get('center_key') or '-'}\n"
         f"Manifest SHA-256: {report.get('manifest_sha256')}\n"
         f"Attestation SHA-256: {report.get('attestation_sha256') or '-'}", 7.5, "", 4,
         color=(70, 70, 70))
    # The signed report travels inside the PDF as an embedded file, so the PDF
    # alone can be verified (`fenji report verify FILE.pdf`, :func:`verify_pdf`).
    pdf.embed_file(bytes=canonical_json({"signed": dict(signed),
                                         "endorsement": dict(endorsement)}),
                   basename=PDF_EMBEDDED_NAME, modification_date=when,
                   mime_type="application/json")
    return bytes(pdf.output())


PDF_EMBEDDED_NAME = "fenji-signed-report.json"


def verify_pdf(data: bytes, trusted_centers: Mapping[str, Ed25519PublicKey] | None, *,
               manifest_sha256: str | None = None,
               attestation: Mapping[str, Any] | None = None) -> VerifyResult:
    """Check a report PDF fenji rendered: the signed report embedded in it verifies
    (:func:`verify_signed`) and the PDF is exactly what that report renders to, so
    nothing a person reads in it was changed."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        files = PdfReader(io.BytesIO(data)).attachments
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        return VerifyResult(False, [f"not a readable PDF: {exc}"], {}, kind="pdf")
    blobs = files.get(PDF_EMBEDDED_NAME) or []
    if not blobs:
        return VerifyResult(False, [f"the PDF carries no {PDF_EMBEDDED_NAME}: not a report PDF "
                                    "fenji rendered (a viewer's own PDF is verified inside "
                                    "its DICOM object)"], {}, kind="pdf")
    try:
        obj = json.loads(blobs[0])
        signed, endorsement = obj["signed"], obj.get("endorsement")
    except (ValueError, KeyError, TypeError) as exc:
        return VerifyResult(False, [f"{PDF_EMBEDDED_NAME} is not a signed report: {exc}"], {},
                            kind="pdf")
    res = verify_signed(signed, endorsement, trusted_centers, manifest_sha256=manifest_sha256,
                        attestation=attestation)
    res.kind = "pdf"
    if res.ok:
        try:
            same = render_pdf(signed, endorsement or {}) == data
        except (ReportError, KeyError, ValueError, TypeError) as exc:
            same, why = False, str(exc)
        else:
            why = "its pages differ from what the signed report renders to: edited"
        if not same:
            res.problems.append(f"the PDF is not the rendering of the report it carries: {why}")
            res.ok = False
    return res


def build_pdf_dicom(pdf_bytes: bytes, signed: Mapping[str, Any], endorsement: Mapping[str, Any],
                    study_ds_attrs: Mapping[str, Any], sr_series_uid: str | None = None, *,
                    rendition: Mapping[str, Any] | None = None) -> Dataset:
    """Encapsulated PDF Storage (PS3.3 A.45.1) of the report, in the case's study.

    The PDF lives in its own series (Modality DOC: a series has one modality)
    and names the SR it renders in Source Instance Sequence; ``sr_series_uid``
    is accepted for callers that have it and is not needed (the SR's UIDs
    follow from the report id).  ``rendition`` (:func:`sign_rendition`) is the
    reader's signature over these PDF bytes; without it the PDF verifies only if
    it re-renders byte for byte.
    """
    del sr_series_uid  # the SR is referenced by SOP Instance UID = report_id
    report = signed["report"]
    rid = str(report["report_id"])
    when = _dt_of(report)
    ds = Dataset()
    _sop_common(ds, ENCAPSULATED_PDF, derived_uid(rid, "pdf"), when)
    _patient_study(ds, study_ds_attrs, report)
    # Encapsulated Document Series (PS3.3 C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = derived_uid(rid, "pdf-series")
    ds.SeriesNumber = 9950 + int(report["version"])
    ds.SeriesDescription = "fenji report (PDF)"
    # General Equipment, SC Equipment (ConversionType WSD: made on a workstation)
    ds.Manufacturer = "fenji"
    ds.InstitutionName = _text(report.get("center"))
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"
    # Encapsulated Document (PS3.3 C.24.2)
    ds.InstanceNumber = int(report["version"])
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S") + "+0000"
    ds.BurnedInAnnotation = "YES"  # the PDF shows the patient's name
    en, _ = _pdf_labels(report)
    ds.DocumentTitle = f"{en} v{report['version']}" + (" (amended)" if report.get("supersedes")
                                                       else "")
    ds.ConceptNameCodeSequence = Sequence([_code(_root_concept(report))])
    src = Dataset()
    src.ReferencedSOPClassUID = BASIC_TEXT_SR
    src.ReferencedSOPInstanceUID = rid
    ds.SourceInstanceSequence = Sequence([src])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values have even length (PS3.5 7.1.1); the true length is recorded.
    ds.EncapsulatedDocument = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    _put_private(ds, signed, endorsement, rendition)
    return ds


def _pdf_of(ds: Dataset) -> bytes:
    doc = bytes(ds.get("EncapsulatedDocument") or b"")
    n = ds.get("EncapsulatedDocumentLength")
    if isinstance(n, int) and 0 <= n <= len(doc):
        return doc[:n]
    if doc.endswith(b"\x00"):  # the pad byte of an odd-length document
        return doc[:-1]
    return doc


def _check_pdf(ds: Dataset, signed: Mapping[str, Any], endorsement: Mapping[str, Any],
               rendition: Mapping[str, Any] | None, problems: list[str],
               notes: list[str]) -> None:
    report = signed["report"]
    rid = str(report.get("report_id"))
    if ds.get("SOPInstanceUID") != derived_uid(rid, "pdf"):
        problems.append(f"PDF SOPInstanceUID = {ds.get('SOPInstanceUID')} is not the one "
                        f"derived from the signed report_id {rid}")
    if str(ds.get("MIMETypeOfEncapsulatedDocument", "")) != "application/pdf":
        problems.append(f"MIMETypeOfEncapsulatedDocument = "
                        f"{ds.get('MIMETypeOfEncapsulatedDocument')!r}, expected "
                        "'application/pdf'")
    pdf = _pdf_of(ds)
    got = hashlib.sha256(pdf).hexdigest()
    if rendition is not None:
        rkey = report.get("reader_key")
        body = {k: v for k, v in rendition.items() if k != "signature"}
        if rendition.get("type") != RENDITION_TYPE or not _is_hex(rkey, 64) or not verify(
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(rkey))),
                canonical_json(body), str(rendition.get("signature", ""))):
            problems.append(f"PDF rendition signature does not verify with the report's "
                            f"reader_key {_short(rkey)}")
        if rendition.get("report_id") != rid or rendition.get("report_signature") != \
                signed.get("signature"):
            problems.append(f"PDF rendition is for report {rendition.get('report_id')} "
                            f"signature {_short(rendition.get('report_signature'))}, not "
                            f"report {rid} signature {_short(signed.get('signature'))}")
        if rendition.get("sha256") != got:
            problems.append(f"PDF document SHA-256 = {got} but the reader signed a PDF with "
                            f"SHA-256 {rendition.get('sha256')}: the PDF was changed")
        return
    try:
        again = render_pdf(signed, endorsement)
    except (FontMissing, ImportError) as exc:
        problems.append(f"PDF has no rendition signature and cannot be re-rendered here to "
                        f"compare ({exc})")
        return
    want = hashlib.sha256(again).hexdigest()
    if want != got:
        problems.append(f"PDF document SHA-256 = {got} but a fresh rendering of the signed "
                        f"report is {want}, and there is no rendition signature: the PDF is "
                        "not shown to be the signed report (changed, or rendered with "
                        "another fpdf2/font version)")
    else:
        notes.append("PDF equals a fresh rendering of the signed report byte for byte")


# ---------------------------------------------------------------------------
# Verifying a report object
# ---------------------------------------------------------------------------

def verify_dataset(ds: Dataset, *, trusted_centers: Mapping[str, Ed25519PublicKey] | None,
                   manifest_sha256: str | None = None,
                   attestation: Mapping[str, Any] | None = None) -> VerifyResult:
    """Verify a fenji report SR or PDF on its own (private block + visible content).

    Signatures and hashes as :func:`verify_signed`; then what a person sees
    must be what was signed:

    * **SR**: StudyInstanceUID; SOPInstanceUID = report_id; the Finding and
      Impression TEXT items, the critical-finding code, the amendment reason
      and predecessor; Current Requested Procedure Evidence references exactly
      the signed instances.
    * **PDF**: the PDF is rendered *after* the report is signed (it shows the
      signature), so it cannot be inside the signed JSON.  Two ways bind it:
      a *rendition signature* (:func:`sign_rendition`, private element
      0099,xx04): the reader's second signature over report_id, the report
      signature and the PDF's SHA-256 — checked against the encapsulated
      bytes (up to EncapsulatedDocumentLength).  This is the sound, portable
      way and the only way for a viewer-made PDF.  Without it, the PDF is
      rendered again from the signed report (:func:`render_pdf` is
      deterministic) and must be byte-identical; that cannot be forged either
      (the content is then exactly the signed one), but a node with another
      fpdf2 or font version reports a mismatch, so producers should sign
      renditions.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    kind = "sr" if sop_class.startswith(SR_CLASS_PREFIX) else \
        "pdf" if sop_class == ENCAPSULATED_PDF else "other"
    try:
        signed, endorsement, rendition = read_private_block(ds)
    except ReportError as exc:
        return VerifyResult(False, [str(exc)], {}, kind=kind)
    res = verify_signed(signed, endorsement, trusted_centers,
                        manifest_sha256=manifest_sha256, attestation=attestation)
    res.kind = kind
    report = signed["report"]
    if str(ds.get("StudyInstanceUID", "")) != report.get("study_instance_uid"):
        res.problems.append(f"StudyInstanceUID = {ds.get('StudyInstanceUID')} but the signed "
                            f"study_instance_uid = {report.get('study_instance_uid')}")
    pid = (report.get("patient") or {}).get("id")
    if pid and str(ds.get("PatientID", "")) != pid:
        res.problems.append(f"PatientID = {ds.get('PatientID')!r} but the signed patient id "
                            f"= {pid!r}")
    if kind == "sr":
        _check_sr(ds, report, res.problems)
    elif kind == "pdf":
        _check_pdf(ds, signed, endorsement, rendition, res.problems, res.notes)
    else:
        res.problems.append(f"SOPClassUID = {sop_class} is neither an SR nor an Encapsulated "
                            "PDF: nothing visible to compare")
    res.ok = not res.problems
    return res


# ---------------------------------------------------------------------------
# Reports from a reader's viewer
# ---------------------------------------------------------------------------

def _words(meaning: str) -> str:
    m = meaning.lower()
    if "impression" in m or "conclusion" in m or "诊断" in m or "印象" in m:
        return "impression"
    if "finding" in m or "所见" in m:
        return "findings"
    return ""


def _section(item: Dataset) -> str:
    value, _, meaning = _concept(item)
    if value in _IMPRESSION_CODES:
        return "impression"
    if value in _FINDING_CODES:
        return "findings"
    return _words(meaning)


def _walk(items: Iterable[Dataset], section: str, out: dict[str, list[str]],
          refs: set[str]) -> None:
    for it in items:
        rel = str(it.get("RelationshipType", ""))
        vt = str(it.get("ValueType", ""))
        concept = _concept(it)
        if concept[:2] == CODE_CRITICAL[:2]:
            code = (it.get("ConceptCodeSequence") or [Dataset()])[0].get("CodeValue")
            out["critical"].append(str(code))
            continue
        if concept[:2] == CODE_AMENDMENT[:2]:  # fenji's own, not report text
            continue
        here = _section(it) or section
        for r in it.get("ReferencedSOPSequence") or []:
            if r.get("ReferencedSOPInstanceUID"):
                refs.add(str(r.ReferencedSOPInstanceUID))
        # Observation context and concept modifiers describe, they do not report.
        if rel not in ("HAS OBS CONTEXT", "HAS CONCEPT MOD", "HAS ACQ CONTEXT"):
            if vt == "TEXT" and str(it.get("TextValue", "")).strip():
                out[here or "other"].append(str(it.TextValue).strip())
            elif vt == "CODE" and concept[0] in _FINDING_CODES | _IMPRESSION_CODES:
                for c in it.get("ConceptCodeSequence") or []:
                    if c.get("CodeMeaning"):
                        out[here].append(str(c.CodeMeaning))
        if "ContentSequence" in it:
            _walk(it.ContentSequence, here, out, refs)


def parse_viewer_report(ds: Dataset) -> dict[str, Any]:
    """Text or PDF of a report a reader's viewer sent: any SR class, or an Encapsulated PDF.

    SR: the content tree is walked; TEXT items under a Findings / Impression
    concept (by code or by CodeMeaning) go there, coded findings add their
    meaning; when nothing is labelled, all report text is the findings.
    Returns ``study_instance_uid``, ``findings``, ``impression``, ``pdf_bytes``
    (``None`` for an SR), ``critical`` (fenji's own critical-finding code, else
    ``None``), ``sop_instance_uid``, ``sop_class_uid`` and
    ``referenced_sop_instance_uids`` (sorted).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    mime = str(ds.get("MIMETypeOfEncapsulatedDocument", ""))
    is_sr = sop_class.startswith(SR_CLASS_PREFIX) or (
        "ContentSequence" in ds and str(ds.get("ValueType", "")) == "CONTAINER")
    is_pdf = sop_class == ENCAPSULATED_PDF or mime == "application/pdf"
    if not is_sr and not is_pdf:
        raise ReportError(f"SOPClassUID = {sop_class or 'absent'} (MIME {mime or 'none'}) is "
                          "neither an SR nor an Encapsulated PDF")
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if not study:
        raise ReportError(f"(0020,000D) StudyInstanceUID is absent in viewer report "
                          f"{ds.get('SOPInstanceUID', '?')}: it references no study")
    refs: set[str] = set()
    for kw in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        refs |= {r[3] for r in _evidence_refs(ds.get(kw) or [])}
    for kw in ("SourceInstanceSequence", "ReferencedInstanceSequence"):
        refs |= {str(r.ReferencedSOPInstanceUID) for r in ds.get(kw) or []
                 if r.get("ReferencedSOPInstanceUID")}
    findings = impression = ""
    pdf: bytes | None = None
    critical: bool | None = None
    if is_pdf and not is_sr:
        pdf = _pdf_of(ds)
        if not pdf.startswith(b"%PDF"):
            raise ReportError(f"(0042,0011) EncapsulatedDocument of "
                              f"{ds.get('SOPInstanceUID', '?')} does not start with %PDF")
    else:
        out: dict[str, list[str]] = {"findings": [], "impression": [], "other": [],
                                     "critical": []}
        _walk(ds.get("ContentSequence") or [], _section(ds), out, refs)
        findings = "\n".join(out["findings"])
        impression = "\n".join(out["impression"])
        if out["critical"]:
            critical = CODE_YES[0] in out["critical"]
        if out["other"]:
            if not findings and not impression:
                findings = "\n".join(out["other"])
            else:
                findings = "\n".join([findings, *out["other"]]).strip("\n")
    return {"study_instance_uid": study, "findings": findings, "impression": impression,
            "pdf_bytes": pdf, "critical": critical,
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "sop_class_uid": sop_class, "referenced_sop_instance_uids": sorted(refs)}
