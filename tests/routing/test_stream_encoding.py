"""A bundle sent while it is still encoded (issue 16, what-to-build 2.4): a version-2
bundle goes under a deferred-length upload; a cut mid-stream resumes at the
receiver's offset while the encoder has not finished; the receiver makes nothing
visible until the sender declares the length, which it does only once the job is
sealed (the release committed); a lost receipt brings back the same receipt.

A real center node; the sending side is the transfer client in the test with the
node's own :class:`fenji.routing.encoding.Encoding` source over a store the test
writes the bundle into, part by part, as an encoder would.  Between them, a TCP
proxy that cuts or loses what the test needs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from _data import ct_series
from _nodes import index_rows
from _proxy import Faulty
from _wait import until

from fenji.codecs.compress.bundle import read_bundle, stream_bundle
from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.gateway.store.db import Store
from fenji.routing import encoding, outbox_db
from fenji.routing import transfer_client as tc

pytestmark = pytest.mark.timeout(900)

FRAME = 16 * 1024


@pytest.fixture(scope="module")
def case_parts(pair):  # type: ignore[no-untyped-def]
    """A released CT case at the edge: its manifest's case metadata and instances, to
    make version-2 bundles of (each with a case id and bundle id of its own)."""
    edge, _ = pair
    files = ct_series()[:10]
    storescu(files, edge.dicom_port, calling="CT1")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    store = open_store(config_mod.load(edge.config, env={}))
    try:
        rel = release(store, study, destination="center", sender_node="edge", priority="stat")
        manifest = tc.manifest_of(rel.bundle_path)
        _, _, instances = read_bundle(rel.bundle_path.read_bytes())
    finally:
        store.close()
    return manifest["case"], instances


def _v2(case_parts: tuple[dict[str, Any], list[bytes]]) -> tuple[str, bytes, dict[str, Any]]:
    meta, instances = case_parts
    bid = uuid.uuid4().hex
    streamed = stream_bundle({**meta, "case_id": uuid.uuid4().hex, "bundle_id": bid},
                             instances)
    return bid, streamed.to_bytes(), streamed.manifest


def _upload(node: NodeProcess, bundle_id: str) -> sqlite3.Row | None:
    rows = index_rows(node, "SELECT * FROM uploads WHERE bundle_id = ?", (bundle_id,))
    assert len(rows) <= 1, rows  # one upload per bundle id, whatever the cuts
    return rows[0] if rows else None


class _Encoder:
    """The sending node's side of a bundle being encoded: its unsealed outbox job and
    its ``.part`` file, written as an encoder would; :meth:`seal` is the release's commit."""

    def __init__(self, root: Path, bid: str, data: bytes) -> None:
        self.store = Store(root)
        (self.store.root / "bundles").mkdir(parents=True, exist_ok=True)
        self.bid, self.data = bid, data
        self.part = encoding.part_path(self.store, bid)
        self.final = self.store.root / "bundles" / f"{bid}.fbundle"
        outbox_db.enqueue(self.store, bid, "c", "center", 0, encoding.ENCODING, time.time())
        self.written = 0

    def write(self, upto: int) -> None:
        with open(self.part, "ab") as fh:
            fh.write(self.data[self.written:upto])
        self.written = upto

    def finish_and_seal(self) -> None:
        self.write(len(self.data))
        os.rename(self.part, self.final)
        outbox_db.enqueue(self.store, self.bid, "c", "center", 0, len(self.data), time.time())


def _send_in_thread(edge: NodeProcess, target_port: int, enc: _Encoder, proxy: Any,
                    box: dict[str, Any]) -> threading.Thread:
    """send_bundle through ``proxy`` (started on the thread's loop) with the Encoding
    source, its frames in the create request (``fresh``, as the sender's first attempt;
    an upload that exists already answers 409 and the stream resumes at its offset);
    the outcome (or the error) lands in ``box``; a TransferError is retried once, as
    the outbox would."""
    cfg = config_mod.load(edge.config, env={})
    key = load_private(cfg.resolve(cfg.keys.private_key))
    peer = cfg.peer("center")
    assert peer is not None
    peer_key = public_from_config(peer.public_key, cfg.data_dir)

    async def go() -> tc.Delivered | tc.Yielded:
        async with proxy, aiohttp.ClientSession() as session:
            box["proxy_port"] = proxy.port
            for attempt in (1, 2):
                try:
                    return await tc.send_bundle(
                        session, f"http://127.0.0.1:{proxy.port}", tc.Sender("edge", key),
                        peer_key, enc.final, enc.bid, receiver="center",
                        sizer=tc.ChunkSizer(FRAME, FRAME, FRAME), manifest=None,
                        pipeline=tc.Pipeline(frame_bytes=FRAME),
                        growing=encoding.Encoding(enc.store, enc.bid), fresh=True)
                except tc.TransferError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def run() -> None:
        try:
            box["out"] = asyncio.run(go())
        except BaseException as exc:  # reported in the test's thread
            box["error"] = exc

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _outcome(th: threading.Thread, box: dict[str, Any]) -> tc.Delivered:
    th.join(300)
    assert not th.is_alive(), "the send did not end"
    if "error" in box:
        raise box["error"]
    out = box["out"]
    assert isinstance(out, tc.Delivered), out
    return out


