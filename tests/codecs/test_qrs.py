"""QRS kernels: Numba == Python twin on hypothesis arrays and real excerpts; RR stats."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.ecg import qrs_cv
from fenji.codecs.ecg import beats, qrs, qrs_slope
from tests.conftest import ECG_DIR

floats = st.floats(-20.0, 20.0, allow_nan=False, allow_infinity=False)
pos = st.floats(0.0, 50.0, allow_nan=False, allow_infinity=False)
rates = st.sampled_from([200.0, 360.0, 500.0, 1000.0])


@settings(max_examples=50, deadline=None)
@given(x=arrays(np.float64, st.integers(0, 600), elements=floats), w=st.integers(1, 90))
def test_feature_kernels_equal_twins(x, w):
    np.testing.assert_allclose(qrs._mwi_nb(x, w), qrs._mwi_py(x, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(qrs._abs_slope_nb(x), qrs._abs_slope_py(x))
    np.testing.assert_allclose(qrs_slope._smooth_abs_slope_nb(x, w),
                               qrs_slope._smooth_abs_slope_py(x, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(qrs._local_maxima_nb(x), qrs._local_maxima_py(x))
    h = 1 + w % 5
    np.testing.assert_array_equal(qrs._despike_nb(x, h, w + 2 * h, 3.0),
                                  qrs._despike_py(x, h, w + 2 * h, 3.0))
    if x.size:
        ax = np.abs(x)
        np.testing.assert_array_equal(qrs._running_level_nb(ax, w), qrs._running_level_py(ax, w))


@settings(max_examples=60, deadline=None)
@given(mwi=arrays(np.float64, st.integers(3, 3000), elements=pos), fs=rates,
       hf=st.sampled_from([0.0, qrs.T_HF_MIN, 0.9]),
       hq=st.sampled_from([np.inf, 0.8]), tries=st.sampled_from([1, 3]), split=st.booleans())
def test_decision_kernels_equal_twins(mwi, fs, hf, hq, tries, split):
    slope = np.sqrt(mwi)
    slope_t = slope * (0.3 + 0.7 * (np.arange(mwi.size) % 7) / 6.0)   # the 8-15 Hz share varies
    cand = qrs._local_maxima_py(mwi)
    peaks = qrs._pt_decide_py(mwi, slope_t, cand, fs, slope, hf, hq)
    np.testing.assert_array_equal(qrs._pt_decide_nb(mwi, slope_t, cand, fs, slope, hf, hq),
                                  peaks)
    g = qrs._gapfill_py(slope, peaks, fs, qrs.GAP_REL, qrs.GAP_SNR, slope_t, hf, tries, split)
    np.testing.assert_array_equal(
        qrs._gapfill_nb(slope, peaks, fs, qrs.GAP_REL, qrs.GAP_SNR, slope_t, hf, tries, split), g)
    assert np.all(np.diff(g) > 0)
    np.testing.assert_array_equal(qrs._refine_nb(mwi, g, int(0.1 * fs), int(0.2 * fs)),
                                  qrs._refine_py(mwi, g, int(0.1 * fs), int(0.2 * fs)))
    blk, refr = int(2.5 * fs), int(0.25 * fs)
    np.testing.assert_array_equal(qrs_slope._block_detect_nb(mwi, blk, refr),
                                  qrs_slope._block_detect_py(mwi, blk, refr))


sorted_ints = st.lists(st.integers(0, 5000), max_size=80).map(
    lambda v: np.array(sorted(set(v)), dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(a=sorted_ints, b=sorted_ints, tol=st.integers(0, 60))
def test_match_kernel_equals_twin_and_is_symmetric(a, b, tol):
    m = beats._match_py(a, b, tol)
    assert beats._match_nb(a, b, tol) == m
    assert beats._match_py(b, a, tol) == m
    assert m <= min(a.size, b.size)


@settings(max_examples=40, deadline=None)
@given(a=sorted_ints, b=sorted_ints, la=st.integers(0, 2), lb=st.integers(0, 2))
def test_lead_choice_kernel_equals_twin(a, b, la, lb):
    al = (np.arange(a.size) + la) % 3
    bl = (np.arange(b.size) + lb) % 3
    args = (a, al.astype(np.int64), b, bl.astype(np.int64), 3, 5001, 1000, 54, 0.05)
    np.testing.assert_array_equal(beats._choose_nb(*args), beats._choose_py(*args))
    assert beats._choose_py(*args).shape == (6,)


@pytest.mark.parametrize("path,lead,start_s", [
    ("mitdb/100", 0, 0.0), ("mitdb/203", 0, 300.0), ("mitdb/107", 0, 60.0),
    ("cpsc2021/data_35_4", None, 90.0), ("cpsc2019/wfdb/data_01934", 0, 0.0)])
def test_detector_equals_python_twin_on_real_excerpts(path, lead, start_s):
    rec = wfdb.rdrecord(str(ECG_DIR / path))
    lo = int(start_s * rec.fs)
    x = rec.p_signal[lo:lo + int(10 * rec.fs)]
    x = x[:, lead] if lead is not None else x
    np.testing.assert_array_equal(qrs.detect_qrs(x, rec.fs), qrs.detect_qrs_py(x, rec.fs))


def _synthetic(fs: float, rr_s: float, seconds: float, amp: float = 1.5) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    x = np.zeros(int(seconds * fs))
    beats = np.arange(int(0.5 * fs), x.size - int(0.5 * fs), int(rr_s * fs))
    w = max(3, int(0.03 * fs)) | 1
    for b in beats:
        x[b - w // 2:b + w // 2 + 1] += np.hanning(w) * amp
    return x, beats


@pytest.mark.parametrize("fs", [200.0, 250.0, 360.0, 500.0, 1000.0])
def test_rates_200_to_1000_hz(fs):
    x, beats = _synthetic(fs, 0.75, 30.0)
    rng = np.random.default_rng(0)
    x = x + rng.normal(0, 0.05, x.size) + 0.4 * np.sin(2 * np.pi * 0.3 * np.arange(x.size) / fs)
    found = qrs.detect_qrs(x, fs)
    s = qrs.score_beats(beats, found, fs)
    assert s.se == 1.0 and s.ppv == 1.0
    assert qrs.heart_rate_bpm(found, fs) == pytest.approx(80.0, rel=0.01)


def test_pacing_spikes_do_not_double_count():
    fs = 360.0
    x, beats = _synthetic(fs, 0.857, 30.0, amp=1.0)      # 70 bpm paced
    x = x.copy()
    for b in beats:                                       # 1 ms, 5 mV spike 40 ms before QRS
        x[b - int(0.04 * fs)] += 5.0
    s = qrs.score_beats(beats, qrs.detect_qrs(x, fs), fs)
    assert s.fp == 0 and s.fn == 0


def test_spike_is_removed_and_beats_kept():
    fs = 500.0
    x, beats = _synthetic(fs, 0.8, 20.0)
    x = x.copy()
    x[3000] += 30.0                                      # 2-ms electrode pop, 20 x the QRS
    y = qrs._despike_nb(x, 3, 500, qrs.SPIKE_K)
    assert abs(y[3000]) < 1.0 and np.array_equal(y[beats], x[beats])
    s = qrs.score_beats(beats, qrs.detect_qrs(x, fs), fs)
    assert s.fp == 0 and s.fn == 0


def test_several_leads_survive_one_dead_lead():
    fs = 500.0
    x, beats = _synthetic(fs, 0.8, 30.0)
    two = np.column_stack([np.zeros_like(x), x])
    s = qrs.score_beats(beats, qrs.detect_qrs_leads(two, fs), fs)
    assert s.se == 1.0 and s.ppv == 1.0


def test_rr_stats():
    fs = 100.0
    st_ = qrs.rr_stats(np.array([0, 100, 200, 300, 420]), fs)
    assert st_.heart_rate_bpm == pytest.approx(60.0)
    assert st_.rr_max_s == pytest.approx(1.2) and st_.rr_min_s == pytest.approx(1.0)
    assert qrs.rr_stats(np.array([5]), fs).heart_rate_bpm is None


def test_bsqi_bounds():
    a = np.array([100, 400, 700])
    assert qrs.bsqi(a, a, 500.0) == 1.0
    assert qrs.bsqi(a, np.array([], dtype=np.int64), 500.0) == 0.0
    assert qrs.bsqi(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 500.0) == 1.0


def test_score_excludes_intervals_and_edges():
    ref = np.array([100, 500, 900, 1300])
    det = np.array([102, 510, 1000, 1290])
    s = qrs.score_beats(ref, det, 100.0, exclude=np.array([[950, 1050]]))
    assert (s.tp, s.fn, s.fp) == (3, 1, 0)
    s = qrs.score_beats(ref, det, 100.0, edge_s=2.0, n_samples=1400)
    assert (s.tp, s.fn, s.fp) == (1, 1, 1)
    # a detection just outside the span may match a beat inside it
    s = qrs.score_beats(np.array([210, 600]), np.array([195, 600]), 100.0, edge_s=2.0,
                        n_samples=1400)
    assert (s.tp, s.fn, s.fp) == (2, 0, 0)


def test_long_records_are_detected_in_chunks_with_the_same_beats():
    rec = wfdb.rdrecord(str(ECG_DIR / "mitdb" / "208"), sampto=int(600 * 360))
    x = rec.p_signal[:, 0]
    whole = qrs.detect_qrs(x, rec.fs, chunk_s=1e9)
    chunked = qrs.detect_qrs(x, rec.fs, chunk_s=60.0)          # ten chunks
    s = qrs.score_beats(whole, chunked, rec.fs)
    assert s.se >= 0.998 and s.ppv >= 0.998, s
    assert np.all(np.diff(chunked) > 0)
    b_whole = qrs.detect_qrs_slope(x, rec.fs, chunk_s=1e9)
    b_chunk = qrs.detect_qrs_slope(x, rec.fs, chunk_s=60.0)
    assert qrs.bsqi(b_whole, b_chunk, rec.fs) >= 0.995


beat_lists = st.lists(st.lists(st.integers(0, 5000), max_size=40).map(lambda v: sorted(set(v))),
                      min_size=0, max_size=12)


@settings(max_examples=60, deadline=None)
@given(leads=beat_lists, tol=st.integers(0, 80))
def test_isqi_kernel_equals_twin(leads, tol):
    starts = np.zeros(len(leads) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(b) for b in leads])
    flat = np.array([v for b in leads for v in b], dtype=np.int64)
    np.testing.assert_array_equal(beats._isqi_nb(flat, starts, tol),
                                  beats._isqi_py(flat, starts, tol))


def test_isqi_names_the_lead_that_agrees_with_no_other():
    fs = 500.0
    beat_at = np.arange(250, 5000, 400)
    rng = np.random.default_rng(3)
    leads = [beat_at, beat_at + 3, beat_at - 2,
             np.sort(rng.choice(5000, beat_at.size, replace=False)),
             np.zeros(0, dtype=np.int64)]
    v = beats.isqi(leads, fs)
    assert v[:3] == pytest.approx(1.0)
    assert v[3] < 0.3                      # random "beats": not the heart the others see
    assert np.isnan(v[4])                  # no beats: iSQI says nothing
    assert beats.isqi([beat_at], fs) == pytest.approx([1.0])


@settings(max_examples=80, deadline=None)
@given(a=arrays(np.float64, st.integers(1, 400),
                elements=st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 1))),
       q=st.floats(0.0, 1.0))
def test_kth_smallest_is_partition(a, q):
    k = int(q * (a.size - 1))
    assert qrs_slope._kth_smallest(a, k) == np.partition(a, k)[k]


def _with_t_waves(fs: float, rr_s: float, seconds: float, *, after_s: float, width_s: float,
                  amp: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_synthetic` beats, each followed by a Hann T wave, plus seeded noise."""
    x, beats = _synthetic(fs, rr_s, seconds)
    w = int(width_s * fs) | 1
    for b in beats:
        t = b + int(after_s * fs)
        x[t - w // 2:t + w // 2 + 1] += np.hanning(w) * amp
    return x + np.random.default_rng(0).normal(0, 0.02, x.size), beats


@pytest.mark.parametrize("fs", [250.0, 360.0, 500.0])
def test_broad_t_waves_are_not_beats(fs):
    """A 160-ms T wave half the QRS's height, 280 ms after each beat: the spectral
    T-wave test (T_HF_MIN) keeps it out; at 250/360 Hz the slope test alone does not."""
    x, beats = _with_t_waves(fs, 0.8, 30.0, after_s=0.28, width_s=0.16, amp=0.8)
    s = qrs.score_beats(beats, qrs.detect_qrs(x, fs), fs)
    assert s.fp == 0 and s.fn == 0


@pytest.mark.parametrize("fs", [250.0, 360.0, 500.0])
@pytest.mark.parametrize("rr_s", [1.0, 1.2])
def test_slow_rhythm_t_wave_is_not_a_hidden_beat(fs, rr_s):
    """At 50-60 bpm a 200-ms T wave peaking 360 ms after the beat: the gap fill
    passes over its first flank as a T wave and looks after it; its second flank
    lies beyond 0.36 s but inside Bazett's longest QT at this rate, so it is a T
    wave too (with a fixed 0.36 s window it was a beat, every cycle)."""
    x, beats = _with_t_waves(fs, rr_s, 40.0, after_s=0.36, width_s=0.2, amp=0.7)
    s = qrs.score_beats(beats, qrs.detect_qrs(x, fs), fs)
    assert s.fp == 0 and s.fn == 0
    head = x[:int(12 * fs)]
    assert np.array_equal(qrs.detect_qrs(head, fs), qrs.detect_qrs_py(head, fs))


def test_qrs_cv_chooses_inside_training_folds():
    grid = (0.0, 0.5)
    # 0.5 removes a false positive on every record except those of one database
    rows = [{"db": db, "record": f"{db}{i}",
             "counts": [(100, 0, 1), (100, 0, 0 if db != "c" else 2)]}
            for db in "abc" for i in range(5)]
    cv = qrs_cv(rows, grid, folds=5, seed=1)
    assert len(cv["chosen_per_fold"]) == 5 and cv["chosen_on_all"] == 0.5
    rows = [{**r, "counts": [r["counts"][0], (99, 1, 1)]} for r in rows]     # 0.5 only hurts
    assert qrs_cv(rows, grid, folds=5, seed=1)["chosen_on_all"] == 0.0
