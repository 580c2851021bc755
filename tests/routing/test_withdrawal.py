"""A STAT release that fails after its preview went: the edge sends a signed withdrawal,
and the center's preview case ends "withdrawn" (with the ledger's event) instead of
waiting for ever for a full bundle that will not come."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _data import ct_series
from _nodes import edge_and_center
from _wait import until

from fenji.gateway.cases import case
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.store.db import Store

pytestmark = pytest.mark.timeout(900)


def _one(db: Path, sql: str, args: tuple[Any, ...]) -> Any:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute(sql, args).fetchone()
        return row[0] if row else None
    finally:
        con.close()


def test_failed_release_withdraws_its_preview_at_the_center(tmp_path: Path) -> None:
    edge, center = edge_and_center(tmp_path)
    files = ct_series()[:4]
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    center_db = center.directory / "store" / "index.sqlite"
    with edge, center:
        storescu(files, edge.dicom_port, calling="CT1")
        # a blob lost from the edge's store: the preview (the middle image) can be made,
        # the full bundle cannot
        store = Store(edge.directory / "store")
        try:
            first = store.query("SELECT sha256 FROM instances WHERE study_instance_uid = ? "
                                "ORDER BY instance_number, sop_instance_uid LIMIT 1",
                                (study,))[0]
            store.blob_path(first["sha256"]).unlink()
        finally:
            store.close()
        r = edge.cli("case", "send", study, "--priority", "stat", "--no-gate", check=False)
        assert r.returncode != 0 and "full bundle could not be made" in r.stderr
        cid = until(lambda: _one(edge.directory / "store" / "index.sqlite",
                                 "SELECT case_id FROM cases WHERE state = 'failed'", ()),
                    60, "the edge's failed case")
        until(lambda: _one(center_db, "SELECT state FROM cases WHERE case_id = ?", (cid,))
              == "withdrawn", 180, "the center's case withdrawn")
        detail = json.loads(_one(center_db, "SELECT detail FROM audit WHERE kind = "
                                            "'withdrawn' AND case_id = ?", (cid,)))
        assert "full bundle could not be made" in detail["reason"]
        # the preview still came (a reader sees what was withdrawn) and nothing else will:
        # both of the edge's jobs are done, each with its receipt
        assert _one(center_db, "SELECT count(*) FROM uploads WHERE state = 'complete'",
                    ()) == 2
        until(lambda: _one(edge.directory / "store" / "index.sqlite",
                           "SELECT count(*) FROM receipts WHERE case_id = ?", (cid,)) == 2,
              60, "both receipts at the edge")


def _withdrawal(cid: str, preview_id: str) -> dict[str, Any]:
    return {"case": {"case_id": cid, "bundle_id": "w" + preview_id, "bundle_kind": "withdrawal",
                     "withdraws": preview_id, "destination": "center", "priority": "stat",
                     "study_instance_uid": "1.2.3", "reason": "disk failed"}}


def test_only_the_previews_sender_may_withdraw_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    now = time.time()
    try:
        with store.atomic() as con:
            con.execute("INSERT INTO uploads(upload_id, bundle_id, sender, length, state, "
                        "created_at, updated_at) VALUES ('u1', 'p1', 'edge', 10, 'complete', "
                        "?, ?)", (now, now))
        preview = {"case": {"case_id": "c1", "bundle_id": "p1", "bundle_kind": "preview",
                            "destination": "center", "study_instance_uid": "1.2.3"}}
        assert case.record_received(store, preview, "center", sender="edge") == "preview"
        with pytest.raises(case.WithdrawalRefused, match="'mallory'.*'edge'"):
            case.record_received(store, _withdrawal("c1", "p1"), "center", sender="mallory")
        assert store.query_one("SELECT state FROM cases WHERE case_id = 'c1'")["state"] \
            == "preview"
        assert case.record_received(store, _withdrawal("c1", "p1"), "center",
                                    sender="edge") == "withdrawn"
        # a withdrawal that overtook its preview: the late preview leaves it withdrawn
        assert case.record_received(store, _withdrawal("c2", "p2"), "center",
                                    sender="edge") == "withdrawn"
        late = {"case": {**preview["case"], "case_id": "c2", "bundle_id": "p2"}}
        assert case.record_received(store, late, "center", sender="edge") == "withdrawn"
        kinds = [r["kind"] for r in store.query("SELECT kind FROM audit ORDER BY seq")]
        assert kinds.count("withdrawn") == 2
    finally:
        store.close()
