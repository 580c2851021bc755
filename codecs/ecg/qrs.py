"""QRS detection: Pan & Tompkins, and the per-window lead choice of several leads.

Two detectors with different features and decision rules, so that their
agreement (bSQI, Li, Clifford & Tarassenko, Physiol Meas 29:15, 2008) says
something about the signal:

* :func:`detect_qrs` (here) -- Pan & Tompkins (IEEE TBME 32:230, 1985) as
  reworked in sleepecg: spike removal, 5-15 Hz zero-phase band-pass, squared
  slope, 150 ms moving-window integration, adaptive signal/noise peak levels
  (initialised from the median of 1-s maxima, so one artefact cannot blind it),
  T-wave rejection by slope (measured at 8-15 Hz, above most of the T wave's
  energy) in the decision and in search-back, and by spectrum (a candidate
  with little of its slope above 8 Hz, :data:`T_HF_MIN`) there and in the gap
  fill, search-back at 1.66 RR (also after the last beat), a second look
  inside long gaps for small beats hidden by large ectopics (bigeminy halves
  the learned rate, so search-back never fires), R peak placed on the 5-40 Hz
  signal (:data:`R_HI_HZ`).
* :func:`fenji.codecs.ecg.qrs_slope.detect_qrs_slope` -- a block detector of
  the smoothed absolute slope.  Used for bSQI.
* :func:`detect_qrs_leads` -- several leads (Holter, 12-lead): every lead is
  detected on its own and, per 10-s window, the lead whose two detectors
  agree best supplies the beats (:func:`fenji.codecs.ecg.beats.choose_leads`).

Matching, bSQI/iSQI, RR statistics and scoring are in
:mod:`fenji.codecs.ecg.beats` (re-exported here).

Each loop is a Numba kernel compiled from its Python twin (``_x_nb =
njit(_x_py)``); tests run both on the same arrays.

Pacing spikes are 0.5-2 ms wide: the spike filter removes large ones, the
15 Hz low-pass leaves little of the rest, and the refractory period keeps a
spike and the paced QRS that follows it one beat.

>>> import numpy as np
>>> fs = 360.0
>>> x = np.zeros(int(20 * fs))
>>> beats = np.arange(200, x.size - 200, int(0.8 * fs))
>>> for b in beats:
...     x[b - 5:b + 6] += np.hanning(11) * 1.5
>>> found = detect_qrs(x, fs)
>>> bool(len(found) == len(beats) and np.abs(found - beats).max() <= 2)
True
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from fenji.codecs.ecg import filters as flt
from fenji.codecs.ecg.beats import (
    CHUNK_S,
    MATCH_S,
    REFRACTORY_S,
    BeatScore,
    RRStats,
    _by_chunks,
    beats_from_leads,
    bsqi,
    choose_beats,
    choose_leads,
    chunk_spans,
    heart_rate_bpm,
    isqi,
    match_count,
    rr_stats,
    score_beats,
)
from fenji.codecs.ecg.qrs_slope import band_b, detect_qrs_slope, detect_slope_from_bandpassed
from fenji.codecs.ecg.windows import window_p2p

# The beat-list helpers and the second detector live in their own modules; the
# names callers have always imported from here are re-exported.
__all__ = [
    "CHUNK_S", "MATCH_S", "REFRACTORY_S", "BeatScore", "RRStats", "band_a", "band_b",
    "band_t", "beats_from_leads", "bsqi", "choose_beats", "choose_leads", "chunk_spans",
    "detect_from_bandpassed", "detect_qrs", "detect_qrs_leads", "detect_qrs_py",
    "detect_qrs_slope", "detect_slope_from_bandpassed", "heart_rate_bpm", "isqi",
    "match_count", "qrs_feature", "rr_stats", "score_beats",
]

#: QRS energy band: Pan & Tompkins' 5-15 Hz, where QRS energy peaks and T/P waves
#: (below 5 Hz) and EMG/mains (above 20 Hz) do not.
QRS_BAND_HZ = (5.0, 15.0)
# Below this a QRS (about 0.1 s, its energy at 5-15 Hz) is a handful of samples: the
# filters and detectors here cannot work, and no cart records that slowly.
MIN_FS_HZ = 50.0
#: Moving-window integration: about one QRS width.
MWI_S = 0.15
#: A candidate within this time of the last beat with half its slope is a T wave.
T_WAVE_S = 0.36
#: ...or within the longest plausible QT at the current rate, whichever is longer:
#: Bazett's QT = QTc * sqrt(RR) with QTc = 0.5 s, the limit of pathological
#: prolongation (a T wave ends by then; a beat this close is premature and steep).
QTC_MAX_S = 0.5
#: ...or, in that window, if its 8-15 Hz slope is under this fraction of its 5-15 Hz
#: slope: a T wave's energy lies below 8 Hz, a QRS's around 10 Hz (chosen by
#: cross-validation over records, ``python -m bench ecg --qrs-cv``).
T_HF_MIN = 0.55
#: One lead's R peak is placed on the largest deflection, within 100 ms of the
#: energy peak, of the signal band-passed 5 Hz to this: wider than the 15 Hz of
#: the energy band, which smears a narrow QRS into the waves beside it (chosen by
#: the same cross-validation as :data:`T_HF_MIN`; 15 = on the energy band).
R_HI_HZ = 40.0
#: A candidate in the T window that is less than half as steep as the beat before
#: it is still a beat if its 8-15 Hz slope is at least this fraction of its 5-15 Hz
#: slope: a small QRS after a large one keeps a QRS's spectrum, a T wave does not
#: (fast runs, small normal beats after large ectopics; ``inf``: off; chosen by
#: the same cross-validation).
T_HF_QRS = 0.8
#: Gap fill: a hidden beat is this steep relative to the detected beats' median
#: (one lead; chosen by the cross-validation of :data:`T_HF_MIN`)...
GAP_REL = 0.2
#: ...(the bSQI detector of the quality report and the fused leads keep the first
#: version's value and single look: the gate was fitted on their output)...
GAP_REL_BSQI = 0.3
#: ...and this steep relative to the median slope of the 2.5-s block around it.
GAP_SNR = 8.0
#: ...and the steepest points passed over as T waves before a gap is given up.
GAP_TRIES = 3

# --- feature: squared slope, moving-window integrated ---------------------------

def _mwi_py(bp: np.ndarray, w: int) -> np.ndarray:
    """Centred moving average over ``w`` samples of the squared central difference."""
    n = bp.shape[0]
    d2 = np.zeros(n)
    for i in range(1, n - 1):
        d = bp[i + 1] - bp[i - 1]
        d2[i] = d * d
    out = np.zeros(n)
    half = w // 2
    acc = 0.0
    # after adding d2[k] the window is d2[k-w+1 .. k], centred at k-w+1+half
    for k in range(n + w):
        if k < n:
            acc += d2[k]
        if k - w >= 0 and k - w < n:
            acc -= d2[k - w]
        c = k - w + 1 + half
        if 0 <= c < n:
            out[c] = acc / w
    return out


_mwi_nb = njit(_mwi_py, nogil=True, cache=True)


def _local_maxima_py(y: np.ndarray) -> np.ndarray:
    """Indices of strict local maxima (the middle of a flat top counts once)."""
    n = y.shape[0]
    out = np.empty(n, dtype=np.int64)
    k = 0
    i = 1
    while i < n - 1:
        if y[i] > y[i - 1]:
            j = i
            while j < n - 1 and y[j + 1] == y[i]:
                j += 1
            if j < n - 1 and y[j + 1] < y[i]:
                out[k] = (i + j) // 2
                k += 1
            i = j + 1
        else:
            i += 1
    return out[:k]


_local_maxima_nb = njit(_local_maxima_py, nogil=True, cache=True)


# --- Pan-Tompkins decision rules -------------------------------------------------

def _pt_decide_py(mwi: np.ndarray, slope: np.ndarray, cand: np.ndarray, fs: float,
                  slope_bp: np.ndarray, hf_min: float, hf_qrs: float) -> np.ndarray:
    """Adaptive thresholding over candidate peaks ``cand`` of ``mwi``.

    ``slope`` is the absolute slope of the 8-15 Hz signal and ``slope_bp`` that of
    the 5-15 Hz one (for the T-wave rules: a candidate in the T window is a T wave
    if its ``slope`` is under half the last beat's -- unless its ``slope`` is at
    least ``hf_qrs`` x its own ``slope_bp``: a QRS's spectrum, whatever its size --
    or under ``hf_min`` x its ``slope_bp``).  Returns the indices into ``mwi`` of
    the accepted peaks.
    """
    n = mwi.shape[0]
    nc = cand.shape[0]
    out = np.empty(nc, dtype=np.int64)
    nq = 0
    if nc == 0:
        return out[:0]
    refr = int(REFRACTORY_S * fs)
    twin = int(T_WAVE_S * fs)
    sw = int(0.075 * fs)
    # initial levels from the median of 1-s block maxima over the first 8 s, so
    # that one artefact spike at the start does not blind the detector
    blk = max(1, int(fs))
    nb = max(1, min(n, 8 * blk) // blk)
    bmax = np.zeros(nb)
    sm = 0.0
    for b in range(nb):
        for i in range(b * blk, min(n, (b + 1) * blk)):
            sm += mwi[i]
            if mwi[i] > bmax[b]:
                bmax[b] = mwi[i]
    spk = 0.5 * np.median(bmax)
    npk = 0.5 * sm / max(nb * blk, 1)
    thr1 = npk + 0.25 * (spk - npk)
    last = -1
    last_val = 0.0
    last_slope = 0.0
    sl = np.zeros(8)      # slopes of the last 8 beats: the typical QRS slope
    nsl = 0
    last_ci = -1          # candidate index of the last accepted beat
    rr = np.zeros(8)
    nrr = 0
    rr_avg = 0.0
    ci = 0
    while ci < nc:
        p = cand[ci]
        v = mwi[p]
        # search-back: a beat is overdue, take the best candidate above thr2 in the gap
        if last >= 0 and rr_avg > 0.0 and p - last > 1.66 * rr_avg:
            thr2 = 0.5 * thr1
            best = -1
            bestv = 0.0
            tw = twin
            qt = QTC_MAX_S * fs * (rr_avg / fs) ** 0.5
            if qt > tw:
                tw = int(qt)
            for cj in range(last_ci + 1, ci):
                q = cand[cj]
                if q - last >= refr and p - q >= refr and mwi[q] > thr2 and mwi[q] > bestv:
                    if q - last < tw:
                        # Pan & Tompkins' T-wave test holds in search-back too: a
                        # premature ectopic shortens the mean RR, so search-back
                        # fires in the compensatory pause and would take the
                        # ectopic's broad T wave.  A T wave is less steep than
                        # half of both the beat before it and a typical beat
                        # (after a large ectopic, a small normal beat is not).
                        s = 0.0
                        sb = 0.0
                        for k in range(max(0, q - sw), min(n, q + sw + 1)):
                            if slope[k] > s:
                                s = slope[k]
                            if slope_bp[k] > sb:
                                sb = slope_bp[k]
                        if (s < 0.5 * min(last_slope, np.median(sl[:min(nsl, 8)]))
                                and s < hf_qrs * sb) or s < hf_min * sb:
                            continue
                    best = cj
                    bestv = mwi[q]
            if best >= 0:
                q = cand[best]
                out[nq] = q
                nq += 1
                spk = 0.25 * bestv + 0.75 * spk
                r = q - last
                rr[nrr % 8] = r
                nrr += 1
                rr_avg = rr[: min(nrr, 8)].mean()
                last = q
                last_val = bestv
                lo = max(0, q - sw)
                s = 0.0
                for k in range(lo, min(n, q + sw + 1)):
                    if slope[k] > s:
                        s = slope[k]
                last_slope = s
                sl[nsl % 8] = s
                nsl += 1
                last_ci = best
                thr1 = npk + 0.25 * (spk - npk)
                continue  # re-examine p against the new last beat
        if last >= 0 and p - last < refr:
            # a bigger peak inside the refractory period replaces the last beat
            if v > last_val and nq > 0:
                lo = max(0, p - sw)
                s = 0.0
                for k in range(lo, min(n, p + sw + 1)):
                    if slope[k] > s:
                        s = slope[k]
                out[nq - 1] = p
                if nrr > 0:
                    rr[(nrr - 1) % 8] += p - last
                    rr_avg = rr[: min(nrr, 8)].mean()
                last = p
                last_val = v
                last_slope = s
                if nsl > 0:
                    sl[(nsl - 1) % 8] = s
                last_ci = ci
            ci += 1
            continue
        if v > thr1:
            lo = max(0, p - sw)
            s = 0.0
            sb = 0.0
            for k in range(lo, min(n, p + sw + 1)):
                if slope[k] > s:
                    s = slope[k]
                if slope_bp[k] > sb:
                    sb = slope_bp[k]
            tw = twin
            if rr_avg > 0.0:
                qt = QTC_MAX_S * fs * (rr_avg / fs) ** 0.5
                if qt > tw:
                    tw = int(qt)
            if last >= 0 and p - last < tw and ((s < 0.5 * last_slope and s < hf_qrs * sb)
                                                or s < hf_min * sb):
                npk = 0.125 * v + 0.875 * npk
            else:
                out[nq] = p
                nq += 1
                # a lone artefact must not raise the level by more than 3x at once
                spk = 0.125 * min(v, 3.0 * spk + 1e-12) + 0.875 * spk
                if last >= 0:
                    rr[nrr % 8] = p - last
                    nrr += 1
                    rr_avg = rr[: min(nrr, 8)].mean()
                last = p
                last_val = v
                last_slope = s
                sl[nsl % 8] = s
                nsl += 1
                last_ci = ci
        else:
            npk = 0.125 * v + 0.875 * npk
        thr1 = npk + 0.25 * (spk - npk)
        ci += 1
    # search-back after the last beat too: nothing later would trigger it
    while last >= 0 and rr_avg > 0.0 and (n - 1) - last > 1.66 * rr_avg:
        thr2 = 0.5 * thr1
        best = -1
        bestv = 0.0
        for cj in range(last_ci + 1, nc):
            q = cand[cj]
            if q - last >= refr and mwi[q] > thr2 and mwi[q] > bestv:
                best = cj
                bestv = mwi[q]
        if best < 0:
            break
        q = cand[best]
        out[nq] = q
        nq += 1
        spk = 0.25 * bestv + 0.75 * spk
        thr1 = npk + 0.25 * (spk - npk)
        last = q
        last_ci = best
    return out[:nq]


_pt_decide_nb = njit(_pt_decide_py, nogil=True, cache=True)


def _refine_py(bp: np.ndarray, peaks: np.ndarray, half: int, refr: int) -> np.ndarray:
    """Move each peak to the largest |band-passed| sample within +-``half``; drop
    peaks that then fall within ``refr`` of the previous one."""
    n = bp.shape[0]
    out = np.empty(peaks.shape[0], dtype=np.int64)
    k = 0
    for i in range(peaks.shape[0]):
        p = peaks[i]
        best = p
        bv = -1.0
        for j in range(max(0, p - half), min(n, p + half + 1)):
            a = abs(bp[j])
            if a > bv:
                bv = a
                best = j
        if k > 0 and best - out[k - 1] < refr:
            if abs(bp[best]) > abs(bp[out[k - 1]]):
                out[k - 1] = best
            continue
        out[k] = best
        k += 1
    return out[:k]


_refine_nb = njit(_refine_py, nogil=True, cache=True)


def _gapfill_py(slope: np.ndarray, peaks: np.ndarray, fs: float, rel: float,
                snr: float, slope_t: np.ndarray, hf_min: float, tries: int,
                split: bool) -> np.ndarray:
    """Second look between beats for small QRS hidden by big ones (bigeminy with
    large ectopics halves the learned rate, so search-back never fires): in each
    gap, the steepest point at least 0.3 s from both beats is a beat if its slope is
    ``rel`` x the beats' median slope and ``snr`` x the median slope of the 2.5-s
    block around the gap.  Within the T window of the beat before it (:data:`T_WAVE_S`
    or Bazett's longest QT, :data:`QTC_MAX_S`, at the beats' median RR), a point
    whose 8-15 Hz slope ``slope_t`` is under ``hf_min`` x its ``slope`` is a T wave:
    it is passed over and the next steepest point looked at (at most ``tries``
    points, :data:`GAP_TRIES`: a large ectopic's broad T wave is often steeper than
    the small beat after it).  With ``split``, a beat found splits its gap and both
    halves are looked at again (a long pause can hide several beats).  ``tries=1,
    split=False`` is the first version's single look (the bSQI detector keeps it)."""
    n = slope.shape[0]
    nk = peaks.shape[0]
    if nk < 3:
        return peaks
    sw = int(0.05 * fs)
    sk = np.empty(nk)
    for k in range(nk):
        m = 0.0
        for i in range(max(0, peaks[k] - sw), min(n, peaks[k] + sw + 1)):
            if slope[i] > m:
                m = slope[i]
        sk[k] = m
    med = np.median(sk)
    dmin = int(0.3 * fs)
    # the T window of the decision rules: T_WAVE_S, or the longest plausible QT at
    # the beats' median rate (a fixed 0.36 s let a slow rhythm's T wave through:
    # its second flank, looked at after the first was passed over, lies beyond it)
    twin = int(T_WAVE_S * fs)
    qt = int(QTC_MAX_S * fs * (np.median(np.diff(peaks)) / fs) ** 0.5)
    if qt > twin:
        twin = qt
    # local slope level: median of 2.5-s blocks, computed once (not once per gap)
    blk = max(1, int(2.5 * fs))
    nb = (n + blk - 1) // blk
    level = np.full(nb, -1.0)          # filled on first use, for steep candidates only
    # every added beat needs 2 x dmin of gap, so n // dmin bounds the additions
    cap = nk + n // max(dmin, 1) + 1
    out = np.empty(cap, dtype=np.int64)
    no = 0
    stack = np.empty(cap, dtype=np.int64)   # right ends of the gaps still to look at
    for k in range(nk):
        out[no] = peaks[k]
        no += 1
        if k == nk - 1:
            break
        p = peaks[k]
        ns = 0
        stack[ns] = peaks[k + 1]
        ns += 1
        while ns > 0:
            q = stack[ns - 1]
            found = -1
            lo = p + dmin
            # (a gap shorter than 2 x dmin holds nothing: no try)
            for _t in range(tries if q - p > 2 * dmin else 0):
                j = -1
                mj = 0.0
                for i in range(lo, q - dmin):
                    if slope[i] > mj:
                        mj = slope[i]
                        j = i
                if j < 0 or mj < rel * med:
                    break
                bi = ((p + q) // 2) // blk
                if level[bi] < 0.0:
                    level[bi] = np.median(slope[bi * blk:min(n, (bi + 1) * blk)])
                if mj < snr * level[bi]:
                    break
                if j - p < twin:
                    st = 0.0
                    sb = 0.0
                    for i in range(max(0, j - sw), min(n, j + sw + 1)):
                        st = max(st, slope_t[i])
                        sb = max(sb, slope[i])
                    if st < hf_min * sb:
                        lo = j + sw + 1      # a T wave: look after it
                        continue
                found = j
                break
            if found < 0:  # nothing fits: this gap is done, the next one starts at q
                ns -= 1
                if ns > 0:
                    out[no] = q
                    no += 1
                    p = q
                continue
            if split:
                stack[ns] = found
                ns += 1
            else:
                out[no] = found
                no += 1
                ns -= 1
                if ns > 0:
                    out[no] = q
                    no += 1
                    p = q
    return out[:no]


_gapfill_nb = njit(_gapfill_py, nogil=True, cache=True)


def _abs_slope_py(bp: np.ndarray) -> np.ndarray:
    n = bp.shape[0]
    s = np.zeros(n)
    for i in range(1, n - 1):
        s[i] = abs(bp[i + 1] - bp[i - 1])
    return s


_abs_slope_nb = njit(_abs_slope_py, nogil=True, cache=True)


def _running_level_py(mwi: np.ndarray, w: int) -> np.ndarray:
    """Per-block (``w`` samples) 90th-ish level: block max of mwi, then the median
    of each block with its neighbours (5 blocks), held constant inside a block."""
    n = mwi.shape[0]
    nb = (n + w - 1) // w
    bm = np.zeros(nb)
    for b in range(nb):
        m = 0.0
        for i in range(b * w, min(n, (b + 1) * w)):
            if mwi[i] > m:
                m = mwi[i]
        bm[b] = m
    out = np.empty(n)
    for b in range(nb):
        lo = max(0, b - 2)
        hi = min(nb, b + 3)
        med = np.median(bm[lo:hi])
        if med <= 0.0:
            med = 1.0
        for i in range(b * w, min(n, (b + 1) * w)):
            out[i] = med
    return out


_running_level_nb = njit(_running_level_py, nogil=True, cache=True)


# --- public API ------------------------------------------------------------------

def _columns(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"signal must be (samples,) or (samples, leads), got {a.shape}")
    return a


def qrs_feature(x: np.ndarray, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Band-passed signals (samples, leads) and the fused, level-normalised
    integrated energy (samples,) that :func:`detect_qrs` thresholds."""
    a = _columns(x)
    h, win = max(1, int(SPIKE_HALF_S * fs_hz)), max(1, int(fs_hz))
    a = np.column_stack([_despike_nb(np.ascontiguousarray(c), h, win, SPIKE_K) for c in a.T])
    bp = flt.sosfiltfilt(band_a(fs_hz), a)
    w = max(3, int(MWI_S * fs_hz))
    if a.shape[1] == 1:
        return bp, _mwi_nb(np.ascontiguousarray(bp[:, 0]), w)
    blk = max(w, int(2.5 * fs_hz))
    fused = np.zeros(a.shape[0])
    for j in range(a.shape[1]):
        m = _mwi_nb(np.ascontiguousarray(bp[:, j]), w)
        fused += m / _running_level_nb(m, blk)
    return bp, fused


def _despike_py(x: np.ndarray, h: int, win: int, k: float) -> np.ndarray:
    """Replace spikes -- samples standing more than ``k`` x the signal's typical beat
    amplitude off the line through the samples ``h`` either side, while those two
    differ by much less -- by that line.  No heart moves the skin potential by several QRS
    amplitudes within 2h samples and back; electrode pops, ESD and pacing spikes do.
    The typical amplitude is the lower quartile of ``win``-sample (1 s) window
    peak-to-peaks, so that
    spikes in up to three windows out of four do not raise it."""
    n = x.shape[0]
    y = x.copy()
    if n < 2 * h + 1 or h < 1:
        return y
    nw = n // win
    if nw == 0:
        return y
    amp = np.sort(window_p2p(x, win))[nw // 4]
    if amp <= 0.0:
        return y
    thr = k * amp
    i = h
    while i < n - h:
        a = x[i - h]
        b = x[i + h]
        e = x[i] - 0.5 * (a + b)
        if (e > thr or e < -thr) and 4.0 * abs(b - a) < abs(e):
            for j in range(i - h + 1, i + h):
                y[j] = a + (b - a) * (j - (i - h)) / (2.0 * h)
            i += h
        else:
            i += 1
    return y


_despike_nb = njit(_despike_py, nogil=True, cache=True)

#: Spike removal: half-width (s) and threshold (x typical beat amplitude).
SPIKE_HALF_S = 0.006
SPIKE_K = 3.0


def band_a(fs_hz: float) -> np.ndarray:
    """The ``sos`` band-pass of :func:`detect_qrs` (5-20 Hz)."""
    return flt.design_bandpass(QRS_BAND_HZ[0], min(QRS_BAND_HZ[1], 0.45 * fs_hz), fs_hz)


def band_r(fs_hz: float, hi_hz: float = R_HI_HZ) -> np.ndarray:
    """The band one lead's R peak is placed on: 5 Hz to ``hi_hz``."""
    return flt.design_bandpass(QRS_BAND_HZ[0], min(hi_hz, 0.45 * fs_hz), fs_hz)


def band_t(fs_hz: float) -> np.ndarray:
    """High-pass at 8 Hz applied to the :func:`band_a` output for the T-wave test:
    8-15 Hz, above most of a T wave's energy."""
    return flt.design_highpass(8.0, fs_hz)


def detect_from_bandpassed(bp: np.ndarray, fs_hz: float, hb: np.ndarray | None = None,
                           t_hf_min: float = T_HF_MIN, r_sig: np.ndarray | None = None,
                           t_hf_qrs: float = T_HF_QRS, gap_rel: float = GAP_REL
                           ) -> np.ndarray:
    """Pan-Tompkins on one lead already band-passed (lets a caller filter all leads
    in one 2-D pass).  ``hb``: ``bp`` further filtered with :func:`band_t`; when
    given, the T-wave test compares slopes there, where T waves (below 8 Hz) have
    little energy -- this is what :func:`detect_qrs` does.  Without it the slope
    of ``bp`` is used (the bSQI detector of the quality report) and the
    ``t_hf_min`` test (:data:`T_HF_MIN`) is off, as are ``t_hf_qrs``
    (:data:`T_HF_QRS`), ``gap_rel`` (:data:`GAP_REL_BSQI` instead) and the gap fill's
    second looks (:data:`GAP_TRIES`).  ``r_sig``: the signal the R peak is placed on
    (its largest deflection within 100 ms); ``bp`` if not given."""
    bp = np.ascontiguousarray(bp, dtype=np.float64)
    if bp.size < 3:
        return np.zeros(0, dtype=np.int64)
    mwi = _mwi_nb(bp, max(3, int(MWI_S * fs_hz)))
    cand = _local_maxima_nb(mwi)
    slope = _abs_slope_nb(bp)
    slope_t = slope if hb is None else _abs_slope_nb(np.ascontiguousarray(hb, dtype=np.float64))
    if hb is None:
        peaks = _pt_decide_nb(mwi, slope_t, cand, float(fs_hz), slope, t_hf_min, np.inf)
        peaks = _gapfill_nb(slope, peaks, float(fs_hz), GAP_REL_BSQI, GAP_SNR, slope_t,
                            t_hf_min, 1, False)
    else:
        peaks = _pt_decide_nb(mwi, slope_t, cand, float(fs_hz), slope, t_hf_min, t_hf_qrs)
        peaks = _gapfill_nb(slope, peaks, float(fs_hz), gap_rel, GAP_SNR, slope_t, t_hf_min,
                            GAP_TRIES, True)
    ref = bp if r_sig is None else np.ascontiguousarray(r_sig, dtype=np.float64)
    return _refine_nb(ref, peaks, int(0.1 * fs_hz), int(REFRACTORY_S * fs_hz))


def detect_qrs(x: np.ndarray, fs_hz: float, *, chunk_s: float = CHUNK_S,
               t_hf_min: float = T_HF_MIN, r_hi_hz: float = R_HI_HZ,
               t_hf_qrs: float = T_HF_QRS, gap_rel: float = GAP_REL) -> np.ndarray:
    """R-peak sample indices (int64, increasing) of a 1-D signal or of the leads of a
    (samples, leads) signal fused.  Physical units (mV) or ADC units both work.

    Leads that are flat or saturated should be left out by the caller (the quality
    report knows which); NaN and infinite samples are read as 0.  ``fs_hz`` must be
    at least :data:`MIN_FS_HZ`.  Records longer than ``chunk_s`` are detected chunk
    by chunk (:func:`chunk_spans`).  ``t_hf_min``: the spectral T-wave test of one
    lead (:data:`T_HF_MIN`; 0 turns it off).
    ``r_hi_hz``: the band one lead's R peak is placed on (:data:`R_HI_HZ`).
    ``t_hf_qrs`` (:data:`T_HF_QRS`) and ``gap_rel`` (:data:`GAP_REL`): one lead's
    T-wave exemption and gap-fill steepness.
    """
    if not (math.isfinite(fs_hz) and fs_hz >= MIN_FS_HZ):
        raise ValueError(f"fs_hz = {fs_hz:g}: QRS detection needs at least {MIN_FS_HZ:g} Hz")
    a = _columns(x)
    if not np.isfinite(a).all():   # a gap (NaN) or a broken sample: read as 0
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return _by_chunks(lambda seg: _detect_qrs(seg, fs_hz, t_hf_min, r_hi_hz, t_hf_qrs, gap_rel),
                      a, fs_hz, chunk_s)


def _detect_qrs(a: np.ndarray, fs_hz: float, t_hf_min: float = T_HF_MIN,
                r_hi_hz: float = R_HI_HZ, t_hf_qrs: float = T_HF_QRS,
                gap_rel: float = GAP_REL) -> np.ndarray:
    if a.shape[1] == 1:
        if a.shape[0] < 3:
            return np.zeros(0, dtype=np.int64)
        raw = _despike_nb(np.ascontiguousarray(a[:, 0]), max(1, int(SPIKE_HALF_S * fs_hz)),
                          max(1, int(fs_hz)), SPIKE_K)
        bp = flt.sosfiltfilt(band_a(fs_hz), raw)
        r_sig = None if r_hi_hz <= QRS_BAND_HZ[1] else flt.sosfiltfilt(band_r(fs_hz, r_hi_hz), raw)
        return detect_from_bandpassed(bp, fs_hz, flt.sosfiltfilt(band_t(fs_hz), bp), t_hf_min,
                                      r_sig, t_hf_qrs, gap_rel)
    bp, mwi = qrs_feature(a, fs_hz)
    if mwi.size < 3:
        return np.zeros(0, dtype=np.int64)
    cand = _local_maxima_nb(mwi)
    slope = _abs_slope_nb(np.ascontiguousarray(np.abs(bp).sum(axis=1) if bp.shape[1] > 1
                                               else bp[:, 0]))
    # several leads: no 8-15 Hz signal, so the spectral T-wave test is off (ratio 1)
    peaks = _pt_decide_nb(mwi, slope, cand, float(fs_hz), slope, 0.0, np.inf)
    peaks = _gapfill_nb(slope, peaks, float(fs_hz), GAP_REL_BSQI, GAP_SNR, slope, 0.0, 1, False)
    ref = bp[:, 0] if bp.shape[1] == 1 else np.sqrt((bp * bp).sum(axis=1))
    return _refine_nb(np.ascontiguousarray(ref), peaks, int(0.1 * fs_hz),
                      int(REFRACTORY_S * fs_hz))


def detect_qrs_py(x: np.ndarray, fs_hz: float) -> np.ndarray:
    """The same detector run on the plain-Python twins (slow: tests on excerpts only)."""
    a = _columns(x)
    h, win = max(1, int(SPIKE_HALF_S * fs_hz)), max(1, int(fs_hz))
    raw = [_despike_py(np.ascontiguousarray(c), h, win, SPIKE_K) for c in a.T]
    bp = np.column_stack([flt._filtfilt_py(band_a(fs_hz), r) for r in raw])
    w = max(3, int(MWI_S * fs_hz))
    if a.shape[1] == 1:
        mwi = _mwi_py(bp[:, 0], w)
    else:
        blk = max(w, int(2.5 * fs_hz))
        mwi = np.zeros(a.shape[0])
        for j in range(a.shape[1]):
            m = _mwi_py(np.ascontiguousarray(bp[:, j]), w)
            mwi += m / _running_level_py(m, blk)
    if mwi.size < 3:
        return np.zeros(0, dtype=np.int64)
    cand = _local_maxima_py(mwi)
    slope = _abs_slope_py(np.abs(bp).sum(axis=1) if bp.shape[1] > 1 else bp[:, 0])
    slope_t = slope if bp.shape[1] > 1 else _abs_slope_py(
        flt._filtfilt_py(band_t(fs_hz), np.ascontiguousarray(bp[:, 0])))
    if bp.shape[1] > 1:
        peaks = _pt_decide_py(mwi, slope_t, cand, float(fs_hz), slope, 0.0, np.inf)
        peaks = _gapfill_py(slope, peaks, float(fs_hz), GAP_REL_BSQI, GAP_SNR, slope_t, 0.0, 1,
                            False)
    else:
        peaks = _pt_decide_py(mwi, slope_t, cand, float(fs_hz), slope, T_HF_MIN, T_HF_QRS)
        peaks = _gapfill_py(slope, peaks, float(fs_hz), GAP_REL, GAP_SNR, slope_t, T_HF_MIN,
                            GAP_TRIES, True)
    if bp.shape[1] > 1:
        ref = np.sqrt((bp * bp).sum(axis=1))
    elif R_HI_HZ > QRS_BAND_HZ[1]:
        ref = flt._filtfilt_py(band_r(fs_hz), raw[0])
    else:
        ref = bp[:, 0]
    return _refine_py(ref, peaks, int(0.1 * fs_hz), int(REFRACTORY_S * fs_hz))


def detect_qrs_leads(x: np.ndarray, fs_hz: float, window_s: float = 10.0,
                     margin: float = 0.05) -> np.ndarray:
    """Beats from several leads: each lead is detected on its own, and in every
    ``window_s`` window the lead whose two detectors agree best (bSQI, Li et al.
    2008) supplies the beats.  One lead: same as :func:`detect_qrs`."""
    a2 = _columns(x)
    if a2.shape[1] == 1:
        return detect_qrs(a2[:, 0], fs_hz)
    cols = [np.ascontiguousarray(a2[:, j]) for j in range(a2.shape[1])]
    return choose_beats([detect_qrs(c, fs_hz) for c in cols],
                        [detect_qrs_slope(c, fs_hz) for c in cols],
                        a2.shape[0], fs_hz, window_s, margin)


