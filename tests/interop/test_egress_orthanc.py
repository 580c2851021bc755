"""A center hands received cases on to a real Orthanc: REST, C-STORE and STOW-RS."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from _data import ct_series

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, OrthancProcess

pytestmark = pytest.mark.timeout(600)


def test_cases_arrive_in_orthanc_complete_by_all_three_paths(tmp_path: Path) -> None:
    with OrthancProcess(tmp_path / "orthanc") as orthanc:
        egress = (
            f'\n[[egress]]\nname = "pacs-rest"\nkind = "orthanc"\nurl = "{orthanc.url}"\n'
            f'\n[[egress]]\nname = "pacs-dimse"\nkind = "dimse"\nhost = "127.0.0.1"\n'
            f'port = {orthanc.dicom_port}\nae_title = "{orthanc.aet}"\n'
            f'\n[[egress]]\nname = "pacs-stow"\nkind = "stow"\n'
            f'url = "{orthanc.url}/dicom-web"\n')
        edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
        center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
        with open(center.config, "a") as fh:
            fh.write(egress)
        edge.add_peer(center, default=True)
        center.add_peer(edge)
        with edge, center:
            files = ct_series()[:12]
            storescu(files, edge.dicom_port, calling="CT1")
            study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            edge.cli("case", "send", study, "--no-gate")
            deadline = time.monotonic() + 180
            jobs: list[dict] = []  # type: ignore[type-arg]
            while time.monotonic() < deadline:
                jobs = [json.loads(x) for x in center.cli("queue", "ls", "--json").stdout
                        .splitlines() if x.strip()]
                if len(jobs) == 3 and all(j["state"] == "done" for j in jobs):
                    break
                time.sleep(0.3)
            assert sorted(j["destination"] for j in jobs) == ["pacs-dimse", "pacs-rest",
                                                                "pacs-stow"]
            assert all(j["state"] == "done" for j in jobs), jobs
            (sid,) = orthanc.get("/studies")  # type: ignore[misc]
            study_info = orthanc.get(f"/studies/{sid}")
            assert study_info["MainDicomTags"]["StudyInstanceUID"] == study  # type: ignore[index]
            instances = orthanc.get(f"/studies/{sid}/instances")
            assert len(instances) == len(files)  # type: ignore[arg-type]
            # The data set bytes are exactly what the modality sent to the edge
            # (Orthanc may rewrite the File Meta header of what it stores).
            at_edge = {r["sop_instance_uid"]: r["dataset_sha256"] for r in edge.stored()}
            import hashlib
            import urllib.request

            from fenji.gateway.dicom.validate import split_part10

            for inst in instances:  # type: ignore[union-attr]
                with urllib.request.urlopen(f"{orthanc.url}/instances/{inst['ID']}/file") as r:
                    data = r.read()
                _, off = split_part10(data)
                uid = inst["MainDicomTags"]["SOPInstanceUID"]
                assert hashlib.sha256(data[off:]).hexdigest() == at_edge[uid], uid
