"""The fast paths keep the protocol's guarantees: a small bundle whole in one request
(the same receipt after a lost answer), a pipelined stream of frames that resumes
after a cut at any point, and a stream that yields to a STAT job.

Real nodes on loopback; between them, where a fault is wanted, a tiny TCP proxy
in the test that cuts the first connection after a given number of bytes up, or
drops the first answer (the request reaches the receiver, its answer never comes
back)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from _data import DICOM_DIR, ct_series
from _proxy import Faulty

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.routing import upload
from fenji.routing.transfer_client import (
    ChunkSizer,
    Delivered,
    Pipeline,
    Sender,
    TransferError,
    Yielded,
    manifest_of,
    send_bundle,
)

pytestmark = pytest.mark.timeout(900)

FRAME = 16 * 1024


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture(scope="module")
def bundles(pair):  # type: ignore[no-untyped-def]
    """A CT bundle (several frames) and an ECG bundle (small: one request)."""
    edge, _ = pair
    ct = ct_series()[:12]
    ecg = [DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"]
    storescu(ct + ecg, edge.dicom_port, calling="CT1")
    store = open_store(config_mod.load(edge.config, env={}))
    try:
        return {name: release(store, _study(files[0]), destination="center",
                              sender_node="edge", priority="stat")
                for name, files in (("ct", ct), ("ecg", ecg))}
    finally:
        store.close()


async def _send(edge: NodeProcess, port: int, rel: Any, pipeline: Pipeline, *,
                bundle_id: str | None = None, should_yield: Any = None) -> Delivered | Yielded:
    cfg = config_mod.load(edge.config, env={})
    key = load_private(cfg.resolve(cfg.keys.private_key))
    peer = cfg.peer("center")
    assert peer is not None
    async with aiohttp.ClientSession() as session:
        return await send_bundle(session, f"http://127.0.0.1:{port}", Sender("edge", key),
                                 public_from_config(peer.public_key, cfg.data_dir),
                                 rel.bundle_path, bundle_id or rel.bundle_id,
                                 receiver="center", sizer=ChunkSizer(FRAME, FRAME, FRAME),
                                 manifest=manifest_of(rel.bundle_path), should_yield=should_yield,
                                 pipeline=pipeline)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _center_has(center: NodeProcess, edge: NodeProcess, rel: Any) -> None:
    at_center = {r["sop_instance_uid"]: r["sha256"] for r in center.stored()}
    manifest = manifest_of(rel.bundle_path)
    assert {i["sha256"] for i in manifest["instances"]} <= set(at_center.values())
    assert len(at_center) == len(set(at_center))


def test_small_bundle_in_one_request_same_receipt_after_a_lost_answer(pair, bundles) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    rel = bundles["ecg"]
    whole = Pipeline(single_request_bytes=rel.bundle_bytes, frame_bytes=FRAME)

    async def go() -> tuple[Any, Any, int]:
        async with Faulty(center.http_port, drop_answer=True) as proxy:
            with pytest.raises(TransferError):  # the answer is lost on the way back
                await _send(edge, proxy.port, rel, whole)
            n_before = len(center.stored())
            again = await _send(edge, proxy.port, rel, whole)  # the resend
            third = await _send(edge, center.http_port, rel, whole)
            return again, third, n_before

    again, third, n_before = _run(go())
    assert isinstance(again, Delivered) and isinstance(third, Delivered)
    assert again.receipt == third.receipt and again.signature == third.signature
    assert len(center.stored()) == n_before  # stored once, by the request whose answer was lost
    assert again.receipt["bundle_sha256"] == hashlib.sha256(rel.bundle_path.read_bytes()
                                                            ).hexdigest()


def test_whole_request_checksum_mismatch_changes_nothing(pair, bundles) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    rel = bundles["ecg"]
    cfg = config_mod.load(edge.config, env={})
    sender = Sender("edge", load_private(cfg.resolve(cfg.keys.private_key)))
    data = rel.bundle_path.read_bytes()
    path = "/transfer/uploads"
    h = sender.headers("POST", path, {"Fenji-Bundle-Id": "whole-bad", "Upload-Length":
                                      str(len(data)), "Upload-Checksum":
                                      upload.checksum_header(data + b"x")}, receiver="center")

    async def go() -> tuple[int, int]:
        async with aiohttp.ClientSession() as s, \
                s.post(f"http://127.0.0.1:{center.http_port}{path}", data=data,
                       headers=h) as r:
            return r.status, int(r.headers.get("Upload-Offset", "-1"))

    assert _run(go()) == (upload.CHECKSUM_MISMATCH, 0)


def _cut_points(total: int) -> list[int]:
    """Bytes up before the cut: in the create, around the frame boundaries at the
    start, middle and end of the stream (the frames between behave alike), and in
    the finalize (request heads are ~700 bytes)."""
    head = 700
    points = {0, 100, head - 50}
    n_frames = -(-total // FRAME)
    for k in sorted({0, 1, 2, 3, n_frames // 2, n_frames - 2, n_frames - 1, n_frames}):
        at = 2 * head + k * (FRAME + upload.FRAME_HEADER_BYTES)
        points |= {at - 10, at + 10, at + upload.FRAME_HEADER_BYTES + 100}
    end = 2 * head + total + n_frames * upload.FRAME_HEADER_BYTES
    points |= {end + 50, end + head - 100, end + head + 300}
    return sorted(p for p in points if p >= 0)


def test_stream_resumes_after_a_cut_at_every_point(pair, bundles) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    rel = bundles["ct"]
    assert rel.bundle_bytes > 4 * FRAME
    for i, cut in enumerate(_cut_points(rel.bundle_bytes)):
        bid = f"{rel.bundle_id[:40]}-cut{i}"

        async def go(cut: int = cut, bid: str = bid) -> Any:
            async with Faulty(center.http_port, cut_up=cut) as proxy:
                try:  # resumed within the call (a cut after progress), or ...
                    return await _send(edge, proxy.port, rel, Pipeline(frame_bytes=FRAME),
                                       bundle_id=bid)
                except TransferError:  # ... by the next attempt, as the outbox would
                    return await _send(edge, proxy.port, rel, Pipeline(frame_bytes=FRAME),
                                       bundle_id=bid)

        out = _run(go())
        assert isinstance(out, Delivered), cut
        assert out.receipt["bundle_id"] == bid
        # Resumed at the receiver's offset, not looping: on loopback what sat in socket
        # buffers at the cut (up to all of it) and a stream that raced the cut
        # stream's last commits (a 409, then a resync) are sent again.
        assert out.bytes_sent < 3 * rel.bundle_bytes, (cut, out.bytes_sent)
    _center_has(center, edge, rel)


def test_stream_yields_to_stat_and_resumes_where_it_stopped(pair, bundles) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    rel = bundles["ct"]
    asked = {"n": 0}

    async def after_three() -> bool:
        asked["n"] += 1
        return asked["n"] == 5  # one look before the stream, then one per frame

    async def go() -> tuple[Any, Any]:
        pipe = Pipeline(frame_bytes=FRAME)
        part = await _send(edge, center.http_port, rel, pipe, bundle_id="yield-1",
                           should_yield=after_three)
        rest = await _send(edge, center.http_port, rel, pipe, bundle_id="yield-1")
        return part, rest

    part, rest = _run(go())
    assert isinstance(part, Yielded) and part.offset == 3 * FRAME == part.bytes_sent
    assert isinstance(rest, Delivered) and rest.bytes_sent == rel.bundle_bytes - 3 * FRAME


async def _frames_body(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def test_a_bad_frame_changes_nothing_after_it(pair, bundles) -> None:  # type: ignore[no-untyped-def]
    """A frame whose checksum does not match is refused (460) and the offset stays at
    the last good frame; a frame at the wrong offset gets 409."""
    edge, center = pair
    rel = bundles["ct"]
    data = rel.bundle_path.read_bytes()
    cfg = config_mod.load(edge.config, env={})
    sender = Sender("edge", load_private(cfg.resolve(cfg.keys.private_key)))
    base = f"http://127.0.0.1:{center.http_port}"

    async def go() -> list[tuple[int, str]]:
        out = []
        async with aiohttp.ClientSession() as s:
            h = sender.headers("POST", "/transfer/uploads", {
                "Fenji-Bundle-Id": "frames-bad", "Upload-Length": str(len(data))},
                receiver="center")
            async with s.post(base + "/transfer/uploads", headers=h) as r:
                loc = r.headers["Location"]
            good = upload.frame_header(0, data[:FRAME]) + data[:FRAME]
            bad = upload.frame_header(FRAME, data[FRAME:2 * FRAME])[:-1] + b"\0" + \
                data[FRAME:2 * FRAME]
            wrong = upload.frame_header(5 * FRAME, data[:FRAME]) + data[:FRAME]
            for body in ([good, bad], [wrong]):
                h = sender.headers("PATCH", loc, {"Upload-Offset": "0" if body[0] is good
                                                  else str(FRAME),
                                                  "Content-Type": upload.FRAMES_TYPE},
                                   receiver="center")
                async with s.patch(base + loc, data=_frames_body(body), headers=h) as r:
                    out.append((r.status, r.headers.get("Upload-Offset", "")))
        return out

    assert _run(go()) == [(upload.CHECKSUM_MISMATCH, str(FRAME)), (409, str(FRAME))]
