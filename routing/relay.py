"""Cut-through at a relay: forwarding a STAT bundle while it is still arriving.

A relay normally forwards a bundle once it has received, verified and stored all
of it (store and forward: the next hop waits for the whole first hop).  For a
STAT bundle the receiver (:mod:`fenji.routing.transfer_server`) hands the
manifest to the node as soon as its frames are in; the node may queue the
bundle onward at once, its file under ``bundles/`` a hard link to the upload's
``.part`` file, which grows as verified frames are committed.  The sender then
sends what is committed and waits for more (:class:`Growing`).

Both hops keep their own state: the first hop's upload row and file at the
relay, the second hop's at the next node.  A cut on either resumes at that
hop's offset without the other; the relay's receipt to its sender still comes
only when it has verified and stored the whole bundle, and the next hop
deduplicates by bundle id as ever.

Waiting is event-driven inside the process (the receiver calls
:func:`committed` after each commit); the upload row in the store is the truth,
re-read on every wake-up and at least every :data:`RECHECK_S` (another process
may hold the upload).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fenji.gateway.errors import PeerError
from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

# The upload row is re-read at least this often while a forward waits for bytes
# (a safety net for an upload received by another process of the node).
RECHECK_S = 1.0
# A forward that sees no new byte arrive for this long stops (a retryable
# failure: the outbox tries again later) instead of holding its next hop's
# connection open for a first hop that is down.
STALL_S = 120.0

_EVENTS: dict[str, asyncio.Event] = {}


def committed(bundle_id: str) -> None:
    """The receiver committed bytes of ``bundle_id`` (or finished or refused it)."""
    ev = _EVENTS.get(bundle_id)
    if ev is not None:
        ev.set()


@dataclass(frozen=True)
class Incoming:
    length: int
    offset: int
    state: str


def incoming(store: Store, bundle_id: str) -> Incoming | None:
    """The upload of ``bundle_id`` at this node, if one is (or was) received."""
    row = store.query_one("SELECT length, offset, state FROM uploads WHERE bundle_id = ? "
                          "ORDER BY created_at DESC LIMIT 1", (bundle_id,))
    if row is None:
        return None
    return Incoming(int(row["length"]), int(row["offset"]), str(row["state"]))


class StalledError(PeerError):
    """The bundle being forwarded stopped growing (the previous hop went silent), or
    the relay refused it: the forward stops here and is retried by the outbox."""


class Growing:
    """A bundle still arriving: its final length (None while the previous hop defers
    it: a bundle encoded while it is sent), and a wait for its first ``n`` bytes."""

    def __init__(self, store: Store, bundle_id: str, length: int | None, *,
                 stall_s: float = STALL_S) -> None:
        self.store, self.bundle_id, self.stall_s = store, bundle_id, stall_s
        self.length = length or None  # upload.DEFERRED (0): not known yet
        self.available = 0

    def read_path(self, default: Path) -> Path:
        """The file to read the bytes from: the onward bundle, a hard link to the upload."""
        return default

    def _whole(self) -> bool:
        return self.length is not None and self.available >= self.length

    async def wait_for(self, n: int,
                       heartbeat: Callable[[], Awaitable[None]] | None = None) -> None:
        """Return once the first ``n`` bytes are committed at this node, or all of a
        shorter bundle; ``heartbeat`` runs while it waits (the outbox lease stays ours)."""
        if n <= self.available or self._whole():
            return
        ev = _EVENTS.setdefault(self.bundle_id, asyncio.Event())
        last_growth = time.monotonic()
        while True:
            ev.clear()  # before reading: a commit after the read is kept
            now = await asyncio.to_thread(incoming, self.store, self.bundle_id)
            if now is None or now.state == "rejected":
                raise StalledError(f"bundle {self.bundle_id}: the relay refused or lost the "
                                   "incoming upload it was forwarding")
            if now.length:
                self.length = now.length
            if now.offset > self.available:
                self.available, last_growth = now.offset, time.monotonic()
            if n <= self.available or self._whole():
                return
            if time.monotonic() - last_growth > self.stall_s:
                raise StalledError(f"bundle {self.bundle_id}: no new byte from the previous "
                                   f"hop for {self.stall_s:.0f} s (at {self.available} of "
                                   f"{self.length or 'a length not declared yet'})")
            if heartbeat is not None:
                await heartbeat()
            try:
                await asyncio.wait_for(ev.wait(), timeout=RECHECK_S)
            except TimeoutError:
                pass

    def done(self) -> None:
        """The forward ended: forget the wake-up (the next one makes a new one)."""
        _EVENTS.pop(self.bundle_id, None)
