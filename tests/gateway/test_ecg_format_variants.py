"""Cart-file variants seen in public files outside the shared set (session 10 probe):
an SCP-ECG writer with 0-based lead ranges, a Contec footer with a device byte set,
and a bedside monitor's MFER with non-ECG channels at another rate.  Each is built
here (or from a shared file), with the refusals that must still hold beside it."""

from __future__ import annotations

import binascii
import struct

import numpy as np
import pytest
from _data import ECG_DIR
from ecgdatakit.models import ECGRecord, Lead

from fenji.gateway.ecg.formats import EcgFileError, read_ecg_file
from fenji.gateway.ecg.formats.common import library_file

AVM_NV = 183          # section 6 amplitude value multiplier, as the "ECG Viewer" file


def _section(sid: int, content: bytes) -> bytes:
    content += b"\0" * (len(content) % 2)
    sec = struct.pack("<HI", sid, 16 + len(content)) + b"\x01\x01" + b"\0" * 6 + content
    return struct.pack("<H", binascii.crc_hqx(sec, 0xFFFF)) + sec


def _scp(samples: np.ndarray, ranges: list[tuple[int, int]], counts: list[int] | None = None
         ) -> bytes:
    """A raw (no Huffman, no difference coding) SCP-ECG record: sections 0, 1, 3, 6;
    leads I, II, V1... with the given section 3 ranges and section 6 byte counts."""
    n_leads = samples.shape[1]
    s1 = b"".join(bytes([t]) + struct.pack("<H", len(v)) + v
                  for t, v in ((0, b"Test\0"), (2, b"ID1\0"), (255, b"")))
    s3 = bytes([n_leads, 0x04]) + b"".join(struct.pack("<IIB", a, b, k + 1)
                                          for k, (a, b) in enumerate(ranges))
    data = b"".join(samples[:, k].astype("<i2").tobytes() for k in range(n_leads))
    counts = counts or [2 * samples.shape[0]] * n_leads
    s6 = struct.pack("<HHBB", AVM_NV, 1000, 0, 0) + struct.pack(f"<{n_leads}H", *counts) + data
    body = [(1, _section(1, s1)), (3, _section(3, s3)), (6, _section(6, s6))]
    s0_len = 16 + 10 * 12
    index, table = 6 + s0_len + 1, [(0, s0_len, 7)]
    present = dict(body)
    for sid in range(1, 12):
        if sid in present:
            table.append((sid, len(present[sid]), index))
            index += len(present[sid])
        else:
            table.append((sid, 0, 0))
    s0 = b"".join(struct.pack("<HII", *t) for t in table)
    sec0 = struct.pack("<HI", 0, s0_len) + b"\x01\x01SCPECG" + s0
    sec0 = struct.pack("<H", binascii.crc_hqx(sec0, 0xFFFF)) + sec0
    rec = sec0 + b"".join(sec for _, sec in body)
    rec = struct.pack("<I", 6 + len(rec)) + rec
    return struct.pack("<H", binascii.crc_hqx(rec, 0xFFFF)) + rec


def _samples(n: int = 2000, leads: int = 8) -> np.ndarray:
    rng = np.random.default_rng(10)
    t = np.arange(n) / 1000.0
    beat = (np.modf(t)[0] < 0.01) * 4000
    return (beat[:, None] * rng.uniform(0.5, 1.5, leads) + rng.integers(-50, 50, (n, leads))
            ).astype(np.int16)


