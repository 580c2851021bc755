"""DICOMweb on the node (PS3.18): QIDO-RS, WADO-RS and STOW-RS under ``/dicom-web``.

The shell between viewers and the store.  Routes (``{s}`` study, ``{se}``
series, ``{i}`` SOP instance UID):

* QIDO-RS ``GET /studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
  ``/studies/{s}/instances``, ``/studies/{s}/series/{se}/instances`` — matching is
  :func:`fenji.gateway.dicom.query.find` (the same model as C-FIND); keys by keyword or
  tag, ``fuzzymatching``, ``limit``/``offset``, ``includefield`` (list or ``all``);
  answers ``application/dicom+json`` (PS3.18 F.2), ``200 []`` when nothing matches;
* WADO-RS ``GET /studies/{s}[/series/{se}[/instances/{i}]]`` (multipart/related,
  ``application/dicom`` parts), the same ``+ /metadata`` (dicom+json, bulk data as
  ``BulkDataURI``), ``/studies/{s}/series/{se}/instances/{i}/frames/{list}`` and
  ``…/instances/{i}/bulkdata/{tag}``;
* STOW-RS ``POST /studies[/{s}]``: each ``application/dicom`` part goes through
  the validator and the durable store path like a C-STORE.

Content negotiation (PS3.18 8.7): ``transfer-syntax=*`` returns the stored
bytes unchanged; a named transfer syntax (or none: the default for
``application/dicom`` is Explicit VR Little Endian) is served as stored when it
matches, otherwise transcoded (native <-> native, compressed -> native when
pydicom has a decoder for it) and the parts say which syntax they carry; a
request nothing can satisfy gets ``406`` naming the stored syntax.

Multipart answers are streamed part by part, blobs read from disk in chunks,
so memory does not grow with the study.  Frames and pixel bulk data are
located in the stored file from its header and item tags (``_map_frames``) and
only the asked-for frames are read, so memory does not grow with a long cine
either; a decoded frame is decoded alone.  Deflated and big-endian files (and
fragments without an offset table that do not map one to one) fall back to
reading the instance whole.  A viewer's text SR or PDF stored by a reader for a
worklist study becomes the reader's signed report (gateway/reading/core.py).  Every
read of patient data is an ``opened`` event in the audit ledger (one per
request).  Store, ledger and
pydicom work run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from fenji.gateway import ingest
from fenji.gateway.access import scope as access
from fenji.gateway.access.users import User, require
from fenji.gateway.audit import ledger
from fenji.gateway.config import Config
from fenji.gateway.dicom import charset
from fenji.gateway.dicom import query as qr
from fenji.gateway.dicom import status as st
from fenji.gateway.dicom.validate import (
    DEFLATED_LE,
    ENCAPSULATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE,
    Checked,
)
from fenji.gateway.reading import core as reading
from fenji.gateway.store.db import Store
from fenji.gateway.web.common import WAKE, app_of
from fenji.gateway.web.limits import multipart_parts

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
CHUNK_BYTES = 1 << 20  # blob read size while streaming: bounds memory per response
BULK_THRESHOLD_BYTES = 1024  # larger binary values become BulkDataURI in metadata
MAX_QUERY_STUDIES_IN_AUDIT = 200  # an "opened" event lists at most this many studies

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

# QIDO default return attributes per level (PS3.18 Table 10.6.3-3 … -5), besides
# the matching keys and includefield.
DEFAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "STUDY": ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber",
              "InstanceAvailability", "ReferringPhysicianName", "TimezoneOffsetFromUTC",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
              "StudyInstanceUID", "StudyID", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "StudyDescription"),
    "SERIES": ("SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC",
               "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
               "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
               "PerformedProcedureStepStartTime", "RequestAttributesSequence",
               "StudyInstanceUID"),
    "IMAGE": ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
              "TimezoneOffsetFromUTC", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
              "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID"),
}
# qr.find's own bookkeeping keys: never sent to a viewer.
_PRIVATE_KEYS = {"sha256", "transfer_syntax_uid", "size"}
_RESERVED_PARAMS = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


def _error(status: int, err: str, message: str) -> web.Response:
    return web.json_response({"status": status, "error": err, "message": message},
                             status=status)


def _dicom_json(body: Any, status: int = 200) -> web.Response:
    # Exactly "application/dicom+json": clients compare the whole header
    # (dicomweb-client ignores a body labelled "...; charset=utf-8").
    import json

    return web.Response(body=json.dumps(body).encode("utf-8"), status=status,
                        headers={"Content-Type": DICOM_JSON})


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
        ds.decompress()  # -> Explicit VR LE, native pixel data (pydicom's decoders)
    elif src in (EXPLICIT_BE,) and "PixelData" in ds:
        arr = ds.pixel_array
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.file_meta.TransferSyntaxUID = UID(target)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- DICOM JSON (PS3.18 F.2) --------------------------------------------------
_NUMERIC_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_MULTI_TEXT_VRS = {"LT", "ST", "UT", "UR"}  # backslash is not a separator in these


def _vr_of(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


def _json_value(vr: str, value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        items = list(value)
    elif isinstance(value, str) and vr not in _MULTI_TEXT_VRS:
        items = value.split("\\")
    else:
        items = [value]
    out: list[Any] = []
    for v in items:
        if v is None or v == "":
            out.append(None)
        elif vr == "PN":  # PS3.18 F.2.2: one object per name, one key per group
            out.append(charset.pn_json(str(v)) or None)
        elif vr in _NUMERIC_VRS:
            try:
                out.append(int(v))
            except (TypeError, ValueError):
                out.append(None)
        elif vr in _FLOAT_VRS:
            try:
                f = float(v)
                out.append(int(f) if vr == "DS" and f.is_integer() else f)
            except (TypeError, ValueError):
                out.append(None)
        else:
            out.append(str(v))
    return out


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """``{keyword: value}`` -> DICOM JSON ``{"0010 0010" tag: {"vr", "Value"}}``, tag order."""
    from pydicom.datadict import tag_for_keyword

    out: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        tag = tag_for_keyword(key)
        if tag is None:
            continue
        vr = _vr_of(tag)
        if vr == "SQ":
            continue
        elem: dict[str, Any] = {"vr": vr}
        if value not in (None, "", [], ()):
            vals = _json_value(vr, value)
            if any(v is not None for v in vals):
                elem["Value"] = vals
        out[tag] = elem
    return {f"{t:08X}": out[t] for t in sorted(out)}


# -- helpers shared by the handlers -------------------------------------------
_app = app_of


def _base_url(request: web.Request) -> str:
    """Absolute URL of ``/dicom-web`` as the client reached it (RetrieveURL, BulkDataURI)."""
    host = request.host
    if ":" not in host.rpartition("]")[2] and request.transport is not None:
        # Some clients (dicomweb-client) send Host without the port: add the
        # socket's, else the URIs we hand out would point at port 80.
        sock = request.transport.get_extra_info("sockname")
        default = 443 if request.scheme == "https" else 80
        if sock and int(sock[1]) != default:
            host = f"{host}:{sock[1]}"
    return f"{request.scheme}://{host}{PREFIX}"


def _instances(store: Store, study: str, series: str | None = None,
               sop: str | None = None) -> list[dict[str, Any]]:
    sql = ("SELECT sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, "
           "transfer_syntax_uid, sha256, size, instance_number, specific_character_set, "
           "charset_source FROM instances WHERE study_instance_uid = ?")
    args: list[Any] = [study]
    if series is not None:
        sql += " AND series_instance_uid = ?"
        args.append(series)
    if sop is not None:
        sql += " AND sop_instance_uid = ?"
        args.append(sop)
    sql += " ORDER BY series_instance_uid, instance_number, sop_instance_uid"
    return store.query(sql, tuple(args))


def _audit_open(store: Store, cfg: Config, user: User, studies: list[str], via: str,
                request: web.Request, **extra: Any) -> None:
    """One ``opened`` event per request (DESIGN.md §11: every access to patient data).

    The event names what was read by its UIDs (the path, the studies) and a
    query by its keys only: the values (``PatientName=…``) are patient data,
    and the ledger travels with the case to other nodes (issue 17, finding 8).
    """
    if not studies:
        return
    obj = studies[0] if len(studies) == 1 else f"{len(studies)} studies"
    case_id = qr.case_for_study(store, studies[0]) if len(studies) == 1 else None
    detail: dict[str, Any] = {"via": via, "from": request.remote, "path": request.path}
    if request.query:
        detail["query_keys"] = sorted(set(request.query.keys()))[:50]
    if len(studies) > 1:
        detail["studies"] = studies[:MAX_QUERY_STUDIES_IN_AUDIT]
    detail.update(extra)
    ledger.record(store, "opened", node=cfg.node.name, actor=user.name, role=user.role,
                  obj=obj, case_id=case_id, detail=detail)


def _not_found_if_empty(rows: list[dict[str, Any]], what: str) -> None:
    if not rows:
        raise web.HTTPNotFound(text=f"{what} not found")


def _what(m: dict[str, str]) -> str:
    if "sop" in m:
        return f"instance {m['sop']}"
    if "series" in m:
        return f"series {m['series']} of study {m['study']}"
    return f"study {m['study']}"


# -- WADO-RS: retrieve --------------------------------------------------------
def _read_chunk(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(n)


async def _file_chunks(path: str, size: int) -> Any:
    """The file's bytes in CHUNK_BYTES pieces, the next read overlapping the current write."""
    offset = 0
    nxt: asyncio.Future[bytes] | None = None
    while offset < size:
        cur: bytes = await nxt if nxt is not None else await asyncio.to_thread(
            _read_chunk, path, offset, CHUNK_BYTES)
        if not cur:
            raise OSError(f"blob {path} is shorter than its indexed size {size}")
        offset += len(cur)
        nxt = (asyncio.ensure_future(asyncio.to_thread(_read_chunk, path, offset, CHUNK_BYTES))
               if offset < size else None)
        yield cur


