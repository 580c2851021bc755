"""A report PDF a doctor would accept, verifiable on its own (issue 18, point 5).

The fields a physician looks for are on it (pdftotext), the signing time is in
the node's time zone, and the signed report travels inside the PDF, so
`fenji report verify FILE.pdf` checks it anywhere and names an edited one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _tools import pdftotext
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway import reports as R
from fenji.gateway.keys import fingerprint

READER, CENTER, MALLORY = (Ed25519PrivateKey.generate() for _ in range(3))
EXAM = {"date": "20261203", "time": "081500", "modality": "CT", "description": "头颅平扫",
        "accession_number": "A-2026-0113", "sending_institution": "XX县人民医院",
        "reading_institution": "XX市中心医院远程诊断中心"}


def _signed(**kw):  # type: ignore[no-untyped-def]
    doc = R.build_report(
        case={"case_id": "case-1", "study_instance_uid": "1.2.3.4", "service": "imaging",
              "priority": "stat", "requesting_physician": "马医生", "clinical_question": "外伤？",
              "sender": "township-edge"},
        manifest_sha256="a" * 64, attestation=None,
        instances=[{"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": "1.2.3.4.5",
                    "series_instance_uid": "1.2.3.4.6"}],
        reader="dr.wang", reader_display="王医生 主治医师", center="center",
        findings="未见出血。", impression="正常。", critical=False, signed_at=1_796_000_000.0,
        patient={"id": "TS-0001", "name": "Wang^XiaoDong=王^小东", "sex": "M", "age": "067Y",
                 "birth_date": ""}, **kw)
    signed = R.sign_report(doc, READER)
    end = R.endorse_reader(CENTER, "center", "dr.wang", "王医生 主治医师", READER.public_key())
    return signed, end


def _text(pdf: bytes, tmp: Path) -> str:
    path = tmp / "r.pdf"
    path.write_bytes(pdf)
    return pdftotext(path)


def test_the_pdf_names_the_examination_both_hospitals_and_local_time(tmp_path: Path) -> None:
    signed, end = _signed(examination=EXAM, timezone="Asia/Shanghai")
    text = _text(R.render_pdf(signed, end), tmp_path)
    for want in ("XX县人民医院", "XX市中心医院远程诊断中心", "王 小东", "TS-0001", "067Y",
                 "头颅平扫", "CT", "2026-12-03", "A-2026-0113", "马医生", "外伤？",
                 "王医生 主治医师", "(Asia/Shanghai)"):
        assert want in text, (want, text)
    # 1_796_000_000 s is 2026-11-30 00:53:20 UTC: 08:53:20 in Shanghai.
    assert "08:53:20" in text and "00:53:20" not in text


@pytest.fixture()
def pdf_file(tmp_path: Path) -> Path:
    signed, end = _signed(examination=EXAM, timezone="Asia/Shanghai")
    path = tmp_path / "report.pdf"
    path.write_bytes(R.render_pdf(signed, end))
    return path


def _verify_cli(path: Path, key: Ed25519PrivateKey) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "report", "verify",
                           str(path), "--trust-center",
                           f"center={fingerprint(key.public_key())}"],
                          capture_output=True, text=True, timeout=120)


def test_a_pdf_verifies_on_its_own(pdf_file: Path) -> None:
    trusted = {"center": CENTER.public_key()}
    res = R.verify_pdf(pdf_file.read_bytes(), trusted)
    assert res.ok, res.problems
    ok = _verify_cli(pdf_file, CENTER)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = _verify_cli(pdf_file, MALLORY)  # endorsed by a center we do not trust
    assert wrong.returncode == 1


def test_an_edited_pdf_is_named(pdf_file: Path, tmp_path: Path) -> None:
    trusted = {"center": CENTER.public_key()}
    data = pdf_file.read_bytes()
    # Same size, one visible word changed in the page's content stream is not possible
    # (it is compressed): a metadata edit a person could make with any PDF tool.
    edited = data.replace(b"/Title (", b"/Title (X", 1)
    assert edited != data
    res = R.verify_pdf(edited, trusted)
    assert not res.ok and any("not the rendering" in p for p in res.problems), res.problems
    # Another report's signed JSON swapped in, with the pages of this one.
    other, end = _signed(examination={**EXAM, "description": "胸部平扫"})
    swapped = R.render_pdf(other, end)
    res = R.verify_pdf(swapped[:len(swapped) // 2] + data[len(data) // 2:], trusted)
    assert not res.ok
    plain = tmp_path / "plain.pdf"
    plain.write_bytes(b"%PDF-1.4\n%%EOF\n")
    r = _verify_cli(plain, CENTER)
    assert r.returncode == 1 and "not a" in (r.stdout + r.stderr)
