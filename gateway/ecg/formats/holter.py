"""ISHNE 1.0 Holter and MFER (ISO 22077), samples by ecgdatakit; headers checked here.

ecgdatakit reads both correctly (ISHNE int16 x 5000 nV and MFER int16 x 20 µV match
the raw integers in the files), but a truncated ISHNE file only gets a warning
and loses samples.  So the ISHNE header is checked here first: magic, header
CRC-CCITT (bytes 10-521), and that the data holds exactly leads x samples int16.
MFER has no checksum; ecgdatakit refuses a tag whose length overruns the file.

Long recordings are kept whole (an Ambulatory ECG object); the quality gate
looks at the first minutes only (see ``fenji.gateway.ecg.convert``).
"""

from __future__ import annotations

import binascii
import dataclasses
import struct

from ecgdatakit.parsing.parsers.ishne_holter import ISHNEHolterParser
from ecgdatakit.parsing.parsers.mfer import MFERParser

from fenji.gateway.ecg.formats.common import (
    EcgFile,
    EcgFileError,
    decode_text,
    library_file,
    pn,
    run_library,
)

ISHNE_MAGIC = b"ISHNE1.0"
ANN_MAGIC = b"ANN  1.0"
_ISHNE_HEADER_END = 522


def check_ishne(name: str, data: bytes) -> None:
    if len(data) < _ISHNE_HEADER_END:
        raise EcgFileError(f"{name}: ISHNE file of {len(data)} bytes is shorter than its "
                           f"{_ISHNE_HEADER_END}-byte header")
    crc = struct.unpack_from("<H", data, 8)[0]
    if binascii.crc_hqx(data[10:_ISHNE_HEADER_END], 0xFFFF) != crc:
        raise EcgFileError(f"{name}: ISHNE header CRC (bytes 8-9) does not match the header")
    var_size, n_samples, _var_off, ecg_off = struct.unpack_from("<iiii", data, 10)
    n_leads = struct.unpack_from("<h", data, 156)[0]
    if not 1 <= n_leads <= 12:
        raise EcgFileError(f"{name}: ISHNE number of leads {n_leads} is not 1-12")
    if ecg_off < _ISHNE_HEADER_END or var_size < 0 or n_samples <= 0:
        raise EcgFileError(f"{name}: ISHNE ECG block offset {ecg_off} / size {n_samples} "
                           "is out of range")
    want = ecg_off + 2 * n_leads * n_samples
    if len(data) < want:
        raise EcgFileError(f"{name}: ISHNE ECG data holds {len(data) - ecg_off} bytes, the header "
                           f"(ECG size {n_samples} x {n_leads} leads) needs {want - ecg_off} "
                           "(truncated)")


def check_ishne_ann(name: str, data: bytes) -> int:
    """Number of beat annotations in an ISHNE annotation file (its magic checked)."""
    if not data.startswith(ANN_MAGIC) or len(data) < _ISHNE_HEADER_END + 4:
        raise EcgFileError(f"{name}: not an ISHNE annotation file (magic {data[:8]!r})")
    var_size = struct.unpack_from("<i", data, 10)[0]
    start = _ISHNE_HEADER_END + max(var_size, 0) + 4   # + 4: first annotation's offset
    body = len(data) - start
    if body < 0 or body % 4:
        raise EcgFileError(f"{name}: ISHNE annotation block of {body} bytes is not a whole "
                           "number of 4-byte annotations")
    return body // 4


def read_ishne(name: str, data: bytes) -> EcgFile:
    check_ishne(name, data)
    rec = run_library(name, data, ISHNEHolterParser().parse, ".ecg")
    # ISHNE text fields are ASCII by the spec; decode them ourselves (GB18030 if a
    # Chinese recorder wrote its names there) instead of ecgdatakit's Latin-1.
    first, last = decode_text(data[28:68]), decode_text(data[68:108])
    pid = decode_text(data[108:128])
    file = library_file("ISHNE Holter", name, rec)
    return dataclasses.replace(file, meta=dataclasses.replace(
        file.meta, patient_name=pn(last, first), patient_id="" if pid.lower() == "none" else pid))


def read_mfer(name: str, data: bytes) -> EcgFile:
    rec = run_library(name, data, MFERParser().parse, ".mwf")
    return library_file("MFER", name, rec, undeclared_text=True)
