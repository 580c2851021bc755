"""Instance codec: a DICOM Part-10 file in, the same bytes out.

The file is split by byte offset into *payloads* — the top-level Pixel Data
(7FE0,0010) value and each Waveform Data (5400,1010) value inside the Waveform
Sequence (5400,0100) — and the *header*: every other byte, in order (preamble,
meta group, data set, trailing padding, any element after the pixel data).
Payloads go through the specialised codec their geometry allows (``pixel``,
``waveform``), or through zstd (already-compressed or odd data), or stay raw if
nothing helps; the header goes through the dictionary header codec.  Decoding
splices the pieces back together at the recorded offsets, so element order,
padding, VRs, private tags, byte order and undefined lengths are untouched by
construction.  Anything the parser does not understand makes the whole file one
header blob (still compressed, never expanded by more than the container).

Container (little endian)::

    "FJIN" | u8 version | u8 flags | u16 n_payloads | u64 original length
    | 16-byte BLAKE2b of the original | u32 header raw length | u32 header blob length
    | [16-byte BLAKE2b of the reference's header bytes, if flags & 1]
    | n_payloads x (u8 kind, u8 codec, u64 offset, u64 length, u32 blob length)
    | header blob | payload blobs | u32 CRC-32 of everything before it

Decoding checks the CRC first (corruption and truncation raise DecodeError
before any allocation sized by the input) and the BLAKE2b of the result last,
so a wrong file is never returned.

>>> decode_instance(encode_instance(b"not DICOM at all")) == b"not DICOM at all"
True
"""

from __future__ import annotations

import hashlib
import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard as zstd

from fenji.codecs.compress import envelope
from fenji.codecs.compress.header import header_decode, header_encode
from fenji.codecs.compress.pixel import pixel_decode, pixel_encode
from fenji.codecs.compress.waveform import waveform_decode, waveform_encode
from fenji.codecs.errors import DecodeError

_log = logging.getLogger(__name__)
MAGIC = b"FJIN"
VERSION = 1
MAX_ORIGINAL = 1 << 34  # 16 GiB: refuse to believe larger declared sizes
_HEAD = struct.Struct("<4sBBHQ16sII")
_PAY = struct.Struct("<BBQQI")

KIND_PIXEL, KIND_WAVE = 1, 2
_BIG = 0x80  # or-ed into the kind: the payload's samples are big endian
_REF = 0x01  # container flag: the header codec was primed with a reference instance
CODEC_RAW, CODEC_ZSTD, CODEC_PIXEL, CODEC_WAVE = 0, 1, 2, 3
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd", CODEC_PIXEL: "pixel", CODEC_WAVE: "waveform"}
KIND_NAMES = {KIND_PIXEL: "pixel", KIND_WAVE: "waveform"}

TS_IMPLICIT_LE = "1.2.840.10008.1.2"
TS_EXPLICIT_LE = "1.2.840.10008.1.2.1"
TS_DEFLATED = "1.2.840.10008.1.2.1.99"
TS_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR",
             b"SV", b"UV"}
_MAX_DEPTH = 32


class _Unparsable(DecodeError):
    """The walker met something it does not handle: use the whole-file path."""


