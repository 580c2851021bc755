"""Where the read-only shared data lives (import as ``from _data import …``;
tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FENJI_SHARED_DATA", REPO.parent / "shared" / "data"))
DICOM_DIR = SHARED_DATA / "dicom"
ECG_DIR = SHARED_DATA / "ecg"


def good_files() -> list[Path]:
    """Every well-formed .dcm in shared/data/dicom (malformed/ left out)."""
    return sorted(p for p in DICOM_DIR.rglob("*.dcm") if "malformed" not in p.parts)


def malformed_files() -> list[Path]:
    return sorted((DICOM_DIR / "malformed").glob("*.dcm"))


def ct_series() -> list[Path]:
    return sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))


def ct_and_ecg(out: Path, n_instances: int, *, n_studies: int, size: int) -> list[Path]:
    """A synthetic load of ``n_instances``: one in twenty a 12-lead ECG (a study each),
    the rest CT slices cut to ``size`` pixels spread over ``n_studies`` studies."""
    from fenji.gateway.lab.synth import derive
    n_ecg = max(1, n_instances // 20)
    files = derive(ct_series(), out / "src", n_instances - n_ecg, size=size, prefix="ct",
                   studies=n_studies)
    files += derive([DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"], out / "ecg", n_ecg,
                    prefix="ecg", studies=n_ecg)
    return files
