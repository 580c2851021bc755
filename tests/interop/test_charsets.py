"""Every character set end to end, through real processes only.

Studies made at test time from the shared CT in each character set
(tests/_charsets.py) go from DCMTK storescu into an edge node, travel as
bundles to a reading center, and are read there the ways a reader reads them:
DCMTK findscu (C-FIND, each response decoded with its own declared character
set), dicomweb-client (QIDO-RS and WADO-RS metadata), the worklist, and a
signed report whose PDF, fetched back by WADO-RS, is checked with pdftotext.
The edge sets ``dicom.default_character_set = "GB18030"`` for the study that
declares none (the studies that do declare one must not be touched by it); the
center sets none and reads that study as the edge did, from the bundle's
manifest.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _charsets import BY_KEY, CASES, Case, make_study
from _tools import call, pdftotext
from _wait import until
from dicomweb_client.api import DICOMwebClient

from fenji.gateway.dicom.charset import pn_display
from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.store.db import Store

pytestmark = pytest.mark.timeout(600)
IDS = [c.key for c in CASES]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("charsets")
    default = '[dicom]\ndefault_character_set = "GB18030"\n'
    edge = NodeProcess(base / "edge", name="edge", allow_ae=["CT1"], workers=1,
                       extra_toml=default, users={"tech": "technician"})
    center = NodeProcess(base / "center", name="center", role="center", allow_ae=["*"],
                         workers=1)
    center.add_user("dr.wang", "reader", services=("imaging",),
                    display_name="王医生 (Dr. Wang)")
    edge.add_peer(center, default=True)
    center.add_peer(edge, default=True)
    files = {c.key: make_study(c, base / "studies" / c.key) for c in CASES}
    studies = {k: str(pydicom.dcmread(v[0], stop_before_pixels=True).StudyInstanceUID)
               for k, v in files.items()}
    with edge, center:
        pushed = storescu([p for ps in files.values() for p in ps], edge.dicom_port,
                          calling="CT1")
        assert not pushed.failed, pushed.failed
        cases = {}
        for c in CASES:
            s, case = call("POST", edge.http_url + "/api/cases", edge.auth("tech"), {
                "study_instance_uid": studies[c.key], "priority": "urgent",
                "clinical_question": "头痛三天？", "requesting_physician": "马医生"})
            assert s == 201, case
            cases[c.key] = case["case_id"]

        def all_on_worklist() -> Any:
            s, rows = call("GET", center.http_url + "/api/worklist", center.auth("dr.wang"))
            mine = {r["case_id"]: r for r in rows} if s == 200 else {}
            return mine if set(cases.values()) <= set(mine) else None

        worklist = until(all_on_worklist, 300, "every charset's case on the center worklist")
        yield {"edge": edge, "center": center, "files": files, "studies": studies,
               "cases": cases, "worklist": worklist, "base": base}


def _findscu(center: NodeProcess, keys: list[str | bytes], out: Path) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args: list[str | bytes] = ["/usr/bin/findscu", "-S", "-aet", "VIEWER", "-aec",
                               center.ae_title, "-X", "-od", str(out), "-k",
                               "QueryRetrieveLevel=STUDY"]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(center.dicom_port)]
    r = subprocess.run(args, capture_output=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _own_charset_text(ds: pydicom.Dataset, tag: int) -> str:
    """A response value decoded with the response's own (0008,0005), by hand."""
    declared = str(ds.SpecificCharacterSet)
    codec = {"ISO_IR 192": "utf-8", "GB18030": "gb18030"}[declared]
    raw = ds.get_item(tag).value
    return bytes(raw).decode(codec).rstrip(" \x00")


# -- the worklist and the case --------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_worklist_shows_the_name_and_description(net: dict[str, Any], case: Case) -> None:
    row = net["worklist"][net["cases"][case.key]]
    assert (row["patient_name"], row["patient_id"], row["study_description"]) == \
        (case.name, case.patient_id, case.description)


