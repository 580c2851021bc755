"""Shared fixtures.  Data locations live in tests/_data.py (importable from tests)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fenji.gateway.lab.objstore import S3Server

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


def pytest_configure(config: pytest.Config) -> None:
    # Without the shared data, parametrized tests would collect zero cases and
    # pass by skipping: stop at once and say where the data was looked for.
    if not (SHARED_DATA / "dicom").is_dir() or not (SHARED_DATA / "ecg").is_dir():
        raise pytest.UsageError(
            f"shared test data not found at {SHARED_DATA} (expected dicom/ and ecg/): "
            "clone fenji next to shared/ (../shared/data) or set FENJI_SHARED_DATA")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set FENJI_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS from PyPI) on 127.0.0.1, bucket "fenji"."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start(buckets=("fenji",))
    try:
        yield server
    finally:
        server.stop()
