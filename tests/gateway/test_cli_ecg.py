"""`fenji ecg check`: JSON lines for batches, summaries, errors that name the file."""

from __future__ import annotations

import json

from fenji.gateway.cli import main as cli
from fenji.gateway.ecg import io as ecg_io
from tests.conftest import DICOM_DIR, ECG_DIR


def _run(capsys, *args: str) -> tuple[int, list[str], str]:
    rc = cli.main(["ecg", "check", *args])
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def test_json_line_per_record_wfdb_dicom_and_directory(capsys):
    rc, lines, err = _run(capsys, "--json", str(ECG_DIR / "cinc2021"),
                          str(ECG_DIR / "cpsc2019" / "wfdb" / "data_00002.hea"),
                          str(DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"))
    assert rc == 0, err
    objs = [json.loads(ln) for ln in lines]
    assert len(objs) == 12 + 1 + 1
    for o in objs:
        assert {"record", "fs", "leads", "qrs", "heart_rate_bpm", "quality"} <= set(o)
        assert o["quality"]["verdict"] in ("acceptable", "acceptable_with_warnings",
                                           "unacceptable")
        assert set(o["quality"]["leads"]) == set(o["leads"])
        assert all(isinstance(i, int) for i in o["qrs"])
    dcm = objs[-1]
    assert dcm["fs"] == 1000.0 and 50 <= dcm["heart_rate_bpm"] <= 80
    js4 = next(o for o in objs if o["record"].endswith("JS20004"))
    assert js4["quality"]["verdict"] == "unacceptable"
    assert "lead V2 off for 10.0 s: check the electrode" in js4["quality"]["reasons"]


def test_bad_inputs_are_named_and_others_still_checked(capsys, tmp_path):
    broken = tmp_path / "broken.hea"
    broken.write_text("garbage\n")
    rc, lines, err = _run(capsys, "--json", str(tmp_path / "missing"), str(broken),
                          str(ECG_DIR / "mitdb" / "100"))
    assert rc == 1
    assert len(lines) == 1 and json.loads(lines[0])["record"].endswith("mitdb/100")
    assert "missing: no such file" in err and "broken" in err


def test_readable_summary(capsys):
    rc, lines, _ = _run(capsys, str(ECG_DIR / "cinc2021" / "JS20004"))
    assert rc == 0
    assert lines[0].startswith(f"{ECG_DIR / 'cinc2021' / 'JS20004'}: UNACCEPTABLE")
    assert any("lead V2 off" in ln for ln in lines[1:])


def test_written_dicom_is_checked_like_its_wfdb_source(capsys, tmp_path):
    src = ECG_DIR / "challenge2011" / "1004502"
    ecg_io.write_dicom_ecg(ecg_io.read_wfdb(src), tmp_path / "e.dcm")
    rc, lines, _ = _run(capsys, "--json", str(src), str(tmp_path / "e.dcm"))
    a, b = (json.loads(ln) for ln in lines)
    assert rc == 0 and a["qrs"] == b["qrs"] and a["quality"]["verdict"] == b["quality"]["verdict"]
