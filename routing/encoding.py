"""Sending a bundle while this node still encodes it (issue 16: the first byte at once).

A STAT or urgent release queues its full bundle's outbox job in the same commit
as its preview, with ``bytes_total`` :data:`ENCODING` (-1), and then encodes the bundle (format
version 2, ``codecs/BUNDLE.md``) into ``bundles/<id>.fbundle.part``, renamed to
``bundles/<id>.fbundle`` when whole.  The release's second commit records it and
*seals* the job: ``bytes_total`` becomes the bundle's size.  The sender streams
the bytes as they are written (:class:`Encoding`) under a deferred-length upload
(``routing/upload.py``) and declares the length, which lets the receiver
finalize, only once the job is sealed: never before the release is committed.

If the release fails (or its process dies) before the seal, the case's
recovery drops the job and its file (:func:`drop_unsealed`); the receiver keeps
an orphan partial upload, which is never finalized.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fenji.gateway.store.db import Store
from fenji.routing.relay import StalledError

# An outbox job's bytes_total while its bundle is encoded and not yet sealed (a relay's
# onward job of a bundle whose length its sender deferred has 0: not this).
ENCODING = -1
# While a bundle is encoded, the sender looks at its file this often (the encoder
# may run in another process: the CLI's in-process release).  Only while a job
# waits for bytes that are not written yet.
POLL_S = 0.05
# No new byte for this long: the encoder is stuck or gone; the attempt stops
# (retryable) and the outbox tries again later.
STALL_S = 120.0


def part_path(store: Store, bundle_id: str) -> Path:
    """Where a bundle being encoded grows (renamed to ``<id>.fbundle`` when whole)."""
    return store.root / "bundles" / f"{bundle_id}.fbundle.part"


def encoding(job: dict[str, Any]) -> bool:
    """Whether an outbox job's bundle was queued before it was encoded and is not sealed."""
    return int(job.get("bytes_total") or 0) == ENCODING


def drop_unsealed(con: Any, store: Store, case_id: str) -> list[Path]:
    """Inside a failed release's transaction: remove the case's jobs whose bundles
    were never sealed; their files, to unlink after the commit."""
    rows = con.execute("SELECT bundle_id FROM outbox WHERE case_id = ? AND bytes_total = ?",
                       (case_id, ENCODING)).fetchall()
    files = []
    for (bundle_id,) in rows:
        con.execute("DELETE FROM outbox WHERE bundle_id = ?", (bundle_id,))
        files += [part_path(store, bundle_id),
                  store.root / "bundles" / f"{bundle_id}.fbundle"]
    return files


def gone(store: Store, bundle_id: str) -> bool:
    """Whether the bundle's job was dropped (its release failed)."""
    return store.query_one("SELECT 1 FROM outbox WHERE bundle_id = ?", (bundle_id,)) is None


def unlink(files: list[Path]) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            f.unlink()


class Encoding:
    """A bundle this node is still encoding: the bytes written so far, and its length
    once its release has sealed the job (:class:`fenji.routing.relay.Growing`'s
    interface)."""

    def __init__(self, store: Store, bundle_id: str, *, stall_s: float = STALL_S) -> None:
        self.store, self.bundle_id, self.stall_s = store, bundle_id, stall_s
        self.final = store.root / "bundles" / f"{bundle_id}.fbundle"
        self.part = part_path(store, bundle_id)
        self.length: int | None = None
        self.available = 0
        self.dropped = False  # the release failed: the bundle will never be whole

    def read_path(self, default: Path) -> Path:
        return self.final if self.final.exists() or not self.part.exists() else self.part

    def _look(self) -> tuple[int | None, int]:
        """(the sealed size, 0 before the seal, None when the job is gone; the bytes
        written)."""
        row = self.store.query_one("SELECT bytes_total FROM outbox WHERE bundle_id = ?",
                                   (self.bundle_id,))
        size = 0
        for f in (self.final, self.part):  # renamed between the two looks: the final one
            with contextlib.suppress(FileNotFoundError):
                size = f.stat().st_size
                break
        return (None if row is None else max(0, int(row["bytes_total"] or 0))), size

    async def wait_for(self, n: int,
                       heartbeat: Callable[[], Awaitable[None]] | None = None) -> None:
        """Return once the first ``n`` bytes are written, or the bundle is sealed."""
        last_growth = time.monotonic()
        while True:
            if n <= self.available or self.length is not None:
                return
            sealed, size = await asyncio.to_thread(self._look)
            if sealed is None:
                self.dropped = True
                raise StalledError(f"bundle {self.bundle_id}: its release failed before it "
                                   "was whole; it is not sent")
            if size > self.available:
                self.available, last_growth = size, time.monotonic()
            if sealed and self.final.exists() and size == sealed:
                self.length = sealed
                continue
            if n <= self.available:
                return
            if time.monotonic() - last_growth > self.stall_s:
                raise StalledError(f"bundle {self.bundle_id}: not one byte more encoded in "
                                   f"{self.stall_s:.0f} s (at {self.available})")
            if heartbeat is not None:
                await heartbeat()
            await asyncio.sleep(POLL_S)

    def done(self) -> None:
        pass
