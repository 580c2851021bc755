"""Issue 17, findings 10, 11, 13 and 14: what one HTTP request can make a node spend,
and malformed input answered with 4xx, never 500 — against a real running node."""

from __future__ import annotations

import base64
import hashlib
import re
import time

import numpy as np
import pydicom
import pytest
import requests
from _data import DICOM_DIR, ct_series
from _tools import proc_vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from fenji.codecs.compress.bundle import Preview
from fenji.codecs.compress.pixel import pixel_decode, pixel_encode
from fenji.codecs.errors import DecodeError
from fenji.gateway import config as config_mod
from fenji.gateway.keys import load_private, sign
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.routing.transfer_server import auth_message

pytestmark = pytest.mark.timeout(600)

PREVIEW_CAP = 1 << 20
FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _node_key(n: NodeProcess):  # type: ignore[no-untyped-def]
    cfg = config_mod.load(n.config, env={})
    return load_private(cfg.resolve(cfg.keys.private_key))


class Node:
    def __init__(self, center: NodeProcess, edges: list[NodeProcess], study: str, series: str,
                 sop: str) -> None:
        self.center, self.edge = center, edges[0]
        self.study, self.series, self.sop = study, series, sop
        self.auth = center.auth()
        self.dw = center.http_url + "/dicom-web"
        self.keys = {e.name: _node_key(e) for e in edges}
        self.upload = ""

    def signed(self, method: str, path: str, extra: dict[str, str],
               node: str = "edge") -> dict[str, str]:
        ts = f"{time.time():.3f}"
        sig = sign(self.keys[node], auth_message(method, path, ts, extra, receiver="center"))
        return {**extra, "Fenji-Auth": f"node={node};ts={ts};sig={sig}"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("http")
    edge = NodeProcess(root / "edge", name="edge", workers=1)
    # A second sending node of its own, so the per-peer cap test fills only its slots.
    crowd = NodeProcess(root / "crowd", name="crowd", workers=1)
    center = NodeProcess(root / "center", name="center", role="center", workers=1,
                         users={"op": "operator"},
                         extra_toml=f"[limits]\nmax_preview_pixels = {PREVIEW_CAP}\n"
                                    "max_uploads_per_peer = 3\nmax_multipart_parts = 5\n"
                                    "max_decoded_bytes_per_request = 262144\n")
    center.add_peer(edge)
    center.add_peer(crowd)
    center.add_user("ecgdoc", "reader", services=("ecg",))
    with center:
        files = ct_series()[:2]
        storescu([*files, DICOM_DIR / "other" / "ct_rle.dcm"], center.dicom_port,
                 calling="CT1")
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        out = Node(center, [edge, crowd], str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                   str(ds.SOPInstanceUID))
        out.upload = _upload(out)  # for the fuzz test, before the per-peer cap is reached
        yield out


def _json_4xx(r: requests.Response) -> dict[str, object]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == r.status_code and body["message"], body
    return body


# -- finding 10: frame-list amplification ------------------------------------
def test_frame_list_duplicates_removed_and_distinct_frames_capped(node: Node) -> None:
    url = (f"{node.dw}/studies/{node.study}/series/{node.series}/instances/{node.sop}"
           "/frames/")
    accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
    r = requests.get(url + ",".join(["1"] * 1000), headers={**node.auth, **accept}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    boundary = re.search(r"boundary=([^;\s]+)", r.headers["Content-Type"]).group(1)  # type: ignore[union-attr]
    assert r.content.count(b"--" + boundary.encode() + b"\r\n") == 1  # one part, not 1,000
    # More distinct frames than limits.max_frames_per_request (64): refused before any read.
    r = requests.get(url + ",".join(str(i) for i in range(1, 66)),
                     headers={**node.auth, **accept}, timeout=60)
    assert "max_frames_per_request" in str(_json_4xx(r)["message"])


def test_decoded_frames_are_bounded_before_decoding(node: Node) -> None:
    """A compressed frame asked for decoded costs its decoded size in memory: capped
    (here 256 KiB; one 512 x 512 16-bit frame is 512 KiB), while the stored bytes
    are still served."""
    ds = pydicom.dcmread(DICOM_DIR / "other" / "ct_rle.dcm", stop_before_pixels=True)
    url = (f"{node.dw}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
           f"{ds.SOPInstanceUID}/frames/1")
    r = requests.get(url, timeout=60, headers={
        **node.auth, "Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 413, r.text[:300]
    assert "max_decoded_bytes_per_request" in str(_json_4xx(r)["message"])
    r = requests.get(url, timeout=60, headers={
        **node.auth, "Accept": 'multipart/related; type="image/dicom-rle"'})
    assert r.status_code == 200, r.text[:300]


# -- finding 11: preview decompression bomb ------------------------------------
def test_pixel_decode_refuses_streams_beyond_its_cap() -> None:
    enc = pixel_encode(np.zeros((512, 512), np.uint8))
    assert pixel_decode(enc).shape == (512, 512)
    with pytest.raises(DecodeError, match="262144 samples"):
        pixel_decode(enc, max_pixels=512 * 512 - 1)


def test_preview_bomb_is_refused_not_decoded(node: Node) -> None:
    """A preview a peer left behind, declaring 4x the cap: 422 with the reason, not a PNG."""
    side = 2048  # 4 Mi samples of zeros: a few KB encoded
    pv = Preview("image", {"rows": side, "cols": side}, pixel_encode(np.zeros((side, side),
                                                                              np.uint8)))
    folder = node.center.directory / "store" / "previews" / "BOMB1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "0.prev").write_bytes(pv.to_bytes())
    assert len(pv.data) < 64 * 1024
    r = requests.get(node.center.http_url + "/api/cases/BOMB1/previews/0", headers=node.auth,
                     timeout=60)
    assert "max_preview_pixels" in str(_json_4xx(r)["message"])


def test_bundle_with_a_preview_bomb_is_refused_and_leaves_no_preview(node: Node) -> None:
    """The same bomb arriving in a bundle from a peer: the bundle is refused (422) and
    no preview becomes visible."""
    from fenji.codecs.compress.bundle import write_bundle

    side = 2048
    bomb = Preview("image", {"rows": side, "cols": side},
                   pixel_encode(np.zeros((side, side), np.uint8)))
    bundle_id = f"bomb{time.monotonic_ns()}"
    case = {"case_id": "BOMB2", "bundle_id": bundle_id, "priority": "stat",
            "destination": "center", "sender": "edge"}
    data = b"".join(write_bundle(case, [ct_series()[2].read_bytes()], [bomb]))
    assert len(data) < 400_000
    base = node.center.http_url
    extra = {"Fenji-Bundle-Id": bundle_id, "Upload-Length": str(len(data))}
    r = requests.post(base + "/transfer/uploads", timeout=30,
                      headers=node.signed("POST", "/transfer/uploads", extra))
    assert r.status_code == 201, r.text
    loc = r.headers["Location"]
    digest = "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    h = node.signed("PATCH", loc, {"Upload-Offset": "0", "Upload-Checksum": digest})
    r = requests.patch(base + loc, data=data, headers=h, timeout=60)
    assert r.status_code == 204, r.text
    r = requests.post(base + loc + "/finalize", headers=node.signed("POST", loc + "/finalize",
                                                                    {}), timeout=120)
    assert r.status_code == 422 and "max_preview_pixels" in r.json()["message"], r.text
    assert not (node.center.directory / "store" / "previews" / "BOMB2").exists()


# -- finding 14: 500 instead of 4xx ---------------------------------------------
@pytest.mark.parametrize("query", [
    "limit=9223372036854775808", "offset=9223372036854775808", "limit=" + "9" * 40,
    "InstanceNumber=" + "9" * 400,
    "fuzzymatching=true&PatientName=" + "+".join(["a"] * 2000),
])
def test_qido_out_of_range_queries_are_4xx(node: Node, query: str) -> None:
    r = requests.get(f"{node.dw}/instances?{query}", headers=node.auth, timeout=60)
    _json_4xx(r)


@pytest.mark.parametrize("ctype,body", [
    ("multipart/related", b"--x\r\n"),
    ("multipart/related; boundary=", b"abc"),
    ('multipart/related; boundary="' + "x" * 100 + '"', b""),
    ('multipart/related; type="application/dicom"; boundary=xyz', b"garbage"),
    ('multipart/related; type="application/dicom"; boundary=xyz',
     b"--xyz\r\nContent-Type: application/dicom\r\n\r\nDICM unterminated"),
])
def test_stow_malformed_multipart_is_4xx(node: Node, ctype: str, body: bytes) -> None:
    for url in (f"{node.dw}/studies", node.center.http_url + "/api/ecg"):
        ct = ctype.replace("multipart/related", "multipart/form-data") if "ecg" in url else ctype
        r = requests.post(url, headers={**node.auth, "Content-Type": ct}, data=body, timeout=60)
        _json_4xx(r)


def _upload(node: Node) -> str:
    extra = {"Fenji-Bundle-Id": f"fuzz{time.monotonic_ns()}", "Upload-Length": "1000"}
    r = requests.post(node.center.http_url + "/transfer/uploads",
                      headers=node.signed("POST", "/transfer/uploads", extra), timeout=30)
    assert r.status_code == 201, r.text
    return r.headers["Location"]


def test_upload_checksum_not_base64_is_4xx(node: Node) -> None:
    loc = _upload(node)
    for checksum in ("sha256 !!!not-base64!!!", "sha256 A", "sha256", "md5 ###"):
        h = node.signed("PATCH", loc, {"Upload-Offset": "0", "Upload-Checksum": checksum})
        r = requests.patch(node.center.http_url + loc, data=b"x" * 10, headers=h, timeout=30)
        _json_4xx(r)


# -- finding 13 (partial): parts per request, uploads per peer ---------------------
def test_stow_parts_per_request_are_capped(node: Node) -> None:
    """10,000 tiny parts made 12,000 quarantine rows; now the request stops at the cap."""
    parts = b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n"
                     for _ in range(50)) + b"--b--\r\n"
    r = requests.post(f"{node.dw}/studies", data=parts, timeout=60, headers={
        **node.auth, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 413 and "max_multipart_parts = 5" in str(_json_4xx(r)["message"])



def test_concurrent_uploads_per_peer_are_capped(node: Node) -> None:
    codes = []
    for i in range(6):
        extra = {"Fenji-Bundle-Id": f"many{i}x{time.monotonic_ns()}", "Upload-Length": "1000"}
        r = requests.post(node.center.http_url + "/transfer/uploads", timeout=30,
                          headers=node.signed("POST", "/transfer/uploads", extra, "crowd"))
        codes.append(r.status_code)
        if r.status_code == 429:
            assert "max_uploads_per_peer" in r.json()["message"]
    assert 429 in codes and codes.count(201) <= 3, codes


def test_uploads_in_flight_per_user_are_capped(node: Node) -> None:
    """Held-open STOW-RS requests of one user (body promised, not sent) take its upload
    slots (limits.max_uploads_per_user = 4); the next one gets 429 with the reason, and
    the slots come back when the held requests end."""
    import socket

    from _wait import until

    held = []
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {node.auth['Authorization']}\r\n"
            'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            "Content-Length: 100000\r\n\r\n--b\r\nContent-Type: application/dicom\r\n\r\n")
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", node.center.http_port))
            s.sendall(head.encode())
            held.append(s)

        def probe() -> requests.Response:
            return requests.post(f"{node.dw}/studies", data=b"--b--\r\n", timeout=30, headers={
                **node.auth,
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})

        # (a Response is falsy for 4xx: until() gets it in a tuple)
        (r,) = until(lambda: (x := probe()).status_code == 429 and (x,), 30,
                     "a 429 while four uploads are held open")
        assert "max_uploads_per_user = 4" in r.json()["message"]
    finally:
        for s in held:
            s.close()
    until(lambda: probe().status_code != 429, 30, "the upload slots to come back")


# -- the parsers under hypothesis: no 5xx ----------------------------------------
_TEXT = hs.text(hs.characters(min_codepoint=32, max_codepoint=0x4E2D,
                              blacklist_categories=("Cs",)), max_size=60)
_KEYS = hs.sampled_from(["PatientName", "PatientID", "StudyDate", "StudyTime", "InstanceNumber",
                         "SeriesNumber", "Modality", "StudyInstanceUID", "AccessionNumber",
                         "00100010", "00200013", "limit", "offset", "fuzzymatching",
                         "includefield", "NoSuchKeyword", "0010", "PatientAge"])


@FUZZ
@given(params=hs.lists(hs.tuples(_KEYS, _TEXT | hs.sampled_from(
    ["9" * 30, "-1", "1e9", "*", "?", "\\", "20200101-", "-", "true", "all"])), max_size=6),
    level=hs.sampled_from(["studies", "series", "instances"]))
def test_fuzz_qido_never_5xx(node: Node, params: list[tuple[str, str]], level: str) -> None:
    r = requests.get(f"{node.dw}/{level}", params=params, headers=node.auth, timeout=60)
    assert r.status_code < 500, (params, r.status_code, r.text[:300])


_BOUNDARY = hs.text(hs.characters(min_codepoint=33, max_codepoint=126,
                                  blacklist_characters='";\\'), max_size=80)


@FUZZ
@given(boundary=_BOUNDARY, body=hs.binary(max_size=400), quoted=hs.booleans(),
       prefix=hs.sampled_from([b"", b"--", b"\r\n--"]), close=hs.booleans())
def test_fuzz_stow_multipart_never_5xx(node: Node, boundary: str, body: bytes, quoted: bool,
                                       prefix: bytes, close: bool) -> None:
    b = f'"{boundary}"' if quoted else boundary
    data = prefix + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + body
    if close:
        data += b"\r\n--" + boundary.encode() + b"--\r\n"
    r = requests.post(f"{node.dw}/studies", data=data, timeout=60, headers={
        **node.auth, "Content-Type": f'multipart/related; type="application/dicom"; boundary={b}'})
    assert r.status_code < 500, (boundary, data[:100], r.status_code, r.text[:300])
    r = requests.post(node.center.http_url + "/api/ecg", data=data, timeout=60, headers={
        **node.auth, "Content-Type": f"multipart/form-data; boundary={b}"})
    assert r.status_code < 500, ("ecg", boundary, data[:100], r.status_code, r.text[:300])


# requests refuses header values with leading or trailing whitespace.
_HEADER = hs.text(hs.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)


@FUZZ
@given(offset=_HEADER | hs.integers(-5, 2000).map(str),
       checksum=hs.tuples(hs.sampled_from(["sha256 ", "", "sha256"]), _HEADER).map(
           lambda t: "".join(t).strip()),
       good_sum=hs.booleans(), body=hs.binary(max_size=300))
def test_fuzz_upload_headers_never_5xx(node: Node, offset: str, checksum: str, good_sum: bool,
                                       body: bytes) -> None:
    loc = node.upload
    if good_sum:
        checksum = "sha256 " + base64.b64encode(hashlib.sha256(body).digest()).decode()
    h = node.signed("PATCH", loc, {"Upload-Offset": offset, "Upload-Checksum": checksum})
    r = requests.patch(node.center.http_url + loc, data=body, headers=h, timeout=30)
    assert r.status_code < 500, (offset, checksum, r.status_code, r.text[:300])
    for length in (offset, checksum):
        extra = {"Fenji-Bundle-Id": length[:64], "Upload-Length": length}
        r = requests.post(node.center.http_url + "/transfer/uploads",
                          headers=node.signed("POST", "/transfer/uploads", extra), timeout=30)
        assert r.status_code < 500, (length, r.status_code, r.text[:300])


# -- finding 8: no query text (names) in the ledger ------------------------------
def test_opened_events_carry_uids_not_query_text(node: Node) -> None:
    name = "HEAD"  # the shared CT's PatientName
    r = requests.get(f"{node.dw}/studies", params={"PatientName": name, "PatientID": "PLASTIC"},
                     headers=node.auth, timeout=60)
    assert r.status_code == 200 and len(r.json()) == 1, r.text[:300]
    out = node.center.cli("audit", "ls", "--kind", "opened", "--json").stdout
    import json

    events = [e for e in json.loads(out) if e["detail"].get("via") == "qido-rs"]
    assert events, out[:500]
    last = events[-1]
    assert last["object"] == node.study or node.study in json.dumps(last), last
    text = json.dumps(last, ensure_ascii=False)
    assert name not in text and "PLASTIC" not in text, last
    assert set(last["detail"]["query_keys"]) == {"PatientName", "PatientID"}


# -- finding 7: a reader reads only the services they read ------------------------
def test_ecg_reader_cannot_read_a_ct_study_on_any_route(node: Node) -> None:
    ecg = node.center.auth("ecgdoc")
    inst = f"{node.dw}/studies/{node.study}/series/{node.series}/instances/{node.sop}"
    # QIDO: the CT study is not listed for the ECG reader (it is for the operator).
    for level in ("studies", "series", "instances"):
        r = requests.get(f"{node.dw}/{level}", headers=ecg, timeout=60)
        assert r.status_code == 200 and node.study not in r.text, (level, r.text[:200])
    r = requests.get(f"{node.dw}/studies", headers=node.auth, timeout=60)
    assert node.study in r.text
    wado = {
        f"{node.dw}/studies/{node.study}": 'multipart/related; type="application/dicom"',
        inst: 'multipart/related; type="application/dicom"',
        f"{node.dw}/studies/{node.study}/metadata": "application/dicom+json",
        inst + "/metadata": "application/dicom+json",
        inst + "/frames/1": 'multipart/related; type="application/octet-stream"',
        inst + "/bulkdata/7FE00010": "multipart/related",
    }
    for url, accept in wado.items():
        r = requests.get(url, headers={**ecg, "Accept": accept}, timeout=60)
        body = _json_4xx(r)
        assert r.status_code == 403 and "imaging" in str(body["message"]), (url, body)
        r = requests.get(url, headers={**node.auth, "Accept": accept}, timeout=60)
        assert r.status_code == 200, (url, r.text[:200])
    # Case views and previews: a CT case released here.
    from fenji.gateway.cases.case import release
    from fenji.gateway.node import open_store

    cfg = config_mod.load(node.center.config, env={})
    store = open_store(cfg)
    try:
        rel = release(store, node.study, destination="edge", sender_node="center")
    finally:
        store.close()
    folder = node.center.directory / "store" / "previews" / rel.case_id
    folder.mkdir(parents=True, exist_ok=True)
    pv = Preview("image", {"rows": 8, "cols": 8}, pixel_encode(np.zeros((8, 8), np.uint8)))
    (folder / "0.prev").write_bytes(pv.to_bytes())
    api = node.center.http_url + f"/api/cases/{rel.case_id}"
    for url in (api, api + "/previews", api + "/previews/0", api + "/reports"):
        r = requests.get(url, headers=ecg, timeout=60)
        assert r.status_code == 403, (url, r.text[:200])
        r = requests.get(url, headers=node.auth, timeout=60)
        assert r.status_code == 200, (url, r.text[:200])
    r = requests.get(node.center.http_url + "/api/cases", headers=ecg, timeout=60)
    assert r.status_code == 200 and rel.case_id not in r.text


# -- bounded memory over everything above ----------------------------------------
def test_node_peak_memory_stayed_bounded(node: Node) -> None:
    """After the attacks and fuzzing above (run first, in file order), the node's peak
    resident memory (VmHWM of the process serving HTTP) stays far below what the
    unbounded paths cost (+378 MB for one frame list, 1.16 GB for one preview)."""
    assert node.center.proc is not None
    peak_kb = proc_vm(node.center.proc.pid, "VmHWM:") // 1024
    print(f"node peak RSS: {peak_kb / 1024:.0f} MiB")
    assert peak_kb < 512 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"
