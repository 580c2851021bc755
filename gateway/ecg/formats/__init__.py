"""ECG carts' own export formats -> `EcgFile` (an `EcgRecord` in mV plus `EcgMeta`).

One module per format family; the format is recognised from the content (magic
bytes, XML root element), never from the file name alone.

| format | module | reader |
|---|---|---|
| HL7 aECG, GE MUSE XML, Philips SierraECG XML | `xml_formats` | ecgdatakit, text normalised here |
| SCP-ECG | `scp_ecg` | container/CRC checks here, samples by ecgdatakit |
| SCP-ECG from Healforce recorders | `healforce` | own parser (non-conformant files) |
| ISHNE, MFER | `holter` | ecgdatakit, ISHNE header checks here |
| Contec ECG90A | `contec` | own parser |

>>> detect_format("x.bin", b"ISHNE1.0" + bytes(600))
'ishne'
>>> try:
...     detect_format("x.xml", b'<?xml version="1.0"?><foo xmlns="urn:x"/>')
... except EcgFileError as exc:
...     print(exc)
x.xml: unsupported ECG format: XML root element 'foo' in namespace 'urn:x'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from fenji.codecs.ecg.record import EcgRecordError
from fenji.gateway.ecg.formats.common import (
    MAX_FILE_BYTES,
    MAX_SAMPLE_VALUES,
    MAX_XML_BYTES,
    EcgFile,
    EcgFileError,
    EcgMeta,
)
from fenji.gateway.ecg.formats.contec import looks_like_contec, read_contec
from fenji.gateway.ecg.formats.holter import (
    ANN_MAGIC,
    ISHNE_MAGIC,
    check_ishne_ann,
    read_ishne,
    read_mfer,
)
from fenji.gateway.ecg.formats.scp_ecg import looks_like_scp, read_scp
from fenji.gateway.ecg.formats.xml_formats import (
    HL7_NS,
    read_aecg,
    read_muse,
    read_philips,
    refuse_entities,
    root_element,
    xml_text,
)

__all__ = ["FORMATS", "MAX_FILE_BYTES", "EcgFile", "EcgFileError", "EcgMeta", "detect_format",
           "read_ecg_file", "read_ecg_files"]

#: format id -> (description, reader)
FORMATS: dict[str, tuple[str, Callable[[str, bytes], EcgFile]]] = {
    "hl7-aecg": ("HL7 aECG (FDA annotated ECG XML)", read_aecg),
    "ge-muse-xml": ("GE MUSE RestingECG XML", read_muse),
    "philips-xml": ("Philips SierraECG / PhilipsECG XML", read_philips),
    "scp-ecg": ("SCP-ECG (EN 1064)", read_scp),
    "ishne": ("ISHNE 1.0 Holter", read_ishne),
    "mfer": ("MFER (ISO 22077)", read_mfer),
    "contec-ecg90a": ("Contec ECG90A native file", read_contec),
}

_XML = frozenset({"hl7-aecg", "ge-muse-xml", "philips-xml"})
_XML_ROOTS = {("AnnotatedECG", HL7_NS): "hl7-aecg", ("RestingECG", ""): "ge-muse-xml",
              ("restingecgdata", "http://www3.medical.philips.com"): "philips-xml"}


def _first_bytes(data: bytes) -> str:
    head = data[:16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    return f"first bytes {head.hex(' ')} ({text!r}), {len(data)} bytes"


def _is_mfer(data: bytes) -> bool:
    # MFER: a stream of tag-length-values; files start with the preamble (0x40,
    # 32 bytes of text) or with a byte-order / version / character-code tag.
    if len(data) < 8:
        return False
    if data[0] == 0x40 and data[1] == 0x20:
        return all(32 <= b < 127 or b == 0 for b in data[2:34])
    return data[0] in (0x01, 0x02, 0x03) and data[1] in (1, 2, 3) and data[0] != 0x3F


def detect_format(name: str, data: bytes) -> str:
    """Format id (a key of `FORMATS`) from the content, or `EcgFileError`
    ``unsupported ECG format`` with what was recognised."""
    if data.startswith(ISHNE_MAGIC):
        return "ishne"
    if data.startswith(ANN_MAGIC):
        raise EcgFileError(f"{name}: an ISHNE annotation file needs its .ecg file beside it")
    head = data[:4096].lstrip(b"\xef\xbb\xbf\xff\xfe\x00\t\r\n ")
    if head.startswith(b"<") or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            text = xml_text(name, data)
        except EcgFileError:
            text = data[:65536].decode("utf-8", "replace")
        refuse_entities(name, text)
        root = root_element(text)
        if root is None:
            raise EcgFileError(f"{name}: unsupported ECG format: XML without a readable root "
                               "element")
        fmt = _XML_ROOTS.get(root) or _XML_ROOTS.get((root[0], ""))
        if fmt is None:
            raise EcgFileError(f"{name}: unsupported ECG format: XML root element {root[0]!r} "
                               f"in namespace {root[1]!r}")
        return fmt
    if looks_like_scp(data):
        return "scp-ecg"
    if _is_mfer(data):
        return "mfer"
    if looks_like_contec(data):
        return "contec-ecg90a"
    if len(data) >= 132 and data[128:132] == b"DICM":
        raise EcgFileError(f"{name}: a DICOM file, not an ECG cart export")
    raise EcgFileError(f"{name}: unsupported ECG format: {_first_bytes(data)}")


def read_ecg_file(name: str, data: bytes) -> EcgFile:
    """Read one cart file (format from its content)."""
    if len(data) > MAX_FILE_BYTES:
        raise EcgFileError(f"{name}: {len(data)} bytes exceeds the limit of {MAX_FILE_BYTES}")
    fmt = detect_format(name, data)
    if fmt in _XML and len(data) > MAX_XML_BYTES:
        raise EcgFileError(f"{name}: XML of {len(data)} bytes exceeds the limit of "
                           f"{MAX_XML_BYTES}")
    if fmt not in _XML and len(data) // 2 > MAX_SAMPLE_VALUES:
        raise EcgFileError(f"{name}: {len(data)} bytes of samples exceed the limit of "
                           f"{MAX_SAMPLE_VALUES} values")
    try:
        return FORMATS[fmt][1](name, data)
    except EcgRecordError as exc:  # values no ECG has: the file's scale or rate is wrong
        raise EcgFileError(f"{name}: {exc}") from exc


def read_ecg_files(files: Mapping[str, bytes]) -> EcgFile:
    """Read one recording given as its files: one cart file, or an ISHNE ``.ecg``
    with its optional ``.ann`` annotation file."""
    anns = [n for n, b in files.items() if b.startswith(ANN_MAGIC)]
    rest = [n for n in files if n not in anns]
    if len(rest) != 1 or len(anns) > 1:
        raise EcgFileError(f"expected one ECG file (plus an ISHNE .ann), got {sorted(files)}")
    name = rest[0]
    out = read_ecg_file(name, files[name])
    if anns:
        if out.meta.format != "ISHNE Holter":
            raise EcgFileError(f"{anns[0]}: an ISHNE annotation file goes with an ISHNE .ecg, "
                               f"not {out.meta.format}")
        n_ann = check_ishne_ann(anns[0], files[anns[0]])
        note = f"{anns[0]}: {n_ann} ISHNE annotations (not stored)"
        out = dataclasses.replace(out, meta=dataclasses.replace(
            out.meta, notes=(*out.meta.notes, note)))
    return out
