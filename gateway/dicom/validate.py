"""Well-formedness checks for incoming instances, before anything is stored.

A strict byte-level walker, not pydicom: it must reject what a lenient reader
silently accepts (declared lengths beyond the data, odd lengths, unterminated
sequences, the wrong VR encoding for the declared transfer syntax, truncated
codestreams), and it must never allocate in proportion to a declared length.
It reads each element header, checks the length against the bytes actually
present, and keeps the few top-level values the index needs.

Two entry points:

* :func:`check_dimse` for a C-STORE data set (bytes as received, transfer
  syntax from the presentation context) -> the Part-10 file fenji stores;
* :func:`check_part10` for a file (watched folder, HTTP upload, import).

Both raise :class:`Rejected` with the DICOM status to answer and a reason that
names the element and the value.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_is_retired, dictionary_VR
from pydicom.uid import UID

from fenji.codecs.image.codestream import (
    HEAD_BYTES,
    J2K_FAMILY,
    JPEG_FAMILY,
    codestream_mismatch,
)
from fenji.gateway.config import DICOM_SEQUENCE_DEPTH_MAX
from fenji.gateway.dicom import charset
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.info import InstanceInfo
from fenji.gateway.errors import PeerError

log = logging.getLogger(__name__)

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
# The codestream families and the check of a codestream against its header live with
# the codecs (the preview needs them too): fenji.codecs.image.codestream.
# Encapsulated syntaxes whose codestreams we do not inspect (video, JPEG-XL,
# JPIP): carried as received after the encapsulation itself is checked.
OTHER_ENCAPSULATED = {
    "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.101.1", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1", "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.104.1", "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1", "1.2.840.10008.1.2.4.107",
    "1.2.840.10008.1.2.4.108", "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
}
NATIVE = {IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE}
ENCAPSULATED = JPEG_FAMILY | J2K_FAMILY | OTHER_ENCAPSULATED | {RLE}
# Order matters: pynetdicom, as acceptor, picks the first of these that the
# requestor proposed.  Compressed syntaxes first, implicit VR last, so a sender
# that offers its file's own syntax has it accepted and bytes travel as stored.
ACCEPTED_TRANSFER_SYNTAXES = (
    tuple(sorted(ENCAPSULATED)) + (EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE, IMPLICIT_LE))

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN",
             b"SV", b"UV"}
_ALL_VRS = _LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD",
                        b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM",
                        b"UI", b"UL", b"US"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
# Float / Double Float Pixel Data (parametric maps): pixels, but not walked as such.
FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
MAX_DEPTH = DICOM_SEQUENCE_DEPTH_MAX  # gateway/config.py
#: Bytes at the end of a JPEG/JPEG 2000 codestream's last fragment searched for its EOI.
EOI_TAIL = 32
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1419.1"  # fenji's implementation root
IMPLEMENTATION_VERSION = "FENJI_010"

# Top-level elements the index needs, by tag.
# What a VR's bytes are (PS3.5 6.2): text, a binary number of a size, bulk, a sequence
# (and the texts pydicom decodes into objects: person names, integer and decimal strings).
# An explicit VR of another kind than the dictionary's changes how every reader
# decodes the value (Rows as SS text-joined into a 1.3 GB string; a Modality read
# as a double); same-kind slips (LO for SH) are harmless and common in real files.
_NUMBER_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"AT": 4, b"FL": 4, b"FD": 8,
                b"SV": 8, b"UV": 8}
_BULK = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW"})


def _vr_kind(vr: bytes) -> str:
    if vr in _NUMBER_SIZE:
        return f"number of {_NUMBER_SIZE[vr]} bytes"
    if vr in _BULK:
        return "bulk"
    # pydicom turns these texts into objects of their own: a UID read as a PN is
    # a PersonName, an IS read as DS a float ("30.0" written back)
    return {b"SQ": "sequence", b"PN": "person name", b"IS": "integer string",
            b"DS": "decimal string"}.get(vr, "text")


@functools.lru_cache(maxsize=8192)
def _dictionary_kinds(tag: int) -> tuple[str, frozenset[str]] | None:
    """(the dictionary VR, the kinds it allows) of a current standard tag; None if
    unknown or retired (old devices wrote retired elements -- curves -- their own way,
    and nothing here reads them)."""
    try:
        vr = dictionary_VR(tag)
        if dictionary_is_retired(tag):
            return None
    except KeyError:
        return None
    return vr, frozenset(_vr_kind(v.strip().encode()) for v in vr.split(" or "))


def _wrong_vr(tag: int, vr: bytes) -> str | None:
    """"has VR X where PS3.6 gives Y" when explicit VR ``vr`` is of another kind than
    the dictionary's for a current standard element (UN and private tags pass)."""
    known = None if vr == b"UN" or (tag >> 16) & 1 else _dictionary_kinds(tag)
    if known is None or _vr_kind(vr) in known[1]:
        return None
    return f"has VR {vr.decode()} where PS3.6 gives {known[0]}"


