"""Issue 17, finding 13 (quarantine size): a flood of rejects cannot fill the store.

10,000 tiny STOW-RS parts made 12,000 quarantine rows.  The quarantine now keeps
at most ``store.quarantine_max_records`` records and ``store.quarantine_max_bytes``
bytes: the oldest records, and files no record names any more, are evicted and
the eviction is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fenji.gateway import config as config_mod
from fenji.gateway.node import open_store
from fenji.gateway.store.db import Store


def test_quarantine_evicts_oldest_beyond_its_bounds(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "store", quarantine_max_records=20, quarantine_max_bytes=10_000)
    try:
        with caplog.at_level(logging.WARNING, logger="fenji.gateway.store.db"):
            digests = [store.quarantine(f"reject {i:04d}".encode() * 10, f"bad part {i}")
                       for i in range(200)]
        rows = store.quarantined()
        assert len(rows) == 20
        assert [r["reason"] for r in rows] == [f"bad part {i}" for i in range(180, 200)]
        kept = {p.name for p in store.quarantine_dir.iterdir()}
        assert kept == set(digests[180:])
        assert "quarantine evicted" in caplog.text
        # The byte bound too: five large rejects fit, the sixth pushes the oldest out.
        for i in range(6):
            store.quarantine(bytes([i]) * 3000, f"large {i}")
        sizes = [r["size"] for r in store.quarantined()]
        assert sum(sizes) <= 10_000 and store.quarantined()[-1]["reason"] == "large 5"
    finally:
        store.close()


def test_node_store_has_quarantine_bounds_by_default(tmp_path: Path) -> None:
    cfg = config_mod.from_mapping({"dicom": {"allow_ae": ["*"]},
                                   "node": {"data_dir": str(tmp_path)}}, env={})
    store = open_store(cfg)
    try:
        assert 0 < store.quarantine_max_records and 0 < store.quarantine_max_bytes
    finally:
        store.close()
