"""ECG benchmark: fenji's QRS detector and quality pipeline vs NeuroKit2 and wfdb XQRS.

Same records, same lead (the first), same scoring (+-150 ms, README beat
symbols, VF episodes left out; CPSC 2019 as its challenge scored: +-75 ms, 0.5 s
edges) for every detector.
Speed is CPU seconds (``time.process_time``) per hour of single-lead ECG.
On CPSC 2021 (2-lead Holter) a ``fenji-2-leads`` row shows the per-window lead
choice (``detect_qrs_leads``); its speed is per lead-hour.
XQRS is slow, so by default it runs on a subset of MIT-BIH (``--all-mitdb``
for all 16 records); fenji and NeuroKit2 always run on everything.
The pipeline row times a full 10-s 12-lead check (fenji: ``check_ecg`` =
filters + two detectors per lead + quality report; NeuroKit2: ``ecg_clean`` +
``ecg_peaks`` + ``ecg_quality`` on each lead) on challenge2011 records.

``--quality-cv`` runs only the quality gate's protocol instead: repeated,
seeded, stratified k-fold CV on the 308 labelled challenge2011 records, the
gate fitted (every parameter) on the training folds only, next to the one-line
rule "any lead constant >= 0.2 s" scored on the same folds; ``--write-gate
FILE`` also writes the gate fitted on all 308 (``codecs/ecg/gate.json`` is the
shipped one, and a test checks that it is this output).

``--qrs-cv`` runs only the QRS detector's protocol: 5-fold CV over the annotated
records (every database, and CPSC 2021 with both leads) of the choice of its
fitted numbers (``qrs.T_HF_MIN``, ``qrs.R_HI_HZ``, ``qrs.T_HF_QRS``,
``qrs.GAP_REL``) from ``QRS_GRID``; the
shipped values are its choice on all records (a test checks it).

``--external DIR`` evaluates the shipped gate and detector, fitting nothing, on
records outside the shared set (:mod:`bench._ecg_external`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench._ecg_external import ONE_LINE_FLAT_S, run_external

DESCRIPTION = "QRS Se/+P and CPU s per hour per lead: fenji vs NeuroKit2 vs wfdb XQRS"
XQRS_MITDB_DEFAULT = ("100", "105", "119", "203", "208", "217")
PACED = {"107", "217"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all-mitdb", action="store_true",
                   help="run XQRS on all 16 MIT-BIH records (slow: ~6 s CPU each)")
    p.add_argument("--no-xqrs", action="store_true", help="skip wfdb XQRS entirely")
    p.add_argument("--pipeline-records", type=int, default=30,
                   help="challenge2011 records for the 12-lead pipeline timing (default 30)")
    p.add_argument("--per-record", action="store_true", help="print the per-record table too")
    p.add_argument("--pipeline-only", action="store_true",
                   help="only the 10-s 12-lead check timing (fenji vs NeuroKit2)")
    p.add_argument("--quality-cv", action="store_true",
                   help="only the quality gate's repeated stratified CV on challenge2011")
    p.add_argument("--repeats", type=int, default=10, help="CV repeats (default 10)")
    p.add_argument("--folds", type=int, default=5, help="CV folds (default 5)")
    p.add_argument("--qrs-cv", action="store_true",
                   help="only the cross-validation over the annotated records of the QRS "
                        "detector's chosen numbers (qrs.T_HF_MIN, qrs.R_HI_HZ)")
    p.add_argument("--external", type=Path, metavar="DIR",
                   help="only evaluate the shipped gate and QRS detector on records outside "
                        "the shared set: a folder with labels.json + WFDB records, data/ + "
                        "ref/ CPSC 2019 .mat files, or WFDB records with .atr (or sub-folders "
                        "of those); nothing is fitted")
    p.add_argument("--write-gate", type=Path, metavar="FILE",
                   help="with --quality-cv: write the gate fitted on all records to FILE "
                        "(codecs/ecg/gate.json is the shipped one)")


def _records(data: Path) -> list[tuple[str, Path]]:
    ecg = data / "ecg"
    out = [("mitdb", ecg / "mitdb" / r) for r in (ecg / "mitdb" / "RECORDS").read_text().split()]
    out += [("cpsc2021", ecg / "cpsc2021" / r)
            for r in (ecg / "cpsc2021" / "RECORDS").read_text().split()]
    out += [("cpsc2019", p.with_suffix(""))
            for p in sorted((ecg / "cpsc2019" / "wfdb").glob("*.hea"))]
    return out


def _cpu(fn: Callable[[], Any], min_s: float = 0.02) -> tuple[Any, float]:
    """Result and CPU seconds per call (repeated until ``min_s`` of CPU is spent)."""
    t0 = time.process_time()
    res = fn()
    n = 1
    dt = time.process_time() - t0
    while dt < min_s:
        fn()
        n += 1
        dt = time.process_time() - t0
    return res, dt / n


def _detectors(no_xqrs: bool) -> dict[str, Callable[[np.ndarray, float], np.ndarray]]:
    import neurokit2 as nk
    import wfdb.processing as wp

    from fenji.codecs.ecg import qrs

    def fenji(x: np.ndarray, fs: float) -> np.ndarray:
        return qrs.detect_qrs(x, fs)

    def neurokit(x: np.ndarray, fs: float) -> np.ndarray:
        clean = nk.ecg_clean(x, sampling_rate=int(fs))
        _, info = nk.ecg_peaks(clean, sampling_rate=int(fs))
        return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)

    def xqrs(x: np.ndarray, fs: float) -> np.ndarray:
        return np.asarray(wp.xqrs_detect(x, fs, verbose=False), dtype=np.int64)

    out: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"fenji": fenji,
                                                                 "neurokit2": neurokit}
    if not no_xqrs:
        out["wfdb-xqrs"] = xqrs
    return out


def _score_rows(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    import wfdb

    from fenji.codecs.ecg import qrs
    from fenji.gateway.ecg import io as ecg_io

    dets = _detectors(args.no_xqrs)
    warm = np.sin(np.linspace(0, 60, 5000))
    for f in dets.values():                     # JIT / cache load outside the timings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f(warm, 500.0)
    qrs.detect_qrs_leads(np.column_stack([warm, warm]), 500.0)
    rows: list[dict[str, Any]] = []
    for db, path in _records(data):
        rec = wfdb.rdrecord(str(path))
        x = np.ascontiguousarray(rec.p_signal[:, 0])
        fs = float(rec.fs)
        ref, vf = ecg_io.read_beat_annotations(path)
        hours = rec.sig_len / fs / 3600.0
        for name, fn in dets.items():
            if name == "wfdb-xqrs" and db == "mitdb" and not args.all_mitdb \
                    and path.name not in XQRS_MITDB_DEFAULT:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    def call(fn: Callable[[np.ndarray, float], np.ndarray] = fn,
                             x: np.ndarray = x, fs: float = fs) -> np.ndarray:
                        return fn(x, fs)

                    det, cpu = _cpu(call, 0.0 if name != "fenji" else 0.05)
                except Exception as exc:  # a peer failing on one record is a result too
                    rows.append({"db": db, "record": path.name, "detector": name,
                                 "error": f"{type(exc).__name__}: {exc}"})
                    continue
            s = qrs.score_beats(ref, det, fs, exclude=vf, n_samples=rec.sig_len,
                                tol_s=0.075 if db == "cpsc2019" else qrs.MATCH_S,
                                edge_s=0.5 if db == "cpsc2019" else 0.0)
            rows.append({"db": db, "record": path.name, "detector": name,
                         "paced": db == "mitdb" and path.name in PACED,
                         "tp": s.tp, "fn": s.fn, "fp": s.fp, "se": s.se, "ppv": s.ppv,
                         "cpu_s": cpu, "hours": hours})
        if db == "cpsc2021":
            # Holter: both leads, beats from the lead whose detectors agree (per 10 s)
            x2 = np.ascontiguousarray(rec.p_signal)

            def both(x2: np.ndarray = x2, fs: float = fs) -> np.ndarray:
                return qrs.detect_qrs_leads(x2, fs)

            det, cpu = _cpu(both, 0.05)
            s = qrs.score_beats(ref, det, fs, exclude=vf, n_samples=rec.sig_len)
            rows.append({"db": db, "record": path.name, "detector": "fenji-2-leads",
                         "paced": False, "tp": s.tp, "fn": s.fn, "fp": s.fp, "se": s.se,
                         "ppv": s.ppv, "cpu_s": cpu, "hours": hours * x2.shape[1]})
    return rows


def _group(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    groups = [("mitdb non-paced", lambda r: r["db"] == "mitdb" and not r["paced"]),
              ("mitdb paced", lambda r: r["db"] == "mitdb" and r["paced"]),
              ("cpsc2021", lambda r: r["db"] == "cpsc2021"),
              ("cpsc2019", lambda r: r["db"] == "cpsc2019")]
    order = ["fenji", "fenji-2-leads", "neurokit2", "wfdb-xqrs"]
    detectors = sorted({r["detector"] for r in rows}, key=order.index)
    for gname, pred in groups:
        for d in detectors:
            sel = [r for r in rows if r["detector"] == d and "tp" in r and pred(r)]
            if not sel:
                continue
            tp, fn, fp = (sum(r[k] for r in sel) for k in ("tp", "fn", "fp"))
            cpu, hours = sum(r["cpu_s"] for r in sel), sum(r["hours"] for r in sel)
            out.append({"database": gname, "detector": d, "records": len(sel),
                        "Se_%": 100.0 * tp / max(tp + fn, 1), "+P_%": 100.0 * tp / max(tp + fp, 1),
                        "F1_%": 200.0 * tp / max(2 * tp + fn + fp, 1),
                        "cpu_s_per_h": cpu / hours if hours else None})
    # ratio to fenji in the same run
    for row in out:
        base = next(r for r in out if r["database"] == row["database"]
                    and r["detector"] == "fenji")
        row["cpu_x_fenji"] = (row["cpu_s_per_h"] / base["cpu_s_per_h"]
                              if base["cpu_s_per_h"] else None)
    return out


def _worst(rows: list[dict[str, Any]], k: int = 5) -> list[dict[str, Any]]:
    """fenji's ``k`` worst records per database (lowest F1), errors first."""
    out = []
    for db in ("mitdb", "cpsc2021", "cpsc2019"):
        sel = [r for r in rows if r["db"] == db and r["detector"] == "fenji" and "tp" in r]
        sel.sort(key=lambda r: (2 * r["tp"] / max(2 * r["tp"] + r["fn"] + r["fp"], 1),
                                r["record"]))
        out += [{"db": db, "record": r["record"], "tp": r["tp"], "fn": r["fn"], "fp": r["fp"],
                 "Se_%": 100.0 * r["se"], "+P_%": 100.0 * r["ppv"]}
                for r in sel[:k] if r["fn"] or r["fp"]]
    return out