def _part_head(boundary: str, ctype: str, location: str | None = None) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {ctype}\r\n"
    if location:
        head += f"Content-Location: {location}\r\n"
    return (head + "\r\n").encode("ascii")


async def retrieve(request: web.Request) -> web.StreamResponse:
    cfg, store = _app(request)
    user = require(request, "reader", "operator", action="read studies")
    m = dict(request.match_info)
    await asyncio.to_thread(access.check_study, store, user, m["study"])
    rows = await asyncio.to_thread(_instances, store, m["study"], m.get("series"), m.get("sop"))
    _not_found_if_empty(rows, _what(m))
    acceptable = dicom_syntaxes(parse_accept(request.headers.get("Accept")))
    if not acceptable:
        raise NotAcceptable(
            f"Accept {request.headers.get('Accept')!r}: this resource is served as "
            'multipart/related; type="application/dicom" (with an optional transfer-syntax)')
    plan: list[str] = []
    for r in rows:
        ts = choose_syntax(r["transfer_syntax_uid"], acceptable)
        if ts is None:
            raise NotAcceptable(
                f"instance {r['sop_instance_uid']} is stored in transfer syntax "
                f"{r['transfer_syntax_uid']}, which cannot be served as any of "
                f"{', '.join(acceptable)} (fenji transcodes to {', '.join(TRANSCODE_TARGETS)} "
                "only from syntaxes pydicom can decode here); ask for transfer-syntax=*")
        plan.append(ts)
    await asyncio.to_thread(_audit_open, store, cfg, user, [m["study"]], "wado-rs", request,
                            instances=len(rows))
    boundary = uuid.uuid4().hex
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = (f'multipart/related; type="application/dicom"; '
                                    f"boundary={boundary}")
    base = _base_url(request)
    heads = [_part_head(boundary, f"application/dicom; transfer-syntax={ts}",
                        f"{base}/studies/{r['study_instance_uid']}/series/"
                        f"{r['series_instance_uid']}/instances/{r['sop_instance_uid']}")
             for r, ts in zip(rows, plan, strict=True)]
    tail = f"--{boundary}--\r\n".encode("ascii")
    transcoded = [(r, ts) for r, ts in zip(rows, plan, strict=True)
                  if ts != r["transfer_syntax_uid"]]
    if transcoded:
        pairs = sorted({f"{r['transfer_syntax_uid']} -> {ts}" for r, ts in transcoded})
        resp.headers["Warning"] = (f'299 fenji "transcoded {len(transcoded)} of {len(rows)} '
                                   f'instances: {"; ".join(pairs)}"')
    else:
        # All parts as stored: the length is known before the first byte.
        resp.content_length = (sum(len(h) + r["size"] + 2 for h, r in zip(heads, rows,
                                                                          strict=True))
                               + len(tail))
    await resp.prepare(request)
    loop = asyncio.get_running_loop()
    # Stored bytes go by sendfile(2) on a plain socket (no copy through Python,
    # the kernel reads ahead); TLS or a loop without it falls back to chunks.
    zero_copy = not transcoded and request.transport is not None and \
        request.transport.get_extra_info("sslcontext") is None
    sep = b""
    for head, r, ts in zip(heads, rows, plan, strict=True):
        await resp.write(sep + head)
        sep = b"\r\n"
        path = str(store.blob_path(r["sha256"]))
        if ts != r["transfer_syntax_uid"]:
            data = await asyncio.to_thread(store.read_blob, r["sha256"])
            await resp.write(await asyncio.to_thread(transcode, data, ts))
        elif zero_copy and request.transport is not None:
            with open(path, "rb") as fh:  # noqa: ASYNC230 - open(2) only; data moves below
                await loop.sendfile(request.transport, fh, 0, int(r["size"]))
        else:
            async for chunk in _file_chunks(path, int(r["size"])):
                await resp.write(chunk)
    await resp.write(sep + tail)
    await resp.write_eof()
    return resp


