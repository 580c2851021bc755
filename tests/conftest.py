"""Shared fixtures: where the read-only shared data lives, DCMTK paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FENJI_SHARED_DATA", REPO.parent / "shared" / "data"))
DICOM_DIR = SHARED_DATA / "dicom"
ECG_DIR = SHARED_DATA / "ecg"


def good_dicom_files() -> list[Path]:
    """Every well-formed .dcm in shared/data/dicom (malformed/ left out)."""
    return sorted(p for p in DICOM_DIR.rglob("*.dcm") if "malformed" not in p.parts)


def malformed_dicom_files() -> list[Path]:
    return sorted((DICOM_DIR / "malformed").glob("*.dcm"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set FENJI_SHARED_DATA)")
    return SHARED_DATA