def _folds(rows: list[dict[str, Any]], db: str = "cpsc2019", k: int = 5, seed: int = 2019
           ) -> dict[str, Any]:
    """fenji on ``k`` seeded folds of one database's records: the spread a held-out
    fold shows (nothing in the detector is fitted, so every fold is held out)."""
    sel = sorted((r for r in rows if r["db"] == db and r["detector"] == "fenji" and "tp" in r),
                 key=lambda r: r["record"])
    fold = np.random.default_rng(seed).permutation(len(sel)) % k
    se, ppv = [], []
    for f in range(k):
        part = [r for r, g in zip(sel, fold, strict=True) if g == f]
        tp, fn, fp = (sum(r[key] for r in part) for key in ("tp", "fn", "fp"))
        se.append(100.0 * tp / max(tp + fn, 1))
        ppv.append(100.0 * tp / max(tp + fp, 1))
    return {"database": db, "folds": k, "seed": seed, "Se_%": se, "+P_%": ppv,
            "Se_mean_sd": (statistics.mean(se), statistics.stdev(se)),
            "+P_mean_sd": (statistics.mean(ppv), statistics.stdev(ppv))}


#: The QRS detector's numbers chosen by CV over records: every combination of the
#: spectral T-wave test's ratio (0: off) and the R-peak band's upper corner (15 Hz:
#: the energy band, as before), with the later rules off; then, with those two at
#: the values that protocol chose (0.55, 40 Hz), every combination of the T-wave
#: exemption of a candidate with a QRS's spectrum (``t_hf_qrs``, inf: off) and the
#: gap fill's relative steepness (``gap_rel``).  The first setting is the detector
#: before any of them.
QRS_GRID: tuple[dict[str, float], ...] = tuple(
    {"t_hf_min": h, "r_hi_hz": r, "t_hf_qrs": float("inf"), "gap_rel": 0.3}
    for r in (15.0, 25.0, 40.0) for h in (0.0, 0.4, 0.45, 0.5, 0.55, 0.6)) + tuple(
    {"t_hf_min": 0.55, "r_hi_hz": 40.0, "t_hf_qrs": q, "gap_rel": g}
    for q in (float("inf"), 0.9, 0.8, 0.7) for g in (0.3, 0.25, 0.2)
    if (q, g) != (float("inf"), 0.3))
