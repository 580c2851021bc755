"""Waveform codec: bit-exact on real ECG records, twins, hypothesis arrays, corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import wfdb
from _corrupt import assert_flip_and_cut_raise
from _data import ECG_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fenji.codecs.compress import waveform as wv

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _records(folder: str, limit: int | None = None) -> list[str]:
    names = (ECG_DIR / folder / "RECORDS").read_text().split()
    if limit is not None and len(names) > limit:
        step = len(names) / limit  # a deterministic spread over the whole list
        names = [names[int(i * step)] for i in range(limit)]
    return [f"{folder}/{n}" for n in names]


def _challenge_sample() -> list[str]:
    labels = json.loads((ECG_DIR / "challenge2011" / "labels.json").read_text())
    acc = sorted(k for k, v in labels.items() if v == "acceptable")[:14]
    bad = sorted(k for k, v in labels.items() if v != "acceptable")[:6]
    return [f"challenge2011/{n}" for n in acc + bad]


RECORDS = (_records("mitdb") + _challenge_sample() + _records("cinc2021", 4)
           + _records("cpsc2021", 3) + _records("ptb"))


@pytest.mark.parametrize("rec", RECORDS)
def test_wfdb_record_bit_exact(rec: str) -> None:
    r = wfdb.rdrecord(str(ECG_DIR / rec), physical=False)
    x = np.asarray(r.d_signal)
    assert x.min() >= -32768 and x.max() <= 32767
    x = x.astype("<i2")
    enc = wv.waveform_encode(x)
    out = wv.waveform_decode(enc)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)
    assert len(enc) < x.nbytes  # cpsc2021 (float-derived, 16-bit noise) only reaches ~1.3x


@st.composite
def waves(draw, max_n: int = 300, max_ch: int = 4):  # type: ignore[no-untyped-def]
    dtype = np.dtype(draw(st.sampled_from(["<i2", "<u2", "|i1", "|u1"])))
    n = draw(st.integers(1, max_n))
    ch = draw(st.integers(1, max_ch))
    info = np.iinfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["noise", "walk", "constant", "extreme", "derived"]))
    if kind == "noise":
        a = rng.integers(info.min, info.max, size=(n, ch), endpoint=True)
    elif kind == "walk":
        a = np.clip(np.cumsum(rng.integers(-20, 21, size=(n, ch)), axis=0), info.min, info.max)
    elif kind == "constant":
        a = np.full((n, ch), draw(st.integers(int(info.min), int(info.max))))
    elif kind == "extreme":
        a = rng.choice([int(info.min), int(info.max)], size=(n, ch))
    else:
        base = np.cumsum(rng.integers(-5, 6, size=(n, 2)), axis=0) // 2
        a = np.column_stack([base, base[:, 1] - base[:, 0], -(base[:, 0] + base[:, 1]) // 2])
        a = np.clip(a, info.min, info.max)
    return a.astype(dtype)


@SETTINGS
@given(waves(), st.sampled_from(["fast", "max"]))
def test_round_trip(x: np.ndarray, effort: str) -> None:
    before = x.copy()
    out = wv.waveform_decode(wv.waveform_encode(x, effort=effort))
    np.testing.assert_array_equal(x, before)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out, x)


@settings(max_examples=10, deadline=None)
@given(waves(max_n=120, max_ch=3))
def test_kernels_equal_twins(x: np.ndarray) -> None:
    enc_nb = wv.waveform_encode(x)
    assert wv.waveform_encode(x, _impl="py") == enc_nb
    np.testing.assert_array_equal(wv.waveform_decode(enc_nb, _impl="py"), x)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(2, 300), st.integers(0, 2**32 - 1))
def test_inter_lead_kernel_equals_twin(nch: int, n: int, seed: int) -> None:
    # correlated leads (sums of a few sources, as a 12-lead ECG's are) and noise
    rng = np.random.default_rng(seed)
    src = rng.integers(-300, 300, (n, 3)).cumsum(axis=0)
    mix = rng.integers(-2, 3, (3, nch))
    x = (src @ mix + rng.integers(-3, 4, (n, nch))).clip(-32768, 32767).astype("<i2")
    wide = x.astype(np.int64)
    assert wv._inter_lead(wide, wv._inter_nb) == wv._inter_lead(wide)


def test_inter_lead_kernel_equals_twin_on_a_12_lead_record() -> None:
    rec = wfdb.rdrecord(str(ECG_DIR / "ptb" / _records("ptb")[0].split("/", 1)[1]),
                        physical=False)
    wide = np.asarray(rec.d_signal[:3000], dtype=np.int64)
    assert wide.shape[1] >= 12
    assert wv._inter_lead(wide, wv._inter_nb) == wv._inter_lead(wide)


def test_flat_leads_compress_to_almost_nothing() -> None:
    # challenge2011's unacceptable records hold constant leads: a few bytes, still exact
    x = np.full((5000, 12), -16000, dtype="<i2")
    enc = wv.waveform_encode(x)
    assert len(enc) < 400
    np.testing.assert_array_equal(wv.waveform_decode(enc), x)


def test_one_dimensional_is_one_channel() -> None:
    x = (np.arange(100) % 7).astype("<i2")
    np.testing.assert_array_equal(wv.waveform_decode(wv.waveform_encode(x))[:, 0], x)


def test_derived_leads_cost_almost_nothing() -> None:
    rng = np.random.default_rng(5)
    base = np.cumsum(rng.integers(-9, 10, size=(5000, 2)), axis=0)
    with_derived = np.column_stack([base, base[:, 1] - base[:, 0]]).astype("<i2")
    a = len(wv.waveform_encode(base.astype("<i2")))
    b = len(wv.waveform_encode(with_derived))
    assert b < a * 1.05


@SETTINGS
@given(st.data())
def test_corruption_raises(data: st.DataObject) -> None:
    x = (np.sin(np.arange(800) / 9.0)[:, None] * [900, 300]).astype("<i2")
    assert_flip_and_cut_raise(wv.waveform_encode(x), wv.waveform_decode, data)