_WANTED = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID", 0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID", 0x00080060: "Modality", 0x00100020: "PatientID",
    0x00100010: "PatientName", 0x00100030: "PatientBirthDate", 0x00100040: "PatientSex",
    0x00080020: "StudyDate", 0x00080030: "StudyTime", 0x00080050: "AccessionNumber",
    0x00081030: "StudyDescription", 0x00200011: "SeriesNumber", 0x0008103E: "SeriesDescription",
    0x00200013: "InstanceNumber", 0x00280010: "Rows", 0x00280011: "Columns",
    0x00280008: "NumberOfFrames", 0x00280100: "BitsAllocated", 0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation", 0x00080090: "ReferringPhysicianName",
    0x00200010: "StudyID",
}
_US_TAGS = {0x00280010, 0x00280011, 0x00280100, 0x00280002}
# Values in a character set the instance chooses (PS3.5 6.1.2.3), by tag -> VR.  They are
# kept as bytes during the walk and decoded once (0008,0005) is known, whatever the
# encoding order: (0008,0005) comes first by tag, but is not trusted to.
_TEXT_TAGS = {0x00100010: "PN", 0x00080090: "PN", 0x00100020: "LO", 0x00081030: "LO",
              0x0008103E: "LO", 0x00080050: "SH", 0x00200010: "SH"}


class Rejected(PeerError):
    """An instance refused before storage: ``status`` is the DICOM answer."""

    http_status = 422

    def __init__(self, status: int, reason: str, uid_hint: str | None = None) -> None:
        super().__init__(reason)
        self.status = self.dicom_status = status
        self.reason = reason
        self.uid_hint = uid_hint


@dataclass(frozen=True, slots=True)
class Checked:
    """A valid instance: the Part-10 bytes to store and what to index."""

    part10: bytes
    info: InstanceInfo


