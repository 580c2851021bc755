"""encode_instance/decode_instance: byte-exact on every shared and pydicom file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom.data
import pytest
from _corrupt import assert_flip_and_cut_raise
from _data import DICOM_DIR, good_files, malformed_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenji.codecs import decode_instance, encode_instance, instance_info
from fenji.codecs.errors import DecodeError, FenjiError


def _pydicom_files() -> list[Path]:
    return sorted(Path(p) for p in pydicom.data.get_testdata_files() if Path(p).is_file())


def _id(p: Path) -> str:
    return p.name


def _round_trip(path: Path, effort: str = "fast") -> dict:
    data = path.read_bytes()
    try:
        enc = encode_instance(data, effort=effort)
    except FenjiError:
        return {}  # a typed refusal is allowed; a crash or a wrong result is not
    assert decode_instance(enc) == data
    info = instance_info(enc)
    assert info["original_bytes"] == len(data)
    assert len(enc) <= len(data) + 256  # never expanded beyond the container
    return info


@pytest.mark.parametrize("path", good_files(), ids=_id)
def test_shared_good_files(path: Path) -> None:
    info = _round_trip(path)
    assert info, f"{path} refused"


@pytest.mark.parametrize("path", malformed_files(), ids=_id)
def test_shared_malformed_files(path: Path) -> None:
    _round_trip(path)


def test_pydicom_test_files() -> None:
    files = _pydicom_files()
    assert len(files) > 100
    for path in files:
        _round_trip(path)


@pytest.mark.parametrize("name", ["ct/CT_0014.dcm", "ecg/waveform_ecg_12lead.dcm",
                                  "us/US1_UNC.dcm", "dx/dx_image.dcm"])
def test_max_effort(name: str) -> None:
    info = _round_trip(DICOM_DIR / name, effort="max")
    assert info["ratio"] > 1.5


def test_specialised_codecs_are_chosen() -> None:
    def codecs(name: str) -> list[str]:
        info = instance_info(encode_instance((DICOM_DIR / name).read_bytes()))
        return [p["codec"] for p in info["payloads"]]

    assert codecs("ct/CT_0001.dcm") == ["pixel"]
    assert codecs("other/ct_implicit_vr_le.dcm") == ["pixel"]
    assert codecs("other/ct_explicit_vr_big_endian.dcm") == ["pixel"]
    assert codecs("ecg/waveform_ecg_12lead.dcm") == ["waveform", "waveform"]
    assert codecs("other/enhanced_ct_2frame.dcm") == ["pixel"]
    assert codecs("us/US1_UNC.dcm") == ["pixel"]
    # already compressed: never expanded, never run through the pixel codec
    assert set(codecs("other/ct_jpegls_lossless.dcm")) <= {"raw", "zstd"}


def test_same_pixels_same_payload_whatever_the_syntax() -> None:
    def pixel_bytes(name: str) -> int:
        info = instance_info(encode_instance((DICOM_DIR / name).read_bytes()))
        return info["payloads"][0]["encoded_bytes"]

    assert pixel_bytes("other/ct_implicit_vr_le.dcm") == pixel_bytes(
        "other/ct_explicit_vr_big_endian.dcm")


@pytest.fixture(scope="module")
def encoded() -> tuple[bytes, bytes]:
    data = (DICOM_DIR / "mr" / "ge_epi_axial" / "MR_0001.dcm").read_bytes()
    return data, encode_instance(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_corrupted_or_truncated_raises(encoded: tuple[bytes, bytes], data: st.DataObject) -> None:
    _orig, enc = encoded
    assert_flip_and_cut_raise(enc, decode_instance, data)


def test_garbage_and_other_versions_raise(encoded: tuple[bytes, bytes]) -> None:
    _orig, enc = encoded
    for bad in (b"", b"FJIN", b"\x00" * 100, b"XXXX" + enc[4:], enc[:4] + b"\x09" + enc[5:]):
        with pytest.raises(DecodeError):
            decode_instance(bad)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_round_trip(blob: bytes) -> None:
    assert decode_instance(encode_instance(blob)) == blob
    prefixed = b"\x00" * 128 + b"DICM" + blob
    assert decode_instance(encode_instance(prefixed)) == prefixed


def test_sha_of_decoded_equals_original() -> None:
    data = (DICOM_DIR / "ct" / "CT_0001.dcm").read_bytes()
    out = decode_instance(encode_instance(data))
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_mutated_dicom_round_trips(data: st.DataObject) -> None:
    """Damaged input (bytes changed, cut, inserted) is encoded exactly, never crashes."""
    src = bytearray((DICOM_DIR / "dx" / "dx_image.dcm").read_bytes())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        kind = data.draw(st.sampled_from(["set", "cut", "insert"]), label="kind")
        i = data.draw(st.integers(0, len(src) - 1), label="at")
        if kind == "set":
            src[i] = data.draw(st.integers(0, 255), label="byte")
        elif kind == "cut":
            del src[i:i + data.draw(st.integers(1, 64), label="n")]
        else:
            src[i:i] = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    blob = bytes(src)
    assert decode_instance(encode_instance(blob)) == blob
