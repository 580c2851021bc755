"""Signed reports: SR and PDF pass dciodvfy, verify, and fail naming the problem when changed.

Real instances (the shared CT series), real dciodvfy and pdftotext, the real
CLI in a subprocess; tampering is done to the written files.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _data import DICOM_DIR
from _tools import pdftotext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from fenji.gateway import reports as R
from fenji.gateway.keys import fingerprint

DCIODVFY = "/usr/bin/dciodvfy"
FINDINGS = "右肺下叶结节，约 8 mm，边界清楚。\nNodule in the right lower lobe, 8 mm."
IMPRESSION = "考虑良性结节，建议 12 个月复查。"
_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID",
                   "StudyDescription", "SpecificCharacterSet")


# ---------------------------------------------------------------------------
# Fixtures: a real study, keys, a signed report and its SR/PDF on disk
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study() -> dict[str, Any]:
    files = sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[:5]
    if not files:
        pytest.fail(f"no CT series under {DICOM_DIR}")
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    attrs = {k: dss[0].get(k) for k in _STUDY_KEYWORDS if k in dss[0]}
    insts = [{"sop_class_uid": str(d.SOPClassUID), "sop_instance_uid": str(d.SOPInstanceUID),
              "series_instance_uid": str(d.SeriesInstanceUID)} for d in dss]
    return {"attrs": attrs, "instances": insts, "study": str(dss[0].StudyInstanceUID),
            "patient": {"id": str(dss[0].PatientID), "name": str(dss[0].PatientName),
                        "birth_date": str(dss[0].get("PatientBirthDate", "")),
                        "sex": str(dss[0].get("PatientSex", ""))}}


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {"reader": Ed25519PrivateKey.generate(), "center": Ed25519PrivateKey.generate(),
            "mallory": Ed25519PrivateKey.generate()}


ATTESTATION = {"type": "fenji-quality-attestation", "version": 1, "case_id": "case-1",
               "node": "edge", "operator": "tech", "at": 1700000000.0, "verdict": "acceptable",
               "reasons": [], "report_sha256": "b" * 64, "override": None,
               "signature": "c" * 128}
MANIFEST = "a" * 64


def _doc(study: dict[str, Any], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        case={"case_id": "case-1", "study_instance_uid": study["study"], "service": "imaging",
              "priority": "stat", "requesting_physician": "马医生 (Dr. Ma)",
              "clinical_question": "咳嗽两周，肺结节？", "sender": "edge"},
        manifest_sha256=MANIFEST, attestation=ATTESTATION, instances=study["instances"],
        reader="dr.wang", reader_display="王医生 (Dr. Wang)", center="center",
        findings=FINDINGS, impression=IMPRESSION, critical=True, signed_at=1700000000.5,
        patient=study["patient"])
    args.update(kw)
    return R.build_report(**args)


@pytest.fixture(scope="module")
def made(study: dict[str, Any], keys: dict[str, Any], tmp_path_factory: Any) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("reports")
    signed = R.sign_report(_doc(study), keys["reader"])
    end = R.endorse_reader(keys["center"], "center", "dr.wang", "王医生 (Dr. Wang)",
                           keys["reader"].public_key())
    sr = R.build_sr(signed, end, study["attrs"])
    sr.save_as(d / "sr.dcm", enforce_file_format=True)
    pdf = R.render_pdf(signed, end)
    (d / "report.pdf").write_bytes(pdf)
    pds = R.build_pdf_dicom(pdf, signed, end, study["attrs"], sr_series_uid=sr.SeriesInstanceUID)
    pds.save_as(d / "pdf.dcm", enforce_file_format=True)
    # The same PDF with the reader's rendition signature.
    rend = R.sign_rendition(signed, pdf, keys["reader"])
    R.build_pdf_dicom(pdf, signed, end, study["attrs"], rendition=rend).save_as(
        d / "pdf-signed.dcm", enforce_file_format=True)
    # An amendment, version 2.
    doc2 = _doc(study, findings="右肺下叶结节，复测约 9 mm。", critical=False, version=2,
                supersedes=signed["report"]["report_id"],
                amendment_reason="结节大小重新测量 (size re-measured)")
    signed2 = R.sign_report(doc2, keys["reader"])
    sr2 = R.build_sr(signed2, end, study["attrs"])
    sr2.save_as(d / "sr-v2.dcm", enforce_file_format=True)
    pdf2 = R.render_pdf(signed2, end)
    (d / "report-v2.pdf").write_bytes(pdf2)
    R.build_pdf_dicom(pdf2, signed2, end, study["attrs"]).save_as(d / "pdf-v2.dcm",
                                                                  enforce_file_format=True)
    return {"dir": d, "signed": signed, "signed2": signed2, "end": end, "sr": sr,
            "trusted": {"center": keys["center"].public_key()}}


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    if not Path(DCIODVFY).exists():
        pytest.fail("dciodvfy (dicom3tools) not installed: apt-get install dicom3tools")
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], \
        [ln for ln in lines if ln.startswith("Warning")]


def _read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def _verify(ds: Dataset, made: dict[str, Any], **kw: Any) -> R.VerifyResult:
    kw.setdefault("trusted_centers", made["trusted"])
    kw.setdefault("manifest_sha256", MANIFEST)
    kw.setdefault("attestation", ATTESTATION)
    return R.verify_dataset(ds, **kw)


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


# ---------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------

def test_report_document_binds_case_manifest_attestation(study: dict[str, Any],
                                                         made: dict[str, Any]) -> None:
    rep = made["signed"]["report"]
    assert rep["report_id"].startswith("2.25.") and len(rep["report_id"]) <= 64
    assert rep["manifest_sha256"] == MANIFEST
    assert rep["attestation_sha256"] == R.attestation_sha256(ATTESTATION)
    assert rep["sending_node"] == "edge" and rep["study_instance_uid"] == study["study"]
    assert rep["signed_at"].startswith("2023-11-14T22:13:20.500")
    assert [i["sop_instance_uid"] for i in rep["instances"]] == sorted(
        i["sop_instance_uid"] for i in study["instances"])
    assert rep["reader_key"] and len(made["signed"]["signature"]) == 128
    assert R.attestation_sha256(None) is None
    # Each build is a new report.
    assert _doc(study)["report_id"] != _doc(study)["report_id"]


@pytest.mark.parametrize("kw,word", [
    ({"version": 2, "amendment_reason": "x"}, "supersedes"),
    ({"version": 2, "supersedes": "2.25.1", "amendment_reason": "  "}, "amendment_reason"),
    ({"supersedes": "2.25.1"}, "supersedes"),
    ({"version": 0}, "version"),
    ({"manifest_sha256": "xyz"}, "manifest_sha256"),
    ({"instances": []}, "instances"),
    ({"instances": [{"sop_instance_uid": "1.2"}]}, "sop_class_uid"),
])
def test_build_report_rejects_bad_input_naming_the_field(study: dict[str, Any],
                                                         kw: dict[str, Any], word: str) -> None:
    with pytest.raises(R.ReportError) as exc:
        _doc(study, **kw)
    assert word in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_endorsement_verifies_only_with_the_center_key(keys: dict[str, Any],
                                                       made: dict[str, Any]) -> None:
    end = made["end"]
    assert end["reader_key"] == fingerprint(keys["reader"].public_key())
    assert R.verify_endorsement(end, keys["center"].public_key())
    assert not R.verify_endorsement(end, keys["mallory"].public_key())
    assert not R.verify_endorsement({**end, "reader": "dr.evil"}, keys["center"].public_key())


def test_verify_signed_json_form(keys: dict[str, Any], made: dict[str, Any]) -> None:
    ok = R.verify_signed(made["signed"], made["end"], made["trusted"],
                         manifest_sha256=MANIFEST, attestation=ATTESTATION)
    assert ok.ok, ok.problems
    assert (ok.reader, ok.center, ok.version, ok.endorsed_by) == ("dr.wang", "center", 1,
                                                                  "center")
    none = R.verify_signed(made["signed"], made["end"], None)
    assert not none.ok
    assert none.problems == ["endorsement not checked: no trusted center key (give "
                             "--trust-center NAME=KEY or --config)"]
    bad = copy.deepcopy(made["signed"])
    bad["report"]["critical"] = False
    res = R.verify_signed(bad, made["end"], made["trusted"])
    assert not res.ok and "reader signature" in res.problems[0]


# ---------------------------------------------------------------------------
# dciodvfy and the PDF text
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sr.dcm", "sr-v2.dcm", "pdf.dcm", "pdf-signed.dcm",
                                  "pdf-v2.dcm"])
def test_dciodvfy_zero_errors(made: dict[str, Any], name: str, capsys: Any) -> None:
    errors, warnings = _dciodvfy(made["dir"] / name)
    assert errors == [], errors
    with capsys.disabled():
        print(f"\n{name}: dciodvfy 0 errors, {len(warnings)} warnings")
    ds = _read(made["dir"] / name)
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_sr_content_and_structure(study: dict[str, Any], made: dict[str, Any]) -> None:
    ds = _read(made["dir"] / "sr.dcm")
    rep = made["signed"]["report"]
    assert ds.SOPClassUID == R.BASIC_TEXT_SR and ds.SOPInstanceUID == rep["report_id"]
    assert ds.StudyInstanceUID == study["study"] and ds.Modality == "SR"
    assert ds.SeriesInstanceUID not in {i["series_instance_uid"] for i in study["instances"]}
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "VERIFIED")
    obs = ds.VerifyingObserverSequence[0]
    assert obs.VerifyingObserverName.family_name == "王医生 (Dr. Wang)"
    assert obs.VerifyingOrganization == "center"
    texts = {it.ConceptNameCodeSequence[0].CodeValue: it.get("TextValue")
             for it in ds.ContentSequence}
    assert texts["121071"] == FINDINGS and texts["121073"] == IMPRESSION
    refs = {s.ReferencedSOPInstanceUID
            for se in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for s in se.ReferencedSOPSequence}
    assert refs == {i["sop_instance_uid"] for i in study["instances"]}
    assert str(ds.PatientName) == study["patient"]["name"]


def test_pdf_text_extracts_with_chinese(made: dict[str, Any]) -> None:
    text = pdftotext(made["dir"] / "report.pdf")
    for s in ("报告", "右肺下叶结节", "考虑良性结节", "王医生 (Dr. Wang)", "CRITICAL", "危急值",
              "咳嗽两周", "马医生", made["signed"]["report"]["report_id"]):
        assert s in text, (s, text)
    v2 = pdftotext(made["dir"] / "report-v2.pdf")
    assert "修订报告" in v2 and "结节大小重新测量" in v2
    assert made["signed"]["report"]["report_id"] in v2  # the superseded report
    assert "CRITICAL" not in v2
    # The encapsulated document is the same PDF.
    ds = _read(made["dir"] / "pdf.dcm")
    assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength] == \
        (made["dir"] / "report.pdf").read_bytes()


# ---------------------------------------------------------------------------
# Verification: OK untouched, FAILED naming the problem when changed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sr.dcm", "pdf.dcm", "pdf-signed.dcm", "sr-v2.dcm",
                                  "pdf-v2.dcm"])
def test_untouched_objects_verify(made: dict[str, Any], name: str) -> None:
    res = _verify(_read(made["dir"] / name), made)
    assert res.ok, res.problems
    assert res.kind == ("sr" if name.startswith("sr") else "pdf")
    if name == "pdf.dcm":
        assert "fresh rendering" in res.notes[0]


def test_implicit_vr_copy_still_verifies(made: dict[str, Any], tmp_path: Path) -> None:
    """A PACS may keep the SR in implicit VR: the private block must survive as UN/UT."""
    exe = shutil.which("dcmconv")
    if exe is None:
        pytest.fail("dcmconv (dcmtk) not installed")
    out = tmp_path / "implicit.dcm"
    subprocess.run([exe, "+ti", str(made["dir"] / "sr.dcm"), str(out)], check=True,
                   capture_output=True, timeout=60)
    ds = _read(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    res = _verify(ds, made)
    assert res.ok, res.problems


def _set_text(ds: Dataset, code: str, text: str) -> None:
    for it in ds.ContentSequence:
        if it.ConceptNameCodeSequence[0].CodeValue == code:
            it.TextValue = text


def _drop_evidence(ds: Dataset) -> None:
    se = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    del se.ReferencedSOPSequence[0]


def _flip_json_byte(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    # The signed JSON in fenji's private block (the last copy: a report PDF also
    # carries it, embedded, inside Encapsulated Document, which comes first).
    at = data.rindex(b'"findings":"') + len(b'"findings":"') + 3 * 3  # 4th character
    data[at] ^= 0x01  # still UTF-8 lead byte of a CJK character: a different character
    return bytes(data)


def _flip_signature(ds: Dataset) -> None:
    block = ds.private_block(R.PRIVATE_GROUP, R.PRIVATE_CREATOR)
    sig = block[R.EL_SIGNATURE].value
    block[R.EL_SIGNATURE].value = ("0" if sig[0] != "0" else "1") + sig[1:]


@pytest.mark.parametrize("name,change,expect", [
    ("sr.dcm", lambda ds: _set_text(ds, "121071", "右肺未见异常。"),
     "SR content Finding (121071, DCM) text '右肺未见异常。' differs from the signed findings"),
    ("sr.dcm", lambda ds: _set_text(ds, "121073", "正常"), "Impression"),
    ("sr.dcm", _drop_evidence, "CurrentRequestedProcedureEvidenceSequence lacks signed "
                               "instance"),
    ("sr.dcm", _flip_signature, "reader signature"),
    ("pdf.dcm", _flip_signature, "reader signature"),
    ("sr.dcm", lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.4"), "StudyInstanceUID"),
    ("sr.dcm", lambda ds: setattr(ds.ContentSequence[-1].ConceptCodeSequence[0], "CodeValue",
                                  R.CODE_NO[0]), "critical"),
])
def test_changed_object_fails_naming_the_problem(made: dict[str, Any], name: str,
                                                 change: Any, expect: str) -> None:
    ds = _read(made["dir"] / name)
    change(ds)
    res = _verify(_roundtrip(ds), made)
    assert not res.ok
    assert any(expect in p for p in res.problems), res.problems


def test_changed_byte_of_signed_json_fails(made: dict[str, Any]) -> None:
    for name in ("sr.dcm", "pdf-signed.dcm"):
        data = _flip_json_byte(made["dir"] / name)
        res = _verify(pydicom.dcmread(io.BytesIO(data)), made)
        assert not res.ok
        assert any(p.startswith("reader signature") and "does not verify" in p
                   for p in res.problems), res.problems


def test_changed_pdf_bytes_fail(made: dict[str, Any]) -> None:
    for name, expect in (("pdf-signed.dcm", "the reader signed a PDF with SHA-256"),
                         ("pdf.dcm", "fresh rendering")):
        ds = _read(made["dir"] / name)
        doc = bytearray(ds.EncapsulatedDocument)
        at = bytes(doc).index(b"/Title")
        doc[at + 8] ^= 0x20
        ds.EncapsulatedDocument = bytes(doc)
        res = _verify(_roundtrip(ds), made)
        assert not res.ok and any(expect in p for p in res.problems), res.problems


def test_other_manifest_or_attestation_fails_naming_which(made: dict[str, Any]) -> None:
    ds = _read(made["dir"] / "sr.dcm")
    res = _verify(ds, made, manifest_sha256="f" * 64)
    assert not res.ok
    (p,) = res.problems
    assert p.startswith("manifest_sha256") and MANIFEST in p and "f" * 64 in p
    att = {**ATTESTATION, "verdict": "unacceptable"}
    res = _verify(ds, made, attestation=att)
    (p,) = res.problems
    assert p.startswith("attestation_sha256") and "unacceptable" in p
    assert R.attestation_sha256(ATTESTATION) in p and R.attestation_sha256(att) in p


def test_endorsement_by_untrusted_key_fails(study: dict[str, Any], keys: dict[str, Any],
                                            made: dict[str, Any]) -> None:
    # Mallory endorses her own reader key in the center's name.
    forged = R.endorse_reader(keys["mallory"], "center", "dr.wang", "王医生 (Dr. Wang)",
                              keys["reader"].public_key())
    sr = _roundtrip(R.build_sr(made["signed"], forged, study["attrs"]))
    res = _verify(sr, made)
    assert not res.ok
    (p,) = res.problems
    assert p.startswith("endorsement signature does not verify with trusted center 'center'")
    # ... or in a center of her own, which nobody trusts.
    own = R.endorse_reader(keys["mallory"], "mallory-center", "dr.wang", "x",
                           keys["reader"].public_key())
    res = R.verify_signed(made["signed"], own, made["trusted"])
    assert any("'mallory-center', which is not a trusted center (trusted: center)" in p
               for p in res.problems), res.problems
    # An endorsement of another reader's key does not cover this report.
    other = R.endorse_reader(keys["center"], "center", "dr.wang", "x",
                             keys["mallory"].public_key())
    res = R.verify_signed(made["signed"], other, made["trusted"])
    assert any(p.startswith("endorsement reader_key") for p in res.problems), res.problems


def test_amendment_references_predecessor_with_reason(made: dict[str, Any]) -> None:
    v1, v2 = _read(made["dir"] / "sr.dcm"), _read(made["dir"] / "sr-v2.dcm")
    rep2 = made["signed2"]["report"]
    assert rep2["version"] == 2 and rep2["supersedes"] == v1.SOPInstanceUID
    assert v2.SOPInstanceUID != v1.SOPInstanceUID and v2.StudyInstanceUID == v1.StudyInstanceUID
    pred = v2.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == v1.StudyInstanceUID
    se = pred.ReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == v1.SeriesInstanceUID
    assert se.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == v1.SOPInstanceUID
    assert se.ReferencedSOPSequence[0].ReferencedSOPClassUID == R.BASIC_TEXT_SR
    reason = [it.TextValue for it in v2.ContentSequence
              if it.ConceptNameCodeSequence[0].CodeValue == R.CODE_AMENDMENT[0]]
    assert reason and reason[0].startswith("结节大小重新测量 (size re-measured)")
    # Dropping the reason from the content is caught.
    v2.ContentSequence = Sequence([it for it in v2.ContentSequence
                                   if it.ConceptNameCodeSequence[0].CodeValue
                                   != R.CODE_AMENDMENT[0]])
    res = _verify(_roundtrip(v2), made)
    assert any("amendment reason" in p for p in res.problems), res.problems


def test_object_without_report_block_fails(made: dict[str, Any]) -> None:
    ct = pydicom.dcmread(sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[0], stop_before_pixels=True)
    res = _verify(ct, made)
    assert not res.ok and "no fenji report block" in res.problems[0]


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "report", "verify",
                           *args], capture_output=True, text=True, timeout=120)


def test_cli_verify_exit_codes(made: dict[str, Any], keys: dict[str, Any],
                               tmp_path: Path) -> None:
    trust = f"center={fingerprint(keys['center'].public_key())}"
    ok = _cli(str(made["dir"] / "sr.dcm"), "--trust-center", trust,
              "--manifest-sha256", MANIFEST)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "王医生 (Dr. Wang) (dr.wang)" in ok.stdout and ok.stdout.rstrip().endswith("OK")
    assert "5 instances" in ok.stdout and "critical    YES" in ok.stdout
    js = _cli(str(made["dir"] / "pdf.dcm"), "--trust-center", trust, "--json")
    assert js.returncode == 0, js.stdout + js.stderr
    out = json.loads(js.stdout)
    assert out["ok"] and out["kind"] == "pdf" and out["reader"] == "dr.wang"
    assert out["endorsed_by"] == "center" and out["n_instances"] == 5

    # The JSON form, and a PEM path as the trusted key.
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "center.pub"
    pem.write_bytes(keys["center"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jf = tmp_path / "report.json"
    jf.write_text(json.dumps({**made["signed"], "endorsement": made["end"]},
                             ensure_ascii=False))
    assert _cli(str(jf), "--trust-center", f"center={pem}").returncode == 0

    # Verification failures: 1, each problem printed.
    no_trust = _cli(str(made["dir"] / "sr.dcm"))
    assert no_trust.returncode == 1 and "endorsement not checked" in no_trust.stdout
    att = tmp_path / "att.json"
    att.write_text(json.dumps({**ATTESTATION, "verdict": "unacceptable"}))
    bad = _cli(str(made["dir"] / "sr.dcm"), "--trust-center", trust, "--attestation", str(att))
    assert bad.returncode == 1 and "FAILED (1 problem)" in bad.stdout
    assert "attestation_sha256" in bad.stdout
    tampered = tmp_path / "tampered.dcm"
    tampered.write_bytes(_flip_json_byte(made["dir"] / "sr.dcm"))
    t = _cli(str(tampered), "--trust-center", trust, "--json")
    assert t.returncode == 1 and not json.loads(t.stdout)["ok"]

    # Unreadable input: 2.
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all" * 20)
    for args in ([str(garbage)], [str(tmp_path / "missing.dcm")],
                 [str(made["dir"] / "sr.dcm"), "--trust-center", "center=nothex"]):
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "fenji report verify:" in r.stderr


def test_cli_trusts_the_center_from_its_config(study: dict[str, Any], keys: dict[str, Any],
                                               tmp_path: Path) -> None:
    from fenji.gateway.cli.init import init_node
    from fenji.gateway.keys import load_private

    cfg = init_node(tmp_path / "center", role="center", name="center", allow_ae=["VIEWER1"])
    node_key = load_private(tmp_path / "center" / "keys" / "node.key")
    signed = R.sign_report(_doc(study), keys["reader"])
    end = R.endorse_reader(node_key, "center", "dr.wang", "王医生", keys["reader"].public_key())
    path = tmp_path / "sr.dcm"
    R.build_sr(signed, end, study["attrs"]).save_as(path, enforce_file_format=True)
    r = _cli(str(path), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["endorsed_by"] == "center"


# ---------------------------------------------------------------------------
# Reports a reader's viewer sends
# ---------------------------------------------------------------------------

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text_item(code: Dataset, text: str, rel: str = "CONTAINS") -> Dataset:
    it = Dataset()
    it.RelationshipType, it.ValueType = rel, "TEXT"
    it.ConceptNameCodeSequence = Sequence([code])
    it.TextValue = text
    return it


def _minimal_sr(study_uid: str | None, ref_uid: str) -> Dataset:
    """A hand-built Comprehensive SR like a viewer's: Findings container, Conclusion text."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.SOPInstanceUID = R.new_uid()
    if study_uid:
        ds.StudyInstanceUID = study_uid
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    findings = Dataset()
    findings.RelationshipType, findings.ValueType = "CONTAINS", "CONTAINER"
    findings.ConceptNameCodeSequence = Sequence([_code("121070", "DCM", "Findings")])
    findings.ContinuityOfContent = "SEPARATE"
    findings.ContentSequence = Sequence([
        _text_item(_code("121071", "DCM", "Finding"), "左肾囊肿 2 cm。"),
        _text_item(_code("112039", "DCM", "Tracking Identifier"), "ROI 1", "HAS OBS CONTEXT"),
    ])
    img = Dataset()
    img.RelationshipType, img.ValueType = "CONTAINS", "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", \
        ref_uid
    img.ReferencedSOPSequence = Sequence([ref])
    ds.ContentSequence = Sequence([
        findings, _text_item(_code("121077", "DCM", "Conclusion"), "单纯囊肿 (Bosniak I)。"),
        img])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_parse_viewer_report_own_sr(made: dict[str, Any], study: dict[str, Any]) -> None:
    out = R.parse_viewer_report(_read(made["dir"] / "sr.dcm"))
    assert out["study_instance_uid"] == study["study"]
    assert out["findings"] == FINDINGS and out["impression"] == IMPRESSION
    assert out["pdf_bytes"] is None
    assert set(out["referenced_sop_instance_uids"]) == {i["sop_instance_uid"]
                                                       for i in study["instances"]}


