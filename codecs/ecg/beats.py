"""Beat lists: chunked detection, matching, detector agreement, RR and scoring.

* :func:`chunk_spans` -- long records are detected chunk by chunk with context,
  and the chunks' beats joined (one beat kept at a seam);
* :func:`match_count`, :func:`bsqi` (agreement of two detectors, Li, Clifford &
  Tarassenko, Physiol Meas 29:15, 2008) and :func:`isqi` (agreement between
  leads, Clifford et al., Physiol Meas 33:1419, 2012);
* :func:`rr_stats`, :func:`heart_rate_bpm`;
* :func:`choose_leads` -- per window, the lead whose two detectors agree best;
* :func:`score_beats` -- beat-by-beat comparison with reference annotations
  (AAMI EC57 style).

Nothing here detects a beat (:mod:`fenji.codecs.ecg.qrs` does); every loop is a
Numba kernel compiled from its Python twin.

>>> import numpy as np
>>> ref = np.array([100, 400, 700, 1000])
>>> s = score_beats(ref, np.array([102, 395, 850, 1001]), 360.0)
>>> (s.tp, s.fn, s.fp)
(3, 1, 1)
>>> round(bsqi(ref, np.array([102, 395, 1001]), 360.0), 2)
0.75
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit
from numba.extending import register_jitable

#: No two beats closer than this (physiological refractory period).
REFRACTORY_S = 0.2
#: Standard beat-matching window (AAMI EC57 / ANSI): +-150 ms.
MATCH_S = 0.15
#: Records longer than this are processed in chunks (memory stays at a few dozen
#: float64 copies of one chunk per lead, not of a 24-h Holter), each chunk read
#: with CHUNK_OVERLAP_S of context either side so no beat is cut at an edge.
CHUNK_S = 600.0
CHUNK_OVERLAP_S = 10.0


def chunk_spans(n_samples: int, fs_hz: float, chunk_s: float = CHUNK_S
                ) -> list[tuple[int, int, int, int]]:
    """``(lo, start, end, hi)`` per chunk: its core ``[start, end)`` and the span
    ``[lo, hi)`` read around it.  One span ``(0, 0, n, n)`` for short records.

    >>> chunk_spans(100, 1.0, chunk_s=40.0)
    [(0, 0, 40, 50), (30, 40, 80, 90), (70, 80, 100, 100)]
    """
    c = max(1, int(chunk_s * fs_hz))
    ov = int(CHUNK_OVERLAP_S * fs_hz)
    if n_samples <= c + ov:
        return [(0, 0, n_samples, n_samples)]
    return [(max(0, s - ov), s, min(n_samples, s + c), min(n_samples, s + c + ov))
            for s in range(0, n_samples, c)]


def _join(parts: list[np.ndarray], fs_hz: float) -> np.ndarray:
    """Beats of consecutive chunks (cores already cut), one beat kept at a seam."""
    if len(parts) == 1:
        return parts[0]
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if out.size > 1:
        keep = np.concatenate([[True], np.diff(out) >= int(REFRACTORY_S * fs_hz)])
        out = out[keep]
    return out.astype(np.int64)


def _by_chunks(fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray, fs_hz: float,
               chunk_s: float) -> np.ndarray:
    spans = chunk_spans(a.shape[0], fs_hz, chunk_s)
    if len(spans) == 1:
        return fn(a)
    parts = []
    for lo, start, end, hi in spans:
        d = fn(np.ascontiguousarray(a[lo:hi])) + lo
        parts.append(d[(d >= start) & (d < end)])
    return _join(parts, fs_hz)



# --- matching, heart rate, RR ----------------------------------------------------

@register_jitable
def _match_run(a: np.ndarray, a_lead: np.ndarray, ia: int, ja: int, b: np.ndarray,
               b_lead: np.ndarray, ib: int, jb: int, lead: int, tol: int) -> int:
    """One-to-one matches within ``tol`` samples between sorted ``a[ia:ja]`` and
    ``b[ib:jb]``, counting only beats of ``lead`` (every beat when ``lead < 0``;
    the lead arrays are then not read)."""
    m = 0
    pa = ia
    pb = ib
    while pa < ja and pb < jb:
        if lead >= 0 and a_lead[pa] != lead:
            pa += 1
            continue
        if lead >= 0 and b_lead[pb] != lead:
            pb += 1
            continue
        d = b[pb] - a[pa]
        if d < -tol:
            pb += 1
        elif d > tol:
            pa += 1
        else:
            m += 1
            pa += 1
            pb += 1
    return m


@register_jitable
def _match_py(ref: np.ndarray, test: np.ndarray, tol: int) -> int:
    """Number of one-to-one matches within ``tol`` samples (both sorted)."""
    return _match_run(ref, ref, 0, ref.shape[0], test, test, 0, test.shape[0], -1, tol)


_match_nb = njit(_match_py, nogil=True, cache=True)


def match_count(ref: np.ndarray, test: np.ndarray, tol_samples: int) -> int:
    """One-to-one matches between two sorted beat lists within ``tol_samples``."""
    return int(_match_nb(np.ascontiguousarray(ref, dtype=np.int64),
                         np.ascontiguousarray(test, dtype=np.int64), int(tol_samples)))


def bsqi(a: np.ndarray, b: np.ndarray, fs_hz: float, tol_s: float = MATCH_S) -> float:
    """Agreement of two detectors: matched / (n_a + n_b - matched); 1.0 if both empty."""
    m = match_count(a, b, int(round(tol_s * fs_hz)))
    den = len(a) + len(b) - m
    return 1.0 if den == 0 else m / den


def _isqi_py(beats: np.ndarray, starts: np.ndarray, tol: int) -> np.ndarray:
    """Per lead ``j`` (its sorted beats ``beats[starts[j]:starts[j + 1]]``), the best
    agreement (bSQI) of its beats with another lead's; NaN for a lead without
    beats, 1.0 with one lead."""
    m = starts.shape[0] - 1
    out = np.ones(m)
    if m < 2:
        return out
    for j in range(m):
        best = 0.0
        na = starts[j + 1] - starts[j]
        if na == 0:
            out[j] = np.nan            # no beats: undefined (flat/amplitude speak for it)
            continue
        for k in range(m):
            if k == j:
                continue
            nb = starts[k + 1] - starts[k]
            mt = _match_py(beats[starts[j]:starts[j + 1]], beats[starts[k]:starts[k + 1]], tol)
            q = mt / (na + nb - mt)
            if q > best:
                best = q
        out[j] = best
    return out


_isqi_nb = njit(_isqi_py, nogil=True, cache=True)


def isqi(beats: Sequence[np.ndarray], fs_hz: float, tol_s: float = MATCH_S) -> np.ndarray:
    """iSQI per lead (Clifford et al., Physiol Meas 33:1419, 2012): every lead
    records the same heart, so a lead whose beats agree with no other lead's
    (best bSQI with another lead) is not recording it.  NaN for a lead without
    beats: iSQI says nothing about it (its flat/amplitude/kSQI do)."""
    starts = np.zeros(len(beats) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([len(b) for b in beats])
    flat = (np.concatenate([np.asarray(b, dtype=np.int64) for b in beats]) if beats
            else np.zeros(0, dtype=np.int64))
    return np.asarray(_isqi_nb(flat, starts, int(round(tol_s * fs_hz))))


@dataclass(frozen=True, slots=True)
class RRStats:
    """Heart rate and RR-interval statistics of one beat sequence."""

    n_beats: int
    heart_rate_bpm: float | None   # 60 / median RR
    rr_mean_s: float | None
    rr_sdnn_s: float | None        # SD of RR (SDNN over all beats, not only normal ones)
    rr_rmssd_s: float | None
    rr_min_s: float | None
    rr_max_s: float | None


def rr_stats(qrs: np.ndarray, fs_hz: float) -> RRStats:
    """RR statistics; rate is 60 / median RR (robust to one missed or extra beat)."""
    q = np.asarray(qrs, dtype=np.float64)
    if q.size < 2:
        return RRStats(int(q.size), None, None, None, None, None, None)
    rr = np.diff(q) / fs_hz
    d = np.diff(rr)
    return RRStats(
        n_beats=int(q.size),
        heart_rate_bpm=float(60.0 / np.median(rr)),
        rr_mean_s=float(rr.mean()),
        rr_sdnn_s=float(rr.std()),
        rr_rmssd_s=float(np.sqrt((d * d).mean())) if d.size else None,
        rr_min_s=float(rr.min()),
        rr_max_s=float(rr.max()),
    )


def heart_rate_bpm(qrs: np.ndarray, fs_hz: float) -> float | None:
    """60 / median RR in beats per minute, ``None`` with fewer than two beats
    (:attr:`RRStats.heart_rate_bpm` without the other statistics)."""
    q = np.asarray(qrs, dtype=np.float64)
    if q.size < 2:
        return None
    return float(60.0 / np.median(np.diff(q) / fs_hz))


# --- several leads: per-window lead choice by bSQI -----------------------------------

def _choose_py(a: np.ndarray, a_lead: np.ndarray, b: np.ndarray, b_lead: np.ndarray,
               n_leads: int, n: int, win: int, tol: int, margin: float) -> np.ndarray:
    """For each window of ``win`` samples, the lead whose detector-A beats ``a`` and
    detector-B beats ``b`` (time-sorted, tagged by lead) agree best (bSQI); lead 0
    is kept unless another beats it by ``margin``.  One sweep: linear in beats."""
    nw = (n + win - 1) // win
    chosen = np.zeros(nw, dtype=np.int64)
    ia = 0
    ib = 0
    for w in range(nw):
        lo = w * win
        hi = lo + win
        while ia < a.shape[0] and a[ia] < lo:
            ia += 1
        while ib < b.shape[0] and b[ib] < lo:
            ib += 1
        ja = ia
        while ja < a.shape[0] and a[ja] < hi:
            ja += 1
        jb = ib
        while jb < b.shape[0] and b[jb] < hi:
            jb += 1
        best = 0
        best_q = -1.0
        for j in range(n_leads):
            na = 0
            nb = 0
            for i in range(ia, ja):
                if a_lead[i] == j:
                    na += 1
            for i in range(ib, jb):
                if b_lead[i] == j:
                    nb += 1
            # one-to-one matches of lead j's beats inside the window
            m = _match_run(a, a_lead, ia, ja, b, b_lead, ib, jb, j, tol)
            den = na + nb - m
            q = 0.0 if den == 0 else m / den
            if j == 0:
                q += margin
            if q > best_q:
                best_q = q
                best = j
        chosen[w] = best
        ia = ja
        ib = jb
    return chosen


_choose_nb = njit(_choose_py, nogil=True, cache=True)


def choose_leads(beats_a: Sequence[np.ndarray], beats_b: Sequence[np.ndarray], n_samples: int,
                 fs_hz: float, window_s: float = 10.0, margin: float = 0.05) -> np.ndarray:
    """Index of the best lead in each ``window_s`` window: the one whose two
    detectors' beats (``beats_a[j]``, ``beats_b[j]``) agree best (bSQI)."""
    if len(beats_a) == 0:
        return np.zeros(0, dtype=np.int64)
    lead_a = [np.full(len(d), j, np.int64) for j, d in enumerate(beats_a)]
    lead_b = [np.full(len(d), j, np.int64) for j, d in enumerate(beats_b)]
    a = np.concatenate([np.asarray(d, np.int64) for d in beats_a])
    b = np.concatenate([np.asarray(d, np.int64) for d in beats_b])
    al = np.concatenate(lead_a)
    bl = np.concatenate(lead_b)
    oa = np.argsort(a, kind="stable")
    ob = np.argsort(b, kind="stable")
    return _choose_nb(a[oa], al[oa], b[ob], bl[ob], len(beats_a), int(n_samples),
                      max(1, int(window_s * fs_hz)), int(round(MATCH_S * fs_hz)), float(margin))


