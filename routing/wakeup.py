"""Waking the sender from any process: a FIFO in the node's store.

The sender sleeps until the outbox core's ``Wait(until)``; something queued
meanwhile must wake it at once, whether it was queued by the node itself, by
``fenji case send`` in another process, or by an operator's retry.  Every
:func:`fenji.routing.outbox_db.enqueue` pokes this FIFO after its commit; the
sender holds the reading end (:class:`WakeFifo`) on its event loop.

A FIFO reaches one machine.  The processes of a center on several machines share a
PostgreSQL index, and :func:`wake` also sends a NOTIFY on :data:`CHANNEL` through it;
each sender LISTENs (``Index.listen``).  On SQLite that is nothing: all of its
processes are on one machine.

A FIFO, not a socket: its path has no 108-byte limit (a UNIX socket's has),
and a poke with nobody listening is harmless (``ENXIO``: no sender runs, the
next one to start reads the outbox anyway).  The reader opens it read-write,
so it never sees end-of-file when the last writer closes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

from fenji.gateway.store.db import Store

log = logging.getLogger(__name__)

FIFO_NAME = "sender.wake"
CHANNEL = "fenji_sender_wake"


def fifo_path(store_root: Path) -> Path:
    return Path(store_root) / FIFO_NAME


def wake(store: Store) -> None:
    """Wake the senders of ``store``'s node: this machine's through the FIFO, the
    center's on other machines through the index.  Never raises."""
    poke(fifo_path(store.root))
    store.index.notify(CHANNEL)


def poke(path: Path) -> bool:
    """Wake whoever listens on ``path``; False when nobody does (never raises)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENOENT):
            log.debug("wake-up %s not sent: %s", path, exc)
        return False
    try:
        os.write(fd, b"\x01")
    except OSError:  # EAGAIN: the FIFO is full of wake-ups already; one is enough
        pass
    finally:
        os.close(fd)
    return True


class WakeFifo:
    """The reading end: ``fileno()`` for ``loop.add_reader``, :meth:`drain` when readable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(self.path, 0o600)
        if not stat.S_ISFIFO(os.stat(self.path).st_mode):
            raise OSError(f"{self.path} exists and is not a FIFO")
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Read every pending wake-up; returns how many bytes there were."""
        n = 0
        while True:
            try:
                got = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            if not got:
                return n
            n += len(got)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
