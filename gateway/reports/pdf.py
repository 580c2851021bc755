"""The PDF form of a signed report.

Rendered with an embedded CJK font, the signed JSON embedded in the PDF, wrapped as
Encapsulated PDF, and verified.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from fenji.gateway import __version__
from fenji.gateway.dicom.charset import pn_display
from fenji.gateway.keys import canonical_json, verify
from fenji.gateway.reports import dataset as part
from fenji.gateway.reports.dataset import text_of
from fenji.gateway.reports.document import (
    BASIC_TEXT_SR,
    ENCAPSULATED_PDF,
    RENDITION_TYPE,
    FontMissing,
    ReportError,
    VerifyResult,
    derived_uid,
    is_hex,
    local_time,
    short_hash,
    signed_time,
    verify_signed,
)

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
    when = signed_time(report)
    pdf = FPDF(format="A4")
    pdf.set_creation_date(when)
    pdf.set_title(f"{report.get('center')} report {report.get('report_id')}")
    pdf.set_author(text_of(report.get("reader_display")))
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
    line(text_of(report.get("center")), 16, "B", 8)
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
    sending = text_of(study.get("sending_institution")) or text_of(report.get("sending_node"))
    reading_at = text_of(study.get("reading_institution")) or text_of(report.get("center"))
    sdate = text_of(study.get("date"))
    sdate = f"{sdate[:4]}-{sdate[4:6]}-{sdate[6:8]}" if len(sdate) == 8 else sdate or "-"
    rows = [
        ("Requesting hospital / 申请医院", f"{sending}    Reading center / 诊断中心: "
                                          f"{reading_at}"),
        # The name's groups for people: "Wang XiaoDong / 王 小东" (gateway/dicom/charset.py).
        ("Patient / 患者", f"{pn_display(text_of(pat.get('name'))) or '-'}   "
                         f"ID {pat.get('id') or '-'}   sex {pat.get('sex') or '-'}   "
                         f"age {pat.get('age') or '-'}   born {pat.get('birth_date') or '-'}"),
        ("Examination / 检查", f"{text_of(study.get('modality')) or '-'}  "
                              f"{text_of(study.get('description')) or '-'}   date {sdate}   "
                              f"accession {text_of(study.get('accession_number')) or '-'}   "
                              f"({report.get('priority') or '-'}, "
                              f"{len(report.get('instances') or [])} instances)"),
        ("Study UID", text_of(report.get("study_instance_uid"))),
        ("Case / 病例", f"{report.get('case_id')}   from {report.get('sending_node') or '-'}"),
        ("Requesting physician / 申请医生", text_of(report.get("requesting_physician")) or "-"),
        ("Clinical question / 临床问题", text_of(report.get("clinical_question")) or "-"),
    ]
    for label, value in rows:
        line(label, 8.5, "B", 4.5, color=(90, 90, 90))
        line(value, 10, "", 5.5)
    for label, key in (("Findings / 检查所见", "findings"),
                       ("Impression / 诊断意见", "impression")):
        pdf.ln(3)
        line(label, 12, "B", 7)
        line(text_of(report.get(key)) or "-", 11, "", 6.5)
    pdf.ln(6)
    sig = text_of(signed.get("signature"))
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
    when = signed_time(report)
    ds = Dataset()
    part.put_sop_common(ds, ENCAPSULATED_PDF, derived_uid(rid, "pdf"), when)
    part.put_patient_study(ds, study_ds_attrs, report)
    # Encapsulated Document Series (PS3.3 C.24.1)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = derived_uid(rid, "pdf-series")
    ds.SeriesNumber = 9950 + int(report["version"])
    ds.SeriesDescription = "fenji report (PDF)"
    # General Equipment, SC Equipment (ConversionType WSD: made on a workstation)
    ds.Manufacturer = "fenji"
    ds.InstitutionName = text_of(report.get("center"))
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
    ds.ConceptNameCodeSequence = Sequence([part.code_item(part.root_concept(report))])
    src = Dataset()
    src.ReferencedSOPClassUID = BASIC_TEXT_SR
    src.ReferencedSOPInstanceUID = rid
    ds.SourceInstanceSequence = Sequence([src])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    # OB values have even length (PS3.5 7.1.1); the true length is recorded.
    ds.EncapsulatedDocument = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    part.put_private(ds, signed, endorsement, rendition)
    return ds


def pdf_of(ds: Dataset) -> bytes:
    doc = bytes(ds.get("EncapsulatedDocument") or b"")
    n = ds.get("EncapsulatedDocumentLength")
    if isinstance(n, int) and 0 <= n <= len(doc):
        return doc[:n]
    if doc.endswith(b"\x00"):  # the pad byte of an odd-length document
        return doc[:-1]
    return doc


def check_pdf(ds: Dataset, signed: Mapping[str, Any], endorsement: Mapping[str, Any],
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
    pdf = pdf_of(ds)
    got = hashlib.sha256(pdf).hexdigest()
    if rendition is not None:
        rkey = report.get("reader_key")
        body = {k: v for k, v in rendition.items() if k != "signature"}
        if rendition.get("type") != RENDITION_TYPE or not is_hex(rkey, 64) or not verify(
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(rkey))),
                canonical_json(body), str(rendition.get("signature", ""))):
            problems.append(f"PDF rendition signature does not verify with the report's "
                            f"reader_key {short_hash(rkey)}")
        if rendition.get("report_id") != rid or rendition.get("report_signature") != \
                signed.get("signature"):
            problems.append(f"PDF rendition is for report {rendition.get('report_id')} "
                            f"signature {short_hash(rendition.get('report_signature'))}, not "
                            f"report {rid} signature {short_hash(signed.get('signature'))}")
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
