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
import hashlib
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

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
FINDING_CODES = {"121070", "121071", "59776-5", "18782-3", "121065"}
IMPRESSION_CODES = {"121072", "121073", "121076", "121077", "19005-8", "55110-1"}

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


def is_hex(value: object, n: int) -> bool:
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
    if not is_hex(manifest_sha256, 64):
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


def signed_time(report: Mapping[str, Any]) -> _dt.datetime:
    try:
        d = _dt.datetime.fromisoformat(str(report.get("signed_at")))
    except ValueError as exc:
        raise ReportError(f"signed_at = {report.get('signed_at')!r} is not ISO 8601") from exc
    return (d if d.tzinfo else d.replace(tzinfo=_dt.UTC)).astimezone(_dt.UTC)


# The examination as the report names it (from the study's own header).
STUDY_FIELDS = ("date", "time", "modality", "description", "accession_number",
                "sending_institution", "reading_institution")


def local_time(report: Mapping[str, Any]) -> str:
    """``signed_at`` in the report's time zone, e.g. ``2026-12-03 23:16 (Asia/Shanghai)``."""
    when = signed_time(report)
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


def short_hash(h: object, n: int = 16) -> str:
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
    if not isinstance(sig, str) or not is_hex(sig, 128):
        problems.append(f"signature = {short_hash(sig, 24)!r} is not 128 hex digits (Ed25519)")
    if not is_hex(rkey_hex, 64):
        problems.append(f"reader_key = {rkey_hex!r} is not 64 hex digits (Ed25519)")
    elif isinstance(sig, str):
        rpub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(rkey_hex)))
        if not verify(rpub, canonical_json(report), sig):
            problems.append(f"reader signature {short_hash(sig)} does not verify over the report "
                            f"with reader_key {short_hash(rkey_hex)} (reader "
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
                        f"{short_hash(report.get('reader_key'))} to a center")
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
                        f"{name!r}'s key {short_hash(fingerprint(pub))} (endorsement claims key "
                        f"{short_hash(end.get('center_key'))})")
        return None
    return name


