"""Node to node: a case released at an edge arrives at a center, verified.

Real nodes (fenji node processes) on loopback; the client side runs in the test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pydicom
import pytest
from _data import ct_series, good_files
from _nodes import edge_and_center, send_to_center
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fenji.codecs.compress.bundle import make_preview, write_bundle
from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import CaseError, release
from fenji.gateway.keys import load_private
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.node import open_store
from fenji.routing.transfer_client import (
    ChunkSizer,
    Delivered,
    Sender,
    TransferError,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    edge, center = edge_and_center(tmp_path, users={"tech": "technician"})
    with edge, center:
        yield edge, center


def _release(edge: NodeProcess, study: str, **kw):  # type: ignore[no-untyped-def]
    cfg = config_mod.load(edge.config, env={})
    store = open_store(cfg)
    try:
        return release(store, study, destination="center", sender_node="edge", **kw)
    finally:
        store.close()


def _send(edge: NodeProcess, center: NodeProcess, rel, *, chunk: int = 64 * 1024,  # type: ignore[no-untyped-def]
          key: Ed25519PrivateKey | None = None, name: str = "edge", should_yield=None):
    return send_to_center(edge, rel, sizer=ChunkSizer(chunk, 16 * 1024, 1 << 20), key=key,
                          name=name, should_yield=should_yield)


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_case_travels_edge_to_center_exactly_once(pair) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = ct_series()
    assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
    rel = _release(edge, _study_of(files[0]), priority="stat", clinical_question="bleed?")
    assert rel.instances == len(files) and rel.bundle_bytes < rel.raw_bytes
    out = _send(edge, center, rel)
    assert isinstance(out, Delivered)
    assert out.receipt["receiver"] == "center" and len(out.receipt["instances"]) == len(files)
    at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
    at_center = {r["sop_instance_uid"]: r["sha256"] for r in center.stored()}
    assert at_center == at_edge  # every instance, byte for byte
    # The same bundle again (a lost finalize response, a retry after a crash):
    again = _send(edge, center, rel)
    assert isinstance(again, Delivered) and again.bytes_sent == 0
    assert again.receipt == out.receipt
    assert len(center.stored()) == len(files)
    # Instances arriving after release travel as an addendum.
    with pytest.raises(CaseError, match="nothing new"):
        _release(edge, _study_of(files[0]))


def test_addendum_for_late_instances(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = ct_series()
    storescu(files[:20], edge.dicom_port, calling="CT1")
    first = _release(edge, _study_of(files[0]))
    storescu(files[20:], edge.dicom_port, calling="CT1")
    late = _release(edge, _study_of(files[0]))
    assert (first.kind, late.kind) == ("case", "addendum")
    assert late.parent_case_id == first.case_id and late.instances == len(files) - 20
    for rel in (first, late):
        assert isinstance(_send(edge, center, rel), Delivered)
    assert len(center.stored()) == len(files)


def test_resume_after_yield_and_unknown_node_refused(pair) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = ct_series()[:10]
    storescu(files, edge.dicom_port, calling="CT1")
    rel = _release(edge, _study_of(files[0]))
    calls = {"n": 0}

    def yield_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    part = _send(edge, center, rel, chunk=16 * 1024, should_yield=yield_after_two)
    assert not isinstance(part, Delivered)
    assert 0 < part.offset == part.bytes_sent < rel.bundle_bytes  # two chunks, then yielded
    rest = _send(edge, center, rel, chunk=16 * 1024)
    assert isinstance(rest, Delivered)
    assert rest.bytes_sent == rel.bundle_bytes - part.offset  # resumed, not restarted
    with pytest.raises(TransferError, match="unknown_node"):
        _send(edge, center, rel, key=Ed25519PrivateKey.generate(), name="stranger")
    with pytest.raises(TransferError, match="bad_signature"):
        _send(edge, center, rel, key=Ed25519PrivateKey.generate())


def test_wrong_offset_and_bad_checksum_change_nothing(pair) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = good_files()[:3]
    storescu([ct_series()[0]], edge.dicom_port, calling="CT1")
    rel = _release(edge, _study_of(ct_series()[0]))
    cfg = config_mod.load(edge.config, env={})
    sender = Sender("edge", load_private(cfg.resolve(cfg.keys.private_key)))
    base = center.http_url
    assert files

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            h = sender.headers("POST", "/transfer/uploads", receiver="center", extra={
                "Fenji-Bundle-Id": rel.bundle_id, "Upload-Length": str(rel.bundle_bytes)})
            async with s.post(base + "/transfer/uploads", headers=h) as r:
                assert r.status == 201
                loc = r.headers["Location"]
            chunk = rel.bundle_path.read_bytes()[:1000]
            good = "sha256 " + base64.b64encode(hashlib.sha256(chunk).digest()).decode()
            for offset, checksum, want in ((5, good, 409), (0, "sha256 AAAA", 460),
                                           (0, good, 204), (0, good, 409)):
                h = sender.headers("PATCH", loc, {"Upload-Offset": str(offset),
                                                  "Upload-Checksum": checksum},
                                   receiver="center")
                async with s.patch(base + loc, data=chunk, headers=h) as r:
                    assert r.status == want, (offset, await r.text())
                    if want != 204:
                        body = json.loads(await r.text())
                        assert body["status"] == want and body["message"]
            h = sender.headers("HEAD", loc, {}, receiver="center")
            async with s.head(base + loc, headers=h) as r:
                assert r.headers["Upload-Offset"] == "1000"
                assert r.headers["Cache-Control"] == "no-store"
            h = sender.headers("POST", loc + "/finalize", {}, receiver="center")
            async with s.post(base + loc + "/finalize", headers=h) as r:
                assert r.status == 409  # incomplete

    asyncio.run(go())
    assert center.stored() == []


def test_case_api_over_http(pair) -> None:  # type: ignore[no-untyped-def]
    edge, _ = pair
    storescu(ct_series()[:3], edge.dicom_port, calling="CT1")
    study = _study_of(ct_series()[0])

    async def go() -> None:
        async with aiohttp.ClientSession() as anon:
            async with anon.post(edge.http_url + "/api/cases",
                                 json={"study_instance_uid": study}) as r:
                assert r.status == 401  # anonymous: nothing released
        async with aiohttp.ClientSession(headers=edge.auth("tech")) as s:
            async with s.post(edge.http_url + "/api/cases", json={
                    "study_instance_uid": study, "priority": "urgent"}) as r:
                assert r.status == 201, await r.text()
                case = await r.json()
            async with s.get(edge.http_url + f"/api/cases/{case['case_id']}") as r:
                got = await r.json()
                assert got["priority"] == "urgent" and len(got["instances"]) == 3
                assert got["released_by"] == "api"
            async with s.post(edge.http_url + "/api/cases", json={
                    "study_instance_uid": study, "priority": "now!"}) as r:
                assert r.status == 400 and "priority" in (await r.json())["message"]
            async with s.post(edge.http_url + "/api/cases", json={
                    "study_instance_uid": "1.2.3", "destination": "mars"}) as r:
                assert r.status == 400

    asyncio.run(go())


# -- a receiving node trusts what it verified, not what it was told (issue 17) -----
@dataclass
class _Rel:
    bundle_id: str
    bundle_path: Path
    bundle_bytes: int


def _bundle(tmp: Path, instances: list[bytes], *, sender: str = "edge",
            with_preview: bool = True) -> _Rel:
    bid = uuid.uuid4().hex
    ds = pydicom.dcmread(io.BytesIO(instances[0]), stop_before_pixels=True)
    case = {"case_id": uuid.uuid4().hex, "bundle_id": bid, "bundle_kind": "full",
            "study_instance_uid": str(ds.StudyInstanceUID), "destination": "center",
            "sender": sender, "priority": "stat", "service": "imaging", "kind": "case"}
    previews = [make_preview(instances[0])] if with_preview else []
    path = tmp / f"{bid}.fbundle"
    with open(path, "wb") as fh:
        for chunk in write_bundle(case, instances, previews):
            fh.write(chunk)
    return _Rel(bid, path, path.stat().st_size)


def _with_bad_uid(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = "1.2.3.x"  # not a UID (PS3.5 9.1): the validator refuses it
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.x"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _center_store(center: NodeProcess):  # type: ignore[no-untyped-def]
    return open_store(config_mod.load(center.config, env={}))


def test_refused_bundle_leaves_nothing_visible(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = [p.read_bytes() for p in ct_series()[:3]]
    rel = _bundle(tmp_path, [files[0], files[1], _with_bad_uid(files[2])])
    with pytest.raises(TransferError, match="bundle_rejected"):
        _send(edge, center, rel)
    assert center.stored() == []  # the two valid instances before the bad one: not visible
    store = _center_store(center)
    try:
        assert not list((store.root / "previews").glob("*/*.prev"))
        q = store.quarantined()
        assert len(q) == 1 and q[0]["reason"].startswith("bundle:")
        assert q[0]["calling_ae"] == "node:edge" and "not a valid UID" in q[0]["reason"]
        assert q[0]["size"] == rel.bundle_bytes
        # The staged blobs were never indexed: recovery removes them.
        assert store.recover()["orphans_removed"] == 2
    finally:
        store.close()
    # Asked again, the refusal stands (its bytes are in quarantine, not re-read).
    with pytest.raises(TransferError, match="bundle_rejected"):
        _send(edge, center, rel)


def test_sender_of_record_is_the_authenticated_node(pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    edge, center = pair
    files = [p.read_bytes() for p in ct_series()[:2]]
    rel = _bundle(tmp_path, files, sender="other-county-hospital", with_preview=False)
    assert isinstance(_send(edge, center, rel), Delivered)
    assert len(center.stored()) == 2
    store = _center_store(center)
    try:
        arrived = store.query("SELECT actor, detail FROM audit WHERE kind = 'arrived'")
        assert len(arrived) == 1
        assert arrived[0]["actor"] == "edge"  # who signed the upload, not the manifest's claim
        assert "other-county-hospital" in arrived[0]["detail"]  # kept, as a claim
        senders = {r["calling_ae"] for r in store.query("SELECT calling_ae FROM instances")}
        assert senders == {"node:edge"}
    finally:
        store.close()
