"""One center, two `fenji node` processes on one store, behind a real HAProxy.

The processes share one config (one node identity, one store); their ports come
from FENJI_DICOM_PORT / FENJI_HTTP_PORT.  HAProxy balances the upload/DICOMweb
port per request (HTTP mode) and the DICOM port per connection (TCP mode), both
following each process's /api/ready.  An edge sends its cases through HAProxy,
over a slow emulated uplink so that bundles are moving when, three times, one
center process is killed with SIGKILL -- the one HAProxy has the upload's
request on, while the index shows the upload half-way -- and started again
(once HAProxy sees it back); the edge resumes the upload through the other.
Afterwards:

* every case arrived exactly once (one upload row, one receipt, one "arrived"
  ledger event per bundle; every instance once, with the edge's SHA-256), and
  the edge holds the center's signed receipt for each;
* at least one bundle was begun on one process and finished on the other;
* QIDO-RS through either process (and through HAProxy) gives the same answer;
  C-STORE through HAProxy's DICOM port lands in the shared store and C-FIND on
  either process finds it;
* `fenji audit verify` and `fenji store verify` hold;
* the index's ``processes`` lists the two running processes only (the killed ones
  were found dead and their work handed on).

The store backend is the ``center_store`` fixture's parameter: today the local
SQLite index and blob folder; a PostgreSQL/S3 backend adds a parameter whose
``toml`` / ``env`` point the center's config at it.

`make test` runs a bounded version (FENJI_CENTER_INSTANCES, default 100
instances, FENJI_CENTER_KILLS, default 3); `make test-long` the issue's 1,000.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from _data import ct_and_ecg, ct_series
from _nodes import send_every_study
from _wait import until

from fenji.gateway import config as config_mod
from fenji.gateway.cases.case import release
from fenji.gateway.keys import load_private, public_from_config, sign
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.demo import Link
from fenji.gateway.lab.harness import HaproxyProcess, NodeProcess, fenji_cmd, free_port
from fenji.gateway.lab.synth import derive
from fenji.gateway.node import open_store
from fenji.gateway.store.db import Store
from fenji.routing import upload
from fenji.routing.transfer_client import check_receipt, manifest_of


@dataclass
class StoreBackend:
    """Where the center keeps its index and blobs: extra config and environment."""

    name: str
    toml: str = ""  # merged into the center's config, e.g. "[store]\nindex_url = ..."
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(params=["sqlite-folder", "sqlite-s3", "pg-s3"])
def center_store(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreBackend]:
    """The store backend of the center under test (one parameter per backend)."""
    if request.param == "sqlite-folder":
        yield StoreBackend("sqlite-folder")  # the defaults: index.sqlite + blobs/ in store/
    elif request.param == "sqlite-s3":
        # Blobs and upload chunks in a bucket of a real S3-compatible server (SeaweedFS).
        s3 = request.getfixturevalue("s3_server")
        prefix = f"center-{uuid.uuid4().hex[:8]}"
        for k, v in s3.env().items():  # this process opens the store too
            monkeypatch.setenv(k, v)
        yield StoreBackend("sqlite-s3", f'[store]\nblob_url = "{s3.blob_url("fenji", prefix)}"\n',
                           s3.env())
    elif request.param == "pg-s3":
        # The center: the index in PostgreSQL (a fresh database of the session's
        # cluster), blobs and upload chunks in the bucket; nothing shared lives in the
        # store folder.
        cluster = request.getfixturevalue("pg_cluster")
        s3 = request.getfixturevalue("s3_server")
        prefix = f"center-{uuid.uuid4().hex[:8]}"
        for k, v in s3.env().items():
            monkeypatch.setenv(k, v)
        url = cluster.new_database()
        yield StoreBackend("pg-s3", f'[store]\nblob_url = "{s3.blob_url("fenji", prefix)}"\n'
                                    f'index_url = "{url}"\n', s3.env())
    else:  # pragma: no cover - a parameter without a backend is a test bug
        raise AssertionError(f"unknown store backend {request.param}")


@dataclass
class Center:
    procs: list[NodeProcess]
    lb: HaproxyProcess
    store: Store

    @property
    def node(self) -> NodeProcess:
        return self.procs[0]


def _center_process(directory: Path, backend: StoreBackend, log: Path,
                    **kw: Any) -> NodeProcess:
    dicom, http = free_port(), free_port()
    p = NodeProcess(directory, name="center", role="center", workers=1, dicom_port=dicom,
                    http_port=http, allow_ae=["*"],
                    extra_toml="[node]\nshared_store = true\n" + backend.toml,
                    env={**backend.env, "FENJI_DICOM_PORT": str(dicom),
                         "FENJI_HTTP_PORT": str(http)}, **kw)
    p.log_path = log
    return p


@pytest.fixture
def center(tmp_path: Path, center_store: StoreBackend) -> Iterator[Center]:
    """Two processes of one center on one store, and HAProxy in front of them."""
    a = _center_process(tmp_path / "center", center_store, tmp_path / "center-a.log",
                        users={"rd": "reader"})
    b = _center_process(tmp_path / "center", center_store, tmp_path / "center-b.log")
    b.tokens = a.tokens
    lb = HaproxyProcess(tmp_path / "haproxy", http_servers=[a.http_port, b.http_port],
                        dicom_servers=[a.dicom_port, b.dicom_port])
    store = open_store(config_mod.load(a.config, env=center_store.env))
    try:
        yield Center([a, b], lb, store)
    finally:
        for p in (a, b):
            p.stop()
        lb.stop()
        store.close()


def _uploads_midway(store: Store) -> list[str]:
    return [r["upload_id"] for r in store.query(
        "SELECT upload_id FROM uploads WHERE state = 'receiving' AND offset > 0 "
        "AND offset < length")]


def _received(store: Store, case_ids: list[str]) -> set[str]:
    rows = store.query("SELECT case_id, state FROM cases")
    return {r["case_id"] for r in rows if r["case_id"] in set(case_ids)
            and r["state"] == "received"}


def _qido(url: str, headers: dict[str, str]) -> list[tuple[str, str, str]]:
    r = requests.get(f"{url}/dicom-web/studies", headers=headers, timeout=60,
                     params={"includefield": "00201208"})
    assert r.status_code == 200, r.text
    out = []
    for study in r.json():
        # The Retrieve URL names the host the client asked (a process, or the balancer).
        study.pop("00081190", None)
        out.append((study["0020000D"]["Value"][0],
                    str(study.get("00201208", {}).get("Value", ["?"])[0]),
                    json.dumps(study, sort_keys=True)))
    return sorted(out)


def _find_studies(port: int, tmp: Path) -> list[str]:
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("rsp*.dcm"):
        old.unlink()
    r = subprocess.run(["/usr/bin/findscu", "-S", "-aet", "VIEWER", "-aec", "FENJI", "-X",
                        "-od", str(tmp), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
                        "127.0.0.1", str(port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    found = [pydicom.dcmread(p) for p in tmp.glob("rsp*.dcm")]
    return sorted(f"{d.StudyInstanceUID}:{d.get('NumberOfStudyRelatedInstances', '?')}"
                  for d in found)


def _bundles_by_process(logs: list[Path]) -> dict[str, set[int]]:
    """bundle id -> the processes (index into ``logs``) that logged a step of it."""
    seen: dict[str, set[int]] = {}
    for i, log in enumerate(logs):
        text = log.read_text(errors="replace") if log.exists() else ""
        for m in re.finditer(r"(?:upload created|bundle received|bundle finalized by another "
                             r"process) node=\S+ bundle=(\S+)", text):
            seen.setdefault(m.group(1), set()).add(i)
    return seen


def _run(tmp_path: Path, center: Center, n_instances: int, kills: int) -> dict[str, Any]:
    a, b = center.procs
    files = ct_and_ecg(tmp_path, n_instances, n_studies=max(3, n_instances // 25), size=160)
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       # Only the small previews go whole: a full bundle takes several
                       # requests, which HAProxy spreads over both processes.
                       extra_toml="[transfer]\nsingle_request_bytes = 16384\n")
    # A slow uplink, so that bundles are moving when the kills come.
    profile = tmp_path / "uplink.toml"
    profile.write_text("[link]\nrate_up_bps = 400000\nrate_down_bps = 4000000\nrtt_ms = 40\n")
    link = Link(str(profile), center.lb.http_port, 14, tmp_path / "link.log")
    edge.add_peer(a, default=True, url=f"http://127.0.0.1:{link.port}")
    a.add_peer(edge)  # one config for both processes
    try:
        edge.start()
        sent = storescu(files, edge.dicom_port, calling="CT1")
        assert len(sent.sent) == len(files), sent.failed
        # Release with the edge stopped (the CLI writes the outbox itself), so that
        # nothing moves before both center processes and HAProxy are up.
        edge.stop()
        studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                          for f in files})
        case_ids = send_every_study(edge, files)
        a.start()
        b.start()
        center.lb.start()
        until(lambda: center.lb.up(0) and center.lb.up(1), 60, "HAProxy to see both processes")
        edge.start()
        store = center.store
        done_kills = 0
        victims: list[int] = []

        def under_way() -> str | list[int] | None:
            """The processes HAProxy has a request on while an upload is half-way in
            the index (or "done": every case is in)."""
            if set(case_ids) <= _received(store, case_ids):
                return "done"
            busy = center.lb.busy()
            return busy if busy and _uploads_midway(store) else None

        while done_kills < kills:
            state = until(under_way, 900, "an upload under way")
            if state == "done":
                break
            victim = center.procs[state[0]]  # the process carrying the upload's request
            victim.kill()  # SIGKILL, the process group: supervisor and its DICOM worker
            done_kills += 1
            victims.append(state[0])
            victim.start()
            until(lambda v=state[0]: center.lb.up(v), 60, "HAProxy to see it back")
        until(lambda: set(case_ids) <= _received(store, case_ids), 1800,
              "every case at the center")
        assert done_kills == kills, (f"only {done_kills} of {kills} kills landed before every "
                                     "case was in: slow the uplink")
        # Each process beats in the index; the killed ones were found dead (their pid
        # gone on this machine) and forgotten by a live one: the two running remain.
        live = {p.proc.pid for p in (a, b) if p.proc is not None}
        until(lambda: {r["pid"] for r in store.query("SELECT pid FROM processes")} == live,
              60, "the killed processes to leave the index's processes")

        # Exactly once, with the edge's bytes.
        at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
        rows = store.query("SELECT sop_instance_uid, sha256 FROM instances")
        at_center = {r["sop_instance_uid"]: r["sha256"] for r in rows}
        assert len(rows) == len(at_center) == len(files)
        assert at_center == at_edge
        uploads = store.query("SELECT bundle_id, state, receipt_json FROM uploads")
        assert len({u["bundle_id"] for u in uploads}) == len(uploads)
        assert all(u["state"] == "complete" for u in uploads), uploads
        arrived = store.query("SELECT case_id, count(*) AS n FROM audit WHERE kind = 'arrived' "
                              "GROUP BY case_id")
        assert {r["case_id"]: r["n"] for r in arrived} == {c: 1 for c in case_ids}
        # The receipt the edge keeps is the one the center recorded (one per bundle).
        recorded = {u["bundle_id"]: json.loads(u["receipt_json"]) for u in uploads}
        for cid in case_ids:
            shown = json.loads(edge.cli("case", "show", cid, "--json").stdout)
            assert shown["receipt"] is not None and shown["receipt_signer"] == "center", cid
            assert shown["receipt"] == recorded[shown["receipt"]["bundle_id"]], cid
        # The kills cut uploads under way, and the edge resumed them (on the other
        # process: the killed one was down or not yet back in HAProxy's rotation).
        cuts = edge.log_path.read_text(errors="replace").count("resuming at once")
        assert cuts >= 1, "no kill cut an upload under way"
        spread = _bundles_by_process([a.log_path, b.log_path])
        both = [bid for bid, procs in spread.items() if procs == {0, 1}]
        assert both, f"no bundle was handled by both processes: {spread}"

        # QIDO-RS: the same answer from either process and through HAProxy.
        reader = a.auth("rd")
        answers = [_qido(url, reader) for url in (a.http_url, b.http_url, center.lb.url)]
        assert answers[0] == answers[1] == answers[2]
        assert {s[0] for s in answers[0]} == set(studies)
        # C-STORE through HAProxy's DICOM port; C-FIND on either process finds it.
        extra = derive(ct_series()[:3], tmp_path / "extra", 3, prefix="dimse")
        assert len(storescu(extra, center.lb.dicom_port, calling="CT1").sent) == 3
        finds = [_find_studies(p.dicom_port, tmp_path / f"find{i}")
                 for i, p in enumerate((a, b))]
        assert finds[0] == finds[1]
        assert len(finds[0]) == len(studies) + 1

        verify = a.cli("audit", "verify", check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert a.cli("store", "verify", check=False).returncode == 0
        return {"instances": len(files), "cases": len(case_ids), "bundles": len(uploads),
                "kills": done_kills, "killed_process": victims,
                "edge_uploads_cut": cuts,
                "bundles_on_both_processes": len(both)}
    finally:
        edge.stop()
        link.stop()


@pytest.mark.timeout(1800)
def test_center_two_processes_behind_haproxy(tmp_path: Path, center: Center) -> None:
    n = int(os.environ.get("FENJI_CENTER_INSTANCES", "100"))
    kills = int(os.environ.get("FENJI_CENTER_KILLS", "3"))
    print(_run(tmp_path, center, n, kills))


@pytest.mark.long
@pytest.mark.timeout(5400)
def test_center_two_processes_behind_haproxy_full(tmp_path: Path, center: Center) -> None:
    print(_run(tmp_path, center, 1000, 3))


def test_ready_and_health_for_the_balancer(tmp_path: Path, center: Center) -> None:
    """/api/health and /api/ready answer without a token and carry no secret; /api/ready
    turns 503 when the process stops, and HAProxy then takes it out of the rotation."""
    a, b = center.procs
    a.start()
    b.start()
    center.lb.start()
    until(lambda: center.lb.up(0) and center.lb.up(1), 60, "HAProxy to see both processes")
    for p in (a, b):
        h = requests.get(p.http_url + "/api/health", timeout=10)
        r = requests.get(p.http_url + "/api/ready", timeout=10)
        assert h.status_code == 200 and h.json()["status"] == "alive"
        assert r.status_code == 200 and r.json() == {"status": "ready", "name": "center",
                                                     "role": "center", "problems": []}
        for body in (h.text, r.text):  # nothing about keys, tokens, paths or the store
            assert "token" not in body and "key" not in body and "/" not in body
    # A second node without shared_store is refused on the center's store, naming why.
    text = a.config.read_text().replace("shared_store = true", "shared_store = false")
    solo = a.directory / "solo.toml"  # beside the center's config: the same data_dir
    solo.write_text(text)
    res = subprocess.run([*fenji_cmd(), "node", "--config", str(solo)], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "FENJI_DICOM_PORT": str(free_port()),
                              "FENJI_HTTP_PORT": str(free_port())})
    assert res.returncode != 0
    assert "node.shared_store = true" in res.stderr, res.stderr
    # Stopping B: HAProxy takes it out, the balanced port keeps answering through A.
    b.stop()
    until(lambda: not center.lb.up(1), 60, "HAProxy to mark the stopped process down")
    assert requests.get(center.lb.url + "/api/ready", timeout=10).status_code == 200
    assert center.lb.up(0)


def _signed(edge: NodeProcess, method: str, path: str, extra: dict[str, str]) -> dict[str, str]:
    cfg = config_mod.load(edge.config, env={})
    ts = f"{time.time():.3f}"
    sig = sign(load_private(cfg.resolve(cfg.keys.private_key)),
               upload.auth_message(method, path, ts, extra, receiver="center"))
    return {**extra, "Fenji-Auth": f"node=edge;ts={ts};sig={sig}"}


def test_an_upload_moves_between_processes_and_is_finalized_once(tmp_path: Path,
                                                                 center: Center) -> None:
    """Created on one process, written on the other, finalized on both at once: one
    receipt (the same answer from both), every instance once, one "arrived" event."""
    a, b = center.procs
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    a.add_peer(edge)
    files = derive(ct_series()[:6], tmp_path / "src", 6, prefix="fin")
    with edge:
        assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    edge_store = open_store(config_mod.load(edge.config, env={}))
    try:
        rel = release(edge_store, study, destination="center", sender_node="edge")
    finally:
        edge_store.close()
    data = rel.bundle_path.read_bytes()
    a.start()
    b.start()
    create = {"Fenji-Bundle-Id": rel.bundle_id, "Upload-Length": str(len(data))}
    r = requests.post(a.http_url + "/transfer/uploads", timeout=30,
                      headers=_signed(edge, "POST", "/transfer/uploads", create))
    assert r.status_code == 201, r.text
    where = r.headers["Location"]
    # The same bundle created again through the other process: the same upload.
    again = requests.post(b.http_url + "/transfer/uploads", timeout=30,
                          headers=_signed(edge, "POST", "/transfer/uploads", create))
    assert again.status_code == 200 and again.headers["Location"] == where
    half = len(data) // 2
    for proc, offset, chunk in ((b, 0, data[:half]), (a, half, data[half:])):
        h = {"Upload-Offset": str(offset), "Upload-Checksum": upload.checksum_header(chunk),
             "Content-Type": "application/offset+octet-stream"}
        r = requests.patch(proc.http_url + where, data=chunk, timeout=60,
                           headers=_signed(edge, "PATCH", where, h))
        assert r.status_code == 204, r.text
    # A chunk at an offset the other process already moved past changes nothing.
    stale = {"Upload-Offset": "0", "Upload-Checksum": upload.checksum_header(data[:half]),
             "Content-Type": "application/offset+octet-stream"}
    r = requests.patch(b.http_url + where, data=data[:half], timeout=60,
                       headers=_signed(edge, "PATCH", where, stale))
    assert r.status_code == 409 and r.headers["Upload-Offset"] == str(len(data)), r.text
    path = where + "/finalize"
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda p: requests.post(p.http_url + path, timeout=120,
                                    headers=_signed(edge, "POST", path, {})), (a, b)))
    assert [x.status_code for x in answers] == [200, 200], [x.text for x in answers]
    first, second = (x.json() for x in answers)
    assert first == second  # one receipt, whichever process finalized
    # ... signed with the center's key, covering exactly the bundle sent.
    check_receipt(first["receipt"], first["signature"],
                  public_from_config(a.public_key_hex(), a.directory), rel.bundle_path,
                  rel.bundle_id, manifest_of(rel.bundle_path), receiver="center")
    store = center.store
    rows = store.query("SELECT sop_instance_uid FROM instances")
    assert len(rows) == len({r["sop_instance_uid"] for r in rows}) == len(files)
    assert store.query("SELECT count(*) AS n FROM audit WHERE kind = 'arrived'") == [{"n": 1}]
    assert store.query("SELECT state FROM uploads") == [{"state": "complete"}]
