"""Shared fixtures.  Data locations live in tests/_data.py (importable from tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _data import (  # noqa: E402
    DICOM_DIR,
    ECG_DIR,
    REPO,
    SHARED_DATA,
    good_files,
    malformed_files,
)

__all__ = ["DICOM_DIR", "ECG_DIR", "REPO", "SHARED_DATA", "good_dicom_files",
           "malformed_dicom_files"]
good_dicom_files = good_files
malformed_dicom_files = malformed_files


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set FENJI_SHARED_DATA)")
    return SHARED_DATA
