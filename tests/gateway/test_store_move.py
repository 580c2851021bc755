"""gateway/store/move.py without servers: the schema's tables, passwords kept out of
messages, and a SQLite index moved to another SQLite file (the same copy, check and
verify code that `fenji store migrate` runs against PostgreSQL and S3 in
tests/interop/test_store_migrate.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway import ingest
from fenji.gateway.store import move as mv
from fenji.gateway.store.db import Store
from fenji.gateway.store.index import sqlite_url


def _noop(what: str, done: int, total: int) -> None:
    pass


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "src")
    src = ingest.Source("import", "import")
    for f in ct_series()[:4]:
        assert ingest.ingest(store, f.read_bytes(), src, ingest.Limits()).ok
    store.record_event("test", detail="病人")
    yield store
    store.close()


def test_known_tables_are_every_table_a_migrated_store_has(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    try:
        have = {t for t in store.index.tables() if not t.startswith("sqlite_")}
    finally:
        store.close()
    assert have - {mv.SCHEMA_TABLE} == set(mv.KNOWN_TABLES)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://fenji:pw@db:5432/c", "postgresql://fenji@db:5432/c"),
    ("postgresql://fenji@db/c?password=pw&sslmode=require",
     "postgresql://fenji@db/c?sslmode=require"),
    ("s3://b/p?endpoint=http://127.0.0.1:9000&region=cn-1",
     "s3://b/p?endpoint=http://127.0.0.1:9000&region=cn-1"),
    ("", ""),
])
def test_redact_drops_passwords_only(url: str, shown: str) -> None:
    assert mv.redact(url) == shown


def test_an_index_moved_to_another_sqlite_file_verifies_and_reruns(source: Store,
                                                                    tmp_path: Path) -> None:
    target = Store(source.root, index_url=sqlite_url(tmp_path / "moved.sqlite"))
    try:
        report = mv.move(source, target, copy_index=True, copy_blobs=False, progress=_noop)
        assert report.ok, report.problems
        assert report.tables["instances"] == 4 and report.blobs_verified == 4
        assert report.tables_verified == len(report.tables)
        first = report.rows_copied
        again = mv.move(source, target, copy_index=True, copy_blobs=False, progress=_noop)
        assert first >= 4 + 1 and again.ok and again.rows_copied == 0  # all there already
        assert again.tables == report.tables
        # A row changed in the target: the verify step names the table ...
        with target.atomic() as con:
            con.execute("UPDATE events SET detail = '{}' WHERE kind = 'test'")
        checked = mv.move(source, target, copy_index=True, copy_blobs=False, progress=_noop,
                          verify_only=True)
        assert any(p.startswith("table events:") for p in checked.problems)
        # ... and a copy on top of it is refused, naming the row and the column.
        with pytest.raises(mv.TargetConflict, match=r"table events: id=\d+: detail = "):
            mv.move(source, target, copy_index=True, copy_blobs=False, progress=_noop)
    finally:
        target.close()


def test_a_target_of_another_center_is_refused_before_any_write(source: Store,
                                                                 tmp_path: Path) -> None:
    other = Store(tmp_path / "other", index_url=sqlite_url(tmp_path / "other.sqlite"))
    try:
        f = ct_series()[5]
        assert ingest.ingest(other, f.read_bytes(), ingest.Source("import", "import"),
                             ingest.Limits()).ok
        with pytest.raises(mv.TargetConflict, match="not in the source"):
            mv.move(source, other, copy_index=True, copy_blobs=False, progress=_noop)
        assert other.count_instances() == 1
    finally:
        other.close()
