"""The ECG quality gate's decision: record features, the fitted model, the protocol.

The per-lead signal-quality indices (SQIs) of :mod:`fenji.codecs.ecg.quality`
are summarised into nine record features, each with a physiological reason for
its summary (Clifford, Behar et al., Physiol. Meas. 33:1419, 2012; Behar et al.,
IEEE TBME 60:1660, 2013):

============ ============================================== =========================
feature      value                                          why this summary
============ ============================================== =========================
flat_max     log10(longest constant run in any lead + 10 ms) one dead lead is enough
off_max      log10(lead-off time in any lead + 10 ms)        one lead off is enough
amp_min      log10(smallest lead amplitude)                  a lead not on the skin
ksqi_min     log10(lowest kurtosis + 0.1)                    a lead with no QRS peaks
bsqi_3       3rd lowest bSQI                                 leads are read against
base_3       log10(3rd largest wander)                        each other: three bad
bas_3        3rd lowest basSQI                                leads spoil the comparison
hf_med       log10(median HF noise RMS)                      EMG is body-wide
isqi_3       3rd lowest iSQI of the leads with beats (best   all leads record the same
             agreement of a lead's beats with another        heart: three leads that
             lead's, Clifford et al. 2012)                   agree with none are off
============ ============================================== =========================

Durations are taken per 10 s of record (a 24-h Holter is not judged on 0.2 s).
Records with fewer than three leads use their worst lead for the "3rd" ones.

The decision is an L2-regularised logistic regression on each feature's
*excess* -- how many SDs it lies on its bad side of the median record, 0 on the
good side -- with non-negative weights and a threshold on the score:
``unacceptable`` when ``intercept + coef . excess(f) > threshold``.  So good
quality in one respect never excuses a dead lead in another, and every term of
the score is a reason to hold (the largest one is the first reason given).
Every number of it (centre, scale, coef, intercept, regularisation ``C``,
threshold) is chosen by :func:`fit_gate` from labelled records only; the
shipped ``gate.json`` is :func:`fit_gate` on all 308 challenge2011 records and
a test re-fits it.  :func:`cross_validate` is the honest estimate: repeated,
seeded, stratified k-fold, with :func:`fit_gate` (``C`` and threshold by an
inner cross-validation) run on the training folds only.

Two holds are not this model's (``quality.check_ecg``): no usable lead, or no
heartbeat found.  On the 308 records they fire only where the score holds.

The nine features are a fixed pool, set by physiology.  ``select=True`` lets
the labels choose among them as well (:func:`select_features`: forward
selection by inner out-of-fold log-loss, one-SE rule), inside the folds; the
protocol reports that variant too.  It is not shipped: on all 308 records it
keeps two features (``flat_max``, ``bsqi_3``), scores the same within noise,
and lets ECGs with three or four leads of pure noise pass, a failure the
308 records hardly contain (docs/decisions.md).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(80, 2)); y = z[:, 0] + 0.3 * rng.normal(size=80) > 0.5
>>> g = fit_gate(z, y, ("a", "b"), seed=1)
>>> float(np.mean(g.predict(z) == y)) > 0.85
True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

GATE_FILE = Path(__file__).with_name("gate.json")
FORMAT_VERSION = 1
FEATURES = ("flat_max", "off_max", "amp_min", "ksqi_min", "bsqi_3", "base_3", "bas_3", "hf_med",
            "isqi_3")
#: The sign each feature's weight must have: +1 where a larger value is worse quality.
SIGNS = {"flat_max": 1, "off_max": 1, "amp_min": -1, "ksqi_min": -1, "bsqi_3": -1,
         "base_3": 1, "bas_3": -1, "hf_med": 1, "isqi_3": -1}
C_GRID = (0.03, 0.1, 0.3, 1.0)     # inverse L2 strength, chosen by inner CV
INNER_FOLDS = 5
SEED = 2011                        # every split of the protocol derives from it
_EPS_S = 0.01                      # 10 ms: a duration floor below the 2 ms resolution of interest


# --- features --------------------------------------------------------------------

def _kth(values: np.ndarray, k: int, worst_high: bool) -> float:
    """k-th worst value (k = 1: worst), the worst one when there are fewer than k."""
    v = np.sort(values)
    k = min(k, v.size)
    return float(v[-k] if worst_high else v[k - 1])


def record_features(sqi: Mapping[str, np.ndarray], duration_s: float) -> np.ndarray:
    """The :data:`FEATURES` of one record from its per-lead SQIs.

    ``sqi`` maps ``flat_s``, ``lead_off_s``, ``amplitude_mv``, ``ksqi``,
    ``bsqi``, ``baseline_mv``, ``bas_sqi``, ``hf_noise_mv``, ``isqi`` to one value
    per lead.
    """
    per10 = 10.0 / max(duration_s, 10.0)
    lg = math.log10
    return np.array([
        lg(float(np.max(sqi["flat_s"])) * per10 + _EPS_S),
        lg(float(np.max(sqi["lead_off_s"])) * per10 + _EPS_S),
        lg(max(float(np.min(sqi["amplitude_mv"])), 1e-3)),
        lg(max(float(np.min(sqi["ksqi"])), 0.0) + 0.1),
        _kth(sqi["bsqi"], 3, worst_high=False),
        lg(max(_kth(sqi["baseline_mv"], 3, worst_high=True), 1e-3)),
        _kth(sqi["bas_sqi"], 3, worst_high=False),
        lg(max(float(np.median(sqi["hf_noise_mv"])), 1e-4)),
        _kth_defined(sqi["isqi"], 3),
    ])


def _kth_defined(values: np.ndarray, k: int) -> float:
    """k-th lowest of the defined (finite) values; 1.0 (no evidence) if none is."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return 1.0 if v.size == 0 else _kth(v, k, worst_high=False)


