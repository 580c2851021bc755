"""`fenji codec encode|decode|info` end to end on a real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _data import DICOM_DIR

from fenji.gateway.cli.main import main


def test_encode_info_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = DICOM_DIR / "ct" / "CT_0001.dcm"
    enc, dec = tmp_path / "ct.fji", tmp_path / "ct.dcm"
    assert main(["codec", "encode", str(src), str(enc), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["ratio"] > 3 and line["encoded_bytes"] == enc.stat().st_size
    assert main(["codec", "info", str(enc), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [p["codec"] for p in info["payloads"]] == ["pixel"]
    assert main(["codec", "info", str(enc)]) == 0
    assert "pixel" in capsys.readouterr().out
    assert main(["codec", "decode", str(enc), str(dec)]) == 0
    assert dec.read_bytes() == src.read_bytes()


def test_decode_garbage_is_a_clean_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.fji"
    bad.write_bytes(b"FJIN" + b"\x00" * 60)
    assert main(["codec", "decode", str(bad), str(tmp_path / "out.dcm")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "out.dcm").exists()
    assert main(["codec", "info", str(tmp_path / "missing.fji")]) == 2
