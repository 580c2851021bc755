"""The query/retrieve model: PS3.4 C.2.2.2 matching on the index, retrieve keys, indexes used."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fenji.gateway.dicom import query as qr
from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.store import index as store_mod
from fenji.gateway.store.db import Store

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"

# (patient id, name, study, date, accession, referring, series, modality, n instances)
ROWS = [
    ("P1", "WANG^XIAOMING", "1.1", "20240110", "A1", "ZHAO^LI", "1.1.1", "CT", 3),
    ("P1", "WANG^XIAOMING^^", "1.2", "20240620", "A2", "", "1.2.1", "MR", 2),
    ("P2", "Li^Wang", "1.3", "20231231", "A3", "ZHAO^LI", "1.3.1", "CT", 1),
    ("P3", "WANGER^X", "1.4", "20250101", "A4", "", "1.4.1", "CT", 1),
    ("P4", "ZHANG SAN", "1.5", "20240301", "A5", "", "1.5.1", "CT", 1),
]


@pytest.fixture()
def store(tmp_path: Path, index_url: str) -> Store:
    """The same index on SQLite and on PostgreSQL (issue 14)."""
    s = Store(tmp_path / "s", index_url=index_url)
    for pid, name, study, date, acc, ref, series, mod, n in ROWS:
        for i in range(n):
            sop = f"{series}.{i + 1}"
            data = f"instance {sop}".encode()
            s.put(data, InstanceInfo(
                sop_instance_uid=sop, sop_class_uid=CT if mod == "CT" else MR,
                study_instance_uid=study, series_instance_uid=series,
                transfer_syntax_uid=EXPLICIT, dataset_sha256=hashlib.sha256(data).hexdigest(),
                instance_number=i + 1, patient_id=pid, patient_name=name, birth_date="19800101",
                sex="M", study_date=date, study_time="101500", accession_number=acc,
                study_description="head", modality=mod, series_number=1,
                referring_physician=ref or None, study_id="7"))
    return s


def _studies(store: Store, keys: dict[str, str], **kw: object) -> list[str]:
    return [r["StudyInstanceUID"] for r in qr.find(store, "STUDY", keys, **kw)]  # type: ignore[arg-type]


def test_person_names_exact_wildcard_separators(store: Store) -> None:
    assert _studies(store, {"PatientName": "WANG^XIAOMING"}) == ["1.1", "1.2"]  # "^^" too
    assert _studies(store, {"PatientName": "WANG XIAOMING"}) == ["1.1", "1.2"]
    assert _studies(store, {"PatientName": "ZHANG^SAN"}) == ["1.5"]  # stored with a space
    assert _studies(store, {"PatientName": "WANG*"}) == ["1.1", "1.2", "1.4"]
    assert _studies(store, {"PatientName": "WANG?XIAO*"}) == ["1.1", "1.2"]
    assert _studies(store, {"PatientName": "wang^xiaoming"}) == []  # exact is case-sensitive
    assert _studies(store, {"PatientName": "*"}) == ["1.3", "1.1", "1.5", "1.2", "1.4"]
    assert _studies(store, {"PatientName": "^^"}) == _studies(store, {})


def test_fuzzy_names_match_any_word_prefix_in_any_case(store: Store) -> None:
    assert _studies(store, {"PatientName": "wang"}, fuzzy=True) == ["1.3", "1.1", "1.2",
                                                                    "1.4"]
    assert _studies(store, {"PatientName": "wang xiao"}, fuzzy=True) == ["1.1", "1.2"]
    assert _studies(store, {"PatientName": "xiaoming^WANG"}, fuzzy=True) == ["1.1", "1.2"]
    assert _studies(store, {"PatientName": "ming"}, fuzzy=True) == []  # prefixes only
    assert _studies(store, {"ReferringPhysicianName": "li"}, fuzzy=True) == ["1.3", "1.1"]


def test_dates_uid_lists_and_other_keys(store: Store) -> None:
    assert _studies(store, {"StudyDate": "20240101-20241231"}) == ["1.1", "1.5", "1.2"]
    assert _studies(store, {"StudyDate": "-20240110"}) == ["1.3", "1.1"]
    assert _studies(store, {"StudyDate": "20240620-"}) == ["1.2", "1.4"]
    assert _studies(store, {"StudyDate": "20240301"}) == ["1.5"]
    assert _studies(store, {"StudyInstanceUID": "1.4\\1.1\\9.9"}) == ["1.1", "1.4"]
    assert _studies(store, {"AccessionNumber": "A3"}) == ["1.3"]
    assert _studies(store, {"ModalitiesInStudy": "MR"}) == ["1.2"]
    assert _studies(store, {"PatientID": "P1", "StudyTime": "1000-1100"}) == ["1.1", "1.2"]
    assert _studies(store, {"Rows": "512"}) == _studies(store, {})  # not held: ignored
    with pytest.raises(qr.QueryError, match="'2024' in range"):
        qr.find(store, "STUDY", {"StudyDate": "2024-20250101"})
    with pytest.raises(qr.QueryError, match="patient root"):
        qr.find(store, "PATIENT", {})


def test_rows_carry_parents_counts_and_storage(store: Store) -> None:
    [s] = qr.find(store, "STUDY", {"StudyInstanceUID": "1.1"})
    assert (s["PatientName"], s["PatientID"], s["NumberOfStudyRelatedSeries"],
            s["NumberOfStudyRelatedInstances"], s["ModalitiesInStudy"], s["StudyID"],
            s["ReferringPhysicianName"]) == ("WANG^XIAOMING", "P1", 1, 3, "CT", "7", "ZHAO^LI")
    # Per-study patient attributes: the second study recorded the name its own way.
    [s2] = qr.find(store, "STUDY", {"StudyInstanceUID": "1.2"})
    assert s2["PatientName"] == "WANG^XIAOMING^^"
    [p] = qr.find(store, "PATIENT", {"PatientID": "P1"}, root="patient")
    assert (p["NumberOfPatientRelatedStudies"], p["NumberOfPatientRelatedInstances"]) == (2, 5)
    [se] = qr.find(store, "SERIES", {"StudyInstanceUID": "1.1"})
    assert (se["SeriesInstanceUID"], se["Modality"], se["NumberOfSeriesRelatedInstances"],
            se["StudyDate"]) == ("1.1.1", "CT", 3, "20240110")
    imgs = qr.find(store, "IMAGE", {"SeriesInstanceUID": "1.1.1"}, limit=2, offset=1)
    assert [i["SOPInstanceUID"] for i in imgs] == ["1.1.1.2", "1.1.1.3"]
    assert {"sha256", "transfer_syntax_uid", "size", "SOPClassUID", "InstanceNumber",
            "StudyInstanceUID", "PatientID"} <= set(imgs[0])


def test_retrieve_needs_the_unique_key_and_ignores_other_keys(store: Store) -> None:
    def sops(level: str, keys: dict[str, str], root: str = "study") -> list[str]:
        return [r["sop_instance_uid"] for r in qr.retrieve(store, level, keys, root=root)]

    assert sops("STUDY", {"StudyInstanceUID": "1.1", "PatientName": "nobody"}) == \
        ["1.1.1.1", "1.1.1.2", "1.1.1.3"]
    assert sops("SERIES", {"StudyInstanceUID": "1.1", "SeriesInstanceUID": "1.1.1\\1.3.1"}) \
        == ["1.1.1.1", "1.1.1.2", "1.1.1.3"]  # the parent key constrains
    assert sops("IMAGE", {"SOPInstanceUID": "1.3.1.1\\1.2.1.2"}) == ["1.2.1.2", "1.3.1.1"]
    assert len(sops("PATIENT", {"PatientID": "P1"}, root="patient")) == 5
    for level, keys in (("STUDY", {"PatientName": "*"}), ("STUDY", {"StudyInstanceUID": ""}),
                        ("SERIES", {"SeriesInstanceUID": "1.1.*"}),
                        ("PATIENT", {"PatientID": "P1"}), ("FRAME", {})):
        with pytest.raises(qr.QueryError):
            qr.retrieve(store, level, keys)
    row = qr.instances(store, study="1.3")[0]
    assert set(row) == {"sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "sha256",
                        "size", "study_instance_uid", "series_instance_uid"}
    assert qr.studies_of_patients(store, ["P1", "P4", "nobody"]) == ["1.1", "1.2", "1.5"]


@pytest.mark.parametrize("keys", [
    {"PatientName": "WANG^XIAOMING"}, {"PatientName": "WANG*"}, {"PatientID": "P1"},
    {"StudyDate": "20240101-20240131"}, {"AccessionNumber": "A1"},
    {"StudyInstanceUID": "1.1\\1.2"}, {"ReferringPhysicianName": "ZHAO^LI"},
])
@pytest.mark.parametrize("index_url", [""])  # EXPLAIN QUERY PLAN is SQLite's
def test_study_matching_uses_an_index(store: Store, keys: dict[str, str]) -> None:
    sql, args = qr.find_sql("STUDY", keys)
    plan = " ".join(str(r["detail"]) for r in store.query("EXPLAIN QUERY PLAN " + sql, args)
                    if "st" in str(r["detail"]).split())
    assert "USING INDEX" in plan or "USING PRIMARY KEY" in plan, plan


def test_migration_6_keeps_patient_attributes_per_study(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in store_mod.MIGRATIONS if m[0] < 6])
    old = Store(tmp_path / "s")
    with old.atomic() as con:
        con.execute("INSERT INTO patients VALUES ('P9', 'OLD^NAME', '19700101', 'F')")
        con.execute("INSERT INTO studies(study_instance_uid, patient_id, study_date, "
                    "first_received_at, last_received_at) VALUES ('9.9', 'P9', '20200101', 0, 0)")
    old.close()
    monkeypatch.undo()
    new = Store(tmp_path / "s")
    [s] = qr.find(new, "STUDY", {"PatientName": "OLD NAME"})
    assert (s["StudyInstanceUID"], s["PatientBirthDate"], s["PatientSex"]) == \
        ("9.9", "19700101", "F")