# -- WADO-RS: metadata, frames, bulk data -------------------------------------
def _accepts_json(accept: list[MediaRange]) -> bool:
    return any(r.media in ("*/*", "application/*", DICOM_JSON, "application/json")
               for r in accept)


def _instance_metadata(store: Store, row: dict[str, Any], base: str,
                       default_charset: str = "") -> dict[str, Any]:
    """An instance's metadata as DICOM JSON; text decoded with its (0008,0005), or
    ``default_charset`` (``dicom.default_character_set``) when it declares none."""
    import pydicom
    from pydicom.tag import Tag

    path = store.blob_path(row["sha256"])
    url = (f"{base}/studies/{row['study_instance_uid']}/series/{row['series_instance_uid']}"
           f"/instances/{row['sop_instance_uid']}")
    ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD_BYTES)
    # Before pydicom decodes anything (it would guess for undeclared text and
    # leave escape sequences in ISO 2022 IR 58 text).
    charset.decode_dataset(ds, charset.stored_default(row, default_charset))
    if row["transfer_syntax_uid"] == IMPLICIT_LE:
        _private_as_un(ds)
    pixel_tag = Tag(0x7FE00010)
    pixel_vr = None
    if pixel_tag in ds:
        raw = ds.get_item(pixel_tag)
        pixel_vr = getattr(raw, "VR", None) or "OW"
        if row["transfer_syntax_uid"] in ENCAPSULATED:
            pixel_vr = "OB"
        del ds[pixel_tag]  # never loaded: described by its URI below

    def bulk(elem: Any) -> str:
        return f"{url}/bulkdata/{int(elem.tag):08X}"

    out = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD_BYTES,
                          bulk_data_element_handler=bulk)
    if pixel_vr is not None:
        out["7FE00010"] = {"vr": pixel_vr if pixel_vr in ("OB", "OW") else "OW",
                           "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    # Which syntax this instance is held in: a viewer may then ask for it by name.
    out["00083002"] = {"vr": "UI", "Value": [row["transfer_syntax_uid"]]}
    return dict(sorted(out.items()))


async def metadata(request: web.Request) -> web.StreamResponse:
    cfg, store = _app(request)
    user = require(request, "reader", "operator", action="read studies")
    m = dict(request.match_info)
    if not _accepts_json(parse_accept(request.headers.get("Accept"))):
        raise NotAcceptable(f"Accept {request.headers.get('Accept')!r}: metadata is served as "
                            f"{DICOM_JSON}")
    await asyncio.to_thread(access.check_study, store, user, m["study"])
    rows = await asyncio.to_thread(_instances, store, m["study"], m.get("series"), m.get("sop"))
    _not_found_if_empty(rows, _what(m))
    await asyncio.to_thread(_audit_open, store, cfg, user, [m["study"]], "wado-rs", request,
                            instances=len(rows))
    base = _base_url(request)
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = DICOM_JSON
    await resp.prepare(request)
    import json

    # A JSON array written one instance at a time (bounded memory for big studies).
    for n, r in enumerate(rows):
        item = await asyncio.to_thread(_instance_metadata, store, r, base,
                                       cfg.dicom.default_character_set)
        await resp.write((b"[" if n == 0 else b",") + json.dumps(item).encode("utf-8"))
    await resp.write(b"]")
    await resp.write_eof()
    return resp


@dataclass
class _Pixels:
    """An instance's frames, as stored."""

    transfer_syntax: str
    frames: list[bytes]
    dataset: Any


def _load_frames(store: Store, row: dict[str, Any]) -> _Pixels:
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(store.blob_path(row["sha256"]))
    ts = row["transfer_syntax_uid"]
    if "PixelData" not in ds:
        raise web.HTTPNotFound(text=f"instance {row['sop_instance_uid']} has no pixel data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    data: bytes = ds.PixelData
    if ts in ENCAPSULATED:
        frames = list(generate_frames(data, number_of_frames=n_frames))
    else:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        frame_bits = rows * cols * spp * bits
        if frame_bits % 8 and n_frames > 1:
            raise NotAcceptable(f"instance {row['sop_instance_uid']}: 1-bit frames that do "
                                "not end on a byte boundary; retrieve the instance instead")
        n = frame_bits // 8 if frame_bits % 8 == 0 else (frame_bits + 7) // 8
        if ts == EXPLICIT_BE and bits > 8:
            arr = ds.pixel_array
            data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            ts = EXPLICIT_LE
        frames = [data[i * n:(i + 1) * n] for i in range(n_frames)]
    return _Pixels(ts, frames, ds)


Range = tuple[int, int]  # (file offset, length)


@dataclass
class _FrameMap:
    """Where each frame's bytes lie in the stored file: nothing of them is read yet."""

    transfer_syntax: str
    path: str
    frames: list[list[Range]]  # per frame: its byte ranges (fragments, or one native run)


_OB_LIKE = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}


def _map_frames(store: Store, row: dict[str, Any]) -> _FrameMap | None:
    """The frames of a stored instance as file ranges, from its header and item tags only.

    Memory does not grow with the instance: a 2 GB cine serves frame 1 by
    reading frame 1.  ``None`` when the layout needs the whole value (deflated
    or big-endian data, 1-bit frames, fragments without an offset table that
    do not map one to one); :func:`_load_frames` serves those.
    """
    import struct

    import pydicom

    ts = row["transfer_syntax_uid"]
    if ts in (DEFLATED_LE, EXPLICIT_BE):
        return None
    path = str(store.blob_path(row["sha256"]))
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pos = fp.tell()  # pydicom rewinds to the start of the pixel element
        head = fp.read(12)
        if len(head) < 8 or struct.unpack_from("<HH", head) != (0x7FE0, 0x0010):
            return None
        if ts == IMPLICIT_LE:
            (length,), value_at = struct.unpack_from("<I", head, 4), pos + 8
        elif head[4:6] in _OB_LIKE:
            (length,), value_at = struct.unpack_from("<I", head, 8), pos + 12
        else:
            (length,), value_at = struct.unpack_from("<H", head, 6), pos + 8
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        if length != 0xFFFFFFFF:
            if ts in ENCAPSULATED:
                return None
            frame_bits = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                          * int(ds.BitsAllocated))
            if frame_bits % 8:
                return None
            n = frame_bits // 8
            if n * n_frames > length:
                raise web.HTTPNotFound(text=f"instance {row['sop_instance_uid']}: pixel data "
                                            f"of {length} bytes is short of {n_frames} frames "
                                            f"of {n}")
            return _FrameMap(EXPLICIT_LE if ts == IMPLICIT_LE else ts, path,
                             [[(value_at + i * n, n)] for i in range(n_frames)])
        fp.seek(value_at)
        items: list[Range] = []
        while True:
            h = fp.read(8)
            if len(h) < 8:
                return None
            g, e, ln = struct.unpack("<HHI", h)
            if (g, e) == (0xFFFE, 0xE0DD):
                break
            if (g, e) != (0xFFFE, 0xE000) or ln == 0xFFFFFFFF:
                return None
            items.append((fp.tell(), ln))
            fp.seek(ln, 1)
        if not items:
            return None
        (bot_at, bot_len), fragments = items[0], items[1:]
        if not fragments:
            return None
        if n_frames == 1:
            return _FrameMap(ts, path, [fragments])
        if bot_len >= 4 * n_frames:
            fp.seek(bot_at)
            offsets = list(struct.unpack(f"<{n_frames}I", fp.read(4 * n_frames)))
            first = fragments[0][0] - 8  # offsets count from the first fragment's item tag
            starts = [off - 8 - first for off, _ in fragments]
            frames: list[list[Range]] = []
            for i, begin in enumerate(offsets):
                end = offsets[i + 1] if i + 1 < n_frames else None
                frames.append([f for f, s0 in zip(fragments, starts, strict=True)
                               if s0 >= begin and (end is None or s0 < end)])
            if any(not f for f in frames) or sum(map(len, frames)) != len(fragments):
                return None
            return _FrameMap(ts, path, frames)
        if len(fragments) == n_frames:
            return _FrameMap(ts, path, [[f] for f in fragments])
        return None


