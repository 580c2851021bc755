"""Bounded parsing of what an HTTP client sends (issue 17: never a 500, every
resource bounded).

aiohttp's multipart parser raises a bare ``ValueError`` for an empty, missing
or over-long boundary and for a body that ends before its closing delimiter;
left alone those became 500s.  :func:`multipart_parts` turns them into a 400
naming the fault and stops a request at ``max_parts`` parts with a 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from fenji.gateway.config import DICOMWEB_READ_CHUNK_BYTES
from fenji.gateway.dicom.status import INSTANCE_TOO_LARGE
from fenji.gateway.errors import PeerError


async def multipart_parts(request: web.Request, max_parts: int, *,
                          key: str = "limits.max_multipart_parts") -> AsyncIterator[Any]:
    """The parts of a multipart body, at most ``max_parts`` of them.

    Raises ``HTTPBadRequest`` (400) for a malformed body and
    ``HTTPRequestEntityTooLarge`` (413) past the cap; the error middleware
    answers both as JSON.
    """
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:  # aiohttp asserts on a missing type
        raise web.HTTPBadRequest(text=f"malformed multipart body: {exc}") from None
    n = 0
    while True:
        try:
            part = await reader.next()
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"malformed multipart body after {n} parts: "
                                          f"{exc}") from None
        if part is None:
            return
        n += 1
        if n > max_parts:
            raise web.HTTPRequestEntityTooLarge(
                max_size=max_parts, actual_size=n,
                text=f"more than {key} = {max_parts} parts in one request; send the rest in "
                     "another request")
        yield part


class PartTooLarge(PeerError):
    """:func:`spool_part` stopped at its limit (the rest of the part was discarded)."""

    http_status = 413
    dicom_status = INSTANCE_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"part exceeds {limit} bytes")
        self.limit = limit


async def spool_part(part: Any, directory: Path, limit: int) -> Path:
    """Stream one multipart part into a temp file in ``directory`` (the store's
    ``tmp/``: same file system, removed by store recovery after a crash) and
    return its path; the caller reads it once and unlinks it.

    Bytes in flight per part are one chunk (``DICOMWEB_READ_CHUNK_BYTES``), not the
    part: a buffer that grows to the part and is then copied to ``bytes`` held
    twice its size (issue 17 finding 13: a 300 MiB STOW part cost +600 MB).
    Raises :class:`PartTooLarge` past ``limit`` bytes (the part is drained and
    the file removed) and ``HTTPBadRequest`` for a body that ends inside it.
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".part")
    path = Path(name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            while True:
                try:
                    chunk = await part.read_chunk(DICOMWEB_READ_CHUNK_BYTES)
                except ValueError as exc:  # aiohttp: the body ends inside this part
                    raise web.HTTPBadRequest(
                        text=f"malformed multipart body: {exc}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    try:
                        await part.release()  # drained chunk by chunk, not kept
                    except ValueError as exc:
                        raise web.HTTPBadRequest(
                            text=f"malformed multipart body: {exc}") from None
                    raise PartTooLarge(limit)
                await asyncio.to_thread(fh.write, chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return path


def read_spooled(path: Path) -> bytes:
    """The spooled part's bytes, and the temp file gone (call in a worker thread)."""
    try:
        return path.read_bytes()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def upload_slots(max_per_user: int) -> Any:
    """Middleware: at most ``max_per_user`` uploads (POST, PUT, PATCH under ``/api/``
    and ``/dicom-web/``) in flight per authenticated user; more get 429.

    Runs after the auth middleware (it needs ``request["user"]``).  Node-to-node
    uploads (``/transfer/``) are bounded per peer by the receiver itself.
    """
    in_flight: dict[str, int] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Any) -> web.StreamResponse:
        user = request.get("user")
        if (user is None or request.method not in ("POST", "PUT", "PATCH")
                or not request.path.startswith(("/api/", "/dicom-web/"))):
            return await handler(request)
        name = str(getattr(user, "name", ""))
        if in_flight.get(name, 0) >= max_per_user:
            return web.json_response(
                {"status": 429, "error": "too_many_uploads",
                 "message": f"user {name!r} has {in_flight[name]} uploads in flight, "
                            f"limits.max_uploads_per_user = {max_per_user}; wait for one"},
                status=429, headers={"Retry-After": "5"})
        in_flight[name] = in_flight.get(name, 0) + 1
        try:
            return await handler(request)
        finally:
            left = in_flight[name] - 1
            if left:
                in_flight[name] = left
            else:
                del in_flight[name]

    return limit