def _tagstr(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def valid_uid(uid: str) -> bool:
    """PS3.5 9.1: digits and dots, no leading zeros, at most 64 characters."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


class _Walker:
    """Walks one encoded data set, checking every element header."""

    def __init__(self, buf: bytes | memoryview, explicit: bool, little: bool,
                 transfer_syntax: str) -> None:
        self.buf = memoryview(buf)
        self.explicit = explicit
        self.end_char = "<" if little else ">"
        self.h_tag = struct.Struct(self.end_char + "HH")
        self.h_u16 = struct.Struct(self.end_char + "H")
        self.h_u32 = struct.Struct(self.end_char + "L")
        self.ts = transfer_syntax
        self.values: dict[str, Any] = {}
        self.raw_text: dict[int, bytes] = {}
        self.pixel: tuple[int, int, bool] | None = None  # offset, length, encapsulated
        self.float_pixel = False  # (7FE0,0008) or (7FE0,0009) at the top level

    def fail(self, status: int, msg: str) -> Rejected:
        return Rejected(status, msg, self.values.get("SOPInstanceUID"))

    def walk(self, pos: int, end: int, depth: int, top: bool) -> int:
        """Walk elements in [pos, end); with end=None-like sentinel for undefined items."""
        buf = self.buf
        last_tag = -1
        while pos < end:
            if end - pos < 8:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"truncated element header at byte {pos} ({end - pos} bytes left)")
            g, e = self.h_tag.unpack_from(buf, pos)
            tag = (g << 16) | e
            if tag == ITEM_END or tag == SEQ_END:
                return pos  # caller handles delimiters
            if tag <= last_tag:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"{_tagstr(tag)} out of order after {_tagstr(last_tag)} "
                                f"at byte {pos}")
            last_tag = tag
            if g == 0xFFFE:
                raise self.fail(st.CANNOT_UNDERSTAND, f"item tag {_tagstr(tag)} outside a "
                                                      f"sequence at byte {pos}")
            if self.explicit:
                vr = bytes(buf[pos + 4:pos + 6])
                if vr not in _ALL_VRS:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"{_tagstr(tag)} has invalid VR bytes {vr!r} at byte {pos} "
                                    f"(transfer syntax {self.ts} declares explicit VR)")
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise self.fail(st.CANNOT_UNDERSTAND,
                                        f"truncated header of {_tagstr(tag)} at byte {pos}")
                    length = self.h_u32.unpack_from(buf, pos + 8)[0]
                    pos += 12
                else:
                    length = self.h_u16.unpack_from(buf, pos + 6)[0]
                    pos += 8
                is_sq = vr == b"SQ" or (vr == b"UN" and length == UNDEFINED)
                wrong = _wrong_vr(tag, vr)
                if wrong:
                    raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                    f"{_tagstr(tag)} {wrong}: a reader would decode another "
                                    "value")
            else:
                length = self.h_u32.unpack_from(buf, pos + 4)[0]
                pos += 8
                vr = b""
                is_sq = length == UNDEFINED and tag != PIXEL_DATA
                if not is_sq and g != 0xFFFE and not (g & 1) and length != UNDEFINED:
                    try:
                        is_sq = dictionary_VR(tag) == "SQ"
                    except KeyError:
                        is_sq = False
            if tag == PIXEL_DATA and top:
                pos = self._pixel(pos, end, length)
                continue
            if tag == PIXEL_DATA and length == UNDEFINED:
                # An icon's pixels inside (0088,0200) Icon Image Sequence: under a
                # compressed transfer syntax they are encapsulated too (PS3.5 A.4).
                pos = self._nested_fragments(pos, end)
                continue
            if length == UNDEFINED:
                if not is_sq:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"{_tagstr(tag)} has undefined length but is not a sequence")
                pos = self._sequence(pos, None, depth + 1, tag)
                continue
            self._fits(_tagstr(tag), length, pos, end)
            if is_sq:
                self._sequence(pos, pos + length, depth + 1, tag)
            elif top and tag in _WANTED:
                self._keep(tag, vr, buf[pos:pos + length])
            elif top and tag in FLOAT_PIXEL_DATA:
                self.float_pixel = True
            pos += length
        return pos

    def _nested_fragments(self, pos: int, end: int) -> int:
        """Step over encapsulated Pixel Data inside an item (an icon): its fragment
        items, each within ``end``, up to the sequence delimiter."""
        if self.ts not in ENCAPSULATED:
            raise self.fail(st.CANNOT_UNDERSTAND,
                            f"(7FE0,0010) Pixel Data in an item has undefined length under "
                            f"native transfer syntax {self.ts}")
        return self._fragment_items(pos, end, "(7FE0,0010) in an item:")[0]

    def _item_head(self, pos: int) -> tuple[int, int]:
        """(tag, length) of the item or delimiter header at ``pos`` (8 bytes)."""
        g, e = self.h_tag.unpack_from(self.buf, pos)
        return (g << 16) | e, self.h_u32.unpack_from(self.buf, pos + 4)[0]

    def _fragment_items(self, pos: int, end: int, where: str
                        ) -> tuple[int, list[tuple[int, int]]]:
        """The (offset, length) of each item of encapsulated Pixel Data starting at
        ``pos`` (the Basic Offset Table first), and the position after its delimiter."""
        items: list[tuple[int, int]] = []
        while True:
            if end - pos < 8:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"{where} encapsulated Pixel Data not terminated")
            t, n = self._item_head(pos)
            pos += 8
            if t == SEQ_END:
                return pos, items
            if t != ITEM or n == UNDEFINED or n > end - pos:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"{where} bad fragment item {_tagstr(t)} length {n} at byte "
                                f"{pos - 8}")
            items.append((pos, n))
            pos += n

    def _sequence(self, pos: int, end: int | None, depth: int, tag: int) -> int:
        if depth > MAX_DEPTH:
            raise self.fail(st.CANNOT_UNDERSTAND, f"sequences nested deeper than {MAX_DEPTH}")
        limit = len(self.buf) if end is None else end
        while True:
            if end is not None and pos == end:
                return pos
            if limit - pos < 8:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"sequence {_tagstr(tag)} not terminated (data ends at byte "
                                f"{limit})")
            itag, ilen = self._item_head(pos)
            pos += 8
            if itag == SEQ_END:
                if end is not None:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"sequence delimiter inside defined-length {_tagstr(tag)}")
                return pos
            if itag != ITEM:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"sequence {_tagstr(tag)} holds {_tagstr(itag)} where an item "
                                f"(FFFE,E000) belongs, at byte {pos - 8}")
            if ilen == UNDEFINED:
                pos = self.walk(pos, limit, depth, top=False)
                if limit - pos < 8:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"item in {_tagstr(tag)} not terminated")
                g, e = self.h_tag.unpack_from(self.buf, pos)
                if ((g << 16) | e) != ITEM_END:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"item in {_tagstr(tag)} ends with a sequence delimiter "
                                    f"instead of an item delimiter at byte {pos}")
                pos += 8
            else:
                if ilen > limit - pos:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"item in {_tagstr(tag)} declares {ilen} bytes, "
                                    f"{limit - pos} remain")
                stop = self.walk(pos, pos + ilen, depth, top=False)
                if stop != pos + ilen:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"stray delimiter inside item of {_tagstr(tag)}")
                pos += ilen

    def _keep(self, tag: int, vr: bytes, raw: memoryview) -> None:
        name = _WANTED[tag]
        if tag in _US_TAGS:
            if vr not in (b"US", b"") or len(raw) != 2:
                raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                f"{_tagstr(tag)} {name} is {len(raw)} bytes of VR "
                                f"{vr.decode() or 'US'}: PS3.3 C.7.6.3 gives one US value")
            self.values[name] = self.h_u16.unpack_from(raw, 0)[0]
            return
        if tag in _TEXT_TAGS:
            self.raw_text[tag] = bytes(raw)
            return
        # UI, CS, DA, TM, IS: the default repertoire (PS3.5 6.2); Latin-1 never fails.
        text = bytes(raw).decode("latin-1").rstrip("\x00 ")
        if name in ("InstanceNumber", "SeriesNumber", "NumberOfFrames"):
            try:
                self.values[name] = int(text.split("\\")[0]) if text else None
            except ValueError:
                raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                f"{_tagstr(tag)} {name} = {text!r} is not an integer") from None
            return
        self.values[name] = text

    def _fits(self, what: str, length: int, pos: int, end: int) -> None:
        """A defined length fits in what remains and is even (PS3.5 7.1.1)."""
        if length > end - pos:
            raise self.fail(st.CANNOT_UNDERSTAND, f"{what} declares {length} bytes but only "
                                                  f"{end - pos} remain at byte {pos}")
        if length & 1:
            raise self.fail(st.CANNOT_UNDERSTAND,
                            f"{what} has odd length {length} (PS3.5 7.1.1)")

    # -- pixel data -----------------------------------------------------
    def _pixel(self, pos: int, end: int, length: int) -> int:
        if length != UNDEFINED:
            self._fits("(7FE0,0010) Pixel Data", length, pos, end)
            if self.ts in ENCAPSULATED:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"(7FE0,0010) Pixel Data has defined length under encapsulated "
                                f"transfer syntax {self.ts}")
            self.pixel = (pos, length, False)
            return pos + length
        if self.ts not in ENCAPSULATED:
            raise self.fail(st.CANNOT_UNDERSTAND,
                            f"(7FE0,0010) Pixel Data has undefined length under native "
                            f"transfer syntax {self.ts}")
        start = pos
        pos, items = self._fragment_items(pos, end, "(7FE0,0010)")
        fragments = items[1:]  # the first item is the Basic Offset Table
        if not fragments:
            raise self.fail(st.CANNOT_UNDERSTAND, "(7FE0,0010) encapsulated Pixel Data has no "
                                                  "fragments")
        self.pixel = (start, pos - start, True)
        self._fragments = fragments
        return pos

    def check_pixels(self) -> None:
        v = self.values
        if self.pixel is None:
            self._pixels_required()
            return
        rows, cols = v.get("Rows"), v.get("Columns")
        bits = v.get("BitsAllocated")
        if rows is None or cols is None or bits is None:
            raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            "Pixel Data present without (0028,0010) Rows, (0028,0011) Columns "
                            "and (0028,0100) Bits Allocated")
        frames = v.get("NumberOfFrames") or 1
        spp = v.get("SamplesPerPixel") or 1
        if rows == 0 or cols == 0 or frames < 1:
            raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            f"image size {rows}x{cols}x{frames} frames is empty")
        if bits not in (1, 8, 16, 32, 64):
            raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            f"(0028,0100) Bits Allocated = {bits} is not 1, 8, 16, 32 or 64")
        _, length, encapsulated = self.pixel
        if not encapsulated:
            if v.get("PhotometricInterpretation") == "YBR_FULL_422":
                spp = 2  # PS3.3 C.7.6.3.1.2: chroma subsampled horizontally, 2 values/pixel
            expected_bits = rows * cols * frames * spp * bits
            expected = (expected_bits + 7) // 8
            if length < expected:
                raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                f"(7FE0,0010) Pixel Data is {length} bytes, {rows}x{cols}x"
                                f"{frames} frames x {spp} samples x {bits} bit needs {expected}")
            return
        self._check_codestreams(frames)

    def _pixels_required(self) -> None:
        """An image without its pixels is refused: a file cut before (7FE0,0010) still
        parses to its last whole element, and a reader must never get an empty image.
        An image is an "... Image Storage" SOP class (PS3.4 B.5) or any data set with
        the Image Pixel module's (0028,0010) Rows / (0028,0011) Columns."""
        if self.float_pixel:
            return
        v = self.values
        sop = v.get("SOPClassUID") or ""
        name = UID(sop).name if sop else ""
        if "Image Storage" in name or v.get("Rows") is not None or v.get("Columns") is not None:
            what = f"{name} ({sop})" if "Image Storage" in name else \
                "a data set with (0028,0010) Rows / (0028,0011) Columns"
            raise self.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            f"(7FE0,0010) Pixel Data missing from {what}: the file is "
                            "truncated or its pixels were stripped")

    def _check_dimensions(self, frags: list[tuple[int, int]], starts: list[int]) -> None:
        v = self.values
        heads = (bytes(self.buf[off:off + min(n, HEAD_BYTES)])
                 for off, n in (frags[i] for i in starts))
        why = codestream_mismatch(self.ts in JPEG_FAMILY, v.get("Rows"), v.get("Columns"),
                                  v.get("SamplesPerPixel") or 1,
                                  int(v.get("BitsAllocated") or 0), heads)
        if why:
            raise self.fail(st.CANNOT_UNDERSTAND, why)

    def _check_codestreams(self, frames: int) -> None:
        buf = self.buf
        frags = self._fragments

        def ends_with_eoi(off: int, n: int) -> bool:
            # Encoders pad a codestream to even length after the EOI/EOC marker, and
            # some leave a few more bytes (a Siemens angiography cine: 4-7 bytes of
            # junk after each EOI), so look at the last EOI_TAIL bytes.  FF D9 cannot
            # occur inside JPEG entropy-coded data (an FF there is followed by 00 or a
            # restart marker) nor in JPEG 2000 packet data, so a cut stream still fails.
            return b"\xff\xd9" in bytes(buf[off + max(0, n - EOI_TAIL):off + n])

        if self.ts == RLE:
            if len(frags) != frames:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"RLE Pixel Data has {len(frags)} fragments for {frames} frames")
            for i, (off, n) in enumerate(frags):
                if n < 64:
                    raise self.fail(st.CANNOT_UNDERSTAND, f"RLE frame {i}: header truncated")
                nseg = struct.unpack_from("<L", buf, off)[0]
                offsets = struct.unpack_from("<15L", buf, off + 4)[:nseg]
                want = (self.values.get("SamplesPerPixel") or 1) * \
                    -(-int(self.values.get("BitsAllocated") or 8) // 8)
                if nseg != want and 1 <= nseg <= 15:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"RLE frame {i}: {nseg} segments, but (0028,0002) Samples "
                                    f"per Pixel x (0028,0100) Bits Allocated / 8 needs {want}: "
                                    "the header does not describe the pixels")
                if not 1 <= nseg <= 15 or offsets[0] != 64 or any(
                        b <= a for a, b in zip(offsets, offsets[1:], strict=False)) or \
                        offsets[-1] >= n:
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"RLE frame {i}: segment offsets {list(offsets)} do not fit "
                                    f"a {n}-byte fragment")
            return
        if self.ts in JPEG_FAMILY or self.ts in J2K_FAMILY:
            frags = [f for f in frags if f[1] > 0]
            if self.ts in JPEG_FAMILY:
                sois: tuple[bytes, ...] = (b"\xff\xd8",)
            else:  # raw J2K codestream (SOC) or a JP2 file wrapper, which some encoders emit
                sois = (b"\xff\x4f", b"\x00\x00\x00\x0c")
            starts = [i for i, (off, n) in enumerate(frags)
                      if bytes(buf[off:off + 2]) in sois or bytes(buf[off:off + 4]) in sois]
            if not starts or starts[0] != 0:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                "encapsulated Pixel Data: first fragment does not start a "
                                "codestream (no SOI/SOC marker)")
            if len(starts) < frames and len(frags) >= frames:
                raise self.fail(st.CANNOT_UNDERSTAND,
                                f"encapsulated Pixel Data: {len(starts)} codestreams for "
                                f"{frames} frames")
            self._check_dimensions(frags, starts)
            ends = [s - 1 for s in starts[1:]] + [len(frags) - 1]
            for k, last in enumerate(ends):
                off, n = frags[last]
                if not ends_with_eoi(off, n):
                    raise self.fail(st.CANNOT_UNDERSTAND,
                                    f"encapsulated Pixel Data: codestream of frame {k} is "
                                    f"truncated (no EOI/EOC marker)")


