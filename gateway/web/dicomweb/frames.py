"""WADO-RS frames: only the asked-for frames are read from the stored file, decoded alone."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fenji.codecs.image import sandbox
from fenji.codecs.image.codestream import HEAD_BYTES, JPEG_FAMILY, codestream_mismatch
from fenji.gateway.access import scope as access
from fenji.gateway.access.users import require
from fenji.gateway.dicom.validate import (
    DEFLATED_LE,
    ENCAPSULATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NATIVE,
)
from fenji.gateway.store.db import Store
from fenji.gateway.web.dicomweb.common import (
    _app,
    _audit_open,
    _blob_chunks,
    _error,
    _instances,
    _not_found_if_empty,
    _part_head,
    _what,
)
from fenji.gateway.web.dicomweb.media import (
    FRAME_MEDIA_TYPES,
    MediaRange,
    NotAcceptable,
    _decodable,
    _is_multipart,
    parse_accept,
)

log = logging.getLogger(__name__)

@dataclass
class _Pixels:
    """An instance's frames, as stored."""

    transfer_syntax: str
    frames: list[bytes]
    dataset: Any


def _load_frames(store: Store, row: dict[str, Any]) -> _Pixels:
    import pydicom
    from pydicom.encaps import generate_frames

    with store.open_blob(row["sha256"]) as fh:  # the whole instance (see _map_frames)
        ds = pydicom.dcmread(fh)
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


Range = tuple[int, int]  # (blob offset, length)


@dataclass
class _FrameMap:
    """Where each frame's bytes lie in the stored blob: nothing of them is read yet."""

    transfer_syntax: str
    sha256: str
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
    path = str(row["sha256"])
    # On S3 a file over ranged GETs whose window stays small while it seeks:
    # walking the item tags costs a small GET per fragment, not the fragments.
    with store.open_blob(path) as fp:
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


def _read_ranges(store: Store, sha256: str, ranges: list[Range]) -> bytes:
    return b"".join(b"".join(store.blob_chunks(sha256, off, n)) for off, n in ranges)


async def _range_chunks(store: Store, sha256: str, ranges: list[Range]) -> Any:
    """The bytes of ``ranges`` of a blob in pieces of at most CHUNK_BYTES."""
    for off, n in ranges:
        async for chunk in _blob_chunks(store, sha256, off, n):
            yield chunk


def _decoded_frames(store: Store, src: Any, header: Any, ts: str,
                    frames: list[bytes | list[Range]]) -> list[bytes]:
    """Compressed frames decoded to native little-endian bytes, each in a decoding
    child (:mod:`fenji.codecs.image.sandbox`: a decoder that aborts ends the child,
    not this server).

    ``frames``: each frame's codestream, or its fragments' ranges in the stored
    blob ``src`` (its SHA-256): only those bytes are read, once.  ``header``: the
    data set.  ValueError, before any decoding, when a frame's codestream is not
    what the header says (an instance stored before ingest checked that:
    codecs/image/codestream.py).
    """
    streams = [f if isinstance(f, bytes) else _read_ranges(store, str(src), f) for f in frames]
    why = codestream_mismatch(ts in JPEG_FAMILY, header.get("Rows"), header.get("Columns"),
                              int(header.get("SamplesPerPixel") or 1),
                              int(header.get("BitsAllocated") or 0),
                              (b[:HEAD_BYTES] for b in streams))
    if why:
        raise ValueError(why)
    out = []
    for stream in streams:
        arr = sandbox.frame_array(header, stream)
        out.append(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return out


def _header(store: Store, src: Any) -> Any:
    """The data set without its pixels: read from the stored blob ``src`` (its
    SHA-256), or ``src`` itself when already loaded."""
    import pydicom

    if isinstance(src, str):
        with store.open_blob(src) as fh:
            return pydicom.dcmread(fh, stop_before_pixels=True)
    return src


def _decoded_frame_bytes(ds: Any) -> int:
    """Bytes of one decoded frame of the instance whose header is ``ds``."""
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


async def get_frames(request: web.Request) -> web.StreamResponse:
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
        stored_ts, all_frames, src = fmap.transfer_syntax, fmap.frames, fmap.sha256
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
        header = await asyncio.to_thread(_header, store, src)
        need = len(wanted) * _decoded_frame_bytes(header)
        if need > cap:
            as_stored = FRAME_MEDIA_TYPES.get(stored_ts, "transfer-syntax=*")
            return _error(413, "too_much_to_decode",
                          f"{len(wanted)} decoded frames of instance {m['sop']} are {need} "
                          f"bytes, more than limits.max_decoded_bytes_per_request = {cap}; ask "
                          f"for fewer frames or for them as stored ({as_stored})")
        try:
            parts = list(await asyncio.to_thread(_decoded_frames, store, src, header,
                                                 stored_ts, [all_frames[n - 1] for n in wanted]))
        except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise RuntimeError,
            # NotImplementedError, ValueError, ... (damaged data, a variant not here)
            why = " ".join(str(exc).split())[:300]
            log.warning("frame decode failed sop=%s %s: %s", m["sop"], stored_ts, why)
            as_stored = FRAME_MEDIA_TYPES.get(stored_ts, "transfer-syntax=*")
            raise NotAcceptable(f"frames {wanted[:8]} of instance {m['sop']} (stored in "
                                f"{stored_ts}) could not be decoded here: {why}; ask for "
                                f"them as stored ({as_stored})") from None
    else:
        parts = [all_frames[n - 1] for n in wanted]
    await asyncio.to_thread(_audit_open, store, cfg, user, [m["study"]], "wado-rs", request,
                            frames=wanted[:100])
    return await _multipart_stream(request, store, fmap.sha256 if fmap else "", parts,
                                   f"{media}; transfer-syntax={ts}",
                                   f'multipart/related; type="{media}"')


async def _multipart_stream(request: web.Request, store: Store, sha256: str,
                            parts: list[bytes | list[Range]], part_type: str, ctype: str
                            ) -> web.StreamResponse:
    """A multipart/related response whose parts are bytes or ranges of blob ``sha256``
    (streamed)."""
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
            async for chunk in _range_chunks(store, sha256, p):
                await resp.write(chunk)
        await resp.write(b"\r\n")
    await resp.write(tail)
    await resp.write_eof()
    return resp
