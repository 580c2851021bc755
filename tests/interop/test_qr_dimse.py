"""C-FIND, C-MOVE and C-GET against a running center, with real DCMTK clients and Orthanc.

findscu (patient and study root, every level), movescu to a DCMTK storescp the
test starts, getscu, and a real Orthanc using fenji as a DICOM modality
through its own REST API.  Every retrieve is checked instance by instance.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _data import ct_series

from fenji.gateway import ledger
from fenji.gateway.dcmtk import storescu
from fenji.gateway.harness import NodeProcess, OrthancProcess, free_port

pytestmark = pytest.mark.timeout(300)


def _dataset_digest(path: Path) -> tuple[str, bytes]:
    ds = pydicom.dcmread(path)
    return str(ds.SOPInstanceUID), hashlib.sha256(ds.PixelData).digest()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("qr")
    scp_port, orthanc_dicom = free_port(), free_port()
    center = NodeProcess(base / "center", name="center", role="center",
                         allow_ae=["CT1", "VIEWER", "ORTHANC"], workers=1)
    with open(center.config, "a") as fh:
        fh.write(f'\n[[remote_aes]]\nae_title = "VIEWSCP"\nhost = "127.0.0.1"\nport = {scp_port}\n'
                 f'\n[[remote_aes]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n'
                 f"port = {orthanc_dicom}\n")
    out = base / "received"
    out.mkdir()
    scp = subprocess.Popen(["/usr/bin/storescp", "-aet", "VIEWSCP", "-od", str(out),
                            "--accept-all", str(scp_port)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        with center:
            files = ct_series()
            assert len(storescu(files, center.dicom_port, calling="CT1").sent) == len(files)
            yield {"center": center, "files": files, "out": out, "base": base,
                   "orthanc_dicom": orthanc_dicom}
    finally:
        scp.terminate()
        scp.wait(timeout=20)


def _find(center: NodeProcess, root: str, level: str, keys: list[str], tmp: Path,
          calling: str = "VIEWER") -> list[pydicom.Dataset]:
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("rsp*.dcm"):
        old.unlink()
    args = ["/usr/bin/findscu", root, "-aet", calling, "-aec", center.ae_title, "-X",
            "-od", str(tmp), "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    r = subprocess.run([*args, "127.0.0.1", str(center.dicom_port)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [pydicom.dcmread(p) for p in sorted(tmp.glob("rsp*.dcm"))]


def test_c_find_every_level_and_both_roots(env: dict[str, Any]) -> None:
    center, files, base = env["center"], env["files"], env["base"]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    name = str(first.PatientName)
    got = _find(center, "-S", "STUDY", [f"PatientName={name[:2]}*", "StudyInstanceUID",
                                       "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
                base / "f1")
    assert [str(d.StudyInstanceUID) for d in got] == [study]
    assert int(got[0].NumberOfStudyRelatedInstances) == len(files)
    assert "CT" in str(got[0].ModalitiesInStudy)
    # A date range around the study's date, and one that excludes it.
    d = str(first.StudyDate)
    assert len(_find(center, "-S", "STUDY", [f"StudyDate={d}-{d}", "StudyInstanceUID"],
                     base / "f2")) == 1
    assert _find(center, "-S", "STUDY", ["StudyDate=19000101-19000102", "StudyInstanceUID"],
                 base / "f3") == []
    # A UID list, series level.
    got = _find(center, "-S", "SERIES", [f"StudyInstanceUID={study}\\1.2.3.4",
                                        "SeriesInstanceUID", "Modality",
                                        "NumberOfSeriesRelatedInstances"], base / "f4")
    assert series in {str(x.SeriesInstanceUID) for x in got}
    # Image level in one series.
    got = _find(center, "-S", "IMAGE", [f"StudyInstanceUID={study}",
                                       f"SeriesInstanceUID={series}", "SOPInstanceUID",
                                       "InstanceNumber"], base / "f5")
    want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
            if str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) == series}
    assert {str(x.SOPInstanceUID) for x in got} == want
    # Patient root, PATIENT level.
    got = _find(center, "-P", "PATIENT", [f"PatientID={first.PatientID}", "PatientName",
                                         "NumberOfPatientRelatedStudies"], base / "f6")
    assert len(got) == 1 and int(got[0].NumberOfPatientRelatedStudies) >= 1
    # An AE that is not allow-listed gets nothing.
    r = subprocess.run(["/usr/bin/findscu", "-S", "-aet", "STRANGER", "-aec", center.ae_title,
                        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                        "127.0.0.1", str(center.dicom_port)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 or "Rejected" in (r.stdout + r.stderr)


def test_c_move_series_and_unknown_destination(env: dict[str, Any]) -> None:
    center, files, out = env["center"], env["files"], env["out"]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    series = str(first.SeriesInstanceUID)
    expect = dict(_dataset_digest(f) for f in files
                  if str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
                  == series)
    r = subprocess.run(["/usr/bin/movescu", "-S", "-aet", "VIEWER", "-aec", center.ae_title,
                        "-aem", "VIEWSCP", "-k", "QueryRetrieveLevel=SERIES",
                        "-k", f"StudyInstanceUID={first.StudyInstanceUID}",
                        "-k", f"SeriesInstanceUID={series}", "127.0.0.1",
                        str(center.dicom_port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    got: dict[str, bytes] = {}
    while time.monotonic() < deadline and len(got) < len(expect):
        got = dict(_dataset_digest(p) for p in out.iterdir() if p.is_file())
        time.sleep(0.2)
    assert {k: got.get(k) for k in expect} == expect  # every instance, pixel data equal
    r = subprocess.run(["/usr/bin/movescu", "-S", "-v", "-aet", "VIEWER", "-aec",
                        center.ae_title, "-aem", "NOWHERE", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={first.StudyInstanceUID}", "127.0.0.1",
                        str(center.dicom_port)], capture_output=True, text=True, timeout=60)
    assert "movedestinationunknown" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_c_get_study_and_audit(env: dict[str, Any]) -> None:
    center, files, base = env["center"], env["files"], env["base"]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    dest = base / "get"
    dest.mkdir()
    r = subprocess.run(["/usr/bin/getscu", "-S", "-aet", "VIEWER", "-aec", center.ae_title,
                        "-od", str(dest), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={first.StudyInstanceUID}", "127.0.0.1",
                        str(center.dicom_port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = dict(_dataset_digest(p) for p in dest.iterdir())
    assert got == dict(_dataset_digest(f) for f in files)
    from fenji.gateway.store import Store

    events = ledger.events(Store(center.directory / "store"), kind="opened")
    vias = {(e["actor"], e["detail"]["via"]) for e in events}
    assert {("VIEWER", "c-find"), ("VIEWER", "c-move"), ("VIEWER", "c-get")} <= vias
    assert all(e["object"] == str(first.StudyInstanceUID) for e in events
               if e["detail"]["via"] == "c-get")


def test_orthanc_queries_and_moves_from_fenji(env: dict[str, Any]) -> None:
    center, files, base = env["center"], env["files"], env["base"]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with OrthancProcess(base / "orthanc", dicom_port=env["orthanc_dicom"],
                        modalities={"fenji": [center.ae_title, "127.0.0.1",
                                              center.dicom_port]}) as o:
        def post(path: str, body: Any) -> Any:
            req = urllib.request.Request(o.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
            with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
                return json.loads(r.read() or b"null")

        q = post("/modalities/fenji/query", {"Level": "Study", "Query": {
            "PatientName": "*", "StudyInstanceUID": str(first.StudyInstanceUID)}})
        answers = o.get(f"/queries/{q['ID']}/answers")
        assert len(answers) == 1  # type: ignore[arg-type]
        post(f"/queries/{q['ID']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline:
            studies = o.get("/studies")
            if studies:
                n = len(o.get(f"/studies/{studies[0]}/instances"))  # type: ignore[index]
                if n == len(files):
                    break
            time.sleep(0.2)
        assert n == len(files)
