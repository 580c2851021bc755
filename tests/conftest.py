"""Shared fixtures.  Data locations live in tests/_data.py (importable from tests)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fenji.gateway.lab.objstore import S3Server

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _pg as pg  # noqa: E402
from _data import (  # noqa: E402
    DICOM_DIR,
    ECG_DIR,
    REPO,
    SHARED_DATA,
    good_files,
    malformed_files,
)
from _pg import PgCluster  # noqa: E402

__all__ = ["DICOM_DIR", "ECG_DIR", "REPO", "SHARED_DATA", "good_dicom_files",
           "malformed_dicom_files"]
good_dicom_files = good_files

# Hypothesis's per-example deadline (200 ms) and its too-slow health check are timing
# assertions: on a busy 2-core CI machine they fail tests that are right.  Off for every
# property test; a test's own @settings still sets its example count.
settings.register_profile("fenji", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fenji")
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


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the session, started on first use (tests/_pg.py)."""
    with pg.cluster() as c:
        yield c


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest) -> str:
    """``[store] index_url`` for each backend: "" (SQLite in the store folder) or a
    fresh database of the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return ""
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_urls(request: pytest.FixtureRequest) -> Callable[[], str]:
    """For tests with several stores: each call gives another store's ``index_url``
    ("" for SQLite: each store folder has its own file)."""
    if request.param == "sqlite":
        return lambda: ""
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database
