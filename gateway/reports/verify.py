"""Verifying a report object (SR or encapsulated PDF).

Its signatures, and that what a person sees (the SR's content tree, the PDF) is what was signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from pydicom.dataset import Dataset

from fenji.gateway.reports.dataset import read_private_block
from fenji.gateway.reports.document import (
    ENCAPSULATED_PDF,
    SR_CLASS_PREFIX,
    ReportError,
    VerifyResult,
    verify_signed,
)
from fenji.gateway.reports.pdf import check_pdf
from fenji.gateway.reports.sr import check_sr

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
        check_sr(ds, report, res.problems)
    elif kind == "pdf":
        check_pdf(ds, signed, endorsement, rendition, res.problems, res.notes)
    else:
        res.problems.append(f"SOPClassUID = {sop_class} is neither an SR nor an Encapsulated "
                            "PDF: nothing visible to compare")
    res.ok = not res.problems
    return res
