"""A reader's viewer stores its own SR at the center: it becomes the signed report.

Real clients: ``dicomweb-client`` STOW-RS as the reader's token, and DCMTK
``storescu`` from a reading workstation whose AE title is mapped to the reader
in ``[[remote_aes]]``.  A refused report (not claimed, another service's
reader) is a failure status naming why, and nothing of it is stored.  The
signed report travels back and verifies at the edge.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from _data import ct_series
from _viewer import viewer_sr_dataset
from _wait import until
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, free_port

pytestmark = pytest.mark.timeout(600)


def _second_study(src: list[Path], out: Path) -> list[Path]:
    """The same slices as another study (new study, series and instance UIDs)."""
    out.mkdir()
    study, series = generate_uid(), generate_uid()
    paths = []
    for i, p in enumerate(src):
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.AccessionNumber = "P2", "A2"
        paths.append(out / f"b{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _instance_at(node: NodeProcess, sop: str) -> bool:
    con = sqlite3.connect(f"file:{node.directory / 'store' / 'index.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?",
                           (sop,)).fetchone() is not None
    finally:
        con.close()


def _api(node: NodeProcess, method: str, path: str, user: str,
         body: Any = None) -> tuple[int, Any]:
    r = requests.request(method, node.http_url + path, headers=node.auth(user),
                         json=body, timeout=60)
    return r.status_code, r.json()


def test_viewer_sr_over_stow_and_c_store_is_the_signed_report(tmp_path: Path) -> None:
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       users={"tech": "technician", "dr.ma": "physician"})
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1)
    center.add_user("dr.wang", "reader", services=("imaging",))
    center.add_user("dr.ecg", "reader", services=("ecg",))
    center.enable_web()
    with open(center.config, "a") as fh:
        for ae, reader in (("READWS", "dr.wang"), ("ECGWS", "dr.ecg")):
            fh.write(f'\n[[remote_aes]]\nae_title = "{ae}"\nhost = "127.0.0.1"\n'
                     f'port = {free_port()}\nreader = "{reader}"\n')
    edge.add_peer(center, default=True)
    center.add_peer(edge, default=True)
    files_a = ct_series()[:3]
    files_b = _second_study(ct_series()[3:5], tmp_path / "b")
    studies = [str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID)
               for f in (files_a, files_b)]

    with edge, center:
        pushed = storescu([*files_a, *files_b], edge.dicom_port, calling="CT1")
        assert not pushed.failed, pushed.failed
        cases = []
        for study in studies:
            s, case = _api(edge, "POST", "/api/cases", "tech", {
                "study_instance_uid": study, "priority": "stat",
                "requesting_physician": "Dr. Ma", "clinical_question": "bleed?"})
            assert s == 201, case
            cases.append(case["case_id"])

        def on_worklist() -> Any:
            s, rows = _api(center, "GET", "/api/worklist", "dr.wang")
            return s == 200 and {r["case_id"] for r in rows} >= set(cases)

        until(on_worklist, 180, "both cases on the center's worklist")
        client = DICOMwebClient(center.web_url + "/dicom-web", headers=center.auth("dr.wang"))

        # -- STOW-RS: refused before the claim, nothing stored; signed after it.
        early = viewer_sr_dataset(studies[0], "STOW before claim")
        with pytest.raises(requests.HTTPError, match="409"):
            client.store_instances([early])
        assert not _instance_at(center, str(early.SOPInstanceUID))
        assert _api(center, "POST", f"/api/worklist/{cases[0]}/claim", "dr.wang", {})[0] == 200
        sr = viewer_sr_dataset(studies[0], "左侧额叶挫伤 (STOW)", "Contusion.")
        res = client.store_instances([sr])
        assert "FailedSOPSequence" not in res, res
        assert res.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr.SOPInstanceUID
        assert _instance_at(center, str(sr.SOPInstanceUID))  # the viewer's own object kept

        # -- C-STORE from reading workstations (the AE is the reader).
        sr_b = viewer_sr_dataset(studies[1], "No bleed (C-STORE)", "Normal.")
        sr_path = tmp_path / "sr_b.dcm"
        sr_b.save_as(sr_path, enforce_file_format=True)
        wrong = storescu([sr_path], center.dicom_port, calling="ECGWS", called="FENJI")
        assert sr_path in wrong.failed, wrong.output  # an ECG reader: not authorized
        early_b = storescu([sr_path], center.dicom_port, calling="READWS")
        assert sr_path in early_b.failed, early_b.output  # not claimed yet
        assert not _instance_at(center, str(sr_b.SOPInstanceUID))
        log = center.log_path.read_text(errors="replace")
        assert "0x0124" in log and "not 'imaging'" in log.replace('"', "'")
        assert "0xC012" in log and "claim it first" in log
        assert _api(center, "POST", f"/api/worklist/{cases[1]}/claim", "dr.wang", {})[0] == 200
        ok = storescu([sr_path], center.dicom_port, calling="READWS")
        assert not ok.failed, ok.output
        # An AE title is a label, not a credential: what came by DICOM is a draft,
        # unsigned, until dr.wang confirms it with her own token (issue 17, finding 1).
        s, shown = _api(center, "GET", f"/api/cases/{cases[1]}", "dr.wang")
        assert s == 200 and not shown.get("reports"), shown
        s, drafts = _api(center, "GET", f"/api/cases/{cases[1]}/drafts", "dr.wang")
        assert s == 200 and [d["sop_instance_uid"] for d in drafts] == [str(sr_b.SOPInstanceUID)]
        assert drafts[0]["calling_ae"] == "READWS" and drafts[0]["report_id"] is None
        confirm = f"/api/cases/{cases[1]}/drafts/{sr_b.SOPInstanceUID}/confirm"
        assert _api(center, "POST", confirm, "dr.ecg", {})[0] == 403  # someone else's draft
        s, signed = _api(center, "POST", confirm, "dr.wang", {})
        assert s == 201 and signed["reader"] == "dr.wang", signed

        # Both cases are reported at the center, by dr.wang.
        for case_id in cases:
            s, shown = _api(center, "GET", f"/api/cases/{case_id}", "dr.wang")
            assert s == 200 and shown["reports"][0]["reader"] == "dr.wang", shown

        # ... and the signed reports come back to the edge and verify there.
        expected = {cases[0]: "左侧额叶挫伤 (STOW)", cases[1]: "No bleed (C-STORE)"}

        def back(case_id: str) -> Any:
            s, got = _api(edge, "GET", f"/api/cases/{case_id}", "dr.ma")
            reps = got.get("reports", []) if s == 200 else []
            return reps[0] if reps and reps[0].get("received_at") else None

        for case_id, findings in expected.items():
            rep = until(lambda c=case_id: back(c), 180, f"the report of {case_id} at the edge")
            assert rep["findings"] == findings and rep["reader"] == "dr.wang"
            v = edge.cli("report", "verify", "--case", case_id, "--json", check=False)
            assert v.returncode == 0, v.stdout + v.stderr
            checked = [json.loads(line) for line in v.stdout.splitlines() if line.strip()]
            assert checked and all(c["ok"] for c in checked), checked
        for node in (edge, center):
            assert node.cli("audit", "verify", check=False).returncode == 0