def _inflate(data: bytes | memoryview, cap: int) -> bytes:
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap)
    except zlib.error as exc:
        raise Rejected(st.CANNOT_UNDERSTAND, f"deflated data set does not inflate: {exc}") from exc
    if d.unconsumed_tail:
        raise Rejected(st.INSTANCE_TOO_LARGE,
                       f"deflated data set inflates beyond {cap} bytes "
                       f"(store.max_inflate_bytes): refused as a deflate bomb")
    return out


def check_dataset(dataset: bytes | memoryview, transfer_syntax: str, *,
                  max_inflate_bytes: int = 512 * 1024 * 1024,
                  default_character_set: str | None = None) -> dict[str, Any]:
    """Walk an encoded data set; return the top-level values the index needs.

    Text values come back as Unicode, decoded with the data set's (0008,0005)
    or, when it declares none, ``default_character_set`` (``dicom.default_character_set``);
    ``values["_charset"]`` is the :class:`charset.Charset` applied.
    """
    if transfer_syntax not in NATIVE and transfer_syntax not in ENCAPSULATED:
        raise Rejected(st.CANNOT_UNDERSTAND, f"transfer syntax {transfer_syntax!r} not accepted")
    body: bytes | memoryview = dataset
    explicit, little = True, True
    if transfer_syntax == IMPLICIT_LE:
        explicit = False
    elif transfer_syntax == EXPLICIT_BE:
        little = False
    elif transfer_syntax == DEFLATED_LE:
        body = _inflate(dataset, max_inflate_bytes)
    w = _Walker(body, explicit, little, transfer_syntax)
    stop = w.walk(0, len(body), 0, top=True)
    if stop != len(body):
        raise w.fail(st.CANNOT_UNDERSTAND, f"stray delimiter at byte {stop} of the data set")
    v = w.values
    _decode_text(w, default_character_set)
    for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = v.get(key)
        if not uid:
            raise w.fail(st.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{key} is missing or empty "
                                                              "(Type 1)")
        if not valid_uid(uid):
            raise Rejected(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           f"{key} = {uid[:80]!r} is not a valid UID (PS3.5 9.1)", uid)
    w.check_pixels()
    return v


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _decode_text(w: _Walker, default_charset: str | None) -> None:
    """Decode the kept text values with the data set's character set (module charset)."""
    v = w.values
    declared = v.pop("SpecificCharacterSet", None)
    if declared is not None and _CONTROL.search(str(declared).rstrip("\x00 ")):
        # Not a quirk of a device but a corrupt file: a CS value is letters, digits,
        # space and underscore, and pydicom cannot even read one with a NUL inside.
        raise w.fail(st.CANNOT_UNDERSTAND,
                     f"(0008,0005) Specific Character Set {str(declared)[:64]!r} holds "
                     "control characters: the file is corrupt, resend it")
    # Accepted, not refused: the pixels are what the reader needs, and a name decoded
    # the undeclared way shows as garbled rather than as another name.  Recorded per
    # instance (charset_source "invalid") and logged, without names.
    try:
        cs = charset.resolve(declared, default_charset)
    except charset.CharsetError as exc:
        cs = charset.resolve_or_fallback(declared, default_charset)  # as every reader does
        log.warning("sop=%s %s; text decoded as %s", v.get("SOPInstanceUID"), exc,
                    charset.resolve(None, default_charset).value or "UTF-8, else Latin-1")
        v["_declared_charset"] = str(declared)[:128]
    v["_charset"] = cs
    for tag, raw in w.raw_text.items():
        text, bad = charset.decode_value(raw, cs, _TEXT_TAGS[tag])
        if bad:
            log.warning("sop=%s %s does not decode under (0008,0005) %r: bytes replaced by "
                        "U+FFFD", v.get("SOPInstanceUID"), _tagstr(tag), cs.value)
        v[_WANTED[tag]] = text


