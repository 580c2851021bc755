"""The node's own sender: `fenji case send` at the edge ends as a received case
at the center, preview first, with a verified receipt kept at the edge."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from _data import DICOM_DIR, ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(300)


def _wait(pred, timeout_s: float = 120.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_case_send_delivers_through_the_outbox(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    with edge, center:
        files = ct_series() + [DICOM_DIR / "ecg" / "waveform_ecg_12lead.dcm"]
        assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
        ct_study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        ecg_study = str(pydicom.dcmread(files[-1], stop_before_pixels=True).StudyInstanceUID)
        sent = []
        for study, prio in ((ct_study, "stat"), (ecg_study, "urgent")):
            out = edge.cli("case", "send", study, "--priority", prio, "--operator", "tech",
                           "--json")
            sent.append(json.loads(out.stdout))

        def arrived() -> bool:
            rows = [json.loads(ln) for ln in center.cli("case", "ls", "--json").stdout
                    .splitlines() if ln.strip()]
            return {c["case_id"] for c in sent} <= {r["case_id"] for r in rows
                                                     if r["state"] == "received"}

        assert _wait(arrived), edge.log_tail(30)
        at_edge = {r["sop_instance_uid"]: r["sha256"] for r in edge.stored()}
        at_center = {r["sop_instance_uid"]: r["sha256"] for r in center.stored()}
        assert at_center == at_edge
        jobs = [json.loads(ln) for ln in edge.cli("queue", "ls", "--json").stdout.splitlines()]
        assert jobs and all(j["state"] == "done" for j in jobs)
        # The CT's preview ahead of its full bundle; the ECG, small, carries its strip
        # inside its one bundle (config.PREVIEW_INLINE_MAX_RAW_BYTES).
        assert len(jobs) == 3
        for c in sent:
            shown = json.loads(edge.cli("case", "show", c["case_id"], "--json").stdout)
            assert shown["state"] == "delivered" and shown["receipt_signer"] == "center"
        previews = list((center.directory / "store" / "previews").glob("*/*.prev"))
        assert len(previews) == 2  # CT key image and ECG strip
        assert "outcome=delivered" in edge.log_tail(200)


def test_a_dead_lettered_bundle_is_an_audit_event(tmp_path: Path) -> None:
    from fenji.gateway import config as config_mod
    from fenji.gateway.node import open_store
    from fenji.routing import outbox_db

    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    with edge:
        store = open_store(config_mod.load(edge.config, env={}))
        try:  # a job whose bundle file is gone (a disk replaced, a folder wiped)
            outbox_db.enqueue(store, "gone-bundle", "case-x", "center", 2, 1000, time.time())
        finally:
            store.close()

        def dead() -> list[dict]:  # type: ignore[type-arg]
            return [e for e in json.loads(edge.cli("audit", "ls", "--json").stdout)
                    if e["kind"] == "dead_lettered"]

        assert _wait(lambda: bool(dead())), edge.log_tail(30)
        (event,) = dead()
        assert event["object"] == "gone-bundle" and "missing" in json.dumps(event)
        assert edge.cli("audit", "verify").returncode == 0
