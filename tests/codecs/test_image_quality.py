"""Image quality: kernel == twin, and broken CT series built at test time from ct/."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fenji.codecs.image import quality as iq
from fenji.gateway.cases import image_checks as ic
from tests.conftest import DICOM_DIR


@settings(max_examples=60, deadline=None)
@given(a=arrays(st.sampled_from([np.uint8, np.int16, np.uint16, np.float32]),
                st.integers(0, 300), elements=st.integers(0, 100)))
def test_frame_stats_kernel_equals_twin(a):
    nb, py = iq._frame_stats_nb(a), iq._frame_stats_py(a)
    assert nb[0] == py[0] and nb[1] == py[1] and nb[3:] == py[3:]
    assert nb[2] == pytest.approx(py[2], rel=1e-12, abs=1e-12)


def test_frame_stats_big_endian():
    a = np.arange(10, dtype=">u2")
    assert iq.frame_stats(a)[:2] == (0.0, 9.0)


@pytest.fixture(scope="module")
def ct() -> list[pydicom.Dataset]:
    files = sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))
    assert len(files) == 28
    return [pydicom.dcmread(f) for f in files]


def _fresh(ct):
    return [copy.deepcopy(d) for d in ct]


def test_intact_series_passes(ct):
    rep = ic.check_series(ct)
    assert rep["verdict"] == iq.ACCEPTABLE, rep["reasons"]
    assert rep["series"]["n_instances"] == 28


def test_removed_slice(ct):
    dss = _fresh(ct)
    del dss[16]
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    assert rep["reasons"] == ["slice 17 missing between z=771.2 and z=781.2: resend the series"]


def test_two_removed_slices_in_one_gap_and_shuffled_order(ct):
    dss = _fresh(ct)
    del dss[5:7]
    dss.reverse()
    rep = ic.check_series(dss)
    assert rep["reasons"] == ["slices 6-7 missing between z=716.2 and z=731.2: resend the series"]
    assert {c["check"]: c for c in rep["series"]["checks"]}["missing_slices"]["value"] == 2


def test_duplicated_slice(ct):
    dss = _fresh(ct)
    dup = copy.deepcopy(dss[9])
    dup.SOPInstanceUID = pydicom.uid.generate_uid()
    rep = ic.check_series(dss + [dup])
    assert rep["verdict"] == iq.UNACCEPTABLE
    assert any("appears twice (instance 10)" in r for r in rep["reasons"]), rep["reasons"]


def test_same_instance_sent_twice(ct):
    rep = ic.check_series(_fresh(ct) + [copy.deepcopy(ct[3])])
    assert any("used by 2 instances" in r for r in rep["reasons"])


def test_blanked_frame(ct):
    dss = _fresh(ct)
    dss[3].PixelData = np.zeros((512, 512), "<u2").tobytes()
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    assert rep["reasons"] == ["instance 4: image blank (every pixel the same value): "
                              "re-acquire it (new instance UIDs), or exclude it (fenji case "
                              "exclude), or override"]


def test_saturated_frame(ct):
    dss = _fresh(ct)
    px = dss[8].pixel_array.copy()
    px[:300, :] = 4095                     # BitsStored 12: full scale
    dss[8].PixelData = px.astype("<u2").tobytes()
    rep = ic.check_series(dss)
    assert any("instance 9: image saturated" in r for r in rep["reasons"]), rep["reasons"]


def test_changed_patient_id(ct):
    dss = _fresh(ct)
    dss[7].PatientID = "OTHER"
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    assert rep["reasons"] == ["Patient ID differs: instance 8 has 'OTHER', the other 27 have "
                              "'PLASTIC': wrong patient or study mixed in"]


@pytest.mark.parametrize("key,value,words", [
    ("StudyInstanceUID", "1.2.3", "Study Instance UID differs"),
    ("Modality", "MR", "Modality differs")])
def test_changed_study_or_modality(ct, key, value, words):
    dss = _fresh(ct)
    setattr(dss[2], key, value)
    assert any(words in r for r in ic.check_series(dss)["reasons"])


def test_truncated_pixel_data(ct):
    dss = _fresh(ct)
    dss[9].PixelData = dss[9].PixelData[:262144]
    rep = ic.check_series(dss)
    assert any("instance 10: Pixel Data is 262144 bytes" in r and "needs 524288" in r
               for r in rep["reasons"]), rep["reasons"]


def test_bit_depth_not_allowed_for_sop_class(ct):
    h = ic.header_of(ct[0])
    h.update(BitsAllocated=8, BitsStored=8, PixelDataLength=512 * 512)
    checks = {c["check"]: c for c in iq.instance_checks(h, None)}
    assert checks["pixel_format"]["verdict"] == iq.UNACCEPTABLE
    assert "BitsAllocated 8 (allowed [16]) not allowed for CT Image" in \
        checks["pixel_format"]["reason"]


def test_headers_only_report_and_plain_dicts():
    hs = [{"SOPInstanceUID": f"1.{i}", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
           "Rows": 4, "Columns": 4, "BitsAllocated": 16, "BitsStored": 12,
           "InstanceNumber": i + 1, "PatientID": "P", "StudyInstanceUID": "1.9",
           "SeriesInstanceUID": "1.9.1", "Modality": "CT",
           "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
           "ImagePositionPatient": [0, 0, -120.0 + 10 * i + (10 if i >= 3 else 0)]}
          for i in range(6)]
    rep = iq.series_report(hs)
    assert rep["reasons"] == ["slice 4 missing between z=-100.0 and z=-80.0: resend the series"]


def test_other_shared_images_pass_alone():
    for rel in ("mr/MR1_UNC.dcm", "cr/RG3_UNC.dcm", "us/US1_UNC.dcm", "dx/dx_image.dcm"):
        path = DICOM_DIR / rel
        if not path.exists():
            continue
        rep = ic.check_series([pydicom.dcmread(path)])
        assert rep["verdict"] == iq.ACCEPTABLE, (rel, rep["reasons"])


def test_check_files_reports_unreadable_files_and_groups_series(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    files = sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[:5] + [junk]
    reps = ic.check_files(files)
    assert reps[str(junk)]["verdict"] == iq.UNACCEPTABLE
    assert "not readable as DICOM" in reps[str(junk)]["reasons"][0]
    series = [r for k, r in reps.items() if k != str(junk)]
    assert len(series) == 1 and series[0]["series"]["n_instances"] == 5
    assert series[0]["verdict"] == iq.ACCEPTABLE


def _rle(ds: pydicom.Dataset) -> pydicom.Dataset:
    from pydicom.uid import RLELossless

    out = copy.deepcopy(ds)
    out.compress(RLELossless)
    return out


def _cut_fragment(ds: pydicom.Dataset, keep: float) -> None:
    """Keep the first ``keep`` of the RLE frame's last segment: the RLE header and the
    encapsulation stay well-formed (ingest's structure check passes), only decoding
    shows the damage."""
    import struct

    from pydicom.encaps import encapsulate, generate_fragments

    frag = list(generate_fragments(ds.PixelData))[-1]  # after the Basic Offset Table
    nseg = struct.unpack_from("<L", frag, 0)[0]
    last = struct.unpack_from("<15L", frag, 4)[nseg - 1]
    cut = frag[:last + int((len(frag) - last) * keep)]
    ds.PixelData = encapsulate([cut + b"\0" * (len(cut) & 1)])


def test_damaged_compressed_pixels_are_unacceptable_and_named(ct):
    """A decoder is here and fails on the data: a reader would get a wrong or no image."""
    dss = [_rle(d) for d in ct[:5]]
    assert ic.check_series(dss)["verdict"] == iq.ACCEPTABLE  # RLE itself is fine
    _cut_fragment(dss[3], 0.5)
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    damaged = [r for r in rep["reasons"] if "pixel data damaged" in r]
    assert len(damaged) == 1 and damaged[0].startswith(
        f"instance {dss[3].InstanceNumber}: "), rep["reasons"]
    assert "resend it" in damaged[0]


def test_pixels_with_no_decoder_here_only_warn(ct):
    """No decoder for the transfer syntax here: not checked, said so, not held."""
    ds = copy.deepcopy(ct[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID("1.2.826.0.1.3680043.10.1419.99.1")
    assert ic.frames_of(ds) is None
    checks = {c["check"]: c for c in iq.instance_checks(ic.header_of(ds), ic.frames_of(ds))}
    assert checks["decodable"]["verdict"] == iq.WARNINGS
    assert "not checked" in checks["decodable"]["reason"]


def _with_raw_value(ds: pydicom.Dataset, tag: int, junk: bytes) -> pydicom.Dataset:
    """``ds`` written (explicit VR little endian) and read back with the value bytes of
    ``tag`` replaced (same length): what a corrupt file holds, and pydicom reads."""
    import io
    import struct

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + ds[tag].VR.encode()
    at = data.find(head)
    assert at > 0
    n = struct.unpack_from("<H", data, at + 6)[0]
    data[at + 8:at + 8 + n] = (junk * n)[:n]
    return pydicom.dcmread(io.BytesIO(bytes(data)))


@pytest.mark.parametrize("tag,junk,name", [
    (0x00200032, b"\xff", "ImagePositionPatient"),
    (0x00200037, b"-\x00", "ImageOrientationPatient"),
    (0x00200013, b"x", "InstanceNumber")])
def test_header_values_that_are_not_numbers_hold_the_series_not_crash_it(ct, tag, junk, name):
    """Found by mutating shared files: garbage in a DS/IS value made the gate raise
    ValueError (a release that crashed); now the instance is named and held."""
    dss = _fresh(ct[:5])
    n = dss[2].InstanceNumber
    dss[2] = _with_raw_value(dss[2], tag, junk)
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    hits = [r for r in rep["reasons"] if name in r and "not valid numbers" in r]
    assert len(hits) == 1, rep["reasons"]
    assert name == "InstanceNumber" or hits[0].startswith(f"instance {n}: ")


def test_rle_whose_rows_are_fewer_than_its_segments_hold_is_damaged(ct):
    """pydicom decodes an RLE segment longer than Rows x Columns with only a warning,
    into a cut image: the header does not describe the pixels, so the case is held."""
    ds = _rle(ct[0])
    ds.Rows = ds.Rows // 2
    got = ic.frames_of(ds)
    assert isinstance(got, iq.Damaged) and "needs" in got.error and "RLE segment" in got.error


@pytest.mark.parametrize("edit,words", [
    ({"PhotometricInterpretation": "RGB"}, "RGB with 1 samples per pixel (it means 3)"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "PALETTE COLOR (grey scale only)"),
    ({"PhotometricInterpretation": "XYZ"}, "'XYZ' (not a defined term)"),
    ({"RescaleSlope": "0"}, "Rescale Slope 0")])
def test_a_header_that_would_draw_a_wrong_image_is_unacceptable(ct, edit, words):
    """A CT whose photometric interpretation or rescale a viewer would follow into a
    wrong picture (found by setting header fields one by one): held, and said why."""
    dss = _fresh(ct[:3])
    for k, v in edit.items():
        setattr(dss[1], k, v)
    rep = ic.check_series(dss)
    assert rep["verdict"] == iq.UNACCEPTABLE
    assert any(words in r and r.startswith(f"instance {dss[1].InstanceNumber}: ")
               for r in rep["reasons"]), rep["reasons"]