QRS_CV_SEED = 2019
#: The setting shipped before ``t_hf_qrs`` and ``gap_rel`` were added (the CV table's
#: "before" columns).
QRS_BEFORE = {"t_hf_min": 0.55, "r_hi_hz": 40.0, "t_hf_qrs": float("inf"), "gap_rel": 0.3}


def qrs_counts(data: Path, grid: tuple[dict[str, float], ...]) -> list[dict[str, Any]]:
    """fenji's tp/fn/fp on every annotated record (first lead) for each setting, and
    on CPSC 2021 also with both leads (``detect_qrs_leads``' lead choice, group
    ``cpsc2021 2 leads``: a setting can change which lead a window takes)."""
    import wfdb

    from fenji.codecs.ecg import qrs
    from fenji.gateway.ecg import io as ecg_io

    rows = []
    for db, path in _records(data):
        rec = wfdb.rdrecord(str(path))
        x = np.ascontiguousarray(rec.p_signal[:, 0])
        fs = float(rec.fs)
        ref, vf = ecg_io.read_beat_annotations(path)
        row: dict[str, Any] = {"db": db, "group": db, "record": path.name, "counts": []}
        for setting in grid:
            s = qrs.score_beats(ref, qrs.detect_qrs(x, fs, **setting), fs, exclude=vf,
                                n_samples=rec.sig_len,
                                tol_s=0.075 if db == "cpsc2019" else qrs.MATCH_S,
                                edge_s=0.5 if db == "cpsc2019" else 0.0)
            row["counts"].append((s.tp, s.fn, s.fp))
        rows.append(row)
        if db == "cpsc2021":
            cols = [np.ascontiguousarray(rec.p_signal[:, j]) for j in range(rec.n_sig)]
            slope = [qrs.detect_qrs_slope(c, fs) for c in cols]
            both: dict[str, Any] = {"db": db, "group": "cpsc2021 2 leads", "record": path.name,
                                    "counts": []}
            for setting in grid:
                d = qrs.choose_beats([qrs.detect_qrs(c, fs, **setting) for c in cols], slope,
                                     rec.sig_len, fs)
                s = qrs.score_beats(ref, d, fs, exclude=vf, n_samples=rec.sig_len)
                both["counts"].append((s.tp, s.fn, s.fp))
            rows.append(both)
    return rows


