"""Header codec: zstandard with a per-modality raw-content dictionary built by code.

The repository ships no binaries, so each dictionary is *generated*: a
deterministic byte string of typical DICOM elements (file meta group, the
modality's usual attributes and values, in Explicit VR Little Endian and, less
prominently, Implicit VR) that zstd uses as history for back-references.
A dictionary is identified by ``dict_id = version << 8 | modality index``; a
released version's builder is never edited (a test pins each dictionary's
SHA-256), new content means a new version, so old encoded data always decodes.

>>> blob = header_encode(b"\\x08\\x00\\x60\\x00CS\\x02\\x00CT", modality="CT")
>>> header_decode(blob, max_size=100)
b'\\x08\\x00`\\x00CS\\x02\\x00CT'
"""

from __future__ import annotations

import functools
import hashlib
import struct

import zstandard as zstd

from fenji.codecs.errors import DecodeError

DICT_VERSION = 1
MODALITIES = ("OT", "CT", "MR", "XR", "US", "ECG", "NM", "SR")
_GROUP = {"CR": "XR", "DX": "XR", "MG": "XR", "RG": "XR", "IO": "XR", "RF": "XR", "XA": "XR",
          "PX": "XR", "ECG": "ECG", "HD": "ECG", "EPS": "ECG", "PT": "NM", "NM": "NM",
          "SR": "SR", "DOC": "SR", "KO": "SR", "PR": "SR", "CT": "CT", "MR": "MR", "US": "US",
          "IVUS": "US"}

_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR",
             b"SV", b"UV"}


def _el(group: int, elem: int, vr: str, value: bytes | str, implicit: bool = False) -> bytes:
    v = value.encode("ascii") if isinstance(value, str) else value
    if len(v) % 2:
        v += b"\x00" if vr in ("UI", "OB") else b" "
    if implicit:
        return struct.pack("<HHI", group, elem, len(v)) + v
    bvr = vr.encode("ascii")
    if bvr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, bvr, 0, len(v)) + v
    return struct.pack("<HH2sH", group, elem, bvr, len(v)) + v


_SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
        "XR": "1.2.840.10008.5.1.4.1.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1",
        "ECG": "1.2.840.10008.5.1.4.1.1.9.1.1", "NM": "1.2.840.10008.5.1.4.1.1.20",
        "SR": "1.2.840.10008.5.1.4.1.1.88.22", "OT": "1.2.840.10008.5.1.4.1.1.7"}

_IMAGE_TAGS: list[tuple[int, int, str, str]] = [
    (0x0028, 0x0002, "US", "\x01\x00"), (0x0028, 0x0004, "CS", "MONOCHROME2"),
    (0x0028, 0x0010, "US", "\x00\x02"), (0x0028, 0x0011, "US", "\x00\x02"),
    (0x0028, 0x0030, "DS", "0.488281\\0.488281"), (0x0028, 0x0100, "US", "\x10\x00"),
    (0x0028, 0x0101, "US", "\x0c\x00"), (0x0028, 0x0102, "US", "\x0b\x00"),
    (0x0028, 0x0103, "US", "\x00\x00"), (0x0028, 0x1050, "DS", "40"),
    (0x0028, 0x1051, "DS", "400"), (0x0028, 0x1052, "DS", "-1024"),
    (0x0028, 0x1053, "DS", "1"), (0x0028, 0x1054, "LO", "HU"),
]

