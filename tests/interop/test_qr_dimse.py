"""C-FIND, C-MOVE and C-GET against a running center, with real DCMTK clients and Orthanc.

The center holds two patients: the CT head phantom series plus four re-encodings
of one of its slices (Implicit VR, Deflated, JPEG Lossless, RLE) in the same
series, and an MR EPI series.  findscu queries both information models at every
level; movescu moves to two DCMTK storescp instances the test starts (one
accepting every transfer syntax, one Implicit VR Little Endian only) and every
received data set is checked byte for byte against what the center stored;
getscu retrieves over its own association; a real Orthanc uses the center as a
DICOM modality through its REST API.  Every read is checked in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _data import DICOM_DIR, ct_series

from fenji.gateway.audit import ledger
from fenji.gateway.dicom.validate import split_part10
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess, OrthancProcess, free_port
from fenji.gateway.store.db import Store

pytestmark = pytest.mark.timeout(300)

CT_VARIANTS = ("ct_implicit_vr_le.dcm", "ct_deflated.dcm", "ct_jpeg_lossless_sv1.dcm",
               "ct_rle.dcm")
COMPRESSED = ("ct_jpeg_lossless_sv1.dcm", "ct_rle.dcm")
IMPLICIT = "1.2.840.10008.1.2"


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("qr")
    any_port, implicit_port, orthanc_dicom = free_port(), free_port(), free_port()
    center = NodeProcess(base / "center", name="center", role="center",
                         allow_ae=["CT1", "VIEWER", "ORTHANC"], workers=1)
    with open(center.config, "a") as fh:
        for ae, port in (("VIEWSCP", any_port), ("IMPLSCP", implicit_port),
                         ("ORTHANC", orthanc_dicom)):
            fh.write(f'\n[[remote_aes]]\nae_title = "{ae}"\nhost = "127.0.0.1"\n'
                     f"port = {port}\n")
    scps = []
    # +B: storescp writes the data set exactly as it arrived.
    for ae, port, options in (("VIEWSCP", any_port, ["--accept-all"]),
                              ("IMPLSCP", implicit_port, ["+xi"])):
        out = base / ae
        out.mkdir()
        scps.append(subprocess.Popen(["/usr/bin/storescp", "-aet", ae, "-od", str(out), "+B",
                                      *options, str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL))
    ct = ct_series() + [DICOM_DIR / "other" / n for n in CT_VARIANTS]
    mr = sorted((DICOM_DIR / "mr" / "ge_epi_axial").glob("MR_*.dcm"))
    try:
        with center:
            assert len(storescu(ct + mr, center.dicom_port, calling="CT1").sent) == len(ct + mr)
            store = Store(center.directory / "store")
            stored = {r["sop_instance_uid"]: r for r in store.query(
                "SELECT sop_instance_uid, dataset_sha256, transfer_syntax_uid FROM instances")}
            yield {"center": center, "base": base, "ct": ct, "mr": mr, "store": store,
                   "stored": stored, "ct0": _header(ct[0]), "mr0": _header(mr[0]),
                   "orthanc_dicom": orthanc_dicom}
    finally:
        for scp in scps:
            scp.terminate()
            scp.wait(timeout=20)


def _run(args: list[str], center: NodeProcess, timeout_s: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*args, "127.0.0.1", str(center.dicom_port)], capture_output=True,
                          text=True, timeout=timeout_s)


def _find(center: NodeProcess, root: str, level: str, keys: list[str], tmp: Path,
          calling: str = "VIEWER") -> list[pydicom.Dataset]:
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("rsp*.dcm"):
        old.unlink()
    args = ["/usr/bin/findscu", root, "-aet", calling, "-aec", center.ae_title, "-X",
            "-od", str(tmp), "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    r = _run(args, center, 60)
    assert r.returncode == 0, r.stdout + r.stderr
    return [pydicom.dcmread(p) for p in sorted(tmp.glob("rsp*.dcm"))]


def _final(output: str) -> dict[str, Any]:
    """The final C-MOVE/C-GET response as movescu/getscu -d print it."""
    tail = output[output.rfind("C-MOVE RSP") if "C-MOVE RSP" in output
                  else output.rfind("C-GET RSP"):]
    out: dict[str, Any] = {}
    for key, pattern in (("completed", r"Completed Suboperations\s*:\s*(\d+)"),
                         ("failed", r"Failed Suboperations\s*:\s*(\d+)"),
                         ("warning", r"Warning Suboperations\s*:\s*(\d+)"),
                         ("status", r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")):
        m = re.search(pattern, tail)
        out[key] = int(m.group(1), 16 if key == "status" else 10) if m else None
    m = re.search(r"\(0008,0058\) UI \[([^\]]*)\]", tail)
    out["failed_uids"] = set(m.group(1).split("\\")) if m and m.group(1) else set()
    m = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", tail)
    out["comment"] = m.group(1) if m else None
    return out


def _received(directory: Path) -> dict[str, tuple[str, str, bytes]]:
    """SOP Instance UID -> (transfer syntax, data set SHA-256, pixel data) of each file."""
    out = {}
    for p in directory.iterdir():
        data = p.read_bytes()
        meta, offset = split_part10(data)
        ds = pydicom.dcmread(p)
        out[str(ds.SOPInstanceUID)] = (meta["TransferSyntaxUID"],
                                       hashlib.sha256(data[offset:]).hexdigest(),
                                       bytes(ds.PixelData))
    return out


def _wait_files(directory: Path, n: int, deadline_s: float = 30) -> None:
    # storescp writes each file after answering its C-STORE.
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and len(list(directory.iterdir())) < n:
        time.sleep(0.1)


def _opened(env: dict[str, Any], via: str, actor: str = "VIEWER") -> list[dict[str, Any]]:
    return [e for e in ledger.events(env["store"], kind="opened")
            if e["actor"] == actor and e["detail"]["via"] == via]


def test_c_find_study_root_every_level(env: dict[str, Any]) -> None:
    center, base, ct0, mr0 = env["center"], env["base"], env["ct0"], env["mr0"]
    ct_study, mr_study = str(ct0.StudyInstanceUID), str(mr0.StudyInstanceUID)
    before = len(_opened(env, "c-find"))
    got = _find(center, "-S", "STUDY", ["PatientName=HE*", "PatientID", "StudyDate",
                                       "StudyID", "ModalitiesInStudy",
                                       "NumberOfStudyRelatedSeries",
                                       "NumberOfStudyRelatedInstances"], base / "s1")
    assert [str(d.StudyInstanceUID) for d in got] == [ct_study]
    d = got[0]
    assert (str(d.PatientID), str(d.StudyDate), str(d.StudyID)) == ("PLASTIC", "20150206",
                                                                    str(ct0.StudyID))
    assert str(d.ModalitiesInStudy) == "CT"
    assert (int(d.NumberOfStudyRelatedSeries), int(d.NumberOfStudyRelatedInstances)) == \
        (1, len(env["ct"]))
    # Universal name, both studies; a space where the name has "^" still matches.
    assert {str(x.StudyInstanceUID) for x in _find(
        center, "-S", "STUDY", ["PatientName=*", "StudyInstanceUID"], base / "s2")} == \
        {ct_study, mr_study}
    assert [str(x.PatientName) for x in _find(
        center, "-S", "STUDY", ["PatientName=Test Regression"], base / "s3")] == \
        ["Test^Regression"]
    # Date ranges: closed, open at either end, and one that matches nothing.
    for rng, want in (("20150101-20151231", [ct_study]), ("-20160101", [ct_study]),
                      ("20160101-", [mr_study]), ("19000101-19000102", [])):
        assert [str(x.StudyInstanceUID) for x in _find(
            center, "-S", "STUDY", [f"StudyDate={rng}", "StudyInstanceUID"],
            base / "s4")] == want, rng
    # A list of UIDs at SERIES level, with the counts.
    got = _find(center, "-S", "SERIES", [f"StudyInstanceUID={ct_study}\\{mr_study}\\1.2.3",
                                        "SeriesInstanceUID", "Modality",
                                        "NumberOfSeriesRelatedInstances"], base / "s5")
    assert {(str(x.Modality), int(x.NumberOfSeriesRelatedInstances)) for x in got} == \
        {("CT", len(env["ct"])), ("MR", len(env["mr"]))}
    # IMAGE level in one series: every instance, SOP class and number.
    got = _find(center, "-S", "IMAGE", [f"StudyInstanceUID={ct_study}",
                                       f"SeriesInstanceUID={ct0.SeriesInstanceUID}",
                                       "SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
                base / "s6")
    want = {str(_header(f).SOPInstanceUID) for f in env["ct"]}
    assert {str(x.SOPInstanceUID) for x in got} == want
    assert {str(x.SOPClassUID) for x in got} == {str(ct0.SOPClassUID)}
    assert sorted(int(x.InstanceNumber) for x in got)[:2] == [1, 2]
    # The C-FINDs with matches were audited, one event per study.
    events = _opened(env, "c-find")[before:]
    assert {e["object"] for e in events} == {ct_study, mr_study}
    assert all(e["role"] == "dicom-ae" and e["detail"]["from"] == "127.0.0.1"
               for e in events)


def test_c_find_patient_root_and_refusals(env: dict[str, Any]) -> None:
    center, base, ct0, mr0 = env["center"], env["base"], env["ct0"], env["mr0"]
    got = _find(center, "-P", "PATIENT", ["PatientName=*", "PatientID",
                                         "NumberOfPatientRelatedStudies",
                                         "NumberOfPatientRelatedInstances"], base / "p1")
    assert {(str(x.PatientID), int(x.NumberOfPatientRelatedStudies),
             int(x.NumberOfPatientRelatedInstances)) for x in got} == \
        {("PLASTIC", 1, len(env["ct"])), ("DEV", 1, len(env["mr"]))}
    events = _opened(env, "c-find")
    assert any(e["detail"]["level"] == "PATIENT" and e["object"] == str(mr0.StudyInstanceUID)
               for e in events)
    got = _find(center, "-P", "STUDY", ["PatientID=DEV", "StudyInstanceUID"], base / "p2")
    assert [str(x.StudyInstanceUID) for x in got] == [str(mr0.StudyInstanceUID)]
    got = _find(center, "-P", "SERIES", ["PatientID=DEV",
                                        f"StudyInstanceUID={mr0.StudyInstanceUID}",
                                        "SeriesInstanceUID"], base / "p3")
    assert [str(x.SeriesInstanceUID) for x in got] == [str(mr0.SeriesInstanceUID)]
    got = _find(center, "-P", "IMAGE", ["PatientID=PLASTIC",
                                       f"StudyInstanceUID={ct0.StudyInstanceUID}",
                                       f"SeriesInstanceUID={ct0.SeriesInstanceUID}",
                                       f"SOPInstanceUID={ct0.SOPInstanceUID}"], base / "p4")
    assert [str(x.SOPInstanceUID) for x in got] == [str(ct0.SOPInstanceUID)]
    # PATIENT level is not part of the study root model: 0xA900, no matches.
    r = _run(["/usr/bin/findscu", "-S", "-v", "-aet", "VIEWER", "-aec", center.ae_title,
              "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID"], center, 60)
    assert "a900" in (r.stdout + r.stderr).lower() or "DoesNotMatchSOPClass" in r.stdout + \
        r.stderr, r.stdout + r.stderr
    # An AE that is not allow-listed does not get an association at all.
    r = _run(["/usr/bin/findscu", "-S", "-aet", "STRANGER", "-aec", center.ae_title,
              "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"], center, 60)
    assert r.returncode != 0 and "rejected" in (r.stdout + r.stderr).lower()
    assert not [e for e in ledger.events(env["store"], kind="opened")
                if e["actor"] == "STRANGER"]


def _movescu(center: NodeProcess, dest: str, keys: list[str]) -> dict[str, Any]:
    args = ["/usr/bin/movescu", "-S", "-d", "-aet", "VIEWER", "-aec", center.ae_title,
            "-aem", dest]
    for k in keys:
        args += ["-k", k]
    r = _run(args, center)
    return _final(r.stdout + r.stderr)


def test_c_move_series_arrives_as_stored(env: dict[str, Any]) -> None:
    center, ct0, stored = env["center"], env["ct0"], env["stored"]
    out = env["base"] / "VIEWSCP"
    before = len(_opened(env, "c-move"))
    final = _movescu(center, "VIEWSCP", ["QueryRetrieveLevel=SERIES",
                                         f"StudyInstanceUID={ct0.StudyInstanceUID}",
                                         f"SeriesInstanceUID={ct0.SeriesInstanceUID}"])
    n = len(env["ct"])
    assert (final["status"], final["completed"], final["failed"]) == (0x0000, n, 0), final
    _wait_files(out, n)
    got = _received(out)
    # Every instance, in the transfer syntax it was stored in, data set byte-identical
    # (compressed and deflated ones included: the destination accepted them).
    assert {uid: (ts, sha) for uid, (ts, sha, _) in got.items()} == \
        {uid: (stored[uid]["transfer_syntax_uid"], stored[uid]["dataset_sha256"])
         for uid in got}
    assert set(got) == {str(_header(f).SOPInstanceUID) for f in env["ct"]}
    events = _opened(env, "c-move")[before:]
    assert [(e["object"], e["detail"]["move_destination"], e["detail"]["instances"],
             e["detail"]["level"]) for e in events] == \
        [(str(ct0.StudyInstanceUID), "VIEWSCP", n, "SERIES")]


def test_c_move_study_transcodes_uncompressed_and_reports_failures(env: dict[str, Any]) -> None:
    center, ct0 = env["center"], env["ct0"]
    out = env["base"] / "IMPLSCP"
    final = _movescu(center, "IMPLSCP", ["QueryRetrieveLevel=STUDY",
                                         f"StudyInstanceUID={ct0.StudyInstanceUID}"])
    compressed = {str(_header(DICOM_DIR / "other" / n).SOPInstanceUID) for n in COMPRESSED}
    n = len(env["ct"])
    # The destination takes Implicit VR LE only: Explicit VR and Deflated data sets
    # are re-encoded, compressed pixel data is not decoded, so those two fail.
    assert (final["status"], final["completed"], final["failed"]) == \
        (0xB000, n - len(compressed), len(compressed)), final
    assert final["failed_uids"] == compressed
    _wait_files(out, n - len(compressed))
    got = _received(out)
    source = {str(_header(f).SOPInstanceUID): bytes(pydicom.dcmread(f).PixelData)
              for f in env["ct"] if f.name not in COMPRESSED}
    assert {uid: (ts, pixels) for uid, (ts, _, pixels) in got.items()} == \
        {uid: (IMPLICIT, pixels) for uid, pixels in source.items()}
    # The one stored as Implicit VR arrives byte-identical.
    implicit = str(_header(DICOM_DIR / "other" / "ct_implicit_vr_le.dcm").SOPInstanceUID)
    assert got[implicit][1] == env["stored"][implicit]["dataset_sha256"]


def test_c_move_refusals(env: dict[str, Any]) -> None:
    center, ct0 = env["center"], env["ct0"]
    final = _movescu(center, "NOWHERE", ["QueryRetrieveLevel=STUDY",
                                         f"StudyInstanceUID={ct0.StudyInstanceUID}"])
    assert final["status"] == 0xA801 and "NOWHERE" in (final["comment"] or ""), final
    # A retrieve without its level's unique key does not widen into "everything".
    final = _movescu(center, "VIEWSCP", ["QueryRetrieveLevel=STUDY", "PatientName=*"])
    assert final["status"] == 0xA900 and "StudyInstanceUID" in (final["comment"] or ""), final
    assert not [e for e in _opened(env, "c-move") if e["detail"].get("move_destination")
                == "NOWHERE"]


def test_c_get_study(env: dict[str, Any]) -> None:
    center, base, mr0, ct0 = env["center"], env["base"], env["mr0"], env["ct0"]
    before = len(_opened(env, "c-get"))
    for study, dest in ((mr0.StudyInstanceUID, base / "get-mr"),
                        (ct0.StudyInstanceUID, base / "get-ct")):
        dest.mkdir()
        r = _run(["/usr/bin/getscu", "-S", "-d", "+B", "-aet", "VIEWER", "-aec", center.ae_title,
                  "-od", str(dest), "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study}"], center)
        final = _final(r.stdout + r.stderr)
        if study == mr0.StudyInstanceUID:
            assert (final["status"], final["completed"]) == (0x0000, len(env["mr"])), final
            got = _received(dest)
            assert {u: sha for u, (_, sha, _) in got.items()} == \
                {u: env["stored"][u]["dataset_sha256"] for u in got}
            assert len(got) == len(env["mr"])
        else:
            # getscu proposes uncompressed syntaxes only: the JPEG and RLE instances
            # fail (0xB000, counted), every other one arrives.
            n = len(env["ct"])
            assert (final["status"], final["completed"], final["failed"]) == \
                (0xB000, n - len(COMPRESSED), len(COMPRESSED)), final
            got = _received(dest)
            assert len(got) == n - len(COMPRESSED)
    events = _opened(env, "c-get")[before:]
    assert [(e["object"], e["detail"]["instances"]) for e in events] == \
        [(str(mr0.StudyInstanceUID), len(env["mr"])),
         (str(ct0.StudyInstanceUID), len(env["ct"]))]


def test_orthanc_queries_and_moves_from_fenji(env: dict[str, Any]) -> None:
    center, base, ct0 = env["center"], env["base"], env["ct0"]
    with OrthancProcess(base / "orthanc", dicom_port=env["orthanc_dicom"],
                        modalities={"fenji": [center.ae_title, "127.0.0.1",
                                              center.dicom_port]}) as o:
        def post(path: str, body: Any) -> Any:
            req = urllib.request.Request(o.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
            with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
                return json.loads(r.read() or b"null")

        q = post("/modalities/fenji/query", {"Level": "Study", "Query": {"PatientName": "*"}})
        assert len(o.get(f"/queries/{q['ID']}/answers")) == 2  # type: ignore[arg-type]
        q = post("/modalities/fenji/query", {"Level": "Study", "Query": {
            "PatientName": "HE*", "StudyInstanceUID": str(ct0.StudyInstanceUID)}})
        assert len(o.get(f"/queries/{q['ID']}/answers")) == 1  # type: ignore[arg-type]
        post(f"/queries/{q['ID']}/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline:
            studies = o.get("/studies")
            if studies:
                n = len(o.get(f"/studies/{studies[0]}/instances"))  # type: ignore[index]
                if n == len(env["ct"]):
                    break
            time.sleep(0.2)
        assert n == len(env["ct"])  # every transfer syntax, compressed ones included
    moves = _opened(env, "c-move", actor="ORTHANC")
    assert [(e["object"], e["detail"]["move_destination"]) for e in moves] == \
        [(str(ct0.StudyInstanceUID), "ORTHANC")]
    assert _opened(env, "c-find", actor="ORTHANC")
