"""Uploads nobody finishes: given up, their bytes removed.

A sender that gave a bundle up (its case cancelled, its node reinstalled) leaves an
upload in ``receiving`` whose bytes stay in ``store/uploads/`` (or the bucket) for
ever; ``limits.max_uploads_per_peer`` stops counting it after an hour, so a peer
could fill the center's disk an hour at a time.  An upload no request has touched
for ``limits.abandoned_upload_s`` is *abandoned*: its bytes are removed and its row
says so.  The sender is not lost: a PATCH or finalize of it answers 410, and its
next create of the same bundle reopens it at offset 0 (``transfer_server``).

The row stays (rows of uploads are never deleted: a bundle id has one row).  Every
process of a center reaps; the conditional ``UPDATE`` decides which one does it.
With a local part file, the file's ``flock`` (the writer's turn) is held while it
is removed and the row changed, so a chunk being written is never cut away; the
file goes first, so a create that reopens the upload (it needs the row abandoned)
always starts an empty file.  In a bucket the row changes first (a late PATCH is
then refused), then the chunk objects go.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fenji.gateway.store.db import Store
from fenji.gateway.store.upload_parts import LocalParts, UploadParts
from fenji.routing import upload

log = logging.getLogger(__name__)

# How often a process looks, at most / at least (a quarter of the idle limit between).
MAX_PERIOD_S = 600.0
MIN_PERIOD_S = 0.2


def period(idle_s: float) -> float:
    """Seconds between two looks for an idle limit of ``idle_s``."""
    return min(MAX_PERIOD_S, max(MIN_PERIOD_S, idle_s / 4))


def reap(store: Store, parts: UploadParts, idle_s: float, now: float) -> list[dict[str, Any]]:
    """Abandon every upload still receiving whose last request is more than ``idle_s``
    before ``now``; the rows this call abandoned (as they were)."""
    cutoff = now - idle_s
    rows = store.query("SELECT * FROM uploads WHERE state = ? AND updated_at < ?",
                           (upload.RECEIVING, cutoff))
    done = []
    for row in rows:
        if _abandon(store, parts, row, cutoff, now):
            done.append(row)
            log.warning("upload abandoned node=%s bundle=%s upload=%s offset=%d length=%d "
                        "idle_s=%.0f: its bytes are removed; the sender's next try starts "
                        "it again", row["sender"], row["bundle_id"], row["upload_id"],
                        row["offset"], row["length"], now - row["updated_at"])
    swept = _sweep_unlisted(store, parts, cutoff)
    if swept:
        log.info("upload parts removed=%d with no upload row (a crash between file and "
                 "row)", swept)
    return done


def _mark(store: Store, upload_id: str, cutoff: float, now: float) -> bool:
    state = upload.transition(upload.RECEIVING, "abandon")
    with store.atomic() as con:
        return bool(con.execute(
            "UPDATE uploads SET state = ?, offset = 0, updated_at = ? WHERE upload_id = ? "
            "AND state = ? AND updated_at < ?",
            (state, now, upload_id, upload.RECEIVING, cutoff)).rowcount == 1)


def _abandon(store: Store, parts: UploadParts, row: dict[str, Any], cutoff: float,
             now: float) -> bool:
    upload_id = str(row["upload_id"])
    local = parts.local_file(upload_id)
    if local is None:  # a bucket: refuse late writers first, then remove the chunks
        if not _mark(store, upload_id, cutoff, now):
            return False
        parts.remove(upload_id)
        return True
    try:
        fd = os.open(local, os.O_RDONLY)
    except FileNotFoundError:  # removed already (another process, or a crash)
        return _mark(store, upload_id, cutoff, now)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer finishes its chunk first
        fresh = store.query_one("SELECT state, updated_at FROM uploads WHERE upload_id = ?",
                                (upload_id,))
        if fresh is None or fresh["state"] != upload.RECEIVING or \
                fresh["updated_at"] >= cutoff:
            return False  # touched meanwhile: it lives
        parts.remove(upload_id)
        return _mark(store, upload_id, cutoff, now)
    finally:
        os.close(fd)


def _sweep_unlisted(store: Store, parts: UploadParts, cutoff: float) -> int:
    """Part files older than the cutoff with no upload row at all (a finished one's
    file may be a relay's onward bundle: kept)."""
    if not isinstance(parts, LocalParts):
        return 0
    n = 0
    for p in parts.folder.glob("*.part"):
        try:
            if p.stat().st_mtime >= cutoff:
                continue
        except FileNotFoundError:
            continue
        if store.query_one("SELECT 1 AS x FROM uploads WHERE upload_id = ?",
                           (p.stem,)) is None:
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def reopen(store: Store, parts: UploadParts, row: dict[str, Any], length: int,
           now: float) -> dict[str, Any]:
    """An abandoned upload made new for a create of its bundle: offset 0, this length
    (or still deferred); the row as it is now (another process may have reopened it
    first, and a sender's chunks may already be on it)."""
    parts.create(str(row["upload_id"]))  # an empty file: the old one was removed first
    state = upload.transition(upload.ABANDONED, "reopen")
    with store.atomic() as con:
        con.execute("UPDATE uploads SET state = ?, offset = 0, length = ?, updated_at = ? "
                    "WHERE upload_id = ? AND state = ?",
                    (state, length, now, row["upload_id"], upload.ABANDONED))
    fresh = store.query_one("SELECT * FROM uploads WHERE upload_id = ?", (row["upload_id"],))
    assert fresh is not None  # rows are never deleted
    log.info("upload reopened node=%s bundle=%s upload=%s length=%d", fresh["sender"],
             fresh["bundle_id"], fresh["upload_id"], fresh["length"])
    return fresh


def background(store: Store, parts: Callable[[], UploadParts], idle_s: float,
               clock: Callable[[], float] = time.time
               ) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry: reap every :func:`period` while the app runs."""
    async def ctx(_app: Any) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    await asyncio.to_thread(reap, store, parts(), idle_s, clock())
                except Exception:  # noqa: BLE001 - the next look tries again
                    log.exception("abandoned uploads: this look failed")
                await asyncio.sleep(period(idle_s))

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ctx
