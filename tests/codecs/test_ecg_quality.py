"""ECG quality: kernels == twins, reasons on built faults, and the challenge2011 gate.

challenge2011 (README): 308 records, 239 acceptable, 69 unacceptable.  The
thresholds are the documented defaults of EcgQualityThresholds, chosen from
physiology (see fenji.codecs.ecg_quality), not fitted per record.  Accuracy is
reported on the whole set and on the two halves of the RECORDS order (even /
odd positions) so that a split-dependent result would show.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import wfdb
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fenji.codecs import ecg_quality as q
from tests.conftest import ECG_DIR

C11 = ECG_DIR / "challenge2011"
small = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float64, st.integers(0, 500),
                elements=st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]) | small),
       eps=st.sampled_from([0.0, 0.01, 0.5]), run=st.integers(1, 50), win=st.integers(1, 80))
def test_kernels_equal_twins(x, eps, run, win):
    assert q._flat_runs_nb(x, eps, run) == q._flat_runs_py(x, eps, run)
    assert q._rail_runs_nb(x, run) == q._rail_runs_py(x, run)
    if x.size:
        assert q._robust_p2p_nb(x, win) == pytest.approx(q._robust_p2p_py(x, win), rel=1e-12)
        assert q._rms_nb(x, win) == pytest.approx(q._rms_py(x, win), rel=1e-12, abs=1e-15)


def _clean_12lead(fs: float = 500.0, seconds: float = 10.0) -> np.ndarray:
    """Synthetic 12-lead ECG: narrow QRS + T wave + mild noise, 72 bpm."""
    n = int(fs * seconds)
    t = np.arange(n) / fs
    x = np.zeros(n)
    for b in np.arange(0.4, seconds - 0.3, 60 / 72):
        x += 1.2 * np.exp(-0.5 * ((t - b) / 0.012) ** 2)
        x += 0.3 * np.exp(-0.5 * ((t - b - 0.3) / 0.05) ** 2)
    rng = np.random.default_rng(3)
    gains = np.linspace(0.6, 1.4, 12)
    return np.column_stack([g * x + rng.normal(0, 0.01, n) for g in gains])


LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def test_clean_record_is_acceptable_with_rate():
    rep, beats = q.check_ecg(_clean_12lead(), 500.0, LEADS)
    assert rep["verdict"] == q.ACCEPTABLE, rep["reasons"]
    assert rep["record"]["heart_rate_bpm"] == pytest.approx(72, abs=1)
    assert set(rep["leads"]) == set(LEADS)
    for lead in rep["leads"].values():
        for c in lead["checks"]:
            assert {"check", "value", "threshold", "verdict", "reason"} <= set(c)
    json.dumps(rep, allow_nan=False)


def test_lead_off_for_part_of_the_record_names_lead_and_duration():
    x = _clean_12lead()
    x[2000:4100, 8] = x[2000, 8]        # V3 stuck for 4.2 s
    rep = q.quality_report(x, 500.0, LEADS)
    assert rep["verdict"] == q.UNACCEPTABLE
    assert any("lead V3 off for 4.2 s" in r for r in rep["reasons"]), rep["reasons"]
    assert rep["leads"]["V3"]["verdict"] == q.UNACCEPTABLE
    assert rep["leads"]["V1"]["verdict"] == q.ACCEPTABLE


def test_saturation_noise_and_wander_have_their_own_reasons():
    x = _clean_12lead()
    t = np.arange(x.shape[0]) / 500.0
    x[:, 0] = np.clip(x[:, 0] * 8, -9.0, 3.0)                          # I clipped
    x[:, 6] += np.random.default_rng(0).normal(0, 0.6, x.shape[0])     # V1 EMG
    x[:, 10] += 1.5 * np.sin(2 * np.pi * 0.25 * t)                     # V5 breathing
    rep = q.quality_report(x, 500.0, LEADS)
    checks = {(lead, c["check"]): c for lead, v in rep["leads"].items() for c in v["checks"]}
    assert checks[("I", "saturation")]["verdict"] == q.UNACCEPTABLE
    assert checks[("V1", "hf_noise")]["verdict"] == q.UNACCEPTABLE
    assert checks[("V5", "baseline")]["verdict"] == q.WARNINGS
    assert "muscle" in checks[("V1", "hf_noise")]["reason"]


def test_thresholds_are_plain_values_and_change_the_verdict():
    x = _clean_12lead()
    x[:, 3] += 1.5 * np.sin(2 * np.pi * 0.25 * np.arange(x.shape[0]) / 500.0)
    assert q.quality_report(x, 500.0, LEADS)["verdict"] == q.WARNINGS
    strict = q.EcgQualityThresholds(baseline_mv=2.0)
    assert q.quality_report(x, 500.0, LEADS, strict)["verdict"] == q.UNACCEPTABLE
    assert q.quality_report(x, 500.0, LEADS, strict)["thresholds"]["baseline_mv"] == 2.0


@pytest.mark.parametrize("fs", [200.0, 1000.0])
def test_single_lead_and_other_rates(fs):
    x = _clean_12lead(fs)[:, 1:2]
    rep = q.quality_report(x, fs, ["II"])
    assert rep["verdict"] == q.ACCEPTABLE, rep["reasons"]


def test_nan_gap_counts_as_lead_off():
    x = _clean_12lead()
    x[1000:2000, 4] = np.nan
    rep = q.quality_report(x, 500.0, LEADS)
    assert any(r.startswith("lead aVL off for 2.0 s") for r in rep["reasons"]), rep["reasons"]


def test_challenge2011_gate(capsys):
    labels = json.loads((C11 / "labels.json").read_text())
    names = (C11 / "RECORDS").read_text().split()
    assert len(names) == 308 and sum(v == "unacceptable" for v in labels.values()) == 69
    y, p = [], []
    for name in names:
        rec = wfdb.rdrecord(str(C11 / name))
        rep = q.quality_report(rec.p_signal, rec.fs, rec.sig_name)
        y.append(labels[name] == "unacceptable")
        p.append(rep["verdict"] == q.UNACCEPTABLE)
    ya, pa = np.array(y), np.array(p)

    def stats(m: np.ndarray) -> tuple[float, float, float]:
        yy, pp = ya[m], pa[m]
        return ((yy == pp).mean(), (yy & pp).sum() / yy.sum(), (~yy & ~pp).sum() / (~yy).sum())

    idx = np.arange(len(names))
    acc, se, sp = stats(idx >= 0)
    even, odd = stats(idx % 2 == 0)[0], stats(idx % 2 == 1)[0]
    with capsys.disabled():
        print(f"\nchallenge2011: accuracy {100 * acc:.1f} %  sensitivity(unacceptable) "
              f"{100 * se:.1f} %  specificity {100 * sp:.1f} %  (even half {100 * even:.1f} %, "
              f"odd half {100 * odd:.1f} %)")
    assert acc >= 0.935 and se >= 0.90 and sp >= 0.92
    assert min(even, odd) >= 0.92


def test_long_record_measures_by_chunks_agree_with_whole():
    rec = wfdb.rdrecord(str(ECG_DIR / "mitdb" / "100"), sampto=int(600 * 360))
    x = np.ascontiguousarray(rec.p_signal)
    t = q.EcgQualityThresholds()
    whole = q._measure_all(x, rec.fs, t, chunk_s=1e9)
    chunked = q._measure_all(x, rec.fs, t, chunk_s=60.0)
    for (mw, _, _), (mc, _, _) in zip(whole, chunked, strict=True):
        assert mc.flat_s == mw.flat_s and mc.lead_off_s == mw.lead_off_s
        assert mc.amplitude_mv == pytest.approx(mw.amplitude_mv, rel=0.1)
        assert mc.hf_noise_mv == pytest.approx(mw.hf_noise_mv, rel=0.1)
        assert mc.bsqi == pytest.approx(mw.bsqi, abs=0.01)
        assert mc.baseline_mv == pytest.approx(mw.baseline_mv, rel=0.1)


def test_holter_length_records_are_judged_on_a_share_of_their_length():
    x = np.tile(_clean_12lead()[:, :2], (12, 1))            # 2 minutes, 2 leads
    x[3000:3200, 1] = x[3000, 1]                            # 0.4 s flat in lead II
    rep = q.quality_report(x, 500.0, ["I", "II"])
    flat = {c["check"]: c for c in rep["leads"]["II"]["checks"]}["flat"]
    assert flat["threshold"] == pytest.approx(2.4) and flat["verdict"] == q.ACCEPTABLE
    x[10000:12000, 1] = x[10000, 1]                         # 4 s flat: too much even here
    assert q.quality_report(x, 500.0, ["I", "II"])["verdict"] == q.UNACCEPTABLE