def beats_from_leads(chosen: np.ndarray, beats: Mapping[int, np.ndarray] | Sequence[np.ndarray],
                     fs_hz: float, window_s: float = 10.0) -> np.ndarray:
    """Beats of lead ``chosen[w]`` inside window ``w``, joined; a beat either side of a
    window edge from two different leads is kept once."""
    win = max(1, int(window_s * fs_hz))
    parts = []
    for w, j in enumerate(np.asarray(chosen).tolist()):
        d = np.asarray(beats[j], dtype=np.int64)
        parts.append(d[(d >= w * win) & (d < (w + 1) * win)])
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if out.size > 1:
        keep = np.concatenate([[True], np.diff(out) >= int(REFRACTORY_S * fs_hz)])
        out = out[keep]
    return out


def choose_beats(beats_a: Sequence[np.ndarray], beats_b: Sequence[np.ndarray], n_samples: int,
                 fs_hz: float, window_s: float = 10.0, margin: float = 0.05) -> np.ndarray:
    """The selection step of :func:`detect_qrs_leads`: per window, ``beats_a`` of the
    lead chosen by :func:`choose_leads`."""
    chosen = choose_leads(beats_a, beats_b, n_samples, fs_hz, window_s, margin)
    return beats_from_leads(chosen, beats_a, fs_hz, window_s)


