"""Durability under fire: SIGKILL while sending, 4 senders at once, disk full.

`make test` runs the bounded crash loop (FENJI_CRASH_KILLS, default 6 kills);
`make test-long` runs the marked long version (40 kills).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from _data import ct_series

from fenji.gateway.dicom.validate import split_part10
from fenji.gateway.lab.dcmtk import storescu, tool
from fenji.gateway.lab.harness import NodeProcess, fenji_cmd
from fenji.gateway.lab.objstore import S3Server
from fenji.gateway.lab.synth import derive


def _dataset_sha(path: Path) -> str:
    data = path.read_bytes()
    _, off = split_part10(data)
    return hashlib.sha256(data[off:]).hexdigest()


def _blobs_complete(store: Path, s3: tuple[S3Server, str] | None = None) -> None:
    """Every file under blobs/ (every object under the bucket's blobs/) is complete:
    its content hashes to its name."""
    for p in (store / "blobs").glob("*/*/*"):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"half-written blob {p}"
    if s3 is not None:
        client, prefix = s3[0].client(), s3[1]
        for page in client.get_paginator("list_objects_v2").paginate(
                Bucket="fenji", Prefix=f"{prefix}/blobs/"):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket="fenji", Key=obj["Key"])["Body"].read()
                assert hashlib.sha256(body).hexdigest() == obj["Key"].rsplit("/", 1)[1], \
                    f"half-written object {obj['Key']}"


Sender = tuple[subprocess.Popen[str], Path, list[Path]]


def _start_senders(sets: list[list[Path]], port: int, logs: Path) -> list[Sender]:
    procs = []
    for i, files in enumerate(sets):
        if not files:
            continue
        log = logs / f"storescu-{i}-{time.monotonic_ns()}.log"
        fh = open(log, "w")  # noqa: SIM115 - closed after wait
        p = subprocess.Popen([tool("storescu"), "-v", "-R", "-xe", "--no-halt", "-aet",
                              f"SENDER{i}", "-aec", "FENJI", "127.0.0.1", str(port),
                              *map(str, files)], stdout=fh, stderr=subprocess.STDOUT, text=True)
        fh.close()
        procs.append((p, log, files))
    return procs


def _acknowledged(log: Path) -> set[Path]:
    ok, current = set(), None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line[len("I: Sending file: "):].strip())
        elif "Received Store Response (Success)" in line and current is not None:
            ok.add(current)
            current = None
    return ok


def _crash_loop(tmp_path: Path, kills: int, n_files: int, seed: int,
                s3: S3Server | None = None) -> None:
    rng = random.Random(seed)
    files = derive(ct_series(), tmp_path / "src", n_files, size=128, prefix="ct")
    halves = [files[0::2], files[1::2]]
    bucket = None if s3 is None else (s3, f"crash-{seed}-{time.monotonic_ns()}")
    extra = "" if bucket is None else (
        f'[store]\nblob_url = "{bucket[0].blob_url("fenji", bucket[1])}"\n'
        f'blob_access_key_id = "{bucket[0].access_key_id}"\n'
        f'blob_secret_access_key = "{bucket[0].secret_access_key}"\n')
    node = NodeProcess(tmp_path / "edge", name="crash", workers=2,
                       allow_ae=["SENDER0", "SENDER1", "ECHOSCU"], extra_toml=extra)
    store = node.directory / "store"
    acked: set[Path] = set()
    logs = tmp_path / "logs"
    logs.mkdir()
    interrupted = 0
    for _ in range(kills):
        remaining = [[f for f in h if f not in acked] for h in halves]
        if not any(remaining):
            break
        node.start()
        # Resend a few already-acknowledged ones too: after a crash a modality
        # re-sends, and the answer must stay an idempotent success.
        resend = sorted(acked)[: rng.randint(0, 5)]
        remaining[0] = resend + remaining[0]
        procs = _start_senders(remaining, node.dicom_port, logs)
        time.sleep(rng.uniform(0.2, 1.2))
        node.kill()  # SIGKILL the supervisor and every worker at once
        before = len(acked)
        for p, log, _ in procs:
            p.wait(timeout=120)
            acked |= _acknowledged(log)
        interrupted += len(acked) < len(files) and len(acked) >= before
        _blobs_complete(store, bucket)  # before any recovery runs
    print(f"crash loop: {kills} kills, {interrupted} mid-transfer, {len(acked)} of "
          f"{len(files)} acknowledged before the final round")
    assert interrupted >= 1  # the kills really landed while data was moving
    node.start()  # final round without kills: everything else goes through
    remaining = [[f for f in h if f not in acked] for h in halves]
    for p, log, _ in _start_senders(remaining, node.dicom_port, logs):
        p.wait(timeout=600)
        acked |= _acknowledged(log)
    try:
        assert acked == set(files), f"{len(set(files) - acked)} never acknowledged"
        rows = {r["sop_instance_uid"]: r for r in node.stored()}
        assert len(rows) == len(files)  # exactly once each
        import pydicom

        for f in files:
            uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            assert rows[uid]["dataset_sha256"] == _dataset_sha(f), f
        assert node.cli("store", "verify").returncode == 0  # through the bucket, if any
        assert not list((store / "tmp").iterdir())
        if bucket is not None:
            assert not list((store / "blobs").rglob("*"))
    finally:
        node.stop()


@pytest.mark.timeout(900)
def test_sigkill_while_two_storescu_send(tmp_path: Path) -> None:
    kills = int(os.environ.get("FENJI_CRASH_KILLS", "6"))
    _crash_loop(tmp_path, kills=kills, n_files=600, seed=20261123)


@pytest.mark.timeout(900)
def test_sigkill_while_two_storescu_send_to_a_bucket(tmp_path: Path, s3_server: S3Server
                                                     ) -> None:
    """The same with store.blob_url on a real S3 server: an acknowledged instance's
    object is in the bucket, complete, whatever instant the node died at."""
    kills = int(os.environ.get("FENJI_CRASH_KILLS", "6"))
    _crash_loop(tmp_path, kills=kills, n_files=200, seed=20261203, s3=s3_server)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_sigkill_while_two_storescu_send_long(tmp_path: Path) -> None:
    _crash_loop(tmp_path, kills=40, n_files=3000, seed=7)


@pytest.mark.timeout(600)
def test_four_senders_at_once(tmp_path: Path) -> None:
    files = derive(ct_series(), tmp_path / "src", 200, size=128, prefix="ct", studies=4)
    sets = [files[i::4] for i in range(4)]
    with NodeProcess(tmp_path / "edge", name="conc", workers=2,
                     allow_ae=[f"SENDER{i}" for i in range(4)]) as node:
        procs = _start_senders(sets, node.dicom_port, tmp_path)
        acked: set[Path] = set()
        for p, log, _ in procs:
            assert p.wait(timeout=600) == 0
            acked |= _acknowledged(log)
        assert acked == set(files)
        rows = node.stored()
        assert len(rows) == 200
        assert {r["calling_ae"] for r in rows} == {f"SENDER{i}" for i in range(4)}
        assert node.cli("store", "verify").returncode == 0


@pytest.mark.timeout(600)
def test_disk_full_answers_out_of_resources_and_recovers(tmp_path: Path) -> None:
    """A real ENOSPC: the store lives on an 8 MiB tmpfs in a private mount namespace."""
    small = tmp_path / "small"
    small.mkdir()
    files = derive(ct_series(), tmp_path / "src", 12, prefix="ct")  # ~530 kB each
    wrap = ["unshare", "-m", "--", "sh", "-c",
            'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"', str(small)]
    node = NodeProcess(tmp_path / "edge", name="full", workers=1, allow_ae=["STORESCU"],
                       extra_toml=f'[store]\npath = "{small}"\nmin_free_bytes = 0\n', wrap=wrap)
    node.start()
    assert node.proc is not None
    inside = ["nsenter", "--target", str(node.proc.pid), "--mount", "--"]
    try:
        # Take most of the space with a filler file we can free later.
        subprocess.run([*inside, "dd", "if=/dev/zero", f"of={small}/filler", "bs=1M",
                        "count=5"], check=True, capture_output=True)
        r = storescu(files, node.dicom_port)
        assert r.failed, "the tmpfs should have filled up"
        assert any("OutOfResources" in why for why in r.failed.values()), r.failed
        assert "0xA700" in node.log_tail(200)

        def stored() -> list[str]:
            out = subprocess.run([*inside, *fenji_cmd(), "store", "ls", "--json", "--config",
                                  str(node.config)], capture_output=True, text=True, check=True)
            return out.stdout.splitlines()

        assert len(stored()) == len(r.sent)  # what was acknowledged, nothing more
        subprocess.run([*inside, "rm", f"{small}/filler"], check=True)
        again = storescu(list(r.failed), node.dicom_port)
        assert set(again.sent) == set(r.failed), again.failed  # resumed by itself
        assert len(stored()) == len(files)
        verify = subprocess.run([*inside, *fenji_cmd(), "store", "verify", "--config",
                                 str(node.config)], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    finally:
        node.stop()