def _info(values: dict[str, Any], ts: str, dataset_sha256: str) -> InstanceInfo:
    def s(k: str) -> str | None:
        val = values.get(k)
        return None if val in (None, "") else str(val)

    return InstanceInfo(
        sop_instance_uid=values["SOPInstanceUID"], sop_class_uid=values["SOPClassUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"], transfer_syntax_uid=ts,
        dataset_sha256=dataset_sha256, instance_number=values.get("InstanceNumber"),
        patient_id=s("PatientID"), patient_name=s("PatientName"),
        birth_date=s("PatientBirthDate"), sex=s("PatientSex"), study_date=s("StudyDate"),
        study_time=s("StudyTime"), accession_number=s("AccessionNumber"),
        study_description=s("StudyDescription"), modality=s("Modality"),
        series_number=values.get("SeriesNumber"), series_description=s("SeriesDescription"),
        referring_physician=s("ReferringPhysicianName"), study_id=s("StudyID"),
        specific_character_set=_applied(values), charset_source=values["_charset"].source)


def _applied(values: dict[str, Any]) -> str | None:
    cs: charset.Charset = values["_charset"]
    if cs.source == "invalid":
        return str(values.get("_declared_charset"))
    return None if cs.source == "none" else cs.value


def _meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) & 1:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    g, e = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", g, e, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", g, e, vr, len(value)) + value


