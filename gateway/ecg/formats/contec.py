"""Contec ECG90A native ``.ECG`` files (a Chinese portable 12-lead cart): own parser.

No library reads this format and no public specification exists; the layout
is the one described by the reverse-engineered reader in RigacciOrg/ecg-contec
(shared/data/ecg/formats/README.md):

* 43-byte header: case number (8 bytes ASCII, NUL-padded), 2 bytes, acquisition
  time ``YYYY-mm-dd HH:MM:SS`` (20 bytes), 2 bytes, name (8 bytes), sex (0 F,
  1 M, 255 blank), age, weight;
* frames of 8 little-endian int16 samples: I, II, V1-V6 (III, aVR, aVL, aVF are
  derived), 800 Hz, 5 µV per unit, baseline 2048; 0x6800 marks "no data";
* a 37-byte footer, mostly zero bytes (:data:`FOOTER_MIN_ZEROS`).

Detection is by content: the file size minus 80 is a whole number of 16-byte
frames, the case number is ASCII digits and the time field parses.  A lead that
holds only "no data" (electrode not attached) is left out; isolated "no data"
samples become NaN (0 in the DICOM object).

The shared README names the first two channels I and II; the public reader's
comment calls them II and III.  The README is followed here (see docs/decisions.md).
"""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np

from fenji.gateway.ecg.formats.common import (
    EcgFile,
    EcgFileError,
    EcgMeta,
    build_record,
    decode_text,
)

HEADER_BYTES = 43
FOOTER_BYTES = 37
CHANNELS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
FS_HZ = 800.0
UV_PER_UNIT = 5.0
BASELINE = 2048
NO_DATA = 0x6800
#: The footer is mostly zero bytes (all zero in the shared files; one device byte set
#: in a later recording).  Samples cannot look like that: every value the 12-bit ADC
#: gives from 256 to 4095 (-9 mV and up) has a non-zero high byte, so sample data
#: is at most about half zero bytes.  Three quarters tells the two apart.
FOOTER_MIN_ZEROS = (3 * FOOTER_BYTES + 3) // 4
_CASE = re.compile(rb"^[0-9A-Za-z]{1,8}\x00*$")
_SEX = {0: "F", 1: "M"}


def _when(data: bytes) -> _dt.datetime | None:
    try:
        return _dt.datetime.strptime(data[10:30].split(b"\x00", 1)[0].decode("ascii"),
                                     "%Y-%m-%d %H:%M:%S")
    except (UnicodeDecodeError, ValueError):
        return None


def looks_like_contec(data: bytes) -> bool:
    n = len(data) - HEADER_BYTES - FOOTER_BYTES
    return (n > 0 and n % (2 * len(CHANNELS)) == 0 and bool(_CASE.match(data[:8]))
            and _when(data) is not None)


def read_contec(name: str, data: bytes) -> EcgFile:
    if not looks_like_contec(data):
        n = len(data) - HEADER_BYTES - FOOTER_BYTES
        if n <= 0 or n % (2 * len(CHANNELS)):
            raise EcgFileError(f"{name}: Contec ECG90A data of {max(n, 0)} bytes is not a whole "
                               f"number of {2 * len(CHANNELS)}-byte frames (truncated)")
        raise EcgFileError(f"{name}: Contec ECG90A header case number/time field unreadable")
    footer = data[-FOOTER_BYTES:]
    if footer.count(0) < FOOTER_MIN_ZEROS:
        # The format has no length field: samples where the footer should be mean the
        # file was cut at a frame boundary (a cut elsewhere breaks the frame count).
        raise EcgFileError(f"{name}: Contec ECG90A footer (last {FOOTER_BYTES} bytes) holds "
                           f"{FOOTER_BYTES - footer.count(0)} non-zero bytes: sample data, "
                           "not the footer (truncated)")
    when = _when(data)
    body = np.frombuffer(data, dtype="<i2", offset=HEADER_BYTES,
                         count=(len(data) - HEADER_BYTES - FOOTER_BYTES) // 2)
    frames = body.reshape(-1, len(CHANNELS))
    missing = frames == NO_DATA
    valid = (frames >= 0) & (frames < 4096) | missing       # 12-bit ADC around 2048
    if not valid.all():
        k = int(np.argmin(valid.all(axis=1)))
        raise EcgFileError(f"{name}: Contec ECG90A frame {k} holds {frames[k].tolist()}, outside "
                           "the 12-bit ADC range (corrupt)")
    cols, leads = [], []
    for j, lead in enumerate(CHANNELS):
        if missing[:, j].all():
            continue
        c = (frames[:, j].astype(np.float64) - BASELINE) * UV_PER_UNIT
        c[missing[:, j]] = np.nan
        cols.append(c)
        leads.append(lead)
    dropped = [c for j, c in enumerate(CHANNELS) if missing[:, j].all()]
    record, notes = build_record(name, FS_HZ, leads, cols, [UV_PER_UNIT] * len(leads))
    if dropped:
        notes += (f"{', '.join(dropped)} hold no data (electrodes not attached): left out",)
    meta = EcgMeta(format="Contec ECG90A", patient_name=decode_text(data[32:40]),
                   sex=_SEX.get(data[40], ""),
                   acquired=when, manufacturer="Contec", model="ECG90A", notes=notes)
    return EcgFile(record, meta)
