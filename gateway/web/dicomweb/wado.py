"""WADO-RS: instances, series and studies as multipart/related, their metadata, and bulk data."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from fenji.gateway.access import scope as access
from fenji.gateway.access.users import require
from fenji.gateway.dicom import charset
from fenji.gateway.dicom.validate import (
    ENCAPSULATED,
    EXPLICIT_LE,
    IMPLICIT_LE,
)
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb.common import (
    BULK_THRESHOLD_BYTES,
    DICOM_JSON,
    _app,
    _audit_open,
    _base_url,
    _blob_chunks,
    _instances,
    _not_found_if_empty,
    _part_head,
    _what,
)
from fenji.gateway.web.dicomweb.frames import (
    Range,
    _load_frames,
    _map_frames,
    _multipart_stream,
)
from fenji.gateway.web.dicomweb.media import (
    FRAME_MEDIA_TYPES,
    TRANSCODE_TARGETS,
    MediaRange,
    NotAcceptable,
    _is_multipart,
    _private_as_un,
    choose_syntax,
    dicom_syntaxes,
    parse_accept,
    transcode,
)

log = logging.getLogger(__name__)

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
    # Every transcoded instance is re-encoded before the first byte (into a spool that
    # goes to the store's tmp/ past TRANSCODE_SPOOL_MEMORY), so an instance pydicom
    # cannot re-encode is a 406 that names it, not a response cut half-way.
    spool = _Spool(store.tmp_dir)
    try:
        for i, (r, ts) in enumerate(zip(rows, plan, strict=True)):
            if ts != r["transfer_syntax_uid"]:
                await asyncio.to_thread(spool.add, i, _transcoded, store, r, ts)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        # Stored bytes go by sendfile(2) on a plain socket (no copy through Python,
        # the kernel reads ahead); TLS or a loop without it falls back to chunks.
        zero_copy = not transcoded and request.transport is not None and \
            request.transport.get_extra_info("sslcontext") is None
        sep = b""
        for i, (head, r) in enumerate(zip(heads, rows, strict=True)):
            await resp.write(sep + head)
            sep = b"\r\n"
            # A blob in the local folder is a file (sendfile); one in a bucket comes by
            # ranged GETs, a piece at a time: memory stays flat whatever the study.
            path = store.blob_file(r["sha256"])
            if i in spool:
                for piece in spool.pieces(i):
                    await resp.write(await asyncio.to_thread(piece))
            elif zero_copy and request.transport is not None and path is not None:
                with open(path, "rb") as fh:  # noqa: ASYNC230 - open(2) only; data moves below
                    await loop.sendfile(request.transport, fh, 0, int(r["size"]))
            else:
                async for chunk in _blob_chunks(store, r["sha256"], 0, int(r["size"])):
                    await resp.write(chunk)
        await resp.write(sep + tail)
        await resp.write_eof()
    finally:
        spool.close()
    return resp


# Transcoded parts up to this many bytes stay in memory; past it the spool is a file.
TRANSCODE_SPOOL_MEMORY = 32 << 20
_SPOOL_PIECE = 1 << 20


class _Spool:
    """Transcoded parts, appended in order, read back by part in pieces."""

    def __init__(self, tmp_dir: Path) -> None:
        self._tmp_dir = tmp_dir
        self._fh: Any = None
        self._parts: dict[int, tuple[int, int]] = {}  # part -> (offset, length)
        self._end = 0

    def __contains__(self, part: int) -> bool:
        return part in self._parts

    def add(self, part: int, make: Callable[..., bytes], *args: Any) -> None:
        data = make(*args)
        if self._fh is None:
            self._fh = tempfile.SpooledTemporaryFile(max_size=TRANSCODE_SPOOL_MEMORY,
                                                     dir=str(self._tmp_dir))
        self._fh.seek(self._end)
        self._fh.write(data)
        self._parts[part] = (self._end, len(data))
        self._end += len(data)

    def pieces(self, part: int) -> Iterator[Callable[[], bytes]]:
        """Callables that each read the next piece of ``part`` (run them in a thread)."""
        offset, length = self._parts[part]
        for at in range(offset, offset + length, _SPOOL_PIECE):
            n = min(_SPOOL_PIECE, offset + length - at)
            yield functools.partial(self._read, at, n)

    def _read(self, at: int, n: int) -> bytes:
        self._fh.seek(at)
        data: bytes = self._fh.read(n)
        return data

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _transcoded(store: Any, row: dict[str, Any], ts: str) -> bytes:
    """The stored instance re-encoded in ``ts``; :class:`NotAcceptable` naming the
    instance and pydicom's reason when it cannot be."""
    data = store.read_blob(row["sha256"])
    try:
        return transcode(data, ts)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise RuntimeError,
        # ValueError, struct.error, ... on damaged pixel data: each is this instance's 406
        log.warning("transcode failed sop=%s %s -> %s: %s", row["sop_instance_uid"],
                    row["transfer_syntax_uid"], ts, exc)
        raise NotAcceptable(
            f"instance {row['sop_instance_uid']} (stored in {row['transfer_syntax_uid']}) "
            f"could not be re-encoded in {ts}: {exc}; ask for transfer-syntax=*") from None