def _qrs_error(rows: list[dict[str, Any]], g: int) -> float:
    """Mean over groups (databases; CPSC 2021 twice, first lead and both leads) of
    (FN + FP) / reference beats with setting ``g``: each group weighs the same,
    whatever its beat count."""
    errs = []
    for grp in sorted({r.get("group", r["db"]) for r in rows}):
        tp, fn, fp = (sum(r["counts"][g][k] for r in rows if r.get("group", r["db"]) == grp)
                      for k in range(3))
        errs.append((fn + fp) / max(tp + fn, 1))
    return float(np.mean(errs))


def qrs_cv(rows: list[dict[str, Any]], grid: tuple[Any, ...], folds: int = 5,
           seed: int = QRS_CV_SEED, before: int = 0) -> dict[str, Any]:
    """k-fold CV over records (stratified by database, seeded) of the choice of a
    detector setting: each fold's setting is the one with the lowest error
    (:func:`_qrs_error`; ties to the earlier in ``grid``) on the other folds'
    records; the held-out folds' counts are pooled per database and shown next to
    ``grid[before]``'s, with the mean +- sd over the folds of each held-out fold's
    Se and +P."""
    rng = np.random.default_rng(seed)
    of: dict[tuple[str, str], int] = {}      # a record's rows stay in one fold
    for db in sorted({r["db"] for r in rows}):
        recs = sorted({r["record"] for r in rows if r["db"] == db})
        of.update(zip(((db, n) for n in recs), (rng.permutation(len(recs)) % folds).tolist(),
                      strict=True))
    fold = np.array([of[(r["db"], r["record"])] for r in rows], dtype=int)
    chosen, held = [], []
    for f in range(folds):
        train = [r for r, g in zip(rows, fold, strict=True) if g != f]
        best = min(range(len(grid)), key=lambda g: (_qrs_error(train, g), g))
        chosen.append(grid[best])
        held += [{**r, "cv": r["counts"][best], "fold": f}
                 for r, g in zip(rows, fold, strict=True) if g == f]
    table = []
    def grp(r: dict[str, Any]) -> str:
        return str(r.get("group", r["db"]))

    for db, pred in (("mitdb non-paced", lambda r: grp(r) == "mitdb" and r["record"] not in PACED),
                     ("mitdb paced", lambda r: grp(r) == "mitdb" and r["record"] in PACED),
                     ("cpsc2021", lambda r: grp(r) == "cpsc2021"),
                     ("cpsc2021 2 leads", lambda r: grp(r) == "cpsc2021 2 leads"),
                     ("cpsc2019", lambda r: grp(r) == "cpsc2019")):
        sel = [r for r in held if pred(r)]
        row: dict[str, Any] = {"database": db, "records": len(sel)}
        for name, get in (("before", lambda r: r["counts"][before]), ("cv", lambda r: r["cv"])):
            tp, fn, fp = (sum(get(r)[k] for r in sel) for k in range(3))
            row[f"Se_{name}_%"] = round(100.0 * tp / max(tp + fn, 1), 2)
            row[f"+P_{name}_%"] = round(100.0 * tp / max(tp + fp, 1), 2)
            per = [[sum(get(r)[k] for r in sel if r["fold"] == f) for k in range(3)]
                   for f in range(folds)]
            se = [100.0 * a / (a + b) for a, b, _ in per if a + b]
            pp = [100.0 * a / (a + c) for a, _, c in per if a + c]
            row[f"Se_{name}_folds"] = (f"{np.mean(se):.2f} +- {np.std(se, ddof=1):.2f}"
                                       if len(se) > 1 else "")
            row[f"+P_{name}_folds"] = (f"{np.mean(pp):.2f} +- {np.std(pp, ddof=1):.2f}"
                                       if len(pp) > 1 else "")
        table.append(row)
    full = min(range(len(grid)), key=lambda g: (_qrs_error(rows, g), g))
    return {"grid": list(grid), "folds": folds, "seed": seed, "chosen_per_fold": chosen,
            "chosen_on_all": grid[full], "table": table,
            "error_on_all": [_qrs_error(rows, g) for g in range(len(grid))]}