# --- the model -------------------------------------------------------------------

def excess(f: np.ndarray, signs: np.ndarray, center: np.ndarray, scale: np.ndarray
           ) -> np.ndarray:
    """How far each feature lies on its *bad* side of the typical record, in SDs
    (0 on the good side): better-than-typical quality in one respect does not
    excuse a dead lead in another."""
    d = np.asarray(signs * (np.asarray(f, dtype=np.float64) - center) / scale, dtype=np.float64)
    out: np.ndarray = np.maximum(d, np.zeros_like(d))
    return out


@dataclass(frozen=True, slots=True)
class GateModel:
    """Logistic score over feature excesses and its decision threshold (plain data)."""

    features: tuple[str, ...]
    signs: tuple[float, ...]      # +1: larger is worse
    center: tuple[float, ...]     # median of the training records
    scale: tuple[float, ...]      # SD of the training records
    coef: tuple[float, ...]       # >= 0
    intercept: float
    threshold: float
    c: float

    @property
    def selected(self) -> tuple[str, ...]:
        """The features the score uses (weight > 0)."""
        return tuple(n for n, c in zip(self.features, self.coef, strict=True) if c > 0.0)

    def _excess(self, f: np.ndarray) -> np.ndarray:
        return excess(f, np.asarray(self.signs), np.asarray(self.center), np.asarray(self.scale))

    def score(self, f: np.ndarray) -> np.ndarray:
        """Log-odds of "unacceptable" of one feature row or a (records, features) array."""
        return np.asarray(self._excess(f) @ np.asarray(self.coef) + self.intercept)

    def contributions(self, f: np.ndarray) -> dict[str, float]:
        """Each feature's share (>= 0) of one record's score."""
        z = self._excess(f)
        return {n: float(c * v) for n, c, v in zip(self.features, self.coef, z, strict=True)}

    def predict(self, f: np.ndarray) -> np.ndarray:
        """True where the record is unacceptable."""
        return self.score(f) > self.threshold

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("features", *_VECTORS):
            d[k] = list(d[k])
        return {"format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> GateModel:
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"ecg gate format_version = {d.get('format_version')!r}, "
                             f"expected {FORMAT_VERSION}")
        n = len(d["features"])
        for k in _VECTORS:
            if len(d[k]) != n:
                raise ValueError(f"ecg gate {k} has {len(d[k])} values for {n} features")
        if any(float(s) <= 0 for s in d["scale"]):
            raise ValueError(f"ecg gate scale = {d['scale']} must be positive")
        vec = {k: tuple(map(float, d[k])) for k in _VECTORS}
        return cls(features=tuple(d["features"]), **vec, intercept=float(d["intercept"]),
                   threshold=float(d["threshold"]), c=float(d["c"]))


_VECTORS = ("signs", "center", "scale", "coef")


def load_gate(path: Path | None = None) -> GateModel:
    """The shipped gate (``gate.json`` next to this module) or the one at ``path``."""
    p = path or GATE_FILE
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"ecg gate file {p}: {exc}") from exc
    model = GateModel.from_json(raw["model"] if "model" in raw else raw)
    if model.features != FEATURES:
        raise ValueError(f"ecg gate file {p}: features {list(model.features)} "
                         f"differ from this version's {list(FEATURES)}")
    return model


# --- fitting ---------------------------------------------------------------------

