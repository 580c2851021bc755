"""Character sets: every supported (0008,0005) decoded right, checked against pydicom's gaps.

Instances are the shared CT re-written at test time in each character set
(tests/_charsets.py); pydicom's own character-set sample files (the DICOM
standard's examples, shipped inside the pydicom package) are decoded too, as
instances fenji's authors did not make.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from _charsets import BY_KEY, CASES, Case, make_study
from pydicom import charset as pd_charset
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.data import get_charset_files

from fenji.gateway import config as config_mod
from fenji.gateway.dicom import charset, terms
from fenji.gateway.dicom import query as qr
from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.dimse.qr import _keys
from fenji.gateway.errors import ConfigError
from fenji.gateway.store import index as store_mod
from fenji.gateway.store import reindex
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb.media import _private_as_un


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    base = tmp_path_factory.mktemp("charsets")
    return {c.key: make_study(c, base / c.key) for c in CASES}


@pytest.fixture(scope="module")
def indexed(studies: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory
            ) -> Store:
    s = Store(tmp_path_factory.mktemp("charset-store") / "s")
    for c in CASES:
        for p in studies[c.key]:
            data = p.read_bytes()
            s.put(data, check_part10(data, default_character_set=c.default or None).info)
    return s


# -- each character set ------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_instance_text_is_indexed_as_unicode(case: Case, studies: dict[str, list[Path]],
                                             indexed: Store) -> None:
    data = studies[case.key][0].read_bytes()
    assert case.name_bytes() in data  # the bytes are the character set's own
    info = check_part10(data, default_character_set=case.default or None).info
    assert info.patient_name == case.name
    assert info.study_description == case.description
    assert info.series_description == case.description + " 5mm"
    want_source = "declared" if case.declared else "default" if case.default else "none"
    assert info.charset_source == want_source
    assert info.specific_character_set == (case.declared or case.default or None)
    # Indexed as Unicode; the stored bytes are exactly the file's.
    row = indexed.query_one("SELECT i.sha256, i.specific_character_set, i.charset_source, "
                            "st.patient_name, st.study_description FROM instances i JOIN "
                            "studies st ON st.study_instance_uid = i.study_instance_uid "
                            "WHERE i.sop_instance_uid = ?", (info.sop_instance_uid,))
    assert row is not None
    assert (row["patient_name"], row["study_description"]) == (case.name, case.description)
    assert (row["specific_character_set"], row["charset_source"]) == \
        (info.specific_character_set, want_source)
    assert indexed.read_blob(row["sha256"]) == data
    groups = [g["name"] for g in indexed.query(
        "SELECT name FROM name_groups WHERE kind = 'study_patient' AND owner = ? ORDER BY grp",
        (info.study_instance_uid,))]
    assert groups == [g for g in case.name.split("=") if g]


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_every_search_finds_the_study_by_any_group(case: Case, studies: dict[str, list[Path]],
                                                   indexed: Store) -> None:
    study = str(pydicom.dcmread(studies[case.key][0], stop_before_pixels=True)
                .StudyInstanceUID)
    for q in case.searches:
        found = {r["StudyInstanceUID"]: r for r in qr.find(indexed, "STUDY",
                                                           {"PatientName": q})}
        assert study in found, q
        assert found[study]["PatientName"] == case.name
    # ... and at the PATIENT level, by patient ID as owner.
    for q in case.searches:
        pats = qr.find(indexed, "PATIENT", {"PatientName": q}, root="patient")
        assert case.patient_id in {p["PatientID"] for p in pats}, q


def test_person_name_matching_rules(indexed: Store) -> None:
    def pids(q: str, **kw: Any) -> set[str]:
        return {r["PatientID"] for r in qr.find(indexed, "STUDY", {"PatientName": q}, **kw)}

    assert pids("王*") == {"CS-UTF8", "CS-GB18030"}
    assert pids("王^小东") == {"CS-UTF8", "CS-GB18030"}
    assert pids("王^小") == set()  # exact, not a prefix
    assert pids("王 小东") == {"CS-UTF8", "CS-GB18030"}  # a space matches "^"
    # Group by group when the query has "=": the second group must match.
    assert pids("Wang^XiaoDong=王^小东") == {"CS-UTF8", "CS-GB18030"}
    assert pids("=张*") == {"CS-IR58"}
    assert pids("张*=") == set()  # 张 is not in an Alphabetic group
    assert pids("*=*=홍*") == {"CS-KR"}
    assert pids("Wang*=李*") == set()
    # Fuzzy matching: any word prefix of any group, any case.
    assert pids("xiaodong", fuzzy=True) == {"CS-UTF8", "CS-GB18030", "CS-DEFAULT",
                                            "CS-IR58"}
    assert pids("小东", fuzzy=True) == {"CS-UTF8", "CS-GB18030", "CS-IR58"}


@pytest.mark.parametrize("q", ["王*", "王^小东", "Wang*=王*"])
def test_name_group_matching_uses_indexes(indexed: Store, q: str) -> None:
    sql, args = qr.find_sql("STUDY", {"PatientName": q})
    plan = [str(r["detail"]) for r in indexed.query("EXPLAIN QUERY PLAN " + sql, args)]
    assert any("name_groups_name" in d for d in plan), plan
    assert not any(d.startswith("SCAN g") or d.startswith("SCAN name_groups") for d in plan), \
        plan


# -- pydicom: what it gets wrong, and its own sample files ----------------------------
def _gb18030(text: str) -> bytes:
    return text.encode("gb18030")


IR58_NAME = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab"  # PS3.5 K.2 style


def test_pydicom_leaves_the_ir58_escape_sequence_in_the_text() -> None:
    """pydicom 3.0.2's bug that fenji works around.  When this fails, pydicom is fixed:
    drop the workaround in gateway/dicom/charset.py (_escaped)."""
    wrong = decode_bytes(IR58_NAME, convert_encodings(["", "ISO 2022 IR 58"]), {0x5E, 0x3D})
    assert "\x1b$)A" in wrong
    cs = charset.resolve("\\ISO 2022 IR 58")
    assert charset.decode(IR58_NAME, cs, "PN") == ("Zhang^XiaoDong=张^小东", False)


def test_pydicom_decodes_undeclared_gb18030_as_latin1(studies: dict[str, list[Path]]) -> None:
    """Why dicom.default_character_set exists: pydicom (and fenji without it) reads
    undeclared bytes as ISO 646/Latin-1, so 李^明 comes out as mojibake."""
    data = studies["undeclared"][0].read_bytes()
    assert str(pydicom.dcmread(io.BytesIO(data)).PatientName) != BY_KEY["undeclared"].name
    info = check_part10(data).info
    assert info.charset_source == "none" and info.patient_name != BY_KEY["undeclared"].name
    assert check_part10(data, default_character_set="GB18030").info.patient_name == "Li^Ming=李^明"


# The DICOM standard's character-set examples as pydicom ships them, and what a
# person must read (PS3.5 Annexes H, I, J, K; FileInfo.txt in pydicom's data).
STANDARD_EXAMPLES = {
    "chrFren.dcm": "Buc^Jérôme", "chrGerm.dcm": "Äneas^Rüdiger",
    "chrGreek.dcm": "Διονυσιος", "chrRuss.dcm": "Люкceмбypг",
    "chrArab.dcm": "قباني^لنزار", "chrHbrw.dcm": "שרון^דבורה",
    "chrH31.dcm": "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "chrH32.dcm": "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
    "chrI2.dcm": "Hong^Gildong=洪^吉洞=홍^길동",
    "chrX1.dcm": "Wang^XiaoDong=王^小東", "chrX2.dcm": "Wang^XiaoDong=王^小东",
}


@pytest.mark.parametrize("name", sorted(STANDARD_EXAMPLES))
def test_standard_examples_decode(name: str) -> None:
    [path] = get_charset_files(name)
    data = Path(path).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    n = charset.decode_dataset(ds)
    assert n == 0
    assert str(ds.PatientName) == STANDARD_EXAMPLES[name]
    if data[128:132] == b"DICM":
        assert check_part10(data).info.patient_name == STANDARD_EXAMPLES[name]


def test_metadata_decoding_of_a_dataset_uses_fenji_not_pydicom(
        studies: dict[str, list[Path]]) -> None:
    for key in ("ir58", "undeclared", "jp0212", "gbk"):
        case = BY_KEY[key]
        ds = pydicom.dcmread(studies[key][0], stop_before_pixels=True)
        assert charset.decode_dataset(ds, case.default or None) == 0
        assert str(ds.PatientName) == case.name
        assert ds.StudyDescription == case.description
        if case.implicit:
            _private_as_un(ds)  # as WADO-RS metadata does (a Philips private tag)
        js = ds.to_json_dict()
        assert js["00100010"]["Value"][0]["Alphabetic"] == case.name.split("=")[0]
        if "=" in case.name:
            assert js["00100010"]["Value"][0]["Ideographic"] == case.name.split("=")[1]


def test_gbk_trail_byte_backslash_is_not_a_value_separator() -> None:
    raw = "陳^小淺".encode("gbk")
    assert b"\\" in raw
    text, bad = charset.decode_value(raw, charset.resolve("GBK"), "PN")
    assert (text, bad) == ("陳^小淺", False)


# -- refusals and odd declarations --------------------------------------------
def _with_declared(data: bytes, old: bytes, new: bytes) -> bytes:
    """The file with its (0008,0005) value ``old`` replaced (same even length)."""
    assert len(old) == len(new) and data.count(old) == 1
    return data.replace(old, new)


def test_unknown_declared_charset_is_accepted_recorded_and_logged(
        studies: dict[str, list[Path]], caplog: pytest.LogCaptureFixture) -> None:
    data = _with_declared(studies["gb18030"][0].read_bytes(), b"GB18030 ", b"KLINGON ")
    with caplog.at_level(logging.WARNING, logger="fenji.gateway.dicom.validate"):
        info = check_part10(data, default_character_set="GB18030").info
    assert info.charset_source == "invalid" and info.specific_character_set == "KLINGON"
    assert info.patient_name == "Wang^XiaoDong=王^小东"  # decoded with the default
    assert "'KLINGON' is not a defined term" in caplog.text
    assert "王" not in caplog.text and "Wang" not in caplog.text  # no names in logs
    # Without a default, as if undeclared: UTF-8 bytes read as UTF-8.
    utf8 = _with_declared(studies["utf8"][0].read_bytes(), b"ISO_IR 192", b"KLINGON-1 ")
    info = check_part10(utf8).info
    assert (info.charset_source, info.patient_name) == ("invalid", BY_KEY["utf8"].name)


def test_quirky_spellings_map_to_defined_terms(studies: dict[str, list[Path]]) -> None:
    data = _with_declared(studies["gb18030"][0].read_bytes(), b"GB18030 ", b"GB2312  ")
    info = check_part10(data).info
    assert (info.patient_name, info.specific_character_set) == ("Wang^XiaoDong=王^小东",
                                                                "GB18030")
    assert charset.normalize_term("ISO-IR 100") == "ISO_IR 100"
    assert charset.normalize_term("iso_ir_192") == "ISO_IR 192"
    assert charset.normalize_term("ISO_IR 58") == "ISO 2022 IR 58"


def test_bytes_that_do_not_decode_are_replaced_and_logged_without_names(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # UTF-8 declared, GB18030 bytes written: a broken name shows as broken.
    liar = Case("liar", "ISO_IR 192", "Wang^XiaoDong=王^小东", "头颅平扫", _gb18030)
    data = make_study(liar, tmp_path, n=1)[0].read_bytes()
    with caplog.at_level(logging.WARNING, logger="fenji.gateway.dicom.validate"):
        info = check_part10(data).info
    assert info.patient_name is not None and "\ufffd" in info.patient_name
    assert "(0010,0010) does not decode under" in caplog.text
    assert "Wang" not in caplog.text


def test_parse_rejects_code_extensions_on_stand_alone_sets() -> None:
    with pytest.raises(charset.CharsetError, match="take no code extensions"):
        charset.parse("GB18030\\ISO 2022 IR 58")
    with pytest.raises(charset.CharsetError, match="value 2 = 'ISO 2022 IR 999'"):
        charset.parse("\\ISO 2022 IR 999")


def test_pn_json_and_display() -> None:
    assert charset.pn_json("Wang^XiaoDong=王^小东") == {"Alphabetic": "Wang^XiaoDong",
                                                      "Ideographic": "王^小东"}
    assert charset.pn_json("=王^小东") == {"Ideographic": "王^小东"}
    assert charset.pn_json("Hong^Gildong=洪^吉洞=홍^길동")["Phonetic"] == "홍^길동"
    assert charset.pn_display("Wang^XiaoDong=王^小东") == "Wang XiaoDong / 王 小东"
    assert charset.normalize_pn("Wang^XiaoDong=王^小东= ") == "Wang^XiaoDong=王^小东"


# -- queries in a character set -------------------------------------------------
def test_cfind_identifier_in_gb18030_is_decoded_with_it(indexed: Store) -> None:
    # An identifier as a GB18030 SCU encodes it (pydicom writes, fenji reads raw).
    ident = pydicom.Dataset()
    ident.SpecificCharacterSet = "GB18030"
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = "王*"
    ident.StudyDescription = ""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ident, implicit_vr=True, little_endian=True)
    assert "王".encode("gb18030") in buf.getvalue()
    raw = pydicom.dcmread(io.BytesIO(buf.getvalue()), force=True)
    level, keys, _ = _keys(raw)
    assert (level, keys["PatientName"]) == ("STUDY", "王*")
    assert {r["PatientID"] for r in qr.find(indexed, level, keys)} == {"CS-UTF8",
                                                                       "CS-GB18030"}
    # No (0008,0005): the node's default applies to queries as to instances.
    ident2 = pydicom.Dataset()
    ident2.QueryRetrieveLevel = "STUDY"
    ident2.add_new(0x00100010, "PN", "李*".encode("gb18030"))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ident2, implicit_vr=True, little_endian=True)
    raw = pydicom.dcmread(io.BytesIO(buf.getvalue()), force=True)
    assert _keys(raw, "GB18030")[1]["PatientName"] == "李*"


# -- config -----------------------------------------------------------------------
def _cfg(dicom: dict[str, Any], env: dict[str, str] | None = None) -> config_mod.Config:
    return config_mod.from_mapping({"dicom": {"allow_ae": ["*"], **dicom}}, env=env or {})


def test_default_character_set_config_and_env() -> None:
    assert _cfg({}).dicom.default_character_set == ""
    assert _cfg({"default_character_set": "GB18030"}).dicom.default_character_set == "GB18030"
    assert _cfg({}, {"FENJI_DICOM_DEFAULT_CHARACTER_SET": "GBK"}).dicom.default_character_set \
        == "GBK"
    with pytest.raises(ConfigError, match=r"dicom\.default_character_set = 'GB-18030'"):
        _cfg({"default_character_set": "GB-18030"})
    with pytest.raises(ConfigError, match=r"dicom\.default_character_set = 'UTF9'"):
        _cfg({}, {"FENJI_DICOM_DEFAULT_CHARACTER_SET": "UTF9"})


# -- migration 8 on an existing store ---------------------------------------------
def test_migration_8_splits_existing_names_into_groups(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    older = [m for m in store_mod.MIGRATIONS if m[0] < 8]
    monkeypatch.setattr(store_mod, "MIGRATIONS", older)
    s = Store(tmp_path / "s")
    con = sqlite3.connect(s.db_path)
    with con:
        con.execute("INSERT INTO patients VALUES ('P1', 'Wang^XiaoDong=王^小东', NULL, NULL)")
        con.execute("INSERT INTO studies(study_instance_uid, patient_id, patient_name, "
                    "referring_physician, first_received_at, last_received_at) VALUES "
                    "('1.2', 'P1', 'Wang^XiaoDong=王^小东=wang^xd', 'Li^Wei^^', 0, 0)")
    con.close()
    s.close()
    monkeypatch.undo()
    s = Store(tmp_path / "s")
    assert s.schema_version >= 8
    rows = [(r["kind"], r["owner"], r["grp"], r["name"]) for r in s.query(
        "SELECT * FROM name_groups ORDER BY kind, owner, grp")]
    assert rows == [("patient", "P1", 0, "Wang^XiaoDong"), ("patient", "P1", 1, "王^小东"),
                    ("study_patient", "1.2", 0, "Wang^XiaoDong"),
                    ("study_patient", "1.2", 1, "王^小东"),
                    ("study_patient", "1.2", 2, "wang^xd"),
                    ("study_referring", "1.2", 0, "Li^Wei")]
    assert [r["StudyInstanceUID"] for r in qr.find(s, "STUDY", {"PatientName": "王*"})] == \
        ["1.2"]


def test_store_info_fields_have_defaults() -> None:
    info = InstanceInfo("1.2.3", "1.2", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.1.2.1", "ab")
    assert info.specific_character_set is None and info.charset_source is None


def test_reindex_re_decodes_rows_indexed_before_migration_8(
        studies: dict[str, list[Path]], tmp_path: Path) -> None:
    s = Store(tmp_path / "s")
    for key in ("gb18030", "ir58", "undeclared"):
        data = studies[key][0].read_bytes()
        info = check_part10(data, default_character_set="GB18030").info
        # As the old validator indexed it: UTF-8, else Latin-1; no character set recorded.
        raw = BY_KEY[key].name_bytes()
        try:
            old = raw.decode("utf-8")
        except UnicodeDecodeError:
            old = raw.decode("latin-1")
        s.put(data, dataclasses.replace(info, patient_name=old, study_description="?",
                                        specific_character_set=None, charset_source=None))
    junk = b"not dicom at all"
    s.put(junk, InstanceInfo("1.2.9", "1.2", "1.2.9.1", "1.2.9.1.1", "1.2.840.10008.1.2.1",
                             "00", patient_id="PX", patient_name="X"))
    assert reindex.pending(s) == 4
    assert qr.find(s, "STUDY", {"PatientName": "王*"}) == []
    assert reindex.reindex_text(s, "GB18030") == {"done": 3, "unreadable": 1}
    assert reindex.pending(s) == 0
    got = {r["PatientID"]: (r.get("PatientName"), r.get("StudyDescription"))
           for r in qr.find(s, "STUDY", {})}
    for key in ("gb18030", "ir58", "undeclared"):
        c = BY_KEY[key]
        assert got[c.patient_id] == (c.name, c.description)
    assert {r["PatientID"] for r in qr.find(s, "STUDY", {"PatientName": "王*"})} == \
        {"CS-GB18030"}
    assert {r["PatientID"] for r in qr.find(s, "PATIENT", {"PatientName": "张^小东"},
                                            root="patient")} == {"CS-IR58"}
    src = {r["sop_instance_uid"]: r["charset_source"] for r in s.query(
        "SELECT sop_instance_uid, charset_source FROM instances")}
    assert sorted(src.values()) == ["declared", "declared", "default", "unread"]


def test_viewer_report_text_in_sequences_is_decoded_with_the_default() -> None:
    """A viewer SR written in GB18030 without (0008,0005): its findings (UT in a content
    item) come out right with the node's default, wrong with pydicom's guess."""
    from _viewer import viewer_sr_dataset

    from fenji.gateway import reports

    finding, impression = "右侧硬膜下血肿 8mm", "急性硬膜下"
    raw_f, raw_i = finding.encode("gb18030"), impression.encode("gb18030")
    hold_f, hold_i = "F" * len(raw_f), "I" * len(raw_i)  # same lengths, then the bytes
    ds = viewer_sr_dataset("1.2.3", hold_f, hold_i)
    del ds.SpecificCharacterSet
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert data.count(hold_f.encode()) == 1 and data.count(hold_i.encode()) == 1
    data = data.replace(hold_f.encode(), raw_f).replace(hold_i.encode(), raw_i)
    guessed = reports.parse_viewer_report(pydicom.dcmread(io.BytesIO(data)))
    assert "硬膜下" not in guessed["findings"]
    ds2 = pydicom.dcmread(io.BytesIO(data))
    assert charset.decode_dataset(ds2, "GB18030") == 0
    parsed = reports.parse_viewer_report(ds2)
    assert (parsed["findings"], parsed["impression"]) == (finding, impression)


def test_stored_and_sender_defaults() -> None:
    from fenji.routing.transfer_server import _sender_default

    assert charset.stored_default({"charset_source": "default",
                                   "specific_character_set": "GBK"}, "GB18030") == "GBK"
    assert charset.stored_default({"charset_source": "declared",
                                   "specific_character_set": "ISO_IR 100"}, "GB18030") == \
        "GB18030"
    assert charset.stored_default({}, "") is None
    manifest = {"case": {"default_character_sets": [None, "GB18030", "KLINGON", 7]}}
    assert [_sender_default(manifest, i) for i in range(5)] == [None, "GB18030", None, None,
                                                                None]
    assert _sender_default({"case": {"default_character_sets": "GB18030"}}, 0) is None
    assert _sender_default(None, 0) is None


def test_the_defined_terms_written_out_are_pydicoms() -> None:
    """gateway/dicom/terms.py copies pydicom's table so that reading a config does not
    load pydicom; a pydicom that adds or changes a term shows up here."""
    assert terms.DEFINED_TERMS == {t: c for t, c in pd_charset.python_encoding.items()
                                   if t and t not in terms._NOT_DEFINED}
    assert terms.STAND_ALONE == frozenset(pd_charset.STAND_ALONE_ENCODINGS)


def test_reading_a_config_loads_no_pydicom() -> None:
    code = ("import sys; import fenji.gateway.config, fenji.gateway.cli.case; "
            "print('pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "False"


def test_ir58_written_without_its_escape_sequence_stays_chinese() -> None:
    """pydicom (3.0.2) writes GB2312 bytes under (0008,0005) \\ISO 2022 IR 58 without
    ESC $ ) A; so do writers built on it.  Such bytes can only be GB2312: read as
    Latin-1 they were 'Íõ^Ð¡¶«' for 王^小东.  A value with the escape still works."""
    from _data import ct_series

    ds = pydicom.dcmread(ct_series()[0])
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.PatientName = "Wang^XiaoDong=王^小东"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert b"Wang^XiaoDong=\xcd\xf5^" in data  # no ESC $ ) A: what pydicom writes
    assert check_part10(data).info.patient_name == "Wang^XiaoDong=王^小东"
    cs = charset.resolve("\\ISO 2022 IR 58")
    assert charset.decode(IR58_NAME, cs, "PN") == ("Zhang^XiaoDong=张^小东", False)
    # Only where IR 58 is the one set beyond ASCII: Latin-1 bytes under IR 100 stay so.
    assert charset.decode("Müller".encode("latin-1"), charset.resolve("ISO_IR 100"),
                          "PN") == ("Müller", False)


def test_a_character_set_ingest_accepted_as_invalid_is_decoded_the_same_way_later() -> None:
    """Ingest accepts an instance whose (0008,0005) fenji cannot decode and decodes
    its text the undeclared way; WADO-RS metadata raised CharsetError on it (found
    by fuzzing: 'IQO_IR 100', 'ISO_IR 192\\').  Every later reader falls back alike."""
    from pydicom.dataset import Dataset

    from fenji.gateway.dicom import charset

    for declared in ("IQO_IR 100", "ISO_IR 192\\"):
        cs = charset.resolve_or_fallback(declared)
        assert cs.source == "invalid"
        ds = Dataset()
        ds.SpecificCharacterSet = declared
        ds.PatientName = "Wang^Fang"
        assert charset.dataset_charset(ds).source == "invalid"
    with pytest.raises(charset.CharsetError):
        charset.resolve("IQO_IR 100")


def test_a_value_whose_bytes_do_not_fit_its_vr_is_left_alone_by_decode() -> None:
    """A private group length of 11,190 bytes made SV (a fuzzer's 2-byte edit ingest
    takes: private elements are the sender's) made metadata raise: WADO-RS reads
    with deferred values, and pydicom converts one when decode_dataset touches it."""
    from _data import DICOM_DIR

    from fenji.gateway.dicom import charset

    data = bytearray((DICOM_DIR / "mr" / "ge_epi_axial" / "MR_0010.dcm").read_bytes())
    assert data[5682:5688] == bytes.fromhex("43000000") + b"UL"   # (0043,0000) UL
    data[5686:5688] = b"SV"
    ds = pydicom.dcmread(io.BytesIO(bytes(data)), defer_size=256)
    charset.decode_dataset(ds, None)
    assert str(ds.PatientName) == str(pydicom.dcmread(
        DICOM_DIR / "mr" / "ge_epi_axial" / "MR_0010.dcm").PatientName)
