"""`python -m bench ecg --external DIR`: the shipped gate and detector on records outside
the shared set, fitting nothing.  Here the "outside" folder is made of links to a few
shared records, scored against an empty shared set (so none is skipped) and against
the real one (so every one is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import wfdb
from _data import ECG_DIR, REPO

from bench._ecg_external import run_external, wilson
from fenji.codecs.ecg import qrs
from fenji.codecs.ecg import quality as ecg_quality

pytestmark = pytest.mark.timeout(600)
C11 = ECG_DIR / "challenge2011"


def _outside(tmp: Path) -> tuple[Path, dict[str, str]]:
    labels = json.loads((C11 / "labels.json").read_text())
    bad = [n for n, lab in sorted(labels.items()) if lab == "unacceptable"][:3]
    good = [n for n, lab in sorted(labels.items()) if lab == "acceptable"][:5]
    pick = {n: labels[n] for n in bad + good}
    c = tmp / "ext" / "c11"
    c.mkdir(parents=True)
    for n in pick:
        for ext in (".hea", ".dat"):
            (c / f"{n}{ext}").symlink_to(C11 / f"{n}{ext}")
    (c / "labels.json").write_text(json.dumps(pick))
    q = tmp / "ext" / "q19"
    for sub in ("data", "ref"):
        (q / sub).mkdir(parents=True)
    for p in sorted((ECG_DIR / "cpsc2019" / "mat" / "data").glob("*.mat"))[:4]:
        (q / "data" / p.name).symlink_to(p)
        ref = ECG_DIR / "cpsc2019" / "mat" / "ref" / f"R_{p.stem.split('_')[1]}.mat"
        (q / "ref" / ref.name).symlink_to(ref)
    return tmp / "ext", pick


def test_external_scores_are_the_shipped_models_on_each_record(tmp_path: Path) -> None:
    folder, pick = _outside(tmp_path)
    empty = tmp_path / "no-shared"
    empty.mkdir()
    out = run_external(folder, empty, lambda rows, cols: None)
    (row, one) = out["gate"]["c11"]["table"]
    gate = ecg_quality.shipped_gate()
    pred, y = [], []
    for n, lab in pick.items():
        rec = wfdb.rdrecord(str(C11 / n))
        _, f = ecg_quality.measure_record(np.nan_to_num(rec.p_signal), float(rec.fs))
        pred.append(bool(gate.predict(f[None, :])[0]))
        y.append(lab == "unacceptable")
    p, ya = np.array(pred), np.array(y)
    assert row["records"] == len(pick) and row["unacceptable"] == 3
    assert row["Se_%"].startswith(f"{100 * np.sum(p & ya) / 3:.1f} [")
    assert row["Sp_%"].startswith(f"{100 * np.sum(~p & ~ya) / 5:.1f} [")
    assert sum(out["gate"]["c11"]["outcomes"].values()) == len(pick)
    fenji = next(r for r in out["qrs"]["q19"]["table"] if r["detector"] == "fenji")
    assert fenji["records"] == 4
    tp = fn = 0
    import scipy.io as sio
    for m in sorted((folder / "q19" / "data").glob("*.mat")):
        x = np.asarray(sio.loadmat(m)["ecg"], dtype=np.float64).ravel()
        ref = np.asarray(sio.loadmat(folder / "q19" / "ref" / f"R_{m.stem.split('_')[1]}.mat")
                         ["R_peak"]).ravel().astype(np.int64)
        s = qrs.score_beats(ref, qrs.detect_qrs(x, 500.0), 500.0, n_samples=x.size,
                            tol_s=0.075, edge_s=0.5)
        tp, fn = tp + s.tp, fn + s.fn
    assert fenji["beats"] == tp + fn and fenji["FN"] == fn


def test_shared_records_are_skipped_and_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    folder, pick = _outside(tmp_path)
    out = run_external(folder, ECG_DIR.parent, lambda rows, cols: None)
    assert out["gate"]["c11"]["skipped_shared"] == len(pick)
    assert out["gate"]["c11"]["table"][0]["records"] == 0
    assert out["qrs"]["q19"]["skipped_shared"] == 4
    (tmp_path / "nothing").mkdir()
    res = subprocess.run([sys.executable, "-m", "bench", "ecg", "--external",
                          str(tmp_path / "nothing")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0 and "no labels.json" in res.stderr


def test_wilson_interval() -> None:
    lo, hi = wilson(45, 50)
    assert 0.78 < lo < 0.9 < hi < 0.97
    assert all(np.isnan(v) for v in wilson(0, 0))
