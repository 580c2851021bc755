"""QIDO-RS and C-FIND on both index backends, through real processes (issue 14).

One node per backend — SQLite (the default) and PostgreSQL (``FENJI_STORE_INDEX_URL``
pointing at the test's own cluster, tests/_pg.py) — receives every character
set's study from DCMTK storescu (tests/_charsets.py; the undeclared one is
GB18030 bytes read with ``dicom.default_character_set``).  The same searches
then go through dicomweb-client (QIDO-RS) and DCMTK findscu (C-FIND): exact,
wildcard and fuzzy names, a wildcard on another key, and case sensitivity.
Chinese names must come back Chinese, and be Chinese in the PostgreSQL tables.
"""

from __future__ import annotations

import sqlite3
import subprocess
from typing import Any

import psycopg
import pydicom
import pytest
from _charsets import BY_KEY, CASES, Case, make_study
from _pg import PgCluster
from dicomweb_client.api import DICOMwebClient

from fenji.gateway.lab.dcmtk import storescu
from fenji.gateway.lab.harness import NodeProcess
from fenji.gateway.lab.objstore import S3Server

pytestmark = pytest.mark.timeout(600)
IDS = [c.key for c in CASES]


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "postgresql+s3"])
def node(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A node on each index; the last also keeps its blobs in a bucket (a center's
    store: PostgreSQL and S3-compatible storage, issue 14)."""
    base = tmp_path_factory.mktemp(f"index-{request.param.replace('+', '-')}")
    env, url = {}, ""
    if request.param.startswith("postgresql"):
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        url = cluster.new_database()
        env["FENJI_STORE_INDEX_URL"] = url
    if request.param.endswith("+s3"):
        s3: S3Server = request.getfixturevalue("s3_server")
        env.update(s3.env(), FENJI_STORE_BLOB_URL=s3.blob_url("fenji", base.name))
    center = NodeProcess(base / "center", name="center", role="center", allow_ae=["*"],
                         workers=1, env=env,
                         extra_toml='[dicom]\ndefault_character_set = "GB18030"\n')
    center.add_user("dr.wang", "reader", services=("imaging",))
    files = {c.key: make_study(c, base / "studies" / c.key) for c in CASES}
    studies = {k: str(pydicom.dcmread(v[0], stop_before_pixels=True).StudyInstanceUID)
               for k, v in files.items()}
    with center:
        pushed = storescu([p for ps in files.values() for p in ps], center.dicom_port,
                          calling="CT1")
        assert not pushed.failed, pushed.failed
        yield {"node": center, "studies": studies, "base": base, "url": url,
               "backend": request.param.split("+")[0],
               "s3": request.getfixturevalue("s3_server") if "+s3" in request.param else None,
               "n_files": sum(len(v) for v in files.values())}


def _qido(net: dict[str, Any], **filters: str) -> list[dict[str, Any]]:
    center = net["node"]
    client = DICOMwebClient(center.http_url + "/dicom-web", headers=center.auth("dr.wang"))
    fuzzy = filters.pop("fuzzy", None)
    return list(client.search_for_studies(search_filters=filters, fuzzymatching=bool(fuzzy)))


def _findscu(net: dict[str, Any], keys: list[str], tag: str) -> list[pydicom.Dataset]:
    center, out = net["node"], net["base"] / "find" / tag
    out.mkdir(parents=True, exist_ok=True)
    args = ["/usr/bin/findscu", "-S", "-aet", "VIEWER", "-aec", center.ae_title, "-X",
            "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
            "-k", "SpecificCharacterSet=ISO_IR 192"]
    for k in keys:
        args += ["-k", k]
    r = subprocess.run([*args, "127.0.0.1", str(center.dicom_port)], capture_output=True,
                       timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _pn_json(name: str) -> dict[str, str]:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    return {k: g for k, g in zip(keys, name.split("="), strict=False) if g}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_qido_and_cfind_find_each_name_and_return_it_whole(node: dict[str, Any],
                                                           case: Case) -> None:
    study = node["studies"][case.key]
    for n, q in enumerate(case.searches):
        found = [s for s in _qido(node, PatientName=q) if s["0020000D"]["Value"][0] == study]
        assert len(found) == 1, (node["backend"], q)
        assert found[0]["00100010"]["Value"] == [_pn_json(case.name)]
        assert found[0]["00081030"]["Value"] == [case.description]
        got = [d for d in _findscu(node, [f"PatientName={q}", "StudyDescription",
                                          "StudyInstanceUID"], f"{case.key}-{n}")
               if str(d.StudyInstanceUID) == study]
        assert len(got) == 1, (node["backend"], q)
        assert str(got[0].PatientName) == case.name
        assert str(got[0].StudyDescription) == case.description


def test_matching_rules_are_the_same_on_both_backends(node: dict[str, Any]) -> None:
    studies = node["studies"]

    def ids(**filters: str) -> set[str]:
        return {s["0020000D"]["Value"][0] for s in _qido(node, **filters)}

    chinese = {studies["utf8"], studies["gb18030"]}
    assert ids(PatientName="王^小东") == chinese
    assert ids(PatientName="王 小东") == chinese  # "^" and a space alike
    assert ids(PatientName="Wang*") >= {studies["default"], *chinese}
    assert ids(PatientName="wang*") == set()  # exact and wildcard: case-sensitive
    assert ids(PatientName="wang", fuzzy="true") >= {studies["default"], *chinese}
    assert ids(PatientName="W?ng^Xiao*") >= {studies["default"], *chinese}
    assert ids(PatientName="*") == set(studies.values())
    # wildcards and special characters on a non-name key
    assert ids(PatientID="CS-GB1803?") == {studies["gb18030"]}
    assert ids(PatientID="CS-%") == set() and ids(PatientID="CS_UTF8") == set()
    assert ids(PatientID="cs-*") == set()
    assert ids(StudyDescription="头颅*") == chinese
    assert len(_qido(node, limit="3")) == 3
    # C-FIND: the same answers
    got = _findscu(node, ["PatientName=王*", "PatientID"], "rules")
    assert {str(d.PatientID) for d in got} == {"CS-UTF8", "CS-GB18030"}


def test_the_index_holds_the_chinese_text_as_chinese(node: dict[str, Any]) -> None:
    """The GB18030 bytes (declared, and undeclared with the node's default) are decoded
    once and stored as text (in PostgreSQL, a UTF-8 database), not as bytes."""
    wanted = [node["studies"]["gb18030"], node["studies"]["undeclared"]]
    sql = "SELECT study_instance_uid, patient_name FROM studies WHERE study_instance_uid IN "
    if node["backend"] == "postgresql":  # with or without the bucket
        with psycopg.connect(node["url"]) as con:
            rows = dict(con.execute(sql + "(%s, %s)", wanted).fetchall())
            assert con.execute("SHOW server_encoding").fetchone() == ("UTF8",)
    else:
        con = sqlite3.connect(node["node"].directory / "store" / "index.sqlite")
        rows = dict(con.execute(sql + "(?, ?)", wanted).fetchall())
        con.close()
    assert rows[wanted[0]] == BY_KEY["gb18030"].name == "Wang^XiaoDong=王^小东"
    assert rows[wanted[1]] == BY_KEY["undeclared"].name == "Li^Ming=李^明"


def test_the_blobs_are_where_the_config_says(node: dict[str, Any]) -> None:
    local = [p for p in (node["node"].directory / "store" / "blobs").rglob("*") if p.is_file()]
    if node["s3"] is None:
        assert len(local) == node["n_files"]
        return
    listed = node["s3"].client().list_objects_v2(
        Bucket="fenji", Prefix=f"{node['base'].name}/blobs/").get("Contents", [])
    assert local == [] and len(listed) == node["n_files"]
