"""Hostile or broken ECG input gets a typed refusal or an honest verdict, never a
crash, a server error, a NaN in a signed report or an "acceptable" for what
cannot be read.  Each case is one a fuzzer found (session 11), rebuilt here from
the shared files."""

from __future__ import annotations

import binascii
import io
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from _data import DICOM_DIR, ECG_DIR
from pydicom.sequence import Sequence

from fenji.codecs.ecg import qrs
from fenji.codecs.ecg import quality as q
from fenji.codecs.errors import PeerError
from fenji.gateway.ecg.convert import ecg_to_part10
from fenji.gateway.ecg.formats import read_ecg_file
from fenji.gateway.ecg.formats.common import EcgFileError
from fenji.gateway.ecg.io import read_dicom_ecg, read_ecg

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FORMATS = ECG_DIR / "formats"
WAVEFORM = DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"


@pytest.fixture(scope="module")
def clean() -> tuple[np.ndarray, float]:
    rec = wfdb.rdrecord(str(ECG_DIR / "cinc2021" / "A0001"), sampto=5000)
    return np.ascontiguousarray(rec.p_signal), float(rec.fs)


# --- the check on arrays ----------------------------------------------------------

@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 1e155, -1e300])
def test_a_broken_sample_reads_as_a_gap_and_the_score_stays_a_number(clean, bad) -> None:
    """An infinite or absurd sample used to make the gate's score NaN, and a NaN
    score never holds: every lead could be off and the record "acceptable"."""
    x, fs = clean
    x = x.copy()
    x[1000:2500, LEADS.index("V2")] = bad
    rep = q.quality_report(x, fs, LEADS)
    assert rep["gate"]["score"] is not None and np.isfinite(rep["gate"]["score"])
    assert any(r.startswith("lead V2 off for 3.0 s") for r in rep["reasons"]), rep["reasons"]
    json.dumps(rep, allow_nan=False)            # what is hashed and signed has no NaN
    x[:] = bad
    assert q.quality_report(x, fs, LEADS)["verdict"] == q.UNACCEPTABLE


def test_a_tiny_amplitude_is_a_lead_off_the_skin_not_a_division_by_zero(clean) -> None:
    x, fs = clean
    rep = q.quality_report(x * 1e-100, fs, LEADS)   # m2 * m2 underflowed to 0 in kSQI
    assert rep["verdict"] == q.UNACCEPTABLE
    assert "too small" in rep["reasons"][0] or "usable" in rep["reasons"][0], rep["reasons"]


def test_no_usable_lead_or_no_heartbeat_holds(clean) -> None:
    """Outside the fitted score: an ECG at a thousand times its gain (every lead
    implausible) or half a second long (no heartbeat) cannot be read."""
    x, fs = clean
    rep = q.quality_report(x * 1000.0, fs, LEADS)
    assert rep["verdict"] == q.UNACCEPTABLE
    assert rep["reasons"][0] == "none of the 12 leads is usable", rep["reasons"]
    rep = q.quality_report(x[:250], fs, LEADS)
    assert rep["verdict"] == q.UNACCEPTABLE
    assert rep["reasons"][0].startswith("no heartbeat found"), rep["reasons"]
    checks = {c["check"]: c for c in rep["record"]["checks"]}
    assert checks["heart_rate"]["verdict"] == q.UNACCEPTABLE


def test_repeated_lead_names_keep_every_lead(clean) -> None:
    x, fs = clean
    x = x[:, :2].copy()
    x[:, 0] = 0.0
    rep = q.quality_report(x, fs, ["II", "II"])
    assert list(rep["leads"]) == ["II", "II (2)"]
    assert rep["leads"]["II"]["verdict"] == q.UNACCEPTABLE
    assert rep["leads"]["II (2)"]["verdict"] != q.UNACCEPTABLE