def test_worklist_and_case_show_cli(net: dict[str, Any]) -> None:
    text = net["center"].cli("worklist", "ls").stdout
    for c in CASES:
        assert pn_display(c.name) in text and c.description in text, c.key
    listed = net["edge"].cli("case", "ls").stdout
    rows = {r["case_id"]: r for r in map(json.loads, net["edge"].cli(
        "case", "ls", "--json").stdout.splitlines())}
    for c in CASES:
        assert pn_display(c.name) in listed, c.key
        assert rows[net["cases"][c.key]]["patient_name"] == c.name
    shown = json.loads(net["edge"].cli("case", "show", net["cases"]["ir58"], "--json").stdout)
    assert (shown["patient_name"], shown["study_description"]) == \
        (BY_KEY["ir58"].name, BY_KEY["ir58"].description)


# -- C-FIND -------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cfind_answers_decode_under_their_declared_charset(net: dict[str, Any],
                                                           case: Case) -> None:
    center, study = net["center"], net["studies"][case.key]
    for n, q in enumerate(case.searches):
        got = _findscu(center, ["SpecificCharacterSet=ISO_IR 192", f"PatientName={q}",
                                "StudyDescription", "StudyInstanceUID", "PatientID"],
                       net["base"] / "find" / case.key / str(n))
        mine = [d for d in got if str(d.StudyInstanceUID) == study]
        assert len(mine) == 1, (q, [str(d.PatientID) for d in got])
        d = mine[0]
        assert str(d.SpecificCharacterSet) == "ISO_IR 192"
        assert _own_charset_text(d, 0x00100010) == case.name
        assert _own_charset_text(d, 0x00081030) == case.description
        # pydicom reads the same, and keeps the groups apart.
        assert str(d.PatientName) == case.name
        assert d.PatientName.components == tuple(case.name.split("="))


def test_cfind_query_in_gb18030_is_decoded_with_it(net: dict[str, Any]) -> None:
    center = net["center"]
    got = _findscu(center, [b"SpecificCharacterSet=GB18030",
                            "PatientName=王^小东".encode("gb18030"), b"PatientID"],
                   net["base"] / "find" / "gbquery")
    assert {str(d.PatientID) for d in got} == {"CS-UTF8", "CS-GB18030"}


def test_center_reads_undeclared_text_with_the_edges_default(net: dict[str, Any]) -> None:
    """The center has no default character set: the edge's, applied to the study that
    declares none, came with the bundle and was recorded there too."""
    store = Store(net["center"].directory / "store")
    try:
        rows = store.query("SELECT specific_character_set, charset_source FROM instances "
                           "WHERE study_instance_uid = ?", (net["studies"]["undeclared"],))
        assert rows and all((r["specific_character_set"], r["charset_source"]) ==
                            ("GB18030", "default") for r in rows)
        declared = store.query("SELECT DISTINCT charset_source FROM instances WHERE "
                               "study_instance_uid = ?", (net["studies"]["gb18030"],))
        assert [r["charset_source"] for r in declared] == ["declared"]
    finally:
        store.close()


# -- QIDO-RS and WADO-RS metadata ------------------------------------------------------
def _client(net: dict[str, Any]) -> DICOMwebClient:
    center = net["center"]
    return DICOMwebClient(center.http_url + "/dicom-web", headers=center.auth("dr.wang"))