def _pipeline(n: int, data: Path) -> list[dict[str, Any]]:
    import neurokit2 as nk
    import wfdb

    from fenji.codecs.ecg import quality as ecg_quality

    c11 = data / "ecg" / "challenge2011"
    names = (c11 / "RECORDS").read_text().split()[:n]
    fenji_ms, nk_ms = [], []
    for name in names:
        rec = wfdb.rdrecord(str(c11 / name))
        x = np.ascontiguousarray(rec.p_signal)
        fs, leads = float(rec.fs), rec.sig_name
        ecg_quality.check_ecg(x, fs, leads)                      # warm (numba cache)
        def check(x: np.ndarray = x, fs: float = fs, leads: list[str] = leads) -> None:
            ecg_quality.check_ecg(x, fs, leads)

        _, cpu = _cpu(check, 0.05)
        fenji_ms.append(1000.0 * cpu)

        def nk_all(x: np.ndarray = x, fs: float = fs) -> None:
            for j in range(x.shape[1]):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        clean = nk.ecg_clean(x[:, j], sampling_rate=int(fs))
                        _, info = nk.ecg_peaks(clean, sampling_rate=int(fs))
                        nk.ecg_quality(clean, rpeaks=info["ECG_R_Peaks"],
                                       sampling_rate=int(fs))
                    except Exception:  # flat leads make NeuroKit2 raise; time the attempt
                        pass

        _, cpu = _cpu(nk_all, 0.0)
        nk_ms.append(1000.0 * cpu)
    return [{"pipeline": "10-s 12-lead check", "tool": "fenji", "records": len(names),
             "median_ms": statistics.median(fenji_ms), "max_ms": max(fenji_ms)},
            {"pipeline": "10-s 12-lead check", "tool": "neurokit2", "records": len(names),
             "median_ms": statistics.median(nk_ms), "max_ms": max(nk_ms)}]




