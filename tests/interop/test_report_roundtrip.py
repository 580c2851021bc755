"""A case goes up, a reader signs a report at the center, the report comes back down.

Real processes only: two `fenji node`s, DCMTK storescu pushing the study,
emulated 3G links both ways, a SIGKILL of the center right after the reader
signed (the report is then only in the center's durable outbox), a DCMTK
storescp as the edge hospital's PACS, and the CLI commands an operator runs.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _data import ct_series
from _tools import call
from _viewer import viewer_sr
from _wait import until

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.demo import Link
from fenji.gateway.lab.harness import NodeProcess, free_port

pytestmark = pytest.mark.timeout(600)


def _study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture()
def nodes(tmp_path: Path):  # type: ignore[no-untyped-def]
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(["/usr/bin/storescp", "-aet", "HISPACS", "-od", str(pacs_dir),
                             "--accept-all", str(pacs_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    hook_out = tmp_path / "critical.txt"
    edge = NodeProcess(tmp_path / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       users={"tech": "technician", "dr.ma": "physician"})
    with open(edge.config, "a") as fh:
        fh.write(f'\n[reports]\ndeliver_to = "his-pacs"\n'
                 f'critical_hook = "echo $FENJI_CASE_ID $FENJI_REPORT_ID >> {hook_out}"\n'
                 f'\n[[egress]]\nname = "his-pacs"\nkind = "dimse"\nhost = "127.0.0.1"\n'
                 f'port = {pacs_port}\nae_title = "HISPACS"\n')
    center = NodeProcess(tmp_path / "center", name="center", role="center", allow_ae=["*"],
                         workers=1, users={"tech2": "technician", "ops": "operator"})
    center.add_user("dr.wang", "reader", services=("imaging",),
                     display_name="王医生 (Dr. Wang)")
    center.add_user("dr.ecg", "reader", services=("ecg",))
    up = Link("3g", center.http_port, 11, tmp_path / "up.log")
    down = Link("3g", edge.http_port, 12, tmp_path / "down.log")
    edge.add_peer(center, default=True, url=f"http://127.0.0.1:{up.port}")
    center.add_peer(edge, default=True, url=f"http://127.0.0.1:{down.port}")
    try:
        with edge, center:
            yield edge, center, pacs_dir, hook_out
    finally:
        up.stop()
        down.stop()
        pacs.terminate()
        pacs.wait(timeout=20)


def test_report_round_trip_with_center_kill(nodes) -> None:  # type: ignore[no-untyped-def]
    edge, center, pacs_dir, hook_out = nodes
    files = ct_series()[:4]
    pushed = storescu(files, edge.dicom_port, calling="CT1")
    assert len(pushed.sent) == len(files)
    study = _study_of(files[0])
    # The node's first release may compile Numba kernels (53 s seen on a loaded machine
    # whose kernel cache had just been invalidated): wait for the answer, generously.
    status, case = call("POST", edge.http_url + "/api/cases", edge.auth("tech"), {
        "study_instance_uid": study, "priority": "stat", "clinical_question": "bleed?",
        "requesting_physician": "Dr. Ma"}, timeout_s=600)
    assert status == 201, case
    case_id = case["case_id"]
    c = center.http_url

    # Anonymous requests read nothing; the worklist is for readers and operators.
    assert call("GET", c + "/api/worklist")[0] == 401
    assert call("GET", c + "/api/cases")[0] == 401
    assert call("GET", c + "/api/worklist", {"Authorization": "Bearer wrong"})[0] == 401
    assert call("GET", c + "/api/worklist", center.auth("tech2"))[0] == 403

    def on_worklist() -> Any:
        s, rows = call("GET", c + "/api/worklist", center.auth("dr.wang"))
        return [r for r in rows if r["case_id"] == case_id] if s == 200 else None

    (item,) = until(on_worklist, 180, "the case on the center's worklist")
    assert item["priority"] == "stat" and item["state"] == "new"
    assert item["sending_hospital"] == "edge" and item["clinical_question"] == "bleed?"
    assert item["quality"]["verdict"] in ("acceptable", "acceptable_with_warnings")
    assert item["quality"]["attested_by"] == "tech"
    # An ECG reader does not see imaging cases, and cannot claim them.
    s, rows = call("GET", c + "/api/worklist", center.auth("dr.ecg"))
    assert s == 200 and all(r["case_id"] != case_id for r in rows)
    assert call("POST", c + f"/api/worklist/{case_id}/claim", center.auth("dr.ecg"), {})[0] \
        == 403

    report_body = {"findings": "右侧硬膜下血肿 8 mm。", "impression": "Acute SDH.",
                   "critical": True}
    # A technician cannot sign a report; a reader cannot override a quality hold;
    # nobody signs an unclaimed case.
    s, err = call("POST", c + f"/api/cases/{case_id}/reports", center.auth("tech2"),
                   report_body)
    assert s == 403 and "tech2" in err["message"]
    s, err = call("POST", c + f"/api/cases/{case_id}/override", center.auth("dr.wang"),
                   {"reason": "looks fine"})
    assert s == 403 and "reader" in err["message"]
    s, err = call("POST", c + f"/api/cases/{case_id}/reports", center.auth("dr.wang"),
                   report_body)
    assert s == 409 and "claim" in err["message"]

    s, claimed = call("POST", c + f"/api/worklist/{case_id}/claim", center.auth("dr.wang"), {})
    assert s == 200 and claimed["claimed_by"] == "dr.wang"
    s, rep = call("POST", c + f"/api/cases/{case_id}/reports", center.auth("dr.wang"),
                   report_body)
    assert s == 201, rep
    assert rep["version"] == 1 and rep["critical"]

    # The report is now only in the center's durable outbox: kill the center.
    center.kill()
    center.start()

    def report_at_edge(version: int) -> Any:
        s, got = call("GET", edge.http_url + f"/api/cases/{case_id}", edge.auth("dr.ma"))
        reps = got.get("reports", []) if s == 200 else []
        return got if reps and reps[0]["version"] == version and reps[0]["received_at"] \
            else None

    got = until(lambda: report_at_edge(1), 240, "the report back at the edge")
    assert got["state"] == "reported", got  # set only when the signatures verified
    assert got["critical"] is True
    (r1,) = got["reports"]
    assert r1["reader"] == "dr.wang" and r1["findings"] == report_body["findings"]
    # The critical hook ran with the case and report ids.
    hook = until(lambda: hook_out.exists() and hook_out.read_text().strip(), 120, "the hook")
    assert case_id in hook and r1["report_id"] in hook

    # The hospital PACS got the SR and the PDF.
    def pacs_files() -> Any:
        fs = list(pacs_dir.glob("*"))
        return fs if len(fs) >= 2 else None

    import pydicom

    at_pacs = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID)
               for p in until(pacs_files, 120, "SR and PDF at the PACS")}
    assert at_pacs == {"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.104.1"}

    # An amendment supersedes, with a reason; both versions are kept.
    s, err = call("POST", c + f"/api/cases/{case_id}/reports", center.auth("dr.wang"),
                   {"findings": "x", "impression": "y"})
    assert s == 409 and "reason" in err["message"]
    # (the amendment through the CLI at the center, as a reader at the console would)
    out = center.cli("report", "submit", case_id, "--reader", "dr.wang", "--findings",
                     report_body["findings"], "--impression",
                     "Acute SDH, 9 mm on re-measurement.", "--critical", "--amend-reason",
                     "thickness re-measured", "--json")
    rep2 = json.loads(out.stdout)
    assert rep2["version"] == 2 and rep2["supersedes"] == rep["report_id"]
    got = until(lambda: report_at_edge(2), 240, "the amendment at the edge")
    v2, v1 = got["reports"]
    assert v2["status"] == "current" and v1["status"] == "superseded"
    assert v2["amendment_reason"] == "thickness re-measured"

    # The physician acknowledges; the CLI shows it.
    ack = edge.cli("case", "ack", case_id, "--by", "dr.ma", "--json")
    assert json.loads(ack.stdout)["version"] == 2
    ack_version = 2
    shown = json.loads(edge.cli("case", "show", case_id, "--json").stdout)
    assert next(r for r in shown["reports"] if r["version"] == ack_version)[
        "acknowledged_by"] == "dr.ma"

    # The reader's viewer sends its own SR as a further amendment.
    req = urllib.request.Request(
        c + f"/api/cases/{case_id}/reports?amendment_reason=viewer+measurement&critical=true",
        data=viewer_sr(study, "硬膜下血肿 9 mm (viewer)"), method="POST",
        headers={**center.auth("dr.wang"), "Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback
        rep3 = json.loads(r.read())
    assert rep3["version"] == 3
    got = until(lambda: report_at_edge(3), 240, "the viewer's report at the edge")
    assert got["reports"][0]["findings"] == "硬膜下血肿 9 mm (viewer)"

    # The report verifies at the edge, against the manifest the edge sent.
    v = edge.cli("report", "verify", "--case", case_id, "--json", check=False)
    assert v.returncode == 0, v.stdout + v.stderr

    # The case's history across nodes, and both ledgers hold.
    hist = json.loads(edge.cli("audit", "ls", "--case", case_id, "--json").stdout)
    kinds = {(e["node"], e["kind"]) for e in hist}
    for expected in (("edge", "released"), ("edge", "sent"), ("edge", "receipt"),
                     ("center", "arrived"),
                     ("center", "claimed"), ("center", "reported"), ("center", "amended"),
                     ("edge", "report_arrived"), ("edge", "critical"),
                     ("edge", "delivered"), ("edge", "acknowledged")):
        assert expected in kinds, (expected, sorted(kinds))
    # "sent" once per bundle, however many attempts the links and the kill caused;
    # the center sent one report bundle per version.
    sent = [(e["node"], e["object"]) for e in hist if e["kind"] == "sent"]
    assert len(sent) == len(set(sent)), sent
    at_center = json.loads(center.cli("audit", "ls", "--case", case_id, "--json").stdout)
    sent = [e["object"] for e in at_center if e["kind"] == "sent" and e["node"] == "center"]
    assert len(sent) == len(set(sent)) == 3, sent
    for node in (edge, center):
        assert node.cli("audit", "verify", check=False).returncode == 0
    li = edge.cli("liability", case_id, "--json")
    doc = json.loads(li.stdout)
    assert "tech" in json.dumps(doc) and "dr.wang" in json.dumps(doc)
