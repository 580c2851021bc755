"""DICOM text as Unicode: (0008,0005) Specific Character Set, decoded once, checked.

Every text value fenji indexes, answers or shows is decoded here with the
instance's Specific Character Set (PS3.5 6.1, PS3.3 C.12.1.1.2): one value
(``ISO_IR 100``, ``ISO_IR 192``, ``GB18030``, ``GBK``) or several with ISO 2022
code extensions (``\\ISO 2022 IR 58``, ``ISO 2022 IR 13\\ISO 2022 IR 87``,
``\\ISO 2022 IR 149``; PS3.5 Annexes H, I, K).  An instance that declares none
is decoded with the node's ``[dicom] default_character_set`` when one is set
(modalities that write GBK or GB18030 and declare nothing), which is recorded.

The defined terms and their Python codecs are :mod:`fenji.gateway.dicom.terms`
(pydicom's table, written out so that reading a config does not load pydicom;
a test holds them equal), and the decoding of escape-sequence fragments, except where pydicom is
wrong (tested in ``tests/gateway/test_charset.py``):

* ``ISO 2022 IR 58`` (GB2312 designated to G1 by ``ESC $ ) A``): pydicom 3.0.2
  decodes the fragment with Python's ``iso_ir_58`` codec *with* the escape
  sequence, which that codec (plain EUC-CN) passes through as text, so
  ``Zhang^XiaoDong=\\x1b$)A张^小东``.  fenji strips the sequence and decodes the
  fragment as EUC-CN itself.  And pydicom *writes* such a value without the escape
  sequence (GB2312 bytes right after ASCII), as do writers built on it: bytes
  above 0x7F with no escape, where IR 58 is the only set beyond ASCII, can only be
  GB2312 and are decoded so (else they read as Latin-1 mojibake, ``Íõ`` for 王).

Multi-byte sets without code extensions (GB18030, GBK, UTF-8) may have ``\\``
(0x5C) and ``^`` (0x5E) as the second byte of a character, so a value is
always decoded whole and split into values or name components afterwards,
in Unicode.

Person names keep their component groups: ``Alphabetic=Ideographic=Phonetic``
in one string (``Wang^XiaoDong=王^小东``), split by :func:`pn_groups`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom import charset as pd_charset

from fenji.gateway.dicom.terms import DEFINED_TERMS, STAND_ALONE, normalize_term
from fenji.gateway.errors import PeerError

log = logging.getLogger(__name__)

ESC = b"\x1b"
# ESC $ ) A: GB2312 in G1 (PS3.3 Table C.12-4); see the module docstring.
_IR58_ESC = b"\x1b$)A"
_IR58_CODEC = "gb2312"
# pydicom resets the code element at these bytes in escape fragments (PS3.5 6.1.2.5.3).
_PN_DELIMS = {0x5E, 0x3D, 0x5C}
_TEXT_DELIMS = set(pd_charset.TEXT_VR_DELIMS) | {0x5C}
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_MULTI_TEXT_VRS = {"ST", "LT", "UT"}  # backslash is text, not a value separator


class CharsetError(PeerError):
    """(0008,0005) names a character set fenji cannot decode."""


@dataclass(frozen=True, slots=True)
class Charset:
    """The character set text of one data set is decoded with.

    ``terms``: defined terms as in (0008,0005), the first ``""`` for the default
    repertoire; ``source``: ``declared`` (the data set's own), ``default`` (the
    node's ``dicom.default_character_set``, none declared) or ``none``
    (neither; non-ASCII bytes are then decoded as UTF-8, else Latin-1).
    """

    terms: tuple[str, ...] = ("",)
    source: str = "none"

    @property
    def value(self) -> str:
        """The terms as (0008,0005) writes them, ``\\``-separated ("" for the default)."""
        return "\\".join(self.terms)

    @property
    def codecs(self) -> list[str]:
        return [DEFINED_TERMS[t] if t else DEFINED_TERMS["ISO_IR 6"] for t in self.terms]


NONE = Charset()


def parse(declared: str | bytes) -> tuple[str, ...]:
    """(0008,0005) as defined terms; raises :class:`CharsetError` naming an unknown one."""
    text = declared.decode("latin-1") if isinstance(declared, bytes) else declared
    text = text.rstrip("\x00 ")
    out = []
    for i, raw in enumerate(text.split("\\")):
        term = normalize_term(raw)
        if term is None:
            raise CharsetError(f"(0008,0005) Specific Character Set value {i + 1} = "
                               f"{raw.strip()[:64]!r} is not a defined term "
                               "(PS3.3 C.12.1.1.2)")
        out.append(term)
    if len(out) > 1 and any(t in STAND_ALONE for t in out):
        raise CharsetError(f"(0008,0005) Specific Character Set {text[:64]!r}: "
                           f"{', '.join(sorted(STAND_ALONE))} take no code extensions "
                           "(PS3.3 C.12.1.1.2)")
    return tuple(out) if out else ("",)


def resolve(declared: str | bytes | None, default: str | None = None) -> Charset:
    """The character set of a data set that declares ``declared`` (None: absent)."""
    if declared is not None:
        text = declared.decode("latin-1") if isinstance(declared, bytes) else declared
        if text.strip("\x00 \\"):
            return Charset(parse(text), "declared")
    if default:
        return Charset(parse(default), "default")
    return NONE


def resolve_or_fallback(declared: str | bytes | None, default: str | None = None) -> Charset:
    """:func:`resolve`, but a (0008,0005) fenji cannot decode gives the undeclared
    way (``default``, else UTF-8, else Latin-1) with source ``invalid`` instead of an
    error: ingest accepts such an instance (its pixels are what a reader needs), so
    every later reader of it must decode it the same way."""
    try:
        return resolve(declared, default)
    except CharsetError:
        return Charset(resolve(None, default).terms, "invalid")


def _escaped(fragment: bytes, codecs: list[str], delims: set[int]) -> str:
    if fragment.startswith(_IR58_ESC) and "iso_ir_58" in codecs:
        # pydicom 3.0.2 leaves ESC $ ) A in the text (module docstring).  The
        # fragment is EUC-CN: ASCII delimiters stay ASCII, so it decodes whole.
        return fragment[len(_IR58_ESC):].decode(_IR58_CODEC)
    return str(pd_charset.decode_bytes(fragment, codecs, delims))


def _unescaped_ir58(raw: bytes, cs: Charset) -> bool:
    """Bytes above 0x7F with no escape sequence, in a data set whose only set beyond
    ASCII is IR 58: they can only be GB2312 (G1) whose ``ESC $ ) A`` was left out."""
    return (not raw.isascii() and cs.terms[0] in ("", "ISO 2022 IR 6")
            and set(cs.terms[1:]) == {"ISO 2022 IR 58"})


def decode(raw: bytes, cs: Charset, vr: str = "LO") -> tuple[str, bool]:
    """``raw`` as Unicode under ``cs``; the flag says whether bytes were replaced.

    A value that does not decode under its declared set is decoded with
    replacement characters (U+FFFD), so a broken name shows as broken rather
    than as another name; callers log it (without the text).
    """
    if not raw:
        return "", False
    codecs = cs.codecs
    if cs.source == "none" or (cs.source == "invalid" and cs.terms == ("",)):
        if raw.isascii():
            return raw.decode("ascii"), False
        try:  # the de facto practice of undeclared writers: UTF-8, else Latin-1
            return raw.decode("utf-8"), False
        except UnicodeDecodeError:
            return raw.decode("latin-1"), False
    first = codecs[0]
    if ESC not in raw and _unescaped_ir58(raw, cs):
        try:  # pydicom writes GB2312 under IR 58 without ESC $ ) A (module docstring)
            return raw.decode(_IR58_CODEC), False
        except UnicodeDecodeError:
            pass
    if ESC not in raw or cs.terms[0] in STAND_ALONE:
        try:
            return raw.decode(first), False
        except UnicodeDecodeError:
            return raw.decode(first, errors="replace"), True
    delims = _PN_DELIMS if vr == "PN" else _TEXT_DELIMS if vr in _MULTI_TEXT_VRS else {0x5C}
    out = []
    bad = False
    for fragment in re.findall(b"(^[^\x1b]+|[\x1b][^\x1b]*)", raw, flags=re.S):
        try:
            if fragment.startswith(ESC):
                text = _escaped(fragment, codecs, delims)
                bad |= "\ufffd" in text  # pydicom's own fallback for undecodable bytes
            else:
                text = fragment.decode(first)
        except (UnicodeDecodeError, LookupError, ValueError):
            text, bad = fragment.decode(first, errors="replace"), True
        out.append(text)
    return "".join(out), bad


def decode_value(raw: bytes, cs: Charset, vr: str) -> tuple[str, bool]:
    """A whole element value: decoded, padding (spaces, NUL) stripped at the end,
    and for PN trailing empty component groups dropped."""
    text, bad = decode(raw, cs, vr)
    text = text.rstrip("\x00 ")
    if vr == "PN":
        text = "\\".join(normalize_pn(v) for v in text.split("\\"))
    return text, bad


# -- person names ------------------------------------------------------------
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")  # PS3.5 6.2.1, PS3.18 F.2.2


def normalize_pn(name: str) -> str:
    """Trailing spaces of each group and trailing empty groups dropped."""
    groups = [g.rstrip(" ") for g in name.split("=")[:3]]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def pn_groups(name: str) -> list[str]:
    """``"Wang^XiaoDong=王^小东"`` -> ``["Wang^XiaoDong", "王^小东", ""]``."""
    groups = name.split("=")[:3]
    return groups + [""] * (3 - len(groups))


def pn_json(name: str) -> dict[str, str]:
    """One PN value as PS3.18 F.2.2 JSON: only the groups that are present."""
    return {key: g for key, g in zip(PN_GROUPS, pn_groups(name), strict=True) if g}


def pn_display(name: str) -> str:
    """A name for people: the groups present, ``^`` as spaces, ``"Wang XiaoDong / 王 小东"``."""
    parts = [" ".join(c for c in g.split("^") if c) for g in pn_groups(name)]
    return " / ".join(p for p in parts if p)


def stored_default(row: Any, node_default: str | None) -> str | None:
    """The default character set to read a stored instance with: the one applied when
    it was indexed (``charset_source = 'default'``, perhaps by the node that sent it),
    else the node's own (``dicom.default_character_set``)."""
    if row.get("charset_source") == "default" and row.get("specific_character_set"):
        return str(row["specific_character_set"])
    return node_default or None


