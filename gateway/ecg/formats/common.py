"""What every ECG-file reader shares: the error type, the side record of patient and
acquisition data, text decoding, and the conversion of ecgdatakit leads to `EcgRecord`.

Nothing here imports the rest of ``fenji.gateway``; the readers are bytes in,
``EcgFile`` out.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fenji.codecs.ecg.record import STANDARD_12, EcgFilters, EcgRecord
from fenji.codecs.errors import DecodeError
from fenji.gateway.config import ECG_FILE_MAX_BYTES, ECG_SAMPLE_VALUES_MAX, ECG_XML_MAX_BYTES

# The readers' bounds (defined with every other limit in gateway/config.py).
MAX_FILE_BYTES = ECG_FILE_MAX_BYTES
MAX_SAMPLE_VALUES = ECG_SAMPLE_VALUES_MAX
MAX_XML_BYTES = ECG_XML_MAX_BYTES

#: Declared-encoding aliases read as their superset: Chinese carts declare "GB2312"
#: and write GBK characters (e.g. rare surname characters); GB18030 decodes both.
_ENCODING_SUPERSET = {"gb2312": "gb18030", "gbk": "gb18030", "gb_2312-80": "gb18030",
                      "x-gbk": "gb18030", "cp936": "gb18030", "euc-cn": "gb18030",
                      "euc_cn": "gb18030", "iso-ir-58": "gb18030"}


class EcgFileError(DecodeError):
    """An ECG file is truncated, corrupt, or not in a format fenji reads.

    The message names the file and the field (``lepu.xml: MDC_ECG_LEAD_V1 digits: ...``).
    """


@dataclass(frozen=True, slots=True)
class EcgMeta:
    """Patient and acquisition data read from the file (empty where the file has none).

    ``patient_name`` is in DICOM PN form (``Family^Given``); ``birth_date`` is
    ``YYYYMMDD``; ``sex`` is ``M``, ``F``, ``O`` or empty.
    """

    format: str
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    acquired: _dt.datetime | None = None
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    software: str = ""
    institution: str = ""
    statements: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())   # what the reader derived or dropped


@dataclass(frozen=True, slots=True)
class EcgFile:
    """One ECG file read: the record (physical mV) and its side data."""

    record: EcgRecord
    meta: EcgMeta


def fail(name: str, what: str) -> EcgFileError:
    return EcgFileError(f"{name}: {what}")


def canonical_encoding(declared: str) -> str:
    """Python codec for a declared text encoding (GB2312/GBK read as GB18030)."""
    d = declared.strip().lower()
    return _ENCODING_SUPERSET.get(d, d)


def looks_gb(raw: bytes) -> bool:
    """Undeclared bytes that read as GB18030 with every non-ASCII character a
    GB2312-core pair (both bytes 0xA1-0xFE: what Chinese names and statements are
    made of) -- so Latin-1 text such as ``"Åsa"`` (0xC5 then ASCII) is not taken
    for Chinese.

    >>> looks_gb("王小东".encode("gb18030")), looks_gb("Åsa".encode("latin-1"))
    (True, False)
    """
    try:
        raw.decode("gb18030")
    except UnicodeDecodeError:
        return False
    i, seen = 0, False
    while i < len(raw):
        b = raw[i]
        if b < 0x80:
            i += 1
            continue
        if not (0xA1 <= b <= 0xFE and i + 1 < len(raw) and 0xA1 <= raw[i + 1] <= 0xFE):
            return False
        i, seen = i + 2, True
    return seen


def decode_text(raw: bytes, declared: str | None = None, *,
                fallback: str = "gb18030") -> str:
    """Text from a binary header field: the declared encoding if any, else ASCII/
    UTF-8, else ``fallback`` (GB18030: what Chinese carts write undeclared) when the
    bytes look like it (`looks_gb`), else Latin-1.

    >>> decode_text("王小东".encode("gb18030"))
    '王小东'
    >>> decode_text(b"Clark\\x00\\x00"), decode_text("Åsa".encode("latin-1"))
    ('Clark', 'Åsa')
    """
    raw = raw.split(b"\x00", 1)[0]
    if declared:
        try:
            return raw.decode(canonical_encoding(declared)).strip()
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        pass
    if fallback and looks_gb(raw):
        return raw.decode(fallback).strip()
    return raw.decode("latin-1").strip()


def _redecode(text: str, *, fallback: str = "gb18030") -> str:
    """Undo a Latin-1 fallback decode of undeclared bytes (what ecgdatakit does for
    SCP/ISHNE/MFER text it cannot decode): the characters are the bytes, one to one.

    >>> _redecode("王".encode("gb18030").decode("latin-1"))
    '王'
    """
    if not text or all(ord(c) < 0x80 for c in text) or any(ord(c) > 0xFF for c in text):
        return text
    return decode_text(text.encode("latin-1"), fallback=fallback)


_NO_NAME = frozenset({"none", "unknown", "anonymous", "---", "n/a"})


def pn(family: str, given: str = "") -> str:
    """DICOM Person Name from family and given names (``^`` kept out of the parts)."""
    family, given = (x.replace("^", " ").strip() for x in (family, given))
    family, given = ("" if x.lower() in _NO_NAME else x for x in (family, given))
    return f"{family}^{given}" if given else family


def da(d: _dt.date | _dt.datetime | None) -> str:
    return d.strftime("%Y%m%d") if d is not None and 1850 < d.year < 2200 else ""


_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def sex_code(s: str | None) -> str:
    return _SEX.get((s or "").strip().upper(), "")


_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1000.0, "v": 1e6, "nv": 1e-3, "": 1.0}


def to_uv_factor(unit: str, where: str) -> float:
    try:
        return _TO_UV[unit.strip().lower()]
    except KeyError:
        raise EcgFileError(f"{where}: unit {unit!r} is not a voltage") from None


def lead_physical_uv(lead: Any, where: str) -> tuple[np.ndarray, float]:
    """(samples in µV, the file's µV per count) of one ecgdatakit ``Lead`` read raw."""
    s = np.asarray(lead.samples, dtype=np.float64)
    if lead.is_raw:
        f = to_uv_factor(lead.resolution_unit or "uV", f"{where} lead {lead.label}")
        res_uv = float(lead.resolution) * f
        return s * res_uv + float(lead.offset) * f, res_uv
    f = to_uv_factor(lead.units or lead.resolution_unit or "uV", f"{where} lead {lead.label}")
    res_uv = float(lead.resolution) * f if lead.resolution else 1.0
    return s * f, res_uv


def _unit(lead: Any) -> str:
    raw = lead.resolution_unit if lead.is_raw else (lead.units or lead.resolution_unit)
    return str(raw or "").strip().lower()


def ecg_leads(leads: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The ECG leads of an ecgdatakit record, and the labels of the channels that are
    not ECG.  Monitors' files (MFER from a bedside monitor) carry pressure, SpO2 or
    respiration channels beside the ECG, often at another rate: a channel is ECG if
    its unit is a voltage, or -- when no channel of the file declares a voltage --
    if it declares no unit at all (read as µV, as before)."""
    volts = [lead for lead in leads if _unit(lead) and _unit(lead) in _TO_UV]
    keep = volts or [lead for lead in leads if not _unit(lead)]
    ids = {id(lead) for lead in keep}
    return keep, [str(lead.label) for lead in leads if id(lead) not in ids]


def build_record(name: str, fs_hz: float, leads: Sequence[str], columns_uv: Sequence[np.ndarray],
                 res_uv: Sequence[float], filters: EcgFilters | None = None,
                 derive_limb: bool = True) -> tuple[EcgRecord, tuple[str, ...]]:
    """A physical (mV) `EcgRecord` from per-lead µV columns of equal length.

    If leads I and II are present and III, aVR, aVL, aVF are all missing (carts
    that store 8 leads: GE MUSE, Welch Allyn SCP, Contec), those four are derived
    (Einthoven/Goldberger, IEC 60601-2-25) so the DICOM object has all 12; they are
    written at half the stored resolution, so no rounding is added.
    """
    if not columns_uv:
        raise EcgFileError(f"{name}: no ECG lead with samples")
    n = {len(c) for c in columns_uv}
    if len(n) != 1:
        raise EcgFileError(f"{name}: leads have different sample counts {sorted(n)}")
    n_samples = n.pop()
    if n_samples == 0:
        raise EcgFileError(f"{name}: leads hold no samples")
    if n_samples * len(columns_uv) > MAX_SAMPLE_VALUES:
        raise EcgFileError(f"{name}: {len(columns_uv)} leads x {n_samples} samples exceeds "
                           f"the limit of {MAX_SAMPLE_VALUES} values")
    if not (0.0 < fs_hz <= 100_000.0) or not math.isfinite(fs_hz):
        raise EcgFileError(f"{name}: sampling rate {fs_hz} Hz is not plausible")
    names = [str(x) for x in leads]
    cols = [np.asarray(c, dtype=np.float64) for c in columns_uv]
    res = [float(r) if r > 0 else 1.0 for r in res_uv]
    notes: list[str] = []
    std = {x.upper(): i for i, x in enumerate(names)}
    missing = [x for x in ("III", "aVR", "aVL", "aVF") if x.upper() not in std]
    if derive_limb and "I" in std and "II" in std and len(missing) == 4:
        i1, i2 = cols[std["I"]], cols[std["II"]]
        r = min(res[std["I"]], res[std["II"]])
        for lead, col in (("III", i2 - i1), ("aVR", -(i1 + i2) / 2), ("aVL", i1 - i2 / 2),
                          ("aVF", i2 - i1 / 2)):
            names.append(lead)
            cols.append(col)
            res.append(r / 2 if lead != "III" else r)
        notes.append("III, aVR, aVL, aVF derived from I and II")
    order = sorted(range(len(names)), key=lambda k: (STANDARD_12.index(names[k])
                                                     if names[k] in STANDARD_12 else 99, k))
    sig = np.stack([cols[k] for k in order], axis=1) / 1000.0
    rec = EcgRecord(leads=tuple(names[k] for k in order), fs_hz=float(fs_hz), signal=sig,
                    gains=tuple(1000.0 / res[k] for k in order),
                    baselines=tuple(0 for _ in order), units=tuple("mV" for _ in order),
                    digital=False, filters=filters or EcgFilters(), name=name)
    return rec, tuple(notes)


#: ecgdatakit warnings that mean the file is damaged, not merely unusual.
_CORRUPT_WARNING = re.compile(r"truncat|CRC|incomplete|odd number|mismatch|ends after|"
                              r"beyond|overrun|exceed", re.I)


def run_library(name: str, data: bytes, parse: Callable[[Path], Any], suffix: str) -> Any:
    """Run an ecgdatakit parser on ``data`` (it reads from a path: a private temp file).

    A parser exception, or a warning that says the file is damaged, becomes
    `EcgFileError` naming the file.
    """
    from ecgdatakit.exceptions import ECGDataKitError

    with tempfile.TemporaryDirectory(prefix="fenji-ecgfile-") as tmp:
        p = Path(tmp) / f"input{suffix}"
        p.write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = parse(p)
            except ECGDataKitError as exc:
                msg = str(exc).replace(str(p), name).replace(p.name, name)
                raise EcgFileError(f"{name}: {msg}") from exc
            except (MemoryError, RecursionError) as exc:
                # a size or depth the file declares that nothing here bounded: the
                # file's fault, refused like any other damage (never a server error)
                raise EcgFileError(f"{name}: reading it needs more "
                                   f"{'memory' if isinstance(exc, MemoryError) else 'nesting'}"
                                   " than allowed: a size or depth in it is damaged") from exc
            except Exception as exc:  # noqa: BLE001 -- untrusted bytes in a third-party
                # parser: whatever it trips on (struct.error, ZeroDivisionError, ...) means
                # the file cannot be decoded, never a server error.
                msg = str(exc).replace(str(p), name).replace(p.name, name)
                raise EcgFileError(f"{name}: undecodable ({type(exc).__name__}: {msg})") from exc
    bad = [str(w.message) for w in caught if _CORRUPT_WARNING.search(str(w.message))]
    if bad:
        raise EcgFileError(f"{name}: {bad[0]}")
    return out


def meta_from_library(fmt: str, rec: Any, notes: tuple[str, ...] = (), *,
                      undeclared_text: bool = True) -> EcgMeta:
    """`EcgMeta` from an ecgdatakit ``ECGRecord``.  With ``undeclared_text`` (binary
    formats whose text encoding is not declared), text that ecgdatakit decoded
    as Latin-1 is re-decoded (`redecode`)."""
    p, r = rec.patient, rec.recording
    dev = r.device

    def redecode(t: str) -> str:
        return _redecode(t) if undeclared_text else t

    stm = tuple(redecode(s) for s, _ in rec.interpretation.statements if s)
    return EcgMeta(
        format=fmt,
        patient_name=pn(redecode(p.last_name), redecode(p.first_name)),
        patient_id=redecode(p.patient_id),
        birth_date=da(p.birth_date), sex=sex_code(p.sex), acquired=r.date,
        manufacturer=redecode(dev.manufacturer), model=redecode(dev.model),
        serial=redecode(dev.serial_number), software=redecode(dev.software_version),
        institution=redecode(dev.institution), statements=stm, notes=notes)


def filters_from_library(rec: Any) -> EcgFilters:
    f = rec.recording.acquisition.filters
    notch = getattr(f, "notch", None) if getattr(f, "notch_active", None) is not False else None
    return EcgFilters(low_hz=getattr(f, "highpass", None), high_hz=getattr(f, "lowpass", None),
                      notch_hz=notch)


def library_file(fmt: str, name: str, rec: Any, *, fs_hz: float | None = None,
                 meta_override: dict[str, Any] | None = None,
                 undeclared_text: bool = False) -> EcgFile:
    """`EcgFile` from an ecgdatakit record read with ``auto_scale`` off (raw counts)."""
    leads, others = ecg_leads(list(rec.leads))
    if not leads:
        raise EcgFileError(f"{name}: no ECG lead with samples")
    rates = {float(lead.sampling_rate) for lead in leads}
    if len(rates) != 1:
        raise EcgFileError(f"{name}: leads at different sampling rates {sorted(rates)}")
    cols, res = [], []
    for lead in leads:
        c, r = lead_physical_uv(lead, name)
        cols.append(c)
        res.append(r)
    record, notes = build_record(name, fs_hz or rates.pop(), [lead.label for lead in leads],
                                 cols, res, filters_from_library(rec))
    if others:
        notes += (f"channels {', '.join(others)} are not ECG (no voltage unit): left out",)
    meta = meta_from_library(fmt, rec, notes, undeclared_text=undeclared_text)
    if meta_override:
        meta = dataclasses.replace(meta, **{k: v for k, v in meta_override.items() if v})
    return EcgFile(record, meta)