def test_cut_while_encoding_resumes_and_nothing_is_finalized_before_the_seal(
        pair, case_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    bid, data, manifest = _v2(case_parts)
    enc = _Encoder(tmp_path / "store", bid, data)
    half = len(data) // 2
    enc.write(half)  # the encoder is half-way
    proxy = Faulty(center.http_port, cut_up=half // 3)  # cut inside what exists
    box: dict[str, Any] = {}
    th = _send_in_thread(edge, center.http_port, enc, proxy, box)
    # The center holds all that was written (the cut resumed), with no length declared,
    # still receiving: nothing finalized, nothing visible.
    row = until(lambda: (u := _upload(center, bid)) is not None and u["offset"] == half
                and u, 300, "the center to hold the half written so far")
    assert row["length"] == 0 and row["state"] == "receiving"
    assert proxy.connections >= 2  # the first connection was cut, the stream resumed
    enc.write(len(data) - 1000)  # more is encoded: it goes on the same upload
    until(lambda: (u := _upload(center, bid)) is not None and u["offset"] == len(data) - 1000,
          300, "the center to hold what the encoder added")
    row = _upload(center, bid)
    assert row is not None and row["length"] == 0 and row["state"] == "receiving"
    assert not index_rows(center, "SELECT 1 FROM cases WHERE case_id = ?",
                          (manifest["case"]["case_id"],))
    enc.finish_and_seal()  # whole and the release committed: the length is declared
    out = _outcome(th, box)
    assert out.receipt["bundle_id"] == bid and out.receipt["bundle_length"] == len(data)
    assert [i["sha256"] for i in out.receipt["instances"]] == [
        i["sha256"] for i in manifest["instances"]]
    row = _upload(center, bid)
    assert row is not None and row["state"] == "complete" and row["length"] == len(data)
    at_center = {str(r["sha256"]) for r in center.stored()}
    assert {i["sha256"] for i in manifest["instances"]} <= at_center


def test_lost_receipt_after_the_declared_end_gives_the_same_receipt_once(
        pair, case_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    bid, data, manifest = _v2(case_parts)
    enc = _Encoder(tmp_path / "store", bid, data)
    enc.write(len(data))  # all encoded, the release not yet committed
    proxy = Faulty(center.http_port, lose_answer=lambda data: b'"receipt"' in data)
    box: dict[str, Any] = {}
    th = _send_in_thread(edge, center.http_port, enc, proxy, box)
    until(lambda: (u := _upload(center, bid)) is not None and u["offset"] == len(data),
          300, "the center to hold every byte")
    row = _upload(center, bid)
    assert row is not None and row["length"] == 0 and row["state"] == "receiving"
    enc.finish_and_seal()
    out = _outcome(th, box)
    assert proxy.lost == 1  # the receipt of the finalize on the last frame was lost ...
    row = _upload(center, bid)
    assert row is not None and row["state"] == "complete"
    # ... and the one that came back is the one the center recorded, exactly once
    assert out.receipt == json.loads(row["receipt_json"]) and out.signature == row["signature"]
    received = index_rows(center, "SELECT 1 FROM audit WHERE kind = 'arrived' AND "
                                  "case_id = ?", (manifest["case"]["case_id"],))
    assert len(received) == 1
    # a later attempt (the outbox's, had the sender died) gets the same receipt again
    box2: dict[str, Any] = {}
    again = _outcome(_send_in_thread(edge, center.http_port, enc, Faulty(center.http_port),
                                     box2), box2)
    assert again.receipt == out.receipt and again.signature == out.signature