def test_parse_viewer_report_hand_built_sr(study: dict[str, Any]) -> None:
    uid = study["instances"][0]["sop_instance_uid"]
    out = R.parse_viewer_report(_roundtrip(_minimal_sr(study["study"], uid)))
    assert out["findings"] == "左肾囊肿 2 cm。"  # the tracking identifier is context, left out
    assert out["impression"] == "单纯囊肿 (Bosniak I)。"
    assert out["referenced_sop_instance_uids"] == [uid]
    # Unlabelled text is taken as the findings.
    ds = _minimal_sr(study["study"], uid)
    ds.ContentSequence = Sequence([_text_item(_code("1234", "99X", "Note"), "见附图。")])
    assert R.parse_viewer_report(ds)["findings"] == "见附图。"
    with pytest.raises(R.ReportError, match="StudyInstanceUID"):
        R.parse_viewer_report(_minimal_sr(None, uid))


def test_parse_viewer_report_third_party_sr_and_pdf() -> None:
    tid1500 = pydicom.dcmread(DICOM_DIR / "other" / "sr_tid1500_measurements.dcm")
    out = R.parse_viewer_report(tid1500)
    assert out["study_instance_uid"] == tid1500.StudyInstanceUID and out["pdf_bytes"] is None
    assert "Foo" not in out["findings"]  # the observer's name is context, not a finding
    assert out["referenced_sop_instance_uids"]
    pdf_ds = pydicom.dcmread(DICOM_DIR / "other" / "encapsulated_pdf_ecg_report.dcm")
    out = R.parse_viewer_report(pdf_ds)
    assert out["study_instance_uid"] == pdf_ds.StudyInstanceUID
    assert out["pdf_bytes"] is not None and out["pdf_bytes"].startswith(b"%PDF")
    assert len(out["pdf_bytes"]) == pdf_ds.EncapsulatedDocumentLength
    assert out["pdf_bytes"].rstrip().endswith(b"%%EOF")
    ct = pydicom.dcmread(sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[0], stop_before_pixels=True)
    with pytest.raises(R.ReportError, match="neither an SR nor an Encapsulated PDF"):
        R.parse_viewer_report(ct)


