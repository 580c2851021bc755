"""Healforce (Shanghai) handheld recorders' SCP-ECG files, e.g. Prince 180D: own parser.

These files call themselves SCP-ECG but break EN 1064 in ways no library
handles (ecgdatakit finds no parser).  The quirks, as documented with the shared
sample and by the public decoder KaibinBao/healforcescpecg:

* the record length is 16-bit (bytes 5-6; bytes 3-4 are 0) and the file is padded;
* section pointers are 0-based; the CRCs are not CRC-CCITT (so they cannot be
  checked: corruption inside the samples is not detectable);
* section 6: the "sample interval" field holds the rate in Hz (150), one stream
  interleaves all leads, 4 samples packed in 3 little-endian words: each word's
  bits 0-9 are a sample (offset binary, 512 = 0), bits 10-13 a nibble of the 4th
  sample, bits 14-15 beat markers;
* section 1 tags 25/26 (date/time) are big-endian.

What *is* checked: every pointer lands on a section header with that ID and
length inside the file, the section 6 data length fills whole 6-byte groups
within the section, and the values split evenly across the leads.  The leads are
not named by the file (section 3 has no lead table): they are ``ch1``..``chN``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import struct

import numpy as np

from fenji.gateway.ecg.formats.common import (
    EcgFile,
    EcgFileError,
    EcgMeta,
    build_record,
    decode_text,
)

_HEADER = 16


def looks_like_healforce(data: bytes) -> bool:
    if len(data) < 6 + _HEADER + 10 or data[16:22] == b"SCPECG":
        return False
    zero, length16 = struct.unpack_from("<HH", data, 2)
    sid, s0_len = struct.unpack_from("<HI", data, 8)
    pid, plen, pindex = struct.unpack_from("<HII", data, 6 + _HEADER)
    return (zero == 0 and sid == 0 and 6 < length16 <= len(data) and pid == 0
            and plen == s0_len and pindex == 6)


def _sections(name: str, data: bytes) -> dict[int, bytes]:
    s0_len = struct.unpack_from("<I", data, 10)[0]
    if 6 + s0_len > len(data):
        raise EcgFileError(f"{name}: Healforce SCP section 0 length {s0_len} exceeds the file")
    out = {}
    for off in range(6 + _HEADER, 6 + s0_len - 9, 10):
        sid, slen, index = struct.unpack_from("<HII", data, off)
        if slen == 0:
            continue
        if index + slen > len(data) or slen < _HEADER:
            raise EcgFileError(f"{name}: Healforce SCP section {sid} (offset {index}, length "
                               f"{slen}) lies outside the {len(data)}-byte file (truncated)")
        real_id = struct.unpack_from("<H", data, index + 2)[0]
        if real_id != sid:
            raise EcgFileError(f"{name}: Healforce SCP section {sid} pointer leads to section "
                               f"ID {real_id} (corrupt)")
        out[sid] = data[index:index + slen]
    for need in (3, 6):
        if need not in out:
            raise EcgFileError(f"{name}: Healforce SCP section {need} is missing")
    return out


def _unpack(packed: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(values, beat flags) from 4-in-3 packed 12-bit samples."""
    w = np.frombuffer(packed, dtype="<u2").reshape(-1, 3).astype(np.int32)
    fourth = ((w[:, 0] & 0x3C00) >> 2) | ((w[:, 1] & 0x3C00) >> 6) | ((w[:, 2] & 0x3C00) >> 10)
    s = np.concatenate([w, fourth[:, None]], axis=1).reshape(-1)
    return (s & 0x3FF) - 512, (s >> 15) & 1


def read_healforce(name: str, data: bytes) -> EcgFile:
    secs = _sections(name, data)
    s3, s6 = secs[3], secs[6]
    n_leads = s3[_HEADER] if len(s3) > _HEADER else 0
    if not 1 <= n_leads <= 12:
        raise EcgFileError(f"{name}: Healforce SCP section 3 number of leads {n_leads} is not 1-12")
    if len(s6) < _HEADER + 8:
        raise EcgFileError(f"{name}: Healforce SCP section 6 of {len(s6)} bytes has no header")
    avm_nv, rate_hz, _diff, _bimodal, n_bytes = struct.unpack_from("<HHBBH", s6, _HEADER)
    packed = s6[_HEADER + 8:_HEADER + 8 + n_bytes]
    if len(packed) != n_bytes or n_bytes == 0 or n_bytes % 6:
        raise EcgFileError(f"{name}: Healforce SCP section 6 data length {n_bytes} does not fit "
                           f"its {len(s6)}-byte section in whole 6-byte groups (truncated)")
    if not 50 <= rate_hz <= 1000 or avm_nv == 0:
        raise EcgFileError(f"{name}: Healforce SCP section 6 rate {rate_hz} Hz / amplitude "
                           f"{avm_nv} nV is not plausible")
    values, _beats = _unpack(packed)
    if len(values) % n_leads:
        raise EcgFileError(f"{name}: Healforce SCP {len(values)} samples do not split into "
                           f"{n_leads} leads")
    x = values.reshape(-1, n_leads).astype(np.float64) * (avm_nv / 1000.0)
    leads = [f"ch{j + 1}" for j in range(n_leads)]
    record, notes = build_record(name, float(rate_hz), leads, [x[:, j] for j in range(n_leads)],
                                 [avm_nv / 1000.0] * n_leads)
    notes += ("non-conformant Healforce SCP: CRCs not verifiable, leads unnamed",)
    return EcgFile(record, _meta(secs.get(1, b""), notes))


def _meta(s1: bytes, notes: tuple[str, ...]) -> EcgMeta:
    """Section 1: patient ID (tag 2), name (tag 0), date/time (tags 25/26, big-endian)."""
    pid = name = ""
    acquired = None
    date: tuple[int, int, int] | None = None
    time: tuple[int, int, int] = (0, 0, 0)
    pos = _HEADER
    while pos + 3 <= len(s1):
        tag, ln = s1[pos], struct.unpack_from("<H", s1, pos + 1)[0]
        val = s1[pos + 3:pos + 3 + ln]
        if tag == 255 or ln == 0 and tag == 0:
            break
        if tag == 2:
            pid = decode_text(val)
            pid = "" if set(pid) <= {"0"} else pid
        elif tag == 0:
            name = decode_text(val)
        elif tag == 25 and ln == 4:
            y, mo, d = struct.unpack(">HBB", val)           # big-endian (quirk)
            date = (y, mo, d)
        elif tag == 26 and ln == 3:
            h, mi, sec = struct.unpack(">BBB", val)
            time = (h, mi, sec)
        pos += 3 + ln
    if date is not None:
        with contextlib.suppress(ValueError):
            acquired = _dt.datetime(date[0], date[1], date[2], time[0], time[1], time[2])
    return EcgMeta(format="SCP-ECG (Healforce)", patient_name=name, patient_id=pid,
                   acquired=acquired, manufacturer="Healforce", notes=notes)
