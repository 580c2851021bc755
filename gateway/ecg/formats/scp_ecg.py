"""SCP-ECG (EN 1064 / ISO 11073-91064): the container checked here, samples by ecgdatakit.

ecgdatakit decodes Huffman/difference-coded rhythm data correctly (its output for
``ecgtoolkit_example_eli250.scp`` equals the aECG digits the file was made from),
but it only *warns* on CRC mismatches and rounds the sampling rate to an integer
(Welch Allyn's 1667 µs interval is 599.88 Hz, not 600).  So this module first
walks the record itself (EN 1064 §5.2-5.4): the record CRC-CCITT and length, the
section 0 pointer table, and each section's ID, length and CRC; any mismatch is
refused naming the section.  The sampling rate comes from the section 6 header.

Lead sample ranges (section 3) are 1-based (§5.6.3).  Some PC writers (the
"ECG Viewer" program's export) write them 0-based; when the raw section 6 byte
counts prove which 0-based reading was meant, the ranges are made 1-based in a
copy of the record (its CRCs recomputed) and the file is read with a note;
otherwise the file is refused as before.
"""

from __future__ import annotations

import binascii
import dataclasses
import struct

from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

from fenji.gateway.ecg.formats.common import (
    MAX_SAMPLE_VALUES,
    EcgFile,
    EcgFileError,
    library_file,
    run_library,
)
from fenji.gateway.ecg.formats.healforce import looks_like_healforce, read_healforce

_SECTION_HEADER = 16


def looks_like_scp(data: bytes) -> bool:
    """Section 0 sits at byte 6 with ID 0 and the "SCPECG" reserved field (EN 1064
    §5.3.2), or at least ID 0 and a pointer table starting with section 0."""
    if len(data) < 6 + _SECTION_HEADER + 10:
        return False
    sec_id = struct.unpack_from("<H", data, 8)[0]
    if sec_id != 0:
        return False
    if data[16:22] == b"SCPECG":
        return True
    # Writers that leave the reserved field empty: the first pointer must describe
    # section 0 itself (ID 0, its length, index 7 -- or 6, 0-based, as Healforce writes).
    s0_len = struct.unpack_from("<I", data, 10)[0]
    pid, plen, pindex = struct.unpack_from("<HII", data, 6 + _SECTION_HEADER)
    return pid == 0 and plen == s0_len > _SECTION_HEADER and pindex in (6, 7)


def check_container(name: str, data: bytes) -> dict[int, tuple[int, int]]:
    """Verify lengths and CRCs; return {section id: (offset, length)} of present sections."""
    if len(data) < 6 + _SECTION_HEADER:
        raise EcgFileError(f"{name}: SCP-ECG record of {len(data)} bytes is too short")
    crc, length = struct.unpack_from("<HI", data, 0)
    if length > len(data):
        raise EcgFileError(f"{name}: SCP-ECG record length field says {length} bytes, the file "
                           f"has {len(data)} (truncated, or a non-conformant writer)")
    if length < len(data) and data[length:].strip(b"\x00"):
        raise EcgFileError(f"{name}: SCP-ECG record length field says {length} bytes, the file "
                           f"has {len(data)} with data after the record")
    if binascii.crc_hqx(data[2:length], 0xFFFF) != crc:
        raise EcgFileError(f"{name}: SCP-ECG record CRC (bytes 1-2) does not match the record "
                           "(corrupt, or a non-conformant writer)")
    s0_len = struct.unpack_from("<I", data, 10)[0]
    if s0_len < _SECTION_HEADER or 6 + s0_len > length:
        raise EcgFileError(f"{name}: SCP-ECG section 0 length {s0_len} is out of range")
    sections: dict[int, tuple[int, int]] = {}
    for off in range(6 + _SECTION_HEADER, 6 + s0_len - 9, 10):
        sid, slen, index = struct.unpack_from("<HII", data, off)
        if slen == 0:
            continue
        start = index - 1                           # pointers are 1-based (§5.3.2)
        if start < 0 or start + slen > length or slen < _SECTION_HEADER:
            raise EcgFileError(f"{name}: SCP-ECG section {sid} pointer (index {index}, length "
                               f"{slen}) lies outside the {length}-byte record")
        scrc, real_id, hlen = struct.unpack_from("<HHI", data, start)
        if real_id != sid:
            raise EcgFileError(f"{name}: SCP-ECG section {sid} pointer leads to section ID "
                               f"{real_id}")
        if hlen != slen:
            raise EcgFileError(f"{name}: SCP-ECG section {sid} header length {hlen} differs from "
                               f"its pointer's {slen}")
        if binascii.crc_hqx(data[start + 2:start + slen], 0xFFFF) != scrc:
            raise EcgFileError(f"{name}: SCP-ECG section {sid} CRC does not match its content")
        sections[sid] = (start, slen)
    for need in (1, 3, 6):
        if need not in sections:
            raise EcgFileError(f"{name}: SCP-ECG section {need} (required for a rhythm record) "
                               "is missing")
    return sections