# --- scoring against reference annotations ---------------------------------------

@dataclass(frozen=True, slots=True)
class BeatScore:
    """Beat-by-beat comparison (AAMI EC57 style): true positives, misses, extras."""

    tp: int
    fn: int
    fp: int

    @property
    def se(self) -> float:
        """Sensitivity TP / (TP + FN)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def ppv(self) -> float:
        """Positive predictivity TP / (TP + FP)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fn + self.fp
        return 2 * self.tp / d if d else 1.0

    def __add__(self, other: BeatScore) -> BeatScore:
        return BeatScore(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp)


def score_beats(ref: np.ndarray, det: np.ndarray, fs_hz: float, *, tol_s: float = MATCH_S,
                exclude: np.ndarray | None = None, n_samples: int | None = None,
                edge_s: float = 0.0) -> BeatScore:
    """Score detections ``det`` against reference beats ``ref`` (sample indices).

    ``exclude`` is an (k, 2) array of [start, end] sample intervals left out of both
    (EC57 leaves ventricular flutter/fibrillation episodes out); ``edge_s`` leaves
    out the first and last seconds (the CPSC 2019 scorer drops 0.5 s each side).
    """
    r = np.sort(np.asarray(ref, dtype=np.int64))
    d = np.sort(np.asarray(det, dtype=np.int64))
    keep_r = np.ones(r.size, bool)
    keep_d = np.ones(d.size, bool)
    if exclude is not None:
        for lo, hi in np.asarray(exclude, dtype=np.int64).reshape(-1, 2):
            keep_r &= ~((r >= lo) & (r <= hi))
            keep_d &= ~((d >= lo) & (d <= hi))
    tol = int(round(tol_s * fs_hz))
    if edge_s > 0.0:
        # reference beats inside the scored span; a detection just outside it may
        # match one of them, but an unmatched one there is not counted as extra
        last = [int(v[-1]) for v in (r, d) if v.size]
        end = n_samples if n_samples is not None else max(last, default=0)
        e_lo = math.ceil(edge_s * fs_hz)          # sample indices are integers
        e_hi = math.floor(end - edge_s * fs_hz)
        keep_r &= (r >= e_lo) & (r <= e_hi)
        keep_d &= (d >= e_lo - tol) & (d <= e_hi + tol)
        r, d = r[keep_r], d[keep_d]
        used = _matched_flags(r, d, tol)
        inside = (d >= e_lo) & (d <= e_hi)
        m = int(used.sum())
        return BeatScore(tp=m, fn=int(r.size) - m, fp=int((~used & inside).sum()))
    r, d = r[keep_r], d[keep_d]
    m = match_count(r, d, tol)
    return BeatScore(tp=m, fn=int(r.size) - m, fp=int(d.size) - m)


def _matched_flags(ref: np.ndarray, test: np.ndarray, tol: int) -> np.ndarray:
    """Which ``test`` beats the one-to-one matching of :func:`_match_py` uses."""
    used = np.zeros(test.size, dtype=bool)
    i = j = 0
    while i < ref.size and j < test.size:
        dd = test[j] - ref[i]
        if dd < -tol:
            j += 1
        elif dd > tol:
            i += 1
        else:
            used[j] = True
            i += 1
            j += 1
    return used

