"""ECG carts' own formats: every shared sample converted to DICOM (dciodvfy clean) with
its amplitudes checked against values decoded here, independently, from the file."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import pytest
from _data import ECG_DIR
from _wait import until
from defusedxml import ElementTree as SafeET

from fenji.gateway.ecg.convert import ecg_to_part10
from fenji.gateway.ecg.formats import EcgFileError, detect_format, read_ecg_file, read_ecg_files
from fenji.gateway.errors import PeerError
from fenji.gateway.ingest.ecg_files import ingest_files
from fenji.gateway.lab.harness import NodeProcess

pytestmark = pytest.mark.timeout(600)
FORMATS = ECG_DIR / "formats"
DCIODVFY = "/usr/bin/dciodvfy"
HL7 = "{urn:hl7-org:v3}"

SAMPLES = {  # file -> detected format id
    "hl7_aecg/hl7_example_mortara_eli250.xml": "hl7-aecg",
    "hl7_aecg/calecg2_example2.xml": "hl7-aecg",
    "hl7_aecg/lepu_lead12_1.xml": "hl7-aecg",
    "hl7_aecg/philips_pagewriter_touch_converted_to_aecg.xml": "hl7-aecg",
    "scp_ecg/welchallyn_cardiocontrol_2017.SCP": "scp-ecg",
    "scp_ecg/welchallyn_cardiocontrol_2007.SCP": "scp-ecg",
    "scp_ecg/ecgtoolkit_example_eli250.scp": "scp-ecg",
    "scp_ecg/healforce_prince180d_62.SCP": "scp-ecg",
    "ge_muse_xml/braveheart_example1.xml": "ge-muse-xml",
    "ge_muse_xml/braveheart_example4.xml": "ge-muse-xml",
    "ge_muse_xml/guangxi_teaching_sinus_rhythm.xml": "ge-muse-xml",
    "philips_sierra_xml/heartstart_mrx_1-03_129DYPRG.XML": "philips-xml",
    "philips_sierra_xml/pagewriter_touch_1-04_utf16le.xml": "philips-xml",
    "philips_sierra_xml/pagewriter_touch_1-04_utf16be.xml": "philips-xml",
    "mfer/suzuken_cvs01_sample.mwf": "mfer",
    "ishne/ECG_P28.01.ecg": "ishne",
    "contec_ecg90a/0000053.ECG": "contec-ecg90a",
    "contec_ecg90a/0000037.ECG": "contec-ecg90a",
}
_LEAD = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}
_ISHNE_LEADS = {5: "I", 6: "II", 7: "III", 8: "aVR", 9: "aVL", 10: "aVF", 11: "V1", 12: "V2",
                13: "V3", 14: "V4", 15: "V5", 16: "V6"}   # ISHNE 1.0 lead specification


def _lead(name: str) -> str:
    n = name.replace("MDC_ECG_LEAD_", "").strip()
    return _LEAD.get(n.upper(), n)


# --- independent decoders: µV per lead straight from the file -------------------------

def _aecg_uv(data: bytes) -> dict[str, np.ndarray]:
    root = SafeET.fromstring(data)
    out = {}
    for series in root.iter(f"{HL7}series"):
        code = series.find(f"{HL7}code")
        if code is None or code.get("code") != "RHYTHM":
            continue
        for seq in series.findall(f"{HL7}component/{HL7}sequenceSet/{HL7}component/"
                                  f"{HL7}sequence"):
            c = seq.find(f"{HL7}code")
            v = seq.find(f"{HL7}value")
            if c is None or not c.get("code", "").startswith("MDC_ECG_LEAD_") or v is None:
                continue
            origin = v.find(f"{HL7}origin")
            scale = v.find(f"{HL7}scale")
            digits = v.find(f"{HL7}digits")
            assert scale is not None and digits is not None and scale.get("unit") == "uV"
            o = float(origin.get("value", 0)) if origin is not None else 0.0
            out[_lead(c.get("code", ""))] = o + np.array(
                digits.text.split(), dtype=np.float64) * float(scale.get("value", 1))
        break
    return out


def _muse_uv(data: bytes) -> dict[str, np.ndarray]:
    root = SafeET.fromstring(data)
    out = {}
    for wf in root.iter("Waveform"):
        if wf.findtext("WaveformType") != "Rhythm":
            continue
        for ld in wf.iter("LeadData"):
            raw = base64.b64decode(ld.findtext("WaveFormData") or "")
            upb = float(ld.findtext("LeadAmplitudeUnitsPerBit") or "nan")
            out[_lead(ld.findtext("LeadID") or "")] = np.frombuffer(raw, "<i2") * upb
    return out


def _philips_uv(path: Path) -> dict[str, np.ndarray]:
    import sierraecg  # an independent XLI decoder

    return {_lead(x.label): np.asarray(x.samples, dtype=np.float64) * 5.0
            for x in sierraecg.read_file(str(path)).leads}


def _ishne_uv(data: bytes) -> dict[str, np.ndarray]:
    n_samples = struct.unpack_from("<i", data, 14)[0]
    ecg_off = struct.unpack_from("<i", data, 22)[0]
    n_leads = struct.unpack_from("<h", data, 156)[0]
    spec = struct.unpack_from(f"<{n_leads}h", data, 158)
    res_nv = struct.unpack_from(f"<{n_leads}h", data, 206)
    x = np.frombuffer(data, "<i2", count=n_leads * n_samples, offset=ecg_off).reshape(-1, n_leads)
    return {_ISHNE_LEADS[s]: x[:, j].astype(np.float64) * res_nv[j] / 1000.0
            for j, s in enumerate(spec)}


def _mfer_uv(data: bytes) -> dict[str, np.ndarray]:
    """Walk the tag-length-values (MFER part 1); int16 data, block-interleaved by channel."""
    pos, attrs, wave = 0, {}, b""
    while pos < len(data):
        tag = data[pos]
        pos += 1
        if tag == 0x3F:
            pos += 1                                    # channel number
        ln = data[pos]
        pos += 1
        if ln & 0x80:
            k = ln & 0x7F
            ln = int.from_bytes(data[pos:pos + k], "big")
            pos += k
        val = data[pos:pos + ln]
        pos += ln
        if tag == 0x1E:
            wave = val
        elif tag in (0x01, 0x04, 0x05, 0x0C) and tag not in attrs:
            attrs[tag] = val
    little = attrs.get(0x01, b"\x00")[:1] == b"\x01"   # MFER default: big endian
    order: Literal["little", "big"] = "little" if little else "big"
    big = not little
    block = int.from_bytes(attrs[0x04], order)
    n_ch = int.from_bytes(attrs[0x05], order)
    sens = attrs[0x0C]   # unit, exponent (signed), mantissa
    uv = int.from_bytes(sens[2:], order) * 10.0 ** (struct.unpack("b", sens[1:2])[0] + 6)
    blocks = np.frombuffer(wave, ">i2" if big else "<i2").reshape(-1, n_ch, block)
    x = blocks.transpose(1, 0, 2).reshape(n_ch, -1)
    return {"I": x[0] * uv, "II": x[1] * uv}


def _healforce_uv(data: bytes) -> dict[str, np.ndarray]:
    """As KaibinBao/healforcescpecg decodes it: 0-based pointers, 4 samples in 3 words."""
    s0_len = struct.unpack_from("<I", data, 10)[0]
    ptr = {struct.unpack_from("<H", data, o)[0]: struct.unpack_from("<II", data, o + 2)
           for o in range(22, 6 + s0_len, 10)}
    s6 = data[ptr[6][1]:ptr[6][1] + ptr[6][0]]
    n_leads = data[ptr[3][1] + 16]
    avm, _, _, _, size = struct.unpack_from("<HHBBH", s6, 16)
    words = np.frombuffer(s6[24:24 + size], "<i2").reshape(-1, 3)
    q = np.zeros((len(words), 4), dtype=np.int16)
    q[:, :3] = words
    q[:, 3] = ((q[:, 0] & 0x3C00) >> 2) + ((q[:, 1] & 0x3C00) >> 6) + ((q[:, 2] & 0x3C00) >> 10)
    q = q.reshape(-1, n_leads)
    v = (((((q & 0x0300) >> 8) + 0xFE) & 0xFF) << 8) + (q & 0xFF)
    v = v.astype(np.int16).astype(np.float64)
    return {f"ch{j + 1}": v[:, j] * avm / 1000.0 for j in range(n_leads)}


def _contec_uv(data: bytes) -> dict[str, np.ndarray]:
    x = np.frombuffer(data[43:len(data) - 37], "<i2").reshape(-1, 8)
    leads = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    return {n: (x[:, j] - 2048.0) * 5.0 for j, n in enumerate(leads) if (x[:, j] != 0x6800).any()}


_UV_OF_BYTES = {  # format id -> this file's own decoder of the file's bytes
    "hl7-aecg": _aecg_uv, "ge-muse-xml": _muse_uv, "ishne": _ishne_uv, "mfer": _mfer_uv,
    "contec-ecg90a": _contec_uv,
}


def _expected(rel: str) -> dict[str, np.ndarray]:
    path = FORMATS / rel
    data = path.read_bytes()
    fmt = SAMPLES[rel]
    if fmt in _UV_OF_BYTES:
        return _UV_OF_BYTES[fmt](data)
    if fmt == "philips-xml":
        return _philips_uv(path)
    if "healforce" in rel:
        return _healforce_uv(data)
    if rel.endswith("ecgtoolkit_example_eli250.scp"):   # made from the HL7 example (README)
        return _aecg_uv((FORMATS / "hl7_aecg/hl7_example_mortara_eli250.xml").read_bytes())
    return {}   # Welch Allyn SCP: Huffman-coded; checked for structure and dciodvfy only


def _dciodvfy_errors(path: Path) -> list[str]:
    if not Path(DCIODVFY).exists():
        pytest.fail("dciodvfy (dicom3tools) not installed")
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


def _dicom_uv(ds: pydicom.Dataset) -> dict[str, np.ndarray]:
    arr = ds.waveform_array(0)
    chans = ds.WaveformSequence[0].ChannelDefinitionSequence
    return {str(c.ChannelLabel): arr[:, j] for j, c in enumerate(chans)}


@pytest.mark.parametrize("rel", sorted(SAMPLES))
def test_sample_converts_with_file_values_and_passes_dciodvfy(rel: str, tmp_path: Path) -> None:
    path = FORMATS / rel
    data = path.read_bytes()
    assert detect_format(path.name, data) == SAMPLES[rel]
    part10, summary = ecg_to_part10({path.name: data})
    out = tmp_path / "ecg.dcm"
    out.write_bytes(part10)
    assert _dciodvfy_errors(out) == []
    ds = pydicom.dcmread(io.BytesIO(part10))
    got = _dicom_uv(ds)
    assert summary["quality"]["verdict"] in ("acceptable", "acceptable_with_warnings",
                                             "unacceptable")
    expected = _expected(rel)
    err = 0.0
    for lead, want in expected.items():
        have = got[lead]
        assert have.shape == want.shape, lead
        ok = np.isfinite(want)
        # positions picked from the file itself: the extremes and spread indexes
        idx = np.unique(np.r_[np.argmax(np.where(ok, want, -np.inf)),
                              np.argmin(np.where(ok, want, np.inf)),
                              np.linspace(0, len(want) - 1, 25).astype(int)])
        idx = idx[ok[idx]]
        np.testing.assert_allclose(have[idx], want[idx], atol=1e-3, err_msg=f"{rel} {lead}")
        err = max(err, float(np.abs(have[ok] - want[ok]).max()))
    if {"I", "II"} <= set(expected) and "aVR" not in expected:
        # 8-lead carts: the four derived limb leads are exact (half-step sensitivity)
        i1, i2 = expected["I"], expected["II"]
        for lead, want in (("III", i2 - i1), ("aVR", -(i1 + i2) / 2), ("aVL", i1 - i2 / 2),
                           ("aVF", i2 - i1 / 2)):
            ok = np.isfinite(want)
            np.testing.assert_allclose(got[lead][ok], want[ok], atol=1e-3, err_msg=lead)
    w = ds.WaveformSequence[0]
    print(f"\nFORMAT {SAMPLES[rel]} {rel}: {len(got)} leads x {w.NumberOfWaveformSamples}"
          f" at {w.SamplingFrequency} Hz, max |uV| error {err:.6f} "
          f"over {len(expected)} stored leads")
    if rel.startswith(("hl7_aecg/hl7", "scp_ecg/ecgtoolkit")):
        assert str(ds.PatientName) == "Clark" and ds.AcquisitionDateTime.startswith("20021122091")
    if "welchallyn" in rel:
        assert ds.WaveformSequence[0].SamplingFrequency == pytest.approx(1e6 / 1667, rel=1e-6)
    assert len(got) >= 2


def test_chinese_statements_come_through() -> None:
    for rel, text in (("ge_muse_xml/guangxi_teaching_sinus_rhythm.xml", "窦性心律"),
                      ("hl7_aecg/lepu_lead12_1.xml", "窦性心律")):
        part10, _ = ecg_to_part10({Path(rel).name: (FORMATS / rel).read_bytes()})
        ds = pydicom.dcmread(io.BytesIO(part10))
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        notes = [str(a.UnformattedTextValue) for a in ds.WaveformAnnotationSequence]
        assert any(text in n for n in notes), notes
    lepu = pydicom.dcmread(io.BytesIO(ecg_to_part10(
        {"l.xml": (FORMATS / "hl7_aecg/lepu_lead12_1.xml").read_bytes()})[0]))
    assert lepu.PatientID == "2022061608551900004"


@pytest.mark.parametrize("encoding,declared", [("gb18030", "GB2312"), ("gb18030", "GBK"),
                                               ("utf-16", "UTF-16"), ("utf-8", "UTF-8")])
def test_generated_aecg_with_chinese_name(encoding: str, declared: str) -> None:
    text = (FORMATS / "hl7_aecg/hl7_example_mortara_eli250.xml").read_text("utf-8")
    assert "<name>Clark</name>" in text
    text = text.replace("<name>Clark</name>", "<name>王小东</name>", 1)
    text = re.sub(r"^\ufeff?\s*<\?xml[^>]*\?>", "", text, count=1).lstrip()
    doc = f'<?xml version="1.0" encoding="{declared}"?>\n{text}'.encode(encoding)
    got = read_ecg_file("wang.xml", doc)
    assert got.meta.patient_name == "王小东"
    ds = pydicom.dcmread(io.BytesIO(ecg_to_part10({"wang.xml": doc})[0]))
    assert str(ds.PatientName) == "王小东" and ds.SpecificCharacterSet == "ISO_IR 192"


def test_generated_ishne_with_gb18030_name() -> None:
    data = bytearray((FORMATS / "ishne/ECG_P28.01.ecg").read_bytes())
    name = "王".encode("gb18030").ljust(40, b"\x00")
    data[68:108] = name
    data[28:68] = "小东".encode("gb18030").ljust(40, b"\x00")
    data[8:10] = struct.pack("<H", binascii.crc_hqx(bytes(data[10:522]), 0xFFFF))
    ds = pydicom.dcmread(io.BytesIO(ecg_to_part10({"w.ecg": bytes(data)})[0]))
    assert str(ds.PatientName) == "王^小东"


def test_ishne_with_its_annotation_file() -> None:
    files = {n: (FORMATS / "ishne" / n).read_bytes() for n in ("ECG_P28.01.ecg", "ECG_P28.01.ann")}
    got = read_ecg_files(files)
    assert any("97 ISHNE annotations" in n for n in got.meta.notes)
    _, summary = ecg_to_part10(files)
    assert summary["format"] == "ISHNE Holter" and summary["sop_class_uid"].endswith(".9.1.3")


@pytest.mark.parametrize("rel", sorted(SAMPLES))
def test_truncated_sample_is_refused_naming_the_file(rel: str) -> None:
    data = (FORMATS / rel).read_bytes()
    name = Path(rel).name
    end = len(data)
    if "healforce" in rel:            # padded past its (16-bit) record length
        end = struct.unpack_from("<H", data, 4)[0]
    for cut in (int(len(data) * 0.7), end - 3):
        with pytest.raises(PeerError) as err:
            ecg_to_part10({name: data[:cut]})
        assert name in str(err.value), str(err.value)


@pytest.mark.parametrize("rel,where", [
    ("scp_ecg/welchallyn_cardiocontrol_2017.SCP", "CRC"),
    ("scp_ecg/ecgtoolkit_example_eli250.scp", "CRC"),
    ("ishne/ECG_P28.01.ecg", "header CRC"),
    ("hl7_aecg/calecg2_example2.xml", "")])
def test_flipped_bytes_are_refused(rel: str, where: str) -> None:
    data = bytearray((FORMATS / rel).read_bytes())
    at = 300 if rel.startswith("ishne") else len(data) // 2
    for i in range(at, at + 32):
        data[i] ^= 0x5A
    with pytest.raises(EcgFileError) as err:
        read_ecg_file(Path(rel).name, bytes(data))
    assert Path(rel).name in str(err.value) and where in str(err.value)


def test_healforce_scp_keeps_its_quirks_apart() -> None:
    data = (FORMATS / "scp_ecg/healforce_prince180d_62.SCP").read_bytes()
    got = read_ecg_file("62.SCP", data)
    assert got.record.fs_hz == 150.0 and got.record.n_samples == 4500
    assert got.meta.acquired is not None and got.meta.acquired.date().isoformat() == "2019-08-08"
    # A conformant-looking SCP header with a wrong CRC is still refused.
    bad = bytearray((FORMATS / "scp_ecg/ecgtoolkit_example_eli250.scp").read_bytes())
    bad[0] ^= 0xFF
    with pytest.raises(EcgFileError, match="record CRC"):
        read_ecg_file("x.scp", bytes(bad))


@pytest.mark.parametrize("data,recognised", [
    (b'<?xml version="1.0"?>\n<foo xmlns="urn:example"><bar/></foo>',
     "XML root element 'foo' in namespace 'urn:example'"),
    (b"MZ\x90\x00" + bytes(200), "first bytes 4d 5a 90 00"),
    ('<?xml version="1.0" encoding="UTF-16"?><RestingEcg/>'.encode("utf-16"),
     "XML root element 'RestingEcg'")])
def test_unknown_format_says_what_was_recognised(data: bytes, recognised: str) -> None:
    with pytest.raises(EcgFileError) as err:
        ecg_to_part10({"x.bin": data})
    assert "unsupported ECG format" in str(err.value) and recognised in str(err.value)


def test_entity_expansion_is_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><AnnotatedECG xmlns="urn:hl7-org:v3">'
            b"&b;</AnnotatedECG>")
    with pytest.raises(EcgFileError, match="ENTITY"):
        read_ecg_file("bomb.xml", bomb)


def test_ingest_quarantines_a_corrupt_cart_file_and_stores_nothing(tmp_path: Path) -> None:
    from fenji.gateway.store.db import Store

    store = Store(tmp_path / "store")
    data = (FORMATS / "scp_ecg/welchallyn_cardiocontrol_2017.SCP").read_bytes()
    res = ingest_files(store, {"wa.SCP": data[: len(data) // 2]}, source="test")
    assert res["outcome"] == "rejected" and "wa.SCP" in res["reason"]
    ok = ingest_files(store, {"wa.SCP": data}, source="test")
    assert ok["outcome"] == "stored", ok
    again = ingest_files(store, {"wa.SCP": data}, source="test")
    assert again["outcome"] == "duplicate"


def test_cart_files_over_http_and_watched_folder(tmp_path: Path) -> None:
    import aiohttp

    async def post(url: str, name: str, data: bytes,
                   headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
        async with aiohttp.ClientSession() as s, s.post(url + "/api/ecg", data=form,
                                                              headers=headers) as r:
            return r.status, await r.json()

    watch = tmp_path / "edge" / "inbox"
    with NodeProcess(tmp_path / "edge", name="edge", workers=1, users={"tech": "technician"},
                     extra_toml='[ingest]\nwatch_dir = "inbox"\nwatch_interval_s = 0.2\n'
                                'settle_s = 0.2\n') as node:
        muse = (FORMATS / "ge_muse_xml/guangxi_teaching_sinus_rhythm.xml").read_bytes()
        status, body = asyncio.run(post(node.http_url, "sinus.xml", muse, node.auth("tech")))
        assert status == 201, body
        assert body["outcome"] == "stored" and body["format"] == "GE MUSE XML"
        assert len(body["leads"]) == 12
        bad, err = asyncio.run(post(node.http_url, "cut.xml", muse[:50000], node.auth("tech")))
        assert 400 <= bad < 500 and "cut.xml" in err["message"]
        assert len(node.stored()) == 1
        watch.mkdir(exist_ok=True)
        shutil.copy(FORMATS / "scp_ecg/ecgtoolkit_example_eli250.scp", watch / "ex.scp")
        shutil.copy(FORMATS / "ishne/ECG_P28.01.ecg", watch / "h.ecg")
        shutil.copy(FORMATS / "ishne/ECG_P28.01.ann", watch / "h.ann")
        (watch / "broken.xml").write_bytes(muse[:40000])
        until(lambda: all((watch / d / f).exists() for d, f in (
            ("done", "ex.scp"), ("done", "h.ecg"), ("done", "h.ann"), ("failed", "broken.xml"))),
            120, "the watched folder to take the cart files")
        reason = (watch / "failed" / "broken.xml.reason.txt").read_text()
        assert "broken.xml" in reason
        rows = node.stored()
        assert len(rows) == 3
        assert {str(r["sop_class_uid"])[-5:] for r in rows} == {"9.1.1", "9.1.3"}


def _scp_with_name(data: bytes, last: bytes, first: bytes) -> bytes:
    """An SCP-ECG record with section 1 tags 0/1 (last/first name) replaced and every
    length, pointer and CRC recomputed (EN 1064 §5.2-5.4)."""
    from fenji.gateway.ecg.formats.scp_ecg import check_container

    secs = sorted(((k, v) for k, v in check_container("x", data).items() if k != 0),
                  key=lambda kv: kv[1][0])
    s0_len = struct.unpack_from("<I", data, 10)[0]
    parts = [(0, data[6:6 + s0_len])]
    pos = 6 + s0_len
    for sid, (start, slen) in secs:
        assert start == pos, "sections are contiguous"
        parts.append((sid, data[start:start + slen]))
        pos += slen
    (k1,) = [i for i, (sid, _) in enumerate(parts) if sid == 1]
    s1 = parts[k1][1]
    tags, p = [], 16
    while p + 3 <= len(s1):
        t, ln = s1[p], struct.unpack_from("<H", s1, p + 1)[0]
        tags.append((t, s1[p + 3:p + 3 + ln]))
        p += 3 + ln
        if t == 255:
            break
    if 1 not in {t for t, _ in tags}:
        tags.insert(0, (1, b""))
    tags = [(t, {0: last + b"\0", 1: first + b"\0"}.get(t, v)) for t, v in tags]
    body = b"".join(bytes([t]) + struct.pack("<H", len(v)) + v for t, v in tags)
    body += b"\0" * (len(body) % 2)

    def section(sid: int, header_rest: bytes, content: bytes) -> bytes:
        sec = struct.pack("<HI", sid, 8 + len(header_rest) + len(content)) + header_rest + content
        return struct.pack("<H", binascii.crc_hqx(sec, 0xFFFF)) + sec

    parts[k1] = (1, section(1, s1[8:16], body))
    index, table = 6 + s0_len + 1, {}
    table[0] = (s0_len, 7)
    for sid, sec in parts[1:]:
        table[sid] = (len(sec), index)
        index += len(sec)
    s0 = bytearray(parts[0][1])
    for off in range(16, len(s0) - 9, 10):
        sid = struct.unpack_from("<H", s0, off)[0]
        if sid in table:
            struct.pack_into("<II", s0, off + 2, *table[sid])
    parts[0] = (0, section(0, bytes(s0[8:16]), bytes(s0[16:])))
    rec = b"".join(sec for _, sec in parts)
    rec = struct.pack("<I", 6 + len(rec)) + rec
    return struct.pack("<H", binascii.crc_hqx(rec, 0xFFFF)) + rec


@pytest.mark.parametrize("rel", ["scp_ecg/welchallyn_cardiocontrol_2017.SCP",
                                 "scp_ecg/ecgtoolkit_example_eli250.scp"])
def test_generated_scp_with_gb18030_name(rel: str) -> None:
    data = (FORMATS / rel).read_bytes()
    same = _scp_with_name(data, b"test", b"test")
    assert read_ecg_file("s.scp", same).record.n_samples > 0      # the rebuild is sound
    wang = _scp_with_name(data, "王".encode("gb18030"), "小东".encode("gb18030"))
    ds = pydicom.dcmread(io.BytesIO(ecg_to_part10({"wang.scp": wang})[0]))
    assert str(ds.PatientName) == "王^小东"
    before = _dicom_uv(pydicom.dcmread(io.BytesIO(ecg_to_part10({"a.scp": data})[0])))
    after = _dicom_uv(ds)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_format_is_detected_by_content_not_name() -> None:
    scp = (FORMATS / "scp_ecg/ecgtoolkit_example_eli250.scp").read_bytes()
    muse = (FORMATS / "ge_muse_xml/braveheart_example1.xml").read_bytes()
    assert detect_format("ecg.xml", scp) == "scp-ecg"
    assert detect_format("ecg.scp", muse) == "ge-muse-xml"
    assert detect_format("noext", (FORMATS / "mfer/suzuken_cvs01_sample.mwf").read_bytes()) \
        == "mfer"


def test_ecg_check_cli_reads_cart_files() -> None:
    import json
    import sys

    files = [str(FORMATS / r) for r in ("scp_ecg/welchallyn_cardiocontrol_2017.SCP",
                                        "philips_sierra_xml/pagewriter_touch_1-04_utf16le.xml")]
    out = subprocess.run([sys.executable, "-m", "fenji.gateway.cli.main", "ecg", "check", "--json",
                          *files, str(FORMATS / "README.md")],
                         capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [len(r["leads"]) for r in rows] == [12, 12] and rows[0]["fs"] == pytest.approx(599.88)
    assert out.returncode == 1 and "README.md" in out.stderr
    assert "unsupported ECG format" in out.stderr
