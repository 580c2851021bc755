"""An upload to a center whose store is on S3 resumes in another center process.

The center's ``store.blob_url`` names a bucket on SeaweedFS (a real S3-compatible
server from PyPI, on 127.0.0.1); its credentials are in the config this time
(``store.blob_access_key_id`` / ``blob_secret_access_key``).  Each committed
chunk of an upload is an object in the bucket, so a center process that never
saw the first half (its predecessor was killed, its local disk is gone) takes the
upload over at the committed offset, and the case arrives exactly once.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from _data import ct_series

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import load_private, public_from_config
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.objstore import S3Server
from fenji.gateway.node import open_store
from fenji.routing.transfer_client import ChunkSizer, Delivered, Sender, manifest_of, send_bundle

pytestmark = pytest.mark.timeout(600)


def _edge_and_s3_center(tmp_path: Path, s3_server: S3Server, prefix: str,
                        extra: str = "") -> tuple[NodeProcess, NodeProcess]:
    """An edge and a center whose blobs are under ``prefix`` in the bucket, peered."""
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(
        tmp_path / "center", name="center", role="center", allow_ae=["*"], workers=1,
        extra_toml=(f'[store]\nblob_url = "{s3_server.blob_url("fenji", prefix)}"\n'
                    f'blob_access_key_id = "{s3_server.access_key_id}"\n'
                    f'blob_secret_access_key = "{s3_server.secret_access_key}"\n' + extra))
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    return edge, center


@pytest.fixture
def pair(tmp_path: Path, s3_server: S3Server):  # type: ignore[no-untyped-def]
    prefix = f"xfer-{uuid.uuid4().hex[:8]}"
    edge, center = _edge_and_s3_center(tmp_path, s3_server, prefix)
    with edge, center:
        yield edge, center, prefix


def _release(edge: NodeProcess, study: str):  # type: ignore[no-untyped-def]
    store = open_store(config_mod.load(edge.config, env={}))
    try:
        return release(store, study, destination="center", sender_node="edge")
    finally:
        store.close()


def _send(edge: NodeProcess, rel, *, should_yield=None):  # type: ignore[no-untyped-def]
    cfg = config_mod.load(edge.config, env={})
    key = load_private(cfg.resolve(cfg.keys.private_key))
    peer = cfg.peer("center")
    assert peer is not None

    async def yield_now() -> bool:
        return bool(should_yield and should_yield())

    async def go():  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession() as session:
            return await send_bundle(session, peer.url, Sender("edge", key),
                                     public_from_config(peer.public_key, cfg.data_dir),
                                     rel.bundle_path, rel.bundle_id, receiver="center",
                                     sizer=ChunkSizer(16 * 1024, 16 * 1024, 16 * 1024),
                                     manifest=manifest_of(rel.bundle_path),
                                     should_yield=yield_now)

    return asyncio.run(go())


def _keys(server: S3Server, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket="fenji", Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _send_part(edge, files: list[Path], *, frames: int) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    """Store ``files`` at the edge, release their study and send until the sender
    yields after ``frames`` frames: (the release, the partial outcome)."""
    assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
    rel = _release(edge, str(pydicom.dcmread(files[0], stop_before_pixels=True)
                             .StudyInstanceUID))
    calls = {"n": 0}

    def yield_after() -> bool:
        calls["n"] += 1
        return calls["n"] == frames + 1

    part = _send(edge, rel, should_yield=yield_after)
    assert not isinstance(part, Delivered)
    return rel, part


def test_an_upload_resumes_in_another_center_process_from_the_bucket(
        pair, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    edge, center, prefix = pair
    files = ct_series()[:10]
    rel, part = _send_part(edge, files, frames=3)
    assert 0 < part.offset < rel.bundle_bytes
    chunks = _keys(s3_server, f"{prefix}/uploads/")
    assert len(chunks) == 3 and all(k.endswith(f"-{16 * 1024:016d}") for k in chunks)
    # The center process dies; its successor runs where the first one's disk is
    # not (here: the same folder with uploads/ wiped).
    center.kill()
    shutil.rmtree(center.directory / "store" / "uploads", ignore_errors=True)
    center.start()
    rest = _send(edge, rel)
    assert isinstance(rest, Delivered)
    assert rest.bytes_sent == rel.bundle_bytes - part.offset  # resumed, not restarted
    at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
    at_center = {r["sop_instance_uid"]: r["sha256"] for r in center.stored()}
    assert at_center == at_edge and len(at_center) == len(files)
    blobs = {k.rsplit("/", 1)[1] for k in _keys(s3_server, f"{prefix}/blobs/")}
    assert set(at_center.values()) <= blobs  # the instances are in the bucket
    assert _keys(s3_server, f"{prefix}/uploads/") == []  # chunks gone after the receipt
    again = _send(edge, rel)  # exactly once: the same receipt, nothing stored twice
    assert isinstance(again, Delivered) and again.receipt == rest.receipt
    assert len(center.stored()) == len(files)
    # The operator's verbs read the bucket (credentials from the config here).
    verified = center.cli("store", "verify", check=False)
    assert verified.returncode == 0 and f"{len(files)} instances checked, 0 problem" in \
        verified.stdout
    assert "orphans_removed=0" in center.cli("store", "recover").stdout


def test_a_chunk_written_but_not_committed_does_not_corrupt_the_bundle(
        pair, s3_server: S3Server) -> None:  # type: ignore[no-untyped-def]
    """A process killed between its chunk's PUT and its offset's commit leaves an
    object the next process overwrites or steps over: the bundle still verifies."""
    edge, center, prefix = pair
    files = ct_series()[10:14]
    rel, part = _send_part(edge, files, frames=1)
    (first,) = _keys(s3_server, f"{prefix}/uploads/")
    upload = first.split("/")[-2]
    # An uncommitted chunk at the committed offset with another length, and one
    # of garbage further on: what a killed process may leave.
    c = s3_server.client()
    c.put_object(Bucket="fenji", Key=f"{prefix}/uploads/{upload}/{part.offset:016d}-"
                                     f"{1000:016d}", Body=Path(rel.bundle_path).read_bytes()[
                                         part.offset:part.offset + 1000])
    c.put_object(Bucket="fenji", Key=f"{prefix}/uploads/{upload}/{part.offset + 50_000:016d}-"
                                     f"{10:016d}", Body=b"0123456789")
    rest = _send(edge, rel)
    assert isinstance(rest, Delivered), rest
    assert len(rest.receipt["instances"]) == len(files)


def test_an_upload_given_up_leaves_no_chunk_in_the_bucket(
        tmp_path: Path, s3_server: S3Server) -> None:
    """limits.abandoned_upload_s on a bucket: the idle upload's chunk objects go, and
    the sender's next try starts it again and it arrives once."""
    from _wait import until

    prefix = f"reap-{uuid.uuid4().hex[:8]}"
    edge, center = _edge_and_s3_center(tmp_path, s3_server, prefix,
                                       "[limits]\nabandoned_upload_s = 1.0\n")
    with edge, center:
        files = ct_series()[:5]
        rel, part = _send_part(edge, files, frames=2)
        assert 0 < part.offset < rel.bundle_bytes
        until(lambda: _keys(s3_server, f"{prefix}/uploads/") == [], 120,
              "the idle upload's chunks removed from the bucket")
        store = open_store(config_mod.load(center.config, env={}))
        try:
            row = store.query_one("SELECT state FROM uploads WHERE bundle_id = ?",
                                  (rel.bundle_id,))
        finally:
            store.close()
        assert row is not None and row["state"] == "abandoned"
        center.stop()  # the resend must not race a 1-s limit on a busy machine
        center.config.write_text(center.config.read_text().replace(
            "abandoned_upload_s = 1.0", "abandoned_upload_s = 86400.0"))
        center.start()
        rest = _send(edge, rel)
        assert isinstance(rest, Delivered), rest
        assert rest.bytes_sent == rel.bundle_bytes  # started again
        assert len(center.stored()) == len(files)
        assert _keys(s3_server, f"{prefix}/uploads/") == []
