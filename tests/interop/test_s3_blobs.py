"""A center whose blobs live in a bucket: C-STORE in with DCMTK, WADO-RS out, memory flat.

The node is a real ``fenji node`` process with ``store.blob_url`` naming a bucket
on SeaweedFS (a real S3-compatible server from PyPI, on 127.0.0.1), its
credentials from the standard AWS environment variables.  DCMTK's storescu sends
a series larger than the memory bound; WADO-RS streams it back by ranged GETs
and the node's peak resident memory grows by less than the bound (it would grow
by at least one instance if an instance were read whole).
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from _data import DICOM_DIR, ct_series
from _tools import proc_vm, reset_peak_rss
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.objstore import S3Server

pytestmark = pytest.mark.timeout(900)

MIB = 1 << 20
N_INSTANCES = 4
INSTANCE_BYTES = 40 * MIB  # each larger than the bound: reading one whole would fail it
BOUND = 32 * MIB  # peak RSS growth allowed while the whole series streams out
JPEG_CINE = DICOM_DIR / "us" / "us_multiframe_ybr_jpeg_cine.dcm"




def _large_series(out: Path) -> tuple[str, str, list[Path]]:
    """N_INSTANCES native 16-bit CT images of INSTANCE_BYTES each, one series."""
    src = pydicom.dcmread(ct_series()[0])
    side = int((INSTANCE_BYTES / 2) ** 0.5)
    rng = np.random.default_rng(14)
    study, series = generate_uid(), generate_uid()
    paths = []
    for i in range(N_INSTANCES):
        ds = src.copy()
        ds.Rows = ds.Columns = side
        ds.PixelData = rng.integers(0, 4096, (side, side), dtype="<u2").tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = i + 1
        p = out / f"big_{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return study, series, paths


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
           ) -> Iterator[tuple[NodeProcess, str, str, list[Path], str]]:
    tmp = tmp_path_factory.mktemp("s3center")
    prefix = f"center-{uuid.uuid4().hex[:8]}"
    node = NodeProcess(tmp / "center", name="center", role="center", workers=1,
                       users={"dr.wang": "reader"}, env=s3_server.env(),
                       extra_toml=f'[store]\nblob_url = "{s3_server.blob_url("fenji", prefix)}"\n')
    study, series, paths = _large_series(tmp)
    with node:
        sent = storescu([*paths, JPEG_CINE], node.dicom_port)
        assert not sent.failed, sent.failed
        yield node, study, series, paths, prefix


def test_c_store_puts_every_blob_in_the_bucket_and_none_on_disk(
        center: tuple[NodeProcess, str, str, list[Path], str], s3_server: S3Server) -> None:
    node, _, _, paths, prefix = center
    listed = s3_server.client().list_objects_v2(Bucket="fenji", Prefix=f"{prefix}/blobs/")
    keys = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listed.get("Contents", [])}
    assert len(keys) == N_INSTANCES + 1
    assert not list((node.directory / "store" / "blobs").rglob("*"))  # no local copy
    sizes = sorted(keys.values())
    assert all(s > 0.99 * INSTANCE_BYTES for s in sizes[-N_INSTANCES:])


def _retrieve(node: NodeProcess, url: str) -> requests.Response:
    return requests.get(url, stream=True, timeout=300, headers={
        **node.auth("dr.wang"), "Accept": 'multipart/related; type="application/dicom"'})


def test_wado_rs_streams_a_series_larger_than_the_bound_with_flat_memory(
        center: tuple[NodeProcess, str, str, list[Path], str]) -> None:
    node, study, series, paths, _ = center
    assert node.proc is not None
    url = f"{node.http_url}/dicom-web/studies/{study}/series/{series}"
    # One retrieval first: the imports, pools and buffers a first request sets up
    # are not what grows with the study.
    with _retrieve(node, url) as r:
        assert r.status_code == 200
        for _ in r.iter_content(MIB):
            pass
    rss = reset_peak_rss(node.proc.pid)
    total = 0
    with _retrieve(node, url) as r:
        assert r.status_code == 200, r.text
        for piece in r.iter_content(MIB):
            total += len(piece)
        assert total == int(r.headers["Content-Length"])
    growth = proc_vm(node.proc.pid, "VmHWM:") - rss
    series_bytes = sum(p.stat().st_size for p in paths)
    print(f"WADO-RS series of {series_bytes / MIB:.0f} MiB from S3: node peak RSS growth "
          f"{growth / MIB:.1f} MiB (bound {BOUND / MIB:.0f} MiB)")
    assert total > series_bytes
    assert growth < BOUND, f"peak grew {growth / MIB:.0f} MiB for a {series_bytes / MIB:.0f} " \
                           "MiB series"


def test_an_instance_comes_back_byte_for_byte(
        center: tuple[NodeProcess, str, str, list[Path], str], s3_server: S3Server) -> None:
    node, study, series, paths, prefix = center
    ds = pydicom.dcmread(paths[1], stop_before_pixels=True)
    url = (f"{node.http_url}/dicom-web/studies/{study}/series/{series}/instances/"
           f"{ds.SOPInstanceUID}")
    with _retrieve(node, url) as r:
        assert r.status_code == 200
        boundary = re.search(r"boundary=([^;]+)", r.headers["Content-Type"]).group(1)  # type: ignore[union-attr]
        body = r.content
    part = body.split(f"--{boundary}".encode())[1]
    payload = part.split(b"\r\n\r\n", 1)[1][:-2]  # less the CRLF before the closing boundary
    # The stored Part-10 bytes (their File Meta names the calling AE): the blob
    # under its own name in the bucket, with the sent data set inside.
    sha = hashlib.sha256(payload).hexdigest()
    head = s3_server.client().head_object(Bucket="fenji",
                                          Key=f"{prefix}/blobs/{sha[:2]}/{sha[2:4]}/{sha}")
    assert head["ContentLength"] == len(payload)
    got = pydicom.dcmread(io.BytesIO(payload))
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PixelData == pydicom.dcmread(paths[1]).PixelData


def test_frames_and_metadata_of_a_cine_in_the_bucket(
        center: tuple[NodeProcess, str, str, list[Path], str]) -> None:
    node = center[0]
    ds = pydicom.dcmread(JPEG_CINE)
    base = (f"{node.http_url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
            f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    r = requests.get(f"{base}/frames/3,17", timeout=60, headers={
        **node.auth("dr.wang"), "Accept": 'multipart/related; type="image/jpeg"'})
    assert r.status_code == 200, r.text
    boundary = re.search(r"boundary=([^;]+)", r.headers["Content-Type"]).group(1)  # type: ignore[union-attr]
    parts = [p.split(b"\r\n\r\n", 1)[1][:-2]
             for p in r.content.split(f"--{boundary}".encode())[1:-1]]
    assert parts == [frames[2], frames[16]]
    r = requests.get(f"{base}/metadata", timeout=60, headers={
        **node.auth("dr.wang"), "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    (meta,) = r.json()
    assert meta["00280008"]["Value"] == [int(ds.NumberOfFrames)]
    assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    # Decoded frames (pydicom reading the instance through ranged GETs).
    r = requests.get(f"{base}/frames/5", timeout=60, headers={
        **node.auth("dr.wang"), "Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200, r.text
    arr = pydicom.pixels.pixel_array(io.BytesIO(JPEG_CINE.read_bytes()), index=4, raw=True)
    assert arr.astype(arr.dtype.newbyteorder("<")).tobytes() in r.content
