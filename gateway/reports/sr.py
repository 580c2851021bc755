"""The Basic Text SR form of a signed report, and a report from a reader's own viewer (any SR)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fenji.gateway import __version__
from fenji.gateway.reports.dataset import (
    code_item,
    content_item,
    evidence_refs,
    evidence_sequence,
    person_name,
    put_patient_study,
    put_private,
    put_sop_common,
    root_concept,
    text_of,
)
from fenji.gateway.reports.document import (
    BASIC_TEXT_SR,
    CODE_AMENDMENT,
    CODE_CRITICAL,
    CODE_FINDING,
    CODE_IMPRESSION,
    CODE_NO,
    CODE_OBSERVER_TYPE,
    CODE_PERSON,
    CODE_PERSON_NAME,
    CODE_YES,
    ENCAPSULATED_PDF,
    FINDING_CODES,
    IMPRESSION_CODES,
    SR_CLASS_PREFIX,
    ReportError,
    derived_uid,
    signed_time,
)
from fenji.gateway.reports.pdf import pdf_of

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
    when = signed_time(report)
    ds = Dataset()
    put_sop_common(ds, BASIC_TEXT_SR, rid, when)
    put_patient_study(ds, study_ds_attrs, report)
    # SR Document Series (PS3.3 C.17.1)
    ds.Modality = "SR"
    ds.SeriesInstanceUID = derived_uid(rid, "sr-series")
    ds.SeriesNumber = 9900 + int(report["version"])
    ds.SeriesDescription = "fenji report" if report["version"] == 1 else \
        f"fenji report (amended, v{report['version']})"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    # General Equipment
    ds.Manufacturer = "fenji"
    ds.InstitutionName = text_of(report.get("center"))
    ds.SoftwareVersions = __version__
    # SR Document General (PS3.3 C.17.2)
    ds.InstanceNumber = int(report["version"])
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S.%f")[:13]
    ds.PreliminaryFlag = "FINAL"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    obs = Dataset()
    obs.VerifyingObserverName = person_name(report.get("reader_display"))
    obs.VerifyingObserverIdentificationCodeSequence = Sequence()
    obs.VerifyingOrganization = text_of(report.get("center"))
    obs.VerificationDateTime = when.strftime("%Y%m%d%H%M%S") + "+0000"
    ds.VerifyingObserverSequence = Sequence([obs])
    if report.get("supersedes"):
        prev = str(report["supersedes"])
        ds.PredecessorDocumentsSequence = evidence_sequence(report["study_instance_uid"], [{
            "series_instance_uid": derived_uid(prev, "sr-series"),
            "sop_class_uid": BASIC_TEXT_SR, "sop_instance_uid": prev}])
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(report["study_instance_uid"],
                                                             report["instances"])
    ds.CodingSchemeIdentificationSequence = Sequence([_coding_scheme()])
    # SR Document Content (PS3.3 C.17.3): root CONTAINER
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code_item(root_concept(report))])
    ds.ContinuityOfContent = "SEPARATE"
    items = [
        content_item("HAS OBS CONTEXT", "CODE", CODE_OBSERVER_TYPE,
              ConceptCodeSequence=Sequence([code_item(CODE_PERSON)])),
        content_item("HAS OBS CONTEXT", "PNAME", CODE_PERSON_NAME,
              PersonName=person_name(report.get("reader_display"))),
    ]
    # Empty text is left out: TextValue is type 1 in a TEXT item.
    if report.get("findings"):
        items.append(content_item("CONTAINS", "TEXT", CODE_FINDING, TextValue=report["findings"]))
    if report.get("impression"):
        items.append(content_item("CONTAINS", "TEXT", CODE_IMPRESSION,
                           TextValue=report["impression"]))
    items.append(content_item("CONTAINS", "CODE", CODE_CRITICAL, ConceptCodeSequence=Sequence([
        code_item(CODE_YES if report.get("critical") else CODE_NO)])))
    if report.get("amendment_reason"):
        items.append(content_item("CONTAINS", "TEXT", CODE_AMENDMENT,
                           TextValue=f"{report['amendment_reason']} (supersedes report "
                                     f"{report.get('supersedes')})"))
    ds.ContentSequence = Sequence(items)
    put_private(ds, signed, endorsement)
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


def check_sr(ds: Dataset, report: Mapping[str, Any], problems: list[str]) -> None:
    """The SR's visible content equals the signed report."""
    rid = report.get("report_id")
    if ds.get("SOPInstanceUID") != rid:
        problems.append(f"SR SOPInstanceUID = {ds.get('SOPInstanceUID')} but the signed "
                        f"report_id = {rid}")
    for label, code, key in (("Finding", CODE_FINDING, "findings"),
                             ("Impression", CODE_IMPRESSION, "impression")):
        shown = _sr_text_of(ds, code)
        want = text_of(report.get(key))
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
        prev = {r[3] for r in evidence_refs(ds.get("PredecessorDocumentsSequence") or [])}
        if prev != {report.get("supersedes")}:
            problems.append(f"SR PredecessorDocumentsSequence references {sorted(prev)} but "
                            f"the signed report supersedes {report.get('supersedes')}")
    if str(ds.get("VerificationFlag", "")) != "VERIFIED":
        problems.append(f"SR VerificationFlag = {ds.get('VerificationFlag')!r}, expected "
                        "'VERIFIED'")
    orgs = [str(o.get("VerifyingOrganization", "")) for o in
            ds.get("VerifyingObserverSequence") or []]
    if orgs != [text_of(report.get("center"))]:
        problems.append(f"SR VerifyingOrganization = {orgs} but the signed center = "
                        f"{report.get('center')!r}")
    study = str(report.get("study_instance_uid"))
    signed_refs = {(study, r["series_instance_uid"], r["sop_class_uid"], r["sop_instance_uid"])
                   for r in report.get("instances") or []}
    got_refs = evidence_refs(ds.get("CurrentRequestedProcedureEvidenceSequence") or [])
    for s in sorted(signed_refs - got_refs):
        problems.append(f"SR CurrentRequestedProcedureEvidenceSequence lacks signed instance "
                        f"{s[3]} (series {s[1]})")
    for s in sorted(got_refs - signed_refs):
        problems.append(f"SR CurrentRequestedProcedureEvidenceSequence references instance "
                        f"{s[3]} (study {s[0]}, series {s[1]}) that the report is not "
                        "signed over")


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
    if value in IMPRESSION_CODES:
        return "impression"
    if value in FINDING_CODES:
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
            elif vt == "CODE" and concept[0] in FINDING_CODES | IMPRESSION_CODES:
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
        refs |= {r[3] for r in evidence_refs(ds.get(kw) or [])}
    for kw in ("SourceInstanceSequence", "ReferencedInstanceSequence"):
        refs |= {str(r.ReferencedSOPInstanceUID) for r in ds.get(kw) or []
                 if r.get("ReferencedSOPInstanceUID")}
    findings = impression = ""
    pdf: bytes | None = None
    critical: bool | None = None
    if is_pdf and not is_sr:
        pdf = pdf_of(ds)
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