# -- WADO-RS: metadata, frames, bulk data -------------------------------------
def _accepts_json(accept: list[MediaRange]) -> bool:
    return any(r.media in ("*/*", "application/*", DICOM_JSON, "application/json")
               for r in accept)


def _instance_metadata(store: Store, row: dict[str, Any], base: str,
                       default_charset: str = "") -> dict[str, Any]:
    """An instance's metadata as DICOM JSON; text decoded with its (0008,0005), or
    ``default_charset`` (``dicom.default_character_set``) when it declares none."""
    import pydicom

    url = (f"{base}/studies/{row['study_instance_uid']}/series/{row['series_instance_uid']}"
           f"/instances/{row['sop_instance_uid']}")
    with store.open_blob(row["sha256"]) as fh:  # deferred values are read from it below
        return _metadata_of(pydicom.dcmread(fh, defer_size=BULK_THRESHOLD_BYTES), row, url,
                            default_charset)


def _metadata_of(ds: Any, row: dict[str, Any], url: str, default_charset: str
                 ) -> dict[str, Any]:
    from pydicom.tag import Tag

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

    out = _json_elements(ds, bulk, row["sop_instance_uid"])
    if pixel_vr is not None:
        out["7FE00010"] = {"vr": pixel_vr if pixel_vr in ("OB", "OW") else "OW",
                           "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    # Which syntax this instance is held in: a viewer may then ask for it by name.
    out["00083002"] = {"vr": "UI", "Value": [row["transfer_syntax_uid"]]}
    return dict(sorted(out.items()))


def _json_elements(ds: Any, bulk: Any, sop: str) -> dict[str, Any]:
    """``ds`` as DICOM JSON; an element whose value is not what its VR allows (a DS
    of "76\x0e.21": pydicom raises) is left out and logged, instead of cutting a
    study's metadata half-way (found by mutating shared files)."""
    try:
        out: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD_BYTES,
                                              bulk_data_element_handler=bulk)
        return out
    except Exception:  # noqa: BLE001, S110 - pydicom raises many types; per element below
        pass
    out, dropped = {}, []
    for tag in ds.keys():
        try:
            out[f"{int(tag):08X}"] = ds[tag].to_json_dict(
                bulk_data_element_handler=bulk, bulk_data_threshold=BULK_THRESHOLD_BYTES)
        except Exception:  # noqa: BLE001 - the value does not fit its VR
            dropped.append(f"({int(tag) >> 16:04X},{int(tag) & 0xFFFF:04X})")
    log.warning("sop=%s metadata: %s left out, their values do not fit their VR",
                sop, ", ".join(dropped))
    return out


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


def _bulk_value(store: Store, row: dict[str, Any], tag: int
                ) -> tuple[str, list[bytes | list[Range]], str]:
    """(blob, parts, part type) of one bulk data value; pixel data as blob ranges."""
    import pydicom

    path = str(row["sha256"])
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
    with store.open_blob(path) as fh:
        ds = pydicom.dcmread(fh, defer_size=BULK_THRESHOLD_BYTES)
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
    return await _multipart_stream(request, store, path, parts, ptype,
                                   f'multipart/related; type="{media}"')
