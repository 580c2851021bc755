"""STAT overtakes a large routine transfer at a chunk boundary."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from _data import DICOM_DIR, ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

pytestmark = pytest.mark.timeout(600)


def _state(node: NodeProcess, case_id: str) -> str | None:
    for ln in node.cli("case", "ls", "--json").stdout.splitlines():
        row = json.loads(ln)
        if row["case_id"] == case_id:
            return str(row["state"])
    return None


def test_stat_overtakes_routine(tmp_path: Path) -> None:
    big = derive(ct_series(), tmp_path / "big", 60, prefix="big")  # ~32 MB raw
    ecg = DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       extra_toml="[transfer]\nchunk_bytes = 65536\nmax_chunk_bytes = 131072\n")
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    profile = tmp_path / "slow.toml"
    profile.write_text("[link]\nrate_up_bps = 2000000\nrate_down_bps = 2000000\nrtt_ms = 100\n")
    link = subprocess.Popen([sys.executable, "-m", "fenji.routing.linkemu.proxy", "--profile",
                             str(profile), "--target", f"127.0.0.1:{center.http_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert link.stdout is not None
    port = int(json.loads(link.stdout.readline())["listen"].rsplit(":", 1)[1])
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{port}")
    center.add_peer(edge)
    try:
        with edge, center:
            storescu(big + [ecg], edge.dicom_port, calling="CT1")
            study = str(pydicom.dcmread(big[0], stop_before_pixels=True).StudyInstanceUID)
            routine = json.loads(edge.cli("case", "send", study, "--priority", "routine",
                                          "--no-gate", "--json").stdout)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # wait until the routine bundle is moving
                jobs = [json.loads(x) for x in edge.cli("queue", "ls", "--json").stdout
                        .splitlines()]
                if any(j["bytes_sent"] > 0 for j in jobs):
                    break
                time.sleep(0.2)
            ecg_study = str(pydicom.dcmread(ecg, stop_before_pixels=True).StudyInstanceUID)
            stat = json.loads(edge.cli("case", "send", ecg_study, "--priority", "stat",
                                       "--no-gate", "--json").stdout)
            seen_routine_unfinished = False
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if _state(center, stat["case_id"]) == "received":
                    seen_routine_unfinished = _state(center, routine["case_id"]) != "received"
                    break
                time.sleep(0.2)
            assert seen_routine_unfinished, "the STAT case should arrive before the routine one"
            assert "outcome=yielded" in edge.log_tail(400)
            while time.monotonic() < deadline and _state(center, routine["case_id"]) != \
                    "received":
                time.sleep(0.5)
            assert _state(center, routine["case_id"]) == "received"  # it resumed and finished
            assert len(center.stored()) == len(big) + 1
    finally:
        link.terminate()
        link.wait(timeout=20)
