"""DICOM building blocks of report objects.

Codes, content items, the patient/study modules, and the private block (group 0099, creator
FENJI REPORT 1) that makes an SR or PDF self-verifying.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from fenji.gateway.keys import canonical_json
from fenji.gateway.reports.document import (
    CODE_ECG_REPORT,
    CODE_IMAGING_REPORT,
    EL_ENDORSEMENT,
    EL_RENDITION,
    EL_REPORT,
    EL_SIGNATURE,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    ReportError,
)

# ---------------------------------------------------------------------------
# DICOM: helpers
# ---------------------------------------------------------------------------

def code_item(c: tuple[str, str, str]) -> Dataset:
    d = Dataset()
    d.CodeValue, d.CodingSchemeDesignator, d.CodeMeaning = c
    return d


def content_item(rel: str, vt: str, concept: tuple[str, str, str], **values: Any) -> Dataset:
    it = Dataset()
    it.RelationshipType = rel
    it.ValueType = vt
    it.ConceptNameCodeSequence = Sequence([code_item(concept)])
    for k, v in values.items():
        setattr(it, k, v)
    return it


def text_of(v: Any) -> str:
    return "" if v is None else str(v)


def person_name(display: Any) -> PersonName:
    """A reader's display name as PN: all of it the family-name component.

    The trailing ``^`` makes it the component form rather than the retired
    free form dciodvfy warns about (PS3.5 6.2.1.1); we do not split a display
    name such as "王医生 (Dr. Wang)" into family and given names by guessing.
    """
    s = text_of(display)
    return PersonName(s if not s or "^" in s else s + "^")


def put_patient_study(ds: Dataset, attrs: Mapping[str, Any], report: Mapping[str, Any]) -> None:
    """Patient and General Study modules from the study's own instance (type 2: may be empty)."""
    pat = report.get("patient") or {}
    # Re-made as plain str: a PersonName read from a GB18030 instance would
    # otherwise be written back with its original bytes under ISO_IR 192.
    ds.PatientName = PersonName(text_of(attrs.get("PatientName")) or text_of(pat.get("name")))
    ds.PatientID = text_of(attrs.get("PatientID")) or text_of(pat.get("id"))
    ds.PatientBirthDate = text_of(attrs.get("PatientBirthDate")) or text_of(pat.get("birth_date"))
    ds.PatientSex = text_of(attrs.get("PatientSex")) or text_of(pat.get("sex"))
    ds.StudyInstanceUID = report["study_instance_uid"]
    ds.StudyDate = text_of(attrs.get("StudyDate"))
    ds.StudyTime = text_of(attrs.get("StudyTime"))
    ds.AccessionNumber = text_of(attrs.get("AccessionNumber"))
    ds.ReferringPhysicianName = PersonName(text_of(attrs.get("ReferringPhysicianName")))
    ds.StudyID = text_of(attrs.get("StudyID"))
    if attrs.get("StudyDescription"):
        ds.StudyDescription = text_of(attrs.get("StudyDescription"))


def put_sop_common(ds: Dataset, sop_class: str, sop_uid: str, when: _dt.datetime) -> None:
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


def put_private(ds: Dataset, signed: Mapping[str, Any], endorsement: Mapping[str, Any],
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


def evidence_sequence(study: str, refs: Iterable[Mapping[str, str]]) -> Sequence:
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


def evidence_refs(seq: Iterable[Dataset]) -> set[tuple[str, str, str, str]]:
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


def root_concept(report: Mapping[str, Any]) -> tuple[str, str, str]:
    return CODE_ECG_REPORT if report.get("service") == "ecg" else CODE_IMAGING_REPORT
