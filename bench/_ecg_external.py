"""The shipped ECG gate and QRS detector on records outside the shared set.

Evaluation only: nothing is fitted or chosen here.  ``python -m bench ecg
--external DIR`` reads what ``DIR`` holds, by layout:

* ``labels.json`` (record -> "acceptable"/"unacceptable") and WFDB records
  under it (Challenge 2011 form): the shipped gate and the one-line rule "any
  lead constant >= 0.2 s", accuracy / Se / Sp with Wilson 95 % intervals, and
  how the three outcomes of ``check_ecg`` split each class;
* ``data/data_NNNNN.mat`` with ``ref/R_NNNNN.mat`` (CPSC 2019 form): fenji and
  NeuroKit2, +-75 ms, 0.5 s edges, as the challenge scored;
* WFDB records with ``.atr`` beat annotations (MIT-BIH form): fenji and
  NeuroKit2 on the first lead, +-150 ms, VF episodes left out; records whose
  beats are mostly paced (``/``) are a group of their own.

Records the shared set holds (same database, same name) are skipped and
counted, so that the figures are for unseen records only.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: The one-line rule the gate is compared with (here and in ``python -m bench ecg``).
ONE_LINE_FLAT_S = 0.2


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN, NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (c - h) / d, (c + h) / d


def _rate(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}-{100 * hi:.1f}]" if n else "-"


def _shared_names(shared: Path, db: str) -> set[str]:
    if db == "cpsc2019":
        return {p.stem for p in (shared / "ecg" / "cpsc2019" / "mat" / "data").glob("*.mat")}
    f = shared / "ecg" / db / "RECORDS"
    return set(f.read_text().split()) if f.is_file() else set()


def gate_external(folder: Path, shared: Path) -> dict[str, Any]:
    import wfdb

    from fenji.codecs.ecg import quality as ecg_quality

    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    skip = _shared_names(shared, "challenge2011")
    gate = ecg_quality.shipped_gate()
    y, pred, one, outcome = [], [], [], Counter()
    skipped = missing = 0
    for name, label in sorted(labels.items()):
        if name in skip:
            skipped += 1
            continue
        hea = next(folder.rglob(f"{name}.hea"), None)
        if hea is None:
            missing += 1
            continue
        rec = wfdb.rdrecord(str(hea.with_suffix("")))
        ms, f = ecg_quality.measure_record(np.nan_to_num(rec.p_signal), float(rec.fs))
        bad = label == "unacceptable"
        y.append(bad)
        pred.append(bool(gate.predict(f[None, :])[0]))
        one.append(max(m.flat_s for m in ms) >= ONE_LINE_FLAT_S)
        report, _ = ecg_quality.check_ecg(rec.p_signal, float(rec.fs), rec.sig_name)
        outcome[(label, str(report["verdict"]))] += 1
    ya = np.array(y, dtype=bool)
    rows = []
    for rule, p in (("fenji gate (shipped)", np.array(pred, dtype=bool)),
                    (f"one-line: any lead constant >= {ONE_LINE_FLAT_S} s",
                     np.array(one, dtype=bool))):
        n, nu = len(ya), int(ya.sum())
        rows.append({"rule": rule, "records": n, "unacceptable": nu,
                     "accuracy_%": _rate(int(np.sum(p == ya)), n),
                     "Se_%": _rate(int(np.sum(p & ya)), nu),
                     "Sp_%": _rate(int(np.sum(~p & ~ya)), n - nu)})
    return {"table": rows, "skipped_shared": skipped, "missing_records": missing,
            "outcomes": {f"{lab} -> {verdict}": k for (lab, verdict), k in sorted(outcome.items())}}


def _neurokit(x: np.ndarray, fs: float) -> np.ndarray:
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            peaks = nk.ecg_peaks(nk.ecg_clean(x, sampling_rate=fs), sampling_rate=fs)[1]
        except Exception:  # noqa: BLE001 -- a peer failing on a record scores as no beats
            return np.zeros(0, dtype=np.int64)
    return np.asarray(peaks["ECG_R_Peaks"], dtype=np.int64)


def _detectors() -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    from fenji.codecs.ecg import qrs

    return {"fenji": lambda x, fs: qrs.detect_qrs(x, fs), "neurokit2": _neurokit}


def _add(groups: dict[tuple[str, str], list[int]], key: tuple[str, str], s: Any) -> None:
    g = groups.setdefault(key, [0, 0, 0])
    g[0] += s.tp
    g[1] += s.fn
    g[2] += s.fp


def _score_rows(groups: dict[tuple[str, str], list[int]], n_records: Counter[str]
                ) -> list[dict[str, Any]]:
    rows = []
    for (grp, det), (tp, fn, fp) in sorted(groups.items()):
        rows.append({"database": grp, "detector": det, "records": n_records[grp],
                     "beats": tp + fn, "Se_%": round(100 * tp / max(tp + fn, 1), 2),
                     "+P_%": round(100 * tp / max(tp + fp, 1), 2), "FN": fn, "FP": fp})
    return rows


def qrs_cpsc2019(folder: Path, shared: Path) -> dict[str, Any]:
    import scipy.io as sio

    from fenji.codecs.ecg import qrs

    skip = _shared_names(shared, "cpsc2019")
    groups: dict[tuple[str, str], list[int]] = {}
    n: Counter[str] = Counter()
    skipped = 0
    for mat in sorted((folder / "data").glob("data_*.mat")):
        ref_path = folder / "ref" / f"R_{mat.stem.split('_', 1)[1]}.mat"
        if mat.stem in skip:
            skipped += 1
            continue
        if not ref_path.is_file():
            continue
        x = np.asarray(sio.loadmat(mat)["ecg"], dtype=np.float64).ravel()
        ref = np.asarray(sio.loadmat(ref_path)["R_peak"]).ravel().astype(np.int64)
        n["cpsc2019"] += 1
        for det, fn in _detectors().items():
            s = qrs.score_beats(ref, fn(x, 500.0), 500.0, n_samples=x.size, tol_s=0.075,
                                edge_s=0.5)
            _add(groups, ("cpsc2019", det), s)
    return {"table": _score_rows(groups, n), "skipped_shared": skipped}


def qrs_wfdb(folder: Path, shared: Path, db: str = "mitdb") -> dict[str, Any]:
    import wfdb

    from fenji.codecs.ecg import qrs
    from fenji.gateway.ecg import io as ecg_io

    skip = _shared_names(shared, db)
    groups: dict[tuple[str, str], list[int]] = {}
    n: Counter[str] = Counter()
    skipped = 0
    for atr in sorted(folder.rglob("*.atr")):
        path = atr.with_suffix("")
        if path.name in skip:
            skipped += 1
            continue
        rec = wfdb.rdrecord(str(path))
        ref, vf = ecg_io.read_beat_annotations(path)
        symbols = wfdb.rdann(str(path), "atr").symbol
        grp = f"{db} paced" if symbols.count("/") > len(ref) / 2 else f"{db} non-paced"
        x = np.ascontiguousarray(rec.p_signal[:, 0])
        n[grp] += 1
        for det, fn in _detectors().items():
            s = qrs.score_beats(ref, fn(x, float(rec.fs)), float(rec.fs), exclude=vf,
                                n_samples=rec.sig_len)
            _add(groups, (grp, det), s)
    return {"table": _score_rows(groups, n), "skipped_shared": skipped}


def run_external(folder: Path, shared: Path, print_table: Callable[..., None]) -> dict[str, Any]:
    """Everything ``folder`` (and its sub-folders, one level) holds, by layout."""
    out: dict[str, Any] = {"folder": str(folder)}
    for d in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (d / "labels.json").is_file():
            g = gate_external(d, shared)
            print(f"ECG quality gate on {d} (unseen records; {g['skipped_shared']} shared "
                  "ones skipped), Wilson 95 % intervals")
            print_table(g["table"], ["rule", "records", "unacceptable", "accuracy_%", "Se_%",
                                     "Sp_%"])
            print("check_ecg outcomes by label:", g["outcomes"])
            out.setdefault("gate", {})[d.name] = g
        else:
            if (d / "data").is_dir() and (d / "ref").is_dir():
                q, how = qrs_cpsc2019(d, shared), "CPSC 2019 form, +-75 ms, 0.5 s edges"
            elif any(d.glob("*.atr")):
                q, how = qrs_wfdb(d, shared), "WFDB beats, +-150 ms, first lead"
            else:
                continue
            print(f"QRS on {d} ({how}; {q['skipped_shared']} shared records skipped)")
            print_table(q["table"], ["database", "detector", "records", "beats", "Se_%", "+P_%",
                                     "FN", "FP"])
            out.setdefault("qrs", {})[d.name] = q
    if len(out) == 1:
        raise SystemExit(f"{folder}: no labels.json, data/ + ref/ (.mat) or .atr records found")
    return out