def _read_ranges(path: str, ranges: list[Range]) -> bytes:
    with open(path, "rb") as fh:
        out = []
        for off, n in ranges:
            fh.seek(off)
            out.append(fh.read(n))
    return b"".join(out)


async def _range_chunks(path: str, ranges: list[Range]) -> Any:
    """The bytes of ``ranges`` in pieces of at most CHUNK_BYTES."""
    for off, n in ranges:
        done = 0
        while done < n:
            k = min(CHUNK_BYTES, n - done)
            chunk = await asyncio.to_thread(_read_chunk, path, off + done, k)
            if len(chunk) != k:
                raise OSError(f"blob {path} ends inside its pixel data")
            done += k
            yield chunk


def _decoded_frames(src: Any, wanted: list[int]) -> list[bytes]:
    """Compressed frames decoded to native little-endian bytes (pydicom's decoders).

    ``src``: the stored file's path (pydicom then reads only the frame it
    decodes) or a loaded data set.
    """
    from pydicom.pixels import pixel_array

    out = []
    for n in wanted:
        arr = pixel_array(src, index=n - 1, raw=True)
        out.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out


def _decoded_frame_bytes(src: Any) -> int:
    """Bytes of one decoded frame of ``src`` (a stored file's path or a loaded data set)."""
    import pydicom

    ds = pydicom.dcmread(src, stop_before_pixels=True) if isinstance(src, str) else src
    return (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
            * ((int(ds.BitsAllocated) + 7) // 8))


def _frame_plan(stored_ts: str, accept: list[MediaRange]) -> tuple[str, str] | None:
    """(part media type, transfer syntax) to send frames in, or None (406)."""
    stored_media = ("application/octet-stream" if stored_ts in NATIVE
                    else FRAME_MEDIA_TYPES.get(stored_ts, "application/octet-stream"))
    native_ts = EXPLICIT_LE
    for r in accept:
        if not _is_multipart(r.media):
            continue
        ptype = r.part_type or ("*/*" if r.media == "*/*" else "application/octet-stream")
        ts = r.transfer_syntax
        if ts == "*" or ptype in ("*/*", "*"):
            if ts in (None, "*", stored_ts) or (ts == native_ts and stored_ts in NATIVE):
                return (stored_media, stored_ts if stored_ts not in NATIVE else native_ts)
        if ptype == "application/octet-stream" and ts in (None, native_ts):
            if stored_ts in NATIVE:
                return ("application/octet-stream", native_ts)
            if _decodable(stored_ts):
                return ("application/octet-stream", native_ts)
        if stored_ts not in NATIVE and ptype == stored_media and ts in (None, stored_ts):
            return (stored_media, stored_ts)
    return None


def _frame_list(text: str, cap: int) -> list[int]:
    """The asked-for frame numbers, duplicates removed (first order kept), at most ``cap``.

    Every listed frame is read (and maybe decoded) into memory: ``1,1,1,…`` a
    thousand times must cost one frame, and many distinct frames are refused.
    """
    try:
        listed = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise web.HTTPBadRequest(text=f"frame list {text[:80]!r} is not comma-separated "
                                      "numbers") from None
    if not listed or min(listed) < 1:
        raise web.HTTPBadRequest(text=f"frame list {text[:80]!r}: frames are numbered from 1")
    wanted = list(dict.fromkeys(listed))
    if len(wanted) > cap:
        raise web.HTTPBadRequest(text=f"frame list asks for {len(wanted)} distinct frames, more "
                                      f"than limits.max_frames_per_request = {cap}; ask in "
                                      "batches")
    return wanted


async def frames(request: web.Request) -> web.StreamResponse:
    cfg, store = _app(request)
    user = require(request, "reader", "operator", action="read studies")
    m = dict(request.match_info)
    wanted = _frame_list(m["frames"], cfg.limits.max_frames_per_request)
    await asyncio.to_thread(access.check_study, store, user, m["study"])
    rows = await asyncio.to_thread(_instances, store, m["study"], m["series"], m["sop"])
    _not_found_if_empty(rows, _what(m))
    row = rows[0]
    plan = _frame_plan(row["transfer_syntax_uid"], parse_accept(request.headers.get("Accept")))
    if plan is None:
        raise NotAcceptable(
            f"Accept {request.headers.get('Accept')!r}: instance {m['sop']} is stored in "
            f"{row['transfer_syntax_uid']}; its frames are served as application/octet-stream "
            f"(decoded: {'yes' if _decodable(row['transfer_syntax_uid']) else 'no decoder'}) "
            f"or {FRAME_MEDIA_TYPES.get(row['transfer_syntax_uid'], 'as stored')}")
    media, ts = plan
    fmap = await asyncio.to_thread(_map_frames, store, row)
    # The frames as file ranges (located) or bytes (the whole instance loaded).
    all_frames: list[bytes] | list[list[Range]]
    if fmap is not None:
        stored_ts, all_frames, src = fmap.transfer_syntax, fmap.frames, fmap.path
    else:
        px = await asyncio.to_thread(_load_frames, store, row)
        stored_ts, all_frames, src = px.transfer_syntax, px.frames, px.dataset
    if max(wanted) > len(all_frames):
        raise web.HTTPNotFound(text=f"frame {max(wanted)} requested, instance {m['sop']} has "
                                    f"{len(all_frames)}")
    parts: list[bytes | list[Range]]
    if media == "application/octet-stream" and stored_ts in ENCAPSULATED:
        # Decoded frames are held in memory until sent: bound them before decoding.
        cap = cfg.limits.max_decoded_bytes_per_request
        need = len(wanted) * await asyncio.to_thread(_decoded_frame_bytes, src)
        if need > cap:
            as_stored = FRAME_MEDIA_TYPES.get(stored_ts, "transfer-syntax=*")
            return _error(413, "too_much_to_decode",
                          f"{len(wanted)} decoded frames of instance {m['sop']} are {need} "
                          f"bytes, more than limits.max_decoded_bytes_per_request = {cap}; ask "
                          f"for fewer frames or for them as stored ({as_stored})")
        parts = list(await asyncio.to_thread(_decoded_frames, src, wanted))
    else:
        parts = [all_frames[n - 1] for n in wanted]
    await asyncio.to_thread(_audit_open, store, cfg, user, [m["study"]], "wado-rs", request,
                            frames=wanted[:100])
    return await _multipart_stream(request, fmap.path if fmap else "", parts,
                                   f"{media}; transfer-syntax={ts}",
                                   f'multipart/related; type="{media}"')


async def _multipart_stream(request: web.Request, path: str, parts: list[bytes | list[Range]],
                            part_type: str, ctype: str) -> web.StreamResponse:
    """A multipart/related response whose parts are bytes or ranges of ``path`` (streamed)."""
    boundary = uuid.uuid4().hex
    resp = web.StreamResponse(status=200)
    resp.headers["Content-Type"] = f"{ctype}; boundary={boundary}"
    head = _part_head(boundary, part_type)
    tail = f"--{boundary}--\r\n".encode("ascii")
    resp.content_length = sum(len(head) + 2 + (len(p) if isinstance(p, bytes)
                                               else sum(n for _, n in p)) for p in parts
                              ) + len(tail)
    await resp.prepare(request)
    for p in parts:
        await resp.write(head)
        if isinstance(p, bytes):
            await resp.write(p)
        else:
            async for chunk in _range_chunks(path, p):
                await resp.write(chunk)
        await resp.write(b"\r\n")
    await resp.write(tail)
    await resp.write_eof()
    return resp


def _bulk_value(store: Store, row: dict[str, Any], tag: int
                ) -> tuple[str, list[bytes | list[Range]], str]:
    """(path, parts, part type) of one bulk data value; pixel data as file ranges."""
    import pydicom

    path = str(store.blob_path(row["sha256"]))
    if tag == 0x7FE00010:
        fmap = _map_frames(store, row)
        if fmap is not None:
            if fmap.transfer_syntax in ENCAPSULATED:
                media = FRAME_MEDIA_TYPES.get(fmap.transfer_syntax, "application/octet-stream")
                return (path, list(fmap.frames),
                        f"{media}; transfer-syntax={fmap.transfer_syntax}")
            whole = [r for f in fmap.frames for r in f]
            return path, [whole], f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        px = _load_frames(store, row)
        if px.transfer_syntax in ENCAPSULATED:
            media = FRAME_MEDIA_TYPES.get(px.transfer_syntax, "application/octet-stream")
            return path, list(px.frames), f"{media}; transfer-syntax={px.transfer_syntax}"
        return (path, [b"".join(px.frames)],
                f"application/octet-stream; transfer-syntax={EXPLICIT_LE}")
    # Other bulk values: only the asked-for one is read (the rest stays deferred).
    ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD_BYTES)
    if tag not in ds:
        raise web.HTTPNotFound(text=f"instance {row['sop_instance_uid']} has no top-level "
                                    f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
    value = ds[tag].value
    if not isinstance(value, bytes | bytearray):
        raise web.HTTPNotFound(text=f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not bulk data")
    ts = row["transfer_syntax_uid"]
    return path, [bytes(value)], f"application/octet-stream; transfer-syntax={ts}"


async def bulkdata(request: web.Request) -> web.StreamResponse:
    cfg, store = _app(request)
    user = require(request, "reader", "operator", action="read studies")
    m = dict(request.match_info)
    if not re.fullmatch(r"[0-9A-Fa-f]{8}", m["tag"]):
        raise web.HTTPBadRequest(text=f"bulk data tag {m['tag']!r} is not 8 hex digits")
    accept = parse_accept(request.headers.get("Accept"))
    if not any(_is_multipart(r.media) for r in accept):
        raise NotAcceptable("bulk data is served as multipart/related")
    await asyncio.to_thread(access.check_study, store, user, m["study"])
    rows = await asyncio.to_thread(_instances, store, m["study"], m["series"], m["sop"])
    _not_found_if_empty(rows, _what(m))
    path, parts, ptype = await asyncio.to_thread(_bulk_value, store, rows[0],
                                                 int(m["tag"], 16))
    await asyncio.to_thread(_audit_open, store, cfg, user, [m["study"]], "wado-rs", request)
    media = ptype.split(";")[0]
    return await _multipart_stream(request, path, parts, ptype,
                                   f'multipart/related; type="{media}"')


# -- QIDO-RS ------------------------------------------------------------------
def _keyword(name: str) -> str:
    """A query key (keyword or 8-hex-digit tag) as its keyword; 400 when unknown."""
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        kw = keyword_for_tag(int(name, 16))
        if not kw:
            raise web.HTTPBadRequest(text=f"query key {name}: tag ({name[:4]},{name[4:]}) is "
                                          "not in the DICOM dictionary")
        return str(kw)
    if tag_for_keyword(name) is None:
        raise web.HTTPBadRequest(text=f"query key {name!r} is neither a DICOM keyword nor a "
                                      "tag (e.g. PatientName or 00100010)")
    return name


_INT64_MAX = (1 << 63) - 1  # SQLite's INTEGER: a larger bound raised OverflowError (a 500)
_INTEGER_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}


def _nonneg(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit():
        raise web.HTTPBadRequest(text=f"{name} = {raw[:40]!r} is not a non-negative integer")
    if len(raw) > 19 or int(raw) > _INT64_MAX:
        raise web.HTTPBadRequest(text=f"{name} = {raw[:40]}… exceeds {_INT64_MAX}")
    return int(raw)


def _check_value(keyword: str, value: str, fuzzy: bool, max_words: int) -> None:
    """Refuse a matching value the store cannot evaluate (400 naming the key)."""
    vr = _vr_of(_tag_of(keyword))
    if vr in _INTEGER_VRS:
        digits = value.strip().lstrip("+-")
        if digits.isascii() and digits.isdigit() and (len(digits) > 19
                                                      or int(digits) > _INT64_MAX):
            raise web.HTTPBadRequest(text=f"query key {keyword} = {value[:40]}… ({len(value)} "
                                          f"characters) is outside the 64-bit range of {vr}")
    if vr == "PN" and fuzzy:
        words = [w for w in re.split(r"[\s^=*?]+", value) if w]
        if len(words) > max_words:
            raise web.HTTPBadRequest(text=f"query key {keyword}: fuzzy matching on {len(words)} "
                                          f"words, more than limits.max_fuzzy_words = "
                                          f"{max_words}")


def _tag_of(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return int(tag) if tag is not None else 0


def parse_qido(request: web.Request, *, max_fuzzy_words: int = 16
               ) -> tuple[dict[str, str], set[str] | None, bool, int | None, int]:
    """(match keys, include fields (None = all), fuzzy, limit, offset) of a QIDO request."""
    keys: dict[str, str] = {}
    include: set[str] | None = set()
    for name, value in request.query.items():
        low = name.lower()
        if low in _RESERVED_PARAMS:
            if low == "includefield":
                for f in value.split(","):
                    f = f.strip()
                    if not f:
                        continue
                    if f.lower() == "all":
                        include = None
                    elif include is not None:
                        include.add(_keyword(f))
                    else:
                        _keyword(f)
            continue
        if "." in name:
            raise web.HTTPBadRequest(text=f"query key {name!r}: sequence matching is not "
                                          "supported")
        keys[_keyword(name)] = value
    fuzzy = request.query.get("fuzzymatching", "false").lower() == "true"
    for kw, value in keys.items():
        _check_value(kw, value, fuzzy, max_fuzzy_words)
    return keys, include, fuzzy, _nonneg(request, "limit"), _nonneg(request, "offset") or 0


def _qido_shape(level: str, results: list[dict[str, Any]], keys: dict[str, str],
                include: set[str] | None, base: str) -> list[dict[str, Any]]:
    wanted = None if include is None else set(DEFAULT_FIELDS[level]) | set(keys) | include
    out = []
    for res in results:
        attrs = {k: v for k, v in res.items() if k not in _PRIVATE_KEYS
                 and (wanted is None or k in wanted)}
        study = res.get("StudyInstanceUID")
        if study:
            url = f"{base}/studies/{study}"
            if level in ("SERIES", "IMAGE") and res.get("SeriesInstanceUID"):
                url += f"/series/{res['SeriesInstanceUID']}"
            if level == "IMAGE" and res.get("SOPInstanceUID"):
                url += f"/instances/{res['SOPInstanceUID']}"
            attrs["RetrieveURL"] = url
        out.append(attrs_to_json(attrs))
    return out


def _qido_find(store: Store, level: str, keys: dict[str, str], include: set[str] | None,
               fuzzy: bool, limit: int | None, offset: int) -> list[dict[str, Any]]:
    ask = dict(keys)
    # Extra return keys are asked for the C-FIND way: present with an empty
    # value.  The level's defaults are whatever qr returns, filtered afterwards.
    for k in (include or ()):
        ask.setdefault(k, "")
    return qr.find(store, level, ask, limit=limit, offset=offset, fuzzy=fuzzy)


def _qido_handler(level: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        cfg, store = _app(request)
        user = require(request, "reader", "operator", action="search studies")
        keys, include, fuzzy, limit, offset = parse_qido(
            request, max_fuzzy_words=cfg.limits.max_fuzzy_words)
        m = request.match_info
        if "study" in m:
            keys["StudyInstanceUID"] = m["study"]
        if "series" in m:
            keys["SeriesInstanceUID"] = m["series"]
        try:
            results = await asyncio.to_thread(_qido_find, store, level, keys, include, fuzzy,
                                              limit, offset)
        except (ValueError, KeyError, OverflowError) as exc:  # qr names the key
            raise web.HTTPBadRequest(text=f"query: {str(exc)[:300]}") from None
        if access.restricted(user):  # a reader sees the studies of their services only
            seen = await asyncio.to_thread(access.visible_studies, store, user, (
                str(r.get("StudyInstanceUID") or "") for r in results))
            results = [r for r in results if str(r.get("StudyInstanceUID") or "") in seen]
        studies = list(dict.fromkeys(str(r["StudyInstanceUID"]) for r in results
                                     if r.get("StudyInstanceUID")))
        await asyncio.to_thread(_audit_open, store, cfg, user, studies, "qido-rs", request,
                                matches=len(results))
        body = _qido_shape(level, results, keys, include, _base_url(request))
        return _dicom_json(body)

    return handler


# -- STOW-RS ------------------------------------------------------------------
@dataclass
class _StowResult:
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def _stow_one(cfg: Config, store: Store, data: bytes, user: User, peer: str | None,
              study: str | None) -> tuple[bool, dict[str, Any]]:
    """One part through the one ingest path (like a C-STORE)."""

    def before_store(checked: Checked) -> ingest.IngestResult | None:
        info = checked.info
        if study is not None and info.study_instance_uid != study:
            return ingest.refused(
                f"(0020,000D) Study Instance UID {info.study_instance_uid} differs from the "
                f"target study {study} (PS3.18 10.5)", st.DATASET_DOES_NOT_MATCH_SOP_CLASS, info)
        if info.sop_class_uid not in reading.VIEWER_REPORT_CLASSES:
            return None
        try:
            report = reading.viewer_report_if_any(
                store, cfg, user, checked.part10, sop_class_uid=info.sop_class_uid,
                study_instance_uid=info.study_instance_uid)
        except reading.ReadingError as exc:
            return ingest.refused(str(exc), reading.refusal_status(exc), info)
        if report is None:
            return None
        log.info("stow user=%s peer=%s report=%s version=%s case=%s from viewer object "
                 "sop=%s", user.name, peer, report.get("report_id"), report.get("version"),
                 report.get("case_id"), info.sop_instance_uid)
        return ingest.handled(info, len(checked.part10), report_id=report.get("report_id"))

    res = ingest.ingest(store, data, ingest.Source("stow-rs", f"viewer:{user.name}", peer),
                        ingest.Limits.of(cfg), on_checked=before_store)
    ref: dict[str, Any] = {"sop": res.sop_instance_uid}
    if res.info is not None:
        ref.update({"class": res.info.sop_class_uid, "study": res.info.study_instance_uid,
                    "series": res.info.series_instance_uid})
    if res.ok:
        return True, {**ref, **res.extra}
    if res.outcome is not ingest.Outcome.REJECTED:
        log.warning("stow user=%s peer=%s refused status=%s reason=%s", user.name, peer,
                    st.describe(res.status), res.reason)
    return False, {**ref, "status": res.status, "reason": res.reason}


def _stow_body(res: _StowResult, base: str, study: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if res.failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", **({"Value": [f["class"]]} if f.get("class") else {})},
             "00081155": {"vr": "UI", **({"Value": [f["sop"]]} if f.get("sop") else {})},
             "00081197": {"vr": "US", "Value": [f["status"]]}}
            for f in res.failed]}
    if res.stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [s["class"]]},
             "00081155": {"vr": "UI", "Value": [s["sop"]]},
             "00081190": {"vr": "UR", "Value": [
                 f"{base}/studies/{s['study']}/series/{s['series']}/instances/{s['sop']}"]}}
            for s in res.stored]}
    return dict(sorted(body.items()))