def fit_logistic(z: np.ndarray, y: np.ndarray, c: float, n_iter: int = 50
                 ) -> tuple[np.ndarray, float]:
    """L2 logistic regression by Newton's method: minimises
    ``0.5 |w|^2 + c * sum(logloss)`` with an unpenalised intercept (scikit-learn's
    ``LogisticRegression(C=c)`` objective).  Returns ``(w, b)``."""
    n, d = z.shape
    a = np.column_stack([z, np.ones(n)])
    theta = np.zeros(d + 1)
    reg = np.ones(d + 1) / c
    reg[-1] = 0.0
    t = y.astype(np.float64)
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-(a @ theta)))
        grad = a.T @ (p - t) + reg * theta
        h = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-10 * np.eye(d + 1)
        step = np.linalg.solve(h, grad)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-12:
            break
    return theta[:d], float(theta[d])


def stratified_folds(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per record; each class dealt round-robin after a seeded shuffle."""
    folds = np.empty(len(y), dtype=np.int64)
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        folds[idx] = np.arange(len(idx)) % k
    return folds


def best_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """The score threshold of highest accuracy; among equals the highest (fewest holds),
    midway between two neighbouring scores."""
    s = np.sort(np.unique(score))
    cand = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    acc = np.array([np.mean((score > t) == y) for t in cand])
    return float(cand[np.flatnonzero(acc == acc.max())[-1]])


def _center_scale(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's median and SD over the records (SD 1 where it is 0)."""
    sd: np.ndarray = f.std(axis=0)
    return np.median(f, axis=0), np.where(sd > 0.0, sd, np.ones_like(sd))


def _fit_fixed(f: np.ndarray, y: np.ndarray, c: float, signs: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Centre, scale and fit; every weight stays >= 0 (a feature's excess can only
    make a record worse): while one is negative -- a feature made to say "worse
    signal, better record" by its correlation with others -- the most negative
    is set to 0 and the rest refitted."""
    center, scale = _center_scale(f)
    z = excess(f, signs, center, scale)
    keep = np.ones(f.shape[1], dtype=bool)
    while True:
        w: np.ndarray = np.zeros(f.shape[1])
        w[keep], b = fit_logistic(z[:, keep], y, c)
        if not bool(np.any(w < 0.0)):
            return center, scale, w, b
        keep[int(np.argmin(w))] = False


def _log_loss(score: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-record log-loss of log-odds ``score`` against labels ``y``."""
    return np.asarray(np.logaddexp(0.0, np.where(y, -score, score)), dtype=np.float64)


def _oof_scores(f: np.ndarray, y: np.ndarray, signs: np.ndarray, c: float,
                folds: np.ndarray) -> np.ndarray:
    """Out-of-fold scores: each fold's records scored by a fit on the other folds."""
    oof: np.ndarray = np.empty(len(y))
    for k in range(int(folds.max()) + 1):
        tr = folds != k
        center, scale, w, b = _fit_fixed(f[tr], y[tr], c, signs)
        oof[~tr] = excess(f[~tr], signs, center, scale) @ w + b
    return oof


@dataclass(frozen=True, slots=True)
class SelectionStep:
    """One step of the forward selection: the features so far, the ``C`` of lowest
    inner out-of-fold log-loss for them, that loss and its standard error."""

    features: tuple[str, ...]
    c: float
    log_loss: float
    se: float


def select_features(f: np.ndarray, y: np.ndarray, features: Sequence[str],
                    folds: np.ndarray, c_grid: Sequence[float] = C_GRID
                    ) -> tuple[list[SelectionStep], int, np.ndarray]:
    """Forward selection by inner out-of-fold log-loss, and the one-SE rule.

    From no feature, each step adds the one whose model (``C`` from ``c_grid``,
    each feature's excess, non-negative weights) has the lowest out-of-fold
    log-loss over ``folds``.  The chosen step is the *smallest* feature set whose
    loss is within one standard error of the lowest on the path (Breiman et al.
    1984; Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10): a feature joins
    the gate only when the labels say it helps by more than their own noise.
    Returns ``(path, chosen step index, the chosen step's out-of-fold scores)``.
    """
    signs_all = np.array([SIGNS.get(n, 1) for n in features], dtype=np.float64)
    chosen: list[int] = []
    rest = list(range(f.shape[1]))
    path: list[SelectionStep] = []
    scores: list[np.ndarray] = []
    while rest:
        best: tuple[float, float, float, int, np.ndarray] | None = None
        for j in rest:
            cols = [*chosen, j]
            for c in c_grid:
                s = _oof_scores(f[:, cols], y, signs_all[cols], c, folds)
                loss = _log_loss(s, y)
                m = float(loss.mean())
                if best is None or m < best[0]:
                    best = (m, float(loss.std(ddof=1) / math.sqrt(len(loss))), c, j, s)
        assert best is not None
        m, se, c, j, s = best
        chosen.append(j)
        rest.remove(j)
        path.append(SelectionStep(tuple(features[i] for i in chosen), float(c), m, se))
        scores.append(s)
    low = min(range(len(path)), key=lambda i: path[i].log_loss)
    limit = path[low].log_loss + path[low].se
    pick = next(i for i, st in enumerate(path) if st.log_loss <= limit)
    return path, pick, scores[pick]


def fit_gate(f: np.ndarray, y: np.ndarray, features: Sequence[str] = FEATURES, *,
             seed: int = SEED, c_grid: Sequence[float] = C_GRID,
             inner_folds: int = INNER_FOLDS, select: bool = False) -> GateModel:
    """Fit the gate on labelled records only.

    In an inner stratified ``inner_folds``-fold CV (seeded), ``C`` and the threshold
    are those of best out-of-fold accuracy; the weights are then fitted on all of
    ``f`` with that ``C``.  With ``select``, :func:`select_features` first chooses
    the features and ``C`` (the threshold is then the best for them) and the
    features not chosen keep weight 0 (their values are still reported).  Feature
    directions are :data:`SIGNS` (+1 for a feature not listed there).
    """
    f = np.asarray(f, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    names = tuple(features)
    signs = np.array([SIGNS.get(n, 1) for n in names], dtype=np.float64)
    folds = stratified_folds(y, inner_folds, np.random.default_rng(seed))
    cols = list(range(len(names)))
    if select:
        path, pick, oof = select_features(f, y, names, folds, c_grid)
        c, th = path[pick].c, best_threshold(oof, y)
        cols = [names.index(n) for n in path[pick].features]
    else:
        best: tuple[float, float, float] | None = None     # (accuracy, c, threshold)
        for c in c_grid:
            oof = _oof_scores(f, y, signs, c, folds)
            th = best_threshold(oof, y)
            acc = float(np.mean((oof > th) == y))
            if best is None or acc > best[0]:
                best = (acc, c, th)
        assert best is not None
        _, c, th = best
    _, _, w_used, b = _fit_fixed(f[:, cols], y, c, signs[cols])
    w: np.ndarray = np.zeros(len(names))
    w[cols] = w_used
    center, scale = _center_scale(f)          # every feature's, for the report
    return GateModel(features=names, signs=tuple(map(float, signs)),
                     center=tuple(map(float, center)), scale=tuple(map(float, scale)),
                     coef=tuple(map(float, w)), intercept=b, threshold=th, c=float(c))


# --- the protocol ----------------------------------------------------------------

def rates(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy, sensitivity for "unacceptable" and specificity."""
    pred = np.asarray(pred, dtype=bool)
    y = np.asarray(y, dtype=bool)
    return {"accuracy": float(np.mean(pred == y)),
            "se": float(np.sum(pred & y) / max(int(np.sum(y)), 1)),
            "sp": float(np.sum(~pred & ~y) / max(int(np.sum(~y)), 1))}


def cross_validate(f: np.ndarray, y: np.ndarray, baseline: np.ndarray | None = None, *,
                   repeats: int = 10, folds: int = 5, seed: int = SEED,
                   select: bool = False) -> dict[str, Any]:
    """Repeated, seeded, stratified ``folds``-fold CV of :func:`fit_gate`.

    Each repeat predicts every record once, by a gate fitted (with ``select``,
    its features chosen too) on the other folds
    (seed ``seed + repeat`` for the split, the inner CV seeded from it).
    ``baseline``: a fixed rule's predictions, scored on the same test folds (a
    rule with nothing to fit scores the same in every repeat).  Returns per-repeat
    rates and their mean and sd.
    """
    f = np.asarray(f, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    per: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        fold = stratified_folds(y, folds, rng)
        pred = np.zeros(len(y), dtype=bool)
        for k in range(folds):
            tr = fold != k
            gate = fit_gate(f[tr], y[tr], seed=seed + 1000 * (r + 1) + k, select=select)
            pred[~tr] = gate.predict(f[~tr])
        per.append(rates(pred, y))
        if baseline is not None:
            base.append(rates(baseline, y))

    def summary(rows: list[dict[str, float]]) -> dict[str, Any]:
        return {m: {"mean": float(np.mean([r[m] for r in rows])),
                    "sd": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0}
                for m in ("accuracy", "se", "sp")}

    out: dict[str, Any] = {"repeats": repeats, "folds": folds, "seed": seed,
                           "n": int(len(y)), "n_unacceptable": int(np.sum(y)),
                           "gate": summary(per), "gate_per_repeat": per}
    if baseline is not None:
        out["baseline"] = summary(base)
    return out
