"""(0008,0005) Specific Character Set: its defined terms, what modalities write
instead, and whether a config's ``dicom.default_character_set`` is one of them.

Plain data and string rules, no pydicom: every CLI command reads the config, and
importing pydicom costs a command about 0.35 s of CPU before it does anything (on
the urgent ECG's path, ``fenji case send``).  Decoding lives in
:mod:`fenji.gateway.dicom.charset`.
"""

from __future__ import annotations

import re

# pydicom's table holds two terms that are not DICOM defined terms; never accept them.
_NOT_DEFINED = {"ISO 2022 GBK", "ISO 2022 58"}
# Defined terms (PS3.3 C.12.1.1.2, Tables C.12-2 … C.12-5) -> Python codec: pydicom's
# table (pydicom.charset.python_encoding) without those two; a test holds them equal.
DEFINED_TERMS: dict[str, str] = {
    "ISO_IR 6": "iso8859",
    "ISO_IR 13": "shift_jis",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 126": "iso_ir_126",
    "ISO_IR 127": "iso_ir_127",
    "ISO_IR 138": "iso_ir_138",
    "ISO_IR 144": "iso_ir_144",
    "ISO_IR 148": "iso_ir_148",
    "ISO_IR 166": "iso_ir_166",
    "ISO 2022 IR 6": "iso8859",
    "ISO 2022 IR 13": "shift_jis",
    "ISO 2022 IR 87": "iso2022_jp",
    "ISO 2022 IR 100": "latin_1",
    "ISO 2022 IR 101": "iso8859_2",
    "ISO 2022 IR 109": "iso8859_3",
    "ISO 2022 IR 110": "iso8859_4",
    "ISO 2022 IR 126": "iso_ir_126",
    "ISO 2022 IR 127": "iso_ir_127",
    "ISO 2022 IR 138": "iso_ir_138",
    "ISO 2022 IR 144": "iso_ir_144",
    "ISO 2022 IR 148": "iso_ir_148",
    "ISO 2022 IR 149": "euc_kr",
    "ISO 2022 IR 159": "iso2022_jp_2",
    "ISO 2022 IR 166": "iso_ir_166",
    "ISO 2022 IR 58": "iso_ir_58",
    "ISO_IR 192": "UTF8",
    "GB18030": "GB18030",
    "GBK": "GBK",
}
# Stand-alone multi-byte sets: no code extensions, a value is one codec throughout.
STAND_ALONE = frozenset({"GB18030", "GBK", "ISO_IR 192"})  # pydicom.charset.STAND_ALONE_ENCODINGS
# What modalities write in the field instead of a defined term -> the defined term
# whose decoding is the same for their bytes.  GB2312 (EUC-CN) is a subset of GBK
# and GB18030; "ISO_IR_100"-style spellings are pydicom's own corrections.
_ALIASES = {"GB2312": "GB18030", "UTF-8": "ISO_IR 192", "UTF8": "ISO_IR 192",
            "ISO_IR 6": "", "ISO 2022 IR 6": ""}
_SPELLING = re.compile(r"^(ISO)[ _-]?(2022)?[ _-]?IR[ _-]?(\d+)$")


def normalize_term(term: str) -> str | None:
    """A (0008,0005) value as a defined term (``""`` for the default), or None if unknown."""
    t = term.strip().upper()
    if t in _ALIASES:
        return _ALIASES[t]
    if t in DEFINED_TERMS or t == "":
        return t
    m = _SPELLING.match(t)
    if m:  # "ISO-IR 100", "ISO_IR_100", "ISO_IR 58" (for ISO 2022 IR 58): the defined term
        plain, ext = f"ISO_IR {m.group(3)}", f"ISO 2022 IR {m.group(3)}"
        for fixed in ((ext, plain) if m.group(2) else (plain, ext)):
            if fixed in DEFINED_TERMS:
                return _ALIASES.get(fixed, fixed)
    return None


def check_term(term: str) -> str | None:
    """Why ``term`` is not usable as ``dicom.default_character_set`` (None: it is)."""
    if not term.strip():
        return None
    if "\\" in term:
        terms = term.split("\\")
    else:
        terms = [term]
    for t in terms:
        if normalize_term(t) is None:
            known = ", ".join(sorted(t for t in DEFINED_TERMS if t))
            return f"{t.strip()!r} is not a DICOM defined term for (0008,0005) (known: {known})"
    return None
