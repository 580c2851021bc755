"""Instances in every character set fenji supports, made at test time from the shared CT.

Each :class:`Case` is one study: two CT slices with new UIDs, a patient name
with its component groups and a study/series description, written as the
bytes a modality using that (0008,0005) writes.  Bytes are made by hand from
Python's codecs (not by pydicom, whose decoder is what fenji works around):
ISO 2022 escape sequences before each run of a multi-byte set, back to the
first value's set before every delimiter (PS3.5 6.1.2.5.3, Annexes H, I, K).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from _data import ct_series
from pydicom.uid import UID, ImplicitVRLittleEndian

ESC = b"\x1b"
IR58 = ESC + b"$)A"  # GB2312 in G1 (PS3.3 Table C.12-4)
IR149 = ESC + b"$)C"  # KS X 1001 in G1
IR87 = ESC + b"$B"  # JIS X 0208 in G0
IR159 = ESC + b"$(D"  # JIS X 0212 in G0
ASCII = ESC + b"(B"  # ISO 646 back in G0
ROMAN = ESC + b"(J"  # JIS X 0201 Romaji back in G0 (after ISO 2022 IR 13)


def _pn(name: str, encode_component: Callable[[str], bytes]) -> bytes:
    """A person name, each component of each group encoded alone (delimiters in ASCII)."""
    return b"=".join(b"^".join(encode_component(c) for c in group.split("^"))
                     for group in name.split("="))


def _g1(esc: bytes, codec: str) -> Callable[[str], bytes]:
    """Runs of non-ASCII characters designated to G1 by ``esc`` (Korean, GB2312)."""
    def enc(text: str) -> bytes:
        out, run = b"", ""
        for ch in text + "\x00":
            if ch.isascii():
                if run:
                    out += esc + run.encode(codec)
                    run = ""
                if ch != "\x00":
                    out += ch.encode("ascii")
            else:
                run += ch
        return out
    return enc


def _jis(back: bytes) -> Callable[[str], bytes]:
    """JIS X 0208 / 0212 runs (Python's ISO-2022-JP-2 escapes), ``back`` to the G0 set
    of value 1; half-width katakana (JIS X 0201, ISO 2022 IR 13) as single GR bytes."""
    def enc(text: str) -> bytes:
        if all(ch.isascii() or "\uff61" <= ch <= "\uff9f" for ch in text):
            return text.encode("shift_jis")
        raw = text.encode("iso2022_jp_2")
        return raw[:-3] + back if raw.endswith(ASCII) else raw
    return enc


def _plain(codec: str) -> Callable[[str], bytes]:
    return lambda text: text.encode(codec)


@dataclass(frozen=True)
class Case:
    key: str
    declared: str | None  # (0008,0005) as written; None: absent
    name: str  # as the index must hold it (groups "=", trailing empty ones dropped)
    description: str
    encode: Callable[[str], bytes]
    default: str = ""  # dicom.default_character_set the receiving node needs
    implicit: bool = False  # written as Implicit VR Little Endian
    # Queries that must find the study (PN matching across groups).
    searches: tuple[str, ...] = ()
    # Text a person must see in the report PDF (pdftotext).
    pdf_text: tuple[str, ...] = field(default=())

    @property
    def patient_id(self) -> str:
        return f"CS-{self.key.upper()}"

    def name_bytes(self) -> bytes:
        return _pn(self.name, self.encode)

    def description_bytes(self) -> bytes:
        return self.encode(self.description)


CASES = (
    Case("default", None, "Wang^XiaoDong", "HEAD CT PLAIN", _plain("ascii"),
         searches=("Wang*", "Wang^XiaoDong"), pdf_text=("Wang XiaoDong",)),
    Case("latin1", "ISO_IR 100", "Buc^Jérôme", "Tête sans injection", _plain("latin-1"),
         searches=("Buc^Jérôme", "Buc*"), pdf_text=("Buc Jérôme",)),
    Case("utf8", "ISO_IR 192", "Wang^XiaoDong=王^小东", "头颅平扫", _plain("utf-8"),
         searches=("王*", "王^小东", "Wang*"), pdf_text=("王 小东", "Wang XiaoDong")),
    Case("gb18030", "GB18030", "Wang^XiaoDong=王^小东", "头颅平扫", _plain("gb18030"),
         searches=("王*", "王^小东", "Wang^XiaoDong"), pdf_text=("王 小东",)),
    # 淺 and 陳 in GBK: 0x5C ("\\") is the second byte of 淺 -- never a value separator.
    Case("gbk", "GBK", "Chen^XiaoQian=陳^小淺", "胸部平掃\u3000淺表", _plain("gbk"),
         searches=("陳*", "陳^小淺", "Chen*"), pdf_text=("陳 小淺",)),
    Case("ir58", "\\ISO 2022 IR 58", "Zhang^XiaoDong=张^小东", "腹部平扫 CT",
         _g1(IR58, "gb2312"), searches=("张*", "张^小东", "Zhang*"), pdf_text=("张 小东",)),
    Case("jp", "ISO 2022 IR 13\\ISO 2022 IR 87", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
         "頭部単純ＣＴ", _jis(ROMAN), searches=("山田*", "やまだ^たろう", "ﾔﾏﾀﾞ*"),
         pdf_text=("山田 太郎",)),
    # 丂 is in JIS X 0212 only (ISO 2022 IR 159).
    Case("jp0212", "\\ISO 2022 IR 87\\ISO 2022 IR 159", "Yamada^Kouichi=山田^丂一",
         "頭部 丂", _jis(ASCII), searches=("山田^丂一", "山田^丂*"), pdf_text=("山田 丂一",)),
    Case("kr", "\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동", "두부 CT 검사",
         _g1(IR149, "euc_kr"), searches=("홍*", "洪^吉洞", "Hong*"), pdf_text=("홍 길동",)),
    # GB18030 bytes and no (0008,0005): a node with default_character_set = GB18030.
    Case("undeclared", None, "Li^Ming=李^明", "腹部平扫", _plain("gb18030"),
         default="GB18030", implicit=True, searches=("李*", "李^明"), pdf_text=("李 明",)),
)
BY_KEY = {c.key: c for c in CASES}


def _uid(*parts: object) -> UID:
    digits = str(int(hashlib.sha256(repr(parts).encode()).hexdigest()[:30], 16))
    return UID(f"2.25.{digits}"[:64])


def _padded(value: bytes) -> bytes:
    return value + b" " if len(value) % 2 else value


def make_study(case: Case, out_dir: Path, n: int = 2) -> list[Path]:
    """``n`` slices of the shared CT as ``case``'s study; returns the files written.

    pydicom re-encodes text when a data set's character set changes, so the
    values are written as ASCII placeholders of the same length and the
    placeholders then replaced by the intended bytes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series = _uid(case.key, "study"), _uid(case.key, "series")
    values = {"PN": _padded(case.name_bytes()), "SD": _padded(case.description_bytes()),
              "RD": _padded(case.description_bytes() + b" 5mm")}
    holders = {k: (f"~{k}~".encode() + b"#" * len(v))[:len(v)] for k, v in values.items()}
    paths = []
    for i, src in enumerate(ct_series()[:n]):
        ds = pydicom.dcmread(src)
        sop = _uid(case.key, "sop", i)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.PatientID = case.patient_id
        ds.AccessionNumber = f"A{case.key[:8].upper()}"
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        if case.declared is not None:
            ds.SpecificCharacterSet = case.declared.split("\\")
        ds.PatientName = holders["PN"].decode()
        ds.StudyDescription = holders["SD"].decode()
        ds.SeriesDescription = holders["RD"].decode()
        path = out_dir / f"{case.key}_{i}.dcm"
        if case.implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
        else:
            ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        for k, holder in holders.items():
            assert data.count(holder) == 1, (case.key, k)
            data = data.replace(holder, values[k])
        path.write_bytes(data)
        paths.append(path)
    return paths
