"""Diagnostic reports: the signed document, its DICOM SR and PDF forms, verification.

* :mod:`.document`: the report as signed JSON, the reader's signature, the center's
  endorsement of the reader key, and verifying those (no DICOM);
* :mod:`.dataset`: DICOM building blocks and the private block that makes a report
  object self-verifying;
* :mod:`.sr`: the Basic Text SR form, and reports from a reader's own viewer;
* :mod:`.pdf`: the PDF form (CJK font, signed JSON embedded) and Encapsulated PDF;
* :mod:`.verify`: verifying an SR or PDF object as a whole.

The names callers use are here: ``from fenji.gateway import reports``.
"""

from fenji.gateway.reports.dataset import has_signed_block, read_private_block
from fenji.gateway.reports.document import (
    BASIC_TEXT_SR,
    CODE_AMENDMENT,
    CODE_NO,
    EL_SIGNATURE,
    ENCAPSULATED_PDF,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    FontMissing,
    ReportError,
    VerifyResult,
    attestation_sha256,
    build_report,
    endorse_reader,
    new_uid,
    sign_rendition,
    sign_report,
    verify_endorsement,
    verify_signed,
)
from fenji.gateway.reports.pdf import build_pdf_dicom, find_cjk_font, render_pdf, verify_pdf
from fenji.gateway.reports.sr import build_sr, parse_viewer_report
from fenji.gateway.reports.verify import verify_dataset

__all__ = [
    "BASIC_TEXT_SR", "CODE_AMENDMENT", "CODE_NO", "EL_SIGNATURE", "ENCAPSULATED_PDF",
    "FontMissing", "PRIVATE_CREATOR", "PRIVATE_GROUP", "ReportError", "VerifyResult",
    "attestation_sha256", "build_pdf_dicom", "build_report", "build_sr", "endorse_reader",
    "find_cjk_font", "has_signed_block", "new_uid", "parse_viewer_report",
    "read_private_block", "render_pdf", "sign_rendition", "sign_report", "verify_dataset",
    "verify_endorsement", "verify_pdf", "verify_signed",
]