def quality_features(c11: Path, limit: int | None = None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Records (RECORDS order), gate features, labels (True: unacceptable) and the
    one-line rule's predictions ("any lead constant >= 0.2 s") of challenge2011."""
    import json

    import wfdb

    from fenji.codecs.ecg import quality as ecg_quality

    labels = json.loads((c11 / "labels.json").read_text())
    names = (c11 / "RECORDS").read_text().split()[:limit]
    feats, y, one = [], [], []
    for name in names:
        rec = wfdb.rdrecord(str(c11 / name))
        ms, f = ecg_quality.measure_record(rec.p_signal, float(rec.fs))
        feats.append(f)
        y.append(labels[name] == "unacceptable")
        one.append(max(m.flat_s for m in ms) >= ONE_LINE_FLAT_S)
    return names, np.array(feats), np.array(y), np.array(one)


def gate_document(f: np.ndarray, y: np.ndarray, one: np.ndarray, *, repeats: int = 10,
                  folds: int = 5, seed: int | None = None) -> dict[str, Any]:
    """The shipped gate file: the gate fitted on all records and its CV estimate."""
    from fenji.codecs.ecg import gate as ecg_gate

    seed = ecg_gate.SEED if seed is None else seed
    model = ecg_gate.fit_gate(f, y, seed=seed)
    cv = ecg_gate.cross_validate(f, y, one, repeats=repeats, folds=folds, seed=seed)
    # the variant not shipped: features chosen by the labels too, inside the folds
    cv_sel = ecg_gate.cross_validate(f, y, repeats=repeats, folds=folds, seed=seed,
                                     select=True)
    inner = ecg_gate.stratified_folds(y, ecg_gate.INNER_FOLDS, np.random.default_rng(seed))
    path, pick, _ = ecg_gate.select_features(f, y, ecg_gate.FEATURES, inner)
    return {"model": model.to_json(),
            "fitted_on": {"data": "challenge2011 (shared/data/ecg/challenge2011)",
                          "n": int(len(y)), "n_unacceptable": int(y.sum()), "seed": seed},
            "selection": {"rule": "forward, inner out-of-fold log-loss, one-SE (not shipped)",
                          "chosen_on_all": list(path[pick].features),
                          "cv": cv_sel["gate"],
                          "path": [{"features": list(st.features), "c": st.c,
                                    "log_loss": round(st.log_loss, 6), "se": round(st.se, 6)}
                                   for st in path]},
            "cv": {k: cv[k] for k in ("repeats", "folds", "seed", "gate", "baseline")}}


def _cv_rows(cv: dict[str, Any]) -> list[dict[str, Any]]:
    def ms(d: dict[str, float]) -> str:
        return f"{100 * d['mean']:.1f} +- {100 * d['sd']:.1f}"

    return [{"rule": name, "accuracy_%": ms(cv[key]["accuracy"]), "Se_%": ms(cv[key]["se"]),
             "Sp_%": ms(cv[key]["sp"])}
            for name, key in (("fenji gate (fitted in training folds)", "gate"),
                              (f"one-line: any lead constant >= {ONE_LINE_FLAT_S} s",
                               "baseline"))]


def _quality_cv(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    import numba

    c11 = data / "ecg" / "challenge2011"
    names, f, y, one = quality_features(c11)
    doc = gate_document(f, y, one, repeats=args.repeats, folds=args.folds)
    cv = doc["cv"]
    print(f"ECG quality gate: challenge2011, {len(y)} records ({int(y.sum())} unacceptable), "
          f"{cv['repeats']} x stratified {cv['folds']}-fold CV, seed {cv['seed']}; "
          "mean +- sd over repeats")
    common.print_table(_cv_rows(cv), ["rule", "accuracy_%", "Se_%", "Sp_%"])
    sel = doc["selection"]
    print(f"\nfeatures chosen by the labels, inside the folds ({sel['rule']}): CV "
          + ", ".join(f"{k} {100 * v['mean']:.1f} +- {100 * v['sd']:.1f} %"
                      for k, v in sel["cv"].items())
          + f"; on all {len(y)} records: {', '.join(sel['chosen_on_all'])}")
    common.print_table([{"step": i + 1, "added": st["features"][-1], "C": st["c"],
                         "log_loss": f"{st['log_loss']:.4f}", "se": f"{st['se']:.4f}"}
                        for i, st in enumerate(sel["path"])],
                       ["step", "added", "C", "log_loss", "se"])
    if args.write_gate:
        args.write_gate.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote the gate fitted on all {len(y)} records to {args.write_gate}")
    return {"versions": {"numba": numba.__version__, "numpy": np.__version__},
            "params": {"repeats": args.repeats, "folds": args.folds},
            "quality_cv": cv, "model": doc["model"], "selection": doc["selection"],
            "records": names}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.external:
        return run_external(args.external, common.shared_data(), common.print_table)
    if args.quality_cv:
        return _quality_cv(args, common.shared_data())
    if args.qrs_cv:
        from fenji.codecs.ecg import qrs

        cv = qrs_cv(qrs_counts(common.shared_data(), QRS_GRID), QRS_GRID, folds=args.folds,
                    before=QRS_GRID.index(QRS_BEFORE))
        shipped = {"t_hf_min": qrs.T_HF_MIN, "r_hi_hz": qrs.R_HI_HZ,
                   "t_hf_qrs": qrs.T_HF_QRS, "gap_rel": qrs.GAP_REL}
        print(f"QRS detector settings, {cv['folds']}-fold CV over records (seed {cv['seed']}):\n"
              f"  chosen per fold {cv['chosen_per_fold']}\n  on all records "
              f"{cv['chosen_on_all']} (shipped: {shipped})\n"
              f"held-out folds pooled, and mean +- sd over the held-out folds; 'before' = "
              f"{QRS_BEFORE} (the detector before the last two numbers)")
        common.print_table(cv["table"], ["database", "records", "Se_before_%", "+P_before_%",
                                         "Se_cv_%", "+P_cv_%", "Se_cv_folds", "+P_cv_folds"])
        return {"qrs_cv": cv, "shipped": shipped}
    if args.pipeline_only:
        pipe = _pipeline(args.pipeline_records, common.shared_data())
        common.print_table(pipe, ["pipeline", "tool", "records", "median_ms", "max_ms"])
        return {"pipeline": pipe, "load_avg": list(os.getloadavg())}
    import neurokit2
    import numba
    import wfdb

    data = common.shared_data()
    rows = _score_rows(args, data)
    summary = _group(rows)
    print("QRS detection, first lead, +-150 ms (CPSC 2019: +-75 ms); CPU s per hour of "
          "single-lead ECG")
    common.print_table(summary, ["database", "detector", "records", "Se_%", "+P_%", "F1_%",
                                 "cpu_s_per_h", "cpu_x_fenji"])
    worst = _worst(rows)
    print("\nfenji's worst records (lowest F1) per database")
    common.print_table(worst, ["db", "record", "tp", "fn", "fp", "Se_%", "+P_%"])
    folds = _folds(rows)
    print(f"\nCPSC 2019 on {folds['folds']} seeded folds (seed {folds['seed']}): Se "
          f"{folds['Se_mean_sd'][0]:.2f} +- {folds['Se_mean_sd'][1]:.2f} %, +P "
          f"{folds['+P_mean_sd'][0]:.2f} +- {folds['+P_mean_sd'][1]:.2f} %")
    if args.per_record:
        print()
        common.print_table([r for r in rows if "tp" in r],
                           ["db", "record", "detector", "tp", "fn", "fp", "se", "ppv", "cpu_s"])
    errors = [r for r in rows if "error" in r]
    for r in errors:
        print(f"{r['detector']} failed on {r['db']}/{r['record']}: {r['error']}")
    pipe = _pipeline(args.pipeline_records, data)
    print()
    common.print_table(pipe, ["pipeline", "tool", "records", "median_ms", "max_ms"])
    return {"versions": {"neurokit2": neurokit2.__version__, "wfdb": wfdb.__version__,
                         "numba": numba.__version__, "numpy": np.__version__},
            "params": {"lead": 0, "match_s": 0.15, "xqrs_mitdb": "all" if args.all_mitdb
                       else list(XQRS_MITDB_DEFAULT)},
            "summary": summary, "worst": worst, "cpsc2019_folds": folds, "pipeline": pipe,
            "records": rows}