# -- pydicom data sets -------------------------------------------------------
def dataset_charset(ds: Any, default: str | None = None,
                    parent: Charset | None = None) -> Charset:
    """The character set of a pydicom ``Dataset`` (its own (0008,0005), else ``parent``'s,
    else the default), read from the raw element so pydicom decodes nothing."""
    elem = ds.get_item(0x00080005) if 0x00080005 in ds else None
    value = getattr(elem, "value", None)
    if isinstance(value, bytes):
        declared: str | None = value.decode("latin-1")
    elif isinstance(value, str):
        declared = value
    elif isinstance(value, Iterable):
        declared = "\\".join(str(v) for v in value)
    else:
        declared = None
    if declared is not None and declared.strip("\x00 \\"):
        return resolve_or_fallback(declared, default)
    if parent is not None:
        return parent
    return resolve(None, default)


def _vr_of(elem: Any) -> str | None:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(elem.tag)).split(" or ")[0]
    except KeyError:
        return None


def decode_dataset(ds: Any, default: str | None = None, parent: Charset | None = None,
                   *, depth: int = 0) -> int:
    """Decode every still-encoded text element of ``ds`` (and its items) in place, with fenji's
    decoder instead of pydicom's; returns how many values needed replacement characters.

    Elements pydicom has already converted are left alone.  Items with their own
    (0008,0005) use it (PS3.5 6.1.2.5.3 note), others inherit the data set's.
    """
    from pydicom.errors import BytesLengthException

    cs = dataset_charset(ds, default, parent)
    bad = 0
    for tag in list(ds.keys()):
        try:
            bad += _decode_element(ds, tag, default, cs, depth)
        except (ValueError, TypeError, BytesLengthException) as exc:
            # A value whose bytes do not fit its VR (a private group length of 11,190
            # bytes as SV): left as it is; whoever reads it next says so.
            log.debug("(%04X,%04X) not decoded: %s", tag >> 16, tag & 0xFFFF, exc)
    return bad


def _decode_element(ds: Any, tag: int, default: str | None, cs: Charset, depth: int) -> int:
    """Decode element ``tag`` of ``ds`` (see :func:`decode_dataset`); the number of
    values that needed replacement characters."""
    from pydicom.dataelem import DataElement, RawDataElement
    from pydicom.valuerep import PersonName

    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        vr = _vr_of(elem)
        if vr in TEXT_VRS and isinstance(elem.value, bytes):
            text, broken = decode_value(elem.value, cs, vr)
            values: list[Any] = [text] if vr in _MULTI_TEXT_VRS else text.split("\\")
            if vr == "PN":
                values = [PersonName(v) for v in values]
            value: Any = None if not text else values[0] if len(values) == 1 else values
            ds[tag] = DataElement(tag, vr, value)
            return int(broken)
    bad = 0
    if depth < 32 and _vr_of(elem) == "SQ":
        for item in ds[tag].value or ():
            bad += decode_dataset(item, default, cs, depth=depth + 1)
    return bad
