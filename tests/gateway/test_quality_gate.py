"""The gate holds and explains a bad case, a named override releases it signed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _data import DICOM_DIR, ct_series
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.codecs.compress.bundle import read_bundle
from fenji.gateway.cases import gate as qg
from fenji.gateway.cases.case import CaseError, CaseHeld, override, quality_of, release
from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.ecg.io import read_dicom_ecg
from fenji.gateway.store.db import Store


def _put(store: Store, data: bytes) -> None:
    c = check_part10(data)
    store.put(c.part10, c.info)


def _blanked(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    arr[:] = arr.min()
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_good_series_passes_with_a_signed_attestation(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    for p in ct_series():
        _put(store, p.read_bytes())
    key = Ed25519PrivateKey.generate()
    rel = release(store, _study(ct_series()[0]), destination="center", gate_key=key,
                  operator="Dr. Wang", sender_node="edge")
    q = quality_of(store, rel.case_id)
    assert q is not None and q["verdict"] != qg.UNACCEPTABLE
    att = q["attestation"]
    assert att["operator"] == "Dr. Wang" and qg.verify_attestation(att, key.public_key())
    manifest, _, _ = read_bundle(rel.bundle_path.read_bytes())
    assert manifest["case"]["attestation"] == att  # it travels with the case
    att["verdict"] = "acceptable" if att["verdict"] != "acceptable" else "unacceptable"
    assert not qg.verify_attestation(att, key.public_key())  # any edit breaks it
    store.close()


def test_blank_slice_holds_the_case_until_a_named_override(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    files = ct_series()
    for i, p in enumerate(files):
        _put(store, _blanked(p) if i == 13 else p.read_bytes())
    key = Ed25519PrivateKey.generate()
    with pytest.raises(CaseHeld) as info:
        release(store, _study(files[0]), destination="center", gate_key=key, operator="tech")
    held = info.value
    assert any("blank" in r for r in held.reasons), held.reasons
    assert store.query_one("SELECT state FROM cases WHERE case_id = ?",
                           (held.case_id,))["state"] == "held"  # type: ignore[index]
    assert quality_of(store, held.case_id)["attestation"] is None  # type: ignore[index]
    with pytest.raises(CaseError, match="operator and a reason"):
        override(store, held.case_id, operator="", reason="", gate_key=key, sender_node="edge")
    rel = override(store, held.case_id, operator="Dr. Li", reason="slice 14 blank, rest "
                   "diagnostic; patient left", gate_key=key, sender_node="edge")
    att = quality_of(store, held.case_id)["attestation"]  # type: ignore[index]
    assert att["override"]["reason"].startswith("slice 14") and att["operator"] == "Dr. Li"
    assert qg.verify_attestation(att, key.public_key())
    manifest, _, insts = read_bundle(rel.bundle_path.read_bytes())
    assert manifest["case"]["attestation"]["override"] and len(insts) == len(files)
    with pytest.raises(CaseError, match="not held"):
        override(store, held.case_id, operator="x", reason="y", gate_key=key, sender_node="e")
    store.close()


def _damaged_rle(path: Path) -> bytes:
    """The instance RLE-compressed, the last segment of its frame cut to half:
    well-formed encapsulation and RLE header, pixels no decoder can make whole."""
    import struct

    from pydicom.encaps import encapsulate, generate_fragments
    from pydicom.uid import RLELossless

    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    frag = list(generate_fragments(ds.PixelData))[-1]  # after the Basic Offset Table
    last = struct.unpack_from("<15L", frag, 4)[struct.unpack_from("<L", frag, 0)[0] - 1]
    cut = frag[:last + (len(frag) - last) // 2]
    ds.PixelData = encapsulate([cut + b"\0" * (len(cut) & 1)])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_damaged_compressed_instance_holds_the_case(tmp_path: Path) -> None:
    """Stored as received (nothing lost), but the gate holds the case and says which
    instance to resend: the reader would otherwise get a broken image."""
    store = Store(tmp_path / "s")
    files = ct_series()
    for i, p in enumerate(files):
        _put(store, _damaged_rle(p) if i == 7 else p.read_bytes())
    assert store.query_one("SELECT COUNT(*) AS n FROM instances")["n"] == len(files)  # type: ignore[index]
    n = pydicom.dcmread(files[7], stop_before_pixels=True).InstanceNumber
    with pytest.raises(CaseHeld) as info:
        release(store, _study(files[0]), destination="center",
                gate_key=Ed25519PrivateKey.generate(), operator="tech")
    damaged = [r for r in info.value.reasons if "pixel data damaged" in r]
    assert len(damaged) == 1 and f"instance {n}: pixel data damaged" in damaged[0], \
        info.value.reasons
    assert "segment" in damaged[0]  # the decoder's own words, for the engineer
    store.close()


@pytest.mark.parametrize("where,keyword,value,words", [
    ("group", "SamplingFrequency", "0", "Sampling Frequency 0 Hz"),
    ("group", "SamplingFrequency", "3", "sampling frequency 3 Hz"),
    ("channels", "ChannelSensitivity", "nan", "ChannelSensitivity nan"),
    ("channels", "ChannelBaseline", "nan", "ChannelBaseline nan"),
    ("group", "NumberOfWaveformChannels", 64, "undecodable")])
def test_an_ecg_whose_waveform_cannot_be_used_holds_the_case(
        tmp_path: Path, where: str, keyword: str, value: object, words: str) -> None:
    """Found by setting the waveform's numbers to what a broken cart could send: the
    release raised ValueError/OverflowError (or failed with a typed error the
    technician could not override). Now the case is held, saying why."""
    ds = pydicom.dcmread(DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm")
    w = ds.WaveformSequence[0]
    for item in (w.ChannelDefinitionSequence if where == "channels" else [w]):
        setattr(item, keyword, value)
    store = Store(tmp_path / "s")
    _put(store, _bytes(ds))
    with pytest.raises(CaseHeld) as info:
        release(store, str(ds.StudyInstanceUID), destination="center",
                gate_key=Ed25519PrivateKey.generate(), operator="tech")
    assert any("waveform not usable" in r and words in r for r in info.value.reasons), \
        info.value.reasons
    store.close()


def test_ecg_lead_off_is_explained_per_lead(tmp_path: Path) -> None:
    ds = pydicom.dcmread(DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm")
    w = ds.WaveformSequence[0]
    n_ch, n = int(w.NumberOfWaveformChannels), int(w.NumberOfWaveformSamples)
    data = np.frombuffer(w.WaveformData, dtype="<i2").reshape(n, n_ch).copy()
    data[:, 2] = 0  # third lead flat: disconnected
    w.WaveformData = data.tobytes()
    report = qg.assess([_bytes(ds)])
    assert report["verdict"] == qg.UNACCEPTABLE
    assert any("ECG" in r for r in report["reasons"]), report["reasons"]


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_ecg_with_warnings_is_released_not_held(tmp_path: Path) -> None:
    # mains hum on the chest leads: readable (the reader's notch filter removes it),
    # so the case goes out "acceptable_with_warnings" and the warning names the leads
    ds = pydicom.dcmread(DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm")
    leads = read_dicom_ecg(ds).leads
    w = ds.WaveformSequence[0]
    n_ch, n = int(w.NumberOfWaveformChannels), int(w.NumberOfWaveformSamples)
    fs = float(w.SamplingFrequency)
    data = np.frombuffer(w.WaveformData, dtype="<i2").reshape(n, n_ch).astype(np.float64)
    chest = [j for j, name in enumerate(leads) if name.startswith("V")]
    assert len(chest) == 6, leads
    hum = np.sin(2 * np.pi * 50.0 * np.arange(n) / fs)
    for j in chest:
        data[:, j] += 3.0 * data[:, j].std() * hum
    w.WaveformData = np.clip(np.round(data), -32768, 32767).astype("<i2").tobytes()
    store = Store(tmp_path / "s")
    _put(store, _bytes(ds))
    key = Ed25519PrivateKey.generate()
    rel = release(store, str(ds.StudyInstanceUID), destination="center", gate_key=key,
                  operator="tech", sender_node="edge")
    q = quality_of(store, rel.case_id)
    assert q is not None and q["verdict"] == qg.WARNINGS, q
    assert any("V1-V6" in r and "50 Hz mains" in r for r in q["attestation"]["reasons"]), q
    store.close()
