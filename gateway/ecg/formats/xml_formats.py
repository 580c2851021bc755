"""HL7 aECG, GE MUSE XML and Philips SierraECG/PhilipsECG XML, read with ecgdatakit.

ecgdatakit (Apache-2.0; numpy, defusedxml, xmltodict) was checked against every
shared sample (docs/decisions.md): its digits/base64/XLI decoding matches values
decoded independently from the files.  It parses with defusedxml (no entity
expansion, no external entities).  What is done here, before it runs:

* the text is brought to UTF-8 from its declared encoding or BOM (UTF-16LE/BE,
  ISO-8859-1, and GB2312/GBK read as their superset GB18030, which Python's
  expat cannot parse itself), so a Chinese name comes through intact;
* the root element decides the format (content, not the file name);
* an internal DTD subset or ``<!ENTITY`` is refused outright, before any parser
  runs (GE MUSE's external ``<!DOCTYPE RestingECG SYSTEM ...>`` is never fetched).
"""

from __future__ import annotations

import re

from ecgdatakit.parsing.parsers.ge_muse_xml import GEMuseXMLParser
from ecgdatakit.parsing.parsers.hl7_aecg import HL7aECGParser
from ecgdatakit.parsing.parsers.sierra_xml import SierraXMLParser

from fenji.gateway.ecg.formats.common import (
    EcgFile,
    EcgFileError,
    canonical_encoding,
    library_file,
    run_library,
)

HL7_NS = "urn:hl7-org:v3"
PHILIPS_NS = "http://www3.medical.philips.com"

_DECL = re.compile(r"^\s*<\?xml\b[^>]*?\?>", re.S)
_DECL_ENC = re.compile(rb"""^\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""", re.S)
_ROOT = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)([^>]*)>", re.S)
_SKIP = re.compile(r"\s*(<\?.*?\?>|<!--.*?-->)", re.S)


def xml_text(name: str, data: bytes) -> str:
    """The document as text, decoded by BOM or declared encoding (strictly)."""
    if data.startswith(b"\xef\xbb\xbf"):
        enc, body = "utf-8", data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        enc, body = "utf-16", data
    elif data[:4] in (b"<\x00?\x00", b"\x00<\x00?"):
        enc, body = ("utf-16-le" if data[0] == 0x3C else "utf-16-be"), data
    else:
        m = _DECL_ENC.match(data[:512])
        enc = canonical_encoding(m.group(1).decode("ascii")) if m else "utf-8"
        body = data
    try:
        return body.decode(enc)
    except LookupError:
        raise EcgFileError(f"{name}: XML declares unknown encoding {enc!r}") from None
    except UnicodeDecodeError as exc:
        raise EcgFileError(f"{name}: XML text is not valid {enc} at byte {exc.start}") from None


def root_element(text: str) -> tuple[str, str] | None:
    """(local name, namespace) of the document element, from the text (no parser)."""
    pos = 0
    while True:
        m = _SKIP.match(text, pos)
        if not m:
            break
        pos = m.end()
    head = text[pos:pos + 4096].lstrip()
    m = re.match(r"<!DOCTYPE\s+[^>\[]*>\s*", head)
    if m:                                    # GE MUSE: <!DOCTYPE RestingECG SYSTEM "restecg.dtd">
        head = head[m.end():]
        while (c := _SKIP.match(head)) is not None:
            head = head[c.end():].lstrip()
    m = _ROOT.match(head)
    if not m:
        return None
    prefix = (m.group(1) or "")[:-1]
    attr = "xmlns" + (f":{prefix}" if prefix else "")
    ns = re.search(attr + r"""\s*=\s*["']([^"']*)["']""", m.group(3))
    return m.group(2), ns.group(1) if ns else ""


def refuse_entities(name: str, text: str) -> None:
    if "<!ENTITY" in text or re.search(r"<!DOCTYPE[^>]*\[", text[:65536]):
        raise EcgFileError(f"{name}: XML with an internal DTD or ENTITY declaration is refused "
                           "(entity expansion)")


def utf8_document(name: str, text: str) -> bytes:
    """UTF-8 bytes of the document with its declaration rewritten; DTDs refused."""
    refuse_entities(name, text)
    body = _DECL.sub("", text.lstrip("\ufeff"), count=1)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body.encode("utf-8")


def read_aecg(name: str, data: bytes) -> EcgFile:
    doc = utf8_document(name, xml_text(name, data))
    rec = run_library(name, doc, HL7aECGParser().parse, ".xml")
    # Lepu/Mindray templates put the hospital's patient ID in a non-standard
    # <PatientID> of subjectDemographicPerson; the trial-subject id is then a stub.
    m = re.search(rb"<PatientID>([^<]{1,64})</PatientID>", doc)
    override = {"patient_id": m.group(1).decode("utf-8").strip()} if m else None
    return library_file("HL7 aECG", name, rec, meta_override=override)


def read_muse(name: str, data: bytes) -> EcgFile:
    doc = utf8_document(name, xml_text(name, data))
    rec = run_library(name, doc, GEMuseXMLParser().parse, ".xml")
    return library_file("GE MUSE XML", name, rec)


def read_philips(name: str, data: bytes) -> EcgFile:
    doc = utf8_document(name, xml_text(name, data))
    rec = run_library(name, doc, SierraXMLParser().parse, ".xml")
    return library_file("Philips SierraECG XML", name, rec)