def build_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                    source_ae: str | None = None) -> bytes:
    """Preamble, ``DICM`` and the File Meta group (PS3.10 7.1) for a data set."""
    elems = [
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", sop_class_uid.encode()),
        _meta_element(0x00020003, b"UI", sop_instance_uid.encode()),
        _meta_element(0x00020010, b"UI", transfer_syntax.encode()),
        _meta_element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
        _meta_element(0x00020013, b"SH", IMPLEMENTATION_VERSION.encode()),
    ]
    if source_ae:
        elems.append(_meta_element(0x00020016, b"AE", source_ae.strip().encode("ascii",
                                                                              "replace")))
    body = b"".join(elems)
    group_len = struct.pack("<HH2sHL", 2, 0, b"UL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_len + body


def check_dimse(dataset: bytes, transfer_syntax: str, *, affected_sop_class: str,
                affected_sop_instance: str, calling_ae: str | None = None,
                max_instance_bytes: int = 2 << 30,
                max_inflate_bytes: int = 512 * 1024 * 1024,
                default_character_set: str | None = None) -> Checked:
    """Check a C-STORE data set; return the Part-10 file to store.

    ``default_character_set``: ``dicom.default_character_set``, for a data set that
    declares no (0008,0005).
    """
    if len(dataset) > max_instance_bytes:
        raise Rejected(st.INSTANCE_TOO_LARGE, f"data set of {len(dataset)} bytes exceeds "
                                              f"dicom.max_instance_bytes = {max_instance_bytes}")
    if not dataset:
        raise Rejected(st.CANNOT_UNDERSTAND, "empty data set")
    values = check_dataset(dataset, transfer_syntax, max_inflate_bytes=max_inflate_bytes,
                           default_character_set=default_character_set)
    if values["SOPInstanceUID"] != affected_sop_instance:
        raise Rejected(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"(0008,0018) SOP Instance UID {values['SOPInstanceUID']!r} differs from "
                       f"the request's Affected SOP Instance UID {affected_sop_instance!r}",
                       values["SOPInstanceUID"])
    if values["SOPClassUID"] != affected_sop_class:
        raise Rejected(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       f"(0008,0016) SOP Class UID {values['SOPClassUID']!r} differs from the "
                       f"request's Affected SOP Class UID {affected_sop_class!r}",
                       values["SOPInstanceUID"])
    meta = build_file_meta(values["SOPClassUID"], values["SOPInstanceUID"], transfer_syntax,
                           calling_ae)
    ds_sha = hashlib.sha256(dataset).hexdigest()
    return Checked(meta + dataset, _info(values, transfer_syntax, ds_sha))


def with_preamble(data: bytes) -> bytes:
    """``data`` as a Part-10 file: a File Meta group sent without its preamble gets one.

    Some STOW-RS clients (dicomweb-client writing a data set built in memory)
    send the File Meta Information without the 128-byte preamble and ``DICM``.
    The data set is the same; the stored file is made a proper Part-10 file.
    Anything else is returned unchanged (and then checked as usual).
    """
    if data[128:132] == b"DICM":
        return data
    if data[:4] == b"DICM" and data[4:6] == b"\x02\x00":
        return bytes(128) + data
    if data[:2] == b"\x02\x00" and data[4:6] in (b"UL", b"OB", b"UI"):
        return bytes(128) + b"DICM" + data
    return data


def split_part10(data: bytes) -> tuple[dict[str, str], int]:
    """Parse preamble + File Meta; return (meta values, offset of the data set)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise Rejected(st.CANNOT_UNDERSTAND,
                       "not a DICOM Part-10 file: no 128-byte preamble and 'DICM' prefix")
    pos, n = 132, len(data)
    meta: dict[str, str] = {}
    names = {0x00020002: "MediaStorageSOPClassUID", 0x00020003: "MediaStorageSOPInstanceUID",
             0x00020010: "TransferSyntaxUID"}
    while pos + 8 <= n:
        g, e = struct.unpack_from("<HH", data, pos)
        if g != 2:
            break
        vr = data[pos + 4:pos + 6]
        if vr not in _ALL_VRS:
            raise Rejected(st.CANNOT_UNDERSTAND,
                           f"File Meta ({g:04X},{e:04X}) has invalid VR bytes {vr!r}")
        if vr in _LONG_VRS:
            if pos + 12 > n:
                raise Rejected(st.CANNOT_UNDERSTAND,
                               f"File Meta ({g:04X},{e:04X}) cut inside its header: the "
                               "file is truncated")
            length = struct.unpack_from("<L", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        if length > n - pos:
            raise Rejected(st.CANNOT_UNDERSTAND,
                           f"File Meta ({g:04X},{e:04X}) declares {length} bytes beyond the end")
        tag = (g << 16) | e
        wrong = _wrong_vr(tag, vr)
        if wrong:
            raise Rejected(st.CANNOT_UNDERSTAND, f"File Meta ({g:04X},{e:04X}) {wrong}")
        if tag in names:
            meta[names[tag]] = data[pos:pos + length].decode("latin-1").rstrip("\x00 ")
        pos += length
    for k in names.values():
        if not meta.get(k):
            raise Rejected(st.CANNOT_UNDERSTAND, f"File Meta lacks {k}")
    return meta, pos


def check_part10(data: bytes, *, max_instance_bytes: int = 2 << 30,
                 max_inflate_bytes: int = 512 * 1024 * 1024,
                 default_character_set: str | None = None) -> Checked:
    """Check a whole Part-10 file (meta included); it is stored exactly as given.

    ``default_character_set`` as for :func:`check_dimse`.
    """
    if len(data) > max_instance_bytes:
        raise Rejected(st.INSTANCE_TOO_LARGE, f"file of {len(data)} bytes exceeds "
                                              f"dicom.max_instance_bytes = {max_instance_bytes}")
    meta, off = split_part10(data)
    ts = meta["TransferSyntaxUID"]
    body = memoryview(data)[off:]
    values = check_dataset(body, ts, max_inflate_bytes=max_inflate_bytes,
                           default_character_set=default_character_set)
    for mkey, dkey in (("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
                       ("MediaStorageSOPClassUID", "SOPClassUID")):
        if meta[mkey] != values[dkey]:
            raise Rejected(st.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           f"File Meta {mkey} {meta[mkey]!r} differs from the data set's "
                           f"{dkey} {values[dkey]!r}", values[dkey])
    ds_sha = hashlib.sha256(body).hexdigest()
    return Checked(data, _info(values, ts, ds_sha))