def read_scp(name: str, data: bytes) -> EcgFile:
    if looks_like_healforce(data):
        return read_healforce(name, data)
    sections = check_container(name, data)
    _check_ranges(name, data, sections)
    start, slen = sections[6]
    if slen < _SECTION_HEADER + 6:
        raise EcgFileError(f"{name}: SCP-ECG section 6 of {slen} bytes has no header")
    interval_us = struct.unpack_from("<H", data, start + _SECTION_HEADER + 2)[0]
    if interval_us == 0:
        raise EcgFileError(f"{name}: SCP-ECG section 6 sample time interval is 0 µs")
    data, note = _one_based(data, sections)
    rec = run_library(name, data, SCPECGParser().parse, ".scp")
    # Language support code 0 says "ASCII only"; Chinese carts still write GBK
    # there.  ecgdatakit then falls back to Latin-1; re-decode such text.
    undeclared = _language_code(data, *sections[1]) == 0
    file = library_file("SCP-ECG", name, rec, fs_hz=1e6 / interval_us,
                        undeclared_text=undeclared)
    if not note:
        return file
    return dataclasses.replace(file, meta=dataclasses.replace(
        file.meta, notes=(*file.meta.notes, note)))


def _check_ranges(name: str, data: bytes, sections: dict[int, tuple[int, int]]) -> None:
    """Refuse section 3 lead ranges beyond :data:`MAX_SAMPLE_VALUES`: the parser
    allocates each lead's samples by its declared end before reading them (a
    damaged range of 2^32 samples asked it for 32 GiB)."""
    s3, s3_len = sections[3]
    p3 = s3 + _SECTION_HEADER
    if s3_len < _SECTION_HEADER + 2:
        return
    n = data[p3]
    for i in range(n):
        if p3 + 2 + 9 * (i + 1) > s3 + s3_len:
            return
        start, end = struct.unpack_from("<II", data, p3 + 2 + 9 * i)
        if end > MAX_SAMPLE_VALUES or n * max(end - start + 1, 0) > MAX_SAMPLE_VALUES:
            raise EcgFileError(f"{name}: SCP-ECG section 3 lead {i + 1} declares samples "
                               f"{start}-{end}: more than the limit of {MAX_SAMPLE_VALUES} "
                               "sample values")


def _one_based(data: bytes, sections: dict[int, tuple[int, int]]) -> tuple[bytes, str]:
    """``data`` with 0-based section 3 lead ranges made 1-based, and a note saying so;
    ``(data, "")`` when there is nothing to change or the intent cannot be proved.

    Proof needs raw samples: no Huffman table (section 2), no difference or bimodal
    coding in section 6, and every lead's section 6 byte count equal to 2 x its
    sample count read as [start, end) (``end`` kept) or as [start, end] (``end``
    + 1).  Anything else is left to the parser, which refuses start 0.
    """
    s3, s3_len = sections[3]
    s6, s6_len = sections[6]
    p3, p6 = s3 + _SECTION_HEADER, s6 + _SECTION_HEADER
    if 2 in sections or s3_len < _SECTION_HEADER + 2:
        return data, ""
    n = data[p3]
    if n == 0 or p3 + 2 + 9 * n > s3 + s3_len or p6 + 6 + 2 * n > s6 + s6_len:
        return data, ""
    ranges = [struct.unpack_from("<II", data, p3 + 2 + 9 * i) for i in range(n)]
    if any(start != 0 for start, _ in ranges) or data[p6 + 4] or data[p6 + 5]:
        return data, ""
    counts = [struct.unpack_from("<H", data, p6 + 6 + 2 * i)[0] for i in range(n)]
    if all(c == 2 * end for (_, end), c in zip(ranges, counts, strict=True)):
        shift, how = 0, "[0, end)"
    elif all(c == 2 * (end + 1) for (_, end), c in zip(ranges, counts, strict=True)):
        shift, how = 1, "[0, end]"
    else:
        return data, ""
    out = bytearray(data)
    for i, (_, end) in enumerate(ranges):
        struct.pack_into("<II", out, p3 + 2 + 9 * i, 1, end + shift)
    struct.pack_into("<H", out, s3, binascii.crc_hqx(bytes(out[s3 + 2:s3 + s3_len]), 0xFFFF))
    length = struct.unpack_from("<I", out, 2)[0]
    struct.pack_into("<H", out, 0, binascii.crc_hqx(bytes(out[2:length]), 0xFFFF))
    return bytes(out), (f"SCP-ECG lead sample ranges written 0-based {how} (EN 1064 says "
                        "1-based): read by the section 6 byte counts")


def _language_code(data: bytes, start: int, slen: int) -> int:
    """Section 1 tag 14 (acquiring device) byte 16: the language support code."""
    pos, end = start + _SECTION_HEADER, start + slen
    while pos + 3 <= end:
        tag, tlen = data[pos], struct.unpack_from("<H", data, pos + 1)[0]
        if tag == 255:
            break
        if tag == 14 and tlen > 16 and pos + 3 + 16 < end:
            return data[pos + 3 + 16]
        pos += 3 + tlen
    return 0
