"""The quality gate end to end: a broken series from storescu is held with a
reason, overridden by a named physician, and arrives at the center with the
sending hospital's signed attestation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
from _data import ct_series

from fenji.gateway.cases import gate as qg
from fenji.gateway.keys import load_public
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.synth import derive

pytestmark = pytest.mark.timeout(300)


def test_held_explained_overridden_attested(tmp_path: Path) -> None:
    files = derive(ct_series(), tmp_path / "ct", 28, prefix="ct")
    ds = pydicom.dcmread(files[16])
    arr = ds.pixel_array.copy()
    arr[:] = arr.min()  # slice 17 came out blank
    ds.PixelData = arr.tobytes()
    ds.save_as(files[16])
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1)
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    center.add_peer(edge)
    with edge, center:
        assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
        study = str(ds.StudyInstanceUID)
        held = edge.cli("case", "send", study, "--priority", "urgent", "--operator",
                        "technician Zhang", "--json", check=False)
        assert held.returncode == 3, held.stderr
        assert "HELD" in held.stderr and "blank" in held.stderr
        case_id = json.loads(held.stdout)["case_id"]
        shown = edge.cli("quality", "show", case_id)
        assert "unacceptable" in shown.stdout and "held until" in shown.stdout
        assert edge.cli("queue", "ls", "--json").stdout.strip() == ""  # nothing sent
        ok = edge.cli("case", "override", case_id, "--operator", "Dr. Li", "--reason",
                      "slice 17 blank, clinical question answerable")
        assert ok.returncode == 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = [json.loads(x) for x in center.cli("case", "ls", "--json").stdout
                    .splitlines() if x.strip()]
            if any(r["case_id"] == case_id and r["state"] == "received" for r in rows):
                break
            time.sleep(0.3)
        q = json.loads(center.cli("quality", "show", case_id, "--json").stdout)
        att = q["attestation"]
        assert att["operator"] == "Dr. Li" and att["override"]["reason"].startswith("slice 17")
        assert att["node"] == "edge" and any("blank" in r for r in att["reasons"])
        assert qg.verify_attestation(att, load_public(edge.directory / "keys" / "node.pub"))
        assert len(center.stored()) == len(files)


def test_held_case_drops_the_bad_instance_and_releases_the_rest(tmp_path: Path) -> None:
    files = derive(ct_series()[:6], tmp_path / "ct", 6, prefix="ct")
    ds = pydicom.dcmread(files[3])
    arr = ds.pixel_array.copy()
    arr[:] = arr.min()  # instance 4 came out blank
    ds.PixelData = arr.tobytes()
    ds.save_as(files[3])
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       users={"tech": "technician"})
    center = NodeProcess(tmp_path / "center", name="center", role="center", workers=1)
    edge.add_peer(center, default=True)
    with edge:
        assert len(storescu(files, edge.dicom_port, calling="CT1").sent) == len(files)
        study = str(ds.StudyInstanceUID)
        held = edge.cli("case", "send", study, "--operator", "technician Zhang", "--json",
                        check=False)
        assert held.returncode == 3 and "exclude it" in held.stderr, held.stderr
        case_id = json.loads(held.stdout)["case_id"]
        # Resending the corrected slice under the same UID is refused, as it must be; the
        # message says what works.
        bad = edge.cli("case", "exclude", case_id[:8], str(ds.InstanceNumber), "--operator",
                       "technician Zhang", "--reason", "slice blank, patient gone home",
                       "--json", check=False)
        assert bad.returncode == 0, bad.stderr
        out = json.loads(bad.stdout)
        assert out["excluded"] == str(ds.SOPInstanceUID) and out["remaining"] == len(files) - 1
        sent = edge.cli("case", "send", study, "--operator", "technician Zhang", "--json",
                        check=False)
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout.splitlines()[-1])["instances"] == len(files) - 1
        events = json.loads(edge.cli("audit", "ls", "--json").stdout)
        excluded = [e for e in events if e["kind"] == "excluded"]
        assert len(excluded) == 1 and excluded[0]["actor"] == "technician Zhang"
        assert "patient gone home" in json.dumps(excluded[0])
        assert edge.cli("audit", "verify").returncode == 0
        again = edge.cli("case", "exclude", case_id, str(ds.SOPInstanceUID), "--operator", "x",
                         "--reason", "y", check=False)
        assert again.returncode == 2 and "only a held case" in again.stderr
        assert len(edge.stored()) == len(files)  # nothing acknowledged is ever lost
