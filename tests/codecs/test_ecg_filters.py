"""ECG filter kernels: Numba == Python twin, twin == SciPy, and what the filters do."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fenji.codecs.ecg import filters as flt

finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)
signals = arrays(np.float64, st.integers(0, 400), elements=finite)
rates = st.sampled_from([200.0, 250.0, 360.0, 500.0, 1000.0])


def _sos(kind: str, fs: float) -> np.ndarray:
    return {"hp": flt.design_highpass(0.5, fs), "lp": flt.design_lowpass(40.0, fs),
            "bp": flt.design_bandpass(5.0, 20.0, fs), "notch": flt.design_notch(50.0, fs),
            }[kind]


@settings(max_examples=60, deadline=None)
@given(x=signals, fs=rates, kind=st.sampled_from(["hp", "lp", "bp", "notch"]),
       steady=st.booleans())
def test_sosfilt_kernel_equals_twin(x, fs, kind, steady):
    sos = _sos(kind, fs)
    np.testing.assert_array_equal(flt._sosfilt_nb(sos, x, steady), flt._sosfilt_py(sos, x, steady))


@settings(max_examples=40, deadline=None)
@given(x=signals, fs=rates, kind=st.sampled_from(["hp", "bp", "notch"]))
def test_filtfilt_kernel_equals_twin(x, fs, kind):
    sos = _sos(kind, fs)
    np.testing.assert_array_equal(flt._filtfilt_nb(sos, x), flt._filtfilt_py(sos, x))


@settings(max_examples=40, deadline=None)
@given(x=signals.filter(lambda a: a.size > 0), fs=rates,
       kind=st.sampled_from(["hp", "lp", "bp", "notch"]))
def test_twin_matches_scipy_sosfilt(x, fs, kind):
    sos = _sos(kind, fs)
    np.testing.assert_allclose(flt._sosfilt_py(sos, x, False), ss.sosfilt(sos, x),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fs", [200.0, 500.0, 1000.0])
def test_design_matches_scipy_butterworth_magnitude(fs):
    # RBJ Q=1/sqrt(2) biquad == 2nd-order Butterworth (bilinear transform, prewarped)
    for mine, ref in ((flt.design_lowpass(40.0, fs), ss.butter(2, 40.0, "low", fs=fs,
                                                               output="sos")),
                      (flt.design_highpass(0.5, fs), ss.butter(2, 0.5, "high", fs=fs,
                                                               output="sos"))):
        w, h1 = ss.sosfreqz(mine, worN=512, fs=fs)
        _, h2 = ss.sosfreqz(ref, worN=512, fs=fs)
        np.testing.assert_allclose(np.abs(h1), np.abs(h2), atol=1e-6)


@pytest.mark.parametrize("fs,mains", [(500.0, 50.0), (1000.0, 60.0), (200.0, 50.0)])
def test_notch_removes_mains_and_keeps_ecg_band(fs, mains):
    t = np.arange(int(10 * fs)) / fs
    ecg_band = np.sin(2 * np.pi * 10 * t)
    y = flt.notch(ecg_band + 0.5 * np.sin(2 * np.pi * mains * t), fs, mains)
    core = slice(int(fs), -int(fs))
    assert np.abs(y[core] - ecg_band[core]).max() < 0.02


def test_baseline_removal_keeps_dc_edges_quiet_and_removes_breathing():
    fs = 500.0
    t = np.arange(5000) / fs
    qrsish = np.sin(2 * np.pi * 8 * t)
    x = qrsish + 1.5 * np.sin(2 * np.pi * 0.2 * t) + 30.0   # breathing + electrode offset
    y = flt.remove_baseline(x, fs)
    assert np.abs(y - qrsish)[500:-500].max() < 0.25
    assert np.abs(y[:20]).max() < 2.0          # steady-state start: no 30 mV edge ringing


def test_two_dimensional_signal_is_filtered_per_column_and_input_untouched():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 3))
    before = x.copy()
    y = flt.preprocess(x, 500.0)
    np.testing.assert_array_equal(x, before)
    for j in range(3):
        np.testing.assert_array_equal(y[:, j], flt.preprocess(x[:, j], 500.0))


def test_corner_outside_nyquist_is_an_error():
    with pytest.raises(ValueError, match="corner"):
        flt.design_lowpass(150.0, 200.0)


@settings(max_examples=40, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(0, 300), st.integers(1, 12)), elements=finite),
       fs=rates, kind=st.sampled_from(["hp", "bp", "notch"]))
def test_2d_kernel_equals_twin_and_1d_per_column(x, fs, kind):
    sos = _sos(kind, fs)
    y = flt._filtfilt2_nb(sos, x)
    np.testing.assert_array_equal(y, flt._filtfilt2_py(sos, x))
    for j in range(x.shape[1]):
        np.testing.assert_array_equal(y[:, j], flt._filtfilt_py(sos, np.ascontiguousarray(x[:, j])))


def test_docstring_examples():
    import doctest

    from fenji.codecs.ecg import beats, gate, qrs, qrs_slope, windows
    from fenji.codecs.ecg import quality as ecg_quality
    from fenji.codecs.ecg import record as ecg_record
    from fenji.codecs.image import quality as image_quality

    for mod in (flt, beats, gate, qrs, qrs_slope, ecg_quality, ecg_record, windows,
                image_quality):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, mod.__name__
