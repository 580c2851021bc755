"""Bundle: streaming, resumable, verified; corruption and truncation raise DecodeError."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
from _corrupt import assert_flip_and_cut_raise
from _data import DICOM_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenji.codecs import (
    BundleReader,
    EndEvent,
    InstanceEvent,
    ManifestEvent,
    PreviewEvent,
    make_preview,
    plan_bundle,
    read_bundle,
    write_bundle,
)
from fenji.codecs.compress.bundle import Preview, stream_bundle
from fenji.codecs.errors import DecodeError

NAMES = ["mr/ge_epi_axial/MR_0001.dcm", "mr/ge_epi_axial/MR_0002.dcm",
         "ecg/waveform_ecg_12lead.dcm", "dx/dx_image.dcm", "other/sr_tid1500_measurements.dcm"]
CASE = {"case_id": "C-1", "priority": "STAT", "question": "肺炎?", "attestation": {"ok": True}}


@pytest.fixture(scope="module")
def instances() -> list[bytes]:
    return [(DICOM_DIR / n).read_bytes() for n in NAMES]


@pytest.fixture(scope="module")
def bundle(instances: list[bytes]) -> tuple[bytes, list[bytes]]:
    previews = [make_preview(instances[0]), make_preview(instances[2])]
    return plan_bundle(CASE, instances, previews).to_bytes(), instances


def test_round_trip_and_manifest(bundle: tuple[bytes, list[bytes]]) -> None:
    data, originals = bundle
    manifest, previews, out = read_bundle(data)
    assert out == originals
    assert manifest["case"] == CASE
    assert [e["sha256"] for e in manifest["instances"]] == [
        hashlib.sha256(o).hexdigest() for o in originals]
    assert [p.kind for p in previews] == ["image", "ecg"]
    img = previews[0].array()
    assert img.dtype == np.uint8 and img.ndim == 2
    ecg = previews[1].array()
    assert ecg.dtype == np.int16 and ecg.shape[1] == 1 and previews[1].meta["fs_hz"] > 0


def test_offsets_address_sections(bundle: tuple[bytes, list[bytes]]) -> None:
    data, originals = bundle
    manifest, _, _ = read_bundle(data)
    for e in manifest["instances"] + manifest["previews"]:
        kind = data[e["offset"]:e["offset"] + 4]
        assert kind in (b"INST", b"PREV")
    assert data[manifest["end_offset"]:manifest["end_offset"] + 4] == b"END."


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.integers(1, 40000), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_events(bundle: tuple[bytes, list[bytes]],
                                            sizes: list[int]) -> None:
    data, originals = bundle
    reader = BundleReader()
    events = []
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        events += reader.feed(data[pos:pos + n])
        pos += n
        i += 1
    reader.close()
    assert reader.complete and reader.offset == len(data)
    kinds = [type(e) for e in events]
    assert kinds == [ManifestEvent, PreviewEvent, PreviewEvent] + [InstanceEvent] * len(
        originals) + [EndEvent]
    assert [e.data for e in events if isinstance(e, InstanceEvent)] == originals


def test_instances_arrive_as_their_bytes_arrive(bundle: tuple[bytes, list[bytes]]) -> None:
    data, originals = bundle
    manifest, _, _ = read_bundle(data)
    reader = BundleReader()
    first = manifest["instances"][1]
    evs = reader.feed(data[:first["offset"] + first["size"]])
    got = [e.index for e in evs if isinstance(e, InstanceEvent)]
    assert got == [0, 1]
    with pytest.raises(DecodeError, match="truncated"):
        reader.close()


def test_resume_from_any_offset(instances: list[bytes]) -> None:
    plan = plan_bundle(CASE, instances)
    whole = plan.to_bytes()
    assert plan.size == len(whole)
    for start in (0, 1, 100, plan.sections[2].offset, plan.size - 3, plan.size):
        assert b"".join(plan.iter_bytes(start, chunk_size=777)) == whole[start:]
    assert b"".join(write_bundle(CASE, instances)) == whole


def test_skip_already_stored(bundle: tuple[bytes, list[bytes]]) -> None:
    data, _ = bundle
    reader = BundleReader(skip={0, 2})
    evs = reader.feed(data)
    reader.close()
    assert [e.index for e in evs if isinstance(e, InstanceEvent)] == [1, 3, 4]


def test_pre_encoded_instances_are_used(instances: list[bytes]) -> None:
    from fenji.codecs import encode_instance

    enc = [encode_instance(instances[0]), None]
    plan = plan_bundle({}, instances[:2], encoded=enc)
    assert read_bundle(plan.to_bytes())[2] == instances[:2]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_bit_flips_and_truncation_raise(bundle: tuple[bytes, list[bytes]],
                                       data: st.DataObject) -> None:
    blob, _ = bundle
    assert_flip_and_cut_raise(blob, read_bundle, data)


def test_structural_errors(bundle: tuple[bytes, list[bytes]]) -> None:
    blob, _ = bundle
    with pytest.raises(DecodeError, match="magic"):
        read_bundle(b"XXXX" + blob[4:])
    with pytest.raises(DecodeError, match="after the end"):
        read_bundle(blob + b"\x00")
    with pytest.raises(DecodeError, match="version"):
        read_bundle(blob[:4] + b"\x02" + blob[5:])
    r = BundleReader()
    r.feed(blob)
    with pytest.raises(DecodeError):
        r.feed(b"more")


def test_case_must_be_json() -> None:
    with pytest.raises(ValueError, match="JSON"):
        plan_bundle({"when": object()}, [b"x"])


@pytest.mark.parametrize("keyword,value,drawn", [
    ("RescaleSlope", "1,0", False), ("RescaleIntercept", "nan", False),
    ("WindowCenter", "x", True), ("WindowWidth", "-5", True)])
def test_preview_with_header_values_that_are_not_numbers(keyword: str, value: str,
                                                           drawn: bool) -> None:
    """A rescale that is not a finite number gets no preview (not one drawn with a
    guess, not a ValueError: found by mutating shared files); a bad window falls back
    to the image's own range."""
    import io

    import pydicom

    ds = pydicom.dcmread(sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[0])
    ds[keyword].value = "0"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = bytearray(buf.getvalue())
    tag = ds[keyword].tag
    head = tag.group.to_bytes(2, "little") + tag.element.to_bytes(2, "little") + b"DS"
    at = data.find(head)
    assert at > 0
    raw = value.encode() + b" " * (len(value) & 1)
    data[at + 6:at + 8] = len(raw).to_bytes(2, "little")
    data[at + 8:at + 10] = raw  # the "0 " written above, replaced
    got = make_preview(bytes(data))
    assert (got is not None) == drawn
    if got is not None:
        assert got.meta["rows"] > 0