async def stow(request: web.Request) -> web.Response:
    cfg, store = _app(request)
    user = require(request, "technician", "reader", "operator", action="store instances")
    study = request.match_info.get("study")
    ctype = request.headers.get("Content-Type", "")
    outer = parse_accept(ctype)[0] if ctype else MediaRange("")
    if outer.media != "multipart/related":
        return _error(415, "unsupported_media_type",
                      'STOW-RS takes multipart/related; type="application/dicom"')
    if outer.part_type not in (None, "application/dicom"):
        return _error(415, "unsupported_media_type",
                      f"STOW-RS parts of type {outer.part_type!r} are not supported; send "
                      "application/dicom (Part-10 instances)")
    limit = cfg.dicom.max_instance_bytes
    res = _StowResult()
    async for part in multipart_parts(request, cfg.limits.max_multipart_parts):
        if not isinstance(part, BodyPartReader):
            res.failed.append({"status": st.CANNOT_UNDERSTAND, "reason": "nested multipart"})
            continue
        ptype = (part.headers.get("Content-Type") or "application/dicom").split(";")[0]
        if ptype.strip().lower() != "application/dicom":
            res.failed.append({"status": st.CANNOT_UNDERSTAND,
                               "reason": f"part of type {ptype!r}"})
            await part.release()
            continue
        buf = bytearray()
        too_big = False
        while chunk := await part.read_chunk(CHUNK_BYTES):
            if len(buf) + len(chunk) > limit:
                too_big = True
                await part.release()
                break
            buf += chunk
        if too_big:
            res.failed.append({"status": st.INSTANCE_TOO_LARGE,
                               "reason": f"part exceeds dicom.max_instance_bytes = {limit}"})
            continue
        ok, info = await asyncio.to_thread(_stow_one, cfg, store, bytes(buf), user,
                                           request.remote, study)
        (res.stored if ok else res.failed).append(info)
    log.info("stow user=%s peer=%s stored=%d failed=%d", user.name, request.remote,
             len(res.stored), len(res.failed))
    if any(s.get("report_id") for s in res.stored):

        wake = request.app.get(WAKE)
        if callable(wake):
            wake()  # a signed report is queued back: send it now, not at the next poll
    status = 200 if not res.failed else 409 if not res.stored else 202
    if not res.stored and not res.failed:
        return _error(400, "empty", "no parts in the STOW-RS request")
    return _dicom_json(_stow_body(res, _base_url(request), study), status)