def test_detect_qrs_reads_gaps_as_zero_and_refuses_a_rate_it_cannot_use(clean) -> None:
    x, fs = clean
    lead = x[:, 1].copy()
    want = qrs.detect_qrs(lead, fs)
    lead[2500] = np.nan
    got = qrs.detect_qrs(lead, fs)
    assert len(got) >= len(want) - 1 > 5          # one gap sample, not an empty answer
    for bad_fs in (0.0, 10.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fs_hz"):
            qrs.detect_qrs(x[:, 1], bad_fs)
        with pytest.raises(PeerError, match="sampling frequency"):
            q.measure_record(x, bad_fs)


# --- readers ----------------------------------------------------------------------

def _dicom(change) -> bytes:
    ds = pydicom.dcmread(WAVEFORM)
    change(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def _channels(ds: pydicom.Dataset) -> Sequence:
    return ds.WaveformSequence[0].ChannelDefinitionSequence


@pytest.mark.parametrize(("what", "change", "says"), [
    ("no channel items", lambda ds: setattr(ds.WaveformSequence[0],
                                            "ChannelDefinitionSequence", Sequence([])),
     "has 0 items for 12 channels"),
    ("11 channel items", lambda ds: setattr(ds.WaveformSequence[0], "ChannelDefinitionSequence",
                                            Sequence(list(_channels(ds))[:11])),
     "has 11 items for 12 channels"),
    ("sensitivity 1e300", lambda ds: [setattr(c, "ChannelSensitivity", "1e300")
                                      for c in _channels(ds)], "beyond any ECG"),
    ("baseline 1e15", lambda ds: setattr(_channels(ds)[0], "ChannelBaseline", "1e15"),
     "beyond any ECG"),
])
def test_a_dicom_ecg_that_does_not_add_up_is_refused(tmp_path: Path, what, change, says) -> None:
    f = tmp_path / "ecg.dcm"
    f.write_bytes(_dicom(change))
    with pytest.raises(PeerError, match=says):
        read_ecg(f)
    with pytest.raises(PeerError, match=says):
        read_dicom_ecg(pydicom.dcmread(f))


@pytest.mark.parametrize(("what", "offset", "value"), [
    ("cut", 1488, None), ("meta VR", 253, 0xFF), ("SOP UID VR", 411, 0x73),
    ("group length VR", 136, 0x2A)])
def test_a_damaged_dicom_ecg_file_is_a_typed_refusal(tmp_path: Path, what, offset, value) -> None:
    data = bytearray(WAVEFORM.read_bytes())
    if value is None:
        data = data[:offset]
    else:
        data[offset] = value
    f = tmp_path / "ecg.dcm"
    f.write_bytes(bytes(data))
    with pytest.raises(PeerError, match=str(f)):
        read_ecg(f)


def _wfdb_with_header(tmp_path: Path, first_line: str) -> Path:
    src = ECG_DIR / "challenge2011" / "1004502"
    lines = src.with_suffix(".hea").read_text().split("\n")
    lines[0] = first_line
    (tmp_path / "1004502.hea").write_text("\n".join(lines))
    shutil.copy(src.with_suffix(".dat"), tmp_path / "1004502.dat")
    return tmp_path / "1004502"


@pytest.mark.parametrize(("line", "says"), [("1004502 0 500 5000", "no signals"),
                                            ("1004502 12 0 5000", "sampling rate 0 Hz")])
def test_a_wfdb_header_without_signals_or_rate_is_refused(tmp_path: Path, line, says) -> None:
    with pytest.raises(PeerError, match=says):
        read_ecg(_wfdb_with_header(tmp_path, line))


def _scale(raw: bytes, value: bytes, only_first: bool = False) -> bytes:
    if only_first:
        m = re.search(rb'<scale value="([^"]*)"', raw)
        assert m
        return raw[:m.start(1)] + value + raw[m.end(1):]
    return raw.replace(b'<scale value="2.5"', b'<scale value="' + value + b'"')


def test_an_aecg_scale_no_ecg_has_is_refused_and_a_tiny_one_is_written() -> None:
    raw = (FORMATS / "hl7_aecg" / "hl7_example_mortara_eli250.xml").read_bytes()
    with pytest.raises(EcgFileError, match="beyond any ECG"):
        read_ecg_file("x.xml", _scale(raw, b"1e300"))
    # a denormal scale used to divide by zero writing the DICOM object; now it is a
    # lead too small to read, said so, and the object is written
    part10, summary = ecg_to_part10({"x.xml": _scale(raw, b"5e-324", True)})
    assert pydicom.dcmread(io.BytesIO(part10)).WaveformSequence
    assert summary["quality"]["verdict"] == q.UNACCEPTABLE


def test_an_scp_lead_range_beyond_the_limit_is_refused_before_the_parser_allocates() -> None:
    scp = bytearray((FORMATS / "scp_ecg" / "welchallyn_cardiocontrol_2017.SCP").read_bytes())
    s0_len = struct.unpack_from("<I", scp, 10)[0]
    table = {sid: index - 1 for sid, _, index in
             (struct.unpack_from("<HII", scp, off) for off in range(22, 6 + s0_len - 9, 10))}
    struct.pack_into("<I", scp, table[3] + 16 + 6, 0xFFFFFFFF)    # lead 1's end sample
    for off in range(22, 6 + s0_len - 9, 10):                      # CRCs made right again
        sid, slen, index = struct.unpack_from("<HII", scp, off)
        if slen:
            st = index - 1
            struct.pack_into("<H", scp, st, binascii.crc_hqx(bytes(scp[st + 2:st + slen]),
                                                             0xFFFF))
    length = struct.unpack_from("<I", scp, 2)[0]
    struct.pack_into("<H", scp, 0, binascii.crc_hqx(bytes(scp[2:length]), 0xFFFF))
    with pytest.raises(EcgFileError, match="declares samples 1-4294967295"):
        read_ecg_file("w.scp", bytes(scp))


def test_the_shared_records_are_untouched_by_the_bounds() -> None:
    """Every shared cart file still reads (the bounds refuse only what no ECG has)."""
    n = 0
    for f in sorted(FORMATS.rglob("*")):
        if f.is_file() and f.suffix.lower() in {".scp", ".xml", ".mwf", ".ecg", ".dat"}:
            try:
                read_ecg_file(f.name, f.read_bytes())
                n += 1
            except EcgFileError as exc:
                assert "beyond any ECG" not in str(exc) and "declares samples" not in str(exc)
    assert n >= 10