@pytest.mark.parametrize("name", ["other/us_jpeg_baseline_lossy.dcm",
                                  "us/us_multiframe_ybr_jpeg_cine.dcm"])
def test_ybr_preview_has_the_colours_of_the_image(name: str) -> None:
    """pydicom's pixel_array is already RGB for YBR_FULL(_422): the preview converted
    it again, a green/purple tint on every colour ultrasound (found in session 10).
    The JPEG copy of US1_UNC must preview as the RGB original does; the cine's
    preview must equal its middle frame, block-averaged, as decoded."""
    import io

    import pydicom

    got = make_preview((DICOM_DIR / name).read_bytes())
    assert got is not None
    img = got.array().astype(np.float64)
    if name.startswith("other/"):
        ref = make_preview((DICOM_DIR / "us" / "US1_UNC.dcm").read_bytes())
        assert ref is not None and ref.array().shape == img.shape
        assert np.abs(ref.array().astype(np.float64) - img).mean() < 2.0
    else:
        ds = pydicom.dcmread(io.BytesIO((DICOM_DIR / name).read_bytes()))
        frame = ds.pixel_array[int(ds.NumberOfFrames) // 2].astype(np.float64)
        k = got.meta["scale"]
        r, c = frame.shape[0] // k * k, frame.shape[1] // k * k
        small = frame[:r, :c].reshape(r // k, k, c // k, k, 3).mean(axis=(1, 3))
        want = (small * 255.0 / (2 ** int(ds.BitsStored) - 1)).round().clip(0, 255)
        assert np.abs(want - img).max() <= 1.0


@pytest.mark.parametrize("name", ["us/gdcm-US-ALOKA-16.dcm", "us/US1_UNC.dcm"])
def test_palette_and_rgb_previews_keep_colour_and_brightness(name: str) -> None:
    """A PALETTE COLOR image previews through its LUTs (it was the indices, in grey),
    and a colour image keeps its brightness: white is the largest value the samples
    hold, not the brightest pixel (a dark photo was stretched)."""
    import io

    import pydicom
    from pydicom.pixels import apply_color_lut

    data = (DICOM_DIR / name).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "RGB":        # a dark photo: at most 127 of 255
        arr = arr // 2
        ds.PixelData = arr.tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue()
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        white = float(np.iinfo(arr.dtype).max)
    else:
        white = float(2 ** int(ds.BitsStored) - 1)
    got = make_preview(data)
    assert got is not None
    img = got.array()
    assert img.ndim == 3 and img.shape[2] == 3
    want = arr.reshape(-1, 3).mean(axis=0) * 255.0 / white
    assert np.abs(img.reshape(-1, 3).mean(axis=0) - want).max() < 1.0


def test_preview_of_non_image_is_none_and_serialises() -> None:
    assert make_preview(b"not dicom") is None
    sr = (DICOM_DIR / "other" / "sr_tid1500_measurements.dcm").read_bytes()
    assert make_preview(sr) is None
    p = Preview("image", {"a": 1}, b"xyz")
    assert Preview.from_bytes(p.to_bytes()) == p
    with pytest.raises(DecodeError):
        Preview.from_bytes(b"\xff\xff\xff\xff{")
    assert json.loads(p.to_bytes()[4:-3])["kind"] == "image"


def test_series_instances_reference_their_key_instance() -> None:
    from fenji.codecs import decode_instance, encode_instance

    ct = [(DICOM_DIR / "ct" / f"CT_{i:04d}.dcm").read_bytes() for i in (1, 2, 3)]
    others = [(DICOM_DIR / "dx" / "dx_image.dcm").read_bytes()]
    items = [ct[0], others[0], ct[1], ct[2]]
    plan = plan_bundle({}, items)
    refs = [e.get("reference") for e in plan.manifest["instances"]]
    assert refs == [None, None, 0, 0]
    alone = plan_bundle({}, items, series_reference=False)
    assert plan.size < alone.size - 2 * 2000  # ~2.4 KB of CT header saved per slice
    data = plan.to_bytes()
    assert read_bundle(data)[2] == items
    # the key instance is skipped (already stored) but still decoded for the others
    r = BundleReader(skip={0})
    evs = r.feed(data)
    r.close()
    assert [e.index for e in evs if isinstance(e, InstanceEvent)] == [1, 2, 3]
    # a dependent instance alone is refused, with its reference it decodes
    enc = encode_instance(ct[1], reference=ct[0])
    with pytest.raises(DecodeError, match="reference"):
        decode_instance(enc)
    with pytest.raises(DecodeError, match="reference"):
        decode_instance(enc, reference=ct[2][:1000] + b"x")
    assert decode_instance(enc, reference=ct[0]) == ct[1]
    # pre-encoded instances must follow choose_references
    ok = plan_bundle({}, items, encoded=[None, None, enc, None])
    assert read_bundle(ok.to_bytes())[2] == items
    wrong = encode_instance(ct[2], reference=ct[1])
    with pytest.raises(ValueError, match="reference"):
        plan_bundle({}, items, encoded=[None, None, None, wrong])


# --------------------------------------------------------------------------- version 2


@pytest.fixture(scope="module")
def streamed(instances: list[bytes]) -> tuple[bytes, dict[str, Any], list[bytes]]:
    previews = [make_preview(instances[0]), make_preview(instances[2])]
    s = stream_bundle(CASE, instances, previews)
    return s.to_bytes(), s.manifest, instances


def test_v2_round_trip_manifest_known_before_encoding(instances: list[bytes]) -> None:
    """The manifest (and so the hash a report binds to) exists before any instance is
    encoded, and the first chunk of the stream is the whole manifest section."""
    s = stream_bundle(CASE, instances, [make_preview(instances[0])])
    assert s.manifest["version"] == 2 and "end_offset" not in s.manifest
    assert [(e["sha256"], e["size"]) for e in s.manifest["instances"]] == [
        (hashlib.sha256(b).hexdigest(), len(b)) for b in instances]
    first = next(s.iter_bytes())
    events = BundleReader().feed(first)
    assert [type(e) for e in events] == [ManifestEvent]
    assert events[0].manifest == json.loads(json.dumps(s.manifest))
    manifest, previews, out = read_bundle(s.to_bytes())
    assert out == instances and manifest == s.manifest and len(previews) == 1


def test_v2_any_chunking_gives_the_same_events(
        streamed: tuple[bytes, dict[str, Any], list[bytes]]) -> None:
    blob, _, originals = streamed
    for size in (1, 7, 24, 4096):
        r = BundleReader()
        events = [ev for i in range(0, len(blob), size) for ev in r.feed(blob[i:i + size])]
        r.close()
        assert [e.data for e in events if isinstance(e, InstanceEvent)] == originals
        assert isinstance(events[-1], EndEvent)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.data())
def test_v2_bit_flips_and_truncation_raise(
        streamed: tuple[bytes, dict[str, Any], list[bytes]], data: st.DataObject) -> None:
    blob, _, _ = streamed
    assert_flip_and_cut_raise(blob, read_bundle, data)


def test_v2_structural_errors(streamed: tuple[bytes, dict[str, Any], list[bytes]]) -> None:
    blob, _, _ = streamed
    with pytest.raises(DecodeError, match="version"):  # a v2 stream with a v1 start
        read_bundle(blob[:4] + b"\x01" + blob[5:])
    with pytest.raises(DecodeError, match="not supported"):
        read_bundle(blob[:4] + b"\x03" + blob[5:])
    # an instance section dropped: the trailer's count and digest, or the order, catch it
    r = BundleReader()
    offsets = [ev.offset for ev in r.feed(blob) if isinstance(ev, InstanceEvent)]
    with pytest.raises(DecodeError):
        read_bundle(blob[:offsets[1]] + blob[offsets[2]:])
    with pytest.raises(DecodeError, match="truncated"):
        r = BundleReader()
        r.feed(blob[:offsets[-1]])
        r.close()