_MOD_TAGS: dict[str, list[tuple[int, int, str, str]]] = {
    "CT": [(0x0018, 0x0050, "DS", "5"), (0x0018, 0x0060, "DS", "120"),
           (0x0018, 0x0090, "DS", "250"), (0x0018, 0x1100, "DS", "250"),
           (0x0018, 0x1120, "DS", "0"), (0x0018, 0x1130, "DS", "160"),
           (0x0018, 0x1140, "CS", "CW"), (0x0018, 0x1150, "IS", "1000"),
           (0x0018, 0x1151, "IS", "200"), (0x0018, 0x1152, "IS", "200"),
           (0x0018, 0x1160, "SH", "BODY"), (0x0018, 0x1210, "SH", "STANDARD"),
           (0x0018, 0x5100, "CS", "HFS"), (0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\AXIAL")],
    "MR": [(0x0018, 0x0020, "CS", "SE"), (0x0018, 0x0021, "CS", "SK\\SP\\OSP"),
           (0x0018, 0x0022, "CS", "SAT_GEMS\\EDR_GEMS\\FILTERED_GEMS"),
           (0x0018, 0x0023, "CS", "2D"), (0x0018, 0x0050, "DS", "3"),
           (0x0018, 0x0080, "DS", "2000"), (0x0018, 0x0081, "DS", "30"),
           (0x0018, 0x0083, "DS", "1"), (0x0018, 0x0084, "DS", "127.7"),
           (0x0018, 0x0087, "DS", "3"), (0x0018, 0x0088, "DS", "5"),
           (0x0018, 0x0091, "IS", "1"), (0x0018, 0x0095, "DS", "7812.5"),
           (0x0018, 0x1314, "DS", "90"), (0x0018, 0x5100, "CS", "HFS"),
           (0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\M\\ND")],
    "XR": [(0x0018, 0x0015, "CS", "CHEST"), (0x0018, 0x0060, "DS", "70"),
           (0x0018, 0x1110, "DS", "1000"), (0x0018, 0x1150, "IS", "10"),
           (0x0018, 0x1152, "IS", "5"), (0x0018, 0x1164, "DS", "0.1\\0.1"),
           (0x0018, 0x5101, "CS", "PA"), (0x0028, 0x0004, "CS", "MONOCHROME1"),
           (0x2050, 0x0020, "CS", "IDENTITY"), (0x0008, 0x0068, "CS", "FOR PRESENTATION")],
    "US": [(0x0018, 0x6011, "SQ", ""), (0x0018, 0x6012, "US", "\x01\x00"),
           (0x0018, 0x6014, "US", "\x01\x00"), (0x0018, 0x6016, "UL", "\x01\x00\x00\x00"),
           (0x0018, 0x6018, "UL", "\x00\x00\x00\x00"), (0x0018, 0x6024, "US", "\x03\x00"),
           (0x0028, 0x0004, "CS", "RGB"), (0x0028, 0x0006, "US", "\x00\x00"),
           (0x0028, 0x0002, "US", "\x03\x00"), (0x0018, 0x1063, "DS", "33.3")],
    "ECG": [(0x003A, 0x0004, "CS", "ORIGINAL"), (0x003A, 0x0005, "US", "\x0c\x00"),
            (0x003A, 0x0010, "UL", "\x10\x27\x00\x00"), (0x003A, 0x001A, "DS", "500"),
            (0x003A, 0x0203, "SH", "Lead I (Einthoven)"), (0x003A, 0x0208, "SQ", ""),
            (0x0008, 0x0100, "SH", "5.6.3-9-1"), (0x0008, 0x0102, "SH", "SCPECG"),
            (0x0008, 0x0103, "SH", "1.3"), (0x0008, 0x0104, "LO", "Lead II"),
            (0x003A, 0x0210, "DS", "1"), (0x003A, 0x0211, "SQ", ""),
            (0x0008, 0x0104, "LO", "microvolt"), (0x0008, 0x0100, "SH", "uV"),
            (0x0008, 0x0102, "SH", "UCUM"), (0x003A, 0x0212, "DS", "1"),
            (0x003A, 0x0213, "DS", "0"), (0x003A, 0x0214, "DS", "0"),
            (0x003A, 0x0215, "DS", "10000"), (0x003A, 0x021A, "US", "\x10\x00"),
            (0x5400, 0x1004, "US", "\x10\x00"), (0x5400, 0x1006, "CS", "SS"),
            (0x003A, 0x0220, "DS", "0.05"), (0x003A, 0x0221, "DS", "150"),
            (0x003A, 0x0222, "DS", "50")],
    "NM": [(0x0054, 0x0011, "US", "\x01\x00"), (0x0054, 0x0021, "US", "\x01\x00"),
           (0x0054, 0x0081, "US", "\x01\x00"), (0x0028, 0x0051, "CS", "NORM")],
    "SR": [(0x0040, 0xA040, "CS", "CONTAINER"), (0x0040, 0xA050, "CS", "SEPARATE"),
           (0x0040, 0xA491, "CS", "COMPLETE"), (0x0040, 0xA493, "CS", "UNVERIFIED"),
           (0x0040, 0xA010, "CS", "HAS OBS CONTEXT"), (0x0040, 0xA040, "CS", "CODE"),
           (0x0008, 0x0100, "SH", "126000"), (0x0008, 0x0102, "SH", "DCM"),
           (0x0040, 0xA010, "CS", "CONTAINS"), (0x0040, 0xA040, "CS", "NUM")],
    "OT": [(0x0008, 0x0064, "CS", "WSD"), (0x0028, 0x0004, "CS", "RGB")],
}

_COMMON: list[tuple[int, int, str, str]] = [
    (0x0008, 0x0005, "CS", "ISO_IR 100"), (0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY"),
    (0x0008, 0x0012, "DA", "20240101"), (0x0008, 0x0013, "TM", "120000.000000"),
    (0x0008, 0x0020, "DA", "20240101"), (0x0008, 0x0021, "DA", "20240101"),
    (0x0008, 0x0022, "DA", "20240101"), (0x0008, 0x0023, "DA", "20240101"),
    (0x0008, 0x0030, "TM", "120000"), (0x0008, 0x0031, "TM", "120000"),
    (0x0008, 0x0032, "TM", "120000"), (0x0008, 0x0033, "TM", "120000"),
    (0x0008, 0x0050, "SH", "1234567"), (0x0008, 0x0070, "LO", "SIEMENS"),
    (0x0008, 0x0070, "LO", "GE MEDICAL SYSTEMS"), (0x0008, 0x0070, "LO", "Philips"),
    (0x0008, 0x0070, "LO", "TOSHIBA"), (0x0008, 0x0080, "LO", "Hospital"),
    (0x0008, 0x0090, "PN", ""), (0x0008, 0x1010, "SH", "STATION1"),
    (0x0008, 0x1030, "LO", "Study"), (0x0008, 0x103E, "LO", "Series"),
    (0x0008, 0x1090, "LO", "Model"), (0x0010, 0x0010, "PN", "Anonymous"),
    (0x0010, 0x0020, "LO", "PID"), (0x0010, 0x0030, "DA", "19700101"),
    (0x0010, 0x0040, "CS", "M"), (0x0010, 0x0040, "CS", "F"), (0x0010, 0x1010, "AS", "045Y"),
    (0x0018, 0x0015, "CS", "HEAD"), (0x0018, 0x1020, "LO", "1.0"),
    (0x0020, 0x000D, "UI", "1.2.826.0.1.3680043.8.498.1"),
    (0x0020, 0x000E, "UI", "1.2.826.0.1.3680043.8.498.2"),
    (0x0020, 0x0010, "SH", "1"), (0x0020, 0x0011, "IS", "1"), (0x0020, 0x0012, "IS", "1"),
    (0x0020, 0x0013, "IS", "1"), (0x0020, 0x0032, "DS", "-125.000000\\-125.000000\\0.000000"),
    (0x0020, 0x0037, "DS", "1.000000\\0.000000\\0.000000\\0.000000\\1.000000\\0.000000"),
    (0x0020, 0x0052, "UI", "1.2.840.113619.2.1"), (0x0020, 0x1040, "LO", ""),
    (0x0020, 0x1041, "DS", "0.000000"),
]

_TS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90",
       "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.50")


def _build_v1(modality: str) -> bytes:
    """Version-1 dictionary content for one modality group (never edit: pinned)."""
    sop = _SOP[modality]
    meta = b"".join([
        _el(0x0002, 0x0001, "OB", b"\x00\x01"), _el(0x0002, 0x0002, "UI", sop),
        _el(0x0002, 0x0003, "UI", "1.2.826.0.1.3680043.8.498.12345678901234567890"),
        _el(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1"),
        _el(0x0002, 0x0012, "UI", "1.2.826.0.1.3680043.8.498.1"),
        _el(0x0002, 0x0013, "SH", "PYDICOM 3.0.2"), _el(0x0002, 0x0013, "SH", "OFFIS_DCMTK_367"),
        _el(0x0002, 0x0016, "AE", "STORESCU"),
    ])
    meta = b"\x00" * 128 + b"DICM" + _el(0x0002, 0x0000, "UL", struct.pack("<I", len(meta))) + meta
    body_tags = sorted(_COMMON + _MOD_TAGS[modality] + _IMAGE_TAGS
                       + [(0x0008, 0x0016, "SI", sop), (0x0008, 0x0018, "UI", sop + ".1"),
                          (0x0008, 0x0060, "CS", modality if modality != "XR" else "CR")],
                       key=lambda t: (t[0], t[1]))
    body_tags = [(g, e, "UI" if vr == "SI" else vr, v) for g, e, vr, v in body_tags]
    implicit = b"".join(_el(g, e, vr, v, implicit=True) for g, e, vr, v in body_tags)
    explicit = b"".join(_el(g, e, vr, v) for g, e, vr, v in body_tags)
    ts = b"".join(_el(0x0002, 0x0010, "UI", t) for t in _TS)
    tail = _el(0x7FE0, 0x0010, "OW", b"") + _el(0x7FE0, 0x0010, "OB", b"")
    return implicit + ts + meta + explicit + tail


_BUILDERS = {1: _build_v1}


@functools.lru_cache(maxsize=64)
def dictionary_bytes(dict_id: int) -> bytes:
    """Raw content of dictionary ``dict_id`` (``version << 8 | modality index``)."""
    version, idx = dict_id >> 8, dict_id & 0xFF
    if version not in _BUILDERS or idx >= len(MODALITIES):
        raise DecodeError(f"header dictionary id {dict_id:#06x} unknown "
                          f"(versions {sorted(_BUILDERS)}, {len(MODALITIES)} modalities)")
    return _BUILDERS[version](MODALITIES[idx])


@functools.lru_cache(maxsize=64)
def _zdict(dict_id: int) -> zstd.ZstdCompressionDict:
    return zstd.ZstdCompressionDict(dictionary_bytes(dict_id), dict_type=zstd.DICT_TYPE_RAWCONTENT)


def dictionary_sha256(dict_id: int) -> str:
    return hashlib.sha256(dictionary_bytes(dict_id)).hexdigest()


def dict_id_for(modality: str | None) -> int:
    """The current dictionary id for a (0008,0060) Modality value."""
    group = _GROUP.get((modality or "").strip().upper(), "OT")
    return DICT_VERSION << 8 | MODALITIES.index(group)


# A 2-byte dictionary id, then a zstd frame (with content size).
_HDR = struct.Struct("<H")


MAX_EXTRA = 1 << 17  # history taken from a reference header (zstd window-friendly)


def _dict_for(dict_id: int, extra: bytes) -> zstd.ZstdCompressionDict:
    if not extra:
        return _zdict(dict_id)
    return zstd.ZstdCompressionDict(dictionary_bytes(dict_id) + extra[-MAX_EXTRA:],
                                    dict_type=zstd.DICT_TYPE_RAWCONTENT)


def header_encode(data: bytes, *, modality: str | None = None, level: int | None = None,
                  extra: bytes = b"") -> bytes:
    """Compress header bytes with the modality's dictionary (level by size if None).

    ``extra`` is appended to the dictionary: another instance's header bytes
    (same series) make a header cost tens of bytes instead of kilobytes; the
    decoder must then be given the same ``extra``.
    """
    dict_id = dict_id_for(modality)
    if level is None:
        level = 19 if len(data) <= 1 << 16 else 6
    c = zstd.ZstdCompressor(level=level, dict_data=_dict_for(dict_id, extra),
                            write_checksum=False, write_content_size=True, write_dict_id=False)
    return _HDR.pack(dict_id) + c.compress(data)


def header_decode(blob: bytes, *, max_size: int, extra: bytes = b"") -> bytes:
    """Inverse of :func:`header_encode`; never returns more than ``max_size`` bytes."""
    if len(blob) < _HDR.size:
        raise DecodeError(f"header blob of {len(blob)} bytes is too short")
    (dict_id,) = _HDR.unpack_from(blob)
    d = zstd.ZstdDecompressor(dict_data=_dict_for(dict_id, extra))
    try:
        size = zstd.frame_content_size(blob[_HDR.size:])
        if size < 0 or size > max_size:
            raise DecodeError(f"header frame declares {size} bytes, limit {max_size}")
        return d.decompress(blob[_HDR.size:], max_output_size=max_size)
    except zstd.ZstdError as exc:
        raise DecodeError(
            f"header zstd frame (dictionary {dict_id:#06x}) is corrupt: {exc}") from None
