"""DICOMweb on a running center against real clients: dicomweb-client and Orthanc.

One center for the module: filled with DCMTK storescu, read by dicomweb-client
(QIDO-RS, WADO-RS, STOW-RS) and by Orthanc's DICOMweb plugin as a client.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from _data import DICOM_DIR, ct_series
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, OrthancProcess

pytestmark = pytest.mark.timeout(300)

OTHER = DICOM_DIR / "other"
IMPLICIT = OTHER / "ct_implicit_vr_le.dcm"  # served as Explicit VR LE by default
JPEGLS = OTHER / "ct_jpegls_lossless.dcm"  # decoded by python-gdcm
JPEG_CINE = DICOM_DIR / "us" / "us_multiframe_ybr_jpeg_cine.dcm"  # 30 JPEG frames
EXTRA = [IMPLICIT, JPEGLS, JPEG_CINE]


def _ds(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def center(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("dicomweb")
    node = NodeProcess(tmp / "center", name="center", role="center", allow_ae=["*"],
                       workers=1, users={"dr.wang": "reader", "tech": "technician"})
    node.enable_web()
    with node:
        sent = storescu([*ct_series(), *EXTRA], node.dicom_port)
        assert not sent.failed, sent.failed
        yield node


def _client(node: NodeProcess, user: str = "dr.wang") -> DICOMwebClient:
    return DICOMwebClient(node.web_url + "/dicom-web", headers=node.auth(user))


def _ct() -> tuple[str, str]:
    d = _ds(ct_series()[0])
    return str(d.StudyInstanceUID), str(d.SeriesInstanceUID)


def _opened(node: NodeProcess) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{node.directory / 'store' / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT actor, role, object, detail FROM audit WHERE kind = 'opened' "
                           "ORDER BY seq").fetchall()
    finally:
        con.close()
    return [{"actor": a, "role": r, "object": o, "detail": json.loads(d)} for a, r, o, d in rows]


# -- access -------------------------------------------------------------------
def test_anonymous_401_technician_403_bad_accept_406_unknown_404(center: NodeProcess) -> None:
    study, _ = _ct()
    url = f"{center.web_url}/dicom-web/studies/{study}"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(center.web_url + "/dicom-web/studies", timeout=30).status_code == 401
    r = requests.get(url, headers=center.auth("tech"), timeout=30)
    assert r.status_code == 403 and "technician" in r.json()["message"]
    r = requests.get(url, headers={**center.auth("dr.wang"), "Accept": "image/png"}, timeout=30)
    assert r.status_code == 406
    r = requests.get(url + "/metadata", headers={**center.auth("dr.wang"),
                                                 "Accept": "application/dicom"}, timeout=30)
    assert r.status_code == 406
    r = requests.get(f"{center.web_url}/dicom-web/studies/1.2.3.4",
                     headers=center.auth("dr.wang"), timeout=30)
    assert r.status_code == 404 and r.json()["status"] == 404


# -- WADO-RS ------------------------------------------------------------------
def test_retrieve_study_series_instance_equal_to_what_storescu_sent(center: NodeProcess) -> None:
    client = _client(center)
    study, series = _ct()
    # The series holds the implicit VR and JPEG-LS variants too.
    as_stored = (("application/dicom", "*"),)
    sent = {str(d.SOPInstanceUID): d for d in map(_ds, [*ct_series(), IMPLICIT, JPEGLS])}
    got = client.retrieve_series(study, series, media_types=as_stored)
    assert {str(d.SOPInstanceUID) for d in got} == set(sent)
    for d in got:
        assert d.PixelData == sent[str(d.SOPInstanceUID)].PixelData
        assert d.PatientName == "HEAD"
    whole = client.retrieve_study(study, media_types=as_stored)
    assert {str(d.SOPInstanceUID) for d in whole} == set(sent)
    # Explicit VR LE (the default): every instance, the JPEG-LS one decoded.
    plain = client.retrieve_series(study, series)
    assert {str(d.SOPInstanceUID) for d in plain} == set(sent)
    assert {str(d.file_meta.TransferSyntaxUID) for d in plain} == {"1.2.840.10008.1.2.1"}
    one = ct_series()[3]
    d1 = _ds(one)
    inst = client.retrieve_instance(study, series, str(d1.SOPInstanceUID))
    assert inst.PixelData == d1.PixelData and inst.SOPInstanceUID == d1.SOPInstanceUID


def _multipart_parts(resp: requests.Response) -> list[tuple[str, bytes]]:
    ctype = resp.headers["Content-Type"]
    boundary = ctype.split("boundary=")[1].split(";")[0].strip('"').encode()
    out = []
    for chunk in resp.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        ptype = [h.split(b":", 1)[1].strip().decode() for h in head.split(b"\r\n")
                 if h.lower().startswith(b"content-type")][0]
        out.append((ptype, body[:-2]))  # the part's trailing CRLF
    return out


def test_transfer_syntax_negotiation(center: NodeProcess) -> None:
    d = _ds(IMPLICIT)
    base = (f"{center.web_url}/dicom-web/studies/{d.StudyInstanceUID}/series/"
            f"{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}")
    h = center.auth("dr.wang")
    # transfer-syntax=*: the stored bytes exactly (storescu sent them as implicit VR).
    r = requests.get(base, headers={**h, "Accept": 'multipart/related; type="application/dicom";'
                                                  " transfer-syntax=*"}, timeout=30)
    assert r.status_code == 200 and "Warning" not in r.headers
    [(ptype, body)] = _multipart_parts(r)
    assert "transfer-syntax=1.2.840.10008.1.2" in ptype
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    # No transfer-syntax: Explicit VR Little Endian (PS3.18 8.7.3.5), transcoded, said so.
    r = requests.get(base, headers={**h, "Accept": 'multipart/related; type="application/dicom"'},
                     timeout=30)
    assert r.status_code == 200 and "transcoded" in r.headers["Warning"]
    [(ptype, body)] = _multipart_parts(r)
    assert "transfer-syntax=1.2.840.10008.1.2.1" in ptype
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert out.PixelData == d.PixelData
    # JPEG-LS (python-gdcm decodes it for pydicom): the default is the instance
    # decoded, pixel for pixel what imagecodecs (another JPEG-LS decoder) makes of
    # the stored frame; * is the instance as stored.
    import imagecodecs
    from pydicom.encaps import generate_frames

    j = _ds(JPEGLS)
    url = (f"{center.web_url}/dicom-web/studies/{j.StudyInstanceUID}/series/"
           f"{j.SeriesInstanceUID}/instances/{j.SOPInstanceUID}")
    r = requests.get(url, headers={**h, "Accept": 'multipart/related; type="application/dicom"'},
                     timeout=30)
    assert r.status_code == 200, r.text
    out = pydicom.dcmread(io.BytesIO(_multipart_parts(r)[0][1]))
    assert out.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    # the same instance, not a new one (pydicom's decompress() makes a new UID by default)
    assert out.SOPInstanceUID == j.SOPInstanceUID == out.file_meta.MediaStorageSOPInstanceUID
    want = imagecodecs.jpegls_decode(next(generate_frames(j.PixelData, number_of_frames=1)))
    assert np.array_equal(out.pixel_array, want)
    r = requests.get(url, headers={**h, "Accept": 'multipart/related; type="application/dicom";'
                                                  " transfer-syntax=*"}, timeout=30)
    assert r.status_code == 200
    assert _multipart_parts(r)[0][1] == JPEGLS.read_bytes() or pydicom.dcmread(io.BytesIO(
        _multipart_parts(r)[0][1])).PixelData == j.PixelData


def test_metadata_frames_bulkdata(center: NodeProcess) -> None:
    client = _client(center)
    study, series = _ct()
    d = _ds(ct_series()[0])
    meta = client.retrieve_instance_metadata(study, series, str(d.SOPInstanceUID))
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "HEAD"}]}
    assert meta["00080018"]["Value"] == [str(d.SOPInstanceUID)]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/7FE00010")
    series_meta = client.retrieve_series_metadata(study, series)
    assert len(series_meta) == len(ct_series()) + 2  # + the implicit VR and JPEG-LS variants
    # Frames: uncompressed CT as octet-stream equals its Pixel Data.
    [frame] = client.retrieve_instance_frames(study, series, str(d.SOPInstanceUID), [1])
    assert frame == d.PixelData
    r = requests.get(uri, headers={**center.auth("dr.wang"), "Accept": "multipart/related; "
                                   'type="application/octet-stream"'}, timeout=30)
    [(ptype, bulk)] = _multipart_parts(r)
    assert ptype.startswith("application/octet-stream") and bulk == d.PixelData
    # JPEG cine: frames as stored (image/jpeg) when accepted, decoded when octet-stream is.
    c = _ds(JPEG_CINE)
    args = (str(c.StudyInstanceUID), str(c.SeriesInstanceUID), str(c.SOPInstanceUID))
    jpegs = client.retrieve_instance_frames(*args, [1, 30], media_types=("image/jpeg",))
    assert [f[:2] for f in jpegs] == [b"\xff\xd8", b"\xff\xd8"]
    raw = client.retrieve_instance_frames(*args, [2], media_types=("application/octet-stream",))
    assert len(raw[0]) == int(c.Rows) * int(c.Columns) * 3
    r = requests.get(f"{center.web_url}/dicom-web/studies/{args[0]}/series/{args[1]}/instances/"
                     f"{args[2]}/frames/31", headers=center.auth("dr.wang"), timeout=30)
    assert r.status_code == 404


# -- QIDO-RS ------------------------------------------------------------------
def test_qido_search(center: NodeProcess) -> None:
    client = _client(center)
    study, series = _ct()
    found = client.search_for_studies(search_filters={"PatientName": "HE*"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "HEAD"}]
    assert client.search_for_studies(search_filters={"PatientName": "NOBODY*"}) == []
    by_tag = requests.get(f"{center.web_url}/dicom-web/studies?00100010=HEA*",
                          headers=center.auth("dr.wang"), timeout=30)
    assert by_tag.status_code == 200
    assert by_tag.headers["Content-Type"].startswith("application/dicom+json")
    assert [s["0020000D"]["Value"][0] for s in by_tag.json()] == [study]
    fuzzy = client.search_for_studies(search_filters={"PatientName": "head"}, fuzzymatching=True)
    assert study in [s["0020000D"]["Value"][0] for s in fuzzy]
    everything = client.search_for_studies()
    assert len(everything) >= 2
    page = client.search_for_studies(limit=1, offset=1)
    assert len(page) == 1 and page[0] == everything[1]
    inc = client.search_for_studies(search_filters={"StudyInstanceUID": study},
                                    fields=["StudyDescription", "00080061"])
    assert "00080061" in inc[0]
    series_found = client.search_for_series(study)
    assert series in [s["0020000E"]["Value"][0] for s in series_found]
    insts = client.search_for_instances(study, series)
    assert len(insts) == len(ct_series()) + 2
    assert all(i["00081190"]["Value"][0].endswith(i["00080018"]["Value"][0]) for i in insts)
    r = requests.get(f"{center.web_url}/dicom-web/studies?NotAKeyword=1",
                     headers=center.auth("dr.wang"), timeout=30)
    assert r.status_code == 400 and "NotAKeyword" in r.json()["message"]


# -- STOW-RS ------------------------------------------------------------------
def test_stow_then_qido_and_malformed_part_refused(center: NodeProcess) -> None:
    client = _client(center, "tech")
    ds = _ds(ct_series()[5])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "STOW^TEST"
    out = client.store_instances([ds])
    assert out.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "FailedSOPSequence" not in out
    reader = _client(center)
    got = reader.retrieve_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                   str(ds.SOPInstanceUID))
    assert got.PixelData == ds.PixelData
    # A good and a malformed part: 202, the bad one in FailedSOPSequence and quarantined.
    good = _ds(ct_series()[6])
    good.SOPInstanceUID = generate_uid()
    good.file_meta.MediaStorageSOPInstanceUID = good.SOPInstanceUID
    buf = io.BytesIO()
    good.save_as(buf, enforce_file_format=True)
    bad = (DICOM_DIR / "malformed" / "length-beyond-eof.dcm").read_bytes()
    boundary = "fenjiTEST"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in (buf.getvalue(), bad)) + f"--{boundary}--\r\n".encode()
    r = requests.post(f"{center.web_url}/dicom-web/studies", data=body, timeout=60,
                      headers={**center.auth("tech"), "Content-Type":
                               f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}"})
    assert r.status_code == 202, r.text
    res = r.json()
    assert res["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert res["00081199"]["Value"][0]["00081155"]["Value"] == [str(good.SOPInstanceUID)]
    con = sqlite3.connect(f"file:{center.directory / 'store' / 'index.sqlite'}?mode=ro",
                          uri=True)
    try:
        q = con.execute("SELECT calling_ae, reason FROM quarantine").fetchall()
    finally:
        con.close()
    assert ("viewer:tech" in [c for c, _ in q]) and any("declares" in why for _, why in q)
    # Only bad parts: 409.
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + bad
            + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{center.web_url}/dicom-web/studies", data=body, timeout=60,
                      headers={**center.auth("tech"), "Content-Type":
                               f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}"})
    assert r.status_code == 409 and "00081198" in r.json()
    # The stored instance is found by QIDO-RS like any other.
    found = reader.search_for_studies(search_filters={"PatientName": "STOW*"})
    assert [s["0020000D"]["Value"][0] for s in found] == [str(ds.StudyInstanceUID)]


# -- Orthanc as a DICOMweb client -----------------------------------------------
def _orthanc_post(orthanc: OrthancProcess, path: str, body: Any) -> Any:
    req = urllib.request.Request(orthanc.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
        return json.loads(r.read() or b"null")


def test_orthanc_queries_and_retrieves_through_its_dicomweb_plugin(
        center: NodeProcess, tmp_path: Path) -> None:
    study, _ = _ct()
    servers = {"fenji": {"Url": center.web_url + "/dicom-web/", "Username": "orthanc",
                         "Password": center.tokens["dr.wang"]}}
    with OrthancProcess(tmp_path / "orthanc", extra={"DicomWeb": {"Servers": servers}}) as o:
        _orthanc_post(o, "/dicom-web/servers/fenji/retrieve",
                      {"Resources": [{"Study": study}]})
        deadline = time.monotonic() + 60
        # Everything fenji holds in that study (earlier tests may have stored more).
        want = sum(1 for r in center.stored() if r["study_instance_uid"] == study)
        n = 0
        while time.monotonic() < deadline:
            studies = o.get("/studies")
            if studies:
                n = len(o.get(f"/studies/{studies[0]}/instances"))  # type: ignore[index]
                if n == want:
                    break
            time.sleep(0.2)
        assert n == want
        tags = o.get(f"/studies/{o.get('/studies')[0]}")  # type: ignore[index]
        assert tags["MainDicomTags"]["StudyInstanceUID"] == study  # type: ignore[index]
        found = _orthanc_post(o, "/dicom-web/servers/fenji/qido",
                              {"Uri": "/studies", "Arguments": {"PatientName": "HEAD"}})
        # Orthanc hands the answer over in its "simplified" form (Value a string).
        uids = [s["0020000D"]["Value"] for s in found]
        assert [u[0] if isinstance(u, list) else u for u in uids] == [study], found


def test_ledger_has_opened_events_with_user_names(center: NodeProcess) -> None:
    study, series = _ct()
    before = len(_opened(center))
    _client(center).retrieve_series_metadata(study, series)
    events = _opened(center)
    assert len(events) == before + 1
    last = events[-1]
    assert last["actor"] == "dr.wang" and last["role"] == "reader"
    assert last["object"] == study and last["detail"]["via"] == "wado-rs"
    assert "/metadata" in last["detail"]["path"]
    assert {"qido-rs", "wado-rs"} <= {e["detail"]["via"] for e in events}


def test_a_big_endian_instance_is_served_little_endian_whole(tmp_path: Path) -> None:
    """Explicit VR Big Endian (retired, still sent by old modalities) transcoded to the
    default syntax: the pixels, swapped, equal the original's; private OW values are
    swapped with them.  pydicom refuses to change a read data set's byte order, which
    once ended the response half-way."""
    big = OTHER / "ct_explicit_vr_big_endian.dcm"
    # Its own node: the big-endian CT joins the shared CT's study.
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1, users={"dr.wang": "reader"})
    center.enable_web()
    with center:
        _fetch_big_endian(center, big)


def _fetch_big_endian(center: NodeProcess, big: Path) -> None:
    sent = storescu([big], center.dicom_port)
    assert not sent.failed, sent.failed
    d = _ds(big)
    url = (f"{center.web_url}/dicom-web/studies/{d.StudyInstanceUID}/series/"
           f"{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}")
    for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        r = requests.get(url, timeout=30, headers={
            **center.auth("dr.wang"),
            "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'})
        assert r.status_code == 200, r.text[:300]
        [(ptype, body)] = _multipart_parts(r)
        assert f"transfer-syntax={syntax}" in ptype
        out = pydicom.dcmread(io.BytesIO(body))
        assert out.file_meta.TransferSyntaxUID == syntax
        assert (out.pixel_array == d.pixel_array).all()
        assert str(out.PatientName) == str(d.PatientName) and out.Rows == d.Rows


def test_a_series_with_one_instance_that_cannot_be_transcoded_is_406_before_any_byte(
        tmp_path: Path) -> None:
    """Two RLE instances in one series, the second cut to half its RLE segment data (the
    validator checks the segment table, not every decoded byte, so it is stored): asking
    for the series in Explicit VR Little Endian is a 406 naming the broken instance (every
    part is re-encoded before the first byte), not a 200 cut half-way, and asking for that
    instance alone is a 406 too (it was a 500); `*` still serves both as stored."""
    good = _ds(OTHER / "ct_rle.dcm")
    bad = _ds(OTHER / "ct_rle.dcm")
    bad.SOPInstanceUID = generate_uid()
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    [frame] = pydicom.encaps.generate_frames(bad.PixelData, number_of_frames=1)
    bad.PixelData = pydicom.encaps.encapsulate([frame[:len(frame) // 2]])
    bad_path = tmp_path / "bad_rle.dcm"
    bad.save_as(bad_path, enforce_file_format=True)
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1, users={"dr.wang": "reader"})
    center.enable_web()
    with center:
        sent = storescu([OTHER / "ct_rle.dcm", bad_path], center.dicom_port)
        assert not sent.failed, sent.failed
        url = (f"{center.web_url}/dicom-web/studies/{good.StudyInstanceUID}/series/"
               f"{good.SeriesInstanceUID}")
        r = requests.get(url, timeout=60, headers={
            **center.auth("dr.wang"),
            "Accept": 'multipart/related; type="application/dicom"; '
                      "transfer-syntax=1.2.840.10008.1.2.1"})
        assert r.status_code == 406, (r.status_code, r.headers)
        assert bad.SOPInstanceUID in r.json()["message"]
        r = requests.get(f"{url}/instances/{bad.SOPInstanceUID}", timeout=60, headers={
            **center.auth("dr.wang"), "Accept": 'multipart/related; type="application/dicom"'})
        assert r.status_code == 406 and bad.SOPInstanceUID in r.json()["message"]
        r = requests.get(url, timeout=60, headers={
            **center.auth("dr.wang"),
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200
        sops = {str(pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID) for _, b in _multipart_parts(r)}
        assert sops == {str(good.SOPInstanceUID), str(bad.SOPInstanceUID)}
