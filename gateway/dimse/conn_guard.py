"""Connections to the DICOM port before they become associations (issue 17, finding 12).

pynetdicom turns every accepted TCP connection into an association thread at
once, and that thread waits ``acse_timeout`` for the A-ASSOCIATE-RQ while
counting against ``maximum_associations``: 40 sockets that never send a byte
locked legitimate C-ECHO out with "local limit exceeded", again and again.

:class:`ConnectionGuard`, mixed into the server, holds a new connection in its
own thread until its first byte arrives, for at most ``preassoc_idle_s``
(dicom.preassoc_idle_s, seconds: a modality sends its request at once), and
only then hands it to pynetdicom; and it refuses a connection from an address
that already holds ``max_per_host`` connections (idle or associated) with an
A-ASSOCIATE-RJ, rejected-transient, local-limit-exceeded (PS3.8 9.3.4).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
from typing import Any

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): type 0x03, length 4, reserved, result 2
# (rejected-transient), source 3 (service-provider, presentation related),
# reason 2 (local-limit-exceeded).
_RJ_LOCAL_LIMIT = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x02, 0x03, 0x02)


def _readable_within(sock: Any, timeout_s: float) -> bool:
    """Whether ``sock`` has a byte (or its end) to read within ``timeout_s``.

    poll(2), not select(2): select cannot watch a descriptor above 1023, which
    a busy node reaches.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)
    try:
        return bool(poller.poll(max(0, int(timeout_s * 1000))))
    except OSError:
        return True  # let pynetdicom meet the error and close the connection


class ConnectionGuard:
    """Mixin for a ``socketserver`` threading server with pynetdicom's ``ae``."""

    preassoc_idle_s: float = 5.0
    max_per_host: int = 16
    ae: Any

    def _guard(self) -> tuple[threading.Lock, dict[str, int]]:
        # Created by the accepting thread's first verify_request, before any
        # connection thread exists.
        if not hasattr(self, "_guard_state"):
            state: tuple[threading.Lock, dict[str, int]] = (threading.Lock(), {})
            self._guard_state = state
        return self._guard_state

    def _associated(self, host: str) -> int:
        n = 0
        for assoc in self.ae.active_associations:
            with contextlib.suppress(AttributeError):
                if assoc.is_acceptor and assoc.requestor.address == host:
                    n += 1
        return n

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        lock, pending = self._guard()
        with lock:
            held = pending.get(host, 0) + self._associated(host)
            if held >= self.max_per_host:
                refuse = True
            else:
                refuse = False
                pending[host] = pending.get(host, 0) + 1
        if refuse:
            log.warning("refused connection peer=%s reason=%d connections open from this "
                        "address (dicom.max_connections_per_host = %d) status=A-ASSOCIATE-RJ "
                        "local-limit-exceeded", host, held, self.max_per_host)
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_RJ_LOCAL_LIMIT)
            return False
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        try:
            if not _readable_within(request, self.preassoc_idle_s):
                log.warning("dropped connection peer=%s reason=no A-ASSOCIATE-RQ within %.1f s "
                            "(dicom.preassoc_idle_s)", host, self.preassoc_idle_s)
                with contextlib.suppress(OSError):
                    request.shutdown(socket.SHUT_RDWR)
                request.close()
                return
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            lock, pending = self._guard()
            with lock:
                left = pending.get(host, 1) - 1
                if left > 0:
                    pending[host] = left
                else:
                    pending.pop(host, None)