def _read_mv(data: bytes, name: str = "v.scp") -> tuple[np.ndarray, tuple[str, ...]]:
    f = read_ecg_file(name, data)
    stored = [f.record.leads.index(x) for x in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    return f.record.signal[:, stored], f.meta.notes


def test_scp_builder_is_conformant() -> None:
    x = _samples()
    got, notes = _read_mv(_scp(x, [(1, len(x))] * 8))
    assert np.allclose(got, x.astype(float) * AVM_NV / 1e6)
    assert not any("0-based" in n for n in notes)


@pytest.mark.parametrize("end_off, how", [(0, "[0, end)"), (-1, "[0, end]")])
def test_scp_with_zero_based_ranges_is_read_by_its_byte_counts(end_off: int, how: str) -> None:
    x = _samples()
    got, notes = _read_mv(_scp(x, [(0, len(x) + end_off)] * 8))
    assert np.allclose(got, x.astype(float) * AVM_NV / 1e6)
    assert any("0-based" in n and how in n for n in notes)


@pytest.mark.parametrize("ranges, counts", [
    ([(0, 1500)] * 8, None),                         # counts say 2000 samples: neither reading
    ([(0, 2000)] * 7 + [(1, 2000)], None),           # not every lead 0-based
])
def test_scp_zero_based_ranges_without_proof_are_refused(
        ranges: list[tuple[int, int]], counts: list[int] | None) -> None:
    with pytest.raises(EcgFileError, match="v.scp"):
        read_ecg_file("v.scp", _scp(_samples(), ranges, counts))


def test_scp_zero_based_rewrite_never_hides_a_bad_crc() -> None:
    bad = bytearray(_scp(_samples(), [(0, 2000)] * 8))
    bad[-3] ^= 0x40                                   # a sample byte in section 6
    with pytest.raises(EcgFileError, match="CRC"):
        read_ecg_file("v.scp", bytes(bad))


CONTEC = ECG_DIR / "formats" / "contec_ecg90a" / "0000053.ECG"


def test_contec_footer_with_a_device_byte_is_read() -> None:
    data = CONTEC.read_bytes()
    changed = bytearray(data)
    changed[-10] = 0x16                               # as in a later public recording
    a, b = read_ecg_file("a.ECG", data), read_ecg_file("b.ECG", bytes(changed))
    assert np.array_equal(a.record.signal, b.record.signal, equal_nan=True)


@pytest.mark.parametrize("frames_cut", [1, 7, 100])
def test_contec_cut_at_a_frame_boundary_is_still_refused(frames_cut: int) -> None:
    data = CONTEC.read_bytes()
    cut = data[:len(data) - 16 * frames_cut]          # the last 37 bytes are now samples
    with pytest.raises(EcgFileError, match="truncated"):
        read_ecg_file("cut.ECG", cut)


def _lead(label: str, fs: int, unit: str, n: int) -> Lead:
    return Lead(label=label, samples=np.arange(n, dtype=np.float64) % 50, sampling_rate=fs,
                resolution=2.0, resolution_unit=unit, is_raw=True)


def test_monitor_channels_without_a_voltage_unit_are_left_out() -> None:
    # A Nihon Kohden CNS-6000 MFER: II and V5 at 250 Hz in µV, three channels at
    # 125 Hz without a unit (pressures, respiration), read by ecgdatakit as below.
    rec = ECGRecord(leads=[_lead("II", 250, "uV", 2500), _lead("V5", 250, "uV", 2500),
                           *(_lead(f"Code4916{k}", 125, "", 1250) for k in range(3))])
    f = library_file("MFER", "nk.MWF", rec)
    assert f.record.leads == ("II", "V5") and f.record.fs_hz == 250.0
    assert np.allclose(f.record.signal[:, 0], (np.arange(2500) % 50) * 2.0 / 1000)
    assert any("Code49160, Code49161, Code49162 are not ECG" in n for n in f.meta.notes)


def test_channels_without_units_are_ecg_when_no_channel_declares_a_voltage() -> None:
    rec = ECGRecord(leads=[_lead(x, 500, "", 5000) for x in ("I", "II", "V1")]
                    + [_lead("Pleth", 500, "mmHg", 5000)])
    f = library_file("MFER", "m.MWF", rec)
    assert set(f.record.leads) >= {"I", "II", "V1"} and "Pleth" not in f.record.leads
    only = ECGRecord(leads=[_lead("ABP", 125, "mmHg", 1250)])
    with pytest.raises(EcgFileError, match="no ECG lead"):
        library_file("MFER", "p.MWF", only)
    mixed = ECGRecord(leads=[_lead("I", 500, "uV", 5000), _lead("II", 250, "uV", 2500)])
    with pytest.raises(EcgFileError, match="different sampling rates"):
        library_file("MFER", "r.MWF", mixed)