def _pn_json(name: str) -> dict[str, str]:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    return {k: g for k, g in zip(keys, name.split("="), strict=False) if g}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_qido_pn_groups_and_search(net: dict[str, Any], case: Case) -> None:
    client, study = _client(net), net["studies"][case.key]
    for q in case.searches:
        found = [s for s in client.search_for_studies(search_filters={"PatientName": q})
                 if s["0020000D"]["Value"][0] == study]
        assert len(found) == 1, q
        s = found[0]
        assert s["00100010"]["Value"] == [_pn_json(case.name)]
        assert s["00081030"]["Value"] == [case.description]
    series = client.search_for_series(study)
    assert [x["0008103E"]["Value"][0] for x in series] == [case.description + " 5mm"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_wado_metadata_decodes_the_stored_file(net: dict[str, Any], case: Case) -> None:
    meta = _client(net).retrieve_study_metadata(net["studies"][case.key])
    assert len(meta) == len(net["files"][case.key])
    for m in meta:
        assert m["00100010"]["Value"] == [_pn_json(case.name)]
        assert m["00081030"]["Value"] == [case.description]
        # (0008,0005) as the file declares it (PS3.18 F.2, CP 2518); none when none.
        assert m.get("00080005", {}).get("Value") == (case.declared.split("\\")
                                                      if case.declared else None)


# -- the report ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_signed_report_sr_and_pdf_show_the_name(net: dict[str, Any], case: Case) -> None:
    center, case_id = net["center"], net["cases"][case.key]
    c, auth = center.http_url, center.auth("dr.wang")
    s, claimed = call("POST", c + f"/api/worklist/{case_id}/claim", auth, {})
    assert s == 200, claimed
    s, rep = call("POST", c + f"/api/cases/{case_id}/reports", auth,
                   {"findings": "未见明显异常。", "impression": "正常头颅 CT。"})
    assert s == 201, rep
    client, study = _client(net), net["studies"][case.key]
    sr = client.retrieve_instance(study, _series_of(net, rep["sr_sop_instance_uid"]),
                                  rep["sr_sop_instance_uid"])
    assert str(sr.SpecificCharacterSet) == "ISO_IR 192"
    assert str(sr.PatientName) == case.name
    assert str(sr.get("StudyDescription", "")) == case.description
    pdf_ds = client.retrieve_instance(study, _series_of(net, rep["pdf_sop_instance_uid"]),
                                      rep["pdf_sop_instance_uid"])
    out = net["base"] / "pdf" / f"{case.key}.pdf"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(bytes(pdf_ds.EncapsulatedDocument).rstrip(b"\x00"))
    text = pdftotext(out)
    for want in (*case.pdf_text, pn_display(case.name)):
        assert want in text, (want, text[:400])
    assert "\ufffd" not in text and "\x1b" not in text


def test_reports_back_at_the_edge_show_the_names(net: dict[str, Any]) -> None:
    """The signed reports travel back down; the edge shows whose they are (CLI and PDF)."""
    edge = net["edge"]

    def shown(key: str) -> Any:
        got = json.loads(edge.cli("case", "show", net["cases"][key], "--json").stdout)
        return got if got.get("reports") and got["reports"][0]["received_at"] else None

    store = Store(edge.directory / "store")
    try:
        for c in CASES:
            got = until(lambda c=c: shown(c.key), 240, f"the {c.key} report at the edge")
            assert (got["patient_name"], got["study_description"]) == (c.name, c.description)
            assert got["reports"][0]["patient"]["name"] == c.name
            row = store.get_instance(got["reports"][0]["pdf_sop_instance_uid"])
            assert row is not None
            pdf = pydicom.dcmread(store.blob_path(row["sha256"])).EncapsulatedDocument
            out = net["base"] / "pdf" / f"edge-{c.key}.pdf"
            out.write_bytes(bytes(pdf).rstrip(b"\x00"))
            assert pn_display(c.name) in pdftotext(out), c.key
    finally:
        store.close()


def _series_of(net: dict[str, Any], sop: str) -> str:
    rows = _client(net).search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert len(rows) == 1, sop
    return str(rows[0]["0020000E"]["Value"][0])


def test_logs_carry_no_names(net: dict[str, Any]) -> None:
    logs = "".join((n.directory / "node.log").read_text(errors="replace")
                   for n in (net["edge"], net["center"]))
    assert "sop=" in logs or "assoc" in logs  # the logs are there
    for c in CASES:
        for text in (*c.name.split("="), pn_display(c.name), c.description):
            assert text not in logs, (c.key, text)
