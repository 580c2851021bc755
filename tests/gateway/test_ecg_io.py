"""EcgRecord readers and the WFDB -> DICOM ECG writer, checked with dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fenji.codecs.ecg.record import EcgRecord
from fenji.codecs.errors import PeerError
from fenji.gateway.ecg import io as ecg_io
from tests.conftest import DICOM_DIR, ECG_DIR

DCIODVFY = "/usr/bin/dciodvfy"


def test_read_wfdb_digital_and_physical():
    rec = ecg_io.read_wfdb(ECG_DIR / "mitdb" / "100")
    assert rec.leads == ("MLII", "V5") and rec.fs_hz == 360.0 and rec.n_samples == 650000
    assert rec.digital and rec.gains == (200.0, 200.0) and rec.units == ("mV", "mV")
    mv = rec.physical_mv()
    assert -5 < mv.min() and mv.max() < 5
    with pytest.raises(ValueError):
        rec.signal[0, 0] = 1          # read-only: records are values


def test_read_dicom_ecg_shared_files():
    for name in ("waveform_ecg_12lead.dcm", "general_ecg_derived.dcm"):
        rec = ecg_io.read_dicom_ecg(DICOM_DIR / "ecg" / name)
        assert rec.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4",
                             "V5", "V6")
        assert rec.fs_hz == 1000.0 and rec.n_samples == 10000
        assert rec.filters.low_hz == pytest.approx(0.05)
        mv = rec.physical_mv()
        # III = II - I (Einthoven) within the 1.25 uV quantisation of each lead
        assert np.abs(mv[:, 2] - (mv[:, 1] - mv[:, 0])).max() < 0.01


def test_unreadable_inputs_name_the_file(tmp_path):
    with pytest.raises(PeerError, match="nope"):
        ecg_io.read_ecg(tmp_path / "nope")
    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a header\n")
    with pytest.raises(PeerError, match="bad"):
        ecg_io.read_ecg(tmp_path / "bad")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 10)
    with pytest.raises(PeerError, match="junk.dcm"):
        ecg_io.read_ecg(junk)


CASES = [("challenge2011/1007823", ecg_io.TWELVE_LEAD_ECG),
         ("cinc2021/A0001", ecg_io.TWELVE_LEAD_ECG),
         ("ptb/s0010_re", ecg_io.GENERAL_ECG),
         ("cpsc2019/wfdb/data_00001", ecg_io.GENERAL_ECG),
         ("cpsc2021/data_8_4", ecg_io.GENERAL_ECG),
         ("cpsc2021/data_35_4", ecg_io.AMBULATORY_ECG),
         ("mitdb/100", ecg_io.AMBULATORY_ECG)]


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    if not Path(DCIODVFY).exists() and not shutil.which("dciodvfy"):
        pytest.fail("dciodvfy (dicom3tools) not installed")
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], \
        [ln for ln in lines if ln.startswith("Warning")]


@pytest.mark.parametrize("rel,sop_class", CASES)
def test_wfdb_to_dicom_round_trip_and_dciodvfy(tmp_path, rel, sop_class, capsys):
    rec = ecg_io.read_wfdb(ECG_DIR / rel)
    out = tmp_path / "ecg.dcm"
    ds = ecg_io.write_dicom_ecg(rec, out, patient_id="TWN-0001", patient_name="Test^Patient",
                                institution="Township Hospital")
    assert ds.SOPClassUID == sop_class
    back = ecg_io.read_dicom_ecg(out)
    assert back.fs_hz == rec.fs_hz and back.n_samples == rec.n_samples
    assert [n.upper() for n in back.leads] == [n.upper() for n in rec.leads]
    # same physical values within half a count of the written sensitivity
    sens_mv = np.array([float(c.ChannelSensitivity) for c in
                        ds.WaveformSequence[0].ChannelDefinitionSequence]) / 1000.0
    err = np.abs(back.physical_mv() - rec.physical_mv()).max(axis=0)
    assert (err <= sens_mv / 2 + 1e-9).all(), (err, sens_mv)
    errors, warnings = _dciodvfy(out)
    with capsys.disabled():
        print(f"\ndciodvfy {rel} -> {ds.SOPClassUID.name}: {len(errors)} errors, "
              f"{len(warnings)} warnings {warnings}")
    assert errors == []
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_nothing_fits_is_an_error():
    rec = EcgRecord(leads=tuple(f"c{i}" for i in range(30)), fs_hz=100.0,
                    signal=np.zeros((10, 30), "<i2"), gains=(200.0,) * 30, baselines=(0,) * 30,
                    units=("mV",) * 30)
    with pytest.raises(PeerError, match="fits no DICOM ECG IOD"):
        ecg_io.to_dicom(rec)


def test_beat_annotations_exclude_vf_episodes():
    beats, vf = ecg_io.read_beat_annotations(ECG_DIR / "mitdb" / "207")
    assert len(beats) > 1800 and vf.shape[1] == 2 and len(vf) >= 1


def test_study_id_silences_the_only_dciodvfy_warning(tmp_path):
    rec = ecg_io.read_wfdb(ECG_DIR / "cinc2021" / "A0001")
    out = tmp_path / "ecg.dcm"
    ecg_io.write_dicom_ecg(rec, out, patient_id="TWN-0001", study_id="42",
                           accession_number="A42")
    errors, warnings = _dciodvfy(out)
    assert errors == [] and warnings == []
