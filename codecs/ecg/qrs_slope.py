"""The second, independent QRS detector, for bSQI (:func:`fenji.codecs.ecg.beats.bsqi`).

A block detector with other features and another decision rule than
:func:`fenji.codecs.ecg.qrs.detect_qrs`, so that the two agreeing says
something about the signal: in every 2.5 s block, the peaks of the 80 ms
smoothed absolute slope (8-25 Hz) above 40 % of the block's 98th percentile,
250 ms refractory.  Each loop is a Numba kernel compiled from its Python twin.

>>> import numpy as np
>>> fs = 500.0
>>> x = np.zeros(int(10 * fs))
>>> beats = np.arange(250, x.size - 250, 400)
>>> for b in beats:
...     x[b - 5:b + 6] += np.hanning(11)
>>> found = detect_qrs_slope(x, fs)
>>> bool(len(found) == len(beats) and np.abs(found - beats).max() <= 10)
True
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import register_jitable

from fenji.codecs.ecg import filters as flt
from fenji.codecs.ecg.beats import CHUNK_S, _by_chunks


def band_b(fs_hz: float) -> np.ndarray:
    """The ``sos`` band-pass of :func:`detect_qrs_slope` (8-25 Hz)."""
    return flt.design_bandpass(8.0, min(25.0, 0.45 * fs_hz), fs_hz)


@register_jitable
def _kth_smallest(a: np.ndarray, k: int) -> float:
    """``np.partition(a, k)[k]``.  Near the top (the block percentile: k = 98 % of
    n) it keeps the ``n - k`` largest values in a small sorted list -- one
    comparison for most samples; otherwise quickselect on a copy (median-of-three
    pivot, Hoare partition).  Both beat Numba's ``np.partition`` several times."""
    n = a.shape[0]
    t = n - k
    if t <= 64:
        top = np.empty(t)           # the t largest so far, ascending
        c = 0
        for i in range(n):
            v = a[i]
            if c < t:
                j = c
                while j > 0 and top[j - 1] > v:
                    top[j] = top[j - 1]
                    j -= 1
                top[j] = v
                c += 1
            elif v > top[0]:
                j = 0
                while j + 1 < t and top[j + 1] < v:
                    top[j] = top[j + 1]
                    j += 1
                top[j] = v
        return float(top[0])
    b = a.copy()
    lo = 0
    hi = b.shape[0] - 1
    while hi > lo:
        mid = (lo + hi) // 2
        if b[mid] < b[lo]:
            b[mid], b[lo] = b[lo], b[mid]
        if b[hi] < b[lo]:
            b[hi], b[lo] = b[lo], b[hi]
        if b[hi] < b[mid]:
            b[hi], b[mid] = b[mid], b[hi]
        piv = b[mid]
        i = lo
        j = hi
        while i <= j:
            while b[i] < piv:
                i += 1
            while b[j] > piv:
                j -= 1
            if i <= j:
                b[i], b[j] = b[j], b[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return float(b[k])


def _block_detect_py(feat: np.ndarray, blk: int, refr: int) -> np.ndarray:
    n = feat.shape[0]
    out = np.empty(n // max(refr, 1) + 2, dtype=np.int64)
    k = 0
    nb = (n + blk - 1) // blk
    for b in range(nb):
        lo = b * blk
        hi = min(n, lo + blk)
        k98 = int(0.98 * (hi - lo - 1))
        thr = 0.4 * _kth_smallest(feat[lo:hi], k98)        # 98th percentile, no sort
        for i in range(max(lo, 1), min(hi, n - 1)):
            v = feat[i]
            if v > thr and v >= feat[i - 1] and v > feat[i + 1]:
                if k > 0 and i - out[k - 1] < refr:
                    if v > feat[out[k - 1]]:
                        out[k - 1] = i
                    continue
                if k < out.shape[0]:
                    out[k] = i
                    k += 1
    return out[:k]


_block_detect_nb = njit(_block_detect_py, nogil=True, cache=True)


def _smooth_abs_slope_py(bp: np.ndarray, w: int) -> np.ndarray:
    n = bp.shape[0]
    s = np.zeros(n)
    for i in range(1, n - 1):
        s[i] = abs(bp[i + 1] - bp[i - 1])
    out = np.zeros(n)
    acc = 0.0
    half = w // 2
    for i in range(n + half):
        if i < n:
            acc += s[i]
        if i - w >= 0:
            acc -= s[i - w]
        c = i - half
        if 0 <= c < n:
            out[c] = acc / w
    return out


_smooth_abs_slope_nb = njit(_smooth_abs_slope_py, nogil=True, cache=True)


def detect_qrs_slope(x: np.ndarray, fs_hz: float, *, chunk_s: float = CHUNK_S) -> np.ndarray:
    """Second detector (1-D signal): 8-25 Hz band, 80 ms smoothed |slope|, block threshold."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(-1))
    if a.size < int(0.5 * fs_hz):
        return np.zeros(0, dtype=np.int64)
    return _by_chunks(lambda seg: detect_slope_from_bandpassed(
        flt.sosfiltfilt(band_b(fs_hz), seg), fs_hz), a, fs_hz, chunk_s)


def detect_slope_from_bandpassed(bp: np.ndarray, fs_hz: float) -> np.ndarray:
    """:func:`detect_qrs_slope` of one lead already filtered with :func:`band_b`."""
    bp = np.ascontiguousarray(bp, dtype=np.float64)
    if bp.size < int(0.5 * fs_hz):
        return np.zeros(0, dtype=np.int64)
    feat = _smooth_abs_slope_nb(bp, max(3, int(0.08 * fs_hz)))
    return _block_detect_nb(feat, int(2.5 * fs_hz), int(0.25 * fs_hz))
