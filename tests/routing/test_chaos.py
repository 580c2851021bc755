"""Chaos: cases from edge to center while both are SIGKILLed and the link resets.

Afterwards every instance is at the center exactly once with the SHA-256 it
had at ingest, and every case has a verified receipt at the edge.
`make test` runs a bounded version (FENJI_CHAOS_INSTANCES / FENJI_CHAOS_KILLS,
default 240 instances, 8 kills); `make test-long` the full one (1,000
instances, 50 kills).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from _data import DICOM_DIR, ct_series

from fenji.gateway.dcmtk import storescu
from fenji.gateway.harness import NodeProcess, fenji_cmd
from fenji.gateway.synth import derive


class _Link:
    def __init__(self, profile: str, target: int, seed: int, log: Path) -> None:
        self.logf = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fenji.routing.linkemu", "--profile", profile, "--listen",
             "127.0.0.1:0", "--target", f"127.0.0.1:{target}", "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=self.logf, text=True)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["listen"].rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.logf.close()


def _cases_at_center(center: NodeProcess) -> set[str]:
    out = center.cli("case", "ls", "--json", check=False).stdout
    return {json.loads(ln)["case_id"] for ln in out.splitlines()
            if ln.strip() and json.loads(ln)["state"] == "received"}


def _chaos(tmp_path: Path, n_instances: int, kills: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    n_studies = max(2, n_instances // 60)
    n_ecg = max(1, n_instances // 20)
    files = derive(ct_series(), tmp_path / "src", n_instances - n_ecg, size=96, prefix="ct",
                   studies=n_studies)
    files += derive([DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"], tmp_path / "ecg", n_ecg,
                    prefix="ecg", studies=n_ecg)
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    link = _Link("3g", center.http_port, seed, tmp_path / "link.log")
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{link.port}")
    center.add_peer(edge)
    try:
        edge.start()
        center.start()
        r = storescu(files, edge.dicom_port, calling="CT1")
        assert len(r.sent) == len(files), r.failed
        studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
                          for f in files})
        case_ids = []
        for i, study in enumerate(studies):
            prio = ("stat", "urgent", "routine")[i % 3]
            res = subprocess.run([*fenji_cmd(), "case", "send", study, "--priority", prio,
                                  "--no-gate", "--json", "--config", str(edge.config)],
                                 capture_output=True, text=True, timeout=300)
            assert res.returncode == 0, res.stderr
            case_ids.append(json.loads(res.stdout)["case_id"])
        done_kills = 0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if set(case_ids) <= _cases_at_center(center):
                break
            if done_kills < kills:
                time.sleep(rng.uniform(0.5, 3.0))
                victim = rng.choice([edge, center])
                victim.kill()
                done_kills += 1
                time.sleep(rng.uniform(0.0, 1.0))
                victim.start()
            else:
                time.sleep(1.0)
        assert set(case_ids) <= _cases_at_center(center), "not every case arrived in time"
        at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
        rows = center.stored()
        at_center = {r["sop_instance_uid"]: r["sha256"] for r in rows}
        assert len(rows) == len(at_center) == len(files)  # exactly once
        assert at_center == at_edge
        assert center.cli("store", "verify").returncode == 0
        for cid in case_ids:
            shown = json.loads(edge.cli("case", "show", cid).stdout)
            assert shown["receipt"] is not None and shown["receipt_signer"] == "center", cid
        return {"instances": len(files), "cases": len(case_ids), "kills": done_kills}
    finally:
        edge.stop()
        center.stop()
        link.stop()


@pytest.mark.timeout(1200)
def test_chaos_bounded(tmp_path: Path) -> None:
    n = int(os.environ.get("FENJI_CHAOS_INSTANCES", "240"))
    kills = int(os.environ.get("FENJI_CHAOS_KILLS", "8"))
    print(_chaos(tmp_path, n, kills, seed=4242))


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_chaos_full(tmp_path: Path) -> None:
    print(_chaos(tmp_path, 1000, 50, seed=20261123))
