"""Per-lead ECG signal quality and the per-record quality report.

Per-lead signal-quality indices (SQIs), each also compared with a threshold
from :class:`EcgQualityThresholds` (plain values; the gateway maps its config
onto it) to flag the leads a technician should look at:

========== ========================================================== =====
check      value                                                      unit
========== ========================================================== =====
flat       longest run of samples that do not change                  s
saturation total time on the lead's extreme value (plateaus >= 10 ms)  s
lead_off   flat or clipped time in runs of at least ``off_run_s``     s
amplitude  robust peak-to-peak of the 0.5-40 Hz signal                mV
hf_noise   median 1-s RMS of the signal above 40 Hz (mains notched)   mV
mains      power the mains notch removes / power above 0.5 Hz         0..1
baseline   peak-to-peak of the wander below 0.5 Hz (median of 10-s)   mV
bsqi       agreement of two independent QRS detectors                 0..1
isqi       best agreement of the lead's beats with another lead's     0..1
ksqi       kurtosis of the 0.5-40 Hz signal                           -
========== ========================================================== =====

Also measured, for the gate: basSQI (1 - the share of the power below 40 Hz that
lies below 0.5 Hz), after Clifford, Behar et al. (Physiol. Meas. 2012).

The record's verdict is not made from these flags: it is the fitted gate of
:mod:`fenji.codecs.ecg.gate` (nine record features from the SQIs, a logistic
score and a threshold, every number chosen by cross-validation on labelled
records -- see there for its cross-validated accuracy).  ``unacceptable`` is the
gate's; otherwise a record with flagged leads is ``acceptable_with_warnings``.
The reasons say what to fix: the feature that weighs most in an unacceptable
score in words ("lead V3 off for 4.2 s"), the unusable leads, then the
warnings, grouped across leads ("leads V1-V6 (6 leads, worst V2): dominated by
50 Hz mains noise ...").

How the per-lead thresholds were chosen (physiology and the AHA/IEC 60601-2-25
figures, never record by record): a resting ECG lead does not hold the same
value for 0.2 s -- even the isoelectric PR/ST segments carry noise at a 5 uV
resolution; a QRS is 0.5-3 mV peak to peak in limb and chest leads, so below
0.1 mV the lead is not picking up the heart and above 15 mV it is picking up
something else; EMG/tremor above 40 Hz at 100 uV RMS already hides P waves
(~0.1 mV); wander of more than 2 mV below 0.5 Hz throws the trace off a 10 mm/mV
grid, and a 10 mV step is an electrode popping, not the heart.  bSQI below 0.8
means the two detectors disagree on one beat in five.

Every loop over samples is a Numba kernel compiled from its Python twin.

>>> import numpy as np
>>> fs = 500.0
>>> t = np.arange(5000) / fs
>>> beat = sum(np.exp(-0.5 * ((t - b) / 0.012) ** 2) for b in np.arange(0.5, 10, 0.8))
>>> noise = np.random.default_rng(0).normal(0, 0.01, (5000, 2))
>>> x = np.column_stack([beat + noise[:, 0], 1.3 * beat + noise[:, 1],
...                      np.full(5000, 0.2)])                  # the third lead is off
>>> rep = quality_report(x, fs, ["I", "II", "V1"])
>>> rep["verdict"], rep["reasons"][0]
('unacceptable', 'lead V1 off for 10.0 s: check the electrode')
>>> rep["record"]["heart_rate_bpm"]
75.0
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numba import njit
from numba.extending import register_jitable

from fenji.codecs.ecg import beats as beats_mod
from fenji.codecs.ecg import filters as flt
from fenji.codecs.ecg import gate as gate_mod
from fenji.codecs.ecg import qrs as qrs_mod
from fenji.codecs.ecg.record import MAX_ABS_MV  # beyond it a sample reads as a gap
from fenji.codecs.ecg.thresholds import EcgQualityThresholds
from fenji.codecs.ecg.windows import window_p2p
from fenji.codecs.errors import PeerError

ACCEPTABLE = "acceptable"
WARNINGS = "acceptable_with_warnings"
UNACCEPTABLE = "unacceptable"
_RANK = {ACCEPTABLE: 0, WARNINGS: 1, UNACCEPTABLE: 2}
MIN_FS_HZ = qrs_mod.MIN_FS_HZ


# --- kernels ---------------------------------------------------------------------

def _flat_runs_py(x: np.ndarray, eps: float, min_run: int) -> tuple[int, int]:
    """Longest run of samples whose step is ``<= eps`` (in samples, run of 1 step
    = 2 samples) and the total samples in runs of at least ``min_run`` samples."""
    n = x.shape[0]
    longest = 1 if n > 0 else 0
    total = 0
    run = 1
    for i in range(1, n + 1):
        if i < n and abs(x[i] - x[i - 1]) <= eps:
            run += 1
        else:
            if run > longest:
                longest = run
            if run >= min_run and run > 1:
                total += run
            run = 1
    return longest, total


_flat_runs_nb = njit(_flat_runs_py, nogil=True, cache=True)


def _rail_runs_py(x: np.ndarray, min_run: int, clip_run: int) -> tuple[int, int, int]:
    """Clipping: longest run at the lead's max or min value, and total samples in
    such runs of at least ``min_run`` samples and of at least ``clip_run`` samples
    (one pass for the lead-off and the saturation check)."""
    n = x.shape[0]
    if n == 0:
        return 0, 0, 0
    hi = x[0]
    lo = x[0]
    for i in range(n):
        if x[i] > hi:
            hi = x[i]
        if x[i] < lo:
            lo = x[i]
    longest = 0
    total = 0
    clip_total = 0
    run = 0
    prev = 0.0
    for i in range(n + 1):
        at = i < n and (x[i] == hi or x[i] == lo)
        if at and run > 0 and x[i] == prev:
            run += 1
        else:
            if run > longest:
                longest = run
            if run >= min_run:
                total += run
            if run >= clip_run:
                clip_total += run
            run = 1 if at else 0
        if i < n:
            prev = x[i]
    return longest, total, clip_total


_rail_runs_nb = njit(_rail_runs_py, nogil=True, cache=True)


@register_jitable
def _robust_p2p_py(x: np.ndarray, win: int) -> float:
    """Median over windows of ``win`` samples of the window's peak-to-peak: one beat's
    amplitude, insensitive to a single spike."""
    n = x.shape[0]
    nw = n // win
    if nw == 0:
        if n == 0:
            return 0.0
        return float(x.max() - x.min())
    return float(np.median(window_p2p(x, win)))


_robust_p2p_nb = njit(_robust_p2p_py, nogil=True, cache=True)


@register_jitable
def _rms_py(x: np.ndarray, win: int) -> float:
    """Median over windows of ``win`` samples of the window RMS: noise that persists,
    not one artefact."""
    n = x.shape[0]
    nw = max(1, n // win)
    r = np.empty(nw)
    for w in range(nw):
        s = 0.0
        hi = n if w == nw - 1 else (w + 1) * win
        for i in range(w * win, hi):
            s += x[i] * x[i]
        r[w] = (s / max(hi - w * win, 1)) ** 0.5
    return float(np.median(r))


_rms_nb = njit(_rms_py, nogil=True, cache=True)


# --- per-lead measures -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LeadMeasures:
    """Raw per-lead quality measures (physical units)."""

    flat_s: float
    saturation_s: float
    lead_off_s: float
    amplitude_mv: float
    hf_noise_mv: float
    baseline_mv: float
    bsqi: float
    n_beats_a: int
    n_beats_b: int
    ksqi: float = 0.0        # kurtosis of the 0.5-40 Hz signal (QRS peaks: > 5)
    bas_sqi: float = 1.0     # power 0.5-40 Hz / 0-40 Hz (1 - baseline share)
    mains_ratio: float = 0.0  # power the mains notch removes / power above 0.5 Hz
    isqi: float = 1.0        # best agreement of its beats with another lead's (iSQI);
                             # NaN for a lead without beats


def lead_measures(x_mv: np.ndarray, fs_hz: float, thr: EcgQualityThresholds | None = None,
                  ) -> LeadMeasures:
    """Measures of one lead (1-D, mV).  The input is never modified."""
    return _measure(x_mv, fs_hz, thr or EcgQualityThresholds())[0]


_NO_BEATS = np.zeros(0, dtype=np.int64)


def BSQI_BAND_A(fs_hz: float) -> np.ndarray:  # noqa: N802 (a constant that needs fs)
    """Band of the Pan-Tompkins half of the bSQI pair: 5-20 Hz.  Fixed when the
    thresholds above were chosen (the output detector's own band may move)."""
    return flt.design_bandpass(5.0, min(20.0, 0.45 * fs_hz), fs_hz)


def _measure(x_mv: np.ndarray, fs_hz: float, t: EcgQualityThresholds
             ) -> tuple[LeadMeasures, np.ndarray, np.ndarray]:
    """Measures of one lead and its beats by the two detectors."""
    x = np.ascontiguousarray(np.asarray(x_mv, dtype=np.float64).reshape(-1, 1))
    return _measure_all(x, fs_hz, t)[0]


def _median(v: list[float]) -> float:
    return float(v[0]) if len(v) == 1 else float(np.median(v))   # one chunk: no numpy call


def _measure_all(x: np.ndarray, fs_hz: float, t: EcgQualityThresholds,
                 chunk_s: float = beats_mod.CHUNK_S
                 ) -> list[tuple[LeadMeasures, np.ndarray, np.ndarray]]:
    """Per lead of a NaN-free (samples, leads) array: measures and both detectors'
    beats.  Every filter runs once over all leads (2-D kernel).

    Records longer than ``chunk_s`` are filtered chunk by chunk (with context, see
    :func:`fenji.codecs.ecg.beats.chunk_spans`); then amplitude, EMG noise and wander
    are the median of the chunks' values.  Run lengths and bSQI are always
    computed over the whole record.
    """
    n, m = x.shape
    min_run = max(2, int(round(t.off_run_s * fs_hz)))
    clip_run = max(3, int(round(0.01 * fs_hz)))   # clipping: plateaus >= 10 ms, added up
    xt = np.ascontiguousarray(x.T)
    runs = []
    for j in range(m):
        flat_long, flat_total = _flat_runs_nb(xt[j], float(t.flat_eps_mv), min_run)
        _, rail_total, clip_total = _rail_runs_nb(xt[j], min_run, clip_run)
        runs.append((flat_long / fs_hz, clip_total / fs_hz,
                     max(flat_total, rail_total) / fs_hz))
    if n < int(0.5 * fs_hz):
        return [(LeadMeasures(f, c, o, 0, 0, 0, 0, 0, 0), _NO_BEATS, _NO_BEATS)
                for f, c, o in runs]
    amps: list[list[float]] = [[] for _ in range(m)]
    noises: list[list[float]] = [[] for _ in range(m)]
    bases: list[list[float]] = [[] for _ in range(m)]
    spec: list[list[tuple[float, float, float]]] = [[] for _ in range(m)]
    parts_a: list[list[np.ndarray]] = [[] for _ in range(m)]
    parts_b: list[list[np.ndarray]] = [[] for _ in range(m)]
    for lo, start, end, hi in beats_mod.chunk_spans(n, fs_hz, chunk_s):
        xc = x[lo:hi]
        core = slice(start - lo, end - lo)
        no_wander = flt.sosfiltfilt(flt.design_highpass(flt.BASELINE_HZ, fs_hz), xc)
        hp = flt.sosfiltfilt(flt.design_notch(t.mains_hz, fs_hz), no_wander)
        lo40 = flt.sosfiltfilt(flt.design_lowpass(min(40.0, 0.45 * fs_hz), fs_hz), hp)
        sq = _chunk_stats_nb(np.ascontiguousarray(xc), no_wander, hp, lo40, core.start,
                             core.stop, max(2, int(1.5 * fs_hz)), max(2, int(fs_hz)),
                             max(2, int(10.0 * fs_hz)))
        bpa = np.ascontiguousarray(flt.sosfiltfilt(BSQI_BAND_A(fs_hz), xc).T)
        bpb = np.ascontiguousarray(flt.sosfiltfilt(qrs_mod.band_b(fs_hz), xc).T)
        for j in range(m):
            spec[j].append((float(sq[j, 0]), float(sq[j, 1]), float(sq[j, 2])))
            amps[j].append(float(sq[j, 3]))
            noises[j].append(float(sq[j, 4]))
            bases[j].append(float(sq[j, 5]))
            for parts, d in ((parts_a, qrs_mod.detect_from_bandpassed(bpa[j], fs_hz)),
                             (parts_b, qrs_mod.detect_slope_from_bandpassed(bpb[j], fs_hz))):
                d = d + lo
                parts[j].append(d[(d >= start) & (d < end)])
    out = []
    beats_a = [beats_mod._join(parts_a[j], fs_hz) for j in range(m)]
    inter = beats_mod.isqi(beats_a, fs_hz)
    for j in range(m):
        a = beats_a[j]
        b = beats_mod._join(parts_b[j], fs_hz)
        flat_s, clip_s, off_s = runs[j]
        out.append((LeadMeasures(
            flat_s=flat_s,
            saturation_s=clip_s,
            lead_off_s=off_s,
            amplitude_mv=_median(amps[j]),
            hf_noise_mv=_median(noises[j]),
            baseline_mv=_median(bases[j]),
            bsqi=beats_mod.bsqi(a, b, fs_hz),
            n_beats_a=len(a),
            n_beats_b=len(b),
            ksqi=_median([v[0] for v in spec[j]]),
            bas_sqi=_median([v[1] for v in spec[j]]),
            mains_ratio=_median([v[2] for v in spec[j]]),
            isqi=float(inter[j]),
        ), a, b))
    return out


@register_jitable
def _shape_lead(lo: np.ndarray, w: np.ndarray, e: np.ndarray, r: np.ndarray) -> tuple[float, float,
                                                                                    float]:
    """kSQI, basSQI and mains share of one lead (after Clifford, Behar et al.
    2012/2013), from signals the other checks filter anyway -- no spectrum needed.

    ``lo``: the 0.5-40 Hz signal, ``w``: the wander below 0.5 Hz, ``e``: the signal
    above 0.5 Hz and ``r``: that, mains notched.  Returns the kurtosis of ``lo``;
    1 - the wander's share of the power below 40 Hz (split at the gate's 0.5 Hz
    baseline cut where Behar et al. split at 1 Hz); the share of the power above
    0.5 Hz that the mains notch removes.
    """
    n = lo.shape[0]
    if n == 0:
        return 0.0, 0.0, 0.0
    mu = 0.0
    wmu = 0.0
    for i in range(n):
        mu += lo[i]
        wmu += w[i]
    mu /= n
    wmu /= n
    m2 = 0.0
    m4 = 0.0
    wv = 0.0
    mains = 0.0
    total = 0.0
    for i in range(n):
        d = lo[i] - mu
        d2 = d * d
        m2 += d2
        m4 += d2 * d2
        v = w[i] - wmu
        wv += v * v
        q = e[i] - r[i]
        mains += q * q
        total += e[i] * e[i]
    m2 /= n
    m4 /= n
    wv /= n
    return (m4 / (m2 * m2) if m2 * m2 > 0.0 else 0.0,  # a constant lead: 0
            m2 / (m2 + wv) if m2 + wv > 0.0 else 0.0,
            mains / total if total > 0.0 else 0.0)


def _chunk_stats_py(xc: np.ndarray, no_wander: np.ndarray, notched: np.ndarray,
                    lo40: np.ndarray, c0: int, c1: int, win_amp: int, win_rms: int,
                    win_base: int) -> np.ndarray:
    """Per lead of one chunk (all arrays (chunk samples, leads), the core rows
    ``c0:c1``): kSQI, basSQI, mains share (:func:`_shape_lead`), amplitude (robust
    p2p of ``lo40``), EMG noise (windowed RMS of ``notched - lo40``, above 40 Hz)
    and wander (robust p2p of ``xc - no_wander``).  One pass per lead over
    contiguous copies, no transposed arrays.  Returns (leads, 6)."""
    m = xc.shape[1]
    n = c1 - c0
    out = np.zeros((m, 6))
    lo = np.empty(n)
    w = np.empty(n)
    e = np.empty(n)
    r = np.empty(n)
    hf = np.empty(n)
    for j in range(m):
        for i in range(n):
            lo[i] = lo40[c0 + i, j]
            w[i] = xc[c0 + i, j] - no_wander[c0 + i, j]
            e[i] = no_wander[c0 + i, j]
            r[i] = notched[c0 + i, j]
            hf[i] = notched[c0 + i, j] - lo40[c0 + i, j]
        k, b, mn = _shape_lead(lo, w, e, r)
        out[j, 0] = k
        out[j, 1] = b
        out[j, 2] = mn
        out[j, 3] = _robust_p2p_py(lo, win_amp)
        out[j, 4] = _rms_py(hf, win_rms)
        out[j, 5] = _robust_p2p_py(w, win_base)
    return out


_chunk_stats_nb = njit(_chunk_stats_py, nogil=True, cache=True)


# --- the report ------------------------------------------------------------------

def _check(name: str, value: float | None, threshold: float, verdict: str, reason: str | None
           ) -> dict[str, Any]:
    v = None if value is None or not math.isfinite(value) else round(float(value), 4)
    return {"check": name, "value": v, "threshold": threshold,
            "verdict": verdict, "reason": reason}


def _graded(name: str, value: float, bad: float, warn: float, reason: str, *,
            low: bool = False) -> dict[str, Any]:
    """A check with two limits: at or past ``bad`` unacceptable, at or past ``warn``
    a warning (``low``: below the limits is bad, not at or above them)."""
    def past(limit: float) -> bool:
        return value < limit if low else value >= limit

    verdict = UNACCEPTABLE if past(bad) else WARNINGS if past(warn) else ACCEPTABLE
    return _check(name, value, bad if verdict == UNACCEPTABLE else warn, verdict,
                  None if verdict == ACCEPTABLE else reason)


def _lead_checks(lead: str, m: LeadMeasures, t: EcgQualityThresholds, duration_s: float
                 ) -> list[dict[str, Any]]:
    """Per-lead flags in physical units: ``unacceptable`` marks a lead that cannot be
    read, ``acceptable_with_warnings`` one that can with care.  They explain the
    record's verdict; they do not make it (the fitted gate does, see
    :mod:`fenji.codecs.ecg.gate`)."""
    U, W, A = UNACCEPTABLE, WARNINGS, ACCEPTABLE
    # a 10-s ECG fails on 0.2 s; a 24-h Holter only on a share of its length
    flat_thr = max(t.flat_s, t.flat_fraction * duration_s)
    sat_thr = max(t.saturation_s, t.saturation_fraction * duration_s)
    off_thr = max(t.lead_off_s, t.lead_off_fraction * duration_s)
    out = []
    out.append(_check("flat", m.flat_s, flat_thr, U if m.flat_s >= flat_thr else A,
                      f"lead {lead} flat (no change) for {m.flat_s:.1f} s"
                      if m.flat_s >= flat_thr else None))
    out.append(_check("saturation", m.saturation_s, sat_thr,
                      U if m.saturation_s >= sat_thr else A,
                      f"lead {lead} clipped at its limit for {m.saturation_s:.1f} s"
                      if m.saturation_s >= sat_thr else None))
    out.append(_check("lead_off", m.lead_off_s, off_thr,
                      U if m.lead_off_s >= off_thr else A,
                      f"lead {lead} off for {m.lead_off_s:.1f} s: check the electrode"
                      if m.lead_off_s >= off_thr else None))
    if m.amplitude_mv < t.amplitude_min_mv:
        out.append(_check("amplitude", m.amplitude_mv, t.amplitude_min_mv, U,
                          f"lead {lead} amplitude {m.amplitude_mv:.2f} mV is too small: "
                          "electrode off or not touching the skin"))
    elif m.amplitude_mv > t.amplitude_max_mv:
        out.append(_check("amplitude", m.amplitude_mv, t.amplitude_max_mv, U,
                          f"lead {lead} amplitude {m.amplitude_mv:.1f} mV is implausible: "
                          "movement artefact or wrong gain"))
    else:
        out.append(_check("amplitude", m.amplitude_mv, t.amplitude_min_mv, A, None))
    out.append(_graded("hf_noise", m.hf_noise_mv, t.hf_noise_mv, t.hf_noise_warn_mv,
                       f"lead {lead} muscle/high-frequency noise {1000 * m.hf_noise_mv:.0f} "
                       "uV RMS: ask the patient to relax, check skin preparation"))
    mv = W if m.mains_ratio >= t.mains_warn_ratio else A
    out.append(_check("mains", m.mains_ratio, t.mains_warn_ratio, mv,
                      None if mv == A else
                      f"lead {lead} dominated by {t.mains_hz:g} Hz mains noise "
                      f"({100 * m.mains_ratio:.0f} % of its power): check the electrode "
                      "contact and the cart's mains filter"))
    out.append(_graded("baseline", m.baseline_mv, t.baseline_mv, t.baseline_warn_mv,
                       f"lead {lead} baseline wander {m.baseline_mv:.1f} mV: "
                       "patient moving or breathing deeply, check electrode contact"))
    out.append(_graded("bsqi", m.bsqi, t.bsqi_min, t.bsqi_warn,
                       f"lead {lead} beats unclear (detector agreement {m.bsqi:.2f})", low=True))
    out.append(_check("ksqi", m.ksqi, t.ksqi_warn, W if m.ksqi < t.ksqi_warn else A,
                      None if m.ksqi >= t.ksqi_warn else
                      f"lead {lead} shows no clear QRS peaks (kurtosis {m.ksqi:.1f})"))
    return out


_DEAD = ("lead_off", "flat", "saturation", "amplitude")   # one reason says it all


def _lead_reasons(checks: list[dict[str, Any]], verdict: str) -> list[str]:
    """Reasons at the lead's verdict; a dead lead gets one reason, not four."""
    failing = [c for c in checks if c["verdict"] == verdict and c["reason"]]
    dead = sorted((c for c in failing if c["check"] in _DEAD),
                  key=lambda c: _DEAD.index(c["check"]))
    return [c["reason"] for c in dead[:1]] + [c["reason"] for c in failing
                                              if c["check"] not in _DEAD]


def _lead_list(names: Sequence[str], order: Sequence[str]) -> str:
    """``V1-V6`` for a run of consecutive leads, else ``I, V2, V5``."""
    idx = sorted(order.index(n) for n in names)
    parts: list[str] = []
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        parts.append(order[idx[i]] if j - i < 2 else f"{order[idx[i]]}-{order[idx[j]]}")
        if j - i == 1:
            parts.append(order[idx[j]])
        i = j + 1
    return ", ".join(parts)


def _grouped_warnings(lead_out: Mapping[str, Any], leads: Sequence[str], skip: str = ""
                      ) -> list[str]:
    """Warnings of the same check in several leads said once: "leads V1-V6: ...".
    ``skip``: a check the gate's own reason already speaks for."""
    by_check: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name in leads:
        if lead_out[name]["verdict"] == UNACCEPTABLE:
            continue                     # an unusable lead has its own reason
        for c in lead_out[name]["checks"]:
            if c["verdict"] == WARNINGS and c["reason"] and c["check"] != skip:
                by_check.setdefault(c["check"], []).append((name, c))
    out = []
    for check, hits in by_check.items():
        if len(hits) == 1:
            out.append(hits[0][1]["reason"])
            continue
        names = [n for n, _ in hits]
        worst = max(hits, key=lambda h: abs(h[1]["value"] or 0.0)
                    if check not in ("bsqi", "ksqi") else -(h[1]["value"] or 0.0))
        text = worst[1]["reason"].split(" ", 2)[2]     # drop "lead X"
        out.append(f"leads {_lead_list(names, leads)} ({len(names)} leads, worst {worst[0]}): "
                   f"{text}")
    return out


def _gate_reason(feature: str, leads: Sequence[str], sqi: Mapping[str, np.ndarray],
                 ) -> tuple[str, list[str]]:
    """Words for the feature that weighs most in an unacceptable score, and the leads
    they name."""
    def worst(key: str, high: bool, k: int = 1) -> list[int]:
        order = np.argsort(sqi[key], kind="stable")
        return [int(i) for i in (order[::-1] if high else order)[:k]]

    if feature == "flat_max":
        j = worst("flat_s", True)[0]
        return f"lead {leads[j]} flat (no change) for {sqi['flat_s'][j]:.1f} s", [leads[j]]
    if feature == "off_max":
        j = worst("lead_off_s", True)[0]
        return (f"lead {leads[j]} off for {sqi['lead_off_s'][j]:.1f} s: check the electrode",
                [leads[j]])
    if feature == "amp_min":
        j = worst("amplitude_mv", False)[0]
        return (f"lead {leads[j]} amplitude {sqi['amplitude_mv'][j]:.2f} mV is too small: "
                "electrode off or not touching the skin", [leads[j]])
    if feature == "ksqi_min":
        j = worst("ksqi", False)[0]
        return (f"lead {leads[j]} shows no clear QRS peaks (kurtosis {sqi['ksqi'][j]:.1f})",
                [leads[j]])
    three = min(3, len(leads))
    if feature == "bsqi_3":
        js = worst("bsqi", False, three)
        return (f"beats unclear in leads {_lead_list([leads[j] for j in js], leads)} "
                f"(detector agreement {max(sqi['bsqi'][j] for j in js):.2f} or less)",
                [leads[j] for j in js])
    if feature == "isqi_3":
        js = [j for j in worst("isqi", False, len(leads)) if math.isfinite(sqi["isqi"][j])][:three]
        return (f"leads {_lead_list([leads[j] for j in js], leads)} disagree with the other "
                f"leads on the beats (agreement {max(sqi['isqi'][j] for j in js):.2f} or "
                "less): check those electrodes", [leads[j] for j in js])
    if feature == "base_3":
        js = worst("baseline_mv", True, three)
        return (f"leads {_lead_list([leads[j] for j in js], leads)} baseline wander "
                f"{min(sqi['baseline_mv'][j] for j in js):.1f} mV or more: "
                "patient moving or breathing deeply, check electrode contact",
                [leads[j] for j in js])
    if feature == "bas_3":
        js = worst("bas_sqi", False, three)
        return (f"leads {_lead_list([leads[j] for j in js], leads)} dominated by drift "
                "below 1 Hz: patient moving, check electrode contact", [leads[j] for j in js])
    if feature == "hf_med":
        return (f"muscle/high-frequency noise {1000 * float(np.median(sqi['hf_noise_mv'])):.0f} "
                "uV RMS across the leads: ask the patient to relax, check skin preparation",
                list(leads))
    return f"signal quality too low ({feature})", list(leads)


#: The per-lead check each gate feature speaks for (its warnings are not repeated).
_FEATURE_CHECK = {"flat_max": "flat", "off_max": "lead_off", "amp_min": "amplitude",
                  "ksqi_min": "ksqi", "bsqi_3": "bsqi", "base_3": "baseline",
                  "bas_3": "baseline", "hf_med": "hf_noise", "isqi_3": "bsqi"}

_SQI_KEYS = ("flat_s", "lead_off_s", "amplitude_mv", "ksqi", "bsqi", "baseline_mv",
             "bas_sqi", "hf_noise_mv", "isqi")


@functools.cache
def shipped_gate() -> gate_mod.GateModel:
    """The fitted gate shipped with fenji (``gate.json``), read once."""
    return gate_mod.load_gate()


def quality_report(signal_mv: np.ndarray, fs_hz: float, leads: Sequence[str],
                   thresholds: EcgQualityThresholds | None = None,
                   qrs: np.ndarray | None = None) -> dict[str, Any]:
    """Quality report of one record (see :func:`check_ecg`, which also returns the beats)."""
    return check_ecg(signal_mv, fs_hz, leads, thresholds, qrs)[0]


def _check_fs(fs_hz: float) -> None:
    if not (math.isfinite(fs_hz) and fs_hz >= MIN_FS_HZ):
        raise PeerError(f"sampling frequency {fs_hz:g} Hz: the checks need at least "
                        f"{MIN_FS_HZ:g} Hz (a QRS lasts about 0.1 s); check the cart's "
                        "export settings")


def _samples(signal_mv: np.ndarray) -> np.ndarray:
    """(samples, leads) float64, C-contiguous, every sample a number within
    :data:`MAX_ABS_MV`: the others become 0.0, so that a gap is a run of one
    constant value and reads as "lead off"."""
    x = np.asarray(signal_mv, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.size and not (-MAX_ABS_MV <= float(x.min()) and float(x.max()) <= MAX_ABS_MV):
        ok = np.abs(np.nan_to_num(x, nan=np.inf)) <= MAX_ABS_MV
        x = np.where(ok, x, np.zeros_like(x))
    return np.ascontiguousarray(x)


def measure_record(signal_mv: np.ndarray, fs_hz: float, thresholds: EcgQualityThresholds
                   | None = None) -> tuple[list[LeadMeasures], np.ndarray]:
    """Per-lead measures of a record and its gate features (:mod:`fenji.codecs.ecg.gate`)."""
    _check_fs(fs_hz)
    xs = _samples(signal_mv)
    ms = [m for m, _, _ in _measure_all(xs, fs_hz, thresholds or EcgQualityThresholds())]
    sqi = {k: np.array([getattr(m, k) for m in ms]) for k in _SQI_KEYS}
    return ms, gate_mod.record_features(sqi, xs.shape[0] / fs_hz)


def check_ecg(signal_mv: np.ndarray, fs_hz: float, leads: Sequence[str],
              thresholds: EcgQualityThresholds | None = None,
              qrs: np.ndarray | None = None, gate: gate_mod.GateModel | None = None
              ) -> tuple[dict[str, Any], np.ndarray]:
    """Quality report of one record and its beats (detected on the leads that pass).

    The verdict is the fitted gate's (:mod:`fenji.codecs.ecg.gate`): ``unacceptable``
    when its score is above its threshold.  Otherwise a record with any lead
    flagged by the per-lead checks (or an implausible heart rate) is
    ``acceptable_with_warnings``, else ``acceptable``.

    Parameters
    ----------
    signal_mv : (samples, leads) array in mV (NaN gaps count as lead off).
    fs_hz : sampling rate.
    leads : lead names, one per column.
    thresholds : :class:`EcgQualityThresholds`; defaults if ``None``.
    qrs : beats already detected on the record; detected here if ``None``.
    gate : the decision model; the shipped one if ``None``.

    Returns
    -------
    (report, qrs) where report is ``{"verdict", "reasons",
    "leads": {name: {"verdict", "checks": [...]}},
    "record": {"heart_rate_bpm", "n_beats", "checks": [...]}, "gate", "thresholds"}``
    where each check is ``{"check", "value", "threshold", "verdict", "reason"}``.
    """
    _check_fs(fs_hz)
    t = thresholds or EcgQualityThresholds()
    g = gate or shipped_gate()
    xs = _samples(signal_mv)    # a NaN, infinite or absurd sample reads as "lead off"
    if xs.shape[1] != len(leads):
        raise ValueError(f"{xs.shape[1]} signal columns but {len(leads)} lead names")
    leads = _unique_names(leads)
    lead_out: dict[str, Any] = {}
    lead_bad: list[tuple[str, str]] = []          # (lead, reason) of unusable leads
    beats_a: list[np.ndarray] = []
    beats_b: list[np.ndarray] = []
    measured = _measure_all(xs, fs_hz, t)
    duration_s = xs.shape[0] / fs_hz
    for j, name in enumerate(leads):
        m, ba, bb = measured[j]
        beats_a.append(ba)
        beats_b.append(bb)
        checks = _lead_checks(name, m, t, duration_s)
        v = max((c["verdict"] for c in checks), key=_RANK.__getitem__)
        lead_out[name] = {"verdict": v, "checks": checks}
        if v == UNACCEPTABLE:
            lead_bad.extend((name, r) for r in _lead_reasons(checks, v))
    good = [j for j, n in enumerate(leads) if lead_out[n]["verdict"] != UNACCEPTABLE]
    if qrs is None:
        # per 10-s window, the usable lead whose two detectors agree best; its beats
        # by the main detector (fenji.codecs.ecg.qrs.detect_qrs)
        use = good or list(range(len(leads)))
        chosen = qrs_mod.choose_leads([beats_a[j] for j in use],
                                      [beats_b[j] for j in use], xs.shape[0], fs_hz)
        beats = {int(k): qrs_mod.detect_qrs(np.ascontiguousarray(xs[:, use[k]]), fs_hz)
                 for k in np.unique(chosen)}
        qrs = qrs_mod.beats_from_leads(chosen, beats, fs_hz)
    hr = qrs_mod.heart_rate_bpm(qrs, fs_hz)
    hr_ok = hr is not None and t.hr_min_bpm <= hr <= t.hr_max_bpm
    hr_reason = None if hr_ok else (
        "no heartbeat found in any lead: check the electrodes and that the signal is an "
        "ECG" if hr is None else
        f"heart rate {hr:.0f} bpm outside {t.hr_min_bpm:.0f}-{t.hr_max_bpm:.0f}: "
        "check that the signal is an ECG")
    sqi = {k: np.array([getattr(measured[j][0], k) for j in range(len(leads))])
           for k in _SQI_KEYS}
    feats = gate_mod.record_features(sqi, duration_s)
    score = float(g.score(feats))
    by_gate = not score <= g.threshold          # a score that is not a number holds too
    # Two holds outside the fitted score, for what no labelled record shows: an ECG
    # with no usable lead or no heartbeat cannot be read.  (On the 308 labelled
    # records both happen only where the gate holds already: the fit is unchanged.)
    no_lead, no_beat = not good, hr is None
    held = by_gate or no_lead or no_beat
    rec_checks = [
        _check("heart_rate", hr, t.hr_min_bpm,
               UNACCEPTABLE if no_beat else ACCEPTABLE if hr_ok else WARNINGS, hr_reason),
        _check("usable_leads", len(good), 1, UNACCEPTABLE if no_lead else ACCEPTABLE,
               f"none of the {len(leads)} leads is usable" if no_lead else None),
        _check("gate_score", score, g.threshold, UNACCEPTABLE if by_gate else ACCEPTABLE, None),
    ]
    hr_warning = [hr_reason] if hr_reason and not no_beat else []
    if held and by_gate and math.isfinite(score):
        verdict = UNACCEPTABLE
        contrib = g.contributions(feats)
        top = max(contrib, key=contrib.__getitem__)
        main, named = _gate_reason(top, leads, sqi)
        warnings = _grouped_warnings(lead_out, leads, _FEATURE_CHECK.get(top, "")) + hr_warning
        rec_checks[-1]["reason"] = main
        # an unusable lead's own reason says more than the gate's feature name for it
        said = {n for n in leads if lead_out[n]["verdict"] == UNACCEPTABLE}
        # the leads the gate's main reason names come first: what to fix first
        first = [r for n, r in lead_bad if n in named]
        reasons = (([] if set(named) <= said else [main]) + first
                   + [r for n, r in lead_bad if n not in named] + warnings)
        if no_beat:
            reasons.append(str(hr_reason))
        if no_lead:
            reasons.insert(0, f"none of the {len(leads)} leads is usable")
    elif held:
        verdict = UNACCEPTABLE
        main = (f"none of the {len(leads)} leads is usable" if no_lead else str(hr_reason)
                if no_beat else "the signal could not be measured: check the file")
        reasons = ([main] + [r for _, r in lead_bad]
                   + _grouped_warnings(lead_out, leads) + hr_warning)
    else:
        warnings = _grouped_warnings(lead_out, leads) + hr_warning
        verdict = WARNINGS if (lead_bad or warnings) else ACCEPTABLE
        reasons = [r for _, r in lead_bad] + warnings
    return {
        "verdict": verdict,
        "reasons": reasons,
        "leads": lead_out,
        "record": {"heart_rate_bpm": None if hr is None else round(hr, 1),
                   "n_beats": int(len(qrs)), "checks": rec_checks},
        "gate": {"score": round(score, 4) if math.isfinite(score) else None,
                 "threshold": round(g.threshold, 4),
                 "features": {n: round(float(v), 4) for n, v in zip(g.features, feats,
                                                                    strict=True)}},
        "thresholds": asdict(t),
    }, np.asarray(qrs, dtype=np.int64)


def _unique_names(leads: Sequence[str]) -> list[str]:
    """Lead names, a repeated one numbered ("II", "II (2)"): a report keyed by name
    must not fold two leads into one."""
    seen: dict[str, int] = {}
    out = []
    for n in leads:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def lead_verdicts(report: Mapping[str, Any]) -> dict[str, str]:
    """``{lead: verdict}`` of a report (for summaries)."""
    return {k: v["verdict"] for k, v in report["leads"].items()}
