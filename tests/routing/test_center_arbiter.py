"""The index decides between a center's processes (``[node] shared_store``).

Two :class:`ReceiverContext` on two :class:`Store` objects of one store folder
stand for two processes: each has its own connections, as separate processes
have.  A chunk written at an offset another process already moved past
changes nothing and answers where the upload is; of two receipts for one
upload only the first is recorded; a bundle id gets one upload row.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.gateway.store.db import Store
from fenji.routing import upload
from fenji.routing.transfer_server import (
    ReceiverContext,
    _append_commit,
    _parts,
    _record_receipt,
)


def _part_path(ctx: ReceiverContext, upload_id: str) -> Path:
    path = _parts(ctx).local_file(upload_id)
    assert path is not None  # the local store: one part file per upload
    return path


def _ctx(root: Path) -> ReceiverContext:
    store = Store(root)
    return ReceiverContext(store=store, node_name="center", key=Ed25519PrivateKey.generate(),
                           peers={}, upload_dir=root / "uploads")


def _new_upload(ctx: ReceiverContext, length: int) -> str:
    _parts(ctx).create("u1")
    with ctx.store.atomic() as con:
        con.execute("INSERT INTO uploads(upload_id, bundle_id, sender, length, offset, state, "
                    "created_at, updated_at) VALUES ('u1', 'b1', 'edge', ?, 0, ?, 0, 0)",
                    (length, upload.RECEIVING))
    return "u1"


def test_a_chunk_at_a_stale_offset_changes_nothing(tmp_path: Path) -> None:
    a, b = _ctx(tmp_path / "store"), _ctx(tmp_path / "store")
    uid = _new_upload(a, 8)
    assert _append_commit(a, uid, 0, b"abcd") is None
    # Process B read offset 0 before A committed, and writes other bytes there.
    stale = _append_commit(b, uid, 0, b"XXXXXX")
    assert stale is not None and stale["offset"] == 4
    assert _part_path(a, uid).read_bytes() == b"abcd"
    assert _append_commit(b, uid, 4, b"efgh") is None  # B resumes where the index says
    assert _part_path(a, uid).read_bytes() == b"abcdefgh"
    row = a.store.query_one("SELECT offset FROM uploads WHERE upload_id = ?", (uid,))
    assert row == {"offset": 8}


def test_one_receipt_per_upload_whoever_finalizes(tmp_path: Path) -> None:
    a, b = _ctx(tmp_path / "store"), _ctx(tmp_path / "store")
    uid = _new_upload(a, 4)
    ra, rb = {"bundle_id": "b1", "by": "a"}, {"bundle_id": "b1", "by": "b"}
    assert _record_receipt(a, uid, upload.COMPLETE, ra, "sig-a") is True
    assert _record_receipt(b, uid, upload.COMPLETE, rb, "sig-b") is False
    row = b.store.query_one("SELECT state, receipt_json, signature FROM uploads")
    assert row is not None
    assert (row["state"], json.loads(row["receipt_json"]), row["signature"]) == \
        (upload.COMPLETE, ra, "sig-a")


def test_a_chunk_after_another_process_finalized_is_refused(tmp_path: Path) -> None:
    a, b = _ctx(tmp_path / "store"), _ctx(tmp_path / "store")
    uid = _new_upload(a, 4)
    assert _append_commit(a, uid, 0, b"abcd") is None
    assert _record_receipt(a, uid, upload.COMPLETE, {"bundle_id": "b1"}, "s") is True
    _part_path(a, uid).unlink()  # the finalizing process removes the part
    fresh = _append_commit(b, uid, 0, b"abcd")
    assert fresh is not None and fresh["state"] == upload.COMPLETE