def test_cli_verify_case_from_the_store(study: dict[str, Any], keys: dict[str, Any],
                                        tmp_path: Path) -> None:
    """`--case` checks every stored version against the manifest and attestation held here."""
    from fenji.gateway import config as config_mod
    from fenji.gateway.cli.init import init_node
    from fenji.gateway.dicom.validate import check_part10
    from fenji.gateway.keys import load_private
    from fenji.gateway.node import open_store

    cfg_path = init_node(tmp_path / "center", role="center", name="center", allow_ae=["*"])
    cfg = config_mod.load(cfg_path)
    node_key = load_private(cfg.resolve(cfg.keys.private_key))
    signed = R.sign_report(_doc(study), keys["reader"])
    end = R.endorse_reader(node_key, "center", "dr.wang", "王医生", keys["reader"].public_key())
    store = open_store(cfg)
    uids = []
    for ds in (R.build_sr(signed, end, study["attrs"]),
               R.build_pdf_dicom(R.render_pdf(signed, end), signed, end, study["attrs"])):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        checked = check_part10(buf.getvalue())
        store.put(checked.part10, checked.info, calling_ae="reader:dr.wang")
        uids.append(str(ds.SOPInstanceUID))
    rep = signed["report"]
    with store.atomic() as con:
        con.execute("INSERT INTO cases(case_id, study_instance_uid, kind, priority, service, "
                    "destination, state, created_at, updated_at, sending_node, received_at, "
                    "read_state, manifest_sha256) VALUES ('case-1', ?, 'case', 'stat', "
                    "'imaging', 'center', 'received', 1, 1, 'edge', 1, 'reported', ?)",
                    (study["study"], MANIFEST))
        con.execute("INSERT INTO quality(case_id, verdict, report_json, attestation_json, "
                    "created_at, updated_at) VALUES ('case-1', 'acceptable', '{}', ?, 1, 1)",
                    (json.dumps(ATTESTATION),))
        con.execute(
            "INSERT INTO reports(report_id, case_id, version, status, reader, signed_at, "
            "critical, report_json, signature, endorsement_json, sr_sop_instance_uid, "
            "pdf_sop_instance_uid, origin_node, created_at) VALUES "
            "(?, 'case-1', 1, 'current', 'dr.wang', 1, 1, ?, ?, ?, ?, ?, 'center', 1)",
            (rep["report_id"], json.dumps(rep, ensure_ascii=False), signed["signature"],
             json.dumps(end), uids[0], uids[1]))
    store.close()
    r = _cli("--case", "case-1", "--config", str(cfg_path), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["json", "sr", "pdf"] and all(x["ok"] for x in lines)
    # The attestation held here changes: every object now fails, naming it.
    store = open_store(cfg)
    with store.atomic() as con:
        con.execute("UPDATE quality SET attestation_json = ?", (json.dumps(
            {**ATTESTATION, "verdict": "unacceptable"}),))
    store.close()
    r = _cli("--case", "case-1", "--config", str(cfg_path))
    assert r.returncode == 1 and r.stdout.count("attestation_sha256: the report was signed") == 3
    assert _cli("--case", "nope", "--config", str(cfg_path)).returncode == 2
