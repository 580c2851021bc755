"""Media types and content negotiation (PS3.18 8.7), and transcoding to what was asked."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fenji.codecs.image import sandbox
from fenji.codecs.image.codestream import dataset_codestream_mismatch
from fenji.gateway.dicom.validate import (
    ENCAPSULATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE,
)

log = logging.getLogger(__name__)

# Transfer syntax -> media type of one frame (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
}
# What fenji transcodes to (pydicom writes these; deflate and big endian only as stored).
TRANSCODE_TARGETS = (EXPLICIT_LE, IMPLICIT_LE)

class NotAcceptable(web.HTTPNotAcceptable):
    """406 as JSON naming what could not be served."""

    def __init__(self, message: str) -> None:
        super().__init__(text=message)


# -- content negotiation (PS3.18 8.7) ----------------------------------------
@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom"``."""

    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        return self.params.get("type")

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_accept(header: str | None) -> list[MediaRange]:
    """The Accept header's media ranges, best (highest q) first; none means ``*/*``."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for n, item in enumerate(_split_outside_quotes(header, ",")):
        bits = [b.strip() for b in _split_outside_quotes(item, ";")]
        if not bits[0]:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for b in bits[1:]:
            key, _, value = b.partition("=")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif key:
                params[key] = value.lower() if key == "type" else value
        if q > 0:
            ranges.append((-q, n, MediaRange(bits[0].lower(), params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def _is_multipart(media: str) -> bool:
    return media in ("*/*", "multipart/*", "multipart/related")


def dicom_syntaxes(accept: list[MediaRange]) -> list[str]:
    """Transfer syntaxes acceptable for ``application/dicom`` parts, best first.

    ``*`` means "as stored".  Empty: the client accepts no DICOM at all.
    """
    out: list[str] = []
    for r in accept:
        if not _is_multipart(r.media):
            continue
        ptype = r.part_type or "application/dicom"
        if ptype not in ("application/dicom", "*/*", "application/*"):
            continue
        ts = r.transfer_syntax
        if ts is None:
            # PS3.18 8.7.3.5.1: without transfer-syntax, application/dicom means
            # Explicit VR Little Endian; "*/*" alone lets the server choose.
            ts = EXPLICIT_LE if r.part_type else "*" if r.media == "*/*" else EXPLICIT_LE
        if ts not in out:
            out.append(ts)
    return out


def _decodable(ts: str) -> bool:
    """Can pydicom decode pixel data in ``ts`` here (a plugin is installed)?"""
    if ts in NATIVE:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError, ImportError):
        return False


def choose_syntax(stored: str, acceptable: list[str]) -> str | None:
    """The syntax to serve a ``stored`` instance in; None when nothing acceptable is possible."""
    for ts in acceptable:
        if ts == "*" or ts == stored:
            return stored
        if ts in TRANSCODE_TARGETS and _decodable(stored):
            return ts
    return None


def _private_as_un(ds: Any) -> None:
    """Private elements of an implicit VR data set as UN, their bytes unread.

    Implicit VR carries no VR and pydicom's private dictionary guesses wrong
    often enough (a DS string read as FD) to break a whole read: PS3.5 6.2.2
    says an unknown VR is UN.  Private creators (gggg,0010-00FF) stay LO.
    """
    from pydicom.dataelem import DataElement, RawDataElement

    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if (tag.is_private and isinstance(raw, RawDataElement)
                and not 0x0010 <= tag.element <= 0x00FF):
            ds[tag] = DataElement(tag, "UN", raw.value or b"")


def transcode(data: bytes, target: str) -> bytes:
    """Re-encode a Part-10 instance in ``target`` (a native syntax) with pydicom."""
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(io.BytesIO(data), force=False)
    src = str(ds.file_meta.TransferSyntaxUID)
    if src == IMPLICIT_LE:
        _private_as_un(ds)
    if src in ENCAPSULATED:
        why = dataset_codestream_mismatch(ds)  # a decoder must never see such data
        if why:
            raise ValueError(why)
        # -> Explicit VR LE, native pixel data (pydicom's decoders).  The same
        # instance: pydicom would give it a new SOP Instance UID unless told not to.
        sandbox.decompress(ds)  # in a decoding child: a decoder abort ends only that
    elif src == EXPLICIT_BE:
        ds = _little_endian_copy(ds)
    ds.file_meta.TransferSyntaxUID = UID(target)
    if src == IMPLICIT_LE and target != IMPLICIT_LE:
        _resolve_ambiguous_vr(ds)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=target == IMPLICIT_LE, little_endian=True,
                     enforce_file_format=True)
    return buf.getvalue()


def _resolve_ambiguous_vr(ds: Any) -> None:
    """Give every element read from Implicit VR a single VR before an explicit write.

    pydicom resolves the ambiguous VRs it has rules for (Pixel Data, LUTs, values
    that follow Pixel Representation); the rest -- the retired Curve Data
    (50xx,3000) "OB or OW" of an RT Image, say -- made the write raise, and the
    instance could never be served in the default transfer syntax.  Those keep
    their bytes as they are: OW (OB if odd-length) for bytes, US for non-negative
    numbers and SS otherwise (little endian throughout, so no byte changes)."""
    from pydicom.filewriter import correct_ambiguous_vr

    correct_ambiguous_vr(ds, True)
    for elem in ds.iterall():
        if " or " not in elem.VR:
            continue
        v = elem.value
        if isinstance(v, bytes | bytearray):
            elem.VR = "OW" if "OW" in elem.VR and len(v) % 2 == 0 else "OB"
        else:
            vals = list(v) if hasattr(v, "__iter__") else [v]
            elem.VR = "SS" if any(isinstance(x, int) and x < 0 for x in vals) else "US"


# Bytes per value of the "other" VRs whose bytes follow the data set's byte order.
_SWAP = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _little_endian_copy(ds: Any) -> Any:
    """A big-endian data set as a new one that pydicom may write little-endian (it
    refuses to change a read data set's byte order: PS3.5 A.3): values are decoded
    on the way, the pixels and every OW/OF/OL/OD/OV value byte-swapped."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset

    def swap(d: Any) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    swap(item)
            elif elem.VR in _SWAP and elem.tag != 0x7FE00010 and elem.value:
                n = _SWAP[elem.VR]
                raw = bytes(elem.value)
                elem.value = np.frombuffer(raw[:len(raw) // n * n], f">u{n}").astype(
                    f"<u{n}").tobytes()

    arr = ds.pixel_array if "PixelData" in ds else None
    new = Dataset()
    for elem in ds:
        new.add(elem)
    swap(new)
    if arr is not None:
        new.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    new.file_meta = FileMetaDataset(ds.file_meta)
    return new
