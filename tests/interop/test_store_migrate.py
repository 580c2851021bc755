"""`fenji store migrate`: a SQLite/file center moved to PostgreSQL and S3 (issue 14, part 4).

A real center (a ``fenji node`` process on the default store: index.sqlite and
blobs/) is populated by real peers: DCMTK storescu sends it the shared data's
DICOM files directly, and an edge sends it a released case over the transfer
protocol (cases, uploads, receipts, ledger events on both sides).  The node is
stopped, then `fenji store migrate` runs as a subprocess against the session's
PostgreSQL cluster (Debian's, tests/_pg.py) and SeaweedFS (a real S3-compatible
server from PyPI).  Then:

* every instance is verified (re-read from the bucket, SHA-256 compared), every
  table compared, and the ledger's chain verifies on the target;
* a node started on the new config gives the same QIDO-RS answer and the same
  instance bytes as before the move;
* a migration killed part-way (SIGKILL at a known step, in the blob and in the
  row phase) and run again ends verified;
* a target holding another center's data is refused, naming the conflict; an
  unreachable target is a typed error naming the URL without its password; a
  running node is refused;
* a corrupt blob in the target is found by the verify step, and a re-run repairs it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from _data import DICOM_DIR, good_files
from _nodes import edge_and_center, send_every_study
from _pg import PgCluster
from _wait import until

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd, free_port
from fenji.gateway.lab.objstore import S3Server

pytestmark = pytest.mark.timeout(900)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass
class Populated:
    center: NodeProcess
    edge: NodeProcess
    s3: S3Server
    pg: PgCluster
    qido: list[dict[str, Any]]  # the studies QIDO-RS answered before the move
    sample: tuple[str, str, str]  # (study, series, SOP Instance UID) of one instance
    sample_bytes: bytes  # its WADO-RS bytes before the move
    n_instances: int


def _qido(node: NodeProcess) -> list[dict[str, Any]]:
    r = requests.get(f"{node.http_url}/dicom-web/studies", timeout=60,
                     headers={**node.auth("dr.wang"), "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    return sorted(r.json(), key=lambda s: s["0020000D"]["Value"][0])


def _wado_instance(node: NodeProcess, study: str, series: str, sop: str) -> bytes:
    r = requests.get(f"{node.http_url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                     timeout=120, headers={**node.auth("dr.wang"),
                                           "Accept": 'multipart/related; type="application/dicom"; '
                                                     "transfer-syntax=*"})
    assert r.status_code == 200, r.text
    m = re.search(r"boundary=([^;]+)", r.headers["Content-Type"])
    assert m is not None
    part = r.content.split(f"--{m.group(1).strip(chr(34))}".encode())[1]
    return part.split(b"\r\n\r\n", 1)[1][:-2]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server,
              pg_cluster: PgCluster) -> Iterator[Populated]:
    base = tmp_path_factory.mktemp("migrate")
    edge, center = edge_and_center(base)
    center.add_user("dr.wang", "reader", services=("imaging",))
    mr = sorted((DICOM_DIR / "mr").glob("*.dcm"))
    direct = [f for f in good_files() if f not in mr]
    with edge, center:
        pushed = storescu(direct, center.dicom_port, calling="MODALITY")
        assert pushed.sent, pushed.failed
        assert not storescu(mr, edge.dicom_port, calling="CT1").failed
        cases = send_every_study(edge, mr)
        until(lambda: all(c in center.cli("case", "ls", "--json").stdout for c in cases),
              180, "the edge's cases at the center")
        stored = center.stored()
        qido = _qido(center)
        row = next(r for r in stored if r["sop_class_uid"] == CT_IMAGE_STORAGE
                   and r["transfer_syntax_uid"] == EXPLICIT_VR_LITTLE_ENDIAN)
        sample = (str(row["study_instance_uid"]), str(row["series_instance_uid"]),
                  str(row["sop_instance_uid"]))
        sample_bytes = _wado_instance(center, *sample)
    yield Populated(center, edge, s3_server, pg_cluster, qido, sample, sample_bytes,
                    len(stored))


def _migrate(p: Populated, *args: str, env: dict[str, str] | None = None,
             config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*fenji_cmd(), "store", "migrate", "--json", "--config",
           str(config or p.center.config), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **p.s3.env(), **(env or {})})


@dataclass
class Target:
    index_url: str
    blob_url: str
    prefix: str

    def args(self) -> list[str]:
        return ["--to-index", self.index_url, "--to-blobs", self.blob_url]


def _target(p: Populated) -> Target:
    prefix = f"moved-{uuid.uuid4().hex[:8]}"
    return Target(p.pg.new_database(), p.s3.blob_url("fenji", prefix), prefix)


@pytest.fixture(scope="module")
def migrated(populated: Populated) -> Iterator[tuple[Target, dict[str, Any]]]:
    t = _target(populated)
    res = _migrate(populated, *t.args())
    assert res.returncode == 0, res.stderr + res.stdout
    out = json.loads(res.stdout)
    print(f"migrated {populated.n_instances} instances, {out['verified']['bytes'] / 1e6:.1f} MB "
          f"in {out['seconds']:.2f} s")
    yield t, out


def test_every_instance_table_and_the_ledger_verify_on_the_target(
        populated: Populated, migrated: tuple[Target, dict[str, Any]]) -> None:
    t, out = migrated
    assert out["ok"] and not out["problems"]
    assert out["blobs"]["total"] == out["verified"]["blobs"] > 0
    assert out["blobs"]["copied"] == out["blobs"]["total"]
    # Every instance's blob is in the bucket (distinct blobs <= instances: the same
    # bytes are one blob), none missing.
    with psycopg.connect(t.index_url) as con:
        n_inst = con.execute("SELECT count(*) FROM instances").fetchone()[0]
        distinct = con.execute("SELECT count(DISTINCT sha256) FROM instances").fetchone()[0]
        ledger_n = con.execute("SELECT count(*) FROM audit").fetchone()[0]
        n_cases = con.execute("SELECT count(*) FROM cases").fetchone()[0]
        n_uploads = con.execute("SELECT count(*) FROM uploads").fetchone()[0]
    assert n_inst == populated.n_instances == out["tables"]["instances"]
    assert distinct == out["verified"]["blobs"]
    assert n_cases >= 1 and n_uploads >= 1
    assert out["ledger"]["ok"] and out["ledger"]["events"] == ledger_n > n_inst
    assert out["verified"]["tables"] == len(out["tables"])
    listed = populated.s3.client().list_objects_v2(Bucket="fenji", Prefix=f"{t.prefix}/blobs/")
    assert len(listed.get("Contents", [])) == distinct
    # What to put in the config, without a password.
    assert out["config"] == {"index_url": t.index_url, "blob_url": t.blob_url}
    # `fenji audit verify` on the new config agrees.
    res = subprocess.run([*fenji_cmd(), "audit", "verify", "--json", "--config",
                          str(populated.center.config)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **populated.s3.env(),
                                           "FENJI_STORE_INDEX_URL": t.index_url,
                                           "FENJI_STORE_BLOB_URL": t.blob_url})
    assert res.returncode == 0 and json.loads(res.stdout)["ok"], res.stdout + res.stderr


def test_text_output_says_what_to_put_in_the_config(
        populated: Populated, migrated: tuple[Target, dict[str, Any]]) -> None:
    t, _ = migrated
    res = subprocess.run([*fenji_cmd(), "store", "migrate", *t.args(), "--config",
                          str(populated.center.config)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, **populated.s3.env()})
    assert res.returncode == 0, res.stderr
    assert f'index_url = "{t.index_url}"' in res.stdout
    assert f'blob_url = "{t.blob_url}"' in res.stdout
    assert "migrate: verify blobs" in res.stderr  # progress, N of M
    assert re.search(r"migrate: blobs (\d+) of \1", res.stderr)


def test_a_node_on_the_new_config_serves_the_same_answers(
        populated: Populated, migrated: tuple[Target, dict[str, Any]]) -> None:
    t, _ = migrated
    c = populated.center
    # The same folder and config, switched over by the environment.
    moved = NodeProcess(c.directory, name=c.name, role=c.role, workers=1,
                        dicom_port=c.dicom_port, http_port=c.http_port, tokens=c.tokens,
                        env={**populated.s3.env(), "FENJI_STORE_INDEX_URL": t.index_url,
                             "FENJI_STORE_BLOB_URL": t.blob_url})
    # The old index and blobs out of reach: the node can only answer from the new store.
    store = c.directory / "store"
    away = [p for p in store.iterdir() if p.name == "blobs" or p.name.startswith("index.sqlite")]
    for p in away:
        p.rename(p.with_name(p.name + ".away"))
    try:
        with moved:
            assert _qido(moved) == populated.qido
            assert _wado_instance(moved, *populated.sample) == populated.sample_bytes
        assert not (store / "index.sqlite").exists() and not (store / "blobs").exists()
    finally:
        for p in away:
            p.with_name(p.name + ".away").rename(p)


@pytest.mark.parametrize("phase", ["blobs", "rows"])
def test_a_killed_migration_run_again_ends_verified(
        populated: Populated, migrated: tuple[Target, dict[str, Any]], phase: str) -> None:
    _, full = migrated
    n_blob_steps = full["blobs"]["total"] + full["quarantine_blobs"]["total"]
    crash_at = 5 if phase == "blobs" else n_blob_steps + 2
    t = _target(populated)
    res = _migrate(populated, *t.args(), env={"FENJI_MIGRATE_CRASH_AFTER": str(crash_at)})
    assert res.returncode == -9, res.stderr  # killed, not finished
    assert "migrate: blobs 1 of" in res.stderr
    listed = populated.s3.client().list_objects_v2(Bucket="fenji", Prefix=f"{t.prefix}/blobs/")
    in_bucket = len(listed.get("Contents", []))
    with psycopg.connect(t.index_url) as con:
        rows = con.execute("SELECT count(*) FROM instances").fetchone()[0] + \
            con.execute("SELECT count(*) FROM audit").fetchone()[0]
    if phase == "blobs":
        assert 0 < in_bucket < full["blobs"]["total"] and rows == 0
    else:
        assert in_bucket == full["blobs"]["total"]
    again = _migrate(populated, *t.args())
    assert again.returncode == 0, again.stderr + again.stdout
    out = json.loads(again.stdout)
    assert out["ok"] and out["ledger"]["ok"]
    assert out["blobs"]["present"] == in_bucket  # kept, not copied again
    assert out["blobs"]["copied"] == full["blobs"]["total"] - in_bucket
    assert out["tables"] == full["tables"]
    assert (out["rows_copied"] < full["rows_copied"]) == (phase == "rows")
    # Ids and sequences moved past the copied rows: a new event goes in.
    with psycopg.connect(t.index_url) as con:
        con.execute("INSERT INTO events(at, kind) VALUES (0, 'test')")


def test_a_corrupt_blob_in_the_target_is_found_and_a_rerun_repairs_it(
        populated: Populated, migrated: tuple[Target, dict[str, Any]]) -> None:
    t = _target(populated)
    assert _migrate(populated, *t.args()).returncode == 0
    with psycopg.connect(t.index_url) as con:
        sop, sha = con.execute("SELECT sop_instance_uid, sha256 FROM instances "
                               "ORDER BY sop_instance_uid LIMIT 1").fetchone()
    key = f"{t.prefix}/blobs/{sha[:2]}/{sha[2:4]}/{sha}"
    client = populated.s3.client()
    body = bytearray(client.get_object(Bucket="fenji", Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one bit pattern flipped in the middle
    client.put_object(Bucket="fenji", Key=key, Body=bytes(body))
    res = _migrate(populated, *t.args(), "--verify-only")
    assert res.returncode == 1, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert not out["ok"] and len(out["problems"]) == 1
    assert sha in out["problems"][0] and sop in out["problems"][0]
    assert "corrupt" in out["problems"][0]
    fixed = _migrate(populated, *t.args())
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert json.loads(fixed.stdout)["blobs"]["repaired"] == 1


@pytest.fixture(scope="module")
def other_center(tmp_path_factory: pytest.TempPathFactory) -> NodeProcess:
    """A second, small center with one study of its own."""
    node = NodeProcess(tmp_path_factory.mktemp("other") / "center", name="other",
                       role="center", workers=1)
    with node:
        assert not storescu(sorted((DICOM_DIR / "ct").glob("CT_*.dcm"))[:2],
                            node.dicom_port).failed
    return node


def test_a_target_holding_another_centers_data_is_refused(
        populated: Populated, migrated: tuple[Target, dict[str, Any]],
        other_center: NodeProcess) -> None:
    t, _ = migrated
    with psycopg.connect(t.index_url) as con:
        before = con.execute("SELECT count(*) FROM instances").fetchone()[0]
    res = _migrate(populated, *t.args(), config=other_center.config)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "holds data that is not this center's" in res.stderr
    assert "not in the source" in res.stderr and "table " in res.stderr
    # The blobs alone: the bucket's prefix holds blobs the other center does not name.
    res = _migrate(populated, "--to-blobs", t.blob_url, config=other_center.config)
    assert res.returncode == 2 and "does not name" in res.stderr, res.stderr
    with psycopg.connect(t.index_url) as con:  # nothing was written
        assert con.execute("SELECT count(*) FROM instances").fetchone()[0] == before


def test_an_unreachable_target_is_named_without_its_password(
        populated: Populated, other_center: NodeProcess) -> None:
    port = free_port()
    url = f"postgresql://fenji:hunter2secret@127.0.0.1:{port}/center"
    res = _migrate(populated, "--to-index", url, config=other_center.config)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"127.0.0.1:{port}" in res.stderr and "unreachable" in res.stderr
    assert "hunter2secret" not in res.stderr + res.stdout


def test_a_running_node_is_refused(populated: Populated, other_center: NodeProcess) -> None:
    with other_center:
        res = _migrate(populated, "--to-index", populated.pg.new_database(),
                       config=other_center.config)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "stop it" in res.stderr and "node" in res.stderr


def test_nothing_to_do_is_an_error(populated: Populated, other_center: NodeProcess) -> None:
    res = _migrate(populated, config=other_center.config)
    assert res.returncode == 2 and "--to-index" in res.stderr



def test_the_index_alone_moves_and_the_blobs_stay(populated: Populated,
                                                   other_center: NodeProcess) -> None:
    url = populated.pg.new_database()
    res = _migrate(populated, "--to-index", url, config=other_center.config)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["blobs"]["total"] == 0  # nothing copied ...
    assert out["verified"]["blobs"] == out["tables"]["instances"] == 2  # ... all re-read
    assert out["config"]["blob_url"] == "" and out["config"]["index_url"] == url


def test_a_table_no_migration_creates_stops_the_move(
        populated: Populated, tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "odd", name="odd", role="center", workers=1)
    (node.directory / "store").mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(node.directory / "store" / "index.sqlite") as con:
        con.execute("CREATE TABLE local_notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO local_notes(text) VALUES ('病人 来电')")
    res = _migrate(populated, "--to-index", populated.pg.new_database(), config=node.config)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "local_notes" in res.stderr and "no migration creates" in res.stderr


def test_an_upload_still_arriving_keeps_its_bytes_in_the_bucket(
        populated: Populated, tmp_path: Path) -> None:
    """An edge's upload cut half-way before the move resumes from the bucket after it."""
    from fenji.gateway.store.db import Store
    from fenji.gateway.store.upload_parts import S3Parts

    node = NodeProcess(tmp_path / "up", name="up", role="center", workers=1)
    store_dir = node.directory / "store"
    upload_id, data = uuid.uuid4().hex, os.urandom(3 * 1024 * 1024 + 17)
    committed = 2 * 1024 * 1024 + 5
    s = Store(store_dir)
    with s.atomic() as con:
        con.execute("INSERT INTO uploads(upload_id, bundle_id, sender, length, offset, state, "
                    "created_at, updated_at) VALUES (?, ?, 'edge', ?, ?, 'receiving', 0, 0)",
                    (upload_id, uuid.uuid4().hex, len(data), committed))
    s.close()
    (store_dir / "uploads").mkdir(exist_ok=True)
    # More bytes on disk than the row committed (a chunk written, its commit cut).
    (store_dir / "uploads" / f"{upload_id}.part").write_bytes(data[:committed + 1000])
    t = _target(populated)
    res = _migrate(populated, *t.args(), config=node.config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["upload_parts"] == 1
    moved = Store(store_dir, blob_url=t.blob_url, index_url=t.index_url,
                  blob_access_key_id=populated.s3.access_key_id,
                  blob_secret_access_key=populated.s3.secret_access_key)
    try:
        parts = moved.upload_parts(store_dir / "uploads")
        assert isinstance(parts, S3Parts)
        assert b"".join(parts.chunks(upload_id, committed)) == data[:committed]
    finally:
        moved.close()


def test_an_edited_ledger_event_in_the_target_fails_the_verify_step(
        populated: Populated, migrated: tuple[Target, dict[str, Any]]) -> None:
    t = _target(populated)
    assert _migrate(populated, *t.args()).returncode == 0
    with psycopg.connect(t.index_url) as con:
        con.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3")
    res = _migrate(populated, *t.args(), "--verify-only")
    assert res.returncode == 1, res.stdout + res.stderr
    problems = json.loads(res.stdout)["problems"]
    assert any(p.startswith("ledger on the target: edited") and "event 3" in p
               for p in problems), problems
    assert any(p.startswith("table audit:") for p in problems), problems
    # Copying again would mix two histories: refused, naming the row.
    again = _migrate(populated, *t.args())
    assert again.returncode == 2 and "table audit: seq=3: actor = 'mallory'" in again.stderr


def test_a_blob_too_large_for_memory_goes_through_a_temp_file(
        populated: Populated, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The path a 2 GB cine takes (here every blob, the threshold lowered): streamed
    to a temp file, hashed on the way, uploaded, the temp file gone, the source kept."""
    from _data import ct_series

    from fenji.gateway import ingest
    from fenji.gateway.store import move as mv
    from fenji.gateway.store.db import Store

    monkeypatch.setattr(mv, "COPY_IN_MEMORY_BYTES", 1)
    source = Store(tmp_path / "src")
    for f in ct_series()[:3]:
        assert ingest.ingest(source, f.read_bytes(), ingest.Source("import", "import"),
                             ingest.Limits()).ok
    t = _target(populated)
    target = Store(tmp_path / "src", blob_url=t.blob_url,
                   blob_access_key_id=populated.s3.access_key_id,
                   blob_secret_access_key=populated.s3.secret_access_key)
    try:
        report = mv.move(source, target, copy_index=False, copy_blobs=True,
                         progress=lambda *_: None)
        assert report.ok, report.problems
        assert report.blobs.copied == report.blobs_verified == 3
        assert not list(source.tmp_dir.iterdir())
        assert not source.verify()  # every source blob still there, intact
    finally:
        target.close()
        source.close()