def add_routes(app: web.Application, cfg: Config, store: Store) -> None:
    """Register the DICOMweb routes on the node's app (auth: gateway/access/users.py)."""
    del cfg, store  # read from the app per request, like the other handlers
    r = app.router
    s, se, i = "{study}", "{series}", "{sop}"
    p = PREFIX
    # QIDO-RS
    r.add_get(f"{p}/studies", _qido_handler("STUDY"))
    r.add_get(f"{p}/series", _qido_handler("SERIES"))
    r.add_get(f"{p}/instances", _qido_handler("IMAGE"))
    r.add_get(f"{p}/studies/{s}/series", _qido_handler("SERIES"))
    r.add_get(f"{p}/studies/{s}/instances", _qido_handler("IMAGE"))
    r.add_get(f"{p}/studies/{s}/series/{se}/instances", _qido_handler("IMAGE"))
    # WADO-RS
    r.add_get(f"{p}/studies/{s}", retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}", retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}", retrieve)
    r.add_get(f"{p}/studies/{s}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/metadata", metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}", frames)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/bulkdata/{{tag}}", bulkdata)
    # STOW-RS
    r.add_post(f"{p}/studies", stow)
    r.add_post(f"{p}/studies/{s}", stow)


__all__ = ["add_routes", "attrs_to_json", "choose_syntax", "dicom_syntaxes", "parse_accept",
           "transcode"]
