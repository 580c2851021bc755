"""Frozen v1 fixtures: streams an older fenji wrote must decode, and the encoders must not drift.

The fixtures in ``tests/fixtures/frozen/`` were made once by
``tests/fixtures/make_frozen.py`` (``index.json`` says with which versions) and are
never regenerated for the same format version.  Each run checks:

* decode: every encoded fixture decodes to exactly its source (values, dtype,
  shape; instance and bundle byte for byte), with the Numba kernels and, for
  small ones, with their plain-Python twins;
* re-encode: encoding the source again gives the committed bytes.  Pixel and
  waveform streams are computed with integer arithmetic (the waveform encoder's
  LPC fit is float64, but only its rounded coefficients enter the stream), so they
  must match exactly.  Instance and bundle containers hold a zstd header blob:
  zstd promises the same output only for the same libzstd version, so when the
  installed libzstd differs from the one in ``index.json`` the test compares
  everything except those blobs (the pixel/waveform payload blobs byte for byte,
  and the decoded result).
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard

from fenji.codecs.compress.bundle import (
    BundleReader,
    InstanceEvent,
    make_preview,
    plan_bundle,
    read_bundle,
    stream_bundle,
)
from fenji.codecs.compress.instance import decode_instance, encode_instance, instance_info
from fenji.codecs.compress.pixel import pixel_decode, pixel_encode
from fenji.codecs.compress.waveform import waveform_decode, waveform_encode

FROZEN = Path(__file__).resolve().parents[1] / "fixtures" / "frozen"
INDEX: dict[str, Any] = json.loads((FROZEN / "index.json").read_text(encoding="utf-8"))
SAME_ZSTD = ".".join(str(v) for v in zstandard.ZSTD_VERSION) == INDEX["generated_with"]["libzstd"]
PY_TWIN_MAX = 4096  # samples: the plain-Python decoders are slow, run them on small fixtures


def _cases(fmt: str) -> list[Any]:
    return [pytest.param(e, id=f"{fmt}-{e['n']:02d}") for e in INDEX[fmt]]


def _read(rel: str) -> bytes:
    return (FROZEN / rel).read_bytes()


def _array(rel: str) -> np.ndarray:
    data = _read(rel)
    if rel.endswith(".gz"):
        data = gzip.decompress(data)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _assert_same_array(out: np.ndarray, src: np.ndarray) -> None:
    assert out.dtype == src.dtype and out.shape == src.shape
    np.testing.assert_array_equal(out, src)


def test_index_covers_every_file_and_stays_small() -> None:
    listed = {"index.json"}
    for fmt in ("pixel", "waveform", "instance"):
        assert INDEX[fmt], f"no frozen {fmt} fixture"
        for e in INDEX[fmt]:
            listed |= {e["source"], e["encoded"]}
    assert INDEX["bundle"]
    for e in INDEX["bundle"]:
        listed |= {e["encoded"], *e["instances"], *(p["array"] for p in e["previews"])}
    on_disk = {str(p.relative_to(FROZEN)) for p in FROZEN.rglob("*") if p.is_file()}
    assert on_disk == listed
    total = sum((FROZEN / p).stat().st_size for p in on_disk)
    assert total < 1 << 20, f"frozen fixtures take {total} bytes, more than 1 MiB"


# --------------------------------------------------------------------------- pixel


@pytest.mark.parametrize("e", _cases("pixel"))
def test_pixel_fixture_decodes(e: dict[str, Any]) -> None:
    src = _array(e["source"])
    assert src.dtype.str == e["dtype"] and list(src.shape) == e["shape"]
    enc = _read(e["encoded"])
    _assert_same_array(pixel_decode(enc), src)
    _assert_same_array(pixel_decode(enc, _impl="snb"), src)
    if src.size <= PY_TWIN_MAX:
        _assert_same_array(pixel_decode(enc, _impl="py"), src)


@pytest.mark.parametrize("e", _cases("pixel"))
def test_pixel_fixture_reencodes_byte_identical(e: dict[str, Any]) -> None:
    src = _array(e["source"])
    assert pixel_encode(src, **e["encode"]) == _read(e["encoded"])


def test_pixel_fixtures_cover_the_format() -> None:
    fx = INDEX["pixel"]
    assert {e["dtype"] for e in fx} == {"|u1", "|i1", "<u2", "<i2"}
    assert {e["mode"] for e in fx} >= {0, 2}  # MED and the weighted blend
    assert any(e["packed"] for e in fx) and any(e["encode"].get("rct") for e in fx)
    assert any(len(e["shape"]) == 4 for e in fx) and any(len(e["shape"]) == 3 for e in fx)


# --------------------------------------------------------------------------- waveform


@pytest.mark.parametrize("e", _cases("waveform"))
def test_waveform_fixture_decodes(e: dict[str, Any]) -> None:
    src = _array(e["source"])
    enc = _read(e["encoded"])
    out = waveform_decode(enc)
    want = src if src.ndim == 2 else src[:, None]  # 1-D input is one channel
    _assert_same_array(out, want)
    _assert_same_array(waveform_decode(enc, _impl="py"), want)


@pytest.mark.parametrize("e", _cases("waveform"))
def test_waveform_fixture_reencodes_byte_identical(e: dict[str, Any]) -> None:
    assert waveform_encode(_array(e["source"]), **e["encode"]) == _read(e["encoded"])


# --------------------------------------------------------------------------- instance


def _reference(e: dict[str, Any]) -> bytes | None:
    ref = e["encode"].get("reference")
    return None if ref is None else _read(INDEX["instance"][ref]["source"])


def _payload_blobs(enc: bytes) -> bytes:
    """The pixel/waveform/zstd payload blobs of an encoded instance: they sit after
    the header blob, just before the CRC."""
    n = sum(p["encoded_bytes"] for p in instance_info(enc)["payloads"])
    return enc[len(enc) - 4 - n:len(enc) - 4]


def _assert_same_instance(new: bytes, old: bytes) -> None:
    if SAME_ZSTD:
        assert new == old
        return
    a, b = instance_info(new), instance_info(old)
    assert a["payloads"] == b["payloads"] and a["blake2b_128"] == b["blake2b_128"]
    assert _payload_blobs(new) == _payload_blobs(old)


@pytest.mark.parametrize("e", _cases("instance"))
def test_instance_fixture_decodes(e: dict[str, Any]) -> None:
    enc = _read(e["encoded"])
    assert decode_instance(enc, reference=_reference(e)) == _read(e["source"])
    assert [p["codec"] for p in instance_info(enc)["payloads"]] == e["codecs"]


@pytest.mark.parametrize("e", _cases("instance"))
def test_instance_fixture_reencodes(e: dict[str, Any]) -> None:
    new = encode_instance(_read(e["source"]), effort=e["encode"]["effort"],
                          reference=_reference(e))
    _assert_same_instance(new, _read(e["encoded"]))


# --------------------------------------------------------------------------- bundle


@pytest.mark.parametrize("e", _cases("bundle"))
def test_bundle_fixture_decodes(e: dict[str, Any]) -> None:
    manifest, previews, instances = read_bundle(_read(e["encoded"]))
    assert manifest["case"] == e["case"]
    assert instances == [_read(p) for p in e["instances"]]
    assert any(m.get("reference") is not None for m in manifest["instances"])
    assert [(p.kind, p.meta) for p in previews] == [(p["kind"], p["meta"]) for p in e["previews"]]
    for p, want in zip(previews, e["previews"], strict=True):
        _assert_same_array(p.array(), _array(want["array"]))


@pytest.mark.parametrize("e", _cases("bundle"))
def test_bundle_fixture_reencodes(e: dict[str, Any]) -> None:
    insts = [_read(p) for p in e["instances"]]
    if e.get("version") == 2:  # streamed: no offsets in the manifest
        streamed = stream_bundle(e["case"], insts, [make_preview(p) for p in insts],
                                 **e["encode"])
        new, old = streamed.to_bytes(), _read(e["encoded"])
        assert streamed.manifest == read_bundle(old)[0]  # known before encoding, the same
        if SAME_ZSTD:
            assert new == old
            return
        for a, b in zip(_instance_payloads(new), _instance_payloads(old), strict=True):
            _assert_same_instance(a, b)
        return
    plan = plan_bundle(e["case"], insts, [make_preview(p) for p in insts], **e["encode"])
    new, old = plan.to_bytes(), _read(e["encoded"])
    if SAME_ZSTD:
        assert new == old
        return
    # the manifest holds encoded sizes and offsets, which move with the header blobs
    old_manifest, _p, _i = read_bundle(old)
    for a, b in zip(plan.manifest["instances"], old_manifest["instances"], strict=True):
        enc_a = new[a["offset"] + 24:a["offset"] + 24 + a["encoded_size"]]
        enc_b = old[b["offset"] + 24:b["offset"] + 24 + b["encoded_size"]]
        _assert_same_instance(enc_a, enc_b)
    for a, b in zip(plan.manifest["previews"], old_manifest["previews"], strict=True):
        assert new[a["offset"]:a["offset"] + a["size"]] == old[b["offset"]:b["offset"] + b["size"]]


def _instance_payloads(bundle: bytes) -> list[bytes]:
    """Each INST section's payload, found by its self-delimiting header (version 2)."""
    reader = BundleReader()
    offsets = [ev.offset for ev in reader.feed(bundle) if isinstance(ev, InstanceEvent)]
    out = []
    for off in offsets:
        n = int.from_bytes(bundle[off + 12:off + 20], "little")
        out.append(bundle[off + 24:off + 24 + n])
    return out


def test_v1_and_v2_fixtures_both_there() -> None:
    """Bundles wait in outboxes across upgrades: every version written stays readable."""
    assert {e.get("version", 1) for e in INDEX["bundle"]} == {1, 2}