@dataclass
class _Payload:
    kind: int
    offset: int
    length: int
    geometry: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Scan:
    ts: str = ""
    little: bool = True
    modality: str | None = None
    series_uid: str | None = None
    top: dict[int, Any] = field(default_factory=dict)
    payloads: list[_Payload] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def _walk(buf: bytes, pos: int, end: int, implicit: bool, little: bool, depth: int,
          scan: _Scan, wave_item: dict[int, Any] | None, in_wave_seq: bool) -> int:
    """Walk data set elements in buf[pos:end]; returns the position after the last.

    With ``end`` = -1 the walk stops after an Item Delimitation (FFFE,E00D)
    (undefined-length item) and returns the position after it.
    """
    if depth > _MAX_DEPTH:
        raise _Unparsable("nesting too deep")
    bo = "<" if little else ">"
    limit = len(buf) if end < 0 else end
    while pos < limit:
        if pos + 8 > limit:
            raise _Unparsable(f"element header truncated at {pos}")
        group, elem = struct.unpack_from(bo + "HH", buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            (length,) = struct.unpack_from(bo + "I", buf, pos + 4)
            if elem == 0xE00D and end < 0:
                return pos + 8
            raise _Unparsable(f"unexpected delimiter ({group:04X},{elem:04X}) at {pos}")
        if implicit:
            vr = b"  "
            (length,) = struct.unpack_from(bo + "I", buf, pos + 4)
            vpos = pos + 8
        else:
            vr = buf[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise _Unparsable(f"element header truncated at {pos}")
                (length,) = struct.unpack_from(bo + "I", buf, pos + 8)
                vpos = pos + 12
            elif vr.isalpha() and vr.isupper():
                (length,) = struct.unpack_from(bo + "H", buf, pos + 6)
                vpos = pos + 8
            else:
                raise _Unparsable(f"invalid VR {vr!r} at {pos}")
        if length == 0xFFFFFFFF:
            if tag == 0x7FE00010 and depth == 0:
                # encapsulated pixel data: fragments until the sequence delimiter
                p = _skip_items(buf, vpos, bo, fragments=True, implicit=implicit,
                                little=little, depth=depth, scan=scan, in_wave=False)
                scan.payloads.append(_Payload(KIND_PIXEL, vpos, p - vpos, {"encapsulated": True}))
                pos = p
                continue
            if not implicit and vr not in (b"SQ", b"UN"):
                raise _Unparsable(f"undefined length on VR {vr!r} at {pos}")
            pos = _skip_items(buf, vpos, bo, fragments=False, implicit=implicit or vr == b"UN",
                              little=little, depth=depth, scan=scan,
                              in_wave=(tag == 0x54000100 and depth == 0))
            continue
        vend = vpos + length
        if vend > limit:
            raise _Unparsable(f"({group:04X},{elem:04X}) length {length} runs past the end")
        if vr == b"SQ" or (implicit and _is_sq(tag)):
            _walk_defined_seq(buf, vpos, vend, implicit, little, depth, scan,
                              in_wave=(tag == 0x54000100 and depth == 0))
        elif depth == 0:
            if group == 0x0028 or tag in (0x00080060, 0x0020000E):
                scan.top[tag] = buf[vpos:vend]
            if tag == 0x7FE00010:
                scan.payloads.append(_Payload(KIND_PIXEL, vpos, length))
        elif wave_item is not None and in_wave_seq:
            if tag in (0x003A0005, 0x003A0010, 0x54001004, 0x54001006):
                wave_item[tag] = buf[vpos:vend]
            elif tag == 0x54001010:
                wave_item[tag] = (vpos, length)
        pos = vend
    if end < 0:
        raise _Unparsable("item without delimiter")
    return pos


_SQ_TAGS = {0x54000100, 0x00081140, 0x00081115, 0x00081110, 0x00081111, 0x00081120,
            0x00082112, 0x00089215, 0x0040A730, 0x0040A043, 0x0040A168, 0x003A0200,
            0x003A0208, 0x003A0211, 0x00400275, 0x00400260, 0x00081032, 0x00081250,
            0x00082218, 0x00540016, 0x00189362}


def _is_sq(tag: int) -> bool:
    # Implicit VR gives no VR: only sequences we know of are descended into;
    # other defined-length values are opaque bytes, which is always safe here.
    return tag in _SQ_TAGS


def _walk_item(buf: bytes, vpos: int, length: int, implicit: bool, little: bool, depth: int,
               scan: _Scan, in_wave: bool) -> int:
    item: dict[int, Any] | None = {} if in_wave else None
    if length == 0xFFFFFFFF:
        p = _walk(buf, vpos, -1, implicit, little, depth + 1, scan, item, in_wave)
    else:
        if vpos + length > len(buf):
            raise _Unparsable(f"item length {length} at {vpos} runs past the end")
        _walk(buf, vpos, vpos + length, implicit, little, depth + 1, scan, item, in_wave)
        p = vpos + length
    if item is not None and 0x54001010 in item:
        _add_wave(item, little, scan)
    return p


def _walk_defined_seq(buf: bytes, pos: int, end: int, implicit: bool, little: bool, depth: int,
                      scan: _Scan, in_wave: bool) -> None:
    bo = "<" if little else ">"
    while pos < end:
        if pos + 8 > end:
            raise _Unparsable(f"item header truncated at {pos}")
        group, elem, length = struct.unpack_from(bo + "HHI", buf, pos)
        if (group, elem) != (0xFFFE, 0xE000):
            raise _Unparsable(f"expected item at {pos}, found ({group:04X},{elem:04X})")
        pos = _walk_item(buf, pos + 8, length, implicit, little, depth, scan, in_wave)
    if pos != end:
        raise _Unparsable("sequence items overrun their sequence")


def _skip_items(buf: bytes, pos: int, bo: str, *, fragments: bool, implicit: bool, little: bool,
                depth: int, scan: _Scan, in_wave: bool) -> int:
    """Items of an undefined-length sequence (or encapsulated fragments) up to (FFFE,E0DD)."""
    while True:
        if pos + 8 > len(buf):
            raise _Unparsable(f"undefined-length sequence truncated at {pos}")
        group, elem, length = struct.unpack_from(bo + "HHI", buf, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, elem) != (0xFFFE, 0xE000):
            raise _Unparsable(f"expected item at {pos}, found ({group:04X},{elem:04X})")
        if fragments:
            if length == 0xFFFFFFFF or pos + 8 + length > len(buf):
                raise _Unparsable(f"fragment at {pos} runs past the end")
            pos += 8 + length
        else:
            pos = _walk_item(buf, pos + 8, length, implicit, little, depth, scan, in_wave)


def _us(raw: bytes | None, little: bool) -> int | None:
    if raw is None or len(raw) < 2:
        return None
    return int(struct.unpack_from("<H" if little else ">H", raw)[0])


def _ul(raw: bytes | None, little: bool) -> int | None:
    if raw is None or len(raw) < 4:
        return None
    return int(struct.unpack_from("<I" if little else ">I", raw)[0])


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("ascii", "replace").strip(" \x00")


def _add_wave(item: dict[int, Any], little: bool, scan: _Scan) -> None:
    off, length = item[0x54001010]
    geom = {"channels": _us(item.get(0x003A0005), little),
            "samples": _ul(item.get(0x003A0010), little),
            "bits": _us(item.get(0x54001004), little),
            "interp": _text(item.get(0x54001006))}
    scan.payloads.append(_Payload(KIND_WAVE, off, length, geom))


def scan_part10(buf: bytes) -> _Scan:
    """Locate payloads and read the geometry attributes; raises _Unparsable."""
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise _Unparsable("no Part-10 preamble")
    pos = 132
    scan = _Scan()
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = buf[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            vpos = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            vpos = pos + 8
        if length == 0xFFFFFFFF or vpos + length > len(buf):
            raise _Unparsable("file meta element runs past the end")
        if elem == 0x0010:
            scan.ts = buf[vpos:vpos + length].decode("ascii", "replace").strip(" \x00")
        pos = vpos + length
    if scan.ts == TS_DEFLATED or not scan.ts:
        raise _Unparsable(f"transfer syntax {scan.ts!r} not walked")
    implicit = scan.ts == TS_IMPLICIT_LE
    scan.little = scan.ts != TS_EXPLICIT_BE
    _walk(buf, pos, len(buf), implicit, scan.little, 0, scan, None, False)
    scan.modality = _text(scan.top.get(0x00080060))
    scan.series_uid = _text(scan.top.get(0x0020000E))
    return scan


def _pixel_geometry(scan: _Scan) -> dict[str, Any] | None:
    t, lt = scan.top, scan.little
    rows, cols = _us(t.get(0x00280010), lt), _us(t.get(0x00280011), lt)
    ba, spp = _us(t.get(0x00280100), lt), _us(t.get(0x00280002), lt) or 1
    rep = _us(t.get(0x00280103), lt) or 0
    planar = _us(t.get(0x00280006), lt) or 0
    photo = (_text(t.get(0x00280004)) or "").upper()
    try:
        frames = int(_text(t.get(0x00280008)) or "1")
    except ValueError:
        return None
    if not rows or not cols or ba not in (8, 16) or spp not in (1, 3) or frames < 1:
        return None
    if not scan.little and ba == 8:
        return None  # OW byte swapping of 8-bit data in big endian: leave it to zstd
    nbytes = rows * cols * spp * frames * (ba // 8)
    return {"rows": rows, "cols": cols, "bits": ba, "samples": spp, "signed": rep == 1,
            "planar": planar, "photometric": photo, "frames": frames, "nbytes": nbytes}


# --------------------------------------------------------------------------- payload codecs


def _pixel_dtype(g: dict[str, Any], little: bool) -> np.dtype[Any]:
    if g["bits"] == 8:
        return np.dtype("i1" if g["signed"] else "u1")
    return np.dtype(("<" if little else ">") + ("i2" if g["signed"] else "u2"))


def _pixel_array(data: bytes, g: dict[str, Any], little: bool) -> tuple[np.ndarray, bool]:
    a = np.frombuffer(data, dtype=_pixel_dtype(g, little))
    f, r, c, s = g["frames"], g["rows"], g["cols"], g["samples"]
    if s == 1:
        return a.reshape(f, r, c), False
    if g["planar"] == 1:
        return a.reshape(f * s, r, c), False
    return a.reshape(f, r, c, s), g["photometric"] == "RGB"


def _zstd(data: bytes, level: int) -> bytes:
    return zstd.ZstdCompressor(level=level, write_content_size=True).compress(data)


def _encode_payload(buf: bytes, p: _Payload, scan: _Scan, effort: str) -> tuple[int, bytes]:
    data = buf[p.offset:p.offset + p.length]
    cands: list[tuple[int, bytes]] = []
    if p.kind == KIND_PIXEL and not p.geometry.get("encapsulated"):
        g = p.geometry
        arr, rct = _pixel_array(data, g, scan.little)
        cands.append((CODEC_PIXEL, pixel_encode(arr, effort=effort, rct=rct)))
    elif p.kind == KIND_WAVE and not p.geometry.get("opaque"):
        g = p.geometry
        dt = {"SS": "i2", "US": "u2"}.get(g["interp"] or "", "")
        arr = np.frombuffer(data, dtype=("<" if scan.little else ">") + dt).reshape(
            g["samples"], g["channels"])
        cands.append((CODEC_WAVE, waveform_encode(arr, effort=effort)))
    if not cands or len(cands[0][1]) * 3 > len(data) or len(data) < 1 << 16:
        # poorly compressible or small: let zstd compete (cheap at these sizes)
        cands.append((CODEC_ZSTD, _zstd(data, 19 if effort == "max" else 3)))
    cands.append((CODEC_RAW, data))
    return min(cands, key=lambda c: len(c[1]))


def _decode_payload(codec: int, blob: bytes, p: _Payload, scan_little: bool,
                    geometry: dict[str, Any]) -> bytes:
    if codec == CODEC_RAW:
        out = blob
    elif codec == CODEC_ZSTD:
        size = zstd.frame_content_size(blob) if len(blob) >= 4 else -1
        if size != p.length:
            raise DecodeError(f"zstd payload declares {size} bytes, expected {p.length}")
        try:
            out = zstd.ZstdDecompressor().decompress(blob, max_output_size=p.length)
        except zstd.ZstdError as exc:
            raise DecodeError(f"zstd payload corrupt: {exc}") from None
    elif codec == CODEC_PIXEL:
        arr = pixel_decode(blob)
        dt = arr.dtype.newbyteorder("<" if scan_little else ">") if arr.itemsize > 1 else arr.dtype
        out = arr.astype(dt, copy=False).tobytes()
    elif codec == CODEC_WAVE:
        arr = waveform_decode(blob)
        dt = arr.dtype.newbyteorder("<" if scan_little else ">") if arr.itemsize > 1 else arr.dtype
        out = arr.astype(dt, copy=False).tobytes()
    else:
        raise DecodeError(f"payload codec {codec} unknown")
    if len(out) != p.length:
        raise DecodeError(f"payload decoded to {len(out)} bytes, expected {p.length}")
    return out


# --------------------------------------------------------------------------- public


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _plan(buf: bytes) -> tuple[list[_Payload], _Scan | None]:
    try:
        scan = scan_part10(buf)
    except (_Unparsable, struct.error, UnicodeDecodeError):
        return [], None
    out: list[_Payload] = []
    for p in scan.payloads:
        if p.kind == KIND_PIXEL:
            if p.geometry.get("encapsulated"):
                out.append(p)
                continue
            g = _pixel_geometry(scan)
            if g is not None and p.length in (g["nbytes"], g["nbytes"] + 1):
                out.append(_Payload(KIND_PIXEL, p.offset, g["nbytes"], g))
            elif p.length >= 1 << 12:
                out.append(_Payload(KIND_PIXEL, p.offset, p.length, {"encapsulated": True}))
        else:
            g = p.geometry
            if (g["bits"] == 16 and g["interp"] in ("SS", "US") and g["channels"]
                    and g["samples"] and g["channels"] * g["samples"] * 2 == p.length):
                out.append(p)
            elif p.length >= 1 << 12:
                out.append(_Payload(KIND_WAVE, p.offset, p.length, {"opaque": True}))
    out.sort(key=lambda q: q.offset)
    for a, b in zip(out, out[1:], strict=False):
        if a.offset + a.length > b.offset:
            return [], None
    return out, scan


def header_bytes(part10: bytes) -> bytes:
    """Every byte of ``part10`` that is not a pixel/waveform payload, in order."""
    buf = bytes(part10)
    payloads, _scan = _plan(buf)
    out = bytearray()
    pos = 0
    for p in payloads:
        out += buf[pos:p.offset]
        pos = p.offset + p.length
    out += buf[pos:]
    return bytes(out)


def reference_id(part10: bytes) -> str:
    """What an instance encoded against ``part10`` records: BLAKE2b of its header bytes."""
    return _digest(header_bytes(part10)).hex()


def series_uid(part10: bytes) -> str | None:
    """(0020,000E) Series Instance UID of a Part-10 file, or None (no full parse)."""
    try:
        return scan_part10(bytes(part10)).series_uid
    except (_Unparsable, struct.error, UnicodeDecodeError):
        return None


def encode_instance(part10: bytes, effort: str = "fast", *, verify: bool = True,
                    reference: bytes | None = None) -> bytes:
    """Encode a DICOM Part-10 file (or any bytes) losslessly.

    ``effort`` is ``"fast"`` or ``"max"``.  With ``verify`` (the default) the
    result is decoded once and compared; on any mismatch or codec failure the
    whole file falls back to the header codec, so the output always decodes to
    ``part10`` exactly.  ``reference`` (another Part-10 instance, typically the
    first of the same series) primes the header codec with that instance's
    header: a CT slice header then costs ~100 bytes instead of ~2.5 KB, but
    :func:`decode_instance` needs the same reference.
    """
    if effort not in ("fast", "max"):
        raise ValueError(f"effort = {effort!r} is not one of ('fast', 'max')")
    buf = bytes(part10)
    ref = header_bytes(reference) if reference is not None else b""
    payloads, scan = _plan(buf)
    try:
        out = _assemble(buf, payloads, scan, effort, ref)
        if verify and payloads and decode_instance(out, reference=reference) != buf:
            raise ValueError("verification mismatch")
    except Exception as exc:  # noqa: BLE001 - any codec trouble: the generic path is exact
        _log.warning("instance codec fell back to the generic path: %s", exc)
        out = _assemble(buf, [], scan, effort, ref)
    return out


def _assemble(buf: bytes, payloads: list[_Payload], scan: _Scan | None, effort: str,
              ref: bytes = b"") -> bytes:
    pieces = []
    header = bytearray()
    pos = 0
    for p in payloads:
        header += buf[pos:p.offset]
        codec, blob = _encode_payload(buf, p, scan, effort) if scan else (CODEC_RAW, b"")
        pieces.append((p, codec, blob))
        pos = p.offset + p.length
    header += buf[pos:]
    level = 19 if (effort == "max" or len(header) <= 1 << 16) else 6
    hblob = header_encode(bytes(header), modality=scan.modality if scan else None, level=level,
                          extra=ref)
    out = bytearray(_HEAD.pack(MAGIC, VERSION, _REF if ref else 0, len(pieces), len(buf),
                               _digest(buf), len(header), len(hblob)))
    if ref:
        out += _digest(ref)
    big = 0 if (scan is None or scan.little) else _BIG
    for p, codec, blob in pieces:
        out += _PAY.pack(p.kind | big, codec, p.offset, p.length, len(blob))
    out += hblob
    for _p, _c, blob in pieces:
        out += blob
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def _parse(enc: bytes) -> tuple[tuple[Any, ...], list[tuple[int, int, int, int, int]], int]:
    if len(enc) < _HEAD.size + 4:
        raise DecodeError(f"encoded instance of {len(enc)} bytes is shorter than its header")
    head = _HEAD.unpack_from(enc)
    magic, version, _flags, npay, orig_len, _dig, hraw, hlen = head
    envelope.check_head("encoded instance", magic, MAGIC, version, VERSION)
    envelope.check_crc("encoded instance", enc)
    if orig_len > MAX_ORIGINAL or hraw > orig_len:
        raise DecodeError(f"encoded instance declares {orig_len} bytes ({hraw} header)")
    pays = []
    pos = _HEAD.size + (16 if _flags & _REF else 0)
    if _flags & ~_REF:
        raise DecodeError(f"encoded instance flags {_flags:#04x} unknown")
    for _ in range(npay):
        if pos + _PAY.size > len(enc) - 4:
            raise DecodeError("encoded instance payload table truncated")
        pays.append(_PAY.unpack_from(enc, pos))
        pos += _PAY.size
    return head, pays, pos


def instance_info(enc: bytes) -> dict[str, Any]:
    """What :func:`encode_instance` chose: sizes and codec per payload (no decoding)."""
    head, pays, pos = _parse(enc)
    _m, version, flags, _n, orig_len, dig, hraw, hlen = head
    return {
        "reference_blake2b": enc[_HEAD.size:_HEAD.size + 16].hex() if flags & _REF else None,
        "version": version, "original_bytes": orig_len, "encoded_bytes": len(enc),
        "ratio": orig_len / len(enc) if enc else 0.0, "blake2b_128": dig.hex(),
        "header": {"raw_bytes": hraw, "encoded_bytes": hlen,
                   "dict_id": int.from_bytes(enc[pos:pos + 2], "little") if hlen >= 2 else None},
        "payloads": [{"kind": KIND_NAMES.get(k & ~_BIG, str(k)), "big_endian": bool(k & _BIG),
                      "codec": CODEC_NAMES.get(c, str(c)),
                      "offset": off, "raw_bytes": ln, "encoded_bytes": bl}
                     for k, c, off, ln, bl in pays],
    }


def decode_instance(enc: bytes, *, reference: bytes | None = None) -> bytes:
    """Inverse of :func:`encode_instance`: the original bytes, verified, or DecodeError.

    ``reference`` must be the instance given to the encoder, if one was.
    """
    enc = bytes(enc)
    head, pays, pos = _parse(enc)
    _m, _v, flags, _n, orig_len, dig, hraw, hlen = head
    end = len(enc) - 4
    ref = b""
    if flags & _REF:
        want = enc[_HEAD.size:_HEAD.size + 16]
        if reference is None:
            raise DecodeError(f"encoded instance needs its reference instance "
                              f"(header BLAKE2b {want.hex()})")
        ref = header_bytes(reference)
        if _digest(ref) != want:
            raise DecodeError(f"reference instance header BLAKE2b {_digest(ref).hex()} != "
                              f"{want.hex()} the instance was encoded with")
    if pos + hlen > end:
        raise DecodeError("encoded instance header blob runs past the end")
    header = header_decode(enc[pos:pos + hlen], max_size=hraw, extra=ref)
    if len(header) != hraw:
        raise DecodeError(f"header decoded to {len(header)} bytes, expected {hraw}")
    pos += hlen
    out = bytearray()
    hpos = 0
    for kind, codec, off, length, blen in pays:
        if pos + blen > end or off < len(out) or off - len(out) > hraw - hpos:
            raise DecodeError(f"payload at offset {off} is inconsistent with the container")
        take = off - len(out)
        out += header[hpos:hpos + take]
        hpos += take
        little = not kind & _BIG
        p = _Payload(kind & ~_BIG, off, length)
        out += _decode_payload(codec, enc[pos:pos + blen], p, little, {})
        pos += blen
    out += header[hpos:]
    if pos != end or len(out) != orig_len:
        raise DecodeError(f"instance decoded to {len(out)} bytes, expected {orig_len}")
    if _digest(bytes(out)) != dig:
        raise DecodeError("decoded instance does not match its BLAKE2b digest")
    return bytes(out)
