"""Uploads nobody finishes are given up and their bytes removed (routing/reaper.py);
the sender that comes back starts the bundle again and it arrives once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from pathlib import Path

import aiohttp
import pytest
from _data import ct_series
from _nodes import send_to_center
from _wait import until

from fenji.gateway import config as config_mod
from fenji.gateway.keys import load_private
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.gateway.store.db import Store
from fenji.gateway.store.upload_parts import LocalParts
from fenji.routing import reaper, upload
from fenji.routing.transfer_client import ChunkSizer, Delivered, Sender

pytestmark = pytest.mark.timeout(600)


def _row(store: Store, upload_id: str, state: str, updated_at: float, offset: int = 0,
         length: int = 100) -> None:
    with store.atomic() as con:
        con.execute("INSERT INTO uploads(upload_id, bundle_id, sender, length, offset, state, "
                    "created_at, updated_at) VALUES (?, ?, 'edge', ?, ?, ?, ?, ?)",
                    (upload_id, f"b-{upload_id[:8]}", length, offset, state, updated_at,
                     updated_at))


@pytest.mark.parametrize("index", ["sqlite", "postgresql"])
def test_reap_gives_up_only_idle_uploads_and_keeps_every_finished_file(
        tmp_path: Path, index: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_cluster").new_database() if index == "postgresql" \
        else ""
    store = Store(tmp_path / "s", index_url=url) if url else Store(tmp_path / "s")
    parts = LocalParts(store.root / "uploads")
    now, idle = 1_000_000.0, 3600.0
    ids = {k: uuid.uuid4().hex for k in ("idle", "busy", "done", "orphan", "young_orphan")}
    _row(store, ids["idle"], upload.RECEIVING, now - idle - 1, offset=40)
    _row(store, ids["busy"], upload.RECEIVING, now - idle + 1, offset=40)
    _row(store, ids["done"], upload.COMPLETE, now - 10 * idle, offset=100)  # a relay's file
    for k, uid in ids.items():
        parts.create(uid)
        parts.append(uid, 0, b"x" * 40)
        old = now - idle - 1 if k != "young_orphan" else now
        os.utime(parts.path(uid), (old, old))
    done = reaper.reap(store, parts, idle, now)
    assert [r["upload_id"] for r in done] == [ids["idle"]]
    state = {r["upload_id"]: (r["state"], r["offset"]) for r in store.query(
        "SELECT upload_id, state, offset FROM uploads")}
    assert state[ids["idle"]] == (upload.ABANDONED, 0)
    assert state[ids["busy"]] == (upload.RECEIVING, 40)
    assert state[ids["done"]] == (upload.COMPLETE, 100)
    left = {p.stem for p in parts.folder.glob("*.part")}
    assert left == {ids["busy"], ids["done"], ids["young_orphan"]}
    assert reaper.reap(store, parts, idle, now + 1) == []  # once
    # The bundle's next create reopens it: empty, at offset 0, receiving.
    row = store.query_one("SELECT * FROM uploads WHERE upload_id = ?", (ids["idle"],))
    assert row is not None
    fresh = reaper.reopen(store, parts, row, 120, now + 2)
    assert (fresh["state"], fresh["offset"], fresh["length"]) == (upload.RECEIVING, 0, 120)
    assert parts.path(ids["idle"]).stat().st_size == 0
    store.close()


def _center_row(center: NodeProcess, bundle_id: str) -> dict | None:  # type: ignore[type-arg]
    store = open_store(config_mod.load(center.config, env={}))
    try:
        return store.query_one("SELECT * FROM uploads WHERE bundle_id = ?", (bundle_id,))
    finally:
        store.close()


def test_a_given_up_upload_is_removed_and_the_sender_starts_it_again(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1, extra_toml="[limits]\nabandoned_upload_s = 1.0\n")
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    with edge, center:
        files = ct_series()[:6]
        storescu(files, edge.dicom_port, calling="CT1")
        cfg = config_mod.load(edge.config, env={})
        from fenji.gateway.cases.case import release

        store = open_store(cfg)
        try:
            import pydicom

            study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            rel = release(store, study, destination="center", sender_node="edge")
        finally:
            store.close()
        data = rel.bundle_path.read_bytes()
        sender = Sender("edge", load_private(cfg.resolve(cfg.keys.private_key)))
        base = center.http_url

        async def start_and_leave() -> str:
            """Create the upload, send 1000 bytes, go away."""
            async with aiohttp.ClientSession() as s:
                h = sender.headers("POST", "/transfer/uploads", receiver="center", extra={
                    "Fenji-Bundle-Id": rel.bundle_id, "Upload-Length": str(len(data))})
                async with s.post(base + "/transfer/uploads", headers=h) as r:
                    assert r.status == 201, await r.text()
                    loc = r.headers["Location"]
                chunk = data[:1000]
                h = sender.headers("PATCH", loc, {
                    "Upload-Offset": "0", "Upload-Checksum": "sha256 " + base64.b64encode(
                        hashlib.sha256(chunk).digest()).decode()}, receiver="center")
                async with s.patch(base + loc, data=chunk, headers=h) as r:
                    assert r.status == 204, await r.text()
                return loc

        loc = asyncio.run(start_and_leave())
        upload_id = loc.rsplit("/", 1)[1]
        part = center.directory / "store" / "uploads" / f"{upload_id}.part"
        row = until(lambda: (lambda r: r if r and r["state"] == upload.ABANDONED else None)(
            _center_row(center, rel.bundle_id)), 120, "the idle upload given up")
        assert row["offset"] == 0 and not part.exists()

        async def late_patch() -> tuple[int, str]:
            async with aiohttp.ClientSession() as s:
                chunk = data[1000:2000]
                h = sender.headers("PATCH", loc, {
                    "Upload-Offset": "1000", "Upload-Checksum": "sha256 " + base64.b64encode(
                        hashlib.sha256(chunk).digest()).decode()}, receiver="center")
                async with s.patch(base + loc, data=chunk, headers=h) as r:
                    return r.status, await r.text()

        status, text = asyncio.run(late_patch())
        assert status == 410 and "abandoned_upload_s" in text
        # The resend must not race a 1-s limit on a busy machine: a day, as shipped.
        center.stop()
        text = center.config.read_text()
        assert "abandoned_upload_s = 1.0" in text
        center.config.write_text(text.replace("abandoned_upload_s = 1.0",
                                              "abandoned_upload_s = 86400.0"))
        center.start()
        out = send_to_center(edge, rel, sizer=ChunkSizer(64 * 1024, 16 * 1024, 1 << 20))
        assert isinstance(out, Delivered), out
        assert out.bytes_sent == len(data)  # started again, not resumed at 1000
        assert len(out.receipt["instances"]) == len(files)
        at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
        assert {r["sop_instance_uid"]: r["sha256"] for r in center.stored()} == at_edge
        final = _center_row(center, rel.bundle_id)
        assert final is not None and final["state"] == upload.COMPLETE
